//! The `files` provider: the data directory and tablespaces copied between backup start and
//! stop, packed into sealed bundles in the repository ([`capture`]); what a manifest records
//! of them (paths, parts, bundles).

pub mod capture;
pub mod restore;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::{Config, Provider as ProviderKind};
use crate::repo::Repository;
use crate::snapshot::{BackupRef, Capture, Captured, Interrupt, Provider, RestoreInto};

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

/// The `files` provider over a repository; `cfg` gives what a capture needs (data
/// directory, bundle size, workers) and is absent where only backups' data is handled.
pub struct FilesProvider<'a> {
    /// Where the bundles go.
    pub repo: &'a Repository,
    /// The configuration backups are planned from.
    pub cfg: Option<&'a Config>,
}

#[async_trait]
impl Provider for FilesProvider<'_> {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Files
    }

    async fn plan(
        &self,
        backup: BackupRef<'_>,
        _tablespaces: &[(u32, String)],
    ) -> anyhow::Result<Box<dyn Capture + '_>> {
        let cfg = self.cfg.ok_or_else(|| anyhow::anyhow!("no configuration to plan a files backup from"))?;
        Ok(Box::new(FilesCapture {
            repo: self.repo,
            id: backup.id.to_string(),
            data_dir: &cfg.postgres.data_dir,
            bundle_bytes: cfg.backup.bundle_mib << 20,
            workers: cfg.backup.workers,
            out: Captured::default(),
        }))
    }

    async fn delete(&self, _backup: BackupRef<'_>, _captured: &Captured) -> anyhow::Result<usize> {
        // Bundles are repository objects: the purge deletes them with the backup's keys.
        Ok(0)
    }

    async fn copy_to_region(
        &self,
        _backup: BackupRef<'_>,
        captured: &Captured,
        _region: &str,
        _kms_key: Option<&str>,
    ) -> anyhow::Result<(Captured, u64)> {
        // Likewise: the region copy copies the backup's objects for every provider.
        Ok((captured.clone(), 0))
    }

    async fn verify(&self, backup: BackupRef<'_>, captured: &Captured, deep: bool) -> anyhow::Result<Vec<String>> {
        let repo = self.repo;
        let mut problems = Vec::new();
        for (n, b) in captured.bundles.iter().enumerate() {
            let key = repo.bundle_key(backup.id, &b.name);
            match repo.store().head(&key).await? {
                None => problems.push(format!("bundle {} is missing ({key})", b.name)),
                Some(meta) if meta.size != b.stored_bytes => problems
                    .push(format!("bundle {} is {} bytes, the manifest says {}", b.name, meta.size, b.stored_bytes)),
                Some(_) if deep => {
                    if let Err(e) = restore::check_bundle(repo, backup, captured, n).await {
                        problems.push(format!("{e:#}"));
                    }
                }
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
    ) -> anyhow::Result<Vec<crate::snapshot::ebs::restore::Remounted>> {
        let layout = into.layout.ok_or_else(|| anyhow::anyhow!("a files restore needs a layout"))?;
        restore::download(self.repo, backup, captured, layout, into.workers).await?;
        Ok(Vec::new())
    }
}

/// A files backup in progress: the copy happens inside backup mode, nothing is left to
/// settle after it.
struct FilesCapture<'a> {
    repo: &'a Repository,
    id: String,
    data_dir: &'a Path,
    bundle_bytes: u64,
    workers: usize,
    out: Captured,
}

#[async_trait]
impl Capture for FilesCapture<'_> {
    async fn capture(&mut self, mut interrupt: Interrupt<'_>) -> anyhow::Result<()> {
        let copy = async {
            let dd = self.data_dir.to_path_buf();
            let mut items = tokio::task::spawn_blocking(move || capture::walk(&dd)).await??;
            let total: u64 = items.iter().map(|i| i.entry.size).sum();
            let pb = crate::snapshot::progress::files_bar(total, items.len() as u64, "backup");
            let pb2 = pb.clone();
            let bundles = capture::capture(
                self.repo,
                &self.id,
                &mut items,
                self.bundle_bytes,
                self.workers,
                Arc::new(move |n| pb2.inc(n)),
            )
            .await?;
            pb.finish_and_clear();
            anyhow::Ok(Captured { files: items.into_iter().map(|i| i.entry).collect(), bundles, ebs: None })
        };
        tokio::select! {
            r = copy => {
                self.out = r?;
                Ok(())
            }
            _ = &mut interrupt => anyhow::bail!("interrupted while copying the data directory"),
        }
    }

    async fn settle(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    fn captured(&self) -> Captured {
        self.out.clone()
    }
}
