//! `drill run | list`.

use super::*;
use crate::catalog::backup::time_format;
use crate::catalog::drill::DrillRecord;
use crate::cli::DrillAction;

/// `drill run [--target latest|random] [--keep]` and `drill list`.
pub(super) async fn run(cli: &Cli, action: &DrillAction) -> Result<u8, Failure> {
    let cfg = load_config(cli)?;
    let repo = open_existing(&cfg, None).await?;
    match action {
        DrillAction::Run { target, keep } => {
            let opts = crate::drill::Options {
                target: target.unwrap_or(cfg.drill.target),
                keep: *keep,
                trigger: "manual",
                config_path: cfg.source.clone(),
                exe: None,
            };
            let rec = crate::drill::run(&cfg, &repo, &opts).await?;
            match cli.output {
                Output::Json => super::render::json(&rec)?,
                Output::Text => out!("{}", describe(&rec)),
            }
            Ok(if rec.ok { 0 } else { 1 })
        }
        DrillAction::List => {
            let all = crate::catalog::drill::list(&repo).await?;
            match cli.output {
                Output::Json => super::render::json(&all)?,
                Output::Text => {
                    if all.is_empty() {
                        outln!("no restore drills have run for cluster {} (run `tidemark drill run`, or set [drill] schedule)", repo.cluster());
                    }
                    let mut t = comfy_table::Table::new();
                    t.load_preset(comfy_table::presets::NOTHING);
                    t.set_header(["ID", "RESULT", "TRIGGER", "TARGET", "BACKUP", "RESTORE (S)", "TOTAL (S)"]);
                    for r in &all {
                        t.add_row([
                            r.id.clone(),
                            if r.ok { "passed".into() } else { "FAILED".into() },
                            r.trigger.clone(),
                            r.target.clone(),
                            r.backup.clone().unwrap_or_else(|| "-".into()),
                            r.restore_seconds.map_or_else(|| "-".into(), |s| format!("{s:.1}")),
                            format!("{:.1}", (r.finished_at - r.started_at).num_milliseconds() as f64 / 1000.0),
                        ]);
                    }
                    if !all.is_empty() {
                        outln!("{t}");
                    }
                    if let Some(e) = all.last().and_then(|r| r.error.as_deref()) {
                        outln!("last drill failed: {e}");
                    }
                }
            }
            Ok(0)
        }
    }
}

/// A drill's record as text.
fn describe(r: &DrillRecord) -> String {
    let mut s = format!(
        "restore drill {} {} (target {}, backup {})\n",
        r.id,
        if r.ok { "passed" } else { "FAILED" },
        r.target,
        r.backup.as_deref().unwrap_or("-")
    );
    for p in &r.phases {
        s.push_str(&format!("  {:<9} {:>8.1}s\n", p.name, p.seconds));
    }
    if let Some(rto) = r.restore_seconds {
        s.push_str(&format!("  to a promoted cluster in {rto:.1}s\n"));
    }
    for c in &r.checks {
        s.push_str(&format!("  {} {}: {}\n", if c.ok { "ok  " } else { "FAIL" }, c.name, c.detail));
    }
    if let Some(e) = &r.error {
        s.push_str(&format!("  error: {e}\n"));
    }
    s.push_str(&format!(
        "  started {}, finished {}\n",
        time_format::to_string(&r.started_at),
        time_format::to_string(&r.finished_at)
    ));
    s
}
