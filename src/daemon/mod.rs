//! The agent: control socket, archive read-ahead, and the periodic tasks (backup schedule,
//! retention sweep, index roll-up, cross-region copies), each its own task.

pub mod control;
pub mod metrics;
pub mod read_ahead;
pub mod schedule;

use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sd_notify::NotifyState;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::archive::push::Archiver;
use crate::config::Config;
use crate::daemon::control::{Request, Response};
use crate::daemon::read_ahead::ReadAhead;
use crate::repo::Repository;
use crate::wal::watch;

/// Binds the control socket, replacing a stale one left by a crashed daemon.
async fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    if socket.exists() {
        if UnixStream::connect(socket).await.is_ok() {
            anyhow::bail!("another daemon is already listening on {}", socket.display());
        }
        std::fs::remove_file(socket).with_context(|| format!("removing stale socket {}", socket.display()))?;
    }
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let l = UnixListener::bind(socket).with_context(|| format!("binding control socket {}", socket.display()))?;
    // Group access lets an archive_command running as another user of the group connect.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

/// What the control socket's requests reach besides read-ahead: the backups.
struct Backups {
    cfg: Config,
    repo: Repository,
    one: schedule::OneBackup,
    observed: Arc<metrics::Observed>,
}

async fn serve(stream: UnixStream, ra: Arc<ReadAhead>, backups: Arc<Backups>) {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    if BufReader::new(rd).read_line(&mut line).await.is_err() {
        return;
    }
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Push { path }) => match ra.request(Path::new(&path)).await {
            Ok((outcome, read_ahead)) => Response::Pushed { outcome, read_ahead },
            Err(message) => Response::Error { message },
        },
        Ok(Request::Stats) => Response::Stats(Box::new(ra.stats())),
        Ok(r @ (Request::Backup | Request::BackupIncremental)) => {
            let level = if matches!(r, Request::BackupIncremental) {
                crate::backup::Level::Incremental
            } else {
                crate::backup::Level::Full
            };
            match schedule::start_manual(&backups.cfg, &backups.repo, &backups.one, &backups.observed, level).await {
                Ok(id) => Response::BackupStarted { id },
                Err(message) => Response::Error { message },
            }
        }
        Ok(Request::FetchTiming { seconds }) => {
            ra.record_fetch(seconds);
            Response::Noted
        }
        Err(e) => Response::Error { message: format!("bad request: {e}") },
    };
    if let Ok(mut out) = serde_json::to_string(&resp) {
        out.push('\n');
        let _ = wr.write_all(out.as_bytes()).await;
    }
}

/// Tells systemd (Type=notify) something, when run under it.
pub fn sd_notify(state: NotifyState<'_>) {
    let res = match std::env::var_os("NOTIFY_SOCKET") {
        // The crate connects by path only; systemd also names abstract sockets ('@name').
        Some(p) if p.as_encoded_bytes().starts_with(b"@") => notify_abstract(&p.as_encoded_bytes()[1..], &state),
        _ => sd_notify::notify(&[state]),
    };
    if let Err(e) = res {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Sends `state` to the abstract socket `name`, as the crate does to a path.
fn notify_abstract(name: &[u8], state: &NotifyState<'_>) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    std::os::unix::net::UnixDatagram::unbound()?.send_to_addr(format!("{state}\n").as_bytes(), &addr).map(drop)
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    crate::archive::push::refuse_restored_copy(&cfg.postgres.data_dir, &cfg.cluster)?;
    let repo = Repository::open(&cfg).await?;
    let mut archiver =
        Archiver::new(repo.clone()).only_from(&cfg.postgres.data_dir.join("pg_wal")).batching_summaries();
    match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&cfg.daemon.state_dir) {
        Ok(()) => archiver = archiver.with_journal(&cfg.daemon.state_dir.join("wal-summaries.journal")),
        Err(e) => {
            tracing::warn!(state_dir = %cfg.daemon.state_dir.display(), error = %e, "cannot create daemon.state_dir: WAL summaries waiting for their batch are not journaled (a crash leaves them to the next roll-up)")
        }
    }
    let archiver = Arc::new(archiver);
    let ra = Arc::new(ReadAhead::new(archiver, &cfg.postgres.data_dir, cfg.archive.workers));
    let listener = bind(&cfg.daemon.socket).await?;
    let mut watch = watch::watch(&cfg.postgres.data_dir).with_context(|| {
        format!(
            "watching {}/pg_wal/archive_status (is postgres.data_dir right, and readable by this user?)",
            cfg.postgres.data_dir.display()
        )
    })?;
    let observed = Arc::new(metrics::Observed::default());
    let metrics = match &cfg.daemon.metrics_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding daemon.metrics_listen {addr}"))?;
            let local = l.local_addr().ok();
            if local.is_some_and(|a| !a.ip().is_loopback()) {
                // Allowed by daemon.metrics_public; say so where an operator will look.
                tracing::warn!(%addr, "serving Prometheus metrics off loopback (daemon.metrics_public = true): anyone who can reach this address can read them");
            } else {
                tracing::info!(%addr, "serving Prometheus metrics");
            }
            let sources = metrics::Sources {
                ra: ra.clone(),
                observed: observed.clone(),
                archive_status: cfg.postgres.data_dir.join("pg_wal/archive_status"),
                state_dir: cfg.daemon.state_dir.clone(),
            };
            Some(tokio::spawn(metrics::serve(l, Arc::new(sources))))
        }
        None => None,
    };
    tracing::info!(socket = %cfg.daemon.socket.display(), data_dir = %cfg.postgres.data_dir.display(), workers = cfg.archive.workers, "daemon ready");
    sd_notify(NotifyState::Ready);

    let scanner = {
        let ra = ra.clone();
        tokio::spawn(async move {
            // Events wake the scan; the tick covers dropped events and retry back-off.
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    ev = watch.changes.recv() => if ev.is_none() { break },
                }
                ra.scan();
                ra.settle(None).await;
            }
        })
    };
    let one_backup = schedule::OneBackup::default();
    let backups =
        Arc::new(Backups { cfg: cfg.clone(), repo: repo.clone(), one: one_backup.clone(), observed: observed.clone() });
    let periodic = schedule::spawn(cfg.clone(), repo, one_backup, observed);
    let watchdog = tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            sd_notify(NotifyState::Watchdog);
        }
    });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => { tokio::spawn(serve(stream, ra.clone(), backups.clone())); }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    sd_notify(NotifyState::Stopping);
    tracing::info!("shutting down: finishing uploads in flight");
    scanner.abort();
    for t in &periodic {
        t.abort();
    }
    watchdog.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    drop(listener);
    let _ = std::fs::remove_file(&cfg.daemon.socket);
    if tokio::time::timeout(Duration::from_secs(60), ra.drain()).await.is_err() {
        tracing::warn!("uploads still running after 60 s; PostgreSQL will push them again");
    }
    ra.flush().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifies_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("tidemark-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        notify_abstract(name.as_bytes(), &NotifyState::Ready).unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
    }
}
