//! The long page header at the start of every WAL segment (pure, no I/O): what archiving
//! checks before it stores a file. The bytes are read by the record reader's page-header
//! parser, the only one.

use crate::wal::record::{LongPageHeader, PageHeader};

/// Facts read from a segment's first page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// `xlp_magic`: identifies the WAL format version (13 is 0xD106 ... 18 is 0xD118; see
    /// [`crate::wal::layout`]).
    pub magic: u16,
    /// Timeline of the page.
    pub timeline: u32,
    /// LSN of the page (the segment's start).
    pub page_addr: u64,
    /// The cluster's system identifier.
    pub system_identifier: u64,
    /// WAL segment size.
    pub segment_size: u32,
    /// WAL block size.
    pub block_size: u32,
}

/// Why a segment header cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than a long page header.
    #[error("file is {0} bytes, too short for a WAL segment header")]
    TooShort(usize),
    /// The first page lacks the long header flag.
    #[error("first page has no long header (xlp_info {0:#06x}): not the start of a WAL segment")]
    NotLong(u16),
    /// Magic outside the range PostgreSQL has used.
    #[error("unknown WAL page magic {0:#06x}: not a PostgreSQL WAL segment")]
    BadMagic(u16),
}

/// Parses XLogLongPageHeaderData (little-endian, as written on x86-64 and arm64).
pub fn parse(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
    let long = LongPageHeader::parse(bytes).ok_or(HeaderError::TooShort(bytes.len()))?;
    let PageHeader { magic, info, timeline, page_addr, .. } = long.page;
    // PostgreSQL 9.x used 0xD0xx; 10..18 use 0xD097..0xD118. A major the record reader does
    // not read is still WAL: it is archived, only without commit times.
    if !(0xD000..=0xD1FF).contains(&magic) {
        return Err(HeaderError::BadMagic(magic));
    }
    if !long.page.is_long() {
        return Err(HeaderError::NotLong(info));
    }
    Ok(SegmentHeader {
        magic,
        timeline,
        page_addr,
        system_identifier: long.system_identifier,
        segment_size: long.segment_size,
        block_size: long.block_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x0006u16.to_le_bytes());
        b[4..8].copy_from_slice(&2u32.to_le_bytes());
        b[8..16].copy_from_slice(&0x0000_0001_0300_0000u64.to_le_bytes());
        b[24..32].copy_from_slice(&7_300_000_000_000_000_123u64.to_le_bytes());
        b[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    #[test]
    fn parses_long_header() {
        let h = parse(&sample()).unwrap();
        assert_eq!(h.magic, 0xD110);
        assert_eq!(h.timeline, 2);
        assert_eq!(h.page_addr, 0x1_0300_0000);
        assert_eq!(h.system_identifier, 7_300_000_000_000_000_123);
        assert_eq!(h.segment_size, 16 << 20);
        assert_eq!(h.block_size, 8192);
    }

    #[test]
    fn rejects_non_segments() {
        assert_eq!(parse(&[0u8; 10]), Err(HeaderError::TooShort(10)));
        assert_eq!(parse(&[0u8; 64]), Err(HeaderError::BadMagic(0)));
        let mut b = sample();
        b[2] = 0;
        assert!(matches!(parse(&b), Err(HeaderError::NotLong(_))));
    }
}
