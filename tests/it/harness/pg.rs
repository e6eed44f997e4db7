//! PostgreSQL servers run as the `postgres` OS user: 15, or any major 13–18 with
//! [`Pg::init_major`]; and the clusters `restore --start` leaves running.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::tidemark::env_prefix;
use super::{as_postgres, bin, chown_postgres, free_port, postgres_dir, run_ok, seg_no, wait_for, Tidemark};

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
    /// Server binaries it runs with: its source's.
    pub bin: PathBuf,
}

impl Restored {
    /// Runs SQL against it.
    pub fn sql(&self, sql: &str) -> String {
        psql(&self.sock, self.port, sql)
    }

    /// `pg_ctl -D DIR args...` as postgres.
    pub fn pg_ctl(&self, args: &[&str]) -> Output {
        as_postgres(self.bin.join("pg_ctl")).arg("-D").arg(&self.dir).args(args).output().unwrap()
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-w", "-m", "immediate", "stop"]);
    }
}

/// `restore --target-dir DIR --start --port P TARGET...` as root, from backups of `source`.
pub fn restore_started(tm: &Tidemark, source: &Pg, dir: &Path, target: &[&str]) -> (Output, Restored) {
    let port = free_port();
    let p = port.to_string();
    let mut args = vec!["restore", "--target-dir", dir.to_str().unwrap(), "--start", "--port", &p];
    args.extend_from_slice(target);
    let o = tm.cmd(&args).output().unwrap();
    (o, Restored { dir: dir.to_path_buf(), sock: source.sock.clone(), port, bin: source.bin.clone() })
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
