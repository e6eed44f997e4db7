//! PostgreSQL: the connection seam, backup start/stop, recovery config, running pg_ctl.

pub mod conn;
pub mod ctl;
