//! Pure (no I/O) reader for the WAL segments of PostgreSQL 13 to 18.
//!
//! It walks the pages and records of WAL segment files, validates page
//! headers and record CRCs, decodes the record layout far enough to find the
//! main data, and extracts transaction commit/abort timestamps. Layouts follow
//! PostgreSQL's `xlog_internal.h`, `xlogrecord.h`, `xact.h` and
//! `xlogreader.c`; only little-endian WAL (every platform PostgreSQL ships on
//! in practice) with the default 8-byte MAXALIGN is supported.
//!
//! Majors: the first page's magic picks the major's
//! [`WalFormat`](crate::wal::layout::WalFormat) (what differs between majors is in
//! [`crate::wal::layout`]); every later page must carry the same magic. A magic of a major
//! the reader does not read is [`WalParseError::UnsupportedMajor`], which says what still
//! works.
//!
//! Segment boundaries: [`WalReader`] is fed whole, consecutive segments and
//! reassembles records that cross them. Whatever is fed first starts with the
//! tail of a record begun earlier (`xlp_rem_len` / `XLP_FIRST_IS_CONTRECORD`);
//! that tail is skipped, as pg_waldump does.
//!
//! End of WAL: a zero `xl_tot_len`, an all-zero page header, or a page whose
//! address is older than expected (a recycled segment) end the walk cleanly;
//! anything else malformed is an error naming the LSN.
//!
//! By job: `constants` (the on-disk constants every major shares), `decode` (page headers,
//! and one record's header, fragment headers with their block references, and CRC),
//! `reader` (page walking, continuation, consecutive segments), `xact` (commit and abort
//! records), `blocks` (the blocks and relation files a segment changes, its binary form, and
//! their merge over a range), `summary` (one segment's summary, and how it counts records
//! crossing the segment's edges), `error`; test-only, `synth` builds WAL and `fuzz` mutates it.

mod blocks;
mod constants;
mod decode;
mod error;
mod reader;
mod summary;
mod xact;

pub use blocks::{
    fork_is_fully_logged, BlockRefs, BlockRefsDecodeError, BlockSet, FullCopy, RelChange, RelFork, Unknown,
    UnknownReason, BLOCK_REFS_VERSION, FSM_FORK, INIT_FORK, MAIN_FORK, SMGR_TRUNCATE_FSM, SMGR_TRUNCATE_HEAP,
    SMGR_TRUNCATE_VM, VM_FORK,
};
pub use constants::{RM_DBASE_ID, RM_SMGR_ID, RM_TBLSPC_ID, RM_XACT_ID, RM_XLOG_ID};
pub use decode::{BlockRef, RelFileLocator, WalRecord};
pub(crate) use decode::{LongPageHeader, PageHeader};
pub use error::WalParseError;
pub use reader::{FeedOutcome, IncompleteRecord, StopReason, WalReader};
pub use summary::{summarize_segment, summarize_segment_at, SegmentSummarizer, SegmentSummary};
pub use xact::{pg_time_to_unix_us, xact_end_from_record, XactEnd, XactKind, PG_EPOCH_OFFSET_US};

use crate::wal::name::Segment;

/// Parse a WAL segment file name (`TTTTTTTTXXXXXXXXYYYYYYYY`) into (timeline, start LSN).
// Only the pg_waldump and majors integration tests call this; names are otherwise read with
// `wal::name::Segment`, which this wraps.
pub fn parse_segment_file_name(name: &str, wal_segment_size: u64) -> Option<(u32, u64)> {
    // PG writes these names in upper-case hex; insisting on that avoids
    // mistaking other files (e.g. lower-case temp names) for segments.
    if !name.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)) {
        return None;
    }
    let seg = Segment::parse(name, wal_segment_size).ok()?;
    Some((seg.timeline, seg.start_lsn(wal_segment_size).0))
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
pub(crate) mod synth;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        let m16 = 16 << 20;
        assert_eq!(parse_segment_file_name("000000010000000000000003", m16), Some((1, 3 * m16)));
        assert_eq!(parse_segment_file_name("00000002000000010000000A", m16), Some((2, 0x1_0000_0000 + 10 * m16)));
        assert_eq!(parse_segment_file_name("0000000100000000000000FF", m16), Some((1, 255 * m16)));
        assert_eq!(parse_segment_file_name("000000010000000000000100", m16), None);
        assert_eq!(parse_segment_file_name("00000001000000000000000a", m16), None);
        assert_eq!(parse_segment_file_name("000000010000000000000003.partial", m16), None);
        assert_eq!(parse_segment_file_name("000000010000000000000003", 3), None);
    }
}
