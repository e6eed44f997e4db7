//! The backup flow: pg_backup_start on a held session → provider captures → pg_backup_stop →
//! manifest → WAL up to the stop LSN archived → completed.

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
use crate::snapshot::freeze::{Freezer, GuardProcess};
use crate::snapshot::{ebs, files};
use crate::wal::name::{Lsn, Segment, WalFile};

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

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Takes a backup of the configured cluster with the `files` provider.
pub async fn create(cfg: &Config, repo: &Repository, kind: BackupKind) -> anyhow::Result<Manifest> {
    create_with(cfg, repo, kind, None).await
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
                    l.heartbeat_at = now_rfc3339();
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
    started: tokio::sync::oneshot::Sender<String>,
) -> anyhow::Result<Manifest> {
    create_inner(cfg, repo, kind, None, Some(started)).await
}

/// `create` with the freeze seam given (tests); `None` uses the freeze-guard process.
pub async fn create_with(
    cfg: &Config,
    repo: &Repository,
    kind: BackupKind,
    freezer: Option<&dyn Freezer>,
) -> anyhow::Result<Manifest> {
    create_inner(cfg, repo, kind, freezer, None).await
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
    freezer: Option<&dyn Freezer>,
    started: Option<tokio::sync::oneshot::Sender<String>>,
) -> anyhow::Result<Manifest> {
    sweep_first(repo).await;
    if let Some(r) = running_backup(repo).await? {
        let by = r.lease.as_ref().map(|l| format!(" by {} pid {}, alive at {}", l.host, l.pid, l.heartbeat_at));
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
        start_time: now_rfc3339(),
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
        error: None,
        lease: Some(backup::new_lease(chrono::Utc::now())),
        record: None,
    };
    backup::save(repo, &m).await?;
    tracing::info!(backup = %id, ?kind, "backup started");
    if let Some(tx) = started {
        // The asker may have gone away meanwhile; the backup goes on regardless.
        let _ = tx.send(id.clone());
    }
    let heartbeat = Heartbeat::start(repo, &m, backup::heartbeat_interval());

    let captured = match cfg.backup.provider {
        crate::config::Provider::Ebs => match freezer {
            Some(f) => ebs::capture(cfg, &session, &mut m, f).await,
            None => match GuardProcess::current() {
                Ok(g) => ebs::capture(cfg, &session, &mut m, &g).await,
                Err(e) => Err(e),
            },
        },
        crate::config::Provider::Files => capture_files(cfg, repo, &session, &mut m).await,
    };
    let res = match captured {
        Ok((start, stop)) => {
            m.start_lsn = start;
            m.stop_lsn = Some(stop.lsn);
            m.stop_time = Some(now_rfc3339());
            m.timeline = label_timeline(&stop.label).unwrap_or(m.timeline);
            m.backup_label = stop.label;
            m.tablespace_map = stop.tablespace_map;
            wait_for_wal(repo, m.timeline, m.start_lsn, stop.lsn, m.wal_segment_size, Duration::from_secs(300)).await
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
        l.heartbeat_at = now_rfc3339();
    }
    match res {
        Ok(()) => {
            m.state = BackupState::Completed;
            backup::save(repo, &m).await?;
            tracing::info!(backup = %id, bytes = m.data_bytes(), stored = m.stored_bytes(), "backup completed");
            Ok(m)
        }
        Err(e) => {
            if m.ebs.is_some() {
                // Snapshots of a failed backup are never used: do not pay for them.
                if let Err(de) = ebs::delete(repo.ec2_endpoint(), &m).await {
                    tracing::warn!(backup = %id, error = %format!("{de:#}"), "could not delete the failed backup's snapshots; `backup purge` retries");
                }
            }
            m.state = BackupState::Failed;
            m.error = Some(format!("{e:#}"));
            backup::save(repo, &m).await.context("recording the failed backup")?;
            Err(e.context(format!("backup {id} failed")))
        }
    }
}

/// files provider: start, copy, stop (stop also when the copy fails, so PostgreSQL is not
/// left in backup mode).
async fn capture_files(
    cfg: &Config,
    repo: &Repository,
    session: &Session,
    m: &mut Manifest,
) -> anyhow::Result<(Lsn, StopResult)> {
    let start = session.backup_start(&format!("tidemark {}", m.id)).await?;
    m.start_lsn = start;
    m.start_time = now_rfc3339();
    let copied = match crate::sweep::purge::failpoint_async("backup-copy").await {
        Ok(()) => copy(cfg, repo, m).await,
        Err(e) => Err(e),
    };
    let stopped = session.backup_stop().await;
    copied?;
    Ok((start, stopped?))
}

async fn copy(cfg: &Config, repo: &Repository, m: &mut Manifest) -> anyhow::Result<()> {
    let dd = cfg.postgres.data_dir.clone();
    let mut items = tokio::task::spawn_blocking(move || files::walk(&dd)).await??;
    let total: u64 = items.iter().map(|i| i.entry.size).sum();
    let pb = crate::snapshot::progress::files_bar(total, items.len() as u64, "backup");
    let pb2 = pb.clone();
    let bundles = files::capture(
        repo,
        &m.id,
        &mut items,
        cfg.backup.bundle_mib << 20,
        cfg.backup.workers,
        Arc::new(move |n| pb2.inc(n)),
    )
    .await?;
    pb.finish_and_clear();
    m.files = items.into_iter().map(|i| i.entry).collect();
    m.bundles = bundles;
    Ok(())
}
