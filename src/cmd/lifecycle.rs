//! `deprovision` and `automatic-backups`: a cluster's lifecycle.

use super::*;

/// `deprovision --yes`.
pub(super) async fn deprovision(cli: &Cli, cluster: &Option<String>, yes: &bool) -> Result<u8, Failure> {
    let cfg = load_config(cli)?;
    let repo = open_repo(&cfg, cluster.as_deref()).await?;
    if !yes {
        return Err(usage(format!(
            "deprovisioning cluster '{}' permanently deletes its automatic backups; add --yes to confirm",
            repo.cluster()
        )));
    }
    let d = crate::backup::lifecycle::deprovision(&cfg, &repo).await?;
    match cli.output {
        Output::Json => super::render::json(&d)?,
        Output::Text => {
            outln!(
                "cluster {} deprovisioned; final backup: {}",
                repo.cluster(),
                d.final_backup.as_deref().unwrap_or("none (keep_final off or automatic backups disabled)")
            );
            outln!("purged {} automatic backup(s); kept {}: {}", d.purged.len(), d.kept.len(), d.kept.join(", "));
        }
    }
    Ok(0)
}

/// `automatic-backups enable | disable`.
pub(super) async fn automatic_backups(cli: &Cli, state: crate::cli::AutomaticBackups) -> Result<u8, Failure> {
    let cfg = load_config(cli)?;
    let repo = Repository::open(&cfg).await?;
    let rec = crate::backup::lifecycle::set_automatic(&repo, state == crate::cli::AutomaticBackups::Enable).await?;
    match cli.output {
        Output::Json => super::render::json(&rec)?,
        Output::Text => outln!(
            "automatic backups {} for cluster {} (existing backups are untouched)",
            if rec.automatic_backups { "enabled" } else { "disabled" },
            rec.handle
        ),
    }
    Ok(0)
}
