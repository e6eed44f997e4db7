//! Why WAL could not be read: every error names the LSN where it happened.

use std::fmt;

use super::constants::SIZE_OF_XLOG_RECORD;
use crate::wal::layout;
use crate::wal::name::Lsn;

/// Errors from walking or decoding WAL; every variant names where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WalParseError {
    /// The segment size is not a power of two between 1 MiB and 1 GiB.
    InvalidSegmentSize(u64),
    /// The segment bytes are not exactly one segment long.
    SegmentLength {
        /// Configured segment size.
        expected: u64,
        /// Length of the bytes given.
        actual: u64,
    },
    /// A segment was fed in pieces that are not whole pages (or without `begin_segment`).
    PieceMisaligned {
        /// Offset of the piece in the segment.
        offset: u64,
        /// Its length.
        len: usize,
    },
    /// WAL of a major the reader does not read: the first page's magic is none of 13–18's.
    UnsupportedMajor {
        /// LSN of the page.
        page_lsn: u64,
        /// Magic found.
        magic: u16,
    },
    /// A page header does not carry the magic of the segment's first page.
    BadPageMagic {
        /// LSN of the page.
        page_lsn: u64,
        /// Magic found.
        magic: u16,
    },
    /// A page header has undefined `xlp_info` bits.
    BadPageInfo {
        /// LSN of the page.
        page_lsn: u64,
        /// Flags found.
        info: u16,
    },
    /// The first page of a segment lacks the long header.
    MissingLongHeader {
        /// LSN of the page.
        page_lsn: u64,
    },
    /// The long header disagrees with the configured segment size or has an unusable block size.
    LongHeaderMismatch {
        /// LSN of the page.
        page_lsn: u64,
        /// `xlp_seg_size` found.
        seg_size: u32,
        /// `xlp_xlog_blcksz` found.
        blcksz: u32,
    },
    /// A page header's `xlp_pageaddr` is not where the page sits.
    BadPageAddress {
        /// Address the page should have.
        expected: u64,
        /// Address in the header.
        found: u64,
    },
    /// A page's timeline is lower than an earlier page's.
    TimelineRegressed {
        /// LSN of the page.
        page_lsn: u64,
        /// Timeline found.
        tli: u32,
        /// Timeline of the earlier page.
        previous: u32,
    },
    /// A segment fed to a [`WalReader`](super::WalReader) does not follow the previous one.
    NotConsecutive {
        /// Start LSN the next segment must have.
        expected: u64,
        /// Start LSN of the segment given.
        found: u64,
    },
    /// A record continues past a page, but the next page has no continuation flag.
    MissingContrecord {
        /// LSN of the record being reassembled.
        lsn: u64,
        /// LSN of the page lacking the flag.
        page_lsn: u64,
    },
    /// A page claims to continue a record although none is in progress.
    UnexpectedContrecord {
        /// LSN of the page.
        page_lsn: u64,
    },
    /// `xlp_rem_len` disagrees with what the record in progress still needs.
    BadContrecordLength {
        /// LSN of the record being reassembled (0 when skipping a foreign one).
        lsn: u64,
        /// LSN of the page.
        page_lsn: u64,
        /// `xlp_rem_len` found.
        rem_len: u32,
        /// Bytes the record still needs.
        expected: u64,
    },
    /// `xl_tot_len` is smaller than a record header.
    InvalidRecordLength {
        /// LSN of the record.
        lsn: u64,
        /// `xl_tot_len` found.
        len: u32,
    },
    /// `xl_rmid` is neither a built-in nor (PG15+) a custom resource manager.
    InvalidRmgr {
        /// LSN of the record.
        lsn: u64,
        /// `xl_rmid` found.
        rmid: u8,
    },
    /// `xl_prev` does not point at the previous record.
    BadPrevLink {
        /// LSN of the record.
        lsn: u64,
        /// `xl_prev` found.
        prev: u64,
        /// Previous record's LSN, when known.
        expected: Option<u64>,
    },
    /// The record's CRC-32C does not match its contents.
    Crc {
        /// LSN of the record.
        lsn: u64,
        /// `xl_crc` stored in the record.
        stored: u32,
        /// CRC computed over the record.
        computed: u32,
    },
    /// The block references / data headers of a record are inconsistent.
    BadRecordLayout {
        /// LSN of the record.
        lsn: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A transaction record's main data is malformed.
    BadXactRecord {
        /// LSN of the record.
        lsn: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// The record after an overwritten contrecord is not the matching `OVERWRITE_CONTRECORD`.
    BadOverwriteContrecord {
        /// LSN of the record found.
        lsn: u64,
        /// LSN of the abandoned record it must name.
        expected: u64,
        /// LSN it names, if it is an `OVERWRITE_CONTRECORD` at all.
        found: Option<u64>,
    },
    /// A segment was fed after the reader had already reached the end of WAL.
    PastEndOfWal {
        /// Where the WAL ended.
        end_lsn: u64,
    },
}

impl fmt::Display for WalParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use WalParseError as E;
        // LSNs as PostgreSQL prints a pg_lsn (16/B374D848).
        let l = Lsn;
        match self {
            E::InvalidSegmentSize(s) => write!(
                f,
                "invalid WAL segment size {s}: must be a power of two between 1 MiB and 1 GiB"
            ),
            E::SegmentLength { expected, actual } => {
                write!(f, "WAL segment is {actual} bytes, expected {expected}")
            }
            E::PieceMisaligned { offset, len } => {
                write!(f, "WAL segment fed in a piece of {len} bytes at offset {offset}: pieces must be whole pages")
            }
            // Said in the user's words: the summary carries it to `window` and `restore`.
            E::UnsupportedMajor { magic, .. } => f.write_str(&layout::unsupported_message(*magic)),
            E::BadPageMagic { page_lsn, magic } => write!(
                f,
                "invalid magic number {magic:04X} in WAL page at {} (not the magic of the first page's major)",
                l(*page_lsn)
            ),
            E::BadPageInfo { page_lsn, info } => {
                write!(f, "invalid info bits {info:04X} in WAL page at {}", l(*page_lsn))
            }
            E::MissingLongHeader { page_lsn } => {
                write!(f, "first page of WAL segment at {} lacks the long header", l(*page_lsn))
            }
            E::LongHeaderMismatch { page_lsn, seg_size, blcksz } => write!(
                f,
                "WAL segment at {} has segment size {seg_size} and block size {blcksz}, not usable with this reader's segment size",
                l(*page_lsn)
            ),
            E::BadPageAddress { expected, found } => write!(
                f,
                "unexpected page address {} in WAL page at {}",
                l(*found),
                l(*expected)
            ),
            E::TimelineRegressed { page_lsn, tli, previous } => write!(
                f,
                "out-of-sequence timeline ID {tli} (after {previous}) in WAL page at {}",
                l(*page_lsn)
            ),
            E::NotConsecutive { expected, found } => write!(
                f,
                "WAL segment starts at {}, but the next segment must start at {}",
                l(*found),
                l(*expected)
            ),
            E::MissingContrecord { lsn, page_lsn } => write!(
                f,
                "there is no contrecord flag at {} for the record at {}",
                l(*page_lsn),
                l(*lsn)
            ),
            E::UnexpectedContrecord { page_lsn } => write!(
                f,
                "WAL page at {} continues a record, but no record is in progress",
                l(*page_lsn)
            ),
            E::BadContrecordLength { lsn, page_lsn, rem_len, expected } => write!(
                f,
                "invalid contrecord length {rem_len} (expected {expected}) at {} for the record at {}",
                l(*page_lsn),
                l(*lsn)
            ),
            E::InvalidRecordLength { lsn, len } => write!(
                f,
                "invalid record length at {}: expected at least {SIZE_OF_XLOG_RECORD}, got {len}",
                l(*lsn)
            ),
            E::InvalidRmgr { lsn, rmid } => {
                write!(f, "invalid resource manager ID {rmid} at {}", l(*lsn))
            }
            E::BadPrevLink { lsn, prev, expected } => match expected {
                Some(e) => write!(
                    f,
                    "record with incorrect prev-link {} at {} (expected {})",
                    l(*prev),
                    l(*lsn),
                    l(*e)
                ),
                None => write!(f, "record with incorrect prev-link {} at {}", l(*prev), l(*lsn)),
            },
            E::Crc { lsn, stored, computed } => write!(
                f,
                "incorrect record CRC at {}: stored {stored:08X}, computed {computed:08X}",
                l(*lsn)
            ),
            E::BadRecordLayout { lsn, reason } => {
                write!(f, "malformed WAL record at {}: {reason}", l(*lsn))
            }
            E::BadXactRecord { lsn, reason } => {
                write!(f, "malformed transaction record at {}: {reason}", l(*lsn))
            }
            E::BadOverwriteContrecord { lsn, expected, found } => match found {
                Some(x) => write!(
                    f,
                    "OVERWRITE_CONTRECORD at {} names {}, but the abandoned record is at {}",
                    l(*lsn),
                    l(*x),
                    l(*expected)
                ),
                None => write!(
                    f,
                    "record at {} follows an overwritten contrecord but is not OVERWRITE_CONTRECORD (abandoned record at {})",
                    l(*lsn),
                    l(*expected)
                ),
            },
            E::PastEndOfWal { end_lsn } => write!(
                f,
                "segment fed after the end of WAL at {}",
                l(*end_lsn)
            ),
        }
    }
}

impl std::error::Error for WalParseError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_print_lsns_as_postgresql_does() {
        let e = WalParseError::UnexpectedContrecord { page_lsn: 0x16_B374_D848 };
        assert_eq!(e.to_string(), "WAL page at 16/B374D848 continues a record, but no record is in progress");
        let e = WalParseError::PastEndOfWal { end_lsn: 0x0150_0028 };
        assert_eq!(e.to_string(), "segment fed after the end of WAL at 0/1500028");
    }
}
