//! `restore`: plan, build a new cluster, say what it reached.

use super::*;

/// `restore`: its arguments are many, so it reads them from the parsed command.
pub(super) async fn run(cli: &Cli) -> Result<u8, Failure> {
    let Command::Restore {
        target_dir,
        target_time,
        target_lsn,
        latest,
        before_xid,
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
    } = &cli.command
    else {
        return Err(usage("internal: wrong command for this handler"));
    };
    let cfg = load_config(cli)?;
    let cfg = match region {
        Some(r) => cfg.for_region(r).map_err(usage)?,
        None => cfg,
    };
    let repo = open_existing(&cfg, cluster.as_deref()).await?;
    let target = if *latest {
        Target::Latest
    } else if let Some(t) = target_time {
        Target::Time(parse_time(t)?)
    } else if let Some(l) = target_lsn {
        Target::Lsn(l.parse().map_err(usage)?)
    } else if let Some(x) = before_xid {
        let end = crate::find::xid_end(&repo, *x).await?;
        tracing::info!(xid = x, lsn = %end.lsn, timeline = end.timeline, event = end.event, "transaction found in the archive");
        Target::BeforeXid { xid: *x, lsn: end.lsn, timeline: end.timeline }
    } else {
        return Err(usage("one of --target-time, --target-lsn, --before-xid or --latest is required"));
    };
    let req = crate::restore::Request {
        target_dir: absolute(target_dir)?,
        target,
        backup: backup.clone(),
        start: *start,
        port: *port,
        config_path: cli.config.as_ref().map(|c| absolute(c)).transpose()?,
        region: region.clone(),
        exe: None,
        ebs: crate::snapshot::ebs::restore::RestoreOptions {
            instance_id: target_instance.clone(),
            volume_type: volume_type.clone(),
            iops: *iops,
            throughput: *throughput,
            fast_restore: *fast_restore,
            prewarm: *prewarm,
            workers: cfg.backup.workers,
            tags: Vec::new(),
        },
        extra_settings: Vec::new(),
    };
    let report = crate::restore::run(&cfg, &repo, &req).await?;
    match cli.output {
        Output::Json => super::render::json(&report)?,
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
