//! `wal-index rebuild | roll-up`.

use super::*;

/// `wal-index rebuild | roll-up`.
pub(super) async fn run(cli: &Cli, action: &crate::cli::WalIndexAction) -> Result<u8, Failure> {
    let cfg = load_config(cli)?;
    let (cluster, full) = match action {
        crate::cli::WalIndexAction::Rebuild { cluster } => (cluster, true),
        crate::cli::WalIndexAction::RollUp { cluster } => (cluster, false),
    };
    let repo = open_existing(&cfg, cluster.as_deref()).await?;
    let done = crate::catalog::wal_index::roll_up_all(&repo, full).await?;
    match cli.output {
        Output::Json => super::render::json(&done)?,
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
