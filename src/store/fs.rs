//! Local directory store: temp file, fsync, rename (or link for no-clobber), fsync dir.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{check_key, Leftovers, ObjectMeta, ObjectReader, ObjectStore, PutOutcome, Staged, StoreError};

/// Temp files start with this; listings skip them and keys may not use it.
pub const TEMP_PREFIX: &str = ".tidemark-tmp.";
/// Mode of the objects the store writes: sealed, but nobody else's business.
pub const OBJECT_MODE: u32 = 0o600;
/// Mode of the directories the store creates.
pub const DIR_MODE: u32 = 0o700;

/// A repository in a local directory.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> FsStore {
        FsStore { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn err(&self, op: &'static str, key: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend { store: self.describe(), op, key: key.to_string(), msg: e.to_string() }
    }
}

/// A temp file beside an object's destination; removed when dropped.
#[derive(Debug)]
pub struct TempFile {
    file: std::fs::File,
    path: PathBuf,
}

impl TempFile {
    /// A new temp file in the directory of `dest` (created if missing).
    fn beside(dest: &Path) -> std::io::Result<TempFile> {
        let dir = dest.parent().ok_or_else(|| std::io::Error::other("key has no parent directory"))?;
        create_dirs(dir)?;
        let path = dir.join(format!("{TEMP_PREFIX}{}", hex::encode(rand::random::<[u8; 8]>())));
        let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(OBJECT_MODE).open(&path)?;
        let tmp = TempFile { file, path };
        if let Some((uid, gid)) = owner_to_inherit(dir)? {
            std::os::unix::fs::fchown(&tmp.file, Some(uid), Some(gid))?;
        }
        Ok(tmp)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, for writing.
    pub fn file(&mut self) -> &mut std::fs::File {
        &mut self.file
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Published objects are links to it; the temp name itself never outlives the write.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Creates `dir` and its missing parents with mode 0700 (run as root, each takes the owner
/// of the directory it is made in).
pub fn create_dirs(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent)?;
    }
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        // Another writer made it meanwhile.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some((uid, gid)) = dir.parent().map(owner_to_inherit).transpose()?.flatten() {
        std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Run as root, what the store creates takes the owner of the directory it is created in:
/// with 0600/0700 modes a root-owned object would lock the database user out of a
/// repository it owns (a `policy set` or `backup create` run by an administrator).
fn owner_to_inherit(dir: &Path) -> std::io::Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let m = std::fs::metadata(dir)?;
    Ok((m.uid() != 0 || m.gid() != 0).then(|| (m.uid(), m.gid())))
}

/// Writes `data` to a new temp file beside `path`.
fn write_temp(path: &Path, data: &[u8]) -> std::io::Result<TempFile> {
    let mut tmp = TempFile::beside(path)?;
    tmp.file.write_all(data)?;
    Ok(tmp)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn put_blocking(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = write_temp(path, data)?;
    tmp.file.sync_all()?;
    std::fs::rename(&tmp.path, path)?;
    sync_dir(path.parent().unwrap_or(Path::new("/")))
}

fn put_if_absent_blocking(path: &Path, data: &[u8]) -> std::io::Result<PutOutcome> {
    if path.exists() {
        return Ok(PutOutcome::Exists);
    }
    publish_if_absent(write_temp(path, data)?, path)
}

/// Makes a written temp file durable and links it at `path` unless something is there.
fn publish_if_absent(tmp: TempFile, path: &Path) -> std::io::Result<PutOutcome> {
    if path.exists() {
        return Ok(PutOutcome::Exists);
    }
    tmp.file.sync_all()?;
    // link(2) fails if the target exists, so two racing writers cannot both win.
    let res = std::fs::hard_link(&tmp.path, path);
    drop(tmp);
    match res {
        Ok(()) => {
            sync_dir(path.parent().unwrap_or(Path::new("/")))?;
            Ok(PutOutcome::Created)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(PutOutcome::Exists),
        Err(e) => Err(e),
    }
}

/// One directory's entries under `prefix` (which ends in '/'); nothing deeper is read.
/// The entries of `dir` a listing shows, with their names: none when it does not exist;
/// temp files of writers and names that are not UTF-8 left out.
fn listed_entries(dir: &Path) -> std::io::Result<Vec<(String, std::fs::DirEntry)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        if !name.starts_with(TEMP_PREFIX) {
            out.push((name, entry));
        }
    }
    Ok(out)
}

fn level_blocking(root: &Path, prefix: &str, max: Option<usize>) -> std::io::Result<super::Level> {
    let mut out = super::Level::default();
    for (name, entry) in listed_entries(&root.join(prefix.trim_end_matches('/')))? {
        if max.is_some_and(|m| out.objects.len() >= m) {
            break;
        }
        let ft = entry.file_type()?;
        if ft.is_dir() {
            out.dirs.push(format!("{prefix}{name}/"));
        } else if ft.is_file() {
            out.objects.push(ObjectMeta { key: format!("{prefix}{name}"), size: entry.metadata()?.len() });
        }
    }
    out.objects.sort_by(|a, b| a.key.cmp(&b.key));
    out.dirs.sort();
    Ok(out)
}

/// The objects directly in one directory whose keys fall between `after` and `before`,
/// plus everything deeper under the prefix in that range (as `list` would), sorted.
fn range_blocking(
    root: &Path,
    prefix: &str,
    after: Option<&str>,
    before: Option<&str>,
) -> std::io::Result<Vec<ObjectMeta>> {
    let mut out = Vec::new();
    for (name, entry) in listed_entries(&root.join(prefix.trim_end_matches('/')))? {
        let key = format!("{prefix}{name}");
        let ft = entry.file_type()?;
        if ft.is_dir() {
            let sub = format!("{key}/");
            // A directory's keys all sort after `key/`; skip it when the range cannot reach them.
            if before.is_some_and(|b| sub.as_str() >= b) && !b_inside(before, &sub) {
                continue;
            }
            out.extend(list_blocking(root, &sub)?.into_iter().filter(|m| super::in_range(&m.key, after, before)));
        } else if ft.is_file() && super::in_range(&key, after, before) {
            out.push(ObjectMeta { size: entry.metadata()?.len(), key });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// Whether `before` lies inside the directory `sub` (so part of it sorts before the bound).
fn b_inside(before: Option<&str>, sub: &str) -> bool {
    before.is_some_and(|b| b.starts_with(sub))
}

fn list_blocking(root: &Path, prefix: &str) -> std::io::Result<Vec<ObjectMeta>> {
    // Only walk the deepest directory the prefix names; filter the rest by string prefix.
    let dir_part = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let start = if dir_part.is_empty() { root.to_path_buf() } else { root.join(dir_part) };
    let mut out = Vec::new();
    let mut stack = vec![start];
    while let Some(dir) = stack.pop() {
        for (_, entry) in listed_entries(&dir)? {
            let path = entry.path();
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                let Ok(rel) = path.strip_prefix(root) else {
                    continue;
                };
                let Some(key) = rel.to_str() else { continue };
                if key.starts_with(prefix) {
                    out.push(ObjectMeta { key: key.to_string(), size: entry.metadata()?.len() });
                }
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// Temp files and empty directories younger than this are left alone: a writer may have
/// just made them.
pub const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes temp files and empty directories under `root` last modified before `cutoff`;
/// `root` itself always stays. A directory is judged by its mtime before this sweep removed
/// anything in it, so nested empty directories go in one pass, while a directory a writer
/// touched since `cutoff` stays.
pub fn sweep_leftovers_in(root: &Path, cutoff: std::time::SystemTime) -> std::io::Result<Leftovers> {
    let mut out = Leftovers::default();
    match std::fs::read_dir(root) {
        Ok(_) => sweep_dir(root, cutoff, true, &mut out),
        // Nothing written yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(out)
}

fn modified_before(meta: &std::fs::Metadata, cutoff: std::time::SystemTime) -> bool {
    meta.modified().is_ok_and(|t| t < cutoff)
}

fn sweep_dir(dir: &Path, cutoff: std::time::SystemTime, is_root: bool, out: &mut Leftovers) {
    let old = std::fs::symlink_metadata(dir).is_ok_and(|m| modified_before(&m, cutoff));
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        let path = entry.path();
        if ft.is_dir() {
            sweep_dir(&path, cutoff, false, out);
        } else if ft.is_file()
            && entry.file_name().to_str().is_some_and(|n| n.starts_with(TEMP_PREFIX))
            && entry.metadata().is_ok_and(|m| modified_before(&m, cutoff))
        {
            match std::fs::remove_file(&path) {
                Ok(()) => out.temp_files += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not remove a stale temp file"),
            }
        }
    }
    if !is_root && old {
        // rmdir refuses a directory that is not empty, so a writer's new file is never lost.
        match std::fs::remove_dir(dir) {
            Ok(()) => out.dirs += 1,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::NotFound) => {}
            Err(e) => tracing::warn!(path = %dir.display(), error = %e, "could not remove an empty directory"),
        }
    }
}

#[async_trait]
impl ObjectStore for FsStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let path = self.path(key)?;
        tokio::task::spawn_blocking(move || put_blocking(&path, &data))
            .await
            .map_err(|e| self.err("put", key, e))?
            .map_err(|e| self.err("put", key, e))
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        let path = self.path(key)?;
        tokio::task::spawn_blocking(move || put_if_absent_blocking(&path, &data))
            .await
            .map_err(|e| self.err("put", key, e))?
            .map_err(|e| self.err("put", key, e))
    }

    fn stage(&self, key: &str) -> Result<Staged, StoreError> {
        let path = self.path(key)?;
        TempFile::beside(&path).map(Staged::File).map_err(|e| self.err("put", key, e))
    }

    async fn commit_if_absent(&self, key: &str, staged: Staged) -> Result<PutOutcome, StoreError> {
        let path = self.path(key)?;
        let tmp = match staged {
            Staged::File(t) => t,
            Staged::Memory(v) => return self.put_if_absent(key, Bytes::from(v)).await,
        };
        tokio::task::spawn_blocking(move || publish_if_absent(tmp, &path))
            .await
            .map_err(|e| self.err("put", key, e))?
            .map_err(|e| self.err("put", key, e))
    }

    async fn get(&self, key: &str) -> Result<Option<ObjectReader>, StoreError> {
        let path = self.path(key)?;
        match tokio::fs::File::open(&path).await {
            Ok(f) => Ok(Some(Box::pin(f))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err("get", key, e)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta { key: key.to_string(), size: m.len() })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err("head", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let root = self.root.clone();
        let p = prefix.to_string();
        tokio::task::spawn_blocking(move || list_blocking(&root, &p))
            .await
            .map_err(|e| self.err("list", prefix, e))?
            .map_err(|e| self.err("list", prefix, e))
    }

    async fn list_level(&self, prefix: &str) -> Result<super::Level, StoreError> {
        if !prefix.ends_with('/') {
            return Ok(super::level_of(prefix, self.list(prefix).await?));
        }
        let root = self.root.clone();
        let p = prefix.to_string();
        tokio::task::spawn_blocking(move || level_blocking(&root, &p, None))
            .await
            .map_err(|e| self.err("list", prefix, e))?
            .map_err(|e| self.err("list", prefix, e))
    }

    async fn list_between(
        &self,
        prefix: &str,
        after: Option<&str>,
        before: Option<&str>,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        if !prefix.ends_with('/') {
            return Ok(self
                .list(prefix)
                .await?
                .into_iter()
                .filter(|m| super::in_range(&m.key, after, before))
                .collect());
        }
        // One directory; names outside the range are never stat'ed.
        let root = self.root.clone();
        let (p, a, b) = (prefix.to_string(), after.map(str::to_string), before.map(str::to_string));
        tokio::task::spawn_blocking(move || range_blocking(&root, &p, a.as_deref(), b.as_deref()))
            .await
            .map_err(|e| self.err("list", prefix, e))?
            .map_err(|e| self.err("list", prefix, e))
    }

    async fn list_some(&self, prefix: &str, max: usize) -> Result<Vec<ObjectMeta>, StoreError> {
        if !prefix.ends_with('/') {
            let mut all = self.list(prefix).await?;
            all.truncate(max);
            return Ok(all);
        }
        let root = self.root.clone();
        let p = prefix.to_string();
        tokio::task::spawn_blocking(move || level_blocking(&root, &p, Some(max)).map(|l| l.objects))
            .await
            .map_err(|e| self.err("list", prefix, e))?
            .map_err(|e| self.err("list", prefix, e))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("delete", key, e)),
        }
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn sweep_leftovers(&self) -> Result<Leftovers, StoreError> {
        let root = self.root.clone();
        let cutoff = std::time::SystemTime::now().checked_sub(LEFTOVER_AGE).unwrap_or(std::time::UNIX_EPOCH);
        tokio::task::spawn_blocking(move || sweep_leftovers_in(&root, cutoff))
            .await
            .map_err(|e| self.err("sweep", "*", e))?
            .map_err(|e| self.err("sweep", "*", e))
    }
}

#[cfg(test)]
mod sweep_tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn age(p: &Path, by: Duration) {
        let t = SystemTime::now() - by;
        let f = std::fs::File::open(p).expect("open to set mtime");
        f.set_modified(t).expect("set mtime");
    }

    #[test]
    fn removes_only_old_temp_files_and_old_empty_dirs() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path();
        let hour = Duration::from_secs(3600);
        let mk = |rel: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(&p).expect("mkdir");
            p
        };
        let old_tmp = mk("a/wal").join(format!("{TEMP_PREFIX}old"));
        let new_tmp = mk("a/wal").join(format!("{TEMP_PREFIX}new"));
        let object = mk("a/wal").join("000000010000000000000001");
        for p in [&old_tmp, &new_tmp, &object] {
            std::fs::write(p, b"x").expect("write");
        }
        age(&old_tmp, 2 * hour);
        age(&object, 5 * hour);
        // Nested empty directories, all old: gone in one pass.
        let nested = mk("a/backups/b1/data");
        age(&nested, 2 * hour);
        age(&root.join("a/backups/b1"), 2 * hour);
        // Old parent of a fresh empty directory: both stay.
        let fresh = mk("a/backups/b2/data");
        age(&root.join("a/backups/b2"), 2 * hour);
        age(&root.join("a/backups"), 2 * hour);
        age(&root.join("a/wal"), 2 * hour);
        age(&root.join("a"), 2 * hour);
        age(root, 2 * hour);

        let cutoff = SystemTime::now() - hour;
        let got = sweep_leftovers_in(root, cutoff).expect("sweep");
        assert_eq!(got, Leftovers { temp_files: 1, dirs: 2, uploads: 0 });
        assert!(!old_tmp.exists() && new_tmp.exists() && object.exists());
        assert!(!root.join("a/backups/b1").exists());
        assert!(fresh.exists());
        assert!(root.join("a/backups").exists() && root.join("a/wal").exists());

        // An empty, old root is never removed.
        let e = tempfile::tempdir().expect("tempdir");
        age(e.path(), 2 * hour);
        assert_eq!(sweep_leftovers_in(e.path(), cutoff).expect("sweep"), Leftovers::default());
        assert!(e.path().exists());
        // A root that was never written to is nothing to sweep.
        assert_eq!(sweep_leftovers_in(&e.path().join("none"), cutoff).expect("sweep"), Leftovers::default());
    }
}

#[cfg(test)]
mod mode_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn objects_are_0600_and_new_directories_0700() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("repo");
        let s = FsStore::new(&root);
        s.put("policy.json", Bytes::from_static(b"p")).await.unwrap();
        s.put_if_absent("clusters/c/cluster.json", Bytes::from_static(b"c")).await.unwrap();
        let staged = s.stage("clusters/c/wal/00000001/000000010000000000000001").unwrap();
        let Staged::File(mut t) = staged else { panic!("fs stages to a file") };
        t.file().write_all(b"w").unwrap();
        s.commit_if_absent("clusters/c/wal/00000001/000000010000000000000001", Staged::File(t)).await.unwrap();
        for obj in ["policy.json", "clusters/c/cluster.json", "clusters/c/wal/00000001/000000010000000000000001"] {
            assert_eq!(mode(&root.join(obj)), OBJECT_MODE, "{obj}");
        }
        for dir in ["", "clusters", "clusters/c", "clusters/c/wal", "clusters/c/wal/00000001"] {
            assert_eq!(mode(&root.join(dir)), DIR_MODE, "{dir:?}");
        }
        // A directory that was there keeps its mode: the store changes only what it creates.
        std::fs::create_dir_all(root.join("open")).unwrap();
        std::fs::set_permissions(root.join("open"), std::fs::Permissions::from_mode(0o755)).unwrap();
        s.put("open/x", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!((mode(&root.join("open")), mode(&root.join("open/x"))), (0o755, OBJECT_MODE));
    }

    #[tokio::test]
    async fn as_root_new_objects_take_the_owner_of_their_directory() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: ownership inheritance not exercised");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("repo");
        std::fs::create_dir(&root).unwrap();
        // Any ids do: root may chown to ids no user has.
        std::os::unix::fs::chown(&root, Some(54321), Some(54322)).unwrap();
        let s = FsStore::new(&root);
        s.put("clusters/c/cluster.json", Bytes::from_static(b"c")).await.unwrap();
        for p in ["clusters", "clusters/c", "clusters/c/cluster.json"] {
            let m = std::fs::metadata(root.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (54321, 54322), "{p}");
        }
    }
}
