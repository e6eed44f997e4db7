//! The integration tests, one binary: each module is one area (what was one test binary
//! each), and `harness` holds what they share (PostgreSQL servers, the tidemark CLI and
//! daemon, moto, proxies, host doubles). One binary links the crate and both AWS SDKs once.
//! Run one area or one test with `cargo test --test it archive::` or
//! `cargo test --test it -- --exact archive::store_outage_loses_nothing`.

mod harness;

mod archive;
mod backup_lifecycle;
mod blockrefs;
mod cli;
mod drill;
mod ebs;
mod find;
mod incremental;
mod integrity;
mod majors;
mod observe;
mod packaging;
mod regions;
mod restore;
mod retention;
mod scale;
mod store_contract;
mod waldump;
mod window;
