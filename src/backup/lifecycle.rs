//! Cluster lifecycle: excluding a cluster from automatic backups, and deprovisioning
//! (final backup when the policy keeps one, cluster marked, automatic backups purged).

use anyhow::{bail, Context};

use crate::catalog::backup::{self, BackupKind, BackupState, Manifest};
use crate::config::Config;
use crate::repo::cluster::{self, ClusterRecord, ClusterState};
use crate::repo::Repository;
use crate::sweep::{self as policy, purge};

async fn record(repo: &Repository) -> anyhow::Result<ClusterRecord> {
    cluster::load(repo).await?.with_context(|| {
        format!("cluster '{}' has never archived to this repository; nothing to change", repo.cluster())
    })
}

/// `automatic-backups enable|disable`: existing backups are untouched.
pub async fn set_automatic(repo: &Repository, enabled: bool) -> anyhow::Result<ClusterRecord> {
    let mut rec = record(repo).await?;
    rec.automatic_backups = enabled;
    cluster::update(repo, &rec).await?;
    Ok(rec)
}

/// What deprovisioning did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Deprovisioned {
    /// Final backup taken, if any.
    pub final_backup: Option<String>,
    /// Automatic backups purged.
    pub purged: Vec<String>,
    /// Backups that remain (final and manual).
    pub kept: Vec<String>,
}

/// `deprovision`: final backup (if keep_final and automatic backups are enabled), mark the
/// cluster deprovisioned, purge its automatic backups; final and manual ones stay.
pub async fn deprovision(cfg: &Config, repo: &Repository) -> anyhow::Result<Deprovisioned> {
    let mut rec = record(repo).await?;
    if rec.state == ClusterState::Deprovisioned {
        bail!(
            "cluster '{}' is already deprovisioned (at {})",
            rec.handle,
            rec.deprovisioned_at.clone().unwrap_or_default()
        );
    }
    let pol = policy::load(repo).await?;
    let final_backup = if pol.keep_final && rec.automatic_backups {
        let m: Manifest = crate::backup::create(cfg, repo, BackupKind::Final)
            .await
            .context("taking the final backup (PostgreSQL must be running; or run `tidemark automatic-backups disable` to deprovision without one)")?;
        Some(m.id)
    } else {
        None
    };
    rec.state = ClusterState::Deprovisioned;
    rec.deprovisioned_at = Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    cluster::update(repo, &rec).await?;
    let mut purged = Vec::new();
    let mut kept = Vec::new();
    for m in backup::list(repo).await? {
        if m.kind == BackupKind::Automatic || m.state == BackupState::Purging {
            purge::purge(repo, &m.id).await?;
            purged.push(m.id);
        } else {
            kept.push(m.id);
        }
    }
    Ok(Deprovisioned { final_backup, purged, kept })
}

/// `backup orphaned`: what remains of deprovisioned clusters.
pub async fn orphaned(repo: &Repository) -> anyhow::Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for h in policy::clusters(repo).await? {
        let r = repo.for_cluster(&h);
        if cluster::load(&r).await?.is_some_and(|c| c.state == ClusterState::Deprovisioned) {
            out.extend(backup::list(&r).await?);
        }
    }
    Ok(out)
}
