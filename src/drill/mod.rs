//! Restore drills: the cluster restored from its repository into a scratch directory,
//! started through WAL replay to promotion, checked (the point reached, `pg_amcheck` when
//! installed, a probe query), then stopped and removed. Each phase is timed; the record is
//! the one thing a drill writes to the repository. An `ebs` drill restores onto new volumes
//! from the snapshots, tagged with the drill's id, and deletes them at teardown.
//!
//! The restored server is private: it listens on no address, only on a socket directory
//! inside the drill's scratch directory, with its own `pg_hba.conf` (local trust on that
//! socket), with archiving and JIT off (the daemon's unit denies writable-executable
//! memory). The source cluster is never touched.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::catalog::backup::time_format::now;
use crate::catalog::drill::{self, Check, DrillRecord, Phase};
use crate::catalog::restore_plan::Target;
use crate::config::{Config, DrillTarget};
use crate::pg::ctl;
use crate::repo::Repository;

/// How a drill is run.
#[derive(Debug, Clone)]
pub struct Options {
    /// What to restore to.
    pub target: DrillTarget,
    /// Leave the restored cluster stopped in the scratch directory (to look at by hand).
    pub keep: bool,
    /// `manual` or `scheduled`.
    pub trigger: &'static str,
    /// The config file the restored cluster's restore_command reads (the running one's).
    pub config_path: Option<PathBuf>,
    /// tidemark binary for restore_command (default: this one).
    pub exe: Option<PathBuf>,
}

/// The port the private server uses: only its socket file's name, in a directory of its own.
const DRILL_PORT: u16 = 5432;

/// Runs one drill and records it; the result is the record (its `ok` says whether the
/// drill passed). An error means it could not even be recorded.
pub async fn run(cfg: &Config, repo: &Repository, opts: &Options) -> anyhow::Result<DrillRecord> {
    run_with(cfg, repo, opts, &crate::snapshot::ebs::restore::LocalHost { sys: cfg.ebs.sys_root.clone() }).await
}

/// The tag on the volumes an ebs drill creates: its id, to delete them at teardown.
pub const TAG_DRILL: &str = "tidemark:drill";

/// `run` with the host seam (device discovery, mount, unmount) for `ebs` drills given.
pub async fn run_with(
    cfg: &Config,
    repo: &Repository,
    opts: &Options,
    host: &dyn crate::snapshot::ebs::restore::Host,
) -> anyhow::Result<DrillRecord> {
    let started_at = now();
    let id = drill::new_id(started_at);
    let mut rec = DrillRecord {
        id: id.clone(),
        cluster: repo.cluster().to_string(),
        started_at,
        finished_at: started_at,
        ok: false,
        trigger: opts.trigger.to_string(),
        target: "latest".into(),
        backup: None,
        phases: Vec::new(),
        checks: Vec::new(),
        restore_seconds: None,
        error: None,
    };
    let dir = cfg.drill.scratch_dir.join(&id);
    tracing::info!(drill = %id, dir = %dir.display(), "restore drill started");
    let began = Instant::now();
    let limit = Duration::from_secs(cfg.drill.time_limit_s);
    let mut data_dir = None;
    let res = match tokio::time::timeout(limit, steps(cfg, repo, opts, &dir, &mut rec, host, &mut data_dir)).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!("the drill did not finish within drill.time_limit_s ({}s)", limit.as_secs())),
    };
    let tearing = Instant::now();
    let ebs = (cfg.backup.provider == crate::config::Provider::Ebs).then_some((id.as_str(), host));
    let torn = teardown(cfg, &dir, data_dir.as_deref(), opts.keep, ebs).await;
    rec.phases.push(Phase { name: "teardown".into(), seconds: tearing.elapsed().as_secs_f64() });
    let res = res.and(torn);
    rec.finished_at = now();
    rec.ok = res.is_ok() && rec.checks.iter().all(|c| c.ok);
    rec.error = match res {
        Err(e) => Some(format!("{e:#}")),
        Ok(()) => rec.checks.iter().find(|c| !c.ok).map(|c| format!("check {} failed: {}", c.name, c.detail)),
    };
    drill::save(repo, &rec).await.context("recording the drill")?;
    match &rec.error {
        None => {
            tracing::info!(drill = %id, seconds = began.elapsed().as_secs_f64(), restore_seconds = ?rec.restore_seconds, "restore drill passed")
        }
        Some(e) => tracing::warn!(drill = %id, error = %e, "restore drill FAILED"),
    }
    Ok(rec)
}

/// plan → restore → replay → checks; the phases and checks land in `rec` as they finish.
async fn steps(
    cfg: &Config,
    repo: &Repository,
    opts: &Options,
    dir: &Path,
    rec: &mut DrillRecord,
    host: &dyn crate::snapshot::ebs::restore::Host,
    data_dir: &mut Option<PathBuf>,
) -> anyhow::Result<()> {
    let planning = Instant::now();
    let target = match opts.target {
        DrillTarget::Latest => Target::Latest,
        DrillTarget::Random => {
            let inputs = crate::restore::Inputs::load(repo).await?;
            let window = inputs.windows().into_iter().next_back().map(|(_, w)| w).unwrap_or_default();
            match drill::random_time(&window, rand::random::<f64>()) {
                Some(t) => Target::Time(t),
                None => {
                    tracing::info!("no time inside the window has commits after it: drilling to the latest");
                    Target::Latest
                }
            }
        }
    };
    rec.target = target.to_string();
    let owner = ctl::run_as(&cfg.postgres.os_user)?;
    // The scratch directory and the server's private socket directory and pg_hba.conf.
    let socket = dir.join("socket");
    std::fs::create_dir_all(&socket).with_context(|| format!("creating {}", socket.display()))?;
    let hba = dir.join("pg_hba.conf");
    std::fs::write(&hba, "# tidemark restore drill: the private socket only\nlocal all all trust\n")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o700))?;
    ctl::chown_tree(dir, owner)?;
    let plan_s = planning.elapsed().as_secs_f64();

    let req = crate::restore::Request {
        target_dir: dir.join("data"),
        target,
        backup: None,
        start: true,
        port: Some(DRILL_PORT),
        config_path: opts.config_path.clone(),
        region: None,
        exe: opts.exe.clone(),
        // ebs: new volumes from the snapshots, tagged with the drill so teardown finds them.
        ebs: crate::snapshot::ebs::restore::RestoreOptions {
            workers: cfg.backup.workers,
            tags: vec![(TAG_DRILL.to_string(), rec.id.clone())],
            ..Default::default()
        },
        extra_settings: vec![
            ("listen_addresses".into(), String::new()),
            ("unix_socket_directories".into(), socket.display().to_string()),
            ("hba_file".into(), hba.display().to_string()),
            // The daemon's unit denies writable-executable memory, which JIT needs.
            ("jit".into(), "off".into()),
        ],
    };
    let report = crate::restore::run_with(cfg, repo, &req, host).await;
    let report = match report {
        Ok(r) => {
            *data_dir = Some(r.data_dir.clone());
            r
        }
        Err(e) => {
            rec.phases.push(Phase { name: "plan".into(), seconds: plan_s });
            return Err(e);
        }
    };
    rec.backup = Some(report.backup.clone());
    let t = &report.timings;
    rec.phases.push(Phase { name: "plan".into(), seconds: plan_s + t.plan_s });
    rec.phases.push(Phase { name: "restore".into(), seconds: t.restore_s });
    rec.phases.push(Phase { name: "replay".into(), seconds: t.replay_s.unwrap_or_default() });
    rec.restore_seconds = Some(plan_s + t.plan_s + t.restore_s + t.replay_s.unwrap_or_default());
    let reached = report.reached.as_ref();
    rec.checks.push(Check {
        name: "target reached".into(),
        ok: true,
        detail: match (reached.and_then(|r| r.stopped.clone()), reached.and_then(|r| r.redo_done), report.must_reach) {
            (Some(s), _, _) => s,
            (None, Some(got), Some(want)) => format!("replayed to {got}, the archive's last record is at {want}"),
            (None, Some(got), None) => format!("replayed to {got}"),
            _ => "promoted".into(),
        },
    });

    let checking = Instant::now();
    let bin = ctl::find_bin_dir(cfg.postgres.bin_dir.as_deref())?;
    rec.checks.push(amcheck(cfg, &bin, &socket, owner).await);
    if let Some(sql) = &cfg.drill.probe_sql {
        let got = crate::pg::conn::first_value(&cfg.postgres.conninfo, &socket, DRILL_PORT, sql).await;
        rec.checks.push(match (got, &cfg.drill.probe_expect) {
            (Err(e), _) => Check { name: "probe".into(), ok: false, detail: format!("{e:#}") },
            (Ok(v), None) => Check { name: "probe".into(), ok: true, detail: format!("returned {}", shown(&v)) },
            (Ok(v), Some(want)) => Check {
                name: "probe".into(),
                ok: v.as_deref() == Some(want.as_str()),
                detail: format!("returned {}, expected {want}", shown(&v)),
            },
        });
    }
    rec.phases.push(Phase { name: "checks".into(), seconds: checking.elapsed().as_secs_f64() });
    Ok(())
}

fn shown(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "no value".into())
}

/// `pg_amcheck --all` over the private socket, when the server's bin directory has it.
async fn amcheck(cfg: &Config, bin: &Path, socket: &Path, owner: Option<(u32, u32)>) -> Check {
    let exe = bin.join("pg_amcheck");
    if !exe.is_file() {
        return Check {
            name: "pg_amcheck".into(),
            ok: true,
            detail: format!("skipped: {} is not installed", exe.display()),
        };
    }
    let user = cfg
        .postgres
        .conninfo
        .parse::<tokio_postgres::Config>()
        .ok()
        .and_then(|c| c.get_user().map(str::to_string))
        .unwrap_or_else(|| cfg.postgres.os_user.clone());
    let mut c = ctl::command(&exe, owner);
    c.arg("--all")
        .arg("--install-missing")
        .arg("-h")
        .arg(socket)
        .arg("-p")
        .arg(DRILL_PORT.to_string())
        .arg("-U")
        .arg(&user);
    let out = tokio::task::spawn_blocking(move || c.output()).await;
    match out {
        Ok(Ok(o)) if o.status.success() => {
            Check { name: "pg_amcheck".into(), ok: true, detail: "no corruption found in any database".into() }
        }
        Ok(Ok(o)) => {
            let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            let tail: Vec<&str> = text.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Check { name: "pg_amcheck".into(), ok: false, detail: format!("{} ({})", tail.join("; "), o.status) }
        }
        Ok(Err(e)) => {
            Check { name: "pg_amcheck".into(), ok: false, detail: format!("could not run {}: {e}", exe.display()) }
        }
        Err(e) => {
            Check { name: "pg_amcheck".into(), ok: false, detail: format!("could not run {}: {e}", exe.display()) }
        }
    }
}

/// Stops the drill's server if it runs and removes the drill's directory (unless `keep`:
/// then it is only stopped); for an ebs drill (`ebs`: its id and the host), unmounts and
/// deletes the volumes it created first.
async fn teardown(
    cfg: &Config,
    dir: &Path,
    data_dir: Option<&Path>,
    keep: bool,
    ebs: Option<(&str, &dyn crate::snapshot::ebs::restore::Host)>,
) -> anyhow::Result<()> {
    let data = data_dir.map_or_else(|| dir.join("data"), Path::to_path_buf);
    if data.join("postmaster.pid").exists() {
        let bin = ctl::find_bin_dir(cfg.postgres.bin_dir.as_deref())?;
        let owner = ctl::run_as(&cfg.postgres.os_user)?;
        let mut c = ctl::command(bin.join("pg_ctl"), owner);
        c.arg("-D").arg(&data).args(["-m", "immediate", "-w", "stop"]).current_dir(dir);
        let out = tokio::task::spawn_blocking(move || c.output()).await?.context("running pg_ctl stop")?;
        if !out.status.success() {
            bail!(
                "stopping the drill's server in {} failed: {}",
                data.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    if keep {
        tracing::info!(dir = %dir.display(), "drill directory kept");
        return Ok(());
    }
    if let Some((id, host)) = ebs {
        let gone = crate::snapshot::ebs::restore::discard_volumes(cfg, (TAG_DRILL, id), &dir.join("data"), host)
            .await
            .context("removing the drill's volumes")?;
        tracing::info!(volumes = gone.len(), "drill volumes deleted");
    }
    // The data directory, and its tablespaces beside it (`data.tablespaces`).
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(anyhow::Error::new(e).context(format!("removing the drill directory {}", dir.display())))
        }
        _ => Ok(()),
    }
}

/// When the last drill began, from the record keys alone (ids start with the time).
pub async fn last_started(repo: &Repository) -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
    let prefix = repo.drill_prefix();
    let keys = repo.store().list(&prefix).await?;
    Ok(keys
        .iter()
        .filter_map(|o| {
            let id = o.key.strip_prefix(&prefix)?;
            chrono::NaiveDateTime::parse_from_str(id.get(..16)?, "%Y%m%dT%H%M%SZ").ok()
        })
        .map(|t| t.and_utc())
        .max())
}
