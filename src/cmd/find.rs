//! `find --dropped TABLE | --truncated TABLE | --xid X [--from T] [--to T]`.

use super::*;
use crate::catalog::backup::time_format;
use crate::find::{Found, Query};

/// Searches the archive's index for the transaction to restore to.
pub(super) async fn run(cli: &Cli) -> Result<u8, Failure> {
    let Command::Find { dropped, truncated, xid, from, to, cluster } = &cli.command else {
        return Err(usage("internal: wrong command for this handler"));
    };
    let cfg = load_config(cli)?;
    let query = match (dropped, truncated, xid) {
        (Some(t), _, _) => Query::Dropped(t.clone()),
        (_, Some(t), _) => Query::Truncated(t.clone()),
        (_, _, Some(x)) => Query::Xid(*x),
        _ => return Err(usage("one of --dropped, --truncated or --xid is required")),
    };
    let repo = open_existing(&cfg, cluster.as_deref()).await?;
    // The live server names the configured cluster's relations, not another handle's.
    let own = cluster.as_deref().is_none_or(|c| c == cfg.cluster);
    let req = crate::find::Request {
        query,
        from: from.as_deref().map(parse_time).transpose()?,
        to: to.as_deref().map(parse_time).transpose()?,
        refresh_from: own.then(|| cfg.postgres.conninfo.clone()),
    };
    let found = crate::find::run(&repo, &req).await?;
    for w in &found.warnings {
        tracing::warn!("{w}");
    }
    match cli.output {
        Output::Json => super::render::json(&found)?,
        Output::Text => out!("{}", describe(&found)),
    }
    Ok(if found.hits.is_empty() { 1 } else { 0 })
}

/// The text form of a search's result.
fn describe(f: &Found) -> String {
    let mut s = String::new();
    if f.hits.is_empty() {
        s.push_str(&format!(
            "nothing found for {} ({} segments searched, {} read)\n",
            f.query, f.segments_searched, f.segments_read
        ));
    }
    for h in &f.hits {
        let what = match (h.event, &h.relation) {
            ("dropped", Some(r)) => format!("dropped {r}"),
            ("truncated", Some(r)) => format!("truncated {r}"),
            ("abort", _) => "aborted".to_string(),
            _ => "committed".to_string(),
        };
        s.push_str(&format!(
            "transaction {} {what}\n  at {}, LSN {} on timeline {} (segment {})\n",
            h.xid,
            time_format::to_string(&h.time),
            h.lsn,
            h.timeline,
            h.segment
        ));
        if !h.also.is_empty() {
            s.push_str(&format!("  also removed: {}\n", h.also.join(", ")));
        }
        s.push_str(&format!("  restore to just before it: tidemark restore --before-xid {} --target-dir DIR\n", h.xid));
    }
    for w in &f.warnings {
        s.push_str(&format!("note: {w}\n"));
    }
    s
}
