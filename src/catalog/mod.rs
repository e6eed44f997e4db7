//! What the repository knows about clusters and their backups.

pub mod backup;
pub mod copies;
pub mod policy;
pub mod purge;
pub mod retention;
pub mod verify;
pub mod wal_index;
pub mod wal_remove;
