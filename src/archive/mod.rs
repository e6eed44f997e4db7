//! Archiving WAL: the push behind `archive_command` (and the daemon's push-ahead), and the
//! fetch behind `restore_command`.

pub mod fetch;
pub mod push;
