//! Providers that capture a backup's data and bring it back: `files` (a portable packed copy
//! into the repository) and `ebs` (EBS snapshots, with the volume discovery and filesystem
//! freeze they need). Both sit behind [`Provider`]; the backup flow drives either the same
//! way (`pg_backup_start` → [`Capture::capture`] → `pg_backup_stop` → [`Capture::settle`]).

pub mod ebs;
pub mod files;
pub mod progress;

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;

use crate::config::{Config, Provider as ProviderKind};
use crate::repo::Repository;

pub use ebs::{EbsMount, EbsRefs, EbsVolume};
pub use files::{Bundle, EntryKind, FileEntry, Part};

/// Which backup a provider works for: what names and tags its data.
#[derive(Debug, Clone, Copy)]
pub struct BackupRef<'a> {
    /// Cluster handle.
    pub cluster: &'a str,
    /// Backup id.
    pub id: &'a str,
    /// `automatic`, `manual` or `final`.
    pub kind: &'a str,
}

/// What a backup captured, as its manifest records it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// Every path copied (files).
    pub files: Vec<FileEntry>,
    /// The bundles holding their bytes (files).
    pub bundles: Vec<Bundle>,
    /// The snapshots (ebs).
    pub ebs: Option<EbsRefs>,
    /// How an incremental capture was taken (files).
    pub incremental: Option<files::incremental::IncrementalInfo>,
}

/// Resolves when the backup must give up (SIGINT/SIGTERM): a capture that holds the system
/// (frozen mounts) releases it and fails.
pub type Interrupt<'a> = Pin<&'a mut (dyn Future<Output = ()> + Send)>;

/// One backup's capture, planned before PostgreSQL enters backup mode.
#[async_trait]
pub trait Capture: Send {
    /// In backup mode: fixes the cluster's files at one point in time; with `changes`, only
    /// what changed since a base backup (files). Returns only once PostgreSQL may leave
    /// backup mode.
    async fn capture(&mut self, changes: Option<files::Changes>, interrupt: Interrupt<'_>) -> anyhow::Result<()>;
    /// After backup mode ended: waits until what was captured is durable (EBS: snapshots
    /// completed).
    async fn settle(&mut self) -> anyhow::Result<()>;
    /// What it captured so far; after a failure too, so what it made can be deleted.
    fn captured(&self) -> Captured;
}

/// A snapshot provider: captures backups, and handles what they hold outside the
/// repository's own objects (the bundles of `files` are repository objects, which the
/// purge, copy and verify flows handle for every provider alike).
#[async_trait]
pub trait Provider: Send + Sync {
    /// Which provider this is (recorded in the manifest).
    fn kind(&self) -> ProviderKind;
    /// Plans a capture of the cluster (data directory and `tablespaces`, as oid and
    /// location). Runs before backup mode: an error here leaves PostgreSQL untouched.
    async fn plan(&self, backup: BackupRef<'_>, tablespaces: &[(u32, String)])
        -> anyhow::Result<Box<dyn Capture + '_>>;
    /// Deletes what `backup` holds outside the repository (EBS snapshots, also ones made but
    /// not recorded); already-gone data is fine. Returns how many things it deleted.
    async fn delete(&self, backup: BackupRef<'_>, captured: &Captured) -> anyhow::Result<usize>;
    /// Copies what `backup` holds outside the repository into `region` (reusing copies an
    /// interrupted run made); returns the copy's record and how many things it copied.
    async fn copy_to_region(
        &self,
        backup: BackupRef<'_>,
        captured: &Captured,
        region: &str,
        kms_key: Option<&str>,
    ) -> anyhow::Result<(Captured, u64)>;
    /// Checks that what `backup` captured is all there (files: every bundle present at its
    /// recorded size, and with `deep` every part's checksum; ebs: every snapshot completed).
    /// Returns the problems found, each saying what is wrong; an error means it could not look.
    async fn verify(&self, backup: BackupRef<'_>, captured: &Captured, deep: bool) -> anyhow::Result<Vec<String>>;
    /// Brings what `backup` captured back onto this host for a new cluster (files: every path
    /// written where `into.layout` says; ebs: a new volume from each snapshot, attached and
    /// mounted at `into.target_dir` and beside it). Returns the volumes mounted (ebs).
    async fn restore_into(
        &self,
        backup: BackupRef<'_>,
        captured: &Captured,
        into: &RestoreInto<'_>,
    ) -> anyhow::Result<Vec<ebs::restore::Remounted>>;
}

/// Where and how a restore brings a backup's data back.
pub struct RestoreInto<'a> {
    /// The new data directory (ebs: the data directory's filesystem is mounted here).
    pub target_dir: &'a std::path::Path,
    /// Parallel downloads (files).
    pub workers: usize,
    /// Where each backed-up path goes (files).
    pub layout: Option<&'a dyn files::restore::Layout>,
    /// New-volume options, and the host the volumes are attached to and mounted on (ebs).
    pub volumes: Option<(&'a ebs::restore::RestoreOptions, &'a dyn ebs::restore::Host)>,
}

/// The provider of `kind`, configured from `cfg` (`freezer`: the ebs freeze seam, `None`
/// for the freeze-guard process).
pub fn open<'a>(
    kind: ProviderKind,
    cfg: &'a Config,
    repo: &'a Repository,
    freezer: Option<&'a dyn ebs::freeze::Freezer>,
) -> Box<dyn Provider + 'a> {
    match kind {
        ProviderKind::Files => Box::new(files::FilesProvider { repo, cfg: Some(cfg) }),
        ProviderKind::Ebs => Box::new(ebs::EbsProvider {
            cfg: Some(cfg),
            endpoint: cfg.ebs.endpoint.as_deref(),
            snapshot_timeout: std::time::Duration::from_secs(cfg.ebs.snapshot_timeout_s),
            freezer,
        }),
    }
}

/// The provider of `kind` for handling existing backups' data only (no configuration: it
/// cannot plan a capture), with the repository's EC2 endpoint.
pub fn for_data(kind: ProviderKind, repo: &Repository) -> Box<dyn Provider + '_> {
    match kind {
        ProviderKind::Files => Box::new(files::FilesProvider { repo, cfg: None }),
        ProviderKind::Ebs => Box::new(ebs::EbsProvider {
            cfg: None,
            endpoint: repo.ec2_endpoint(),
            snapshot_timeout: std::time::Duration::from_secs(crate::config::EbsConfig::default().snapshot_timeout_s),
            freezer: None,
        }),
    }
}
