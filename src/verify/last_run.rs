//! The last `verify` run, kept in `daemon.state_dir` for the daemon to export as metrics.
//!
//! `verify` runs as its own process (the daily timer), so it leaves its result in a small
//! file beside the daemon's other state: local, no repository write, and read by the daemon
//! on each scrape (one small file read).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// File name under `daemon.state_dir`.
pub const FILE: &str = "verify-last.json";

/// What the last run found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    /// When it finished (RFC 3339).
    pub finished_at: String,
    /// Whether it found the archive and backups sound (false also when it could not run).
    pub ok: bool,
    /// Whether it was `--deep`.
    pub deep: bool,
    /// When a run last found everything sound (carried over from earlier runs).
    pub last_success_at: Option<String>,
}

impl LastRun {
    /// `finished_at` as a timestamp.
    pub fn finished(&self) -> Option<DateTime<Utc>> {
        parse(&self.finished_at)
    }

    /// `last_success_at` as a timestamp.
    pub fn last_success(&self) -> Option<DateTime<Utc>> {
        self.last_success_at.as_deref().and_then(parse)
    }
}

fn parse(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t).ok().map(|t| t.with_timezone(&Utc))
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The last run recorded in `state_dir`, if any (an unreadable file counts as none).
pub fn load(state_dir: &Path) -> Option<LastRun> {
    let text = std::fs::read_to_string(path(state_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The record of a run that finished `now`, following `previous` (pure).
pub fn next(previous: Option<&LastRun>, ok: bool, deep: bool, now: DateTime<Utc>) -> LastRun {
    let finished_at = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let last_success_at = if ok { Some(finished_at.clone()) } else { previous.and_then(|p| p.last_success_at.clone()) };
    LastRun { finished_at, ok, deep, last_success_at }
}

/// Records a run in `state_dir`, replacing the file atomically.
pub fn record(state_dir: &Path, ok: bool, deep: bool) -> std::io::Result<LastRun> {
    let run = next(load(state_dir).as_ref(), ok, deep, Utc::now());
    std::fs::create_dir_all(state_dir)?;
    let text = serde_json::to_vec_pretty(&run).map_err(std::io::Error::other)?;
    crate::wal::spool::write_atomic(&path(state_dir), &text, ".tmp.")?;
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_run_keeps_the_last_success() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let first = next(None, false, false, t("2026-12-01T03:00:00Z"));
        assert_eq!(first.last_success_at, None);
        let good = next(Some(&first), true, true, t("2026-12-02T03:00:00Z"));
        assert_eq!(good.last_success(), Some(t("2026-12-02T03:00:00Z")));
        let bad = next(Some(&good), false, false, t("2026-12-03T03:00:00Z"));
        assert_eq!((bad.ok, bad.finished()), (false, Some(t("2026-12-03T03:00:00Z"))));
        assert_eq!(bad.last_success(), Some(t("2026-12-02T03:00:00Z")));
    }

    #[test]
    fn records_and_loads_from_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert_eq!(load(&state), None);
        let run = record(&state, true, false).unwrap();
        assert_eq!(load(&state), Some(run));
        std::fs::write(state.join(FILE), b"not json").unwrap();
        assert_eq!(load(&state), None);
    }
}
