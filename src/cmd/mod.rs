//! Runs a parsed command: loads config, calls one library function, prints, picks the exit code.
//!
//! Exit codes: 0 ok; 1 operational failure (or `wal-fetch`: not archived); 2 usage/config.

#[macro_use]
mod render;

mod backup;
pub mod check;
pub mod demo;
mod drill;
pub mod failure;
pub mod fast_path;
mod find;
mod keys;
mod lifecycle;
mod policy;
mod restore;
pub mod status;
mod verify;
mod wal;
mod wal_index;
mod window;

use std::path::Path;
use std::time::Duration;

use crate::archive::fetch::{self, FetchOutcome};
use crate::archive::push::Archiver;
use crate::catalog::backup::{self as catalog_backup, BackupKind, Manifest};
use crate::catalog::restore_plan::{rfc3339, Target};
use crate::cli::{BackupAction, Cli, Command, Output, PolicyAction};
use crate::codec::Keyring;
use crate::config::Config;
use crate::daemon::control::{self, Request, Response};
use crate::repo::Repository;
use crate::wal::spool::{Spool, SPOOL_TMP};

pub use failure::Failure;

use crate::cmd::fast_path::{absolute, push_target};
use failure::{report, usage};

/// The agent's entry point: returns the exit code.
pub fn main(cli: Cli) -> u8 {
    if let Command::FreezeGuard { timeout_ms, mounts } = &cli.command {
        // No runtime, no logging setup: the guard must start and freeze fast.
        return crate::snapshot::ebs::freeze::guard_main(mounts, Duration::from_millis(*timeout_ms)) as u8;
    }
    fast_path::init_logging(&cli.command, cli.log_format);
    // The front end (`tidemark`) has done the local step when it hands a per-file command over.
    if std::env::var_os(fast_path::LOCAL_STEP_DONE).is_none() {
        if let Some(code) = fast_path::Call::from_cli(&cli).and_then(|call| fast_path::local_step(&call)) {
            return code;
        }
    }
    let multi = !matches!(cli.command, Command::WalPush { .. } | Command::WalFetch { .. });
    let json = cli.output == Output::Json;
    let res = runtime(multi).and_then(|rt| rt.block_on(run(cli)));
    res.unwrap_or_else(|f| {
        if json {
            // One JSON document on stdout, failures included (the text still goes to stderr).
            outln!("{}", serde_json::json!({ "error": format!("{:#}", f.error), "exit_code": f.code }));
        }
        report(f)
    })
}

/// A tokio runtime: worker threads, or one thread for per-file commands.
fn runtime(multi: bool) -> Result<tokio::runtime::Runtime, Failure> {
    let mut builder =
        if multi { tokio::runtime::Builder::new_multi_thread() } else { tokio::runtime::Builder::new_current_thread() };
    builder.enable_all().build().map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}").into())
}

fn load_config(cli: &Cli) -> Result<Config, Failure> {
    Ok(Config::load(cli.config.as_deref())?)
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    match &cli.command {
        Command::Keygen { out } => keys::keygen(&cli, out).await,
        Command::Daemon => {
            let cfg = load_config(&cli)?;
            crate::daemon::run(cfg).await?;
            Ok(0)
        }
        Command::Backup { action } => backup::run(&cli, action).await,
        Command::Restore { .. } => restore::run(&cli).await,
        Command::Window { cluster } => window::run(&cli, cluster).await,
        Command::WalIndex { action } => wal_index::run(&cli, action).await,
        Command::Drill { action } => drill::run(&cli, action).await,
        Command::Find { .. } => find::run(&cli).await,
        Command::Verify { cluster, deep } => verify::run(&cli, cluster, deep).await,
        Command::Policy { action } => policy::run(&cli, action).await,
        Command::Deprovision { cluster, yes } => lifecycle::deprovision(&cli, cluster, yes).await,
        Command::AutomaticBackups { state } => lifecycle::automatic_backups(&cli, *state).await,
        Command::Status => {
            let cfg = load_config(&cli)?;
            let repo = Repository::open(&cfg).await?;
            require_cluster(&repo).await?;
            let st = crate::cmd::status::gather(&cfg, &repo).await?;
            match cli.output {
                Output::Json => render::json(&st)?,
                Output::Text => {
                    out!("{}", crate::cmd::status::render(&st));
                    // On a terminal, the window as `window` draws it.
                    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                        let (horizon, now) = (window::horizon(&repo).await, chrono::Utc::now());
                        let width = window::terminal_width().saturating_sub(4).clamp(20, 200);
                        for (tli, w) in &st.windows {
                            out!("timeline {tli}:\n{}", window::bar(w, horizon, now, width));
                        }
                    }
                }
            }
            Ok(if st.problems.is_empty() { 0 } else { 1 })
        }
        Command::Check { timeout } => {
            let cfg = load_config(&cli)?;
            let path = cli.config.as_ref().map(|c| absolute(c)).transpose()?;
            let r = crate::cmd::check::run(&cfg, path.as_deref(), Duration::from_secs(*timeout)).await;
            match cli.output {
                Output::Json => render::json(&r)?,
                Output::Text => out!("{}", crate::cmd::check::render(&r)),
            }
            Ok(if r.ok { 0 } else { 1 })
        }
        Command::Demo => {
            let cfg = Config::load_or_defaults(cli.config.as_deref())?;
            let (bin, user) = (cfg.postgres.bin_dir.clone(), cfg.postgres.os_user.clone());
            tokio::task::spawn_blocking(move || crate::cmd::demo::run(bin.as_deref(), &user))
                .await
                .map_err(anyhow::Error::from)??;
            Ok(0)
        }
        Command::WalPush { path } => wal::push_direct(&load_config(&cli)?, path).await,
        Command::WalFetch { name, dest } => {
            let began = std::time::Instant::now();
            let res = match load_config(&cli) {
                Ok(cfg) => wal::fetch_from_archive(&cfg, name, dest).await.inspect(|code| {
                    if *code == 0 {
                        fast_path::note_fetch_timing(&cfg, began);
                    }
                }),
                Err(f) => Err(f),
            };
            res.map_err(|f| fast_path::fetch_abort(name, f))
        }
        Command::WalPrefetch { name } => wal::prefetch(&load_config(&cli)?, name).await,
        Command::WalRemove { file, cluster, yes } => wal::remove(&cli, file, cluster.as_deref(), *yes).await,
        Command::FreezeGuard { .. } => Err(usage("freeze-guard runs before the runtime starts")),
        Command::DistAssets { .. } => Err(usage("dist-assets is run by tidemark-agent before any command")),
        Command::DaemonStats => {
            let cfg = load_config(&cli)?;
            match control::call(&cfg.daemon.socket, &Request::Stats, Duration::from_secs(10)).await {
                Ok(Response::Stats(s)) => {
                    render::json(&s)?;
                    Ok(0)
                }
                Ok(other) => Err(anyhow::anyhow!("unexpected answer from daemon: {other:?}").into()),
                Err(e) => Err(anyhow::anyhow!("{e}; is `tidemark daemon` running?").into()),
            }
        }
    }
}

async fn open_repo(cfg: &Config, cluster: Option<&str>) -> Result<Repository, Failure> {
    let repo = Repository::open(cfg).await?;
    Ok(match cluster {
        Some(h) => repo.for_cluster(h),
        None => repo,
    })
}

/// The repository seen as an existing cluster: a read of a handle nothing archived under (a
/// typo, a wrong URL) is a failure, never an empty "ok".
async fn open_existing(cfg: &Config, cluster: Option<&str>) -> Result<Repository, Failure> {
    let repo = open_repo(cfg, cluster).await?;
    require_cluster(&repo).await?;
    Ok(repo)
}

async fn require_cluster(repo: &Repository) -> Result<(), Failure> {
    if crate::repo::cluster::load(repo).await?.is_some() {
        return Ok(());
    }
    let there = crate::sweep::clusters(repo).await?;
    if there.is_empty() {
        return Err(anyhow::anyhow!(
            "{} does not exist or holds no cluster: check repository.url, or, if nothing was archived or backed up under '{}' yet, take a first backup with `tidemark backup create`",
            repo.store().describe(),
            repo.cluster()
        )
        .into());
    }
    Err(anyhow::anyhow!(
        "no cluster '{}' in {} (clusters there: {}): check `cluster` in the config, or --cluster",
        repo.cluster(),
        repo.store().describe(),
        there.join(", ")
    )
    .into())
}

/// RFC 3339, or bare `YYYY-MM-DD HH:MM:SS[.ffffff]` meaning UTC.
pub fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, Failure> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s.trim()) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s.trim(), f) {
            return Ok(t.and_utc());
        }
    }
    Err(usage(format!("'{s}' is not a time: use RFC 3339 (2026-11-24T12:00:00Z) or 'YYYY-MM-DD HH:MM:SS' (UTC)")))
}
