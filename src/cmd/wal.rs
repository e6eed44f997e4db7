//! `wal-push`, `wal-fetch`, `wal-prefetch` (their second step, in the agent) and `wal-remove`.

use super::*;

/// `wal-remove`: says what goes and why; removes it only with `--yes` (exit 2 without, like
/// the other deleting commands, but with the list on stdout so it can be reviewed first).
pub(super) async fn remove(cli: &Cli, file: &str, cluster: Option<&str>, yes: bool) -> Result<u8, Failure> {
    use crate::verify::wal_remove;
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
pub(super) async fn push_direct(cfg: &Config, path: &Path) -> Result<u8, Failure> {
    let (path, name) = push_target(path)?;
    let repo = Repository::open(cfg).await?;
    let outcome = Archiver::new(repo).only_from(&cfg.postgres.data_dir.join("pg_wal")).push(&path).await?;
    tracing::info!(file = %name, ?outcome, "archived directly");
    Ok(0)
}

/// The segment size, cached in the spool so each restore_command call saves a round trip.
pub(super) async fn cached_segment_size(repo: &Repository, spool: &Spool) -> Result<u64, Failure> {
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
pub(super) async fn fetch_from_archive(cfg: &Config, name: &str, dest: &Path) -> Result<u8, Failure> {
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
pub(super) async fn prefetch(cfg: &Config, name: &str) -> Result<u8, Failure> {
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
