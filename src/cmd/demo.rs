//! `tidemark demo`: a self-contained run on embedded defaults in a temp dir. It creates a
//! keyring and an fs repository, initdb's a PostgreSQL cluster (as `postgres` when run as
//! root), runs the daemon, writes with pgbench, and proves every archived segment comes
//! back byte-identical. Each step is printed; everything is removed at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::pg::ctl;

struct Demo {
    dir: PathBuf,
    bin: PathBuf,
    exe: PathBuf,
    ids: Option<(u32, u32)>,
    port: u16,
    daemon: Option<Child>,
    pg_running: bool,
    restored: Option<PathBuf>,
}

fn step(n: u32, text: &str) {
    println!("[{n}] {text}");
}

impl Demo {
    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = ctl::command(program, self.ids);
        c.current_dir(&self.dir);
        c
    }

    fn run(&self, mut c: Command, what: &str) -> anyhow::Result<String> {
        let out = c.output().with_context(|| format!("starting {what}"))?;
        if !out.status.success() {
            bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn sql(&self, sql: &str) -> anyhow::Result<String> {
        let mut c = self.cmd(self.bin.join("psql"));
        c.arg("-h").arg(self.dir.join("sock")).args([
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-XAtq",
            "-c",
            sql,
        ]);
        self.run(c, "psql")
    }

    fn tidemark(&self, args: &[&str]) -> Command {
        let mut c = self.cmd(&self.exe);
        c.arg("--config").arg(self.dir.join("tidemark.toml")).args(args);
        c
    }

    /// Waits until pg_stat_archiver reports `last` (or later) archived, with no failures.
    fn wait_archived(&self, last: &str) -> anyhow::Result<()> {
        let t0 = Instant::now();
        loop {
            let got =
                self.sql("select coalesce(last_archived_wal, '') || ' ' || failed_count from pg_stat_archiver")?;
            let (wal, failed) = got.split_once(' ').unwrap_or(("", "0"));
            if wal.len() >= 24 && wal[..24] >= *last {
                println!("    archived through {wal}; failed_count = {failed}");
                if failed != "0" {
                    bail!("archive_command failed {failed} time(s); see {}/postgres.log", self.dir.display());
                }
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(120) {
                bail!("archiving did not reach {last} in 120 s (last {wal})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(r) = &self.restored {
            let mut c = self.cmd(self.bin.join("pg_ctl"));
            c.arg("-D").arg(r).args(["-w", "-m", "immediate", "stop"]).stdout(Stdio::null()).stderr(Stdio::null());
            let _ = c.status();
        }
        if self.pg_running {
            let mut c = self.cmd(self.bin.join("pg_ctl"));
            c.arg("-D")
                .arg(self.data())
                .args(["-w", "-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = c.status();
        }
        if let Some(mut d) = self.daemon.take() {
            let _ = Command::new("kill").arg(d.id().to_string()).status();
            let _ = d.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sha256_file(p: &Path) -> anyhow::Result<String> {
    Ok(hex::encode(Sha256::digest(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)))
}

/// Runs the demo; `bin_dir` and `os_user` come from the config when one exists.
pub fn run(bin_dir: Option<&Path>, os_user: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let bin = ctl::find_bin_dir(bin_dir)?;
    let ids = ctl::run_as(os_user)?;
    let dir = std::env::temp_dir().join(format!("tidemark-demo-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sock"))?;
    let exe = std::env::current_exe().context("locating the tidemark binary")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut demo = Demo { dir: dir.clone(), bin, exe, ids, port, daemon: None, pg_running: false, restored: None };

    step(1, &format!("workspace {} (PostgreSQL from {})", dir.display(), demo.bin.display()));
    crate::codec::Keyring::keygen(&dir.join("keyring"))?;
    let config = format!(
        "cluster = \"demo\"\n[postgres]\ndata_dir = \"{d}/data\"\nconninfo = \"host={d}/sock port={port} user=postgres dbname=postgres\"\nbin_dir = \"{bin}\"\n[repository]\nurl = \"file://{d}/repo\"\n[encryption]\nkeyring = \"{d}/keyring\"\n[backup]\nschedule = \"off\"\n[fetch]\nspool_dir = \"{d}/spool\"\n[daemon]\nsocket = \"{d}/tidemark.sock\"\nstate_dir = \"{d}/state\"\n",
        d = dir.display(),
        bin = demo.bin.display()
    );
    std::fs::write(dir.join("tidemark.toml"), config)?;
    ctl::chown_tree(&dir, ids)?;
    println!("    keyring (mode 0600), fs repository, config written");

    step(2, "initdb a new PostgreSQL cluster");
    let mut c = demo.cmd(demo.bin.join("initdb"));
    c.args(["-A", "trust", "-U", "postgres", "-D"]).arg(demo.data());
    demo.run(c, "initdb")?;
    let conf = format!(
        "port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{sock}'\narchive_mode = on\narchive_command = '{exe} --config {d}/tidemark.toml wal-push %p'\nwal_keep_size = '1GB'\n",
        sock = dir.join("sock").display(),
        exe = demo.exe.display(),
        d = dir.display()
    );
    let mut pgconf = std::fs::OpenOptions::new().append(true).open(demo.data().join("postgresql.conf"))?;
    std::io::Write::write_all(&mut pgconf, conf.as_bytes())?;
    println!("    archive_command = 'tidemark wal-push %p'");

    step(3, "start the tidemark daemon (archive read-ahead, control socket)");
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    let child = demo.tidemark(&["daemon"]).stdout(Stdio::null()).stderr(log).spawn()?;
    demo.daemon = Some(child);
    let sock = dir.join("tidemark.sock");
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("daemon did not start: {}", std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    step(4, "start PostgreSQL");
    let mut c = demo.cmd(demo.bin.join("pg_ctl"));
    c.arg("-D").arg(demo.data()).arg("-l").arg(dir.join("postgres.log")).args(["-w", "start"]);
    demo.run(c, "pg_ctl start")?;
    demo.pg_running = true;

    step(5, "write: pgbench -i -s 10, then 4000 transactions");
    for args in [&["-i", "-q", "-s", "10"][..], &["-n", "-c", "2", "-t", "2000"][..]] {
        let mut c = demo.cmd(demo.bin.join("pgbench"));
        c.arg("-h").arg(dir.join("sock")).args(["-p", &port.to_string(), "-U", "postgres"]).args(args).arg("postgres");
        demo.run(c, "pgbench")?;
    }
    let last = demo.sql("select pg_walfile_name(pg_current_wal_lsn())")?;
    demo.sql("select pg_switch_wal()")?;

    step(6, &format!("wait until PostgreSQL's archiver has archived {last}"));
    demo.wait_archived(&last)?;
    let stats = demo.run(demo.tidemark(&["daemon-stats"]), "daemon-stats")?;
    let stats: serde_json::Value = serde_json::from_str(&stats)?;
    println!(
        "    daemon stored {} file(s); {} archiver call(s) answered by read-ahead, {} after pushing",
        stats["stored"], stats["served_from_read_ahead"], stats["served_after_push"]
    );

    step(7, "fetch every archived segment back with wal-fetch and compare sha256");
    let mut names: Vec<String> = std::fs::read_dir(demo.data().join("pg_wal/archive_status"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".done").map(str::to_string))
        .filter(|n| crate::wal::name::is_segment_name(n))
        .collect();
    names.sort();
    let (mut wal_bytes, mut repo_bytes) = (0u64, 0u64);
    for n in &names {
        let dest = dir.join("fetched");
        let mut c = demo.tidemark(&["wal-fetch", n]);
        c.arg(&dest);
        demo.run(c, "wal-fetch")?;
        let original = demo.data().join("pg_wal").join(n);
        if sha256_file(&dest)? != sha256_file(&original)? {
            bail!("segment {n} came back different");
        }
        wal_bytes += std::fs::metadata(&original)?.len();
        repo_bytes += std::fs::metadata(dir.join("repo/clusters/demo/wal/00000001").join(n))?.len();
        std::fs::remove_file(&dest)?;
    }
    println!(
        "    {} segments identical; {:.1} MiB of WAL stored as {:.1} MiB (zstd + AES-256-GCM)",
        names.len(),
        wal_bytes as f64 / 1048576.0,
        repo_bytes as f64 / 1048576.0
    );

    step(8, "take a base backup (files provider: packed, sealed bundles)");
    let out = demo.run(demo.tidemark(&["backup", "create", "--wait"]), "backup create")?;
    println!("    {out}");

    step(9, "more writes: 3 batches of orders, noting the time after each commit");
    demo.sql("create table orders(id int primary key, item text, placed timestamptz default clock_timestamp())")?;
    let mut noted = String::new();
    for batch in 0..3 {
        let lo = batch * 1000 + 1;
        demo.sql(&format!(
            "insert into orders(id, item) select g, 'item ' || g from generate_series({lo}, {}) g",
            lo + 999
        ))?;
        noted = demo.sql("select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")?;
        println!("    batch {}: orders {lo}..{} committed; time now {noted} UTC", batch + 1, lo + 999);
    }
    let expected = demo
        .sql("select count(*) || ' orders, checksum ' || md5(string_agg(id || item, ',' order by id)) from orders")?;

    step(10, "disaster: DROP TABLE orders");
    demo.sql("drop table orders")?;
    let last = demo.sql("select pg_walfile_name(pg_current_wal_lsn())")?;
    demo.sql("select pg_switch_wal()")?;
    demo.wait_archived(&last)?;
    let window = demo.run(demo.tidemark(&["window"]), "window")?;
    println!("    {}", window.replace('\n', "\n    "));

    step(11, &format!("restore a NEW cluster to {noted} UTC, just before the disaster, and start it"));
    let restored = dir.join("restored");
    let port2 = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut c =
        demo.tidemark(&["restore", "--target-time", &noted, "--start", "--port", &port2.to_string(), "--target-dir"]);
    c.arg(&restored);
    // restore chowns the new cluster to the database user itself, so it runs as we do.
    let mut c2 = Command::new(&demo.exe);
    c2.args(c.get_args()).current_dir(&dir);
    let out = demo.run(c2, "restore")?;
    demo.restored = Some(restored.clone());
    println!("    {}", out.replace('\n', "\n    "));

    step(12, "query the restored cluster: the orders are back");
    let mut c = demo.cmd(demo.bin.join("psql"));
    c.arg("-h").arg(dir.join("sock")).args(["-p", &port2.to_string(), "-U", "postgres", "-XAtq", "-c"]);
    c.arg("select count(*) || ' orders, checksum ' || md5(string_agg(id || item, ',' order by id)) from orders");
    let got = demo.run(c, "psql on the restored cluster")?;
    println!("    restored: {got}\n    expected: {expected}");
    if got != expected {
        bail!("the restored cluster does not hold the orders committed before the disaster");
    }

    step(13, "stop PostgreSQL and the daemon, remove the workspace");
    let mut c = demo.cmd(demo.bin.join("pg_ctl"));
    c.arg("-D").arg(demo.data()).args(["-w", "-m", "fast", "stop"]);
    demo.run(c, "pg_ctl stop")?;
    demo.pg_running = false;
    drop(demo);
    println!("demo finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
