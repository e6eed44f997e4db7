//! The read-ahead spool: segments waiting for `wal-fetch`, the request read-ahead follows,
//! and the window it keeps.
//!
//! Spooled segments are plaintext WAL, so the spool is private (directory 0700, files 0600)
//! and bound to the repository and keyring that filled it (`.owner`): a config that could not
//! have opened those segments is never handed one.

use std::cell::OnceCell;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::codec::{Keyring, KeyringError};
use crate::wal::name::{Segment, WalFile};

/// Where read-ahead segments wait for `wal-fetch`.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    /// Run as root: the database user's ids, who must own the spool (see [`Spool::owned_by`]).
    owner: Option<(u32, u32)>,
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
/// Spool file naming the repository and keyring the spool was filled for.
const OWNER: &str = ".owner";
/// The read-ahead lock.
const LOCK: &str = ".lock";
/// Read-ahead's log (kept when the spool is cleared: it explains what happened).
const PREFETCH_LOG: &str = "prefetch.log";
/// `.wanted` text that makes a running read-ahead empty the spool and quit (not a segment,
/// so its window is empty).
const STOP: &str = "-";
/// Mode of the spool directory: only its owner may see plaintext WAL.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in the spool.
pub const FILE_MODE: u32 = 0o600;
/// Label of the keyed hashes in a spool binding.
const BINDING_LABEL: &[u8] = b"tidemark spool binding v1";

impl Spool {
    /// The spool of one cluster under the configured spool directory.
    pub fn new(spool_dir: &Path, cluster: &str) -> Spool {
        Spool { dir: spool_dir.join(cluster), owner: None }
    }

    /// The spool as used by a root process: directories it creates, and an existing spool
    /// root left owned by root, go to `ids` (`postgres.os_user`; `None` when not root), and
    /// every file created in the spool takes the spool directory's owner. A root-owned 0700
    /// spool would lock out the restore_command that PostgreSQL runs as the database user.
    pub fn owned_by(mut self, ids: Option<(u32, u32)>) -> Spool {
        self.owner = ids;
        self
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

    /// Creates the spool directory 0700 (and any missing parents), or makes an existing one of
    /// ours private again: one written by an older tidemark or a hand-run command under a
    /// loose umask is 0755 with 0644 segments.
    pub fn ensure_dir(&self) -> std::io::Result<()> {
        let meta = match std::fs::metadata(&self.dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Run as root (a hand-run wal-fetch), the directories go to the database
                // user (or, with no user known, take their parent's owner), so it can still
                // use the spool (and restores' spools beside it) afterwards.
                return match self.owner {
                    Some(ids) => create_dirs_owned(&self.dir, ids),
                    None => crate::store::fs::create_dirs(&self.dir),
                };
            }
            Err(e) => return Err(e),
        };
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if let (Some((uid, gid)), 0, 0) = (self.owner, me, meta.uid()) {
            // A spool an earlier root run left root's: give it and what root left in it back.
            std::os::unix::fs::lchown(&self.dir, Some(uid), Some(gid))?;
            for e in std::fs::read_dir(&self.dir)?.flatten() {
                if e.metadata().is_ok_and(|m| m.uid() == 0) {
                    std::os::unix::fs::lchown(e.path(), Some(uid), Some(gid))?;
                }
            }
        }
        if meta.mode() & 0o077 == 0 || meta.uid() != me {
            // Private already, or someone else's: not ours to change.
            return Ok(());
        }
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(DIR_MODE))?;
        for e in std::fs::read_dir(&self.dir)?.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_file() && m.uid() == me && m.mode() & 0o077 != 0 {
                let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(FILE_MODE));
            }
        }
        Ok(())
    }

    /// Atomically adds a file to the spool, for tests (read-ahead streams into it instead).
    #[cfg(test)]
    pub fn put(&self, name: &str, data: &[u8]) -> std::io::Result<()> {
        self.ensure_dir()?;
        write_atomic(&self.path(name), data, SPOOL_TMP)
    }

    /// Records the segment recovery asked for last; read-ahead keeps the window from it.
    pub fn set_wanted(&self, w: &Wanted) -> std::io::Result<()> {
        self.ensure_dir()?;
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
        let _ = private_file(&self.mark_path(name, what));
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
        self.ensure_dir()?;
        private_file(&self.dir.join(LOCK))
    }

    /// Whether a read-ahead process is running for this spool.
    pub fn prefetcher_running(&self) -> bool {
        self.lock_file().is_ok_and(|f| f.try_lock().is_err())
    }

    /// How the spool's binding compares with `owner`. Reads `.owner` and stats the keyring;
    /// the keyring itself is read only when its file changed since the spool was bound.
    pub fn binding(&self, owner: &Owner) -> Result<Binding, BindError> {
        let text = match std::fs::read_to_string(self.dir.join(OWNER)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Binding::Unbound),
            Err(e) => return Err(BindError::Io(self.dir.display().to_string(), e)),
        };
        // A damaged owner file vouches for nothing.
        let Some((digest, stamp)) = parse_owner(&text) else {
            return Ok(Binding::Foreign);
        };
        if stamp == owner.stamp()? {
            return Ok(Binding::Bound);
        }
        if digest != owner.digest()? {
            return Ok(Binding::Foreign);
        }
        // Same keys in a touched or moved keyring file: remember the new stamp (best effort).
        let _ = self.write_owner(owner);
        Ok(Binding::Bound)
    }

    /// Binds the spool to `owner` unless it already is, clearing whatever another config (or
    /// an older tidemark) left. A read-ahead still filling it is told to stop, and waited for up
    /// to `wait`; false when it did not stop (the spool is then left alone and not served).
    pub fn claim(&self, owner: &Owner, wait: Duration) -> Result<bool, BindError> {
        let io = |e| BindError::Io(self.dir.display().to_string(), e);
        let lock = self.lock_file().map_err(io)?;
        if lock.try_lock().is_err() {
            // Read-ahead empties the spool and quits when recovery asks for a non-segment.
            write_atomic(&self.dir.join(WANTED), STOP.as_bytes(), SPOOL_TMP).map_err(io)?;
            let began = Instant::now();
            while lock.try_lock().is_err() {
                if began.elapsed() >= wait {
                    tracing::warn!(spool = %self.dir.display(), "the spool belongs to another repository or keyring and its read-ahead is still running; fetching from the archive");
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Another call of this config may have bound it while this one waited.
        let was = self.binding(owner)?;
        if was == Binding::Bound {
            return Ok(true);
        }
        let removed = self.clear().map_err(io)?;
        self.write_owner(owner)?;
        if was == Binding::Foreign || removed > 0 {
            tracing::warn!(
                spool = %self.dir.display(),
                removed,
                "the spool was filled for another repository or keyring (or by an older tidemark): cleared it and bound it to this config"
            );
        }
        Ok(true)
    }

    /// Removes every file but the lock and read-ahead's log; returns how many went.
    fn clear(&self) -> std::io::Result<usize> {
        let mut removed = 0;
        for e in std::fs::read_dir(&self.dir)?.flatten() {
            let keep = e.file_name() == LOCK || e.file_name() == PREFETCH_LOG;
            if !keep && e.file_type().is_ok_and(|t| !t.is_dir()) && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn write_owner(&self, owner: &Owner) -> Result<(), BindError> {
        let text = format!(
            "tidemark spool owner v1\ndigest {}\nstamp {}\n",
            hex::encode(owner.digest()?),
            hex::encode(owner.stamp()?)
        );
        write_atomic(&self.dir.join(OWNER), text.as_bytes(), SPOOL_TMP)
            .map_err(|e| BindError::Io(self.dir.display().to_string(), e))
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
            if !crate::wal::name::is_segment_name(segment) || keep.iter().any(|k| k == segment) {
                continue;
            }
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// How a spool's binding compares with a config's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// Filled for this repository and keyring.
    Bound,
    /// No binding yet: new, or filled by an older tidemark.
    Unbound,
    /// Filled for another repository, cluster or keyring.
    Foreign,
}

/// Why a spool's binding could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The spool could not be read or written.
    #[error("spool {0}: {1}")]
    Io(String, std::io::Error),
    /// The keyring could not be read.
    #[error(transparent)]
    Keyring(#[from] KeyringError),
}

/// The config a spool serves: the repository its segments come from and the keyring that
/// opens them. The keyring is loaded at most once, and only when the cheap check cannot tell.
#[derive(Debug)]
pub struct Owner {
    repository_url: String,
    cluster: String,
    keyring_path: PathBuf,
    keyring: OnceCell<Keyring>,
}

impl Owner {
    /// The owner for a config's repository URL, cluster handle and keyring file.
    pub fn new(repository_url: &str, cluster: &str, keyring_path: &Path) -> Owner {
        Owner {
            repository_url: repository_url.to_string(),
            cluster: cluster.to_string(),
            keyring_path: keyring_path.to_path_buf(),
            keyring: OnceCell::new(),
        }
    }

    fn keyring(&self) -> Result<&Keyring, KeyringError> {
        if let Some(k) = self.keyring.get() {
            return Ok(k);
        }
        let k = Keyring::load(&self.keyring_path)?;
        Ok(self.keyring.get_or_init(|| k))
    }

    fn digest(&self) -> Result<[u8; 32], KeyringError> {
        Ok(binding_digest(&self.repository_url, &self.cluster, self.keyring()?))
    }

    fn stamp(&self) -> Result<[u8; 32], KeyringError> {
        let m = std::fs::metadata(&self.keyring_path).map_err(|e| KeyringError::Read(self.keyring_path.clone(), e))?;
        let file = [
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime() as u64,
            m.mtime_nsec() as u64,
            m.ctime() as u64,
            m.ctime_nsec() as u64,
        ];
        Ok(stamp_digest(&self.repository_url, &self.cluster, &self.keyring_path.to_string_lossy(), &file))
    }
}

/// The spool binding of a config: a digest of the repository URL, the cluster handle, and
/// each key's id with an HMAC-SHA256 of a fixed label under that key, so it matches only a
/// keyring with the same keys and cannot be computed without them.
pub fn binding_digest(repository_url: &str, cluster: &str, keyring: &Keyring) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [BINDING_LABEL, repository_url.as_bytes(), cluster.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    for id in keyring.ids() {
        let Some(key) = keyring.get(id) else { continue };
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key.bytes()) else { continue };
        mac.update(BINDING_LABEL);
        h.update((id.len() as u64).to_be_bytes());
        h.update(id.as_bytes());
        h.update(mac.finalize().into_bytes());
    }
    h.finalize().into()
}

/// The cheap check: the same config naming the same keyring file, unchanged since (device,
/// inode, size, modification and change times), has the same binding without reading it.
fn stamp_digest(repository_url: &str, cluster: &str, keyring_path: &str, file: &[u64]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in
        [&b"tidemark spool stamp v1"[..], repository_url.as_bytes(), cluster.as_bytes(), keyring_path.as_bytes()]
    {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    for v in file {
        h.update(v.to_be_bytes());
    }
    h.finalize().into()
}

/// (binding digest, stamp) from an `.owner` file's text.
fn parse_owner(text: &str) -> Option<([u8; 32], [u8; 32])> {
    let mut lines = text.lines();
    if lines.next()? != "tidemark spool owner v1" {
        return None;
    }
    let field = |line: Option<&str>, name: &str| -> Option<[u8; 32]> {
        let v = line?.strip_prefix(name)?.strip_prefix(' ')?;
        hex::decode(v).ok()?.try_into().ok()
    };
    Some((field(lines.next(), "digest")?, field(lines.next(), "stamp")?))
}

/// Opens (creating it 0600 if missing, with the spool directory's owner) a file in the spool
/// without truncating it.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(FILE_MODE).open(path)?;
    take_dir_owner(&f, path)?;
    Ok(f)
}

/// Opens (creating it 0600 if missing, with the spool directory's owner) a log file in the
/// spool for appending.
pub fn append_log(path: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new().create(true).append(true).mode(FILE_MODE).open(path)?;
    take_dir_owner(&f, path)?;
    Ok(f)
}

/// Run as root, gives a file just created at `path` the owner of its directory (the spool's,
/// which [`Spool::ensure_dir`] gave the database user): what root spools, that user reads.
/// One stat per file, and only as root.
fn take_dir_owner(f: &std::fs::File, path: &Path) -> std::io::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let m = std::fs::metadata(dir)?;
    if m.uid() == 0 && m.gid() == 0 {
        return Ok(());
    }
    std::os::unix::fs::fchown(f, Some(m.uid()), Some(m.gid()))
}

/// Creates `dir` and its missing parents 0700, each owned by `ids` (run as root only).
fn create_dirs_owned(dir: &Path, (uid, gid): (u32, u32)) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs_owned(parent, (uid, gid))?;
    }
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => std::os::unix::fs::lchown(dir, Some(uid), Some(gid)),
        // Another process made it meanwhile: its owner stands.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
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
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        // Spooled files are plaintext WAL. A destination keeps the caller's umask: PostgreSQL
        // runs restore_command under its own data-directory umask.
        if tmp_tag == SPOOL_TMP {
            opts.mode(FILE_MODE);
        }
        let file = opts.open(&tmp).map_err(&io_err)?;
        if tmp_tag == SPOOL_TMP {
            take_dir_owner(&file, &tmp).map_err(&io_err)?;
        }
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
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

    const S1: &str = "000000010000000000000001";
    const S2: &str = "000000010000000000000002";

    fn keyring_file(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        Keyring::keygen(&p).unwrap();
        p
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn binding_digest_depends_on_repository_cluster_and_every_key() {
        let a = Keyring::generate("k1");
        let same_id_other_key = Keyring::generate("k1");
        let d = binding_digest;
        assert_eq!(d("s3://b/p", "c", &a), d("s3://b/p", "c", &a));
        assert_ne!(d("s3://b/p", "c", &a), d("s3://b/p", "c", &same_id_other_key));
        assert_ne!(d("s3://b/p", "c", &a), d("s3://b/q", "c", &a));
        assert_ne!(d("s3://b/p", "c", &a), d("s3://b/p", "d", &a));
        // Fields are length-prefixed: moving a byte across a boundary is another binding.
        assert_ne!(d("s3://b/pc", "", &a), d("s3://b/p", "c", &a));
        let mut rotated = a.clone();
        rotated.add_generated("k2");
        assert_ne!(d("s3://b/p", "c", &a), d("s3://b/p", "c", &rotated));
    }

    #[test]
    fn a_spool_serves_only_the_config_that_filled_it() {
        let d = tempfile::tempdir().unwrap();
        let (ka, kb) = (keyring_file(d.path(), "ka"), keyring_file(d.path(), "kb"));
        let sp = Spool::new(&d.path().join("spool"), "c");
        let a = Owner::new("file:///r", "c", &ka);
        assert_eq!(sp.binding(&a).unwrap(), Binding::Unbound);
        // What an older tidemark (or anyone) left unbound is not trusted.
        sp.put(S1, b"unbound").unwrap();
        assert!(sp.claim(&a, Duration::ZERO).unwrap());
        assert!(!sp.has(S1));
        assert_eq!(sp.binding(&a).unwrap(), Binding::Bound);
        sp.put(S1, b"a's").unwrap();
        for other in
            [Owner::new("file:///r", "c", &kb), Owner::new("file:///q", "c", &ka), Owner::new("file:///r", "d", &ka)]
        {
            assert_eq!(sp.binding(&other).unwrap(), Binding::Foreign, "{other:?}");
        }
        // An unchanged keyring file settles it without reading the keys.
        let fast = Owner::new("file:///r", "c", &ka);
        assert_eq!(sp.binding(&fast).unwrap(), Binding::Bound);
        assert!(fast.keyring.get().is_none(), "the keyring was read");
        // The same keys in a touched file: read once, still bound, and the stamp is renewed.
        let f = std::fs::File::options().write(true).open(&ka).unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(60)).unwrap();
        let touched = Owner::new("file:///r", "c", &ka);
        assert_eq!(sp.binding(&touched).unwrap(), Binding::Bound);
        assert!(touched.keyring.get().is_some());
        let again = Owner::new("file:///r", "c", &ka);
        assert_eq!(sp.binding(&again).unwrap(), Binding::Bound);
        assert!(again.keyring.get().is_none());
        // Another keyring claims it: everything but the lock and the log goes.
        sp.mark(S2, "none");
        sp.set_wanted(&Wanted { name: S1.into(), taken: false }).unwrap();
        std::fs::write(sp.dir().join(PREFETCH_LOG), b"warnings").unwrap();
        let b = Owner::new("file:///r", "c", &kb);
        assert!(sp.claim(&b, Duration::ZERO).unwrap());
        assert!(!sp.has(S1) && sp.wanted().is_none() && !sp.mark_path(S2, "none").exists());
        assert!(sp.dir().join(PREFETCH_LOG).exists() && sp.dir().join(LOCK).exists());
        assert_eq!(sp.binding(&b).unwrap(), Binding::Bound);
        assert_eq!(sp.binding(&Owner::new("file:///r", "c", &ka)).unwrap(), Binding::Foreign);
        // A damaged owner file vouches for nothing; a missing keyring is the caller's to report.
        std::fs::write(sp.dir().join(OWNER), b"tidemark spool owner v1\ndigest zz\n").unwrap();
        assert_eq!(sp.binding(&b).unwrap(), Binding::Foreign);
        assert!(sp.claim(&b, Duration::ZERO).unwrap());
        let gone = Owner::new("file:///r", "c", &d.path().join("no-keyring"));
        assert!(matches!(sp.binding(&gone), Err(BindError::Keyring(_))));
    }

    #[test]
    fn another_configs_running_read_ahead_is_stopped_before_the_spool_is_claimed() {
        let d = tempfile::tempdir().unwrap();
        let ka = keyring_file(d.path(), "ka");
        let sp = Spool::new(d.path(), "c");
        let a = Owner::new("file:///r", "c", &ka);
        let lock = sp.lock_file().unwrap();
        lock.try_lock().unwrap();
        sp.put(S1, b"someone else's").unwrap();
        assert!(!sp.claim(&a, Duration::from_millis(30)).unwrap(), "claimed while read-ahead runs");
        assert!(sp.has(S1), "cleared under a running read-ahead");
        // Read-ahead reads a non-segment request as the end of its window and quits.
        let w = sp.wanted().unwrap();
        assert!(w.window(4, DEFAULT_SEGMENT_SIZE).is_empty(), "{w:?}");
        let quits = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(lock);
        });
        assert!(sp.claim(&a, Duration::from_secs(30)).unwrap());
        quits.join().unwrap();
        assert!(!sp.has(S1));
        assert_eq!(sp.binding(&a).unwrap(), Binding::Bound);
    }

    #[test]
    fn the_spool_is_private_and_an_old_one_of_ours_is_made_private() {
        let d = tempfile::tempdir().unwrap();
        let ka = keyring_file(d.path(), "ka");
        let base = d.path().join("new/spool");
        let sp = Spool::new(&base, "c");
        assert!(sp.claim(&Owner::new("file:///r", "c", &ka), Duration::ZERO).unwrap());
        sp.put(S1, b"plaintext WAL").unwrap();
        sp.mark(S2, "error");
        sp.set_wanted(&Wanted { name: S1.into(), taken: true }).unwrap();
        write_atomic_with(&sp.path(S2), SPOOL_TMP, |e| e, |out| out.write_all(b"streamed")).unwrap();
        for dir in [sp.dir(), base.as_path(), base.parent().unwrap()] {
            assert_eq!(mode(dir), DIR_MODE, "{}", dir.display());
        }
        let mut files = 0;
        for e in std::fs::read_dir(sp.dir()).unwrap().flatten() {
            assert_eq!(mode(&e.path()), FILE_MODE, "{}", e.path().display());
            files += 1;
        }
        assert!(files >= 6, "{files} files");
        // A spool left 0755 with 0644 segments (older tidemark, loose umask) is ours: fixed.
        std::fs::set_permissions(sp.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(sp.path(S1), std::fs::Permissions::from_mode(0o644)).unwrap();
        sp.ensure_dir().unwrap();
        assert_eq!((mode(sp.dir()), mode(&sp.path(S1))), (DIR_MODE, FILE_MODE));
    }

    #[test]
    fn run_as_root_everything_in_the_spool_is_the_database_users() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (chown)");
            return;
        }
        // Any non-root ids do: root may chown to ids without a passwd entry.
        let ids = (4242, 4343);
        let owned = |p: &Path| {
            let m = std::fs::symlink_metadata(p).unwrap();
            (m.uid(), m.gid())
        };
        let d = tempfile::tempdir().unwrap();
        let ka = keyring_file(d.path(), "ka");
        // The spool's parents do not exist yet, under a root-owned directory.
        let base = d.path().join("var/spool");
        let sp = Spool::new(&base, "c").owned_by(Some(ids));
        assert!(sp.claim(&Owner::new("file:///r", "c", &ka), Duration::ZERO).unwrap());
        sp.mark(S2, "error");
        sp.set_wanted(&Wanted { name: S1.into(), taken: false }).unwrap();
        write_atomic_with(&sp.path(S1), SPOOL_TMP, |e| e, |out| out.write_all(b"streamed")).unwrap();
        drop(append_log(&sp.dir().join(PREFETCH_LOG)).unwrap());
        for dir in [sp.dir(), base.as_path(), base.parent().unwrap()] {
            assert_eq!(owned(dir), ids, "{}", dir.display());
        }
        let mut files = 0;
        for e in std::fs::read_dir(sp.dir()).unwrap().flatten() {
            assert_eq!(owned(&e.path()), ids, "{}", e.path().display());
            files += 1;
        }
        assert!(files >= 6, "{files} files");
        // A spool an older root run left root's (directory and files) is given back.
        let old = Spool::new(&d.path().join("old"), "c");
        old.ensure_dir().unwrap();
        write_atomic(&old.path(S1), b"wal", SPOOL_TMP).unwrap();
        assert_eq!(owned(&old.path(S1)), (0, 0));
        let old = old.owned_by(Some(ids));
        old.ensure_dir().unwrap();
        assert_eq!((owned(old.dir()), owned(&old.path(S1))), (ids, ids));
        // Without a known user (not root, or no such user) nothing is chowned beyond the
        // parent's owner, as before.
        let plain = Spool::new(&d.path().join("plain"), "c");
        plain.ensure_dir().unwrap();
        assert_eq!(owned(plain.dir()), owned(d.path()));
    }

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
