//! `tidemark status`: archiving lag, last archived segment, failures, last backup and its
//! age, next scheduled backup, restorable window, and the daemon's counters.

use std::time::Duration;

use chrono::{DateTime, NaiveTime, Utc};
use serde::Serialize;

use crate::catalog::backup::{self, BackupState};
use crate::config::Config;
use crate::daemon::control::{self, Request, Response, Stats};
use crate::pg::conn::Session;
use crate::repo::Repository;
use crate::restore::plan::rfc3339;
use crate::restore::Inputs;
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
    /// `ok`, or `critical` when something below is wrong.
    pub verdict: &'static str,
    /// What is wrong, each saying what to do.
    pub problems: Vec<String>,
}

/// What the gathered parts say is wrong with the archive's integrity (pure).
pub fn integrity_problems(daemon: Option<&Stats>, windows: &[(u32, crate::restore::plan::Window)]) -> Vec<String> {
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
        anyhow::Ok((cur, last, last_time, failed, last_failed))
    }
    .await;
    match res {
        Ok((cur, last, last_time, failed, last_failed)) => {
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
                error: None,
            }
        }
        Err(e) => Archiving { error: Some(format!("{e:#}")), ..Archiving::default() },
    }
}

/// Gathers the status; parts that cannot be read are reported, not fatal.
pub async fn gather(cfg: &Config, repo: &Repository) -> anyhow::Result<Status> {
    let seg_size = crate::wal::fetch::segment_size(repo).await?;
    let archiving = archiving(cfg, seg_size).await;
    let backups = backup::list(repo).await?;
    let last = backups.iter().rev().find(|m| m.state == BackupState::Completed);
    let now = Utc::now();
    let next_backup = match (cfg.backup.schedule.as_str(), cfg.time_of_day()) {
        ("daily", Some((h, m))) => Some(rfc3339(next_daily(now, h, m))),
        _ => None,
    };
    let inputs = Inputs::load(repo).await?;
    let windows = inputs.windows();
    let daemon = match control::call(&cfg.daemon.socket, &Request::Stats, Duration::from_secs(5)).await {
        Ok(Response::Stats(s)) => Some(*s),
        _ => None,
    };
    let problems = integrity_problems(daemon.as_ref(), &windows);
    Ok(Status {
        verdict: if problems.is_empty() { "ok" } else { "critical" },
        problems,
        cluster: repo.cluster().to_string(),
        repository: repo.store().describe(),
        archiving,
        last_backup: last.map(|m| m.id.clone()),
        last_backup_time: last.and_then(|m| m.stop_time.clone()),
        last_backup_age_seconds: last.and_then(|m| m.stop_at()).map(|t| (now - t).num_seconds()),
        next_backup,
        restorable_from: windows.iter().filter_map(|(_, w)| w.earliest()).min().map(rfc3339),
        restorable_to: windows.iter().filter_map(|(_, w)| w.latest()).max().map(rfc3339),
        daemon,
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
            "daemon:      {} stored, {} already archived, {} answered by read-ahead, {} failure(s), {} ready\n",
            d.stored, d.already_archived, d.served_from_read_ahead, d.failures, d.ready
        )),
        None => out.push_str("daemon:      not running (wal-push archives directly)\n"),
    }
    out.push_str(&format!("verdict:     {}\n", s.verdict));
    for p in &s.problems {
        out.push_str(&format!("  CRITICAL: {p}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_daily_is_strictly_after_now() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(next_daily(t("2026-11-26T02:00:00Z"), 3, 0), t("2026-11-26T03:00:00Z"));
        assert_eq!(next_daily(t("2026-11-26T03:00:00Z"), 3, 0), t("2026-11-27T03:00:00Z"));
        assert_eq!(next_daily(t("2026-12-31T23:59:00Z"), 0, 30), t("2027-01-01T00:30:00Z"));
    }
}
