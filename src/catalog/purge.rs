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

/// Deletes backup `id` of the repository's cluster (resuming an interrupted purge).
pub async fn purge(repo: &Repository, id: &str) -> anyhow::Result<()> {
    let Some(mut m) = backup::load(repo, id).await? else {
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
