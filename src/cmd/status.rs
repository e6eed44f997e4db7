//! `tidemark status`: archiving lag, last archived segment, failures, last backup and its
//! age, next scheduled backup, restorable window, and the daemon's counters.

use std::time::Duration;

use chrono::{DateTime, NaiveTime, Utc};
use serde::Serialize;

use crate::catalog::backup::BackupState;
use crate::catalog::restore_plan::rfc3339;
use crate::config::Config;
use crate::daemon::control::{self, Request, Response, Stats};
use crate::pg::conn::Session;
use crate::repo::Repository;
use crate::restore::Inputs;
use crate::snapshot::progress::human_bytes;
use crate::wal::name::Segment;

/// Archiving as PostgreSQL reports it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Archiving {
    /// Segment being written now.
    pub current_segment: Option<String>,
    /// Last segment archived.
    pub last_archived: Option<String>,
    /// When it was archived.
    pub last_archived_time: Option<String>,
    /// Segments written but not yet archived.
    pub lag_segments: Option<u64>,
    /// Seconds since the last archive when lagging (0 when caught up).
    pub lag_seconds: Option<i64>,
    /// archive_command failures since stats reset.
    pub failed_count: Option<i64>,
    /// Last failed segment.
    pub last_failed: Option<String>,
    /// True when the last attempt failed (the last failure is newer than the last success).
    #[serde(default)]
    pub failing: bool,
    /// Why PostgreSQL could not be asked, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The whole status.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Cluster handle.
    pub cluster: String,
    /// Repository.
    pub repository: String,
    /// Archiving.
    pub archiving: Archiving,
    /// Last completed backup id.
    pub last_backup: Option<String>,
    /// Its stop time.
    pub last_backup_time: Option<String>,
    /// Its age in seconds.
    pub last_backup_age_seconds: Option<i64>,
    /// Next automatic backup (UTC), when scheduled.
    pub next_backup: Option<String>,
    /// Earliest restorable time.
    pub restorable_from: Option<String>,
    /// Latest restorable time.
    pub restorable_to: Option<String>,
    /// Daemon counters, when a daemon answers.
    pub daemon: Option<Stats>,
    /// The last restore drill, when one has run.
    pub last_drill: Option<LastDrill>,
    /// The restorable window per timeline (for the bars on a terminal; JSON has the ends).
    #[serde(skip)]
    pub windows: Vec<(u32, crate::catalog::restore_plan::Window)>,
    /// `ok`, `warning` or `critical` (the worst of the problems).
    pub verdict: &'static str,
    /// What is wrong, each saying what to do.
    pub problems: Vec<Problem>,
}

/// The last restore drill, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LastDrill {
    /// Drill id.
    pub id: String,
    /// Passed.
    pub ok: bool,
    /// When it finished.
    pub finished_at: String,
    /// Seconds to a promoted cluster: the restore time it measured.
    pub restore_seconds: Option<f64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Needs attention soon.
    Warning,
    /// Point-in-time recovery is at risk now.
    Critical,
}

/// One thing `status` found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// How bad.
    pub severity: Severity,
    /// What and what to do.
    pub message: String,
}

/// Archive lag (seconds behind with completed segments waiting) that warns, and that is critical.
pub const LAG_WARNING_S: i64 = 600;
/// See [`LAG_WARNING_S`].
pub const LAG_CRITICAL_S: i64 = 3600;
/// Slack past the daily schedule before a missing backup warns (the backup itself takes time).
pub const BACKUP_GRACE_S: i64 = 3600;

/// The verdict over the gathered parts (pure): the worst severity, or `ok`.
pub fn assess(
    archiving: &Archiving,
    last_backup_age_s: Option<i64>,
    daily_schedule: bool,
    integrity: Vec<String>,
) -> (&'static str, Vec<Problem>) {
    let mut out: Vec<Problem> =
        integrity.into_iter().map(|message| Problem { severity: Severity::Critical, message }).collect();
    let mut add = |severity, message: String| out.push(Problem { severity, message });
    match &archiving.error {
        Some(e) => add(
            Severity::Critical,
            format!(
                "PostgreSQL cannot be asked about archiving ({e}): check postgres.conninfo and that the server is up"
            ),
        ),
        None => {
            if archiving.failing {
                add(
                    Severity::Critical,
                    format!(
                        "archive_command is failing (last failed {}): see the PostgreSQL log and `tidemark check`",
                        archiving.last_failed.as_deref().unwrap_or("-")
                    ),
                );
            }
            match archiving.lag_seconds {
                Some(s) if s > LAG_CRITICAL_S => add(
                    Severity::Critical,
                    format!("archiving is {s} s behind ({} segment(s) waiting)", archiving.lag_segments.unwrap_or(0)),
                ),
                Some(s) if s > LAG_WARNING_S => add(
                    Severity::Warning,
                    format!("archiving is {s} s behind ({} segment(s) waiting)", archiving.lag_segments.unwrap_or(0)),
                ),
                _ => {}
            }
        }
    }
    let day = 86_400;
    match last_backup_age_s {
        None => {
            add(Severity::Critical, "no completed backup: nothing is restorable; run `tidemark backup create`".into())
        }
        Some(a) if daily_schedule && a > 2 * day + BACKUP_GRACE_S => add(
            Severity::Critical,
            format!("the last completed backup is {} h old: automatic backups are not completing", a / 3600),
        ),
        Some(a) if daily_schedule && a > day + BACKUP_GRACE_S => {
            add(Severity::Warning, format!("the last completed backup is {} h old (daily schedule)", a / 3600))
        }
        _ => {}
    }
    let verdict = match out.iter().map(|p| p.severity).max() {
        None => "ok",
        Some(Severity::Warning) => "warning",
        Some(Severity::Critical) => "critical",
    };
    (verdict, out)
}

/// What the gathered parts say is wrong with the archive's integrity (pure).
pub fn integrity_problems(
    daemon: Option<&Stats>,
    windows: &[(u32, crate::catalog::restore_plan::Window)],
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(d) = daemon.filter(|d| d.other_history > 0) {
        out.push(format!(
            "this server's WAL is another history than the archive's ({} push(es) refused): {}",
            d.other_history,
            d.other_history_error.as_deref().unwrap_or("see the daemon log")
        ));
    }
    for (tli, w) in windows {
        for b in w.ranges.iter().filter_map(|r| r.broken) {
            out.push(format!(
                "timeline {tli}: {b}; run `tidemark verify` and find the second server archiving under this handle"
            ));
        }
    }
    out.dedup();
    out
}

/// The next daily run at `hh:mm` UTC strictly after `now` (pure).
pub fn next_daily(now: DateTime<Utc>, hour: u32, minute: u32) -> DateTime<Utc> {
    let at = NaiveTime::from_hms_opt(hour, minute, 0).unwrap_or(NaiveTime::MIN);
    let today = now.date_naive().and_time(at).and_utc();
    if today > now {
        today
    } else {
        today + chrono::Duration::days(1)
    }
}

async fn archiving(cfg: &Config, seg_size: u64) -> Archiving {
    let res = async {
        let s = Session::connect(&cfg.postgres.conninfo).await?;
        let cur = s.one("select pg_walfile_name(pg_current_wal_lsn())").await?;
        let last = s.one("select coalesce(last_archived_wal, '') from pg_stat_archiver").await?;
        let last_time = s.one("select coalesce(to_char(last_archived_time at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), '') from pg_stat_archiver").await?;
        let failed = s.one("select failed_count from pg_stat_archiver").await?;
        let last_failed = s.one("select coalesce(last_failed_wal, '') from pg_stat_archiver").await?;
        let failing = s
            .one("select coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) from pg_stat_archiver")
            .await?;
        anyhow::Ok((cur, last, last_time, failed, last_failed, failing == "t"))
    }
    .await;
    match res {
        Ok((cur, last, last_time, failed, last_failed, failing)) => {
            let cur_seg = Segment::parse(&cur, seg_size).ok();
            let last_seg = last.get(..24).and_then(|n| Segment::parse(n, seg_size).ok());
            // The current segment is still being written: lag counts completed ones only.
            let lag = match (cur_seg, last_seg) {
                (Some(c), Some(l)) => Some(c.number.saturating_sub(l.number + 1)),
                _ => None,
            };
            let last_t = DateTime::parse_from_rfc3339(&last_time).ok().map(|t| t.with_timezone(&Utc));
            let lag_seconds = match (lag, last_t) {
                (Some(0), _) => Some(0),
                (Some(_), Some(t)) => Some((Utc::now() - t).num_seconds()),
                _ => None,
            };
            Archiving {
                current_segment: Some(cur),
                last_archived: (!last.is_empty()).then_some(last),
                last_archived_time: last_t.map(rfc3339),
                lag_segments: lag,
                lag_seconds,
                failed_count: failed.parse().ok(),
                last_failed: (!last_failed.is_empty()).then_some(last_failed),
                failing,
                error: None,
            }
        }
        Err(e) => Archiving { error: Some(format!("{e:#}")), ..Archiving::default() },
    }
}

/// Gathers the status; parts that cannot be read are reported, not fatal.
pub async fn gather(cfg: &Config, repo: &Repository) -> anyhow::Result<Status> {
    let seg_size = crate::repo::cluster::segment_size(repo).await?;
    let archiving = archiving(cfg, seg_size).await;
    // The catalog is read once: the restore inputs hold the completed backups, oldest first.
    let inputs = Inputs::load(repo).await?;
    let last = inputs.backups.iter().rev().find(|m| m.state == BackupState::Completed);
    let now = Utc::now();
    let next_backup = match (cfg.backup.schedule, cfg.time_of_day()) {
        (crate::config::Schedule::Daily, Some((h, m))) => Some(rfc3339(next_daily(now, h, m))),
        _ => None,
    };
    let windows = inputs.windows();
    let daemon = match control::call(&cfg.daemon.socket, &Request::Stats, Duration::from_secs(5)).await {
        Ok(Response::Stats(s)) => Some(*s),
        _ => None,
    };
    let age = last.and_then(|m| m.stop_at()).map(|t| (now - t).num_seconds());
    let (mut verdict, mut problems) =
        assess(&archiving, age, next_backup.is_some(), integrity_problems(daemon.as_ref(), &windows));
    let last_drill = match crate::catalog::drill::last(repo).await {
        Ok(d) => d.map(|d| LastDrill {
            id: d.id,
            ok: d.ok,
            finished_at: crate::catalog::backup::time_format::to_string(&d.finished_at),
            restore_seconds: d.restore_seconds,
            error: d.error,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the last restore drill's record");
            None
        }
    };
    if let Some(d) = last_drill.as_ref().filter(|d| !d.ok) {
        problems.push(Problem {
            severity: Severity::Critical,
            message: format!(
                "the last restore drill ({}) FAILED: {}; restores may not work: see `tidemark drill list`, fix it, and run `tidemark drill run`",
                d.id,
                d.error.as_deref().unwrap_or("no reason recorded")
            ),
        });
        verdict = "critical";
    }
    Ok(Status {
        verdict,
        problems,
        cluster: repo.cluster().to_string(),
        repository: repo.store().describe(),
        archiving,
        last_backup: last.map(|m| m.id.clone()),
        last_backup_time: last.and_then(|m| m.stop_time.as_ref().map(crate::catalog::backup::time_format::to_string)),
        last_backup_age_seconds: age,
        next_backup,
        restorable_from: windows.iter().filter_map(|(_, w)| w.earliest()).min().map(rfc3339),
        restorable_to: windows.iter().filter_map(|(_, w)| w.latest()).max().map(rfc3339),
        daemon,
        last_drill,
        windows,
    })
}

/// Human-readable rendering.
pub fn render(s: &Status) -> String {
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut out = format!("cluster {} in {}\n", s.cluster, s.repository);
    let a = &s.archiving;
    match &a.error {
        Some(e) => out.push_str(&format!("archiving:   PostgreSQL not reachable: {e}\n")),
        None => out.push_str(&format!(
            "archiving:   last {} at {}; lag {} segment(s), {} s; {} failure(s){}\n",
            or(&a.last_archived),
            or(&a.last_archived_time),
            a.lag_segments.map_or("-".into(), |n| n.to_string()),
            a.lag_seconds.map_or("-".into(), |n| n.to_string()),
            a.failed_count.unwrap_or(0),
            a.last_failed.as_ref().map(|f| format!(" (last failed {f})")).unwrap_or_default()
        )),
    }
    out.push_str(&format!(
        "last backup: {} (stopped {}, {} ago)\n",
        or(&s.last_backup),
        or(&s.last_backup_time),
        s.last_backup_age_seconds.map_or("-".into(), |n| format!("{}h{:02}m", n / 3600, (n % 3600) / 60))
    ));
    out.push_str(&format!("next backup: {}\n", or(&s.next_backup)));
    out.push_str(&format!("restorable:  {} .. {}\n", or(&s.restorable_from), or(&s.restorable_to)));
    match &s.daemon {
        Some(d) => out.push_str(&format!(
            "daemon:      {} stored ({} plain, {} sealed), {} already archived, {} answered by read-ahead, {} failure(s), {} ready\n",
            d.stored,
            human_bytes(d.bytes_stored as f64),
            human_bytes(d.bytes_sealed as f64),
            d.already_archived,
            d.served_from_read_ahead,
            d.failures,
            d.ready
        )),
        None => out.push_str("daemon:      not running (wal-push archives directly)\n"),
    }
    if let Some(d) = &s.last_drill {
        out.push_str(&format!(
            "last drill:  {} {} at {}{}\n",
            d.id,
            if d.ok { "passed" } else { "FAILED" },
            d.finished_at,
            d.restore_seconds.map(|r| format!(", restored to a promoted cluster in {r:.0} s")).unwrap_or_default()
        ));
    }
    out.push_str(&format!("verdict:     {}\n", s.verdict));
    for p in &s.problems {
        let tag = match p.severity {
            Severity::Warning => "WARNING",
            Severity::Critical => "CRITICAL",
        };
        out.push_str(&format!("  {tag}: {}\n", p.message));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Archiving {
        Archiving { lag_segments: Some(0), lag_seconds: Some(0), failed_count: Some(0), ..Archiving::default() }
    }

    #[test]
    fn verdicts_from_each_part() {
        let h = 3600;
        assert_eq!(assess(&healthy(), Some(h), true, vec![]), ("ok", vec![]));
        // PostgreSQL down, archiving failing, lag, old or missing backups, integrity.
        let down = Archiving { error: Some("connection refused".into()), ..Archiving::default() };
        let (v, p) = assess(&down, Some(h), true, vec![]);
        assert_eq!((v, p[0].message.contains("connection refused")), ("critical", true));
        let failing = Archiving { failing: true, last_failed: Some("000000010000000000000007".into()), ..healthy() };
        let (v, p) = assess(&failing, Some(h), true, vec![]);
        assert_eq!((v, p[0].message.contains("000000010000000000000007")), ("critical", true));
        let lag = |s| Archiving { lag_seconds: Some(s), lag_segments: Some(3), ..healthy() };
        assert_eq!(assess(&lag(LAG_WARNING_S), Some(h), true, vec![]).0, "ok");
        assert_eq!(assess(&lag(LAG_WARNING_S + 1), Some(h), true, vec![]).0, "warning");
        assert_eq!(assess(&lag(LAG_CRITICAL_S + 1), Some(h), true, vec![]).0, "critical");
        assert_eq!(assess(&healthy(), None, true, vec![]).0, "critical");
        assert_eq!(assess(&healthy(), Some(26 * h), true, vec![]).0, "warning");
        assert_eq!(assess(&healthy(), Some(26 * h), false, vec![]).0, "ok", "no schedule: age alone is fine");
        assert_eq!(assess(&healthy(), Some(50 * h), true, vec![]).0, "critical");
        let (v, p) = assess(&lag(LAG_WARNING_S + 1), Some(h), true, vec!["two histories".into()]);
        assert_eq!((v, p.len()), ("critical", 2), "the worst severity wins");
    }

    #[test]
    fn next_daily_is_strictly_after_now() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(next_daily(t("2026-11-26T02:00:00Z"), 3, 0), t("2026-11-26T03:00:00Z"));
        assert_eq!(next_daily(t("2026-11-26T03:00:00Z"), 3, 0), t("2026-11-27T03:00:00Z"));
        assert_eq!(next_daily(t("2026-12-31T23:59:00Z"), 0, 30), t("2027-01-01T00:30:00Z"));
    }
}
