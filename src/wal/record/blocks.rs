//! Which relation blocks and files a stretch of WAL changes: the block references of every
//! record, and the record-level relation changes that have none (a relation file created or
//! truncated, relations dropped at commit or abort, a database or tablespace created or
//! dropped), per segment, in a compact versioned binary form, and merged over a range.
//!
//! This is what an incremental backup needs to copy only what changed since an earlier
//! backup. What it does not cover, and where the summary says so:
//! - A record this module cannot interpret that may change relation files
//!   (`XLR_SPECIAL_REL_UPDATE` on an unknown record type, bad main data of a storage,
//!   database or tablespace record, a fork number past 3, a record left open at the range's
//!   end): it is listed in [`BlockRefs::unknown`] and [`BlockRefs::complete`] is false; the
//!   consumer must copy everything in full then (the record names no relation to limit it to).
//! - The free space map is not fully WAL-logged, and clearing a visibility-map bit is replayed
//!   from the heap record without a reference to the map's block: [`fork_is_fully_logged`]
//!   is false for both, and those forks are to be copied in full (they are small).
//! - A relation extended without WAL (a backend that died between extending and logging)
//!   keeps zero pages no record names: the consumer copies blocks past the earlier copy's
//!   length in full.
//! - An unlogged relation's main fork is never WAL-logged (its init fork is: an
//!   `XLOG_SMGR_CREATE` of `INIT_FORK` names it); like a base backup, the consumer leaves
//!   such forks out or copies them in full.
//! - A restart with `wal_level = minimal` (`XLOG_PARAMETER_CHANGE`) is unknown: relations
//!   written then may have no block references.
//!
//! Records crossing a segment's end: the segment they start in reads their fragment headers
//! and main data from the bytes it has. When those are cut off, it keeps the bytes
//! ([`BlockRefs`] `open`), and the next segment keeps the first bytes of the tail it starts
//! with (`leading`, at most 1 KiB); [`BlockRefs::merge`] of the two joins them.
//!
//! The same layout in 13 to 18 except the database records (`XLOG_DBASE_*`, renumbered in 15).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::constants::{
    PARAMETER_CHANGE_WAL_LEVEL_OFFSET, RM_DBASE_ID, RM_SMGR_ID, RM_TBLSPC_ID, RM_XACT_ID, RM_XLOG_ID,
    SIZE_OF_REL_FILE_NODE, SIZE_OF_SMGR_CREATE, SIZE_OF_SMGR_TRUNCATE, SIZE_OF_XLOG_RECORD,
    XLOG_DBASE_CREATE_FILE_COPY, XLOG_DBASE_CREATE_WAL_LOG, XLOG_DBASE_DROP, XLOG_DBASE_DROP_PRE15,
    XLOG_PARAMETER_CHANGE, XLOG_SMGR_CREATE, XLOG_SMGR_TRUNCATE, XLOG_TBLSPC_CREATE, XLOG_TBLSPC_DROP,
    XLR_RMGR_INFO_MASK, XLR_SPECIAL_REL_UPDATE,
};
use super::decode::{decode_layout, le_u32, BlockRef, LayoutError, RecordHeader, RelFileLocator, WalRecord};
use super::xact::{xact_dropped_rels, XactKind};
use crate::wal::layout::WalFormat;

/// `MAIN_FORKNUM`.
pub const MAIN_FORK: u8 = 0;
/// `FSM_FORKNUM`: the free space map.
pub const FSM_FORK: u8 = 1;
/// `VISIBILITYMAP_FORKNUM`.
pub const VM_FORK: u8 = 2;
/// `INIT_FORKNUM`: the init fork of an unlogged relation.
pub const INIT_FORK: u8 = 3;

/// `SMGR_TRUNCATE_HEAP`: the main fork was truncated to `blkno` blocks.
pub const SMGR_TRUNCATE_HEAP: u32 = 0x0001;
/// `SMGR_TRUNCATE_VM`: the visibility map was truncated (to a length derived from `blkno`).
pub const SMGR_TRUNCATE_VM: u32 = 0x0002;
/// `SMGR_TRUNCATE_FSM`: the free space map was truncated (to a length derived from `blkno`).
pub const SMGR_TRUNCATE_FSM: u32 = 0x0004;

/// Whether every change to blocks of `fork` is named by a block reference. False for the
/// free space map (not WAL-logged) and the visibility map (bits cleared at replay of heap
/// records that do not reference the map's block): copy those forks in full.
pub fn fork_is_fully_logged(fork: u8) -> bool {
    matches!(fork, MAIN_FORK | INIT_FORK)
}

/// One fork of one relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelFork {
    /// The relation.
    pub rel: RelFileLocator,
    /// Its fork (`MAIN_FORK` ..= `INIT_FORK`).
    pub fork: u8,
}

/// A change to relation files that no block reference names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RelChange {
    /// `XLOG_SMGR_CREATE`: a fork's file was created (empty).
    Created {
        /// The relation.
        rel: RelFileLocator,
        /// The fork created.
        fork: u8,
    },
    /// `XLOG_SMGR_TRUNCATE`: forks were cut short (`flags`: `SMGR_TRUNCATE_*`).
    Truncated {
        /// The relation.
        rel: RelFileLocator,
        /// The main fork's new length in blocks.
        blkno: u32,
        /// Which forks: `SMGR_TRUNCATE_HEAP | _VM | _FSM`.
        flags: u32,
    },
    /// The relation's files were removed at commit or abort (`xl_xact_relfilelocators`).
    Dropped {
        /// The relation.
        rel: RelFileLocator,
    },
    /// `XLOG_DBASE_CREATE*`: a database directory was created (copied from a template, or
    /// empty to be WAL-logged block by block).
    DatabaseCreated {
        /// The tablespace holding the directory.
        spc_oid: u32,
        /// The database.
        db_oid: u32,
    },
    /// `XLOG_DBASE_DROP`: a database's directories were removed.
    DatabaseDropped {
        /// The database.
        db_oid: u32,
        /// Every tablespace whose directory for it was removed.
        spc_oids: Vec<u32>,
    },
    /// `XLOG_TBLSPC_CREATE`.
    TablespaceCreated {
        /// The tablespace.
        spc_oid: u32,
    },
    /// `XLOG_TBLSPC_DROP`.
    TablespaceDropped {
        /// The tablespace.
        spc_oid: u32,
    },
}

/// Why a record's changes are not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UnknownReason {
    /// `XLR_SPECIAL_REL_UPDATE` on a record type this module does not interpret.
    SpecialRelUpdate = 1,
    /// A storage, database or tablespace record of an unknown type.
    UnknownInfo = 2,
    /// A storage, database, tablespace or transaction record whose main data is malformed.
    BadMainData = 3,
    /// A block reference to a fork number past `INIT_FORK`.
    InvalidFork = 4,
    /// A record crossing the range's end (or a segment's end, when the next segment's start
    /// was not merged in) whose fragment headers or main data were cut off.
    CutOff = 5,
    /// No summary covers this part of the range (from this LSN to the next part's start).
    Gap = 6,
    /// Two summaries overlap here.
    Overlap = 7,
    /// The server restarted with `wal_level = minimal` (`XLOG_PARAMETER_CHANGE`): relations
    /// created or rewritten then are not WAL-logged block by block.
    WalLevelMinimal = 8,
}

impl UnknownReason {
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => Self::SpecialRelUpdate,
            2 => Self::UnknownInfo,
            3 => Self::BadMainData,
            4 => Self::InvalidFork,
            5 => Self::CutOff,
            6 => Self::Gap,
            7 => Self::Overlap,
            8 => Self::WalLevelMinimal,
            _ => return None,
        })
    }
}

/// A record (or stretch of WAL) whose relation changes are not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Unknown {
    /// LSN of the record (or of the stretch).
    pub lsn: u64,
    /// Its resource manager id (0 for a stretch).
    pub rmid: u8,
    /// Its `xl_info` (0 for a stretch).
    pub info: u8,
    /// Why.
    pub reason: UnknownReason,
}

/// The bytes present of a record left open at a summary's end whose fragment headers or
/// needed main data were cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OpenRecord {
    lsn: u64,
    tot_len: u32,
    /// The major whose format the record is in.
    major: u8,
    head: Vec<u8>,
}

// xl_smgr_create is a RelFileNode and then the fork number.
const _: () = assert!(SIZE_OF_SMGR_CREATE == SIZE_OF_REL_FILE_NODE + 4);

/// At most this many bytes of an open record are kept; past that it is [`UnknownReason::CutOff`].
const OPEN_CAP: usize = 64 << 10;

/// The block references and relation changes of a stretch of WAL: one segment, or several
/// merged (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockRefs {
    start_lsn: u64,
    end_lsn: u64,
    /// Per fork, the blocks referenced (never an empty set).
    blocks: BTreeMap<RelFork, BlockSet>,
    /// In LSN order.
    changes: Vec<(u64, RelChange)>,
    /// In LSN order.
    unknown: Vec<Unknown>,
    /// A record begun here whose changes need bytes of the next stretch.
    open: Option<OpenRecord>,
    /// The first bytes of the record tail this stretch starts with.
    leading: Option<Vec<u8>>,
}

impl BlockRefs {
    /// An empty summary of `[start_lsn, end_lsn)`.
    pub fn new(start_lsn: u64, end_lsn: u64) -> Self {
        BlockRefs { start_lsn, end_lsn, ..BlockRefs::default() }
    }

    /// A summary of `[start_lsn, end_lsn)` that knows nothing (a segment that could not be
    /// read): one [`UnknownReason::Gap`] covering it.
    pub fn unreadable(start_lsn: u64, end_lsn: u64) -> Self {
        let mut b = BlockRefs::new(start_lsn, end_lsn);
        b.unknown.push(Unknown { lsn: start_lsn, rmid: 0, info: 0, reason: UnknownReason::Gap });
        b
    }

    /// Start LSN of the stretch summarized.
    pub fn start_lsn(&self) -> u64 {
        self.start_lsn
    }

    /// LSN just past the stretch summarized.
    pub fn end_lsn(&self) -> u64 {
        self.end_lsn
    }

    /// The blocks referenced per relation fork.
    pub fn blocks(&self) -> &BTreeMap<RelFork, BlockSet> {
        &self.blocks
    }

    /// The relation changes without block references, in LSN order.
    pub fn changes(&self) -> &[(u64, RelChange)] {
        &self.changes
    }

    /// The records whose changes are not known, in LSN order.
    pub fn unknown(&self) -> &[Unknown] {
        &self.unknown
    }

    /// Whether every change is known: nothing unknown, and no record left open at the end.
    pub fn complete(&self) -> bool {
        self.unknown.is_empty() && self.open.is_none()
    }

    /// LSN of the record left open at the end whose changes need the next stretch's bytes.
    pub fn open_record_lsn(&self) -> Option<u64> {
        self.open.as_ref().map(|o| o.lsn)
    }

    /// How many block references (distinct fork and block) the summary holds.
    pub fn block_count(&self) -> u64 {
        self.blocks.values().map(BlockSet::len).sum()
    }

    /// Adds a block reference.
    pub fn add_block(&mut self, fork: RelFork, block: u32) {
        self.blocks.entry(fork).or_default().insert(block);
    }

    /// Adds a relation change at `lsn`.
    pub fn add_change(&mut self, lsn: u64, change: RelChange) {
        let i = self.changes.partition_point(|(l, _)| *l <= lsn);
        self.changes.insert(i, (lsn, change));
    }

    /// Adds a record whose changes are not known.
    pub fn add_unknown(&mut self, u: Unknown) {
        let i = self.unknown.partition_point(|x| x.lsn <= u.lsn);
        self.unknown.insert(i, u);
    }

    /// The union of `parts` (in any order), as one stretch from the first's start to the
    /// last's end: blocks united, changes and unknowns kept in LSN order, a record left open
    /// by one part completed from the next part's leading bytes. A stretch no part covers is
    /// an [`UnknownReason::Gap`]; overlapping parts an [`UnknownReason::Overlap`].
    pub fn merge<'a>(parts: impl IntoIterator<Item = &'a BlockRefs>) -> BlockRefs {
        let mut parts: Vec<&BlockRefs> = parts.into_iter().collect();
        parts.sort_by_key(|p| (p.start_lsn, p.end_lsn));
        let Some(first) = parts.first() else {
            return BlockRefs::default();
        };
        let mut out = BlockRefs::new(first.start_lsn, first.start_lsn);
        out.leading = first.leading.clone();
        let mut pending: Option<(u64, &OpenRecord)> = None;
        let mut all_blocks: HashMap<RelFork, Vec<&BlockSet>> = HashMap::new();
        let mut extra = Builder::default();
        for p in &parts {
            if let Some((_, open)) = pending.take() {
                let joined = match (&p.leading, p.start_lsn == out.end_lsn) {
                    (Some(lead), true) => [open.head.as_slice(), lead].concat(),
                    _ => open.head.clone(),
                };
                match crate::wal::layout::FORMATS.iter().find(|f| f.major == u32::from(open.major)) {
                    Some(fmt) => {
                        extra.partial_with(open.lsn, open.tot_len, &joined, fmt, true);
                    }
                    None => {
                        extra.unknown.push(Unknown { lsn: open.lsn, rmid: 0, info: 0, reason: UnknownReason::CutOff })
                    }
                }
            }
            if p.start_lsn > out.end_lsn {
                out.unknown.push(Unknown { lsn: out.end_lsn, rmid: 0, info: 0, reason: UnknownReason::Gap });
            } else if p.start_lsn < out.end_lsn {
                out.unknown.push(Unknown { lsn: p.start_lsn, rmid: 0, info: 0, reason: UnknownReason::Overlap });
            }
            for (f, b) in &p.blocks {
                all_blocks.entry(*f).or_default().push(b);
            }
            out.changes.extend(p.changes.iter().cloned());
            out.unknown.extend(p.unknown.iter().copied());
            pending = p.open.as_ref().map(|o| (p.end_lsn, o));
            out.end_lsn = out.end_lsn.max(p.end_lsn);
        }
        out.open = pending.map(|(_, o)| o.clone());
        let extra = extra.finish_parts();
        for (f, b) in &extra.forks {
            all_blocks.entry(*f).or_default().push(b);
        }
        out.changes.extend(extra.changes);
        out.unknown.extend(extra.unknown);
        out.blocks = all_blocks.into_iter().map(|(f, sets)| (f, BlockSet::union(&sets))).collect();
        out.changes.sort_by_key(|(l, _)| *l);
        out.unknown.sort_by_key(|u| u.lsn);
        out
    }

    /// The summary with what begins at or after `lsn` not known left out (a record being
    /// written when a live segment was read): the blocks stay, more than needed is safe.
    pub fn forget_unknown_from(mut self, lsn: u64) -> BlockRefs {
        self.unknown.retain(|u| u.lsn < lsn);
        if self.open.as_ref().is_some_and(|o| o.lsn >= lsn) {
            self.open = None;
        }
        self
    }

    /// What an incremental copy of this stretch must take in full (see [`FullCopy`]).
    pub fn copy_in_full(&self) -> FullCopy {
        let mut full = FullCopy { everything: !self.complete(), ..FullCopy::default() };
        for (_, c) in &self.changes {
            match c {
                // A file created in the stretch is new, whatever an earlier copy holds under
                // its name (a relfilenode dropped and reused: create, drop, create).
                RelChange::Created { rel, .. } | RelChange::Dropped { rel } => {
                    full.relations.insert(*rel);
                }
                RelChange::Truncated { .. } => {}
                RelChange::DatabaseCreated { spc_oid, db_oid } => {
                    full.databases.insert((*spc_oid, *db_oid));
                }
                RelChange::DatabaseDropped { db_oid, spc_oids } => {
                    full.databases.extend(spc_oids.iter().map(|s| (*s, *db_oid)));
                }
                RelChange::TablespaceCreated { spc_oid } | RelChange::TablespaceDropped { spc_oid } => {
                    full.tablespaces.insert(*spc_oid);
                }
            }
        }
        full
    }

    /// Per fork, the lowest length it was truncated to in the stretch: an earlier copy's
    /// blocks from there on are void. The visibility map and free space map count as cut to 0
    /// (their new length is derived, not recorded).
    pub fn truncated(&self) -> BTreeMap<RelFork, u32> {
        let mut out: BTreeMap<RelFork, u32> = BTreeMap::new();
        let mut cut = |rel, fork, blkno: u32| {
            let e = out.entry(RelFork { rel, fork }).or_insert(blkno);
            *e = (*e).min(blkno);
        };
        for (_, c) in &self.changes {
            if let RelChange::Truncated { rel, blkno, flags } = c {
                if flags & SMGR_TRUNCATE_HEAP != 0 {
                    cut(*rel, MAIN_FORK, *blkno);
                }
                if flags & SMGR_TRUNCATE_VM != 0 {
                    cut(*rel, VM_FORK, 0);
                }
                if flags & SMGR_TRUNCATE_FSM != 0 {
                    cut(*rel, FSM_FORK, 0);
                }
            }
        }
        out
    }
}

/// What an incremental copy must take in full rather than block by block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FullCopy {
    /// Something in the stretch is not known ([`BlockRefs::complete`] is false): copy everything.
    pub everything: bool,
    /// Relations created or dropped in the stretch: every fork, in full.
    pub relations: BTreeSet<RelFileLocator>,
    /// Database directories (tablespace, database) created or dropped: every file under them.
    pub databases: BTreeSet<(u32, u32)>,
    /// Tablespaces created or dropped: every file under them.
    pub tablespaces: BTreeSet<u32>,
}

/// A set of block numbers, held as maximal runs of consecutive blocks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockSet {
    /// (first, last) of each run, inclusive, in order; runs neither overlap nor touch.
    runs: Vec<(u32, u32)>,
}

impl BlockSet {
    /// The set of a sorted, distinct list.
    fn from_sorted(blocks: &[u32]) -> Self {
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for &b in blocks {
            match runs.last_mut() {
                Some((_, last)) if u64::from(*last) + 1 == u64::from(b) => *last = b,
                _ => runs.push((b, b)),
            }
        }
        BlockSet { runs }
    }

    /// The set of a list in any order, with repeats: through a bitmap when the list is
    /// dense in its range (a segment's references to a busy table), else sorted.
    fn from_unsorted(mut v: Vec<u32>) -> Self {
        let (Some(&lo), Some(&hi)) = (v.iter().min(), v.iter().max()) else {
            return BlockSet::default();
        };
        let words = ((u64::from(hi - lo) >> 6) + 1) as usize;
        if words > v.len() {
            v.sort_unstable();
            v.dedup();
            return BlockSet::from_sorted(&v);
        }
        let mut bits = vec![0u64; words];
        for b in &v {
            let o = (b - lo) as usize;
            bits[o >> 6] |= 1 << (o & 63);
        }
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for (w, mut word) in bits.into_iter().enumerate() {
            while word != 0 {
                let bit = word.trailing_zeros();
                word &= word - 1;
                let b = lo + ((w as u32) << 6) + bit;
                match runs.last_mut() {
                    Some((_, last)) if *last + 1 == b => *last = b,
                    _ => runs.push((b, b)),
                }
            }
        }
        BlockSet { runs }
    }

    /// The union of `sets`.
    fn union(sets: &[&BlockSet]) -> Self {
        if let [one] = sets {
            return (*one).clone();
        }
        let mut all: Vec<(u32, u32)> = sets.iter().flat_map(|s| s.runs.iter().copied()).collect();
        all.sort_unstable();
        let mut runs: Vec<(u32, u32)> = Vec::with_capacity(all.len());
        for (a, b) in all {
            match runs.last_mut() {
                Some((_, last)) if u64::from(a) <= u64::from(*last) + 1 => *last = (*last).max(b),
                _ => runs.push((a, b)),
            }
        }
        BlockSet { runs }
    }

    /// Adds one block.
    pub fn insert(&mut self, block: u32) {
        if !self.contains(block) {
            let one = BlockSet { runs: vec![(block, block)] };
            *self = BlockSet::union(&[self, &one]);
        }
    }

    /// Whether `block` is in the set.
    pub fn contains(&self, block: u32) -> bool {
        let i = self.runs.partition_point(|(_, last)| *last < block);
        self.runs.get(i).is_some_and(|(first, _)| *first <= block)
    }

    /// How many blocks.
    pub fn len(&self) -> u64 {
        self.runs.iter().map(|(a, b)| u64::from(b - a) + 1).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The runs of consecutive blocks, as inclusive (first, last), in order.
    pub fn runs(&self) -> &[(u32, u32)] {
        &self.runs
    }

    /// Every block, in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.runs.iter().flat_map(|&(a, b)| a..=b)
    }
}

// ---------------------------------------------------------------------------
// Building a segment's summary during the walk.
// ---------------------------------------------------------------------------

/// Up to this many forks are found by a scan, past it through a hash map.
const LINEAR_FORKS: usize = 16;

/// Collects the block references and changes of records as the walk hands them out.
#[derive(Debug, Default)]
pub(super) struct Builder {
    forks: Vec<(RelFork, Vec<u32>)>,
    index: HashMap<RelFork, usize>,
    /// Index in `forks` of the last fork added to (consecutive references often share it).
    last: usize,
    changes: Vec<(u64, RelChange)>,
    unknown: Vec<Unknown>,
}

/// What a [`Builder`] collected: blocks sorted, distinct; changes and unknowns in LSN order.
struct Parts {
    forks: Vec<(RelFork, BlockSet)>,
    changes: Vec<(u64, RelChange)>,
    unknown: Vec<Unknown>,
}

/// What a record's main data says, or why it says nothing.
enum Interp {
    /// Fully interpreted.
    Done,
    /// The main data is cut off before what is needed.
    Short,
}

impl Builder {
    fn add_block(&mut self, lsn: u64, rmid: u8, info: u8, b: BlockRef) {
        if b.fork > INIT_FORK {
            self.unknown.push(Unknown { lsn, rmid, info, reason: UnknownReason::InvalidFork });
            return;
        }
        let key = RelFork { rel: b.rel, fork: b.fork };
        let i = match self.forks.get(self.last) {
            Some((k, _)) if *k == key => self.last,
            // A segment usually touches a handful of forks: a scan beats hashing them.
            _ if self.forks.len() <= LINEAR_FORKS => match self.forks.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    self.forks.push((key, Vec::new()));
                    if self.forks.len() > LINEAR_FORKS {
                        self.index = self.forks.iter().enumerate().map(|(i, (k, _))| (*k, i)).collect();
                    }
                    self.forks.len() - 1
                }
            },
            _ => *self.index.entry(key).or_insert_with(|| {
                self.forks.push((key, Vec::new()));
                self.forks.len() - 1
            }),
        };
        self.last = i;
        let v = &mut self.forks[i].1;
        if v.last() != Some(&b.block) {
            v.push(b.block);
        }
    }

    /// A complete, CRC-checked record.
    pub(super) fn record(&mut self, rec: &WalRecord<'_>) {
        rec.for_each_block_ref(|b| self.add_block(rec.lsn, rec.xl_rmid, rec.xl_info, b));
        if let Interp::Short = self.interpret(rec.lsn, rec.xl_rmid, rec.xl_info, rec.main_data, rec.format) {
            self.unknown.push(Unknown {
                lsn: rec.lsn,
                rmid: rec.xl_rmid,
                info: rec.xl_info,
                reason: UnknownReason::BadMainData,
            });
        }
    }

    /// Reads the record-level changes of a record of `rmid`/`info` from its main data (maybe
    /// a prefix of it).
    fn interpret(&mut self, lsn: u64, rmid: u8, info: u8, main: &[u8], fmt: &WalFormat) -> Interp {
        let op = info & XLR_RMGR_INFO_MASK;
        let u32_at = |at| le_u32(main, at);
        let rel_at = |at| RelFileLocator::parse(main, at);
        let unknown = |b: &mut Builder, reason| {
            b.unknown.push(Unknown { lsn, rmid, info, reason });
            Interp::Done
        };
        match rmid {
            RM_SMGR_ID if op == XLOG_SMGR_CREATE => {
                let (Some(rel), Some(fork)) = (rel_at(0), u32_at(SIZE_OF_REL_FILE_NODE)) else {
                    return Interp::Short;
                };
                if fork > u32::from(INIT_FORK) {
                    return unknown(self, UnknownReason::BadMainData);
                }
                self.changes.push((lsn, RelChange::Created { rel, fork: fork as u8 }));
            }
            RM_SMGR_ID if op == XLOG_SMGR_TRUNCATE => {
                let (Some(blkno), Some(rel), Some(flags)) = (u32_at(0), rel_at(4), u32_at(SIZE_OF_SMGR_TRUNCATE - 4))
                else {
                    return Interp::Short;
                };
                self.changes.push((lsn, RelChange::Truncated { rel, blkno, flags }));
            }
            RM_SMGR_ID => return unknown(self, UnknownReason::UnknownInfo),
            RM_DBASE_ID => {
                let pre15 = fmt.major < 15;
                let create = if pre15 {
                    op == XLOG_DBASE_CREATE_FILE_COPY
                } else {
                    op == XLOG_DBASE_CREATE_FILE_COPY || op == XLOG_DBASE_CREATE_WAL_LOG
                };
                let drop = op == if pre15 { XLOG_DBASE_DROP_PRE15 } else { XLOG_DBASE_DROP };
                if create {
                    // xl_dbase_create_*_rec: db_id, tablespace_id, (file copy:) the source's.
                    let (Some(db_oid), Some(spc_oid)) = (u32_at(0), u32_at(4)) else {
                        return Interp::Short;
                    };
                    self.changes.push((lsn, RelChange::DatabaseCreated { spc_oid, db_oid }));
                } else if drop {
                    // xl_dbase_drop_rec: db_id, int ntablespaces, Oid tablespace_ids[].
                    let (Some(db_oid), Some(n)) = (u32_at(0), u32_at(4)) else {
                        return Interp::Short;
                    };
                    let Ok(n) = usize::try_from(n as i32) else {
                        return unknown(self, UnknownReason::BadMainData);
                    };
                    let Some(end) = n.checked_mul(4).and_then(|b| b.checked_add(8)) else {
                        return unknown(self, UnknownReason::BadMainData);
                    };
                    let Some(ids) = main.get(8..end) else {
                        return Interp::Short;
                    };
                    let spc_oids = ids.chunks_exact(4).filter_map(|c| le_u32(c, 0)).collect();
                    self.changes.push((lsn, RelChange::DatabaseDropped { db_oid, spc_oids }));
                } else {
                    return unknown(self, UnknownReason::UnknownInfo);
                }
            }
            RM_TBLSPC_ID if op == XLOG_TBLSPC_CREATE || op == XLOG_TBLSPC_DROP => {
                let Some(spc_oid) = u32_at(0) else {
                    return Interp::Short;
                };
                self.changes.push((
                    lsn,
                    if op == XLOG_TBLSPC_CREATE {
                        RelChange::TablespaceCreated { spc_oid }
                    } else {
                        RelChange::TablespaceDropped { spc_oid }
                    },
                ));
            }
            RM_TBLSPC_ID => return unknown(self, UnknownReason::UnknownInfo),
            RM_XLOG_ID if op == XLOG_PARAMETER_CHANGE => match u32_at(PARAMETER_CHANGE_WAL_LEVEL_OFFSET) {
                // WAL_LEVEL_MINIMAL is 0 (replica 1, logical 2).
                Some(0) => return unknown(self, UnknownReason::WalLevelMinimal),
                Some(_) => {}
                None => return Interp::Short,
            },
            RM_XACT_ID if XactKind::from_info(info).is_some() => match xact_dropped_rels(info, main) {
                Ok(rels) => self.changes.extend(rels.into_iter().map(|rel| (lsn, RelChange::Dropped { rel }))),
                Err(_) => return Interp::Short,
            },
            _ if info & XLR_SPECIAL_REL_UPDATE != 0 => return unknown(self, UnknownReason::SpecialRelUpdate),
            _ => {}
        }
        Interp::Done
    }

    /// The summary of `[start_lsn, end_lsn)`, with the record left open at its end (LSN,
    /// `xl_tot_len`, bytes present) and the leading bytes of the tail it starts with.
    pub(super) fn finish(
        mut self,
        start_lsn: u64,
        end_lsn: u64,
        open: Option<(u64, u32, &[u8])>,
        fmt: Option<&'static WalFormat>,
        leading: Option<&[u8]>,
    ) -> BlockRefs {
        let open = match (open, fmt) {
            (Some((lsn, tot_len, buf)), Some(fmt)) => self.partial_with(lsn, tot_len, buf, fmt, false),
            (Some((lsn, ..)), None) => {
                self.unknown.push(Unknown { lsn, rmid: 0, info: 0, reason: UnknownReason::CutOff });
                None
            }
            (None, _) => None,
        };
        let Parts { forks, changes, unknown } = self.finish_parts();
        BlockRefs {
            start_lsn,
            end_lsn,
            blocks: forks.into_iter().collect(),
            changes,
            unknown,
            open,
            leading: leading.map(<[u8]>::to_vec),
        }
    }

    /// The blocks (sorted, distinct), changes and unknowns collected.
    fn finish_parts(self) -> Parts {
        let mut forks: Vec<(RelFork, BlockSet)> =
            self.forks.into_iter().map(|(k, v)| (k, BlockSet::from_unsorted(v))).collect();
        forks.sort_unstable_by_key(|(k, _)| *k);
        let (mut changes, mut unknown) = (self.changes, self.unknown);
        changes.sort_by_key(|(l, _)| *l);
        unknown.sort_by_key(|u| u.lsn);
        Parts { forks, changes, unknown }
    }

    /// [`Builder::record_partial`] in a known format.
    fn partial_with(
        &mut self,
        lsn: u64,
        tot_len: u32,
        buf: &[u8],
        fmt: &'static WalFormat,
        last_chance: bool,
    ) -> Option<OpenRecord> {
        let buf = &buf[..buf.len().min(tot_len as usize)];
        let hdr = RecordHeader::parse(buf);
        let cut = |b: &mut Builder| {
            if last_chance || buf.len() > OPEN_CAP {
                let (rmid, info) = hdr.map_or((0, 0), |h| (h.rmid, h.info));
                b.unknown.push(Unknown { lsn, rmid, info, reason: UnknownReason::CutOff });
                None
            } else {
                Some(OpenRecord { lsn, tot_len, major: fmt.major as u8, head: buf.to_vec() })
            }
        };
        let Some(h) = hdr.filter(|_| buf.len() >= SIZE_OF_XLOG_RECORD) else {
            return cut(self);
        };
        let mut refs = Vec::new();
        let layout = match decode_layout(buf, tot_len as usize, fmt, |b| refs.push(b)) {
            Ok(l) => l,
            Err(LayoutError::Truncated) => return cut(self),
            Err(LayoutError::Invalid(_)) => {
                // What was read is corrupt or not what the next segment holds: nothing it
                // names can be trusted.
                self.unknown.push(Unknown { lsn, rmid: h.rmid, info: h.info, reason: UnknownReason::CutOff });
                return None;
            }
        };
        let main_end = (layout.main_start + layout.main_len).min(buf.len());
        let main = buf.get(layout.main_start..main_end).unwrap_or(&[]);
        let whole = layout.main_start + layout.main_len <= buf.len();
        let mut probe = Builder::default();
        match probe.interpret(lsn, h.rmid, h.info, main, fmt) {
            Interp::Short if !whole => return cut(self),
            Interp::Short => {
                self.unknown.push(Unknown { lsn, rmid: h.rmid, info: h.info, reason: UnknownReason::BadMainData })
            }
            Interp::Done => {}
        }
        for b in refs {
            self.add_block(lsn, h.rmid, h.info, b);
        }
        self.changes.extend(probe.changes);
        self.unknown.extend(probe.unknown);
        None
    }
}

// ---------------------------------------------------------------------------
// The binary form.
// ---------------------------------------------------------------------------

/// The blob's first bytes.
const MAGIC: &[u8; 4] = b"TMBR";
/// The version [`BlockRefs::encode`] writes, and the only one [`BlockRefs::decode`] reads.
pub const BLOCK_REFS_VERSION: u8 = 1;

/// Why a blob is not a [`BlockRefs`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockRefsDecodeError {
    /// It does not start with the magic.
    #[error("not a block-reference summary (bad magic)")]
    BadMagic,
    /// A version this build does not read.
    #[error("block-reference summary version {0} is not supported (this build reads version {BLOCK_REFS_VERSION})")]
    UnsupportedVersion(u8),
    /// It ends early.
    #[error("block-reference summary is truncated at byte {0}")]
    Truncated(usize),
    /// A field is out of range.
    #[error("block-reference summary is corrupt at byte {at}: {what}")]
    Invalid {
        /// Byte offset.
        at: usize,
        /// What is wrong.
        what: &'static str,
    },
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Rd<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Rd<'_> {
    fn invalid<T>(&self, what: &'static str) -> Result<T, BlockRefsDecodeError> {
        Err(BlockRefsDecodeError::Invalid { at: self.pos, what })
    }

    fn u8(&mut self) -> Result<u8, BlockRefsDecodeError> {
        let v = *self.b.get(self.pos).ok_or(BlockRefsDecodeError::Truncated(self.pos))?;
        self.pos += 1;
        Ok(v)
    }

    fn bytes(&mut self, n: usize) -> Result<&[u8], BlockRefsDecodeError> {
        let end =
            self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or(BlockRefsDecodeError::Truncated(self.pos))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64, BlockRefsDecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7F);
            if shift == 63 && bits > 1 {
                return self.invalid("varint overflows 64 bits");
            }
            v |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        self.invalid("varint longer than 10 bytes")
    }

    fn u32v(&mut self) -> Result<u32, BlockRefsDecodeError> {
        let v = self.varint()?;
        u32::try_from(v).or_else(|_| self.invalid("value does not fit 32 bits"))
    }

    /// A count of items each at least one byte long: never more than the bytes left.
    fn count(&mut self) -> Result<usize, BlockRefsDecodeError> {
        let n = self.varint()?;
        match usize::try_from(n) {
            Ok(n) if n <= self.b.len() - self.pos => Ok(n),
            _ => self.invalid("count larger than the bytes left"),
        }
    }

    fn rel(&mut self) -> Result<RelFileLocator, BlockRefsDecodeError> {
        Ok(RelFileLocator { spc_oid: self.u32v()?, db_oid: self.u32v()?, rel_number: self.u32v()? })
    }
}

fn put_rel(out: &mut Vec<u8>, r: &RelFileLocator) {
    put_varint(out, r.spc_oid.into());
    put_varint(out, r.db_oid.into());
    put_varint(out, r.rel_number.into());
}

impl BlockRefs {
    /// The compact binary form: magic, version, then varints, block numbers as runs of
    /// consecutive blocks, LSNs as deltas. [`BlockRefs::decode`] reads it back exactly.
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(64 + 2 * self.blocks.values().map(|b| b.runs.len()).sum::<usize>());
        o.extend_from_slice(MAGIC);
        o.push(BLOCK_REFS_VERSION);
        put_varint(&mut o, self.start_lsn);
        put_varint(&mut o, self.end_lsn.wrapping_sub(self.start_lsn));
        put_varint(&mut o, self.blocks.len() as u64);
        let mut prev: Option<RelFileLocator> = None;
        for (f, blocks) in &self.blocks {
            // Forks of one database come together (the map is sorted): name the tablespace and
            // database once, and the relfilenode as a step from the previous one.
            match prev {
                Some(p) if (p.spc_oid, p.db_oid) == (f.rel.spc_oid, f.rel.db_oid) => {
                    o.push(1);
                    put_varint(&mut o, u64::from(f.rel.rel_number - p.rel_number));
                }
                _ => {
                    o.push(0);
                    put_rel(&mut o, &f.rel);
                }
            }
            prev = Some(f.rel);
            o.push(f.fork);
            put_varint(&mut o, blocks.runs.len() as u64);
            let mut next: u64 = 0;
            for &(first, last) in &blocks.runs {
                // Each run: its distance from the block after the previous run, shifted left
                // one bit, whose low bit says a length (minus 2) follows; a lone block has none.
                let len = u64::from(last - first) + 1;
                put_varint(&mut o, ((u64::from(first) - next) << 1) | u64::from(len > 1));
                if len > 1 {
                    put_varint(&mut o, len - 2);
                }
                next = u64::from(last) + 1;
            }
        }
        put_varint(&mut o, self.changes.len() as u64);
        let mut at = self.start_lsn;
        for (lsn, c) in &self.changes {
            put_varint(&mut o, lsn.wrapping_sub(at));
            at = *lsn;
            match c {
                RelChange::Created { rel, fork } => {
                    o.push(0);
                    put_rel(&mut o, rel);
                    o.push(*fork);
                }
                RelChange::Truncated { rel, blkno, flags } => {
                    o.push(1);
                    put_rel(&mut o, rel);
                    put_varint(&mut o, (*blkno).into());
                    put_varint(&mut o, (*flags).into());
                }
                RelChange::Dropped { rel } => {
                    o.push(2);
                    put_rel(&mut o, rel);
                }
                RelChange::DatabaseCreated { spc_oid, db_oid } => {
                    o.push(3);
                    put_varint(&mut o, (*spc_oid).into());
                    put_varint(&mut o, (*db_oid).into());
                }
                RelChange::DatabaseDropped { db_oid, spc_oids } => {
                    o.push(4);
                    put_varint(&mut o, (*db_oid).into());
                    put_varint(&mut o, spc_oids.len() as u64);
                    for s in spc_oids {
                        put_varint(&mut o, (*s).into());
                    }
                }
                RelChange::TablespaceCreated { spc_oid } => {
                    o.push(5);
                    put_varint(&mut o, (*spc_oid).into());
                }
                RelChange::TablespaceDropped { spc_oid } => {
                    o.push(6);
                    put_varint(&mut o, (*spc_oid).into());
                }
            }
        }
        put_varint(&mut o, self.unknown.len() as u64);
        let mut at = self.start_lsn;
        for u in &self.unknown {
            put_varint(&mut o, u.lsn.wrapping_sub(at));
            at = u.lsn;
            o.extend([u.rmid, u.info, u.reason as u8]);
        }
        match &self.open {
            Some(r) => {
                o.push(1);
                put_varint(&mut o, r.lsn.wrapping_sub(self.start_lsn));
                put_varint(&mut o, r.tot_len.into());
                o.push(r.major);
                put_varint(&mut o, r.head.len() as u64);
                o.extend_from_slice(&r.head);
            }
            None => o.push(0),
        }
        match &self.leading {
            Some(l) => {
                o.push(1);
                put_varint(&mut o, l.len() as u64);
                o.extend_from_slice(l);
            }
            None => o.push(0),
        }
        o
    }

    /// Reads [`BlockRefs::encode`]'s form; any other input is an error, never a panic.
    pub fn decode(blob: &[u8]) -> Result<BlockRefs, BlockRefsDecodeError> {
        if blob.len() < MAGIC.len() || &blob[..MAGIC.len()] != MAGIC {
            return Err(BlockRefsDecodeError::BadMagic);
        }
        let mut r = Rd { b: blob, pos: MAGIC.len() };
        let version = r.u8()?;
        if version != BLOCK_REFS_VERSION {
            return Err(BlockRefsDecodeError::UnsupportedVersion(version));
        }
        let start_lsn = r.varint()?;
        let end_lsn = start_lsn.wrapping_add(r.varint()?);
        let mut out = BlockRefs::new(start_lsn, end_lsn);
        let nforks = r.count()?;
        let mut prev: Option<RelFork> = None;
        for _ in 0..nforks {
            let rel = match (r.u8()?, prev) {
                (0, _) => r.rel()?,
                (1, Some(p)) => {
                    let step = r.u32v()?;
                    let Some(rel_number) = p.rel.rel_number.checked_add(step) else {
                        return r.invalid("relfilenode step overflows");
                    };
                    RelFileLocator { rel_number, ..p.rel }
                }
                _ => return r.invalid("bad relation tag"),
            };
            let fork = r.u8()?;
            if fork > INIT_FORK {
                return r.invalid("fork number past the init fork");
            }
            let key = RelFork { rel, fork };
            if prev.is_some_and(|p| p >= key) {
                return r.invalid("relation forks out of order");
            }
            prev = Some(key);
            let nruns = r.count()?;
            let mut runs = Vec::with_capacity(nruns);
            let mut next: u64 = 0;
            for _ in 0..nruns {
                let head = r.varint()?;
                let len = if head & 1 == 1 { r.varint()?.saturating_add(2) } else { 1 };
                let first = next.saturating_add(head >> 1);
                let end = first.saturating_add(len);
                if end > u64::from(u32::MAX) + 1 {
                    return r.invalid("block number past 2^32");
                }
                if !runs.is_empty() && first == next {
                    // Runs are maximal: two touching runs are one.
                    return r.invalid("runs of blocks touch");
                }
                runs.push((first as u32, (end - 1) as u32));
                next = end;
            }
            if runs.is_empty() {
                return r.invalid("relation fork without blocks");
            }
            out.blocks.insert(key, BlockSet { runs });
        }
        let nchanges = r.count()?;
        let mut at = start_lsn;
        for _ in 0..nchanges {
            at = at.wrapping_add(r.varint()?);
            let c = match r.u8()? {
                0 => {
                    let rel = r.rel()?;
                    let fork = r.u8()?;
                    if fork > INIT_FORK {
                        return r.invalid("fork number past the init fork");
                    }
                    RelChange::Created { rel, fork }
                }
                1 => RelChange::Truncated { rel: r.rel()?, blkno: r.u32v()?, flags: r.u32v()? },
                2 => RelChange::Dropped { rel: r.rel()? },
                3 => RelChange::DatabaseCreated { spc_oid: r.u32v()?, db_oid: r.u32v()? },
                4 => {
                    let db_oid = r.u32v()?;
                    let n = r.count()?;
                    let spc_oids = (0..n).map(|_| r.u32v()).collect::<Result<_, _>>()?;
                    RelChange::DatabaseDropped { db_oid, spc_oids }
                }
                5 => RelChange::TablespaceCreated { spc_oid: r.u32v()? },
                6 => RelChange::TablespaceDropped { spc_oid: r.u32v()? },
                _ => return r.invalid("unknown change kind"),
            };
            out.changes.push((at, c));
        }
        let nunknown = r.count()?;
        let mut at = start_lsn;
        for _ in 0..nunknown {
            at = at.wrapping_add(r.varint()?);
            let (rmid, info) = (r.u8()?, r.u8()?);
            let Some(reason) = UnknownReason::from_code(r.u8()?) else {
                return r.invalid("unknown reason code");
            };
            out.unknown.push(Unknown { lsn: at, rmid, info, reason });
        }
        out.open = match r.u8()? {
            0 => None,
            1 => {
                let lsn = start_lsn.wrapping_add(r.varint()?);
                let tot_len = r.u32v()?;
                let major = r.u8()?;
                let n = r.count()?;
                if n > OPEN_CAP {
                    return r.invalid("open record longer than kept");
                }
                Some(OpenRecord { lsn, tot_len, major, head: r.bytes(n)?.to_vec() })
            }
            _ => return r.invalid("bad open-record tag"),
        };
        out.leading = match r.u8()? {
            0 => None,
            1 => {
                let n = r.count()?;
                Some(r.bytes(n)?.to_vec())
            }
            _ => return r.invalid("bad leading-bytes tag"),
        };
        if r.pos != blob.len() {
            return r.invalid("bytes after the end");
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::layout::{self, FORMATS};
    use crate::wal::record::constants::*;
    use crate::wal::record::synth::*;
    use crate::wal::record::{summarize_segment_at, WalReader};

    /// The block refs of segment `i` of `b`, summarized alone.
    fn refs(b: &WalBuilder, i: usize) -> BlockRefs {
        let start = START + i as u64 * SEG;
        summarize_segment_at(b.segment(i), SEG, start).unwrap().block_refs
    }

    fn listed(r: &BlockRefs) -> Vec<(RelFork, Vec<u32>)> {
        r.blocks().iter().map(|(f, s)| (*f, s.iter().collect())).collect()
    }

    fn rf(n: u32, fork: u8) -> RelFork {
        RelFork { rel: rel(n), fork }
    }

    fn image(info: u8) -> Option<(Vec<u8>, u16, u8, Option<u16>)> {
        Some((vec![0x55; 8192], 0, info, None))
    }

    #[test]
    fn block_refs_of_every_major_with_same_rel_forks_and_image_flags() {
        for fmt in &FORMATS {
            let mut b = WalBuilder::with_magic(1, fmt.page_magic);
            let frags = [
                Frag::BlockAt {
                    id: 0,
                    fork_flags: BKPBLOCK_HAS_IMAGE | BKPBLOCK_WILL_INIT,
                    rel: rel(100),
                    block: 3,
                    image: image(fmt.bkpimage_apply),
                },
                Frag::BlockAt { id: 1, fork_flags: BKPBLOCK_SAME_REL | VM_FORK, rel: rel(999), block: 0, image: None },
                at(2, rel(200), MAIN_FORK, 4_000_000_000),
                Frag::BlockAt {
                    id: 5,
                    fork_flags: BKPBLOCK_SAME_REL | BKPBLOCK_HAS_IMAGE,
                    rel: rel(999),
                    block: 9,
                    // An image kept only for wal_consistency_checking: not applied.
                    image: image(0),
                },
            ];
            let l = b.add(7, 0, 10, &frags, &[1; 10]);
            b.add(8, 0, 11, &[at(0, rel(100), MAIN_FORK, 2), at(1, rel(100), MAIN_FORK, 3)], &[2; 4]);
            b.commit(9, 9);
            let mut got = Vec::new();
            let mut r = WalReader::starting_at(SEG, START).unwrap();
            r.feed_segment(b.segment(0), |rec| {
                if rec.lsn == l {
                    got = rec.block_refs();
                }
            })
            .unwrap();
            let br = |block_id, rel, fork, block, has_image, apply_image, will_init| BlockRef {
                block_id,
                rel,
                fork,
                block,
                has_image,
                apply_image,
                will_init,
                has_data: false,
            };
            assert_eq!(
                got,
                vec![
                    br(0, rel(100), MAIN_FORK, 3, true, true, true),
                    br(1, rel(100), VM_FORK, 0, false, false, false),
                    br(2, rel(200), MAIN_FORK, 4_000_000_000, false, false, false),
                    br(5, rel(200), MAIN_FORK, 9, true, false, false),
                ],
                "PG{}",
                fmt.major
            );
            let s = refs(&b, 0);
            assert!(s.complete(), "PG{}: {s:?}", fmt.major);
            assert_eq!(
                listed(&s),
                vec![
                    (rf(100, MAIN_FORK), vec![2, 3]),
                    (rf(100, VM_FORK), vec![0]),
                    (rf(200, MAIN_FORK), vec![9, 4_000_000_000]),
                ],
                "PG{}",
                fmt.major
            );
            assert_eq!((s.start_lsn(), s.end_lsn(), s.block_count()), (START, START + SEG, 5));
        }
    }

    /// Main data of a commit or abort dropping `rels`, with the sections before them.
    fn xact_dropping(time: i64, rels: &[RelFileLocator], fmt: &WalFormat) -> Vec<u8> {
        let mut sections = Vec::new();
        sections.extend([0u8; 8]); // dbinfo
        sections.extend(1i32.to_le_bytes());
        sections.extend(77u32.to_le_bytes()); // 1 subxact
        sections.extend((rels.len() as i32).to_le_bytes());
        rels.iter().for_each(|r| sections.extend(rel_bytes(r)));
        let mut xinfo = XACT_XINFO_HAS_DBINFO | XACT_XINFO_HAS_SUBXACTS | XACT_XINFO_HAS_RELFILENODES;
        if let Some(item) = fmt.xact_stats_item_size {
            xinfo |= XACT_XINFO_HAS_DROPPED_STATS;
            sections.extend(1i32.to_le_bytes());
            sections.extend(vec![0u8; item]);
        }
        xact_main(time, Some((xinfo, &sections)))
    }

    fn smgr_create(r: RelFileLocator, fork: u32) -> Vec<u8> {
        [rel_bytes(&r), fork.to_le_bytes().to_vec()].concat()
    }

    fn smgr_truncate(r: RelFileLocator, blkno: u32, flags: u32) -> Vec<u8> {
        [blkno.to_le_bytes().to_vec(), rel_bytes(&r), flags.to_le_bytes().to_vec()].concat()
    }

    fn u32s(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn relation_changes_of_every_major() {
        for fmt in &FORMATS {
            let pre15 = fmt.major < 15;
            let (create_copy, create_wal_log, drop) = if pre15 { (0x00, None, 0x10) } else { (0x00, Some(0x10), 0x20) };
            let special = XLR_SPECIAL_REL_UPDATE;
            let mut b = WalBuilder::with_magic(1, fmt.page_magic);
            let mut want = Vec::new();
            let l = b.add(1, XLOG_SMGR_CREATE | special, RM_SMGR_ID, &[], &smgr_create(rel(1), 0));
            want.push((l, RelChange::Created { rel: rel(1), fork: MAIN_FORK }));
            let l = b.add(1, XLOG_SMGR_CREATE | special, RM_SMGR_ID, &[], &smgr_create(rel(1), 3));
            want.push((l, RelChange::Created { rel: rel(1), fork: INIT_FORK }));
            let l = b.add(1, XLOG_SMGR_TRUNCATE | special, RM_SMGR_ID, &[], &smgr_truncate(rel(2), 10, 7));
            want.push((l, RelChange::Truncated { rel: rel(2), blkno: 10, flags: 7 }));
            let l = b.add(1, create_copy | special, RM_DBASE_ID, &[], &u32s(&[16384, 1663, 1, 1663]));
            want.push((l, RelChange::DatabaseCreated { spc_oid: 1663, db_oid: 16384 }));
            if let Some(op) = create_wal_log {
                let l = b.add(1, op | special, RM_DBASE_ID, &[], &u32s(&[16385, 1700]));
                want.push((l, RelChange::DatabaseCreated { spc_oid: 1700, db_oid: 16385 }));
            }
            let l = b.add(1, drop | special, RM_DBASE_ID, &[], &u32s(&[16384, 2, 1663, 1700]));
            want.push((l, RelChange::DatabaseDropped { db_oid: 16384, spc_oids: vec![1663, 1700] }));
            let mut ts = 1700u32.to_le_bytes().to_vec();
            ts.extend(b"/srv/ts\0");
            let l = b.add(1, 0x00, RM_TBLSPC_ID, &[], &ts);
            want.push((l, RelChange::TablespaceCreated { spc_oid: 1700 }));
            let l = b.add(1, 0x10, RM_TBLSPC_ID, &[], &1700u32.to_le_bytes());
            want.push((l, RelChange::TablespaceDropped { spc_oid: 1700 }));
            let main = xact_dropping(5, &[rel(3), rel(4)], fmt);
            let l = b.add(9, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, RM_XACT_ID, &[], &main);
            want.extend([(l, RelChange::Dropped { rel: rel(3) }), (l, RelChange::Dropped { rel: rel(4) })]);
            let main = xact_dropping(6, &[rel(5)], fmt);
            let l = b.add(10, XLOG_XACT_ABORT | XLOG_XACT_HAS_INFO, RM_XACT_ID, &[], &main);
            want.push((l, RelChange::Dropped { rel: rel(5) }));
            // A commit without rels, a heap record and a custom one without the flag change nothing.
            b.commit(11, 7);
            b.add(12, 0x00, 10, &[at(0, rel(6), MAIN_FORK, 1)], &[1; 3]);
            if fmt.custom_rmgrs {
                b.add(0, 0x00, 200, &[], &[1; 3]);
            }
            b.commit(13, 8);
            let s = refs(&b, 0);
            assert_eq!(s.changes(), want.as_slice(), "PG{}", fmt.major);
            assert!(s.complete(), "PG{}: {:?}", fmt.major, s.unknown());
            let full = s.copy_in_full();
            assert!(!full.everything);
            assert_eq!(full.relations, [1, 3, 4, 5].map(rel).into_iter().collect());
            let dbs: BTreeSet<(u32, u32)> = if pre15 {
                [(1663, 16384), (1700, 16384)].into()
            } else {
                [(1663, 16384), (1700, 16385), (1700, 16384)].into()
            };
            assert_eq!(full.databases, dbs, "PG{}", fmt.major);
            assert_eq!(full.tablespaces, [1700].into());
            let cut: Vec<(RelFork, u32)> = s.truncated().into_iter().collect();
            assert_eq!(cut, vec![(rf(2, MAIN_FORK), 10), (rf(2, FSM_FORK), 0), (rf(2, VM_FORK), 0)]);
        }
    }

    #[test]
    fn what_cannot_be_read_is_unknown() {
        for fmt in &FORMATS {
            let mut b = WalBuilder::with_magic(1, fmt.page_magic);
            let special = XLR_SPECIAL_REL_UPDATE;
            let mut want = Vec::new();
            // An unknown record type that says it changes relation files.
            let l = b.add(0, 0x30 | special, 10, &[], &[1; 4]);
            want.push((l, 10, 0x30 | special, UnknownReason::SpecialRelUpdate));
            // Storage and database records of types that do not exist.
            let l = b.add(0, 0x30, RM_SMGR_ID, &[], &[1; 20]);
            want.push((l, RM_SMGR_ID, 0x30, UnknownReason::UnknownInfo));
            let l = b.add(0, 0x30, RM_DBASE_ID, &[], &[1; 20]);
            want.push((l, RM_DBASE_ID, 0x30, UnknownReason::UnknownInfo));
            let l = b.add(0, 0x20, RM_TBLSPC_ID, &[], &[1; 20]);
            want.push((l, RM_TBLSPC_ID, 0x20, UnknownReason::UnknownInfo));
            // Main data too short, a fork past 3, a negative tablespace count.
            let l = b.add(0, XLOG_SMGR_TRUNCATE, RM_SMGR_ID, &[], &[1; 19]);
            want.push((l, RM_SMGR_ID, XLOG_SMGR_TRUNCATE, UnknownReason::BadMainData));
            let l = b.add(0, XLOG_SMGR_CREATE, RM_SMGR_ID, &[], &smgr_create(rel(1), 4));
            want.push((l, RM_SMGR_ID, XLOG_SMGR_CREATE, UnknownReason::BadMainData));
            let drop = if fmt.major < 15 { 0x10 } else { 0x20 };
            let l = b.add(0, drop, RM_DBASE_ID, &[], &u32s(&[5, u32::MAX]));
            want.push((l, RM_DBASE_ID, drop, UnknownReason::BadMainData));
            let l = b.add(0, drop, RM_DBASE_ID, &[], &u32s(&[5, 3, 1663]));
            want.push((l, RM_DBASE_ID, drop, UnknownReason::BadMainData));
            let l = b.add(0, 0, 10, &[at(0, rel(1), 4, 1)], &[1; 4]);
            want.push((l, 10, 0, UnknownReason::InvalidFork));
            // A restart at wal_level minimal (0); replica (1) is fine.
            let change = |level: u32| u32s(&[100, 8, 10, 0, 64, level, 0]);
            let l = b.add(0, XLOG_PARAMETER_CHANGE, RM_XLOG_ID, &[], &change(0));
            want.push((l, RM_XLOG_ID, XLOG_PARAMETER_CHANGE, UnknownReason::WalLevelMinimal));
            b.add(0, XLOG_PARAMETER_CHANGE, RM_XLOG_ID, &[], &change(1));
            let s = refs(&b, 0);
            let got: Vec<_> = s.unknown().iter().map(|u| (u.lsn, u.rmid, u.info, u.reason)).collect();
            assert_eq!(got, want, "PG{}", fmt.major);
            assert!(!s.complete() && s.copy_in_full().everything);
            // The commit-time summary is not affected.
            assert!(summarize_segment_at(b.segment(0), SEG, START).is_ok());
        }
    }

    #[test]
    fn database_records_are_read_in_the_segments_major() {
        // 0x10 is DROP to 13 and 14, CREATE_WAL_LOG to 15 and later.
        for fmt in &FORMATS {
            let mut b = WalBuilder::with_magic(1, fmt.page_magic);
            let l = b.add(0, 0x10, RM_DBASE_ID, &[], &u32s(&[16384, 1, 1663]));
            let want = if fmt.major < 15 {
                RelChange::DatabaseDropped { db_oid: 16384, spc_oids: vec![1663] }
            } else {
                RelChange::DatabaseCreated { spc_oid: 1, db_oid: 16384 }
            };
            assert_eq!(refs(&b, 0).changes(), [(l, want)], "PG{}", fmt.major);
        }
    }

    #[test]
    fn records_cut_at_the_segment_end_are_joined_by_merge() {
        for cut in [8u64, 16, 24, 32, 40, 48] {
            let mut b = WalBuilder::new(3);
            b.add(1, 0, 10, &[at(0, rel(1), MAIN_FORK, 1)], &[1; 4]);
            b.pad_to(START + SEG - cut);
            // Four blocks: 24 + 4 * 20 + 2 bytes of headers, cut at `cut` bytes.
            let frags = [
                at(0, rel(2), MAIN_FORK, 5),
                at(1, rel(3), MAIN_FORK, 6),
                at(2, rel(4), VM_FORK, 7),
                Frag::BlockAt { id: 3, fork_flags: BKPBLOCK_SAME_REL, rel: rel(4), block: 8, image: None },
            ];
            let straddle = b.add(2, 0, 10, &frags, &[2; 6]);
            b.add(3, 0, 10, &[at(0, rel(1), MAIN_FORK, 2)], &[3; 4]);
            // A storage record cut in its main data at the next edge.
            b.pad_to(START + 2 * SEG - 32);
            let create = b.add(4, XLOG_SMGR_CREATE | XLR_SPECIAL_REL_UPDATE, RM_SMGR_ID, &[], &smgr_create(rel(9), 0));
            b.commit(5, 5);
            let (s0, s1, s2) = (refs(&b, 0), refs(&b, 1), refs(&b, 2));
            assert!(!s0.complete() && s1.complete() == (s1.open_record_lsn().is_none()));
            assert_eq!(s0.open_record_lsn(), Some(straddle), "cut {cut}");
            assert_eq!(s1.open_record_lsn(), Some(create), "cut {cut}");
            assert!(s2.complete());
            // Alone, the open record is unknown; with its successor, it is read.
            let alone = BlockRefs::merge([&s0]);
            assert!(!alone.complete());
            let m = BlockRefs::merge([&s2, &s0, &s1]);
            assert!(m.complete(), "cut {cut}: {:?}", m.unknown());
            assert_eq!(
                listed(&m),
                vec![
                    (rf(1, MAIN_FORK), vec![1, 2]),
                    (rf(2, MAIN_FORK), vec![5]),
                    (rf(3, MAIN_FORK), vec![6]),
                    // SAME_REL carries the relation over, not the fork.
                    (rf(4, MAIN_FORK), vec![8]),
                    (rf(4, VM_FORK), vec![7]),
                ],
                "cut {cut}"
            );
            assert_eq!(m.changes(), [(create, RelChange::Created { rel: rel(9), fork: MAIN_FORK })]);
            assert_eq!((m.start_lsn(), m.end_lsn()), (START, START + 3 * SEG));
            // Without the middle segment, the stretch has a gap, and the open records stay unknown.
            let gap = BlockRefs::merge([&s0, &s2]);
            let reasons: Vec<_> = gap.unknown().iter().map(|u| (u.lsn, u.reason)).collect();
            assert_eq!(reasons, vec![(straddle, UnknownReason::CutOff), (START + SEG, UnknownReason::Gap)]);
            // The join survives the binary form.
            let back: Vec<BlockRefs> =
                [&s0, &s1, &s2].iter().map(|s| BlockRefs::decode(&s.encode()).unwrap()).collect();
            assert_eq!(BlockRefs::merge(&back), m);
        }
    }

    #[test]
    fn a_record_read_whole_from_its_first_segment_is_not_kept_open() {
        // Headers and main data in segment 0, only block images continue: nothing is kept.
        let mut b = WalBuilder::new(2);
        b.pad_to(START + SEG - 200);
        let frags = [Frag::BlockAt {
            id: 0,
            fork_flags: BKPBLOCK_HAS_IMAGE,
            rel: rel(7),
            block: 70,
            image: Some((vec![1; 5000], 0, layout::PG15.bkpimage_apply, None)),
        }];
        b.add(1, 0, 10, &frags, &[1; 8]);
        b.commit(2, 2);
        let s0 = refs(&b, 0);
        assert!(s0.complete() && s0.open_record_lsn().is_none());
        assert_eq!(listed(&s0), vec![(rf(7, MAIN_FORK), vec![70])]);
        let s1 = refs(&b, 1);
        assert!(s1.complete() && listed(&s1).is_empty());
    }

    #[test]
    fn create_drop_create_of_one_relfilenode_is_copied_in_full() {
        let mut a = BlockRefs::new(0, 100);
        a.add_block(rf(1, MAIN_FORK), 4);
        a.add_change(10, RelChange::Created { rel: rel(1), fork: MAIN_FORK });
        a.add_change(20, RelChange::Dropped { rel: rel(1) });
        let mut b = BlockRefs::new(100, 200);
        b.add_change(150, RelChange::Created { rel: rel(1), fork: MAIN_FORK });
        b.add_change(160, RelChange::Truncated { rel: rel(2), blkno: 9, flags: SMGR_TRUNCATE_HEAP });
        b.add_change(120, RelChange::Truncated { rel: rel(2), blkno: 30, flags: SMGR_TRUNCATE_HEAP });
        b.add_block(rf(1, MAIN_FORK), 0);
        b.add_block(rf(2, MAIN_FORK), 40);
        let m = BlockRefs::merge([&b, &a]);
        let order: Vec<u64> = m.changes().iter().map(|(l, _)| *l).collect();
        assert_eq!(order, vec![10, 20, 120, 150, 160]);
        assert_eq!(m.copy_in_full().relations, [rel(1)].into());
        assert_eq!(m.truncated(), [(rf(2, MAIN_FORK), 9)].into());
        assert_eq!(listed(&m), vec![(rf(1, MAIN_FORK), vec![0, 4]), (rf(2, MAIN_FORK), vec![40])]);
        assert!(m.complete());
        // Overlapping parts are not silently united.
        let o = BlockRefs::merge([&a, &BlockRefs::new(50, 150)]);
        assert_eq!(o.unknown().iter().map(|u| u.reason).collect::<Vec<_>>(), [UnknownReason::Overlap]);
        assert!(BlockRefs::merge([&BlockRefs::unreadable(0, 100)]).copy_in_full().everything);
    }

    #[test]
    fn fully_logged_forks() {
        assert_eq!([0, 1, 2, 3].map(fork_is_fully_logged), [true, false, false, true]);
    }

    #[test]
    fn block_sets_from_any_order_dense_or_sparse() {
        let mut x = 7u64;
        for (n, range) in [(0usize, 10u32), (1, 1), (100, 50), (5000, 3000), (300, 1 << 30), (2000, u32::MAX)] {
            let v: Vec<u32> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % u64::from(range)) as u32 + if range == u32::MAX { 0 } else { 1000 }
                })
                .collect();
            let mut sorted = v.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(BlockSet::from_unsorted(v), BlockSet::from_sorted(&sorted), "{n} in {range}");
        }
        assert_eq!(BlockSet::from_unsorted(vec![u32::MAX, 0, u32::MAX - 1]).runs(), [(0, 0), (u32::MAX - 1, u32::MAX)]);
    }

    #[test]
    fn block_sets_keep_maximal_runs() {
        let s = BlockSet::from_sorted(&[0, 1, 2, 5, 7, 8, u32::MAX - 1, u32::MAX]);
        assert_eq!(s.runs(), [(0, 2), (5, 5), (7, 8), (u32::MAX - 1, u32::MAX)]);
        assert_eq!(s.len(), 8);
        assert!(s.contains(1) && s.contains(u32::MAX) && !s.contains(3) && !s.contains(6));
        let mut t = s.clone();
        t.insert(6);
        t.insert(3);
        t.insert(4);
        assert_eq!(t.runs(), [(0, 8), (u32::MAX - 1, u32::MAX)]);
        assert_eq!(BlockSet::union(&[&s, &t]), t);
        assert_eq!(t.iter().take(3).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn binary_form_reads_back_and_refuses_what_it_did_not_write() {
        let mut b = WalBuilder::new(2);
        for i in 0..2000u32 {
            let r = rel(16384 + i % 7);
            b.add(i, 0, 10, &[at(0, r, (i % 3) as u8, i * 7 % 1000), at(1, r, MAIN_FORK, i)], &[1; 4]);
        }
        b.add(1, XLOG_SMGR_CREATE, RM_SMGR_ID, &[], &smgr_create(rel(1), 0));
        b.add(0, 0x30 | XLR_SPECIAL_REL_UPDATE, 10, &[], &[1; 4]);
        b.pad_to(START + SEG - 16);
        b.add(2, 0, 10, &[at(0, rel(2), MAIN_FORK, 5)], &[2; 6]);
        let (s0, s1) = (refs(&b, 0), refs(&b, 1));
        assert!(s0.block_count() > 2000 && s0.open_record_lsn().is_some() && !s0.changes().is_empty());
        for s in [&s0, &s1, &BlockRefs::merge([&s0, &s1]), &BlockRefs::default()] {
            let blob = s.encode();
            assert_eq!(&BlockRefs::decode(&blob).unwrap(), s);
            for n in 0..blob.len() {
                assert!(BlockRefs::decode(&blob[..n]).is_err(), "prefix of {n} bytes");
            }
            let mut long = blob.clone();
            long.push(0);
            assert!(matches!(BlockRefs::decode(&long), Err(BlockRefsDecodeError::Invalid { .. })));
            let mut v2 = blob.clone();
            v2[4] = 2;
            assert_eq!(BlockRefs::decode(&v2), Err(BlockRefsDecodeError::UnsupportedVersion(2)));
            assert!(BlockRefs::decode(&v2).unwrap_err().to_string().contains("version 2 is not supported"));
        }
        assert_eq!(BlockRefs::decode(b"TMBX\x01"), Err(BlockRefsDecodeError::BadMagic));
        // Compact: runs and deltas cost a few bytes per distinct block.
        let blob = s0.encode();
        assert!(
            blob.len() < 3 * s0.block_count() as usize + 200,
            "{} bytes for {} blocks",
            blob.len(),
            s0.block_count()
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn rel_fork() -> impl Strategy<Value = RelFork> {
        (prop_oneof![Just(1663u32), Just(1664), any::<u32>()], 0u32..4, any::<u32>(), 0u8..4).prop_map(
            |(spc_oid, db_oid, rel_number, fork)| RelFork { rel: RelFileLocator { spc_oid, db_oid, rel_number }, fork },
        )
    }

    fn change() -> impl Strategy<Value = RelChange> {
        let rel = || rel_fork().prop_map(|f| f.rel);
        prop_oneof![
            (rel(), 0u8..4).prop_map(|(rel, fork)| RelChange::Created { rel, fork }),
            (rel(), any::<u32>(), 0u32..8).prop_map(|(rel, blkno, flags)| RelChange::Truncated { rel, blkno, flags }),
            rel().prop_map(|rel| RelChange::Dropped { rel }),
            (any::<u32>(), any::<u32>()).prop_map(|(spc_oid, db_oid)| RelChange::DatabaseCreated { spc_oid, db_oid }),
            (any::<u32>(), proptest::collection::vec(any::<u32>(), 0..4))
                .prop_map(|(db_oid, spc_oids)| RelChange::DatabaseDropped { db_oid, spc_oids }),
            any::<u32>().prop_map(|spc_oid| RelChange::TablespaceCreated { spc_oid }),
            any::<u32>().prop_map(|spc_oid| RelChange::TablespaceDropped { spc_oid }),
        ]
    }

    prop_compose! {
        pub(crate) fn block_refs()(
            start in any::<u64>(),
            len in 0u64..1 << 40,
            blocks in proptest::collection::vec((rel_fork(), prop_oneof![0u32..64, any::<u32>()]), 0..200),
            changes in proptest::collection::vec((0u64..1 << 30, change()), 0..8),
            unknown in proptest::collection::vec((0u64..1 << 30, any::<u8>(), any::<u8>(), 1u8..9), 0..4),
            open in proptest::option::of((0u64..1 << 20, any::<u32>(), 13u8..19, proptest::collection::vec(any::<u8>(), 0..64))),
            leading in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        ) -> BlockRefs {
            let mut r = BlockRefs::new(start, start.wrapping_add(len));
            for (f, b) in blocks {
                r.add_block(f, b);
            }
            for (d, c) in changes {
                r.add_change(start.wrapping_add(d), c);
            }
            for (d, rmid, info, code) in unknown {
                let reason = UnknownReason::from_code(code).unwrap();
                r.add_unknown(Unknown { lsn: start.wrapping_add(d), rmid, info, reason });
            }
            r.open = open.map(|(d, tot_len, major, head)| OpenRecord { lsn: start.wrapping_add(d), tot_len, major, head });
            r.leading = leading;
            r
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn encode_then_decode_is_identity(r in block_refs()) {
            prop_assert_eq!(BlockRefs::decode(&r.encode()).unwrap(), r);
        }

        #[test]
        fn merge_unites_blocks_and_keeps_every_change(parts in proptest::collection::vec(block_refs(), 1..4)) {
            let m = BlockRefs::merge(&parts);
            for p in &parts {
                for (f, s) in p.blocks() {
                    let ms = &m.blocks()[f];
                    prop_assert!(s.iter().all(|b| ms.contains(b)));
                }
            }
            let total: usize = parts.iter().map(|p| p.changes().len()).sum();
            prop_assert_eq!(m.changes().len(), total);
            prop_assert!(m.changes().windows(2).all(|w| w[0].0 <= w[1].0));
            prop_assert!(m.unknown().windows(2).all(|w| w[0].lsn <= w[1].lsn));
            let distinct: u64 = {
                let mut all: Vec<(RelFork, u32)> =
                    parts.iter().flat_map(|p| p.blocks().iter().flat_map(|(f, s)| s.iter().map(move |b| (*f, b)))).collect();
                all.sort_unstable();
                all.dedup();
                all.len() as u64
            };
            prop_assert_eq!(m.block_count(), distinct);
            prop_assert_eq!(BlockRefs::decode(&m.encode()).unwrap(), m);
        }
    }
}
