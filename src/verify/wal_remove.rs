//! `tidemark wal-remove`: takes one WAL object (a segment, `.history`, `.partial` or `.backup`
//! file) out of the archive, with its segment summary. It is the way out of what `verify`
//! flags as foreign (a history file that is not this cluster's, a segment that breaks the
//! chain), so it refuses what a backup needs unless `verify` flags exactly that object.

use serde::Serialize;

use crate::catalog::backup::{self, BackupState, Manifest};
use crate::catalog::wal_index;
use crate::repo::Repository;
use crate::verify;
use crate::wal::name::{Segment, WalFile};

/// What removing one WAL file takes out, and why that is allowed.
#[derive(Debug, Clone, Serialize)]
pub struct Removal {
    /// Cluster handle.
    pub cluster: String,
    /// The WAL file name.
    pub file: String,
    /// Object keys that exist and go, the summary first.
    pub objects: Vec<String>,
    /// Why the removal is allowed (what `verify` says about the object, or that nothing needs it).
    pub reason: String,
}

/// Backups on `seg`'s timeline whose WAL range includes `seg` (pure): completed ones from
/// start to stop (their consistency), running ones from start on (they cannot finish without it).
pub fn backups_needing(seg: Segment, seg_size: u64, manifests: &[Manifest]) -> Vec<String> {
    let (lo, hi) = (seg.start_lsn(seg_size).0, seg.start_lsn(seg_size).0 + seg_size);
    manifests
        .iter()
        .filter(|m| m.timeline == seg.timeline)
        .filter(|m| match (m.state, m.stop_lsn) {
            (BackupState::Completed, Some(stop)) => m.start_lsn.0 < hi && lo <= stop.0,
            (BackupState::Running, _) => m.start_lsn.0 < hi,
            _ => false,
        })
        .map(|m| m.id.clone())
        .collect()
}

/// Works out what removing `file` takes out, or refuses (an error saying why and what to do).
/// Nothing is removed here.
pub async fn plan(repo: &Repository, file: &WalFile, seg_size: u64) -> anyhow::Result<Removal> {
    let name = file.file_name(seg_size);
    let key = repo.wal_key(file, seg_size);
    let summary = match file {
        WalFile::Segment(s) => Some(repo.wal_index_key(s.timeline, &name)),
        _ => None,
    };
    let mut objects = Vec::new();
    // The summary goes first: a summary left without its segment would later be taken for
    // the summary of whatever segment is pushed under that name (summaries are never replaced).
    if let Some(k) = &summary {
        if repo.store().head(k).await?.is_some() {
            objects.push(k.clone());
        }
    }
    let wal_exists = repo.store().head(&key).await?.is_some();
    if wal_exists {
        objects.push(key.clone());
    }
    if objects.is_empty() {
        anyhow::bail!(
            "no WAL object {name} for cluster {} in {} (nothing to remove): check the name and --cluster; `tidemark verify` names what it flags",
            repo.cluster(),
            repo.store().describe()
        );
    }
    let manifests = backup::list(repo).await?;
    let reason = match file {
        WalFile::Segment(seg) => segment_reason(repo, *seg, seg_size, &manifests, wal_exists).await?,
        WalFile::History(tli) => history_reason(repo, *tli, &manifests).await?,
        WalFile::Partial(_) | WalFile::BackupLabel(..) => {
            "no backup or restore needs it (recovery reads complete segments and history files)".to_string()
        }
    };
    Ok(Removal { cluster: repo.cluster().to_string(), file: name, objects, reason })
}

async fn segment_reason(
    repo: &Repository,
    seg: Segment,
    seg_size: u64,
    manifests: &[Manifest],
    wal_exists: bool,
) -> anyhow::Result<String> {
    let name = seg.name(seg_size);
    if !wal_exists {
        return Ok(format!("only the summary of {name} is left (its segment is gone)"));
    }
    // The same walk `verify` does, from the oldest completed backup's start on this timeline.
    let first = backup::first_segments(manifests, seg_size).get(&seg.timeline).copied().unwrap_or(0);
    let archive = wal_index::load_archive(repo, seg.timeline, seg_size, first).await?;
    let flagged =
        crate::catalog::restore_plan::chain_breaks(&archive, first).into_iter().find(|b| b.segment == seg.number);
    if let Some(b) = flagged {
        return Ok(format!("`tidemark verify` flags it as foreign: {b}"));
    }
    let needed = backups_needing(seg, seg_size, manifests);
    if !needed.is_empty() {
        anyhow::bail!(
            "refusing to remove {name}: backup(s) {} need it (their WAL from start to stop, to be consistent), and `tidemark verify` does not flag it as foreign; purge those backups first if they must go",
            needed.join(", ")
        );
    }
    Ok(format!(
        "no backup needs it to be consistent and verify does not flag it; restores past {name} will end before it"
    ))
}

async fn history_reason(repo: &Repository, tli: u32, manifests: &[Manifest]) -> anyhow::Result<String> {
    let files = wal_index::timeline_files(repo).await?;
    if let Some(why) = files.histories.get(&tli).and_then(|p| verify::foreign_history(tli, p, &files.with_wal)) {
        return Ok(format!("`tidemark verify` flags it as foreign: {why}"));
    }
    let backups: Vec<&str> = manifests
        .iter()
        .filter(|m| m.timeline == tli && m.state != BackupState::Failed)
        .map(|m| m.id.as_str())
        .collect();
    if files.with_wal.contains(&tli) || !backups.is_empty() {
        anyhow::bail!(
            "refusing to remove {tli:08X}.history: timeline {tli} has {}, recovery on it reads this file, and `tidemark verify` does not flag it as foreign",
            if backups.is_empty() { "archived WAL".to_string() } else { format!("backup(s) {}", backups.join(", ")) }
        );
    }
    Ok(format!("timeline {tli} has no archived WAL and no backup, so no restore follows it"))
}

/// Removes what `plan` listed, in its order (the summary before its segment).
pub async fn remove(repo: &Repository, r: &Removal) -> anyhow::Result<()> {
    let seg_size = crate::repo::cluster::segment_size(repo).await?;
    let file = WalFile::parse(&r.file, seg_size)?;
    for k in &r.objects {
        if let (true, WalFile::Segment(seg)) = (*k == repo.wal_key(&file, seg_size), &file) {
            // A rolled-up block must not go on naming it either (before the segment goes).
            wal_index::forget_segment(repo, *seg, seg_size).await?;
            crate::catalog::block_index::forget_segment(repo, *seg, seg_size).await?;
        }
        repo.store().delete(k).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::backup::BackupKind;
    use crate::wal::name::Lsn;

    fn manifest(id: &str, state: BackupState, tli: u32, start: u64, stop: Option<u64>) -> Manifest {
        Manifest {
            id: id.into(),
            cluster: "c".into(),
            kind: BackupKind::Manual,
            state,
            provider: crate::config::Provider::Files,
            pg_version: 150000,
            system_identifier: "1".into(),
            timeline: tli,
            wal_segment_size: 16,
            start_lsn: Lsn(start),
            stop_lsn: stop.map(Lsn),
            start_time: chrono::DateTime::UNIX_EPOCH,
            stop_time: None,
            backup_label: String::new(),
            tablespace_map: String::new(),
            tablespaces: Vec::new(),
            files: Vec::new(),
            bundles: Vec::new(),
            ebs: None,
            incremental: None,
            error: None,
            lease: None,
            record: None,
        }
    }

    #[test]
    fn segments_from_start_to_stop_of_completed_and_running_backups_are_needed() {
        let sz = 16;
        let seg = |n| Segment { timeline: 1, number: n };
        // Completed: LSN 40..=70 spans segments 2, 3 and 4 (64..80 holds the stop LSN).
        let ms = vec![
            manifest("done", BackupState::Completed, 1, 40, Some(70)),
            manifest("other-tli", BackupState::Completed, 2, 0, Some(1000)),
            manifest("failed", BackupState::Failed, 1, 0, Some(1000)),
            manifest("running", BackupState::Running, 1, 130, None),
        ];
        assert!(backups_needing(seg(1), sz, &ms).is_empty());
        assert_eq!(backups_needing(seg(2), sz, &ms), ["done"]);
        assert_eq!(backups_needing(seg(4), sz, &ms), ["done"]);
        assert!(backups_needing(seg(5), sz, &ms).is_empty());
        assert_eq!(backups_needing(seg(8), sz, &ms), ["running"]);
        assert_eq!(backups_needing(seg(99), sz, &ms), ["running"]);
    }
}
