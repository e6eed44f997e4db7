//! Fetching WAL for recovery: spool first, then the archive; read-ahead fills the spool.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures::StreamExt;

use crate::catalog::cluster;
use crate::repo::{RepoError, Repository};
use crate::wal::name::{Segment, WalFile, DEFAULT_SEGMENT_SIZE};

/// Result of a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// Written to the destination from the archive.
    Fetched,
    /// Written to the destination from the read-ahead spool.
    FromSpool,
    /// The archive does not have this file.
    NotArchived,
}

/// Why a fetch failed; the destination is never written in these cases.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Bad file name.
    #[error(transparent)]
    Name(#[from] crate::wal::name::NameError),
    /// The repository failed (unreachable, corrupt or tampered object).
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// Writing the destination failed.
    #[error("cannot write {0}: {1}")]
    Write(String, std::io::Error),
}

/// Where read-ahead segments wait for `wal-fetch`.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

const SPOOL_TMP: &str = ".tmp.";

impl Spool {
    /// The spool of one cluster under the configured spool directory.
    pub fn new(spool_dir: &Path, cluster: &str) -> Spool {
        Spool { dir: spool_dir.join(cluster) }
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether a file is already spooled.
    pub fn has(&self, name: &str) -> bool {
        self.path(name).is_file()
    }

    /// Atomically adds a file to the spool.
    pub fn put(&self, name: &str, data: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        write_atomic(&self.path(name), data, SPOOL_TMP)
    }

    /// Moves a spooled file to `dest`; false when it is not spooled.
    pub fn take(&self, name: &str, dest: &Path) -> std::io::Result<bool> {
        let src = self.path(name);
        match std::fs::rename(&src, dest) {
            Ok(()) => {
                if let Some(dir) = dest.parent() {
                    sync_dir(dir)?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) if e.raw_os_error() == Some(18) => {
                // EXDEV: the spool is on another filesystem; copy, then drop the spooled file.
                let data = match std::fs::read(&src) {
                    Ok(d) => d,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                    Err(e) => return Err(e),
                };
                write_atomic(dest, &data, ".tidemark.")?;
                let _ = std::fs::remove_file(&src);
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Removes spooled segments outside `keep` (names sorted as PostgreSQL sorts them).
    pub fn prune_except(&self, keep: &[String]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || keep.contains(&name) {
                continue;
            }
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `data` to `dest` via a temp file in the same directory: never a partial `dest`.
pub fn write_atomic(dest: &Path, data: &[u8], tmp_tag: &str) -> std::io::Result<()> {
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base = dest.file_name().and_then(|n| n.to_str()).unwrap_or("wal");
    let tmp = dir.join(format!("{base}{tmp_tag}{}", hex::encode(rand::random::<[u8; 6]>())));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)?;
        sync_dir(dir)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// The cluster's segment size from the repository (16 MiB when unknown).
pub async fn segment_size(repo: &Repository) -> Result<u64, RepoError> {
    Ok(cluster::load(repo).await?.map(|r| r.wal_segment_size).unwrap_or(DEFAULT_SEGMENT_SIZE))
}

/// Fetches `name` into `dest`, from the spool when read-ahead already has it.
pub async fn fetch(
    repo: &Repository,
    spool: &Spool,
    name: &str,
    dest: &Path,
    seg_size: u64,
) -> Result<FetchOutcome, FetchError> {
    let file = WalFile::parse(name, seg_size)?;
    let dest_s = dest.display().to_string();
    if file.is_segment() && spool.take(name, dest).map_err(|e| FetchError::Write(dest_s.clone(), e))? {
        return Ok(FetchOutcome::FromSpool);
    }
    let key = repo.wal_key(&file, seg_size);
    let Some(data) = repo.get_opened(&key).await? else {
        return Ok(FetchOutcome::NotArchived);
    };
    let d = dest.to_path_buf();
    tokio::task::spawn_blocking(move || write_atomic(&d, &data, ".tidemark."))
        .await
        .map_err(|e| FetchError::Write(dest_s.clone(), std::io::Error::other(e)))?
        .map_err(|e| FetchError::Write(dest_s, e))?;
    Ok(FetchOutcome::Fetched)
}

/// The `count` segments after `name` (the read-ahead window).
pub fn window_after(name: &str, count: usize, seg_size: u64) -> Vec<Segment> {
    let Ok(WalFile::Segment(seg)) = WalFile::parse(name, seg_size) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(count);
    let mut s = seg;
    for _ in 0..count {
        s = s.next();
        out.push(s);
    }
    out
}

/// Downloads the window after `name` into the spool with `workers` parallel fetches.
/// Stops at the archive's end; returns how many segments were spooled.
pub async fn prefetch(
    repo: &Repository,
    spool: &Spool,
    name: &str,
    count: usize,
    workers: usize,
    seg_size: u64,
) -> Result<usize, FetchError> {
    let window = window_after(name, count, seg_size);
    let names: Vec<String> = window.iter().map(|s| s.name(seg_size)).collect();
    spool.prune_except(&names);
    let results: Vec<Result<bool, FetchError>> = futures::stream::iter(window.into_iter().zip(names.clone()))
        .map(|(seg, n)| async move {
            if spool.has(&n) {
                return Ok(true);
            }
            let key = repo.wal_key(&WalFile::Segment(seg), seg_size);
            let Some(data) = repo.get_opened(&key).await? else {
                return Ok(false);
            };
            let sp = spool.clone();
            let n2 = n.clone();
            tokio::task::spawn_blocking(move || sp.put(&n2, &data))
                .await
                .map_err(|e| FetchError::Write(n.clone(), std::io::Error::other(e)))?
                .map_err(|e| FetchError::Write(n, e))?;
            Ok(true)
        })
        .buffered(workers.max(1))
        .collect()
        .await;
    let mut spooled = 0;
    for r in results {
        match r {
            Ok(true) => spooled += 1,
            Ok(false) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(spooled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_follows_segment_numbering() {
        let w = window_after("0000000100000000000000FE", 3, DEFAULT_SEGMENT_SIZE);
        let names: Vec<String> = w.iter().map(|s| s.name(DEFAULT_SEGMENT_SIZE)).collect();
        assert_eq!(names, ["0000000100000000000000FF", "000000010000000100000000", "000000010000000100000001"]);
        assert!(window_after("00000002.history", 3, DEFAULT_SEGMENT_SIZE).is_empty());
    }

    #[test]
    fn spool_take_moves_and_misses_cleanly() {
        let d = tempfile::tempdir().unwrap();
        let sp = Spool::new(d.path(), "c");
        sp.put("000000010000000000000001", b"abc").unwrap();
        let dest = d.path().join("RECOVERYXLOG");
        assert!(sp.take("000000010000000000000001", &dest).unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), b"abc");
        assert!(!sp.take("000000010000000000000001", &dest).unwrap());
        sp.put("000000010000000000000002", b"x").unwrap();
        sp.put("000000010000000000000003", b"y").unwrap();
        sp.prune_except(&["000000010000000000000003".to_string()]);
        assert!(!sp.has("000000010000000000000002"));
        assert!(sp.has("000000010000000000000003"));
    }
}
