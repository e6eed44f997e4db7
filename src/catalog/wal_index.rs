//! Per-segment commit-time summaries (`wal-index/<TLI>/<SEGMENT>`), written at push time,
//! and the archive view restore planning reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::restore_plan::{roll_up, Archive, Join, SegmentCommits};
use crate::repo::{RepoError, Repository};
use crate::wal::name::{timeline_hex, Segment};
use crate::wal::record;

/// What the archive knows about one segment's transactions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentIndex {
    /// Earliest commit time, unix microseconds.
    pub first_commit_us: Option<i64>,
    /// Latest commit time, unix microseconds.
    pub last_commit_us: Option<i64>,
    /// Records walked.
    pub records: usize,
    /// Why the segment could not be read, if it could not (archiving goes on regardless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the join fields below were recorded (summaries before chain checks lack them).
    #[serde(default)]
    pub chain: bool,
    /// The first record starting in the segment: (LSN, `xl_prev`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_record: Option<(u64, u64)>,
    /// LSN of the last record starting in the segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_record_lsn: Option<u64>,
    /// LSN just past the last complete record in the segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_record_end: Option<u64>,
    /// Start LSN of the last complete record in the segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_complete_lsn: Option<u64>,
    /// Page magic of a PostgreSQL major the reader does not read (`error` says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsupported_magic: Option<u16>,
    /// The transactions that ended in the segment and the relation files commits removed,
    /// for `find`; `None` in summaries written before they were recorded (`find` reads
    /// such a segment itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xacts: Option<XactEvents>,
}

/// The transaction events of one segment people restore for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XactEvents {
    /// Lowest and highest xid of the commits and aborts in the segment (`None`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xids: Option<(u32, u32)>,
    /// Commits that removed relation files (a `DROP`, a `TRUNCATE`, a table rewrite), in LSN order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drops: Vec<DropEvent>,
}

/// A commit that removed relation files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropEvent {
    /// Start LSN of the commit record.
    pub lsn: u64,
    /// The committing transaction.
    pub xid: u32,
    /// Commit time, unix microseconds.
    pub commit_us: i64,
    /// The relation files removed: (tablespace, database, relfilenode).
    pub rels: Vec<(u32, u32, u32)>,
}

/// The events [`XactEvents`] keeps, from a segment's summary (pure): the xid range of its
/// transaction ends, and each commit's removed relation files.
pub fn xact_events(s: &record::SegmentSummary) -> XactEvents {
    let xids = s.xact_ends.iter().map(|e| e.xid);
    let range = xids.clone().min().zip(xids.max());
    let mut dropped: BTreeMap<u64, Vec<(u32, u32, u32)>> = BTreeMap::new();
    for (lsn, c) in s.block_refs.changes() {
        if let record::RelChange::Dropped { rel } = c {
            dropped.entry(*lsn).or_default().push((rel.spc_oid, rel.db_oid, rel.rel_number));
        }
    }
    let drops = s
        .xact_ends
        .iter()
        .filter(|e| e.kind.is_commit())
        .filter_map(|e| {
            Some(DropEvent {
                lsn: e.lsn,
                xid: e.xid,
                commit_us: record::pg_time_to_unix_us(e.time_us),
                rels: dropped.get(&e.lsn)?.clone(),
            })
        })
        .collect();
    XactEvents { xids: range, drops }
}

impl SegmentIndex {
    /// How the segment joins the one before it (pure).
    pub fn join(&self) -> Join {
        match (self.chain && self.error.is_none(), self.first_record, self.last_record_lsn) {
            (true, Some((_, prev)), Some(last)) => Join::Starts { prev, last },
            (true, None, None) => Join::Continuation,
            _ => Join::Unknown,
        }
    }
}

/// Summarizes a full segment's commit times (pure).
pub fn summarize(bytes: &[u8], seg: Segment, seg_size: u64) -> SegmentIndex {
    let mut b = IndexBuilder::new(seg, seg_size);
    b.feed(bytes);
    b.finish()
}

/// Builds a segment's summary from its bytes fed in whole-page pieces, in order; a segment
/// that cannot be read gets a summary naming why (archiving goes on regardless).
#[derive(Debug)]
pub struct IndexBuilder {
    walk: Result<record::SegmentSummarizer, record::WalParseError>,
}

impl IndexBuilder {
    /// A builder for segment `seg`.
    pub fn new(seg: Segment, seg_size: u64) -> IndexBuilder {
        let walk = record::SegmentSummarizer::starting_at(seg_size, seg.start_lsn(seg_size).0);
        IndexBuilder { walk }
    }

    /// Feeds the next piece of the segment.
    pub fn feed(&mut self, piece: &[u8]) {
        if let Ok(w) = &mut self.walk {
            if let Err(e) = w.feed(piece) {
                self.walk = Err(e);
            }
        }
    }

    /// The summary.
    pub fn finish(self) -> SegmentIndex {
        self.finish_with_blocks().0
    }

    /// The summary, and the segment's block references encoded ([`record::BlockRefs::encode`];
    /// `None` when the segment could not be read).
    pub fn finish_with_blocks(self) -> (SegmentIndex, Option<Vec<u8>>) {
        match self.walk.and_then(|w| w.finish()) {
            Ok(s) => (
                SegmentIndex {
                    first_commit_us: s.first_commit_us.map(record::pg_time_to_unix_us),
                    last_commit_us: s.last_commit_us.map(record::pg_time_to_unix_us),
                    records: s.records,
                    error: None,
                    chain: true,
                    first_record: s.first_record,
                    last_record_lsn: s.last_record_lsn,
                    last_record_end: s.last_record_end_lsn,
                    last_complete_lsn: s.last_complete_lsn,
                    unsupported_magic: None,
                    xacts: Some(xact_events(&s)),
                },
                Some(s.block_refs.encode()),
            ),
            Err(e) => (
                SegmentIndex {
                    unsupported_magic: match e {
                        record::WalParseError::UnsupportedMajor { magic, .. } => Some(magic),
                        _ => None,
                    },
                    error: Some(e.to_string()),
                    ..SegmentIndex::default()
                },
                None,
            ),
        }
    }
}

/// Stores a segment's summary unless one is stored. Written only after the segment itself
/// is archived with the same bytes, so a summary always describes the archived segment.
pub async fn save(repo: &Repository, seg: Segment, seg_size: u64, idx: &SegmentIndex) -> Result<(), RepoError> {
    repo.put_json_if_absent(&repo.wal_index_key(seg.timeline, &seg.name(seg_size)), idx).await?;
    Ok(())
}

/// Reads one segment's summary; `None` when it has none.
pub async fn load(repo: &Repository, seg: Segment, seg_size: u64) -> Result<Option<SegmentIndex>, RepoError> {
    repo.get_json(&repo.wal_index_key(seg.timeline, &seg.name(seg_size))).await
}

/// What the archive holds per timeline: the timelines with WAL segments, and each
/// timeline's history file as parsed (`Err` saying why PostgreSQL could not read it).
#[derive(Debug, Default)]
pub struct TimelineFiles {
    /// Timelines with at least one segment archived.
    pub with_wal: std::collections::BTreeSet<u32>,
    /// Timeline → its history file's ancestors, or why it does not parse.
    pub histories: BTreeMap<u32, Result<Vec<crate::wal::history::Ancestor>, String>>,
}

/// Reads which timelines have WAL and every archived history file (one listing per
/// timeline; restores and `verify` share it).
pub async fn timeline_files(repo: &Repository) -> Result<TimelineFiles, RepoError> {
    let mut out = TimelineFiles::default();
    for tli in timelines(repo).await? {
        // A few keys tell whether segments are there; the history file sorts first.
        let is_segment =
            |o: &crate::store::ObjectMeta| o.key.rsplit('/').next().is_some_and(crate::wal::name::is_segment_name);
        let mut metas = repo.store().list_some(&repo.wal_prefix(tli), 16).await?;
        if metas.len() >= 16 && !metas.iter().any(is_segment) {
            metas = repo.store().list(&repo.wal_prefix(tli)).await?;
        }
        if metas.iter().any(is_segment) {
            out.with_wal.insert(tli);
        }
        // A history file's name does not depend on the segment size.
        let key = repo.wal_key(&crate::wal::name::WalFile::History(tli), crate::wal::name::DEFAULT_SEGMENT_SIZE);
        if let Some(bytes) = repo.get_opened(&key).await? {
            out.histories.insert(tli, crate::wal::history::parse_history(&bytes, tli));
        }
    }
    Ok(out)
}

/// Timelines present in the archive.
pub async fn timelines(repo: &Repository) -> Result<Vec<u32>, RepoError> {
    // One level: the timeline directories, not the segments in them.
    let level = repo.store().list_level(&repo.wal_root()).await?;
    let mut out: Vec<u32> = level
        .dirs
        .iter()
        .filter_map(|d| {
            let t = d.strip_prefix(&repo.wal_root())?.trim_end_matches('/');
            (t.len() == 8).then(|| u32::from_str_radix(t, 16).ok()).flatten()
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Segments per roll-up block at most: those sharing the first 22 characters of their name
/// (timeline, log, and the segment's high digits), so a block is one listing prefix.
pub const BLOCK: u64 = 256;

/// First segment of the block holding segment `n` (pure).
pub fn block_of(n: u64, seg_size: u64) -> u64 {
    let per_log = crate::wal::name::segments_per_log(seg_size);
    n - (n % per_log) % BLOCK
}

/// Last segment of the block starting at `first` (pure).
pub fn block_end(first: u64, seg_size: u64) -> u64 {
    let per_log = crate::wal::name::segments_per_log(seg_size);
    let log_end = first - first % per_log + per_log - 1;
    (first + BLOCK - 1).min(log_end)
}

/// A rolled-up block's summaries: `wal-index/<TLI>/range/<first segment>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BlockIndex {
    /// Segment number → its summary.
    pub segments: BTreeMap<u64, SegmentIndex>,
}

/// What one timeline's rolled-up blocks hold: `wal-index/<TLI>/summary`. Readers take the
/// runs of a block from here and read the block itself only when a later summary of one
/// of its segments arrived after the roll-up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelineSummary {
    /// Format version.
    pub version: u32,
    /// Block's first segment → its runs (first segment, the run).
    pub blocks: BTreeMap<u64, Vec<(u64, SegmentCommits)>>,
    /// Last segment of the last block a roll-up completed (filled from the WAL itself):
    /// the next roll-up lists the WAL after it. Blocks after it may be partial (the daemon
    /// writes its batches of summaries into them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_to: Option<u64>,
}

/// Blocks this process has seen named by a timeline's summary, by store and block key: a
/// batch into one of them writes the block alone, not the summary too (blocks are only
/// dropped from a summary below the purge floor, never the newest).
static NAMED: std::sync::Mutex<Option<std::collections::BTreeSet<String>>> = std::sync::Mutex::new(None);

fn named_key(repo: &Repository, key: &str) -> String {
    format!("{}/{key}", repo.store().describe())
}

fn named() -> std::sync::MutexGuard<'static, Option<std::collections::BTreeSet<String>>> {
    NAMED.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Forgets that a block is named (deleted).
fn forget_doc(repo: &Repository, key: &str) {
    if let Some(m) = named().as_mut() {
        m.remove(&named_key(repo, key));
    }
}

/// One writer of index blocks and summaries at a time in this process (the daemon's
/// batches and its roll-ups read, change and write the same objects).
static INDEX_WRITE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Writes a batch of summaries of one timeline into their blocks and the timeline summary
/// (what the daemon does instead of one object per segment). The blocks go before the
/// summary that names them; a crash in between leaves summaries a roll-up restores from
/// the segments.
pub async fn merge_into_blocks(
    repo: &Repository,
    timeline: u32,
    seg_size: u64,
    entries: &BTreeMap<u64, SegmentIndex>,
) -> Result<(), RepoError> {
    if entries.is_empty() {
        return Ok(());
    }
    let _one = INDEX_WRITE.lock().await;
    let key = summary_key(repo, timeline);
    let mut by_block: BTreeMap<u64, Vec<(u64, &SegmentIndex)>> = BTreeMap::new();
    for (n, i) in entries {
        by_block.entry(block_of(*n, seg_size)).or_default().push((*n, i));
    }
    // Blocks after the last completed one are read whole by readers, so a batch writes
    // only its blocks; the summary changes when it must name a new block.
    let mut summary: Option<TimelineSummary> = None;
    for (block, list) in by_block {
        let bkey = block_key(repo, timeline, block, seg_size);
        let mut detail: BlockIndex = repo.get_json(&bkey).await?.unwrap_or_default();
        for (n, i) in list {
            detail.segments.insert(n, i.clone());
        }
        repo.put_json(&bkey, &detail).await?;
        let nk = named_key(repo, &bkey);
        if named().as_ref().is_some_and(|m| m.contains(&nk)) {
            continue;
        }
        if summary.is_none() {
            summary = Some(repo.get_json(&key).await?.unwrap_or_default());
        }
        if let Some(sm) = summary.as_mut() {
            sm.version = 1;
            sm.blocks.insert(block, block_runs(&detail));
        }
    }
    if let Some(sm) = summary {
        repo.put_json(&key, &sm).await?;
        let mut n = named();
        let set = n.get_or_insert_with(Default::default);
        for b in sm.blocks.keys() {
            set.insert(named_key(repo, &block_key(repo, timeline, *b, seg_size)));
        }
    }
    Ok(())
}

/// A segment's summary wherever the index keeps it: its own object, or its block.
pub async fn find(repo: &Repository, seg: Segment, seg_size: u64) -> Result<Option<SegmentIndex>, RepoError> {
    if let Some(i) = load(repo, seg, seg_size).await? {
        return Ok(Some(i));
    }
    let block = block_of(seg.number, seg_size);
    let Some(summary) = repo.get_json::<TimelineSummary>(&summary_key(repo, seg.timeline)).await? else {
        return Ok(None);
    };
    if !summary.blocks.contains_key(&block) {
        return Ok(None);
    }
    let detail: Option<BlockIndex> = repo.get_json(&block_key(repo, seg.timeline, block, seg_size)).await?;
    Ok(detail.and_then(|mut d| d.segments.remove(&seg.number)))
}

/// What the planner takes from one segment's summary (pure).
pub fn commits_of(idx: &SegmentIndex) -> SegmentCommits {
    SegmentCommits {
        first: idx.first_commit_us,
        last: idx.last_commit_us,
        join: idx.join(),
        last_complete: idx.last_complete_lsn.filter(|_| idx.error.is_none()),
        unsupported: idx.unsupported_magic,
        more: 0,
    }
}

/// The runs a block's summaries fold into (pure).
pub fn block_runs(block: &BlockIndex) -> Vec<(u64, SegmentCommits)> {
    let entries: BTreeMap<u64, SegmentCommits> = block.segments.iter().map(|(n, i)| (*n, commits_of(i))).collect();
    roll_up(&entries).into_iter().collect()
}

fn index_prefix(repo: &Repository, timeline: u32) -> String {
    format!("clusters/{}/wal-index/{}/", repo.cluster(), timeline_hex(timeline))
}

/// Key of the timeline's roll-up summary.
pub fn summary_key(repo: &Repository, timeline: u32) -> String {
    format!("{}summary", index_prefix(repo, timeline))
}

/// Key of a rolled-up block.
pub fn block_key(repo: &Repository, timeline: u32, first: u64, seg_size: u64) -> String {
    format!("{}range/{}", index_prefix(repo, timeline), Segment { timeline, number: first }.name(seg_size))
}

/// The per-segment summaries not rolled up yet (the tail): segment number → key.
async fn tail_keys(repo: &Repository, timeline: u32, seg_size: u64) -> Result<BTreeMap<u64, String>, RepoError> {
    let level = repo.store().list_level(&index_prefix(repo, timeline)).await?;
    Ok(level
        .objects
        .into_iter()
        .filter_map(|m| {
            let s = Segment::parse(m.key.rsplit('/').next()?, seg_size).ok()?;
            (s.timeline == timeline).then_some((s.number, m.key))
        })
        .collect())
}

/// Reads many sealed JSON documents, a bounded number at a time.
async fn load_many<T: serde::de::DeserializeOwned>(
    repo: &Repository,
    keys: impl IntoIterator<Item = String>,
) -> Result<Vec<Option<T>>, RepoError> {
    use futures::stream::{StreamExt, TryStreamExt};
    let keys: Vec<String> = keys.into_iter().collect();
    let reads = keys.into_iter().map(|k| {
        let repo = repo.clone();
        async move { repo.get_json::<T>(&k).await }
    });
    futures::stream::iter(reads).buffered(repo.in_flight()).try_collect().await
}

/// The archived segments of `timeline` from segment `from` on, with their commit times,
/// as the index knows them: the roll-up summary's runs plus the summaries of the tail. Its
/// cost follows the tail, not the archive: one listing of the index directory, the summary,
/// and the tail's summaries. A segment archived without a summary (a push that died between
/// the two, an archive of an older tidemark) reads as missing until `wal-index rebuild`.
pub async fn load_archive(repo: &Repository, timeline: u32, seg_size: u64, from: u64) -> Result<Archive, RepoError> {
    let tail = tail_keys(repo, timeline, seg_size).await?;
    let tail: Vec<(u64, String)> = tail.into_iter().filter(|(n, _)| *n >= from).collect();
    let summary: TimelineSummary = repo.get_json(&summary_key(repo, timeline)).await?.unwrap_or_default();
    let loaded: Vec<Option<SegmentIndex>> = load_many(repo, tail.iter().map(|(_, k)| k.clone())).await?;
    let tail: BTreeMap<u64, SegmentIndex> =
        tail.into_iter().zip(loaded).filter_map(|((n, _), i)| Some((n, i?))).collect();
    let mut segments: BTreeMap<u64, SegmentCommits> = BTreeMap::new();
    for (&block, runs) in summary.blocks.range(block_of(from, seg_size)..) {
        let late: Vec<u64> = tail.range(block..=block_end(block, seg_size)).map(|(n, _)| *n).collect();
        // Blocks after the last completed one may hold batches newer than their runs.
        let partial = summary.complete_to.is_none_or(|c| block > c);
        if late.is_empty() && !partial {
            segments.extend(runs.iter().copied());
            continue;
        }
        // Summaries that arrived after the block was rolled up: merge them with its detail.
        match repo.get_json::<BlockIndex>(&block_key(repo, timeline, block, seg_size)).await? {
            Some(detail) => segments.extend(detail.segments.iter().map(|(n, i)| (*n, commits_of(i)))),
            None => segments.extend(runs.iter().copied()),
        }
    }
    for (n, idx) in &tail {
        // A run already holds it (a summary written twice, or left by a roll-up that died).
        let in_run = segments.range(..=*n).next_back().is_some_and(|(k, c)| c.more > 0 && k + c.more >= *n);
        if !in_run {
            segments.insert(*n, commits_of(idx));
        }
    }
    let segments = roll_up(&segments).into_iter().filter(|(k, c)| k + c.more >= from).collect();
    Ok(Archive { seg_size, segments })
}

/// Every summary the index holds for `timeline` (segment number → summary): the detail of
/// each rolled-up block and the tail's own objects, the tail winning. A block whose runs
/// all have commit times outside `commits_within` (unix microseconds) is not read.
pub async fn summaries(
    repo: &Repository,
    timeline: u32,
    seg_size: u64,
    commits_within: Option<(i64, i64)>,
) -> Result<BTreeMap<u64, SegmentIndex>, RepoError> {
    let summary: TimelineSummary = repo.get_json(&summary_key(repo, timeline)).await?.unwrap_or_default();
    let outside = |c: &SegmentCommits| match (commits_within, c.first, c.last) {
        (Some((from, to)), Some(first), Some(last)) => last < from || first > to,
        _ => false,
    };
    let blocks: Vec<String> = summary
        .blocks
        .iter()
        .filter(|(_, runs)| !runs.iter().all(|(_, c)| outside(c)))
        .map(|(b, _)| block_key(repo, timeline, *b, seg_size))
        .collect();
    let mut out = BTreeMap::new();
    for detail in load_many::<BlockIndex>(repo, blocks).await?.into_iter().flatten() {
        out.extend(detail.segments);
    }
    let tail = tail_keys(repo, timeline, seg_size).await?;
    let loaded: Vec<Option<SegmentIndex>> = load_many(repo, tail.values().cloned()).await?;
    out.extend(tail.into_keys().zip(loaded).filter_map(|(n, i)| Some((n, i?))));
    Ok(out)
}

/// Segments past the index's end that readers summarize from their bytes.
pub const UNINDEXED_TAIL: usize = 1024;

/// Adds to `archive` the segments archived after its last one that the index does not know
/// yet, summarized from their bytes (at most `limit`): what a restore needs to know where
/// the archive really ends. Returns how many.
pub async fn add_unindexed_tail(
    repo: &Repository,
    timeline: u32,
    archive: &mut Archive,
    limit: usize,
) -> Result<usize, RepoError> {
    let seg_size = archive.seg_size;
    let prefix = repo.wal_prefix(timeline);
    let after = archive.last().map(|n| format!("{prefix}{}", Segment { timeline, number: n }.name(seg_size)));
    let listed = repo.store().list_between(&prefix, after.as_deref(), None).await?;
    add_tail_of(repo, timeline, archive, &segment_numbers(&listed, timeline, seg_size), limit).await
}

/// The numbers of `timeline`'s segments among listed WAL objects, in order (pure).
pub fn segment_numbers(listed: &[crate::store::ObjectMeta], timeline: u32, seg_size: u64) -> Vec<u64> {
    let mut out: Vec<u64> = listed
        .iter()
        .filter_map(|m| Segment::parse(m.key.rsplit('/').next()?, seg_size).ok())
        .filter(|s| s.timeline == timeline)
        .map(|s| s.number)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// [`add_unindexed_tail`] for a caller that has listed the timeline's segments already
/// (`archived`, in order): no second listing.
pub async fn add_tail_of(
    repo: &Repository,
    timeline: u32,
    archive: &mut Archive,
    archived: &[u64],
    limit: usize,
) -> Result<usize, RepoError> {
    let seg_size = archive.seg_size;
    let last = archive.last();
    let numbers: Vec<u64> =
        archived.iter().copied().filter(|n| last.is_none_or(|l| *n > l) && !archive.has(*n)).take(limit).collect();
    let mut added = 0;
    for (n, idx) in summarize_many(repo, timeline, seg_size, numbers).await? {
        if let Some(idx) = idx {
            archive.segments.insert(n, commits_of(&idx));
            added += 1;
        }
    }
    Ok(added)
}

/// What a roll-up did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RollUp {
    /// Blocks written.
    pub blocks: usize,
    /// Segments summarized from their archived bytes (their summary was missing).
    pub summarized: usize,
    /// Per-segment summaries folded into blocks and removed.
    pub folded: usize,
}

/// Summarizes an archived segment from its bytes; `None` when it is not archived.
async fn summarize_archived(repo: &Repository, seg: Segment, seg_size: u64) -> Result<Option<SegmentIndex>, RepoError> {
    let key = repo.wal_key(&crate::wal::name::WalFile::Segment(seg), seg_size);
    let Some(bytes) = repo.get_opened(&key).await? else { return Ok(None) };
    Ok(Some(tokio::task::spawn_blocking(move || summarize(&bytes, seg, seg_size)).await.unwrap_or_else(|e| {
        SegmentIndex { error: Some(format!("summarizing failed: {e}")), ..SegmentIndex::default() }
    })))
}

/// Summarizes archived segments of `timeline` from their bytes, a few at a time: each
/// number with its summary, `None` for one not archived.
async fn summarize_many(
    repo: &Repository,
    timeline: u32,
    seg_size: u64,
    numbers: Vec<u64>,
) -> Result<Vec<(u64, Option<SegmentIndex>)>, RepoError> {
    use futures::stream::{StreamExt, TryStreamExt};
    let reads = numbers.into_iter().map(|n| {
        let repo = repo.clone();
        async move { summarize_archived(&repo, Segment { timeline, number: n }, seg_size).await.map(|i| (n, i)) }
    });
    futures::stream::iter(reads).buffered(repo.in_flight().min(8)).try_collect().await
}

/// Rolls the timeline's index up: every block below the newest one with archived WAL gets
/// one object with all its summaries (a segment archived without one is summarized from its
/// bytes), the summary gets its runs, and the per-segment summaries folded in are removed.
/// With `full`, every block with archived WAL is rewritten and the summary made anew (from
/// the blocks that open, the per-segment summaries, and the segments themselves).
/// Crash-safe at every step: a block is written before the summary names it, and
/// per-segment summaries are removed only after both; readers merge what is left over.
pub async fn roll_up_timeline(
    repo: &Repository,
    timeline: u32,
    seg_size: u64,
    full: bool,
) -> Result<RollUp, RepoError> {
    let mut done = RollUp::default();
    let _one = INDEX_WRITE.lock().await;
    let mut summary: TimelineSummary = if full {
        TimelineSummary::default()
    } else {
        repo.get_json(&summary_key(repo, timeline)).await?.unwrap_or_default()
    };
    summary.version = 1;
    let tail = tail_keys(repo, timeline, seg_size).await?;
    // WAL not rolled up yet: after the last rolled block (everything, when rebuilding).
    let rolled_to = summary.complete_to;
    let wal_prefix = repo.wal_prefix(timeline);
    let after = rolled_to.map(|e| format!("{wal_prefix}{}", Segment { timeline, number: e }.name(seg_size)));
    let listed = repo.store().list_between(&wal_prefix, after.as_deref(), None).await?;
    let archived: std::collections::BTreeSet<u64> = segment_numbers(&listed, timeline, seg_size).into_iter().collect();
    let Some(&newest) = archived.iter().next_back().or(tail.keys().next_back()) else {
        return Ok(done);
    };
    // Completed: the blocks before the one before the newest. One block of lag, so that a
    // segment pushed late (pushes run in parallel) still lands in a block not completed.
    let newest_block = block_of(newest, seg_size);
    let horizon = match newest_block.checked_sub(1) {
        Some(p) => block_of(p, seg_size),
        None => 0,
    };
    // Blocks to write: those with WAL not rolled up, and those with late summaries.
    let mut blocks: std::collections::BTreeSet<u64> = archived.iter().map(|n| block_of(*n, seg_size)).collect();
    blocks.extend(tail.keys().map(|n| block_of(*n, seg_size)));
    blocks.retain(|b| *b < horizon);
    for block in blocks {
        let end = block_end(block, seg_size);
        let mut detail = match repo.get_json::<BlockIndex>(&block_key(repo, timeline, block, seg_size)).await {
            Ok(d) => d.unwrap_or_default(),
            // Derived data: a rebuild replaces a block that does not open from the segments.
            Err(e) if full => {
                tracing::warn!(timeline, block, error = %e, "wal index block unreadable; rebuilding it from the segments");
                BlockIndex::default()
            }
            Err(e) => return Err(e),
        };
        let in_tail: Vec<(u64, String)> = tail.range(block..=end).map(|(n, k)| (*n, k.clone())).collect();
        let loaded: Vec<Option<SegmentIndex>> = load_many(repo, in_tail.iter().map(|(_, k)| k.clone())).await?;
        for ((n, _), idx) in in_tail.iter().zip(loaded) {
            if let Some(idx) = idx {
                detail.segments.insert(*n, idx);
            }
        }
        let missing: Vec<u64> =
            archived.range(block..=end).filter(|n| !detail.segments.contains_key(n)).copied().collect();
        for (n, idx) in summarize_many(repo, timeline, seg_size, missing).await? {
            if let Some(idx) = idx {
                detail.segments.insert(n, idx);
                done.summarized += 1;
            }
        }
        if detail.segments.is_empty() {
            continue;
        }
        repo.put_json(&block_key(repo, timeline, block, seg_size), &detail).await?;
        summary.blocks.insert(block, block_runs(&detail));
        done.blocks += 1;
        tracing::debug!(timeline, block, segments = detail.segments.len(), "wal index block rolled up");
    }
    // The blocks from the horizon on are not completed; a segment there that lost its
    // summary (a push that died between the two, a daemon killed with a batch unwritten and
    // no journal) gets one from its bytes.
    let mut known: std::collections::BTreeSet<u64> = tail.keys().copied().collect();
    for b in summary.blocks.keys().copied().filter(|b| *b >= horizon).collect::<Vec<_>>() {
        if let Some(d) = repo.get_json::<BlockIndex>(&block_key(repo, timeline, b, seg_size)).await? {
            known.extend(d.segments.keys());
        }
    }
    let lost: Vec<u64> = archived.range(horizon..).filter(|n| !known.contains(n)).copied().collect();
    for n in lost {
        let seg = Segment { timeline, number: n };
        if let Some(idx) = summarize_archived(repo, seg, seg_size).await? {
            save(repo, seg, seg_size, &idx).await?;
            done.summarized += 1;
        }
    }
    let complete = horizon.checked_sub(1);
    if done.blocks == 0 && summary.complete_to >= complete {
        return Ok(done);
    }
    summary.complete_to = summary.complete_to.max(complete);
    repo.put_json(&summary_key(repo, timeline), &summary).await?;
    for (n, key) in &tail {
        if summary.blocks.contains_key(&block_of(*n, seg_size)) && *n < horizon {
            repo.store().delete(key).await?;
            done.folded += 1;
        }
    }
    Ok(done)
}

/// Rolls up (or with `full`, rebuilds) the index of every timeline: timeline → what it did.
pub async fn roll_up_all(repo: &Repository, full: bool) -> Result<BTreeMap<u32, RollUp>, RepoError> {
    let seg_size = crate::repo::cluster::segment_size(repo).await?;
    let mut out = BTreeMap::new();
    for tli in timelines(repo).await? {
        out.insert(tli, roll_up_timeline(repo, tli, seg_size, full).await?);
    }
    Ok(out)
}

/// Takes one segment out of its rolled-up block and the summary (before the segment itself
/// is removed); nothing to do when its block is not rolled up.
pub async fn forget_segment(repo: &Repository, seg: Segment, seg_size: u64) -> Result<(), RepoError> {
    let _one = INDEX_WRITE.lock().await;
    let key = summary_key(repo, seg.timeline);
    let Some(mut summary) = repo.get_json::<TimelineSummary>(&key).await? else { return Ok(()) };
    let block = block_of(seg.number, seg_size);
    if !summary.blocks.contains_key(&block) {
        return Ok(());
    }
    let bkey = block_key(repo, seg.timeline, block, seg_size);
    let mut detail = repo.get_json::<BlockIndex>(&bkey).await?.unwrap_or_default();
    detail.segments.remove(&seg.number);
    // The block, then the summary, then (the caller) the segment: until it is gone, readers
    // that still see it indexed see it archived too.
    repo.put_json(&bkey, &detail).await?;
    summary.blocks.insert(block, block_runs(&detail));
    repo.put_json(&key, &summary).await
}

/// Forgets the index of segments below `floor` after the WAL purge removed them: the
/// blocks that end below it, from the summary and the store.
pub async fn forget_below(repo: &Repository, timeline: u32, seg_size: u64, floor: u64) -> Result<usize, RepoError> {
    let _one = INDEX_WRITE.lock().await;
    let key = summary_key(repo, timeline);
    let Some(mut summary) = repo.get_json::<TimelineSummary>(&key).await? else { return Ok(0) };
    let gone: Vec<u64> = summary.blocks.keys().copied().filter(|b| block_end(*b, seg_size) < floor).collect();
    if gone.is_empty() {
        return Ok(0);
    }
    for b in &gone {
        summary.blocks.remove(b);
    }
    // The summary first: a block it no longer names is never read.
    repo.put_json(&key, &summary).await?;
    for b in &gone {
        let k = block_key(repo, timeline, *b, seg_size);
        repo.store().delete(&k).await?;
        forget_doc(repo, &k);
    }
    Ok(gone.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_of_an_unknown_major_is_summarized_with_why() {
        let seg_size = 1u64 << 20;
        let seg = Segment { timeline: 1, number: 3 };
        // A long page header of PostgreSQL 12 WAL (magic 0xD101).
        let mut bytes = vec![0u8; seg_size as usize];
        bytes[0..2].copy_from_slice(&0xD101u16.to_le_bytes());
        bytes[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
        bytes[8..16].copy_from_slice(&(3 * seg_size).to_le_bytes());
        bytes[32..36].copy_from_slice(&(seg_size as u32).to_le_bytes());
        bytes[36..40].copy_from_slice(&8192u32.to_le_bytes());
        let idx = summarize(&bytes, seg, seg_size);
        assert_eq!(
            idx.error.as_deref(),
            Some("PostgreSQL 12 is not supported for time targets; --latest and --target-lsn work")
        );
        assert_eq!(idx.unsupported_magic, Some(0xD101));
        assert_eq!((idx.first_commit_us, idx.last_commit_us), (None, None));
        assert_eq!(idx.join(), Join::Unknown);
        // Summaries written before this field read as before.
        let old: SegmentIndex =
            serde_json::from_str(r#"{"first_commit_us":null,"last_commit_us":null,"records":0,"error":"x"}"#)
                .expect("old summary");
        assert_eq!(old.unsupported_magic, None);
    }
}
