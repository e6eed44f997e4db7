//! Archiving one WAL file: validate, seal, store without overwriting, acknowledge.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::OnceCell;

use crate::catalog::cluster::{self, ClusterRecord};
use crate::catalog::wal_index::{self, IndexBuilder, SegmentIndex};
use crate::codec::envelope::read_full;
use crate::codec::{CodecError, Sealer};
use crate::repo::{HashingWriter, RepoError, Repository};
use crate::store::{PutOutcome, Staged};
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

/// Bytes read per step while a file streams through the sealer: whole pages for any WAL
/// page size, and small enough that many parallel pushes stay within a few MiB each.
const PIECE: usize = 256 << 10;

/// Where pushed bytes come from; opened again to hash them when a name is already taken.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Memory(Bytes),
}

impl Source {
    /// Opens the bytes and tells their length.
    fn open(&self) -> std::io::Result<(Box<dyn Read + Send>, u64)> {
        match self {
            Source::File(p) => {
                let f = std::fs::File::open(p)?;
                let len = f.metadata()?.len();
                Ok((Box::new(f), len))
            }
            Source::Memory(b) => Ok((Box::new(std::io::Cursor::new(b.clone())), b.len() as u64)),
        }
    }

    /// Hex SHA-256 of the bytes.
    fn digest(&self) -> std::io::Result<String> {
        let (mut r, _) = self.open()?;
        let mut w = HashingWriter::default();
        std::io::copy(&mut r, &mut w)?;
        Ok(w.finish())
    }
}

/// An opened source with its first piece read.
struct Opened {
    reader: Box<dyn Read + Send>,
    first: Vec<u8>,
    len: u64,
}

/// What streaming a file into the store produced.
struct Streamed {
    staged: Staged,
    index: Option<SegmentIndex>,
    sealed_bytes: u64,
}

/// Streams the rest of `src` through the sealer into `staged`, walking a segment's records
/// on the way; nothing holds more than one piece of the file.
fn seal_stream(
    repo: &Repository,
    key: &str,
    mut src: Opened,
    staged: Staged,
    mut index: Option<IndexBuilder>,
) -> Result<Streamed, RepoError> {
    let io_err = |e| RepoError::from(CodecError::Io(key.to_string(), e));
    let (keyring, level) = repo.sealing();
    let mut sealer = Sealer::new(keyring, key, level, staged)?;
    let mut buf = std::mem::take(&mut src.first);
    let mut total = 0u64;
    while !buf.is_empty() {
        total += buf.len() as u64;
        if let Some(ix) = index.as_mut() {
            ix.feed(&buf);
        }
        sealer.write_all(&buf).map_err(io_err)?;
        buf.resize(PIECE, 0);
        let n = read_full(&mut src.reader, &mut buf).map_err(io_err)?;
        buf.truncate(n);
    }
    if total != src.len {
        return Err(io_err(std::io::Error::other(format!(
            "the file changed while it was read ({} bytes at open, {total} read)",
            src.len
        ))));
    }
    let (staged, stats) = sealer.finish()?;
    Ok(Streamed { staged, index: index.map(IndexBuilder::finish), sealed_bytes: stats.sealed_bytes })
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
        self.push_source(&file_name, Source::File(path.to_path_buf())).await
    }

    /// Archives `data` as the WAL file `file_name`.
    pub async fn push_bytes(&self, file_name: &str, data: Bytes) -> Result<PushOutcome, PushError> {
        self.push_source(file_name, Source::Memory(data)).await
    }

    async fn push_source(&self, file_name: &str, src: Source) -> Result<PushOutcome, PushError> {
        let read_err = |e| PushError::Read(file_name.to_string(), e);
        let s = src.clone();
        let opened = blocking(move || {
            let (mut reader, len) = s.open()?;
            let mut first = vec![0u8; PIECE];
            let n = read_full(&mut reader, &mut first)?;
            first.truncate(n);
            Ok(Opened { reader, first, len })
        })
        .await
        .map_err(read_err)?;

        let is_segment_like = file_name.len() == 24 || file_name.ends_with(".partial");
        let seg_size = if is_segment_like {
            let h = header::parse(&opened.first).map_err(|e| PushError::Header(file_name.to_string(), e))?;
            let seg_size = u64::from(h.segment_size);
            crate::wal::name::check_segment_size(seg_size)?;
            if opened.len != seg_size {
                return Err(PushError::Length(file_name.to_string(), opened.len, seg_size));
            }
            self.check_identity(file_name, h.system_identifier, seg_size).await?;
            seg_size
        } else {
            self.record.get().map(|r| r.wal_segment_size).unwrap_or(DEFAULT_SEGMENT_SIZE)
        };
        let file = WalFile::parse(file_name, seg_size)?;
        let key = self.repo.wal_key(&file, seg_size);
        // No existence check first: the conditional commit below is one (a HEAD would cost an
        // extra request per segment on S3); an already archived file only costs a wasted seal.
        let index = match file {
            WalFile::Segment(seg) => Some((seg, IndexBuilder::new(seg, seg_size))),
            _ => None,
        };
        let segment = index.as_ref().map(|(seg, _)| *seg);
        let staged = self.repo.store().stage(&key).map_err(RepoError::from)?;
        let (repo, k) = (self.repo.clone(), key.clone());
        let streamed =
            tokio::task::spawn_blocking(move || seal_stream(&repo, &k, opened, staged, index.map(|(_, ix)| ix)))
                .await
                .map_err(|e| read_err(std::io::Error::other(e)))??;

        if let (Some(seg), Some(idx)) = (segment, &streamed.index) {
            // The commit-time summary goes first: a summary without its segment is harmless,
            // a segment without its summary would hide commit times from `window`.
            if let Some(e) = &idx.error {
                tracing::warn!(file = %file_name, error = %e, "cannot read commit times from segment; archiving it anyway");
            }
            wal_index::save(&self.repo, seg, seg_size, idx).await?;
        }
        match self.repo.store().commit_if_absent(&key, streamed.staged).await.map_err(RepoError::from)? {
            PutOutcome::Created => {
                self.sealed_bytes.fetch_add(streamed.sealed_bytes, std::sync::atomic::Ordering::Relaxed);
                Ok(PushOutcome::Stored)
            }
            // Lost a race with another pusher (the daemon): same bytes is success.
            PutOutcome::Exists => self.compare_existing(file_name, &key, &src).await,
        }
    }

    async fn compare_existing(&self, name: &str, key: &str, src: &Source) -> Result<PushOutcome, PushError> {
        let s = src.clone();
        let local = blocking(move || s.digest()).await.map_err(|e| PushError::Read(name.to_string(), e))?;
        let archived = self.repo.digest_of(key).await?.unwrap_or_default();
        if archived == local {
            Ok(PushOutcome::AlreadyArchived)
        } else {
            Err(PushError::Conflict { name: name.to_string(), archived, local })
        }
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(std::io::Error::other)?
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
