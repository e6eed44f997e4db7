//! `keygen`: a new keyring, owned by the database user.

use super::*;

/// `keygen`: writes a new keyring at `out`.
pub(super) async fn keygen(cli: &Cli, out: &Path) -> Result<u8, Failure> {
    let (ring, id) = Keyring::keygen(out)?;
    let n = ring.ids().count();
    let owner = give_keyring_to_os_user(cli, out)?;
    match cli.output {
        Output::Json => {
            outln!("{}", serde_json::json!({ "keyring": out, "active_key": id, "keys": n, "owner": owner }))
        }
        Output::Text => outln!(
            "wrote key '{id}' to {} (active; {n} key(s) in the keyring; owned by {owner}, mode 600)",
            out.display()
        ),
    }
    Ok(0)
}

/// Run as root, `keygen` gives the keyring to `postgres.os_user` (the config's, or the
/// default `postgres` when there is no config yet): a root-owned 0600 keyring would lock out
/// the archiver and the daemon. Returns the owner's name.
pub(super) fn give_keyring_to_os_user(cli: &Cli, path: &Path) -> Result<String, Failure> {
    use std::os::unix::fs::MetadataExt;
    if crate::pg::ctl::is_root() {
        let user = Config::load_or_defaults(cli.config.as_deref())
            .map(|c| c.postgres.os_user)
            .unwrap_or_else(|_| "postgres".into());
        match crate::pg::ctl::os_user_ids(&user) {
            Ok((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| anyhow::anyhow!("cannot give {} to {user}: {e}", path.display()))?,
            Err(e) => tracing::warn!(%user, error = %e, "keyring left owned by root: no such user"),
        }
    }
    let uid = std::fs::metadata(path).map_err(anyhow::Error::from)?.uid();
    Ok(crate::codec::keyring::user_name(uid))
}
