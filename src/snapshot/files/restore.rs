//! Restoring a `files` backup's paths: each bundle downloaded and opened once, its parts
//! written where the [`Layout`] says with every part's checksum checked; or only checked
//! ([`check_bundle`], `verify --deep`).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::{bail, Context};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::codec;
use crate::repo::Repository;
use crate::snapshot::files::{EntryKind, Part};
use crate::snapshot::{BackupRef, Captured};

/// Where restored paths go; the restore flow decides.
pub trait Layout: Sync {
    /// Where the file or directory backed up at `rel` is written.
    fn path(&self, rel: &str) -> PathBuf;
    /// Where the link backed up at `rel` is created.
    fn link(&self, rel: &str) -> PathBuf;
    /// What it points to (a directory, created first); `recorded` is the source's target.
    fn link_target(&self, rel: &str, recorded: Option<&str>) -> PathBuf;
}

/// Writes every path of a files backup where `layout` says: directories and links first,
/// then the bundles, `workers` at a time, then sizes and modes.
pub async fn download(
    repo: &Repository,
    backup: BackupRef<'_>,
    c: &Captured,
    layout: &dyn Layout,
    workers: usize,
) -> anyhow::Result<()> {
    for e in &c.files {
        match e.kind {
            EntryKind::Dir => std::fs::create_dir_all(layout.path(&e.path))?,
            EntryKind::Link => {
                let to = layout.link_target(&e.path, e.target.as_deref());
                std::fs::create_dir_all(to.clone())?;
                std::os::unix::fs::symlink(&to, layout.link(&e.path))
                    .with_context(|| format!("linking {} to {}", e.path, to.display()))?;
            }
            EntryKind::File => {}
        }
    }
    // Parts grouped by bundle, in bundle order.
    let mut by_bundle: BTreeMap<usize, Vec<(PathBuf, String, Part)>> = BTreeMap::new();
    for e in c.files.iter().filter(|e| e.kind == EntryKind::File) {
        let dest = layout.path(&e.path);
        if e.parts.is_empty() {
            std::fs::File::create(&dest).with_context(|| format!("creating {}", dest.display()))?;
        }
        for p in &e.parts {
            by_bundle.entry(p.bundle).or_default().push((dest.clone(), e.path.clone(), p.clone()));
        }
    }
    for v in by_bundle.values_mut() {
        v.sort_by_key(|(_, _, p)| p.offset);
    }
    let total = c.bundles.iter().map(|b| b.plain_bytes).sum();
    let pb = crate::snapshot::progress::files_bar(total, c.files.len() as u64, "restore");
    let results: Vec<anyhow::Result<u64>> = futures::stream::iter(by_bundle)
        .map(|(n, parts)| {
            let pb = pb.clone();
            async move {
                let bytes = restore_bundle(repo, backup, c, n, parts, false).await?;
                pb.inc(bytes);
                Ok(bytes)
            }
        })
        .buffer_unordered(workers.max(1))
        .collect()
        .await;
    pb.finish_and_clear();
    for r in results {
        r?;
    }
    // Sizes (files may be sparse at the end) and modes.
    for e in &c.files {
        let dest = layout.path(&e.path);
        if e.kind == EntryKind::File {
            let f = std::fs::OpenOptions::new().write(true).open(&dest)?;
            f.set_len(e.size)?;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(e.mode & 0o7777))?;
        } else if e.kind == EntryKind::Dir {
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode((e.mode & 0o7777) | 0o700))?;
        }
    }
    Ok(())
}

/// The running checksum of the part being written: CRC-32C, or SHA-256 for older backups;
/// none for a piece of an older backup's part (an incremental backup keeps a range of it,
/// whose bytes the bundle's AEAD tags cover).
enum PartCheck {
    Crc(u32),
    Sha(Sha256),
    Piece,
}

impl PartCheck {
    fn for_part(part: Option<&Part>) -> PartCheck {
        match part {
            Some(p) if p.crc32c.is_none() && !p.sha256.is_empty() => PartCheck::Sha(Sha256::new()),
            Some(p) if p.crc32c.is_none() => PartCheck::Piece,
            _ => PartCheck::Crc(0),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            PartCheck::Crc(c) => *c = crc32c::crc32c_append(*c, data),
            PartCheck::Sha(h) => h.update(data),
            PartCheck::Piece => {}
        }
    }
}

/// Receives a bundle's plaintext in order and writes each part where it belongs,
/// checking each part's SHA-256.
struct PartSink {
    parts: Vec<(PathBuf, String, Part)>,
    idx: usize,
    pos: u64,
    file: Option<std::fs::File>,
    check: PartCheck,
    bundle: String,
    error: Option<String>,
    /// Only check checksums; write nothing (verify --deep).
    dry: bool,
    /// The bundle is an older backup's: bytes past the last part listed are not an error.
    borrowed: bool,
}

impl PartSink {
    fn fail(&mut self, msg: String) -> std::io::Error {
        self.error = Some(msg.clone());
        std::io::Error::other(msg)
    }
}

impl Write for PartSink {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let total = buf.len();
        while !buf.is_empty() {
            let Some((dest, rel, part)) = self.parts.get(self.idx).cloned() else {
                if self.borrowed {
                    // An older backup's bundle: this manifest uses only some of its bytes.
                    return Ok(total);
                }
                return Err(self.fail(format!("bundle {} holds more bytes than its manifest lists", self.bundle)));
            };
            if self.pos < part.offset {
                let skip = ((part.offset - self.pos) as usize).min(buf.len());
                self.pos += skip as u64;
                buf = &buf[skip..];
                continue;
            }
            if self.file.is_none() && !self.dry {
                let f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&dest);
                self.file = Some(f.map_err(|e| std::io::Error::other(format!("creating {}: {e}", dest.display())))?);
            }
            let within = self.pos - part.offset;
            let n = ((part.len - within) as usize).min(buf.len());
            if let Some(f) = &self.file {
                f.write_all_at(&buf[..n], part.file_offset + within)?;
            }
            self.check.update(&buf[..n]);
            self.pos += n as u64;
            buf = &buf[n..];
            if within + n as u64 == part.len {
                self.finish_part(&rel, &part)?;
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl PartSink {
    fn finish_part(&mut self, rel: &str, part: &Part) -> std::io::Result<()> {
        let check = std::mem::replace(&mut self.check, PartCheck::for_part(self.parts.get(self.idx + 1).map(|p| &p.2)));
        self.file = None;
        self.idx += 1;
        let (ok, expected, got) = match check {
            PartCheck::Crc(crc) => (
                part.crc32c == Some(crc),
                part.crc32c.map_or_else(|| "a checksum".to_string(), |c| format!("crc32c {c:08x}")),
                format!("{crc:08x}"),
            ),
            PartCheck::Sha(h) => {
                let got = hex::encode(h.finalize());
                (got == part.sha256, format!("sha256 {}", part.sha256), got)
            }
            PartCheck::Piece => (true, String::new(), String::new()),
        };
        if !ok {
            return Err(self
                .fail(format!("{rel}: checksum mismatch in bundle {} (expected {expected}, got {got})", self.bundle)));
        }
        Ok(())
    }

    /// Zero-length parts complete without bytes; finish any at the current position.
    fn finish_empty(&mut self) -> std::io::Result<()> {
        while let Some((dest, rel, part)) = self.parts.get(self.idx).cloned() {
            if part.len != 0 {
                break;
            }
            if !self.dry {
                std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&dest)?;
            }
            self.finish_part(&rel, &part)?;
        }
        Ok(())
    }
}

/// Downloads one bundle and writes its parts; errors name the bundle.
async fn restore_bundle(
    repo: &Repository,
    backup: BackupRef<'_>,
    c: &Captured,
    n: usize,
    parts: Vec<(PathBuf, String, Part)>,
    dry: bool,
) -> anyhow::Result<u64> {
    let Some(bundle) = c.bundles.get(n) else {
        bail!("backup {} lists parts in bundle {n}, which its manifest does not have", backup.id);
    };
    let name = bundle.name.clone();
    let owner = bundle.owner_id(backup.id);
    let borrowed = bundle.owner.is_some();
    let key = repo.bundle_key(owner, &name);
    let Some(sealed) = repo.store().get_bytes(&key).await? else {
        let whose = if owner == backup.id { String::new() } else { format!(", stored by backup {owner}") };
        bail!(
            "bundle {name} of backup {}{whose} is missing from the repository ({key}); run `tidemark verify`",
            backup.id
        );
    };
    let ring = repo.keyring().clone();
    let plain = bundle.plain_bytes;
    tokio::task::spawn_blocking(move || {
        let check = PartCheck::for_part(parts.first().map(|p| &p.2));
        let mut sink =
            PartSink { parts, idx: 0, pos: 0, file: None, check, bundle: name.clone(), error: None, dry, borrowed };
        let res = sink
            .finish_empty()
            .map_err(|e| e.to_string())
            .and_then(|_| codec::open(&ring, &key, &sealed[..], &mut sink).map_err(|e| e.to_string()));
        if let Err(e) = res {
            let why = sink.error.take().unwrap_or(e);
            bail!("bundle {name}: {why}");
        }
        sink.finish_empty()?;
        if sink.idx != sink.parts.len() {
            bail!("bundle {name} ends before all its parts ({} of {})", sink.idx, sink.parts.len());
        }
        Ok(plain)
    })
    .await?
}

/// Downloads bundle `n` and checks every part's checksum without writing anything.
pub async fn check_bundle(repo: &Repository, backup: BackupRef<'_>, c: &Captured, n: usize) -> anyhow::Result<u64> {
    let mut parts: Vec<(PathBuf, String, Part)> = c
        .files
        .iter()
        .flat_map(|e| e.parts.iter().filter(|p| p.bundle == n).map(|p| (PathBuf::new(), e.path.clone(), p.clone())))
        .collect();
    parts.sort_by_key(|(_, _, p)| p.offset);
    restore_bundle(repo, backup, c, n, parts, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(offset: u64, data: &[u8], crc: bool) -> Part {
        Part {
            bundle: 0,
            offset,
            file_offset: 0,
            len: data.len() as u64,
            crc32c: crc.then(|| crc32c::crc32c(data)),
            sha256: if crc { String::new() } else { hex::encode(Sha256::digest(data)) },
        }
    }

    fn sink(parts: Vec<(PathBuf, String, Part)>) -> PartSink {
        let check = PartCheck::for_part(parts.first().map(|p| &p.2));
        PartSink {
            parts,
            idx: 0,
            pos: 0,
            file: None,
            check,
            bundle: "b000000".into(),
            error: None,
            dry: false,
            borrowed: false,
        }
    }

    #[test]
    fn parts_are_checked_by_crc32c_or_by_the_sha256_older_backups_carry() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        // A new (CRC-32C) part followed by an old (SHA-256) one, written in odd-sized writes.
        let mut s = sink(vec![
            (a.clone(), "a".into(), part(0, b"first file", true)),
            (b.clone(), "b".into(), part(10, b"second", false)),
        ]);
        for piece in b"first filesecond".chunks(3) {
            s.write_all(piece).unwrap();
        }
        assert_eq!(s.idx, 2);
        assert_eq!(std::fs::read(&a).unwrap(), b"first file");
        assert_eq!(std::fs::read(&b).unwrap(), b"second");

        for crc in [true, false] {
            let mut s = sink(vec![(d.path().join("c"), "c".into(), part(0, b"expected", crc))]);
            assert!(s.write_all(b"damaged!").is_err());
            let e = s.error.unwrap();
            assert!(e.contains("c: checksum mismatch in bundle b000000"), "{e}");
            assert!(e.contains(if crc { "crc32c" } else { "sha256" }), "{e}");
        }
    }
}
