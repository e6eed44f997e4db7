//! The `ebs` provider: find the EBS volumes behind data_dir, pg_wal and the tablespaces,
//! snapshot them at one point in time between pg_backup_start and pg_backup_stop (with the
//! mounts frozen), and restore them as new volumes attached and mounted on this host.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;

use crate::catalog::backup::{EbsMount, EbsRefs, EbsVolume, Manifest};
use crate::config::Config;
use crate::pg::conn::{Session, StopResult};
use crate::snapshot::discover::{self, Located, Sysfs};
use crate::snapshot::ec2::{self, Ec2, Instance};
use crate::snapshot::freeze::{self, Freezer, Frozen, Steps};
use crate::wal::name::Lsn;

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
pub fn backup_tags(m: &Manifest) -> Vec<(String, String)> {
    vec![
        (ec2::TAG_CLUSTER.into(), m.cluster.clone()),
        (ec2::TAG_BACKUP.into(), m.id.clone()),
        (ec2::TAG_KIND.into(), m.kind.as_str().into()),
        ("Name".into(), format!("tidemark {} {}", m.cluster, m.id)),
    ]
}

struct Capture<'a> {
    session: &'a Session,
    label: String,
    freezer: &'a dyn Freezer,
    mounts: Vec<PathBuf>,
    freeze_limit: Duration,
    ec2: &'a Ec2,
    plan: &'a Plan,
    tags: Vec<(String, String)>,
    frozen: Option<Box<dyn Frozen>>,
    start_lsn: Option<Lsn>,
    stop: Option<StopResult>,
    snapshots: Vec<(String, String)>,
}

#[async_trait]
impl Steps for Capture<'_> {
    async fn start(&mut self) -> anyhow::Result<()> {
        self.start_lsn = Some(self.session.backup_start(&self.label).await?);
        Ok(())
    }
    async fn freeze(&mut self) -> anyhow::Result<()> {
        self.frozen = Some(self.freezer.freeze(&self.mounts, self.freeze_limit).await?);
        Ok(())
    }
    async fn snapshot(&mut self) -> anyhow::Result<()> {
        let wanted: Vec<String> = self.plan.volumes.iter().map(|(v, _, _)| v.id.clone()).collect();
        self.snapshots = self.ec2.create_snapshots(&self.plan.instance, &wanted, &self.tags, &self.label).await?;
        Ok(())
    }
    async fn thaw(&mut self) -> anyhow::Result<()> {
        if let Some(f) = self.frozen.take() {
            let how = f.thaw().await?;
            if how != "requested" {
                bail!("the mounts were thawed by the {how} before the snapshot call returned");
            }
        }
        Ok(())
    }
    async fn stop(&mut self) -> anyhow::Result<()> {
        self.stop = Some(self.session.backup_stop().await?);
        Ok(())
    }
}

/// Takes the snapshots between start and stop, records them in `m`, and waits until they
/// are completed. Returns the start LSN and the stop result.
pub async fn capture(
    cfg: &Config,
    session: &Session,
    m: &mut Manifest,
    freezer: &dyn Freezer,
) -> anyhow::Result<(Lsn, StopResult)> {
    let (instance_id, region, az) =
        ec2::identity(cfg.ebs.instance_id.as_deref(), cfg.ebs.region.as_deref(), cfg.ebs.availability_zone.as_deref())
            .await?;
    let ec2 = Ec2::new(&region, cfg.ebs.endpoint.as_deref()).await;
    let ts: Vec<(u32, String)> = m.tablespaces.iter().map(|t| (t.oid, t.location.clone())).collect();
    let paths = cluster_paths(&cfg.postgres.data_dir, &ts)?;
    let plan = plan(cfg, &ec2, &instance_id, &paths).await?;
    if !cfg.ebs.freeze && plan.volumes.len() > 1 {
        tracing::info!(
            volumes = plan.volumes.len(),
            "freeze off: relying on CreateSnapshots' crash consistency across volumes"
        );
    }
    let mut steps = Capture {
        session,
        label: format!("tidemark {}", m.id),
        freezer,
        mounts: plan.mounts(),
        freeze_limit: Duration::from_secs(cfg.ebs.freeze_timeout_s),
        ec2: &ec2,
        plan: &plan,
        tags: backup_tags(m),
        frozen: None,
        start_lsn: None,
        stop: None,
        snapshots: Vec::new(),
    };
    let limit = steps.freeze_limit;
    let ran = freeze::run(&mut steps, cfg.ebs.freeze, limit, freeze::interrupted()).await;
    let refs = EbsRefs {
        region: region.clone(),
        instance_id: instance_id.clone(),
        availability_zone: if az.is_empty() { plan.instance.availability_zone.clone() } else { az },
        volumes: plan
            .volumes
            .iter()
            .filter_map(|(v, att, dev)| {
                let snap = steps.snapshots.iter().find(|(vid, _)| *vid == v.id)?;
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
                    state: "pending".into(),
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
    let (start, stop) = (steps.start_lsn, steps.stop.take());
    m.ebs = Some(refs);
    ran?;
    let (Some(start), Some(stop)) = (start, stop) else { bail!("backup start/stop did not both complete") };
    let ids: Vec<String> = m.ebs.iter().flat_map(|e| e.volumes.iter().map(|v| v.snapshot_id.clone())).collect();
    ec2.wait_snapshots(&ids, Duration::from_secs(cfg.ebs.snapshot_timeout_s)).await?;
    if let Some(e) = m.ebs.as_mut() {
        e.volumes.iter_mut().for_each(|v| v.state = "completed".into());
    }
    Ok((start, stop))
}

/// Deletes the snapshots of a backup (the purge calls this); already-gone ones are fine.
/// Snapshots tagged with the backup id but missing from the manifest (a crash between the
/// call and the manifest write) are found by tag and deleted too.
pub async fn delete(endpoint: Option<&str>, m: &Manifest) -> anyhow::Result<usize> {
    let Some(refs) = &m.ebs else { return Ok(0) };
    let ec2 = Ec2::new(&refs.region, endpoint).await;
    let mut ids: Vec<String> = refs.volumes.iter().map(|v| v.snapshot_id.clone()).collect();
    for s in ec2.tagged_snapshots(&[(ec2::TAG_CLUSTER, &m.cluster), (ec2::TAG_BACKUP, &m.id)]).await? {
        if !ids.contains(&s.id) {
            ids.push(s.id);
        }
    }
    for id in &ids {
        ec2.delete_snapshot(id).await?;
    }
    Ok(ids.len())
}

/// What restore needs from the host: find an attached volume's device, mount it, read it.
#[async_trait]
pub trait Host: Send + Sync {
    /// The kernel device of an attached volume, once it has appeared.
    async fn find_device(&self, volume_id: &str, attached_as: &str) -> anyhow::Result<Option<String>>;
    /// Mounts `device` (filesystem `fs_type`) at `dir`.
    async fn mount(&self, device: &str, fs_type: &str, dir: &Path) -> anyhow::Result<()>;
    /// Reads every block of `device` so EBS fetches it from S3 now, not on first use.
    async fn prewarm(&self, device: &str, workers: usize, pb: indicatif::ProgressBar) -> anyhow::Result<u64>;
}

/// This machine: sysfs for devices, mount(8), and parallel block reads.
pub struct LocalHost {
    /// sysfs root.
    pub sys: PathBuf,
}

#[async_trait]
impl Host for LocalHost {
    async fn find_device(&self, volume_id: &str, attached_as: &str) -> anyhow::Result<Option<String>> {
        if let Some(d) = Sysfs::new(self.sys.clone()).find_volume(volume_id)? {
            return Ok(Some(d));
        }
        // Xen instances: the device keeps its name, sdX shows up as xvdX.
        let letter = attached_as.trim_start_matches("/dev/").trim_start_matches("sd").trim_start_matches("xvd");
        for cand in [attached_as.to_string(), format!("/dev/xvd{letter}")] {
            if Path::new(&cand).exists() {
                return Ok(Some(cand));
            }
        }
        Ok(None)
    }

    async fn mount(&self, device: &str, fs_type: &str, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // xfs refuses a second mount of a filesystem with the same UUID (the source's is
        // mounted here too); nouuid lets the copy mount beside it.
        let mut cmd = tokio::process::Command::new("mount");
        cmd.arg("-t").arg(fs_type);
        if fs_type == "xfs" {
            cmd.arg("-o").arg("nouuid");
        }
        let out = cmd.arg(device).arg(dir).output().await.context("running mount(8)")?;
        if !out.status.success() {
            bail!(
                "mount {device} at {} failed: {} (restores with provider ebs run as root)",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    async fn prewarm(&self, device: &str, workers: usize, pb: indicatif::ProgressBar) -> anyhow::Result<u64> {
        let device = device.to_string();
        tokio::task::spawn_blocking(move || prewarm_blocking(&device, workers, &pb)).await?
    }
}

fn prewarm_blocking(device: &str, workers: usize, pb: &indicatif::ProgressBar) -> anyhow::Result<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(device).with_context(|| format!("opening {device} to prewarm"))?;
    let size = {
        use std::io::Seek;
        let mut g = &f;
        g.seek(std::io::SeekFrom::End(0))?
    };
    pb.set_length(size);
    const CHUNK: u64 = 1 << 20;
    let next = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers.max(1))
            .map(|_| {
                s.spawn(|| -> std::io::Result<()> {
                    let mut buf = vec![0u8; CHUNK as usize];
                    loop {
                        let off = next.fetch_add(CHUNK, std::sync::atomic::Ordering::Relaxed);
                        if off >= size {
                            return Ok(());
                        }
                        let n = (size - off).min(CHUNK) as usize;
                        f.read_exact_at(&mut buf[..n], off)?;
                        pb.inc(n as u64);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow!("a prewarm reader panicked"))??;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(size)
}

/// Restore options for new volumes.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Attach to this instance (default: this one).
    pub instance_id: Option<String>,
    /// Override the volume type.
    pub volume_type: Option<String>,
    /// Override IOPS.
    pub iops: Option<i32>,
    /// Override throughput.
    pub throughput: Option<i32>,
    /// Enable Fast Snapshot Restore in the AZ first.
    pub fast_restore: bool,
    /// Read every block after mounting.
    pub prewarm: bool,
    /// Parallel readers for prewarm.
    pub workers: usize,
}

/// A source mount brought back: where it is mounted now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Remounted {
    /// Mount point on the source.
    pub source_mount: String,
    /// New volume id.
    pub volume_id: String,
    /// Device on this host.
    pub device: String,
    /// New mount point.
    pub mounted_at: PathBuf,
}

/// Where source mount `i` (other than data_dir's) is mounted on restore.
pub fn extra_mount_dir(target: &Path, i: usize) -> PathBuf {
    let mut name = target.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".mounts/{i}"));
    target.with_file_name(name)
}

/// Creates a volume from each snapshot, attaches it, and mounts the data_dir's filesystem at
/// `target` and any other (pg_wal, tablespaces) under `<target>.mounts/N`.
pub async fn restore_volumes(
    cfg: &Config,
    refs: &EbsRefs,
    m: &Manifest,
    target: &Path,
    opts: &RestoreOptions,
    host: &dyn Host,
) -> anyhow::Result<Vec<Remounted>> {
    let (this_instance, region, _) = ec2::identity(
        cfg.ebs.instance_id.as_deref().or(opts.instance_id.as_deref()),
        cfg.ebs.region.as_deref().or(Some(refs.region.as_str())),
        cfg.ebs.availability_zone.as_deref(),
    )
    .await?;
    let instance_id = opts.instance_id.clone().unwrap_or(this_instance);
    if region != refs.region {
        bail!(
            "backup {}'s snapshots are in {} but this host is in {region}: restore with --region {} from a copy",
            m.id,
            refs.region,
            region
        );
    }
    let ec2 = Ec2::new(&region, cfg.ebs.endpoint.as_deref()).await;
    let inst = ec2.instance(&instance_id).await?;
    for mnt in &refs.mounts {
        if mnt.volume_ids.len() != 1 {
            bail!(
                "{} was on {} volumes ({}); restoring LVM/md sets is not automated: create volumes from the snapshots in `tidemark backup show {}` and assemble them by hand",
                mnt.path,
                mnt.volume_ids.len(),
                mnt.volume_ids.join(", "),
                m.id
            );
        }
    }
    let snaps: Vec<String> = refs.volumes.iter().map(|v| v.snapshot_id.clone()).collect();
    if opts.fast_restore {
        ec2.enable_fast_restore(&inst.availability_zone, &snaps).await?;
    }
    // Source mount points in a fixed order: data_dir's first.
    let mut sources: Vec<&EbsMount> = Vec::new();
    for mnt in refs.mounts.iter() {
        if !sources.iter().any(|s| s.mount_point == mnt.mount_point) {
            sources.push(mnt);
        }
    }
    let tags = vec![
        (ec2::TAG_CLUSTER.to_string(), m.cluster.clone()),
        (ec2::TAG_BACKUP.to_string(), m.id.clone()),
        (ec2::TAG_KIND.to_string(), "restore".to_string()),
        ("Name".to_string(), format!("tidemark restore of {} {}", m.cluster, m.id)),
    ];
    let mut used: Vec<String> = inst.mappings.iter().map(|(d, _)| d.clone()).collect();
    let mut out = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let vol = refs
            .volumes
            .iter()
            .find(|v| v.volume_id == src.volume_ids[0])
            .ok_or_else(|| anyhow!("manifest of {} has no snapshot of {}", m.id, src.volume_ids[0]))?;
        let volume_type = opts.volume_type.clone().unwrap_or_else(|| vol.volume_type.clone());
        let new_id = ec2
            .create_volume(&ec2::NewVolume {
                snapshot_id: &vol.snapshot_id,
                availability_zone: &inst.availability_zone,
                volume_type: &volume_type,
                iops: opts.iops.or(vol.iops),
                throughput: opts.throughput.or(vol.throughput),
                size_gib: None,
                tags: &tags,
            })
            .await?;
        tracing::info!(volume = %new_id, snapshot = %vol.snapshot_id, "volume created");
        ec2.wait_volume(&new_id, aws_sdk_ec2::types::VolumeState::Available, Duration::from_secs(600)).await?;
        let dev_name = discover::next_free_device(&used)
            .ok_or_else(|| anyhow!("no free device name /dev/sdf../dev/sdp on {}", inst.id))?;
        used.push(dev_name.clone());
        ec2.attach(&new_id, &inst.id, &dev_name, Duration::from_secs(300)).await?;
        let device = wait_device(host, &new_id, &dev_name, Duration::from_secs(120)).await?;
        let dir = if i == 0 { target.to_path_buf() } else { extra_mount_dir(target, i) };
        host.mount(&device, &src.fs_type, &dir).await?;
        if opts.prewarm {
            let pb = crate::snapshot::progress::bytes_bar(0, &format!("prewarm {device}"));
            let n = host.prewarm(&device, opts.workers, pb.clone()).await?;
            pb.finish_and_clear();
            tracing::info!(%device, bytes = n, "prewarmed");
        }
        out.push(Remounted { source_mount: src.mount_point.clone(), volume_id: new_id, device, mounted_at: dir });
    }
    Ok(out)
}

async fn wait_device(host: &dyn Host, vol: &str, dev: &str, limit: Duration) -> anyhow::Result<String> {
    let began = std::time::Instant::now();
    loop {
        if let Some(d) = host.find_device(vol, dev).await? {
            return Ok(d);
        }
        if began.elapsed() > limit {
            bail!("volume {vol} attached as {dev} but no device for it appeared within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The new path of a source path, given where its mount is now.
pub fn relocate(mounts: &[Remounted], refs: &EbsRefs, role: &str) -> Option<PathBuf> {
    let mnt = refs.mounts.iter().find(|m| m.role == role)?;
    let now = mounts.iter().find(|r| r.source_mount == mnt.mount_point)?;
    Some(now.mounted_at.join(&mnt.path_in_mount))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prewarm_reads_every_byte_once() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let size = (3 << 20) + 12345;
        std::fs::write(f.path(), vec![7u8; size]).unwrap();
        let pb = indicatif::ProgressBar::hidden();
        let n = prewarm_blocking(f.path().to_str().unwrap(), 3, &pb).unwrap();
        assert_eq!(n, size as u64);
        assert_eq!(pb.position(), size as u64);
        assert!(prewarm_blocking("/nonexistent/dev", 2, &pb).unwrap_err().to_string().contains("/nonexistent/dev"));
    }

    #[test]
    fn extra_mounts_sit_beside_the_target() {
        assert_eq!(extra_mount_dir(Path::new("/srv/pg/restored"), 2), PathBuf::from("/srv/pg/restored.mounts/2"));
    }
}
