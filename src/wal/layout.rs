//! The WAL format of each PostgreSQL major the record reader reads, 13 to 18 (pure, no I/O).
//!
//! One table per major, read off that version's `xlog_internal.h`, `xlogrecord.h`,
//! `xact.h` and `rmgrlist.h`; the page magic of each was also checked against WAL written by
//! a real server of that major (`tests/it/majors.rs`). Only what differs between the majors
//! is here: the page and record headers (`XLogPageHeaderData`, `XLogRecord`,
//! `XLogRecordBlockHeader`), the block-reference flags (`BKPBLOCK_*`), the transaction
//! opcodes (`XLOG_XACT_*`), the `xinfo` bits 0–7 and `XLOG_SWITCH` are the same in all of
//! them and live in `record/constants.rs`.
//!
//! What changed, by major:
//! - 14: `XLR_BLOCK_ID_TOPLEVEL_XID` (252), a block id carrying the top-level xid.
//! - 15: full-page images name their compression (`BKPIMAGE_COMPRESS_PGLZ|LZ4|ZSTD`, 0x04,
//!   0x08, 0x10) instead of one `BKPIMAGE_IS_COMPRESSED` (0x02), and `BKPIMAGE_APPLY` moved
//!   from 0x04 to 0x02; commit/abort records gain `XACT_XINFO_HAS_DROPPED_STATS` (1 << 8)
//!   with 12-byte `xl_xact_stats_item`s; custom resource managers (ids 128–255).
//! - 16, 17: only the page magic (`RelFileNode` became `RelFileLocator`, same 12 bytes).
//! - 18: `xl_xact_stats_item` stores a 64-bit object id as two uint32s: 16 bytes.

/// One major's WAL format, as far as the record reader needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalFormat {
    /// PostgreSQL major version.
    pub major: u32,
    /// `XLOG_PAGE_MAGIC`.
    pub page_magic: u16,
    /// `bimg_info` bits that say the image is compressed (then a hole's length is stored).
    pub bkpimage_compressed: u8,
    /// `BKPIMAGE_APPLY`: the image is restored at replay.
    pub bkpimage_apply: u8,
    /// Whether block id `XLR_BLOCK_ID_TOPLEVEL_XID` (252) exists.
    pub toplevel_xid_block: bool,
    /// `RM_MAX_ID` / `RM_MAX_BUILTIN_ID`: the highest built-in resource manager id.
    pub rm_max_builtin_id: u8,
    /// Whether custom resource managers (ids 128–255) exist.
    pub custom_rmgrs: bool,
    /// `sizeof(xl_xact_stats_item)`, if commit/abort records have `XACT_XINFO_HAS_DROPPED_STATS`.
    pub xact_stats_item_size: Option<usize>,
}

/// `BKPIMAGE_HAS_HOLE`, the same in every major.
pub const BKPIMAGE_HAS_HOLE: u8 = 0x01;

/// PostgreSQL 13.
pub const PG13: WalFormat = WalFormat {
    major: 13,
    page_magic: 0xD106,
    bkpimage_compressed: 0x02, // BKPIMAGE_IS_COMPRESSED
    bkpimage_apply: 0x04,
    toplevel_xid_block: false,
    rm_max_builtin_id: 21, // RM_LOGICALMSG_ID
    custom_rmgrs: false,
    xact_stats_item_size: None,
};

/// PostgreSQL 14.
pub const PG14: WalFormat = WalFormat { major: 14, page_magic: 0xD10D, toplevel_xid_block: true, ..PG13 };

/// PostgreSQL 15.
pub const PG15: WalFormat = WalFormat {
    major: 15,
    page_magic: 0xD110,
    bkpimage_compressed: 0x04 | 0x08 | 0x10, // BKPIMAGE_COMPRESS_PGLZ | _LZ4 | _ZSTD
    bkpimage_apply: 0x02,
    toplevel_xid_block: true,
    rm_max_builtin_id: 21,
    custom_rmgrs: true,
    xact_stats_item_size: Some(12), // int kind, Oid dboid, Oid objoid
};

/// PostgreSQL 16.
pub const PG16: WalFormat = WalFormat { major: 16, page_magic: 0xD113, ..PG15 };

/// PostgreSQL 17.
pub const PG17: WalFormat = WalFormat { major: 17, page_magic: 0xD116, ..PG15 };

/// PostgreSQL 18.
pub const PG18: WalFormat = WalFormat {
    major: 18,
    page_magic: 0xD118,
    xact_stats_item_size: Some(16), // int kind, Oid dboid, uint32 objid_lo, uint32 objid_hi
    ..PG15
};

/// Every major the reader reads, oldest first.
pub const FORMATS: [WalFormat; 6] = [PG13, PG14, PG15, PG16, PG17, PG18];

/// Page magics of majors the reader does not read (for naming them in messages).
const OLDER: [(u16, u32); 3] = [(0xD097, 10), (0xD098, 11), (0xD101, 12)];

/// The format of WAL whose pages carry `magic`, if the reader reads it.
pub fn for_magic(magic: u16) -> Option<&'static WalFormat> {
    FORMATS.iter().find(|f| f.page_magic == magic)
}

/// The major that writes pages with `magic`, when known (10 to 18).
pub fn major_of_magic(magic: u16) -> Option<u32> {
    for_magic(magic).map(|f| f.major).or_else(|| OLDER.iter().find(|(m, _)| *m == magic).map(|(_, v)| *v))
}

/// Why WAL with page magic `magic` has no commit times, in the user's words.
pub fn unsupported_message(magic: u16) -> String {
    let what = match major_of_magic(magic) {
        Some(v) => format!("PostgreSQL {v}"),
        None if magic > PG18.page_magic => format!("unknown WAL page magic {magic:#06X} (a PostgreSQL newer than 18?)"),
        None => format!("unknown WAL page magic {magic:#06X}"),
    };
    format!("{what} is not supported for time targets; --latest and --target-lsn work")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_per_major_13_to_18_with_distinct_magics() {
        let majors: Vec<u32> = FORMATS.iter().map(|f| f.major).collect();
        assert_eq!(majors, [13, 14, 15, 16, 17, 18]);
        let magics: Vec<u16> = FORMATS.iter().map(|f| f.page_magic).collect();
        assert_eq!(magics, [0xD106, 0xD10D, 0xD110, 0xD113, 0xD116, 0xD118]);
        // PostgreSQL only ever bumps the magic.
        assert!(magics.windows(2).all(|w| w[0] < w[1]));
        for f in &FORMATS {
            assert_eq!(for_magic(f.page_magic), Some(f));
            assert_eq!(major_of_magic(f.page_magic), Some(f.major));
        }
    }

    #[test]
    fn every_other_magic_is_not_read() {
        for magic in 0..=u16::MAX {
            if !FORMATS.iter().any(|f| f.page_magic == magic) {
                assert_eq!(for_magic(magic), None, "{magic:#06x}");
            }
        }
        assert_eq!(major_of_magic(0xD101), Some(12));
        assert_eq!(major_of_magic(0xD098), Some(11));
        assert_eq!(major_of_magic(0xD097), Some(10));
        assert_eq!(major_of_magic(0xD121), None);
    }

    #[test]
    fn image_flags_per_major() {
        for f in &FORMATS {
            // The hole, compression and apply bits never overlap.
            assert_eq!(f.bkpimage_compressed & (BKPIMAGE_HAS_HOLE | f.bkpimage_apply), 0, "PG{}", f.major);
            assert_eq!(BKPIMAGE_HAS_HOLE & f.bkpimage_apply, 0);
            let (compressed, apply) = if f.major < 15 { (0x02, 0x04) } else { (0x1C, 0x02) };
            assert_eq!((f.bkpimage_compressed, f.bkpimage_apply), (compressed, apply), "PG{}", f.major);
        }
    }

    #[test]
    fn record_and_xact_differences_per_major() {
        let row = |f: &WalFormat| (f.toplevel_xid_block, f.custom_rmgrs, f.rm_max_builtin_id, f.xact_stats_item_size);
        assert_eq!(row(&PG13), (false, false, 21, None));
        assert_eq!(row(&PG14), (true, false, 21, None));
        for f in [PG15, PG16, PG17] {
            assert_eq!(row(&f), (true, true, 21, Some(12)), "PG{}", f.major);
        }
        assert_eq!(row(&PG18), (true, true, 21, Some(16)));
    }

    #[test]
    fn messages_name_the_major_or_the_magic() {
        assert_eq!(
            unsupported_message(0xD101),
            "PostgreSQL 12 is not supported for time targets; --latest and --target-lsn work"
        );
        assert_eq!(
            unsupported_message(0xD121),
            "unknown WAL page magic 0xD121 (a PostgreSQL newer than 18?) is not supported for time targets; --latest and --target-lsn work"
        );
        assert_eq!(
            unsupported_message(0xD093),
            "unknown WAL page magic 0xD093 is not supported for time targets; --latest and --target-lsn work"
        );
    }
}
