//! Command-line definitions (clap) and the names of the two executables; `cmd` runs them.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// tidemark: PostgreSQL point-in-time recovery agent.
#[derive(Debug, Parser)]
#[command(name = "tidemark", bin_name = "tidemark", version, about, propagate_version = true)]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, env = "TIDEMARK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, env = "TIDEMARK_OUTPUT_FORMAT", value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Log format on stderr: text, or one JSON object per line.
    #[arg(long, global = true, env = "TIDEMARK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// One line per event, for people (colours on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// The format named `v` as the flag and `TIDEMARK_LOG_FORMAT` spell it.
    pub fn parse(v: &str) -> Option<LogFormat> {
        match v {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
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
    /// Remove one WAL object (segment, .history, .partial, .backup) and its summary from the
    /// archive: what `verify` flags as foreign, or what no backup needs. Without --yes, only
    /// says what would go (exit 2).
    WalRemove {
        /// WAL file name, as in the archive (e.g. 00000005.history, 000000010000000000000007).
        file: String,
        /// Cluster handle (default: the configured one).
        #[arg(long, value_name = "H")]
        cluster: Option<String>,
        /// Confirm: the object is deleted permanently.
        #[arg(long)]
        yes: bool,
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
    /// Hold mounts frozen until told to thaw, stdin closes, or the timeout (started by backups).
    #[command(hide = true)]
    FreezeGuard {
        /// Thaw after this many milliseconds whatever happens.
        #[arg(long)]
        timeout_ms: u64,
        /// Mount points to freeze.
        #[arg(required = true)]
        mounts: Vec<PathBuf>,
    },
    /// Base backups: create, list, show.
    Backup {
        /// What to do.
        #[command(subcommand)]
        action: BackupAction,
    },
    /// Restore a NEW cluster into an empty directory at a time, an LSN, or the latest point.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["target_time", "target_lsn", "latest", "before_xid"])))]
    Restore {
        /// New data directory (empty or absent).
        #[arg(long, value_name = "DIR")]
        target_dir: PathBuf,
        /// Recover to this time (RFC 3339; bare "YYYY-MM-DD HH:MM:SS" is UTC).
        #[arg(long, value_name = "T")]
        target_time: Option<String>,
        /// Recover to this LSN.
        #[arg(long, value_name = "L")]
        target_lsn: Option<String>,
        /// Recover everything archived.
        #[arg(long)]
        latest: bool,
        /// Recover to just before transaction X committed or aborted (`tidemark find` names it).
        #[arg(long, value_name = "X")]
        before_xid: Option<u32>,
        /// Restore from this backup.
        #[arg(long, value_name = "ID")]
        backup: Option<String>,
        /// Cluster handle to restore (default: the configured one).
        #[arg(long, value_name = "H")]
        cluster: Option<String>,
        /// Start PostgreSQL, wait for promotion, print the point reached.
        #[arg(long)]
        start: bool,
        /// Port for the restored cluster.
        #[arg(long, value_name = "N")]
        port: Option<u16>,
        /// Restore from the cross-region copy in this region (its `[regions.R]` repository).
        #[arg(long, value_name = "R")]
        region: Option<String>,
        /// ebs: read every block of the new volumes (EBS restores lazily from S3).
        #[arg(long)]
        prewarm: bool,
        /// ebs: enable Fast Snapshot Restore in the target AZ first (billed per hour).
        #[arg(long)]
        fast_restore: bool,
        /// ebs: attach the new volumes to this instance (default: this one).
        #[arg(long, value_name = "ID")]
        target_instance: Option<String>,
        /// ebs: volume type of the new volumes (default: the source's).
        #[arg(long, value_name = "TYPE")]
        volume_type: Option<String>,
        /// ebs: IOPS of the new volumes.
        #[arg(long, value_name = "N")]
        iops: Option<i32>,
        /// ebs: throughput (MiB/s) of the new volumes.
        #[arg(long, value_name = "N")]
        throughput: Option<i32>,
    },
    /// Earliest and latest restorable time.
    Window {
        /// Cluster handle (default: the configured one).
        #[arg(long, value_name = "H")]
        cluster: Option<String>,
    },
    /// Check WAL continuity and that every backup is restorable.
    Verify {
        /// Cluster handle (default: the configured one).
        #[arg(long, value_name = "H")]
        cluster: Option<String>,
        /// Also read every bundle and check every file's checksum.
        #[arg(long)]
        deep: bool,
    },
    /// The repository's retention policy.
    Policy {
        /// What to do.
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Final backup (if the policy keeps one), mark the cluster deprovisioned, purge its automatic backups.
    Deprovision {
        /// Cluster handle (default: the configured one).
        #[arg(long, value_name = "H")]
        cluster: Option<String>,
        /// Confirm: automatic backups are deleted permanently.
        #[arg(long)]
        yes: bool,
    },
    /// Include or exclude this cluster from new automatic (and final) backups.
    AutomaticBackups {
        /// enable or disable.
        #[arg(value_enum)]
        state: AutomaticBackups,
    },
    /// Agent health: archive lag, last backup, next run, restorable window; exit 0 only when ok.
    Status,
    /// Prove the whole archive path once: config, keyring, repository, PostgreSQL settings,
    /// the daemon, and a forced WAL switch seen in the repository.
    Check {
        /// How long to wait for the switched segment to reach the repository.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        timeout: u64,
    },
    /// Self-contained end-to-end run on embedded defaults (temp dir, cleaned up).
    Demo,
    /// Find the transaction to restore to: the commit that dropped or truncated a table,
    /// or a transaction by id (exit 1 when nothing is found).
    #[command(group(clap::ArgGroup::new("what").required(true).args(["dropped", "truncated", "xid"])))]
    Find {
        /// The commit that dropped TABLE (`table`, `schema.table` or `database.schema.table`).
        #[arg(long, value_name = "TABLE")]
        dropped: Option<String>,
        /// The commit that truncated TABLE (or rewrote it: VACUUM FULL, CLUSTER, ALTER TABLE).
        #[arg(long, value_name = "TABLE")]
        truncated: Option<String>,
        /// Where transaction X committed or aborted.
        #[arg(long, value_name = "X")]
        xid: Option<u32>,
        /// Only events at or after this time (RFC 3339; bare "YYYY-MM-DD HH:MM:SS" is UTC).
        #[arg(long, value_name = "T")]
        from: Option<String>,
        /// Only events at or before this time.
        #[arg(long, value_name = "T")]
        to: Option<String>,
        /// Cluster handle (default: the configured one).
        #[arg(long, value_name = "H")]
        cluster: Option<String>,
    },
    /// Restore drills: a restore into a scratch directory, started, checked and removed.
    Drill {
        /// What to do.
        #[command(subcommand)]
        action: DrillAction,
    },
    /// The commit-time index of the archived WAL (derived data the daemon keeps rolled up).
    WalIndex {
        /// What to do.
        #[command(subcommand)]
        action: WalIndexAction,
    },
    /// Write the man pages and shell completions made from these definitions into DIR
    /// (packaging: `cargo deb` ships them; see README "Install").
    #[command(hide = true)]
    DistAssets {
        /// Output directory: man pages go to DIR/man, completions to DIR/completions.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Create a keyring with a new 256-bit key, or add a new active key to an existing one.
    Keygen {
        /// Keyring file (written with mode 0600).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// `drill` subcommands.
#[derive(Debug, Subcommand)]
pub enum DrillAction {
    /// Run a drill now: restore the latest (or a random) point into `drill.scratch_dir`,
    /// start it, check it, remove it; exit 0 only when it passed.
    Run {
        /// What to restore to (default: `drill.target`).
        #[arg(long, value_enum)]
        target: Option<crate::config::DrillTarget>,
        /// Keep the restored directory (stopped) instead of removing it.
        #[arg(long)]
        keep: bool,
    },
    /// The drills run so far, newest last.
    List,
}

/// `wal-index` subcommands.
#[derive(Debug, Subcommand)]
pub enum WalIndexAction {
    /// Rebuild it: every block of every timeline rewritten from the summaries that read and
    /// the archived segments themselves (for a deleted or damaged index, or an old archive).
    Rebuild {
        /// Cluster handle (default: the configured one).
        #[arg(long, value_name = "H")]
        cluster: Option<String>,
    },
    /// Roll the per-segment summaries up into blocks now (the daemon does this every minute).
    RollUp {
        /// Cluster handle (default: the configured one).
        #[arg(long, value_name = "H")]
        cluster: Option<String>,
    },
}

/// `backup` subcommands.
#[derive(Debug, Subcommand)]
pub enum BackupAction {
    /// Take a manual backup now: the daemon takes it and this returns at once with its id;
    /// with no daemon answering, or with --wait, it runs here until it completes.
    Create {
        /// Take the backup here and return only when it is completed (exit 0) or failed.
        #[arg(long)]
        wait: bool,
        /// Copy only what changed since the newest backup (its parts point into older
        /// backups' bundles); a full backup when there is none to build on.
        #[arg(long)]
        incremental: bool,
    },
    /// List backups.
    List {
        /// Cluster handle (default: the configured one).
        #[arg(long, value_name = "H")]
        cluster: Option<String>,
        /// Every cluster in the repository.
        #[arg(long)]
        all_clusters: bool,
    },
    /// Delete one backup permanently.
    Purge {
        /// Backup id.
        id: String,
        /// Cluster handle (default: the configured one).
        #[arg(long, value_name = "H")]
        cluster: Option<String>,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
    /// Backups of deprovisioned clusters.
    Orphaned,
    /// Show one backup.
    Show {
        /// Backup id.
        id: String,
        /// Cluster handle (default: the configured one).
        #[arg(long, value_name = "H")]
        cluster: Option<String>,
    },
}

/// `policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyAction {
    /// Print the policy.
    Show,
    /// Change the policy; a change that deletes data needs --yes.
    Set {
        /// Daily backups kept.
        #[arg(long)]
        daily: Option<u32>,
        /// Monthly backups kept (last of each month).
        #[arg(long)]
        monthly: Option<u32>,
        /// Yearly backups kept (last of each year).
        #[arg(long)]
        yearly: Option<u32>,
        /// auto, none, or a comma list of regions.
        #[arg(long, value_name = "auto|none|R1,R2")]
        copy_regions: Option<String>,
        /// Keep final backups.
        #[arg(long, value_name = "true|false")]
        keep_final: Option<bool>,
        /// Days of point-in-time recovery.
        #[arg(long)]
        pitr_days: Option<u32>,
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Confirm deletions.
        #[arg(long)]
        yes: bool,
    },
}

/// File name of the full program, installed beside `tidemark`.
pub const AGENT: &str = "tidemark-agent";

/// File name of the front end.
pub const FRONT_END: &str = "tidemark";

/// The agent binary: the one beside the front end, or this process when it is the agent.
pub fn agent_exe() -> std::io::Result<std::path::PathBuf> {
    let me = std::env::current_exe()?;
    Ok(if me.file_name().is_some_and(|n| n == FRONT_END) { me.with_file_name(AGENT) } else { me })
}

/// The binary to write into a restored cluster's `restore_command`: the front end beside
/// this process when there is one (a `cargo run` of the agent builds only the agent), else
/// this process.
pub fn front_end_exe() -> std::io::Result<std::path::PathBuf> {
    let me = std::env::current_exe()?;
    let front = me.with_file_name(FRONT_END);
    Ok(if front.is_file() { front } else { me })
}

/// `automatic-backups enable | disable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AutomaticBackups {
    /// Take automatic backups again.
    Enable,
    /// Stop taking them (existing backups are untouched).
    Disable,
}
