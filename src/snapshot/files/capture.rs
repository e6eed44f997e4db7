//! The `files` capture: the data directory and tablespaces walked, packed into sealed
//! bundles and uploaded in parallel, with memory bounded by `workers × bundle size`
//! whatever the database size.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;

use crate::codec::envelope::read_full;
use crate::codec::{SealStats, Sealer};
use crate::repo::Repository;
use crate::snapshot::files::{Bundle, EntryKind, FileEntry, Part};
use crate::store::{PutOutcome, Staged};

/// Directories whose contents a base backup leaves out (PostgreSQL's basebackup.c list).
const EXCLUDE_DIR_CONTENTS: &[&str] =
    &["pg_wal", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots", "pg_stat_tmp", "pg_subtrans"];

/// Files a base backup leaves out wherever they are.
const EXCLUDE_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "pg_internal.init",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
    "backup_manifest",
    "current_logfiles",
    "postgresql.auto.conf.tmp",
    "recovery.signal",
    "standby.signal",
    "tidemark.restored",
    "TIDEMARK_RESTORE_INCOMPLETE",
];

/// Whether a name is left out of a base backup (see PostgreSQL's "Making a Base Backup").
pub fn excluded_file(name: &str) -> bool {
    EXCLUDE_FILES.contains(&name) || name.starts_with("pgsql_tmp")
}

/// Unlogged relations: every fork of a relfilenode that has an `_init` fork is left out,
/// except the init fork itself (recovery resets them from it).
fn unlogged_bases(names: &[String]) -> HashSet<String> {
    names
        .iter()
        .filter_map(|n| n.strip_suffix("_init"))
        .filter(|b| b.bytes().all(|c| c.is_ascii_digit()))
        .map(str::to_string)
        .collect()
}

fn is_unlogged_fork(name: &str, bases: &HashSet<String>) -> bool {
    if name.ends_with("_init") {
        return false;
    }
    let base = name.split(['_', '.']).next().unwrap_or(name);
    bases.contains(base)
}

/// One thing to copy.
#[derive(Debug, Clone)]
pub struct Item {
    /// Manifest entry (parts filled in while copying).
    pub entry: FileEntry,
    /// Where it is on disk.
    pub source: PathBuf,
    /// The byte ranges to read (half-open); `None` reads the whole file (an incremental
    /// backup reads only what changed, and keeps the rest from its base).
    pub ranges: Option<Vec<(u64, u64)>>,
}

fn mtime(m: &std::fs::Metadata) -> i64 {
    m.mtime()
}

fn rel_join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

/// Lists everything a base backup copies from `data_dir` (following pg_tblspc links).
pub fn walk(data_dir: &Path) -> anyhow::Result<Vec<Item>> {
    let mut out = Vec::new();
    walk_dir(data_dir, "", &mut out, true)?;
    Ok(out)
}

fn walk_dir(dir: &Path, rel: &str, out: &mut Vec<Item>, top: bool) -> anyhow::Result<()> {
    let mut names: Vec<String> = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        if let Some(n) = e.file_name().to_str() {
            names.push(n.to_string());
        }
    }
    names.sort();
    let bases = unlogged_bases(&names);
    for name in names {
        if excluded_file(&name) || is_unlogged_fork(&name, &bases) {
            continue;
        }
        let path = dir.join(&name);
        let rel_path = rel_join(rel, &name);
        // Vanished between listing and stat: the table was dropped; WAL replays the drop.
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        let in_tblspc = rel == "pg_tblspc";
        if ft.is_symlink() && !in_tblspc {
            // A symlinked pg_wal (or other dir) is recreated as a plain directory.
            let Ok(target_meta) = std::fs::metadata(&path) else { continue };
            if target_meta.is_dir() {
                out.push(Item {
                    entry: dir_entry(&rel_path, target_meta.permissions().mode() & 0o7777, mtime(&target_meta)),
                    source: path.clone(),
                    ranges: None,
                });
                if !(top && EXCLUDE_DIR_CONTENTS.contains(&name.as_str())) {
                    walk_dir(&path, &rel_path, out, false)?;
                }
            }
            continue;
        }
        if ft.is_symlink() && in_tblspc {
            let target = std::fs::read_link(&path)?;
            out.push(Item {
                entry: FileEntry {
                    path: rel_path.clone(),
                    kind: EntryKind::Link,
                    size: 0,
                    mode,
                    mtime: mtime(&meta),
                    sha256: String::new(),
                    parts: Vec::new(),
                    target: Some(target.display().to_string()),
                },
                source: path.clone(),
                ranges: None,
            });
            walk_dir(&path, &rel_path, out, false)?;
            continue;
        }
        if ft.is_dir() {
            out.push(Item { entry: dir_entry(&rel_path, mode, mtime(&meta)), source: path.clone(), ranges: None });
            if top && EXCLUDE_DIR_CONTENTS.contains(&name.as_str()) {
                // pg_wal keeps its archive_status directory, empty.
                if name == "pg_wal" {
                    out.push(Item {
                        entry: dir_entry("pg_wal/archive_status", 0o700, mtime(&meta)),
                        source: path.join("archive_status"),
                        ranges: None,
                    });
                }
                continue;
            }
            if name == "pgsql_tmp" {
                continue;
            }
            walk_dir(&path, &rel_path, out, false)?;
        } else if ft.is_file() {
            out.push(Item {
                entry: FileEntry {
                    path: rel_path,
                    kind: EntryKind::File,
                    size: meta.len(),
                    mode,
                    mtime: mtime(&meta),
                    sha256: String::new(),
                    parts: Vec::new(),
                    target: None,
                },
                source: path,
                ranges: None,
            });
        }
    }
    Ok(())
}

fn dir_entry(path: &str, mode: u32, mtime: i64) -> FileEntry {
    FileEntry {
        path: path.to_string(),
        kind: EntryKind::Dir,
        size: 0,
        mode,
        mtime,
        sha256: String::new(),
        parts: Vec::new(),
        target: None,
    }
}

/// A planned piece of a file inside a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Index into the item list.
    pub item: usize,
    /// Offset in the file.
    pub file_offset: u64,
    /// Planned length (the file may have shrunk by the time it is read).
    pub len: u64,
}

/// Packs stretches of files (item, offset, length) into bundles of at most `bundle_bytes`
/// (pure): large stretches are split.
pub fn pack(spans: &[(usize, u64, u64)], bundle_bytes: u64) -> Vec<Vec<Piece>> {
    let mut bundles: Vec<Vec<Piece>> = Vec::new();
    let mut cur: Vec<Piece> = Vec::new();
    let mut room = bundle_bytes;
    for &(item, start, len) in spans {
        let size = start + len;
        let mut off = start;
        while off < size {
            if room == 0 {
                bundles.push(std::mem::take(&mut cur));
                room = bundle_bytes;
            }
            let len = (size - off).min(room);
            cur.push(Piece { item, file_offset: off, len });
            off += len;
            room -= len;
        }
    }
    if !cur.is_empty() {
        bundles.push(cur);
    }
    bundles
}

/// Bytes read per step while a bundle streams through the sealer.
const READ_STEP: usize = 1 << 20;

/// A bundle sealed into its staged object, with the parts it holds.
struct Sealed {
    staged: Staged,
    parts: Vec<(usize, Part)>,
    stats: SealStats,
}

/// Streams a bundle's pieces from disk through the sealer into `staged`, one read step at a
/// time (a file that shrank gives fewer bytes; one that vanished gives none: WAL replay
/// recreates both).
fn seal_bundle(
    repo: &Repository,
    key: &str,
    items: &[Item],
    pieces: &[Piece],
    bundle: usize,
    staged: Staged,
) -> anyhow::Result<Sealed> {
    let (keyring, level) = repo.sealing();
    let mut sealer = Sealer::new(keyring, key, level, staged)?;
    let mut parts = Vec::with_capacity(pieces.len());
    let mut buf = vec![0u8; READ_STEP];
    let mut offset = 0u64;
    for p in pieces {
        let src = &items[p.item].source;
        let mut f = match std::fs::File::open(src) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", src.display())),
        };
        f.seek(SeekFrom::Start(p.file_offset))?;
        let mut f = f.take(p.len);
        let (mut got, mut crc) = (0u64, 0u32);
        loop {
            let n = read_full(&mut f, &mut buf).with_context(|| format!("reading {}", src.display()))?;
            if n == 0 {
                break;
            }
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            sealer.write_all(&buf[..n]).with_context(|| format!("sealing {key}"))?;
            got += n as u64;
        }
        parts.push((
            p.item,
            Part { bundle, offset, file_offset: p.file_offset, len: got, crc32c: Some(crc), sha256: String::new() },
        ));
        offset += got;
    }
    let (staged, stats) = sealer.finish()?;
    Ok(Sealed { staged, parts, stats })
}

/// A stored bundle and the parts it holds (item index, part).
type Stored = (Bundle, Vec<(usize, Part)>);

/// Progress callback: bytes just stored.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Copies `items` into bundles under backup `id`, `workers` at a time. Fills in each entry's
/// parts, size and checksum; returns the bundles.
pub async fn capture(
    repo: &Repository,
    id: &str,
    items: &mut [Item],
    bundle_bytes: u64,
    workers: usize,
    progress: Progress,
) -> anyhow::Result<Vec<Bundle>> {
    let plan = pack(&spans(items), bundle_bytes);
    let shared: Arc<Vec<Item>> = Arc::new(items.to_vec());
    let results: Vec<anyhow::Result<Stored>> = futures::stream::iter(plan.into_iter().enumerate())
        .map(|(n, pieces)| {
            let shared = shared.clone();
            let progress = progress.clone();
            async move {
                let name = format!("b{n:06}");
                let key = repo.bundle_key(id, &name);
                let staged = repo.store().stage(&key)?;
                let (r, k) = (repo.clone(), key.clone());
                let sealed =
                    tokio::task::spawn_blocking(move || seal_bundle(&r, &k, &shared, &pieces, n, staged)).await??;
                if repo.store().commit_if_absent(&key, sealed.staged).await? == PutOutcome::Exists {
                    anyhow::bail!("{key} already exists in the repository: backup ids are never reused");
                }
                if n == 0 && std::env::var("TIDEMARK_FAILPOINT").is_ok_and(|v| v == "backup-after-bundle") {
                    // Test hook (as `sweep::purge::failpoint`, a layer above): killed with data stored.
                    eprintln!("tidemark: failpoint backup-after-bundle: aborting");
                    std::process::abort();
                }
                progress(sealed.stats.plain_bytes);
                let b = Bundle {
                    name,
                    plain_bytes: sealed.stats.plain_bytes,
                    stored_bytes: sealed.stats.sealed_bytes,
                    owner: None,
                };
                Ok((b, sealed.parts))
            }
        })
        .buffered(workers.max(1))
        .collect()
        .await;
    let mut bundles = Vec::new();
    for r in results {
        let (b, parts) = r?;
        bundles.push(b);
        for (item, part) in parts {
            items[item].entry.parts.push(part);
        }
    }
    for it in items.iter_mut().filter(|i| i.entry.kind == EntryKind::File) {
        it.entry.parts.sort_by_key(|p| p.file_offset);
        if it.ranges.is_none() {
            it.entry.size = it.entry.parts.iter().map(|p| p.len).sum();
        }
    }
    Ok(bundles)
}

/// What `items` read: (item, offset, length) of every file stretch, in order.
pub fn spans(items: &[Item]) -> Vec<(usize, u64, u64)> {
    let mut out = Vec::new();
    for (n, i) in items.iter().enumerate().filter(|(_, i)| i.entry.kind == EntryKind::File) {
        match &i.ranges {
            None => out.push((n, 0, i.entry.size)),
            Some(r) => out.extend(r.iter().filter(|(a, b)| a < b).map(|(a, b)| (n, *a, b - a))),
        }
    }
    out.retain(|(_, _, len)| *len > 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_splits_large_files_and_fills_bundles() {
        let b = pack(&[(0, 0, 10), (1, 0, 25), (3, 0, 5)], 16);
        let flat: Vec<Vec<(usize, u64, u64)>> =
            b.iter().map(|v| v.iter().map(|p| (p.item, p.file_offset, p.len)).collect()).collect();
        assert_eq!(flat, vec![vec![(0, 0, 10), (1, 0, 6)], vec![(1, 6, 16)], vec![(1, 22, 3), (3, 0, 5)]]);
        assert!(b.iter().all(|v| v.iter().map(|p| p.len).sum::<u64>() <= 16));
        assert!(pack(&[], 16).is_empty());
        // Stretches of a file start where they say.
        let b = pack(&[(0, 100, 10), (0, 300, 4)], 8);
        let flat: Vec<(u64, u64)> = b.iter().flatten().map(|p| (p.file_offset, p.len)).collect();
        assert_eq!(flat, vec![(100, 8), (108, 2), (300, 4)]);
    }

    #[test]
    fn walk_leaves_out_what_base_backups_leave_out() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for dir in [
            "base/1",
            "global",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_replslot/slot",
            "pg_subtrans",
            "base/pgsql_tmp",
            "pg_tblspc",
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        for f in [
            "PG_VERSION",
            "postmaster.pid",
            "postmaster.opts",
            "backup_label",
            "global/pg_control",
            "global/pg_internal.init",
            "base/1/1234",
            "base/1/1234_fsm",
            "base/1/5000",
            "base/1/5000.1",
            "base/1/5000_vm",
            "base/1/5000_init",
            "base/pgsql_tmp/pgsql_tmp123.0",
            "pg_wal/000000010000000000000001",
            "pg_stat_tmp/db.stat",
            "pg_replslot/slot/state",
            "pg_subtrans/0000",
        ] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        let ts = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(ts.path().join("PG_15_1/5")).unwrap();
        std::fs::write(ts.path().join("PG_15_1/5/777"), b"t").unwrap();
        std::os::unix::fs::symlink(ts.path(), root.join("pg_tblspc/16384")).unwrap();

        let paths: Vec<String> = walk(root).unwrap().into_iter().map(|i| i.entry.path).collect();
        for want in [
            "PG_VERSION",
            "global/pg_control",
            "base/1/1234",
            "base/1/1234_fsm",
            "base/1/5000_init",
            "pg_wal",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_replslot",
            "pg_subtrans",
            "pg_tblspc/16384",
            "pg_tblspc/16384/PG_15_1/5/777",
        ] {
            assert!(paths.contains(&want.to_string()), "missing {want}: {paths:?}");
        }
        for never in [
            "postmaster.pid",
            "postmaster.opts",
            "backup_label",
            "global/pg_internal.init",
            "base/1/5000",
            "base/1/5000.1",
            "base/1/5000_vm",
            "base/pgsql_tmp",
            "pg_wal/000000010000000000000001",
            "pg_stat_tmp/db.stat",
            "pg_replslot/slot",
            "pg_subtrans/0000",
        ] {
            assert!(
                !paths.iter().any(|p| p == never || p.starts_with(&format!("{never}/"))),
                "should leave out {never}: {paths:?}"
            );
        }
    }
}
