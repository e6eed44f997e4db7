//! The `files` provider: the data directory and tablespaces copied between backup start and
//! stop, packed into sealed bundles in the repository ([`capture`]); what a manifest records
//! of them (paths, parts, bundles).

pub mod capture;
pub mod incremental;
pub mod restore;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::{Config, Provider as ProviderKind};
use crate::repo::Repository;
use crate::snapshot::{BackupRef, Capture, Captured, Interrupt, Provider, RestoreInto};
pub use incremental::Changes;

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
    /// The backup that stored it, when not the one whose manifest lists it (an incremental
    /// backup's parts point into older backups' bundles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl Bundle {
    /// The id of the backup whose prefix holds it, for a manifest of backup `listed_by`.
    pub fn owner_id<'a>(&'a self, listed_by: &'a str) -> &'a str {
        self.owner.as_deref().unwrap_or(listed_by)
    }
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
            let key = repo.bundle_key(b.owner_id(backup.id), &b.name);
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

/// What an incremental capture planned before copying: per item, the base's parts it keeps,
/// and the notes of relation files read in full because of the WAL.
struct Planned {
    keep: Vec<(usize, Vec<Part>)>,
    notes: Vec<incremental::FullCopyNote>,
    files_full: u64,
}

/// Decides for every file what it reads and what it keeps from the base (`Item::ranges`).
fn plan_incremental(items: &mut [capture::Item], ch: &Changes) -> Planned {
    let by_path: std::collections::HashMap<&str, &FileEntry> =
        ch.base.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut out = Planned { keep: Vec::new(), notes: Vec::new(), files_full: 0 };
    if let Some(why) = &ch.everything {
        out.notes.push(incremental::FullCopyNote { path: "*".into(), why: why.clone() });
    }
    for (n, it) in items.iter_mut().enumerate().filter(|(_, i)| i.entry.kind == EntryKind::File) {
        let base = by_path.get(it.entry.path.as_str()).copied();
        match incremental::decide(&it.entry.path, base, ch) {
            incremental::Decision::Full(why) => {
                out.files_full += 1;
                if let Some(why) = why {
                    out.notes.push(incremental::FullCopyNote { path: it.entry.path.clone(), why });
                }
            }
            incremental::Decision::Blocks { changed, valid_end } => {
                let none: &[Part] = &[];
                let base = base.map_or(none, |b| &b.parts[..]);
                let plan = incremental::plan_file(it.entry.size, &changed, valid_end, base);
                it.ranges = Some(plan.copy);
                out.keep.push((n, plan.keep));
            }
        }
    }
    out
}

/// Adds the kept parts to their files (their bundles listed after this backup's own, named
/// by the backup that stored them) and records how the backup was taken.
fn finish_incremental(
    items: &mut [capture::Item],
    bundles: &mut Vec<Bundle>,
    ch: &Changes,
    planned: Planned,
) -> anyhow::Result<incremental::IncrementalInfo> {
    let base = &ch.base;
    let mut borrowed = incremental::Borrowed::new(bundles.len());
    let mut info = incremental::IncrementalInfo {
        base: base.id.clone(),
        since_lsn: base.start_lsn.to_string(),
        files_full: planned.files_full,
        files_blocks: planned.keep.len() as u64,
        full_copies: planned.notes,
        ..Default::default()
    };
    for (n, keep) in planned.keep {
        let entry = &mut items[n].entry;
        for mut p in keep {
            p.bundle = borrowed.map(base, p.bundle).ok_or_else(|| {
                anyhow::anyhow!(
                    "base backup {} lists a part of {} in bundle {}, which it does not have",
                    base.id,
                    entry.path,
                    p.bundle
                )
            })?;
            info.bytes_kept += p.len;
            entry.parts.push(p);
        }
        entry.parts.sort_by_key(|p| p.file_offset);
        // Up to the last byte held: a read cut short (the file shrank meanwhile) leaves no tail of zeros.
        entry.size = entry.parts.iter().map(|p| p.file_offset + p.len).max().unwrap_or(0);
    }
    info.bytes_copied = bundles.iter().map(|b| b.plain_bytes).sum();
    bundles.extend(borrowed.bundles);
    Ok(info)
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
    async fn capture(&mut self, changes: Option<Changes>, mut interrupt: Interrupt<'_>) -> anyhow::Result<()> {
        let copy = async {
            let dd = self.data_dir.to_path_buf();
            let mut items = tokio::task::spawn_blocking(move || capture::walk(&dd)).await??;
            let planned = changes.as_ref().map(|ch| plan_incremental(&mut items, ch));
            let total: u64 = capture::spans(&items).iter().map(|s| s.2).sum();
            let pb = crate::snapshot::progress::files_bar(total, items.len() as u64, "backup");
            let pb2 = pb.clone();
            let mut bundles = capture::capture(
                self.repo,
                &self.id,
                &mut items,
                self.bundle_bytes,
                self.workers,
                Arc::new(move |n| pb2.inc(n)),
            )
            .await?;
            pb.finish_and_clear();
            let incremental = match (changes, planned) {
                (Some(ch), Some(planned)) => Some(finish_incremental(&mut items, &mut bundles, &ch, planned)?),
                _ => None,
            };
            anyhow::Ok(Captured {
                files: items.into_iter().map(|i| i.entry).collect(),
                bundles,
                ebs: None,
                incremental,
            })
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
