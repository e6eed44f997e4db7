//! The on-disk structures, decoded: page headers (the one parser of them, also behind
//! [`crate::wal::header`]), a record's fixed header, the fragment headers that locate its
//! main data (`DecodeXLogRecord`), its CRC-32C; little-endian field access for all of it.

use super::constants::{
    BKPBLOCK_FORK_MASK, BKPBLOCK_HAS_DATA, BKPBLOCK_HAS_IMAGE, BKPBLOCK_SAME_REL, BKPBLOCK_WILL_INIT,
    BKPIMAGE_HAS_HOLE, MAXALIGN, SIZE_OF_REL_FILE_NODE, SIZE_OF_XLOG_RECORD, XLP_LONG_HEADER, XLR_BLOCK_ID_DATA_LONG,
    XLR_BLOCK_ID_DATA_SHORT, XLR_BLOCK_ID_ORIGIN, XLR_BLOCK_ID_TOPLEVEL_XID, XLR_MAX_BLOCK_ID, XL_CRC_OFFSET,
};
use crate::wal::layout::WalFormat;

/// CRC-32C (PostgreSQL's pg_crc32c) of a whole record the way `ValidXLogRecord` computes it:
/// payload first, then header up to `xl_crc`.
pub(super) fn record_crc(rec: &[u8]) -> u32 {
    let (head, payload) = rec.split_at(SIZE_OF_XLOG_RECORD.min(rec.len()));
    // Hardware CRC-32C (SSE4.2 / ARMv8) where available: this walk is on the archive's hot
    // path. The tests check the crate against CRC-32C's bitwise definition.
    crc32c::crc32c_append(crc32c::crc32c(payload), &head[..XL_CRC_OFFSET.min(head.len())])
}

// ---------------------------------------------------------------------------
// Little-endian field access. Callers check lengths first; these return None
// instead of panicking so that a missed check becomes an error, not a crash.
// ---------------------------------------------------------------------------

pub(super) fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

pub(super) fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

pub(super) fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

pub(super) fn align8(x: u64) -> u64 {
    (x + (MAXALIGN - 1)) & !(MAXALIGN - 1)
}

// ---------------------------------------------------------------------------
// Page headers.
// ---------------------------------------------------------------------------

/// The header every WAL page starts with (`XLogPageHeaderData`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageHeader {
    /// `xlp_magic`.
    pub(crate) magic: u16,
    /// `xlp_info`: the `XLP_*` flags.
    pub(crate) info: u16,
    /// `xlp_tli`.
    pub(crate) timeline: u32,
    /// `xlp_pageaddr`: the LSN of the page.
    pub(crate) page_addr: u64,
    /// `xlp_rem_len`: bytes of a record continued from the previous page.
    pub(crate) rem_len: u32,
}

impl PageHeader {
    /// Reads the header at the start of `b`; None if `b` is shorter than its 20 bytes.
    pub(crate) fn parse(b: &[u8]) -> Option<Self> {
        Some(PageHeader {
            magic: le_u16(b, 0)?,
            info: le_u16(b, 2)?,
            timeline: le_u32(b, 4)?,
            page_addr: le_u64(b, 8)?,
            rem_len: le_u32(b, 16)?,
        })
    }

    /// Whether `XLP_LONG_HEADER` is set (the first page of a segment).
    pub(crate) fn is_long(&self) -> bool {
        self.info & XLP_LONG_HEADER != 0
    }
}

/// The long header on the first page of a segment (`XLogLongPageHeaderData`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LongPageHeader {
    /// The short header it begins with.
    pub(crate) page: PageHeader,
    /// `xlp_sysid`: the cluster's system identifier.
    pub(crate) system_identifier: u64,
    /// `xlp_seg_size`.
    pub(crate) segment_size: u32,
    /// `xlp_xlog_blcksz`: the page size.
    pub(crate) block_size: u32,
}

impl LongPageHeader {
    /// Reads the long header at the start of `b`, whatever its flags say; None if `b` is
    /// shorter than its 40 bytes.
    pub(crate) fn parse(b: &[u8]) -> Option<Self> {
        Some(LongPageHeader {
            page: PageHeader::parse(b)?,
            system_identifier: le_u64(b, 24)?,
            segment_size: le_u32(b, 32)?,
            block_size: le_u32(b, 36)?,
        })
    }
}

// ---------------------------------------------------------------------------
// Record header and layout decoding.
// ---------------------------------------------------------------------------

/// The fixed `XLogRecord` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RecordHeader {
    pub(super) tot_len: u32,
    pub(super) xid: u32,
    pub(super) prev: u64,
    pub(super) info: u8,
    pub(super) rmid: u8,
    pub(super) crc: u32,
}

impl RecordHeader {
    /// Parse the 24-byte header at the start of `b`.
    pub(super) fn parse(b: &[u8]) -> Option<Self> {
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

/// A relation's files: `RelFileLocator` (`RelFileNode` before 16), the same 12 bytes in every major.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelFileLocator {
    /// `spcOid`: the tablespace (1663 is pg_default, 1664 pg_global).
    pub spc_oid: u32,
    /// `dbOid`: the database (0 for shared relations).
    pub db_oid: u32,
    /// `relNumber`: the relfilenode, the file name under the database directory.
    pub rel_number: u32,
}

impl RelFileLocator {
    /// Reads the 12 bytes at `at`.
    pub(super) fn parse(b: &[u8], at: usize) -> Option<Self> {
        Some(RelFileLocator { spc_oid: le_u32(b, at)?, db_oid: le_u32(b, at + 4)?, rel_number: le_u32(b, at + 8)? })
    }
}

/// One block reference of a record (`XLogRecordBlockHeader` and what follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    /// The block id (0..=32) within the record.
    pub block_id: u8,
    /// The relation, carried over from the previous block under `BKPBLOCK_SAME_REL`.
    pub rel: RelFileLocator,
    /// `ForkNumber`: 0 main, 1 FSM, 2 visibility map, 3 init (unchecked: as written).
    pub fork: u8,
    /// The block number within the fork.
    pub block: u32,
    /// Whether a full-page image is included (`BKPBLOCK_HAS_IMAGE`).
    pub has_image: bool,
    /// Whether the image is restored at replay (`BKPIMAGE_APPLY`, in the major's bit).
    pub apply_image: bool,
    /// Whether replay initializes the page from scratch (`BKPBLOCK_WILL_INIT`).
    pub will_init: bool,
    /// Whether block data is included (`BKPBLOCK_HAS_DATA`).
    pub has_data: bool,
}

/// Where a record's main data lives, found by walking its fragment headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Layout {
    pub(super) main_start: usize,
    pub(super) main_len: usize,
}

/// Why a layout could not be decoded.
pub(super) enum LayoutError {
    /// The fragment headers run past the bytes available (partial record).
    Truncated,
    /// The fragment headers are inconsistent.
    Invalid(&'static str),
}

/// Decode the fragment headers following the record header, as `DecodeXLogRecord` does,
/// handing each block reference to `on_block` as its header is read.
// `rec` may hold fewer than `tot_len` bytes (a record cut off at a segment
// end); then `Truncated` is returned if a header lies beyond what is present.
pub(super) fn decode_layout<F: FnMut(BlockRef)>(
    rec: &[u8],
    tot_len: usize,
    fmt: &WalFormat,
    mut on_block: F,
) -> Result<Layout, LayoutError> {
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
    let mut rel: Option<RelFileLocator> = None;
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
                let mut apply_image = false;
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    let bimg_len = c.u16()?;
                    let hole_offset = c.u16()?;
                    let bimg_info = c.u8()?;
                    apply_image = bimg_info & fmt.bkpimage_apply != 0;
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
                    rel = RelFileLocator::parse(c.take(SIZE_OF_REL_FILE_NODE)?, 0);
                }
                let Some(rel) = rel else {
                    return Err(LayoutError::Invalid("BKPBLOCK_SAME_REL set but no previous rel"));
                };
                let block = c.u32()?;
                on_block(BlockRef {
                    block_id: id,
                    rel,
                    fork: fork_flags & BKPBLOCK_FORK_MASK,
                    block,
                    has_image: fork_flags & BKPBLOCK_HAS_IMAGE != 0,
                    apply_image,
                    will_init: fork_flags & BKPBLOCK_WILL_INIT != 0,
                    has_data,
                });
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
    /// The whole record: header, fragment headers, block data and main data.
    pub raw: &'a [u8],
    /// Its block references, in block id order (read with its layout, before the callback).
    pub blocks: &'a [BlockRef],
}

impl WalRecord<'_> {
    /// Calls `f` with each block reference, in block id order.
    pub fn for_each_block_ref(&self, f: impl FnMut(BlockRef)) {
        self.blocks.iter().copied().for_each(f);
    }

    /// The block references, in block id order.
    pub fn block_refs(&self) -> Vec<BlockRef> {
        self.blocks.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::layout;
    use crate::wal::name::Lsn;
    use crate::wal::record::constants::*;
    use crate::wal::record::synth::*;
    use crate::wal::record::*;

    #[test]
    fn page_headers_need_their_whole_length() {
        let mut b = WalBuilder::new(1);
        b.commit(1, 1);
        let seg = b.segment(0);
        let long = LongPageHeader::parse(seg).unwrap();
        assert_eq!(
            long.page,
            PageHeader {
                magic: layout::PG15.page_magic,
                info: XLP_LONG_HEADER,
                timeline: 1,
                page_addr: START,
                rem_len: 0
            }
        );
        assert!(long.page.is_long());
        assert_eq!((long.system_identifier, long.segment_size, long.block_size), (42, SEG as u32, PAGE as u32));
        assert_eq!(LongPageHeader::parse(&seg[..40]), Some(long));
        assert_eq!(LongPageHeader::parse(&seg[..39]), None);
        assert_eq!(PageHeader::parse(&seg[..20]), Some(long.page));
        assert_eq!(PageHeader::parse(&seg[..19]), None);
    }

    /// CRC-32C by its definition, a bit at a time: reflected polynomial 0x82F63B78, initial
    /// value and final XOR 0xFFFFFFFF (PostgreSQL's pg_crc32c).
    fn bitwise_crc32c(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn hardware_crc_matches_the_definition() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        let reference = bitwise_crc32c(&data);
        assert_eq!(crc32c::crc32c(&data), reference);
        for cut in [0, 1, 23, 24, 25, 4096, 99_999] {
            let (a, b) = data.split_at(cut);
            assert_eq!(crc32c::crc32c_append(crc32c::crc32c(a), b), reference, "cut {cut}");
        }
    }

    #[test]
    fn crc32c_known_vectors() {
        for crc in [crc32c::crc32c, bitwise_crc32c] {
            assert_eq!(crc(b""), 0);
            assert_eq!(crc(b"123456789"), 0xE306_9283);
            assert_eq!(crc(&[0u8; 32]), 0x8A91_36AA);
            assert_eq!(crc(&[0xFFu8; 32]), 0x62A8_AB43);
            let ascending: Vec<u8> = (0u8..32).collect();
            assert_eq!(crc(&ascending), 0x46DD_794E);
        }
        // The crate's wide (hardware or table) paths must agree with the definition at every
        // length and alignment.
        let data: Vec<u8> = (0u32..300).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for start in 0..9 {
            for end in start..data.len() {
                assert_eq!(crc32c::crc32c(&data[start..end]), bitwise_crc32c(&data[start..end]));
            }
        }
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
        assert!(err.to_string().contains(&Lsn(c).to_string()), "{err}");
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
}
