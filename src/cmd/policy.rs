//! `policy show | set | plan | apply`.

use super::*;

/// One line per cluster: how many WAL objects go, from which to which.
pub(super) fn wal_summary(wal: &[crate::sweep::WalDeletion]) -> Vec<String> {
    let mut out = Vec::new();
    for w in wal.chunk_by(|a, b| a.cluster == b.cluster) {
        let (first, last) = (&w[0], &w[w.len() - 1]);
        out.push(format!("{}: {} WAL object(s), {} .. {}", first.cluster, w.len(), first.name, last.name));
    }
    out
}

pub(super) async fn run(cli: &Cli, action: &PolicyAction) -> Result<u8, Failure> {
    use crate::sweep as policy;
    let cfg = load_config(cli)?;
    let repo = Repository::open(&cfg).await?;
    let old = policy::load(&repo).await?;
    match action {
        PolicyAction::Show => {
            match cli.output {
                Output::Json => super::render::json(&old)?,
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
