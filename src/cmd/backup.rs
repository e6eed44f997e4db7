//! `backup create | list | show | delete`.

use super::render::human_bytes;
use super::*;
use crate::catalog::backup::time_format;

pub(super) fn summary(m: &Manifest) -> serde_json::Value {
    serde_json::json!({
        "id": m.id, "cluster": m.cluster, "kind": m.kind, "state": m.state, "provider": m.provider,
        "start_time": time_format::to_string(&m.start_time), "stop_time": m.stop_time.as_ref().map(time_format::to_string), "start_lsn": m.start_lsn.to_string(),
        "stop_lsn": m.stop_lsn.map(|l| l.to_string()), "timeline": m.timeline, "pg_version": m.pg_version,
        "system_identifier": m.system_identifier, "files": m.file_count(), "bundles": m.bundle_count(),
        "data_bytes": m.data_bytes(), "stored_bytes": m.stored_bytes(), "error": m.error,
        "incremental": m.incremental.as_ref().map(|i| serde_json::json!({
            "base": i.base, "since_lsn": i.since_lsn, "files_full": i.files_full, "files_blocks": i.files_blocks,
            "bytes_copied": i.bytes_copied, "bytes_kept": i.bytes_kept, "full_copies": i.full_copies.len(),
        })),
    })
}

pub(super) async fn run(cli: &Cli, action: &BackupAction) -> Result<u8, Failure> {
    let cfg = load_config(cli)?;
    match action {
        BackupAction::Create { wait, incremental } => {
            let repo = Repository::open(&cfg).await?;
            if !wait {
                if let Some(id) = backup_by_daemon(&cfg, *incremental).await? {
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
            let level = if *incremental { crate::backup::Level::Incremental } else { crate::backup::Level::Full };
            let m = crate::backup::create_at(&cfg, &repo, BackupKind::Manual, level).await?;
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
                Output::Text => {
                    outln!(
                        "backup {} completed: {} in {} file(s), stored as {} in {} bundle(s); LSN {} .. {}",
                        m.id,
                        human_bytes(m.data_bytes()),
                        m.files.len(),
                        human_bytes(m.stored_bytes()),
                        m.bundle_count(),
                        m.start_lsn,
                        m.stop_lsn.map(|l| l.to_string()).unwrap_or_default()
                    );
                    if let Some(i) = &m.incremental {
                        outln!(
                            "incremental on {}: {} read from disk, {} kept from earlier backups; {} file(s) read whole ({} relation file(s) because of the WAL)",
                            i.base,
                            human_bytes(i.bytes_copied),
                            human_bytes(i.bytes_kept),
                            i.files_full,
                            i.full_copies.len()
                        );
                    }
                }
            }
            Ok(0)
        }
        BackupAction::List { cluster, all_clusters } => {
            let repo = Repository::open(&cfg).await?;
            let handles: Vec<String> = if *all_clusters {
                crate::sweep::clusters(&repo).await?
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
            crate::sweep::purge::purge(&repo, id).await?;
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
            // The newest drill that restored this backup: its measured restore time.
            let drilled = crate::catalog::drill::list(&repo)
                .await
                .unwrap_or_default()
                .into_iter()
                .rfind(|d| d.backup.as_deref() == Some(m.id.as_str()));
            let drill_json = drilled.as_ref().map(|d| {
                serde_json::json!({
                    "id": d.id, "ok": d.ok, "finished_at": time_format::to_string(&d.finished_at),
                    "restore_seconds": d.restore_seconds,
                })
            });
            match cli.output {
                Output::Json => {
                    let mut v = serde_json::to_value(&m).map_err(anyhow::Error::from)?;
                    if let (Some(o), Some(d)) = (v.as_object_mut(), drill_json) {
                        o.insert("last_drill".into(), d);
                    }
                    super::render::json(&v)?
                }
                Output::Text => {
                    let v = summary(&m);
                    if let Some(o) = v.as_object() {
                        for (k, val) in o {
                            outln!("{k:>18}: {}", val.as_str().map(str::to_string).unwrap_or_else(|| val.to_string()));
                        }
                    }
                    if let Some(d) = &drilled {
                        outln!(
                            "{:>18}: {} {}{}",
                            "last drill",
                            d.id,
                            if d.ok { "passed" } else { "FAILED" },
                            d.restore_seconds
                                .map(|r| format!(", restored to a promoted cluster in {r:.1} s"))
                                .unwrap_or_default()
                        );
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
pub(super) async fn backup_by_daemon(cfg: &Config, incremental: bool) -> Result<Option<String>, Failure> {
    let socket = &cfg.daemon.socket;
    let req = if incremental { Request::BackupIncremental } else { Request::Backup };
    // The daemon answers after its sweep, the PostgreSQL session and the running record.
    match control::call(socket, &req, Duration::from_secs(120)).await {
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

pub(super) fn print_backups(output: Output, all: &[Manifest]) -> Result<(), Failure> {
    match output {
        Output::Json => {
            let v: Vec<serde_json::Value> = all.iter().map(summary).collect();
            super::render::json(&v)?;
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
                    m.stop_time.as_ref().map_or_else(|| "-".into(), time_format::to_string),
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
