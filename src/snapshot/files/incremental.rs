//! Incremental `files` backups: which bytes of each file are read again and which are kept
//! from the base backup's parts (pure planning), given what the WAL says changed since the
//! base started ([`Changes`], read by the backup flow).
//!
//! A relation block the WAL references after the base's start is read again; so is every
//! block past the base's copy of the file (extended since), and every block of a fork the WAL
//! does not name block by block (free space and visibility maps). What is kept is a byte range
//! of the base's parts, which may lie in an older backup's bundles: the new manifest lists
//! every file whole, so no backup needs another's manifest to be restored.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::snapshot::files::{Bundle, EntryKind, FileEntry, Part};
use crate::wal::record::{
    fork_is_fully_logged, BlockRefs, RelFileLocator, RelFork, FSM_FORK, INIT_FORK, MAIN_FORK, VM_FORK,
};

/// `pg_default`'s oid: relations under `base/`.
pub const DEFAULT_TABLESPACE: u32 = 1663;
/// `pg_global`'s oid: relations under `global/`.
pub const GLOBAL_TABLESPACE: u32 = 1664;

/// The base backup an incremental one builds on: its id and what its manifest lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Base {
    /// Backup id.
    pub id: String,
    /// Its start LSN: the changes are read from here.
    pub start_lsn: crate::wal::name::Lsn,
    /// Its files.
    pub files: Vec<FileEntry>,
    /// Its bundles (its own, and those of older backups it references).
    pub bundles: Vec<Bundle>,
}

/// What changed since the base backup's start, from the WAL's block references.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// The base.
    pub base: Base,
    /// The merged block references from the base's start to this backup's start.
    pub refs: BlockRefs,
    /// Set when the references cannot be trusted anywhere: every file is copied in full.
    pub everything: Option<String>,
    /// Relations copied in full, with why (created or dropped since, or named by a segment
    /// whose stored references were missing).
    pub relations: BTreeMap<RelFileLocator, String>,
    /// Database directories (tablespace, database) copied in full, with why.
    pub databases: BTreeMap<(u32, u32), String>,
    /// Tablespaces copied in full, with why.
    pub tablespaces: BTreeMap<u32, String>,
    /// `block_size`.
    pub block_size: u64,
    /// `segment_size`: blocks per relation segment file.
    pub relseg_blocks: u64,
}

impl Changes {
    /// The changes a stretch of references gives (relations created or dropped, databases
    /// and tablespaces changed, or everything when a record is not known).
    pub fn from_refs(refs: BlockRefs, base: Base, block_size: u64, relseg_blocks: u64) -> Changes {
        let full = refs.copy_in_full();
        let mut c = Changes { base, block_size, relseg_blocks, ..Changes::default() };
        if full.everything {
            let why = refs.unknown().first().map_or_else(
                || "a record at the end of the WAL read is incomplete".to_string(),
                |u| {
                    format!(
                        "the WAL at {} holds a change the reader does not know ({:?})",
                        crate::wal::name::Lsn(u.lsn),
                        u.reason
                    )
                },
            );
            c.everything = Some(why);
        }
        for r in full.relations {
            c.relations.insert(r, "created or dropped since the base backup".into());
        }
        for d in full.databases {
            c.databases.insert(d, "database created or dropped since the base backup".into());
        }
        for t in full.tablespaces {
            c.tablespaces.insert(t, "tablespace created or dropped since the base backup".into());
        }
        c.refs = refs;
        c
    }
}

/// One fork's file of a relation, from its path in the data directory (pure):
/// `base/<db>/<rel>[_fsm|_vm|_init][.<n>]`, `global/<rel>…`,
/// `pg_tblspc/<spc>/<version dir>/<db>/<rel>…`. Returns the fork and the segment number.
pub fn relation_file(path: &str) -> Option<(RelFork, u32)> {
    let parts: Vec<&str> = path.split('/').collect();
    let (spc, db, name) = match parts.as_slice() {
        ["base", db, name] => (DEFAULT_TABLESPACE, oid(db)?, *name),
        ["global", name] => (GLOBAL_TABLESPACE, 0, *name),
        ["pg_tblspc", spc, _version, db, name] => (oid(spc)?, oid(db)?, *name),
        _ => return None,
    };
    let (stem, segno) = match name.split_once('.') {
        Some((s, n)) => (s, n.parse::<u32>().ok().filter(|_| n.bytes().all(|b| b.is_ascii_digit()))?),
        None => (name, 0),
    };
    let (rel, fork) = match stem.split_once('_') {
        None => (stem, MAIN_FORK),
        Some((r, "fsm")) => (r, FSM_FORK),
        Some((r, "vm")) => (r, VM_FORK),
        Some((r, "init")) => (r, INIT_FORK),
        Some(_) => return None,
    };
    let rel_number = oid(rel)?;
    Some((RelFork { rel: RelFileLocator { spc_oid: spc, db_oid: db, rel_number }, fork }, segno))
}

fn oid(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|n| *n != 0)
}

/// How one file of an incremental backup is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Read it whole; `Some(why)` when the WAL is the reason (recorded in the manifest).
    Full(Option<String>),
    /// Read these byte ranges again; keep the rest of the base's copy up to `valid_end`.
    Blocks {
        /// Half-open byte ranges the WAL says changed.
        changed: Vec<(u64, u64)>,
        /// Bytes of the base's copy still valid (shorter after a truncation).
        valid_end: u64,
    },
}

/// How file `path` is taken, given the base's entry for it (pure).
pub fn decide(path: &str, base: Option<&FileEntry>, ch: &Changes) -> Decision {
    let Some((rf, segno)) = relation_file(path) else { return Decision::Full(None) };
    if ch.everything.is_some() {
        // Said once for the whole backup, not per file.
        return Decision::Full(None);
    }
    let why = ch
        .relations
        .get(&rf.rel)
        .or_else(|| ch.databases.get(&(rf.rel.spc_oid, rf.rel.db_oid)))
        .or_else(|| ch.tablespaces.get(&rf.rel.spc_oid));
    if let Some(why) = why {
        return Decision::Full(Some(why.clone()));
    }
    let Some(base) = base.filter(|b| b.kind == EntryKind::File) else { return Decision::Full(None) };
    if !fork_is_fully_logged(rf.fork) {
        return Decision::Full(None);
    }
    let (bs, seg_blocks) = (ch.block_size.max(1), ch.relseg_blocks.max(1));
    let first = u64::from(segno) * seg_blocks;
    let end = first + seg_blocks;
    let mut changed: Vec<(u64, u64)> = Vec::new();
    if let Some(set) = ch.refs.blocks().get(&rf) {
        for &(a, b) in set.runs() {
            let (a, b) = (u64::from(a).max(first), (u64::from(b) + 1).min(end));
            if a < b {
                changed.push(((a - first) * bs, (b - first) * bs));
            }
        }
    }
    let mut valid_end = base.size / bs * bs;
    if let Some(&t) = ch.refs.truncated().get(&rf) {
        valid_end = valid_end.min(u64::from(t).saturating_sub(first) * bs);
    }
    Decision::Blocks { changed, valid_end }
}

/// Half-open ranges sorted and joined (pure).
fn normalize(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.retain(|(a, b)| a < b);
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some((_, e)) if a <= *e => *e = (*e).max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// `[0, size)` less `holes` (normalized).
fn complement(holes: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    for &(a, b) in holes {
        if a >= size {
            break;
        }
        if a > at {
            out.push((at, a));
        }
        at = at.max(b);
    }
    if at < size {
        out.push((at, size));
    }
    out
}

/// `a ∩ b`, both normalized.
fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let (lo, hi) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if lo < hi {
            out.push((lo, hi));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// What a file of `size` bytes takes from disk and keeps from the base's `parts` (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePlan {
    /// Half-open byte ranges read from disk.
    pub copy: Vec<(u64, u64)>,
    /// The base's parts (or pieces of them) kept, in file order; bundle indexes are the base's.
    pub keep: Vec<Part>,
}

/// Plans one file: `changed` ranges and everything past `valid_end` are read again, the
/// rest comes from the base's `parts` where they hold it, and what they do not hold is read
/// too (pure).
pub fn plan_file(size: u64, changed: &[(u64, u64)], valid_end: u64, parts: &[Part]) -> FilePlan {
    let limit = valid_end.min(size);
    let want = normalize(changed.iter().copied().chain([(limit, size)]).collect());
    let held = normalize(parts.iter().map(|p| (p.file_offset, p.file_offset + p.len)).collect());
    let keep_ranges = intersect(&intersect(&held, &complement(&want, size)), &[(0, limit)]);
    let copy = complement(&keep_ranges, size);
    let mut keep = Vec::new();
    for p in parts {
        let (pa, pb) = (p.file_offset, p.file_offset + p.len);
        for &(a, b) in &keep_ranges {
            let (lo, hi) = (a.max(pa), b.min(pb));
            if lo >= hi {
                continue;
            }
            if (lo, hi) == (pa, pb) {
                keep.push(p.clone());
            } else {
                // A piece of a part has no checksum of its own: the bundle's AEAD covers it.
                keep.push(Part {
                    bundle: p.bundle,
                    offset: p.offset + (lo - pa),
                    file_offset: lo,
                    len: hi - lo,
                    crc32c: None,
                    sha256: String::new(),
                });
            }
        }
    }
    keep.sort_by_key(|p| p.file_offset);
    FilePlan { copy, keep }
}

/// Maps the base's bundles into the new manifest's, after its own `own` bundles: each base
/// bundle referenced once, named by the backup that stored it.
#[derive(Debug, Default)]
pub struct Borrowed {
    own: usize,
    index: HashMap<usize, usize>,
    /// The base's bundles referenced, in the order they are listed after the own ones.
    pub bundles: Vec<Bundle>,
}

impl Borrowed {
    /// A map for a manifest with `own` bundles of its own.
    pub fn new(own: usize) -> Borrowed {
        Borrowed { own, ..Borrowed::default() }
    }

    /// The new index of the base's bundle `n`, listing it on first use.
    pub fn map(&mut self, base: &Base, n: usize) -> Option<usize> {
        if let Some(i) = self.index.get(&n) {
            return Some(*i);
        }
        let b = base.bundles.get(n)?;
        let owner = b.owner.clone().unwrap_or_else(|| base.id.clone());
        let i = self.own + self.bundles.len();
        self.bundles.push(Bundle { owner: Some(owner), ..b.clone() });
        self.index.insert(n, i);
        Some(i)
    }
}

/// What an incremental backup recorded about how it was taken (in its manifest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncrementalInfo {
    /// The backup it builds on.
    pub base: String,
    /// The LSN the changes were read from (the base's start).
    pub since_lsn: String,
    /// Files read whole.
    pub files_full: u64,
    /// Files assembled from changed blocks and the base's parts.
    pub files_blocks: u64,
    /// Bytes read from disk.
    pub bytes_copied: u64,
    /// Bytes kept from earlier backups' bundles.
    pub bytes_kept: u64,
    /// Relation files copied in full because of what the WAL said (or did not say), with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub full_copies: Vec<FullCopyNote>,
}

/// A relation file an incremental backup copied in full, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullCopyNote {
    /// Its path in the data directory.
    pub path: String,
    /// Why.
    pub why: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::name::Lsn;

    const BS: u64 = 8192;

    fn part(bundle: usize, offset: u64, file_offset: u64, len: u64) -> Part {
        Part { bundle, offset, file_offset, len, crc32c: Some(7), sha256: String::new() }
    }

    fn file(path: &str, size: u64, parts: Vec<Part>) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind: EntryKind::File,
            size,
            mode: 0o600,
            mtime: 0,
            sha256: String::new(),
            parts,
            target: None,
        }
    }

    fn loc(spc: u32, db: u32, rel: u32) -> RelFileLocator {
        RelFileLocator { spc_oid: spc, db_oid: db, rel_number: rel }
    }

    #[test]
    fn relation_files_are_named_by_their_paths() {
        let rf = |spc, db, rel, fork| RelFork { rel: loc(spc, db, rel), fork };
        assert_eq!(relation_file("base/5/16384"), Some((rf(1663, 5, 16384, MAIN_FORK), 0)));
        assert_eq!(relation_file("base/5/16384.3"), Some((rf(1663, 5, 16384, MAIN_FORK), 3)));
        assert_eq!(relation_file("base/5/16384_fsm"), Some((rf(1663, 5, 16384, FSM_FORK), 0)));
        assert_eq!(relation_file("base/5/16384_vm.1"), Some((rf(1663, 5, 16384, VM_FORK), 1)));
        assert_eq!(relation_file("base/5/16384_init"), Some((rf(1663, 5, 16384, INIT_FORK), 0)));
        assert_eq!(relation_file("global/1262"), Some((rf(1664, 0, 1262, MAIN_FORK), 0)));
        assert_eq!(
            relation_file("pg_tblspc/16390/PG_15_202209061/5/16391.2"),
            Some((rf(16390, 5, 16391, MAIN_FORK), 2))
        );
        for not in [
            "base/5/PG_VERSION",
            "global/pg_control",
            "base/5/16384_xyz",
            "base/5/16384.x",
            "base/5/16384.",
            "base/5/pg_filenode.map",
            "pg_xact/0000",
            "base/5",
            "base/0/123",
            "base/5/+1",
            "pg_tblspc/16390",
            "PG_VERSION",
        ] {
            assert_eq!(relation_file(not), None, "{not}");
        }
    }

    fn changes(refs: BlockRefs) -> Changes {
        Changes::from_refs(refs, Base { id: "B".into(), start_lsn: Lsn(0), files: vec![], bundles: vec![] }, BS, 4)
    }

    fn refs_with(blocks: &[(RelFork, u32)]) -> BlockRefs {
        let mut r = BlockRefs::new(0, 100);
        for (f, b) in blocks {
            r.add_block(*f, *b);
        }
        r
    }

    #[test]
    fn decisions_follow_what_the_wal_says() {
        let main = RelFork { rel: loc(1663, 5, 100), fork: MAIN_FORK };
        // Blocks 1, 2 (segment 0) and 5 (segment 1: four blocks per segment here).
        let ch = changes(refs_with(&[(main, 1), (main, 2), (main, 5)]));
        let base = file("base/5/100", 4 * BS, vec![]);
        assert_eq!(
            decide("base/5/100", Some(&base), &ch),
            Decision::Blocks { changed: vec![(BS, 3 * BS)], valid_end: 4 * BS }
        );
        assert_eq!(
            decide("base/5/100.1", Some(&file("base/5/100.1", 3 * BS + 100, vec![])), &ch),
            Decision::Blocks { changed: vec![(BS, 2 * BS)], valid_end: 3 * BS },
            "a torn last block of the base is not kept"
        );
        assert_eq!(decide("base/5/100", None, &ch), Decision::Full(None), "not in the base");
        assert_eq!(decide("base/5/100_fsm", Some(&base), &ch), Decision::Full(None), "maps are not WAL-logged");
        assert_eq!(decide("base/5/100_vm", Some(&base), &ch), Decision::Full(None));
        assert_eq!(decide("base/5/PG_VERSION", Some(&base), &ch), Decision::Full(None));
        let mut dir = base.clone();
        dir.kind = EntryKind::Dir;
        assert_eq!(decide("base/5/100", Some(&dir), &ch), Decision::Full(None));
        assert_eq!(
            decide("base/5/101", Some(&base), &ch),
            Decision::Blocks { changed: vec![], valid_end: 4 * BS },
            "untouched: all kept"
        );

        // Created or dropped since, or the database: in full, with why.
        let mut r = refs_with(&[]);
        r.add_change(10, crate::wal::record::RelChange::Created { rel: loc(1663, 5, 100), fork: MAIN_FORK });
        r.add_change(11, crate::wal::record::RelChange::DatabaseCreated { spc_oid: 1663, db_oid: 6 });
        let ch = changes(r);
        assert!(
            matches!(decide("base/5/100", Some(&base), &ch), Decision::Full(Some(w)) if w.contains("created or dropped"))
        );
        assert!(matches!(decide("base/6/1", Some(&base), &ch), Decision::Full(Some(w)) if w.contains("database")));
        assert!(
            matches!(decide("base/5/100", None, &ch), Decision::Full(Some(w)) if w.contains("created")),
            "a relation created since is noted, though the base does not have it"
        );

        // A truncation voids the base's blocks from its new length on.
        let mut r = refs_with(&[]);
        r.add_change(
            10,
            crate::wal::record::RelChange::Truncated {
                rel: loc(1663, 5, 100),
                blkno: 6,
                flags: crate::wal::record::SMGR_TRUNCATE_HEAP,
            },
        );
        let ch = changes(r);
        assert_eq!(
            decide("base/5/100.1", Some(&file("x", 4 * BS, vec![])), &ch),
            Decision::Blocks { changed: vec![], valid_end: 2 * BS }
        );
        assert_eq!(
            decide("base/5/100.2", Some(&file("x", 4 * BS, vec![])), &ch),
            Decision::Blocks { changed: vec![], valid_end: 0 }
        );

        // Unknown records: everything in full (noted once for the backup, not per file).
        let ch = changes(BlockRefs::unreadable(0, 100));
        assert!(ch.everything.is_some());
        assert_eq!(decide("base/5/100", Some(&base), &ch), Decision::Full(None));
    }

    #[test]
    fn plans_keep_what_did_not_change_and_read_the_rest() {
        // The base held the file in two parts in bundles 0 and 1.
        let parts = vec![part(0, 1000, 0, 3 * BS), part(1, 0, 3 * BS, BS)];
        let p = plan_file(5 * BS, &[(BS, 2 * BS)], 4 * BS, &parts);
        assert_eq!(p.copy, vec![(BS, 2 * BS), (4 * BS, 5 * BS)], "the changed block and the extension");
        assert_eq!(
            p.keep,
            vec![
                Part { crc32c: None, ..part(0, 1000, 0, BS) },
                Part { crc32c: None, ..part(0, 1000 + 2 * BS, 2 * BS, BS) },
                part(1, 0, 3 * BS, BS),
            ],
            "pieces of a part lose its checksum; a whole part keeps it"
        );
        // Shrunk since: nothing past the new size, and a part cut by it.
        let p = plan_file(2 * BS + 10, &[], 4 * BS, &parts);
        assert_eq!(p.copy, vec![]);
        assert_eq!(p.keep, vec![Part { crc32c: None, ..part(0, 1000, 0, 2 * BS + 10) }]);
        // The base's parts do not cover a range (a short read): it is read again.
        let p = plan_file(4 * BS, &[], 4 * BS, &[part(0, 0, 0, BS), part(0, BS, 2 * BS, 2 * BS)]);
        assert_eq!(p.copy, vec![(BS, 2 * BS)]);
        // Truncated to nothing: all read.
        let p = plan_file(4 * BS, &[], 0, &parts);
        assert_eq!((p.copy, p.keep), (vec![(0, 4 * BS)], vec![]));
        // Every byte of the file is read or kept, once.
        for size in [0, 1, BS, 3 * BS + 5, 6 * BS] {
            for changed in [vec![], vec![(0, BS)], vec![(BS, 3 * BS), (2 * BS, 4 * BS)]] {
                let p = plan_file(size, &changed, 3 * BS, &parts);
                let mut all: Vec<(u64, u64)> = p.copy.clone();
                all.extend(p.keep.iter().map(|k| (k.file_offset, k.file_offset + k.len)));
                all.sort_unstable();
                let mut at = 0;
                for (a, b) in &all {
                    assert_eq!(*a, at, "size {size} changed {changed:?}: {all:?}");
                    at = *b;
                }
                assert_eq!(at, size);
                for (a, b) in normalize(changed.clone()) {
                    let (a, b) = (a.min(size), b.min(size));
                    assert!(a == b || p.copy.iter().any(|(x, y)| *x <= a && b <= *y), "changed is read");
                }
            }
        }
    }

    #[test]
    fn borrowed_bundles_are_listed_once_and_named_by_their_owner() {
        let b = |name: &str, owner: Option<&str>| Bundle {
            name: name.into(),
            plain_bytes: 1,
            stored_bytes: 1,
            owner: owner.map(str::to_string),
        };
        let base = Base {
            id: "B".into(),
            start_lsn: Lsn(0),
            files: vec![],
            bundles: vec![b("b000000", None), b("b000003", Some("A"))],
        };
        let mut m = Borrowed::new(2);
        assert_eq!(m.map(&base, 1), Some(2));
        assert_eq!(m.map(&base, 0), Some(3));
        assert_eq!(m.map(&base, 1), Some(2));
        assert_eq!(m.map(&base, 9), None);
        assert_eq!(m.bundles, vec![b("b000003", Some("A")), b("b000000", Some("B"))]);
    }
}
