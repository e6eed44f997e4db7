//! The repository's retention policy (`policy.json`) and applying a retention plan:
//! purging backups and the WAL no kept backup or the PITR window needs.

pub mod purge;

use chrono::{DateTime, Utc};

use crate::catalog::backup::{self, BackupKind, BackupState};
use crate::catalog::retention::{self, BackupInfo, Kind, Plan, Policy};
use crate::repo::cluster::{self, ClusterState};
use crate::repo::{RepoError, Repository};
use crate::wal::name::{Segment, WalFile};

/// Object key of the policy (one per repository: the environment's).
pub const POLICY_KEY: &str = "policy.json";

/// The policy, or the defaults when none was ever set.
pub async fn load(repo: &Repository) -> Result<Policy, RepoError> {
    Ok(repo.get_json(POLICY_KEY).await?.unwrap_or_default())
}

/// Stores the policy.
pub async fn save(repo: &Repository, p: &Policy) -> Result<(), RepoError> {
    repo.put_json(POLICY_KEY, p).await
}

/// Cluster handles in the repository.
pub async fn clusters(repo: &Repository) -> Result<Vec<String>, RepoError> {
    // One level: the cluster directories, not the archive inside them.
    let level = repo.store().list_level("clusters/").await?;
    let mut h: Vec<String> = level.dirs.iter().filter_map(|d| d.split('/').nth(1).map(str::to_string)).collect();
    h.retain(|c| !c.is_empty());
    h.dedup();
    Ok(h)
}

/// What the planner needs to know of every backup of every cluster.
pub async fn catalog(repo: &Repository) -> anyhow::Result<Vec<BackupInfo>> {
    let mut out = Vec::new();
    for h in clusters(repo).await? {
        let r = repo.for_cluster(&h);
        let deprovisioned = cluster::load(&r).await?.is_some_and(|c| c.state == ClusterState::Deprovisioned);
        for m in backup::list_records(&r).await? {
            if m.state == BackupState::Purging {
                continue;
            }
            let started = m.start_time;
            out.push(BackupInfo {
                id: m.id.clone(),
                cluster: h.clone(),
                kind: match m.kind {
                    BackupKind::Automatic => Kind::Automatic,
                    BackupKind::Manual => Kind::Manual,
                    BackupKind::Final => Kind::Final,
                },
                completed: m.state == BackupState::Completed,
                failed: m.state == BackupState::Failed,
                start_lsn: m.start_lsn.0,
                stop_lsn: m.stop_lsn.map_or(u64::MAX, |l| l.0),
                stop_time: m.stop_at().unwrap_or(started),
                cluster_deprovisioned: deprovisioned,
            });
        }
    }
    Ok(out)
}

/// What [`sweep`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Swept {
    /// Abandoned running backups marked failed, as cluster/id.
    pub failed: Vec<String>,
    /// What the store removed.
    pub leftovers: crate::store::Leftovers,
}

impl Swept {
    /// Whether it did nothing.
    pub fn is_empty(&self) -> bool {
        self.failed.is_empty() && self.leftovers == crate::store::Leftovers::default()
    }
}

/// Marks every cluster's abandoned `running` backups failed (retention then purges them),
/// brings catalog records in line with their manifests, and removes what killed writers
/// left in the store (temp files, empty directories).
pub async fn sweep(repo: &Repository, now: DateTime<Utc>) -> anyhow::Result<Swept> {
    let mut out = Swept::default();
    let limit = backup::stale_limit();
    for h in clusters(repo).await? {
        let r = repo.for_cluster(&h);
        for id in backup::mark_stale(&r, now, limit).await? {
            out.failed.push(format!("{h}/{id}"));
        }
        let fixed = backup::reconcile_records(&r).await?;
        if fixed > 0 {
            tracing::info!(cluster = %h, records = fixed, "backup catalog records rewritten to match their manifests");
        }
    }
    out.leftovers = repo.store().sweep_leftovers().await?;
    Ok(out)
}

/// What `apply` deleted.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Applied {
    /// Backups purged, as cluster/id.
    pub backups: Vec<String>,
    /// WAL objects deleted.
    pub wal_objects: usize,
}

/// Whether `seg` is needed by a kept backup's start→stop range (pure).
fn needed_by_range(seg: Segment, seg_size: u64, cluster: &str, ranges: &[(String, u64, u64)]) -> bool {
    let (lo, hi) = (seg.start_lsn(seg_size).0, seg.start_lsn(seg_size).0 + seg_size);
    ranges.iter().any(|(c, start, stop)| c == cluster && lo <= *stop && *start < hi)
}

/// Applies a plan: purges every deleted backup (two-phase), resumes interrupted purges,
/// and deletes WAL below each cluster's keep-from LSN that no kept backup needs.
pub async fn apply(repo: &Repository, plan: &Plan) -> anyhow::Result<Applied> {
    let mut applied = Applied::default();
    for d in plan.deletes() {
        purge::purge(&repo.for_cluster(&d.cluster), &d.id).await?;
        applied.backups.push(format!("{}/{}", d.cluster, d.id));
    }
    for h in clusters(repo).await? {
        let r = repo.for_cluster(&h);
        for m in backup::list(&r).await?.into_iter().filter(|m| m.state == BackupState::Purging) {
            purge::purge(&r, &m.id).await?;
            applied.backups.push(format!("{h}/{}", m.id));
        }
        let deletions = wal_deletions(&r, plan).await?;
        for w in &deletions {
            r.store().delete(&w.key).await?;
            if let Some(ix) = &w.index_key {
                r.store().delete(ix).await?;
            }
            applied.wal_objects += 1;
        }
        if let (false, Some(&keep_from)) = (deletions.is_empty(), plan.wal_keep_from.get(&h)) {
            let seg_size = crate::repo::cluster::segment_size(&r).await?;
            for tli in crate::catalog::wal_index::timelines(&r).await? {
                crate::catalog::wal_index::forget_below(&r, tli, seg_size, keep_from / seg_size).await?;
                crate::catalog::block_index::forget_below(&r, tli, seg_size, keep_from / seg_size).await?;
            }
        }
    }
    Ok(applied)
}

/// A WAL object the plan deletes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WalDeletion {
    /// Cluster handle.
    pub cluster: String,
    /// File name (segment, .partial, .backup).
    pub name: String,
    /// Object key.
    pub key: String,
    /// Its wal-index entry, for segments.
    #[serde(skip)]
    pub index_key: Option<String>,
}

/// The WAL objects of `r`'s cluster below its keep-from LSN that no kept backup needs,
/// in listing order (what `apply` deletes, and what `policy set` warns about).
pub async fn wal_deletions(r: &Repository, plan: &Plan) -> anyhow::Result<Vec<WalDeletion>> {
    let h = r.cluster().to_string();
    let Some(&keep_from) = plan.wal_keep_from.get(&h) else { return Ok(Vec::new()) };
    let seg_size = crate::repo::cluster::segment_size(r).await?;
    let mut out = Vec::new();
    // Per timeline, only the keys that sort before the keep-from segment: a purge lists what
    // it may delete, not the whole archive.
    let mut below = Vec::new();
    for tli in crate::catalog::wal_index::timelines(r).await? {
        let floor = Segment { timeline: tli, number: keep_from / seg_size };
        let before = format!("{}{}", r.wal_prefix(tli), floor.name(seg_size));
        below.extend(r.store().list_between(&r.wal_prefix(tli), None, Some(&before)).await?);
    }
    for o in below {
        let name = o.key.rsplit('/').next().unwrap_or_default();
        let Ok(file) = WalFile::parse(name, seg_size) else { continue };
        // History files are tiny and every later timeline needs them: never purged.
        let seg = match file {
            WalFile::Segment(s) | WalFile::Partial(s) | WalFile::BackupLabel(s, _) => s,
            WalFile::History(_) => continue,
        };
        if seg.start_lsn(seg_size).0 + seg_size <= keep_from && !needed_by_range(seg, seg_size, &h, &plan.wal_ranges) {
            out.push(WalDeletion {
                cluster: h.clone(),
                name: name.to_string(),
                key: o.key.clone(),
                index_key: file.is_segment().then(|| r.wal_index_key(seg.timeline, name)),
            });
        }
    }
    Ok(out)
}

/// Every WAL object of every cluster the plan deletes.
pub async fn all_wal_deletions(repo: &Repository, plan: &Plan) -> anyhow::Result<Vec<WalDeletion>> {
    let mut out = Vec::new();
    for h in clusters(repo).await? {
        out.extend(wal_deletions(&repo.for_cluster(&h), plan).await?);
    }
    Ok(out)
}

/// Plans retention for the whole repository now.
pub async fn plan_now(repo: &Repository, policy: &Policy, now: DateTime<Utc>) -> anyhow::Result<Plan> {
    Ok(retention::plan(policy, &catalog(repo).await?, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::store::faulty::Faulty;
    use crate::store::memory::{repo_over, MemoryStore};
    use crate::sweep::purge::tests::{assert_consistent, stored_backup};

    /// Keeps no automatic backup: retention deletes every automatic and failed one.
    fn keep_manual_only() -> Policy {
        Policy { daily: 0, monthly: 0, yearly: 0, pitr_enabled: false, ..Policy::default() }
    }

    /// One retention run as the daemon's timer makes it: sweep, plan, apply.
    async fn retention(repo: &Repository) -> anyhow::Result<()> {
        let now = DateTime::parse_from_rfc3339("2026-11-28T00:00:00Z").map(|t| t.with_timezone(&Utc))?;
        sweep(repo, now).await?;
        let plan = plan_now(repo, &keep_manual_only(), now).await?;
        apply(repo, &plan).await?;
        Ok(())
    }

    /// Two clusters: an automatic and a failed backup to delete, a manual one to keep.
    async fn fresh() -> (Arc<Faulty<MemoryStore>>, Repository) {
        let store = Arc::new(Faulty::new(MemoryStore::new()));
        let repo = repo_over(store.clone(), "c");
        stored_backup(&repo, "20261126T030000Z", "automatic", "completed", 3).await;
        stored_backup(&repo, "20261126T040000Z", "manual", "completed", 2).await;
        stored_backup(&repo.for_cluster("d"), "20261126T050000Z", "automatic", "failed", 1).await;
        (store, repo)
    }

    #[tokio::test]
    async fn retention_stopped_at_any_step_leaves_a_catalog_the_next_run_finishes() {
        let (store, repo) = fresh().await;
        let setup = store.log().len();
        retention(&repo).await.unwrap();
        let steps = (store.log().len() - setup) as u64;
        let kept = store.inner().keys();
        assert!(kept.iter().all(|k| k.contains("20261126T040000Z")), "{kept:?}");
        assert_eq!(kept.len(), 5, "{kept:?}");
        for k in 0..steps {
            let (store, repo) = fresh().await;
            store.crash_after(k);
            assert!(retention(&repo).await.is_err(), "crash after {k} of {steps} operations");
            store.heal();
            for r in [repo.clone(), repo.for_cluster("d")] {
                assert_consistent(&r, store.inner(), &format!("crash after {k}")).await;
            }
            // The next run removes everything the stopped one meant to, and nothing else.
            retention(&repo).await.unwrap();
            assert_eq!(store.inner().keys(), kept, "crash after {k} operations");
        }
    }

    #[test]
    fn ranges_keep_overlapping_segments() {
        let sz = 16 << 20;
        let ranges = vec![("c".to_string(), 2 * sz + 40, 3 * sz + 8)];
        let seg = |n| Segment { timeline: 1, number: n };
        assert!(!needed_by_range(seg(1), sz, "c", &ranges));
        assert!(needed_by_range(seg(2), sz, "c", &ranges));
        assert!(needed_by_range(seg(3), sz, "c", &ranges));
        assert!(!needed_by_range(seg(4), sz, "c", &ranges));
        assert!(!needed_by_range(seg(2), sz, "other", &ranges));
    }
}
