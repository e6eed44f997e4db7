//! The `ebs` provider: EBS snapshots of the volumes behind the cluster's paths, taken at one
//! point in time with the mounts frozen ([`capture`]), restored as new volumes attached and
//! mounted on this host ([`restore`]); what a manifest records of them.

pub mod capture;
pub mod discover;
pub mod ec2;
pub mod freeze;
pub mod restore;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::{Config, Provider as ProviderKind};
use crate::snapshot::{BackupRef, Capture, Captured, Provider, RestoreInto};

use ec2::Ec2;

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

/// The `ebs` provider. `cfg` gives what a capture needs and is absent where only backups'
/// snapshots are handled (the purge); `freezer` is the freeze seam (`None`: the
/// freeze-guard process).
pub struct EbsProvider<'a> {
    /// The configuration backups are planned from.
    pub cfg: Option<&'a Config>,
    /// EC2 endpoint override.
    pub endpoint: Option<&'a str>,
    /// How long a snapshot copy may take to complete.
    pub snapshot_timeout: Duration,
    /// The freeze seam.
    pub freezer: Option<&'a dyn freeze::Freezer>,
}

/// Tag on a snapshot copy naming the snapshot it was copied from.
const SOURCE_TAG: &str = "tidemark:source-snapshot";

#[async_trait]
impl Provider for EbsProvider<'_> {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Ebs
    }

    async fn plan(
        &self,
        backup: BackupRef<'_>,
        tablespaces: &[(u32, String)],
    ) -> anyhow::Result<Box<dyn Capture + '_>> {
        let cfg = self.cfg.ok_or_else(|| anyhow::anyhow!("no configuration to plan an ebs backup from"))?;
        Ok(Box::new(capture::plan_capture(cfg, self.freezer, backup, tablespaces).await?))
    }

    async fn delete(&self, backup: BackupRef<'_>, captured: &Captured) -> anyhow::Result<usize> {
        capture::delete(self.endpoint, backup, captured.ebs.as_ref()).await
    }

    async fn copy_to_region(
        &self,
        backup: BackupRef<'_>,
        captured: &Captured,
        region: &str,
        kms_key: Option<&str>,
    ) -> anyhow::Result<(Captured, u64)> {
        let Some(refs) = &captured.ebs else { return Ok((captured.clone(), 0)) };
        let ec2 = Ec2::new(region, self.endpoint).await;
        let tags = capture::backup_tags(backup);
        let mut ids = Vec::new();
        let mut new_refs = refs.clone();
        new_refs.region = region.to_string();
        new_refs.availability_zone = String::new();
        // Copies left by an interrupted sync are reused rather than made twice.
        let earlier = ec2.tagged_snapshots(&[(ec2::TAG_BACKUP, backup.id), (ec2::TAG_CLUSTER, backup.cluster)]).await?;
        for v in new_refs.volumes.iter_mut() {
            let existing =
                earlier.iter().find(|s| s.tags.iter().any(|(k, val)| k == SOURCE_TAG && *val == v.snapshot_id));
            let id = match existing {
                Some(s) => s.id.clone(),
                None => {
                    let mut t = tags.clone();
                    t.push((SOURCE_TAG.into(), v.snapshot_id.clone()));
                    // KMS keys are regional: the source's key cannot encrypt here.
                    ec2.copy_snapshot_from(&refs.region, &v.snapshot_id, kms_key, &t).await?
                }
            };
            v.snapshot_id = id.clone();
            v.kms_key_id = kms_key.map(str::to_string);
            ids.push(id);
        }
        ec2.wait_snapshots(&ids, self.snapshot_timeout).await?;
        Ok((Captured { ebs: Some(new_refs), ..captured.clone() }, ids.len() as u64))
    }

    async fn verify(&self, backup: BackupRef<'_>, captured: &Captured, _deep: bool) -> anyhow::Result<Vec<String>> {
        let Some(refs) = &captured.ebs else {
            return Ok(vec![format!("backup {} is an ebs backup without snapshots in its manifest", backup.id)]);
        };
        let ec2 = Ec2::new(&refs.region, self.endpoint).await;
        let ids: Vec<String> = refs.volumes.iter().map(|v| v.snapshot_id.clone()).collect();
        let seen = ec2.snapshot_status(&ids).await?;
        let mut problems = Vec::new();
        for v in &refs.volumes {
            match seen.iter().find(|s| s.id == v.snapshot_id) {
                None => problems
                    .push(format!("snapshot {} (volume {}) is gone from {}", v.snapshot_id, v.volume_id, refs.region)),
                Some(s) if s.state != "completed" => problems.push(format!(
                    "snapshot {} (volume {}) is {}{}",
                    v.snapshot_id,
                    v.volume_id,
                    s.state,
                    s.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
                )),
                Some(_) => {}
            }
        }
        Ok(problems)
    }

    async fn restore_into(
        &self,
        backup: BackupRef<'_>,
        captured: &Captured,
        into: &RestoreInto<'_>,
    ) -> anyhow::Result<Vec<restore::Remounted>> {
        let cfg = self.cfg.ok_or_else(|| anyhow::anyhow!("no configuration to restore an ebs backup with"))?;
        let refs = captured.ebs.as_ref().ok_or_else(|| {
            anyhow::anyhow!("backup {} is an ebs backup without snapshots in its manifest", backup.id)
        })?;
        let (opts, host) =
            into.volumes.ok_or_else(|| anyhow::anyhow!("an ebs restore needs volume options and a host"))?;
        restore::restore_volumes(cfg, refs, backup, into.target_dir, opts, host).await
    }
}
