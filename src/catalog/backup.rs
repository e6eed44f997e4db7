//! Backup manifests: what a backup holds and where, stored at
//! `clusters/<handle>/backups/<id>/manifest.json`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::repo::{RepoError, Repository};
// What the providers record, kept in the manifest as they write it.
pub use crate::snapshot::ebs::{EbsMount, EbsRefs, EbsVolume};
pub use crate::snapshot::files::incremental::{FullCopyNote, IncrementalInfo};
pub use crate::snapshot::files::{Bundle, EntryKind, FileEntry, Part};
use crate::wal::name::Lsn;

/// Why a backup was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    /// Daily schedule.
    Automatic,
    /// On request; kept until purged.
    Manual,
    /// Taken at deprovision.
    Final,
}

impl BackupKind {
    /// The lowercase name used in JSON and tags.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Automatic => "automatic",
            BackupKind::Manual => "manual",
            BackupKind::Final => "final",
        }
    }
}

/// Lifecycle of a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupState {
    /// Being taken.
    Running,
    /// Data stored and WAL to its stop LSN archived: restorable.
    Completed,
    /// Did not complete; never used for restores.
    Failed,
    /// Being deleted: never used for restores; a purge that was interrupted resumes it.
    Purging,
}

/// A tablespace captured with the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    /// OID (the pg_tblspc entry name).
    pub oid: u32,
    /// Location on the source host.
    pub location: String,
}

/// Everything about one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Backup id (sortable by start time).
    pub id: String,
    /// Cluster handle.
    pub cluster: String,
    /// Kind.
    pub kind: BackupKind,
    /// State.
    pub state: BackupState,
    /// `files` or `ebs`.
    pub provider: crate::config::Provider,
    /// PostgreSQL `server_version_num`.
    pub pg_version: u32,
    /// System identifier (decimal).
    pub system_identifier: String,
    /// Timeline at start.
    pub timeline: u32,
    /// WAL segment size.
    pub wal_segment_size: u64,
    /// LSN returned by the start call.
    pub start_lsn: Lsn,
    /// LSN returned by the stop call: the backup is consistent from here.
    #[serde(default)]
    pub stop_lsn: Option<Lsn>,
    /// When the start call returned.
    #[serde(with = "time_format")]
    pub start_time: DateTime<Utc>,
    /// When the stop call returned.
    #[serde(default, with = "time_format::option")]
    pub stop_time: Option<DateTime<Utc>>,
    /// backup_label from the stop call.
    #[serde(default)]
    pub backup_label: String,
    /// tablespace_map from the stop call.
    #[serde(default)]
    pub tablespace_map: String,
    /// Tablespaces.
    #[serde(default)]
    pub tablespaces: Vec<Tablespace>,
    /// Every path copied.
    #[serde(default)]
    pub files: Vec<FileEntry>,
    /// Bundles holding the file bytes.
    #[serde(default)]
    pub bundles: Vec<Bundle>,
    /// EBS snapshots (provider `ebs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebs: Option<EbsRefs>,
    /// Set for an incremental backup: its base, and how it was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<IncrementalInfo>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Who is (or was) taking it, and when it last said so (absent in older manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// Set in a catalog record (`record.json`): the manifest without its file list, label
    /// and map, for listings; these are the totals of what it leaves out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<RecordTotals>,
}

/// What a catalog record keeps of the file list it leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordTotals {
    /// Paths copied.
    pub files: usize,
    /// Their bytes.
    pub data_bytes: u64,
    /// Bundles.
    #[serde(default)]
    pub bundles: usize,
    /// Their stored (sealed) bytes.
    #[serde(default)]
    pub stored_bytes: u64,
}

/// The catalog record of a manifest (pure): everything listings, the scheduler, retention
/// and restore planning read, without the per-file entries.
pub fn record_of(m: &Manifest) -> Manifest {
    let totals = m.record.unwrap_or(RecordTotals {
        files: m.files.len(),
        data_bytes: m.data_bytes(),
        bundles: m.bundle_count(),
        stored_bytes: m.stored_bytes(),
    });
    Manifest {
        files: Vec::new(),
        bundles: Vec::new(),
        backup_label: String::new(),
        tablespace_map: String::new(),
        record: Some(totals),
        ..m.clone()
    }
}

/// The process taking a backup, and its last sign of life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Host name of the process.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// Random per process, so a reused pid is not taken for the holder.
    pub token: String,
    /// Last heartbeat; `None` when what was stored does not read as a time (the backup's
    /// start time stands in).
    #[serde(with = "time_format::lenient")]
    pub heartbeat_at: Option<DateTime<Utc>>,
}

/// Manifest times as stored: RFC 3339 in UTC with microseconds (`2026-12-01T03:00:00.000000Z`).
pub mod time_format {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Now, to the microsecond stored times keep (so a time reads back equal).
    pub fn now() -> DateTime<Utc> {
        use chrono::SubsecRound;
        Utc::now().trunc_subsecs(6)
    }

    /// The stored form of `t`.
    pub fn to_string(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    /// Reads a stored time (any RFC 3339 offset).
    pub fn parse(s: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
    }

    /// Serializes a time.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&to_string(t))
    }

    /// Deserializes a time; one that is not RFC 3339 is an error that says so.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not an RFC 3339 time")))
    }

    /// An optional time (absent or null: `None`).
    pub mod option {
        use super::*;

        /// Serializes it.
        pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&to_string(t)),
                None => s.serialize_none(),
            }
        }

        /// Deserializes it; a present value must be RFC 3339.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
            match Option::<String>::deserialize(d)? {
                None => Ok(None),
                Some(s) => parse(&s)
                    .map(Some)
                    .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not an RFC 3339 time"))),
            }
        }
    }

    /// A time that may be unreadable: `None` then, stored as an empty string.
    pub mod lenient {
        use super::*;

        /// Serializes it.
        pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&t.as_ref().map(to_string).unwrap_or_default())
        }

        /// Deserializes it.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
            Ok(parse(&String::deserialize(d)?))
        }
    }
}

impl Manifest {
    /// The backup as its provider knows it.
    pub fn backup_ref(&self) -> crate::snapshot::BackupRef<'_> {
        crate::snapshot::BackupRef { cluster: &self.cluster, id: &self.id, kind: self.kind.as_str() }
    }

    /// Everything the provider captured (the file list copied too).
    pub fn captured(&self) -> crate::snapshot::Captured {
        crate::snapshot::Captured {
            files: self.files.clone(),
            bundles: self.bundles.clone(),
            ebs: self.ebs.clone(),
            incremental: self.incremental.clone(),
        }
    }

    /// What the provider keeps outside the repository (EBS snapshots), without the file list.
    pub fn held_outside(&self) -> crate::snapshot::Captured {
        crate::snapshot::Captured { ebs: self.ebs.clone(), ..Default::default() }
    }

    /// Total bytes of files.
    pub fn data_bytes(&self) -> u64 {
        if let Some(t) = self.record {
            return t.data_bytes;
        }
        // Saturating: a damaged manifest's sizes must not overflow a listing (found by fuzzing).
        self.files.iter().fold(0u64, |a, f| a.saturating_add(f.size))
    }

    /// How many paths it copied.
    pub fn file_count(&self) -> usize {
        self.record.map_or(self.files.len(), |t| t.files)
    }

    /// Total stored bytes of the bundles it stored itself (not those of older backups an
    /// incremental backup's parts point into).
    pub fn stored_bytes(&self) -> u64 {
        if let Some(t) = self.record {
            return t.stored_bytes;
        }
        self.bundles.iter().filter(|b| b.owner.is_none()).fold(0u64, |a, b| a.saturating_add(b.stored_bytes))
    }

    /// How many bundles it stored itself.
    pub fn bundle_count(&self) -> usize {
        self.record.map_or_else(|| self.bundles.iter().filter(|b| b.owner.is_none()).count(), |t| t.bundles)
    }

    /// The key of bundle `b` of this manifest (under the backup that stored it).
    pub fn bundle_key(&self, repo: &Repository, b: &Bundle) -> String {
        repo.bundle_key(b.owner_id(&self.id), &b.name)
    }

    /// Stop time.
    pub fn stop_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.stop_time
    }
}

impl Lease {
    /// Whether both name the same holder (heartbeat times aside).
    pub fn same_holder(&self, other: &Lease) -> bool {
        (&self.host, self.pid, &self.token) == (&other.host, other.pid, &other.token)
    }
}

/// Whether `cur` (a freshly read record) is still the running backup `lease` holds.
pub fn still_held(cur: &Manifest, lease: &Lease) -> bool {
    cur.state == BackupState::Running && cur.lease.as_ref().is_some_and(|l| l.same_holder(lease))
}

/// How long a minute of the backup timers (heartbeat, scheduler tick, retry backoff) is:
/// 60 s, or `TDMK_TEST_MINUTE_MS` milliseconds (a hidden test knob, outside the
/// `TIDEMARK_*` names the config reads so it is no setting).
pub fn timer_minute() -> Duration {
    std::env::var("TDMK_TEST_MINUTE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map_or(Duration::from_secs(60), Duration::from_millis)
}

/// How often a running backup refreshes its lease: every half minute.
pub fn heartbeat_interval() -> Duration {
    timer_minute() / 2
}

/// Heartbeats a running backup may miss before it counts as abandoned.
pub const STALE_AFTER_BEATS: u32 = 5;

/// How old a running backup's last heartbeat may be before it counts as abandoned.
pub fn stale_limit() -> Duration {
    heartbeat_interval() * STALE_AFTER_BEATS
}

#[cfg(test)]
fn parse_time(t: &str) -> Option<DateTime<Utc>> {
    time_format::parse(t)
}

/// Why a `running` backup is abandoned, or `None` while it may still be running (pure).
/// `holder_gone` says its process is known to have exited (see [`holder_gone`]).
pub fn stale_reason(m: &Manifest, now: DateTime<Utc>, limit: Duration, holder_gone: bool) -> Option<String> {
    if m.state != BackupState::Running {
        return None;
    }
    let limit_td = chrono::TimeDelta::from_std(limit).unwrap_or(chrono::TimeDelta::MAX);
    let Some(lease) = &m.lease else {
        // Written before leases existed: only its age can tell.
        let started = m.start_time;
        return (now - started > limit_td).then(|| {
            format!(
                "abandoned: running without a lease since {} (over {}s)",
                time_format::to_string(&started),
                limit.as_secs()
            )
        });
    };
    if holder_gone {
        return Some(format!("abandoned: its process (pid {} on {}) is gone", lease.pid, lease.host));
    }
    let beat = lease.heartbeat_at.unwrap_or(m.start_time);
    (now - beat > limit_td).then(|| {
        format!(
            "abandoned: no heartbeat from pid {} on {} since {} (over {}s)",
            lease.pid,
            lease.host,
            time_format::to_string(&beat),
            limit.as_secs()
        )
    })
}

/// This process as a lease holder: host name, pid and a random token.
#[derive(Debug, Clone)]
pub struct Holder {
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Random, fixed for the life of the process.
    pub token: String,
}

/// This process as a lease holder.
pub fn this_process() -> &'static Holder {
    static HOLDER: std::sync::OnceLock<Holder> = std::sync::OnceLock::new();
    HOLDER.get_or_init(|| Holder {
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".to_string()),
        pid: std::process::id(),
        token: hex::encode(rand::random::<[u8; 8]>()),
    })
}

/// A fresh lease for this process, heartbeat now.
pub fn new_lease(now: DateTime<Utc>) -> Lease {
    let me = this_process();
    Lease { host: me.host.clone(), pid: me.pid, token: me.token.clone(), heartbeat_at: Some(now) }
}

/// Whether the lease's process is known to be gone: it ran on this host and its pid is not
/// running, or is this process under another token (the pid was reused).
pub fn holder_gone(lease: &Lease) -> bool {
    let me = this_process();
    if lease.host != me.host || me.host == "unknown" {
        return false;
    }
    if lease.pid == me.pid {
        return lease.token != me.token;
    }
    let Ok(pid) = libc::pid_t::try_from(lease.pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists; pid > 0 names one process.
    let rc = unsafe { libc::kill(pid, 0) };
    // EPERM: it exists under another user.
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Marks the repository cluster's abandoned `running` backups `failed` (with the reason);
/// returns their ids.
pub async fn mark_stale(repo: &Repository, now: DateTime<Utc>, limit: Duration) -> Result<Vec<String>, RepoError> {
    let mut marked = Vec::new();
    for m in list(repo).await?.into_iter().filter(|m| m.state == BackupState::Running) {
        let gone = m.lease.as_ref().is_some_and(holder_gone);
        if stale_reason(&m, now, limit, gone).is_none() {
            continue;
        }
        // Read again: it may have finished, or beaten, since the listing.
        let Some(mut cur) = load(repo, &m.id).await? else { continue };
        let gone = cur.lease.as_ref().is_some_and(holder_gone);
        let Some(reason) = stale_reason(&cur, now, limit, gone) else { continue };
        tracing::warn!(backup = %cur.id, cluster = %repo.cluster(), %reason, "marking an abandoned backup failed");
        cur.state = BackupState::Failed;
        cur.error = Some(reason);
        save(repo, &cur).await?;
        marked.push(cur.id);
    }
    Ok(marked)
}

/// The earliest start segment of the completed backups, per timeline (pure).
pub fn first_segments<'a>(
    backups: impl IntoIterator<Item = &'a Manifest>,
    seg_size: u64,
) -> std::collections::BTreeMap<u32, u64> {
    let mut from = std::collections::BTreeMap::new();
    for m in backups.into_iter().filter(|m| m.state == BackupState::Completed) {
        let s = crate::wal::name::Segment::containing(m.timeline, m.start_lsn, seg_size).number;
        let e = from.entry(m.timeline).or_insert(s);
        *e = (*e).min(s);
    }
    from
}

/// A new backup id: UTC start time, sortable.
pub fn new_id(now: chrono::DateTime<chrono::Utc>) -> String {
    now.format("%Y%m%dT%H%M%SZ").to_string()
}

/// Object key of a backup's manifest.
pub fn manifest_key(repo: &Repository, id: &str) -> String {
    format!("{}manifest.json", repo.backup_prefix(id))
}

/// Object key of a bundle.
pub fn bundle_key(repo: &Repository, id: &str, bundle: &str) -> String {
    repo.bundle_key(id, bundle)
}

/// Object key of a backup's catalog record.
pub fn record_key(repo: &Repository, id: &str) -> String {
    format!("{}record.json", repo.backup_prefix(id))
}

/// Writes a manifest, then its catalog record. A crash in between leaves the record one
/// state behind (a completed backup listed as running: never the other way round) until
/// the next save or the sweep's [`reconcile_records`].
pub async fn save(repo: &Repository, m: &Manifest) -> Result<(), RepoError> {
    if m.record.is_some() {
        // A record has no file list: saved as the manifest, it would lose the backup's files.
        return Err(RepoError::Json(manifest_key(repo, &m.id), "a catalog record is not a manifest".into()));
    }
    repo.put_json(&manifest_key(repo, &m.id), m).await?;
    repo.put_json(&record_key(repo, &m.id), &record_of(m)).await
}

/// Rewrites every catalog record that does not match its manifest (after a crash between
/// the two writes, or for backups made before records existed); returns how many.
pub async fn reconcile_records(repo: &Repository) -> Result<usize, RepoError> {
    let mut fixed = 0;
    let manifests = list(repo).await?;
    // A record whose manifest is gone is what a purge left (the manifest goes last, and a
    // record is only ever written after its manifest): it must not list a backup.
    let prefix = format!("{}backups/", repo.cluster_prefix());
    for d in repo.store().list_level(&prefix).await?.dirs {
        let id = d.trim_end_matches('/').rsplit('/').next().unwrap_or_default().to_string();
        if !manifests.iter().any(|m| m.id == id) && repo.store().head(&format!("{d}record.json")).await?.is_some() {
            repo.store().delete(&format!("{d}record.json")).await?;
            fixed += 1;
        }
    }
    // A purging backup is left alone: its purge deletes the record, and rewriting it here
    // could bring it back after the manifest is gone.
    for m in manifests.into_iter().filter(|m| m.state != BackupState::Purging) {
        let want = record_of(&m);
        let have: Option<Manifest> = repo.get_json(&record_key(repo, &m.id)).await?;
        if have.as_ref() != Some(&want) {
            repo.put_json(&record_key(repo, &m.id), &want).await?;
            // A purge that ran meanwhile took the manifest: take the record back out.
            if repo.store().head(&manifest_key(repo, &m.id)).await?.is_none() {
                repo.store().delete(&record_key(repo, &m.id)).await?;
            }
            fixed += 1;
        }
    }
    Ok(fixed)
}

/// Reads one manifest.
pub async fn load(repo: &Repository, id: &str) -> Result<Option<Manifest>, RepoError> {
    repo.get_json(&manifest_key(repo, id)).await
}

/// Every backup of the repository's cluster as its catalog record, oldest first: one
/// small object per backup, whatever its file list holds (a backup from before records
/// existed reads from its manifest). Records have no file list: what needs one loads the
/// manifest ([`load`]).
pub async fn list_records(repo: &Repository) -> Result<Vec<Manifest>, RepoError> {
    let prefix = format!("{}backups/", repo.cluster_prefix());
    let level = repo.store().list_level(&prefix).await?;
    use futures::stream::{StreamExt, TryStreamExt};
    let reads = level.dirs.into_iter().map(|d| {
        let r = repo.clone();
        async move {
            match r.get_json::<Manifest>(&format!("{d}record.json")).await? {
                Some(rec) => Ok::<_, RepoError>(Some(rec)),
                None => Ok(r.get_json::<Manifest>(&format!("{d}manifest.json")).await?.map(|m| record_of(&m))),
            }
        }
    });
    let loaded: Vec<Option<Manifest>> = futures::stream::iter(reads).buffered(repo.in_flight()).try_collect().await?;
    let mut out: Vec<Manifest> = loaded.into_iter().flatten().collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Every backup of the repository's cluster, whole (file lists included), oldest first.
pub async fn list(repo: &Repository) -> Result<Vec<Manifest>, RepoError> {
    let prefix = format!("{}backups/", repo.cluster_prefix());
    // One level: the backup directories, never the bundles inside them.
    let level = repo.store().list_level(&prefix).await?;
    let keys: Vec<String> = level.dirs.into_iter().map(|d| format!("{d}manifest.json")).collect();
    use futures::stream::{StreamExt, TryStreamExt};
    // Bounded: open files and requests must not grow with the number of backups.
    let reads = keys.into_iter().map(|k| {
        let r = repo.clone();
        async move { r.get_json::<Manifest>(&k).await }
    });
    let loaded: Vec<Option<Manifest>> = futures::stream::iter(reads).buffered(repo.in_flight()).try_collect().await?;
    let mut out: Vec<Manifest> = loaded.into_iter().flatten().collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A manifest as an older tidemark wrote it: no lease fields.
    pub(crate) fn old_manifest(kind: &str, state: &str, start: &str) -> Manifest {
        let json = serde_json::json!({
            "id": "20261126T030000Z", "cluster": "c", "kind": kind, "state": state, "provider": "files",
            "pg_version": 150000, "system_identifier": "1", "timeline": 1, "wal_segment_size": 16777216,
            "start_lsn": "0/2000028", "start_time": start,
        });
        serde_json::from_value(json).expect("an old manifest reads")
    }

    fn t(s: &str) -> DateTime<Utc> {
        parse_time(s).expect("time")
    }

    fn with_lease(mut m: Manifest, beat: &str) -> Manifest {
        let lease = serde_json::json!({"host": "h", "pid": 42, "token": "ab", "heartbeat_at": beat});
        m.lease = Some(serde_json::from_value(lease).expect("a lease reads"));
        m
    }

    #[test]
    fn a_catalog_record_keeps_the_totals_and_drops_the_lists() {
        let mut m = old_manifest("manual", "completed", "2026-11-26T03:00:00Z");
        m.backup_label = "START WAL LOCATION: 0/2000028".into();
        m.bundles = vec![Bundle { name: "b000000".into(), plain_bytes: 10, stored_bytes: 7, owner: None }];
        m.files = serde_json::from_value(serde_json::json!([
            {"path": "base/1/1", "kind": "file", "size": 8192, "mode": 384},
            {"path": "global/pg_control", "kind": "file", "size": 8192, "mode": 384},
        ]))
        .expect("file entries");
        let r = record_of(&m);
        assert!(r.files.is_empty() && r.bundles.is_empty() && r.backup_label.is_empty());
        assert_eq!((r.file_count(), r.data_bytes(), r.bundle_count(), r.stored_bytes()), (2, 16384, 1, 7));
        assert_eq!((r.id.as_str(), r.state, r.start_lsn), (m.id.as_str(), m.state, m.start_lsn));
        // Idempotent, and a JSON round trip keeps it a record.
        assert_eq!(record_of(&r), r);
        let back: Manifest = serde_json::from_str(&serde_json::to_string(&r).expect("json")).expect("reads");
        assert_eq!(back, r);
        // A manifest without records reads as before.
        assert_eq!((m.record, m.file_count(), m.data_bytes()), (None, 2, 16384));
    }

    #[test]
    fn old_manifests_read_without_a_lease() {
        let m = old_manifest("automatic", "running", "2026-11-26T03:00:00Z");
        assert_eq!(m.lease, None);
        assert_eq!(m.state, BackupState::Running);
        // And one with a lease round-trips.
        let m = with_lease(m, "2026-11-26T03:00:30Z");
        let back: Manifest = serde_json::from_str(&serde_json::to_string(&m).expect("ser")).expect("de");
        assert_eq!(back, m);
    }

    #[test]
    fn times_are_stored_to_the_microsecond_and_a_bad_one_says_so() {
        let m = old_manifest("manual", "completed", "2026-11-26T04:00:00+01:00");
        assert_eq!(m.start_time, t("2026-11-26T03:00:00Z"), "any offset reads, as UTC");
        let json = serde_json::to_value(&m).expect("ser");
        assert_eq!(json["start_time"], "2026-11-26T03:00:00.000000Z");
        assert!(json["stop_time"].is_null());
        let mut bad = json.clone();
        bad["start_time"] = "yesterday".into();
        let e = serde_json::from_value::<Manifest>(bad).unwrap_err().to_string();
        assert!(e.contains("\"yesterday\" is not an RFC 3339 time"), "{e}");
        let mut bad = json;
        bad["stop_time"] = "2026-13-01T00:00:00Z".into();
        assert!(serde_json::from_value::<Manifest>(bad).is_err());
    }

    #[test]
    fn stale_by_heartbeat_age_or_gone_holder() {
        let limit = Duration::from_secs(150);
        let m = with_lease(old_manifest("manual", "running", "2026-11-26T03:00:00Z"), "2026-11-26T03:10:00Z");
        // Heartbeat within the limit: alive, however old the start.
        assert_eq!(stale_reason(&m, t("2026-11-26T03:12:30Z"), limit, false), None);
        let r = stale_reason(&m, t("2026-11-26T03:12:31Z"), limit, false).expect("stale");
        assert!(r.contains("no heartbeat") && r.contains("pid 42 on h"), "{r}");
        // A holder known to be gone is stale at once.
        let r = stale_reason(&m, t("2026-11-26T03:10:01Z"), limit, true).expect("stale");
        assert!(r.contains("is gone"), "{r}");
        // Only running backups are ever stale.
        for state in [BackupState::Completed, BackupState::Failed, BackupState::Purging] {
            let done = Manifest { state, ..m.clone() };
            assert_eq!(stale_reason(&done, t("2027-01-01T00:00:00Z"), limit, true), None);
        }
        // No lease (an older tidemark): judged by its start time.
        let old = old_manifest("automatic", "running", "2026-11-26T03:00:00Z");
        assert_eq!(stale_reason(&old, t("2026-11-26T03:02:30Z"), limit, false), None);
        let r = stale_reason(&old, t("2026-11-26T03:02:31Z"), limit, false).expect("stale");
        assert!(r.contains("without a lease"), "{r}");
        // An unreadable heartbeat falls back to the start time.
        let odd = with_lease(old_manifest("manual", "running", "2026-11-26T03:00:00Z"), "garbage");
        assert!(stale_reason(&odd, t("2026-11-26T03:02:31Z"), limit, false).is_some());
    }

    #[test]
    fn holders_are_told_apart_by_token() {
        let me = new_lease(t("2026-11-26T03:00:00Z"));
        assert!(!holder_gone(&me), "this process is alive");
        let reused = Lease { token: format!("{}x", me.token), ..me.clone() };
        assert!(holder_gone(&reused), "same pid, another token: the holder is gone");
        let elsewhere = Lease { host: format!("{}-other", me.host), pid: u32::MAX, ..me.clone() };
        assert!(!holder_gone(&elsewhere), "another host's process cannot be checked");
        let later = Lease { heartbeat_at: Some(t("2026-11-26T03:05:00Z")), ..me.clone() };
        assert!(later.same_holder(&me) && !reused.same_holder(&me));
    }
}

/// Bounded fuzzing of manifest parsing: damaged or hostile JSON is an error or a manifest
/// whose derived figures can be computed, never a panic.
#[cfg(test)]
pub(crate) mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// One change to a JSON document: to its text, or to one of its values.
    #[derive(Debug, Clone)]
    pub(crate) enum JsonMutation {
        /// XOR a byte of the text.
        Xor(usize, u8),
        /// Insert text.
        Insert(usize, String),
        /// Remove bytes.
        Remove(usize, usize),
        /// Replace the n-th value of the document.
        Replace(usize, Value),
        /// Remove the n-th object member or array element.
        Drop(usize),
        /// Give the n-th number another, at the edges of the integer types (still parses, so
        /// it reaches the code that uses the value).
        Renumber(usize, Value),
    }

    /// Values of every JSON type, at the edges of the integer types fields use.
    pub(crate) fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            prop_oneof![Just(0i64), Just(-1), Just(i64::MIN), Just(i64::MAX), Just(u32::MAX as i64 + 1), any::<i64>()]
                .prop_map(Value::from),
            prop_oneof![Just(u64::MAX), any::<u64>()].prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[0-9A-Fa-f/:TZ.-]{0,30}".prop_map(Value::from),
            any::<String>().prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_]{1,12}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Numbers at the edges of the integer types.
    fn edge_number() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::from(0u64)),
            Just(Value::from(1u64)),
            Just(Value::from(u32::MAX)),
            Just(Value::from(u64::MAX)),
            Just(Value::from(u64::MAX / 2 + 1)),
            Just(Value::from(i64::MIN)),
            Just(Value::from(-1i64)),
            any::<u64>().prop_map(Value::from),
        ]
    }

    /// Up to `n` mutations.
    pub(crate) fn json_mutations(n: usize) -> impl Strategy<Value = Vec<JsonMutation>> {
        let m = prop_oneof![
            1 => (any::<usize>(), 1u8..).prop_map(|(i, x)| JsonMutation::Xor(i, x)),
            1 => (any::<usize>(), "[\\[\\]{}\",:0-9a-z\\\\ -]{1,6}").prop_map(|(i, s)| JsonMutation::Insert(i, s)),
            1 => (any::<usize>(), 1..16usize).prop_map(|(i, n)| JsonMutation::Remove(i, n)),
            3 => (any::<usize>(), json_value()).prop_map(|(i, v)| JsonMutation::Replace(i, v)),
            2 => any::<usize>().prop_map(JsonMutation::Drop),
            3 => (any::<usize>(), edge_number()).prop_map(|(i, v)| JsonMutation::Renumber(i, v)),
        ];
        proptest::collection::vec(m, 1..=n)
    }

    /// Visits every value (pre-order); `f` returns true to stop.
    fn visit(v: &mut Value, f: &mut dyn FnMut(&mut Value) -> bool) -> bool {
        if f(v) {
            return true;
        }
        match v {
            Value::Array(a) => a.iter_mut().any(|x| visit(x, f)),
            Value::Object(o) => o.values_mut().any(|x| visit(x, f)),
            _ => false,
        }
    }

    fn count(v: &mut Value) -> usize {
        let mut n = 0;
        visit(v, &mut |_| {
            n += 1;
            false
        });
        n
    }

    /// Applies `muts` to the document `doc`, returning the bytes to parse.
    pub(crate) fn mutate(doc: &Value, muts: &[JsonMutation]) -> Vec<u8> {
        let mut v = doc.clone();
        let mut text: Option<Vec<u8>> = None;
        for m in muts {
            match m {
                JsonMutation::Replace(i, new) if text.is_none() => {
                    let k = i % count(&mut v);
                    let mut seen = 0;
                    visit(&mut v, &mut |x| {
                        seen += 1;
                        if seen == k + 1 {
                            *x = new.clone();
                        }
                        seen > k
                    });
                }
                JsonMutation::Drop(i) if text.is_none() => {
                    let k = i % count(&mut v);
                    let mut seen = 0;
                    visit(&mut v, &mut |x| {
                        seen += 1;
                        if seen <= k {
                            return false;
                        }
                        match x {
                            Value::Object(o) if !o.is_empty() => {
                                let key = o.keys().nth(k % o.len()).cloned().unwrap_or_default();
                                o.remove(&key);
                                true
                            }
                            Value::Array(a) if !a.is_empty() => {
                                a.remove(k % a.len());
                                true
                            }
                            _ => false,
                        }
                    });
                }
                JsonMutation::Renumber(i, new) if text.is_none() => {
                    let mut numbers = 0;
                    visit(&mut v, &mut |x| {
                        numbers += usize::from(x.is_number());
                        false
                    });
                    if numbers > 0 {
                        let k = i % numbers;
                        let mut seen = 0;
                        visit(&mut v, &mut |x| {
                            if !x.is_number() {
                                return false;
                            }
                            seen += 1;
                            if seen == k + 1 {
                                *x = new.clone();
                            }
                            seen > k
                        });
                    }
                }
                // Value mutations after a text mutation no longer apply.
                JsonMutation::Replace(..) | JsonMutation::Drop(_) | JsonMutation::Renumber(..) => {}
                JsonMutation::Xor(i, x) => {
                    let t = text.get_or_insert_with(|| serde_json::to_vec(&v).unwrap_or_default());
                    if !t.is_empty() {
                        let at = i % t.len();
                        t[at] ^= x;
                    }
                }
                JsonMutation::Insert(i, s) => {
                    let t = text.get_or_insert_with(|| serde_json::to_vec(&v).unwrap_or_default());
                    let at = i % (t.len() + 1);
                    t.splice(at..at, s.bytes());
                }
                JsonMutation::Remove(i, n) => {
                    let t = text.get_or_insert_with(|| serde_json::to_vec(&v).unwrap_or_default());
                    if !t.is_empty() {
                        let at = i % t.len();
                        let end = (at + n).min(t.len());
                        t.drain(at..end);
                    }
                }
            }
        }
        text.unwrap_or_else(|| serde_json::to_vec(&v).unwrap_or_default())
    }

    /// A manifest with every optional part present.
    fn sample() -> Value {
        let part = Part { bundle: 0, offset: 0, file_offset: 0, len: 8192, crc32c: Some(7), sha256: String::new() };
        let m = Manifest {
            id: "20261201T030000Z".into(),
            cluster: "orders-db".into(),
            kind: BackupKind::Automatic,
            state: BackupState::Completed,
            provider: crate::config::Provider::Ebs,
            pg_version: 150004,
            system_identifier: "7301234567890123456".into(),
            timeline: 1,
            wal_segment_size: 16 << 20,
            start_lsn: Lsn(0x3000028),
            stop_lsn: Some(Lsn(0x3000100)),
            start_time: time_format::parse("2026-12-01T03:00:00Z").expect("time"),
            stop_time: time_format::parse("2026-12-01T03:00:05Z"),
            backup_label: "START WAL LOCATION: 0/3000028\n".into(),
            tablespace_map: "16384 /srv/ts\n".into(),
            tablespaces: vec![Tablespace { oid: 16384, location: "/srv/ts".into() }],
            lease: None,
            files: vec![
                FileEntry {
                    path: "base/1/1259".into(),
                    kind: EntryKind::File,
                    size: 8192,
                    mode: 0o600,
                    mtime: 1_700_000_000,
                    sha256: String::new(),
                    parts: vec![part],
                    target: None,
                },
                FileEntry {
                    path: "pg_tblspc/16384".into(),
                    kind: EntryKind::Link,
                    size: 0,
                    mode: 0o777,
                    mtime: 0,
                    sha256: String::new(),
                    parts: vec![],
                    target: Some("/srv/ts".into()),
                },
            ],
            bundles: vec![
                Bundle { name: "b000000".into(), plain_bytes: 8192, stored_bytes: 300, owner: None },
                Bundle {
                    name: "b000004".into(),
                    plain_bytes: 8192,
                    stored_bytes: 280,
                    owner: Some("20261130T030000Z".into()),
                },
            ],
            incremental: Some(IncrementalInfo {
                base: "20261130T030000Z".into(),
                since_lsn: "0/2000028".into(),
                files_full: 1,
                files_blocks: 1,
                bytes_copied: 8192,
                bytes_kept: 8192,
                full_copies: vec![FullCopyNote { path: "base/1/1259".into(), why: "created since".into() }],
            }),
            ebs: Some(EbsRefs {
                region: "us-east-1".into(),
                instance_id: "i-0123".into(),
                availability_zone: "us-east-1a".into(),
                volumes: vec![EbsVolume {
                    snapshot_id: "snap-1".into(),
                    volume_id: "vol-1".into(),
                    attached_as: "/dev/sdf".into(),
                    device: "/dev/nvme1n1".into(),
                    size_gib: 100,
                    volume_type: "gp3".into(),
                    iops: Some(3000),
                    throughput: Some(125),
                    encrypted: true,
                    kms_key_id: None,
                    state: "completed".into(),
                }],
                mounts: vec![EbsMount {
                    role: "data_dir".into(),
                    path: "/var/lib/postgresql/15/main".into(),
                    mount_point: "/var/lib/postgresql".into(),
                    path_in_mount: "15/main".into(),
                    fs_type: "xfs".into(),
                    volume_ids: vec!["vol-1".into()],
                }],
            }),
            error: None,
            record: None,
        };
        serde_json::to_value(&m).unwrap()
    }

    /// What is computed from a loaded manifest.
    fn use_manifest(m: &Manifest) {
        let _ = (m.data_bytes(), m.stored_bytes(), m.stop_at());
        let _ = first_segments([m], 16 << 20);
        let _ = serde_json::to_string(m);
    }

    /// The fuzzer's find: sizes that overflow when summed made a listing panic.
    #[test]
    fn sizes_that_overflow_their_sum_saturate() {
        let mut v = sample();
        v["files"][1]["size"] = Value::from(u64::MAX);
        v["bundles"][0]["stored_bytes"] = Value::from(u64::MAX);
        let bundle = v["bundles"][0].clone();
        v["bundles"].as_array_mut().unwrap().push(bundle);
        let m: Manifest = serde_json::from_value(v).unwrap();
        assert_eq!((m.data_bytes(), m.stored_bytes()), (u64::MAX, u64::MAX));
        use_manifest(&m);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn fuzz_mutated_manifests_parse_or_fail_cleanly(muts in json_mutations(4)) {
            let bytes = mutate(&sample(), &muts);
            if let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) {
                use_manifest(&m);
                let again: Manifest = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
                prop_assert_eq!(again, m);
            }
        }

        #[test]
        fn fuzz_manifests_with_edge_numbers_can_be_used(
            muts in proptest::collection::vec((any::<usize>(), edge_number()).prop_map(|(i, v)| JsonMutation::Renumber(i, v)), 1..4)
        ) {
            if let Ok(m) = serde_json::from_slice::<Manifest>(&mutate(&sample(), &muts)) {
                use_manifest(&m);
            }
        }

        #[test]
        fn fuzz_arbitrary_json_is_not_a_manifest_panic(v in json_value()) {
            if let Ok(m) = serde_json::from_value::<Manifest>(v) {
                use_manifest(&m);
            }
        }
    }
}
