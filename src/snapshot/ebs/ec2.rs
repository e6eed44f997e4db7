//! EC2 calls for the `ebs` provider (aws-sdk-ec2): snapshots, volumes, attachments, with
//! the SDK's standard retries (throttling such as RequestLimitExceeded backs off and retries).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Filter, InstanceSpecification, ResourceType, SnapshotState, Tag, TagSpecification, VolumeAttachmentState,
    VolumeState, VolumeType,
};
use aws_sdk_ec2::Client;

/// Tag naming the cluster a snapshot or volume belongs to.
pub const TAG_CLUSTER: &str = "tidemark:cluster";
/// Tag naming the backup id.
pub const TAG_BACKUP: &str = "tidemark:backup-id";
/// Tag naming the backup kind (automatic, manual, final) or `restore`.
pub const TAG_KIND: &str = "tidemark:kind";

/// A client for one region.
#[derive(Debug, Clone)]
pub struct Ec2 {
    client: Client,
    region: String,
}

/// An attached instance as EC2 describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Instance id.
    pub id: String,
    /// Availability zone.
    pub availability_zone: String,
    /// Root device name (`/dev/xvda`).
    pub root_device: Option<String>,
    /// Block-device mapping: device name → volume id.
    pub mappings: Vec<(String, String)>,
}

/// A volume as EC2 describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Volume id.
    pub id: String,
    /// Size in GiB.
    pub size_gib: i32,
    /// Type (gp3, io2, ...).
    pub volume_type: String,
    /// Provisioned IOPS.
    pub iops: Option<i32>,
    /// Provisioned throughput (MiB/s).
    pub throughput: Option<i32>,
    /// Encrypted at rest.
    pub encrypted: bool,
    /// KMS key.
    pub kms_key_id: Option<String>,
    /// State (creating, available, in-use, ...).
    pub state: String,
    /// Attachment states.
    pub attachments: Vec<(String, String, String)>,
}

/// A snapshot's progress as EC2 reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// Snapshot id.
    pub id: String,
    /// Volume it was taken from.
    pub volume_id: String,
    /// pending | completed | error | recoverable | recovering.
    pub state: String,
    /// AWS's explanation when in error.
    pub message: Option<String>,
    /// Percent done ("42%").
    pub progress: Option<String>,
    /// Tags.
    pub tags: Vec<(String, String)>,
}

/// Where a set of snapshots stands (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Every snapshot is completed.
    Done,
    /// Some are still pending; the least advanced is named.
    Pending(String),
    /// One is in error; AWS's message is kept.
    Failed(String),
}

/// Judges snapshot states: any error fails, all completed is done (pure).
pub fn judge(expected: &[String], seen: &[SnapshotStatus]) -> Progress {
    for s in seen {
        if s.state == "error" {
            return Progress::Failed(format!(
                "snapshot {} of {} is in state error: {}",
                s.id,
                s.volume_id,
                s.message.as_deref().unwrap_or("AWS gave no reason")
            ));
        }
    }
    for id in expected {
        if !seen.iter().any(|s| &s.id == id) {
            return Progress::Failed(format!("snapshot {id} no longer exists (deleted outside tidemark?)"));
        }
    }
    match seen.iter().filter(|s| s.state != "completed").min_by_key(|s| progress_pct(s.progress.as_deref())) {
        None => Progress::Done,
        Some(s) => Progress::Pending(format!("{} {} {}", s.id, s.state, s.progress.as_deref().unwrap_or("?"))),
    }
}

fn progress_pct(p: Option<&str>) -> u32 {
    p.and_then(|p| p.trim_end_matches('%').parse().ok()).unwrap_or(0)
}

fn sdk_err<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    what: &str,
    e: SdkError<E, R>,
) -> anyhow::Error {
    let code = e.as_service_error().and_then(|s| s.code()).map(str::to_string);
    let hint = match code.as_deref() {
        Some("UnauthorizedOperation") => ": the instance role lacks this EC2 permission (see the README's IAM policy)",
        Some("AuthFailure") => ": AWS credentials are missing or wrong",
        _ => "",
    };
    anyhow!("{what} failed: {}{hint}", DisplayErrorContext(&e))
}

fn is_code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>, codes: &[&str]) -> bool {
    e.as_service_error().and_then(|s| s.code()).is_some_and(|c| codes.contains(&c))
}

fn tag_spec(kind: ResourceType, tags: &[(String, String)]) -> TagSpecification {
    let mut b = TagSpecification::builder().resource_type(kind);
    for (k, v) in tags {
        b = b.tags(Tag::builder().key(k).value(v).build());
    }
    b.build()
}

fn tags_of(tags: &[Tag]) -> Vec<(String, String)> {
    tags.iter().map(|t| (t.key().unwrap_or_default().to_string(), t.value().unwrap_or_default().to_string())).collect()
}

impl Ec2 {
    /// Builds a client for `region` from the default credential chain.
    pub async fn new(region: &str, endpoint: Option<&str>) -> Ec2 {
        let shared =
            crate::store::aws::sdk_config(Some(region), 8, Duration::from_secs(10), Duration::from_secs(60)).await;
        let mut b = aws_sdk_ec2::config::Builder::from(&shared);
        if let Some(ep) = endpoint {
            b = b.endpoint_url(ep);
        }
        Ec2 { client: Client::from_conf(b.build()), region: region.to_string() }
    }

    /// The SDK client (tests set up instances with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Describes one instance.
    pub async fn instance(&self, id: &str) -> anyhow::Result<Instance> {
        let out = self
            .client
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(|e| sdk_err(&format!("DescribeInstances {id} in {}", self.region), e))?;
        let i =
            out.reservations().iter().flat_map(|r| r.instances()).find(|i| i.instance_id() == Some(id)).ok_or_else(
                || anyhow!("instance {id} not found in {}: check ebs.instance_id and ebs.region", self.region),
            )?;
        Ok(Instance {
            id: id.to_string(),
            availability_zone: i
                .placement()
                .and_then(|p| p.availability_zone())
                .ok_or_else(|| anyhow!("instance {id} has no availability zone"))?
                .to_string(),
            root_device: i.root_device_name().map(str::to_string),
            mappings: i
                .block_device_mappings()
                .iter()
                .filter_map(|m| Some((m.device_name()?.to_string(), m.ebs()?.volume_id()?.to_string())))
                .collect(),
        })
    }

    /// Describes volumes, in the order asked.
    pub async fn volumes(&self, ids: &[String]) -> anyhow::Result<Vec<Volume>> {
        let mut pages = self.client.describe_volumes().set_volume_ids(Some(ids.to_vec())).into_paginator().send();
        let mut all = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err("DescribeVolumes", e))?;
            for v in page.volumes() {
                all.push(Volume {
                    id: v.volume_id().unwrap_or_default().to_string(),
                    size_gib: v.size().unwrap_or(0),
                    volume_type: v.volume_type().map(|t| t.as_str().to_string()).unwrap_or_default(),
                    iops: v.iops(),
                    throughput: v.throughput(),
                    encrypted: v.encrypted().unwrap_or(false),
                    kms_key_id: v.kms_key_id().map(str::to_string),
                    state: v.state().map(|s| s.as_str().to_string()).unwrap_or_default(),
                    attachments: v
                        .attachments()
                        .iter()
                        .map(|a| {
                            (
                                a.instance_id().unwrap_or_default().to_string(),
                                a.device().unwrap_or_default().to_string(),
                                a.state().map(|s| s.as_str().to_string()).unwrap_or_default(),
                            )
                        })
                        .collect(),
                });
            }
        }
        ids.iter()
            .map(|id| {
                all.iter()
                    .find(|v| &v.id == id)
                    .cloned()
                    .ok_or_else(|| anyhow!("volume {id} not found in {}", self.region))
            })
            .collect()
    }

    /// Snapshots `wanted` volumes of `inst` at one point in time (CreateSnapshots is
    /// crash-consistent across an instance's volumes). Volumes the call took beyond
    /// `wanted` are deleted again. Returns (volume id, snapshot id) in `wanted` order.
    pub async fn create_snapshots(
        &self,
        inst: &Instance,
        wanted: &[String],
        tags: &[(String, String)],
        description: &str,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let root_volume = inst
            .root_device
            .as_deref()
            .and_then(|r| inst.mappings.iter().find(|(d, _)| d == r))
            .map(|(_, v)| v.clone());
        let exclude_boot = root_volume.as_ref().is_none_or(|r| !wanted.contains(r));
        let exclude: Vec<String> = inst
            .mappings
            .iter()
            .map(|(_, v)| v.clone())
            .filter(|v| !wanted.contains(v) && Some(v) != root_volume.as_ref())
            .collect();
        let mut spec = InstanceSpecification::builder().instance_id(&inst.id).exclude_boot_volume(exclude_boot);
        if !exclude.is_empty() {
            spec = spec.set_exclude_data_volume_ids(Some(exclude));
        }
        let res = self
            .client
            .create_snapshots()
            .instance_specification(spec.build())
            .description(description)
            .tag_specifications(tag_spec(ResourceType::Snapshot, tags))
            .send()
            .await;
        let out = match res {
            Ok(o) => o,
            Err(e) if is_code(&e, &["UnsupportedOperation", "InvalidParameterCombination"]) => {
                tracing::warn!(error = %DisplayErrorContext(&e), "CreateSnapshots unavailable; snapshotting volume by volume");
                let mut pairs = Vec::new();
                for v in wanted {
                    pairs.push((v.clone(), self.create_snapshot(v, tags, description).await?));
                }
                return Ok(pairs);
            }
            Err(e) => return Err(sdk_err(&format!("CreateSnapshots for {}", inst.id), e)),
        };
        let mut pairs = Vec::new();
        for s in out.snapshots() {
            let (Some(sid), Some(vid)) = (s.snapshot_id(), s.volume_id()) else { continue };
            if wanted.iter().any(|w| w == vid) {
                pairs.push((vid.to_string(), sid.to_string()));
            } else {
                // Older endpoints ignore ExcludeDataVolumeIds: do not keep what nobody asked for.
                self.delete_snapshot(sid).await?;
            }
        }
        let mut ordered = Vec::new();
        for w in wanted {
            let p = pairs.iter().find(|(v, _)| v == w).ok_or_else(|| {
                anyhow!("CreateSnapshots returned no snapshot of {w}: is it attached to {}?", inst.id)
            })?;
            ordered.push(p.clone());
        }
        Ok(ordered)
    }

    /// Snapshots one volume.
    pub async fn create_snapshot(
        &self,
        volume_id: &str,
        tags: &[(String, String)],
        description: &str,
    ) -> anyhow::Result<String> {
        let out = self
            .client
            .create_snapshot()
            .volume_id(volume_id)
            .description(description)
            .tag_specifications(tag_spec(ResourceType::Snapshot, tags))
            .send()
            .await
            .map_err(|e| sdk_err(&format!("CreateSnapshot of {volume_id}"), e))?;
        out.snapshot_id().map(str::to_string).ok_or_else(|| anyhow!("CreateSnapshot returned no id"))
    }

    /// Current state of the given snapshots (missing ones are left out).
    pub async fn snapshot_status(&self, ids: &[String]) -> anyhow::Result<Vec<SnapshotStatus>> {
        let mut out = Vec::new();
        for id in ids {
            // One at a time: a single deleted snapshot would fail a batched call.
            match self.client.describe_snapshots().snapshot_ids(id).send().await {
                Ok(o) => out.extend(o.snapshots().iter().map(status_of)),
                Err(e) if is_code(&e, &["InvalidSnapshot.NotFound"]) => {}
                Err(e) => return Err(sdk_err(&format!("DescribeSnapshots {id}"), e)),
            }
        }
        Ok(out)
    }

    /// Polls with backoff until every snapshot is completed; fails on an error state or
    /// after `limit`.
    pub async fn wait_snapshots(&self, ids: &[String], limit: Duration) -> anyhow::Result<()> {
        let began = Instant::now();
        let mut delay = Duration::from_millis(500);
        loop {
            let seen = self.snapshot_status(ids).await?;
            match judge(ids, &seen) {
                Progress::Done => return Ok(()),
                Progress::Failed(why) => bail!("{why}"),
                Progress::Pending(least) => {
                    if began.elapsed() > limit {
                        bail!("snapshots not completed after {limit:?} (slowest: {least}); raise ebs.snapshot_timeout_s or check the EC2 console");
                    }
                    tracing::debug!(%least, "waiting for snapshots");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// This account's snapshots carrying every one of `tags` (paginated).
    pub async fn tagged_snapshots(&self, tags: &[(&str, &str)]) -> anyhow::Result<Vec<SnapshotStatus>> {
        let req = self.client.describe_snapshots().owner_ids("self").max_results(500);
        let mut pages = req.set_filters(Some(tag_filters(tags))).into_paginator().send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err("DescribeSnapshots", e))?;
            out.extend(page.snapshots().iter().map(status_of));
        }
        Ok(out)
    }

    /// Deletes a snapshot; one already gone is success.
    pub async fn delete_snapshot(&self, id: &str) -> anyhow::Result<()> {
        match self.client.delete_snapshot().snapshot_id(id).send().await {
            Ok(_) => Ok(()),
            Err(e) if is_code(&e, &["InvalidSnapshot.NotFound"]) => Ok(()),
            Err(e) => Err(sdk_err(&format!("DeleteSnapshot {id}"), e)),
        }
    }

    /// Ids of the volumes carrying all of `tags`.
    pub async fn tagged_volumes(&self, tags: &[(&str, &str)]) -> anyhow::Result<Vec<String>> {
        let mut pages = self.client.describe_volumes().set_filters(Some(tag_filters(tags))).into_paginator().send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err("DescribeVolumes", e))?;
            out.extend(page.volumes().iter().filter_map(|v| v.volume_id().map(str::to_string)));
        }
        Ok(out)
    }

    /// Detaches a volume (when attached), waits until it is available, and deletes it; one
    /// already gone is success.
    pub async fn discard_volume(&self, id: &str, limit: Duration) -> anyhow::Result<()> {
        let v = match self.volumes(&[id.to_string()]).await {
            Ok(mut v) => v.remove(0),
            Err(e) if e.to_string().contains("not found") => return Ok(()),
            Err(e) => return Err(e),
        };
        for (instance, device, _) in &v.attachments {
            // Instance and device are optional to EC2 but name the attachment exactly.
            self.client
                .detach_volume()
                .volume_id(id)
                .instance_id(instance)
                .device(device)
                .send()
                .await
                .map_err(|e| sdk_err(&format!("DetachVolume {id} from {instance}"), e))?;
        }
        if !v.attachments.is_empty() {
            self.wait_volume(id, VolumeState::Available, limit).await?;
        }
        match self.client.delete_volume().volume_id(id).send().await {
            Ok(_) => Ok(()),
            Err(e) if is_code(&e, &["InvalidVolume.NotFound"]) => Ok(()),
            Err(e) => Err(sdk_err(&format!("DeleteVolume {id}"), e)),
        }
    }

    /// Copies a snapshot from `source_region` into this client's region.
    pub async fn copy_snapshot_from(
        &self,
        source_region: &str,
        id: &str,
        kms_key_id: Option<&str>,
        tags: &[(String, String)],
    ) -> anyhow::Result<String> {
        let mut req = self
            .client
            .copy_snapshot()
            .source_region(source_region)
            .source_snapshot_id(id)
            .description(format!("tidemark copy of {id} from {source_region}"))
            .tag_specifications(tag_spec(ResourceType::Snapshot, tags));
        if let Some(k) = kms_key_id {
            req = req.encrypted(true).kms_key_id(k);
        }
        let out =
            req.send().await.map_err(|e| sdk_err(&format!("CopySnapshot {id} {source_region}→{}", self.region), e))?;
        out.snapshot_id().map(str::to_string).ok_or_else(|| anyhow!("CopySnapshot returned no id"))
    }

    /// Creates a volume from a snapshot; encryption follows the snapshot.
    pub async fn create_volume(&self, spec: &NewVolume<'_>) -> anyhow::Result<String> {
        let mut req = self
            .client
            .create_volume()
            .snapshot_id(spec.snapshot_id)
            .availability_zone(spec.availability_zone)
            .volume_type(VolumeType::from(spec.volume_type))
            .tag_specifications(tag_spec(ResourceType::Volume, spec.tags));
        if matches!(spec.volume_type, "io1" | "io2" | "gp3") {
            req = req.set_iops(spec.iops);
        }
        if spec.volume_type == "gp3" {
            req = req.set_throughput(spec.throughput);
        }
        if let Some(s) = spec.size_gib {
            req = req.size(s);
        }
        let out = req.send().await.map_err(|e| sdk_err(&format!("CreateVolume from {}", spec.snapshot_id), e))?;
        out.volume_id().map(str::to_string).ok_or_else(|| anyhow!("CreateVolume returned no id"))
    }

    /// Waits until a volume reaches `want` (e.g. available).
    pub async fn wait_volume(&self, id: &str, want: VolumeState, limit: Duration) -> anyhow::Result<Volume> {
        let began = Instant::now();
        let mut delay = Duration::from_millis(250);
        loop {
            let v = self.volumes(&[id.to_string()]).await?.remove(0);
            if v.state == want.as_str() {
                return Ok(v);
            }
            if v.state == "error" {
                bail!("volume {id} is in state error");
            }
            if began.elapsed() > limit {
                bail!("volume {id} still {} after {limit:?}", v.state);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Attaches a volume and waits until EC2 reports it attached.
    pub async fn attach(
        &self,
        volume_id: &str,
        instance_id: &str,
        device: &str,
        limit: Duration,
    ) -> anyhow::Result<()> {
        self.client
            .attach_volume()
            .volume_id(volume_id)
            .instance_id(instance_id)
            .device(device)
            .send()
            .await
            .map_err(|e| sdk_err(&format!("AttachVolume {volume_id} to {instance_id} as {device}"), e))?;
        let began = Instant::now();
        loop {
            let v = self.volumes(&[volume_id.to_string()]).await?.remove(0);
            if v.attachments.iter().any(|(i, _, s)| i == instance_id && s == VolumeAttachmentState::Attached.as_str()) {
                return Ok(());
            }
            if began.elapsed() > limit {
                bail!("volume {volume_id} not attached to {instance_id} after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Enables Fast Snapshot Restore for the snapshots in one AZ.
    pub async fn enable_fast_restore(&self, az: &str, snapshot_ids: &[String]) -> anyhow::Result<()> {
        self.client
            .enable_fast_snapshot_restores()
            .availability_zones(az)
            .set_source_snapshot_ids(Some(snapshot_ids.to_vec()))
            .send()
            .await
            .map_err(|e| sdk_err("EnableFastSnapshotRestores", e))?;
        Ok(())
    }
}

/// What a restored volume looks like.
#[derive(Debug, Clone)]
pub struct NewVolume<'a> {
    /// Source snapshot.
    pub snapshot_id: &'a str,
    /// Where to create it.
    pub availability_zone: &'a str,
    /// Type.
    pub volume_type: &'a str,
    /// IOPS (io1/io2/gp3).
    pub iops: Option<i32>,
    /// Throughput (gp3).
    pub throughput: Option<i32>,
    /// Larger size, if wanted.
    pub size_gib: Option<i32>,
    /// Tags.
    pub tags: &'a [(String, String)],
}

/// One EC2 filter per tag: only resources carrying every one.
fn tag_filters(tags: &[(&str, &str)]) -> Vec<Filter> {
    tags.iter().map(|(k, v)| Filter::builder().name(format!("tag:{k}")).values(*v).build()).collect()
}

fn status_of(s: &aws_sdk_ec2::types::Snapshot) -> SnapshotStatus {
    SnapshotStatus {
        id: s.snapshot_id().unwrap_or_default().to_string(),
        volume_id: s.volume_id().unwrap_or_default().to_string(),
        state: s.state().map(SnapshotState::as_str).unwrap_or("unknown").to_string(),
        message: s.state_message().filter(|m| !m.is_empty()).map(str::to_string),
        progress: s.progress().map(str::to_string),
        tags: tags_of(s.tags()),
    }
}

/// Instance id, region and AZ: from config when set, else from IMDSv2.
pub async fn identity(
    instance_id: Option<&str>,
    region: Option<&str>,
    az: Option<&str>,
) -> anyhow::Result<(String, String, String)> {
    if let (Some(i), Some(r), Some(a)) = (instance_id, region, az) {
        return Ok((i.to_string(), r.to_string(), a.to_string()));
    }
    let imds = aws_config::imds::Client::builder().build();
    let get = |path: &'static str| {
        let imds = imds.clone();
        async move {
            imds.get(path).await.map(String::from).with_context(|| {
                format!("asking the instance metadata service for {path} (not on EC2? set ebs.instance_id, ebs.region and ebs.availability_zone)")
            })
        }
    };
    let i = match instance_id {
        Some(i) => i.to_string(),
        None => get("/latest/meta-data/instance-id").await?,
    };
    let a = match az {
        Some(a) => a.to_string(),
        None => get("/latest/meta-data/placement/availability-zone").await?,
    };
    let r = match region {
        Some(r) => r.to_string(),
        None => get("/latest/meta-data/placement/region").await?,
    };
    Ok((i, r, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(id: &str, state: &str, progress: &str) -> SnapshotStatus {
        SnapshotStatus {
            id: id.into(),
            volume_id: format!("vol-{id}"),
            state: state.into(),
            message: None,
            progress: Some(progress.into()),
            tags: vec![],
        }
    }

    #[test]
    fn judge_waits_for_all_and_fails_on_any_error() {
        let ids = vec!["a".to_string(), "b".to_string()];
        assert_eq!(judge(&ids, &[st("a", "completed", "100%"), st("b", "completed", "100%")]), Progress::Done);
        assert_eq!(
            judge(&ids, &[st("a", "pending", "80%"), st("b", "pending", "12%")]),
            Progress::Pending("b pending 12%".into())
        );
        let mut bad = st("b", "error", "0%");
        bad.message = Some("Internal error".into());
        match judge(&ids, &[st("a", "pending", "1%"), bad]) {
            Progress::Failed(m) => assert!(m.contains("Internal error") && m.contains("vol-b"), "{m}"),
            p => panic!("{p:?}"),
        }
        match judge(&ids, &[st("a", "completed", "100%")]) {
            Progress::Failed(m) => assert!(m.contains("b no longer exists")),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn progress_parses_percentages() {
        assert_eq!(progress_pct(Some("42%")), 42);
        assert_eq!(progress_pct(Some("")), 0);
        assert_eq!(progress_pct(None), 0);
    }
}
