//! `tidemark check`: proves the whole archive path once, as pgBackRest's `check` does:
//! config and keyring, the repository (write, read back, delete a probe), PostgreSQL's
//! archive settings, the daemon's socket, and a forced WAL switch seen in the repository.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::config::Config;
use crate::daemon::control::{self, Request, Response};
use crate::pg::conn::Session;
use crate::repo::Repository;
use crate::wal::name::{Segment, WalFile};

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// True when every check passed.
    pub ok: bool,
    /// The checks, in order.
    pub checks: Vec<Check>,
}

fn pass(name: &'static str, detail: String) -> Check {
    Check { name, ok: true, detail, fix: None }
}

fn fail(name: &'static str, detail: String, fix: impl Into<String>) -> Check {
    Check { name, ok: false, detail, fix: Some(fix.into()) }
}

/// What PostgreSQL's archive settings say is wrong (pure): (setting, found, fix).
pub fn settings_problems(
    archive_mode: &str,
    wal_level: &str,
    archive_command: &str,
    archive_timeout_s: u64,
    config_path: Option<&Path>,
) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    if !matches!(archive_mode, "on" | "always") {
        out.push((
            "archive_mode",
            archive_mode.to_string(),
            "set archive_mode = on and restart PostgreSQL".to_string(),
        ));
    }
    if !matches!(wal_level, "replica" | "logical") {
        out.push(("wal_level", wal_level.to_string(), "set wal_level = replica and restart PostgreSQL".to_string()));
    }
    let want = match config_path {
        Some(p) => format!("tidemark --config {} wal-push %p", p.display()),
        None => "tidemark wal-push %p".to_string(),
    };
    let calls_us =
        archive_command.contains("tidemark") && archive_command.contains("wal-push") && archive_command.contains("%p");
    let same_config = config_path.is_none_or(|p| archive_command.contains(&p.display().to_string()));
    if !calls_us || !same_config {
        out.push((
            "archive_command",
            format!("'{archive_command}'"),
            format!("set archive_command = '{want}' and reload PostgreSQL (it must use this config)"),
        ));
    }
    if archive_timeout_s == 0 {
        out.push((
            "archive_timeout",
            "0 (off)".to_string(),
            "set archive_timeout = '60s' so a quiet database still closes its segments and the window stays current"
                .to_string(),
        ));
    }
    out
}

/// Runs every check; `config_path` is the config named on the command line, if any.
pub async fn run(cfg: &Config, config_path: Option<&Path>, wait: Duration) -> Report {
    let mut checks = Vec::new();
    checks.push(pass(
        "config",
        config_path.map_or_else(|| crate::config::DEFAULT_PATH.into(), |p| p.display().to_string()),
    ));
    let repo = match Repository::open(cfg).await {
        Ok(r) => {
            checks.push(pass(
                "keyring",
                format!("{} ({} key(s))", cfg.encryption.keyring.display(), r.keyring().ids().count()),
            ));
            Some(r)
        }
        Err(e) => {
            checks.push(fail(
                "keyring and repository",
                format!("{e:#}"),
                "fix the keyring or repository.url named above",
            ));
            None
        }
    };
    if let Some(r) = &repo {
        checks.push(probe(r).await);
    }
    let seg = match Session::connect(&cfg.postgres.conninfo).await {
        Ok(s) => {
            checks.push(pass("postgresql", format!("connected, server_version_num {}", s.version)));
            checks.extend(settings(&s, config_path).await);
            Some(s)
        }
        Err(e) => {
            checks.push(fail("postgresql", format!("{e:#}"), "start PostgreSQL, or fix postgres.conninfo"));
            None
        }
    };
    checks.push(match control::call(&cfg.daemon.socket, &Request::Stats, Duration::from_secs(5)).await {
        Ok(Response::Stats(_)) => pass("daemon", format!("answering on {}", cfg.daemon.socket.display())),
        Ok(other) => fail("daemon", format!("unexpected answer {other:?}"), "restart the daemon"),
        Err(e) => fail(
            "daemon",
            format!("{e}"),
            "start it (systemctl start tidemark, or tidemark daemon); wal-push archives directly meanwhile, without push-ahead",
        ),
    });
    if let (Some(s), Some(r)) = (&seg, &repo) {
        checks.push(switch_archived(s, r, wait).await);
    }
    Report { ok: checks.iter().all(|c| c.ok), checks }
}

/// Writes, reads back and deletes a probe object.
async fn probe(repo: &Repository) -> Check {
    // At the root: no directory is left behind, and the root must be writable anyway.
    let key = format!("check-probe-{}", hex::encode(rand::random::<[u8; 8]>()));
    let data = Bytes::from_static(b"tidemark check probe");
    let res = async {
        repo.put_sealed(&key, data.clone()).await?;
        let back = repo.get_opened(&key).await?;
        repo.store().delete(&key).await?;
        anyhow::ensure!(back.as_deref() == Some(&data[..]), "the probe read back differs from what was written");
        anyhow::Ok(())
    }
    .await;
    match res {
        Ok(()) => pass("repository", format!("{}: write, read back and delete a probe", repo.store().describe())),
        Err(e) => fail(
            "repository",
            format!("{}: {e:#}", repo.store().describe()),
            "make the repository writable by this user (directory owner and mode, or the S3 policy: PutObject, GetObject, DeleteObject)",
        ),
    }
}

async fn settings(s: &Session, config_path: Option<&Path>) -> Vec<Check> {
    let show = |name: &'static str| async move { s.one(&format!("show {name}")).await.unwrap_or_default() };
    let mode = show("archive_mode").await;
    let level = show("wal_level").await;
    let command = show("archive_command").await;
    let timeout = s
        .one("select setting from pg_settings where name = 'archive_timeout'")
        .await
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let problems = settings_problems(&mode, &level, &command, timeout, config_path);
    let mut out = Vec::new();
    for name in ["archive_mode", "wal_level", "archive_command", "archive_timeout"] {
        match problems.iter().find(|p| p.0 == name) {
            Some((_, found, fix)) => out.push(fail(name, found.clone(), fix.clone())),
            None => {
                let v = match name {
                    "archive_mode" => mode.clone(),
                    "wal_level" => level.clone(),
                    "archive_command" => command.clone(),
                    _ => format!("{timeout} s"),
                };
                out.push(pass(name, v));
            }
        }
    }
    out
}

/// Forces a WAL switch and waits for the closed segment in the repository.
async fn switch_archived(s: &Session, repo: &Repository, wait: Duration) -> Check {
    let res = async {
        // A restore point writes a record, so the switch always closes a segment.
        s.one("select pg_create_restore_point('tidemark check')::text").await?;
        let name = s.one("select pg_walfile_name(pg_switch_wal())").await?;
        let seg_size: u64 = s.one("select setting from pg_settings where name = 'wal_segment_size'").await?.parse()?;
        let seg = Segment::parse(&name, seg_size)?;
        let key = repo.wal_key(&WalFile::Segment(seg), seg_size);
        let began = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            if repo.store().head(&key).await?.is_some() {
                return anyhow::Ok((name, began.elapsed()));
            }
            if began.elapsed() > wait {
                anyhow::bail!("{name} is not in the repository after {wait:?}");
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }
    .await;
    match res {
        Ok((name, took)) => pass("wal switch", format!("{name} archived {} ms after the switch", took.as_millis())),
        Err(e) => fail(
            "wal switch",
            format!("{e:#}"),
            "see pg_stat_archiver and the PostgreSQL log: archive_command is not reaching this repository",
        ),
    }
}

/// Text rendering: one PASS/FAIL line per check, with the fix.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    for c in &r.checks {
        out.push_str(&format!("{} {:<16} {}\n", if c.ok { "PASS" } else { "FAIL" }, c.name, c.detail));
        if let Some(f) = &c.fix {
            out.push_str(&format!("     {:<16} fix: {f}\n", ""));
        }
    }
    out.push_str(if r.ok { "check: ok\n" } else { "check: FAILED\n" });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_settings() {
        let cfg = Path::new("/etc/tidemark/a.toml");
        let good = "tidemark --config /etc/tidemark/a.toml wal-push %p";
        assert!(settings_problems("on", "replica", good, 60, Some(cfg)).is_empty());
        assert!(settings_problems("always", "logical", "tidemark wal-push %p", 60, None).is_empty());
        let names = |v: Vec<(&'static str, String, String)>| v.into_iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(
            names(settings_problems("off", "minimal", "cp %p /x", 0, None)),
            ["archive_mode", "wal_level", "archive_command", "archive_timeout"]
        );
        // Calling tidemark with another config is as wrong as not calling it.
        let other = settings_problems("on", "replica", "tidemark --config /etc/other.toml wal-push %p", 60, Some(cfg));
        assert_eq!(names(other.clone()), ["archive_command"]);
        assert!(other[0].2.contains(good), "{}", other[0].2);
    }
}
