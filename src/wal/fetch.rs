//! Fetching WAL for recovery: spool first, then the archive; read-ahead fills the spool.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::catalog::cluster;
use crate::codec;
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
/// A temp file in the spool older than this belongs to no running download.
pub const STALE_TEMP: Duration = Duration::from_secs(600);
/// Spool file holding the last segment name recovery asked for.
const WANTED: &str = ".wanted";

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

    /// Atomically adds a file to the spool. Not fsynced: the spool is a cache, and after a
    /// crash recovery asks again and a missing file is fetched from the archive.
    pub fn put(&self, name: &str, data: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        write_atomic(&self.path(name), data, SPOOL_TMP)
    }

    /// Records the segment recovery asked for last; read-ahead keeps the window from it.
    pub fn set_wanted(&self, w: &Wanted) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let text = if w.taken { format!("{} taken", w.name) } else { w.name.clone() };
        write_atomic(&self.dir.join(WANTED), text.as_bytes(), SPOOL_TMP)
    }

    /// The segment recovery asked for last, if recorded.
    pub fn wanted(&self) -> Option<Wanted> {
        let text = std::fs::read_to_string(self.dir.join(WANTED)).ok()?;
        let mut words = text.split_whitespace();
        let name = words.next()?.to_string();
        Some(Wanted { name, taken: words.next() == Some("taken") })
    }

    /// Notes that read-ahead could not spool `name` (`none`: not archived; `error`: failed),
    /// so a wal-fetch waiting for it reads the archive itself instead.
    fn mark(&self, name: &str, what: &str) {
        let _ = std::fs::write(self.dir.join(format!("{name}.{what}")), b"");
    }

    fn unmark(&self, name: &str) {
        for what in ["none", "error"] {
            let _ = std::fs::remove_file(self.dir.join(format!("{name}.{what}")));
        }
    }

    /// Waits while a running read-ahead works on `name`; true once it is spooled, false when
    /// read-ahead could not get it, stopped running, or `timeout` passed.
    pub async fn await_spooled(&self, name: &str, timeout: Duration) -> bool {
        let began = Instant::now();
        let mut checks = 0u32;
        loop {
            if self.has(name) {
                return true;
            }
            let marked = ["none", "error"].iter().any(|w| self.dir.join(format!("{name}.{w}")).exists());
            checks += 1;
            // The lock check costs an open; every 50th round (about 100 ms) is enough.
            if marked || began.elapsed() >= timeout || (checks.is_multiple_of(50) && !self.prefetcher_running()) {
                return self.has(name);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The lock a running read-ahead process holds.
    pub fn lock_file(&self) -> std::io::Result<std::fs::File> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::File::create(self.dir.join(".lock"))
    }

    /// Whether a read-ahead process is running for this spool.
    pub fn prefetcher_running(&self) -> bool {
        self.lock_file().is_ok_and(|f| f.try_lock().is_err())
    }

    /// Moves a spooled file to `dest`; false when it is not spooled.
    pub fn take(&self, name: &str, dest: &Path) -> std::io::Result<bool> {
        let src = self.path(name);
        match std::fs::rename(&src, dest) {
            Ok(()) => Ok(true),
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

    /// Removes spooled segments (and their marks) outside `keep`. Files being written stay,
    /// unless they are older than [`STALE_TEMP`] (left by a read-ahead that was killed).
    pub fn prune_except(&self, keep: &[String]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let segment = match name.split_once('.') {
                None => name.as_str(),
                Some((seg, "none" | "error")) => seg,
                Some((_, rest)) if rest.starts_with(&SPOOL_TMP[1..]) => {
                    let age = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
                    if age.is_some_and(|a| a > STALE_TEMP) {
                        let _ = std::fs::remove_file(e.path());
                    }
                    continue;
                }
                Some(_) => continue,
            };
            if segment.len() != 24 || keep.iter().any(|k| k == segment) {
                continue;
            }
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes `data` to `dest` via a temp file in the same directory: never a partial `dest`.
///
/// Not fsynced. What restore_command writes is read once by recovery, which asks again after
/// a crash; a file PostgreSQL keeps (a standby's restored segment) it makes durable itself
/// (`durable_rename` in `KeepFileRestoredFromArchive`).
pub fn write_atomic(dest: &Path, data: &[u8], tmp_tag: &str) -> std::io::Result<()> {
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base = dest.file_name().and_then(|n| n.to_str()).unwrap_or("wal");
    let tmp = dir.join(format!("{base}{tmp_tag}{}", hex::encode(rand::random::<[u8; 6]>())));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        std::fs::rename(&tmp, dest)
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
    Ok(if fetch_to(repo, &key, dest, ".tidemark.").await? { FetchOutcome::Fetched } else { FetchOutcome::NotArchived })
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

/// Opens `sealed` into a temp file beside `dest`, then renames it there; on any failure
/// (damaged object, wrong key, full disk) `dest` is untouched and the temp file removed.
fn open_into(repo: &Repository, key: &str, sealed: &[u8], dest: &Path, tmp_tag: &str) -> Result<(), FetchError> {
    let write_err = |e| FetchError::Write(dest.display().to_string(), e);
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base = dest.file_name().and_then(|n| n.to_str()).unwrap_or("wal");
    let tmp = dir.join(format!("{base}{tmp_tag}{}", hex::encode(rand::random::<[u8; 6]>())));
    let res = (|| {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp).map_err(write_err)?);
        codec::open(repo.sealing().0, key, sealed, &mut out).map_err(RepoError::from)?;
        out.flush().map_err(write_err)?;
        std::fs::rename(&tmp, dest).map_err(write_err)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
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

/// Downloads one segment into the spool; false when the archive does not have it.
async fn spool_one(repo: &Repository, spool: &Spool, seg: Segment, seg_size: u64) -> Result<bool, FetchError> {
    let key = repo.wal_key(&WalFile::Segment(seg), seg_size);
    std::fs::create_dir_all(spool.dir()).map_err(|e| FetchError::Write(spool.dir().display().to_string(), e))?;
    fetch_to(repo, &key, &spool.path(&seg.name(seg_size)), SPOOL_TMP).await
}

/// The segment recovery asked for last: still needed, or already taken from the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Segment file name.
    pub name: String,
    /// Taken from the spool (read-ahead starts after it) rather than awaited (starts at it).
    pub taken: bool,
}

impl Wanted {
    /// The segments read-ahead keeps ready: this one unless taken, then `count` after it.
    pub fn window(&self, count: usize, seg_size: u64) -> Vec<Segment> {
        let mut out = Vec::with_capacity(count + 1);
        if !self.taken {
            if let Ok(WalFile::Segment(seg)) = WalFile::parse(&self.name, seg_size) {
                out.push(seg);
            }
        }
        out.extend(window_after(&self.name, count, seg_size));
        out
    }
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
    let mut window_names: Vec<String> = Vec::new();
    let mut spooled = 0usize;
    loop {
        let now_wanted = spool.wanted().unwrap_or_else(|| wanted.clone());
        if now_wanted != wanted || window_names.is_empty() {
            if now_wanted != wanted {
                last_change = Instant::now();
            }
            wanted = now_wanted;
            window_names = wanted.window(opts.count, seg_size).iter().map(|s| s.name(seg_size)).collect();
            // Files before the window were consumed or skipped: recovery never asks back.
            spool.prune_except(&window_names);
            if window_names.is_empty() {
                return Ok(spooled);
            }
        }
        // Start the lowest missing segments first: recovery needs them soonest.
        let now = Instant::now();
        for seg in wanted.window(opts.count, seg_size) {
            if inflight.len() >= opts.workers.max(1) {
                break;
            }
            let name = seg.name(seg_size);
            if busy.contains(&name) || spool.has(&name) || retry_at.get(&name).is_some_and(|t| *t > now) {
                continue;
            }
            busy.insert(name.clone());
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
    fn wanted_window_starts_at_an_awaited_segment_and_after_a_taken_one() {
        let d = tempfile::tempdir().unwrap();
        let sp = Spool::new(d.path(), "c");
        assert_eq!(sp.wanted(), None);
        let names = |w: &Wanted| -> Vec<String> {
            w.window(2, DEFAULT_SEGMENT_SIZE).iter().map(|s| s.name(DEFAULT_SEGMENT_SIZE)).collect()
        };
        for taken in [false, true] {
            let w = Wanted { name: "0000000100000000000000FF".into(), taken };
            sp.set_wanted(&w).unwrap();
            assert_eq!(sp.wanted(), Some(w.clone()));
            let mut expected = vec!["000000010000000100000000", "000000010000000100000001"];
            if !taken {
                expected.insert(0, "0000000100000000000000FF");
            }
            assert_eq!(names(&w), expected);
        }
        assert!(names(&Wanted { name: "00000002.history".into(), taken: false }).is_empty());
    }

    #[tokio::test]
    async fn waiting_for_read_ahead_ends_on_delivery_or_a_mark() {
        let d = tempfile::tempdir().unwrap();
        let sp = Spool::new(d.path(), "c");
        let lock = sp.lock_file().unwrap();
        lock.try_lock().unwrap();
        assert!(sp.prefetcher_running());
        let n = "000000010000000000000001";
        sp.put(n, b"x").unwrap();
        assert!(sp.await_spooled(n, Duration::from_secs(60)).await);
        sp.mark("000000010000000000000002", "none");
        assert!(!sp.await_spooled("000000010000000000000002", Duration::from_secs(60)).await);
        sp.unmark("000000010000000000000002");
        sp.mark("000000010000000000000002", "error");
        assert!(!sp.await_spooled("000000010000000000000002", Duration::from_secs(60)).await);
        // Read-ahead that stops running is not waited for.
        drop(lock);
        assert!(!sp.prefetcher_running());
        assert!(!sp.await_spooled("000000010000000000000003", Duration::from_secs(60)).await);
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
        sp.mark("000000010000000000000002", "none");
        std::fs::write(sp.dir().join("000000010000000000000004.tmp.abc"), b"being written").unwrap();
        let stale = sp.dir().join("000000010000000000000005.tmp.def");
        std::fs::File::create(&stale)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - STALE_TEMP - Duration::from_secs(1))
            .unwrap();
        sp.prune_except(&["000000010000000000000003".to_string()]);
        assert!(!sp.has("000000010000000000000002"));
        assert!(!sp.dir().join("000000010000000000000002.none").exists());
        assert!(sp.has("000000010000000000000003"));
        assert!(sp.dir().join("000000010000000000000004.tmp.abc").exists());
        assert!(!stale.exists(), "a temp file no download is writing any more is removed");
    }
}
