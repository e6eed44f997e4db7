//! The daemon's scheduler (one automatic backup a day at `backup.time_of_day` UTC, one
//! catch-up after downtime, failed attempts retried with backoff inside the slot) and
//! sweeper (marks abandoned backups failed, removes store leftovers, applies the retention
//! plan within the hour).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveTime, Utc};

use crate::catalog::backup::{self, BackupKind, BackupState, Manifest};
use crate::config::Config;
use crate::daemon::metrics::Observed;
use crate::repo::cluster::{self, ClusterState};
use crate::repo::Repository;
use crate::sweep as policy;

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

/// Whether an automatic backup is due: none that holds its slot (see [`holds_slot`]) started
/// since the last slot. After downtime that is one catch-up, however many slots were missed
/// (pure).
pub fn backup_due(now: DateTime<Utc>, hour: u32, minute: u32, last_automatic_start: Option<DateTime<Utc>>) -> bool {
    last_automatic_start.is_none_or(|t| t < last_slot(now, hour, minute))
}

/// Whether backup `m` holds its daily slot: an automatic backup that completed, or that is
/// running with a live lease. A failed or abandoned one does not, so the slot is retried
/// (pure; `holder_gone` as for [`backup::stale_reason`]).
pub fn holds_slot(m: &Manifest, now: DateTime<Utc>, stale_limit: Duration, holder_gone: bool) -> bool {
    m.kind == BackupKind::Automatic
        && match m.state {
            BackupState::Completed => true,
            BackupState::Running => backup::stale_reason(m, now, stale_limit, holder_gone).is_none(),
            BackupState::Failed | BackupState::Purging => false,
        }
}

/// Whether the catch-up a daemon start would take is deferred to the next slot: the cluster
/// has a completed backup (of any kind) that stopped within the last day, so a backup right
/// now would only duplicate it (pure).
pub fn defer_start_catch_up(now: DateTime<Utc>, last_completed_stop: Option<DateTime<Utc>>) -> bool {
    last_completed_stop.is_some_and(|t| now - t < chrono::Duration::days(1))
}

/// The daemon's backups, scheduled and requested: one at a time (the lease check in
/// `backup::create` keeps other processes' backups from overlapping too).
pub type OneBackup = std::sync::Arc<tokio::sync::Mutex<()>>;

/// Starts a manual backup in the daemon, on the scheduled backups' code path; answers with
/// its id once it is recorded as running, or with why it could not start (another backup
/// running, PostgreSQL unreachable, ...). The backup goes on after the answer.
pub async fn start_manual(
    cfg: &Config,
    repo: &Repository,
    one: &OneBackup,
    observed: &Arc<Observed>,
    level: crate::backup::Level,
) -> Result<String, String> {
    let Ok(guard) = one.clone().try_lock_owned() else {
        return Err(
            "the daemon is taking a backup right now; two backups never run at once: wait until `tidemark backup list` shows it completed, then try again"
                .to_string(),
        );
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (cfg, repo, observed) = (cfg.clone(), repo.clone(), observed.clone());
    let task = tokio::spawn(async move {
        let _held = guard;
        let res = crate::backup::create_notifying(&cfg, &repo, BackupKind::Manual, level, tx).await;
        match &res {
            Ok(m) => {
                observed.backup_completed(m);
                tracing::info!(backup = %m.id, "manual backup completed")
            }
            Err(e) => {
                observed.backup_failed(BackupKind::Manual);
                tracing::warn!(error = format!("{e:#}"), "manual backup failed")
            }
        }
        res
    });
    match rx.await {
        Ok(id) => Ok(id),
        // Dropped unsent: the backup ended before it was recorded; its error says why.
        Err(_) => match task.await {
            Ok(Err(e)) => Err(format!("{e:#}")),
            Ok(Ok(m)) => Ok(m.id),
            Err(e) => Err(format!("the backup task failed: {e}")),
        },
    }
}

/// Longest wait between attempts.
pub const MAX_RETRY_MINUTES: u32 = 30;

/// How long to wait after `failures` failed attempts in a row: 1, 2, 4, 8, 16, then 30
/// minutes (pure; `minute` is 60 s outside tests).
pub fn retry_delay(failures: u32, minute: Duration) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let minutes = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX).min(MAX_RETRY_MINUTES);
    minute * minutes
}

/// The scheduler's retry state within one slot (pure).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retry {
    /// Failed attempts in a row in `slot`.
    pub failures: u32,
    /// The slot they were in.
    pub slot: Option<DateTime<Utc>>,
    /// No attempt before this.
    pub not_before: Option<DateTime<Utc>>,
}

impl Retry {
    /// Whether an attempt may run at `now` in `slot` (a new slot starts afresh).
    pub fn may_try(&self, now: DateTime<Utc>, slot: DateTime<Utc>) -> bool {
        self.slot != Some(slot) || self.not_before.is_none_or(|t| now >= t)
    }

    /// Records a failed attempt at `now` in `slot`; returns the wait before the next one.
    pub fn failed(&mut self, now: DateTime<Utc>, slot: DateTime<Utc>, minute: Duration) -> Duration {
        if self.slot != Some(slot) {
            self.failures = 0;
        }
        self.slot = Some(slot);
        self.failures = self.failures.saturating_add(1);
        let wait = retry_delay(self.failures, minute);
        self.not_before = Some(now + chrono::TimeDelta::from_std(wait).unwrap_or(chrono::TimeDelta::MAX));
        wait
    }
}

/// What one scheduler check decided.
enum Decision {
    /// Nothing to do.
    Nothing,
    /// The catch-up at start was deferred to the next slot.
    Deferred,
    /// A backup is due now.
    Due,
    /// A backup was taken.
    Took(Box<Manifest>),
}

async fn maybe_backup(
    cfg: &Config,
    repo: &Repository,
    one: &OneBackup,
    now: DateTime<Utc>,
    at_start: bool,
    observed: &Observed,
) -> anyhow::Result<Decision> {
    Ok(match due_backup(cfg, repo, now, at_start).await? {
        Decision::Due => {
            // A requested backup running in the daemon: the next tick checks again.
            let Ok(_held) = one.try_lock() else { return Ok(Decision::Nothing) };
            match crate::backup::create(cfg, repo, BackupKind::Automatic).await {
                Ok(m) => Decision::Took(Box::new(m)),
                Err(e) => {
                    observed.backup_failed(BackupKind::Automatic);
                    return Err(e);
                }
            }
        }
        d => d,
    })
}

/// Whether a backup is due now, deferred, or not due.
async fn due_backup(cfg: &Config, repo: &Repository, now: DateTime<Utc>, at_start: bool) -> anyhow::Result<Decision> {
    let Some((h, m)) = cfg.time_of_day() else { return Ok(Decision::Nothing) };
    if cfg.backup.schedule != crate::config::Schedule::Daily {
        return Ok(Decision::Nothing);
    }
    if let Some(rec) = cluster::load(repo).await? {
        if rec.state == ClusterState::Deprovisioned || !rec.automatic_backups {
            return Ok(Decision::Nothing);
        }
    }
    let limit = backup::stale_limit();
    let all = backup::list_records(repo).await?;
    let last = all
        .iter()
        .filter(|b| holds_slot(b, now, limit, b.lease.as_ref().is_some_and(backup::holder_gone)))
        .map(|b| b.start_time)
        .max();
    if !backup_due(now, h, m, last) {
        return Ok(Decision::Nothing);
    }
    let recent = all.iter().filter(|b| b.state == BackupState::Completed).filter_map(|b| b.stop_at()).max();
    if at_start && defer_start_catch_up(now, recent) {
        return Ok(Decision::Deferred);
    }
    Ok(Decision::Due)
}

async fn sweep_and_apply(repo: &Repository) -> anyhow::Result<()> {
    let swept = policy::sweep(repo, Utc::now()).await?;
    if !swept.is_empty() {
        tracing::info!(failed = ?swept.failed, temp_files = swept.leftovers.temp_files, dirs = swept.leftovers.dirs, uploads = swept.leftovers.uploads, "swept abandoned backups and store leftovers");
    }
    let pol = policy::load(repo).await?;
    let plan = policy::plan_now(repo, &pol, Utc::now()).await?;
    let a = policy::apply(repo, &plan).await?;
    if !a.backups.is_empty() || a.wal_objects > 0 {
        tracing::info!(backups = ?a.backups, wal_objects = a.wal_objects, "retention applied");
    }
    // Once an hour: says the sweep ran (and when it last did) even when it found nothing.
    tracing::info!(backups_purged = a.backups.len(), wal_objects_purged = a.wal_objects, "retention sweep done");
    Ok(())
}

/// Starts the daemon's periodic work as separate tasks, so that none waits on another (an
/// EBS backup waiting hours for its snapshots stalls neither purges nor copies): the
/// backup schedule, the metrics' catalog refresh, the retention sweep, the index roll-up,
/// the restore drills and the cross-region copies.
pub fn spawn(
    cfg: Config,
    repo: Repository,
    one: OneBackup,
    observed: Arc<Observed>,
) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        tokio::spawn(run_backups(cfg.clone(), repo.clone(), one, observed.clone())),
        tokio::spawn(run_observe(repo.clone(), observed.clone())),
        tokio::spawn(run_sweeps(repo.clone())),
        tokio::spawn(run_roll_ups(repo.clone())),
        tokio::spawn(run_drills(cfg.clone(), repo.clone(), observed)),
        tokio::spawn(run_relation_names(cfg.clone(), repo.clone())),
        tokio::spawn(run_copies(cfg, repo)),
    ]
}

/// Refreshes the relation-name map from the live database every minute, so that `find`
/// can name a table after it is dropped (the WAL names only its file).
async fn run_relation_names(cfg: Config, repo: Repository) {
    let mut tick = every(backup::timer_minute());
    let mut failing = false;
    loop {
        tick.tick().await;
        match crate::catalog::relnames::refresh(&repo, &cfg.postgres.conninfo).await {
            Ok((map, _)) => {
                if failing {
                    tracing::info!(files = map.files.len(), "relation names refreshed again");
                }
                failing = false;
            }
            // PostgreSQL down is not news every minute: said once until it works again.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %format!("{e:#}"), "cannot refresh the relation names `find` uses; retrying every minute");
            }
            Err(_) => {}
        }
    }
}

/// Runs the restore drill `[drill]` schedules, once per slot (a failed drill is recorded
/// and waits for the next slot: its record turns `status` critical meanwhile).
async fn run_drills(cfg: Config, repo: Repository, observed: Arc<Observed>) {
    let (Some((h, m)), Some(day)) = (cfg.drill.time_of_day(), cfg.drill.weekday()) else { return };
    if cfg.drill.schedule == crate::config::DrillSchedule::Off {
        return;
    }
    let mut tick = every(backup::timer_minute());
    loop {
        tick.tick().await;
        let now = Utc::now();
        let slot = crate::catalog::drill::last_slot(cfg.drill.schedule, day, h, m, now);
        let last = match crate::drill::last_started(&repo).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot list the restore drills; retrying next minute");
                continue;
            }
        };
        if !crate::catalog::drill::due(slot, last) {
            continue;
        }
        let opts = crate::drill::Options {
            target: cfg.drill.target,
            keep: false,
            trigger: "scheduled",
            config_path: cfg.source.clone(),
            exe: None,
        };
        match crate::drill::run(&cfg, &repo, &opts).await {
            Ok(rec) => observed.drills(std::slice::from_ref(&rec)),
            // Not even recorded: the next minute tries again.
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "restore drill could not run"),
        }
    }
}

/// A timer of `period` whose late ticks are not made up in a burst.
fn every(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Checks the schedule every minute, retrying a failed automatic backup with backoff
/// inside its slot.
async fn run_backups(cfg: Config, repo: Repository, one: OneBackup, observed: Arc<Observed>) {
    let minute = backup::timer_minute();
    let mut tick = every(minute);
    let mut retry = Retry::default();
    // The slot whose catch-up at start was deferred: its backup waits for the next slot.
    let mut deferred: Option<DateTime<Utc>> = None;
    let mut at_start = true;
    loop {
        tick.tick().await;
        let now = Utc::now();
        let slot = cfg.time_of_day().map(|(h, m)| last_slot(now, h, m));
        if let Some(slot) = slot.filter(|&s| retry.may_try(now, s) && deferred != Some(s)) {
            match maybe_backup(&cfg, &repo, &one, now, at_start, &observed).await {
                Ok(Decision::Took(m)) => {
                    observed.backup_completed(&m);
                    tracing::info!(backup = %m.id, "automatic backup completed");
                    retry = Retry::default();
                }
                Ok(Decision::Deferred) => {
                    deferred = Some(slot);
                    let next = slot + chrono::Duration::days(1);
                    tracing::info!(next = %next.to_rfc3339(), "a backup completed within the last day: the automatic backup waits for its next scheduled time");
                }
                Ok(Decision::Nothing | Decision::Due) => {}
                Err(e) => {
                    let wait = retry.failed(Utc::now(), slot, minute);
                    tracing::warn!(
                        error = format!("{e:#}"),
                        attempt = retry.failures,
                        retry_in_s = wait.as_secs_f64(),
                        "automatic backup failed; retrying with backoff"
                    );
                }
            }
        }
        at_start = false;
    }
}

/// Keeps the metrics' view of the catalog fresh: the completed backups (any process's) and
/// the restorable window, read at the roll-up's cadence and right after the daemon's own
/// backups (what `window` reads: the catalog and the rolled-up index, never a whole listing).
async fn run_observe(repo: Repository, observed: Arc<Observed>) {
    let mut tick = every(backup::timer_minute());
    // Every drill record once (for the last success), then the newest at each tick (drills
    // run by `tidemark drill run` elsewhere show up too).
    match crate::catalog::drill::list(&repo).await {
        Ok(all) => observed.drills(&all),
        Err(e) => tracing::debug!(error = %e, "cannot read the drill records for the metrics"),
    }
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = observed.changed.notified() => {}
        }
        match crate::restore::Inputs::load(&repo).await {
            Ok(inputs) => {
                observed.catalog(&inputs.backups, &inputs.windows());
                if let Ok(Some(last)) = crate::catalog::drill::last(&repo).await {
                    observed.drills(std::slice::from_ref(&last));
                }
            }
            Err(e) => tracing::debug!(
                error = format!("{e:#}"),
                "cannot read the catalog for the metrics; retrying in a minute"
            ),
        }
    }
}

/// Applies retention at start and then every hour (sixty of the test-scalable minutes).
async fn run_sweeps(repo: Repository) {
    let mut tick = every(backup::timer_minute() * 60);
    loop {
        tick.tick().await;
        if let Err(e) = sweep_and_apply(&repo).await {
            tracing::warn!(error = format!("{e:#}"), "retention sweep failed; retrying next hour");
        }
    }
}

/// Keeps the commit-time index rolled up, so reading it costs what changed lately.
async fn run_roll_ups(repo: Repository) {
    let mut tick = every(backup::timer_minute());
    loop {
        tick.tick().await;
        match crate::catalog::wal_index::roll_up_all(&repo, false).await {
            Ok(done) => {
                for (tli, d) in done.iter().filter(|(_, d)| d.blocks > 0) {
                    tracing::info!(
                        timeline = tli,
                        blocks = d.blocks,
                        summarized = d.summarized,
                        folded = d.folded,
                        "wal index rolled up"
                    );
                }
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "wal index roll-up failed; retrying in a minute"),
        }
    }
}

/// Cross-region copies trail the source by at most a minute plus the copy time.
async fn run_copies(cfg: Config, repo: Repository) {
    let mut tick = every(backup::timer_minute());
    let mut marks = crate::copy::Marks::default();
    loop {
        tick.tick().await;
        match crate::copy::sync_all_marked(&cfg, &repo, &mut marks).await {
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
    fn a_start_after_a_recent_backup_waits_for_the_slot() {
        let now = t("2026-12-01T10:00:00Z");
        assert!(!defer_start_catch_up(now, None), "never backed up: at once");
        assert!(defer_start_catch_up(now, Some(t("2026-12-01T09:00:00Z"))));
        assert!(defer_start_catch_up(now, Some(t("2026-11-30T10:00:01Z"))));
        assert!(!defer_start_catch_up(now, Some(t("2026-11-30T10:00:00Z"))), "a day old: catch up");
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

    #[test]
    fn only_completed_or_live_automatic_backups_hold_the_slot() {
        use crate::catalog::backup::tests::old_manifest;
        let limit = Duration::from_secs(150);
        let now = t("2026-11-26T03:01:00Z");
        let at = "2026-11-26T03:00:00Z";
        assert!(holds_slot(&old_manifest("automatic", "completed", at), now, limit, false));
        assert!(!holds_slot(&old_manifest("automatic", "failed", at), now, limit, false));
        assert!(!holds_slot(&old_manifest("automatic", "purging", at), now, limit, false));
        assert!(!holds_slot(&old_manifest("manual", "completed", at), now, limit, false));
        // Running: while its lease is live (here: young, no lease), not once abandoned.
        let running = old_manifest("automatic", "running", at);
        assert!(holds_slot(&running, now, limit, false));
        assert!(!holds_slot(&running, t("2026-11-26T03:10:00Z"), limit, false));
        let mut leased = running.clone();
        leased.lease = Some(backup::Lease {
            host: "h".into(),
            pid: 1,
            token: "t".into(),
            heartbeat_at: Some(t("2026-11-26T03:09:00Z")),
        });
        assert!(holds_slot(&leased, t("2026-11-26T03:10:00Z"), limit, false));
        assert!(!holds_slot(&leased, t("2026-11-26T03:10:00Z"), limit, true));
        // A failed attempt after the slot leaves the slot due.
        let last =
            [old_manifest("automatic", "failed", at), old_manifest("automatic", "completed", "2026-11-25T03:00:00Z")]
                .iter()
                .filter(|m| holds_slot(m, now, limit, false))
                .map(|m| m.start_time)
                .max();
        assert!(backup_due(now, 3, 0, last));
    }

    #[test]
    fn backoff_doubles_to_thirty_minutes() {
        let min = Duration::from_secs(60);
        let got: Vec<u64> = (0..9).map(|n| retry_delay(n, min).as_secs() / 60).collect();
        assert_eq!(got, [0, 1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry_delay(u32::MAX, min), min * 30);
        assert_eq!(retry_delay(3, Duration::from_millis(100)), Duration::from_millis(400));
    }

    #[test]
    fn retries_back_off_inside_a_slot_and_start_afresh_in_the_next() {
        let min = Duration::from_secs(60);
        let slot = t("2026-11-26T03:00:00Z");
        let mut r = Retry::default();
        let now = t("2026-11-26T03:00:10Z");
        assert!(r.may_try(now, slot));
        assert_eq!(r.failed(now, slot, min), min);
        assert!(!r.may_try(now + chrono::Duration::seconds(59), slot));
        let now = now + chrono::Duration::seconds(60);
        assert!(r.may_try(now, slot));
        assert_eq!(r.failed(now, slot, min), min * 2);
        assert_eq!(r.failed(now, slot, min), min * 4);
        assert!(!r.may_try(now + chrono::Duration::minutes(3), slot));
        // The next day's slot is tried at once, and its backoff starts at one minute.
        let next = t("2026-11-27T03:00:00Z");
        assert!(r.may_try(now + chrono::Duration::minutes(3), next));
        assert_eq!(r.failed(next, next, min), min);
        assert_eq!(r.failures, 1);
    }
}
