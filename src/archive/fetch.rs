//! Fetching WAL for recovery: spool first, then the archive; read-ahead fills the spool.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::codec;
use crate::repo::{RepoError, Repository};
use crate::wal::name::{Segment, WalFile};
use crate::wal::spool::{write_atomic_with, Spool, Wanted, DEST_TMP, SPOOL_TMP};

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

/// Fetches `name` from the archive into `dest` (`wal-fetch` looks in the spool first).
pub async fn fetch(repo: &Repository, name: &str, dest: &Path, seg_size: u64) -> Result<FetchOutcome, FetchError> {
    let file = WalFile::parse(name, seg_size)?;
    let key = repo.wal_key(&file, seg_size);
    Ok(if fetch_to(repo, &key, dest, DEST_TMP).await? { FetchOutcome::Fetched } else { FetchOutcome::NotArchived })
}

/// Reads the object `key` and writes its plaintext to `dest` atomically, streaming it through
/// the opener (no whole-file buffer); false when the object is absent.
async fn fetch_to(repo: &Repository, key: &str, dest: &Path, tmp_tag: &str) -> Result<bool, FetchError> {
    let Some(sealed) = repo.store().get_bytes(key).await.map_err(RepoError::from)? else {
        return Ok(false);
    };
    let (repo, key, dest, tag) = (repo.clone(), key.to_string(), dest.to_path_buf(), tmp_tag.to_string());
    let d = dest.display().to_string();
    tokio::task::spawn_blocking(move || open_into(&repo, &key, &sealed, &dest, &tag))
        .await
        .map_err(|e| FetchError::Write(d, std::io::Error::other(e)))??;
    Ok(true)
}

/// Opens `sealed` into `dest` atomically: on any failure (damaged object, wrong key, full
/// disk) `dest` is untouched.
fn open_into(repo: &Repository, key: &str, sealed: &[u8], dest: &Path, tmp_tag: &str) -> Result<(), FetchError> {
    let write_err = |e| FetchError::Write(dest.display().to_string(), e);
    write_atomic_with(dest, tmp_tag, write_err, |out| {
        codec::open(repo.sealing().0, key, sealed, out).map(drop).map_err(|e| RepoError::from(e).into())
    })
}

/// Downloads one segment into the spool; false when the archive does not have it.
async fn spool_one(repo: &Repository, spool: &Spool, seg: Segment, seg_size: u64) -> Result<bool, FetchError> {
    let key = repo.wal_key(&WalFile::Segment(seg), seg_size);
    spool.ensure_dir().map_err(|e| FetchError::Write(spool.dir().display().to_string(), e))?;
    fetch_to(repo, &key, &spool.path(&seg.name(seg_size)), SPOOL_TMP).await
}

/// How read-ahead runs.
#[derive(Debug, Clone, Copy)]
pub struct Prefetch {
    /// Segments kept ready after the one recovery asked for last.
    pub count: usize,
    /// Parallel downloads.
    pub workers: usize,
    /// Quit after this long without a new request from recovery.
    pub idle: Duration,
    /// How often to look for a new request once the window is full.
    pub poll: Duration,
}

/// Keeps the spool filled with the `count` segments after the one recovery asked for last
/// (`.wanted`, or `first` until a wal-fetch writes it), `workers` downloads at a time, lowest
/// first. A segment the archive lacks (its end, for now) is asked for again after a second.
/// Returns how many segments were spooled, once recovery has asked for nothing new for `idle`.
pub async fn prefetch(
    repo: &Repository,
    spool: &Spool,
    first: &str,
    opts: Prefetch,
    seg_size: u64,
) -> Result<usize, FetchError> {
    let mut wanted = spool.wanted().unwrap_or_else(|| Wanted { name: first.to_string(), taken: true });
    let mut last_change = Instant::now();
    let mut inflight: JoinSet<(String, Result<bool, FetchError>)> = JoinSet::new();
    let mut busy: HashSet<String> = HashSet::new();
    let mut retry_at: HashMap<String, Instant> = HashMap::new();
    let mut window: Vec<Segment> = Vec::new();
    let mut window_names: Vec<String> = Vec::new();
    let mut spooled = 0usize;
    loop {
        let now_wanted = spool.wanted().unwrap_or_else(|| wanted.clone());
        if now_wanted != wanted || window.is_empty() {
            if now_wanted != wanted {
                last_change = Instant::now();
            }
            wanted = now_wanted;
            window = wanted.window(opts.count, seg_size);
            window_names = window.iter().map(|s| s.name(seg_size)).collect();
            // Files before the window were consumed or skipped: recovery never asks back.
            spool.prune_except(&window_names);
            if window.is_empty() {
                return Ok(spooled);
            }
        }
        // Start the lowest missing segments first: recovery needs them soonest.
        let now = Instant::now();
        for (&seg, name) in window.iter().zip(&window_names) {
            if inflight.len() >= opts.workers.max(1) {
                break;
            }
            if busy.contains(name) || spool.has(name) || retry_at.get(name).is_some_and(|t| *t > now) {
                continue;
            }
            busy.insert(name.clone());
            let name = name.clone();
            let (repo, spool) = (repo.clone(), spool.clone());
            inflight.spawn(async move {
                let r = spool_one(&repo, &spool, seg, seg_size).await;
                (name, r)
            });
        }
        if inflight.is_empty() {
            if last_change.elapsed() >= opts.idle {
                return Ok(spooled);
            }
            tokio::time::sleep(opts.poll).await;
            continue;
        }
        let done = tokio::select! {
            d = inflight.join_next() => d,
            _ = tokio::time::sleep(opts.poll) => None,
        };
        if let Some(Ok((name, r))) = done {
            busy.remove(&name);
            match r {
                Ok(true) => {
                    spooled += 1;
                    retry_at.remove(&name);
                    spool.unmark(&name);
                    // Recovery may have moved past it while it downloaded.
                    if !window_names.contains(&name) {
                        spool.prune_except(&window_names);
                    }
                }
                Ok(false) => {
                    spool.mark(&name, "none");
                    retry_at.insert(name, Instant::now() + Duration::from_secs(1));
                }
                Err(e) => {
                    // wal-fetch reads it directly and reports the error where recovery sees it.
                    tracing::warn!(file = %name, error = %e, "read-ahead failed");
                    spool.mark(&name, "error");
                    retry_at.insert(name, Instant::now() + Duration::from_secs(1));
                }
            }
        }
    }
}
