//! Runs a parsed command: loads config, calls one library function, prints, picks the exit code.
//!
//! Exit codes: 0 ok; 1 operational failure (or `wal-fetch`: not archived); 2 usage/config.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{Cli, Command, Output};
use crate::codec::Keyring;
use crate::config::Config;
use crate::daemon::control::{self, ClientError, Request, Response};
use crate::repo::Repository;
use crate::wal::fetch::{self, FetchOutcome, Spool};
use crate::wal::push::Archiver;

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    /// Process exit code.
    pub code: u8,
    /// What went wrong and what to do.
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let error: anyhow::Error = e.into();
        let code = if error.downcast_ref::<crate::config::ConfigError>().is_some() { 2 } else { 1 };
        Failure { code, error }
    }
}

fn usage(msg: impl std::fmt::Display) -> Failure {
    Failure { code: 2, error: anyhow::anyhow!("{msg}") }
}

/// Commands PostgreSQL calls once per file log only warnings by default (they land in its log).
fn init_logging(cmd: &Command) {
    let default = match cmd {
        Command::WalPush { .. } | Command::WalFetch { .. } | Command::WalPrefetch { .. } => "warn",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TIDEMARK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("tidemark={default},warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Entry point used by `main`: returns the exit code.
pub fn main(cli: Cli) -> u8 {
    init_logging(&cli.command);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tidemark: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("tidemark: error: {:#}", f.error);
            f.code
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config, Failure> {
    Ok(Config::load(cli.config.as_deref())?)
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    match &cli.command {
        Command::Keygen { out } => {
            let (ring, id) = Keyring::keygen(out)?;
            let n = ring.ids().count();
            match cli.output {
                Output::Json => println!("{}", serde_json::json!({ "keyring": out, "active_key": id, "keys": n })),
                Output::Text => println!("wrote key '{id}' to {} (active; {n} key(s) in the keyring)", out.display()),
            }
            Ok(0)
        }
        Command::Daemon => {
            let cfg = load_config(&cli)?;
            crate::daemon::run(cfg).await?;
            Ok(0)
        }
        Command::Demo => {
            let cfg = load_config(&cli)?;
            let (bin, user) = (cfg.postgres.bin_dir.clone(), cfg.postgres.os_user.clone());
            tokio::task::spawn_blocking(move || crate::demo::run(bin.as_deref(), &user))
                .await
                .map_err(anyhow::Error::from)??;
            Ok(0)
        }
        Command::WalPush { path } => wal_push(&load_config(&cli)?, path).await,
        Command::WalFetch { name, dest } => wal_fetch(&cli, &load_config(&cli)?, name, dest).await,
        Command::WalPrefetch { name } => wal_prefetch(&load_config(&cli)?, name).await,
        Command::DaemonStats => {
            let cfg = load_config(&cli)?;
            match control::call(&cfg.daemon.socket, &Request::Stats, Duration::from_secs(10)).await {
                Ok(Response::Stats(s)) => {
                    println!("{}", serde_json::to_string_pretty(&s).map_err(anyhow::Error::from)?);
                    Ok(0)
                }
                Ok(other) => Err(anyhow::anyhow!("unexpected answer from daemon: {other:?}").into()),
                Err(e) => Err(anyhow::anyhow!("{e}; is `tidemark daemon` running?").into()),
            }
        }
    }
}

fn absolute(path: &Path) -> Result<PathBuf, Failure> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| anyhow::anyhow!("cannot read the current directory: {e}"))?;
    Ok(cwd.join(path))
}

/// `wal-push`: through the daemon when one answers, else directly.
async fn wal_push(cfg: &Config, path: &Path) -> Result<u8, Failure> {
    let path = absolute(path)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| usage(format!("{} has no file name", path.display())))?
        .to_string();
    let req = Request::Push { path: path.display().to_string() };
    match control::call(&cfg.daemon.socket, &req, Duration::from_secs(600)).await {
        Ok(Response::Pushed { outcome, read_ahead }) => {
            tracing::info!(file = %name, ?outcome, read_ahead, "archived via daemon");
            return Ok(0);
        }
        Ok(Response::Error { message }) => {
            return Err(anyhow::anyhow!("daemon could not archive {name}: {message}").into())
        }
        Ok(other) => tracing::warn!(?other, "unexpected daemon answer; pushing directly"),
        Err(ClientError::NoDaemon(..)) => {}
        Err(e @ ClientError::Broken(..)) => tracing::warn!(error = %e, "pushing directly"),
    }
    let repo = Repository::open(cfg).await?;
    let outcome = Archiver::new(repo).push(&path).await?;
    tracing::info!(file = %name, ?outcome, "archived directly");
    Ok(0)
}

/// The segment size, cached in the spool so each restore_command call saves a round trip.
async fn cached_segment_size(repo: &Repository, spool: &Spool) -> Result<u64, Failure> {
    let cache = spool.dir().join(".segment_size");
    if let Some(n) = std::fs::read_to_string(&cache).ok().and_then(|s| s.trim().parse::<u64>().ok()) {
        return Ok(n);
    }
    let n = fetch::segment_size(repo).await?;
    let _ = std::fs::create_dir_all(spool.dir()).and_then(|_| std::fs::write(&cache, n.to_string()));
    Ok(n)
}

/// `wal-fetch`: exit 1 when the file is not archived.
async fn wal_fetch(cli: &Cli, cfg: &Config, name: &str, dest: &Path) -> Result<u8, Failure> {
    let repo = Repository::open(cfg).await?;
    let spool = Spool::new(&cfg.fetch.spool_dir, &cfg.cluster);
    let seg_size = cached_segment_size(&repo, &spool).await?;
    let outcome = fetch::fetch(&repo, &spool, name, dest, seg_size).await?;
    tracing::info!(file = %name, ?outcome, "wal-fetch");
    if outcome == FetchOutcome::NotArchived {
        eprintln!("tidemark: {name} is not in the archive ({})", repo.store().describe());
        return Ok(1);
    }
    if cfg.fetch.prefetch > 0 && crate::wal::name::WalFile::parse(name, seg_size).is_ok_and(|f| f.is_segment()) {
        start_prefetcher(cli, name);
    }
    Ok(0)
}

/// Starts a detached `wal-prefetch` so read-ahead outlives this short-lived process.
fn start_prefetcher(cli: &Cli, name: &str) {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    if let Some(c) = &cli.config {
        cmd.arg("--config").arg(c);
    }
    cmd.arg("wal-prefetch")
        .arg(name)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    if let Err(e) = cmd.spawn() {
        tracing::warn!(error = %e, "cannot start read-ahead");
    }
}

/// `wal-prefetch`: one read-ahead pass, skipped when another pass holds the spool lock.
async fn wal_prefetch(cfg: &Config, name: &str) -> Result<u8, Failure> {
    let repo = Repository::open(cfg).await?;
    let spool = Spool::new(&cfg.fetch.spool_dir, &cfg.cluster);
    std::fs::create_dir_all(spool.dir())
        .map_err(|e| anyhow::anyhow!("creating spool {}: {e}", spool.dir().display()))?;
    let lock = std::fs::File::create(spool.dir().join(".lock")).map_err(|e| anyhow::anyhow!("spool lock: {e}"))?;
    if lock.try_lock().is_err() {
        return Ok(0);
    }
    let seg_size = cached_segment_size(&repo, &spool).await?;
    let n = fetch::prefetch(&repo, &spool, name, cfg.fetch.prefetch, cfg.archive.workers, seg_size).await?;
    tracing::info!(after = %name, spooled = n, "read-ahead done");
    Ok(0)
}
