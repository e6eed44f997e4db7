//! The tidemark binaries (copied where the postgres user can run them) and a configuration
//! with its keyring and daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{as_postgres, chown_postgres, pg_bin, postgres_dir, run_ok, Pg, AWS_ENV};

/// The tidemark front end, copied with the agent beside it where the postgres user can run
/// them (the checkout may not be). One copy per build, shared by every test process, so
/// runs do not pile up copies. Copies are named after the build's target directory too:
/// test runs of other checkouts (worktrees) sharing /tmp keep theirs.
pub fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let srcs = [Path::new(env!("CARGO_BIN_EXE_tidemark")), Path::new(env!("CARGO_BIN_EXE_tidemark-agent"))];
        // Which checkout built these: another worktree's runs must not lose their copy.
        let owner = {
            use sha2::{Digest, Sha256};
            let dir = srcs[0].parent().unwrap_or(srcs[0]);
            let h = Sha256::digest(dir.as_os_str().as_encoded_bytes());
            h[..6].iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let mut stamp = format!("-{owner}");
        for src in srcs {
            let meta = std::fs::metadata(src).unwrap();
            let t = meta.modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            stamp.push_str(&format!("-{}-{t}", meta.len()));
        }
        let root = std::env::temp_dir().join("tidemark-test-bin");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let name = format!("build{stamp}");
        let dst = root.join(&name);
        if !dst.exists() {
            let tmp = root.join(format!(".{name}.{}", std::process::id()));
            std::fs::create_dir_all(&tmp).unwrap();
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
            for src in srcs {
                let to = tmp.join(src.file_name().unwrap());
                std::fs::copy(src, &to).unwrap();
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            // Another test process may have published the same build meanwhile.
            if std::fs::rename(&tmp, &dst).is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            // Copies of this checkout's older builds are no use to anyone; another checkout's
            // only once a day old (its tests may be running now).
            let mine = format!("build-{owner}-");
            let day_old = |e: &std::fs::DirEntry| {
                e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|a| a > Duration::from_secs(24 * 3600)))
            };
            for e in std::fs::read_dir(&root).unwrap().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                let stale =
                    n.starts_with(&mine) || ((n.starts_with("build-") || n.starts_with("tidemark-")) && day_old(&e));
                if stale && e.path() != dst {
                    let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
                }
            }
        }
        dst.join("tidemark")
    })
}

/// [`AWS_ENV`] as a shell prefix (`K=V K=V `), for archive_command.
pub(super) fn env_prefix() -> String {
    AWS_ENV.iter().map(|(k, v)| format!("{k}={v} ")).collect()
}

/// A tidemark configuration in a postgres-owned temp dir, with a fresh keyring.
pub struct Tidemark {
    /// Owning temp dir.
    pub dir: tempfile::TempDir,
    /// Config file.
    pub config: PathBuf,
    /// Keyring file.
    pub keyring: PathBuf,
    /// Control socket.
    pub socket: PathBuf,
    /// Extra environment for the daemon.
    pub daemon_env: Vec<(String, String)>,
    daemon: Option<Child>,
}

impl Tidemark {
    /// A config for `cluster` with repository `url` (and S3 `endpoint`), for `data_dir`.
    pub fn new(cluster: &str, url: &str, endpoint: Option<&str>, data_dir: &Path) -> Tidemark {
        Self::with_conninfo(cluster, url, endpoint, data_dir, "", &pg_bin())
    }

    /// The same, for a running server reachable with `conninfo`; restores run its binaries.
    pub fn for_pg(cluster: &str, url: &str, endpoint: Option<&str>, pg: &Pg) -> Tidemark {
        let conninfo = format!("host={} port={} user=postgres dbname=postgres", pg.sock.display(), pg.port);
        Self::with_conninfo(cluster, url, endpoint, &pg.data, &conninfo, &pg.bin)
    }

    fn with_conninfo(
        cluster: &str,
        url: &str,
        endpoint: Option<&str>,
        data_dir: &Path,
        conninfo: &str,
        bin_dir: &Path,
    ) -> Tidemark {
        let dir = postgres_dir("tm");
        let keyring = dir.path().join("keyring");
        let socket = dir.path().join("tidemark.sock");
        let config = dir.path().join("tidemark.toml");
        let ep = endpoint.map(|e| format!("endpoint = \"{e}\"\nregion = \"us-east-1\"\n")).unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "cluster = \"{cluster}\"\n[postgres]\ndata_dir = \"{}\"\nconninfo = \"{conninfo}\"\nbin_dir = \"{}\"\n[repository]\nurl = \"{url}\"\n{ep}[encryption]\nkeyring = \"{}\"\n[archive]\nworkers = 4\n[backup]\nschedule = \"{schedule}\"\n[fetch]\nprefetch = 4\nspool_dir = \"{}\"\n[daemon]\nsocket = \"{}\"\nstate_dir = \"{}\"\n",
                data_dir.display(),
                bin_dir.display(),
                keyring.display(),
                dir.path().join("spool").display(),
                socket.display(),
                dir.path().join("state").display(),
                schedule = if conninfo.is_empty() { "off" } else { "daily" },
            ),
        )
        .unwrap();
        let t = Tidemark { dir, config, keyring, socket, daemon_env: Vec::new(), daemon: None };
        run_ok(&mut t.cmd(&["keygen", "--out", t.keyring.to_str().unwrap()]));
        chown_postgres(t.dir.path());
        t
    }

    /// A file:// repository inside this test's dir.
    pub fn fs_url(dir: &Path) -> String {
        format!("file://{}", dir.display())
    }

    /// `tidemark --config CFG args...` as root.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.envs(AWS_ENV.iter().copied()).arg("--config").arg(&self.config).args(args);
        c
    }

    /// The same, as the postgres user (what PostgreSQL and systemd run).
    pub fn cmd_as_postgres(&self, args: &[&str]) -> Command {
        let mut c = as_postgres(bin());
        c.envs(AWS_ENV.iter().copied()).arg("--config").arg(&self.config).args(args);
        c
    }

    /// `wal-push pg_wal/FILE` as postgres, the way a restored cluster at `data_dir` runs its
    /// archive_command (this config, pointed at that data directory), under `cluster` if given.
    pub fn push_from(&self, data_dir: &Path, file: &str, cluster: Option<&str>) -> Output {
        let mut c = self.cmd_as_postgres(&["wal-push", &format!("pg_wal/{file}")]);
        c.current_dir(data_dir).env("TIDEMARK_POSTGRES_DATA_DIR", data_dir);
        if let Some(h) = cluster {
            c.env("TIDEMARK_CLUSTER", h);
        }
        c.output().unwrap()
    }

    /// Starts the daemon as postgres and waits for its socket to answer.
    pub fn start_daemon(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("daemon.log")).unwrap();
        let child = self
            .cmd_as_postgres(&["daemon"])
            .envs(self.daemon_env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            let exited = self.daemon.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && start.elapsed() < Duration::from_secs(30),
                "daemon did not come up ({exited:?}):\n{}",
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's log so far.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// The daemon's counters.
    pub fn daemon_stats(&self) -> serde_json::Value {
        let out = run_ok(&mut self.cmd(&["daemon-stats"]));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// SIGKILL the daemon (no drain, no cleanup) and wait for it.
    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the daemon and wait for it.
    pub fn stop_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}

impl Drop for Tidemark {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `program args` with the test AWS environment and no config.
pub fn run_cmd(program: &Path, args: &[&str]) -> Output {
    Command::new(program).envs(AWS_ENV.iter().copied()).args(args).output().unwrap()
}
