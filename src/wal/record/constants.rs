//! The on-disk constants every major 13 to 18 shares (PostgreSQL's `xlog_internal.h`,
//! `xlogrecord.h`, `xact.h`); what differs between majors is in [`crate::wal::layout`].

use crate::wal::layout;

/// Resource manager id of the XLOG rmgr (`RM_XLOG_ID`).
pub const RM_XLOG_ID: u8 = 0;
/// Resource manager id of transaction records (`RM_XACT_ID`).
pub const RM_XACT_ID: u8 = 1;
/// Resource manager id of relation file creation and truncation (`RM_SMGR_ID`).
pub const RM_SMGR_ID: u8 = 2;
/// Resource manager id of database creation and drop (`RM_DBASE_ID`).
pub const RM_DBASE_ID: u8 = 4;
/// Resource manager id of tablespace creation and drop (`RM_TBLSPC_ID`).
pub const RM_TBLSPC_ID: u8 = 5;

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
/// `XLR_SPECIAL_REL_UPDATE`: the record changes relation files other than through its block
/// references (pg_rewind refuses such a record it does not know; so does the block summary).
pub(super) const XLR_SPECIAL_REL_UPDATE: u8 = 0x01;
pub(super) const XLOG_SWITCH: u8 = 0x40;
/// `XLOG_PARAMETER_CHANGE`: settings that matter to a standby changed at a restart.
pub(super) const XLOG_PARAMETER_CHANGE: u8 = 0x60;
/// Offset of `wal_level` in `xl_parameter_change` (after five ints), 13 to 18.
pub(super) const PARAMETER_CHANGE_WAL_LEVEL_OFFSET: usize = 20;
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
pub(super) const BKPBLOCK_WILL_INIT: u8 = 0x40;
pub(super) const BKPBLOCK_SAME_REL: u8 = 0x80;
/// The low bits of `fork_flags`: the block's `ForkNumber`.
pub(super) const BKPBLOCK_FORK_MASK: u8 = 0x0F;
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

// Storage records (`catalog/storage_xlog.h`, the same in 13 to 18).
pub(super) const XLOG_SMGR_CREATE: u8 = 0x10;
pub(super) const XLOG_SMGR_TRUNCATE: u8 = 0x20;
/// `sizeof(xl_smgr_create)`: RelFileNode, ForkNumber (an int).
pub(super) const SIZE_OF_SMGR_CREATE: usize = 16;
/// `sizeof(xl_smgr_truncate)`: BlockNumber, RelFileNode, int flags.
pub(super) const SIZE_OF_SMGR_TRUNCATE: usize = 20;

// Database records (`commands/dbcommands_xlog.h`): 15 split CREATE into FILE_COPY and
// WAL_LOG and moved DROP from 0x10 to 0x20.
pub(super) const XLOG_DBASE_CREATE_FILE_COPY: u8 = 0x00;
pub(super) const XLOG_DBASE_CREATE_WAL_LOG: u8 = 0x10;
pub(super) const XLOG_DBASE_DROP: u8 = 0x20;
/// 13 and 14: `XLOG_DBASE_CREATE` (copies a template's directory) is 0x00, DROP 0x10.
pub(super) const XLOG_DBASE_DROP_PRE15: u8 = 0x10;

// Tablespace records (`commands/tablespace.h`, the same in 13 to 18).
pub(super) const XLOG_TBLSPC_CREATE: u8 = 0x00;
pub(super) const XLOG_TBLSPC_DROP: u8 = 0x10;
