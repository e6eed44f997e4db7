//! Capturing an `ebs` backup: find the EBS volumes behind data_dir, pg_wal and the
//! tablespaces (before backup mode), snapshot them at one point in time with the mounts
//! frozen (in backup mode), and wait for the snapshots to complete (after it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;

use crate::config::Config;
use crate::snapshot::ebs::discover::{self, Located, Sysfs};
use crate::snapshot::ebs::ec2::{self, Ec2, Instance};
use crate::snapshot::ebs::freeze::{self, Freezer, Frozen, Hold};
use crate::snapshot::ebs::{EbsMount, EbsRefs, EbsVolume};
use crate::snapshot::{BackupRef, Capture, Captured, Interrupt};

/// The volumes to snapshot and where they are mounted.
#[derive(Debug, Clone)]
pub struct Plan {
    /// This instance.
    pub instance: Instance,
    /// Paths and their mounts.
    pub located: Vec<Located>,
    /// Volumes in snapshot order, with their EC2 description.
    pub volumes: Vec<(ec2::Volume, String, String)>,
}

impl Plan {
    /// Distinct mount points, to freeze (sorted so nested mounts freeze parent first).
    pub fn mounts(&self) -> Vec<PathBuf> {
        let mut m: Vec<PathBuf> = self.located.iter().map(|l| l.mount_point.clone()).collect();
        m.sort();
        m.dedup();
        m
    }
}

/// The cluster's paths that must be captured, canonicalized: data_dir, pg_wal (when it
/// leads elsewhere) and each tablespace.
pub fn cluster_paths(data_dir: &Path, tablespaces: &[(u32, String)]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let canon = |p: &Path| p.canonicalize().with_context(|| format!("resolving {}", p.display()));
    let dd = canon(data_dir)?;
    let mut out = vec![("data_dir".to_string(), dd.clone())];
    let wal = canon(&data_dir.join("pg_wal"))?;
    if !wal.starts_with(&dd) {
        out.push(("pg_wal".to_string(), wal));
    }
    for (oid, loc) in tablespaces {
        out.push((format!("tablespace:{oid}"), canon(Path::new(loc))?));
    }
    Ok(out)
}

/// Finds the volumes behind `paths` on `instance`.
pub async fn plan(cfg: &Config, ec2: &Ec2, instance_id: &str, paths: &[(String, PathBuf)]) -> anyhow::Result<Plan> {
    let mounts = discover::read_mountinfo(&cfg.ebs.proc_root)?;
    let sys = Sysfs::new(cfg.ebs.sys_root.clone());
    let located = discover::locate(&mounts, &sys, paths)?;
    let instance = ec2.instance(instance_id).await?;
    let mut order: Vec<(String, String, String)> = Vec::new();
    for l in &located {
        for d in &l.disks {
            let by_name = discover::device_aliases(&d.kernel_name)
                .into_iter()
                .find_map(|a| instance.mappings.iter().find(|(dev, _)| *dev == a).cloned());
            let (attached_as, vol) = match (&d.volume_id, by_name) {
                (Some(v), _) => {
                    let dev = instance.mappings.iter().find(|(_, mv)| mv == v).map(|(dev, _)| dev.clone());
                    (dev.ok_or_else(|| not_attached(&d.device, v, &instance.id))?, v.clone())
                }
                (None, Some((dev, v))) => (dev, v),
                (None, None) => bail!(
                    "{} {} is on {} which is not an EBS volume attached to {}: set backup.provider = \"files\"",
                    l.role,
                    l.path.display(),
                    d.device,
                    instance.id
                ),
            };
            if !order.iter().any(|(v, _, _)| *v == vol) {
                order.push((vol, attached_as, d.device.clone()));
            }
        }
    }
    let ids: Vec<String> = order.iter().map(|(v, _, _)| v.clone()).collect();
    let described = ec2.volumes(&ids).await?;
    let volumes = described.into_iter().zip(order).map(|(v, (_, att, dev))| (v, att, dev)).collect();
    Ok(Plan { instance, located, volumes })
}

fn not_attached(device: &str, vol: &str, instance: &str) -> anyhow::Error {
    anyhow!("{device} is EBS volume {vol} but EC2 does not list it attached to {instance}: check ebs.instance_id")
}

/// Tags every snapshot of a backup carries.
pub fn backup_tags(b: BackupRef<'_>) -> Vec<(String, String)> {
    vec![
        (ec2::TAG_CLUSTER.into(), b.cluster.to_string()),
        (ec2::TAG_BACKUP.into(), b.id.to_string()),
        (ec2::TAG_KIND.into(), b.kind.into()),
        ("Name".into(), format!("tidemark {} {}", b.cluster, b.id)),
    ]
}

/// An `ebs` backup in progress: planned (instance, volumes), then frozen and snapshotted in
/// backup mode, then waited on until the snapshots complete.
pub struct EbsCapture<'a> {
    cfg: &'a Config,
    freezer: Box<dyn FreezerRef + 'a>,
    label: String,
    region: String,
    instance_id: String,
    availability_zone: String,
    ec2: Ec2,
    plan: Plan,
    tags: Vec<(String, String)>,
    frozen: Option<Box<dyn Frozen>>,
    snapshots: Vec<(String, String)>,
    completed: bool,
}

/// The freeze seam as the capture holds it: borrowed (a test double) or owned (the guard).
pub trait FreezerRef: Send + Sync {
    /// The freezer.
    fn get(&self) -> &dyn Freezer;
}

impl FreezerRef for &dyn Freezer {
    fn get(&self) -> &dyn Freezer {
        *self
    }
}

impl FreezerRef for freeze::GuardProcess {
    fn get(&self) -> &dyn Freezer {
        self
    }
}

/// Plans the capture of backup `b`: this instance, the volumes behind the cluster's paths.
pub async fn plan_capture<'a>(
    cfg: &'a Config,
    freezer: Option<&'a dyn Freezer>,
    b: BackupRef<'_>,
    tablespaces: &[(u32, String)],
) -> anyhow::Result<EbsCapture<'a>> {
    let freezer: Box<dyn FreezerRef + 'a> = match freezer {
        Some(f) => Box::new(f),
        None => Box::new(freeze::GuardProcess::current()?),
    };
    let (instance_id, region, az) =
        ec2::identity(cfg.ebs.instance_id.as_deref(), cfg.ebs.region.as_deref(), cfg.ebs.availability_zone.as_deref())
            .await?;
    let ec2 = Ec2::new(&region, cfg.ebs.endpoint.as_deref()).await;
    let paths = cluster_paths(&cfg.postgres.data_dir, tablespaces)?;
    let plan = plan(cfg, &ec2, &instance_id, &paths).await?;
    if !cfg.ebs.freeze && plan.volumes.len() > 1 {
        tracing::info!(
            volumes = plan.volumes.len(),
            "freeze off: relying on CreateSnapshots' crash consistency across volumes"
        );
    }
    let availability_zone = if az.is_empty() { plan.instance.availability_zone.clone() } else { az };
    Ok(EbsCapture {
        cfg,
        freezer,
        label: format!("tidemark {}", b.id),
        region,
        instance_id,
        availability_zone,
        ec2,
        plan,
        tags: backup_tags(b),
        frozen: None,
        snapshots: Vec::new(),
        completed: false,
    })
}

/// freeze → snapshot → thaw, on the planned mounts and volumes.
struct Steps<'c, 'a> {
    c: &'c mut EbsCapture<'a>,
    limit: Duration,
}

#[async_trait]
impl Hold for Steps<'_, '_> {
    async fn freeze(&mut self) -> anyhow::Result<()> {
        let mounts = self.c.plan.mounts();
        self.c.frozen = Some(self.c.freezer.get().freeze(&mounts, self.limit).await?);
        Ok(())
    }
    async fn snapshot(&mut self) -> anyhow::Result<()> {
        let c = &mut *self.c;
        let wanted: Vec<String> = c.plan.volumes.iter().map(|(v, _, _)| v.id.clone()).collect();
        c.snapshots = c.ec2.create_snapshots(&c.plan.instance, &wanted, &c.tags, &c.label).await?;
        Ok(())
    }
    async fn thaw(&mut self) -> anyhow::Result<()> {
        if let Some(f) = self.c.frozen.take() {
            let how = f.thaw().await?;
            if how != "requested" {
                bail!("the mounts were thawed by the {how} before the snapshot call returned");
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Capture for EbsCapture<'_> {
    async fn capture(
        &mut self,
        changes: Option<crate::snapshot::files::Changes>,
        interrupt: Interrupt<'_>,
    ) -> anyhow::Result<()> {
        if changes.is_some() {
            // Snapshots are incremental by themselves (EBS stores only changed blocks).
            anyhow::bail!(
                "an ebs backup is never taken incrementally: EBS snapshots store only the blocks that changed already"
            );
        }
        let (freeze, limit) = (self.cfg.ebs.freeze, Duration::from_secs(self.cfg.ebs.freeze_timeout_s));
        freeze::hold(&mut Steps { c: self, limit }, freeze, limit, interrupt).await
    }

    async fn settle(&mut self) -> anyhow::Result<()> {
        let ids: Vec<String> = self.snapshots.iter().map(|(_, s)| s.clone()).collect();
        self.ec2.wait_snapshots(&ids, Duration::from_secs(self.cfg.ebs.snapshot_timeout_s)).await?;
        self.completed = true;
        Ok(())
    }

    fn captured(&self) -> Captured {
        let plan = &self.plan;
        let state = if self.completed { "completed" } else { "pending" };
        let refs = EbsRefs {
            region: self.region.clone(),
            instance_id: self.instance_id.clone(),
            availability_zone: self.availability_zone.clone(),
            volumes: plan
                .volumes
                .iter()
                .filter_map(|(v, att, dev)| {
                    let snap = self.snapshots.iter().find(|(vid, _)| *vid == v.id)?;
                    Some(EbsVolume {
                        snapshot_id: snap.1.clone(),
                        volume_id: v.id.clone(),
                        attached_as: att.clone(),
                        device: dev.clone(),
                        size_gib: v.size_gib,
                        volume_type: v.volume_type.clone(),
                        iops: v.iops,
                        throughput: v.throughput,
                        encrypted: v.encrypted,
                        kms_key_id: v.kms_key_id.clone(),
                        state: state.into(),
                    })
                })
                .collect(),
            mounts: plan
                .located
                .iter()
                .map(|l| EbsMount {
                    role: l.role.clone(),
                    path: l.path.display().to_string(),
                    mount_point: l.mount_point.display().to_string(),
                    path_in_mount: l.path_in_mount.display().to_string(),
                    fs_type: l.fs_type.clone(),
                    volume_ids: l
                        .disks
                        .iter()
                        .filter_map(|d| {
                            plan.volumes.iter().find(|(_, _, dev)| *dev == d.device).map(|(v, _, _)| v.id.clone())
                        })
                        .collect(),
                })
                .collect(),
        };
        Captured { ebs: Some(refs), ..Captured::default() }
    }
}

/// Deletes the snapshots of a backup (the purge calls this); already-gone ones are fine.
/// Snapshots tagged with the backup id but missing from the manifest (a crash between the
/// call and the manifest write) are found by tag and deleted too.
pub async fn delete(endpoint: Option<&str>, b: BackupRef<'_>, refs: Option<&EbsRefs>) -> anyhow::Result<usize> {
    let Some(refs) = refs else { return Ok(0) };
    let ec2 = Ec2::new(&refs.region, endpoint).await;
    let mut ids: Vec<String> = refs.volumes.iter().map(|v| v.snapshot_id.clone()).collect();
    for s in ec2.tagged_snapshots(&[(ec2::TAG_CLUSTER, b.cluster), (ec2::TAG_BACKUP, b.id)]).await? {
        if !ids.contains(&s.id) {
            ids.push(s.id);
        }
    }
    for id in &ids {
        ec2.delete_snapshot(id).await?;
    }
    Ok(ids.len())
}
