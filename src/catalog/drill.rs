//! Restore drills: what one did (its record, stored at `clusters/<handle>/drills/<id>.json`),
//! and the pure choices behind it: which time to restore to, and when the next is due.

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc, Weekday};
use serde::{Deserialize, Serialize};

use crate::catalog::backup::time_format;
use crate::catalog::restore_plan::Window;
use crate::config::DrillSchedule;
use crate::repo::{RepoError, Repository};

/// Drill records kept; older ones are deleted when a drill is recorded.
pub const KEEP_RECORDS: usize = 100;

/// How long one phase took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// `plan`, `restore` (download or volumes), `replay` (WAL replay up to promotion),
    /// `checks` or `teardown`.
    pub name: String,
    /// Seconds.
    pub seconds: f64,
}

/// One check of the restored cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// `target reached`, `pg_amcheck` or `probe`.
    pub name: String,
    /// Passed.
    pub ok: bool,
    /// What was seen.
    pub detail: String,
}

/// What one drill did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    /// Drill id (sortable by start time).
    pub id: String,
    /// Cluster handle.
    pub cluster: String,
    /// When it began.
    #[serde(with = "time_format")]
    pub started_at: DateTime<Utc>,
    /// When it ended.
    #[serde(with = "time_format")]
    pub finished_at: DateTime<Utc>,
    /// Every phase completed and every check passed.
    pub ok: bool,
    /// `manual` (drill run) or `scheduled` (the daemon).
    pub trigger: String,
    /// The recovery target (`latest`, or a time).
    pub target: String,
    /// The backup restored (once planned).
    pub backup: Option<String>,
    /// Phases, in order, with their durations.
    pub phases: Vec<Phase>,
    /// Checks and their results.
    pub checks: Vec<Check>,
    /// Seconds from the start to a promoted cluster (plan + restore + replay): the
    /// recovery time this drill measured.
    pub restore_seconds: Option<f64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A drill id for a start time (with a random suffix: two drills in one second differ).
pub fn new_id(now: DateTime<Utc>) -> String {
    format!("{}-{}", now.format("%Y%m%dT%H%M%SZ"), hex::encode(rand::random::<[u8; 2]>()))
}

/// A recovery target inside `window` from a uniform draw `u` in [0, 1) (pure): a time in a
/// range that has commits after it, so recovery stops at it; `None` when no range has
/// commits after its start (then only `latest` can be drilled).
pub fn random_time(window: &Window, u: f64) -> Option<DateTime<Utc>> {
    let spans: Vec<(DateTime<Utc>, i64)> = window
        .ranges
        .iter()
        .filter_map(|r| {
            let to = r.to_time?;
            let us = (to - r.from_time).num_microseconds()?;
            (us > 0).then_some((r.from_time, us))
        })
        .collect();
    let total: i64 = spans.iter().map(|(_, us)| us).sum();
    if total <= 0 {
        return None;
    }
    // Strictly before the range's last commit: that commit is what recovery stops at.
    let mut at = ((u.clamp(0.0, 1.0) * total as f64) as i64).min(total - 1);
    for (from, us) in spans {
        if at < us {
            return Some(from + Duration::microseconds(at));
        }
        at -= us;
    }
    None
}

/// The latest scheduled drill time at or before `now` (pure); `None` when drills are off.
pub fn last_slot(
    schedule: DrillSchedule,
    weekday: Weekday,
    h: u32,
    m: u32,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let at_day = |d: chrono::NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(h, m, 0)?).into();
    let today: Option<DateTime<Utc>> = at_day(now.date_naive());
    let today = today?;
    match schedule {
        DrillSchedule::Off => None,
        DrillSchedule::Daily => Some(if today <= now { today } else { today - Duration::days(1) }),
        DrillSchedule::Weekly => {
            let back = (7 + now.weekday().num_days_from_monday() - weekday.num_days_from_monday()) % 7;
            let slot = today - Duration::days(i64::from(back));
            Some(if slot <= now { slot } else { slot - Duration::days(7) })
        }
    }
}

/// Whether a drill is due (pure): a slot has passed since the last drill began.
pub fn due(slot: Option<DateTime<Utc>>, last_started: Option<DateTime<Utc>>) -> bool {
    match (slot, last_started) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(s), Some(l)) => l < s,
    }
}

/// Stores a drill's record and drops the oldest beyond [`KEEP_RECORDS`].
pub async fn save(repo: &Repository, r: &DrillRecord) -> Result<(), RepoError> {
    repo.put_json(&repo.drill_key(&r.id), r).await?;
    let mut keys: Vec<String> = repo.store().list(&repo.drill_prefix()).await?.into_iter().map(|o| o.key).collect();
    keys.sort();
    if keys.len() > KEEP_RECORDS {
        for k in &keys[..keys.len() - KEEP_RECORDS] {
            repo.store().delete(k).await?;
        }
    }
    Ok(())
}

/// The newest drill record, if any drill has run.
pub async fn last(repo: &Repository) -> Result<Option<DrillRecord>, RepoError> {
    let keys = repo.store().list(&repo.drill_prefix()).await?;
    match keys.iter().map(|o| &o.key).filter(|k| k.ends_with(".json")).max() {
        Some(k) => repo.get_json(k).await,
        None => Ok(None),
    }
}

/// Every drill record of the repository's cluster, oldest first.
pub async fn list(repo: &Repository) -> Result<Vec<DrillRecord>, RepoError> {
    let mut keys: Vec<String> = repo.store().list(&repo.drill_prefix()).await?.into_iter().map(|o| o.key).collect();
    keys.sort();
    let mut out = Vec::new();
    for k in keys.iter().filter(|k| k.ends_with(".json")) {
        if let Some(r) = repo.get_json::<DrillRecord>(k).await? {
            out.push(r);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::restore_plan::Range;

    fn t(s: &str) -> DateTime<Utc> {
        time_format::parse(s).expect("time")
    }

    fn range(from: &str, to: Option<&str>) -> Range {
        Range {
            backup: "b".into(),
            from_time: t(from),
            to_time: to.map(t),
            from_lsn: crate::wal::name::Lsn(0),
            to_lsn: crate::wal::name::Lsn(0),
            last_segment: 0,
            broken: None,
            unsupported: None,
        }
    }

    #[test]
    fn random_times_fall_inside_a_range_before_its_last_commit() {
        let w = Window {
            ranges: vec![
                range("2026-12-01T00:00:00Z", Some("2026-12-01T00:00:10Z")),
                range("2026-12-02T00:00:00Z", None),
                range("2026-12-03T00:00:00Z", Some("2026-12-03T00:00:30Z")),
            ],
        };
        assert_eq!(random_time(&w, 0.0), Some(t("2026-12-01T00:00:00Z")));
        // 40 s in all: a quarter is 10 s, the first range's end, so it falls in the third.
        assert_eq!(random_time(&w, 0.25), Some(t("2026-12-03T00:00:00Z")));
        let last = random_time(&w, 1.0).unwrap();
        assert!(last < t("2026-12-03T00:00:30Z") && last > t("2026-12-03T00:00:29Z"), "{last}");
        for i in 0..100 {
            let x = random_time(&w, f64::from(i) / 100.0).unwrap();
            let inside = w.ranges.iter().any(|r| r.to_time.is_some_and(|to| x >= r.from_time && x < to));
            assert!(inside, "{x}");
        }
        // Ranges without commits after their start cannot be drilled by time.
        let w = Window {
            ranges: vec![
                range("2026-12-02T00:00:00Z", None),
                range("2026-12-03T00:00:00Z", Some("2026-12-03T00:00:00Z")),
            ],
        };
        assert_eq!(random_time(&w, 0.5), None);
        assert_eq!(random_time(&Window::default(), 0.5), None);
    }

    #[test]
    fn slots_follow_the_schedule() {
        let now = t("2026-12-02T05:00:00Z"); // a Wednesday
        assert_eq!(last_slot(DrillSchedule::Off, Weekday::Sun, 4, 0, now), None);
        assert_eq!(last_slot(DrillSchedule::Daily, Weekday::Sun, 4, 0, now), Some(t("2026-12-02T04:00:00Z")));
        assert_eq!(last_slot(DrillSchedule::Daily, Weekday::Sun, 6, 0, now), Some(t("2026-12-01T06:00:00Z")));
        assert_eq!(last_slot(DrillSchedule::Weekly, Weekday::Sun, 4, 0, now), Some(t("2026-11-29T04:00:00Z")));
        assert_eq!(last_slot(DrillSchedule::Weekly, Weekday::Wed, 4, 0, now), Some(t("2026-12-02T04:00:00Z")));
        assert_eq!(last_slot(DrillSchedule::Weekly, Weekday::Wed, 6, 0, now), Some(t("2026-11-25T06:00:00Z")));
        assert_eq!(last_slot(DrillSchedule::Weekly, Weekday::Thu, 4, 0, now), Some(t("2026-11-26T04:00:00Z")));
    }

    #[test]
    fn a_drill_is_due_once_per_slot() {
        let slot = Some(t("2026-12-02T04:00:00Z"));
        assert!(due(slot, None));
        assert!(due(slot, Some(t("2026-12-01T04:00:01Z"))));
        assert!(!due(slot, Some(t("2026-12-02T04:00:00Z"))));
        assert!(!due(slot, Some(t("2026-12-02T04:30:00Z"))));
        assert!(!due(None, None));
    }

    #[test]
    fn records_read_back() {
        let r = DrillRecord {
            id: new_id(t("2026-12-02T04:00:00Z")),
            cluster: "c".into(),
            started_at: t("2026-12-02T04:00:00Z"),
            finished_at: t("2026-12-02T04:01:00Z"),
            ok: false,
            trigger: "manual".into(),
            target: "latest".into(),
            backup: Some("20261202T030000Z".into()),
            phases: vec![Phase { name: "plan".into(), seconds: 0.5 }],
            checks: vec![Check { name: "probe".into(), ok: false, detail: "got 3, expected 4".into() }],
            restore_seconds: None,
            error: Some("probe failed".into()),
        };
        assert!(r.id.starts_with("20261202T040000Z-") && r.id.len() == "20261202T040000Z-".len() + 4);
        let back: DrillRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
