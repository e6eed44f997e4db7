//! The streaming reader: walks the pages of whole, consecutive segments (fed whole or in
//! whole-page pieces), validates page and record headers, reassembles records that cross
//! pages and segments, and hands out each complete, CRC-checked record (`xlogreader.c`).

use super::constants::{
    RM_MIN_CUSTOM_ID, RM_XLOG_ID, SIZE_OF_LONG_PHD, SIZE_OF_SHORT_PHD, SIZE_OF_XLOG_RECORD, XLOG_OVERWRITE_CONTRECORD,
    XLOG_SWITCH, XLP_ALL_FLAGS, XLP_FIRST_IS_CONTRECORD, XLP_FIRST_IS_OVERWRITE_CONTRECORD, XLR_RMGR_INFO_MASK,
};
use super::decode::{
    align8, decode_layout, le_u32, le_u64, record_crc, BlockRef, LayoutError, LongPageHeader, PageHeader, RecordHeader,
    WalRecord,
};
use super::xact::{xact_end_from_partial, XactEnd};
use super::WalParseError;
use crate::wal::layout::{self, WalFormat};
use crate::wal::name::check_segment_size;

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
    /// The first bytes of the record tail skipped at the start (see [`WalReader::leading_continuation`]).
    leading: Option<Vec<u8>>,
    /// The block references of the record being handed out (kept to reuse its allocation).
    block_refs: Vec<BlockRef>,
}

/// At most this many bytes of a skipped leading record tail are kept: enough for the rest of
/// any record's fragment headers (33 block headers are under 1 KiB) and a small main data.
pub(super) const LEADING_CAP: usize = 1024;

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
        check_segment_size(wal_segment_size).map_err(|_| WalParseError::InvalidSegmentSize(wal_segment_size))?;
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
            leading: None,
            block_refs: Vec::new(),
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

    /// The segment size the reader was made for.
    pub(super) fn segment_size(&self) -> u64 {
        self.seg_size
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

    /// The first bytes (at most [`LEADING_CAP`]) of the tail of a record begun before the
    /// first segment fed, which the walk skipped: the next bytes of the record the previous
    /// segment left open.
    pub(super) fn leading_continuation(&self) -> Option<&[u8]> {
        self.leading.as_deref()
    }

    /// The unfinished record as (LSN, `xl_tot_len`, the bytes seen), unless the end of WAL
    /// was found (then it is a torn write that never happened).
    pub(super) fn pending_bytes(&self) -> Option<(u64, u32, &[u8])> {
        match (&self.state, self.ended_at) {
            (State::Pending(p), None) => Some((p.lsn, p.tot_len, &p.buf)),
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
        xact_end_from_partial(p.lsn, p.tot_len, &p.buf, self.fmt())
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
                        if self.leading.is_none() {
                            let n = (rem_len as usize).min(page_end - data_start).min(LEADING_CAP);
                            self.leading = Some(seg[data_start..data_start + n].to_vec());
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
        // The caller checked that the piece holds a long header.
        let h = LongPageHeader::parse(head).ok_or(WalParseError::PieceMisaligned { offset: 0, len: seg.len() })?;
        let (magic, info, pageaddr) = (h.page.magic, h.page.info, h.page.page_addr);
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
        if !h.page.is_long() {
            return Err(WalParseError::MissingLongHeader { page_lsn: where_ });
        }
        let (seg_size, blcksz) = (h.segment_size, h.block_size);
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
        let h = PageHeader::parse(head)
            .ok_or(WalParseError::SegmentLength { expected: self.seg_size, actual: seg.len() as u64 })?;
        let PageHeader { magic, info, timeline: tli, page_addr: pageaddr, rem_len } = h;
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
        let size = if h.is_long() {
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
        let mut blocks = std::mem::take(&mut self.block_refs);
        blocks.clear();
        let layout =
            decode_layout(rec, rec.len(), format, |b| blocks.push(b)).map_err(|e| WalParseError::BadRecordLayout {
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
            raw: rec,
            blocks: &blocks,
        });
        self.block_refs = blocks;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::constants::*;
    use crate::wal::record::synth::*;
    use crate::wal::record::*;

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
