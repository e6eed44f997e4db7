//! tidemark: a PostgreSQL point-in-time-recovery agent.
//!
//! The folder tree is the architecture: `store` (object stores), `codec` (sealing),
//! `wal` (names, push, fetch, watch), `catalog` (what the repository knows),
//! `daemon` (the agent). See DESIGN.md.

pub mod app;
pub mod aws;
pub mod backup;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod codec;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod failure;
pub mod per_file;
pub mod pg;
pub mod repo;
pub mod restore;
pub mod snapshot;
pub mod status;
pub mod store;
pub mod wal;
