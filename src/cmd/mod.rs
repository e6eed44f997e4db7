//! Runs a parsed command: loads config, calls one library function, prints, picks the exit code.
//!
//! Exit codes: 0 ok; 1 operational failure (or `wal-fetch`: not archived); 2 usage/config.

pub mod check;
pub mod demo;
pub mod failure;
pub mod fast_path;
pub mod status;

use std::path::Path;
use std::time::Duration;

use crate::catalog::backup::{self as catalog_backup, BackupKind, Manifest};
use crate::cli::{BackupAction, Cli, Command, Output, PolicyAction};
use crate::codec::Keyring;
use crate::config::Config;
use crate::daemon::control::{self, Request, Response};
use crate::repo::Repository;
use crate::restore::plan::{rfc3339, Target};
use crate::wal::fetch::{self, FetchOutcome};
use crate::wal::push::Archiver;
use crate::wal::spool::{Spool, SPOOL_TMP};

pub use failure::Failure;

/// `println!` that ends the command quietly when stdout is closed (`tidemark backup show | head`).
macro_rules! outln {
    ($($t:tt)*) => { emit(&format!("{}\n", format!($($t)*))) };
}

/// `print!` with the same closed-stdout handling.
macro_rules! out {
    ($($t:tt)*) => { emit(&format!($($t)*)) };
}

/// Writes to stdout; a reader that went away (EPIPE) ends the process at once, quietly.
fn emit(text: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(text.as_bytes()).and_then(|_| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("tidemark: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}
use crate::cmd::fast_path::{absolute, push_target};
use failure::{report, usage};

/// The agent's entry point: returns the exit code.
pub fn main(cli: Cli) -> u8 {
    if let Command::FreezeGuard { timeout_ms, mounts } = &cli.command {
        // No runtime, no logging setup: the guard must start and freeze fast.
        return crate::snapshot::freeze::guard_main(mounts, Duration::from_millis(*timeout_ms)) as u8;
    }
    fast_path::init_logging(&cli.command);
    // The front end (`tidemark`) has done the local step when it hands a per-file command over.
    if std::env::var_os(fast_path::LOCAL_STEP_DONE).is_none() {
        if let Some(code) = fast_path::Call::from_cli(&cli).and_then(|call| fast_path::local_step(&call)) {
            return code;
        }
    }
    let multi = !matches!(cli.command, Command::WalPush { .. } | Command::WalFetch { .. });
    let json = cli.output == Output::Json;
    let res = runtime(multi).and_then(|rt| rt.block_on(run(cli)));
    res.unwrap_or_else(|f| {
        if json {
            // One JSON document on stdout, failures included (the text still goes to stderr).
            outln!("{}", serde_json::json!({ "error": format!("{:#}", f.error), "exit_code": f.code }));
        }
        report(f)
    })
}

/// A tokio runtime: worker threads, or one thread for per-file commands.
fn runtime(multi: bool) -> Result<tokio::runtime::Runtime, Failure> {
    let mut builder =
        if multi { tokio::runtime::Builder::new_multi_thread() } else { tokio::runtime::Builder::new_current_thread() };
    builder.enable_all().build().map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}").into())
}

fn load_config(cli: &Cli) -> Result<Config, Failure> {
    Ok(Config::load(cli.config.as_deref())?)
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    match &cli.command {
        Command::Keygen { out } => {
            let (ring, id) = Keyring::keygen(out)?;
            let n = ring.ids().count();
            let owner = give_keyring_to_os_user(&cli, out)?;
            match cli.output {
                Output::Json => {
                    outln!("{}", serde_json::json!({ "keyring": out, "active_key": id, "keys": n, "owner": owner }))
                }
                Output::Text => outln!(
                    "wrote key '{id}' to {} (active; {n} key(s) in the keyring; owned by {owner}, mode 600)",
                    out.display()
                ),
            }
            Ok(0)
        }
        Command::Daemon => {
            let cfg = load_config(&cli)?;
            crate::daemon::run(cfg).await?;
            Ok(0)
        }
        Command::Backup { action } => backup_cmd(&cli, action).await,
        Command::Restore {
            target_dir,
            target_time,
            target_lsn,
            latest,
            backup,
            cluster,
            start,
            port,
            region,
            prewarm,
            fast_restore,
            target_instance,
            volume_type,
            iops,
            throughput,
        } => {
            let cfg = load_config(&cli)?;
            let target = if *latest {
                Target::Latest
            } else if let Some(t) = target_time {
                Target::Time(parse_time(t)?)
            } else if let Some(l) = target_lsn {
                Target::Lsn(l.parse().map_err(usage)?)
            } else {
                return Err(usage("one of --target-time, --target-lsn or --latest is required"));
            };
            let cfg = match region {
                Some(r) => cfg.for_region(r).map_err(usage)?,
                None => cfg,
            };
            let repo = open_existing(&cfg, cluster.as_deref()).await?;
            let req = crate::restore::Request {
                target_dir: absolute(target_dir)?,
                target,
                backup: backup.clone(),
                start: *start,
                port: *port,
                config_path: cli.config.as_ref().map(|c| absolute(c)).transpose()?,
                region: region.clone(),
                exe: None,
                ebs: crate::snapshot::ebs::RestoreOptions {
                    instance_id: target_instance.clone(),
                    volume_type: volume_type.clone(),
                    iops: *iops,
                    throughput: *throughput,
                    fast_restore: *fast_restore,
                    prewarm: *prewarm,
                    workers: cfg.backup.workers,
                },
            };
            let report = crate::restore::run(&cfg, &repo, &req).await?;
            match cli.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&report).map_err(anyhow::Error::from)?),
                Output::Text => {
                    outln!(
                        "restored backup {} into {} (target {}, {} WAL segment(s) to replay)",
                        report.backup,
                        report.data_dir.display(),
                        report.target,
                        report.segments
                    );
                    match &report.reached {
                        Some(r) => {
                            outln!(
                                "PostgreSQL started and promoted{}",
                                r.timeline.map(|t| format!(" on timeline {t}")).unwrap_or_default()
                            );
                            if let Some(s) = &r.stopped {
                                outln!("  {s}");
                            }
                            if let Some(t) = &r.last_transaction {
                                outln!("  last completed transaction at {t}");
                            }
                            if let Some(l) = r.redo_done {
                                outln!(
                                    "  replayed WAL up to the record at {l} (planned: {})",
                                    report.must_reach.map_or_else(|| report.target.clone(), |w| w.to_string())
                                );
                            }
                        }
                        None => {
                            if let Some(w) = report.must_reach {
                                outln!("recovery must replay WAL up to the record at {w} (its server log's \"redo done at\" must be at or past it)");
                            }
                            outln!("start it with: pg_ctl -D {} start", report.data_dir.display())
                        }
                    }
                }
            }
            Ok(0)
        }
        Command::Window { cluster } => {
            let cfg = load_config(&cli)?;
            let repo = open_existing(&cfg, cluster.as_deref()).await?;
            let inputs = crate::restore::Inputs::load(&repo).await?;
            let windows = inputs.windows();
            match cli.output {
                Output::Json => {
                    let v: Vec<serde_json::Value> = windows
                        .iter()
                        .map(|(tli, w)| {
                            serde_json::json!({
                                "timeline": tli,
                                "earliest": w.earliest().map(rfc3339),
                                "latest": w.latest().map(rfc3339),
                                "ranges": w.ranges.iter().map(|r| serde_json::json!({
                                    "backup": r.backup, "from_time": rfc3339(r.from_time), "to_time": r.to_time.map(rfc3339),
                                    "from_lsn": r.from_lsn.to_string(), "to_lsn": r.to_lsn.to_string(),
                                })).collect::<Vec<_>>(),
                            })
                        })
                        .collect();
                    outln!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({ "cluster": repo.cluster(), "timelines": v }))
                            .map_err(anyhow::Error::from)?
                    );
                }
                Output::Text => {
                    if windows.is_empty() {
                        outln!("cluster {}: nothing is restorable: no completed backup yet", repo.cluster());
                    }
                    for (tli, w) in &windows {
                        outln!("cluster {} timeline {tli}: {w}", repo.cluster());
                    }
                }
            }
            Ok(0)
        }
        Command::WalIndex { action } => {
            let cfg = load_config(&cli)?;
            let (cluster, full) = match action {
                crate::cli::WalIndexAction::Rebuild { cluster } => (cluster, true),
                crate::cli::WalIndexAction::RollUp { cluster } => (cluster, false),
            };
            let repo = open_existing(&cfg, cluster.as_deref()).await?;
            let done = crate::catalog::wal_index::roll_up_all(&repo, full).await?;
            match cli.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&done).map_err(anyhow::Error::from)?),
                Output::Text => {
                    for (tli, d) in &done {
                        outln!(
                            "timeline {tli}: {} block(s) written, {} segment(s) summarized from their bytes, {} per-segment summaries folded in",
                            d.blocks,
                            d.summarized,
                            d.folded
                        );
                    }
                    if done.is_empty() {
                        outln!("no WAL archived: nothing to index");
                    }
                }
            }
            Ok(0)
        }
        Command::Verify { cluster, deep } => {
            let cfg = load_config(&cli)?;
            let repo = open_existing(&cfg, cluster.as_deref()).await?;
            let report = crate::catalog::verify::verify(&repo, *deep).await?;
            match cli.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&report).map_err(anyhow::Error::from)?),
                Output::Text => {
                    for t in &report.timelines {
                        let range =
                            format!("{} .. {}", t.first.as_deref().unwrap_or("-"), t.last.as_deref().unwrap_or("-"));
                        for b in &t.breaks {
                            outln!("timeline {}: WAL history breaks at {b}", t.timeline);
                        }
                        if t.unindexed_count > 0 {
                            outln!(
                                "timeline {}: {} archived segment(s) have no commit-time summary ({}{}): restores treat them as missing; run `tidemark wal-index rebuild`",
                                t.timeline,
                                t.unindexed_count,
                                t.unindexed.join(", "),
                                if t.unindexed_count > t.unindexed.len() { ", ..." } else { "" }
                            );
                        }
                        if t.read_from_bytes > 0 {
                            outln!(
                                "timeline {}: {} segment(s) after the index's end read from their bytes (their summaries are written with the daemon's next batch)",
                                t.timeline,
                                t.read_from_bytes
                            );
                        }
                        if t.last.is_none() && t.gaps.is_empty() {
                            outln!("timeline {}: a history file, no WAL segments archived", t.timeline);
                        } else if t.gaps.is_empty() && t.breaks.is_empty() {
                            outln!("timeline {}: WAL continuous {range}", t.timeline);
                        } else if t.gaps.is_empty() {
                            outln!(
                                "timeline {}: WAL {range} has no missing segment, but is not one history",
                                t.timeline
                            );
                        } else {
                            outln!(
                                "timeline {}: WAL {range} has {} missing segment(s): {}",
                                t.timeline,
                                t.gaps.len(),
                                t.gaps.join(", ")
                            );
                        }
                    }
                    for h in &report.foreign_histories {
                        outln!("history {h}");
                    }
                    for b in &report.backups {
                        if b.problems.is_empty() {
                            outln!("backup {} ({:?}): ok", b.id, b.state);
                        } else {
                            for p in &b.problems {
                                outln!("backup {} ({:?}): {p}", b.id, b.state);
                            }
                        }
                    }
                    outln!("{}", if report.ok { "verify: ok" } else { "verify: PROBLEMS FOUND" });
                }
            }
            Ok(if report.ok { 0 } else { 1 })
        }
        Command::Policy { action } => policy_cmd(&cli, action).await,
        Command::Deprovision { cluster, yes } => {
            let cfg = load_config(&cli)?;
            let repo = open_repo(&cfg, cluster.as_deref()).await?;
            if !yes {
                return Err(usage(format!(
                    "deprovisioning cluster '{}' permanently deletes its automatic backups; add --yes to confirm",
                    repo.cluster()
                )));
            }
            let d = crate::backup::lifecycle::deprovision(&cfg, &repo).await?;
            match cli.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&d).map_err(anyhow::Error::from)?),
                Output::Text => {
                    outln!(
                        "cluster {} deprovisioned; final backup: {}",
                        repo.cluster(),
                        d.final_backup.as_deref().unwrap_or("none (keep_final off or automatic backups disabled)")
                    );
                    outln!(
                        "purged {} automatic backup(s); kept {}: {}",
                        d.purged.len(),
                        d.kept.len(),
                        d.kept.join(", ")
                    );
                }
            }
            Ok(0)
        }
        Command::AutomaticBackups { state } => {
            let cfg = load_config(&cli)?;
            let repo = Repository::open(&cfg).await?;
            let rec = crate::backup::lifecycle::set_automatic(&repo, state == "enable").await?;
            match cli.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&rec).map_err(anyhow::Error::from)?),
                Output::Text => outln!(
                    "automatic backups {} for cluster {} (existing backups are untouched)",
                    if rec.automatic_backups { "enabled" } else { "disabled" },
                    rec.handle
                ),
            }
            Ok(0)
        }
        Command::Status => {
            let cfg = load_config(&cli)?;
            let repo = Repository::open(&cfg).await?;
            require_cluster(&repo).await?;
            let st = crate::cmd::status::gather(&cfg, &repo).await?;
            match cli.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&st).map_err(anyhow::Error::from)?),
                Output::Text => out!("{}", crate::cmd::status::render(&st)),
            }
            Ok(if st.problems.is_empty() { 0 } else { 1 })
        }
        Command::Check { timeout } => {
            let cfg = load_config(&cli)?;
            let path = cli.config.as_ref().map(|c| absolute(c)).transpose()?;
            let r = crate::cmd::check::run(&cfg, path.as_deref(), Duration::from_secs(*timeout)).await;
            match cli.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&r).map_err(anyhow::Error::from)?),
                Output::Text => out!("{}", crate::cmd::check::render(&r)),
            }
            Ok(if r.ok { 0 } else { 1 })
        }
        Command::Demo => {
            let cfg = Config::load_or_defaults(cli.config.as_deref())?;
            let (bin, user) = (cfg.postgres.bin_dir.clone(), cfg.postgres.os_user.clone());
            tokio::task::spawn_blocking(move || crate::cmd::demo::run(bin.as_deref(), &user))
                .await
                .map_err(anyhow::Error::from)??;
            Ok(0)
        }
        Command::WalPush { path } => wal_push_direct(&load_config(&cli)?, path).await,
        Command::WalFetch { name, dest } => {
            let began = std::time::Instant::now();
            let res = match load_config(&cli) {
                Ok(cfg) => wal_fetch_from_archive(&cfg, name, dest).await.inspect(|code| {
                    if *code == 0 {
                        fast_path::note_fetch_timing(&cfg, began);
                    }
                }),
                Err(f) => Err(f),
            };
            res.map_err(|f| fast_path::fetch_abort(name, f))
        }
        Command::WalPrefetch { name } => wal_prefetch(&load_config(&cli)?, name).await,
        Command::WalRemove { file, cluster, yes } => wal_remove(&cli, file, cluster.as_deref(), *yes).await,
        Command::FreezeGuard { .. } => Err(usage("freeze-guard runs before the runtime starts")),
        Command::DaemonStats => {
            let cfg = load_config(&cli)?;
            match control::call(&cfg.daemon.socket, &Request::Stats, Duration::from_secs(10)).await {
                Ok(Response::Stats(s)) => {
                    outln!("{}", serde_json::to_string_pretty(&s).map_err(anyhow::Error::from)?);
                    Ok(0)
                }
                Ok(other) => Err(anyhow::anyhow!("unexpected answer from daemon: {other:?}").into()),
                Err(e) => Err(anyhow::anyhow!("{e}; is `tidemark daemon` running?").into()),
            }
        }
    }
}

/// `wal-remove`: says what goes and why; removes it only with `--yes` (exit 2 without, like
/// the other deleting commands, but with the list on stdout so it can be reviewed first).
async fn wal_remove(cli: &Cli, file: &str, cluster: Option<&str>, yes: bool) -> Result<u8, Failure> {
    use crate::catalog::wal_remove;
    let cfg = load_config(cli)?;
    let repo = open_existing(&cfg, cluster).await?;
    let seg_size = crate::repo::cluster::segment_size(&repo).await?;
    let wal_file = crate::wal::name::WalFile::parse(file.trim(), seg_size).map_err(|e| {
        usage(format!(
            "{e}: give a WAL file name as archived, such as 00000002.history or 000000010000000000000007 (see `tidemark verify`)"
        ))
    })?;
    let r = wal_remove::plan(&repo, &wal_file, seg_size).await?;
    if !yes {
        let confirm = format!("nothing removed: add --yes to remove {} object(s) of {}", r.objects.len(), r.file);
        match cli.output {
            Output::Json => outln!(
                "{}",
                serde_json::json!({
                    "cluster": r.cluster, "file": r.file, "would_remove": r.objects, "removed": [],
                    "reason": r.reason, "error": confirm, "exit_code": 2,
                })
            ),
            Output::Text => {
                outln!("would remove {} of cluster {} ({}):", r.file, r.cluster, r.reason);
                for k in &r.objects {
                    outln!("  {k}");
                }
            }
        }
        eprintln!("tidemark: {confirm}");
        return Ok(2);
    }
    wal_remove::remove(&repo, &r).await?;
    match cli.output {
        Output::Json => outln!(
            "{}",
            serde_json::json!({ "cluster": r.cluster, "file": r.file, "removed": r.objects, "reason": r.reason })
        ),
        Output::Text => {
            outln!("removed {} of cluster {} ({}):", r.file, r.cluster, r.reason);
            for k in &r.objects {
                outln!("  {k}");
            }
        }
    }
    Ok(0)
}

/// `wal-push`, second step: archive the file without a daemon.
async fn wal_push_direct(cfg: &Config, path: &Path) -> Result<u8, Failure> {
    let (path, name) = push_target(path)?;
    let repo = Repository::open(cfg).await?;
    let outcome = Archiver::new(repo).only_from(&cfg.postgres.data_dir.join("pg_wal")).push(&path).await?;
    tracing::info!(file = %name, ?outcome, "archived directly");
    Ok(0)
}

/// The segment size, cached in the spool so each restore_command call saves a round trip.
async fn cached_segment_size(repo: &Repository, spool: &Spool) -> Result<u64, Failure> {
    let cache = spool.dir().join(".segment_size");
    if let Some(n) = std::fs::read_to_string(&cache).ok().and_then(|s| s.trim().parse::<u64>().ok()) {
        return Ok(n);
    }
    let n = crate::repo::cluster::segment_size(repo).await?;
    let _ =
        spool.ensure_dir().and_then(|_| crate::wal::spool::write_atomic(&cache, n.to_string().as_bytes(), SPOOL_TMP));
    Ok(n)
}

/// `wal-fetch`, second step: reads the file from the archive; exit 1 when it is not there.
async fn wal_fetch_from_archive(cfg: &Config, name: &str, dest: &Path) -> Result<u8, Failure> {
    let spool = fast_path::spool_of(cfg);
    let repo = Repository::open(cfg).await?;
    let seg_size = cached_segment_size(&repo, &spool).await?;
    let outcome = fetch::fetch(&repo, name, dest, seg_size).await?;
    tracing::info!(file = %name, ?outcome, "wal-fetch");
    if outcome == FetchOutcome::NotArchived {
        eprintln!("tidemark: {name} is not in the archive ({})", repo.store().describe());
        return Ok(1);
    }
    Ok(0)
}

/// `wal-prefetch`: read-ahead that follows recovery until it goes quiet; exits at once when
/// another one holds the spool lock.
async fn wal_prefetch(cfg: &Config, name: &str) -> Result<u8, Failure> {
    let spool = fast_path::spool_of(cfg);
    let lock = spool.lock_file().map_err(|e| anyhow::anyhow!("spool lock in {}: {e}", spool.dir().display()))?;
    if lock.try_lock().is_err() {
        return Ok(0);
    }
    let repo = Repository::open(cfg).await?;
    let seg_size = cached_segment_size(&repo, &spool).await?;
    let opts = fetch::Prefetch {
        count: cfg.fetch.prefetch,
        workers: cfg.archive.workers,
        idle: Duration::from_secs(10),
        poll: Duration::from_millis(20),
    };
    let n = fetch::prefetch(&repo, &spool, name, opts, seg_size).await?;
    tracing::info!(after = %name, spooled = n, "read-ahead done");
    Ok(0)
}

/// Run as root, `keygen` gives the keyring to `postgres.os_user` (the config's, or the
/// default `postgres` when there is no config yet): a root-owned 0600 keyring would lock out
/// the archiver and the daemon. Returns the owner's name.
fn give_keyring_to_os_user(cli: &Cli, path: &Path) -> Result<String, Failure> {
    use std::os::unix::fs::MetadataExt;
    if crate::pg::ctl::is_root() {
        let user = Config::load_or_defaults(cli.config.as_deref())
            .map(|c| c.postgres.os_user)
            .unwrap_or_else(|_| "postgres".into());
        match crate::pg::ctl::os_user_ids(&user) {
            Ok((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| anyhow::anyhow!("cannot give {} to {user}: {e}", path.display()))?,
            Err(e) => tracing::warn!(%user, error = %e, "keyring left owned by root: no such user"),
        }
    }
    let uid = std::fs::metadata(path).map_err(anyhow::Error::from)?.uid();
    Ok(crate::codec::keyring::user_name(uid))
}

async fn open_repo(cfg: &Config, cluster: Option<&str>) -> Result<Repository, Failure> {
    let repo = Repository::open(cfg).await?;
    Ok(match cluster {
        Some(h) => repo.for_cluster(h),
        None => repo,
    })
}

/// The repository seen as an existing cluster: a read of a handle nothing archived under (a
/// typo, a wrong URL) is a failure, never an empty "ok".
async fn open_existing(cfg: &Config, cluster: Option<&str>) -> Result<Repository, Failure> {
    let repo = open_repo(cfg, cluster).await?;
    require_cluster(&repo).await?;
    Ok(repo)
}

async fn require_cluster(repo: &Repository) -> Result<(), Failure> {
    if crate::repo::cluster::load(repo).await?.is_some() {
        return Ok(());
    }
    let there = crate::catalog::policy::clusters(repo).await?;
    if there.is_empty() {
        return Err(anyhow::anyhow!(
            "{} does not exist or holds no cluster: check repository.url, or, if nothing was archived or backed up under '{}' yet, take a first backup with `tidemark backup create`",
            repo.store().describe(),
            repo.cluster()
        )
        .into());
    }
    Err(anyhow::anyhow!(
        "no cluster '{}' in {} (clusters there: {}): check `cluster` in the config, or --cluster",
        repo.cluster(),
        repo.store().describe(),
        there.join(", ")
    )
    .into())
}

/// One line per cluster: how many WAL objects go, from which to which.
fn wal_summary(wal: &[crate::catalog::policy::WalDeletion]) -> Vec<String> {
    let mut out = Vec::new();
    for w in wal.chunk_by(|a, b| a.cluster == b.cluster) {
        let (first, last) = (&w[0], &w[w.len() - 1]);
        out.push(format!("{}: {} WAL object(s), {} .. {}", first.cluster, w.len(), first.name, last.name));
    }
    out
}

/// RFC 3339, or bare `YYYY-MM-DD HH:MM:SS[.ffffff]` meaning UTC.
pub fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, Failure> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s.trim()) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s.trim(), f) {
            return Ok(t.and_utc());
        }
    }
    Err(usage(format!("'{s}' is not a time: use RFC 3339 (2026-11-24T12:00:00Z) or 'YYYY-MM-DD HH:MM:SS' (UTC)")))
}

fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn summary(m: &Manifest) -> serde_json::Value {
    serde_json::json!({
        "id": m.id, "cluster": m.cluster, "kind": m.kind, "state": m.state, "provider": m.provider,
        "start_time": m.start_time, "stop_time": m.stop_time, "start_lsn": m.start_lsn.to_string(),
        "stop_lsn": m.stop_lsn.map(|l| l.to_string()), "timeline": m.timeline, "pg_version": m.pg_version,
        "system_identifier": m.system_identifier, "files": m.file_count(), "bundles": m.bundle_count(),
        "data_bytes": m.data_bytes(), "stored_bytes": m.stored_bytes(), "error": m.error,
    })
}

async fn backup_cmd(cli: &Cli, action: &BackupAction) -> Result<u8, Failure> {
    let cfg = load_config(cli)?;
    match action {
        BackupAction::Create { wait } => {
            let repo = Repository::open(&cfg).await?;
            if !wait {
                if let Some(id) = backup_by_daemon(&cfg).await? {
                    match cli.output {
                        Output::Json => outln!(
                            "{}",
                            serde_json::json!({ "id": id, "cluster": repo.cluster(), "state": "running", "taken_by": "daemon" })
                        ),
                        Output::Text => outln!(
                            "backup {id} started: the daemon takes it; `tidemark backup list` shows when it is completed (or use --wait)"
                        ),
                    }
                    return Ok(0);
                }
            }
            let m = crate::backup::create(&cfg, &repo, BackupKind::Manual).await?;
            match cli.output {
                Output::Json => outln!("{}", summary(&m)),
                Output::Text if m.ebs.is_some() => outln!(
                    "backup {} completed: {} EBS snapshot(s) ({}); LSN {} .. {}",
                    m.id,
                    m.ebs.as_ref().map_or(0, |e| e.volumes.len()),
                    m.ebs
                        .iter()
                        .flat_map(|e| e.volumes.iter().map(|v| v.snapshot_id.as_str()))
                        .collect::<Vec<_>>()
                        .join(", "),
                    m.start_lsn,
                    m.stop_lsn.map(|l| l.to_string()).unwrap_or_default()
                ),
                Output::Text => outln!(
                    "backup {} completed: {} in {} file(s), stored as {} in {} bundle(s); LSN {} .. {}",
                    m.id,
                    human_bytes(m.data_bytes()),
                    m.files.len(),
                    human_bytes(m.stored_bytes()),
                    m.bundles.len(),
                    m.start_lsn,
                    m.stop_lsn.map(|l| l.to_string()).unwrap_or_default()
                ),
            }
            Ok(0)
        }
        BackupAction::List { cluster, all_clusters } => {
            let repo = Repository::open(&cfg).await?;
            let handles: Vec<String> = if *all_clusters {
                crate::catalog::policy::clusters(&repo).await?
            } else {
                vec![cluster.clone().unwrap_or_else(|| cfg.cluster.clone())]
            };
            if !*all_clusters {
                require_cluster(&repo.for_cluster(&handles[0])).await?;
            } else if handles.is_empty() {
                require_cluster(&repo).await?;
            }
            let mut all = Vec::new();
            for h in &handles {
                all.extend(catalog_backup::list_records(&repo.for_cluster(h)).await?);
            }
            print_backups(cli.output, &all)?;
            Ok(0)
        }
        BackupAction::Purge { id, cluster, yes } => {
            let repo = open_existing(&cfg, cluster.as_deref()).await?;
            if !yes {
                return Err(usage(format!("purging backup {id} deletes it permanently; add --yes to confirm")));
            }
            crate::catalog::purge::purge(&repo, id).await?;
            match cli.output {
                Output::Json => outln!("{}", serde_json::json!({ "purged": id, "cluster": repo.cluster() })),
                Output::Text => outln!("backup {id} of cluster {} purged", repo.cluster()),
            }
            Ok(0)
        }
        BackupAction::Orphaned => {
            let repo = Repository::open(&cfg).await?;
            let all = crate::backup::lifecycle::orphaned(&repo).await?;
            print_backups(cli.output, &all)?;
            Ok(0)
        }
        BackupAction::Show { id, cluster } => {
            let repo = open_existing(&cfg, cluster.as_deref()).await?;
            let Some(m) = catalog_backup::load(&repo, id).await? else {
                return Err(anyhow::anyhow!(
                    "no backup {id} for cluster {}; see `tidemark backup list`",
                    repo.cluster()
                )
                .into());
            };
            match cli.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&m).map_err(anyhow::Error::from)?),
                Output::Text => {
                    let v = summary(&m);
                    if let Some(o) = v.as_object() {
                        for (k, val) in o {
                            outln!("{k:>18}: {}", val.as_str().map(str::to_string).unwrap_or_else(|| val.to_string()));
                        }
                    }
                    if let Some(e) = &m.ebs {
                        outln!("{:>18}: {} ({}, instance {})", "ebs", e.region, e.availability_zone, e.instance_id);
                        for v in &e.volumes {
                            outln!(
                                "{:>18}  {} of {} ({} at {}, {} GiB {}{}) {}",
                                "",
                                v.snapshot_id,
                                v.volume_id,
                                v.device,
                                v.attached_as,
                                v.size_gib,
                                v.volume_type,
                                if v.encrypted { ", encrypted" } else { "" },
                                v.state
                            );
                        }
                        for mnt in &e.mounts {
                            outln!("{:>18}  {} {} on {} ({})", "", mnt.role, mnt.path, mnt.mount_point, mnt.fs_type);
                        }
                    }
                }
            }
            Ok(0)
        }
    }
}

/// `backup create` without `--wait`: hands the backup to the daemon (`Some(id)` once it is
/// running there). `None` when no daemon answers, or one too old to take backups: the caller
/// takes it in the foreground, because backups never depend on the daemon being up.
async fn backup_by_daemon(cfg: &Config) -> Result<Option<String>, Failure> {
    let socket = &cfg.daemon.socket;
    // The daemon answers after its sweep, the PostgreSQL session and the running record.
    match control::call(socket, &Request::Backup, Duration::from_secs(120)).await {
        Ok(Response::BackupStarted { id }) => Ok(Some(id)),
        Ok(Response::Error { message }) if message.starts_with("bad request") => {
            eprintln!("tidemark: the daemon at {} does not take backups (an older version); taking the backup in the foreground", socket.display());
            Ok(None)
        }
        Ok(Response::Error { message }) => {
            Err(anyhow::anyhow!("the daemon could not start the backup: {message}").into())
        }
        Ok(other) => Err(anyhow::anyhow!("unexpected answer from the daemon at {}: {other:?}", socket.display()).into()),
        Err(control::ClientError::NoDaemon(..)) => {
            eprintln!(
                "tidemark: no daemon answers at {}; taking the backup in the foreground (this command returns when it is completed)",
                socket.display()
            );
            Ok(None)
        }
        // The daemon may have started it: running another could make two.
        Err(e @ control::ClientError::Broken(..)) => Err(anyhow::anyhow!(
            "{e}; the backup may be running in the daemon: check `tidemark backup list` before trying again (or take one in the foreground with --wait)"
        )
        .into()),
    }
}

fn print_backups(output: Output, all: &[Manifest]) -> Result<(), Failure> {
    match output {
        Output::Json => {
            let v: Vec<serde_json::Value> = all.iter().map(summary).collect();
            outln!("{}", serde_json::to_string_pretty(&v).map_err(anyhow::Error::from)?);
        }
        Output::Text => {
            let mut t = comfy_table::Table::new();
            t.load_preset(comfy_table::presets::NOTHING);
            t.set_header(["CLUSTER", "ID", "KIND", "STATE", "STOPPED", "SIZE", "STORED", "LSN"]);
            for m in all {
                t.add_row([
                    m.cluster.clone(),
                    m.id.clone(),
                    format!("{:?}", m.kind).to_lowercase(),
                    format!("{:?}", m.state).to_lowercase(),
                    m.stop_time.clone().unwrap_or_else(|| "-".into()),
                    human_bytes(m.data_bytes()),
                    human_bytes(m.stored_bytes()),
                    format!("{} .. {}", m.start_lsn, m.stop_lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into())),
                ]);
            }
            outln!("{t}");
        }
    }
    Ok(())
}

async fn policy_cmd(cli: &Cli, action: &PolicyAction) -> Result<u8, Failure> {
    use crate::catalog::policy;
    let cfg = load_config(cli)?;
    let repo = Repository::open(&cfg).await?;
    let old = policy::load(&repo).await?;
    match action {
        PolicyAction::Show => {
            match cli.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&old).map_err(anyhow::Error::from)?),
                Output::Text => outln!(
                    "daily {} | monthly {} | yearly {} | copy_regions {} | keep_final {} | pitr {} ({} day(s))",
                    old.daily,
                    old.monthly,
                    old.yearly,
                    old.copy_regions,
                    old.keep_final,
                    if old.pitr_enabled { "on" } else { "off" },
                    old.pitr_days
                ),
            }
            Ok(0)
        }
        PolicyAction::Set { daily, monthly, yearly, copy_regions, keep_final, pitr_days, dry_run, yes } => {
            let mut new = old.clone();
            if let Some(v) = daily {
                new.daily = *v;
            }
            if let Some(v) = monthly {
                new.monthly = *v;
            }
            if let Some(v) = yearly {
                new.yearly = *v;
            }
            if let Some(v) = copy_regions {
                new.copy_regions = v.clone();
            }
            if let Some(v) = keep_final {
                new.keep_final = *v;
            }
            if let Some(v) = pitr_days {
                new.pitr_days = *v;
            }
            new.validate().map_err(usage)?;
            let plan = policy::plan_now(&repo, &new, chrono::Utc::now()).await?;
            let deletes: Vec<String> =
                plan.deletes().map(|d| format!("{}/{} ({})", d.cluster, d.id, d.reasons.join(", "))).collect();
            let wal = policy::all_wal_deletions(&repo, &plan).await?;
            let wal_lines = wal_summary(&wal);
            if *dry_run {
                match cli.output {
                    Output::Json => outln!(
                        "{}",
                        serde_json::json!({
                            "policy": new,
                            "would_delete": plan.deletes().collect::<Vec<_>>(),
                            "would_delete_wal": wal,
                        })
                    ),
                    Output::Text => {
                        outln!("with this policy, {} backup(s) would be deleted:", deletes.len());
                        for d in &deletes {
                            outln!("  {d}");
                        }
                        outln!("and {} WAL object(s):", wal.len());
                        for l in &wal_lines {
                            outln!("  {l}");
                        }
                    }
                }
                return Ok(0);
            }
            if !deletes.is_empty() || !wal.is_empty() {
                eprintln!(
                    "WARNING: this policy permanently deletes {} backup(s) and {} WAL object(s):",
                    deletes.len(),
                    wal.len()
                );
                for d in deletes.iter().chain(&wal_lines) {
                    eprintln!("  {d}");
                }
                if !yes {
                    return Err(usage("add --yes to apply it (or --dry-run to only list)"));
                }
            }
            policy::save(&repo, &new).await?;
            let applied = policy::apply(&repo, &plan).await?;
            match cli.output {
                Output::Json => outln!("{}", serde_json::json!({ "policy": new, "applied": applied })),
                Output::Text => outln!(
                    "policy saved; purged {} backup(s) and {} WAL object(s)",
                    applied.backups.len(),
                    applied.wal_objects
                ),
            }
            Ok(0)
        }
    }
}
