//! WAL: file names and LSN math, segment headers, the format per PostgreSQL major, archiving,
//! fetching, watching.

pub mod header;
pub mod history;
pub mod layout;
pub mod name;
pub mod record;
pub mod spool;
pub mod watch;
