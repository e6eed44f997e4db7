//! The summary of one segment: its commits and aborts, its commit-time range, and where it
//! joins its neighbours.
//!
//! A record that begins in a segment summarised on its own ([`summarize_segment`]) but
//! continues past its end is not counted in `records` and is reported in `incomplete`. If it
//! is a commit/abort whose header, fragment headers and `xact_time` are present, it is still
//! listed in `xact_ends` (and in the commit range) with `crc_verified: false`: summarising the
//! next segment alone skips it as leading continuation data, so otherwise it would be lost. A
//! record cut off by the end of WAL (zero or stale page) is a torn write that never committed
//! and is not listed.

use super::blocks::{BlockRefs, Builder};
use super::reader::{IncompleteRecord, StopReason, WalReader};
use super::xact::{xact_end_from_record, XactEnd};
use super::WalParseError;

/// Summary of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    /// Earliest commit timestamp (min, not first in LSN order: concurrent commits log slightly out of order).
    pub first_commit_us: Option<i64>,
    /// Latest commit timestamp (max over commits in the segment).
    pub last_commit_us: Option<i64>,
    /// Commits and aborts in LSN order, including an unverified one cut off at the segment end.
    pub xact_ends: Vec<XactEnd>,
    /// Complete records that start in this segment (pg_waldump's count for the file).
    pub records: usize,
    /// LSN just past the last complete record (not MAXALIGNed).
    pub last_record_end_lsn: Option<u64>,
    /// Start LSN of the segment (None only for an all-zero segment).
    pub segment_start_lsn: Option<u64>,
    /// Why the walk stopped.
    pub stop: StopReason,
    /// A record begun in this segment that continues past its end (or past the end of WAL).
    pub incomplete: Option<IncompleteRecord>,
    /// Records abandoned because of `XLP_FIRST_IS_OVERWRITE_CONTRECORD`.
    pub overwritten: Vec<u64>,
    /// Where this segment joins the one before: the first record that starts in it (LSN,
    /// `xl_prev`), complete or continuing into the next segment.
    pub first_record: Option<(u64, u64)>,
    /// LSN of the last record that starts in this segment (the next segment's first record
    /// must point back at it).
    pub last_record_lsn: Option<u64>,
    /// LSN of the last complete record that starts in this segment.
    pub last_complete_lsn: Option<u64>,
    /// The blocks and relation files the records starting in this segment change.
    pub block_refs: BlockRefs,
}

/// Walk one segment file's bytes (segment_size = its length, normally 16 MiB; must be a power of two between 1 MiB and 1 GiB).
// See the module docs for how records crossing the segment's edges are counted.
pub fn summarize_segment(bytes: &[u8], wal_segment_size: u64) -> Result<SegmentSummary, WalParseError> {
    summarize_with(WalReader::new(wal_segment_size)?, bytes)
}

/// Like [`summarize_segment`], but the segment must start at `segment_start_lsn` (e.g. from its file name).
pub fn summarize_segment_at(
    bytes: &[u8],
    wal_segment_size: u64,
    segment_start_lsn: u64,
) -> Result<SegmentSummary, WalParseError> {
    summarize_with(WalReader::starting_at(wal_segment_size, segment_start_lsn)?, bytes)
}

fn summarize_with(reader: WalReader, bytes: &[u8]) -> Result<SegmentSummary, WalParseError> {
    if bytes.len() as u64 != reader.segment_size() {
        return Err(WalParseError::SegmentLength { expected: reader.segment_size(), actual: bytes.len() as u64 });
    }
    let mut s = SegmentSummarizer::new(reader)?;
    s.feed(bytes)?;
    s.finish()
}

/// Summarizes one segment fed in whole-page pieces (see [`WalReader::feed_pages`]).
#[derive(Debug)]
pub struct SegmentSummarizer {
    reader: WalReader,
    xact_ends: Vec<XactEnd>,
    first_err: Option<WalParseError>,
    /// First complete record (LSN, `xl_prev`).
    first: Option<(u64, u64)>,
    /// Last complete record's LSN.
    last: Option<u64>,
    blocks: Builder,
}

impl SegmentSummarizer {
    /// A summarizer for the segment starting at `segment_start_lsn`.
    pub fn starting_at(wal_segment_size: u64, segment_start_lsn: u64) -> Result<Self, WalParseError> {
        Self::new(WalReader::starting_at(wal_segment_size, segment_start_lsn)?)
    }

    fn new(mut reader: WalReader) -> Result<Self, WalParseError> {
        reader.begin_segment()?;
        Ok(SegmentSummarizer {
            reader,
            xact_ends: Vec::new(),
            first_err: None,
            first: None,
            last: None,
            blocks: Builder::default(),
        })
    }

    /// Feeds the next whole pages of the segment.
    pub fn feed(&mut self, piece: &[u8]) -> Result<(), WalParseError> {
        let (ends, first_err) = (&mut self.xact_ends, &mut self.first_err);
        let (first, last, blocks) = (&mut self.first, &mut self.last, &mut self.blocks);
        self.reader.feed_pages(piece, |rec| {
            first.get_or_insert((rec.lsn, rec.xl_prev));
            *last = Some(rec.lsn);
            blocks.record(rec);
            match xact_end_from_record(rec) {
                Ok(Some(end)) => ends.push(end),
                Ok(None) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        })
    }

    /// The summary, once the whole segment was fed.
    pub fn finish(mut self) -> Result<SegmentSummary, WalParseError> {
        let out = self.reader.finish_segment()?;
        if let Some(e) = self.first_err {
            return Err(e);
        }
        let mut xact_ends = self.xact_ends;
        // Only a record that may continue into the next segment is reported
        // (pending_xact_end refuses one torn by the end of WAL).
        if let Some(end) = self.reader.pending_xact_end() {
            xact_ends.push(end);
        }
        let commits = xact_ends.iter().filter(|e| e.kind.is_commit()).map(|e| e.time_us);
        let first_commit_us = commits.clone().min();
        let last_commit_us = commits.max();
        // A record still open at the segment's end started here (the walk skips the
        // continuation of one begun in the previous segment).
        let pending = self.reader.pending_record().map(|p| p.lsn);
        let first_record = self.first.or_else(|| Some((pending?, self.reader.pending_record_prev()?)));
        let last_record_lsn = pending.or(self.last);
        let start = out.segment_start_lsn;
        let block_refs = self.blocks.finish(
            start.unwrap_or(0),
            start.map_or(0, |s| s + self.reader.segment_size()),
            self.reader.pending_bytes(),
            self.reader.format(),
            self.reader.leading_continuation(),
        );
        Ok(SegmentSummary {
            first_commit_us,
            last_commit_us,
            xact_ends,
            records: out.records,
            last_record_end_lsn: self.reader.last_record_end_lsn(),
            segment_start_lsn: out.segment_start_lsn,
            stop: out.stop,
            incomplete: self.reader.pending_record(),
            overwritten: out.overwritten,
            first_record,
            last_record_lsn,
            last_complete_lsn: self.last,
            block_refs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::name::Lsn;
    use crate::wal::record::constants::*;
    use crate::wal::record::synth::*;
    use crate::wal::record::*;

    #[test]
    fn roundtrip_blocks_xacts_and_page_splits() {
        let mut b = WalBuilder::new(1);
        let mut expect_main: Vec<(u64, Vec<u8>)> = Vec::new();
        let heap_main = vec![3u8; 30];
        let frags = [
            Frag::Block {
                id: 0,
                fork_flags: BKPBLOCK_HAS_IMAGE | BKPBLOCK_HAS_DATA,
                data: vec![1; 40],
                // uncompressed, with hole: 8192 - 1000 bytes stored
                image: Some((vec![0x55; 7192], 200, BKPIMAGE_HAS_HOLE | 0x02, None)),
            },
            Frag::Block {
                id: 2,
                fork_flags: BKPBLOCK_HAS_IMAGE | BKPBLOCK_SAME_REL,
                data: vec![],
                // PGLZ-compressed with hole: explicit hole length follows
                image: Some((vec![0x66; 900], 300, BKPIMAGE_HAS_HOLE | 0x04, Some(500))),
            },
            Frag::Block {
                id: 3,
                fork_flags: BKPBLOCK_HAS_IMAGE | BKPBLOCK_SAME_REL,
                data: vec![],
                // full page without hole
                image: Some((vec![0x77; 8192], 0, 0x02, None)),
            },
            Frag::Block {
                id: 4,
                fork_flags: BKPBLOCK_HAS_IMAGE | BKPBLOCK_SAME_REL,
                data: vec![],
                // LZ4-compressed without hole: no hole length stored
                image: Some((vec![0x88; 100], 0, 0x08, None)),
            },
        ];
        let l = b.add(900, 0x00, 10, &frags, &heap_main);
        expect_main.push((l, heap_main));
        let c1 = b.commit(900, 1_000_000);
        expect_main.push((c1, xact_main(1_000_000, None)));
        let sub = [1u32.to_le_bytes(), 901u32.to_le_bytes()].concat();
        let abort_main = xact_main(2_000_000, Some((XACT_XINFO_HAS_SUBXACTS, &sub)));
        let a1 = b.add(902, XLOG_XACT_ABORT | XLOG_XACT_HAS_INFO, RM_XACT_ID, &[Frag::Origin(3)], &abort_main);
        expect_main.push((a1, abort_main));

        // Commit prepared carrying every optional section before the two-phase xid.
        let mut sections = Vec::new();
        sections.extend([5u8; 8]); // dbinfo
        sections.extend(2i32.to_le_bytes());
        sections.extend([6u8; 8]); // 2 subxacts
        sections.extend(1i32.to_le_bytes());
        sections.extend([7u8; 12]); // 1 relfilenode
        sections.extend(1i32.to_le_bytes());
        sections.extend([8u8; 12]); // 1 dropped stats item
        sections.extend(2i32.to_le_bytes());
        sections.extend([9u8; 32]); // 2 invalidation messages
        sections.extend(777u32.to_le_bytes()); // twophase xid
        sections.extend(b"gid\0");
        let xinfo = XACT_XINFO_HAS_DBINFO
            | XACT_XINFO_HAS_SUBXACTS
            | XACT_XINFO_HAS_RELFILENODES
            | XACT_XINFO_HAS_DROPPED_STATS
            | XACT_XINFO_HAS_INVALS
            | XACT_XINFO_HAS_TWOPHASE
            | (1 << 7);
        let cp_main = xact_main(3_000_000, Some((xinfo, &sections)));
        let cp = b.add(0, XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_HAS_INFO, RM_XACT_ID, &[], &cp_main);
        // Abort records have no invalidation section: the xid follows the rels.
        let mut ap_sections = Vec::new();
        ap_sections.extend(1i32.to_le_bytes());
        ap_sections.extend([7u8; 12]);
        ap_sections.extend(778u32.to_le_bytes());
        let ap_main = xact_main(
            4_000_000,
            Some((XACT_XINFO_HAS_RELFILENODES | XACT_XINFO_HAS_TWOPHASE | XACT_XINFO_HAS_INVALS, &ap_sections)),
        );
        let ap = b.add(0, XLOG_XACT_ABORT_PREPARED | XLOG_XACT_HAS_INFO, RM_XACT_ID, &[Frag::Toplevel(5)], &ap_main);
        // PREPARE is not a transaction end.
        b.add(779, 0x10, RM_XACT_ID, &[], &[0u8; 64]);

        // A 20 kB record spanning three pages.
        let big = vec![0x42u8; 20_000];
        let lbig = b.add(0, 0, 21, &[], &big);
        expect_main.push((lbig, big));

        // Record headers split across page boundaries (16 and 8 bytes on the first page).
        b.pad_to((b.pos / PAGE as u64 + 1) * PAGE as u64 - 16);
        let c2 = b.commit(903, 5_000_000);
        b.pad_to((b.pos / PAGE as u64 + 1) * PAGE as u64 - 8);
        let c3 = b.commit(904, 6_000_000);
        // Record ending exactly at a page end, next record after the next header.
        b.pad_to((b.pos / PAGE as u64 + 1) * PAGE as u64 - 40);
        let c4 = b.add(905, 0, RM_XACT_ID, &[], &xact_main(500_000, None).repeat(1));
        let end = b.pos;

        let s = summarize_segment(b.segment(0), SEG).unwrap();
        let kinds: Vec<(u64, u32, XactKind, i64, bool)> =
            s.xact_ends.iter().map(|e| (e.lsn, e.xid, e.kind, e.time_us, e.crc_verified)).collect();
        assert_eq!(
            kinds,
            vec![
                (c1, 900, XactKind::Commit, 1_000_000, true),
                (a1, 902, XactKind::Abort, 2_000_000, true),
                (cp, 777, XactKind::CommitPrepared, 3_000_000, true),
                (ap, 778, XactKind::AbortPrepared, 4_000_000, true),
                (c2, 903, XactKind::Commit, 5_000_000, true),
                (c3, 904, XactKind::Commit, 6_000_000, true),
                (c4, 905, XactKind::Commit, 500_000, true),
            ]
        );
        assert_eq!(s.first_commit_us, Some(500_000));
        assert_eq!(s.last_commit_us, Some(6_000_000));
        assert_eq!(s.segment_start_lsn, Some(START));
        // c4 ends 6 bytes before a page end and nothing follows: the next page is zero.
        assert_eq!(c4 + 34 + 6, end);
        assert_eq!(s.stop, StopReason::ZeroPage { page_lsn: Some(end) });
        assert!(s.stop.is_end_of_wal());
        assert_eq!(s.incomplete, None);
        assert_eq!(s.last_record_end_lsn, Some(c4 + 34));

        let mut r = WalReader::new(SEG).unwrap();
        let (out, recs) = collect(&mut r, b.segment(0));
        assert_eq!(out.records, s.records);
        assert_eq!(recs.len(), s.records);
        for (lsn, main) in &expect_main {
            let got = recs.iter().find(|x| x.0 == *lsn).expect("record decoded");
            assert_eq!(&got.3, main, "main data of record at {}", Lsn(*lsn));
        }
        assert_eq!(r.end_of_wal(), Some(end));
        assert_eq!(r.feed_segment(b.segment(0), |_| {}), Err(WalParseError::PastEndOfWal { end_lsn: end }));
    }

    #[test]
    fn truncated_record_at_end_of_wal_is_incomplete_not_error() {
        // A large commit whose continuation page was never written: a torn
        // write that did not commit, so it must not be reported.
        let mut b = WalBuilder::new(1);
        b.commit(1, 10);
        b.pad_to((b.pos / PAGE as u64 + 1) * PAGE as u64 - 200);
        let mut inval = 600i32.to_le_bytes().to_vec();
        inval.extend([0x44u8; 600 * 16]);
        let main = xact_main(77, Some((XACT_XINFO_HAS_INVALS, &inval)));
        let t = b.torn(XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, RM_XACT_ID, &main);
        b.next_page_flags = 0;
        let s = summarize_segment(b.segment(0), SEG).unwrap();
        assert_eq!(s.records, 2);
        assert_eq!(s.xact_ends.iter().map(|e| e.time_us).collect::<Vec<_>>(), vec![10]);
        let page = (t / PAGE as u64 + 1) * PAGE as u64;
        assert_eq!(s.stop, StopReason::ZeroPage { page_lsn: Some(page) });
        let inc = s.incomplete.unwrap();
        assert_eq!(inc.lsn, t);
        assert_eq!(u64::from(inc.bytes_present), page - t);
    }

    #[test]
    fn records_across_segments_and_whole_segment_continuation() {
        let mut b = WalBuilder::new(4);
        let c0 = b.commit(1, 11);
        // One record covering the rest of segment 0, all of segment 1 and part of segment 2.
        let huge_main = vec![0x5Au8; (2 * SEG + SEG / 4) as usize];
        let huge = b.add(0, 0, 21, &[], &huge_main);
        let c1 = b.commit(2, 22);
        // A DDL-sized commit straddling the 2/3 boundary with xact_time on segment 2.
        let filler = b.pad_to(START + 3 * SEG - 48).unwrap();
        let mut inval = Vec::new();
        inval.extend(20i32.to_le_bytes());
        inval.extend([0x44u8; 20 * 16]);
        let straddle_main = xact_main(33, Some((XACT_XINFO_HAS_INVALS, &inval)));
        let straddle = b.add(3, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, RM_XACT_ID, &[], &straddle_main);
        let c3 = b.commit(4, 44);

        // Streaming: everything is decoded, including both boundary-crossing records.
        let mut r = WalReader::new(SEG).unwrap();
        let mut all = Vec::new();
        let mut outs = Vec::new();
        for i in 0..4 {
            let (out, recs) = collect(&mut r, b.segment(i));
            outs.push(out);
            all.extend(recs);
        }
        let lsns: Vec<u64> = all.iter().map(|x| x.0).collect();
        assert_eq!(lsns, vec![c0, huge, c1, filler, straddle, c3]);
        assert_eq!(all[1].3, huge_main);
        assert_eq!(all[4].3, straddle_main);
        assert_eq!(outs[1].records, 0);
        assert_eq!(outs[1].stop, StopReason::SegmentEnd);
        assert_eq!(outs[3].stop, StopReason::ZeroTail { lsn: b.pos });

        // One segment at a time: segment 1 is all continuation.
        let s1 = summarize_segment(b.segment(1), SEG).unwrap();
        assert_eq!((s1.records, s1.xact_ends.len(), s1.stop), (0, 0, StopReason::SegmentEnd));
        assert_eq!(s1.incomplete, None);
        // Segment 2 skips the huge record's tail and reports the straddling commit unverified.
        let s2 = summarize_segment(b.segment(2), SEG).unwrap();
        assert_eq!(s2.records, 2, "huge record's tail skipped; c1 and the padding filler counted");
        assert_eq!(
            s2.xact_ends,
            vec![
                XactEnd { lsn: c1, xid: 2, kind: XactKind::Commit, time_us: 22, crc_verified: true },
                XactEnd { lsn: straddle, xid: 3, kind: XactKind::Commit, time_us: 33, crc_verified: false },
            ]
        );
        assert_eq!(s2.last_commit_us, Some(33));
        let inc = s2.incomplete.unwrap();
        assert_eq!((inc.lsn, inc.bytes_present, inc.xl_tot_len as usize), (straddle, 48, 24 + 5 + straddle_main.len()));
        // Segment 3 skips the straddling commit's tail.
        let s3 = summarize_segment(b.segment(3), SEG).unwrap();
        assert_eq!(s3.xact_ends.iter().map(|e| e.lsn).collect::<Vec<_>>(), vec![c3]);
        // Segment 0 ends inside the huge record.
        let s0 = summarize_segment(b.segment(0), SEG).unwrap();
        assert_eq!(s0.records, 1);
        assert_eq!(s0.incomplete.map(|i| i.lsn), Some(huge));

        // Where each segment joins its predecessor: the first record starting in it points
        // back at the last record starting before it (a segment of pure continuation has none).
        assert_eq!(s0.first_record, Some((c0, START - 200)));
        assert_eq!(s0.last_record_lsn, Some(huge), "an open record at the end is the last start");
        assert_eq!((s1.first_record, s1.last_record_lsn), (None, None));
        assert_eq!(s2.first_record, Some((c1, huge)));
        assert_eq!(s2.last_record_lsn, Some(straddle));
        assert_eq!(s3.first_record, Some((c3, straddle)));
        assert_eq!(s3.last_record_lsn, Some(c3));
        assert_eq!(
            (s0.last_complete_lsn, s2.last_complete_lsn, s3.last_complete_lsn),
            (Some(c0), Some(filler), Some(c3))
        );
    }

    #[test]
    fn straddling_commit_without_full_timestamp_is_not_counted() {
        let mut b = WalBuilder::new(2);
        b.pad_to(START + SEG - 32);
        // 24-byte header + 2-byte data header + 6 of 8 timestamp bytes in segment 0.
        b.commit(1, 99);
        let s = summarize_segment(b.segment(0), SEG).unwrap();
        assert!(s.xact_ends.is_empty());
        assert_eq!(s.incomplete.map(|i| i.bytes_present), Some(32));
    }
}
