//! The `ebs` provider against moto's EC2 API on loopback: snapshots, tags, copies,
//! volumes and attachments; throttling and a snapshot in error injected by an HTTP proxy;
//! the freeze guard on a real loop-mounted ext4; and a PITR restore of a backup taken with
//! a real freeze, where only the block layer is simulated (the frozen filesystem is imaged
//! at freeze time and "mounted" back from that image).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice, InstanceType, Placement, VolumeState, VolumeType};
use tidemark::catalog::backup::{BackupKind, BackupState};
use tidemark::snapshot::ebs::ec2::{Ec2, NewVolume, TAG_BACKUP, TAG_CLUSTER, TAG_KIND};
use tidemark::snapshot::ebs::freeze::{Freezer, Frozen, GuardProcess};
use tidemark::snapshot::ebs::restore::Host;

use crate::harness::{self, FaultProxy, LoopMount, Moto, Pg, Tidemark};

/// Runs an instance in us-east-1a with extra EBS volumes at `devices`; returns its id.
async fn run_instance(ec2: &Ec2, devices: &[(&str, i32)]) -> String {
    let images = ec2.client().describe_images().owners("amazon").send().await.unwrap();
    let ami = images.images()[0].image_id().unwrap().to_string();
    let mut req = ec2
        .client()
        .run_instances()
        .image_id(ami)
        .min_count(1)
        .max_count(1)
        .instance_type(InstanceType::T3Micro)
        .placement(Placement::builder().availability_zone("us-east-1a").build());
    for (dev, gib) in devices {
        req = req.block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name(*dev)
                .ebs(EbsBlockDevice::builder().volume_size(*gib).volume_type(VolumeType::Gp3).build())
                .build(),
        );
    }
    let out = req.send().await.unwrap();
    out.instances()[0].instance_id().unwrap().to_string()
}

fn tags(backup: &str) -> Vec<(String, String)> {
    vec![(TAG_CLUSTER.into(), "orders".into()), (TAG_BACKUP.into(), backup.into()), (TAG_KIND.into(), "manual".into())]
}

#[tokio::test]
async fn snapshots_volumes_and_copies_against_moto() {
    harness::aws_env();
    let moto = Moto::start();
    let ec2 = Ec2::new("us-east-1", Some(&moto.endpoint())).await;
    let id = run_instance(&ec2, &[("/dev/sdf", 10), ("/dev/sdg", 20), ("/dev/sdh", 5)]).await;
    let inst = ec2.instance(&id).await.unwrap();
    assert_eq!(inst.availability_zone, "us-east-1a");
    let vol = |d: &str| inst.mappings.iter().find(|(dev, _)| dev == d).unwrap().1.clone();
    let wanted = vec![vol("/dev/sdg"), vol("/dev/sdf")];

    // CreateSnapshots for the instance takes exactly the wanted volumes, in the asked order.
    let pairs = ec2.create_snapshots(&inst, &wanted, &tags("B1"), "tidemark test").await.unwrap();
    assert_eq!(pairs.iter().map(|p| p.0.clone()).collect::<Vec<_>>(), wanted);
    let everyone = ec2.client().describe_snapshots().send().await.unwrap().snapshots().len();
    let mine = ec2.tagged_snapshots(&[(TAG_CLUSTER, "orders")]).await.unwrap();
    assert_eq!(mine.len(), 2, "only the wanted volumes' snapshots are kept: {mine:?}");
    assert!(everyone > mine.len(), "moto lists other snapshots too ({everyone}); the tag filter matters");
    for s in &mine {
        assert!(s.tags.contains(&(TAG_BACKUP.to_string(), "B1".to_string())), "{s:?}");
        assert!(s.tags.contains(&(TAG_KIND.to_string(), "manual".to_string())), "{s:?}");
    }
    let ids: Vec<String> = pairs.iter().map(|p| p.1.clone()).collect();
    ec2.wait_snapshots(&ids, Duration::from_secs(60)).await.unwrap();

    // Single-volume CreateSnapshot, tagged the same way.
    let single = ec2.create_snapshot(&vol("/dev/sdh"), &tags("B2"), "one").await.unwrap();
    assert_eq!(ec2.tagged_snapshots(&[(TAG_BACKUP, "B2")]).await.unwrap()[0].id, single);

    // Cross-region copy, found by tag in the other region only.
    let west = Ec2::new("us-west-1", Some(&moto.endpoint())).await;
    let copy = west.copy_snapshot_from("us-east-1", &ids[0], None, &tags("B1")).await.unwrap();
    let west_mine = west.tagged_snapshots(&[(TAG_BACKUP, "B1")]).await.unwrap();
    assert_eq!(west_mine.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), vec![copy.clone()]);
    west.wait_snapshots(std::slice::from_ref(&copy), Duration::from_secs(60)).await.unwrap();

    // A volume from a snapshot, attached at the first free device name.
    let new_vol = ec2
        .create_volume(&NewVolume {
            snapshot_id: &ids[0],
            availability_zone: &inst.availability_zone,
            volume_type: "gp3",
            iops: Some(4000),
            throughput: Some(250),
            size_gib: None,
            tags: &tags("B1"),
        })
        .await
        .unwrap();
    let v = ec2.wait_volume(&new_vol, VolumeState::Available, Duration::from_secs(60)).await.unwrap();
    assert_eq!((v.size_gib, v.volume_type.as_str(), v.iops), (20, "gp3", Some(4000)));
    let used: Vec<String> = inst.mappings.iter().map(|(d, _)| d.clone()).collect();
    let dev = tidemark::snapshot::ebs::discover::next_free_device(&used).unwrap();
    assert_eq!(dev, "/dev/sdi");
    ec2.attach(&new_vol, &id, &dev, Duration::from_secs(60)).await.unwrap();
    assert!(ec2.instance(&id).await.unwrap().mappings.contains(&(dev, new_vol)));

    // Deleting is idempotent.
    ec2.delete_snapshot(&ids[1]).await.unwrap();
    ec2.delete_snapshot(&ids[1]).await.unwrap();
    assert_eq!(ec2.tagged_snapshots(&[(TAG_BACKUP, "B1")]).await.unwrap().len(), 1);
}

#[tokio::test]
async fn throttling_is_retried_and_a_snapshot_in_error_fails_with_awss_message() {
    harness::aws_env();
    let moto = Moto::start();
    let direct = Ec2::new("us-east-1", Some(&moto.endpoint())).await;
    let id = run_instance(&direct, &[("/dev/sdf", 8)]).await;
    let inst = direct.instance(&id).await.unwrap();
    let vol = inst.mappings.iter().find(|(d, _)| d == "/dev/sdf").unwrap().1.clone();

    let proxy = FaultProxy::start(moto.port);
    let ec2 = Ec2::new("us-east-1", Some(&proxy.endpoint())).await;
    {
        let mut f = proxy.faults.lock().unwrap();
        f.action = Some("CreateSnapshot".into());
        f.throttle = 3;
    }
    let sid = ec2.create_snapshot(&vol, &tags("T1"), "throttled").await.unwrap();
    {
        let f = proxy.faults.lock().unwrap();
        assert_eq!(f.throttled, 3);
        assert_eq!(f.seen.iter().filter(|a| *a == "CreateSnapshot").count(), 4, "{:?}", f.seen);
    }

    // Where CreateSnapshots is refused, each volume is snapshotted on its own.
    {
        let mut f = proxy.faults.lock().unwrap();
        f.action = Some("CreateSnapshots".into());
        f.code = Some("UnsupportedOperation".into());
        f.throttle = 1;
        f.seen.clear();
    }
    let pairs = ec2.create_snapshots(&inst, std::slice::from_ref(&vol), &tags("T2"), "fallback").await.unwrap();
    assert_eq!(pairs.len(), 1);
    assert_eq!(pairs[0].0, vol);
    {
        let f = proxy.faults.lock().unwrap();
        assert_eq!(f.seen, ["CreateSnapshots", "CreateSnapshot"], "fell back to CreateSnapshot");
    }
    assert_eq!(direct.tagged_snapshots(&[(TAG_BACKUP, "T2")]).await.unwrap()[0].id, pairs[0].1);

    {
        let mut f = proxy.faults.lock().unwrap();
        f.action = Some("DescribeSnapshots".into());
        f.rewrite = vec![(
            "<status>completed</status>".into(),
            "<status>error</status><statusMessage>Snapshot copy failed: fault injected by the test</statusMessage>"
                .into(),
        )];
    }
    let e = ec2.wait_snapshots(std::slice::from_ref(&sid), Duration::from_secs(30)).await.unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("state error") && msg.contains("fault injected by the test") && msg.contains(&vol), "{msg}");
}

fn stat_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next())
}

/// A writer process that appends to a file on `dir` and fsyncs.
fn writer(dir: &Path) -> std::process::Child {
    Command::new("sh").arg("-c").arg(format!("echo data >> {0}/w && sync {0}/w", dir.display())).spawn().unwrap()
}

#[test]
fn freeze_guard_thaws_on_request_on_agent_death_and_on_its_watchdog() {
    let Some(lm) = LoopMount::new(64) else { return };
    let guard = |timeout_ms: u64| {
        let mut c = Command::new(harness::bin())
            .args(["freeze-guard", "--timeout-ms", &timeout_ms.to_string()])
            .arg(&lm.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line.trim(), "frozen");
        (c, out)
    };
    let finish = |mut c: std::process::Child, mut out: std::io::BufReader<std::process::ChildStdout>| {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(c.wait().unwrap().success());
        line.trim().to_string()
    };

    // Agent death (stdin closes, as with kill -9): the blocked writer goes on.
    let (mut c, out) = guard(600_000);
    let mut w = writer(&lm.dir);
    harness::wait_for("the writer to block on the frozen mount", Duration::from_secs(20), || {
        stat_state(w.id()) == Some('D')
    });
    drop(c.stdin.take());
    assert_eq!(finish(c, out), "thawed agent-gone");
    assert!(w.wait().unwrap().success());

    // The watchdog thaws without anyone asking.
    let (c, out) = guard(300);
    let mut w = writer(&lm.dir);
    assert_eq!(finish(c, out), "thawed watchdog");
    assert!(w.wait().unwrap().success());

    // Through the Freezer seam: thaw on request.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let g = GuardProcess { exe: harness::bin().to_path_buf() };
        let frozen = g.freeze(std::slice::from_ref(&lm.dir), Duration::from_secs(60)).await.unwrap();
        let mut w = writer(&lm.dir);
        harness::wait_for("the writer to block", Duration::from_secs(20), || stat_state(w.id()) == Some('D'));
        assert_eq!(frozen.thaw().await.unwrap(), "requested");
        assert!(w.wait().unwrap().success());
        // A path that is not a mount point of a freezable filesystem: a clear error.
        let e = g.freeze(&[PathBuf::from("/proc")], Duration::from_secs(5)).await.err().unwrap();
        assert!(format!("{e:#}").contains("cannot freeze /proc"), "{e:#}");
    });
    assert_eq!(std::fs::read_to_string(lm.dir.join("w")).unwrap(), "data\ndata\ndata\n");
}

/// Real freeze; while frozen, copies the mount to `images/<volume>`: exactly what an EBS
/// snapshot taken during the freeze holds.
struct ImagingFreezer {
    inner: GuardProcess,
    images: PathBuf,
    volume: String,
    thaws: Arc<Mutex<Vec<String>>>,
}

struct ImagingFrozen {
    inner: Box<dyn Frozen>,
    thaws: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Freezer for ImagingFreezer {
    async fn freeze(&self, mounts: &[PathBuf], timeout: Duration) -> anyhow::Result<Box<dyn Frozen>> {
        let inner = self.inner.freeze(mounts, timeout).await?;
        let img = self.images.join(&self.volume);
        std::fs::create_dir_all(&img)?;
        harness::run_ok(Command::new("cp").arg("-a").arg(format!("{}/.", mounts[0].display())).arg(&img));
        Ok(Box::new(ImagingFrozen { inner, thaws: self.thaws.clone() }))
    }
}

#[async_trait]
impl Frozen for ImagingFrozen {
    async fn thaw(self: Box<Self>) -> anyhow::Result<String> {
        let how = self.inner.thaw().await?;
        self.thaws.lock().unwrap().push(how.clone());
        Ok(how)
    }
}

/// "Mounts" a restored volume by copying the image of the volume its snapshot came from.
struct ImageHost {
    ec2: Ec2,
    images: PathBuf,
    mounted: Mutex<Vec<(String, PathBuf)>>,
}

#[async_trait]
impl Host for ImageHost {
    async fn find_device(&self, volume_id: &str, _attached_as: &str) -> anyhow::Result<Option<String>> {
        Ok(Some(format!("/dev/fake/{volume_id}")))
    }
    async fn mount(&self, device: &str, fs_type: &str, dir: &Path) -> anyhow::Result<()> {
        assert_eq!(fs_type, "ext4");
        let vol = device.trim_start_matches("/dev/fake/");
        let v = self.ec2.client().describe_volumes().volume_ids(vol).send().await?;
        let snap = v.volumes()[0].snapshot_id().unwrap().to_string();
        let s = self.ec2.client().describe_snapshots().snapshot_ids(&snap).send().await?;
        let source = s.snapshots()[0].volume_id().unwrap().to_string();
        std::fs::create_dir_all(dir)?;
        harness::run_ok(
            Command::new("cp").arg("-a").arg(format!("{}/.", self.images.join(&source).display())).arg(dir),
        );
        self.mounted.lock().unwrap().push((vol.to_string(), dir.to_path_buf()));
        Ok(())
    }
    async fn prewarm(&self, _device: &str, _workers: usize, _pb: indicatif::ProgressBar) -> anyhow::Result<u64> {
        Ok(0)
    }
    async fn unmount(&self, dir: &Path) -> anyhow::Result<()> {
        // What an unmount leaves: the empty mount point.
        let mut mounted = self.mounted.lock().unwrap();
        if let Some(i) = mounted.iter().position(|(_, d)| d == dir) {
            mounted.remove(i);
            std::fs::remove_dir_all(dir)?;
            std::fs::create_dir(dir)?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebs_backup_with_a_real_freeze_restores_to_a_point_in_time() {
    harness::aws_env();
    let Some(lm) = LoopMount::new(256) else { return };
    let data = lm.dir.join("pgdata");
    std::fs::create_dir_all(&data).unwrap();
    harness::chown_postgres(&data);
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let mut pg = Pg::init_at(Some(data.clone()));
    let moto = Moto::start();
    let ec2 = Ec2::new("us-east-1", Some(&moto.endpoint())).await;
    let instance = run_instance(&ec2, &[("/dev/sdf", 1)]).await;
    let volume =
        ec2.instance(&instance).await.unwrap().mappings.iter().find(|(d, _)| d == "/dev/sdf").unwrap().1.clone();

    // sysfs as a Nitro instance shows it: the loop device's numbers lead to an NVMe disk
    // whose serial is the EBS volume id.
    let mounts = tidemark::snapshot::ebs::discover::read_mountinfo(Path::new("/proc")).unwrap();
    let canon = lm.dir.canonicalize().unwrap();
    let m = tidemark::snapshot::ebs::discover::mount_for(&canon, &mounts).unwrap().clone();
    let work = harness::postgres_dir("ebs");
    let sys = work.path().join("sys");
    std::fs::create_dir_all(sys.join("dev/block")).unwrap();
    std::os::unix::fs::symlink(
        "../../devices/pci0000:00/0000:00:1f.0/nvme/nvme1/nvme1n1",
        sys.join(format!("dev/block/{}:{}", m.major, m.minor)),
    )
    .unwrap();
    std::fs::create_dir_all(sys.join("block/nvme1n1/device")).unwrap();
    std::fs::write(sys.join("block/nvme1n1/device/serial"), format!("{}   \n", volume.replace('-', ""))).unwrap();
    std::fs::write(sys.join("block/nvme1n1/device/model"), "Amazon Elastic Block Store\n").unwrap();

    let repo_dir = work.path().join("repo");
    let t = Tidemark::for_pg("ebsdb", &Tidemark::fs_url(&repo_dir), None, &pg);
    let text = std::fs::read_to_string(&t.config).unwrap().replace("[backup]\n", "[backup]\nprovider = \"ebs\"\n");
    std::fs::write(
        &t.config,
        format!(
            "{text}[ebs]\nregion = \"us-east-1\"\nendpoint = \"{}\"\ninstance_id = \"{instance}\"\navailability_zone = \"us-east-1a\"\nsys_root = \"{}\"\nfreeze = true\nfreeze_timeout_s = 30\nsnapshot_timeout_s = 60\n",
            moto.endpoint(),
            sys.display()
        ),
    )
    .unwrap();
    pg.archive_to(&t.config);
    pg.start();
    pg.sql("CREATE TABLE orders (id int primary key, note text); INSERT INTO orders SELECT g, 'before backup' FROM generate_series(1, 1000) g;");
    // The archiver (postgres) creates the WAL directories before this root test process
    // writes anything into the fs repository.
    pg.switch_wal_archived(Duration::from_secs(60));

    let cfg = tidemark::config::Config::load(Some(&t.config)).unwrap();
    let repo = tidemark::repo::Repository::open(&cfg).await.unwrap();
    let images = work.path().join("images");
    let thaws = Arc::new(Mutex::new(Vec::new()));
    let freezer = ImagingFreezer {
        inner: GuardProcess { exe: harness::bin().to_path_buf() },
        images: images.clone(),
        volume: volume.clone(),
        thaws: thaws.clone(),
    };
    let b = tidemark::backup::create_with(&cfg, &repo, BackupKind::Manual, Some(&freezer)).await.unwrap();
    assert_eq!(b.state, BackupState::Completed);
    assert_eq!(b.provider, tidemark::config::Provider::Ebs);
    assert_eq!(*thaws.lock().unwrap(), ["requested"]);
    let refs = b.ebs.clone().unwrap();
    assert_eq!(refs.volumes.len(), 1);
    assert_eq!(refs.volumes[0].volume_id, volume);
    assert_eq!((refs.volumes[0].attached_as.as_str(), refs.volumes[0].device.as_str()), ("/dev/sdf", "/dev/nvme1n1"));
    assert_eq!(refs.volumes[0].state, "completed");
    assert_eq!(refs.mounts[0].role, "data_dir");
    assert_eq!(refs.mounts[0].path_in_mount, "pgdata");
    assert!(b.files.is_empty() && b.bundles.is_empty(), "an ebs backup copies no files");
    let tagged = ec2.tagged_snapshots(&[(TAG_CLUSTER, "ebsdb"), (TAG_BACKUP, &b.id)]).await.unwrap();
    assert_eq!(tagged.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), vec![refs.volumes[0].snapshot_id.clone()]);
    assert!(tagged[0].tags.contains(&(TAG_KIND.to_string(), "manual".to_string())));

    // Cross-region copy: the snapshot is copied with CopySnapshot and the copy's manifest
    // names the copy in the other region.
    let mut cross = cfg.clone();
    cross.regions.insert(
        "us-west-1".into(),
        tidemark::config::RegionConfig {
            url: Tidemark::fs_url(&work.path().join("west")),
            endpoint: None,
            kms_key_id: Some("alias/tidemark-west".into()),
        },
    );
    let pol = tidemark::catalog::retention::Policy { copy_regions: "us-west-1".into(), ..Default::default() };
    tidemark::sweep::save(&repo, &pol).await.unwrap();
    let done = tidemark::copy::sync_all(&cross, &repo).await.unwrap();
    assert_eq!((done[0].backups, done[0].snapshots), (1, 1), "{done:?}");
    let west_repo = tidemark::repo::Repository::open(&cross.for_region("us-west-1").unwrap()).await.unwrap();
    let copied = tidemark::catalog::backup::load(&west_repo, &b.id).await.unwrap().unwrap();
    let west_refs = copied.ebs.unwrap();
    assert_eq!(west_refs.region, "us-west-1");
    assert_ne!(west_refs.volumes[0].snapshot_id, refs.volumes[0].snapshot_id);
    assert_eq!(west_refs.volumes[0].kms_key_id.as_deref(), Some("alias/tidemark-west"));
    let west = Ec2::new("us-west-1", Some(&moto.endpoint())).await;
    let in_west = west.tagged_snapshots(&[(TAG_BACKUP, &b.id)]).await.unwrap();
    assert_eq!(
        in_west.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        vec![west_refs.volumes[0].snapshot_id.clone()]
    );
    // Purging the copy's backup deletes the copied snapshot there.
    tidemark::sweep::purge::purge(&west_repo.for_cluster("ebsdb"), &b.id).await.unwrap();
    assert!(west.tagged_snapshots(&[(TAG_BACKUP, &b.id)]).await.unwrap().is_empty());
    tidemark::sweep::save(&repo, &Default::default()).await.unwrap();

    pg.sql("INSERT INTO orders SELECT g, 'after backup' FROM generate_series(1001, 1500) g;");
    let target = pg.time_mark();
    pg.sql("DELETE FROM orders WHERE id <= 100;");
    pg.switch_wal_archived(Duration::from_secs(60));

    let host = ImageHost { ec2: ec2.clone(), images, mounted: Mutex::new(Vec::new()) };
    let target_dir = work.path().join("restored");
    let port = harness::free_port();
    let req = tidemark::restore::Request {
        target_dir: target_dir.clone(),
        target: tidemark::catalog::restore_plan::Target::Time(tidemark::cmd::parse_time(&target).unwrap()),
        backup: None,
        start: true,
        port: Some(port),
        config_path: Some(t.config.clone()),
        region: None,
        exe: Some(harness::bin().to_path_buf()),
        ebs: Default::default(),
        extra_settings: Vec::new(),
    };
    let report = tidemark::restore::run_with(&cfg, &repo, &req, &host).await.unwrap();
    assert_eq!(report.data_dir, target_dir.join("pgdata"));
    assert_eq!(report.volumes.len(), 1);
    let restored_vol = &report.volumes[0].volume_id;
    assert_ne!(restored_vol, &volume, "a new volume, never the source");
    let v = ec2.volumes(std::slice::from_ref(restored_vol)).await.unwrap().remove(0);
    assert!(v.attachments.iter().any(|(i, d, _)| i == &instance && d == "/dev/sdg"), "{v:?}");
    assert_eq!(host.mounted.lock().unwrap()[0].1, target_dir);

    let r = harness::psql(&pg.sock, port, "SELECT count(*), min(id) FROM orders");
    let stop = || {
        let _ = harness::as_postgres(harness::pg_bin().join("pg_ctl"))
            .arg("-D")
            .arg(&report.data_dir)
            .args(["-w", "-m", "immediate", "stop"])
            .output();
    };
    stop();
    assert_eq!(r, "1500|1", "restored to the target: rows after the backup present, the later DELETE absent");
    assert_eq!(pg.sql("SELECT count(*) FROM orders"), "1400", "the source is untouched");
    host.unmount(&target_dir).await.unwrap();

    // A drill of the ebs backup: new volumes from its snapshot, started, probed, and the
    // volumes detached and deleted at teardown.
    let mut drilled = cfg.clone();
    let scratch = work.path().join("drill");
    std::fs::create_dir_all(&scratch).unwrap();
    drilled.drill.scratch_dir = scratch.clone();
    drilled.drill.probe_sql = Some("SELECT count(*) FROM orders".into());
    drilled.drill.probe_expect = Some("1400".into());
    let opts = tidemark::drill::Options {
        target: tidemark::config::DrillTarget::Latest,
        keep: false,
        trigger: "manual",
        config_path: Some(t.config.clone()),
        exe: Some(harness::bin().to_path_buf()),
    };
    let volumes_before = ec2.client().describe_volumes().send().await.unwrap().volumes().len();
    let rec = tidemark::drill::run_with(&drilled, &repo, &opts, &host).await.unwrap();
    assert!(rec.ok, "{rec:?}");
    assert!(rec.checks.iter().any(|c| c.name == "probe" && c.ok && c.detail.starts_with("returned 1400,")), "{rec:?}");
    let drill_vols = ec2.client().describe_volumes().send().await.unwrap();
    let tagged_drill = |v: &aws_sdk_ec2::types::Volume| {
        v.tags().iter().any(|t| t.key() == Some(tidemark::drill::TAG_DRILL) && t.value() == Some(rec.id.as_str()))
    };
    assert!(!drill_vols.volumes().iter().any(tagged_drill), "the drill's volumes are left: {drill_vols:?}");
    // The drill restored onto a volume of its own (its probe read the data there) and deleted it.
    assert_eq!(drill_vols.volumes().len(), volumes_before, "{drill_vols:?}");
    assert!(host.mounted.lock().unwrap().is_empty(), "the drill left a mount");
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0, "the drill left scratch data");
    assert!(
        ec2.volumes(std::slice::from_ref(&volume)).await.unwrap()[0].attachments.iter().any(|(i, _, _)| i == &instance),
        "the source volume stays attached"
    );

    // verify asks EC2 for the backup's snapshots: completed is fine, gone is a problem.
    let problems_of = |r: &tidemark::verify::Report| {
        r.backups.iter().find(|x| x.id == b.id).map(|x| x.problems.clone()).expect("the backup is verified")
    };
    let r = tidemark::verify::verify(&repo, false).await.unwrap();
    assert_eq!(problems_of(&r), Vec::<String>::new(), "{r:?}");
    ec2.delete_snapshot(&refs.volumes[0].snapshot_id).await.unwrap();
    let r = tidemark::verify::verify(&repo, false).await.unwrap();
    let p = problems_of(&r);
    assert!(!r.ok && p.len() == 1 && p[0].contains(&refs.volumes[0].snapshot_id) && p[0].contains("is gone"), "{p:?}");
}

#[tokio::test]
async fn identity_comes_from_imdsv2_unless_configured() {
    harness::aws_env();
    let imds = harness::imds_server(&[
        ("/latest/meta-data/instance-id", "i-0fedcba9876543210"),
        ("/latest/meta-data/placement/availability-zone", "eu-central-1b"),
        ("/latest/meta-data/placement/region", "eu-central-1"),
    ]);
    // The endpoint is process-wide, so every test shares it: only this one asks IMDS (the
    // EBS tests configure ebs.instance_id; the SDK chains have AWS_EC2_METADATA_DISABLED).
    std::env::set_var("AWS_EC2_METADATA_SERVICE_ENDPOINT", format!("http://127.0.0.1:{imds}"));
    let got = tidemark::snapshot::ebs::ec2::identity(None, None, None).await.unwrap();
    assert_eq!(got, ("i-0fedcba9876543210".to_string(), "eu-central-1".to_string(), "eu-central-1b".to_string()));
    let got = tidemark::snapshot::ebs::ec2::identity(Some("i-0abc"), None, Some("eu-central-1c")).await.unwrap();
    assert_eq!(got, ("i-0abc".to_string(), "eu-central-1".to_string(), "eu-central-1c".to_string()));
    // Not on EC2: the error says which settings replace IMDS.
    std::env::set_var("AWS_EC2_METADATA_SERVICE_ENDPOINT", format!("http://127.0.0.1:{}", harness::free_port()));
    let e = tidemark::snapshot::ebs::ec2::identity(None, None, None).await.unwrap_err();
    assert!(format!("{e:#}").contains("set ebs.instance_id, ebs.region and ebs.availability_zone"), "{e:#}");
}
