//! `window`: what is restorable, per timeline.

use super::*;

/// `window`.
pub(super) async fn run(cli: &Cli, cluster: &Option<String>) -> Result<u8, Failure> {
    let cfg = load_config(cli)?;
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
