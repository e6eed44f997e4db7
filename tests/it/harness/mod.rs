//! Test harness: real PostgreSQL (15, or any major 13–18 with [`Pg::init_major`]; as the `postgres` OS user), a local moto server for S3,
//! a TCP proxy to take the store away and bring it back, and the tidemark binary.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Waits for `cond` up to `limit`, polling; panics with `what` on timeout.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// PostgreSQL binaries.
pub fn pg_bin() -> PathBuf {
    PathBuf::from(std::env::var("TEST_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()))
}

/// Server binaries (initdb, pg_ctl, postgres) of PostgreSQL `major`: from TEST_PG_MAJORS
/// ("13=/path/bin 14=/path/bin ..."; tests/run.sh installs them under target/pg/), else
/// target/pg/<major>/bin of this checkout, else (15) [`pg_bin`]. Client tools (psql,
/// pgbench) stay [`pg_bin`]'s: they work against every server.
pub fn pg_major_bin(major: u32) -> PathBuf {
    let listed = std::env::var("TEST_PG_MAJORS").unwrap_or_default();
    let from_env = listed.split_whitespace().find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.parse::<u32>().ok()? == major).then(|| PathBuf::from(v))
    });
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/pg/{major}/bin"));
    let bin = match from_env {
        Some(b) => b,
        None if installed.join("postgres").is_file() => installed,
        None if major == 15 => pg_bin(),
        None => panic!("no PostgreSQL {major} server binaries: run tests/run.sh (it installs them under target/pg/) or set TEST_PG_MAJORS"),
    };
    assert!(bin.join("postgres").is_file(), "no postgres in {} (PostgreSQL {major})", bin.display());
    bin
}

/// Runs a command, panicking with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// uid and gid of the `postgres` OS user.
pub fn postgres_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let id = |flag: &str| {
            let out = run_ok(Command::new("id").arg(flag).arg("postgres"));
            String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().unwrap()
        };
        (id("-u"), id("-g"))
    })
}

/// `program` run as the postgres user (PostgreSQL refuses root), from /tmp.
pub fn as_postgres(program: impl AsRef<std::ffi::OsStr>) -> Command {
    use std::os::unix::process::CommandExt;
    let (uid, gid) = postgres_ids();
    let mut c = Command::new(program);
    c.uid(uid).gid(gid).current_dir("/tmp").env("HOME", "/var/lib/postgresql").env_remove("PGDATA");
    c
}

/// A temp dir owned by postgres (mode 0700).
pub fn postgres_dir(tag: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix(&format!("tidemark-{tag}-")).tempdir_in("/tmp").unwrap();
    chown_postgres(d.path());
    d
}

/// chown -R postgres:postgres.
pub fn chown_postgres(p: &Path) {
    run_ok(Command::new("chown").arg("-R").arg("postgres:postgres").arg(p));
}

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

/// Environment every tidemark process gets in tests: moto credentials, no instance metadata.
pub const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_REGION", "us-east-1"),
];

fn env_prefix() -> String {
    AWS_ENV.iter().map(|(k, v)| format!("{k}={v} ")).collect()
}

/// A moto server on a free loopback port.
pub struct Moto {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Moto {
    /// Starts moto and waits until it answers.
    pub fn start() -> Moto {
        let exe = std::env::var("TEST_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let port = free_port();
        let child = Command::new(&exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {exe} (tests/run.sh installs it): {e}"));
        let m = Moto { child, port };
        wait_for("moto to listen", Duration::from_secs(60), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        m
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket.
    pub async fn create_bucket(&self, bucket: &str) {
        create_bucket(&self.endpoint(), bucket).await;
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a bucket through any S3 endpoint.
pub async fn create_bucket(endpoint: &str, bucket: &str) {
    for (k, v) in AWS_ENV {
        std::env::set_var(k, v);
    }
    let opts = tidemark::store::StoreOptions {
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint.to_string()),
        multipart_threshold: None,
    };
    let s = tidemark::store::s3::S3Store::new(bucket, "", &opts).await;
    s.client().create_bucket().bucket(bucket).send().await.expect("create bucket");
}

/// A loopback TCP proxy that can be taken down and brought back on the same port,
/// so the store "goes away" (connections refused) without losing moto's in-memory state.
pub struct Proxy {
    /// Listen port.
    pub port: u16,
    target: u16,
    rt: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Starts forwarding a free port to `target`.
    pub fn start(target: u16) -> Proxy {
        let mut p = Proxy { port: free_port(), target, rt: None };
        p.up();
        p
    }

    /// Starts (again) listening.
    pub fn up(&mut self) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (port, target) = (self.port, self.target);
        let listener = rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port))).expect("proxy bind");
        rt.spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        self.rt = Some(rt);
    }

    /// Stops listening and cuts every open connection.
    pub fn down(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        wait_for("proxy to close", Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", self.port)).is_err());
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A PostgreSQL cluster in a temp dir, run as `postgres` (15 unless made with [`Pg::init_major`]).
pub struct Pg {
    /// Owning temp dir.
    pub dir: tempfile::TempDir,
    /// Data directory.
    pub data: PathBuf,
    /// Socket directory.
    pub sock: PathBuf,
    /// Port.
    pub port: u16,
    /// Server binaries (initdb, pg_ctl, postgres) this cluster runs with.
    pub bin: PathBuf,
    running: bool,
}

impl Pg {
    /// initdb a new cluster (not started).
    pub fn init() -> Pg {
        Self::init_at(None)
    }

    /// initdb a new cluster with its data directory at `data` (an empty dir or absent).
    pub fn init_at(data: Option<PathBuf>) -> Pg {
        Self::init_with(data, &[])
    }

    /// initdb with extra arguments (e.g. `--wal-segsize=1`).
    pub fn init_with(data: Option<PathBuf>, initdb_args: &[&str]) -> Pg {
        Self::init_bin(pg_bin(), data, initdb_args)
    }

    /// initdb a cluster of PostgreSQL `major` (see [`pg_major_bin`]) with extra arguments.
    pub fn init_major(major: u32, initdb_args: &[&str]) -> Pg {
        Self::init_bin(pg_major_bin(major), None, initdb_args)
    }

    /// initdb with the server binaries in `bin`.
    pub fn init_bin(bin: PathBuf, data: Option<PathBuf>, initdb_args: &[&str]) -> Pg {
        let dir = postgres_dir("pg");
        let data = data.unwrap_or_else(|| dir.path().join("data"));
        let sock = dir.path().join("sock");
        std::fs::create_dir_all(&sock).unwrap();
        chown_postgres(&sock);
        run_ok(
            as_postgres(bin.join("initdb"))
                .args(["-A", "trust", "-U", "postgres"])
                .args(initdb_args)
                .arg("-D")
                .arg(&data),
        );
        let port = free_port();
        let pg = Pg { dir, data, sock, port, bin, running: false };
        pg.conf(&format!(
            "port = {port}\nunix_socket_directories = '{}'\nlisten_addresses = ''\nfsync = off\nshared_buffers = 64MB\n",
            pg.sock.display()
        ));
        pg
    }

    /// A cold copy of this (stopped) server's data directory, as a server of its own: same
    /// system identifier and history so far, its own port and socket.
    pub fn cold_copy(&self) -> Pg {
        assert!(!self.running, "a cold copy needs the server stopped");
        let dir = postgres_dir("pgcopy");
        let data = dir.path().join("data");
        run_ok(Command::new("cp").arg("-a").arg(&self.data).arg(&data));
        let sock = dir.path().join("sock");
        std::fs::create_dir_all(&sock).unwrap();
        chown_postgres(dir.path());
        let port = free_port();
        let pg = Pg { dir, data, sock, port, bin: self.bin.clone(), running: false };
        pg.conf(&format!("port = {port}\nunix_socket_directories = '{}'\n", pg.sock.display()));
        pg
    }

    /// Appends settings to postgresql.conf.
    pub fn conf(&self, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(self.data.join("postgresql.conf")).unwrap();
        writeln!(f, "{text}").unwrap();
    }

    /// Starts and waits until it accepts connections.
    pub fn start(&mut self) {
        let log = self.dir.path().join("server.log");
        run_ok(
            as_postgres(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "120", "start"]),
        );
        self.running = true;
    }

    /// Stops (fast shutdown).
    pub fn stop(&mut self) {
        if self.running {
            run_ok(as_postgres(self.bin.join("pg_ctl")).arg("-D").arg(&self.data).args(["-w", "-m", "fast", "stop"]));
            self.running = false;
        }
    }

    /// Runs SQL and returns trimmed unaligned output.
    pub fn sql(&self, sql: &str) -> String {
        psql(&self.sock, self.port, sql)
    }

    /// The server's clock now, as RFC 3339 UTC with microseconds (a recovery target).
    pub fn now_utc(&self) -> String {
        self.sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    }

    /// A recovery target between what committed before and what commits after: the clock
    /// now, returned once the server's clock has moved past it.
    pub fn time_mark(&self) -> String {
        let t = self.now_utc();
        wait_for("the server clock to pass the mark", Duration::from_secs(5), || {
            self.sql(&format!("SELECT clock_timestamp() > '{t}'::timestamptz")) == "t"
        });
        t
    }

    /// Closes the current WAL segment and waits until it is archived.
    pub fn switch_wal_archived(&self, limit: Duration) {
        let seg = self.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
        self.sql("SELECT pg_switch_wal()");
        self.wait_archived(&seg, limit);
    }

    /// Runs pgbench with `args`.
    pub fn pgbench(&self, args: &[&str]) {
        run_ok(
            Command::new(pg_bin().join("pgbench"))
                .arg("-h")
                .arg(&self.sock)
                .args(["-p", &self.port.to_string(), "-U", "postgres"])
                .args(args)
                .arg("postgres"),
        );
    }

    /// The server log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Sets archive_command to tidemark wal-push with `config`.
    pub fn archive_to(&self, config: &Path) {
        self.conf(&format!(
            "archive_mode = on\narchive_command = '{}{} --config {} wal-push %p'\nwal_keep_size = '4GB'\nmax_wal_size = '4GB'\n",
            env_prefix(),
            bin().display(),
            config.display()
        ));
    }

    /// Names of segments PostgreSQL has marked archived (.done), sorted.
    pub fn done_segments(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.data.join("pg_wal/archive_status"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".done").map(str::to_string))
            .filter(|n| n.len() == 24)
            .collect();
        v.sort();
        v
    }

    /// Writes with pgbench until at least `segments` new WAL segments exist, then switches WAL.
    /// Returns the last segment that must reach the archive.
    pub fn write_segments(&self, segments: u64) -> String {
        let start = self.sql("select pg_walfile_name(pg_current_wal_lsn())");
        self.pgbench(&["-i", "-q", "-s", "2"]);
        self.sql("create table if not exists filler(id int, pad text)");
        loop {
            let now = self.sql("select pg_walfile_name(pg_current_wal_lsn())");
            if seg_no(&now) - seg_no(&start) >= segments {
                break;
            }
            // Many small transactions, then a bulk insert: WAL of both shapes, quickly.
            self.pgbench(&["-n", "-c", "2", "-t", "300"]);
            self.sql("insert into filler select g, repeat(md5(g::text), 6) from generate_series(1, 100000) g");
        }
        let last = self.sql("select pg_walfile_name(pg_current_wal_lsn())");
        self.sql("select pg_switch_wal()");
        last
    }

    /// Waits until the archiver has archived `name` (or later).
    pub fn wait_archived(&self, name: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            let last = self.sql("select coalesce(last_archived_wal, '') from pg_stat_archiver");
            if last.len() >= 24 && last[..24] >= *name {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "archiver did not reach {name} in {limit:?} (last {last}); server log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if self.running {
            let _ = as_postgres(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-w", "-m", "immediate", "stop"])
                .output();
        }
    }
}

/// A restored cluster (started by `restore --start`), stopped on drop. It keeps the
/// backup's socket directory: its source's.
pub struct Restored {
    /// Data directory.
    pub dir: PathBuf,
    /// Socket directory.
    pub sock: PathBuf,
    /// Port.
    pub port: u16,
}

impl Restored {
    /// Runs SQL against it.
    pub fn sql(&self, sql: &str) -> String {
        psql(&self.sock, self.port, sql)
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = as_postgres(pg_bin().join("pg_ctl"))
            .arg("-D")
            .arg(&self.dir)
            .args(["-w", "-m", "immediate", "stop"])
            .output();
    }
}

/// `restore --target-dir DIR --start --port P TARGET...` as root, from backups of `source`.
pub fn restore_started(tm: &Tidemark, source: &Pg, dir: &Path, target: &[&str]) -> (Output, Restored) {
    let port = free_port();
    let p = port.to_string();
    let mut args = vec!["restore", "--target-dir", dir.to_str().unwrap(), "--start", "--port", &p];
    args.extend_from_slice(target);
    let o = tm.cmd(&args).output().unwrap();
    (o, Restored { dir: dir.to_path_buf(), sock: source.sock.clone(), port })
}

/// Segment number of a 24-hex segment name (16 MiB segments).
pub fn seg_no(name: &str) -> u64 {
    let log = u64::from_str_radix(&name[8..16], 16).unwrap();
    let seg = u64::from_str_radix(&name[16..24], 16).unwrap();
    log * 256 + seg
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

/// sha256 of a file, hex.
pub fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

/// A 16 MiB WAL segment with a valid long page header (timeline 1); the rest is noise.
pub fn fake_segment(sysid: u64, seed: u8) -> Vec<u8> {
    let mut b: Vec<u8> = (0..16u32 << 20).map(|i| ((i / 7) % 253) as u8 ^ seed).collect();
    b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    b[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    b[24..32].copy_from_slice(&sysid.to_le_bytes());
    b[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
    b[36..40].copy_from_slice(&8192u32.to_le_bytes());
    b
}

/// Runs `program args` with the test AWS environment and no config.
pub fn run_cmd(program: &Path, args: &[&str]) -> Output {
    Command::new(program).envs(AWS_ENV.iter().copied()).args(args).output().unwrap()
}

/// Runs SQL with psql over the Unix socket in `sock` and returns trimmed unaligned output.
pub fn psql(sock: &Path, port: u16, sql: &str) -> String {
    let out = run_ok(Command::new(pg_bin().join("psql")).arg("-h").arg(sock).args([
        "-p",
        &port.to_string(),
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-XAtq",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    ]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An ext4 filesystem in a file, loop-mounted: a real block device whose mount can be frozen.
pub struct LoopMount {
    /// Mount point.
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl LoopMount {
    /// Makes and mounts one of `mib` MiB; None (with a note on stderr) where this machine
    /// cannot loop-mount (not root, no loop devices).
    pub fn new(mib: u64) -> Option<LoopMount> {
        let tmp = tempfile::Builder::new().prefix("tidemark-loop").tempdir_in("/var/tmp").unwrap();
        let img = tmp.path().join("fs.img");
        let dir = tmp.path().join("mnt");
        std::fs::create_dir_all(&dir).unwrap();
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(mib << 20).unwrap();
        let ok = |c: &mut Command| c.output().map(|o| o.status.success()).unwrap_or(false);
        if !ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img))
            || !ok(Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&dir))
        {
            eprintln!("SKIPPED: cannot make and loop-mount an ext4 image here (needs root, e2fsprogs and /dev/loop*)");
            return None;
        }
        Some(LoopMount { dir, _tmp: tmp })
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.dir).output();
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
    }
}

/// What a [`FaultProxy`] does to requests.
#[derive(Default)]
pub struct Faults {
    /// Answer this many requests (of `action`, or any) with 503 RequestLimitExceeded.
    pub throttle: usize,
    /// Only requests whose `Action=` is this are throttled or rewritten.
    pub action: Option<String>,
    /// Error code of the injected failures (default RequestLimitExceeded, a 503; others are 400s).
    pub code: Option<String>,
    /// Replace text in matching responses.
    pub rewrite: Vec<(String, String)>,
    /// Actions seen, in order.
    pub seen: Vec<String>,
    /// Requests answered with a throttling error.
    pub throttled: usize,
}

/// A loopback HTTP/1.1 proxy in front of moto that injects faults into EC2 query calls.
pub struct FaultProxy {
    /// Its port.
    pub port: u16,
    /// The faults, changeable while running.
    pub faults: std::sync::Arc<std::sync::Mutex<Faults>>,
}

impl FaultProxy {
    /// Starts forwarding to `upstream` (a port on 127.0.0.1).
    pub fn start(upstream: u16) -> FaultProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let faults = std::sync::Arc::new(std::sync::Mutex::new(Faults::default()));
        let f2 = faults.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let f = f2.clone();
                std::thread::spawn(move || {
                    let _ = serve_one(c, upstream, &f);
                });
            }
        });
        FaultProxy { port, faults }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn with_headers(head: &str, len: usize) -> String {
    let mut out = String::new();
    for (i, l) in head.trim_end().lines().enumerate() {
        let lower = l.to_ascii_lowercase();
        if i > 0 && (lower.starts_with("content-length:") || lower.starts_with("connection:")) {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str(&format!("Content-Length: {len}\r\nConnection: close\r\n\r\n"));
    out
}

fn serve_one(mut c: TcpStream, upstream: u16, faults: &std::sync::Mutex<Faults>) -> std::io::Result<()> {
    use std::io::Write;
    let (head, body) = read_message(&mut c, false)?;
    let text = String::from_utf8_lossy(&body);
    let action = text.split('&').find_map(|kv| kv.strip_prefix("Action=")).unwrap_or("").to_string();
    let (throttle, rewrite, code) = {
        let mut f = faults.lock().unwrap();
        f.seen.push(action.clone());
        let hit = f.action.as_deref().is_none_or(|a| a == action);
        let throttle = hit && f.throttle > 0;
        if throttle {
            f.throttle -= 1;
            f.throttled += 1;
        }
        let code = f.code.clone().unwrap_or_else(|| "RequestLimitExceeded".into());
        (throttle, if hit { f.rewrite.clone() } else { Vec::new() }, code)
    };
    if throttle {
        let xml = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>");
        let resp = if code == "RequestLimitExceeded" {
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/xml\r\n"
        } else {
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/xml\r\n"
        };
        c.write_all(with_headers(resp, xml.len()).as_bytes())?;
        c.write_all(xml.as_bytes())?;
        return Ok(());
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.write_all(with_headers(&head, body.len()).as_bytes())?;
    up.write_all(&body)?;
    let (rhead, rbody) = read_message(&mut up, true)?;
    let mut rtext = String::from_utf8_lossy(&rbody).into_owned();
    for (from, to) in &rewrite {
        rtext = rtext.replace(from, to);
    }
    c.write_all(with_headers(&rhead, rtext.len()).as_bytes())?;
    c.write_all(rtext.as_bytes())?;
    Ok(())
}

/// A loopback IMDSv2 endpoint (token, then metadata paths), for the real IMDS client.
pub fn imds_server(values: &'static [(&'static str, &'static str)]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            use std::io::Write;
            let Ok((head, _)) = read_message(&mut c, false) else { continue };
            let line = head.lines().next().unwrap_or_default().to_string();
            let has_token = head.to_ascii_lowercase().contains("x-aws-ec2-metadata-token: tok");
            let (status, body) = if line.starts_with("PUT /latest/api/token") {
                ("200 OK\r\nx-aws-ec2-metadata-token-ttl-seconds: 21600", "tok".to_string())
            } else if let Some((_, v)) = values.iter().find(|(p, _)| line.starts_with(&format!("GET {p} "))) {
                if has_token {
                    ("200 OK", v.to_string())
                } else {
                    ("401 Unauthorized", String::new())
                }
            } else {
                ("404 Not Found", String::new())
            };
            let _ = c.write_all(with_headers(&format!("HTTP/1.1 {status}\r\n"), body.len()).as_bytes());
            let _ = c.write_all(body.as_bytes());
        }
    });
    port
}

/// Faults a [`ChaosProxy`] injects, one kind per faulty request, in turn.
pub const CHAOS_KINDS: [&str; 6] = [
    "reset before the request",
    "503 SlowDown",
    "500 InternalError",
    "truncated body",
    "delay",
    "reset after the request applied",
];

/// A binary-safe loopback HTTP/1.1 proxy in front of moto's S3 API that breaks a fixed
/// share of requests, cycling through [`CHAOS_KINDS`] (deterministic: no test luck).
pub struct ChaosProxy {
    /// Its port.
    pub port: u16,
    /// Faults injected so far, per kind (indexes of [`CHAOS_KINDS`]).
    pub injected: std::sync::Arc<std::sync::Mutex<[u64; 6]>>,
    /// Requests seen.
    pub requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl ChaosProxy {
    /// Forwards to `upstream`, breaking one request in `every`.
    pub fn start(upstream: u16, every: u64) -> ChaosProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let injected = std::sync::Arc::new(std::sync::Mutex::new([0u64; 6]));
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (inj, reqs) = (injected.clone(), requests.clone());
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let n = reqs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // Every `every`-th request is broken, the kinds taken in turn.
                let fault = (n % every == every - 1).then(|| ((n / every) % 6) as usize);
                if let Some(k) = fault {
                    inj.lock().unwrap()[k] += 1;
                }
                std::thread::spawn(move || {
                    let _ = chaos_one(c, upstream, fault);
                });
            }
        });
        ChaosProxy { port, injected, requests }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Reads one HTTP message: its head, and a body by Content-Length, chunked framing, or
/// (responses) to EOF.
fn read_message(s: &mut TcpStream, to_eof: bool) -> std::io::Result<(String, Vec<u8>)> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut body = buf[head_end..].to_vec();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_ascii_lowercase())
        })
    };
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        // The last chunk, then (optional trailers and) an empty line.
        while !(body.ends_with(b"0\r\n\r\n")
            || (body.windows(5).any(|w| w == b"\r\n0\r\n") && body.ends_with(b"\r\n\r\n")))
        {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if to_eof {
        s.read_to_end(&mut body)?;
    }
    Ok((head, body))
}

/// The head with `Connection: close` (one request per connection keeps framing simple).
fn closing(head: &str) -> String {
    let mut out = String::new();
    for (i, l) in head.trim_end().lines().enumerate() {
        if i > 0 && l.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

fn chaos_one(mut c: TcpStream, upstream: u16, fault: Option<usize>) -> std::io::Result<()> {
    use std::io::Write;
    let (head, body) = read_message(&mut c, false)?;
    let s3_error = |status: &str, code: &str| {
        let xml = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message><RequestId>chaos</RequestId></Error>");
        format!("HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}", xml.len())
    };
    match fault {
        Some(0) => return Ok(()),
        Some(1) => return c.write_all(s3_error("503 Slow Down", "SlowDown").as_bytes()),
        Some(2) => return c.write_all(s3_error("500 Internal Server Error", "InternalError").as_bytes()),
        Some(4) => std::thread::sleep(Duration::from_millis(300)),
        _ => {}
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.write_all(closing(&head).as_bytes())?;
    up.write_all(&body)?;
    let (rhead, rbody) = read_message(&mut up, true)?;
    match fault {
        Some(5) => Ok(()),
        Some(3) => {
            // Headers promise the whole body; half of it arrives, then the connection ends.
            c.write_all(closing(&rhead).as_bytes())?;
            c.write_all(&rbody[..rbody.len() / 2])
        }
        _ => {
            c.write_all(closing(&rhead).as_bytes())?;
            c.write_all(&rbody)
        }
    }
}
