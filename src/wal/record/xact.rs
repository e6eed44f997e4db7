//! Transaction records: how a commit or abort (plain or two-phase) ends a transaction, and
//! when (`xl_xact_commit` / `xl_xact_abort` in `xact.h`, walked as `ParseCommitRecord` does).

use super::constants::{
    RM_XACT_ID, SIZE_OF_REL_FILE_NODE, SIZE_OF_SHARED_INVAL_MSG, XACT_XINFO_HAS_DBINFO, XACT_XINFO_HAS_DROPPED_STATS,
    XACT_XINFO_HAS_INVALS, XACT_XINFO_HAS_RELFILENODES, XACT_XINFO_HAS_SUBXACTS, XACT_XINFO_HAS_TWOPHASE,
    XLOG_XACT_ABORT, XLOG_XACT_ABORT_PREPARED, XLOG_XACT_COMMIT, XLOG_XACT_COMMIT_PREPARED, XLOG_XACT_HAS_INFO,
    XLOG_XACT_OPMASK,
};
use super::decode::{decode_layout, le_u32, le_u64, RecordHeader, RelFileLocator, WalRecord};
use super::WalParseError;
use crate::wal::layout::WalFormat;

/// Microseconds between the Unix epoch and the PostgreSQL epoch (2000-01-01 UTC).
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// Convert PostgreSQL timestamp (us since 2000-01-01) to unix microseconds.
pub fn pg_time_to_unix_us(t: i64) -> i64 {
    // Saturate: PG's +/-infinity sentinels are i64::MAX/MIN and must not panic.
    t.saturating_add(PG_EPOCH_OFFSET_US)
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum XactKind {
    /// `XLOG_XACT_COMMIT`.
    Commit,
    /// `XLOG_XACT_ABORT`.
    Abort,
    /// `XLOG_XACT_COMMIT_PREPARED`.
    CommitPrepared,
    /// `XLOG_XACT_ABORT_PREPARED`.
    AbortPrepared,
}

impl XactKind {
    /// Map a transaction record's `xl_info` to its kind, if it ends a transaction.
    pub fn from_info(xl_info: u8) -> Option<Self> {
        match xl_info & XLOG_XACT_OPMASK {
            XLOG_XACT_COMMIT => Some(XactKind::Commit),
            XLOG_XACT_ABORT => Some(XactKind::Abort),
            XLOG_XACT_COMMIT_PREPARED => Some(XactKind::CommitPrepared),
            XLOG_XACT_ABORT_PREPARED => Some(XactKind::AbortPrepared),
            // PREPARE, ASSIGNMENT and INVALIDATIONS do not end a transaction.
            _ => None,
        }
    }

    /// Whether the transaction committed.
    pub fn is_commit(self) -> bool {
        matches!(self, XactKind::Commit | XactKind::CommitPrepared)
    }

    /// The name pg_waldump prints for this record type.
    pub fn as_str(self) -> &'static str {
        match self {
            XactKind::Commit => "COMMIT",
            XactKind::Abort => "ABORT",
            XactKind::CommitPrepared => "COMMIT_PREPARED",
            XactKind::AbortPrepared => "ABORT_PREPARED",
        }
    }
}

/// A transaction end found in WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct XactEnd {
    /// Start LSN of the record.
    pub lsn: u64,
    /// Transaction id: the prepared transaction's xid for `*Prepared`, else `xl_xid`.
    pub xid: u32,
    /// Commit, abort, or their two-phase variants.
    pub kind: XactKind,
    /// PostgreSQL timestamp: microseconds since 2000-01-01 UTC.
    pub time_us: i64,
    /// False only for a record cut off at the segment end, whose CRC could not be checked.
    pub crc_verified: bool,
}

/// Extract the transaction end from a decoded record, if it is one.
pub fn xact_end_from_record(rec: &WalRecord<'_>) -> Result<Option<XactEnd>, WalParseError> {
    if rec.xl_rmid != RM_XACT_ID {
        return Ok(None);
    }
    let Some(kind) = XactKind::from_info(rec.xl_info) else {
        return Ok(None);
    };
    parse_xact_end(rec.lsn, rec.xl_xid, rec.xl_info, kind, rec.main_data, true, rec.format).map(Some)
}

/// Unverified commit/abort from the start of a record cut off at a segment end (`buf` holds
/// its first bytes, `tot_len` all of them), if its header and `xact_time` are present.
pub(super) fn xact_end_from_partial(lsn: u64, tot_len: u32, buf: &[u8], fmt: &WalFormat) -> Option<XactEnd> {
    let hdr = RecordHeader::parse(buf)?;
    if hdr.rmid != RM_XACT_ID {
        return None;
    }
    let kind = XactKind::from_info(hdr.info)?;
    let layout = decode_layout(buf, tot_len as usize, fmt, |_| {}).ok()?;
    let end = (layout.main_start + layout.main_len).min(buf.len());
    let main = buf.get(layout.main_start..end)?;
    parse_xact_end(lsn, hdr.xid, hdr.info, kind, main, false, fmt).ok()
}

/// Parse `xl_xact_commit` / `xl_xact_abort` main data (possibly only a prefix of it).
// With `complete == false`, `main` may be cut short: the timestamp is still
// required, but a two-phase xid lying beyond the cut falls back to `xl_xid`.
fn parse_xact_end(
    lsn: u64,
    xl_xid: u32,
    xl_info: u8,
    kind: XactKind,
    main: &[u8],
    complete: bool,
    fmt: &WalFormat,
) -> Result<XactEnd, WalParseError> {
    let bad = |reason| WalParseError::BadXactRecord { lsn, reason };
    // xact_time (TimestampTz) is the first field of both commit and abort records.
    let time_us = le_u64(main, 0).ok_or(bad("main data shorter than xact_time"))? as i64;
    let xid = match twophase_xid(xl_info, kind, main, fmt) {
        Ok(Some(x)) => x,
        Ok(None) => xl_xid,
        Err(reason) if complete => return Err(bad(reason)),
        // Partial record: the optional sections may lie past the segment end.
        Err(_) => xl_xid,
    };
    Ok(XactEnd { lsn, xid, kind, time_us, crc_verified: complete })
}

/// Walk a commit/abort record's optional sections (ParseCommitRecord order) to find `xl_xact_twophase.xid`.
fn twophase_xid(xl_info: u8, kind: XactKind, main: &[u8], fmt: &WalFormat) -> Result<Option<u32>, &'static str> {
    if xl_info & XLOG_XACT_HAS_INFO == 0 {
        return Ok(None);
    }
    const SHORT: &str = "main data shorter than its xinfo sections";
    let xinfo = le_u32(main, 8).ok_or(SHORT)?;
    let mut pos: usize = 12;
    // Each counted section is an int count followed by fixed-size items.
    let counted = |pos: &mut usize, item: usize| -> Result<(), &'static str> {
        let n = le_u32(main, *pos).ok_or(SHORT)? as i32;
        let n = usize::try_from(n).map_err(|_| "negative item count in xact record")?;
        *pos =
            n.checked_mul(item).and_then(|b| b.checked_add(*pos + 4)).filter(|&end| end <= main.len()).ok_or(SHORT)?;
        Ok(())
    };
    if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        pos += 8; // dbId, tsId
    }
    if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        counted(&mut pos, 4)?;
    }
    if xinfo & XACT_XINFO_HAS_RELFILENODES != 0 {
        counted(&mut pos, SIZE_OF_REL_FILE_NODE)?;
    }
    // Before 15 the bit is unused, so it is never set.
    if let (true, Some(item)) = (xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0, fmt.xact_stats_item_size) {
        counted(&mut pos, item)?;
    }
    // Abort records never carry invalidation messages.
    if kind.is_commit() && xinfo & XACT_XINFO_HAS_INVALS != 0 {
        counted(&mut pos, SIZE_OF_SHARED_INVAL_MSG)?;
    }
    if xinfo & XACT_XINFO_HAS_TWOPHASE == 0 {
        return Ok(None);
    }
    le_u32(main, pos).map(Some).ok_or(SHORT)
}

/// The relations a commit or abort record drops (`xl_xact_relfilelocators`, the files
/// removed at commit or abort), from its main data; empty when it drops none.
///
/// `main` may be only a prefix of the main data (a record cut off at a segment end): the
/// relations are found as long as their section is present.
pub(super) fn xact_dropped_rels(xl_info: u8, main: &[u8]) -> Result<Vec<RelFileLocator>, &'static str> {
    if xl_info & XLOG_XACT_HAS_INFO == 0 {
        return Ok(Vec::new());
    }
    const SHORT: &str = "main data shorter than its xinfo sections";
    let xinfo = le_u32(main, 8).ok_or(SHORT)?;
    let mut pos: usize = 12;
    if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        pos += 8;
    }
    if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        let n = usize::try_from(le_u32(main, pos).ok_or(SHORT)? as i32)
            .map_err(|_| "negative item count in xact record")?;
        pos = n.checked_mul(4).and_then(|b| b.checked_add(pos + 4)).ok_or(SHORT)?;
    }
    if xinfo & XACT_XINFO_HAS_RELFILENODES == 0 {
        return Ok(Vec::new());
    }
    let n =
        usize::try_from(le_u32(main, pos).ok_or(SHORT)? as i32).map_err(|_| "negative item count in xact record")?;
    let start = pos + 4;
    let end = n.checked_mul(SIZE_OF_REL_FILE_NODE).and_then(|b| b.checked_add(start)).ok_or(SHORT)?;
    let items = main.get(start..end).ok_or(SHORT)?;
    Ok(items.chunks_exact(SIZE_OF_REL_FILE_NODE).filter_map(|c| RelFileLocator::parse(c, 0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_convert_to_unix_and_saturate() {
        assert_eq!(pg_time_to_unix_us(0), 946_684_800_000_000);
        assert_eq!(pg_time_to_unix_us(i64::MAX), i64::MAX);
    }
}
