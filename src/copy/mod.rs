//! Cross-region copies: mirror the repository's clusters into the repository configured
//! for each copy region. Sealed objects are copied as they are (the envelope binds the
//! object key, which is the same there); backups are copied data first and manifest last,
//! so a listed copy is always whole; EBS snapshots are copied with CopySnapshot and the
//! copy's manifest names them. What the source no longer has is purged from the copy, so
//! copies follow the source's retention.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;

use crate::catalog::backup::{self, BackupState};
use crate::config::Config;
use crate::repo::Repository;
use crate::sweep::{self as policy, purge};

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

/// Copies one cluster's commit-time index: per-segment summaries, blocks and block-reference
/// packs by name (one directory level each), and what is rewritten in place each time:
/// each timeline's summary and its newest blocks (a completed block keeps its runs in the
/// summary).
async fn sync_index(s: &Repository, d: &Repository, out: &mut Synced) -> anyhow::Result<()> {
    let base = format!("{}wal-index/", s.cluster_prefix());
    let timelines = s.store().list_level(&base).await?.dirs;
    for tp in timelines {
        for dir in [tp.clone(), format!("{tp}range/"), format!("{tp}blocks/")] {
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
        // Rewritten in place as names change: brought over at each full reconcile.
        if full {
            copy_object(&s, &d, &s.relation_names_key()).await?;
        }
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
            // An incremental backup's parts point into older backups' bundles: those come too
            // (the older backup itself may be purged already, its bundles kept for this one).
            for b in m.bundles.iter().filter(|b| b.owner.is_some()) {
                let k = m.bundle_key(&s, b);
                if d.store().head(&k).await?.is_none() {
                    if !copy_object(&s, &d, &k).await? {
                        anyhow::bail!("backup {} points into {k}, which the source repository does not have; run `tidemark verify`", m.id);
                    }
                    out.objects += 1;
                }
            }
            let mut copy = m.clone();
            if m.ebs.is_some() {
                // What the backup holds outside the repository, copied by its provider.
                let provider = crate::snapshot::open(m.provider, cfg, &s, None);
                let (copied, n) =
                    provider.copy_to_region(m.backup_ref(), &m.held_outside(), region, kms.as_deref()).await?;
                copy.ebs = copied.ebs;
                out.snapshots += n;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use bytes::Bytes;

    use crate::archive::push::{Archiver, PushOutcome};
    use crate::store::faulty::{Fault, Faulty, Op};
    use crate::store::memory::{repo_over, MemoryStore};
    use crate::store::ObjectStore;
    use crate::sweep::purge::tests::{assert_consistent, stored_backup};
    use crate::wal::record::synth::history;

    /// A source repository with a cluster record, three archived segments with their
    /// summaries rolled up into index blocks, and a completed backup.
    async fn source() -> (Arc<MemoryStore>, Repository) {
        let store = Arc::new(MemoryStore::named("east"));
        let repo = repo_over(store.clone(), "c");
        let a = Archiver::new(repo.clone());
        for (name, bytes) in history(3, 0) {
            assert_eq!(a.push_bytes(&name, Bytes::from(bytes)).await.unwrap(), PushOutcome::Stored);
        }
        crate::catalog::wal_index::roll_up_all(&repo, true).await.unwrap();
        stored_backup(&repo, "20261126T030000Z", "manual", "completed", 2).await;
        (store, repo)
    }

    /// A copy repository (same keyring: sealed objects are copied as they are) holding a
    /// backup the source no longer has.
    async fn copy_of(src: &Repository) -> (Arc<Faulty<MemoryStore>>, Repository) {
        let store = Arc::new(Faulty::new(MemoryStore::named("west")));
        let repo = Repository::new(store.clone(), src.keyring().clone(), src.level(), src.cluster());
        stored_backup(&repo, "20261120T030000Z", "automatic", "completed", 2).await;
        (store, repo)
    }

    /// The copy lists the same backups and holds the source's objects, each opening to the
    /// same plaintext (manifests and records are sealed again as the copy saves them; the
    /// rest is copied byte for byte), and nothing else. A catalog record may be missing: a
    /// stop between a copied manifest and its record leaves it so (the listing reads the
    /// manifest instead, and the copier does not write it again).
    async fn assert_mirrored(
        src: &Repository,
        src_store: &MemoryStore,
        dst: &Repository,
        dst_store: &MemoryStore,
        when: &str,
    ) {
        let (want, got) = (backup::list_records(src).await.unwrap(), backup::list_records(dst).await.unwrap());
        assert_eq!(want, got, "{when}: the copy lists other backups");
        let (have, copied) = (src_store.keys(), dst_store.keys());
        assert!(copied.iter().all(|k| have.contains(k)), "{when}: the copy has more: {copied:?}");
        for k in have {
            let (a, b) = (src_store.bytes(&k), dst_store.bytes(&k));
            if b.is_none() && k.ends_with("/record.json") {
                continue;
            }
            assert!(b.is_some(), "{when}: {k} was not copied");
            if a != b {
                assert!(k.ends_with("/manifest.json") || k.ends_with("/record.json"), "{when}: {k} differs");
                let same = src.get_opened(&k).await.unwrap() == dst.get_opened(&k).await.unwrap();
                assert!(same, "{when}: {k} opens to other bytes");
            }
        }
    }

    #[tokio::test]
    async fn a_copy_reads_back_as_the_source() {
        let (src_store, src) = source().await;
        let (dst_store, dst) = copy_of(&src).await;
        let cfg = Config::default();
        let mut marks = Marks::default();
        let out = sync_marked(&cfg, &src, &dst, "us-west-1", &mut marks).await.unwrap();
        assert_eq!((out.backups, out.purged, out.snapshots), (1, 1, 0), "{out:?}");
        assert_mirrored(&src, &src_store, &dst, dst_store.inner(), "after a sync").await;
        // What was copied opens with the keyring: the backup, its data, the WAL.
        let m = backup::load(&dst, "20261126T030000Z").await.unwrap().unwrap();
        assert_eq!(Some(m.clone()), backup::load(&src, "20261126T030000Z").await.unwrap());
        let bundle = backup::bundle_key(&dst, &m.id, &m.bundles[0].name);
        assert_eq!(dst.get_opened(&bundle).await.unwrap().unwrap(), b"bundle!!");
        for (name, bytes) in history(3, 0) {
            let key = dst.wal_key(&crate::wal::name::WalFile::parse(&name, 1 << 20).unwrap(), 1 << 20);
            assert!(dst.get_opened(&key).await.unwrap().unwrap() == bytes, "{name} reads back");
        }
        assert_eq!(src_store.keys(), dst_store.inner().keys());
        // Nothing new: the next (marked) sync copies nothing but what is rewritten in place.
        let before = dst_store.log().len();
        let again = sync_marked(&cfg, &src, &dst, "us-west-1", &mut marks).await.unwrap();
        assert_eq!((again.backups, again.purged, again.deleted), (0, 0, 0), "{again:?}");
        let writes: Vec<String> = dst_store
            .log()
            .split_off(before)
            .into_iter()
            .filter(|l| matches!(l.op, Op::Put | Op::Delete))
            .map(|l| l.key)
            .collect();
        assert!(writes.iter().all(|k| k.ends_with("/cluster.json") || k.contains("/wal-index/")), "{writes:?}");
    }

    #[tokio::test]
    async fn a_sync_stopped_at_any_step_is_completed_by_the_next() {
        let (src_store, src) = source().await;
        let cfg = Config::default();
        let (dst_store, dst) = copy_of(&src).await;
        let setup = dst_store.log().len();
        sync_marked(&cfg, &src, &dst, "us-west-1", &mut Marks::default()).await.unwrap();
        let steps = (dst_store.log().len() - setup) as u64;
        assert!(steps > 20, "{steps} operations on the copy");
        for k in 0..steps {
            let (dst_store, dst) = copy_of(&src).await;
            // The daemon's copier: the same marks from one tick to the next.
            let mut marks = Marks::default();
            dst_store.crash_after(k);
            assert!(sync_marked(&cfg, &src, &dst, "us-west-1", &mut marks).await.is_err(), "crash after {k}");
            dst_store.heal();
            assert_consistent(&dst, dst_store.inner(), &format!("copy, crash after {k}")).await;
            sync_marked(&cfg, &src, &dst, "us-west-1", &mut marks).await.unwrap();
            assert_mirrored(&src, &src_store, &dst, dst_store.inner(), &format!("crash after {k}")).await;
        }
        // A source read failing midway: the copy is left whole, and the next sync finishes.
        let src_faulty = Arc::new(Faulty::new(MemoryStore::named("east")));
        for k in src_store.keys() {
            src_faulty.inner().put(&k, src_store.bytes(&k).unwrap()).await.unwrap();
        }
        let src = Repository::new(src_faulty.clone(), src.keyring().clone(), src.level(), src.cluster());
        for n in [1, 5, 9] {
            let (dst_store, dst) = copy_of(&src).await;
            src_faulty.fail(Fault::on(Op::Get).nth(n));
            assert!(sync_marked(&cfg, &src, &dst, "us-west-1", &mut Marks::default()).await.is_err(), "get {n}");
            src_faulty.heal();
            assert_consistent(&dst, dst_store.inner(), &format!("source get {n} failed")).await;
            sync_marked(&cfg, &src, &dst, "us-west-1", &mut Marks::default()).await.unwrap();
            assert_mirrored(&src, src_faulty.inner(), &dst, dst_store.inner(), &format!("source get {n} failed")).await;
        }
    }
}
