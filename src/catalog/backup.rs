//! Backup manifests: what a backup holds and where, stored at
//! `clusters/<handle>/backups/<id>/manifest.json`.

use serde::{Deserialize, Serialize};

use crate::repo::{RepoError, Repository};
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

/// One stretch of a file's bytes inside a bundle's plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Bundle index in `Manifest::bundles`.
    pub bundle: usize,
    /// Offset of this part in the bundle's plaintext.
    pub offset: u64,
    /// Offset of this part in the file.
    pub file_offset: u64,
    /// Length.
    pub len: u64,
    /// CRC-32C of this part's bytes (backups since 2026-11): catches a part written to the
    /// wrong place; the bundle's AEAD tags already catch damage and tampering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<u32>,
    /// SHA-256 of this part's bytes (older backups).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
}

/// What a manifest entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link (pg_tblspc entries, a symlinked pg_wal).
    Link,
}

/// One path of the data directory (relative, '/'-separated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the data directory.
    pub path: String,
    /// Kind.
    pub kind: EntryKind,
    /// Size in bytes (files).
    #[serde(default)]
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    #[serde(default)]
    pub mtime: i64,
    /// SHA-256 of the content as copied (files).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// Where the bytes are (files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
    /// Link target (links).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A sealed bundle of packed file bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// Object name under `backups/<id>/data/`.
    pub name: String,
    /// Plaintext bytes.
    pub plain_bytes: u64,
    /// Stored (sealed) bytes.
    pub stored_bytes: u64,
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
    pub provider: String,
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
    /// When the start call returned (RFC 3339).
    pub start_time: String,
    /// When the stop call returned (RFC 3339).
    #[serde(default)]
    pub stop_time: Option<String>,
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
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What an `ebs` backup captured: where the volumes were and the snapshot of each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EbsRefs {
    /// Region of the snapshots.
    pub region: String,
    /// Instance the volumes were attached to.
    pub instance_id: String,
    /// Its availability zone.
    pub availability_zone: String,
    /// One per snapshotted volume.
    pub volumes: Vec<EbsVolume>,
    /// One per path that matters (data_dir, pg_wal, tablespaces).
    pub mounts: Vec<EbsMount>,
}

/// A snapshotted volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EbsVolume {
    /// Snapshot id.
    pub snapshot_id: String,
    /// Source volume id.
    pub volume_id: String,
    /// Device name in EC2's block-device mapping (`/dev/sdf`).
    pub attached_as: String,
    /// Kernel device on the host (`/dev/nvme1n1`).
    pub device: String,
    /// Size in GiB.
    pub size_gib: i32,
    /// Volume type (gp3, io2, ...).
    pub volume_type: String,
    /// Provisioned IOPS.
    #[serde(default)]
    pub iops: Option<i32>,
    /// Provisioned throughput (MiB/s).
    #[serde(default)]
    pub throughput: Option<i32>,
    /// Encrypted at rest.
    pub encrypted: bool,
    /// KMS key of the encryption.
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// Snapshot state when last seen.
    pub state: String,
}

/// A path of the cluster and the volume(s) under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EbsMount {
    /// `data_dir`, `pg_wal` or `tablespace:<oid>`.
    pub role: String,
    /// The path on the source host.
    pub path: String,
    /// Mount point on the source host.
    pub mount_point: String,
    /// The path inside the filesystem.
    pub path_in_mount: String,
    /// Filesystem type.
    pub fs_type: String,
    /// Volumes behind it (several for LVM/md).
    pub volume_ids: Vec<String>,
}

impl Manifest {
    /// Total bytes of files.
    pub fn data_bytes(&self) -> u64 {
        // Saturating: a damaged manifest's sizes must not overflow a listing (found by fuzzing).
        self.files.iter().fold(0u64, |a, f| a.saturating_add(f.size))
    }

    /// Total stored bytes of bundles.
    pub fn stored_bytes(&self) -> u64 {
        self.bundles.iter().fold(0u64, |a, b| a.saturating_add(b.stored_bytes))
    }

    /// Stop time as a timestamp.
    pub fn stop_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.stop_time
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    }
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
    format!("{}data/{bundle}", repo.backup_prefix(id))
}

/// Writes a manifest.
pub async fn save(repo: &Repository, m: &Manifest) -> Result<(), RepoError> {
    repo.put_json(&manifest_key(repo, &m.id), m).await
}

/// Reads one manifest.
pub async fn load(repo: &Repository, id: &str) -> Result<Option<Manifest>, RepoError> {
    repo.get_json(&manifest_key(repo, id)).await
}

/// Every backup of the repository's cluster, oldest first.
pub async fn list(repo: &Repository) -> Result<Vec<Manifest>, RepoError> {
    let prefix = format!("{}backups/", repo.cluster_prefix());
    let metas = repo.store().list(&prefix).await?;
    let keys: Vec<String> = metas.into_iter().map(|m| m.key).filter(|k| k.ends_with("/manifest.json")).collect();
    let loaded = futures::future::try_join_all(keys.iter().map(|k| repo.get_json::<Manifest>(k))).await?;
    let mut out: Vec<Manifest> = loaded.into_iter().flatten().collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
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
            provider: "ebs".into(),
            pg_version: 150004,
            system_identifier: "7301234567890123456".into(),
            timeline: 1,
            wal_segment_size: 16 << 20,
            start_lsn: Lsn(0x3000028),
            stop_lsn: Some(Lsn(0x3000100)),
            start_time: "2026-12-01T03:00:00Z".into(),
            stop_time: Some("2026-12-01T03:00:05Z".into()),
            backup_label: "START WAL LOCATION: 0/3000028\n".into(),
            tablespace_map: "16384 /srv/ts\n".into(),
            tablespaces: vec![Tablespace { oid: 16384, location: "/srv/ts".into() }],
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
            bundles: vec![Bundle { name: "b000000".into(), plain_bytes: 8192, stored_bytes: 300 }],
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
