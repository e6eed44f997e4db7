//! Restoring an `ebs` backup: a new volume from each snapshot, attached to this host and
//! mounted where the restore wants the data directory (and beside it, pg_wal's and the
//! tablespaces' filesystems).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;

use crate::config::Config;
use crate::snapshot::ebs::discover::{self, Sysfs};
use crate::snapshot::ebs::ec2::{self, Ec2};
use crate::snapshot::ebs::{EbsMount, EbsRefs};
use crate::snapshot::BackupRef;

/// What restore needs from the host: find an attached volume's device, mount it, read it.
#[async_trait]
pub trait Host: Send + Sync {
    /// The kernel device of an attached volume, once it has appeared.
    async fn find_device(&self, volume_id: &str, attached_as: &str) -> anyhow::Result<Option<String>>;
    /// Mounts `device` (filesystem `fs_type`) at `dir`.
    async fn mount(&self, device: &str, fs_type: &str, dir: &Path) -> anyhow::Result<()>;
    /// Reads every block of `device` so EBS fetches it from S3 now, not on first use.
    async fn prewarm(&self, device: &str, workers: usize, pb: indicatif::ProgressBar) -> anyhow::Result<u64>;
    /// Unmounts what is mounted at `dir` (nothing mounted there is success).
    async fn unmount(&self, dir: &Path) -> anyhow::Result<()>;
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

    async fn unmount(&self, dir: &Path) -> anyhow::Result<()> {
        let mounted = tokio::process::Command::new("mountpoint").arg("-q").arg(dir).status().await;
        if !mounted.is_ok_and(|s| s.success()) {
            return Ok(());
        }
        let out = tokio::process::Command::new("umount").arg(dir).output().await.context("running umount(8)")?;
        if !out.status.success() {
            bail!("umount {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
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
    /// More tags for the new volumes (a drill's id, to find them again at teardown).
    pub tags: Vec<(String, String)>,
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
    b: BackupRef<'_>,
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
            b.id,
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
                b.id
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
    let mut tags = vec![
        (ec2::TAG_CLUSTER.to_string(), b.cluster.to_string()),
        (ec2::TAG_BACKUP.to_string(), b.id.to_string()),
        (ec2::TAG_KIND.to_string(), "restore".to_string()),
        ("Name".to_string(), format!("tidemark restore of {} {}", b.cluster, b.id)),
    ];
    tags.extend(opts.tags.iter().cloned());
    let mut used: Vec<String> = inst.mappings.iter().map(|(d, _)| d.clone()).collect();
    let mut out = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let vol = refs
            .volumes
            .iter()
            .find(|v| v.volume_id == src.volume_ids[0])
            .ok_or_else(|| anyhow!("manifest of {} has no snapshot of {}", b.id, src.volume_ids[0]))?;
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

/// Undoes [`restore_volumes`] for the volumes tagged `tag`: unmounts `target` and the
/// other mounts beside it, then detaches and deletes every volume carrying the tag (also
/// those a failed restore created but never mounted). Returns the volumes deleted.
pub async fn discard_volumes(
    cfg: &Config,
    tag: (&str, &str),
    target: &Path,
    host: &dyn Host,
) -> anyhow::Result<Vec<String>> {
    let mut extra: Vec<PathBuf> = Vec::new();
    let mut name = target.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".mounts");
    if let Ok(rd) = std::fs::read_dir(target.with_file_name(name)) {
        extra.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    for dir in extra.iter().chain(std::iter::once(&target.to_path_buf())) {
        if dir.exists() {
            host.unmount(dir).await?;
        }
    }
    let (_, region, _) =
        ec2::identity(cfg.ebs.instance_id.as_deref(), cfg.ebs.region.as_deref(), cfg.ebs.availability_zone.as_deref())
            .await?;
    let ec2 = Ec2::new(&region, cfg.ebs.endpoint.as_deref()).await;
    let ids = ec2.tagged_volumes(&[tag]).await?;
    for id in &ids {
        ec2.discard_volume(id, Duration::from_secs(300)).await?;
        tracing::info!(volume = %id, "volume deleted");
    }
    Ok(ids)
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
