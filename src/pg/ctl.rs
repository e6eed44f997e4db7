//! Running PostgreSQL's programs, as the database OS user when tidemark runs as root.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// uid/gid of an OS user, from /etc/passwd.
pub fn os_user_ids(user: &str) -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == user {
            return Ok((f[2].parse()?, f[3].parse()?));
        }
    }
    bail!("OS user '{user}' does not exist; PostgreSQL refuses to run as root (set postgres.os_user)")
}

/// True when this process runs as root.
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

/// The ids to switch to before running PostgreSQL programs: `Some` only as root.
pub fn run_as(user: &str) -> anyhow::Result<Option<(u32, u32)>> {
    if is_root() {
        Ok(Some(os_user_ids(user)?))
    } else {
        Ok(None)
    }
}

/// A command that runs as `ids` when given.
pub fn command(program: impl AsRef<std::ffi::OsStr>, ids: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(program);
    if let Some((uid, gid)) = ids {
        c.uid(uid).gid(gid);
    }
    c
}

/// chown -R to `ids` when given.
pub fn chown_tree(path: &Path, ids: Option<(u32, u32)>) -> anyhow::Result<()> {
    if let Some((uid, gid)) = ids {
        let st =
            Command::new("chown").arg("-R").arg(format!("{uid}:{gid}")).arg(path).status().context("running chown")?;
        if !st.success() {
            bail!("chown -R {uid}:{gid} {} failed", path.display());
        }
    }
    Ok(())
}

/// Where PostgreSQL's programs are: config, then the Debian layout, then pg_config.
pub fn find_bin_dir(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = configured {
        return Ok(p.to_path_buf());
    }
    for v in ["17", "16", "15", "14", "13", "12"] {
        let p = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if p.join("pg_ctl").is_file() {
            return Ok(p);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("pg_ctl").is_file() {
            return Ok(p);
        }
    }
    bail!("PostgreSQL server programs (pg_ctl, initdb) not found; install PostgreSQL or set postgres.bin_dir")
}

/// The major of the server binaries in `bin_dir` (`postgres --version`).
pub fn server_major(bin_dir: &Path) -> anyhow::Result<u32> {
    let postgres = bin_dir.join("postgres");
    let out = Command::new(&postgres)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", postgres.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match major_of_version_output(&text) {
        Some(m) if out.status.success() => Ok(m),
        _ => bail!("{} --version said {:?}: not a PostgreSQL server", postgres.display(), text.trim()),
    }
}

/// The major in `postgres --version` output: `postgres (PostgreSQL) 16.14` (pure).
pub fn major_of_version_output(text: &str) -> Option<u32> {
    let v = text.split("(PostgreSQL) ").nth(1)?;
    let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The major in a data directory's `PG_VERSION` (`13`; `9.6` before 10) (pure).
pub fn major_of_pg_version_file(text: &str) -> Option<u32> {
    let t = text.trim();
    let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
    // 9.x had two-part majors; only 10 and later are one number.
    (t.len() == digits.len()).then(|| digits.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors_from_version_output_and_pg_version() {
        assert_eq!(major_of_version_output("postgres (PostgreSQL) 13.23\n"), Some(13));
        assert_eq!(major_of_version_output("postgres (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)\n"), Some(15));
        assert_eq!(major_of_version_output("postgres (PostgreSQL) 18beta1"), Some(18));
        assert_eq!(major_of_version_output("something else 15.1"), None);
        for m in 13..=18 {
            assert_eq!(major_of_pg_version_file(&format!("{m}\n")), Some(m));
        }
        assert_eq!(major_of_pg_version_file("9.6\n"), None);
        assert_eq!(major_of_pg_version_file(""), None);
    }
}
