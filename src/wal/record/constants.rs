//! The on-disk constants every major 13 to 18 shares (PostgreSQL's `xlog_internal.h`,
//! `xlogrecord.h`, `xact.h`); what differs between majors is in [`crate::wal::layout`].

use crate::wal::layout;

/// Resource manager id of the XLOG rmgr (`RM_XLOG_ID`).
pub const RM_XLOG_ID: u8 = 0;
/// Resource manager id of transaction records (`RM_XACT_ID`).
pub const RM_XACT_ID: u8 = 1;

/// `SizeOfXLogRecord`: offsetof(xl_crc) + 4, not MAXALIGNed in PG >= 9.5.
pub(super) const SIZE_OF_XLOG_RECORD: usize = 24;
/// Offset of `xl_crc` inside `XLogRecord`; the CRC covers the header up to here.
pub(super) const XL_CRC_OFFSET: usize = 20;
/// `SizeOfXLogShortPHD`: MAXALIGN(sizeof(XLogPageHeaderData)) = MAXALIGN(20).
pub(super) const SIZE_OF_SHORT_PHD: usize = 24;
/// `SizeOfXLogLongPHD`: MAXALIGN(sizeof(XLogLongPageHeaderData)) = 40.
pub(super) const SIZE_OF_LONG_PHD: usize = 40;
/// Records and page headers are MAXALIGNed to this many bytes.
pub(super) const MAXALIGN: u64 = 8;

// `xlp_info` flags of a page header.
pub(super) const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
pub(super) const XLP_LONG_HEADER: u16 = 0x0002;
pub(super) const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
pub(super) const XLP_ALL_FLAGS: u16 = 0x000F;

/// `RM_MIN_CUSTOM_ID`: ids 128..=255 are custom resource managers (PG15+; the highest
/// built-in id is per major, in [`layout`]).
pub(super) const RM_MIN_CUSTOM_ID: u8 = 128;
pub(super) const XLR_RMGR_INFO_MASK: u8 = 0xF0;
pub(super) const XLOG_SWITCH: u8 = 0x40;
pub(super) const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;

// Block ids of a record's fragment headers.
pub(super) const XLR_MAX_BLOCK_ID: u8 = 32;
pub(super) const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
pub(super) const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
pub(super) const XLR_BLOCK_ID_ORIGIN: u8 = 253;
pub(super) const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;

// `fork_flags` of a block reference, and its image's `bimg_info` hole bit.
pub(super) const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
pub(super) const BKPBLOCK_HAS_DATA: u8 = 0x20;
pub(super) const BKPBLOCK_SAME_REL: u8 = 0x80;
pub(super) const BKPIMAGE_HAS_HOLE: u8 = layout::BKPIMAGE_HAS_HOLE;
/// `sizeof(RelFileNode)`: spcNode, dbNode, relNode.
pub(super) const SIZE_OF_REL_FILE_NODE: usize = 12;

// Transaction record opcodes (`xl_info`) and the `xinfo` bits of commit/abort records.
pub(super) const XLOG_XACT_OPMASK: u8 = 0x70;
pub(super) const XLOG_XACT_COMMIT: u8 = 0x00;
pub(super) const XLOG_XACT_ABORT: u8 = 0x20;
pub(super) const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
pub(super) const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
pub(super) const XLOG_XACT_HAS_INFO: u8 = 0x80;
pub(super) const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
pub(super) const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
pub(super) const XACT_XINFO_HAS_RELFILENODES: u32 = 1 << 2;
pub(super) const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
pub(super) const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
/// PG15+ (its item size is per major, in [`layout`]).
pub(super) const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;
/// `sizeof(SharedInvalidationMessage)`.
pub(super) const SIZE_OF_SHARED_INVAL_MSG: usize = 16;
