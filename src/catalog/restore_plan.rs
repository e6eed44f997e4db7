//! Restore planning (pure): pick the backup and check WAL coverage, or refuse with the
//! window that does exist.
//!
//! A completed backup is restorable from its stop point (LSN and time) as far as the
//! archive holds an unbroken run of segments from its start segment. By time, recovery can
//! stop at any moment up to the last commit in that run: PostgreSQL only stops at commit
//! records, so a target after the last archived commit would never be reached.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};

use crate::wal::layout;
use crate::wal::name::{Lsn, Segment};

/// Where to recover to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The end of the archived WAL.
    Latest,
    /// A moment (inclusive).
    Time(DateTime<Utc>),
    /// A WAL location (inclusive).
    Lsn(Lsn),
    /// Just before transaction `xid` ends (`recovery_target_xid`, not inclusive): its commit
    /// or abort record is at `lsn` on `timeline`, as the index found it.
    BeforeXid {
        /// The transaction.
        xid: u32,
        /// Start LSN of its commit or abort record.
        lsn: Lsn,
        /// The timeline that record is on.
        timeline: u32,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Latest => f.write_str("latest"),
            Target::Time(t) => f.write_str(&rfc3339(*t)),
            Target::Lsn(l) => write!(f, "LSN {l}"),
            Target::BeforeXid { xid, lsn, .. } => write!(f, "just before transaction {xid} (its end at LSN {lsn})"),
        }
    }
}

/// RFC 3339 with microseconds, UTC.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// How an archived segment joins the WAL before it, from its push-time summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Join {
    /// Not known (no summary, an unreadable segment, or a summary from before chain checks).
    #[default]
    Unknown,
    /// No record starts in the segment: it only continues one begun earlier.
    Continuation,
    /// Records start in it.
    Starts {
        /// `xl_prev` of its first record: the last record that started before it.
        prev: u64,
        /// LSN of the last record that starts in it.
        last: u64,
    },
}

/// Commit times found in one archived segment (unix microseconds), and how it joins; or the
/// same for a rolled-up run of consecutive segments known to be archived and to join one
/// another (`more` > 0): then `join` is that of the run as a whole (the first record
/// starting in it points back to `prev`, the last starts at `last`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SegmentCommits {
    /// Earliest commit time.
    pub first: Option<i64>,
    /// Latest commit time.
    pub last: Option<i64>,
    /// Its join to the segment before.
    pub join: Join,
    /// Start LSN of the last complete record in it, when known.
    pub last_complete: Option<u64>,
    /// Page magic of WAL from a PostgreSQL major the reader does not read (no commit times).
    pub unsupported: Option<u16>,
    /// Further consecutive segments this entry stands for (0: one segment).
    #[serde(default)]
    pub more: u64,
}

/// A segment that does not continue the history of the segments before it: written by
/// another server with the same system identifier (a split brain), or planted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainBreak {
    /// The segment that does not continue.
    pub segment: u64,
    /// Where its first record points back to.
    pub found: u64,
    /// The last record that started before it, in the archive.
    pub expected: u64,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "segment {:X} does not continue the archived history: its first record points back to {}, but the last record before it is at {}",
            self.segment,
            Lsn(self.found),
            Lsn(self.expected)
        )
    }
}

/// Every archived segment boundary from segment `from` on where the later segment does not
/// continue the earlier ones (pure). Gaps reset the walk; after a break the walk follows the
/// segment that broke, so a run of foreign segments reports once, where it begins.
pub fn chain_breaks(archive: &Archive, from: u64) -> Vec<ChainBreak> {
    let mut out = Vec::new();
    let begin = archive.covering(from).map_or(from, |(k, _)| k);
    // What runs into `from` from before it carries on; the join at `from` itself is not
    // checked (what precedes it is outside the walk).
    let mut last_start: Option<u64> = carried_into(archive, begin);
    let mut prev_n: Option<u64> = None;
    for (n, c) in archive.overlapping(from, u64::MAX) {
        if prev_n.is_some_and(|p| p + 1 != n) {
            last_start = None;
        }
        match c.join {
            Join::Starts { prev, last } => {
                if let Some(expected) = last_start.filter(|e| *e != prev && n > from) {
                    out.push(ChainBreak { segment: n, found: prev, expected });
                }
                last_start = Some(last);
            }
            Join::Continuation => {}
            Join::Unknown => last_start = None,
        }
        prev_n = Some(n + c.more);
    }
    out
}

/// The timeline recovery should follow from a backup on `backup_tli` (pure): the newest
/// timeline whose history descends from `backup_tli` after the backup's consistency point
/// (`stop`) and that has WAL archived; `backup_tli` itself when none does. A history file
/// with no WAL of its own, or one that branched before the backup, is not followed.
pub fn lineage_timeline(
    backup_tli: u32,
    stop: Lsn,
    histories: &BTreeMap<u32, Vec<crate::wal::history::Ancestor>>,
    with_wal: &std::collections::BTreeSet<u32>,
) -> u32 {
    histories
        .iter()
        .filter(|(tli, _)| **tli > backup_tli && with_wal.contains(tli))
        .filter(|(_, anc)| anc.iter().any(|a| a.timeline == backup_tli && a.switchpoint >= stop))
        .map(|(tli, _)| *tli)
        .max()
        .unwrap_or(backup_tli)
}

/// Walks consecutive segments from `first`, following each one's join: the last segment
/// of the unbroken run and, if the run ends at a segment that does not continue it, why.
/// `None` when `first` is missing (pure).
pub fn unbroken_run(archive: &Archive, first: u64) -> Option<(u64, Option<ChainBreak>)> {
    let (start, at) = archive.covering(first)?;
    // A run is unbroken inside: the walk goes on from its end.
    let mut n = start + at.more;
    // The last record start seen, carried over segments of pure continuation.
    let mut last_start = match at.join {
        Join::Starts { last, .. } => Some(last),
        // Only a record begun earlier runs through it: the carry comes from before.
        Join::Continuation => carried_into(archive, start),
        Join::Unknown => None,
    };
    while let Some(next) = archive.segments.get(&(n + 1)) {
        match next.join {
            Join::Starts { prev, last } => {
                if let Some(expected) = last_start.filter(|e| *e != prev) {
                    return Some((n, Some(ChainBreak { segment: n + 1, found: prev, expected })));
                }
                last_start = Some(last);
            }
            Join::Continuation => {}
            Join::Unknown => last_start = None,
        }
        n += 1 + next.more;
    }
    Some((n, None))
}

/// The last record start before segment `n`, through contiguous continuation segments.
fn carried_into(archive: &Archive, n: u64) -> Option<u64> {
    let mut expect = n;
    for (k, c) in archive.segments.range(..n).rev() {
        if k + c.more + 1 != expect {
            return None;
        }
        match c.join {
            Join::Starts { last, .. } => return Some(last),
            Join::Continuation => expect = *k,
            Join::Unknown => return None,
        }
    }
    None
}

/// The archived segments of one timeline.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    /// Segment size.
    pub seg_size: u64,
    /// First segment number → the commit times of it (and of the `more` segments after it).
    pub segments: BTreeMap<u64, SegmentCommits>,
}

impl Archive {
    /// The entry that covers segment `n`, with the segment it starts at.
    pub fn covering(&self, n: u64) -> Option<(u64, &SegmentCommits)> {
        let (&k, c) = self.segments.range(..=n).next_back()?;
        (k.saturating_add(c.more) >= n).then_some((k, c))
    }

    /// The entries that overlap segments `first..=last`, in order.
    pub fn overlapping(&self, first: u64, last: u64) -> impl DoubleEndedIterator<Item = (u64, &SegmentCommits)> {
        let start = self.covering(first).map_or(first, |(k, _)| k);
        self.segments.range(start..=last.max(start)).map(|(k, c)| (*k, c)).filter(move |(k, _)| *k <= last)
    }

    /// Whether segment `n` is archived.
    pub fn has(&self, n: u64) -> bool {
        self.covering(n).is_some()
    }

    /// How many segments the archive holds.
    pub fn count(&self) -> u64 {
        self.segments.values().map(|c| c.more + 1).sum()
    }

    /// The last archived segment.
    pub fn last(&self) -> Option<u64> {
        self.segments.iter().next_back().map(|(k, c)| k + c.more)
    }
}

/// Folds consecutive entries that join one another into runs (pure): what the planner,
/// the window and the chain checks conclude from the result is what they conclude from the
/// entries themselves (commit times following WAL order, as PostgreSQL writes them), except
/// that a time target may read to the end of its run. Entries
/// with an unknown join, or of a major the reader does not read, stay as they are.
pub fn roll_up(entries: &BTreeMap<u64, SegmentCommits>) -> BTreeMap<u64, SegmentCommits> {
    let mut out: BTreeMap<u64, SegmentCommits> = BTreeMap::new();
    let mut open: Option<(u64, SegmentCommits)> = None;
    for (&n, c) in entries {
        let joined = open.as_ref().and_then(|(k, r)| {
            if k + r.more + 1 != n || c.unsupported.is_some() {
                return None;
            }
            let join = match (r.join, c.join) {
                // Not (Continuation, Starts): a break at the Starts would be reported where
                // the run begins instead of at its own segment.
                (Join::Continuation, Join::Continuation) => Join::Continuation,
                (j @ Join::Starts { .. }, Join::Continuation) => j,
                (Join::Starts { prev, last: x }, Join::Starts { prev: p, last }) if p == x => {
                    Join::Starts { prev, last }
                }
                _ => return None,
            };
            let min = |a: Option<i64>, b: Option<i64>| a.into_iter().chain(b).min();
            let max = |a: Option<i64>, b: Option<i64>| a.into_iter().chain(b).max();
            Some(SegmentCommits {
                first: min(r.first, c.first),
                last: max(r.last, c.last),
                join,
                last_complete: c.last_complete.or(r.last_complete),
                unsupported: None,
                more: r.more + 1 + c.more,
            })
        });
        match joined {
            Some(m) => {
                if let Some((_, r)) = open.as_mut() {
                    *r = m;
                }
            }
            None => {
                if let Some((k, r)) = open.take() {
                    out.insert(k, r);
                }
                let foldable = c.join != Join::Unknown && c.unsupported.is_none();
                if foldable {
                    open = Some((n, *c));
                } else {
                    out.insert(n, *c);
                }
            }
        }
    }
    if let Some((k, r)) = open {
        out.insert(k, r);
    }
    out
}

/// What the planner needs of a completed backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupPoint {
    /// Backup id.
    pub id: String,
    /// Timeline.
    pub timeline: u32,
    /// Start LSN.
    pub start_lsn: Lsn,
    /// Stop LSN: consistent from here.
    pub stop_lsn: Lsn,
    /// Stop time: consistent from (at latest) here.
    pub stop_time: DateTime<Utc>,
}

/// One restorable stretch: from a backup's stop to the end of its unbroken WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The backup it starts from.
    pub backup: String,
    /// Earliest restorable time.
    pub from_time: DateTime<Utc>,
    /// Latest restorable time (last archived commit), if any commit was archived after the stop.
    pub to_time: Option<DateTime<Utc>>,
    /// Earliest restorable LSN.
    pub from_lsn: Lsn,
    /// End of the unbroken WAL.
    pub to_lsn: Lsn,
    /// Last segment of the unbroken run.
    pub last_segment: u64,
    /// The segment after the run, archived but not continuing it (another history).
    pub broken: Option<ChainBreak>,
    /// Page magic of a segment in the run whose major the reader does not read: its commit
    /// times are unknown, so only LSN and latest targets reach into it.
    pub unsupported: Option<u16>,
}

/// The restorable window: one range per usable backup, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Window {
    /// Ranges.
    pub ranges: Vec<Range>,
}

impl Window {
    /// Earliest restorable time.
    pub fn earliest(&self) -> Option<DateTime<Utc>> {
        self.ranges.iter().map(|r| r.from_time).min()
    }
    /// Latest restorable time.
    pub fn latest(&self) -> Option<DateTime<Utc>> {
        self.ranges.iter().filter_map(|r| r.to_time).max()
    }
    /// Why commit times are unknown, when a range holds WAL of a major the reader does not read.
    pub fn commit_times_unknown(&self) -> Option<String> {
        self.ranges.iter().find_map(|r| r.unsupported).map(layout::unsupported_message)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ranges.is_empty() {
            return f.write_str("nothing is restorable: no completed backup with its WAL archived");
        }
        match (self.earliest(), self.latest()) {
            (Some(a), Some(b)) => write!(f, "restorable by time from {} to {}", rfc3339(a), rfc3339(b))?,
            (Some(a), None) => match self.commit_times_unknown() {
                Some(why) => write!(f, "restorable from {} by LSN; commit times unknown: {why}", rfc3339(a))?,
                None => write!(f, "restorable from {} (no commits archived after it yet)", rfc3339(a))?,
            },
            _ => {}
        }
        for r in &self.ranges {
            write!(f, "\n  backup {}: LSN {} .. {}", r.backup, r.from_lsn, r.to_lsn)?;
            if let Some(t) = r.to_time {
                write!(f, ", time {} .. {}", rfc3339(r.from_time), rfc3339(t))?;
            }
            if let Some(m) = r.unsupported {
                // The headline already says why when no range has commit times.
                match self.latest() {
                    Some(_) => write!(f, "; commit times unknown: {}", layout::unsupported_message(m))?,
                    None => f.write_str("; commit times unknown")?,
                }
            }
            if let Some(b) = &r.broken {
                write!(f, "; then the WAL breaks: {b}")?;
            }
        }
        Ok(())
    }
}

/// What to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlan {
    /// The chosen backup.
    pub backup: String,
    /// The target.
    pub target: Target,
    /// Segments recovery will read, first..=last.
    pub first_segment: u64,
    /// Last segment needed.
    pub last_segment: u64,
    /// For `--latest`: the start of the last complete archived record, which recovery must
    /// replay ("redo done at" at or past it) for the restore to have reached its target.
    /// Time and LSN targets are checked by PostgreSQL itself (it refuses to promote short of
    /// them).
    pub must_reach: Option<Lsn>,
}

/// What recovery must replay for `--latest` (pure): the newest complete record the
/// summaries of segments `first..=last` know; where the newest segment that has records has
/// no usable summary (an unknown PostgreSQL major, an old summary), at least its start.
fn latest_record(archive: &Archive, first: u64, last: u64) -> Option<Lsn> {
    for (n, c) in archive.overlapping(first, last).rev() {
        // A run that begins before `first` may hold its newest record before it too.
        if let Some(l) = c.last_complete.filter(|l| n >= first || *l >= first * archive.seg_size) {
            return Some(Lsn(l));
        }
        if c.join == Join::Unknown {
            return Some(Lsn(n * archive.seg_size));
        }
    }
    None
}

/// Why there is no plan; each carries the window that does exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Nothing restorable at all.
    #[error("no completed backup with its WAL archived; take one with `tidemark backup create`\n{0}")]
    NothingRestorable(Window),
    /// Target before the oldest backup's consistency point.
    #[error("target {0} is before the oldest restorable point\n{1}")]
    BeforeOldest(Target, Window),
    /// Target after the last archived commit / WAL.
    #[error("target {0} is after the end of the archive (use --latest for everything archived)\n{1}")]
    AfterEnd(Target, Window),
    /// A time target over WAL whose commit times are unknown (a major the reader does not read).
    #[error("cannot restore to {0}: commit times unknown: {1}\n{2}")]
    CommitTimesUnknown(Target, String, Window),
    /// Target falls in a gap of the archive.
    #[error("target {0} falls in a gap of the archived WAL (run `tidemark verify`; segments it finds archived but not indexed come back with `tidemark wal-index rebuild`)\n{1}")]
    InGap(Target, Window),
    /// `--latest` over an archive whose WAL breaks into another history.
    #[error("cannot restore --latest: {0}. The end of the archive is not one server's history (a second server archived under this handle, or a segment was planted): run `tidemark verify`, then restore to a point before the break with --target-time or --target-lsn, or move the foreign segments out of the archive\n{1}")]
    ChainBroken(ChainBreak, Window),
    /// The requested backup does not exist, is not completed, or cannot reach the target.
    #[error("backup {0} cannot be used: {1}\n{2}")]
    BadBackup(String, String, Window),
}

fn us_to_time(us: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us)
}

/// The range a backup makes restorable, if its WAL reaches its stop point.
pub fn range_of(b: &BackupPoint, archive: &Archive) -> Option<Range> {
    let seg = archive.seg_size;
    let start = Segment::containing(b.timeline, b.start_lsn, seg).number;
    // The stop LSN may sit exactly on a segment boundary: the last byte needed is just before it.
    let stop = Segment::containing(b.timeline, Lsn(b.stop_lsn.0.saturating_sub(1).max(b.start_lsn.0)), seg).number;
    let (end, broken) = unbroken_run(archive, start)?;
    if end < stop {
        return None;
    }
    let last_commit = archive.overlapping(stop, end).filter_map(|(_, c)| c.last).max();
    let to_time = last_commit.and_then(us_to_time).filter(|t| *t >= b.stop_time);
    let unsupported = archive.overlapping(start, end).find_map(|(_, c)| c.unsupported);
    Some(Range {
        backup: b.id.clone(),
        from_time: b.stop_time,
        to_time,
        from_lsn: b.stop_lsn,
        to_lsn: Lsn((end + 1) * seg),
        last_segment: end,
        broken,
        unsupported,
    })
}

/// The restorable window of these backups over this archive.
pub fn window(backups: &[BackupPoint], archive: &Archive) -> Window {
    let mut ranges: Vec<Range> = backups.iter().filter_map(|b| range_of(b, archive)).collect();
    ranges.sort_by(|a, b| a.from_lsn.cmp(&b.from_lsn).then(a.backup.cmp(&b.backup)));
    Window { ranges }
}

/// The segment recovery must reach for `target` within `r`.
fn last_needed(target: Target, r: &Range, archive: &Archive, timeline: u32) -> u64 {
    match target {
        Target::Latest => r.last_segment,
        Target::Lsn(l) | Target::BeforeXid { lsn: l, .. } => {
            Segment::containing(timeline, l, archive.seg_size).number.min(r.last_segment)
        }
        Target::Time(t) => {
            let t_us = t.timestamp_micros();
            // The first segment holding a commit at or after the target: recovery stops there.
            let from = Segment::containing(timeline, r.from_lsn, archive.seg_size).number;
            // In a rolled-up run, its last segment: at most the run is read past the target.
            archive
                .overlapping(from, r.last_segment)
                .find(|(_, c)| c.last.is_some_and(|l| l >= t_us))
                .map_or(r.last_segment, |(n, c)| (n + c.more).min(r.last_segment))
        }
    }
}

fn reaches(target: Target, r: &Range) -> bool {
    match target {
        Target::Latest => true,
        Target::Lsn(l) => r.from_lsn <= l && l < r.to_lsn,
        // The backup must end before the transaction does, or it holds its effects.
        Target::BeforeXid { lsn, .. } => r.from_lsn <= lsn && lsn < r.to_lsn,
        Target::Time(t) => r.from_time <= t && r.to_time.is_some_and(|end| t <= end),
    }
}

/// Plans a restore to `target`, optionally from a given backup.
pub fn plan(
    backups: &[BackupPoint],
    archive: &Archive,
    target: Target,
    only: Option<&str>,
) -> Result<RestorePlan, PlanError> {
    let w = window(backups, archive);
    if let Some(id) = only {
        let Some(b) = backups.iter().find(|b| b.id == id) else {
            return Err(PlanError::BadBackup(id.into(), "no completed backup has this id".into(), w));
        };
        let Some(r) = range_of(b, archive) else {
            return Err(PlanError::BadBackup(
                id.into(),
                "the WAL from its start to its stop is not all archived".into(),
                w,
            ));
        };
        if !reaches(target, &r) {
            if let (Target::Time(_), Some(m)) = (target, r.unsupported) {
                return Err(PlanError::CommitTimesUnknown(target, layout::unsupported_message(m), w));
            }
            return Err(PlanError::BadBackup(id.into(), format!("it cannot reach {target}"), w));
        }
        if let (Target::Latest, Some(b)) = (target, r.broken) {
            return Err(PlanError::ChainBroken(b, w));
        }
        let first = Segment::containing(b.timeline, b.start_lsn, archive.seg_size).number;
        let last = last_needed(target, &r, archive, b.timeline);
        return Ok(RestorePlan {
            backup: b.id.clone(),
            target,
            first_segment: first,
            last_segment: last,
            must_reach: matches!(target, Target::Latest).then(|| latest_record(archive, first, last)).flatten(),
        });
    }
    if w.ranges.is_empty() {
        return Err(PlanError::NothingRestorable(w));
    }
    // The latest backup that reaches the target: least WAL to replay.
    let best = w
        .ranges
        .iter()
        .filter(|r| reaches(target, r))
        .max_by(|a, b| a.from_lsn.cmp(&b.from_lsn).then(a.from_time.cmp(&b.from_time)));
    let Some(r) = best else {
        let unknown = w.commit_times_unknown();
        let err = match (target, unknown) {
            (Target::Time(t), _) if w.earliest().is_some_and(|e| t < e) => PlanError::BeforeOldest(target, w),
            // Not "after the end": the archive may well hold commits after t, unread.
            (Target::Time(_), Some(why)) => PlanError::CommitTimesUnknown(target, why, w),
            (Target::Time(t), None) if w.latest().is_none_or(|l| t > l) => PlanError::AfterEnd(target, w),
            (Target::Lsn(l) | Target::BeforeXid { lsn: l, .. }, _) if w.ranges.iter().all(|r| l < r.from_lsn) => {
                PlanError::BeforeOldest(target, w)
            }
            (Target::Lsn(l) | Target::BeforeXid { lsn: l, .. }, _) if w.ranges.iter().all(|r| l >= r.to_lsn) => {
                PlanError::AfterEnd(target, w)
            }
            _ => PlanError::InGap(target, w),
        };
        return Err(err);
    };
    if let (Target::Latest, Some(b)) = (target, r.broken) {
        return Err(PlanError::ChainBroken(b, w));
    }
    let b = backups.iter().find(|b| b.id == r.backup).expect("ranges come from backups");
    let first = Segment::containing(b.timeline, b.start_lsn, archive.seg_size).number;
    let last = last_needed(target, r, archive, b.timeline);
    Ok(RestorePlan {
        backup: r.backup.clone(),
        target,
        first_segment: first,
        last_segment: last,
        must_reach: matches!(target, Target::Latest).then(|| latest_record(archive, first, last)).flatten(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn us(s: i64) -> i64 {
        t(s).timestamp_micros()
    }

    /// Segments `range`, each with commits at `base + n*10 .. base + n*10 + 5` seconds.
    fn archive(range: std::ops::RangeInclusive<u64>) -> Archive {
        let mut a = Archive { seg_size: SEG, segments: BTreeMap::new() };
        for n in range {
            a.segments.insert(
                n,
                SegmentCommits {
                    first: Some(us(n as i64 * 10)),
                    last: Some(us(n as i64 * 10 + 5)),
                    join: Join::Starts { prev: (n - 1) * 1000 + 500, last: n * 1000 + 500 },
                    last_complete: Some(n * 1000 + 400),
                    unsupported: None,
                    more: 0,
                },
            );
        }
        a
    }

    fn backup(id: &str, start_seg: u64, stop_seg: u64, stop_s: i64) -> BackupPoint {
        BackupPoint {
            id: id.into(),
            timeline: 1,
            start_lsn: Lsn(start_seg * SEG + 0x28),
            stop_lsn: Lsn(stop_seg * SEG + 0x100),
            stop_time: t(stop_s),
        }
    }

    #[test]
    fn window_spans_backup_stop_to_last_commit() {
        let a = archive(2..=9);
        let w = window(&[backup("b1", 2, 3, 31)], &a);
        assert_eq!(w.ranges.len(), 1);
        assert_eq!(w.earliest(), Some(t(31)));
        assert_eq!(w.latest(), Some(t(95)));
        assert_eq!(w.ranges[0].to_lsn, Lsn(10 * SEG));
        assert!(w.to_string().contains("restorable by time from"));
    }

    #[test]
    fn picks_latest_backup_ending_before_target() {
        let a = archive(2..=20);
        let bs = [backup("b1", 2, 3, 31), backup("b2", 10, 11, 111)];
        let p = plan(&bs, &a, Target::Time(t(100)), None).unwrap();
        assert_eq!(p.backup, "b1");
        assert_eq!(p.first_segment, 2);
        assert_eq!(p.last_segment, 10, "first segment with a commit at or after the target");
        let p = plan(&bs, &a, Target::Time(t(150)), None).unwrap();
        assert_eq!(p.backup, "b2");
        assert_eq!(p.first_segment, 10);
        let p = plan(&bs, &a, Target::Latest, None).unwrap();
        assert_eq!((p.backup.as_str(), p.last_segment), ("b2", 20));
        assert_eq!(p.must_reach, Some(Lsn(20_400)), "the last complete archived record");
        assert_eq!(plan(&bs, &a, Target::Time(t(150)), None).unwrap().must_reach, None);
    }

    #[test]
    fn latest_must_reach_the_newest_known_complete_record() {
        let mut a = archive(2..=9);
        // The last segment's summary knows no complete record (one long record, or unknown).
        a.segments.get_mut(&9).unwrap().last_complete = None;
        let p = plan(&[backup("b1", 2, 3, 31)], &a, Target::Latest, None).unwrap();
        assert_eq!(p.must_reach, Some(Lsn(8_400)));
        // An unreadable last segment: recovery must at least enter it.
        a.segments.get_mut(&9).unwrap().join = Join::Unknown;
        let p = plan(&[backup("b1", 2, 3, 31)], &a, Target::Latest, None).unwrap();
        assert_eq!(p.must_reach, Some(Lsn(9 * SEG)));
        // Known segments without a complete record (one record spanning them all): nothing.
        for c in a.segments.values_mut() {
            c.last_complete = None;
            c.join = Join::Continuation;
        }
        assert_eq!(plan(&[backup("b1", 2, 3, 31)], &a, Target::Latest, Some("b1")).unwrap().must_reach, None);
    }

    #[test]
    fn refuses_before_oldest_and_after_end_with_window() {
        let a = archive(2..=9);
        let bs = [backup("b1", 2, 3, 31)];
        let e = plan(&bs, &a, Target::Time(t(10)), None).unwrap_err();
        assert!(matches!(e, PlanError::BeforeOldest(..)), "{e}");
        assert!(e.to_string().contains("restorable by time from"));
        let e = plan(&bs, &a, Target::Time(t(96)), None).unwrap_err();
        assert!(matches!(e, PlanError::AfterEnd(..)), "{e}");
        let e = plan(&bs, &a, Target::Lsn(Lsn(10 * SEG)), None).unwrap_err();
        assert!(matches!(e, PlanError::AfterEnd(..)), "{e}");
        let e = plan(&bs, &a, Target::Lsn(Lsn(SEG)), None).unwrap_err();
        assert!(matches!(e, PlanError::BeforeOldest(..)), "{e}");
        // Exactly the last commit is still reachable.
        assert!(plan(&bs, &a, Target::Time(t(95)), None).is_ok());
        // Exactly the stop time too.
        assert!(plan(&bs, &a, Target::Time(t(31)), None).is_ok());
    }

    #[test]
    fn a_segment_of_another_history_ends_the_run_and_refuses_latest() {
        let mut a = archive(2..=20);
        // Segment 7 points back at a record segment 6 does not end with.
        a.segments.get_mut(&7).unwrap().join = Join::Starts { prev: 6123, last: 7500 };
        let bs = [backup("b1", 2, 3, 31)];
        let w = window(&bs, &a);
        assert_eq!(w.ranges[0].last_segment, 6);
        assert_eq!(w.ranges[0].broken, Some(ChainBreak { segment: 7, found: 6123, expected: 6500 }));
        assert!(w.to_string().contains("does not continue"), "{w}");
        let e = plan(&bs, &a, Target::Latest, None).unwrap_err();
        assert!(matches!(e, PlanError::ChainBroken(..)), "{e}");
        assert!(e.to_string().contains("--target-time"), "{e}");
        assert!(matches!(plan(&bs, &a, Target::Latest, Some("b1")), Err(PlanError::ChainBroken(..))));
        // Before the break, time and LSN targets still plan; after it they are past the end.
        assert_eq!(plan(&bs, &a, Target::Time(t(50)), None).unwrap().last_segment, 5);
        assert!(plan(&bs, &a, Target::Lsn(Lsn(6 * SEG + 10)), None).is_ok());
        assert!(matches!(plan(&bs, &a, Target::Time(t(80)), None), Err(PlanError::AfterEnd(..))));
        // A newer backup taken after the break has a history of its own.
        let bs2 = [backup("b1", 2, 3, 31), backup("b2", 10, 11, 111)];
        assert_eq!(plan(&bs2, &a, Target::Latest, None).unwrap().backup, "b2");
    }

    #[test]
    fn recovery_follows_only_archived_descendants_of_the_backup() {
        use crate::wal::history::Ancestor;
        let a = |timeline, lsn| Ancestor { timeline, switchpoint: Lsn(lsn) };
        let mut h = BTreeMap::new();
        let wal: std::collections::BTreeSet<u32> = [1, 2, 3].into();
        assert_eq!(lineage_timeline(1, Lsn(100), &h, &wal), 1, "no history: stay");
        h.insert(2, vec![a(1, 500)]);
        h.insert(3, vec![a(1, 500), a(2, 900)]);
        assert_eq!(lineage_timeline(1, Lsn(100), &h, &wal), 3);
        assert_eq!(lineage_timeline(2, Lsn(600), &h, &wal), 3);
        // A history without WAL of its own (planted, or not yet written to) is not followed.
        h.insert(4, vec![a(1, 500), a(2, 900), a(3, 1000)]);
        assert_eq!(lineage_timeline(1, Lsn(100), &h, &wal), 3);
        // A branch before the backup's consistency point does not carry the backup.
        assert_eq!(lineage_timeline(1, Lsn(700), &h, &wal), 1);
        // Another branch of timeline 1, never of 2.
        let mut h2 = BTreeMap::new();
        h2.insert(5, vec![a(2, 100)]);
        assert_eq!(lineage_timeline(1, Lsn(50), &h2, &[5].into()), 1);
    }

    #[test]
    fn every_break_is_found_once_and_gaps_reset() {
        let mut a = archive(2..=20);
        assert!(chain_breaks(&a, 0).is_empty());
        // A foreign run 7..=9 (consistent among itself), then the original history resumes
        // at 10 (pointing at 9500, which the foreign 9 happens to end with too).
        a.segments.get_mut(&7).unwrap().join = Join::Starts { prev: 6123, last: 7777 };
        a.segments.get_mut(&8).unwrap().join = Join::Starts { prev: 7777, last: 8888 };
        a.segments.get_mut(&9).unwrap().join = Join::Starts { prev: 8888, last: 9999 };
        assert_eq!(
            chain_breaks(&a, 0),
            vec![
                ChainBreak { segment: 7, found: 6123, expected: 6500 },
                ChainBreak { segment: 10, found: 9500, expected: 9999 }
            ]
        );
        assert_eq!(chain_breaks(&a, 8), vec![ChainBreak { segment: 10, found: 9500, expected: 9999 }]);
        // A missing segment is a gap, not a break.
        a.segments.remove(&9);
        assert_eq!(chain_breaks(&a, 8), vec![]);
    }

    #[test]
    fn joins_carry_over_continuations_and_unknowns_never_break() {
        let mut a = archive(2..=9);
        // Segment 5 is all continuation: 6 must point at 4's last record.
        a.segments.get_mut(&5).unwrap().join = Join::Continuation;
        a.segments.get_mut(&6).unwrap().join = Join::Starts { prev: 4500, last: 6500 };
        assert_eq!(unbroken_run(&a, 2), Some((9, None)));
        a.segments.get_mut(&6).unwrap().join = Join::Starts { prev: 5500, last: 6500 };
        assert_eq!(unbroken_run(&a, 2), Some((5, Some(ChainBreak { segment: 6, found: 5500, expected: 4500 }))));
        // Unknown joins (old summaries, unreadable segments) are not evidence of a break.
        a.segments.get_mut(&5).unwrap().join = Join::Unknown;
        assert_eq!(unbroken_run(&a, 2), Some((9, None)));
        a.segments.get_mut(&6).unwrap().join = Join::Unknown;
        a.segments.get_mut(&7).unwrap().join = Join::Starts { prev: 1, last: 7500 };
        assert_eq!(unbroken_run(&a, 2), Some((9, None)));
        assert_eq!(unbroken_run(&a, 1), None);
    }

    #[test]
    fn gaps_cut_ranges_and_are_reported() {
        let mut a = archive(2..=20);
        a.segments.remove(&6);
        let bs = [backup("b1", 2, 3, 31), backup("b2", 10, 11, 111)];
        let w = window(&bs, &a);
        assert_eq!(w.ranges[0].last_segment, 5);
        let e = plan(&bs, &a, Target::Time(t(80)), None).unwrap_err();
        assert!(matches!(e, PlanError::InGap(..)), "{e}");
        assert!(plan(&bs, &a, Target::Time(t(50)), None).is_ok());
        // A gap inside a backup's own start..stop makes it unusable.
        let mut a = archive(2..=9);
        a.segments.remove(&3);
        assert!(matches!(
            plan(&[backup("b1", 2, 4, 41)], &a, Target::Latest, None),
            Err(PlanError::NothingRestorable(_))
        ));
    }

    #[test]
    fn forced_backup_is_checked() {
        let a = archive(2..=20);
        let bs = [backup("b1", 2, 3, 31), backup("b2", 10, 11, 111)];
        assert_eq!(plan(&bs, &a, Target::Time(t(150)), Some("b1")).unwrap().backup, "b1");
        assert!(matches!(plan(&bs, &a, Target::Time(t(50)), Some("b2")), Err(PlanError::BadBackup(..))));
        assert!(matches!(plan(&bs, &a, Target::Latest, Some("nope")), Err(PlanError::BadBackup(..))));
    }

    #[test]
    fn lsn_targets_pick_segments() {
        let a = archive(2..=20);
        let bs = [backup("b1", 2, 3, 31)];
        let p = plan(&bs, &a, Target::Lsn(Lsn(7 * SEG + 5)), None).unwrap();
        assert_eq!((p.first_segment, p.last_segment), (2, 7));
    }

    #[test]
    fn stop_on_segment_boundary_needs_only_previous_segment() {
        let a = archive(2..=3);
        let mut b = backup("b1", 2, 3, 31);
        b.stop_lsn = Lsn(4 * SEG);
        assert!(range_of(&b, &a).is_some());
    }

    #[test]
    fn nothing_restorable_without_backups() {
        let e = plan(&[], &archive(1..=3), Target::Latest, None).unwrap_err();
        assert!(e.to_string().contains("backup create"));
    }

    #[test]
    fn unsupported_major_says_commit_times_unknown_not_no_commits() {
        // Segments of PostgreSQL 12 WAL: stored and joined by LSN, no commit times.
        let mut a = archive(2..=6);
        for c in a.segments.values_mut() {
            *c = SegmentCommits { unsupported: Some(0xD101), ..SegmentCommits::default() };
        }
        let bs = [backup("b1", 2, 3, 31)];
        let w = window(&bs, &a);
        let why = "PostgreSQL 12 is not supported for time targets; --latest and --target-lsn work";
        assert_eq!(w.commit_times_unknown().as_deref(), Some(why));
        let text = w.to_string();
        assert!(
            text.starts_with(&format!("restorable from {} by LSN; commit times unknown: {why}", rfc3339(t(31)))),
            "{text}"
        );
        assert!(!text.contains("no commits"), "{text}");
        for only in [None, Some("b1")] {
            let e = plan(&bs, &a, Target::Time(t(40)), only).unwrap_err();
            assert!(matches!(e, PlanError::CommitTimesUnknown(..)), "{e}");
            assert!(e.to_string().contains(&format!("commit times unknown: {why}")), "{e}");
        }
        // Before the backup is still before the oldest point.
        assert!(matches!(plan(&bs, &a, Target::Time(t(10)), None), Err(PlanError::BeforeOldest(..))));
        // LSN and latest targets plan as before.
        assert_eq!(plan(&bs, &a, Target::Lsn(Lsn(5 * SEG)), None).unwrap().last_segment, 5);
        assert_eq!(plan(&bs, &a, Target::Latest, None).unwrap().last_segment, 6);
        // An unknown magic (a future major) is named by its magic.
        a.segments.get_mut(&2).unwrap().unsupported = Some(0xD121);
        for c in a.segments.values_mut().skip(1) {
            c.unsupported = Some(0xD121);
        }
        assert!(window(&bs, &a).to_string().contains("unknown WAL page magic 0xD121"));
    }

    mod rolled_up {
        use super::*;
        use proptest::prelude::*;

        /// A segment: present or not, its join (chaining, foreign, continuation, unknown), commits.
        fn seg() -> impl Strategy<Value = Option<(u8, Option<i64>)>> {
            prop::option::weighted(0.9, (0u8..10, prop::option::of(0i64..50)))
        }

        fn build(specs: &[Option<(u8, Option<i64>)>]) -> Archive {
            let mut a = Archive { seg_size: SEG, segments: BTreeMap::new() };
            for (i, s) in specs.iter().enumerate() {
                let Some((kind, c)) = s else { continue };
                let n = i as u64 + 1;
                let join = match kind {
                    0 => Join::Unknown,
                    1 => Join::Continuation,
                    2 => Join::Starts { prev: 77, last: n * SEG + 500 },
                    _ => Join::Starts { prev: (n - 1) * SEG + 500, last: n * SEG + 500 },
                };
                let commit = c.map(|s| us(n as i64 * 100 + s));
                a.segments.insert(
                    n,
                    SegmentCommits {
                        first: commit,
                        last: commit.map(|c| c + 7),
                        join,
                        last_complete: matches!(join, Join::Starts { .. }).then_some(n * SEG + 400),
                        unsupported: (*kind == 9).then_some(0xD101),
                        more: 0,
                    },
                );
            }
            a
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]
            #[test]
            fn plans_the_same_as_the_segments(specs in prop::collection::vec(seg(), 1..60), b1 in 1u64..30, t_at in 0i64..6_000, l_at in 0u64..60) {
                let a = build(&specs);
                let r = Archive { seg_size: SEG, segments: roll_up(&a.segments) };
                prop_assert_eq!(r.count(), a.count());
                prop_assert_eq!(r.last(), a.last());
                for n in 0..70 {
                    prop_assert_eq!(r.has(n), a.has(n));
                }
                prop_assert_eq!(chain_breaks(&r, 0), chain_breaks(&a, 0));
                prop_assert_eq!(chain_breaks(&r, b1), chain_breaks(&a, b1));
                // Stop times as in real WAL: no earlier segment commits after the stop.
                let bs = [backup("b1", b1, b1 + 1, (b1 as i64 + 1) * 100), backup("b2", b1 + 5, b1 + 5, (b1 as i64 + 5) * 100)];
                prop_assert_eq!(window(&bs, &r), window(&bs, &a));
                let lsn = Target::Lsn(Lsn(l_at * SEG + 99));
                for target in [Target::Latest, lsn] {
                    prop_assert_eq!(plan(&bs, &r, target, None), plan(&bs, &a, target, None));
                }
                let time = Target::Time(t(t_at));
                match (plan(&bs, &r, time, None), plan(&bs, &a, time, None)) {
                    (Ok(x), Ok(y)) => {
                        prop_assert_eq!(&x.backup, &y.backup);
                        prop_assert_eq!(x.first_segment, y.first_segment);
                        prop_assert!(x.last_segment >= y.last_segment);
                    }
                    (x, y) => prop_assert_eq!(x, y),
                }
            }
        }
    }
}
