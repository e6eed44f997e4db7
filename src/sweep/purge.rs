//! Deleting a backup in two phases (mark, delete data, delete record), so a crash at any
//! step never leaves a listed, restorable-looking backup whose data is gone.

use std::collections::BTreeSet;

use anyhow::bail;

use crate::catalog::backup::{self, BackupState};
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

/// The bundle keys that backups other than `id` still need: every bundle of an older
/// backup that a listed (not purging) manifest's parts point into, and every bundle of the
/// base of a backup running now (it is listing them). Read from the catalog records, with
/// only the incremental backups' manifests loaded whole.
pub async fn referenced(repo: &Repository, id: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let records = backup::list_records(repo).await?;
    for rec in records.iter().filter(|r| r.id != id && r.state != BackupState::Purging) {
        let Some(inc) = &rec.incremental else { continue };
        if rec.state == BackupState::Running {
            if let Some(base) = backup::load(repo, &inc.base).await? {
                out.extend(base.bundles.iter().map(|b| base.bundle_key(repo, b)));
            }
        }
        if let Some(m) = backup::load(repo, &rec.id).await? {
            out.extend(m.bundles.iter().filter(|b| b.owner.is_some()).map(|b| m.bundle_key(repo, b)));
        }
    }
    Ok(out)
}

/// The running incremental backup (with a live lease) whose base is `id`, if any.
async fn running_on(repo: &Repository, id: &str) -> anyhow::Result<Option<String>> {
    let now = chrono::Utc::now();
    Ok(backup::list_records(repo).await?.into_iter().find_map(|r| {
        let live = r.state == BackupState::Running
            && backup::stale_reason(&r, now, backup::stale_limit(), r.lease.as_ref().is_some_and(backup::holder_gone))
                .is_none();
        (live && r.incremental.as_ref().is_some_and(|i| i.base == id)).then(|| r.id.clone())
    }))
}

/// Deletes backup `id` of the repository's cluster (resuming an interrupted purge). Its
/// bundles that other backups' parts point into stay, under its prefix, until the last
/// of those backups is purged; then that purge deletes them.
pub async fn purge(repo: &Repository, id: &str) -> anyhow::Result<()> {
    let Some(mut m) = backup::load(repo, id).await? else {
        // A catalog record left without its manifest (written by a sweep racing a purge):
        // nothing of the backup is restorable, so what remains goes, but for the bundles
        // other backups point into.
        if repo.store().head(&backup::record_key(repo, id)).await?.is_some() {
            let keep = referenced(repo, id).await?;
            for o in repo.store().list(&repo.backup_prefix(id)).await? {
                if !keep.contains(&o.key) {
                    repo.store().delete(&o.key).await?;
                }
            }
            tracing::info!(backup = %id, cluster = %repo.cluster(), "removed what a purge left of a backup");
            return Ok(());
        }
        bail!("no backup {id} for cluster {}; see `tidemark backup list`", repo.cluster());
    };
    if m.state != BackupState::Purging {
        if let Some(r) = running_on(repo, id).await? {
            bail!(
                "backup {id} is the base of incremental backup {r}, which is running now; purge it once that backup has completed or failed"
            );
        }
        m.state = BackupState::Purging;
        backup::save(repo, &m).await?;
    } else {
        // Resumed: a crash between the manifest and its record left the record listing the
        // backup as it was, and the data is about to go.
        repo.put_json(&backup::record_key(repo, id), &backup::record_of(&m)).await?;
    }
    failpoint("purge-after-mark");
    // What the backup holds outside the repository (EBS snapshots) goes first: the
    // manifest that lists it is deleted last.
    if m.ebs.is_some() {
        let n = crate::snapshot::for_data(m.provider, repo).delete(m.backup_ref(), &m.held_outside()).await?;
        tracing::info!(backup = %id, snapshots = n, "EBS snapshots deleted");
    }
    // Marked first: a backup that starts from now on never takes this one as its base.
    let keep = referenced(repo, id).await?;
    let pb = crate::snapshot::progress::count_bar(m.bundles.len() as u64, &format!("purge {id}"), "bundles");
    let (mut kept, mut deleted) = (0usize, 0usize);
    // Whether each owner of borrowed bundles is still listed: one manifest read per owner.
    let mut owner_listed: std::collections::HashMap<&str, bool> = std::collections::HashMap::new();
    for b in &m.bundles {
        pb.inc(1);
        let key = m.bundle_key(repo, b);
        if keep.contains(&key) {
            kept += 1;
            continue;
        }
        if let Some(owner) = b.owner.as_deref() {
            // Another backup's bundle: while that backup is listed, its own purge deletes it.
            let listed = match owner_listed.get(owner) {
                Some(l) => *l,
                None => {
                    let l = backup::load(repo, owner).await?.is_some_and(|o| o.state != BackupState::Purging);
                    *owner_listed.entry(owner).or_insert(l)
                }
            };
            if listed {
                continue;
            }
        }
        repo.store().delete(&key).await?;
        deleted += 1;
        if deleted == 1 {
            failpoint("purge-mid-data");
        }
    }
    pb.finish_and_clear();
    if kept > 0 {
        tracing::info!(backup = %id, bundles = kept, "bundles kept: later incremental backups point into them");
    }
    // Anything else under the backup's prefix (bundles of an older manifest version, strays).
    let prefix = repo.backup_prefix(id);
    let manifest = backup::manifest_key(repo, id);
    for o in repo.store().list(&prefix).await? {
        if o.key != manifest && !keep.contains(&o.key) {
            repo.store().delete(&o.key).await?;
        }
    }
    failpoint("purge-before-record");
    repo.store().delete(&manifest).await?;
    tracing::info!(backup = %id, cluster = %repo.cluster(), "backup purged");
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    use bytes::Bytes;

    use crate::catalog::backup::{bundle_key, tests::old_manifest, Bundle, Manifest};
    use crate::store::faulty::Faulty;
    use crate::store::memory::{repo_over, MemoryStore};

    /// Stores backup `id` of `repo`'s cluster: its bundles, a stray object under its prefix
    /// (a bundle of an older manifest version), its manifest and catalog record.
    pub(crate) async fn stored_backup(
        repo: &Repository,
        id: &str,
        kind: &str,
        state: &str,
        bundles: usize,
    ) -> Manifest {
        let mut m = old_manifest(kind, state, "2026-11-26T03:00:00Z");
        m.id = id.to_string();
        m.cluster = repo.cluster().to_string();
        m.bundles = (0..bundles)
            .map(|i| Bundle { name: format!("b{i:06}"), plain_bytes: 8, stored_bytes: 8, owner: None })
            .collect();
        for b in &m.bundles {
            repo.put_sealed(&bundle_key(repo, id, &b.name), Bytes::from_static(b"bundle!!")).await.unwrap();
        }
        repo.store()
            .put(&format!("{}data/old-b000000", repo.backup_prefix(id)), Bytes::from_static(b"x"))
            .await
            .unwrap();
        backup::save(repo, &m).await.unwrap();
        m
    }

    /// No backup looks restorable without its data: every backup that a manifest or a
    /// catalog record shows as anything but purging has its manifest and every bundle in it.
    pub(crate) async fn assert_consistent(repo: &Repository, store: &MemoryStore, when: &str) {
        let manifests = backup::list(repo).await.unwrap();
        let records = backup::list_records(repo).await.unwrap();
        let live = manifests.iter().chain(&records).filter(|m| m.state != BackupState::Purging);
        for id in live.map(|m| m.id.as_str()).collect::<std::collections::BTreeSet<_>>() {
            let m = manifests.iter().find(|m| m.id == id);
            let m = m.unwrap_or_else(|| panic!("{when}: {id} is listed without a manifest"));
            for b in &m.bundles {
                let key = m.bundle_key(repo, b);
                assert!(store.bytes(&key).is_some(), "{when}: {id} is listed, but its {key} is gone");
            }
        }
    }

    /// Whether a catalog record says another state than its manifest.
    async fn stale_record(repo: &Repository) -> bool {
        let manifests = backup::list(repo).await.unwrap();
        let records = backup::list_records(repo).await.unwrap();
        records.iter().any(|r| manifests.iter().any(|m| m.id == r.id && m.state != r.state))
    }

    const GONE: &str = "20261126T030000Z";

    async fn fresh() -> (Arc<Faulty<MemoryStore>>, Repository) {
        let store = Arc::new(Faulty::new(MemoryStore::new()));
        let repo = repo_over(store.clone(), "c");
        stored_backup(&repo, GONE, "manual", "completed", 3).await;
        // Another backup's objects, which the purge leaves alone.
        repo.store().put("clusters/c/backups/20261126T040000Z/data/b000000", Bytes::new()).await.unwrap();
        (store, repo)
    }

    /// Purges [`GONE`] with the store crashing after `k` operations, then heals it; whether
    /// the purge failed (a resumed purge may take fewer than `k`).
    async fn crashed_purge(store: &Faulty<MemoryStore>, repo: &Repository, k: u64) -> bool {
        store.crash_after(k);
        let failed = purge(repo, GONE).await.is_err();
        store.heal();
        failed
    }

    #[tokio::test]
    async fn a_purge_stopped_at_any_step_is_finished_by_the_next() {
        let (store, repo) = fresh().await;
        let setup = store.log().len();
        purge(&repo, GONE).await.unwrap();
        let steps = (store.log().len() - setup) as u64;
        assert!(steps >= 9, "{steps} operations");
        let kept: Vec<String> = store.inner().keys();
        assert_eq!(kept, ["clusters/c/backups/20261126T040000Z/data/b000000"]);
        for k in 0..steps {
            let (store, repo) = fresh().await;
            assert!(crashed_purge(&store, &repo, k).await, "crash after {k} operations");
            assert_consistent(&repo, store.inner(), &format!("crash after {k}")).await;
            if stale_record(&repo).await {
                // The manifest is marked but its record is not: a second run stopped
                // anywhere must not leave that record listing a backup whose data went.
                for j in 0..steps {
                    let (store, repo) = fresh().await;
                    crashed_purge(&store, &repo, k).await;
                    crashed_purge(&store, &repo, j).await;
                    assert_consistent(&repo, store.inner(), &format!("crash after {k}, then after {j}")).await;
                }
            }
            // The operator runs it again: it finishes, or finds nothing left to purge.
            if let Err(e) = purge(&repo, GONE).await {
                assert!(e.to_string().contains(&format!("no backup {GONE}")), "crash after {k}: {e}");
            }
            assert_eq!(store.inner().keys(), kept, "crash after {k} operations");
        }
    }

    /// Stores an incremental backup `id` with `own` bundles of its own whose parts also point
    /// into `borrowed` (owner, bundle name).
    async fn stored_incremental(repo: &Repository, id: &str, own: usize, borrowed: &[(&str, &str)]) -> Manifest {
        let mut m = stored_backup(repo, id, "automatic", "completed", own).await;
        let base = borrowed.first().map_or("", |b| b.0).to_string();
        for (owner, name) in borrowed {
            m.bundles.push(Bundle {
                name: name.to_string(),
                plain_bytes: 8,
                stored_bytes: 8,
                owner: Some(owner.to_string()),
            });
        }
        m.incremental = Some(backup::IncrementalInfo { base, bytes_kept: 8, ..Default::default() });
        backup::save(repo, &m).await.unwrap();
        m
    }

    const A: &str = "20261126T030000Z";
    const B: &str = "20261127T030000Z";
    const C: &str = "20261128T030000Z";

    /// A full backup A, an incremental B on it, an incremental C on B (pointing into A's and B's).
    async fn chain() -> (Arc<Faulty<MemoryStore>>, Repository) {
        let store = Arc::new(Faulty::new(MemoryStore::new()));
        let repo = repo_over(store.clone(), "c");
        stored_backup(&repo, A, "automatic", "completed", 2).await;
        stored_incremental(&repo, B, 1, &[(A, "b000001")]).await;
        stored_incremental(&repo, C, 1, &[(A, "b000001"), (B, "b000000")]).await;
        (store, repo)
    }

    fn data_keys(store: &MemoryStore) -> Vec<String> {
        store.keys().into_iter().filter(|k| k.contains("/data/b")).collect()
    }

    #[tokio::test]
    async fn bundles_that_later_backups_point_into_stay_until_the_last_of_them_goes() {
        let (store, repo) = chain().await;
        let key = |id: &str, b: &str| bundle_key(&repo, id, b);
        purge(&repo, A).await.unwrap();
        assert_consistent(&repo, store.inner(), "after A").await;
        assert!(backup::load(&repo, A).await.unwrap().is_none());
        assert_eq!(data_keys(store.inner()), [key(A, "b000001"), key(B, "b000000"), key(C, "b000000")]);
        // Restorable on their own: C lists what it needs and all of it is there.
        purge(&repo, B).await.unwrap();
        assert_consistent(&repo, store.inner(), "after B").await;
        assert_eq!(data_keys(store.inner()), [key(A, "b000001"), key(B, "b000000"), key(C, "b000000")]);
        purge(&repo, C).await.unwrap();
        assert_eq!(data_keys(store.inner()), Vec::<String>::new(), "nothing referenced is left behind");
        assert!(store.inner().keys().iter().all(|k| !k.contains("/backups/")), "{:?}", store.inner().keys());

        // The other order: the newest first takes only its own, then each takes what no one needs.
        let (store, repo) = chain().await;
        purge(&repo, C).await.unwrap();
        assert_eq!(data_keys(store.inner()), [key(A, "b000000"), key(A, "b000001"), key(B, "b000000")]);
        purge(&repo, B).await.unwrap();
        assert_eq!(data_keys(store.inner()), [key(A, "b000000"), key(A, "b000001")]);
        purge(&repo, A).await.unwrap();
        assert!(data_keys(store.inner()).is_empty());
    }

    #[tokio::test]
    async fn a_running_backup_keeps_every_bundle_of_its_base() {
        let (store, repo) = chain().await;
        let mut running = old_manifest("automatic", "running", "2026-11-29T03:00:00Z");
        running.id = "20261129T030000Z".into();
        running.cluster = "c".into();
        running.incremental = Some(backup::IncrementalInfo { base: C.into(), ..Default::default() });
        running.lease = Some(backup::new_lease(chrono::Utc::now()));
        backup::save(&repo, &running).await.unwrap();
        let all = data_keys(store.inner());
        let e = purge(&repo, C).await.unwrap_err().to_string();
        assert!(e.contains("is the base of incremental backup 20261129T030000Z, which is running now"), "{e}");
        assert_eq!(backup::load(&repo, C).await.unwrap().unwrap().state, BackupState::Completed, "untouched");
        // Older backups go, and what the running backup will list stays.
        purge(&repo, B).await.unwrap();
        purge(&repo, A).await.unwrap();
        let key = |id: &str, b: &str| bundle_key(&repo, id, b);
        assert_eq!(all.len(), 4);
        assert_eq!(data_keys(store.inner()), [key(A, "b000001"), key(B, "b000000"), key(C, "b000000")]);
    }

    #[tokio::test]
    async fn a_purge_of_a_base_stopped_at_any_step_loses_nothing_kept_and_leaves_nothing_behind() {
        let (store, repo) = chain().await;
        let setup = store.log().len();
        for id in [A, B, C] {
            purge(&repo, id).await.unwrap();
        }
        let steps = (store.log().len() - setup) as u64;
        for k in 0..steps {
            let (store, repo) = chain().await;
            store.crash_after(k);
            let mut failed = false;
            for id in [A, B, C] {
                if failed {
                    break;
                }
                failed = purge(&repo, id).await.is_err();
            }
            store.heal();
            assert_consistent(&repo, store.inner(), &format!("crash after {k}")).await;
            for id in [A, B, C] {
                if let Err(e) = purge(&repo, id).await {
                    assert!(e.to_string().contains("no backup"), "crash after {k}: {e}");
                }
            }
            assert!(data_keys(store.inner()).is_empty(), "crash after {k}: {:?}", data_keys(store.inner()));
        }
    }

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
