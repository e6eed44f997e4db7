//! Pure (no I/O) reader for the WAL segments of PostgreSQL 13 to 18.
//!
//! It walks the pages and records of WAL segment files, validates page
//! headers and record CRCs, decodes the record layout far enough to find the
//! main data, and extracts transaction commit/abort timestamps. Layouts follow
//! PostgreSQL's `xlog_internal.h`, `xlogrecord.h`, `xact.h` and
//! `xlogreader.c`; only little-endian WAL (every platform PostgreSQL ships on
//! in practice) with the default 8-byte MAXALIGN is supported.
//!
//! Majors: the first page's magic picks the major's [`WalFormat`] (what differs
//! between majors is in [`crate::wal::layout`]); every later page must carry the
//! same magic. A magic of a major the reader does not read is
//! [`WalParseError::UnsupportedMajor`], which says what still works.
//!
//! Segment boundaries: [`WalReader`] is fed whole, consecutive segments and
//! reassembles records that cross them. Whatever is fed first starts with the
//! tail of a record begun earlier (`xlp_rem_len` / `XLP_FIRST_IS_CONTRECORD`);
//! that tail is skipped, as pg_waldump does.
//!
//! A record that begins in a segment summarised on its own
//! ([`summarize_segment`]) but continues past its end is not counted in
//! `records` and is reported in `incomplete`. If it is a commit/abort whose
//! header, fragment headers and `xact_time` are present, it is still listed
//! in `xact_ends` (and in the commit range) with `crc_verified: false`:
//! summarising the next segment alone skips it as leading continuation data,
//! so otherwise it would be lost. A record cut off by the end of WAL (zero or
//! stale page) is a torn write that never committed and is not listed.
//!
//! End of WAL: a zero `xl_tot_len`, an all-zero page header, or a page whose
//! address is older than expected (a recycled segment) end the walk cleanly;
//! anything else malformed is an error naming the LSN.

use std::fmt;

use crate::wal::layout::{self, WalFormat};

/// Page magic of PostgreSQL 15 WAL (`XLOG_PAGE_MAGIC`); other majors are in [`layout`].
pub const XLOG_PAGE_MAGIC: u16 = 0xD110;
/// Resource manager id of the XLOG rmgr (`RM_XLOG_ID`).
pub const RM_XLOG_ID: u8 = 0;
/// Resource manager id of transaction records (`RM_XACT_ID`).
pub const RM_XACT_ID: u8 = 1;
/// Smallest valid WAL segment size (1 MiB).
pub const MIN_WAL_SEGMENT_SIZE: u64 = 1 << 20;
/// Largest valid WAL segment size (1 GiB).
pub const MAX_WAL_SEGMENT_SIZE: u64 = 1 << 30;
/// Microseconds between the Unix epoch and the PostgreSQL epoch (2000-01-01 UTC).
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// `SizeOfXLogRecord`: offsetof(xl_crc) + 4, not MAXALIGNed in PG >= 9.5.
const SIZE_OF_XLOG_RECORD: usize = 24;
/// Offset of `xl_crc` inside `XLogRecord`; the CRC covers the header up to here.
const XL_CRC_OFFSET: usize = 20;
/// `SizeOfXLogShortPHD`: MAXALIGN(sizeof(XLogPageHeaderData)) = MAXALIGN(20).
const SIZE_OF_SHORT_PHD: usize = 24;
/// `SizeOfXLogLongPHD`: MAXALIGN(sizeof(XLogLongPageHeaderData)) = 40.
const SIZE_OF_LONG_PHD: usize = 40;
/// Records and page headers are MAXALIGNed to this many bytes.
const MAXALIGN: u64 = 8;

const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
const XLP_ALL_FLAGS: u16 = 0x000F;

/// PG15's last built-in rmgr is RM_LOGICALMSG_ID (21); 128..=255 are custom.
/// `RM_MIN_CUSTOM_ID` (PG15+; the highest built-in id is per major, in [`layout`]).
const RM_MIN_CUSTOM_ID: u8 = 128;
const XLR_RMGR_INFO_MASK: u8 = 0xF0;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;

const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;

const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_HAS_DATA: u8 = 0x20;
const BKPBLOCK_SAME_REL: u8 = 0x80;
const BKPIMAGE_HAS_HOLE: u8 = layout::BKPIMAGE_HAS_HOLE;
/// `sizeof(RelFileNode)`: spcNode, dbNode, relNode.
const SIZE_OF_REL_FILE_NODE: usize = 12;

const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_ABORT: u8 = 0x20;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
const XLOG_XACT_HAS_INFO: u8 = 0x80;
const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
const XACT_XINFO_HAS_RELFILENODES: u32 = 1 << 2;
const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
/// PG15+ (its item size is per major, in [`layout`]).
const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;
/// `sizeof(SharedInvalidationMessage)`.
const SIZE_OF_SHARED_INVAL_MSG: usize = 16;

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
    /// A segment fed to a [`WalReader`] does not follow the previous one.
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
        let l = format_lsn;
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

/// Format an LSN the way PostgreSQL prints `pg_lsn` (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    crate::wal::name::Lsn(lsn).to_string()
}

/// Convert PostgreSQL timestamp (us since 2000-01-01) to unix microseconds.
pub fn pg_time_to_unix_us(t: i64) -> i64 {
    // Saturate: PG's +/-infinity sentinels are i64::MAX/MIN and must not panic.
    t.saturating_add(PG_EPOCH_OFFSET_US)
}

/// Check that a segment size is a power of two between 1 MiB and 1 GiB.
pub fn validate_segment_size(wal_segment_size: u64) -> Result<(), WalParseError> {
    crate::wal::name::check_segment_size(wal_segment_size)
        .map_err(|_| WalParseError::InvalidSegmentSize(wal_segment_size))
}

/// Parse a WAL segment file name (`TTTTTTTTXXXXXXXXYYYYYYYY`) into (timeline, start LSN).
pub fn parse_segment_file_name(name: &str, wal_segment_size: u64) -> Option<(u32, u64)> {
    // PG writes these names in upper-case hex; insisting on that avoids
    // mistaking other files (e.g. lower-case temp names) for segments.
    if !name.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)) {
        return None;
    }
    let seg = crate::wal::name::Segment::parse(name, wal_segment_size).ok()?;
    Some((seg.timeline, seg.start_lsn(wal_segment_size).0))
}

// ---------------------------------------------------------------------------
// CRC-32C (Castagnoli), as PostgreSQL's pg_crc32c: reflected polynomial
// 0x82F63B78, init and final XOR 0xFFFFFFFF. Slicing-by-8 tables keep a 16 MiB
// segment cheap to verify even in debug builds.
// ---------------------------------------------------------------------------

const CRC32C_TABLES: [[u32; 256]; 8] = build_crc32c_tables();

const fn build_crc32c_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            i += 1;
        }
        s += 1;
    }
    t
}

/// Feed bytes into a running (pre-inverted) CRC-32C state.
fn crc32c_update(mut crc: u32, data: &[u8]) -> u32 {
    let t = &CRC32C_TABLES;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        crc = t[7][(lo & 0xFF) as usize]
            ^ t[6][((lo >> 8) & 0xFF) as usize]
            ^ t[5][((lo >> 16) & 0xFF) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][c[4] as usize]
            ^ t[2][c[5] as usize]
            ^ t[1][c[6] as usize]
            ^ t[0][c[7] as usize];
    }
    for &b in chunks.remainder() {
        crc = (crc >> 8) ^ t[0][((crc ^ u32::from(b)) & 0xFF) as usize];
    }
    crc
}

/// CRC-32C of `data` (the checksum PostgreSQL uses for WAL records).
pub fn crc32c(data: &[u8]) -> u32 {
    !crc32c_update(!0, data)
}

/// CRC of a whole record the way `ValidXLogRecord` computes it: payload first, then header up to `xl_crc`.
fn record_crc(rec: &[u8]) -> u32 {
    let (head, payload) = rec.split_at(SIZE_OF_XLOG_RECORD.min(rec.len()));
    // Hardware CRC-32C (SSE4.2 / ARMv8) where available: this walk is on the archive's hot
    // path. The table version below stays as the reference the tests compare it with.
    crc32c::crc32c_append(crc32c::crc32c(payload), &head[..XL_CRC_OFFSET.min(head.len())])
}

// ---------------------------------------------------------------------------
// Little-endian field access. Callers check lengths first; these return None
// instead of panicking so that a missed check becomes an error, not a crash.
// ---------------------------------------------------------------------------

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

fn align8(x: u64) -> u64 {
    (x + (MAXALIGN - 1)) & !(MAXALIGN - 1)
}

// ---------------------------------------------------------------------------
// Record header and layout decoding.
// ---------------------------------------------------------------------------

/// The fixed `XLogRecord` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecordHeader {
    tot_len: u32,
    xid: u32,
    prev: u64,
    info: u8,
    rmid: u8,
    crc: u32,
}

impl RecordHeader {
    /// Parse the 24-byte header at the start of `b`.
    fn parse(b: &[u8]) -> Option<Self> {
        Some(RecordHeader {
            tot_len: le_u32(b, 0)?,
            xid: le_u32(b, 4)?,
            prev: le_u64(b, 8)?,
            info: *b.get(16)?,
            rmid: *b.get(17)?,
            crc: le_u32(b, 20)?,
        })
    }
}

/// Where a record's main data lives, found by walking its fragment headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    main_start: usize,
    main_len: usize,
}

/// Why a layout could not be decoded.
enum LayoutError {
    /// The fragment headers run past the bytes available (partial record).
    Truncated,
    /// The fragment headers are inconsistent.
    Invalid(&'static str),
}

/// Decode the fragment headers following the record header, as `DecodeXLogRecord` does.
// `rec` may hold fewer than `tot_len` bytes (a record cut off at a segment
// end); then `Truncated` is returned if a header lies beyond what is present.
fn decode_layout(rec: &[u8], tot_len: usize, fmt: &WalFormat) -> Result<Layout, LayoutError> {
    struct Cur<'a> {
        rec: &'a [u8],
        pos: usize,
        remaining: u64,
    }
    impl Cur<'_> {
        fn take(&mut self, n: usize) -> Result<&[u8], LayoutError> {
            // Overrunning xl_tot_len is corruption; overrunning the bytes we
            // hold only means the record is incomplete.
            if self.remaining < n as u64 {
                return Err(LayoutError::Invalid("fragment header overruns xl_tot_len"));
            }
            let s = self.rec.get(self.pos..self.pos + n).ok_or(LayoutError::Truncated)?;
            self.pos += n;
            self.remaining -= n as u64;
            Ok(s)
        }
        fn u8(&mut self) -> Result<u8, LayoutError> {
            Ok(self.take(1)?[0])
        }
        fn u16(&mut self) -> Result<u16, LayoutError> {
            let s = self.take(2)?;
            Ok(u16::from_le_bytes([s[0], s[1]]))
        }
        fn u32(&mut self) -> Result<u32, LayoutError> {
            let s = self.take(4)?;
            Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        }
    }

    if tot_len < SIZE_OF_XLOG_RECORD {
        return Err(LayoutError::Invalid("xl_tot_len smaller than the record header"));
    }
    let mut c = Cur { rec, pos: SIZE_OF_XLOG_RECORD, remaining: (tot_len - SIZE_OF_XLOG_RECORD) as u64 };
    let mut datatotal: u64 = 0;
    let mut main_len: u64 = 0;
    let mut max_block_id: Option<u8> = None;
    let mut have_rel = false;
    while c.remaining > datatotal {
        let id = c.u8()?;
        match id {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_len = u64::from(c.u8()?);
                datatotal += main_len;
                // By convention the main data header is the last header.
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_len = u64::from(c.u32()?);
                datatotal += main_len;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => {
                c.take(2)?; // RepOriginId
            }
            XLR_BLOCK_ID_TOPLEVEL_XID if fmt.toplevel_xid_block => {
                c.take(4)?; // TransactionId
            }
            0..=XLR_MAX_BLOCK_ID => {
                if max_block_id.is_some_and(|m| id <= m) {
                    return Err(LayoutError::Invalid("out-of-order block_id"));
                }
                max_block_id = Some(id);
                let fork_flags = c.u8()?;
                let data_len = c.u16()?;
                let has_data = fork_flags & BKPBLOCK_HAS_DATA != 0;
                if has_data && data_len == 0 {
                    return Err(LayoutError::Invalid("BKPBLOCK_HAS_DATA set, but no data included"));
                }
                if !has_data && data_len != 0 {
                    return Err(LayoutError::Invalid("BKPBLOCK_HAS_DATA not set, but data length is not zero"));
                }
                datatotal += u64::from(data_len);
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    let bimg_len = c.u16()?;
                    let hole_offset = c.u16()?;
                    let bimg_info = c.u8()?;
                    let has_hole = bimg_info & BKPIMAGE_HAS_HOLE != 0;
                    if bimg_info & fmt.bkpimage_compressed != 0 && has_hole {
                        // Compressed images cannot imply the hole length from
                        // bimg_len, so it is stored explicitly.
                        let hole_length = c.u16()?;
                        if hole_length == 0 {
                            return Err(LayoutError::Invalid("BKPIMAGE_HAS_HOLE set, but hole length is zero"));
                        }
                    }
                    if has_hole && hole_offset == 0 {
                        return Err(LayoutError::Invalid("BKPIMAGE_HAS_HOLE set, but hole offset is zero"));
                    }
                    if !has_hole && hole_offset != 0 {
                        return Err(LayoutError::Invalid("BKPIMAGE_HAS_HOLE not set, but hole offset is not zero"));
                    }
                    datatotal += u64::from(bimg_len);
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    c.take(SIZE_OF_REL_FILE_NODE)?;
                    have_rel = true;
                } else if !have_rel {
                    return Err(LayoutError::Invalid("BKPBLOCK_SAME_REL set but no previous rel"));
                }
                c.take(4)?; // BlockNumber
            }
            _ => return Err(LayoutError::Invalid("invalid block_id")),
        }
    }
    if c.remaining != datatotal {
        return Err(LayoutError::Invalid("fragment lengths do not add up to xl_tot_len"));
    }
    // Block images and data precede the main data, which is always last.
    let main_len = main_len as usize;
    Ok(Layout { main_start: tot_len - main_len, main_len })
}

// ---------------------------------------------------------------------------
// Transaction records.
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Streaming reader.
// ---------------------------------------------------------------------------

/// One complete, CRC-verified WAL record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalRecord<'a> {
    /// Start LSN of the record.
    pub lsn: u64,
    /// LSN just past the record's last byte (not MAXALIGNed).
    pub end_lsn: u64,
    /// Total length including the header and block data.
    pub xl_tot_len: u32,
    /// Transaction id of the record.
    pub xl_xid: u32,
    /// LSN of the previous record.
    pub xl_prev: u64,
    /// Info bits (high nibble is rmgr-specific).
    pub xl_info: u8,
    /// Resource manager id.
    pub xl_rmid: u8,
    /// The record's main data (empty if it has none).
    pub main_data: &'a [u8],
    /// The WAL format (PostgreSQL major) the record was written in.
    pub format: &'static WalFormat,
}

/// Why a segment walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Reached the end of the segment bytes; WAL may continue in the next segment.
    SegmentEnd,
    /// An `XLOG_SWITCH` record at `lsn` ended the segment; the rest is padding.
    Switch {
        /// LSN of the switch record.
        lsn: u64,
    },
    /// A zero `xl_tot_len` at `lsn`: the end of WAL written so far.
    ZeroTail {
        /// Where the next record would have started.
        lsn: u64,
    },
    /// An all-zero page header (never-written or pre-zeroed space): end of WAL.
    ZeroPage {
        /// LSN of the page, unknown only if a fresh reader's first page is zero.
        page_lsn: Option<u64>,
    },
    /// A page carrying an older address (stale data of a recycled segment): end of WAL.
    StalePage {
        /// LSN of the page.
        page_lsn: u64,
        /// Older address found in its header.
        found: u64,
    },
}

impl StopReason {
    /// Whether the walk found the end of the WAL rather than the end of the segment.
    pub fn is_end_of_wal(&self) -> bool {
        matches!(self, StopReason::ZeroTail { .. } | StopReason::ZeroPage { .. } | StopReason::StalePage { .. })
    }
}

/// A record that began but whose remaining bytes have not been seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncompleteRecord {
    /// Start LSN of the record.
    pub lsn: u64,
    /// Its declared total length.
    pub xl_tot_len: u32,
    /// How many of its bytes have been seen.
    pub bytes_present: u32,
}

/// What one [`WalReader::feed_segment`] call found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedOutcome {
    /// Start LSN of the segment (None only for a zero-filled segment given to a fresh reader).
    pub segment_start_lsn: Option<u64>,
    /// Complete records passed to the callback.
    pub records: usize,
    /// Why the walk stopped.
    pub stop: StopReason,
    /// Records abandoned because the next page was marked `XLP_FIRST_IS_OVERWRITE_CONTRECORD`.
    pub overwritten: Vec<u64>,
}

/// A record being reassembled across pages.
#[derive(Debug)]
struct Pending {
    lsn: u64,
    tot_len: u32,
    buf: Vec<u8>,
    header_checked: bool,
}

#[derive(Debug)]
enum State {
    /// No position yet: skip the tail of a record begun before the first segment.
    SkipContinuation,
    /// The next byte at the cursor starts a record (or a page header).
    AtRecord,
    /// A record crosses into the next page.
    Pending(Pending),
}

/// Result of looking at one page header.
enum PageCheck {
    Valid { info: u16, rem_len: u32, size: usize },
    End(StopReason),
}

/// Streaming WAL reader fed whole, consecutive segments (see the module docs).
#[derive(Debug)]
pub struct WalReader {
    seg_size: u64,
    page_size: Option<usize>,
    next_segment: Option<u64>,
    state: State,
    prev_lsn: Option<u64>,
    last_end_lsn: Option<u64>,
    latest_tli: u32,
    expect_overwrite: Option<u64>,
    ended_at: Option<u64>,
    walk: Option<SegWalk>,
    /// The major's format, fixed by the first page read.
    format: Option<&'static WalFormat>,
}

/// Progress through a segment fed in pieces.
#[derive(Debug)]
struct SegWalk {
    /// Start LSN, once the first page was read.
    seg_start: Option<u64>,
    /// Bytes of the segment fed so far.
    fed: usize,
    out: FeedOutcome,
    /// A switch record or the end of WAL was reached: the rest is padding.
    finished: bool,
}

impl WalReader {
    /// Create a reader whose first segment may be any segment.
    pub fn new(wal_segment_size: u64) -> Result<Self, WalParseError> {
        validate_segment_size(wal_segment_size)?;
        Ok(WalReader {
            seg_size: wal_segment_size,
            page_size: None,
            next_segment: None,
            state: State::SkipContinuation,
            prev_lsn: None,
            last_end_lsn: None,
            latest_tli: 0,
            expect_overwrite: None,
            ended_at: None,
            walk: None,
            format: None,
        })
    }

    /// Create a reader whose first segment must start at `segment_start_lsn` (e.g. from its file name).
    // Knowing the address lets a recycled, not-yet-overwritten segment be
    // recognised as end of WAL instead of being read as old WAL.
    pub fn starting_at(wal_segment_size: u64, segment_start_lsn: u64) -> Result<Self, WalParseError> {
        let mut r = WalReader::new(wal_segment_size)?;
        if !segment_start_lsn.is_multiple_of(wal_segment_size) {
            return Err(WalParseError::BadPageAddress {
                expected: segment_start_lsn - segment_start_lsn % wal_segment_size,
                found: segment_start_lsn,
            });
        }
        r.next_segment = Some(segment_start_lsn);
        Ok(r)
    }

    /// Start LSN the next fed segment must have, once known.
    pub fn next_segment_lsn(&self) -> Option<u64> {
        self.next_segment
    }

    /// LSN just past the last complete record seen.
    pub fn last_record_end_lsn(&self) -> Option<u64> {
        self.last_end_lsn
    }

    /// Where the end of WAL was found, if it was.
    pub fn end_of_wal(&self) -> Option<u64> {
        self.ended_at
    }

    /// The WAL format (PostgreSQL major) of the segments fed, once a first page was read.
    pub fn format(&self) -> Option<&'static WalFormat> {
        self.format
    }

    /// The format records are decoded with: every record follows a first page, which sets it.
    fn fmt(&self) -> &'static WalFormat {
        self.format.unwrap_or(&layout::PG15)
    }

    /// The record begun but not finished in the segments fed so far.
    pub fn pending_record(&self) -> Option<IncompleteRecord> {
        match &self.state {
            State::Pending(p) => Some(IncompleteRecord {
                lsn: p.lsn,
                xl_tot_len: p.tot_len,
                // buf never exceeds tot_len (a u32) because continuation
                // lengths are checked against the remaining length.
                bytes_present: u32::try_from(p.buf.len()).unwrap_or(u32::MAX),
            }),
            _ => None,
        }
    }

    /// `xl_prev` of the unfinished record, once its fixed header is present.
    pub fn pending_record_prev(&self) -> Option<u64> {
        match &self.state {
            State::Pending(p) => RecordHeader::parse(&p.buf).map(|h| h.prev),
            _ => None,
        }
    }

    /// Unverified commit/abort from the unfinished record, if its header and `xact_time` are present.
    pub fn pending_xact_end(&self) -> Option<XactEnd> {
        // A record cut off by the end of WAL is a torn write that never
        // committed; only one that may continue in the next segment counts.
        if self.ended_at.is_some() {
            return None;
        }
        let State::Pending(p) = &self.state else {
            return None;
        };
        let hdr = RecordHeader::parse(&p.buf)?;
        if hdr.rmid != RM_XACT_ID {
            return None;
        }
        let kind = XactKind::from_info(hdr.info)?;
        let layout = decode_layout(&p.buf, p.tot_len as usize, self.fmt()).ok()?;
        let end = (layout.main_start + layout.main_len).min(p.buf.len());
        let main = p.buf.get(layout.main_start..end)?;
        parse_xact_end(p.lsn, hdr.xid, hdr.info, kind, main, false, self.fmt()).ok()
    }

    /// Walk one whole segment, calling `on_record` for each record completed in it.
    pub fn feed_segment<F>(&mut self, seg: &[u8], mut on_record: F) -> Result<FeedOutcome, WalParseError>
    where
        F: FnMut(&WalRecord<'_>),
    {
        if seg.len() as u64 != self.seg_size {
            return Err(WalParseError::SegmentLength { expected: self.seg_size, actual: seg.len() as u64 });
        }
        self.begin_segment()?;
        self.feed_pages(seg, &mut on_record)?;
        self.finish_segment()
    }

    /// Starts a segment to be fed in pieces with [`WalReader::feed_pages`] and ended with
    /// [`WalReader::finish_segment`] (a caller streaming a file never holds all of it).
    pub fn begin_segment(&mut self) -> Result<(), WalParseError> {
        if let Some(end_lsn) = self.ended_at {
            return Err(WalParseError::PastEndOfWal { end_lsn });
        }
        self.walk = Some(SegWalk {
            seg_start: None,
            fed: 0,
            out: FeedOutcome {
                segment_start_lsn: self.next_segment,
                records: 0,
                stop: StopReason::SegmentEnd,
                overwritten: Vec::new(),
            },
            finished: false,
        });
        Ok(())
    }

    /// Feeds the next piece of the segment begun with [`WalReader::begin_segment`].
    ///
    /// Pieces are whole pages (any multiple of 64 KiB always is); once a switch record or the
    /// end of WAL is reached the rest of the segment is only counted.
    pub fn feed_pages<F>(&mut self, piece: &[u8], mut on_record: F) -> Result<(), WalParseError>
    where
        F: FnMut(&WalRecord<'_>),
    {
        let mut walk = self.walk.take().ok_or(WalParseError::PieceMisaligned { offset: 0, len: piece.len() })?;
        let base = walk.fed;
        if (base + piece.len()) as u64 > self.seg_size {
            return Err(WalParseError::SegmentLength { expected: self.seg_size, actual: (base + piece.len()) as u64 });
        }
        walk.fed += piece.len();
        if !walk.finished {
            self.walk_pages(&mut walk, base, piece, &mut on_record)?;
        }
        self.walk = Some(walk);
        Ok(())
    }

    /// Ends the segment fed in pieces; all of it must have been fed.
    pub fn finish_segment(&mut self) -> Result<FeedOutcome, WalParseError> {
        let walk = self.walk.take().ok_or(WalParseError::SegmentLength { expected: self.seg_size, actual: 0 })?;
        if walk.fed as u64 != self.seg_size {
            return Err(WalParseError::SegmentLength { expected: self.seg_size, actual: walk.fed as u64 });
        }
        if !walk.finished {
            if let Some(start) = walk.seg_start {
                self.next_segment = Some(start + self.seg_size);
            }
        }
        Ok(walk.out)
    }

    /// Walks the pages of `piece`, which starts `base` bytes into the segment.
    fn walk_pages<F>(
        &mut self,
        walk: &mut SegWalk,
        base: usize,
        piece: &[u8],
        on_record: &mut F,
    ) -> Result<(), WalParseError>
    where
        F: FnMut(&WalRecord<'_>),
    {
        let seg = piece;
        // The first page's long header fixes the page size and the segment's address.
        if base == 0 {
            if seg.len() < SIZE_OF_LONG_PHD {
                return Err(WalParseError::PieceMisaligned { offset: 0, len: seg.len() });
            }
            match self.check_first_page(seg)? {
                Ok(start) => {
                    walk.seg_start = Some(start);
                    walk.out.segment_start_lsn = Some(start);
                }
                Err(stop) => {
                    self.end_of_wal_reached(&mut walk.out, stop);
                    walk.finished = true;
                    return Ok(());
                }
            }
        }
        let page_size = self.page_size.unwrap_or(8192);
        let seg_start = match walk.seg_start {
            Some(s) if base.is_multiple_of(page_size) && seg.len().is_multiple_of(page_size) => s,
            _ => return Err(WalParseError::PieceMisaligned { offset: base as u64, len: seg.len() }),
        };
        let out = &mut walk.out;

        let mut page_off = 0usize;
        while page_off < seg.len() {
            let page_lsn = seg_start + (base + page_off) as u64;
            let page_end = page_off + page_size;
            let (info, rem_len, hsize) = match self.check_page(seg, page_off, base + page_off, page_lsn)? {
                PageCheck::Valid { info, rem_len, size } => (info, rem_len, size),
                PageCheck::End(stop) => {
                    self.end_of_wal_reached(out, stop);
                    walk.finished = true;
                    return Ok(());
                }
            };
            let data_start = page_off + hsize;
            let mut off = data_start;

            match std::mem::replace(&mut self.state, State::AtRecord) {
                State::SkipContinuation => {
                    if info & XLP_FIRST_IS_CONTRECORD != 0 {
                        if rem_len == 0 {
                            return Err(WalParseError::BadContrecordLength { lsn: 0, page_lsn, rem_len, expected: 0 });
                        }
                        // As XLogFindNextRecord: a continuation filling the
                        // rest of the page means the next page decides.
                        let skip = align8(u64::from(rem_len));
                        if skip >= (page_end - data_start) as u64 {
                            self.state = State::SkipContinuation;
                            page_off = page_end;
                            continue;
                        }
                        off = data_start + skip as usize;
                    }
                }
                State::Pending(mut p) => {
                    if info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
                        // PG15 wrote a new record over the missing tail of this
                        // one after crash recovery; the torn record never
                        // happened, and an OVERWRITE_CONTRECORD must follow.
                        out.overwritten.push(p.lsn);
                        self.expect_overwrite = Some(p.lsn);
                    } else if info & XLP_FIRST_IS_CONTRECORD == 0 {
                        return Err(WalParseError::MissingContrecord { lsn: p.lsn, page_lsn });
                    } else {
                        let need = u64::from(p.tot_len) - p.buf.len() as u64;
                        if rem_len == 0 || u64::from(rem_len) != need {
                            return Err(WalParseError::BadContrecordLength {
                                lsn: p.lsn,
                                page_lsn,
                                rem_len,
                                expected: need,
                            });
                        }
                        let take = need.min((page_end - data_start) as u64) as usize;
                        p.buf.extend_from_slice(&seg[data_start..data_start + take]);
                        if !p.header_checked && p.buf.len() >= SIZE_OF_XLOG_RECORD {
                            self.check_header(p.lsn, &p.buf)?;
                            p.header_checked = true;
                        }
                        if p.buf.len() as u64 != u64::from(p.tot_len) {
                            self.state = State::Pending(p);
                            page_off = page_end;
                            continue;
                        }
                        let end_lsn = page_lsn + (hsize + take) as u64;
                        let switched = self.complete(p.lsn, end_lsn, &p.buf, on_record)?;
                        out.records += 1;
                        if let Some(lsn) = switched {
                            self.switch_reached(out, seg_start, lsn);
                            walk.finished = true;
                            return Ok(());
                        }
                        off = data_start + align8(take as u64) as usize;
                    }
                }
                State::AtRecord => {
                    if info & XLP_FIRST_IS_CONTRECORD != 0 {
                        return Err(WalParseError::UnexpectedContrecord { page_lsn });
                    }
                }
            }

            // Records starting on this page. `off` is MAXALIGNed and so is the
            // page end, so at least xl_tot_len is always on this page.
            while off < page_end {
                let lsn = seg_start + (base + off) as u64;
                let tot_len = le_u32(seg, off).unwrap_or(0);
                if tot_len == 0 {
                    // Pages are zeroed when initialised, so a zero length is
                    // where PostgreSQL stopped writing.
                    self.end_of_wal_reached(out, StopReason::ZeroTail { lsn });
                    walk.finished = true;
                    return Ok(());
                }
                if (tot_len as usize) < SIZE_OF_XLOG_RECORD {
                    return Err(WalParseError::InvalidRecordLength { lsn, len: tot_len });
                }
                let avail = page_end - off;
                let header_checked = avail >= SIZE_OF_XLOG_RECORD;
                if header_checked {
                    // Validate before trusting tot_len to drive reassembly.
                    self.check_header(lsn, &seg[off..off + SIZE_OF_XLOG_RECORD])?;
                }
                if tot_len as usize <= avail {
                    let rec = &seg[off..off + tot_len as usize];
                    let switched = self.complete(lsn, lsn + u64::from(tot_len), rec, on_record)?;
                    out.records += 1;
                    if let Some(lsn) = switched {
                        self.switch_reached(out, seg_start, lsn);
                        walk.finished = true;
                        return Ok(());
                    }
                    off = align8((off + tot_len as usize) as u64) as usize;
                } else {
                    self.state =
                        State::Pending(Pending { lsn, tot_len, buf: seg[off..page_end].to_vec(), header_checked });
                    break;
                }
            }
            page_off = page_end;
        }
        Ok(())
    }

    /// Validate the first page's long header and find the segment's start LSN.
    ///
    /// The inner `Err` is a clean end of WAL (zero or stale first page).
    fn check_first_page(&mut self, seg: &[u8]) -> Result<Result<u64, StopReason>, WalParseError> {
        let head = &seg[..SIZE_OF_LONG_PHD];
        if head.iter().all(|&b| b == 0) {
            return Ok(Err(StopReason::ZeroPage { page_lsn: self.next_segment }));
        }
        let magic = le_u16(seg, 0).unwrap_or(0);
        let info = le_u16(seg, 2).unwrap_or(0);
        let pageaddr = le_u64(seg, 8).unwrap_or(0);
        let where_ = self.next_segment.unwrap_or(pageaddr);
        let format = match (self.format, layout::for_magic(magic)) {
            (Some(f), _) if f.page_magic != magic => {
                return Err(WalParseError::BadPageMagic { page_lsn: where_, magic })
            }
            (Some(f), _) | (None, Some(f)) => f,
            (None, None) => return Err(WalParseError::UnsupportedMajor { page_lsn: where_, magic }),
        };
        if info & !XLP_ALL_FLAGS != 0 {
            return Err(WalParseError::BadPageInfo { page_lsn: where_, info });
        }
        if info & XLP_LONG_HEADER == 0 {
            return Err(WalParseError::MissingLongHeader { page_lsn: where_ });
        }
        let seg_size = le_u32(seg, 32).unwrap_or(0);
        let blcksz = le_u32(seg, 36).unwrap_or(0);
        // XLOG_BLCKSZ is a build option (1..64 kB, power of two); honour it
        // but insist it stays the same for the whole stream.
        let usable_blcksz = blcksz.is_power_of_two()
            && (1024..=65536).contains(&blcksz)
            && self.page_size.is_none_or(|p| p == blcksz as usize);
        if u64::from(seg_size) != self.seg_size || !usable_blcksz {
            return Err(WalParseError::LongHeaderMismatch { page_lsn: where_, seg_size, blcksz });
        }
        match self.next_segment {
            Some(expected) if pageaddr == expected => {}
            Some(expected) if pageaddr < expected => {
                // A recycled segment that was never rewritten keeps its old
                // address: that is where the WAL ends.
                return Ok(Err(StopReason::StalePage { page_lsn: expected, found: pageaddr }));
            }
            Some(expected) => return Err(WalParseError::NotConsecutive { expected, found: pageaddr }),
            None if !pageaddr.is_multiple_of(self.seg_size) => {
                return Err(WalParseError::BadPageAddress {
                    expected: pageaddr - pageaddr % self.seg_size,
                    found: pageaddr,
                })
            }
            None => {}
        }
        // LSN arithmetic within and just past the segment must not wrap.
        if pageaddr.checked_add(self.seg_size).is_none() {
            return Err(WalParseError::BadPageAddress { expected: pageaddr, found: pageaddr });
        }
        self.page_size = Some(blcksz as usize);
        self.format = Some(format);
        Ok(Ok(pageaddr))
    }

    /// Validate a page header (`XLogReaderValidatePageHeader`).
    fn check_page(
        &mut self,
        seg: &[u8],
        page_off: usize,
        seg_off: usize,
        page_lsn: u64,
    ) -> Result<PageCheck, WalParseError> {
        let head = seg
            .get(page_off..page_off + SIZE_OF_SHORT_PHD)
            .ok_or(WalParseError::SegmentLength { expected: self.seg_size, actual: seg.len() as u64 })?;
        if head.iter().all(|&b| b == 0) {
            return Ok(PageCheck::End(StopReason::ZeroPage { page_lsn: Some(page_lsn) }));
        }
        let magic = le_u16(head, 0).unwrap_or(0);
        let info = le_u16(head, 2).unwrap_or(0);
        let tli = le_u32(head, 4).unwrap_or(0);
        let pageaddr = le_u64(head, 8).unwrap_or(0);
        let rem_len = le_u32(head, 16).unwrap_or(0);
        if magic != self.fmt().page_magic {
            return Err(WalParseError::BadPageMagic { page_lsn, magic });
        }
        if info & !XLP_ALL_FLAGS != 0 {
            return Err(WalParseError::BadPageInfo { page_lsn, info });
        }
        if pageaddr != page_lsn {
            let page_size = self.page_size.unwrap_or(8192) as u64;
            if pageaddr < page_lsn && pageaddr.is_multiple_of(page_size) {
                return Ok(PageCheck::End(StopReason::StalePage { page_lsn, found: pageaddr }));
            }
            return Err(WalParseError::BadPageAddress { expected: page_lsn, found: pageaddr });
        }
        let size = if info & XLP_LONG_HEADER != 0 {
            SIZE_OF_LONG_PHD
        } else if seg_off == 0 {
            return Err(WalParseError::MissingLongHeader { page_lsn });
        } else {
            SIZE_OF_SHORT_PHD
        };
        if tli < self.latest_tli {
            return Err(WalParseError::TimelineRegressed { page_lsn, tli, previous: self.latest_tli });
        }
        self.latest_tli = tli;
        Ok(PageCheck::Valid { info, rem_len, size })
    }

    /// Validate the fixed header (`ValidXLogRecordHeader`); `b` holds at least 24 bytes.
    fn check_header(&self, lsn: u64, b: &[u8]) -> Result<(), WalParseError> {
        let h =
            RecordHeader::parse(b).ok_or(WalParseError::InvalidRecordLength { lsn, len: le_u32(b, 0).unwrap_or(0) })?;
        if (h.tot_len as usize) < SIZE_OF_XLOG_RECORD {
            return Err(WalParseError::InvalidRecordLength { lsn, len: h.tot_len });
        }
        let fmt = self.fmt();
        if h.rmid > fmt.rm_max_builtin_id && (h.rmid < RM_MIN_CUSTOM_ID || !fmt.custom_rmgrs) {
            return Err(WalParseError::InvalidRmgr { lsn, rmid: h.rmid });
        }
        // Exact prev-link once we know the previous record; otherwise (first
        // record read) it can only be checked to point backwards.
        let ok = match self.prev_lsn {
            Some(p) => h.prev == p,
            None => h.prev < lsn,
        };
        if !ok {
            return Err(WalParseError::BadPrevLink { lsn, prev: h.prev, expected: self.prev_lsn });
        }
        Ok(())
    }

    /// Verify and decode a fully assembled record, then hand it out.
    ///
    /// Returns the record's LSN if it was an `XLOG_SWITCH`.
    fn complete<F>(
        &mut self,
        lsn: u64,
        end_lsn: u64,
        rec: &[u8],
        on_record: &mut F,
    ) -> Result<Option<u64>, WalParseError>
    where
        F: FnMut(&WalRecord<'_>),
    {
        let h = RecordHeader::parse(rec).ok_or(WalParseError::InvalidRecordLength { lsn, len: rec.len() as u32 })?;
        // Nothing but the length is trusted before the CRC matches.
        let computed = record_crc(rec);
        if computed != h.crc {
            return Err(WalParseError::Crc { lsn, stored: h.crc, computed });
        }
        let format = self.fmt();
        let layout = decode_layout(rec, rec.len(), format).map_err(|e| WalParseError::BadRecordLayout {
            lsn,
            reason: match e {
                LayoutError::Truncated => "fragment headers run past the record",
                LayoutError::Invalid(r) => r,
            },
        })?;
        let main_data = &rec[layout.main_start..layout.main_start + layout.main_len];
        let rmgr_info = h.info & XLR_RMGR_INFO_MASK;
        if let Some(expected) = self.expect_overwrite.take() {
            let found = (h.rmid == RM_XLOG_ID && rmgr_info == XLOG_OVERWRITE_CONTRECORD)
                .then(|| le_u64(main_data, 0))
                .flatten();
            if found != Some(expected) {
                return Err(WalParseError::BadOverwriteContrecord { lsn, expected, found });
            }
        }
        self.prev_lsn = Some(lsn);
        self.last_end_lsn = Some(end_lsn);
        on_record(&WalRecord {
            lsn,
            end_lsn,
            xl_tot_len: h.tot_len,
            xl_xid: h.xid,
            xl_prev: h.prev,
            xl_info: h.info,
            xl_rmid: h.rmid,
            main_data,
            format,
        });
        Ok((h.rmid == RM_XLOG_ID && rmgr_info == XLOG_SWITCH).then_some(lsn))
    }

    /// The rest of the segment after a switch record is padding; resume at the next segment.
    fn switch_reached(&mut self, out: &mut FeedOutcome, seg_start: u64, lsn: u64) {
        self.state = State::AtRecord;
        self.next_segment = Some(seg_start + self.seg_size);
        out.stop = StopReason::Switch { lsn };
    }

    /// Record that the WAL ends here; any pending record stays visible as incomplete.
    fn end_of_wal_reached(&mut self, out: &mut FeedOutcome, stop: StopReason) {
        self.ended_at = Some(match stop {
            StopReason::ZeroTail { lsn } => lsn,
            StopReason::ZeroPage { page_lsn } => page_lsn.unwrap_or(0),
            StopReason::StalePage { page_lsn, .. } => page_lsn,
            // Not end-of-WAL reasons; never passed here.
            StopReason::SegmentEnd | StopReason::Switch { .. } => 0,
        });
        out.stop = stop;
    }
}

// ---------------------------------------------------------------------------
// One-segment summary.
// ---------------------------------------------------------------------------

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
    if bytes.len() as u64 != reader.seg_size {
        return Err(WalParseError::SegmentLength { expected: reader.seg_size, actual: bytes.len() as u64 });
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
}

impl SegmentSummarizer {
    /// A summarizer for the segment starting at `segment_start_lsn`.
    pub fn starting_at(wal_segment_size: u64, segment_start_lsn: u64) -> Result<Self, WalParseError> {
        Self::new(WalReader::starting_at(wal_segment_size, segment_start_lsn)?)
    }

    fn new(mut reader: WalReader) -> Result<Self, WalParseError> {
        reader.begin_segment()?;
        Ok(SegmentSummarizer { reader, xact_ends: Vec::new(), first_err: None, first: None, last: None })
    }

    /// Feeds the next whole pages of the segment.
    pub fn feed(&mut self, piece: &[u8]) -> Result<(), WalParseError> {
        let (ends, first_err) = (&mut self.xact_ends, &mut self.first_err);
        let (first, last) = (&mut self.first, &mut self.last);
        self.reader.feed_pages(piece, |rec| {
            first.get_or_insert((rec.lsn, rec.xl_prev));
            *last = Some(rec.lsn);
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
        })
    }
}

#[cfg(test)]
pub(crate) mod synth;

#[cfg(test)]
mod tests {
    use super::synth::*;
    use super::*;

    /// (lsn, rmid, info, main data) of each record.
    type Collected = Vec<(u64, u8, u8, Vec<u8>)>;

    fn collect(reader: &mut WalReader, seg: &[u8]) -> (FeedOutcome, Collected) {
        let mut recs = Vec::new();
        let out = reader
            .feed_segment(seg, |r| {
                recs.push((r.lsn, r.xl_rmid, r.xl_info, r.main_data.to_vec()));
            })
            .unwrap();
        (out, recs)
    }

    #[test]
    fn hardware_crc_matches_the_reference_table() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        for cut in [0, 1, 23, 24, 25, 4096, 99_999] {
            let (a, b) = data.split_at(cut);
            let reference = !crc32c_update(crc32c_update(!0, a), b);
            assert_eq!(crc32c::crc32c_append(crc32c::crc32c(a), b), reference, "cut {cut}");
            assert_eq!(crc32c(&data), reference);
        }
    }

    #[test]
    fn crc32c_known_vectors() {
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        // The slicing-by-8 path must agree with the plain bytewise definition
        // at every length and alignment.
        let data: Vec<u8> = (0u32..300).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for start in 0..9 {
            for end in start..data.len() {
                let mut bytewise = !0u32;
                for &b in &data[start..end] {
                    bytewise = (bytewise >> 8) ^ CRC32C_TABLES[0][((bytewise ^ u32::from(b)) & 0xFF) as usize];
                }
                assert_eq!(crc32c(&data[start..end]), !bytewise);
            }
        }
    }

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
            assert_eq!(&got.3, main, "main data of record at {}", format_lsn(*lsn));
        }
        assert_eq!(r.end_of_wal(), Some(end));
        assert_eq!(r.feed_segment(b.segment(0), |_| {}), Err(WalParseError::PastEndOfWal { end_lsn: end }));
    }

    #[test]
    fn corrupted_byte_gives_crc_error_naming_lsn() {
        let mut b = WalBuilder::new(1);
        b.commit(1, 10);
        let c = b.commit(2, 20);
        b.commit(3, 30);
        let i = b.idx(c) + 27; // inside xact_time
        b.buf[i] ^= 0x01;
        let err = summarize_segment(b.segment(0), SEG).unwrap_err();
        match err {
            WalParseError::Crc { lsn, stored, computed } => {
                assert_eq!(lsn, c);
                assert_ne!(stored, computed);
            }
            other => panic!("expected CRC error, got {other:?}"),
        }
        assert!(err.to_string().contains(&format_lsn(c)), "{err}");
    }

    #[test]
    fn corrupted_multi_page_record_gives_crc_error() {
        let mut b = WalBuilder::new(1);
        b.commit(1, 10);
        let big = b.add(0, 0, 21, &[], &vec![1u8; 30_000]);
        let i = b.idx(big) + 3 * PAGE + 100;
        b.buf[i] ^= 0x80;
        assert!(matches!(
            summarize_segment(b.segment(0), SEG),
            Err(WalParseError::Crc { lsn, .. }) if lsn == big
        ));
    }

    #[test]
    fn truncated_input_is_an_error() {
        let mut b = WalBuilder::new(1);
        b.commit(1, 10);
        let seg = b.segment(0);
        assert_eq!(
            summarize_segment(&seg[..seg.len() / 2], SEG),
            Err(WalParseError::SegmentLength { expected: SEG, actual: SEG / 2 })
        );
        assert_eq!(summarize_segment(&[], SEG), Err(WalParseError::SegmentLength { expected: SEG, actual: 0 }));
        assert_eq!(summarize_segment(seg, 3 << 20), Err(WalParseError::InvalidSegmentSize(3 << 20)));
        assert!(WalReader::new(1 << 19).is_err());
        assert!(WalReader::new(1 << 31).is_err());
        assert!(WalReader::new(1 << 30).is_ok());
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
    fn zeroed_tail_ends_walk_cleanly() {
        let mut b = WalBuilder::new(1);
        for i in 0..3 {
            b.commit(10 + i, 100 + i64::from(i));
        }
        let s = summarize_segment(b.segment(0), SEG).unwrap();
        assert_eq!(s.records, 3);
        assert_eq!(s.stop, StopReason::ZeroTail { lsn: b.pos });
        assert_eq!(s.xact_ends.len(), 3);

        // An entirely zero segment (pre-allocated, never written) has no records.
        let zero = vec![0u8; SEG as usize];
        let s = summarize_segment(&zero, SEG).unwrap();
        assert_eq!(s.records, 0);
        assert_eq!(s.stop, StopReason::ZeroPage { page_lsn: None });
        let s = summarize_segment_at(&zero, SEG, 7 * SEG).unwrap();
        assert_eq!(s.stop, StopReason::ZeroPage { page_lsn: Some(7 * SEG) });
    }

    #[test]
    fn bad_page_magic_is_an_error() {
        let mut b = WalBuilder::new(1);
        b.add(0, 0, 21, &[], &vec![1u8; 40_000]);
        b.commit(1, 1);
        let mut seg = b.segment(0).to_vec();
        seg[3 * PAGE] = 0x0D; // magic D110 -> D10D (PG14)
        assert_eq!(
            summarize_segment(&seg, SEG),
            Err(WalParseError::BadPageMagic { page_lsn: START + 3 * PAGE as u64, magic: 0xD10D })
        );
        // A first page of no major the reader knows says so (see every_major_13_to_18_is_read).
        let mut seg = b.segment(0).to_vec();
        seg[1] = 0x00;
        assert!(matches!(summarize_segment(&seg, SEG), Err(WalParseError::UnsupportedMajor { magic: 0x0010, .. })));
        let mut seg = b.segment(0).to_vec();
        seg[2 * PAGE + 2] |= 0x10; // undefined xlp_info bit
        assert!(matches!(summarize_segment(&seg, SEG), Err(WalParseError::BadPageInfo { .. })));
    }

    #[test]
    fn page_addresses_are_validated() {
        let mut b = WalBuilder::new(2);
        b.commit(1, 1);
        // Fill up to exactly the end of page 2 so that page 3 is read next.
        b.pad_to(START + 2 * PAGE as u64 + 24);
        b.filler(PAGE as u64 - 24);
        assert_eq!(b.pos, START + 3 * PAGE as u64);
        b.commit(2, 2);

        // A newer address than expected is corruption.
        let mut seg = b.segment(0).to_vec();
        let at = 3 * PAGE + 8;
        seg[at..at + 8].copy_from_slice(&(START + 9 * PAGE as u64).to_le_bytes());
        assert_eq!(
            summarize_segment(&seg, SEG),
            Err(WalParseError::BadPageAddress { expected: START + 3 * PAGE as u64, found: START + 9 * PAGE as u64 })
        );
        // An older page-aligned address is a recycled segment's stale page: end of WAL.
        seg[at..at + 8].copy_from_slice(&(START - SEG + 3 * PAGE as u64).to_le_bytes());
        let s = summarize_segment(&seg, SEG).unwrap();
        assert_eq!(
            s.stop,
            StopReason::StalePage { page_lsn: START + 3 * PAGE as u64, found: START - SEG + 3 * PAGE as u64 }
        );
        assert_eq!(s.xact_ends.len(), 1);

        // A whole recycled segment fed where the next one belongs is end of WAL too.
        let mut long = WalBuilder::new(2);
        let spanning = long.add(0, 0, 21, &[], &vec![1u8; SEG as usize]);
        let mut r = WalReader::new(SEG).unwrap();
        let out = r.feed_segment(long.segment(0), |_| {}).unwrap();
        assert_eq!(out.stop, StopReason::SegmentEnd);
        let mut old = long.segment(0).to_vec();
        old[8..16].copy_from_slice(&(START - 3 * SEG).to_le_bytes());
        let out = r.feed_segment(&old, |_| {}).unwrap();
        assert_eq!(out.stop, StopReason::StalePage { page_lsn: START + SEG, found: START - 3 * SEG });
        assert_eq!(r.pending_record().map(|p| p.lsn), Some(spanning));

        // A segment from the future is a gap.
        let mut r = WalReader::starting_at(SEG, START - SEG).unwrap();
        assert_eq!(
            r.feed_segment(b.segment(0), |_| {}),
            Err(WalParseError::NotConsecutive { expected: START - SEG, found: START })
        );
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

    #[test]
    fn overwrite_contrecord_abandons_torn_record() {
        let mut b = WalBuilder::new(1);
        b.commit(1, 1);
        let last_good = b.commit(2, 2);
        let torn = b.torn(0, 21, &[0xCD; 9000]);
        // Crash recovery writes OVERWRITE_CONTRECORD at the next page start,
        // prev-linked to the last complete record.
        let mut main = torn.to_le_bytes().to_vec();
        main.extend(123i64.to_le_bytes());
        assert_eq!(b.prev, last_good);
        let ow = b.add(0, XLOG_OVERWRITE_CONTRECORD, RM_XLOG_ID, &[], &main);
        let c = b.commit(3, 3);
        let mut r = WalReader::new(SEG).unwrap();
        let (out, recs) = collect(&mut r, b.segment(0));
        assert_eq!(out.overwritten, vec![torn]);
        assert_eq!(recs.iter().map(|x| x.0).collect::<Vec<_>>()[2..], [ow, c]);
        let s = summarize_segment(b.segment(0), SEG).unwrap();
        assert_eq!((s.records, s.xact_ends.len(), s.overwritten.clone()), (4, 3, vec![torn]));

        // The overwrite record must name the abandoned record.
        let mut bad = WalBuilder::new(1);
        bad.commit(1, 1);
        let torn = bad.torn(0, 21, &[0xCD; 9000]);
        let mut main = (torn + 8).to_le_bytes().to_vec();
        main.extend(123i64.to_le_bytes());
        let ow = bad.add(0, XLOG_OVERWRITE_CONTRECORD, RM_XLOG_ID, &[], &main);
        assert_eq!(
            summarize_segment(bad.segment(0), SEG),
            Err(WalParseError::BadOverwriteContrecord { lsn: ow, expected: torn, found: Some(torn + 8) })
        );
    }

    #[test]
    fn missing_or_unexpected_contrecord_is_an_error() {
        let mut b = WalBuilder::new(1);
        b.commit(1, 1);
        let big = b.add(0, 0, 21, &[], &vec![1u8; 10_000]);
        let page = (big / PAGE as u64 + 1) * PAGE as u64;
        let mut seg = b.segment(0).to_vec();
        let i = (page - START) as usize + 2;
        seg[i] &= !(XLP_FIRST_IS_CONTRECORD as u8);
        assert_eq!(summarize_segment(&seg, SEG), Err(WalParseError::MissingContrecord { lsn: big, page_lsn: page }));
        let mut seg = b.segment(0).to_vec();
        seg[i + 14] ^= 0x01; // xlp_rem_len
        assert!(matches!(
            summarize_segment(&seg, SEG),
            Err(WalParseError::BadContrecordLength { lsn, .. }) if lsn == big
        ));
        // A continuation flag on a page where no record is in progress.
        let mut b = WalBuilder::new(1);
        b.pad_to(START + PAGE as u64 - 32);
        b.filler(32);
        b.commit(1, 1);
        let mut seg = b.segment(0).to_vec();
        seg[PAGE + 2] |= XLP_FIRST_IS_CONTRECORD as u8;
        seg[PAGE + 16] = 8;
        assert_eq!(
            summarize_segment(&seg, SEG),
            Err(WalParseError::UnexpectedContrecord { page_lsn: START + PAGE as u64 })
        );
    }

    #[test]
    fn switch_record_skips_rest_of_segment() {
        let mut b = WalBuilder::new(2);
        b.commit(1, 1);
        let sw = b.add(0, XLOG_SWITCH, RM_XLOG_ID, &[], &[]);
        // Garbage after the switch must not be read.
        let i = b.idx(b.pos);
        b.buf[i..i + 64].fill(0xEE);
        b.pos = START + SEG;
        let c = b.commit(2, 2);
        let mut r = WalReader::new(SEG).unwrap();
        let (out0, _) = collect(&mut r, b.segment(0));
        assert_eq!(out0.stop, StopReason::Switch { lsn: sw });
        assert_eq!(r.next_segment_lsn(), Some(START + SEG));
        let (out1, recs) = collect(&mut r, b.segment(1));
        assert_eq!(recs.iter().map(|x| x.0).collect::<Vec<_>>(), vec![c]);
        assert_eq!(out1.stop, StopReason::ZeroTail { lsn: b.pos });
        // The segment after a switch joins at the switch record.
        assert_eq!(summarize_segment(b.segment(0), SEG).unwrap().last_record_lsn, Some(sw));
        assert_eq!(summarize_segment(b.segment(1), SEG).unwrap().first_record, Some((c, sw)));
    }

    /// Feeds `seg` to `reader` in `piece`-byte pieces, collecting records as [`collect`] does.
    fn collect_in_pieces(reader: &mut WalReader, seg: &[u8], piece: usize) -> (FeedOutcome, Collected) {
        let mut recs = Vec::new();
        reader.begin_segment().unwrap();
        for p in seg.chunks(piece) {
            reader.feed_pages(p, |r| recs.push((r.lsn, r.xl_rmid, r.xl_info, r.main_data.to_vec()))).unwrap();
        }
        (reader.finish_segment().unwrap(), recs)
    }

    #[test]
    fn feeding_in_pieces_walks_exactly_as_whole_segments() {
        // Records across pages and segments, a switch with garbage after it, then a zero tail.
        let mut b = WalBuilder::new(3);
        b.commit(1, 11);
        b.add(0, 0, 21, &[], &vec![0x5Au8; (SEG + SEG / 3) as usize]);
        b.commit(2, 22);
        b.add(0, 0, 21, &[], &vec![7u8; 3 * PAGE + 100]);
        b.add(0, XLOG_SWITCH, RM_XLOG_ID, &[], &[]);
        let i = b.idx(b.pos);
        b.buf[i..i + 64].fill(0xEE);
        assert!(b.pos < START + 2 * SEG, "the switch is in segment 1");
        b.pos = START + 2 * SEG;
        b.commit(3, 33);
        for piece in [PAGE, 2 * PAGE, 64 << 10, 3 * PAGE, SEG as usize] {
            let mut whole = WalReader::new(SEG).unwrap();
            let mut pieces = WalReader::new(SEG).unwrap();
            for n in 0..3 {
                let expected = collect(&mut whole, b.segment(n));
                assert_eq!(collect_in_pieces(&mut pieces, b.segment(n), piece), expected, "segment {n}, piece {piece}");
                assert_eq!(pieces.next_segment_lsn(), whole.next_segment_lsn());
                assert_eq!(pieces.pending_record(), whole.pending_record());
                let mut sum = SegmentSummarizer::starting_at(SEG, START + n as u64 * SEG).unwrap();
                b.segment(n).chunks(piece).for_each(|p| sum.feed(p).unwrap());
                assert_eq!(sum.finish(), summarize_segment_at(b.segment(n), SEG, START + n as u64 * SEG));
            }
            assert_eq!(pieces.end_of_wal(), whole.end_of_wal());
        }
    }

    #[test]
    fn pieces_must_be_whole_pages_and_cover_the_segment() {
        let mut b = WalBuilder::new(1);
        b.add(0, 0, 21, &[], &vec![1u8; 5 * PAGE]);
        b.commit(1, 1);
        let seg = b.segment(0);
        let mut r = WalReader::new(SEG).unwrap();
        assert_eq!(r.feed_pages(&seg[..PAGE], |_| {}), Err(WalParseError::PieceMisaligned { offset: 0, len: PAGE }));
        r.begin_segment().unwrap();
        assert_eq!(r.feed_pages(&seg[..100], |_| {}), Err(WalParseError::PieceMisaligned { offset: 0, len: 100 }));
        r.begin_segment().unwrap();
        r.feed_pages(&seg[..PAGE], |_| {}).unwrap();
        assert_eq!(
            r.feed_pages(&seg[PAGE..PAGE + 10], |_| {}),
            Err(WalParseError::PieceMisaligned { offset: PAGE as u64, len: 10 })
        );
        let mut r = WalReader::new(SEG).unwrap();
        r.begin_segment().unwrap();
        r.feed_pages(&seg[..4 * PAGE], |_| {}).unwrap();
        assert_eq!(r.finish_segment(), Err(WalParseError::SegmentLength { expected: SEG, actual: 4 * PAGE as u64 }));
        let mut r = WalReader::new(SEG).unwrap();
        r.begin_segment().unwrap();
        r.feed_pages(seg, |_| {}).unwrap();
        assert_eq!(
            r.feed_pages(&seg[..PAGE], |_| {}),
            Err(WalParseError::SegmentLength { expected: SEG, actual: SEG + PAGE as u64 })
        );
    }

    #[test]
    fn bad_prev_link_and_rmgr_are_errors() {
        let mut b = WalBuilder::new(1);
        b.commit(1, 1);
        let c = b.commit(2, 2);
        b.commit(3, 3);
        let mut bad = WalBuilder { buf: b.buf.clone(), ..WalBuilder::new(0) };
        bad.patch_record(c, |r| r[8] ^= 0x08);
        assert!(matches!(
            summarize_segment(&bad.buf, SEG),
            Err(WalParseError::BadPrevLink { lsn, expected: Some(_), .. }) if lsn == c
        ));
        let mut bad = WalBuilder { buf: b.buf.clone(), ..WalBuilder::new(0) };
        bad.patch_record(c, |r| r[17] = 60);
        assert_eq!(summarize_segment(&bad.buf, SEG), Err(WalParseError::InvalidRmgr { lsn: c, rmid: 60 }));
    }

    #[test]
    fn inconsistent_block_headers_are_layout_errors() {
        let mut b = WalBuilder::new(1);
        let l = b.add(1, 0, 10, &[block(0, BKPBLOCK_HAS_DATA, &[])], &[1, 2, 3]);
        assert!(matches!(
            summarize_segment(b.segment(0), SEG),
            Err(WalParseError::BadRecordLayout { lsn, .. }) if lsn == l
        ));
        let mut b = WalBuilder::new(1);
        b.add(1, 0, 10, &[block(1, 0, &[]), block(1, BKPBLOCK_SAME_REL, &[])], &[]);
        assert!(matches!(
            summarize_segment(b.segment(0), SEG),
            Err(WalParseError::BadRecordLayout { reason: "out-of-order block_id", .. })
        ));
        let mut b = WalBuilder::new(1);
        b.add(1, 0, 10, &[block(0, BKPBLOCK_SAME_REL, &[])], &[]);
        assert!(matches!(
            summarize_segment(b.segment(0), SEG),
            Err(WalParseError::BadRecordLayout { reason: "BKPBLOCK_SAME_REL set but no previous rel", .. })
        ));
        // A commit whose main data is too short for xact_time.
        let mut b = WalBuilder::new(1);
        let l = b.add(1, XLOG_XACT_COMMIT, RM_XACT_ID, &[], &[1, 2, 3]);
        assert!(matches!(
            summarize_segment(b.segment(0), SEG),
            Err(WalParseError::BadXactRecord { lsn, .. }) if lsn == l
        ));
    }

    #[test]
    fn file_names_times_and_lsns() {
        let m16 = 16 << 20;
        assert_eq!(parse_segment_file_name("000000010000000000000003", m16), Some((1, 3 * m16)));
        assert_eq!(parse_segment_file_name("00000002000000010000000A", m16), Some((2, 0x1_0000_0000 + 10 * m16)));
        assert_eq!(parse_segment_file_name("0000000100000000000000FF", m16), Some((1, 255 * m16)));
        assert_eq!(parse_segment_file_name("000000010000000000000100", m16), None);
        assert_eq!(parse_segment_file_name("00000001000000000000000a", m16), None);
        assert_eq!(parse_segment_file_name("000000010000000000000003.partial", m16), None);
        assert_eq!(parse_segment_file_name("000000010000000000000003", 3), None);
        assert_eq!(pg_time_to_unix_us(0), 946_684_800_000_000);
        assert_eq!(pg_time_to_unix_us(i64::MAX), i64::MAX);
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(format_lsn(0x0150_0028), "0/1500028");
    }

    /// Bounded fuzzing of the reader: mutated real-looking segments never panic or hang.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;
        use std::sync::OnceLock;

        /// WAL bytes, and (offset, length) of its single-page records.
        type Wal = (Vec<u8>, Vec<(usize, usize)>);

        /// Two segments of real-looking WAL (block references with and without images, commits
        /// and aborts with optional sections, records split across pages and one across the
        /// segment edge) and the single-page records in it, as (offset, length).
        fn wal() -> &'static Wal {
            static WAL: OnceLock<Wal> = OnceLock::new();
            WAL.get_or_init(|| {
                let mut b = WalBuilder::new(2);
                let mut lsns = Vec::new();
                let sub = [2u32.to_le_bytes(), 901u32.to_le_bytes(), 902u32.to_le_bytes()].concat();
                let mut inval = 3i32.to_le_bytes().to_vec();
                inval.extend([0x44u8; 3 * 16]);
                let mut x = 1u32;
                while b.pos < START + SEG + SEG / 2 {
                    let lsn = match x % 6 {
                        0 => b.commit(x, 1_000_000 + i64::from(x)),
                        1 => {
                            let image = Some((vec![0x55; 900], 300, BKPIMAGE_HAS_HOLE | 0x04, Some(500)));
                            let frags = [
                                Frag::Block {
                                    id: 0,
                                    fork_flags: BKPBLOCK_HAS_IMAGE | BKPBLOCK_HAS_DATA,
                                    data: vec![1; 40],
                                    image,
                                },
                                block(1, BKPBLOCK_SAME_REL | BKPBLOCK_HAS_DATA, &[2; 17]),
                                Frag::Origin(3),
                            ];
                            b.add(x, 0, 10, &frags, &[3; 30])
                        }
                        2 => {
                            let main = xact_main(2_000_000, Some((XACT_XINFO_HAS_SUBXACTS, &sub)));
                            b.add(x, XLOG_XACT_ABORT | XLOG_XACT_HAS_INFO, RM_XACT_ID, &[Frag::Toplevel(7)], &main)
                        }
                        3 => b.add(0, 0, 21, &[], &vec![0xAB; (x as usize * 977) % 12_000 + 1]),
                        4 => {
                            let main = xact_main(3_000_000, Some((XACT_XINFO_HAS_INVALS, &inval)));
                            b.add(x, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, RM_XACT_ID, &[], &main)
                        }
                        _ => b.add(x, 0, 10, &[block(0, BKPBLOCK_HAS_DATA, &[9; 300])], &[]),
                    };
                    lsns.push(lsn);
                    x += 1;
                }
                let single_page = lsns
                    .iter()
                    .map(|&l| (b.idx(l), le_u32(&b.buf, b.idx(l)).unwrap() as usize))
                    .filter(|&(i, len)| i / PAGE == (i + len - 1) / PAGE)
                    .collect();
                (b.buf, single_page)
            })
        }

        /// One change to the two segments.
        #[derive(Debug, Clone)]
        enum Mutation {
            /// XOR a byte anywhere.
            Xor(usize, u8),
            /// XOR a byte of a page header (magic, flags, timeline, address, remaining length).
            PageHeader(usize, usize, u8),
            /// Change a byte of a record past its length field and fix its CRC, so the layout
            /// decoder (block headers, lengths, xact sections) sees it.
            Record(usize, usize, u8),
            /// Zero a range.
            Zero(usize, usize),
            /// Copy a range over another (stale pages, torn writes).
            Copy(usize, usize, usize),
        }

        fn mutation() -> impl Strategy<Value = Mutation> {
            let len = 2 * SEG as usize;
            prop_oneof![
                (0..len, 1u8..).prop_map(|(i, m)| Mutation::Xor(i, m)),
                (0..2 * PAGES_PER_SEG as usize, 0..40usize, 1u8..).prop_map(|(p, o, m)| Mutation::PageHeader(p, o, m)),
                (any::<usize>(), 4..4096usize, 1u8..).prop_map(|(r, o, m)| Mutation::Record(r, o, m)),
                (0..len, 1..20_000usize).prop_map(|(i, n)| Mutation::Zero(i, n)),
                (0..len, 0..len, 1..20_000usize).prop_map(|(a, b, n)| Mutation::Copy(a, b, n)),
            ]
        }

        fn apply(buf: &mut [u8], m: &Mutation, records: &[(usize, usize)]) {
            let len = buf.len();
            match *m {
                Mutation::Xor(i, x) => buf[i] ^= x,
                Mutation::PageHeader(p, o, x) => buf[p * PAGE + o] ^= x,
                Mutation::Record(r, o, x) => {
                    let (at, n) = records[r % records.len()];
                    buf[at + o % n.max(5)] ^= x;
                    let crc = record_crc(&buf[at..at + n]);
                    buf[at + 20..at + 24].copy_from_slice(&crc.to_le_bytes());
                }
                Mutation::Zero(i, n) => buf[i..(i + n).min(len)].fill(0),
                Mutation::Copy(from, to, n) => {
                    let n = n.min(len - from).min(len - to);
                    buf.copy_within(from..from + n, to);
                }
            }
        }

        /// Runs every entry point over the two segments; only their results are allowed out.
        fn read_all(buf: &[u8]) {
            let (s0, s1) = buf.split_at(SEG as usize);
            let _ = summarize_segment(s0, SEG);
            let _ = summarize_segment_at(s1, SEG, START + SEG);
            let mut r = WalReader::starting_at(SEG, START).unwrap();
            for seg in [s0, s1] {
                let res = r.feed_segment(seg, |rec| {
                    let _ = xact_end_from_record(rec);
                });
                if res.is_err() {
                    break;
                }
                let _ = (r.pending_record(), r.pending_xact_end(), r.end_of_wal(), r.last_record_end_lsn());
            }
            if let Ok(mut s) = SegmentSummarizer::starting_at(SEG, START) {
                let fed = s0.chunks(64 * PAGE).try_for_each(|piece| s.feed(piece));
                if fed.is_ok() {
                    let _ = s.finish();
                }
            }
        }

        #[test]
        fn fuzz_unmutated_wal_reads_cleanly() {
            let (buf, records) = wal();
            assert!(records.len() > 100, "{} single-page records", records.len());
            let s = summarize_segment_at(&buf[..SEG as usize], SEG, START).unwrap();
            assert!(s.records > 100 && s.incomplete.is_some(), "{s:?}");
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn fuzz_mutated_segments_never_panic(muts in proptest::collection::vec(mutation(), 1..6)) {
                let (orig, records) = wal();
                let mut buf = orig.clone();
                for m in &muts {
                    apply(&mut buf, m, records);
                }
                read_all(&buf);
            }

            #[test]
            fn fuzz_short_or_random_input_is_an_error(len in 0..3 * PAGE, seed in any::<u64>(), keep_header in any::<bool>()) {
                let mut x = seed | 1;
                let mut buf: Vec<u8> = (0..len).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x as u8 }).collect();
                if keep_header {
                    let n = len.min(SIZE_OF_LONG_PHD);
                    buf[..n].copy_from_slice(&wal().0[..n]);
                }
                prop_assert!(summarize_segment(&buf, SEG).is_err());
                let mut r = WalReader::starting_at(SEG, START).unwrap();
                let _ = r.feed_pages(&buf, |_| {});
            }
        }
    }

    /// One segment of `fmt`'s WAL: an image-bearing record in that major's flags, a
    /// two-phase commit whose xid lies past that major's xinfo sections, a plain commit, an
    /// abort and a switch.
    fn major_segment(fmt: &WalFormat) -> (Vec<u8>, [u64; 4]) {
        let mut b = WalBuilder::with_magic(2, fmt.page_magic);
        let images = [Frag::Block {
            id: 0,
            fork_flags: BKPBLOCK_HAS_IMAGE,
            data: vec![],
            // Compressed with a hole (hole length stored), to be applied at replay.
            image: Some((
                vec![0x5A; 700],
                100,
                BKPIMAGE_HAS_HOLE | fmt.bkpimage_compressed | fmt.bkpimage_apply,
                Some(40),
            )),
        }];
        b.add(0, 0, 10, &images, &[9; 20]);
        // COMMIT_PREPARED: dbinfo, subxacts, relfilenodes, (15+) dropped stats, invals, twophase.
        let mut sections = Vec::new();
        let mut xinfo = XACT_XINFO_HAS_DBINFO
            | XACT_XINFO_HAS_SUBXACTS
            | XACT_XINFO_HAS_RELFILENODES
            | XACT_XINFO_HAS_INVALS
            | XACT_XINFO_HAS_TWOPHASE;
        sections.extend([0u8; 8]);
        sections.extend(2i32.to_le_bytes());
        sections.extend([0u8; 8]);
        sections.extend(1i32.to_le_bytes());
        sections.extend([0u8; SIZE_OF_REL_FILE_NODE]);
        if let Some(item) = fmt.xact_stats_item_size {
            xinfo |= XACT_XINFO_HAS_DROPPED_STATS;
            sections.extend(3i32.to_le_bytes());
            sections.extend(vec![0u8; 3 * item]);
        }
        sections.extend(1i32.to_le_bytes());
        sections.extend([0u8; SIZE_OF_SHARED_INVAL_MSG]);
        sections.extend(4242u32.to_le_bytes());
        let main = xact_main(7_000_000, Some((xinfo, &sections)));
        let cp = b.add(0, XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_HAS_INFO, RM_XACT_ID, &[], &main);
        let c = b.commit(77, 8_000_000);
        let a = b.add(78, XLOG_XACT_ABORT, RM_XACT_ID, &[], &xact_main(9_000_000, None));
        let sw = b.add(0, XLOG_SWITCH, RM_XLOG_ID, &[], &[]);
        (b.segment(0).to_vec(), [cp, c, a, sw])
    }

    #[test]
    fn every_major_13_to_18_is_read() {
        for fmt in &layout::FORMATS {
            let (seg, [cp, c, a, sw]) = major_segment(fmt);
            let s = summarize_segment_at(&seg, SEG, START).unwrap_or_else(|e| panic!("PG{}: {e}", fmt.major));
            assert_eq!(s.records, 5, "PG{}", fmt.major);
            assert_eq!(s.stop, StopReason::Switch { lsn: sw }, "PG{}", fmt.major);
            let ends: Vec<(u64, u32, XactKind, i64)> =
                s.xact_ends.iter().map(|e| (e.lsn, e.xid, e.kind, e.time_us)).collect();
            assert_eq!(
                ends,
                [
                    (cp, 4242, XactKind::CommitPrepared, 7_000_000),
                    (c, 77, XactKind::Commit, 8_000_000),
                    (a, 78, XactKind::Abort, 9_000_000)
                ],
                "PG{}",
                fmt.major
            );
            assert_eq!((s.first_commit_us, s.last_commit_us), (Some(7_000_000), Some(8_000_000)));
            assert_eq!(s.last_complete_lsn, Some(sw));
            let mut r = WalReader::starting_at(SEG, START).unwrap();
            assert_eq!(r.format(), None);
            let mut formats = Vec::new();
            r.feed_segment(&seg, |rec| formats.push(rec.format.major)).unwrap();
            assert_eq!(r.format(), Some(fmt));
            assert!(formats.iter().all(|m| *m == fmt.major));
        }
    }

    #[test]
    fn image_flags_are_read_in_the_segments_major() {
        // bimg_info 0x05 is "hole, apply" to 13–14 (no hole length follows) but "hole,
        // PGLZ-compressed" to 15+ (a hole length must follow).
        for fmt in &layout::FORMATS {
            let mut b = WalBuilder::with_magic(1, fmt.page_magic);
            let img = |hole_len| Frag::Block {
                id: 0,
                fork_flags: BKPBLOCK_HAS_IMAGE,
                data: vec![],
                image: Some((vec![1; 8000], 100, BKPIMAGE_HAS_HOLE | 0x04, hole_len)),
            };
            let old = fmt.major < 15;
            b.add(0, 0, 10, &[img(if old { None } else { Some(192) })], &[1; 8]);
            b.commit(5, 5);
            assert!(summarize_segment(b.segment(0), SEG).is_ok(), "PG{}", fmt.major);
            // The same bytes read as the other generation are inconsistent.
            let mut b = WalBuilder::with_magic(1, fmt.page_magic);
            b.add(0, 0, 10, &[img(if old { Some(192) } else { None })], &[1; 8]);
            b.commit(5, 5);
            assert!(
                matches!(summarize_segment(b.segment(0), SEG), Err(WalParseError::BadRecordLayout { .. })),
                "PG{}",
                fmt.major
            );
        }
    }

    #[test]
    fn block_ids_and_rmgrs_per_major() {
        for fmt in &layout::FORMATS {
            let mut b = WalBuilder::with_magic(1, fmt.page_magic);
            b.add(1, XLOG_XACT_COMMIT, RM_XACT_ID, &[Frag::Toplevel(9)], &xact_main(1, None));
            let r = summarize_segment(b.segment(0), SEG);
            // XLR_BLOCK_ID_TOPLEVEL_XID is new in 14.
            assert_eq!(r.is_ok(), fmt.major >= 14, "PG{}: {r:?}", fmt.major);
            let mut b = WalBuilder::with_magic(1, fmt.page_magic);
            b.add(0, 0, 130, &[], &[1; 8]);
            let r = summarize_segment(b.segment(0), SEG);
            // Custom resource managers are new in 15.
            assert_eq!(r.is_ok(), fmt.major >= 15, "PG{}: {r:?}", fmt.major);
            let mut b = WalBuilder::with_magic(1, fmt.page_magic);
            b.add(0, 0, fmt.rm_max_builtin_id + 1, &[], &[1; 8]);
            assert!(matches!(summarize_segment(b.segment(0), SEG), Err(WalParseError::InvalidRmgr { .. })));
        }
    }

    #[test]
    fn a_segment_keeps_its_first_pages_major_and_unknown_majors_say_what_works() {
        // A later page of another major is corruption, not a new format.
        let mut b = WalBuilder::with_magic(1, layout::PG16.page_magic);
        b.add(0, 0, 21, &[], &vec![1u8; 40_000]);
        let mut seg = b.segment(0).to_vec();
        seg[2 * PAGE..2 * PAGE + 2].copy_from_slice(&layout::PG17.page_magic.to_le_bytes());
        assert_eq!(
            summarize_segment(&seg, SEG),
            Err(WalParseError::BadPageMagic { page_lsn: START + 2 * PAGE as u64, magic: 0xD116 })
        );
        // So is the next segment of a stream.
        let mut b = WalBuilder::with_magic(2, layout::PG13.page_magic);
        b.commit(1, 1);
        b.pad_to(START + SEG + 40);
        b.commit(2, 2);
        let mut two = b.buf.clone();
        two[SEG as usize..SEG as usize + 2].copy_from_slice(&layout::PG14.page_magic.to_le_bytes());
        let mut r = WalReader::new(SEG).unwrap();
        r.feed_segment(&two[..SEG as usize], |_| {}).unwrap();
        assert!(matches!(
            r.feed_segment(&two[SEG as usize..], |_| {}),
            Err(WalParseError::BadPageMagic { magic: 0xD10D, .. })
        ));
        // PostgreSQL 12 and a future major: the error is the user's message.
        for (magic, what) in [(0xD101u16, "PostgreSQL 12"), (0xD121, "unknown WAL page magic 0xD121")] {
            let mut b = WalBuilder::with_magic(1, magic);
            b.commit(1, 1);
            let e = summarize_segment_at(b.segment(0), SEG, START).unwrap_err();
            assert_eq!(e, WalParseError::UnsupportedMajor { page_lsn: START, magic });
            let msg = e.to_string();
            assert!(msg.starts_with(what), "{msg}");
            assert!(msg.ends_with("is not supported for time targets; --latest and --target-lsn work"), "{msg}");
        }
    }
}
