//! Archiving one WAL file: validate, seal, store without overwriting, acknowledge.

use std::path::Path;

use bytes::Bytes;
use tokio::sync::OnceCell;

use crate::catalog::cluster::{self, ClusterRecord};
use crate::catalog::wal_index;
use crate::repo::{sha256_hex, RepoError, Repository};
use crate::store::PutOutcome;
use crate::wal::header;
use crate::wal::name::{WalFile, DEFAULT_SEGMENT_SIZE};

/// What happened to a pushed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushOutcome {
    /// Newly stored.
    Stored,
    /// The same bytes were already archived.
    AlreadyArchived,
}

/// Why a file was not archived. Nothing in the archive changes in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The file could not be read.
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    /// The file name is not one PostgreSQL archives.
    #[error("{0}")]
    Name(#[from] crate::wal::name::NameError),
    /// The segment's header is unreadable.
    #[error("{0}: {1}")]
    Header(String, header::HeaderError),
    /// The segment's length does not match its declared segment size.
    #[error(
        "{0}: segment is {1} bytes but its header declares {2}-byte segments (file still being written, or damaged?)"
    )]
    Length(String, u64, u64),
    /// Another database is archiving under this handle.
    #[error("{name}: system identifier {found} does not match cluster '{cluster}' (system identifier {expected}) in the repository; a different database is configured with the same cluster handle: give it its own `cluster` in the config")]
    WrongSystem {
        /// File name.
        name: String,
        /// Handle.
        cluster: String,
        /// Identifier recorded in the repository.
        expected: String,
        /// Identifier in the segment.
        found: String,
    },
    /// A different file is already archived under this name.
    #[error("{name}: a different file is already archived under this name (archive sha256 {archived}, local sha256 {local}); the archive was left untouched. Another cluster may share this handle, or this server was restored without a new handle")]
    Conflict {
        /// File name.
        name: String,
        /// Digest of the archived object's plaintext.
        archived: String,
        /// Digest of the local file.
        local: String,
    },
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// Pushes WAL files of one cluster; caches the cluster record between pushes.
#[derive(Debug)]
pub struct Archiver {
    repo: Repository,
    record: OnceCell<ClusterRecord>,
    sealed_bytes: std::sync::atomic::AtomicU64,
}

/// Reads the file at `path`.
fn read_file(path: &Path) -> Result<Vec<u8>, PushError> {
    std::fs::read(path).map_err(|e| PushError::Read(path.display().to_string(), e))
}

impl Archiver {
    /// An archiver for the repository's cluster.
    pub fn new(repo: Repository) -> Archiver {
        Archiver { repo, record: OnceCell::new(), sealed_bytes: std::sync::atomic::AtomicU64::new(0) }
    }

    /// Compressed, encrypted bytes this archiver has stored.
    pub fn sealed_bytes(&self) -> u64 {
        self.sealed_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The repository.
    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    /// Checks the segment belongs to this handle, creating the record on first use.
    async fn check_identity(&self, name: &str, sysid: u64, seg_size: u64) -> Result<(), PushError> {
        let rec = self
            .record
            .get_or_try_init(|| async {
                if let Some(r) = cluster::load(&self.repo).await? {
                    return Ok::<_, PushError>(r);
                }
                let r = ClusterRecord::new(self.repo.cluster(), sysid, seg_size);
                cluster::save(&self.repo, &r).await?;
                Ok(r)
            })
            .await?;
        if rec.system_identifier != sysid.to_string() {
            return Err(PushError::WrongSystem {
                name: name.to_string(),
                cluster: rec.handle.clone(),
                expected: rec.system_identifier.clone(),
                found: sysid.to_string(),
            });
        }
        Ok(())
    }

    /// Archives the file at `path` (a segment, .partial, .history or .backup file).
    pub async fn push(&self, path: &Path) -> Result<PushOutcome, PushError> {
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let p = path.to_path_buf();
        let data = tokio::task::spawn_blocking(move || read_file(&p))
            .await
            .map_err(|e| PushError::Read(file_name.clone(), std::io::Error::other(e)))??;
        self.push_bytes(&file_name, Bytes::from(data)).await
    }

    /// Archives `data` as the WAL file `file_name`.
    pub async fn push_bytes(&self, file_name: &str, data: Bytes) -> Result<PushOutcome, PushError> {
        let is_segment_like = file_name.len() == 24 || file_name.ends_with(".partial");
        let seg_size = if is_segment_like {
            let h = header::parse(&data).map_err(|e| PushError::Header(file_name.to_string(), e))?;
            let seg_size = u64::from(h.segment_size);
            crate::wal::name::check_segment_size(seg_size)?;
            if data.len() as u64 != seg_size {
                return Err(PushError::Length(file_name.to_string(), data.len() as u64, seg_size));
            }
            self.check_identity(file_name, h.system_identifier, seg_size).await?;
            seg_size
        } else {
            self.record.get().map(|r| r.wal_segment_size).unwrap_or(DEFAULT_SEGMENT_SIZE)
        };
        let file = WalFile::parse(file_name, seg_size)?;
        let key = self.repo.wal_key(&file, seg_size);
        if let WalFile::Segment(seg) = file {
            // The commit-time summary goes first: a summary without its segment is harmless,
            // a segment without its summary would hide commit times from `window`.
            let d = data.clone();
            let idx = tokio::task::spawn_blocking(move || wal_index::summarize(&d, seg, seg_size))
                .await
                .map_err(|e| PushError::Read(file_name.to_string(), std::io::Error::other(e)))?;
            if let Some(e) = &idx.error {
                tracing::warn!(file = %file_name, error = %e, "cannot read commit times from segment; archiving it anyway");
            }
            wal_index::save(&self.repo, seg, seg_size, &idx).await?;
        }

        if self.repo.store().head(&key).await.map_err(RepoError::from)?.is_some() {
            return self.compare_existing(file_name, &key, &data).await;
        }
        let sealed = self.repo.seal(&key, data.clone()).await?;
        let sealed_len = sealed.len() as u64;
        match self.repo.store().put_if_absent(&key, sealed).await.map_err(RepoError::from)? {
            PutOutcome::Created => {
                self.sealed_bytes.fetch_add(sealed_len, std::sync::atomic::Ordering::Relaxed);
                Ok(PushOutcome::Stored)
            }
            // Lost a race with another pusher (the daemon): same bytes is success.
            PutOutcome::Exists => self.compare_existing(file_name, &key, &data).await,
        }
    }

    async fn compare_existing(&self, name: &str, key: &str, data: &[u8]) -> Result<PushOutcome, PushError> {
        let local = sha256_hex(data);
        let archived = self.repo.digest_of(key).await?.unwrap_or_default();
        if archived == local {
            Ok(PushOutcome::AlreadyArchived)
        } else {
            Err(PushError::Conflict { name: name.to_string(), archived, local })
        }
    }
}

/// Refuses to archive a cluster restored from `cluster` under the same handle: its new
/// timeline would mix with the source's archive (PostgreSQL runs archive_command in the
/// data directory, where `restore` left its marker).
pub fn refuse_restored_copy(data_dir: &Path, cluster: &str) -> anyhow::Result<()> {
    let marker = data_dir.join(crate::restore::execute::RESTORED_MARKER);
    let Ok(text) = std::fs::read_to_string(&marker) else { return Ok(()) };
    let from: crate::restore::execute::RestoredFrom = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: unreadable restore marker: {e}", marker.display()))?;
    if from.cluster == cluster {
        anyhow::bail!(
            "this cluster was restored from backup {} of cluster '{cluster}' and must not archive under the same handle (its new timeline would mix with the source's WAL); set a new `cluster` in its config (or remove {} if this cluster really replaces the source)",
            from.backup,
            marker.display()
        );
    }
    Ok(())
}
