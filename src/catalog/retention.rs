//! Retention planner: decides which backups of a repository are kept or deleted, and how much WAL must stay.
//!
//! The planner is pure: no I/O and no clock reads (`now` is an argument), so the same inputs always give the
//! same [`Plan`], whatever order the catalog lists the backups in. Each cluster is planned on its own.
//!
//! # Rules (per cluster)
//!
//! Only *completed* backups whose `cluster_deprovisioned` flag is clear ("live" backups) are candidates for the
//! daily, monthly, yearly and PITR rules. "Newest" orders by `stop_time`, then `stop_lsn`, then `id`.
//!
//! * **daily**: group live automatic backups by the UTC date of `stop_time`, take the newest of each date, and keep
//!   those of the `daily` most recent dates *that have backups* (a count, so an outage does not shrink the set).
//! * **monthly**: "the last N months" means the N most recent *calendar* months up to and including the month of
//!   `now` (UTC), whether or not they have backups. In each such month the newest live automatic backup is kept.
//!   Example: now in 2026-05 and `monthly = 3` covers 2026-03, 2026-04 and 2026-05 only.
//! * **yearly**: the same convention with calendar years: the N years up to and including `now`'s year.
//! * **manual**: always kept, also when incomplete and after the cluster is deprovisioned (the user owns them).
//! * **final**: kept while `keep_final` is true, otherwise deleted.
//! * **deprovisioned**: an automatic backup whose `cluster_deprovisioned` flag is set is deleted. The flag is read
//!   per backup, so a cluster name reused after deprovisioning never loses the new incarnation's backups.
//! * **incomplete**: a non-manual backup that is not `completed` and whose `stop_time` (the catalog's last known
//!   time for it) is more than 24 h before `now` is deleted; a younger one is kept because it may still be running.
//!   Incomplete backups take no part in the other rules.
//! * **PITR** (when `pitr_enabled` and the cluster has live backups): the window is `[now - pitr_days * 24 h, now]`.
//!   The *PITR base* is the newest live backup (any kind) whose `stop_time` is at or before the window start: that
//!   base plus the WAL after it restores any point in the window. Only the base is kept by this rule. If no live
//!   backup ends before the window start, the oldest live backup is the base (the best that can be done).
//!
//! # WAL
//!
//! `wal_keep_from[cluster]` is the LSN below which the cluster's WAL may be deleted: the start LSN of the PITR base
//! when there is one, else the lowest start LSN of the kept backups that need WAL (completed ones and those still
//! running). A cluster with no such backup has no entry: no kept backup needs its WAL. `wal_ranges` lists the WAL
//! range of each such kept backup so it stays consistent; a still-running backup's range is open (`u64::MAX`).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// Largest accepted value for the `daily`, `monthly` and `yearly` counts.
pub const MAX_COUNT: u32 = 1000;
/// Largest accepted `pitr_days`.
pub const MAX_PITR_DAYS: u32 = 35;

/// Keep reason: a manual backup.
pub const REASON_MANUAL: &str = "manual";
/// Keep reason: a final backup while `keep_final` is true.
pub const REASON_FINAL: &str = "final";
/// Keep reason: the backup the PITR window is restored from.
pub const REASON_PITR_BASE: &str = "pitr base";
/// Keep reason: an incomplete backup younger than 24 h.
pub const REASON_IN_PROGRESS: &str = "incomplete, may still be running";
/// Delete reason: an automatic backup no daily/monthly/yearly/PITR rule keeps.
pub const REASON_BEYOND_COUNTS: &str = "beyond daily/monthly/yearly counts";
/// Delete reason: a final backup while `keep_final` is false.
pub const REASON_FINAL_NOT_KEPT: &str = "final backups not kept (keep_final=false)";
/// Delete reason: an automatic backup of a deprovisioned cluster.
pub const REASON_DEPROVISIONED: &str = "cluster deprovisioned";
/// Delete reason: an incomplete backup older than 24 h.
pub const REASON_INCOMPLETE: &str = "incomplete";

/// How long an incomplete backup is presumed to be still running.
const INCOMPLETE_GRACE_HOURS: i64 = 24;

/// Retention policy of one repository; every JSON field is optional and defaults as in [`Policy::default`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// How many most recent days (that have automatic backups) keep their newest automatic backup.
    pub daily: u32,
    /// How many most recent calendar months (including now's) keep their newest automatic backup.
    pub monthly: u32,
    /// How many most recent calendar years (including now's) keep their newest automatic backup.
    pub yearly: u32,
    /// Where backups are copied: "none", "auto" (see [`auto_copy_regions`]) or a comma list of regions.
    pub copy_regions: String,
    /// Whether the final backup taken at deprovisioning is kept.
    pub keep_final: bool,
    /// Whether every point of the last `pitr_days` days must stay restorable.
    pub pitr_enabled: bool,
    /// Length of the point-in-time-recovery window in days (1..=35).
    pub pitr_days: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            daily: 30,
            monthly: 12,
            yearly: 6,
            copy_regions: "none".to_string(),
            keep_final: true,
            pitr_enabled: true,
            pitr_days: 1,
        }
    }
}

/// Why a policy is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A daily/monthly/yearly count is above [`MAX_COUNT`].
    #[error("{field} must be between 0 and {max}, got {value}")]
    CountOutOfRange {
        /// The policy field.
        field: &'static str,
        /// The rejected value.
        value: u32,
        /// The largest accepted value.
        max: u32,
    },
    /// `pitr_days` is outside 1..=[`MAX_PITR_DAYS`].
    #[error("pitr_days must be between 1 and {MAX_PITR_DAYS}, got {0}")]
    PitrDaysOutOfRange(u32),
    /// A `copy_regions` entry is not a region name.
    #[error("copy_regions: {0:?} is not a region name (expected \"none\", \"auto\" or a list like \"us-west-2,eu-central-1\")")]
    InvalidRegion(String),
    /// A `copy_regions` entry is the repository's own region.
    #[error("copy_regions: {0} is the repository's own region")]
    SameRegion(String),
}

/// Parsed form of `copy_regions`.
enum CopyRegions {
    None,
    Auto,
    List(Vec<String>),
}

impl Policy {
    /// Checks the counts (0..=1000), `pitr_days` (1..=35) and the syntax of `copy_regions`.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for (field, value) in [("daily", self.daily), ("monthly", self.monthly), ("yearly", self.yearly)] {
            if value > MAX_COUNT {
                return Err(PolicyError::CountOutOfRange { field, value, max: MAX_COUNT });
            }
        }
        if !(1..=MAX_PITR_DAYS).contains(&self.pitr_days) {
            return Err(PolicyError::PitrDaysOutOfRange(self.pitr_days));
        }
        self.parse_copy_regions().map(|_| ())
    }

    /// Regions a repository in `region` copies its backups to under this policy ("none" gives an empty list).
    pub fn copy_regions_for(&self, region: &str) -> Result<Vec<String>, PolicyError> {
        match self.parse_copy_regions()? {
            CopyRegions::None => Ok(Vec::new()),
            CopyRegions::Auto => Ok(auto_copy_regions(region).into_iter().map(String::from).collect()),
            CopyRegions::List(list) => {
                // A copy into the same region adds no protection against losing the region, so it is a mistake.
                match list.iter().find(|r| r.as_str() == region) {
                    Some(same) => Err(PolicyError::SameRegion(same.clone())),
                    None => Ok(list),
                }
            }
        }
    }

    /// Ids of backups that `new` would delete but `old` keeps (to warn before a destructive policy change).
    pub fn diff_deletes(old: &Policy, new: &Policy, backups: &[BackupInfo], now: DateTime<Utc>) -> Vec<String> {
        let before = plan(old, backups, now);
        let after = plan(new, backups, now);
        // Both plans list decisions in input order, so they pair up one to one.
        before
            .decisions
            .iter()
            .zip(&after.decisions)
            .filter(|(old_d, new_d)| old_d.keep && !new_d.keep)
            .map(|(_, new_d)| new_d.id.clone())
            .collect()
    }

    fn parse_copy_regions(&self) -> Result<CopyRegions, PolicyError> {
        match self.copy_regions.trim() {
            "none" => Ok(CopyRegions::None),
            "auto" => Ok(CopyRegions::Auto),
            list => {
                let mut regions: Vec<String> = Vec::new();
                for name in list.split(',').map(str::trim) {
                    if !is_region_name(name) {
                        return Err(PolicyError::InvalidRegion(name.to_string()));
                    }
                    if !regions.iter().any(|r| r == name) {
                        regions.push(name.to_string());
                    }
                }
                Ok(CopyRegions::List(regions))
            }
        }
    }
}

/// Whether `name` looks like a cloud region: `xx-word[-word]-N`, lowercase, e.g. "us-east-1", "us-gov-west-1".
fn is_region_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    let [geo, words @ .., number] = parts.as_slice() else {
        return false;
    };
    let lower = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_lowercase());
    geo.len() == 2
        && lower(geo)
        && (1..=2).contains(&words.len())
        && words.iter().all(|w| lower(w))
        && (1..=2).contains(&number.len())
        && number.bytes().all(|c| c.is_ascii_digit())
        && !number.starts_with('0')
}

/// Default copy targets for "auto": nearby regions of the same jurisdiction; unknown regions get none.
pub fn auto_copy_regions(region: &str) -> Vec<&'static str> {
    match region {
        "us-east-1" | "us-east-2" => vec!["us-west-1", "us-west-2"],
        "us-west-1" | "us-west-2" => vec!["us-east-1"],
        "sa-east-1" => vec!["us-east-2"],
        "ca-central-1" => vec!["ca-west-1"],
        "eu-west-1" | "eu-west-2" | "eu-west-3" => vec!["eu-central-1"],
        "eu-central-1" => vec!["eu-west-1"],
        "ap-northeast-1" => vec!["ap-northeast-2"],
        "ap-northeast-2" => vec!["ap-northeast-1"],
        "ap-southeast-1" => vec!["ap-northeast-2", "ap-southeast-2"],
        "ap-southeast-2" => vec!["ap-southeast-4"],
        "ap-south-1" => vec!["ap-southeast-2"],
        _ => Vec::new(),
    }
}

/// What kind of backup a catalog entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Taken by the schedule; subject to the daily/monthly/yearly counts.
    Automatic,
    /// Requested by a user; never deleted by retention.
    Manual,
    /// Taken when the cluster was deprovisioned; kept while `keep_final` is true.
    Final,
}

/// What the planner needs to know about one backup in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// Catalog id of the backup.
    pub id: String,
    /// Cluster the backup belongs to; clusters are planned independently.
    pub cluster: String,
    /// Automatic, manual or final.
    pub kind: Kind,
    /// Whether the backup finished and can be restored from.
    pub completed: bool,
    /// LSN where the backup started; WAL from here on is needed to make it consistent.
    pub start_lsn: u64,
    /// LSN where the backup stopped; WAL up to here is needed to make it consistent.
    pub stop_lsn: u64,
    /// When the backup stopped (for an incomplete backup: the last time the catalog knows of).
    pub stop_time: DateTime<Utc>,
    /// Whether the backup's cluster has been deprovisioned.
    pub cluster_deprovisioned: bool,
}

/// The verdict on one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Catalog id of the backup.
    pub id: String,
    /// Cluster of the backup.
    pub cluster: String,
    /// True to keep, false to delete.
    pub keep: bool,
    /// Every rule that keeps it (when kept) or the reason it is deleted.
    pub reasons: Vec<String>,
}

/// Output of [`plan`]: one decision per input backup (in input order) plus the WAL to keep.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// One decision per input backup, in input order.
    pub decisions: Vec<Decision>,
    /// Per cluster, the LSN below which WAL may be deleted (no entry: no kept backup needs WAL).
    pub wal_keep_from: BTreeMap<String, u64>,
    /// (cluster, start LSN, stop LSN) of each kept backup that needs WAL; `u64::MAX` ends a running backup's range.
    pub wal_ranges: Vec<(String, u64, u64)>,
}

impl Plan {
    /// Decisions that delete a backup, in input order.
    pub fn deletes(&self) -> impl Iterator<Item = &Decision> + '_ {
        self.decisions.iter().filter(|d| !d.keep)
    }

    /// Decisions that keep a backup, in input order.
    pub fn keeps(&self) -> impl Iterator<Item = &Decision> + '_ {
        self.decisions.iter().filter(|d| d.keep)
    }
}

/// Plans retention for every cluster in `backups` under `policy` as of `now`.
pub fn plan(policy: &Policy, backups: &[BackupInfo], now: DateTime<Utc>) -> Plan {
    // BTreeMap so clusters, and thus the output, come in a deterministic order.
    let mut clusters: BTreeMap<&str, Vec<(usize, &BackupInfo)>> = BTreeMap::new();
    for (i, b) in backups.iter().enumerate() {
        clusters.entry(b.cluster.as_str()).or_default().push((i, b));
    }

    let mut verdicts: Vec<(bool, Vec<String>)> = vec![(false, Vec::new()); backups.len()];
    let mut wal_keep_from = BTreeMap::new();
    for (cluster, members) in &clusters {
        let mut selection = select(policy, members, now);
        let mut lowest_kept_start: Option<u64> = None;
        for &(i, b) in members {
            let selected = selection.reasons.remove(&i).unwrap_or_default();
            let verdict = decide(policy, b, now, selected);
            if verdict.0 && needs_wal(b, now) {
                lowest_kept_start = Some(lowest_kept_start.map_or(b.start_lsn, |l| l.min(b.start_lsn)));
            }
            verdicts[i] = verdict;
        }
        if let Some(lsn) = selection.pitr_base.map(|b| b.start_lsn).or(lowest_kept_start) {
            wal_keep_from.insert(cluster.to_string(), lsn);
        }
    }

    let mut decisions = Vec::with_capacity(backups.len());
    let mut wal_ranges = Vec::new();
    for (b, (keep, reasons)) in backups.iter().zip(verdicts) {
        if keep && needs_wal(b, now) {
            let stop = if b.completed { b.stop_lsn } else { u64::MAX };
            wal_ranges.push((b.cluster.clone(), b.start_lsn, stop));
        }
        decisions.push(Decision { id: b.id.clone(), cluster: b.cluster.clone(), keep, reasons });
    }
    Plan { decisions, wal_keep_from, wal_ranges }
}

/// Keep reasons granted by the selection rules (daily, monthly, yearly, PITR) within one cluster.
struct Selection<'a> {
    reasons: BTreeMap<usize, Vec<String>>,
    pitr_base: Option<&'a BackupInfo>,
}

fn select<'a>(policy: &Policy, members: &[(usize, &'a BackupInfo)], now: DateTime<Utc>) -> Selection<'a> {
    // Only completed backups of the live incarnation can be restored from, so only they are selected.
    let live: Vec<(usize, &BackupInfo)> =
        members.iter().copied().filter(|(_, b)| b.completed && !b.cluster_deprovisioned).collect();
    let automatic: Vec<(usize, &BackupInfo)> =
        live.iter().copied().filter(|(_, b)| b.kind == Kind::Automatic).collect();
    let mut reasons: BTreeMap<usize, Vec<String>> = BTreeMap::new();

    let per_day = newest_per(&automatic, |b| b.stop_time.date_naive());
    let daily = usize::try_from(policy.daily).unwrap_or(usize::MAX);
    for (day, (i, _)) in per_day.iter().rev().take(daily) {
        reasons.entry(*i).or_default().push(format!("daily {day}"));
    }

    // Calendar windows: the N months/years up to and including now's, with or without backups.
    let this_month = month_index(now);
    let months = (this_month - i64::from(policy.monthly) + 1)..=this_month;
    for (month, (i, _)) in newest_per(&automatic, |b| month_index(b.stop_time)) {
        if months.contains(&month) {
            let label = format!("monthly {:04}-{:02}", month.div_euclid(12), month.rem_euclid(12) + 1);
            reasons.entry(i).or_default().push(label);
        }
    }
    let this_year = i64::from(now.year());
    let years = (this_year - i64::from(policy.yearly) + 1)..=this_year;
    for (year, (i, _)) in newest_per(&automatic, |b| i64::from(b.stop_time.year())) {
        if years.contains(&year) {
            reasons.entry(i).or_default().push(format!("yearly {year}"));
        }
    }

    let pitr_base = if policy.pitr_enabled {
        let window_start = pitr_window_start(now, policy.pitr_days);
        // The base must be consistent by the window start; failing that, the oldest backup covers the most.
        live.iter()
            .copied()
            .filter(|(_, b)| b.stop_time <= window_start)
            .max_by(|x, y| newest_order(x.1, y.1))
            .or_else(|| live.iter().copied().min_by(|x, y| newest_order(x.1, y.1)))
    } else {
        None
    };
    if let Some((i, _)) = pitr_base {
        reasons.entry(i).or_default().push(REASON_PITR_BASE.to_string());
    }
    Selection { reasons, pitr_base: pitr_base.map(|(_, b)| b) }
}

/// Final verdict for one backup, given the keep reasons the selection rules granted it.
fn decide(policy: &Policy, b: &BackupInfo, now: DateTime<Utc>, selected: Vec<String>) -> (bool, Vec<String>) {
    if !b.completed {
        let mut keep = Vec::new();
        if b.kind == Kind::Manual {
            keep.push(REASON_MANUAL.to_string());
        }
        if is_young(b, now) {
            keep.push(REASON_IN_PROGRESS.to_string());
        }
        return if keep.is_empty() { (false, vec![REASON_INCOMPLETE.to_string()]) } else { (true, keep) };
    }
    let mut keep = Vec::new();
    match b.kind {
        Kind::Manual => keep.push(REASON_MANUAL.to_string()),
        Kind::Final if policy.keep_final => keep.push(REASON_FINAL.to_string()),
        _ => {}
    }
    keep.extend(selected);
    if !keep.is_empty() {
        return (true, keep);
    }
    let why = match b.kind {
        Kind::Final => REASON_FINAL_NOT_KEPT,
        Kind::Automatic if b.cluster_deprovisioned => REASON_DEPROVISIONED,
        _ => REASON_BEYOND_COUNTS,
    };
    (false, vec![why.to_string()])
}

/// Orders backups from oldest to newest; ties are broken so the result never depends on input order.
fn newest_order(a: &BackupInfo, b: &BackupInfo) -> Ordering {
    (a.stop_time, a.stop_lsn, &a.id).cmp(&(b.stop_time, b.stop_lsn, &b.id))
}

/// The newest backup for each key (day, month or year).
fn newest_per<'a, K: Ord>(
    backups: &[(usize, &'a BackupInfo)],
    key: impl Fn(&BackupInfo) -> K,
) -> BTreeMap<K, (usize, &'a BackupInfo)> {
    let mut out: BTreeMap<K, (usize, &'a BackupInfo)> = BTreeMap::new();
    for &(i, b) in backups {
        let slot = out.entry(key(b)).or_insert((i, b));
        if newest_order(slot.1, b) == Ordering::Less {
            *slot = (i, b);
        }
    }
    out
}

/// Months since year 0, so calendar months can be counted across year boundaries.
fn month_index(t: DateTime<Utc>) -> i64 {
    i64::from(t.year()) * 12 + i64::from(t.month0())
}

/// `now - days * 24 h`, saturating at the earliest representable time.
fn pitr_window_start(now: DateTime<Utc>, days: u32) -> DateTime<Utc> {
    TimeDelta::try_days(i64::from(days)).and_then(|d| now.checked_sub_signed(d)).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Whether an incomplete backup is recent enough that it may still be running.
fn is_young(b: &BackupInfo, now: DateTime<Utc>) -> bool {
    now.signed_duration_since(b.stop_time) <= TimeDelta::hours(INCOMPLETE_GRACE_HOURS)
}

/// Whether a kept backup needs WAL: completed ones to be consistent, running ones to finish.
fn needs_wal(b: &BackupInfo, now: DateTime<Utc>) -> bool {
    b.completed || is_young(b, now)
}
