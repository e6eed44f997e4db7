//! What the repository knows about clusters and their backups.

pub mod cluster;
