//! Restore: plan (pick the backup, check WAL coverage) and execute into a new directory.

pub mod execute;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::catalog::backup::{self, BackupState, Manifest};
use crate::catalog::restore_plan::{self as plan, Archive, BackupPoint, RestorePlan, Target, Window};
use crate::catalog::wal_index;
use crate::config::Config;
use crate::pg::ctl;
use crate::repo::Repository;

/// Completed backups and the archive of each of their timelines.
pub struct Inputs {
    /// Completed backups, oldest first.
    pub backups: Vec<Manifest>,
    /// Timeline → archived segments and commit times.
    pub archives: BTreeMap<u32, Archive>,
}

fn point(m: &Manifest) -> Option<BackupPoint> {
    Some(BackupPoint {
        id: m.id.clone(),
        timeline: m.timeline,
        start_lsn: m.start_lsn,
        stop_lsn: m.stop_lsn?,
        stop_time: m.stop_at()?,
    })
}

impl Inputs {
    /// Reads the catalog and the archive.
    pub async fn load(repo: &Repository) -> anyhow::Result<Inputs> {
        let seg_size = crate::repo::cluster::segment_size(repo).await?;
        let backups: Vec<Manifest> =
            backup::list_records(repo).await?.into_iter().filter(|m| m.state == BackupState::Completed).collect();
        let from = backup::first_segments(&backups, seg_size);
        let mut archives = BTreeMap::new();
        for (tli, first) in from {
            archives.insert(tli, wal_index::load_archive(repo, tli, seg_size, first).await?);
        }
        Ok(Inputs { backups, archives })
    }

    fn points(&self, tli: u32) -> Vec<BackupPoint> {
        self.backups.iter().filter(|m| m.timeline == tli).filter_map(point).collect()
    }

    /// The restorable window per timeline.
    pub fn windows(&self) -> Vec<(u32, Window)> {
        self.archives.iter().map(|(tli, a)| (*tli, plan::window(&self.points(*tli), a))).collect()
    }

    /// Plans a restore, trying the newest timeline first.
    pub fn plan(&self, target: Target, only: Option<&str>) -> Result<(Manifest, RestorePlan), plan::PlanError> {
        let mut first_err = None;
        for (tli, archive) in self.archives.iter().rev() {
            // A transaction's end is on one timeline: restore from a backup of that one.
            if matches!(target, Target::BeforeXid { timeline, .. } if timeline != *tli) {
                continue;
            }
            let only_here = only.filter(|id| self.backups.iter().any(|m| m.id == *id && m.timeline == *tli));
            if only.is_some() && only_here.is_none() {
                continue;
            }
            match plan::plan(&self.points(*tli), archive, target, only_here) {
                Ok(p) => {
                    let m = self.backups.iter().find(|m| m.id == p.backup).cloned().expect("planned backup exists");
                    return Ok((m, p));
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or_else(|| match only {
            Some(id) => {
                plan::PlanError::BadBackup(id.into(), "no completed backup has this id".into(), Window::default())
            }
            None => plan::PlanError::NothingRestorable(Window::default()),
        }))
    }
}

/// A restore request from the CLI.
#[derive(Debug, Clone)]
pub struct Request {
    /// New data directory.
    pub target_dir: PathBuf,
    /// Recovery target.
    pub target: Target,
    /// Force this backup.
    pub backup: Option<String>,
    /// Start PostgreSQL and wait for promotion.
    pub start: bool,
    /// Port for the restored cluster.
    pub port: Option<u16>,
    /// Config file the restored cluster's restore_command should use.
    pub config_path: Option<PathBuf>,
    /// Restore from the copy in this region (`cfg` is already the region's view).
    pub region: Option<String>,
    /// tidemark binary the restored cluster's restore_command runs (default: this one).
    pub exe: Option<PathBuf>,
    /// New-volume options for `ebs` backups.
    pub ebs: crate::snapshot::ebs::restore::RestoreOptions,
    /// More settings for the restored cluster, appended after the recovery settings.
    pub extra_settings: Vec<(String, String)>,
}

/// What a restore did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Backup used.
    pub backup: String,
    /// Target.
    pub target: String,
    /// Directory.
    pub target_dir: PathBuf,
    /// The restored data directory (differs from target_dir for `ebs` backups, whose
    /// volume is mounted at target_dir).
    pub data_dir: PathBuf,
    /// New volumes (ebs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<crate::snapshot::ebs::restore::Remounted>,
    /// WAL segments recovery reads.
    pub segments: u64,
    /// For `--latest`: the record recovery must replay.
    pub must_reach: Option<crate::wal::name::Lsn>,
    /// Point reached (with --start).
    pub reached: Option<execute::Reached>,
    /// How long each step took.
    pub timings: Timings,
}

/// How long a restore's steps took, in seconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    /// Reading the catalog and the archive's index, and planning.
    pub plan_s: f64,
    /// Writing the data directory (the files download, or volumes from snapshots).
    pub restore_s: f64,
    /// Starting PostgreSQL through WAL replay to promotion (with --start).
    pub replay_s: Option<f64>,
}

/// Plans, then restores into a new directory; refuses before any download when the
/// target is outside the window.
pub async fn run(cfg: &Config, repo: &Repository, req: &Request) -> anyhow::Result<Report> {
    run_with(cfg, repo, req, &crate::snapshot::ebs::restore::LocalHost { sys: cfg.ebs.sys_root.clone() }).await
}

/// `run` with the host seam (device discovery, mount) given.
pub async fn run_with(
    cfg: &Config,
    repo: &Repository,
    req: &Request,
    host: &dyn crate::snapshot::ebs::restore::Host,
) -> anyhow::Result<Report> {
    let began = std::time::Instant::now();
    execute::check_target_dir(&req.target_dir)?;
    execute::check_not_in_source(&req.target_dir, &execute::source_dirs(&cfg.postgres.data_dir))?;
    let mut inputs = Inputs::load(repo).await?;
    // The archive's true end: segments archived but not indexed yet (a daemon killed before
    // writing their summaries, a push that died between the two) are read now, so a restore
    // to the latest knows what it must reach.
    for (tli, archive) in inputs.archives.iter_mut() {
        let n = wal_index::add_unindexed_tail(repo, *tli, archive, wal_index::UNINDEXED_TAIL).await?;
        if n > 0 {
            tracing::info!(
                timeline = tli,
                segments = n,
                "segments archived after the index's end summarized for the plan"
            );
        }
    }
    let (rec, p) = inputs.plan(req.target, req.backup.as_deref())?;
    // Planned from catalog records; restored from the manifest, which must agree.
    let m = backup::load(repo, &rec.id).await?.filter(|m| m.state == BackupState::Completed).ok_or_else(|| {
        anyhow::anyhow!(
            "backup {} is listed as completed but its manifest is missing or not completed; run `tidemark verify` (the daemon's hourly sweep repairs a listing left behind by a crash) and retry",
            rec.id
        )
    })?;
    tracing::info!(backup = %m.id, target = %req.target, first = p.first_segment, last = p.last_segment, must_reach = ?p.must_reach.map(|l| l.to_string()), "restore planned");
    let exe = match &req.exe {
        Some(e) => e.clone(),
        None => crate::cli::front_end_exe().context("locating the tidemark binary")?,
    };
    let spool = cfg.fetch.spool_dir.join(format!("restore-{}-{}", m.id, hex::encode(rand::random::<[u8; 3]>())));
    let mut restore_command = format!("TIDEMARK_FETCH_SPOOL_DIR={} {}", spool.display(), exe.display());
    if let Some(c) = &req.config_path {
        restore_command.push_str(&format!(" --config {}", c.display()));
    }
    if let Some(r) = &req.region {
        // Recovery reads WAL from the same copy the backup came from.
        let mut env = format!("TIDEMARK_REPOSITORY_URL='{}' TIDEMARK_REPOSITORY_REGION='{r}' ", cfg.repository.url);
        if let Some(ep) = &cfg.repository.endpoint {
            env.push_str(&format!("TIDEMARK_REPOSITORY_ENDPOINT='{ep}' "));
        }
        restore_command.insert_str(0, &env);
    }
    restore_command.push_str(" wal-fetch %f %p");
    let owner = ctl::run_as(&cfg.postgres.os_user)?;
    let timeline = match req.target {
        // Its end is on this timeline and the backup too: a newer one need not hold it.
        Target::BeforeXid { timeline, .. } => timeline,
        _ => follow_timeline(repo, &m).await?,
    };
    tracing::info!(timeline, "recovery follows this timeline");
    let settings = execute::RecoverySettings {
        restore_command,
        port: req.port,
        timeline: Some(timeline),
        extra: req.extra_settings.clone(),
    };
    let mut timings = Timings { plan_s: began.elapsed().as_secs_f64(), ..Timings::default() };
    let restoring = std::time::Instant::now();
    let provider = crate::snapshot::open(m.provider, cfg, repo, None);
    let (data_dir, volumes) = match &m.ebs {
        Some(refs) if m.provider == crate::config::Provider::Ebs => {
            let into = crate::snapshot::RestoreInto {
                target_dir: &req.target_dir,
                workers: cfg.backup.workers,
                layout: None,
                volumes: Some((&req.ebs, host)),
            };
            let mounted = provider.restore_into(m.backup_ref(), &m.held_outside(), &into).await?;
            let dir = execute::prepare_snapshot_dir(&m, refs, &mounted, req.target, &settings)?;
            (dir, mounted)
        }
        _ => {
            execute::execute(&execute::Job {
                manifest: &m,
                target_dir: &req.target_dir,
                target: req.target,
                settings: &settings,
                workers: cfg.backup.workers,
                owner,
                provider: &*provider,
            })
            .await?;
            (req.target_dir.clone(), Vec::new())
        }
    };
    timings.restore_s = restoring.elapsed().as_secs_f64();
    tracing::info!(backup = %m.id, seconds = timings.restore_s, "data directory restored");
    let mut reached = None;
    if req.start {
        let replaying = std::time::Instant::now();
        let bin = ctl::find_bin_dir(cfg.postgres.bin_dir.as_deref())?;
        let dir = data_dir.clone();
        let segments = p.last_segment - p.first_segment + 1;
        let r = tokio::task::spawn_blocking(move || {
            execute::start_and_wait(&bin, &dir, owner, Duration::from_secs(3600), segments)
        })
        .await??;
        if let Err(e) = check_reached(&p, m.timeline != timeline, &r) {
            // A cluster short of its target must not be mistaken for the restore asked for.
            let bin = ctl::find_bin_dir(cfg.postgres.bin_dir.as_deref())?;
            let dir = data_dir.clone();
            let stopped = tokio::task::spawn_blocking(move || execute::stop(&bin, &dir, owner)).await?;
            let msg = format!("{e:#}");
            execute::mark_incomplete(&data_dir, &format!("restore of backup {} FAILED: {msg}", m.id));
            if let Err(s) = stopped {
                return Err(e.context(format!("and stopping the restored server failed: {s:#}")));
            }
            return Err(e);
        }
        timings.replay_s = Some(replaying.elapsed().as_secs_f64());
        reached = Some(r);
    }
    Ok(Report {
        backup: m.id.clone(),
        target: req.target.to_string(),
        target_dir: req.target_dir.clone(),
        data_dir,
        volumes,
        segments: p.last_segment - p.first_segment + 1,
        must_reach: p.must_reach,
        reached,
        timings,
    })
}

/// The timeline recovery follows from backup `m`: the archive's history files that parse and
/// descend from it with WAL of their own (see [`plan::lineage_timeline`]).
pub async fn follow_timeline(repo: &Repository, m: &Manifest) -> anyhow::Result<u32> {
    let files = wal_index::timeline_files(repo).await?;
    let readable: BTreeMap<u32, Vec<crate::wal::history::Ancestor>> =
        files.histories.into_iter().filter_map(|(t, h)| Some((t, h.ok()?))).collect();
    Ok(plan::lineage_timeline(m.timeline, m.stop_lsn.unwrap_or(m.start_lsn), &readable, &files.with_wal))
}

/// Whether recovery reached what the plan says it must (pure). Time and LSN targets end
/// with PostgreSQL's own "recovery stopping" (it refuses to promote short of them); for
/// `--latest`, replay must have applied the last complete archived record, unless recovery
/// was set to follow a newer timeline (then LSNs of the planned one do not compare).
pub fn check_reached(p: &RestorePlan, followed_newer: bool, r: &execute::Reached) -> anyhow::Result<()> {
    match p.target {
        Target::BeforeXid { xid, .. } => {
            // PostgreSQL names the transaction it stopped before; anything else is not it.
            let want = format!("before commit of transaction {xid},");
            let want_abort = format!("before abort of transaction {xid},");
            match &r.stopped {
                Some(s) if s.contains(&want) || s.contains(&want_abort) => {}
                other => anyhow::bail!(
                    "recovery did not stop just before transaction {xid} ({}); the restored cluster is not the one asked for",
                    other.as_deref().map_or("no \"recovery stopping\" in the server log".to_string(), |s| format!("it logged \"{s}\""))
                ),
            }
        }
        Target::Time(_) | Target::Lsn(_) => {
            if r.stopped.is_none() {
                anyhow::bail!(
                    "recovery promoted without reaching its target {} (no \"recovery stopping\" in the server log); the restored cluster is not the one asked for",
                    p.target
                );
            }
        }
        Target::Latest => {
            if let (Some(want), false) = (p.must_reach, followed_newer) {
                match r.redo_done {
                    Some(got) if got >= want => {}
                    got => anyhow::bail!(
                        "recovery ended at {} but the archive holds WAL up to the record at {want} (segment {:X}): it stopped early, most likely at WAL of another history (run `tidemark verify`); planned {want}, reached {}",
                        got.map_or("an unknown point".to_string(), |g| g.to_string()),
                        p.last_segment,
                        got.map_or("-".to_string(), |g| g.to_string())
                    ),
                }
            }
        }
    }
    Ok(())
}
