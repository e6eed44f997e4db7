//! Deleting a backup in two phases (mark, delete data, delete record), so a crash at any
//! step never leaves a listed, restorable-looking backup whose data is gone.

use anyhow::bail;

use crate::catalog::backup::{self, bundle_key, BackupState};
use crate::repo::Repository;

/// Test hook: `TIDEMARK_FAILPOINT=<name>` aborts the process there, as `kill -9` would.
pub fn failpoint(name: &str) {
    if std::env::var("TIDEMARK_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("tidemark: failpoint {name}: aborting");
        std::process::abort();
    }
}

/// What a failpoint does (see [`failpoint_async`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailAction {
    /// Abort the process, as `kill -9` would.
    Abort,
    /// Return an error; `Some(n)`: only the first `n` times in this process.
    Error(Option<u32>),
    /// Stop there (heartbeats go on) until killed.
    Pause,
    /// Stop there until the file at this path exists (a test's go-ahead, awaited, not slept).
    PauseUntil(std::path::PathBuf),
}

/// The action `spec` (the value of `TIDEMARK_FAILPOINT`) sets for failpoint `name`:
/// `name` aborts, `name:error` fails, `name:error:N` fails the first N times, `name:pause`
/// pauses, `name:pause-until:PATH` pauses until PATH exists (pure).
pub fn fail_action(spec: &str, name: &str) -> Option<FailAction> {
    if let Some(path) = spec.strip_prefix(name).and_then(|r| r.strip_prefix(":pause-until:")) {
        return Some(FailAction::PauseUntil(path.into()));
    }
    let mut parts = spec.split(':');
    if parts.next() != Some(name) {
        return None;
    }
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => Some(FailAction::Abort),
        (Some("error"), None, _) => Some(FailAction::Error(None)),
        (Some("error"), Some(n), None) => n.parse().ok().map(|n| FailAction::Error(Some(n))),
        (Some("pause"), None, _) => Some(FailAction::Pause),
        _ => None,
    }
}

/// Test hook with every [`FailAction`]: `TIDEMARK_FAILPOINT=<name>[:error[:N]|:pause]`.
pub async fn failpoint_async(name: &str) -> anyhow::Result<()> {
    static HITS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let Ok(spec) = std::env::var("TIDEMARK_FAILPOINT") else { return Ok(()) };
    match fail_action(&spec, name) {
        None => Ok(()),
        Some(FailAction::Abort) => {
            eprintln!("tidemark: failpoint {name}: aborting");
            std::process::abort();
        }
        Some(FailAction::Error(limit)) => {
            let hit = HITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if limit.is_none_or(|n| hit < n) {
                bail!("failpoint {name}: injected failure");
            }
            Ok(())
        }
        Some(FailAction::Pause) => {
            eprintln!("tidemark: failpoint {name}: paused");
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            }
        }
        Some(FailAction::PauseUntil(path)) => {
            eprintln!("tidemark: failpoint {name}: paused until {} exists", path.display());
            while !path.exists() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Ok(())
        }
    }
}

/// Deletes backup `id` of the repository's cluster (resuming an interrupted purge).
pub async fn purge(repo: &Repository, id: &str) -> anyhow::Result<()> {
    let Some(mut m) = backup::load(repo, id).await? else {
        // A catalog record left without its manifest (written by a sweep racing a purge):
        // nothing of the backup is restorable, so what remains goes.
        if repo.store().head(&backup::record_key(repo, id)).await?.is_some() {
            for o in repo.store().list(&repo.backup_prefix(id)).await? {
                repo.store().delete(&o.key).await?;
            }
            tracing::info!(backup = %id, cluster = %repo.cluster(), "removed what a purge left of a backup");
            return Ok(());
        }
        bail!("no backup {id} for cluster {}; see `tidemark backup list`", repo.cluster());
    };
    if m.state != BackupState::Purging {
        m.state = BackupState::Purging;
        backup::save(repo, &m).await?;
    }
    failpoint("purge-after-mark");
    if m.ebs.is_some() {
        let n = crate::snapshot::ebs::delete(repo.ec2_endpoint(), &m).await?;
        tracing::info!(backup = %id, snapshots = n, "EBS snapshots deleted");
    }
    for (i, b) in m.bundles.iter().enumerate() {
        repo.store().delete(&bundle_key(repo, id, &b.name)).await?;
        if i == 0 {
            failpoint("purge-mid-data");
        }
    }
    // Anything else under the backup's prefix (bundles of an older manifest version, strays).
    let prefix = repo.backup_prefix(id);
    let manifest = backup::manifest_key(repo, id);
    for o in repo.store().list(&prefix).await? {
        if o.key != manifest {
            repo.store().delete(&o.key).await?;
        }
    }
    failpoint("purge-before-record");
    repo.store().delete(&manifest).await?;
    tracing::info!(backup = %id, cluster = %repo.cluster(), "backup purged");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_actions() {
        assert_eq!(fail_action("purge-after-mark", "purge-after-mark"), Some(FailAction::Abort));
        assert_eq!(fail_action("purge-after-mark", "purge-mid-data"), None);
        assert_eq!(fail_action("backup-copy:error", "backup-copy"), Some(FailAction::Error(None)));
        assert_eq!(fail_action("backup-copy:error:2", "backup-copy"), Some(FailAction::Error(Some(2))));
        assert_eq!(fail_action("backup-copy:pause", "backup-copy"), Some(FailAction::Pause));
        assert_eq!(
            fail_action("backup-copy:pause-until:/t/go", "backup-copy"),
            Some(FailAction::PauseUntil("/t/go".into()))
        );
        assert_eq!(fail_action("backup-copy:error:x", "backup-copy"), None);
        assert_eq!(fail_action("backup-copy:nap", "backup-copy"), None);
        assert_eq!(fail_action("backup-copy-x", "backup-copy"), None);
    }
}
