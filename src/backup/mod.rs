//! The backup flow: pg_backup_start on a held session → provider captures → pg_backup_stop →
//! manifest → WAL up to the stop LSN archived → completed.

pub mod incremental;
pub mod lifecycle;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::catalog::backup::{self, BackupKind, BackupState, Manifest, Tablespace};
use crate::config::Config;
use crate::pg::conn::{Session, StopResult};
use crate::repo::cluster;
use crate::repo::Repository;
use crate::snapshot::ebs::freeze::{self, Freezer};
use crate::snapshot::files::Changes;
use crate::snapshot::{Capture, Captured};
use crate::wal::name::{Lsn, Segment, WalFile};
pub use incremental::Level;

/// The timeline in a backup_label ("START TIMELINE: 1").
pub fn label_timeline(label: &str) -> Option<u32> {
    label.lines().find_map(|l| l.strip_prefix("START TIMELINE:")).and_then(|v| v.trim().parse().ok())
}

/// Waits until every segment from `start` through the one holding the byte before `stop`
/// is in the archive.
pub async fn wait_for_wal(
    repo: &Repository,
    timeline: u32,
    start: Lsn,
    stop: Lsn,
    seg_size: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    let first = Segment::containing(timeline, start, seg_size);
    let last = Segment::containing(timeline, Lsn(stop.0.saturating_sub(1).max(start.0)), seg_size);
    let began = Instant::now();
    let mut next = first;
    // Short first waits: the archiver is usually pushing the last segment right now.
    let mut delay = Duration::from_millis(10);
    while next <= last {
        let key = repo.wal_key(&WalFile::Segment(next), seg_size);
        if repo.store().head(&key).await?.is_some() {
            next = next.next();
            continue;
        }
        if began.elapsed() > limit {
            bail!(
                "WAL segment {} is not in the archive after {limit:?}: check archive_command = 'tidemark wal-push %p' and pg_stat_archiver",
                next.name(seg_size)
            );
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 3 / 2).min(Duration::from_secs(2));
    }
    Ok(())
}

use crate::catalog::backup::time_format::now;

/// Takes a backup of the configured cluster: automatic ones as `backup.incremental` says,
/// others full.
pub async fn create(cfg: &Config, repo: &Repository, kind: BackupKind) -> anyhow::Result<Manifest> {
    let level = if kind == BackupKind::Automatic { Level::Configured } else { Level::Full };
    create_inner(cfg, repo, kind, level, None, None).await
}

/// Takes a backup at `level` (`backup create --incremental`).
pub async fn create_at(cfg: &Config, repo: &Repository, kind: BackupKind, level: Level) -> anyhow::Result<Manifest> {
    create_inner(cfg, repo, kind, level, None, None).await
}

/// Keeps a running backup's lease fresh: rewrites its (running) manifest with a new
/// `heartbeat_at` every interval until stopped. Stops claiming it if the record is no longer
/// this process's running backup (a sweep took it for abandoned).
struct Heartbeat {
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    lost: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        // A backup future dropped midway (daemon shutdown) must not keep its lease alive.
        let _ = self.stop.send(true);
    }
}

impl Heartbeat {
    fn start(repo: &Repository, running: &Manifest, every: Duration) -> Heartbeat {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (repo, mut m, lost2) = (repo.clone(), running.clone(), lost.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => break,
                }
                // The save below runs to the end even when stop is asked meanwhile, so no
                // heartbeat lands after the final record.
                let Some(mine) = m.lease.clone() else { break };
                match backup::load(&repo, &m.id).await {
                    Ok(Some(cur)) if backup::still_held(&cur, &mine) => {}
                    Ok(_) => {
                        tracing::warn!(backup = %m.id, "the running backup's record was taken over (marked failed or purged); its heartbeat stops");
                        lost2.store(true, std::sync::atomic::Ordering::SeqCst);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(backup = %m.id, error = %format!("{e:#}"), "backup heartbeat: could not read the record; retrying");
                        continue;
                    }
                }
                if let Some(l) = m.lease.as_mut() {
                    l.heartbeat_at = Some(now());
                }
                if let Err(e) = backup::save(&repo, &m).await {
                    tracing::warn!(backup = %m.id, error = %format!("{e:#}"), "backup heartbeat failed; retrying");
                }
            }
        });
        Heartbeat { stop, task: Some(task), lost }
    }

    /// Stops it; true when the record was taken over while running.
    async fn stop(mut self) -> bool {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            if let Err(e) = t.await {
                tracing::warn!(error = %e, "backup heartbeat task ended abnormally");
            }
        }
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Whether the stored record is still this running backup (a read error says yes: the
/// final write then goes ahead as before leases).
async fn still_ours(repo: &Repository, m: &Manifest) -> bool {
    let Some(lease) = &m.lease else { return true };
    match backup::load(repo, &m.id).await {
        Ok(Some(cur)) => backup::still_held(&cur, lease),
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(backup = %m.id, error = %format!("{e:#}"), "could not re-read the backup's record before finishing it");
            true
        }
    }
}

/// The sweep every backup runs first (abandoned backups marked failed, store leftovers
/// removed); a failure only warns, the backup goes ahead.
async fn sweep_first(repo: &Repository) {
    match crate::sweep::sweep(repo, chrono::Utc::now()).await {
        Ok(s) if !s.is_empty() => {
            tracing::info!(failed = ?s.failed, temp_files = s.leftovers.temp_files, dirs = s.leftovers.dirs, uploads = s.leftovers.uploads, "swept")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "sweep before the backup failed; going ahead"),
    }
}

/// `create`, telling `started` the backup's id as soon as it is recorded as running (the
/// daemon answers a `backup create` without `--wait` then). A backup that fails before that
/// drops `started` unsent; the error is the result.
pub async fn create_notifying(
    cfg: &Config,
    repo: &Repository,
    kind: BackupKind,
    level: Level,
    started: tokio::sync::oneshot::Sender<String>,
) -> anyhow::Result<Manifest> {
    create_inner(cfg, repo, kind, level, None, Some(started)).await
}

/// `create` with the freeze seam given (tests); `None` uses the freeze-guard process.
pub async fn create_with(
    cfg: &Config,
    repo: &Repository,
    kind: BackupKind,
    freezer: Option<&dyn Freezer>,
) -> anyhow::Result<Manifest> {
    create_inner(cfg, repo, kind, Level::Full, freezer, None).await
}

/// A backup of this cluster that is running with a live lease (after the sweep marked the
/// abandoned ones failed), if any: two backups never run at once.
async fn running_backup(repo: &Repository) -> anyhow::Result<Option<Manifest>> {
    let now = chrono::Utc::now();
    Ok(backup::list(repo).await?.into_iter().find(|m| {
        m.state == BackupState::Running
            && backup::stale_reason(m, now, backup::stale_limit(), m.lease.as_ref().is_some_and(backup::holder_gone))
                .is_none()
    }))
}

async fn create_inner(
    cfg: &Config,
    repo: &Repository,
    kind: BackupKind,
    level: Level,
    freezer: Option<&dyn Freezer>,
    started: Option<tokio::sync::oneshot::Sender<String>>,
) -> anyhow::Result<Manifest> {
    sweep_first(repo).await;
    if let Some(r) = running_backup(repo).await? {
        let by = r.lease.as_ref().map(|l| {
            format!(
                " by {} pid {}, alive at {}",
                l.host,
                l.pid,
                l.heartbeat_at.map_or_else(|| "an unknown time".into(), |t| backup::time_format::to_string(&t))
            )
        });
        bail!(
            "backup {} of cluster {} is already running (started {}{}); two backups never run at once: wait until `tidemark backup list` shows it completed, then try again",
            r.id,
            repo.cluster(),
            r.start_time,
            by.unwrap_or_default()
        );
    }
    let session = Session::connect(&cfg.postgres.conninfo).await?;
    let info = session.info().await?;
    if info.archive_mode == "off" {
        bail!("archive_mode is off: a backup is only restorable with its WAL archived; set archive_mode = on and archive_command = 'tidemark wal-push %p', then restart PostgreSQL");
    }
    let data_dir = &cfg.postgres.data_dir;
    let same = |a: &Path, b: &Path| a.canonicalize().ok().zip(b.canonicalize().ok()).is_some_and(|(x, y)| x == y);
    if !same(data_dir, Path::new(&info.data_directory)) {
        bail!(
            "postgres.data_dir is {} but the server at postgres.conninfo runs {}; fix one of them",
            data_dir.display(),
            info.data_directory
        );
    }
    let rec = cluster::claim(repo, info.system_identifier, info.wal_segment_size).await?;
    if rec.system_identifier != info.system_identifier.to_string() {
        bail!(
            "cluster '{}' in the repository has system identifier {} but this server has {}; give this database its own `cluster` handle",
            rec.handle,
            rec.system_identifier,
            info.system_identifier
        );
    }

    let sysid = info.system_identifier.to_string();
    let base = match incremental::base_for(repo, level, cfg, &sysid, info.timeline, session.version).await? {
        Ok(b) => Some(b),
        Err(why) => {
            if level != Level::Full && (level == Level::Incremental || cfg.backup.incremental) {
                tracing::info!(reason = %why, "taking a full backup");
            }
            None
        }
    };

    let mut id = backup::new_id(chrono::Utc::now());
    if backup::load(repo, &id).await?.is_some() {
        id = format!("{id}-{}", hex::encode(rand::random::<[u8; 2]>()));
    }
    let mut m = Manifest {
        id: id.clone(),
        cluster: repo.cluster().to_string(),
        kind,
        state: BackupState::Running,
        provider: cfg.backup.provider,
        pg_version: session.version,
        system_identifier: info.system_identifier.to_string(),
        timeline: info.timeline,
        wal_segment_size: info.wal_segment_size,
        start_lsn: Lsn(0),
        stop_lsn: None,
        start_time: now(),
        stop_time: None,
        backup_label: String::new(),
        tablespace_map: String::new(),
        tablespaces: info
            .tablespaces
            .iter()
            .map(|(oid, location)| Tablespace { oid: *oid, location: location.clone() })
            .collect(),
        files: Vec::new(),
        bundles: Vec::new(),
        ebs: None,
        // The base is named from the start, so a purge meanwhile keeps what it references.
        incremental: base.as_ref().map(|b| backup::IncrementalInfo {
            base: b.id.clone(),
            since_lsn: b.start_lsn.to_string(),
            ..Default::default()
        }),
        error: None,
        lease: Some(backup::new_lease(chrono::Utc::now())),
        record: None,
    };
    backup::save(repo, &m).await?;
    tracing::info!(backup = %id, ?kind, base = base.as_ref().map(|b| b.id.as_str()), "backup started");
    if let Some(tx) = started {
        // The asker may have gone away meanwhile; the backup goes on regardless.
        let _ = tx.send(id.clone());
    }
    let heartbeat = Heartbeat::start(repo, &m, backup::heartbeat_interval());

    let provider = crate::snapshot::open(cfg.backup.provider, cfg, repo, freezer);
    let bref = m.backup_ref();
    let ts: Vec<(u32, String)> = m.tablespaces.iter().map(|t| (t.oid, t.location.clone())).collect();
    let (captured, res) = match provider.plan(bref, &ts).await {
        Err(e) => (Captured::default(), Err(e)),
        Ok(mut cap) => {
            let label = format!("tidemark {}", m.id);
            let prepare: Box<dyn Prepare + '_> = match &base {
                Some(b) => Box::new(Since {
                    repo,
                    base: b,
                    data_dir: &cfg.postgres.data_dir,
                    block_size: info.block_size,
                    relseg_blocks: info.relseg_blocks,
                }),
                None => Box::new(Whole),
            };
            let between =
                capture_between(&mut Held(&session), &label, cap.as_mut(), prepare.as_ref(), freeze::interrupted())
                    .await;
            let settled = match between {
                Ok(b) => cap.settle().await.map(|()| b),
                Err(e) => Err(e),
            };
            // Recorded on failure too: what the capture made is found and deleted below.
            (cap.captured(), settled)
        }
    };
    m.files = captured.files.clone();
    m.bundles = captured.bundles.clone();
    m.ebs = captured.ebs.clone();
    if captured.incremental.is_some() {
        m.incremental = captured.incremental.clone();
    }
    let res = match res {
        Ok(b) => {
            m.start_lsn = b.start;
            m.start_time = b.started_at;
            m.stop_lsn = Some(b.stop.lsn);
            m.stop_time = Some(now());
            m.timeline = label_timeline(&b.stop.label).unwrap_or(m.timeline);
            m.backup_label = b.stop.label;
            m.tablespace_map = b.stop.tablespace_map;
            match wait_for_wal(repo, m.timeline, m.start_lsn, b.stop.lsn, m.wal_segment_size, Duration::from_secs(300))
                .await
            {
                Ok(()) => borrowed_all_there(repo, &m).await,
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    let lost = heartbeat.stop().await || !still_ours(repo, &m).await;
    let res = match (lost, res) {
        (true, Ok(())) => Err(anyhow::anyhow!(
            "its record was marked failed while it ran (no heartbeat stored for over {}s: is the repository slow or unreachable?)",
            backup::stale_limit().as_secs()
        )),
        (_, res) => res,
    };
    if let Some(l) = m.lease.as_mut() {
        l.heartbeat_at = Some(now());
    }
    match res {
        Ok(()) => {
            m.state = BackupState::Completed;
            backup::save(repo, &m).await?;
            tracing::info!(backup = %id, bytes = m.data_bytes(), stored = m.stored_bytes(), "backup completed");
            Ok(m)
        }
        Err(e) => {
            // What a failed backup made outside the repository is never used: do not pay for it.
            if let Err(de) = provider.delete(m.backup_ref(), &captured).await {
                tracing::warn!(backup = %id, error = %format!("{de:#}"), "could not delete the failed backup's snapshots; `backup purge` retries");
            }
            m.state = BackupState::Failed;
            m.error = Some(format!("{e:#}"));
            backup::save(repo, &m).await.context("recording the failed backup")?;
            Err(e.context(format!("backup {id} failed")))
        }
    }
}

/// Every bundle of an older backup that `m`'s parts point into is still stored (a purge
/// of its base that ignored the running backup would show here, before it is listed).
async fn borrowed_all_there(repo: &Repository, m: &Manifest) -> anyhow::Result<()> {
    for b in m.bundles.iter().filter(|b| b.owner.is_some()) {
        let key = m.bundle_key(repo, b);
        if repo.store().head(&key).await?.is_none() {
            bail!(
                "bundle {} of backup {}, which this incremental backup builds on, is gone ({key}); take the backup again",
                b.name,
                b.owner_id(&m.id)
            );
        }
    }
    Ok(())
}

/// What a capture is told once backup mode started: nothing for a full backup, what changed
/// since the base for an incremental one.
#[async_trait::async_trait]
pub trait Prepare: Send + Sync {
    /// The changes since the base, read once `start` is known.
    async fn changes(&self, start: Lsn) -> anyhow::Result<Option<Changes>>;
}

/// A full backup: every file read.
pub struct Whole;

#[async_trait::async_trait]
impl Prepare for Whole {
    async fn changes(&self, _start: Lsn) -> anyhow::Result<Option<Changes>> {
        Ok(None)
    }
}

/// An incremental backup on `base`.
struct Since<'a> {
    repo: &'a Repository,
    base: &'a Manifest,
    data_dir: &'a Path,
    block_size: u64,
    relseg_blocks: u64,
}

#[async_trait::async_trait]
impl Prepare for Since<'_> {
    async fn changes(&self, start: Lsn) -> anyhow::Result<Option<Changes>> {
        let ch =
            incremental::changes_since(self.repo, self.base, start, self.data_dir, self.block_size, self.relseg_blocks)
                .await?;
        if let Some(why) = &ch.everything {
            tracing::warn!(base = %self.base.id, reason = %why, "the incremental backup copies every file in full");
        }
        Ok(Some(ch))
    }
}

/// What puts PostgreSQL in backup mode and takes it out of it: the held session, or a
/// recording double.
#[async_trait::async_trait]
pub trait BackupMode: Send {
    /// pg_backup_start.
    async fn start(&mut self, label: &str) -> anyhow::Result<Lsn>;
    /// pg_backup_stop.
    async fn stop(&mut self) -> anyhow::Result<StopResult>;
}

/// Backup mode on the session the whole backup holds (backup mode ends with it).
struct Held<'a>(&'a Session);

#[async_trait::async_trait]
impl BackupMode for Held<'_> {
    async fn start(&mut self, label: &str) -> anyhow::Result<Lsn> {
        self.0.backup_start(label).await
    }
    async fn stop(&mut self) -> anyhow::Result<StopResult> {
        self.0.backup_stop().await
    }
}

/// What backup mode returned around a capture.
#[derive(Debug)]
pub struct Between {
    /// LSN from the start call.
    pub start: Lsn,
    /// When the start call returned.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// The stop call's result.
    pub stop: StopResult,
}

/// pg_backup_start → capture → pg_backup_stop, for every provider. Stop runs whenever start
/// succeeded, also when the capture fails or `interrupt` fires (the capture then releases
/// what it holds, frozen mounts, and fails), so PostgreSQL is never left in backup mode.
pub async fn capture_between(
    mode: &mut dyn BackupMode,
    label: &str,
    capture: &mut dyn Capture,
    prepare: &dyn Prepare,
    interrupt: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<Between> {
    tokio::pin!(interrupt);
    let start = tokio::select! {
        r = mode.start(label) => r?,
        _ = &mut interrupt => bail!("interrupted before the backup started"),
    };
    let started_at = now();
    let captured = match crate::sweep::purge::failpoint_async("backup-copy").await {
        Ok(()) => {
            let changes = tokio::select! {
                r = prepare.changes(start) => r,
                _ = &mut interrupt => Err(anyhow::anyhow!("interrupted while reading what changed since the base backup")),
            };
            match changes {
                Ok(ch) => capture.capture(ch, interrupt.as_mut()).await,
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    let stopped = mode.stop().await;
    captured?;
    Ok(Between { start, started_at, stop: stopped? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ebs::freeze::{self, Hold};
    use std::future::Future;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Copy, PartialEq)]
    enum Snap {
        Ok,
        Fail,
        Hang,
    }

    struct Recorder {
        log: Arc<Mutex<Vec<&'static str>>>,
        snap: Snap,
        fail_freeze: bool,
    }

    impl Recorder {
        fn new(snap: Snap) -> (Recorder, Arc<Mutex<Vec<&'static str>>>) {
            let log = Arc::new(Mutex::new(Vec::new()));
            (Recorder { log: log.clone(), snap, fail_freeze: false }, log)
        }
        fn push(&self, e: &'static str) {
            self.log.lock().unwrap().push(e);
        }
    }

    #[async_trait::async_trait]
    impl Hold for Recorder {
        async fn freeze(&mut self) -> anyhow::Result<()> {
            self.push("freeze");
            if self.fail_freeze {
                bail!("EPERM");
            }
            Ok(())
        }
        async fn snapshot(&mut self) -> anyhow::Result<()> {
            self.push("snapshot");
            match self.snap {
                Snap::Ok => Ok(()),
                Snap::Fail => bail!("InternalError"),
                Snap::Hang => std::future::pending().await,
            }
        }
        async fn thaw(&mut self) -> anyhow::Result<()> {
            self.push("thaw");
            Ok(())
        }
    }

    /// Backup mode on the same log.
    struct Mode(Arc<Mutex<Vec<&'static str>>>);

    #[async_trait::async_trait]
    impl BackupMode for Mode {
        async fn start(&mut self, _label: &str) -> anyhow::Result<Lsn> {
            self.0.lock().unwrap().push("start");
            Ok(Lsn(0x100))
        }
        async fn stop(&mut self) -> anyhow::Result<StopResult> {
            self.0.lock().unwrap().push("stop");
            Ok(StopResult { lsn: Lsn(0x200), label: String::new(), tablespace_map: String::new() })
        }
    }

    /// An ebs-shaped capture: the real freeze hold over the recorder.
    struct Held {
        steps: Recorder,
        freeze: bool,
        limit: Duration,
    }

    #[async_trait::async_trait]
    impl Capture for Held {
        async fn capture(
            &mut self,
            _changes: Option<Changes>,
            interrupt: crate::snapshot::Interrupt<'_>,
        ) -> anyhow::Result<()> {
            freeze::hold(&mut self.steps, self.freeze, self.limit, interrupt).await
        }
        async fn settle(&mut self) -> anyhow::Result<()> {
            Ok(())
        }
        fn captured(&self) -> Captured {
            Captured::default()
        }
    }

    /// Start → (freeze → snapshot → thaw) → stop, as the backup flow runs an ebs capture.
    async fn run(
        r: &mut Recorder,
        freeze: bool,
        limit: Duration,
        interrupt: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let log = r.log.clone();
        let steps = Recorder { log: r.log.clone(), snap: r.snap, fail_freeze: r.fail_freeze };
        let mut cap = Held { steps, freeze, limit };
        capture_between(&mut Mode(log), "test", &mut cap, &Whole, interrupt).await.map(|_| ())
    }

    fn never() -> impl Future<Output = ()> {
        std::future::pending()
    }

    #[tokio::test]
    async fn order_is_start_freeze_snapshot_thaw_stop() {
        let (mut r, log) = Recorder::new(Snap::Ok);
        run(&mut r, true, Duration::from_secs(10), never()).await.unwrap();
        assert_eq!(*log.lock().unwrap(), ["start", "freeze", "snapshot", "thaw", "stop"]);
    }

    #[tokio::test]
    async fn no_freeze_when_disabled() {
        let (mut r, log) = Recorder::new(Snap::Ok);
        run(&mut r, false, Duration::from_secs(10), never()).await.unwrap();
        assert_eq!(*log.lock().unwrap(), ["start", "snapshot", "stop"]);
    }

    #[tokio::test]
    async fn failed_snapshot_still_thaws_and_stops() {
        let (mut r, log) = Recorder::new(Snap::Fail);
        let e = run(&mut r, true, Duration::from_secs(10), never()).await.unwrap_err();
        assert!(format!("{e:#}").contains("InternalError"));
        assert_eq!(*log.lock().unwrap(), ["start", "freeze", "snapshot", "thaw", "stop"]);
    }

    #[tokio::test(start_paused = true)]
    async fn hanging_snapshot_is_cut_by_the_watchdog() {
        let (mut r, log) = Recorder::new(Snap::Hang);
        let began = tokio::time::Instant::now();
        let e = run(&mut r, true, Duration::from_secs(10), never()).await.unwrap_err();
        assert!(format!("{e:#}").contains("did not return within"), "{e:#}");
        assert_eq!(began.elapsed(), Duration::from_secs(10));
        assert_eq!(*log.lock().unwrap(), ["start", "freeze", "snapshot", "thaw", "stop"]);
    }

    #[tokio::test]
    async fn interrupt_during_snapshot_thaws_and_stops() {
        let (mut r, log) = Recorder::new(Snap::Hang);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let interrupt = async move {
            let _ = rx.await;
        };
        let runner = tokio::spawn(async move {
            let res = run(&mut r, true, Duration::from_secs(3600), interrupt).await;
            (res, r)
        });
        // The interrupt arrives once the snapshot call is in flight.
        while !log.lock().unwrap().contains(&"snapshot") {
            tokio::task::yield_now().await;
        }
        tx.send(()).unwrap();
        let (res, _) = runner.await.unwrap();
        assert!(format!("{:#}", res.unwrap_err()).contains("interrupted"));
        assert_eq!(*log.lock().unwrap(), ["start", "freeze", "snapshot", "thaw", "stop"]);
    }

    #[tokio::test]
    async fn failed_freeze_thaws_what_it_may_have_frozen_and_stops() {
        let (mut r, log) = Recorder::new(Snap::Ok);
        r.fail_freeze = true;
        assert!(run(&mut r, true, Duration::from_secs(10), never()).await.is_err());
        assert_eq!(*log.lock().unwrap(), ["start", "freeze", "thaw", "stop"]);
    }
}
