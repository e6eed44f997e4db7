//! Synthetic WAL for tests: records laid into pages as PostgreSQL writes them, with valid
//! CRCs and `xl_prev` links (timeline 1, system identifier 42, 1 MiB segments, 8 KiB pages).

use super::constants::{
    BKPBLOCK_SAME_REL, RM_XACT_ID, SIZE_OF_LONG_PHD, SIZE_OF_REL_FILE_NODE, SIZE_OF_SHORT_PHD, SIZE_OF_XLOG_RECORD,
    XLOG_XACT_COMMIT, XLP_FIRST_IS_CONTRECORD, XLP_FIRST_IS_OVERWRITE_CONTRECORD, XLP_LONG_HEADER,
    XLR_BLOCK_ID_DATA_LONG, XLR_BLOCK_ID_DATA_SHORT, XLR_BLOCK_ID_ORIGIN, XLR_BLOCK_ID_TOPLEVEL_XID,
};
use super::decode::{align8, le_u32, record_crc, RelFileLocator};
use super::{FeedOutcome, WalReader};
use crate::wal::layout;
use crate::wal::name::Segment;

pub(crate) const SEG: u64 = 1 << 20;
pub(crate) const PAGE: usize = 8192;
pub(crate) const PAGES_PER_SEG: u64 = SEG / PAGE as u64;
/// Segment-aligned start for synthetic WAL (segment 5 of timeline 1).
pub(crate) const START: u64 = 5 * SEG;

/// (lsn, rmid, info, main data) of each record.
pub(crate) type Collected = Vec<(u64, u8, u8, Vec<u8>)>;

/// Feeds one whole segment to `reader`, collecting each record it hands out.
pub(crate) fn collect(reader: &mut WalReader, seg: &[u8]) -> (FeedOutcome, Collected) {
    let mut recs = Vec::new();
    let out = reader
        .feed_segment(seg, |r| {
            recs.push((r.lsn, r.xl_rmid, r.xl_info, r.main_data.to_vec()));
        })
        .unwrap();
    (out, recs)
}

/// A fragment of a synthetic record, in header order.
pub(crate) enum Frag {
    Block {
        id: u8,
        fork_flags: u8,
        data: Vec<u8>,
        image: Option<(Vec<u8>, u16, u8, Option<u16>)>,
    },
    /// A block reference to `block` of `rel` (written unless `BKPBLOCK_SAME_REL`).
    BlockAt {
        id: u8,
        fork_flags: u8,
        rel: RelFileLocator,
        block: u32,
        image: Option<(Vec<u8>, u16, u8, Option<u16>)>,
    },
    Origin(u16),
    Toplevel(u32),
}

pub(crate) fn block(id: u8, fork_flags: u8, data: &[u8]) -> Frag {
    Frag::Block { id, fork_flags, data: data.to_vec(), image: None }
}

/// Encode a record the way XLogRecordAssemble lays it out, with a valid CRC.
pub(crate) fn encode(xid: u32, info: u8, rmid: u8, prev: u64, frags: &[Frag], main: &[u8]) -> Vec<u8> {
    let mut hdrs: Vec<u8> = Vec::new();
    let mut payload: Vec<u8> = Vec::new();
    for f in frags {
        match f {
            Frag::Block { id, fork_flags, data, image } => {
                hdrs.push(*id);
                hdrs.push(*fork_flags);
                hdrs.extend((data.len() as u16).to_le_bytes());
                if let Some((bytes, hole_offset, bimg_info, hole_length)) = image {
                    hdrs.extend((bytes.len() as u16).to_le_bytes());
                    hdrs.extend(hole_offset.to_le_bytes());
                    hdrs.push(*bimg_info);
                    if let Some(h) = hole_length {
                        hdrs.extend(h.to_le_bytes());
                    }
                    payload.extend(bytes);
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    hdrs.extend([0x11u8; SIZE_OF_REL_FILE_NODE]);
                }
                hdrs.extend(7u32.to_le_bytes());
                payload.extend(data);
            }
            Frag::BlockAt { id, fork_flags, rel, block, image } => {
                hdrs.push(*id);
                hdrs.push(*fork_flags);
                hdrs.extend(0u16.to_le_bytes());
                if let Some((bytes, hole_offset, bimg_info, hole_length)) = image {
                    hdrs.extend((bytes.len() as u16).to_le_bytes());
                    hdrs.extend(hole_offset.to_le_bytes());
                    hdrs.push(*bimg_info);
                    if let Some(h) = hole_length {
                        hdrs.extend(h.to_le_bytes());
                    }
                    payload.extend(bytes);
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    hdrs.extend(rel_bytes(rel));
                }
                hdrs.extend(block.to_le_bytes());
            }
            Frag::Origin(o) => {
                hdrs.push(XLR_BLOCK_ID_ORIGIN);
                hdrs.extend(o.to_le_bytes());
            }
            Frag::Toplevel(x) => {
                hdrs.push(XLR_BLOCK_ID_TOPLEVEL_XID);
                hdrs.extend(x.to_le_bytes());
            }
        }
    }
    if !main.is_empty() {
        if main.len() < 256 {
            hdrs.extend([XLR_BLOCK_ID_DATA_SHORT, main.len() as u8]);
        } else {
            hdrs.push(XLR_BLOCK_ID_DATA_LONG);
            hdrs.extend((main.len() as u32).to_le_bytes());
        }
        payload.extend(main);
    }
    let tot = SIZE_OF_XLOG_RECORD + hdrs.len() + payload.len();
    let mut rec = Vec::with_capacity(tot);
    rec.extend((tot as u32).to_le_bytes());
    rec.extend(xid.to_le_bytes());
    rec.extend(prev.to_le_bytes());
    rec.extend([info, rmid, 0, 0]);
    rec.extend([0u8; 4]);
    rec.extend(hdrs);
    rec.extend(payload);
    let crc = record_crc(&rec);
    rec[20..24].copy_from_slice(&crc.to_le_bytes());
    rec
}

/// A relation's 12 bytes (`RelFileLocator`).
pub(crate) fn rel_bytes(rel: &RelFileLocator) -> Vec<u8> {
    [rel.spc_oid, rel.db_oid, rel.rel_number].iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A relation in pg_default of database 5.
pub(crate) fn rel(n: u32) -> RelFileLocator {
    RelFileLocator { spc_oid: 1663, db_oid: 5, rel_number: n }
}

/// A block reference to `block` of fork `fork` of `rel`, no image, no data.
pub(crate) fn at(id: u8, rel: RelFileLocator, fork: u8, block: u32) -> Frag {
    Frag::BlockAt { id, fork_flags: fork, rel, block, image: None }
}

/// Commit/abort main data: xact_time, then (if given) xinfo and its sections.
pub(crate) fn xact_main(time: i64, xinfo: Option<(u32, &[u8])>) -> Vec<u8> {
    let mut m = time.to_le_bytes().to_vec();
    if let Some((x, rest)) = xinfo {
        m.extend(x.to_le_bytes());
        m.extend(rest);
    }
    m
}

/// Lays records into pages exactly as PostgreSQL's insertion code does.
pub(crate) struct WalBuilder {
    pub(crate) buf: Vec<u8>,
    pub(crate) pos: u64,
    pub(crate) prev: u64,
    pub(crate) next_page_flags: u16,
    /// Page magic written (the major the WAL pretends to be from).
    pub(crate) magic: u16,
}

impl WalBuilder {
    pub(crate) fn new(nsegs: usize) -> Self {
        Self::with_magic(nsegs, layout::PG15.page_magic)
    }

    pub(crate) fn with_magic(nsegs: usize, magic: u16) -> Self {
        WalBuilder { buf: vec![0; nsegs * SEG as usize], pos: START, prev: START - 200, next_page_flags: 0, magic }
    }

    pub(crate) fn idx(&self, lsn: u64) -> usize {
        (lsn - START) as usize
    }

    pub(crate) fn hdr_size(lsn: u64) -> u64 {
        if lsn.is_multiple_of(SEG) {
            SIZE_OF_LONG_PHD as u64
        } else {
            SIZE_OF_SHORT_PHD as u64
        }
    }

    pub(crate) fn write_page_header(&mut self, page_lsn: u64, flags: u16, rem_len: u32) {
        let i = self.idx(page_lsn);
        let long = page_lsn.is_multiple_of(SEG);
        let info = flags | if long { XLP_LONG_HEADER } else { 0 };
        let magic = self.magic;
        let b = &mut self.buf;
        b[i..i + 2].copy_from_slice(&magic.to_le_bytes());
        b[i + 2..i + 4].copy_from_slice(&info.to_le_bytes());
        b[i + 4..i + 8].copy_from_slice(&1u32.to_le_bytes());
        b[i + 8..i + 16].copy_from_slice(&page_lsn.to_le_bytes());
        b[i + 16..i + 20].copy_from_slice(&rem_len.to_le_bytes());
        if long {
            b[i + 24..i + 32].copy_from_slice(&42u64.to_le_bytes());
            b[i + 32..i + 36].copy_from_slice(&(SEG as u32).to_le_bytes());
            b[i + 36..i + 40].copy_from_slice(&(PAGE as u32).to_le_bytes());
        }
    }

    /// Make `pos` a valid record start, writing the page header if at a page start.
    pub(crate) fn begin(&mut self) {
        if self.pos.is_multiple_of(PAGE as u64) {
            let flags = std::mem::take(&mut self.next_page_flags);
            self.write_page_header(self.pos, flags, 0);
            self.pos += Self::hdr_size(self.pos);
        }
    }

    /// Copy up to `limit` bytes of `rec` at `pos`, adding continuation page headers.
    pub(crate) fn place(&mut self, rec: &[u8], limit: usize) {
        let mut left = &rec[..limit];
        let mut rem_total = rec.len();
        loop {
            let page_end = (self.pos / PAGE as u64 + 1) * PAGE as u64;
            let n = left.len().min((page_end - self.pos) as usize);
            let i = self.idx(self.pos);
            self.buf[i..i + n].copy_from_slice(&left[..n]);
            self.pos += n as u64;
            left = &left[n..];
            rem_total -= n;
            if left.is_empty() {
                break;
            }
            self.write_page_header(self.pos, XLP_FIRST_IS_CONTRECORD, rem_total as u32);
            self.pos += Self::hdr_size(self.pos);
        }
        self.pos = align8(self.pos);
    }

    pub(crate) fn add(&mut self, xid: u32, info: u8, rmid: u8, frags: &[Frag], main: &[u8]) -> u64 {
        self.begin();
        let lsn = self.pos;
        let rec = encode(xid, info, rmid, self.prev, frags, main);
        self.place(&rec, rec.len());
        self.prev = lsn;
        lsn
    }

    pub(crate) fn commit(&mut self, xid: u32, time: i64) -> u64 {
        self.add(xid, XLOG_XACT_COMMIT, RM_XACT_ID, &[], &xact_main(time, None))
    }

    /// A logical-message-like filler of exactly `tot` bytes (multiple of 8, >= 32).
    pub(crate) fn filler(&mut self, tot: u64) -> u64 {
        assert!(tot >= 32 && tot.is_multiple_of(8), "bad filler size {tot}");
        let main_len = if tot - 26 < 256 { tot - 26 } else { tot - 29 };
        let lsn = self.add(0, 0, 21, &[], &vec![0xAB; main_len as usize]);
        assert_eq!(self.prev, lsn);
        lsn
    }

    /// Usable (non-header) bytes from START to `lsn`, which must be past its page header.
    pub(crate) fn usable(lsn: u64) -> u64 {
        let seg = (lsn - START) / SEG;
        let o = (lsn - START) % SEG;
        let p = o / PAGE as u64;
        assert!(o % PAGE as u64 >= Self::hdr_size(lsn - o % PAGE as u64));
        seg * (SEG - 40 - 24 * (PAGES_PER_SEG - 1)) + o - 40 - 24 * p
    }

    /// Add one filler so the next record starts exactly at `target`; returns the filler's LSN.
    pub(crate) fn pad_to(&mut self, target: u64) -> Option<u64> {
        self.begin();
        let d = Self::usable(target) - Self::usable(self.pos);
        let lsn = (d > 0).then(|| self.filler(d));
        // A filler ending at a page end leaves pos before the next header.
        let at = if self.pos.is_multiple_of(PAGE as u64) { self.pos + Self::hdr_size(self.pos) } else { self.pos };
        assert_eq!(at, target, "padding missed its target");
        lsn
    }

    /// Write only the part of a record that fits on the current page (a torn record).
    pub(crate) fn torn(&mut self, info: u8, rmid: u8, main: &[u8]) -> u64 {
        self.begin();
        let lsn = self.pos;
        let rec = encode(9, info, rmid, self.prev, &[], main);
        let page_end = (self.pos / PAGE as u64 + 1) * PAGE as u64;
        let fits = (page_end - self.pos) as usize;
        assert!(rec.len() > fits);
        self.place(&rec, fits);
        self.next_page_flags = XLP_FIRST_IS_OVERWRITE_CONTRECORD;
        lsn
    }

    pub(crate) fn segment(&self, i: usize) -> &[u8] {
        &self.buf[i * SEG as usize..(i + 1) * SEG as usize]
    }

    /// Rewrite a single-page record's header and fix its CRC.
    pub(crate) fn patch_record(&mut self, lsn: u64, patch: impl FnOnce(&mut [u8])) {
        let i = self.idx(lsn);
        let tot = le_u32(&self.buf, i).unwrap() as usize;
        let rec = &mut self.buf[i..i + tot];
        patch(rec);
        let crc = record_crc(rec);
        rec[20..24].copy_from_slice(&crc.to_le_bytes());
    }
}

/// `nsegs` consecutive segments of one history from segment 5 of timeline 1, as
/// (file name, bytes): commits between fillers, records crossing pages and segment edges.
/// Histories built with different `lead`s (bytes of filler first; 0, or a multiple of 8 of
/// at least 32) part at their first record, so none of their segments joins the other's.
pub(crate) fn history(nsegs: usize, lead: u64) -> Vec<(String, Vec<u8>)> {
    let mut b = WalBuilder::new(nsegs);
    if lead > 0 {
        b.filler(lead);
    }
    let end = START + nsegs as u64 * SEG - 4 * PAGE as u64;
    let mut x = 1u32;
    while b.pos < end {
        b.commit(x, 1_000_000 + i64::from(x));
        b.filler(1_000);
        x += 1;
    }
    (0..nsegs)
        .map(|i| {
            let seg = Segment { timeline: 1, number: START / SEG + i as u64 };
            (seg.name(SEG), b.segment(i).to_vec())
        })
        .collect()
}
