//! What the repository knows about clusters and their backups.

pub mod backup;
pub mod block_index;
pub mod drill;
pub mod relnames;
pub mod restore_plan;
pub mod retention;
pub mod wal_index;
