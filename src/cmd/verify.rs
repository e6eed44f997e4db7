//! `verify`: WAL continuity and joins, backups' bundles.

use super::*;

/// `verify [--deep]`.
pub(super) async fn run(cli: &Cli, cluster: &Option<String>, deep: &bool) -> Result<u8, Failure> {
    let cfg = load_config(cli)?;
    let repo = open_existing(&cfg, cluster.as_deref()).await?;
    let res = crate::verify::verify(&repo, *deep).await;
    // The daemon exports the configured cluster's last result (tidemark_verify_*).
    if cluster.as_deref().is_none_or(|c| c == cfg.cluster) {
        let ok = res.as_ref().is_ok_and(|r| r.ok);
        if let Err(e) = crate::verify::last_run::record(&cfg.daemon.state_dir, ok, *deep) {
            tracing::warn!(state_dir = %cfg.daemon.state_dir.display(), error = %e, "cannot record the result in daemon.state_dir: the daemon's tidemark_verify_* metrics miss this run");
        }
    }
    let report = res?;
    match cli.output {
        Output::Json => super::render::json(&report)?,
        Output::Text => {
            for t in &report.timelines {
                let range = format!("{} .. {}", t.first.as_deref().unwrap_or("-"), t.last.as_deref().unwrap_or("-"));
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
                    outln!("timeline {}: WAL {range} has no missing segment, but is not one history", t.timeline);
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
