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

/// What the daemon's copier remembers between syncs, so that a sync costs what is new:
/// the last WAL key copied per region, cluster and timeline, and when each region was last
/// reconciled in full (everything listed on both sides, what the source lost deleted).
#[derive(Debug, Default)]
pub struct Marks {
    wal: std::collections::HashMap<(String, String, u32), Mark>,
    full_at: std::collections::HashMap<String, std::time::Instant>,
}

/// One timeline's copy mark: every key up to `below` is copied, and so are `recent`.
#[derive(Debug, Default)]
struct Mark {
    below: String,
    recent: BTreeSet<String>,
}

impl Mark {
    /// Moves the mark up to the newest [`MARK_TRAIL`] keys: segments pushed ahead in
    /// parallel can land behind ones already copied, so the window after it is listed again.
    fn trail(&mut self) {
        while self.recent.len() > MARK_TRAIL {
            if let Some(k) = self.recent.pop_first() {
                self.below = k;
            }
        }
    }
}

/// Keys after the mark listed again each sync (more than parallel pushes run at once).
const MARK_TRAIL: usize = 256;

/// How often the copier lists everything on both sides.
pub const FULL_RECONCILE: Duration = Duration::from_secs(3600);

/// Copies the WAL of one cluster: in full (both sides listed, what the source lost
/// deleted), or from the high-water mark of each timeline on.
async fn sync_wal(
    s: &Repository,
    d: &Repository,
    region: &str,
    marks: &mut Marks,
    full: bool,
    out: &mut Synced,
) -> anyhow::Result<()> {
    let h = s.cluster().to_string();
    let base = s.cluster_prefix();
    let prefix = format!("{base}wal/");
    if full {
        let (have, copied) = (keys(s, &prefix).await?, keys(d, &prefix).await?);
        for k in have.difference(&copied) {
            if copy_object(s, d, k).await? {
                out.objects += 1;
            }
        }
        for k in copied.difference(&have) {
            d.store().delete(k).await?;
            out.deleted += 1;
        }
        marks.wal.retain(|(r, c, _), _| !(r == region && *c == h));
        for tli in crate::catalog::wal_index::timelines(s).await? {
            let tp = s.wal_prefix(tli);
            let mut mark = Mark {
                recent: have.range(tp.clone()..).take_while(|k| k.starts_with(&tp)).cloned().collect(),
                ..Mark::default()
            };
            mark.trail();
            marks.wal.insert((region.to_string(), h.clone(), tli), mark);
        }
        return Ok(());
    }
    for tli in crate::catalog::wal_index::timelines(s).await? {
        let slot = (region.to_string(), h.clone(), tli);
        let mark = marks.wal.entry(slot).or_default();
        let after = (!mark.below.is_empty()).then_some(mark.below.as_str());
        let listed = s.store().list_between(&s.wal_prefix(tli), after, None).await?;
        for m in &listed {
            if !mark.recent.contains(&m.key) {
                if copy_object(s, d, &m.key).await? {
                    out.objects += 1;
                }
                mark.recent.insert(m.key.clone());
            }
        }
        mark.trail();
    }
    Ok(())
}

/// Copies one cluster's commit-time index: per-segment summaries and blocks by name (one
/// directory level each), and what is rewritten in place each time: each timeline's
/// summary and its newest blocks (a completed block keeps its runs in the summary).
async fn sync_index(s: &Repository, d: &Repository, out: &mut Synced) -> anyhow::Result<()> {
    let base = format!("{}wal-index/", s.cluster_prefix());
    let timelines = s.store().list_level(&base).await?.dirs;
    for tp in timelines {
        for dir in [tp.clone(), format!("{tp}range/")] {
            let names = |l: crate::store::Level| l.objects.into_iter().map(|m| m.key).collect::<BTreeSet<String>>();
            let have = names(s.store().list_level(&dir).await?);
            let copied = names(d.store().list_level(&dir).await?);
            // The newest blocks take the daemon's batches in place until they are completed.
            let open_blocks: BTreeSet<&String> =
                if dir.ends_with("range/") { have.iter().rev().take(3).collect() } else { BTreeSet::new() };
            for k in &have {
                let rewritten = k.ends_with("/summary") || open_blocks.contains(k);
                if (rewritten || !copied.contains(k)) && copy_object(s, d, k).await? {
                    out.objects += 1;
                }
            }
            for k in copied.difference(&have) {
                d.store().delete(k).await?;
                out.deleted += 1;
            }
        }
    }
    Ok(())
}

/// Mirrors every cluster of `src` into `dst` (the repository for `region`), in full.
pub async fn sync(cfg: &Config, src: &Repository, dst: &Repository, region: &str) -> anyhow::Result<Synced> {
    sync_marked(cfg, src, dst, region, &mut Marks::default()).await
}

/// Mirrors every cluster of `src` into `dst`, WAL from the marks on, in full when the
/// region was not reconciled within [`FULL_RECONCILE`].
pub async fn sync_marked(
    cfg: &Config,
    src: &Repository,
    dst: &Repository,
    region: &str,
    marks: &mut Marks,
) -> anyhow::Result<Synced> {
    let mut out = Synced { region: region.to_string(), ..Default::default() };
    let kms = cfg.regions.get(region).and_then(|r| r.kms_key_id.clone());
    let full = marks.full_at.get(region).is_none_or(|t| t.elapsed() >= FULL_RECONCILE);
    for h in policy::clusters(src).await? {
        let (s, d) = (src.for_cluster(&h), dst.for_cluster(&h));
        let base = s.cluster_prefix();
        // The cluster record, WAL and its index: copy what is missing, drop what is gone.
        let rec = format!("{base}cluster.json");
        copy_object(&s, &d, &rec).await?;
        sync_wal(&s, &d, region, marks, full, &mut out).await?;
        sync_index(&s, &d, &mut out).await?;
        // Backups: completed ones copied whole, then their manifest; gone ones purged.
        // Catalog records say what to copy; the manifest of each backup copied is read whole.
        let src_backups = backup::list_records(&s).await?;
        let dst_backups = backup::list_records(&d).await?;
        for rec in src_backups.iter().filter(|m| m.state == BackupState::Completed) {
            if dst_backups.iter().any(|c| c.id == rec.id && c.state == BackupState::Completed) {
                continue;
            }
            let Some(m) = backup::load(&s, &rec.id).await?.filter(|m| m.state == BackupState::Completed) else {
                continue;
            };
            let m = &m;
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
    if full {
        marks.full_at.insert(region.to_string(), std::time::Instant::now());
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

/// Syncs every copy region once, in full.
pub async fn sync_all(cfg: &Config, src: &Repository) -> anyhow::Result<Vec<Synced>> {
    sync_all_marked(cfg, src, &mut Marks::default()).await
}

/// Syncs every copy region once, from the marks on (the daemon's minute tick).
pub async fn sync_all_marked(cfg: &Config, src: &Repository, marks: &mut Marks) -> anyhow::Result<Vec<Synced>> {
    let mut out = Vec::new();
    for (r, dst) in targets(cfg, src).await? {
        out.push(sync_marked(cfg, src, &dst, &r, marks).await?);
    }
    Ok(out)
}
