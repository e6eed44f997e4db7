//! Cross-region copies: mirror the repository's clusters into the repository configured
//! for each copy region. Sealed objects are copied as they are (the envelope binds the
//! object key, which is the same there); backups are copied data first and manifest last,
//! so a listed copy is always whole; EBS snapshots are copied with CopySnapshot and the
//! copy's manifest names them. What the source no longer has is purged from the copy, so
//! copies follow the source's retention.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;

use crate::catalog::backup::{self, BackupState, Manifest};
use crate::catalog::{policy, purge};
use crate::config::Config;
use crate::repo::Repository;
use crate::snapshot::ec2::{self, Ec2};

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Synced {
    /// Destination region.
    pub region: String,
    /// Objects copied (WAL, index, bundles, records).
    pub objects: u64,
    /// Backups completed in the copy.
    pub backups: u64,
    /// EBS snapshots copied.
    pub snapshots: u64,
    /// Backups purged from the copy because the source no longer has them.
    pub purged: u64,
    /// Objects deleted from the copy because the source no longer has them.
    pub deleted: u64,
}

async fn copy_object(src: &Repository, dst: &Repository, key: &str) -> anyhow::Result<bool> {
    let Some(bytes) = src.store().get_bytes(key).await? else { return Ok(false) };
    dst.store().put(key, bytes).await?;
    Ok(true)
}

/// Keys under `prefix` in the source and in the copy.
async fn keys(r: &Repository, prefix: &str) -> anyhow::Result<BTreeSet<String>> {
    Ok(r.store().list(prefix).await?.into_iter().map(|m| m.key).collect())
}

/// Mirrors every cluster of `src` into `dst` (the repository for `region`).
pub async fn sync(cfg: &Config, src: &Repository, dst: &Repository, region: &str) -> anyhow::Result<Synced> {
    let mut out = Synced { region: region.to_string(), ..Default::default() };
    let kms = cfg.regions.get(region).and_then(|r| r.kms_key_id.clone());
    for h in policy::clusters(src).await? {
        let (s, d) = (src.for_cluster(&h), dst.for_cluster(&h));
        let base = s.cluster_prefix();
        // The cluster record, WAL and its index: copy what is missing, drop what is gone.
        let rec = format!("{base}cluster.json");
        copy_object(&s, &d, &rec).await?;
        for sub in ["wal/", "wal-index/"] {
            let prefix = format!("{base}{sub}");
            let (have, copied) = (keys(&s, &prefix).await?, keys(&d, &prefix).await?);
            for k in have.difference(&copied) {
                if copy_object(&s, &d, k).await? {
                    out.objects += 1;
                }
            }
            for k in copied.difference(&have) {
                d.store().delete(k).await?;
                out.deleted += 1;
            }
        }
        // Backups: completed ones copied whole, then their manifest; gone ones purged.
        let src_backups = backup::list(&s).await?;
        let dst_backups = backup::list(&d).await?;
        for m in src_backups.iter().filter(|m| m.state == BackupState::Completed) {
            if dst_backups.iter().any(|c| c.id == m.id && c.state == BackupState::Completed) {
                continue;
            }
            let data = format!("{}data/", s.backup_prefix(&m.id));
            let have = keys(&d, &data).await?;
            for k in keys(&s, &data).await? {
                if !have.contains(&k) && copy_object(&s, &d, &k).await? {
                    out.objects += 1;
                }
            }
            let mut copy = m.clone();
            if let Some(refs) = &m.ebs {
                out.snapshots += copy_snapshots(cfg, m, refs, region, kms.as_deref(), &mut copy).await?;
            }
            backup::save(&d, &copy).await?;
            out.backups += 1;
            tracing::info!(backup = %m.id, cluster = %h, %region, "backup copied");
        }
        let alive: BTreeSet<&str> =
            src_backups.iter().filter(|m| m.state != BackupState::Purging).map(|m| m.id.as_str()).collect();
        for c in dst_backups.iter().filter(|c| !alive.contains(c.id.as_str())) {
            purge::purge(&d, &c.id).await.with_context(|| format!("purging {} from the {region} copy", c.id))?;
            out.purged += 1;
        }
    }
    Ok(out)
}

/// Tag on a snapshot copy naming the snapshot it was copied from.
const SOURCE_TAG: &str = "tidemark:source-snapshot";

async fn copy_snapshots(
    cfg: &Config,
    m: &Manifest,
    refs: &backup::EbsRefs,
    region: &str,
    kms: Option<&str>,
    copy: &mut Manifest,
) -> anyhow::Result<u64> {
    let endpoint = cfg.ebs.endpoint.as_deref();
    let ec2 = Ec2::new(region, endpoint).await;
    let tags = crate::snapshot::ebs::backup_tags(m);
    let mut ids = Vec::new();
    let mut new_refs = refs.clone();
    new_refs.region = region.to_string();
    new_refs.availability_zone = String::new();
    // Copies left by an interrupted sync are reused rather than made twice.
    let earlier = ec2.tagged_snapshots(&[(ec2::TAG_BACKUP, &m.id), (ec2::TAG_CLUSTER, &m.cluster)]).await?;
    for v in new_refs.volumes.iter_mut() {
        let existing = earlier.iter().find(|s| s.tags.iter().any(|(k, val)| k == SOURCE_TAG && *val == v.snapshot_id));
        let id = match existing {
            Some(s) => s.id.clone(),
            None => {
                let mut t = tags.clone();
                t.push((SOURCE_TAG.into(), v.snapshot_id.clone()));
                // KMS keys are regional: the source's key cannot encrypt here.
                ec2.copy_snapshot_from(&refs.region, &v.snapshot_id, kms, &t).await?
            }
        };
        v.snapshot_id = id.clone();
        v.kms_key_id = kms.map(str::to_string);
        ids.push(id);
    }
    ec2.wait_snapshots(&ids, Duration::from_secs(cfg.ebs.snapshot_timeout_s)).await?;
    copy.ebs = Some(new_refs);
    Ok(ids.len() as u64)
}

/// The copy regions the policy asks for, each with its repository; an error names a
/// region that has no `[regions.R]` section.
pub async fn targets(cfg: &Config, src: &Repository) -> anyhow::Result<Vec<(String, Repository)>> {
    let p = policy::load(src).await?;
    let Some(home) = cfg.home_region() else {
        if p.copy_regions != "none" {
            anyhow::bail!(
                "copy_regions is {:?} but this repository has no region: set repository.region (or ebs.region)",
                p.copy_regions
            );
        }
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for r in p.copy_regions_for(home)? {
        let rc = cfg.for_region(&r)?;
        out.push((r, Repository::open(&rc).await?));
    }
    Ok(out)
}

/// Syncs every copy region once.
pub async fn sync_all(cfg: &Config, src: &Repository) -> anyhow::Result<Vec<Synced>> {
    let mut out = Vec::new();
    for (r, dst) in targets(cfg, src).await? {
        out.push(sync(cfg, src, &dst, &r).await?);
    }
    Ok(out)
}
