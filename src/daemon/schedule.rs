//! The daemon's scheduler (one automatic backup a day at `backup.time_of_day` UTC, one
//! catch-up after downtime) and sweeper (applies the retention plan within the hour).

use std::time::Duration;

use chrono::{DateTime, NaiveTime, Utc};

use crate::catalog::backup::{self, BackupKind, BackupState};
use crate::catalog::cluster::{self, ClusterState};
use crate::catalog::policy;
use crate::config::Config;
use crate::repo::Repository;

/// The most recent daily slot at or before `now` (pure).
pub fn last_slot(now: DateTime<Utc>, hour: u32, minute: u32) -> DateTime<Utc> {
    let at = NaiveTime::from_hms_opt(hour, minute, 0).unwrap_or(NaiveTime::MIN);
    let today = now.date_naive().and_time(at).and_utc();
    if today <= now {
        today
    } else {
        today - chrono::Duration::days(1)
    }
}

/// Whether an automatic backup is due: none started since the last slot. After downtime
/// that is one catch-up, however many slots were missed (pure).
pub fn backup_due(now: DateTime<Utc>, hour: u32, minute: u32, last_automatic_start: Option<DateTime<Utc>>) -> bool {
    last_automatic_start.is_none_or(|t| t < last_slot(now, hour, minute))
}

async fn maybe_backup(cfg: &Config, repo: &Repository) -> anyhow::Result<Option<String>> {
    let Some((h, m)) = cfg.time_of_day() else { return Ok(None) };
    if cfg.backup.schedule != "daily" {
        return Ok(None);
    }
    if let Some(rec) = cluster::load(repo).await? {
        if rec.state == ClusterState::Deprovisioned || !rec.automatic_backups {
            return Ok(None);
        }
    }
    let last = backup::list(repo)
        .await?
        .into_iter()
        .filter(|b| b.kind == BackupKind::Automatic && b.state != BackupState::Purging)
        .filter_map(|b| DateTime::parse_from_rfc3339(&b.start_time).ok().map(|t| t.with_timezone(&Utc)))
        .max();
    if !backup_due(Utc::now(), h, m, last) {
        return Ok(None);
    }
    let made = crate::backup::create(cfg, repo, BackupKind::Automatic).await?;
    Ok(Some(made.id))
}

/// Runs forever: checks the schedule every minute and sweeps every hour.
pub async fn run(cfg: Config, repo: Repository) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    let mut last_sweep: Option<std::time::Instant> = None;
    let mut retry_after: Option<std::time::Instant> = None;
    loop {
        tick.tick().await;
        if retry_after.is_none_or(|t| std::time::Instant::now() >= t) {
            match maybe_backup(&cfg, &repo).await {
                Ok(Some(id)) => tracing::info!(backup = %id, "automatic backup completed"),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "automatic backup failed; retrying in 10 minutes");
                    retry_after = Some(std::time::Instant::now() + Duration::from_secs(600));
                }
            }
        }
        if last_sweep.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
            last_sweep = Some(std::time::Instant::now());
            let res = async {
                let pol = policy::load(&repo).await?;
                let plan = policy::plan_now(&repo, &pol, Utc::now()).await?;
                policy::apply(&repo, &plan).await
            }
            .await;
            match res {
                Ok(a) if !a.backups.is_empty() || a.wal_objects > 0 => {
                    tracing::info!(backups = ?a.backups, wal_objects = a.wal_objects, "retention applied")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = format!("{e:#}"), "retention sweep failed; retrying next hour"),
            }
        }
        // Cross-region copies trail the source by at most a tick plus the copy time.
        match crate::catalog::copies::sync_all(&cfg, &repo).await {
            Ok(done) => {
                for s in done.iter().filter(|s| s.objects + s.backups + s.purged + s.deleted > 0) {
                    tracing::info!(region = %s.region, objects = s.objects, backups = s.backups, snapshots = s.snapshots, purged = s.purged, "cross-region copy synced");
                }
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "cross-region copy failed; retrying in a minute"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn slots_and_catch_up() {
        assert_eq!(last_slot(t("2026-11-26T02:59:59Z"), 3, 0), t("2026-11-25T03:00:00Z"));
        assert_eq!(last_slot(t("2026-11-26T03:00:00Z"), 3, 0), t("2026-11-26T03:00:00Z"));
        // First run: due at once.
        assert!(backup_due(t("2026-11-26T01:00:00Z"), 3, 0, None));
        // Taken after today's slot: not due until tomorrow's.
        assert!(!backup_due(t("2026-11-26T23:00:00Z"), 3, 0, Some(t("2026-11-26T03:00:05Z"))));
        assert!(backup_due(t("2026-11-27T03:00:00Z"), 3, 0, Some(t("2026-11-26T03:00:05Z"))));
        // Down for five days: one catch-up, then nothing until the next slot.
        let now = t("2026-12-01T10:00:00Z");
        assert!(backup_due(now, 3, 0, Some(t("2026-11-26T03:00:05Z"))));
        assert!(!backup_due(now + chrono::Duration::minutes(5), 3, 0, Some(now)));
        assert!(!backup_due(t("2026-12-02T02:59:00Z"), 3, 0, Some(now)));
        assert!(backup_due(t("2026-12-02T03:00:00Z"), 3, 0, Some(now)));
    }
}
