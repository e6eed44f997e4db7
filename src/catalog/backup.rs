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
        self.files.iter().map(|f| f.size).sum()
    }

    /// Total stored bytes of bundles.
    pub fn stored_bytes(&self) -> u64 {
        self.bundles.iter().map(|b| b.stored_bytes).sum()
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
