//! Command-line definitions (clap) only; `app.rs` runs them.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// tidemark: PostgreSQL point-in-time recovery agent.
#[derive(Debug, Parser)]
#[command(name = "tidemark", version, about, propagate_version = true)]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, env = "TIDEMARK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, env = "TIDEMARK_OUTPUT_FORMAT", value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable text.
    Text,
    /// One JSON document on stdout.
    Json,
}

/// Commands (the stable contract in DESIGN.md).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent in the foreground (systemd Type=notify).
    Daemon,
    /// Archive one WAL file: archive_command = 'tidemark wal-push %p'.
    WalPush {
        /// Path of the WAL file (relative to the data directory when run by PostgreSQL).
        path: PathBuf,
    },
    /// Fetch one WAL file: restore_command = 'tidemark wal-fetch %f %p'. Exit 1: not archived.
    WalFetch {
        /// WAL file name.
        name: String,
        /// Destination path.
        dest: PathBuf,
    },
    /// Read ahead the segments after NAME into the spool (started by wal-fetch).
    #[command(hide = true)]
    WalPrefetch {
        /// The segment just fetched.
        name: String,
    },
    /// Show the daemon's counters.
    #[command(hide = true)]
    DaemonStats,
    /// Self-contained end-to-end run on embedded defaults (temp dir, cleaned up).
    Demo,
    /// Create a keyring with a new 256-bit key, or add a new active key to an existing one.
    Keygen {
        /// Keyring file (written with mode 0600).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}
