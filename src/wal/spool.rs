//! The read-ahead spool: segments waiting for `wal-fetch`, the request read-ahead follows,
//! and the window it keeps.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::wal::name::{Segment, WalFile};

/// Where read-ahead segments wait for `wal-fetch`.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

pub(crate) const SPOOL_TMP: &str = ".tmp.";
/// A temp file in the spool older than this belongs to no running download.
pub const STALE_TEMP: Duration = Duration::from_secs(600);
/// Spool file holding the last segment name recovery asked for.
const WANTED: &str = ".wanted";
/// Suffixes of the marks read-ahead leaves for a segment it could not spool.
const MARKS: [&str; 2] = ["none", "error"];
/// Temp-name tag of a restore_command destination being written.
pub(crate) const DEST_TMP: &str = ".tidemark.";

impl Spool {
    /// The spool of one cluster under the configured spool directory.
    pub fn new(spool_dir: &Path, cluster: &str) -> Spool {
        Spool { dir: spool_dir.join(cluster) }
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether a file is already spooled.
    pub fn has(&self, name: &str) -> bool {
        self.path(name).is_file()
    }

    /// Atomically adds a file to the spool, for tests (read-ahead streams into it instead).
    #[cfg(test)]
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
    pub(crate) fn mark(&self, name: &str, what: &str) {
        let _ = std::fs::write(self.mark_path(name, what), b"");
    }

    pub(crate) fn unmark(&self, name: &str) {
        for what in MARKS {
            let _ = std::fs::remove_file(self.mark_path(name, what));
        }
    }

    fn mark_path(&self, name: &str, what: &str) -> PathBuf {
        self.dir.join(format!("{name}.{what}"))
    }

    /// Waits while a running read-ahead works on `name`; true once it is spooled, false when
    /// read-ahead could not get it, stopped running, or `timeout` passed.
    pub fn await_spooled(&self, name: &str, timeout: Duration) -> bool {
        let began = Instant::now();
        let mut checks = 0u32;
        loop {
            if self.has(name) {
                return true;
            }
            let marked = MARKS.iter().any(|w| self.mark_path(name, w).exists());
            checks += 1;
            // The lock check costs an open; every 50th round (about 100 ms) is enough.
            if marked || began.elapsed() >= timeout || (checks.is_multiple_of(50) && !self.prefetcher_running()) {
                return self.has(name);
            }
            std::thread::sleep(Duration::from_millis(2));
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
                write_atomic(dest, &data, DEST_TMP)?;
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
                Some((seg, mark)) if MARKS.contains(&mark) => seg,
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
    write_atomic_with(dest, tmp_tag, |e| e, |out| out.write_all(data))
}

/// Like [`write_atomic`], with `fill` writing the content (buffered); `io_err` names the
/// helper's own I/O failures in the caller's error type. On any failure `dest` is untouched
/// and the temp file is removed.
pub fn write_atomic_with<E>(
    dest: &Path,
    tmp_tag: &str,
    io_err: impl Fn(std::io::Error) -> E,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<(), E>,
) -> Result<(), E> {
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base = dest.file_name().and_then(|n| n.to_str()).unwrap_or("wal");
    let tmp = dir.join(format!("{base}{tmp_tag}{}", hex::encode(rand::random::<[u8; 6]>())));
    let res = (|| {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp).map_err(&io_err)?);
        fill(&mut out)?;
        out.flush().map_err(&io_err)?;
        std::fs::rename(&tmp, dest).map_err(&io_err)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::name::DEFAULT_SEGMENT_SIZE;

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

    #[test]
    fn waiting_for_read_ahead_ends_on_delivery_or_a_mark() {
        let d = tempfile::tempdir().unwrap();
        let sp = Spool::new(d.path(), "c");
        let lock = sp.lock_file().unwrap();
        lock.try_lock().unwrap();
        assert!(sp.prefetcher_running());
        let n = "000000010000000000000001";
        sp.put(n, b"x").unwrap();
        assert!(sp.await_spooled(n, Duration::from_secs(60)));
        sp.mark("000000010000000000000002", "none");
        assert!(!sp.await_spooled("000000010000000000000002", Duration::from_secs(60)));
        sp.unmark("000000010000000000000002");
        sp.mark("000000010000000000000002", "error");
        assert!(!sp.await_spooled("000000010000000000000002", Duration::from_secs(60)));
        // Read-ahead that stops running is not waited for.
        drop(lock);
        assert!(!sp.prefetcher_running());
        assert!(!sp.await_spooled("000000010000000000000003", Duration::from_secs(60)));
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
