//! `tidemark verify`: WAL continuity per timeline from each backup's start to the archive's
//! end, and every backup's bundles present (and, with `--deep`, every file's checksum).

pub mod last_run;
pub mod wal_remove;

use serde::Serialize;

use crate::catalog::backup::{self, BackupState};
use crate::catalog::wal_index;
use crate::repo::Repository;
use crate::wal::history::Ancestor;
use crate::wal::name::Segment;

/// WAL continuity of one timeline.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineReport {
    /// Timeline.
    pub timeline: u32,
    /// First segment checked (the oldest backup's start).
    pub first: Option<String>,
    /// Last archived segment.
    pub last: Option<String>,
    /// Missing segments between them.
    pub gaps: Vec<String>,
    /// Segment boundaries where the later segment does not continue the earlier ones'
    /// history (another server archiving under this handle, or a planted segment).
    pub breaks: Vec<String>,
    /// Archived segments the commit-time index does not know (restores treat them as
    /// missing until `tidemark wal-index rebuild`), the first few by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unindexed: Vec<String>,
    /// How many archived segments the index does not know.
    pub unindexed_count: usize,
    /// Segments after the index's end read from their own bytes (the daemon writes its
    /// batch of summaries shortly; restores read them the same way): not a problem.
    pub read_from_bytes: usize,
}

/// One backup's check.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// Backup id.
    pub id: String,
    /// State.
    pub state: BackupState,
    /// Problems found (empty: fine).
    pub problems: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// True when nothing is wrong.
    pub ok: bool,
    /// Timeline history files that cannot be this cluster's: unreadable, or whose lineage
    /// holds none of the timelines with archived WAL.
    pub foreign_histories: Vec<String>,
    /// Per timeline.
    pub timelines: Vec<TimelineReport>,
    /// Per backup.
    pub backups: Vec<BackupReport>,
}

/// Missing numbers between `first` and the largest of `have` (pure).
pub fn gaps(have: &[u64], first: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut expect = first;
    for &n in have.iter().filter(|n| **n >= first) {
        while expect < n {
            out.push(expect);
            expect += 1;
        }
        expect = n + 1;
    }
    out
}

/// Why the history file of `tli` cannot be this cluster's, or `None` when it can be (pure):
/// unreadable, or a lineage holding none of the timelines with archived WAL. `verify` and
/// `wal-remove` share it, so what one flags the other may remove.
pub fn foreign_history(
    tli: u32,
    parsed: &Result<Vec<Ancestor>, String>,
    with_wal: &std::collections::BTreeSet<u32>,
) -> Option<String> {
    let name = format!("{tli:08X}.history");
    match parsed {
        Err(e) => Some(format!("{name}: not a timeline history PostgreSQL can read ({e})")),
        Ok(anc) if !anc.iter().any(|a| with_wal.contains(&a.timeline)) => Some(format!(
            "{name}: its lineage ({}) holds none of the timelines with archived WAL; restores do not follow it",
            anc.iter().map(|a| a.timeline.to_string()).collect::<Vec<_>>().join(", ")
        )),
        Ok(_) => None,
    }
}

/// Runs the checks.
pub async fn verify(repo: &Repository, deep: bool) -> anyhow::Result<Report> {
    let seg_size = crate::repo::cluster::segment_size(repo).await?;
    let manifests = backup::list(repo).await?;
    let first_by_tli = backup::first_segments(&manifests, seg_size);
    let mut timelines = Vec::new();
    for tli in wal_index::timelines(repo).await? {
        let wal = repo.store().list(&repo.wal_prefix(tli)).await?;
        let mut have: Vec<u64> = wal
            .iter()
            .filter_map(|m| Segment::parse(m.key.rsplit('/').next()?, seg_size).ok())
            .map(|s| s.number)
            .collect();
        have.sort();
        let first = first_by_tli.get(&tli).copied().or_else(|| have.first().copied());
        let name = |n: u64| Segment { timeline: tli, number: n }.name(seg_size);
        let missing = first.map(|f| gaps(&have, f)).unwrap_or_default();
        // A backup whose start segment was never archived shows as a gap at the start.
        let mut gap_names: Vec<String> = missing.into_iter().map(name).collect();
        if let (Some(f), Some(&last)) = (first, have.last()) {
            if !have.contains(&f) && f > last {
                gap_names.push(name(f));
            }
        }
        let mut archive = wal_index::load_archive(repo, tli, seg_size, first.unwrap_or(0)).await?;
        // What a restore reads the same way: the segments past the index's end (listed above).
        let read_from_bytes = wal_index::add_tail_of(repo, tli, &mut archive, &have, wal_index::UNINDEXED_TAIL).await?;
        let breaks = crate::catalog::restore_plan::chain_breaks(&archive, first.unwrap_or(0))
            .into_iter()
            .map(|b| format!("{}: {b}", name(b.segment)))
            .collect();
        let unindexed: Vec<u64> =
            have.iter().filter(|n| **n >= first.unwrap_or(0) && !archive.has(**n)).copied().collect();
        timelines.push(TimelineReport {
            timeline: tli,
            first: first.map(name),
            last: have.last().map(|n| name(*n)),
            gaps: gap_names,
            breaks,
            unindexed: unindexed.iter().take(10).map(|n| name(*n)).collect(),
            unindexed_count: unindexed.len(),
            read_from_bytes,
        });
    }
    let mut foreign_histories = Vec::new();
    let files = wal_index::timeline_files(repo).await?;
    for (tli, parsed) in &files.histories {
        foreign_histories.extend(foreign_history(*tli, parsed, &files.with_wal));
    }
    let mut backups = Vec::new();
    // Only --deep reads the bundles: the rest is listings and HEADs.
    let pb = deep.then(|| {
        let deep_bytes = manifests
            .iter()
            .filter(|m| m.state == BackupState::Completed)
            .flat_map(|m| &m.bundles)
            .map(|b| b.plain_bytes)
            .sum();
        crate::snapshot::progress::bytes_bar(deep_bytes, "verify --deep")
    });
    for m in &manifests {
        let mut problems = Vec::new();
        if m.state == BackupState::Completed {
            match crate::snapshot::for_data(m.provider, repo).verify(m.backup_ref(), &m.captured(), deep).await {
                Ok(p) => problems.extend(p),
                Err(e) => problems.push(format!("could not check its {} data: {e:#}", m.provider)),
            }
            if let Some(pb) = &pb {
                pb.inc(m.bundles.iter().map(|b| b.plain_bytes).sum());
            }
        }
        backups.push(BackupReport { id: m.id.clone(), state: m.state, problems });
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let ok = foreign_histories.is_empty()
        && timelines.iter().all(|t| t.gaps.is_empty() && t.breaks.is_empty() && t.unindexed_count == 0)
        && backups.iter().all(|b| b.problems.is_empty());
    Ok(Report { ok, foreign_histories, timelines, backups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_between_first_and_last() {
        assert_eq!(gaps(&[1, 2, 3], 1), Vec::<u64>::new());
        assert_eq!(gaps(&[1, 2, 5, 7], 1), vec![3, 4, 6]);
        assert_eq!(gaps(&[1, 2, 5, 7], 3), vec![3, 4, 6]);
        assert_eq!(gaps(&[4, 5], 2), vec![2, 3]);
        assert_eq!(gaps(&[], 2), Vec::<u64>::new());
    }
}
