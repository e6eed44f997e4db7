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
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Latest => f.write_str("latest"),
            Target::Time(t) => f.write_str(&rfc3339(*t)),
            Target::Lsn(l) => write!(f, "LSN {l}"),
        }
    }
}

/// RFC 3339 with microseconds, UTC.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Commit times found in one archived segment (unix microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentCommits {
    /// Earliest commit time.
    pub first: Option<i64>,
    /// Latest commit time.
    pub last: Option<i64>,
}

/// The archived segments of one timeline.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    /// Segment size.
    pub seg_size: u64,
    /// Segment number → its commit times.
    pub segments: BTreeMap<u64, SegmentCommits>,
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
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ranges.is_empty() {
            return f.write_str("nothing is restorable: no completed backup with its WAL archived");
        }
        match (self.earliest(), self.latest()) {
            (Some(a), Some(b)) => write!(f, "restorable by time from {} to {}", rfc3339(a), rfc3339(b))?,
            (Some(a), None) => write!(f, "restorable from {} (no commits archived after it yet)", rfc3339(a))?,
            _ => {}
        }
        for r in &self.ranges {
            write!(f, "\n  backup {}: LSN {} .. {}", r.backup, r.from_lsn, r.to_lsn)?;
            if let Some(t) = r.to_time {
                write!(f, ", time {} .. {}", rfc3339(r.from_time), rfc3339(t))?;
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
    /// Target falls in a gap of the archive.
    #[error("target {0} falls in a gap of the archived WAL (run `tidemark verify`)\n{1}")]
    InGap(Target, Window),
    /// The requested backup does not exist, is not completed, or cannot reach the target.
    #[error("backup {0} cannot be used: {1}\n{2}")]
    BadBackup(String, String, Window),
}

/// The unbroken run of archived segments starting at `first`; `None` when `first` is missing.
fn run_end(archive: &Archive, first: u64) -> Option<u64> {
    let mut n = first;
    if !archive.segments.contains_key(&n) {
        return None;
    }
    while archive.segments.contains_key(&(n + 1)) {
        n += 1;
    }
    Some(n)
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
    let end = run_end(archive, start)?;
    if end < stop {
        return None;
    }
    let last_commit = archive.segments.range(stop..=end).filter_map(|(_, c)| c.last).max();
    let to_time = last_commit.and_then(us_to_time).filter(|t| *t >= b.stop_time);
    Some(Range {
        backup: b.id.clone(),
        from_time: b.stop_time,
        to_time,
        from_lsn: b.stop_lsn,
        to_lsn: Lsn((end + 1) * seg),
        last_segment: end,
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
        Target::Lsn(l) => Segment::containing(timeline, l, archive.seg_size).number.min(r.last_segment),
        Target::Time(t) => {
            let t_us = t.timestamp_micros();
            // The first segment holding a commit at or after the target: recovery stops there.
            let from = Segment::containing(timeline, r.from_lsn, archive.seg_size).number;
            archive
                .segments
                .range(from..=r.last_segment)
                .find(|(_, c)| c.last.is_some_and(|l| l >= t_us))
                .map_or(r.last_segment, |(n, _)| *n)
        }
    }
}

fn reaches(target: Target, r: &Range) -> bool {
    match target {
        Target::Latest => true,
        Target::Lsn(l) => r.from_lsn <= l && l < r.to_lsn,
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
            return Err(PlanError::BadBackup(id.into(), format!("it cannot reach {target}"), w));
        }
        let first = Segment::containing(b.timeline, b.start_lsn, archive.seg_size).number;
        return Ok(RestorePlan {
            backup: b.id.clone(),
            target,
            first_segment: first,
            last_segment: last_needed(target, &r, archive, b.timeline),
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
        let err = match target {
            Target::Time(t) if w.earliest().is_some_and(|e| t < e) => PlanError::BeforeOldest(target, w),
            Target::Time(t) if w.latest().is_none_or(|l| t > l) => PlanError::AfterEnd(target, w),
            Target::Lsn(l) if w.ranges.iter().all(|r| l < r.from_lsn) => PlanError::BeforeOldest(target, w),
            Target::Lsn(l) if w.ranges.iter().all(|r| l >= r.to_lsn) => PlanError::AfterEnd(target, w),
            _ => PlanError::InGap(target, w),
        };
        return Err(err);
    };
    let b = backups.iter().find(|b| b.id == r.backup).expect("ranges come from backups");
    let first = Segment::containing(b.timeline, b.start_lsn, archive.seg_size).number;
    Ok(RestorePlan {
        backup: r.backup.clone(),
        target,
        first_segment: first,
        last_segment: last_needed(target, r, archive, b.timeline),
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
            a.segments.insert(n, SegmentCommits { first: Some(us(n as i64 * 10)), last: Some(us(n as i64 * 10 + 5)) });
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
}
