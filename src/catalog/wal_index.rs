//! Per-segment commit-time summaries (`wal-index/<TLI>/<SEGMENT>`), written at push time,
//! and the archive view restore planning reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::repo::{RepoError, Repository};
use crate::restore::plan::{Archive, Join, SegmentCommits};
use crate::wal::name::{timeline_hex, Segment};
use crate::wal::record;

/// What the archive knows about one segment's transactions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentIndex {
    /// Earliest commit time, unix microseconds.
    pub first_commit_us: Option<i64>,
    /// Latest commit time, unix microseconds.
    pub last_commit_us: Option<i64>,
    /// Records walked.
    pub records: usize,
    /// Why the segment could not be read, if it could not (archiving goes on regardless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the join fields below were recorded (summaries before chain checks lack them).
    #[serde(default)]
    pub chain: bool,
    /// The first record starting in the segment: (LSN, `xl_prev`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_record: Option<(u64, u64)>,
    /// LSN of the last record starting in the segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_record_lsn: Option<u64>,
    /// LSN just past the last complete record in the segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_record_end: Option<u64>,
    /// Start LSN of the last complete record in the segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_complete_lsn: Option<u64>,
    /// Page magic of a PostgreSQL major the reader does not read (`error` says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsupported_magic: Option<u16>,
}

impl SegmentIndex {
    /// How the segment joins the one before it (pure).
    pub fn join(&self) -> Join {
        match (self.chain && self.error.is_none(), self.first_record, self.last_record_lsn) {
            (true, Some((_, prev)), Some(last)) => Join::Starts { prev, last },
            (true, None, None) => Join::Continuation,
            _ => Join::Unknown,
        }
    }
}

/// Summarizes a full segment's commit times (pure).
pub fn summarize(bytes: &[u8], seg: Segment, seg_size: u64) -> SegmentIndex {
    let mut b = IndexBuilder::new(seg, seg_size);
    b.feed(bytes);
    b.finish()
}

/// Builds a segment's summary from its bytes fed in whole-page pieces, in order; a segment
/// that cannot be read gets a summary naming why (archiving goes on regardless).
#[derive(Debug)]
pub struct IndexBuilder {
    walk: Result<record::SegmentSummarizer, record::WalParseError>,
}

impl IndexBuilder {
    /// A builder for segment `seg`.
    pub fn new(seg: Segment, seg_size: u64) -> IndexBuilder {
        let walk = record::SegmentSummarizer::starting_at(seg_size, seg.start_lsn(seg_size).0);
        IndexBuilder { walk }
    }

    /// Feeds the next piece of the segment.
    pub fn feed(&mut self, piece: &[u8]) {
        if let Ok(w) = &mut self.walk {
            if let Err(e) = w.feed(piece) {
                self.walk = Err(e);
            }
        }
    }

    /// The summary.
    pub fn finish(self) -> SegmentIndex {
        match self.walk.and_then(|w| w.finish()) {
            Ok(s) => SegmentIndex {
                first_commit_us: s.first_commit_us.map(record::pg_time_to_unix_us),
                last_commit_us: s.last_commit_us.map(record::pg_time_to_unix_us),
                records: s.records,
                error: None,
                chain: true,
                first_record: s.first_record,
                last_record_lsn: s.last_record_lsn,
                last_record_end: s.last_record_end_lsn,
                last_complete_lsn: s.last_complete_lsn,
                unsupported_magic: None,
            },
            Err(e) => SegmentIndex {
                unsupported_magic: match e {
                    record::WalParseError::UnsupportedMajor { magic, .. } => Some(magic),
                    _ => None,
                },
                error: Some(e.to_string()),
                ..SegmentIndex::default()
            },
        }
    }
}

/// Stores a segment's summary unless one is stored. Written only after the segment itself
/// is archived with the same bytes, so a summary always describes the archived segment.
pub async fn save(repo: &Repository, seg: Segment, seg_size: u64, idx: &SegmentIndex) -> Result<(), RepoError> {
    repo.put_json_if_absent(&repo.wal_index_key(seg.timeline, &seg.name(seg_size)), idx).await?;
    Ok(())
}

/// Reads one segment's summary; `None` when it has none.
pub async fn load(repo: &Repository, seg: Segment, seg_size: u64) -> Result<Option<SegmentIndex>, RepoError> {
    repo.get_json(&repo.wal_index_key(seg.timeline, &seg.name(seg_size))).await
}

/// What the archive holds per timeline: the timelines with WAL segments, and each
/// timeline's history file as parsed (`Err` saying why PostgreSQL could not read it).
#[derive(Debug, Default)]
pub struct TimelineFiles {
    /// Timelines with at least one segment archived.
    pub with_wal: std::collections::BTreeSet<u32>,
    /// Timeline → its history file's ancestors, or why it does not parse.
    pub histories: BTreeMap<u32, Result<Vec<crate::wal::history::Ancestor>, String>>,
}

/// Reads which timelines have WAL and every archived history file (one listing per
/// timeline; restores and `verify` share it).
pub async fn timeline_files(repo: &Repository) -> Result<TimelineFiles, RepoError> {
    let mut out = TimelineFiles::default();
    for tli in timelines(repo).await? {
        let metas = repo.store().list(&repo.wal_prefix(tli)).await?;
        if metas.iter().any(|o| o.key.rsplit('/').next().is_some_and(|n| n.len() == 24)) {
            out.with_wal.insert(tli);
        }
        // A history file's name does not depend on the segment size.
        let key = repo.wal_key(&crate::wal::name::WalFile::History(tli), crate::wal::name::DEFAULT_SEGMENT_SIZE);
        if let Some(bytes) = repo.get_opened(&key).await? {
            out.histories.insert(tli, crate::wal::history::parse_history(&bytes, tli));
        }
    }
    Ok(out)
}

/// Timelines present in the archive.
pub async fn timelines(repo: &Repository) -> Result<Vec<u32>, RepoError> {
    let metas = repo.store().list(&repo.wal_root()).await?;
    let mut out: Vec<u32> = metas
        .iter()
        .filter_map(|m| {
            m.key.strip_prefix(&repo.wal_root())?.split('/').next().and_then(|t| u32::from_str_radix(t, 16).ok())
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// The archived segments of `timeline` from segment `from` on, with their commit times.
pub async fn load_archive(repo: &Repository, timeline: u32, seg_size: u64, from: u64) -> Result<Archive, RepoError> {
    let wal = repo.store().list(&repo.wal_prefix(timeline)).await?;
    let mut segments: BTreeMap<u64, SegmentCommits> = BTreeMap::new();
    for m in &wal {
        let name = m.key.rsplit('/').next().unwrap_or_default();
        if let Ok(s) = Segment::parse(name, seg_size) {
            if s.number >= from {
                segments.insert(s.number, SegmentCommits::default());
            }
        }
    }
    let idx_prefix = format!("clusters/{}/wal-index/{}/", repo.cluster(), timeline_hex(timeline));
    let keys: Vec<(u64, String)> = repo
        .store()
        .list(&idx_prefix)
        .await?
        .into_iter()
        .filter_map(|m| {
            let s = Segment::parse(m.key.rsplit('/').next()?, seg_size).ok()?;
            segments.contains_key(&s.number).then_some((s.number, m.key))
        })
        .collect();
    use futures::stream::{StreamExt, TryStreamExt};
    let loaded: Vec<Option<SegmentIndex>> = futures::stream::iter(keys.iter().map(|(_, k)| repo.get_json(k)))
        .buffered(repo.in_flight())
        .try_collect()
        .await?;
    for ((n, _), idx) in keys.iter().zip(loaded) {
        if let (Some(idx), Some(c)) = (idx, segments.get_mut(n)) {
            *c = SegmentCommits {
                first: idx.first_commit_us,
                last: idx.last_commit_us,
                join: idx.join(),
                last_complete: idx.last_complete_lsn.filter(|_| idx.error.is_none()),
                unsupported: idx.unsupported_magic,
            };
        }
    }
    Ok(Archive { seg_size, segments })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_of_an_unknown_major_is_summarized_with_why() {
        let seg_size = 1u64 << 20;
        let seg = Segment { timeline: 1, number: 3 };
        // A long page header of PostgreSQL 12 WAL (magic 0xD101).
        let mut bytes = vec![0u8; seg_size as usize];
        bytes[0..2].copy_from_slice(&0xD101u16.to_le_bytes());
        bytes[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
        bytes[8..16].copy_from_slice(&(3 * seg_size).to_le_bytes());
        bytes[32..36].copy_from_slice(&(seg_size as u32).to_le_bytes());
        bytes[36..40].copy_from_slice(&8192u32.to_le_bytes());
        let idx = summarize(&bytes, seg, seg_size);
        assert_eq!(
            idx.error.as_deref(),
            Some("PostgreSQL 12 is not supported for time targets; --latest and --target-lsn work")
        );
        assert_eq!(idx.unsupported_magic, Some(0xD101));
        assert_eq!((idx.first_commit_us, idx.last_commit_us), (None, None));
        assert_eq!(idx.join(), Join::Unknown);
        // Summaries written before this field read as before.
        let old: SegmentIndex =
            serde_json::from_str(r#"{"first_commit_us":null,"last_commit_us":null,"records":0,"error":"x"}"#)
                .expect("old summary");
        assert_eq!(old.unsupported_magic, None);
    }
}
