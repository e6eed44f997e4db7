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
//! * **manual**: always kept, also while running and after the cluster is deprovisioned (the user owns them),
//!   unless failed (below).
//! * **final**: kept while `keep_final` is true, otherwise deleted, unless the PITR rule keeps it: a final backup
//!   whose `cluster_deprovisioned` flag is still clear is live, and if it is the PITR base or in the PITR window it
//!   is kept even with `keep_final = false` (the window must stay restorable, as for any other kind).
//! * **deprovisioned**: an automatic backup whose `cluster_deprovisioned` flag is set is deleted. The flag is read
//!   per backup, so a cluster name reused after deprovisioning never loses the new incarnation's backups.
//! * **incomplete**: a non-manual backup that is not `completed` and whose `stop_time` (the catalog's last known
//!   time for it) is more than 24 h before `now` is deleted; a younger one is kept because it may still be running.
//!   Incomplete backups take no part in the other rules.
//! * **failed**: a backup that failed (or was abandoned: its process died and a sweep marked it) is deleted
//!   whatever its kind, manual included: it can never be restored from, and nothing else would remove it.
//! * **PITR** (when `pitr_enabled` and the cluster has live backups): the window is `[now - pitr_days * 24 h, now]`.
//!   The *PITR base* is the newest live backup (any kind) whose `stop_time` is at or before the window start: that
//!   base plus the WAL after it restores any point in the window. If no live backup ends by the window start, the
//!   oldest live backup is the base (the best that can be done). The base is kept, and so is *every* live backup
//!   (any kind) newer than the base in the order above: these end inside the window (or after `now`, with clock
//!   skew), and each becomes the base in turn as the window moves past it.
//!
//!   Why all of them: a backup no count keeps would otherwise be deleted before the window reaches it, and the base
//!   could then only move to the next backup something else happens to keep. With every in-window backup kept, the
//!   base advances with every backup, so WAL is kept for `pitr_days` plus at most the longest gap between
//!   consecutive live backups (plus the duration of one backup), whatever the sweep timing or the jitter in backup
//!   end times. (Two caveats: when backups stop, the time since the last one counts as a gap; and a backup deleted
//!   while PITR was off cannot become the base later.) The storage cost is the backups taken within the window:
//!   with one automatic backup a day, the default policy (30 daily, 1 day PITR) keeps nothing extra.
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
/// Keep reason: a live backup newer than the PITR base; it becomes the base when the window moves past it.
pub const REASON_PITR_WINDOW: &str = "in pitr window";
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
/// Delete reason: a failed backup (any kind).
pub const REASON_FAILED: &str = "failed";

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
    /// Whether the backup failed (or was abandoned): never restorable, never finishes.
    #[serde(default)]
    pub failed: bool,
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

    // PITR: the base must be consistent by the window start; failing that, the oldest backup covers the most.
    // Every backup newer than the base is kept too, so the base can advance to each of them in turn; a backup
    // deleted before the window reaches it would leave the base behind and WAL piling up beyond the window.
    let mut pitr_base = None;
    if policy.pitr_enabled {
        let window_start = pitr_window_start(now, policy.pitr_days);
        pitr_base = live
            .iter()
            .copied()
            .filter(|(_, b)| b.stop_time <= window_start)
            .max_by(|x, y| newest_order(x.1, y.1))
            .or_else(|| live.iter().copied().min_by(|x, y| newest_order(x.1, y.1)));
        if let Some((base_index, base)) = pitr_base {
            reasons.entry(base_index).or_default().push(REASON_PITR_BASE.to_string());
            for &(i, b) in &live {
                if newest_order(b, base) == Ordering::Greater {
                    reasons.entry(i).or_default().push(REASON_PITR_WINDOW.to_string());
                }
            }
        }
    }
    Selection { reasons, pitr_base: pitr_base.map(|(_, b)| b) }
}

/// Final verdict for one backup, given the keep reasons the selection rules granted it.
fn decide(policy: &Policy, b: &BackupInfo, now: DateTime<Utc>, selected: Vec<String>) -> (bool, Vec<String>) {
    if b.failed && !b.completed {
        return (false, vec![REASON_FAILED.to_string()]);
    }
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
    b.completed || (!b.failed && is_young(b, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    pub(super) fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("test timestamp")
    }

    /// LSNs grow with time, as in a real cluster: one LSN unit per millisecond.
    pub(super) fn lsn_at(t: DateTime<Utc>) -> u64 {
        u64::try_from(t.timestamp_millis()).expect("test times are after 1970")
    }

    fn backup(id: &str, kind: Kind, stop: &str) -> BackupInfo {
        let stop_time = at(stop);
        let stop_lsn = lsn_at(stop_time);
        BackupInfo {
            id: id.to_string(),
            cluster: "c1".to_string(),
            kind,
            completed: true,
            failed: false,
            start_lsn: stop_lsn - 600_000,
            stop_lsn,
            stop_time,
            cluster_deprovisioned: false,
        }
    }

    fn auto(id: &str, stop: &str) -> BackupInfo {
        backup(id, Kind::Automatic, stop)
    }

    fn manual(id: &str, stop: &str) -> BackupInfo {
        backup(id, Kind::Manual, stop)
    }

    fn final_(id: &str, stop: &str) -> BackupInfo {
        backup(id, Kind::Final, stop)
    }

    fn incomplete(mut b: BackupInfo) -> BackupInfo {
        b.completed = false;
        b
    }

    fn failed(mut b: BackupInfo) -> BackupInfo {
        b.completed = false;
        b.failed = true;
        b
    }

    fn deprovisioned(mut b: BackupInfo) -> BackupInfo {
        b.cluster_deprovisioned = true;
        b
    }

    fn in_cluster(mut b: BackupInfo, cluster: &str) -> BackupInfo {
        b.cluster = cluster.to_string();
        b
    }

    /// Only the count rules, so each test sees one rule at a time.
    fn counts(daily: u32, monthly: u32, yearly: u32) -> Policy {
        Policy { daily, monthly, yearly, pitr_enabled: false, ..Policy::default() }
    }

    fn pitr_only(days: u32) -> Policy {
        Policy { daily: 0, monthly: 0, yearly: 0, pitr_enabled: true, pitr_days: days, ..Policy::default() }
    }

    fn kept(plan: &Plan) -> BTreeSet<&str> {
        plan.keeps().map(|d| d.id.as_str()).collect()
    }

    fn reasons<'a>(plan: &'a Plan, id: &str) -> Vec<&'a str> {
        let d = plan.decisions.iter().find(|d| d.id == id).expect("decision for id");
        d.reasons.iter().map(String::as_str).collect()
    }

    fn ids<const N: usize>(list: [&str; N]) -> BTreeSet<&str> {
        list.into_iter().collect()
    }

    /// Whether the point `t` can be restored from `kept`: one of them, completed and of the live incarnation, is
    /// consistent by `t` (ends at or before it) and the WAL from its start on is kept (`wal_keep_from` at or below
    /// its start LSN; WAL above the floor is never deleted). True at `t` means true at every later point too.
    pub(super) fn restorable_at<'a>(
        kept: impl IntoIterator<Item = &'a BackupInfo>,
        wal_keep_from: Option<u64>,
        t: DateTime<Utc>,
    ) -> bool {
        wal_keep_from.is_some_and(|wal| {
            kept.into_iter().any(|b| b.completed && !b.cluster_deprovisioned && b.stop_time <= t && wal <= b.start_lsn)
        })
    }

    // ---------------------------------------------------------------- policy

    #[test]
    fn policy_defaults() {
        let p = Policy::default();
        assert_eq!((p.daily, p.monthly, p.yearly), (30, 12, 6));
        assert_eq!(p.copy_regions, "none");
        assert!(p.keep_final && p.pitr_enabled);
        assert_eq!(p.pitr_days, 1);
        assert_eq!(p.validate(), Ok(()));
    }

    use serde_json::json;

    fn policy_from(fields: serde_json::Value) -> Result<Policy, serde_json::Error> {
        serde_json::from_value(fields)
    }

    #[test]
    fn policy_deserializes_with_defaults_and_field_names() {
        assert_eq!(policy_from(json!({})).expect("empty policy"), Policy::default());
        let p = policy_from(json!({
            "daily": 7, "monthly": 3, "yearly": 1, "copy_regions": "auto",
            "keep_final": false, "pitr_enabled": false, "pitr_days": 14,
        }))
        .expect("full policy");
        let want = Policy {
            daily: 7,
            monthly: 3,
            yearly: 1,
            copy_regions: "auto".to_string(),
            keep_final: false,
            pitr_enabled: false,
            pitr_days: 14,
        };
        assert_eq!(p, want);
        let partial = policy_from(json!({"daily": 2})).expect("partial policy");
        assert_eq!(partial, Policy { daily: 2, ..Policy::default() });
        // A typo must not silently fall back to a default.
        assert!(policy_from(json!({"dayly": 2})).is_err());
    }

    #[test]
    fn validate_bounds() {
        let ok = |p: Policy| p.validate();
        assert_eq!(ok(Policy { daily: 1000, monthly: 0, yearly: 1000, ..Policy::default() }), Ok(()));
        assert_eq!(
            ok(Policy { daily: 1001, ..Policy::default() }),
            Err(PolicyError::CountOutOfRange { field: "daily", value: 1001, max: 1000 })
        );
        assert!(matches!(
            ok(Policy { monthly: 5000, ..Policy::default() }),
            Err(PolicyError::CountOutOfRange { field: "monthly", .. })
        ));
        assert!(matches!(
            ok(Policy { yearly: 1001, ..Policy::default() }),
            Err(PolicyError::CountOutOfRange { field: "yearly", .. })
        ));
        assert_eq!(ok(Policy { pitr_days: 0, ..Policy::default() }), Err(PolicyError::PitrDaysOutOfRange(0)));
        assert_eq!(ok(Policy { pitr_days: 36, ..Policy::default() }), Err(PolicyError::PitrDaysOutOfRange(36)));
        assert_eq!(ok(Policy { pitr_days: 35, ..Policy::default() }), Ok(()));
        // pitr_days is checked even when PITR is off, so turning it on later cannot make the policy invalid.
        assert!(ok(Policy { pitr_enabled: false, pitr_days: 0, ..Policy::default() }).is_err());
    }

    #[test]
    fn validate_copy_regions_syntax() {
        let check = |s: &str| Policy { copy_regions: s.to_string(), ..Policy::default() }.validate();
        for good in
            ["none", "auto", " auto ", "us-west-2", "us-west-2, eu-central-1", "us-gov-west-1", "ap-southeast-4"]
        {
            assert_eq!(check(good), Ok(()), "{good:?}");
        }
        for bad in ["", "None", "us-west-2,", "US-WEST-2", "us-west", "uswest2", "us-west-02", "usa-west-1", "x,auto"] {
            assert!(matches!(check(bad), Err(PolicyError::InvalidRegion(_))), "{bad:?}");
        }
    }

    #[test]
    fn copy_regions_for_modes() {
        let with = |s: &str| Policy { copy_regions: s.to_string(), ..Policy::default() };
        assert_eq!(with("none").copy_regions_for("us-east-1"), Ok(vec![]));
        assert_eq!(with("auto").copy_regions_for("us-east-1"), Ok(vec!["us-west-1".into(), "us-west-2".into()]));
        assert_eq!(with("auto").copy_regions_for("mars-north-1"), Ok(vec![]));
        assert_eq!(
            with("eu-central-1, eu-west-1,eu-central-1").copy_regions_for("eu-west-3"),
            Ok(vec!["eu-central-1".into(), "eu-west-1".into()])
        );
        assert_eq!(
            with("eu-west-1,eu-west-3").copy_regions_for("eu-west-3"),
            Err(PolicyError::SameRegion("eu-west-3".into()))
        );
        assert!(matches!(
            with("eu-west-1;eu-west-2").copy_regions_for("us-east-1"),
            Err(PolicyError::InvalidRegion(_))
        ));
    }

    #[test]
    fn auto_copy_region_table() {
        let table: [(&str, &[&str]); 17] = [
            ("us-east-1", &["us-west-1", "us-west-2"]),
            ("us-east-2", &["us-west-1", "us-west-2"]),
            ("us-west-1", &["us-east-1"]),
            ("us-west-2", &["us-east-1"]),
            ("sa-east-1", &["us-east-2"]),
            ("ca-central-1", &["ca-west-1"]),
            ("eu-west-1", &["eu-central-1"]),
            ("eu-west-2", &["eu-central-1"]),
            ("eu-west-3", &["eu-central-1"]),
            ("eu-central-1", &["eu-west-1"]),
            ("ap-northeast-1", &["ap-northeast-2"]),
            ("ap-northeast-2", &["ap-northeast-1"]),
            ("ap-southeast-1", &["ap-northeast-2", "ap-southeast-2"]),
            ("ap-southeast-2", &["ap-southeast-4"]),
            ("ap-south-1", &["ap-southeast-2"]),
            ("eu-central-2", &[]),
            ("", &[]),
        ];
        for (from, to) in table {
            assert_eq!(auto_copy_regions(from), to.to_vec(), "{from}");
            assert!(!to.contains(&from), "{from} maps to itself");
            assert!(to.iter().all(|r| is_region_name(r)));
        }
        assert!(auto_copy_regions("US-EAST-1").is_empty());
    }

    // ---------------------------------------------------------------- daily

    #[test]
    fn daily_keeps_newest_of_each_day() {
        let b = [
            auto("early", "2026-11-24T03:00:00Z"),
            auto("late", "2026-11-24T15:00:00Z"),
            auto("prev", "2026-11-23T03:00:00Z"),
        ];
        let p = plan(&counts(2, 0, 0), &b, at("2026-11-24T20:00:00Z"));
        assert_eq!(kept(&p), ids(["late", "prev"]));
        assert_eq!(reasons(&p, "late"), ["daily 2026-11-24"]);
        assert_eq!(reasons(&p, "prev"), ["daily 2026-11-23"]);
        assert_eq!(reasons(&p, "early"), [REASON_BEYOND_COUNTS]);
    }

    #[test]
    fn daily_counts_days_that_have_backups() {
        let b = [
            auto("d01", "2026-11-01T03:00:00Z"),
            auto("d02", "2026-11-02T03:00:00Z"),
            auto("d05", "2026-11-05T03:00:00Z"),
            auto("d09", "2026-11-09T03:00:00Z"),
        ];
        // Eleven days after the last backup, the newest three backups are still kept: an outage shrinks nothing.
        let p = plan(&counts(3, 0, 0), &b, at("2026-11-20T00:00:00Z"));
        assert_eq!(kept(&p), ids(["d02", "d05", "d09"]));
    }

    #[test]
    fn daily_day_boundary_is_utc_midnight() {
        let b = [auto("before", "2026-11-23T23:59:59Z"), auto("after", "2026-11-24T00:00:00Z")];
        let p = plan(&counts(2, 0, 0), &b, at("2026-11-24T12:00:00Z"));
        assert_eq!(reasons(&p, "before"), ["daily 2026-11-23"]);
        assert_eq!(reasons(&p, "after"), ["daily 2026-11-24"]);
    }

    #[test]
    fn daily_zero_keeps_no_automatic_backup() {
        let b = [auto("a", "2026-11-24T03:00:00Z"), manual("m", "2026-11-20T03:00:00Z")];
        let p = plan(&counts(0, 0, 0), &b, at("2026-11-24T12:00:00Z"));
        assert_eq!(kept(&p), ids(["m"]));
        assert_eq!(reasons(&p, "a"), [REASON_BEYOND_COUNTS]);
        assert_eq!(p.wal_keep_from.get("c1"), Some(&b[1].start_lsn));
    }

    #[test]
    fn ties_are_broken_independently_of_input_order() {
        let x = auto("x", "2026-11-24T03:00:00Z");
        let y = auto("y", "2026-11-24T03:00:00Z");
        for catalog in [vec![x.clone(), y.clone()], vec![y.clone(), x.clone()]] {
            let p = plan(&counts(1, 0, 0), &catalog, at("2026-11-24T12:00:00Z"));
            assert_eq!(kept(&p), ids(["y"]));
        }
        // A later stop LSN wins over the id.
        let mut x2 = x.clone();
        x2.stop_lsn += 1;
        let p = plan(&counts(1, 0, 0), &[x2, y], at("2026-11-24T12:00:00Z"));
        assert_eq!(kept(&p), ids(["x"]));
    }

    // ---------------------------------------------------------------- monthly / yearly

    #[test]
    fn monthly_window_is_calendar_months_up_to_now() {
        let b = [
            auto("may01", "2026-05-01T03:00:00Z"),
            auto("apr15", "2026-04-15T03:00:00Z"),
            auto("apr30", "2026-04-30T03:00:00Z"),
            auto("feb28", "2026-02-28T03:00:00Z"),
        ];
        let now = at("2026-05-10T12:00:00Z");
        // March has no backup, but still uses up one of the three months: February is out.
        let p = plan(&counts(0, 3, 0), &b, now);
        assert_eq!(kept(&p), ids(["may01", "apr30"]));
        assert_eq!(reasons(&p, "may01"), ["monthly 2026-05"]);
        assert_eq!(reasons(&p, "apr30"), ["monthly 2026-04"]);
        let p = plan(&counts(0, 4, 0), &b, now);
        assert_eq!(kept(&p), ids(["may01", "apr30", "feb28"]));
        assert_eq!(reasons(&p, "feb28"), ["monthly 2026-02"]);
        assert_eq!(kept(&plan(&counts(0, 1, 0), &b, now)), ids(["may01"]));
    }

    #[test]
    fn monthly_boundary_at_midnight_utc() {
        let b = [
            auto("jan30", "2026-01-30T03:00:00Z"),
            auto("jan31", "2026-01-31T23:59:59Z"),
            auto("feb01", "2026-02-01T00:00:00Z"),
        ];
        let p = plan(&counts(0, 2, 0), &b, at("2026-02-10T00:00:00Z"));
        assert_eq!(kept(&p), ids(["jan31", "feb01"]));
        assert_eq!(reasons(&p, "jan31"), ["monthly 2026-01"]);
        assert_eq!(reasons(&p, "feb01"), ["monthly 2026-02"]);
    }

    #[test]
    fn monthly_window_crosses_year_boundary() {
        let b = [
            auto("nov30", "2025-11-30T03:00:00Z"),
            auto("dec31", "2025-12-31T03:00:00Z"),
            auto("jan01", "2026-01-01T03:00:00Z"),
        ];
        let p = plan(&counts(0, 2, 0), &b, at("2026-01-15T00:00:00Z"));
        assert_eq!(kept(&p), ids(["dec31", "jan01"]));
        assert_eq!(reasons(&p, "dec31"), ["monthly 2025-12"]);
    }

    #[test]
    fn backups_after_now_are_outside_the_calendar_windows() {
        // Clock skew: a backup stamped in next month/year is not a monthly/yearly pick, but is still a daily one.
        let b = [auto("dec", "2026-12-31T03:00:00Z"), auto("jan", "2027-01-01T03:00:00Z")];
        let now = at("2026-12-31T23:00:00Z");
        let p = plan(&counts(0, 12, 6), &b, now);
        assert_eq!(kept(&p), ids(["dec"]));
        assert_eq!(reasons(&p, "dec"), ["monthly 2026-12", "yearly 2026"]);
        assert_eq!(kept(&plan(&counts(1, 0, 0), &b, now)), ids(["jan"]));
    }

    #[test]
    fn yearly_window_is_calendar_years_up_to_now() {
        let b = [
            auto("y26", "2026-03-01T03:00:00Z"),
            auto("y24late", "2024-12-31T23:59:59Z"),
            auto("y24", "2024-06-01T03:00:00Z"),
            auto("y22", "2022-12-31T03:00:00Z"),
        ];
        let now = at("2026-06-01T00:00:00Z");
        // 2025 has no backup but counts: yearly=3 covers 2024..=2026.
        let p = plan(&counts(0, 0, 3), &b, now);
        assert_eq!(kept(&p), ids(["y26", "y24late"]));
        assert_eq!(reasons(&p, "y26"), ["yearly 2026"]);
        assert_eq!(reasons(&p, "y24late"), ["yearly 2024"]);
        assert_eq!(kept(&plan(&counts(0, 0, 5), &b, now)), ids(["y26", "y24late", "y22"]));
        assert_eq!(kept(&plan(&counts(0, 0, 0), &b, now)), ids([]));
    }

    #[test]
    fn yearly_boundary_at_new_year() {
        let b = [auto("old", "2025-12-31T23:59:59Z"), auto("new", "2026-01-01T00:00:00Z")];
        let now = at("2026-03-01T00:00:00Z");
        assert_eq!(kept(&plan(&counts(0, 0, 2), &b, now)), ids(["old", "new"]));
        assert_eq!(kept(&plan(&counts(0, 0, 1), &b, now)), ids(["new"]));
    }

    #[test]
    fn leap_day_is_a_day_and_ends_february() {
        let b = [
            auto("f28", "2024-02-28T03:00:00Z"),
            auto("f29", "2024-02-29T03:00:00Z"),
            auto("m01", "2024-03-01T03:00:00Z"),
        ];
        let policy = Policy { daily: 2, monthly: 2, yearly: 0, pitr_enabled: true, pitr_days: 1, ..Policy::default() };
        let p = plan(&policy, &b, at("2024-03-01T04:00:00Z"));
        assert_eq!(kept(&p), ids(["f29", "m01"]));
        // The window starts at 04:00 on the leap day: its backup is the base and March 1st's is in the window.
        assert_eq!(reasons(&p, "m01"), ["daily 2024-03-01", "monthly 2024-03", REASON_PITR_WINDOW]);
        assert_eq!(reasons(&p, "f29"), ["daily 2024-02-29", "monthly 2024-02", REASON_PITR_BASE]);
        // One day before 02:00 on March 1st is 02:00 on the leap day, before its backup: the base is Feb 28th's,
        // and the leap day's backup, in the window, is kept to become the base at 03:00 (March 1st's is not taken
        // yet at 02:00, but a catalog stamped ahead by clock skew keeps it too: it is newer than the base).
        let p = plan(&pitr_only(1), &b, at("2024-03-01T02:00:00Z"));
        assert_eq!(kept(&p), ids(["f28", "f29", "m01"]));
        assert_eq!(reasons(&p, "f28"), [REASON_PITR_BASE]);
        assert_eq!(reasons(&p, "f29"), [REASON_PITR_WINDOW]);
        assert_eq!(reasons(&p, "m01"), [REASON_PITR_WINDOW]);
        assert_eq!(p.wal_keep_from.get("c1"), Some(&b[0].start_lsn));
        // In a common year the month ends on the 28th.
        let b = [auto("f27", "2025-02-27T03:00:00Z"), auto("f28", "2025-02-28T03:00:00Z")];
        let p = plan(&counts(0, 2, 0), &b, at("2025-03-01T04:00:00Z"));
        assert_eq!(reasons(&p, "f28"), ["monthly 2025-02"]);
    }

    #[test]
    fn a_kept_backup_lists_every_rule() {
        let b = [auto("only", "2026-11-24T03:00:00Z")];
        let p = plan(&Policy::default(), &b, at("2026-11-25T04:00:00Z"));
        assert_eq!(reasons(&p, "only"), ["daily 2026-11-24", "monthly 2026-11", "yearly 2026", REASON_PITR_BASE]);
    }

    // ---------------------------------------------------------------- manual / final / deprovisioned

    #[test]
    fn manual_backups_are_always_kept() {
        let now = at("2026-11-24T12:00:00Z");
        let b = [
            manual("m_old", "2019-01-01T00:00:00Z"),
            deprovisioned(manual("m_gone", "2026-01-01T00:00:00Z")),
            incomplete(manual("m_failed", "2026-11-01T00:00:00Z")),
            incomplete(manual("m_running", "2026-11-24T11:00:00Z")),
        ];
        let p = plan(&counts(0, 0, 0), &b, now);
        assert_eq!(p.deletes().count(), 0);
        assert_eq!(reasons(&p, "m_old"), [REASON_MANUAL]);
        assert_eq!(reasons(&p, "m_gone"), [REASON_MANUAL]);
        assert_eq!(reasons(&p, "m_failed"), [REASON_MANUAL]);
        assert_eq!(reasons(&p, "m_running"), [REASON_MANUAL, REASON_IN_PROGRESS]);
        // The failed manual backup can never be restored, so it holds no WAL.
        assert!(!p.wal_ranges.iter().any(|r| r.1 == b[2].start_lsn));
    }

    #[test]
    fn failed_backups_are_deleted_whatever_their_kind() {
        let now = at("2026-11-24T12:00:00Z");
        let b = [
            auto("done", "2026-11-24T03:00:00Z"),
            failed(auto("a_failed", "2026-11-24T11:00:00Z")),
            failed(manual("m_failed", "2026-11-24T11:30:00Z")),
            failed(final_("f_failed", "2026-11-24T11:40:00Z")),
            incomplete(auto("a_running", "2026-11-24T11:50:00Z")),
        ];
        let p = plan(&Policy::default(), &b, now);
        for id in ["a_failed", "m_failed", "f_failed"] {
            assert_eq!(reasons(&p, id), [REASON_FAILED], "{id}");
        }
        assert_eq!(kept(&p), ids(["done", "a_running"]));
        // Neither holds WAL: only the completed one and the running one do.
        let starts: Vec<u64> = p.wal_ranges.iter().map(|r| r.1).collect();
        assert_eq!(starts, vec![b[0].start_lsn, b[4].start_lsn]);
    }

    #[test]
    fn final_backups_follow_keep_final() {
        let b = [final_("f", "2026-11-20T00:00:00Z"), deprovisioned(final_("fd", "2026-11-21T00:00:00Z"))];
        let now = at("2026-11-24T12:00:00Z");
        let p = plan(&counts(0, 0, 0), &b, now);
        assert_eq!(kept(&p), ids(["f", "fd"]));
        assert_eq!(reasons(&p, "fd"), [REASON_FINAL]);
        let p = plan(&Policy { keep_final: false, ..counts(0, 0, 0) }, &b, now);
        assert_eq!(kept(&p), ids([]));
        assert_eq!(reasons(&p, "f"), [REASON_FINAL_NOT_KEPT]);
        assert_eq!(reasons(&p, "fd"), [REASON_FINAL_NOT_KEPT]);
        assert!(p.wal_keep_from.is_empty());
    }

    #[test]
    fn deprovisioned_cluster_loses_automatic_backups_only() {
        let b = [
            deprovisioned(auto("a_new", "2026-11-24T03:00:00Z")),
            deprovisioned(auto("a_old", "2026-01-31T03:00:00Z")),
            deprovisioned(manual("m", "2026-06-01T03:00:00Z")),
            deprovisioned(final_("f", "2026-11-24T04:00:00Z")),
        ];
        let now = at("2026-11-24T12:00:00Z");
        let p = plan(&Policy::default(), &b, now);
        assert_eq!(kept(&p), ids(["m", "f"]));
        assert_eq!(reasons(&p, "a_new"), [REASON_DEPROVISIONED]);
        assert_eq!(reasons(&p, "a_old"), [REASON_DEPROVISIONED]);
        // No PITR for a cluster that is gone (no base, so no window): the kept backups only need their own WAL.
        let pitr = [REASON_PITR_BASE, REASON_PITR_WINDOW];
        assert!(p.decisions.iter().all(|d| !d.reasons.iter().any(|r| pitr.contains(&r.as_str()))));
        assert_eq!(p.wal_keep_from.get("c1"), Some(&b[2].start_lsn));
        let p = plan(&Policy { keep_final: false, ..Policy::default() }, &b[..2], now);
        assert_eq!(kept(&p), ids([]));
        assert!(p.wal_keep_from.is_empty() && p.wal_ranges.is_empty());
    }

    #[test]
    fn deprovisioned_flag_is_read_per_backup() {
        // The cluster name was reused: the old incarnation's automatic backups go, the new one's are planned.
        let b = [
            deprovisioned(auto("old", "2026-11-01T03:00:00Z")),
            auto("new1", "2026-11-23T03:00:00Z"),
            auto("new2", "2026-11-24T03:00:00Z"),
        ];
        let p = plan(&Policy::default(), &b, at("2026-11-24T12:00:00Z"));
        assert_eq!(kept(&p), ids(["new1", "new2"]));
        assert_eq!(reasons(&p, "old"), [REASON_DEPROVISIONED]);
        assert_eq!(reasons(&p, "new1"), ["daily 2026-11-23", REASON_PITR_BASE]);
    }

    // ---------------------------------------------------------------- incomplete

    #[test]
    fn incomplete_backups_get_24_hours() {
        let now = at("2026-11-24T12:00:00Z");
        let b = [
            incomplete(auto("young", "2026-11-23T12:00:01Z")),
            incomplete(auto("edge", "2026-11-23T12:00:00Z")),
            incomplete(auto("old", "2026-11-23T11:59:59Z")),
            incomplete(final_("final_old", "2026-11-20T00:00:00Z")),
            incomplete(auto("future", "2026-11-25T00:00:00Z")),
        ];
        let p = plan(&Policy::default(), &b, now);
        assert_eq!(kept(&p), ids(["young", "edge", "future"]));
        assert_eq!(reasons(&p, "young"), [REASON_IN_PROGRESS]);
        assert_eq!(reasons(&p, "old"), [REASON_INCOMPLETE]);
        assert_eq!(reasons(&p, "final_old"), [REASON_INCOMPLETE]);
        // A running backup's WAL range is open-ended; with no completed backup there is no PITR base.
        assert!(p.wal_ranges.contains(&("c1".to_string(), b[0].start_lsn, u64::MAX)));
        assert_eq!(p.wal_keep_from.get("c1"), Some(&b[1].start_lsn));
    }

    #[test]
    fn incomplete_backups_take_no_part_in_the_rules() {
        let now = at("2026-11-24T12:00:00Z");
        let b = [
            auto("done", "2026-11-24T01:00:00Z"),
            incomplete(auto("running", "2026-11-24T11:00:00Z")),
            incomplete(auto("failed", "2026-11-20T00:00:00Z")),
        ];
        let p = plan(&Policy { daily: 1, monthly: 1, yearly: 1, pitr_days: 2, ..Policy::default() }, &b, now);
        // "done" is the day's daily although "running" is newer; "failed" cannot be the PITR base.
        assert_eq!(reasons(&p, "done"), ["daily 2026-11-24", "monthly 2026-11", "yearly 2026", REASON_PITR_BASE]);
        assert_eq!(reasons(&p, "running"), [REASON_IN_PROGRESS]);
        assert_eq!(reasons(&p, "failed"), [REASON_INCOMPLETE]);
    }

    // ---------------------------------------------------------------- PITR and WAL

    #[test]
    fn pitr_base_is_newest_backup_ending_by_window_start() {
        let b = [
            auto("a", "2026-11-20T03:00:00Z"),
            manual("m", "2026-11-22T12:00:00Z"),
            auto("b", "2026-11-23T03:00:00Z"),
            auto("c", "2026-11-24T03:00:00Z"),
        ];
        // Window start 2026-11-22T12:00: "m" ends exactly then, so it is the base; "b" and "c" end inside the
        // window and are kept to become the base in turn; "a", older than the base, is not needed.
        let p = plan(&pitr_only(2), &b, at("2026-11-24T12:00:00Z"));
        assert_eq!(kept(&p), ids(["m", "b", "c"]));
        assert_eq!(reasons(&p, "m"), [REASON_MANUAL, REASON_PITR_BASE]);
        assert_eq!(reasons(&p, "b"), [REASON_PITR_WINDOW]);
        assert_eq!(reasons(&p, "c"), [REASON_PITR_WINDOW]);
        assert_eq!(reasons(&p, "a"), [REASON_BEYOND_COUNTS]);
        // The WAL starts at the base: the WAL of the backups in the window is inside it.
        assert_eq!(p.wal_keep_from.get("c1"), Some(&b[1].start_lsn));
        // One second earlier the window starts just before "m" ends, so the base moves back to "a" and "m" is in
        // the window (any kind is, as for the base) along with "b" and "c".
        let p = plan(&pitr_only(2), &b, at("2026-11-24T11:59:59Z"));
        assert_eq!(kept(&p), ids(["a", "m", "b", "c"]));
        assert_eq!(reasons(&p, "a"), [REASON_PITR_BASE]);
        assert_eq!(reasons(&p, "m"), [REASON_MANUAL, REASON_PITR_WINDOW]);
        assert_eq!(p.wal_keep_from.get("c1"), Some(&b[0].start_lsn));
    }

    #[test]
    fn pitr_base_falls_back_to_oldest_backup() {
        let b = [
            auto("b", "2026-11-24T03:00:00Z"),
            auto("a", "2026-11-23T20:00:00Z"),
            incomplete(auto("x", "2026-11-23T19:00:00Z")),
        ];
        // Nothing ends before the window start (2026-11-17T12:00): the oldest completed backup "a" is the base and
        // "b", newer, is in the window (so the base can advance once the window passes "a"). The running "x" is
        // kept for 24 h but is neither: it cannot be restored from.
        let p = plan(&pitr_only(7), &b, at("2026-11-24T12:00:00Z"));
        assert_eq!(kept(&p), ids(["a", "b", "x"]));
        assert_eq!(reasons(&p, "a"), [REASON_PITR_BASE]);
        assert_eq!(reasons(&p, "b"), [REASON_PITR_WINDOW]);
        assert_eq!(reasons(&p, "x"), [REASON_IN_PROGRESS]);
        assert_eq!(p.wal_keep_from.get("c1"), Some(&b[1].start_lsn));
    }

    #[test]
    fn wal_keep_from_and_ranges() {
        let b = [
            auto("jan", "2026-01-31T03:00:00Z"),
            auto("d23", "2026-11-23T03:00:00Z"),
            auto("d24", "2026-11-24T03:00:00Z"),
            manual("m", "2025-05-05T05:00:00Z"),
        ];
        let now = at("2026-11-24T12:00:00Z");
        let p = plan(&Policy::default(), &b, now);
        assert_eq!(kept(&p), ids(["jan", "d23", "d24", "m"]));
        // With PITR the watermark is the base's start even though older backups are kept (their ranges are listed).
        assert_eq!(reasons(&p, "d23"), ["daily 2026-11-23", REASON_PITR_BASE]);
        assert_eq!(reasons(&p, "d24"), ["daily 2026-11-24", "monthly 2026-11", "yearly 2026", REASON_PITR_WINDOW]);
        assert_eq!(p.wal_keep_from.get("c1"), Some(&b[1].start_lsn));
        let ranges: BTreeSet<(String, u64, u64)> = p.wal_ranges.iter().cloned().collect();
        let want: BTreeSet<(String, u64, u64)> =
            b.iter().map(|x| ("c1".to_string(), x.start_lsn, x.stop_lsn)).collect();
        assert_eq!(ranges, want);
        // Without PITR it is the lowest start among the kept backups.
        let p = plan(&Policy { pitr_enabled: false, ..Policy::default() }, &b, now);
        assert_eq!(p.wal_keep_from.get("c1"), Some(&b[3].start_lsn));
    }

    #[test]
    fn pitr_window_backups_are_kept_only_with_pitr() {
        let b =
            [auto("a", "2026-11-20T03:00:00Z"), auto("b", "2026-11-23T03:00:00Z"), auto("c", "2026-11-24T03:00:00Z")];
        let now = at("2026-11-24T12:00:00Z");
        // Window start 2026-11-22T12:00: "a" is the base, "b" and "c" are in the window.
        let p = plan(&pitr_only(2), &b, now);
        assert_eq!(kept(&p), ids(["a", "b", "c"]));
        assert_eq!(reasons(&p, "b"), [REASON_PITR_WINDOW]);
        assert_eq!(reasons(&p, "c"), [REASON_PITR_WINDOW]);
        // PITR off: neither rule keeps anything, whatever pitr_days says.
        let p = plan(&Policy { pitr_enabled: false, ..pitr_only(2) }, &b, now);
        assert_eq!(kept(&p), ids([]));
        assert!(p.wal_keep_from.is_empty());
        // With counts, only the count reasons remain.
        let p = plan(&Policy { pitr_enabled: false, ..Policy::default() }, &b, now);
        assert_eq!(reasons(&p, "a"), ["daily 2026-11-20"]);
        assert_eq!(reasons(&p, "b"), ["daily 2026-11-23"]);
        assert_eq!(reasons(&p, "c"), ["daily 2026-11-24", "monthly 2026-11", "yearly 2026"]);
    }

    #[test]
    fn nothing_is_in_the_pitr_window_after_the_newest_backup() {
        let now = at("2026-11-24T12:00:00Z");
        let b = [
            auto("a", "2026-11-20T03:00:00Z"),
            manual("m", "2026-11-21T03:00:00Z"),
            incomplete(auto("r", "2026-11-24T11:00:00Z")),
        ];
        // Window start 2026-11-23T12:00: "m" is the newest completed backup, so it is the base and nothing is in
        // the window (the running "r" cannot be restored from, so it is no candidate).
        let p = plan(&pitr_only(1), &b, now);
        assert_eq!(kept(&p), ids(["m", "r"]));
        assert_eq!(reasons(&p, "m"), [REASON_MANUAL, REASON_PITR_BASE]);
        assert_eq!(reasons(&p, "a"), [REASON_BEYOND_COUNTS]);
        assert_eq!(reasons(&p, "r"), [REASON_IN_PROGRESS]);
        assert!(p.decisions.iter().all(|d| !d.reasons.iter().any(|r| r == REASON_PITR_WINDOW)));
        // A lone backup inside the window is the base by the fallback, and nothing comes after it.
        let p = plan(&pitr_only(7), &b[..1], now);
        assert_eq!(reasons(&p, "a"), [REASON_PITR_BASE]);
    }

    #[test]
    fn every_restorable_backup_in_the_pitr_window_is_kept() {
        let now = at("2026-11-24T12:00:00Z");
        // Window start 2026-11-22T12:00: "base" is the base; each case puts a different backup right after it,
        // before "later", which is in the window too.
        let base = auto("base", "2026-11-22T03:00:00Z");
        let later = auto("later", "2026-11-24T03:00:00Z");
        let with = |next: BackupInfo| [base.clone(), next, later.clone()];
        let p = plan(&pitr_only(2), &with(manual("m", "2026-11-23T03:00:00Z")), now);
        assert_eq!(kept(&p), ids(["base", "m", "later"]));
        assert_eq!(reasons(&p, "m"), [REASON_MANUAL, REASON_PITR_WINDOW]);
        assert_eq!(reasons(&p, "later"), [REASON_PITR_WINDOW]);
        // A final backup of the live incarnation too, even with keep_final=false (as for the base).
        let p = plan(&Policy { keep_final: false, ..pitr_only(2) }, &with(final_("f", "2026-11-23T03:00:00Z")), now);
        assert_eq!(kept(&p), ids(["base", "f", "later"]));
        assert_eq!(reasons(&p, "f"), [REASON_PITR_WINDOW]);
        // A failed or deprovisioned backup cannot be restored into this incarnation: it is not kept.
        let p = plan(&pitr_only(2), &with(incomplete(auto("failed", "2026-11-23T03:00:00Z"))), now);
        assert_eq!(kept(&p), ids(["base", "later"]));
        assert_eq!(reasons(&p, "failed"), [REASON_INCOMPLETE]);
        let p = plan(&pitr_only(2), &with(deprovisioned(auto("gone", "2026-11-23T03:00:00Z"))), now);
        assert_eq!(kept(&p), ids(["base", "later"]));
        assert_eq!(reasons(&p, "gone"), [REASON_DEPROVISIONED]);
        assert_eq!(reasons(&p, "later"), [REASON_PITR_WINDOW]);
        // The WAL floor stays at the base.
        assert_eq!(p.wal_keep_from.get("c1"), Some(&base.start_lsn));
    }

    #[test]
    fn a_live_final_backup_can_be_the_pitr_base_with_keep_final_false() {
        let now = at("2026-11-24T12:00:00Z");
        let b =
            [auto("a", "2026-11-20T03:00:00Z"), final_("f", "2026-11-22T03:00:00Z"), auto("c", "2026-11-24T03:00:00Z")];
        let p = plan(&Policy { keep_final: false, ..pitr_only(2) }, &b, now);
        assert_eq!(kept(&p), ids(["f", "c"]));
        assert_eq!(reasons(&p, "f"), [REASON_PITR_BASE]);
        assert_eq!(p.wal_keep_from.get("c1"), Some(&b[1].start_lsn));
        // Once the window has passed a newer backup, the final backup is older than the base and goes.
        let p = plan(&Policy { keep_final: false, ..pitr_only(2) }, &b, at("2026-11-26T03:00:00Z"));
        assert_eq!(kept(&p), ids(["c"]));
        assert_eq!(reasons(&p, "f"), [REASON_FINAL_NOT_KEPT]);
    }

    #[test]
    fn pitr_ties_follow_the_newest_order() {
        // "x" and "y" end at the same time and LSN, before the window start: the id decides, so "y" is the newer
        // and the base, and "x" is older than the base and not kept. "n" is in the window.
        let b =
            [auto("y", "2026-11-22T03:00:00Z"), auto("x", "2026-11-22T03:00:00Z"), auto("n", "2026-11-23T03:00:00Z")];
        let now = at("2026-11-24T12:00:00Z");
        for catalog in [b.to_vec(), b.iter().rev().cloned().collect()] {
            let p = plan(&pitr_only(2), &catalog, now);
            assert_eq!(kept(&p), ids(["y", "n"]));
            assert_eq!(reasons(&p, "y"), [REASON_PITR_BASE]);
            assert_eq!(reasons(&p, "x"), [REASON_BEYOND_COUNTS]);
            assert_eq!(reasons(&p, "n"), [REASON_PITR_WINDOW]);
        }
        // A later stop LSN wins over the id: "x" is then the base and "y" the older one.
        let mut b = b;
        b[1].stop_lsn += 1;
        let p = plan(&pitr_only(2), &b, now);
        assert_eq!(reasons(&p, "x"), [REASON_PITR_BASE]);
        assert_eq!(reasons(&p, "y"), [REASON_BEYOND_COUNTS]);
        // Ties inside the window do not matter: both are newer than the base and kept.
        let b = [
            auto("base", "2026-11-22T03:00:00Z"),
            auto("y", "2026-11-23T03:00:00Z"),
            auto("x", "2026-11-23T03:00:00Z"),
        ];
        let p = plan(&pitr_only(2), &b, now);
        assert_eq!(kept(&p), ids(["base", "x", "y"]));
    }

    #[test]
    fn clusters_are_planned_separately() {
        let b = [
            in_cluster(auto("a1", "2026-11-23T03:00:00Z"), "alpha"),
            in_cluster(auto("a2", "2026-11-24T03:00:00Z"), "alpha"),
            in_cluster(auto("b1", "2026-11-20T03:00:00Z"), "beta"),
            in_cluster(auto("b2", "2026-11-21T03:00:00Z"), "beta"),
        ];
        let p = plan(&counts(1, 0, 0), &b, at("2026-11-24T12:00:00Z"));
        assert_eq!(kept(&p), ids(["a2", "b2"]));
        assert_eq!(p.wal_keep_from.len(), 2);
        assert_eq!(p.wal_keep_from.get("beta"), Some(&b[3].start_lsn));
        assert_eq!(p.decisions.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["a1", "a2", "b1", "b2"]);
    }

    #[test]
    fn empty_catalog_plans_nothing() {
        assert_eq!(plan(&Policy::default(), &[], at("2026-11-24T12:00:00Z")), Plan::default());
    }

    #[test]
    fn extreme_policies_do_not_panic() {
        let b = [auto("a", "2026-11-24T03:00:00Z")];
        let huge =
            Policy { daily: u32::MAX, monthly: u32::MAX, yearly: u32::MAX, pitr_days: u32::MAX, ..Policy::default() };
        let p = plan(&huge, &b, at("2026-11-24T12:00:00Z"));
        assert_eq!(reasons(&p, "a"), ["daily 2026-11-24", "monthly 2026-11", "yearly 2026", REASON_PITR_BASE]);
        let p = plan(&huge, &b, DateTime::<Utc>::MIN_UTC);
        assert_eq!(kept(&p), ids(["a"]));
    }

    // ---------------------------------------------------------------- helpers on Plan and Policy

    #[test]
    fn keeps_and_deletes_partition_the_decisions() {
        let b =
            [auto("a", "2026-11-22T03:00:00Z"), auto("b", "2026-11-23T03:00:00Z"), auto("c", "2026-11-24T03:00:00Z")];
        let p = plan(&counts(2, 0, 0), &b, at("2026-11-24T12:00:00Z"));
        assert_eq!(p.keeps().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(p.deletes().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn diff_deletes_lists_only_newly_deleted() {
        let b = [
            auto("jan", "2026-01-31T03:00:00Z"),
            auto("d22", "2026-11-22T03:00:00Z"),
            auto("d23", "2026-11-23T03:00:00Z"),
            auto("d24", "2026-11-24T03:00:00Z"),
            manual("m", "2026-02-01T00:00:00Z"),
            final_("f", "2026-03-01T00:00:00Z"),
        ];
        let now = at("2026-11-24T12:00:00Z");
        let old = Policy::default();
        let new = Policy { daily: 1, monthly: 0, yearly: 0, keep_final: false, ..Policy::default() };
        assert_eq!(Policy::diff_deletes(&old, &new, &b, now), ["jan", "d22", "f"]);
        assert!(Policy::diff_deletes(&new, &old, &b, now).is_empty());
        assert!(Policy::diff_deletes(&old, &old, &b, now).is_empty());
    }

    mod properties {
        use super::super::*;
        use super::{at, lsn_at, restorable_at};
        use proptest::prelude::*;
        use std::collections::{BTreeMap, BTreeSet};

        const SPAN_DAYS: usize = 800;

        #[derive(Debug, Clone)]
        struct Case {
            now: DateTime<Utc>,
            backups: Vec<BackupInfo>,
        }

        fn arb_policy() -> impl Strategy<Value = Policy> {
            (0u32..40, 0u32..15, 0u32..8, any::<bool>(), any::<bool>(), 1u32..=35).prop_map(
                |(daily, monthly, yearly, keep_final, pitr_enabled, pitr_days)| Policy {
                    daily,
                    monthly,
                    yearly,
                    copy_regions: "none".to_string(),
                    keep_final,
                    pitr_enabled,
                    pitr_days,
                },
            )
        }

        fn make(
            id: String,
            cluster: u8,
            kind: Kind,
            stop_time: DateTime<Utc>,
            completed: bool,
            flagged: bool,
            len: u64,
        ) -> BackupInfo {
            let stop_lsn = lsn_at(stop_time);
            BackupInfo {
                id,
                cluster: format!("c{cluster}"),
                kind,
                completed,
                failed: false,
                start_lsn: stop_lsn.saturating_sub(len),
                stop_lsn,
                stop_time,
                cluster_deprovisioned: flagged,
            }
        }

        /// A daily schedule with gaps (cluster c0) plus scattered backups of every kind in three clusters.
        fn arb_case() -> impl Strategy<Value = Case> {
            let kind = prop_oneof![6 => Just(Kind::Automatic), 3 => Just(Kind::Manual), 1 => Just(Kind::Final)];
            // Minutes before now; half within the last 40 days (a few in the future) so busy days are common.
            let ago = prop_oneof![-180i64..40 * 1440, 0i64..(SPAN_DAYS as i64) * 1440];
            let extra = (0u8..3, kind, ago, prop::bool::weighted(0.9), prop::bool::weighted(0.05), 1u64..3_600_000);
            (
                0i64..3 * 365 * 1440,
                prop::collection::vec((prop::bool::weighted(0.8), prop::bool::weighted(0.97)), 0..SPAN_DAYS),
                prop::collection::vec(extra, 0..120),
                [prop::bool::weighted(0.2), prop::bool::weighted(0.2), prop::bool::weighted(0.2)],
            )
                .prop_map(|(now_minutes, schedule, extras, gone)| {
                    let now = at("2024-01-01T00:00:00Z") + TimeDelta::minutes(now_minutes);
                    let midnight = now.date_naive().and_hms_opt(0, 0, 0).expect("midnight").and_utc();
                    let mut backups = Vec::new();
                    for (day, &(present, completed)) in schedule.iter().enumerate() {
                        if present {
                            let day = i64::try_from(day).expect("small");
                            let stop = midnight - TimeDelta::days(day) + TimeDelta::minutes(180 + (day % 7) * 5);
                            backups.push(make(
                                format!("s{day}"),
                                0,
                                Kind::Automatic,
                                stop,
                                completed,
                                gone[0],
                                600_000,
                            ));
                        }
                    }
                    for (n, (cluster, kind, ago, completed, stray, len)) in extras.into_iter().enumerate() {
                        let stop = now - TimeDelta::minutes(ago);
                        let flagged = gone[usize::from(cluster)] || stray;
                        backups.push(make(format!("x{n}"), cluster, kind, stop, completed, flagged, len));
                    }
                    Case { now, backups }
                })
        }

        fn members<'a>(case: &'a Case, p: &'a Plan) -> BTreeMap<&'a str, Vec<(&'a BackupInfo, &'a Decision)>> {
            let mut out: BTreeMap<&str, Vec<(&BackupInfo, &Decision)>> = BTreeMap::new();
            for (b, d) in case.backups.iter().zip(&p.decisions) {
                out.entry(b.cluster.as_str()).or_default().push((b, d));
            }
            out
        }

        fn survivors(case: &Case, p: &Plan) -> Vec<BackupInfo> {
            case.backups.iter().zip(&p.decisions).filter(|(_, d)| d.keep).map(|(b, _)| b.clone()).collect()
        }

        type Label = fn(&BackupInfo) -> i64;

        fn day_label(b: &BackupInfo) -> i64 {
            i64::from(b.stop_time.date_naive().num_days_from_ce())
        }

        fn month_label(b: &BackupInfo) -> i64 {
            month_index(b.stop_time)
        }

        fn year_label(b: &BackupInfo) -> i64 {
            i64::from(b.stop_time.year())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            #[test]
            fn decisions_are_well_formed(policy in arb_policy(), case in arb_case()) {
                let p = plan(&policy, &case.backups, case.now);
                prop_assert_eq!(p.decisions.len(), case.backups.len());
                let deleting = [REASON_BEYOND_COUNTS, REASON_FINAL_NOT_KEPT, REASON_DEPROVISIONED, REASON_INCOMPLETE];
                for (b, d) in case.backups.iter().zip(&p.decisions) {
                    prop_assert_eq!(&d.id, &b.id);
                    prop_assert_eq!(&d.cluster, &b.cluster);
                    prop_assert!(!d.reasons.is_empty());
                    let deleted = d.reasons.iter().any(|r| deleting.contains(&r.as_str()));
                    prop_assert_eq!(d.keep, !deleted, "{:?}", d);
                    prop_assert!(d.keep || d.reasons.len() == 1, "{:?}", d);
                }
            }

            #[test]
            fn manual_backups_are_never_deleted(policy in arb_policy(), case in arb_case()) {
                let p = plan(&policy, &case.backups, case.now);
                for (b, d) in case.backups.iter().zip(&p.decisions) {
                    if b.kind == Kind::Manual {
                        prop_assert!(d.keep, "{:?}", d);
                    }
                }
            }

            #[test]
            fn pitr_window_stays_restorable(policy in arb_policy(), case in arb_case()) {
                let p = plan(&policy, &case.backups, case.now);
                if !policy.pitr_enabled {
                    return Ok(());
                }
                let window_start = case.now - TimeDelta::days(policy.pitr_days.into());
                for (cluster, list) in members(&case, &p) {
                    let live: Vec<_> = list.iter().filter(|(b, _)| b.completed && !b.cluster_deprovisioned).collect();
                    if live.is_empty() {
                        continue;
                    }
                    let wal = p.wal_keep_from.get(cluster).copied();
                    prop_assert!(wal.is_some(), "no WAL watermark for {}", cluster);
                    // Every point from the window start on; when no backup ends by then, every point from the oldest
                    // backup's end on (nothing restores an earlier one). Restorable at a point means at later ones.
                    let oldest = live.iter().map(|(b, _)| b.stop_time).min().unwrap_or(window_start);
                    let first_point = window_start.max(oldest);
                    let kept = live.iter().filter(|(_, d)| d.keep).map(|(b, _)| *b);
                    prop_assert!(
                        restorable_at(kept, wal, first_point),
                        "cluster {} window start {} wal {:?}",
                        cluster,
                        window_start,
                        wal
                    );
                }
            }

            #[test]
            fn pitr_keeps_the_base_and_every_newer_live_backup(policy in arb_policy(), case in arb_case()) {
                let p = plan(&policy, &case.backups, case.now);
                let window_start = case.now - TimeDelta::days(policy.pitr_days.into());
                for (cluster, list) in members(&case, &p) {
                    let with = |reason: &str| -> BTreeSet<&str> {
                        list.iter()
                            .filter(|(_, d)| d.reasons.iter().any(|r| r == reason))
                            .map(|(b, _)| b.id.as_str())
                            .collect()
                    };
                    let (bases, in_window) = (with(REASON_PITR_BASE), with(REASON_PITR_WINDOW));
                    let live: Vec<&BackupInfo> =
                        list.iter().map(|(b, _)| *b).filter(|b| b.completed && !b.cluster_deprovisioned).collect();
                    if !policy.pitr_enabled || live.is_empty() {
                        prop_assert!(bases.is_empty() && in_window.is_empty(), "{}", cluster);
                        continue;
                    }
                    // The base and "newer" in (stop time, stop LSN, id) order, written out here rather than taken
                    // from the code: the newest backup ending by the window start, else the oldest one.
                    let key = |b: &BackupInfo| (b.stop_time, b.stop_lsn, b.id.clone());
                    let base = live
                        .iter()
                        .filter(|b| b.stop_time <= window_start)
                        .max_by_key(|b| key(b))
                        .or_else(|| live.iter().min_by_key(|b| key(b)))
                        .expect("live backups");
                    prop_assert_eq!(&bases, &BTreeSet::from([base.id.as_str()]), "{}", cluster);
                    let newer: BTreeSet<&str> =
                        live.iter().filter(|b| key(b) > key(base)).map(|b| b.id.as_str()).collect();
                    prop_assert_eq!(&in_window, &newer, "{}", cluster);
                    // They all end inside the window (or after now): one ending by the window start would be the base.
                    prop_assert!(live.iter().all(|b| !newer.contains(b.id.as_str()) || b.stop_time > window_start));
                }
            }

            #[test]
            fn wal_floor_is_the_start_of_the_newest_backup_ending_by_the_window_start(
                policy in arb_policy(),
                case in arb_case(),
            ) {
                if !policy.pitr_enabled {
                    return Ok(());
                }
                let p = plan(&policy, &case.backups, case.now);
                let window_start = case.now - TimeDelta::days(policy.pitr_days.into());
                for (cluster, list) in members(&case, &p) {
                    let key = |b: &BackupInfo| (b.stop_time, b.stop_lsn, b.id.clone());
                    let live: Vec<&BackupInfo> =
                        list.iter().map(|(b, _)| *b).filter(|b| b.completed && !b.cluster_deprovisioned).collect();
                    let wal = p.wal_keep_from.get(cluster).copied();
                    // Never older than needed: exactly that backup's start, so WAL is kept from no earlier point.
                    if let Some(b) = live.iter().filter(|b| b.stop_time <= window_start).max_by_key(|b| key(b)) {
                        prop_assert_eq!(wal, Some(b.start_lsn), "{}", cluster);
                    } else if let Some(oldest) = live.iter().min_by_key(|b| key(b)) {
                        prop_assert_eq!(wal, Some(oldest.start_lsn), "{}", cluster);
                    }
                }
            }

            #[test]
            fn a_later_sweep_of_the_survivors_finds_the_same_base(
                policy in arb_policy(),
                case in arb_case(),
                later_minutes in 0i64..60 * 1440,
            ) {
                // Sweep now and delete, then plan again later: no backup the later base needs was deleted, so the
                // base (and WAL floor) is the one the full catalog would give; the base never falls behind.
                let first = plan(&policy, &case.backups, case.now);
                let later = case.now + TimeDelta::minutes(later_minutes);
                let swept = plan(&policy, &survivors(&case, &first), later);
                let full = plan(&policy, &case.backups, later);
                for (cluster, list) in members(&case, &first) {
                    let live = list.iter().any(|(b, _)| b.completed && !b.cluster_deprovisioned);
                    if policy.pitr_enabled && live {
                        prop_assert_eq!(swept.wal_keep_from.get(cluster), full.wal_keep_from.get(cluster), "{}", cluster);
                    }
                }
            }

            #[test]
            fn counts_hold(policy in arb_policy(), case in arb_case()) {
                let p = plan(&policy, &case.backups, case.now);
                let rules: [(&str, u32, Label, i64); 3] = [
                    ("daily ", policy.daily, day_label, i64::MIN),
                    ("monthly ", policy.monthly, month_label, month_index(case.now) - i64::from(policy.monthly)),
                    ("yearly ", policy.yearly, year_label, i64::from(case.now.year()) - i64::from(policy.yearly)),
                ];
                for (_, list) in members(&case, &p) {
                    let candidates: Vec<&BackupInfo> = list
                        .iter()
                        .map(|(b, _)| *b)
                        .filter(|b| b.kind == Kind::Automatic && b.completed && !b.cluster_deprovisioned)
                        .collect();
                    for (prefix, limit, label, after) in rules {
                        let mut seen = BTreeSet::new();
                        for (b, d) in &list {
                            let Some(reason) = d.reasons.iter().find(|r| r.starts_with(prefix)) else { continue };
                            prop_assert!(candidates.iter().any(|c| c.id == b.id), "{} on a non-candidate", reason);
                            prop_assert!(seen.insert(label(b)), "two picks for {}", reason);
                            prop_assert!(label(b) > after, "{} is outside the window", reason);
                            // The pick is the newest candidate of its day/month/year, and its label says which.
                            let newer = candidates.iter().any(|c| label(c) == label(b) && newest_order(c, b).is_gt());
                            prop_assert!(!newer, "{} is not the newest", reason);
                            let shown = match prefix {
                                "daily " => b.stop_time.date_naive().to_string(),
                                "monthly " => format!("{:04}-{:02}", b.stop_time.year(), b.stop_time.month()),
                                _ => b.stop_time.year().to_string(),
                            };
                            prop_assert_eq!(reason, &format!("{prefix}{shown}"));
                        }
                        prop_assert!(seen.len() <= usize::try_from(limit).unwrap_or(usize::MAX));
                        // Nothing is missed: every label that should have a pick has one.
                        let labels: BTreeSet<i64> = candidates.iter().map(|c| label(c)).collect();
                        let due = if prefix == "daily " {
                            labels.len().min(usize::try_from(limit).unwrap_or(usize::MAX))
                        } else {
                            labels.iter().filter(|l| **l > after && **l <= after + i64::from(limit)).count()
                        };
                        prop_assert_eq!(seen.len(), due, "{}", prefix);
                    }
                }
            }

            #[test]
            fn replanning_the_survivors_deletes_nothing(policy in arb_policy(), case in arb_case()) {
                let first = plan(&policy, &case.backups, case.now);
                let second = plan(&policy, &survivors(&case, &first), case.now);
                prop_assert_eq!(second.deletes().count(), 0);
                prop_assert_eq!(&second.decisions, &first.keeps().cloned().collect::<Vec<_>>());
                prop_assert_eq!(&second.wal_keep_from, &first.wal_keep_from);
                prop_assert_eq!(&second.wal_ranges, &first.wal_ranges);
            }

            #[test]
            fn input_order_does_not_matter(policy in arb_policy(), case in arb_case()) {
                let forward = plan(&policy, &case.backups, case.now);
                let mut reversed = case.backups.clone();
                reversed.reverse();
                let backward = plan(&policy, &reversed, case.now);
                let index = |p: &Plan| {
                    p.decisions.iter().map(|d| (d.id.clone(), (d.keep, d.reasons.clone()))).collect::<BTreeMap<_, _>>()
                };
                prop_assert_eq!(index(&forward), index(&backward));
                prop_assert_eq!(&forward.wal_keep_from, &backward.wal_keep_from);
                let sorted = |p: &Plan| p.wal_ranges.iter().cloned().collect::<BTreeSet<_>>();
                prop_assert_eq!(sorted(&forward), sorted(&backward));
            }

            #[test]
            fn kept_backups_keep_their_wal(policy in arb_policy(), case in arb_case()) {
                let p = plan(&policy, &case.backups, case.now);
                for (b, d) in case.backups.iter().zip(&p.decisions) {
                    if d.keep && b.completed {
                        prop_assert!(p.wal_ranges.contains(&(b.cluster.clone(), b.start_lsn, b.stop_lsn)));
                        prop_assert!(p.wal_keep_from.contains_key(&b.cluster));
                    }
                }
            }

            #[test]
            fn diff_deletes_matches_the_two_plans(old in arb_policy(), new in arb_policy(), case in arb_case()) {
                let before = plan(&old, &case.backups, case.now);
                let after = plan(&new, &case.backups, case.now);
                let want: Vec<String> = before
                    .decisions
                    .iter()
                    .zip(&after.decisions)
                    .filter(|(o, n)| o.keep && !n.keep)
                    .map(|(o, _)| o.id.clone())
                    .collect();
                prop_assert_eq!(Policy::diff_deletes(&old, &new, &case.backups, case.now), want);
                prop_assert!(Policy::diff_deletes(&new, &new, &case.backups, case.now).is_empty());
            }
        }
    }

    mod simulation {
        use super::super::*;
        use super::{lsn_at, restorable_at};
        use chrono::{Days, NaiveDate};
        use std::cell::Cell;
        use std::collections::BTreeSet;

        /// Where the simulated agent reads the time; the test moves it by hand.
        trait Clock {
            fn now(&self) -> DateTime<Utc>;
        }

        struct SimClock(Cell<DateTime<Utc>>);

        impl SimClock {
            fn set(&self, t: DateTime<Utc>) {
                self.0.set(t);
            }
        }

        impl Clock for SimClock {
            fn now(&self) -> DateTime<Utc> {
                self.0.get()
            }
        }

        const CLUSTER: &str = "sim";
        const WAL_PER_BACKUP: u64 = 600_000;

        /// A minimal agent: records backups at the clock's time and applies retention plans to its catalog.
        struct Agent<'c, C: Clock> {
            clock: &'c C,
            policy: Policy,
            catalog: Vec<BackupInfo>,
        }

        impl<C: Clock> Agent<'_, C> {
            fn take_backup(&mut self, id: String, kind: Kind) {
                let stop_time = self.clock.now();
                let stop_lsn = lsn_at(stop_time);
                self.catalog.push(BackupInfo {
                    id,
                    cluster: CLUSTER.to_string(),
                    kind,
                    completed: true,
                    failed: false,
                    start_lsn: stop_lsn - WAL_PER_BACKUP,
                    stop_lsn,
                    stop_time,
                    cluster_deprovisioned: false,
                });
            }

            fn apply_retention(&mut self) -> Plan {
                let p = plan(&self.policy, &self.catalog, self.clock.now());
                let catalog = std::mem::take(&mut self.catalog);
                self.catalog = catalog.into_iter().zip(&p.decisions).filter(|(_, d)| d.keep).map(|(b, _)| b).collect();
                p
            }
        }

        fn at_time(day: NaiveDate, hour: u32, minute: u32) -> DateTime<Utc> {
            day.and_hms_opt(hour, minute, 0).expect("valid time").and_utc()
        }

        fn auto_id(day: NaiveDate) -> String {
            format!("auto-{day}")
        }

        fn manual_id(day: NaiveDate) -> String {
            format!("manual-{day}")
        }

        fn is_manual_day(first: NaiveDate, day: NaiveDate) -> bool {
            (day - first).num_days() % 45 == 0
        }

        /// When the backup with this id was taken, read back from the id ("auto-" at 03:00, "manual-" at 15:00).
        fn taken_at(id: &str) -> DateTime<Utc> {
            let (kind, day) = id.split_once('-').expect("kind-date id");
            let day: NaiveDate = day.parse().expect("date in id");
            if kind == "auto" {
                at_time(day, 3, 0)
            } else {
                at_time(day, 15, 0)
            }
        }

        fn start_lsn_of(id: &str) -> u64 {
            lsn_at(taken_at(id)) - WAL_PER_BACKUP
        }

        fn last_day_of_month(year: i32, month: u32) -> NaiveDate {
            let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
            NaiveDate::from_ymd_opt(next_year, next_month, 1).and_then(|d| d.pred_opt()).expect("valid month")
        }

        /// What must survive the run at 23:30 on `today`, from calendar arithmetic over the schedule alone.
        fn expected_survivors(
            policy: &Policy,
            first: NaiveDate,
            today: NaiveDate,
            yesterday: &BTreeSet<String>,
        ) -> (BTreeSet<String>, Option<u64>) {
            let mut keep = BTreeSet::new();
            let mut day = first;
            while day <= today {
                if is_manual_day(first, day) {
                    keep.insert(manual_id(day));
                }
                day = day.succ_opt().expect("next day");
            }
            // Every calendar day has one automatic backup, so the last N days are the last N calendar days.
            for k in 0..policy.daily {
                let day = today - Days::new(k.into());
                if day >= first {
                    keep.insert(auto_id(day));
                }
            }
            // A month's newest backup is its last day's (or today's, for the current month).
            let (mut year, mut month) = (today.year(), today.month());
            for _ in 0..policy.monthly {
                let last = last_day_of_month(year, month).min(today);
                if last >= first {
                    keep.insert(auto_id(last));
                }
                (year, month) = if month == 1 { (year - 1, 12) } else { (year, month - 1) };
            }
            for k in 0..policy.yearly {
                let year = today.year() - i32::try_from(k).expect("small");
                let last = NaiveDate::from_ymd_opt(year, 12, 31).expect("dec 31").min(today);
                if last >= first {
                    keep.insert(auto_id(last));
                }
            }
            if !policy.pitr_enabled {
                let wal = keep.iter().map(|id| start_lsn_of(id)).min();
                return (keep, wal);
            }
            // The base can only be something that survived yesterday's run or was taken today.
            let mut candidates: Vec<(DateTime<Utc>, String)> =
                yesterday.iter().map(|id| (taken_at(id), id.clone())).collect();
            candidates.push((at_time(today, 3, 0), auto_id(today)));
            if is_manual_day(first, today) {
                candidates.push((at_time(today, 15, 0), manual_id(today)));
            }
            candidates.sort();
            let window_start = at_time(today, 23, 30) - TimeDelta::days(policy.pitr_days.into());
            // Times are distinct (03:00 automatic, 15:00 manual), so sorting by time orders them as the planner does.
            // The base is the last candidate ending by the window start, else the first; it and every candidate
            // after it in time order are kept.
            let base =
                candidates.iter().rposition(|(t, _)| *t <= window_start).or((!candidates.is_empty()).then_some(0));
            let wal = base.map(|k| start_lsn_of(&candidates[k].1));
            if let Some(k) = base {
                keep.extend(candidates[k..].iter().map(|(_, id)| id.clone()));
            }
            (keep, wal)
        }

        struct Outcome {
            catalog: Vec<BackupInfo>,
            /// Longest time between the PITR window start and the base's stop time: WAL kept beyond the window.
            max_base_lag: TimeDelta,
            /// Longest span of WAL kept, from `wal_keep_from` to the LSN of the retention run.
            max_wal_span: TimeDelta,
        }

        /// Runs `days` days of schedule (automatic at 03:00, manual at 15:00 every 45 days, retention at 23:30).
        fn simulate(policy: &Policy, first: NaiveDate, days: u64) -> Outcome {
            let clock = SimClock(Cell::new(at_time(first, 0, 0)));
            let mut agent = Agent { clock: &clock, policy: policy.clone(), catalog: Vec::new() };
            let mut yesterday = BTreeSet::new();
            let mut max_base_lag = TimeDelta::zero();
            let mut max_wal_span = TimeDelta::zero();
            for n in 0..days {
                let today = first + Days::new(n);
                clock.set(at_time(today, 3, 0));
                agent.take_backup(auto_id(today), Kind::Automatic);
                if n % 45 == 0 {
                    clock.set(at_time(today, 15, 0));
                    agent.take_backup(manual_id(today), Kind::Manual);
                }
                clock.set(at_time(today, 23, 30));
                let p = agent.apply_retention();

                let (want, want_wal) = expected_survivors(policy, first, today, &yesterday);
                let got: BTreeSet<String> = agent.catalog.iter().map(|b| b.id.clone()).collect();
                assert_eq!(got, want, "survivors after {today}");
                assert_eq!(p.wal_keep_from.get(CLUSTER).copied(), want_wal, "wal_keep_from after {today}");
                assert!(p.deletes().all(|d| d.reasons == [REASON_BEYOND_COUNTS]), "{today}");

                let window_start = clock.now() - TimeDelta::days(policy.pitr_days.into());
                for d in p.keeps().filter(|d| d.reasons.iter().any(|r| r == REASON_PITR_BASE)) {
                    max_base_lag = max_base_lag.max(window_start - taken_at(&d.id));
                }
                if let Some(wal) = want_wal {
                    let span = lsn_at(clock.now()) - wal;
                    max_wal_span = max_wal_span.max(TimeDelta::milliseconds(i64::try_from(span).expect("small")));
                }
                yesterday = want;
            }
            Outcome { catalog: agent.catalog, max_base_lag, max_wal_span }
        }

        fn first_day() -> NaiveDate {
            NaiveDate::from_ymd_opt(2023, 11, 17).expect("date")
        }

        /// 2023-11-17 ..= 2025-11-16, across the 2024 leap day and two new years.
        const TWO_YEARS: u64 = 731;

        fn ids(catalog: &[BackupInfo]) -> BTreeSet<&str> {
            catalog.iter().map(|b| b.id.as_str()).collect()
        }

        #[test]
        fn two_years_with_the_default_policy() {
            let out = simulate(&Policy::default(), first_day(), TWO_YEARS);
            let kept = ids(&out.catalog);
            // 30 daily (2025-10-18..=11-16) + 10 older month ends (2024-12..2025-09) + 2023-12-31 + 17 manual.
            assert_eq!(kept.len(), 58);
            assert!(kept.contains("auto-2023-12-31") && kept.contains("auto-2024-12-31"));
            assert!(kept.contains("auto-2025-02-28") && !kept.contains("auto-2024-02-29"));
            assert!(kept.contains("auto-2025-10-18") && !kept.contains("auto-2025-10-17"));
            assert_eq!(kept.iter().filter(|id| id.starts_with("manual-")).count(), 17);
            // The window (from yesterday 23:30) holds only today's backups, which the dailies and the manual rule
            // keep anyway: PITR keeps nothing extra. The base is yesterday's 03:00 backup, 20:30 before the window
            // start.
            assert_eq!(out.max_base_lag, TimeDelta::minutes(20 * 60 + 30));
            // WAL from yesterday's 02:50 start to the 23:30 run: the window plus 20:40.
            assert_eq!(out.max_wal_span, TimeDelta::days(1) + TimeDelta::minutes(20 * 60 + 40));

            // Deprovision the cluster after a final backup: only manual and final backups remain.
            let mut catalog = out.catalog;
            for b in &mut catalog {
                b.cluster_deprovisioned = true;
            }
            let end = at_time(NaiveDate::from_ymd_opt(2025, 11, 17).expect("date"), 1, 0);
            let stop_lsn = lsn_at(end);
            catalog.push(BackupInfo {
                id: "final".to_string(),
                cluster: CLUSTER.to_string(),
                kind: Kind::Final,
                completed: true,
                failed: false,
                start_lsn: stop_lsn - WAL_PER_BACKUP,
                stop_lsn,
                stop_time: end,
                cluster_deprovisioned: true,
            });
            let later = end + TimeDelta::hours(1);
            let p = plan(&Policy::default(), &catalog, later);
            assert_eq!(p.keeps().count(), 18);
            assert!(p.keeps().all(|d| d.id == "final" || d.id.starts_with("manual-")));
            assert_eq!(p.wal_keep_from.get(CLUSTER).copied(), Some(start_lsn_of("manual-2023-11-17")));
            let p = plan(&Policy { keep_final: false, ..Policy::default() }, &catalog, later);
            assert_eq!(p.keeps().count(), 17);
        }

        #[test]
        fn two_years_with_pitr_longer_than_daily() {
            let policy = Policy { daily: 7, monthly: 3, yearly: 2, pitr_days: 10, ..Policy::default() };
            let out = simulate(&policy, first_day(), TWO_YEARS);
            // Every backup in the window is kept, so the base is the backup of the window start's day: the 03:00
            // automatic one, 20:30 before the 23:30 window start (or that day's 15:00 manual one, 8:30 before).
            assert_eq!(out.max_base_lag, TimeDelta::minutes(20 * 60 + 30));
            // WAL from that backup's 02:50 start: the window plus 20:40, within the bound of the window plus the
            // longest gap between backups (1 day) plus one backup's duration (10 minutes). The first 10 days, with
            // the first backup as the fallback base, keep less.
            assert_eq!(out.max_wal_span, TimeDelta::days(10) + TimeDelta::minutes(20 * 60 + 40));
            // On the last day (window start 2025-11-06T23:30) the base is 11-06's manual backup and 11-07..=11-16
            // are in the window: 10 automatic backups (7 of them dailies, 11-16 also monthly and yearly), plus the
            // October and September month ends, 2024-12-31 (yearly) and 17 manual.
            let automatic: Vec<&str> =
                out.catalog.iter().filter(|b| b.kind == Kind::Automatic).map(|b| b.id.as_str()).collect();
            assert_eq!(automatic.len(), 13);
            assert!(automatic.contains(&"auto-2025-11-07") && !automatic.contains(&"auto-2025-11-06"));
            assert_eq!(out.catalog.len(), 13 + 17);
        }

        #[test]
        fn two_years_with_default_counts_and_35_days_pitr() {
            let policy = Policy { pitr_days: 35, ..Policy::default() };
            let out = simulate(&policy, first_day(), TWO_YEARS);
            // 30 daily backups cannot span a 35-day window, but every backup in the window is kept, so the base is
            // the backup of the window start's day: 20:30 before the window start, and WAL is kept for the window
            // plus 20:40.
            assert_eq!(out.max_base_lag, TimeDelta::minutes(20 * 60 + 30));
            assert_eq!(out.max_wal_span, TimeDelta::days(35) + TimeDelta::minutes(20 * 60 + 40));
            // The cost: on the last day (window start 2025-10-12T23:30) the base 10-12 and 10-13..=10-17, beyond the
            // 30 dailies (10-18..=11-16), are kept too: the 58 backups of the default policy plus 6.
            let kept = ids(&out.catalog);
            assert_eq!(kept.len(), 58 + 6);
            assert!(kept.contains("auto-2025-10-12") && !kept.contains("auto-2025-10-11"));
        }

        #[test]
        fn two_years_with_pitr_only() {
            let policy = Policy { daily: 0, monthly: 0, yearly: 0, pitr_days: 3, ..Policy::default() };
            let out = simulate(&policy, first_day(), TWO_YEARS);
            // Only the base and the backups in the window survive besides the manual ones: on the last day (window
            // start 2025-11-13T23:30) the base is 11-13's and 11-14..=11-16 are in the window.
            let automatic: Vec<&str> =
                out.catalog.iter().filter(|b| b.kind == Kind::Automatic).map(|b| b.id.as_str()).collect();
            assert_eq!(automatic, ["auto-2025-11-13", "auto-2025-11-14", "auto-2025-11-15", "auto-2025-11-16"]);
            assert_eq!(out.catalog.len(), 17 + 4);
            // The base advances every day, so it ends at most 20:30 before the window start and WAL is kept for the
            // window plus 20:40 (the next-base rule kept 5 days 20:40 here, about twice the window).
            assert_eq!(out.max_base_lag, TimeDelta::minutes(20 * 60 + 30));
            assert_eq!(out.max_wal_span, TimeDelta::days(3) + TimeDelta::minutes(20 * 60 + 40));
        }

        #[test]
        fn two_years_without_pitr() {
            let policy = Policy { daily: 5, monthly: 2, yearly: 1, pitr_enabled: false, ..Policy::default() };
            let out = simulate(&policy, first_day(), TWO_YEARS);
            // 5 daily + October's month end + 17 manual (the yearly pick is today's).
            assert_eq!(out.catalog.len(), 23);
        }

        /// Time from `wal_keep_from` to `now`: how much WAL a plan keeps (one LSN unit per millisecond).
        fn wal_span(now: DateTime<Utc>, wal_keep_from: u64) -> TimeDelta {
            TimeDelta::milliseconds(i64::try_from(lsn_at(now) - wal_keep_from).expect("small span"))
        }

        /// What [`sweep_daily_backups`] measured.
        struct Sweeps {
            /// Longest WAL span after a sweep, from `wal_keep_from` to the sweep.
            max_span: TimeDelta,
            /// Longest time between the ends of two consecutive backups.
            max_gap: TimeDelta,
            /// How many times the base moved.
            advances: usize,
        }

        /// Runs `days` days of one automatic backup a day (10 minutes long, ending at minute `end_minute(n)` of day
        /// n) with the sweep (plan, then delete what it says) at each of `sweeps` (minutes of the day; a backup
        /// ending at a sweep minute is recorded first). After every sweep checks that each point of the window is
        /// restorable from the survivors, that the base is the newest backup *ever taken* that ends by the window
        /// start (so no earlier sweep deleted a backup the base needed later), and that exactly the base and every
        /// backup after it survive.
        fn sweep_daily_backups(policy: &Policy, end_minute: impl Fn(u64) -> u32, sweeps: &[u32], days: u64) -> Sweeps {
            let first = NaiveDate::from_ymd_opt(2024, 2, 10).expect("date");
            let clock = SimClock(Cell::new(at_time(first, 0, 0)));
            let mut agent = Agent { clock: &clock, policy: policy.clone(), catalog: Vec::new() };
            let mut taken: Vec<(DateTime<Utc>, String)> = Vec::new();
            let mut out = Sweeps { max_span: TimeDelta::zero(), max_gap: TimeDelta::zero(), advances: 0 };
            let mut previous_base: Option<String> = None;
            for n in 0..days {
                let today = first + Days::new(n);
                let backup_minute = end_minute(n);
                let mut events: Vec<u32> = sweeps.to_vec();
                events.push(backup_minute);
                events.sort_unstable();
                events.dedup();
                for &minute in &events {
                    clock.set(at_time(today, minute / 60, minute % 60));
                    let now = clock.now();
                    if minute == backup_minute {
                        agent.take_backup(auto_id(today), Kind::Automatic);
                        if let Some((last, _)) = taken.last() {
                            out.max_gap = out.max_gap.max(now - *last);
                        }
                        taken.push((now, auto_id(today)));
                    }
                    if !sweeps.contains(&minute) {
                        continue;
                    }
                    let p = agent.apply_retention();
                    let Some(&(oldest, _)) = taken.first() else {
                        assert!(p.wal_keep_from.is_empty(), "{now}: no backup yet");
                        continue;
                    };
                    assert!(p.deletes().all(|d| d.reasons == [REASON_BEYOND_COUNTS]), "{now}");
                    let wal = p.wal_keep_from.get(CLUSTER).copied();
                    // Every point of the window after the first backup (nothing restores an earlier one), hour by
                    // hour and at both ends.
                    let window_start = now - TimeDelta::days(policy.pitr_days.into());
                    let mut t = window_start.max(oldest);
                    while t < now {
                        assert!(restorable_at(&agent.catalog, wal, t), "{now}: {t} is not restorable");
                        t += TimeDelta::hours(1);
                    }
                    assert!(restorable_at(&agent.catalog, wal, now), "{now}");
                    out.max_span = out.max_span.max(wal_span(now, wal.expect("a floor, since a backup is kept")));

                    // The base from the full schedule (times are distinct and increasing), else the first backup.
                    let k = taken.iter().rposition(|(t, _)| *t <= window_start).unwrap_or(0);
                    let base = taken[k].1.as_str();
                    let after: Vec<&str> = taken[k + 1..].iter().map(|(_, id)| id.as_str()).collect();
                    let with = |reason: &str| -> Vec<&str> {
                        p.keeps().filter(|d| d.reasons.iter().any(|r| r == reason)).map(|d| d.id.as_str()).collect()
                    };
                    assert_eq!(with(REASON_PITR_BASE), [base], "{now}");
                    assert_eq!(with(REASON_PITR_WINDOW), after, "{now}");
                    let survivors: Vec<&str> = agent.catalog.iter().map(|b| b.id.as_str()).collect();
                    assert_eq!(survivors[..1], [base], "{now}");
                    assert_eq!(survivors[1..], after, "{now}");
                    if previous_base.as_deref().is_some_and(|b| b != base) {
                        out.advances += 1;
                    }
                    previous_base = Some(base.to_string());
                }
            }
            out
        }

        fn backup_duration() -> TimeDelta {
            TimeDelta::milliseconds(i64::try_from(WAL_PER_BACKUP).expect("small"))
        }

        /// The base moves to each day's backup in turn: day 0's is the base until the window start passes day 1's
        /// backup (on day 1 + pitr_days), and on the last day of 60 the base is day (59 - pitr_days)'s.
        fn advances_in_60_days(pitr_days: u32) -> usize {
            59 - usize::try_from(pitr_days).expect("small")
        }

        #[test]
        fn pitr_only_keeps_wal_for_the_window_plus_one_backup_interval() {
            let hourly: Vec<u32> = (0..24).map(|h| h * 60).collect();
            let every_5_minutes: Vec<u32> = (0..24 * 12).map(|k| k * 5).collect();
            for pitr_days in [1, 3] {
                let policy = Policy { daily: 0, monthly: 0, yearly: 0, pitr_days, ..Policy::default() };
                let window = TimeDelta::days(pitr_days.into());
                // (sweep minutes, how far beyond the window the longest WAL span reaches, from the base's 02:50 start).
                let cases: [(&[u32], TimeDelta); 4] = [
                    // Daily at 23:30: the base is the backup of the window start's day (03:00).
                    (&[23 * 60 + 30], TimeDelta::hours(20) + TimeDelta::minutes(40)),
                    // Daily right after the backup: the base ends exactly at the window start.
                    (&[3 * 60], TimeDelta::minutes(10)),
                    // Hourly: worst at 02:00, when the window start has not reached the next backup's 03:00 end yet
                    // and the base is the one a day before it.
                    (&hourly, TimeDelta::hours(23) + TimeDelta::minutes(10)),
                    // Every 5 minutes: worst at 02:55, 5 minutes under the bound.
                    (&every_5_minutes, TimeDelta::hours(24) + TimeDelta::minutes(5)),
                ];
                for (sweeps, beyond) in cases {
                    let out = sweep_daily_backups(&policy, |_| 3 * 60, sweeps, 60);
                    assert_eq!(out.max_gap, TimeDelta::days(1));
                    let bound = window + out.max_gap + backup_duration();
                    let what = format!("pitr_days {pitr_days}, {} sweeps a day", sweeps.len());
                    assert!(out.max_span <= bound, "{what}: WAL span {:?}", out.max_span);
                    assert_eq!(out.max_span, window + beyond, "{what}");
                    // Every backup but the first ends inside the window when first swept and, with daily=0, no count
                    // keeps it: without the window rule it would be deleted and the base never move.
                    assert_eq!(out.advances, advances_in_60_days(pitr_days), "{what}");
                }
            }
        }

        /// End of day n's backup: between 02:50 and 03:20, in a 7-day cycle that has 02:50 followed by 03:20 (the
        /// longest gap, 24:30) and 03:20 followed by 02:50 (the shortest, 23:30), and ends off the 10-minute grid.
        fn jittered_end_minute(n: u64) -> u32 {
            const OFFSETS: [u32; 7] = [0, 30, 17, 30, 0, 8, 23];
            2 * 60 + 50 + OFFSETS[usize::try_from(n % 7).expect("small")]
        }

        #[test]
        fn pitr_only_bound_holds_with_jittered_backup_times() {
            let every_10_minutes: Vec<u32> = (0..24 * 6).map(|k| k * 10).collect();
            for pitr_days in [1, 3] {
                let policy = Policy { daily: 0, monthly: 0, yearly: 0, pitr_days, ..Policy::default() };
                let window = TimeDelta::days(pitr_days.into());
                let out = sweep_daily_backups(&policy, jittered_end_minute, &every_10_minutes, 60);
                assert_eq!(out.max_gap, TimeDelta::hours(24) + TimeDelta::minutes(30));
                let bound = window + out.max_gap + backup_duration();
                assert!(out.max_span <= bound, "pitr_days {pitr_days}: WAL span {:?}", out.max_span);
                // Worst: a base ending at 02:50 (started 02:40) and the next backup at 03:20 the day after. The last
                // sweep before the window start reaches 03:20 is at 03:10, when the WAL reaches back to 02:40:
                // window + 24:30, 10 minutes under the bound.
                assert_eq!(
                    out.max_span,
                    window + TimeDelta::hours(24) + TimeDelta::minutes(30),
                    "pitr_days {pitr_days}"
                );
                assert_eq!(out.advances, advances_in_60_days(pitr_days), "pitr_days {pitr_days}");
            }
        }
    }
}
