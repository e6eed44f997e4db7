//! Test harness, by part: PostgreSQL servers ([`pg`]), the tidemark CLI and daemon
//! ([`tidemark`]), moto for S3 and EC2 ([`moto`]), proxies that take the store away or break
//! requests ([`proxy`]), host doubles ([`host`]); and the small helpers here.

mod host;
mod http;
mod moto;
mod pg;
mod proxy;
mod tidemark;

pub use host::{imds_server, LoopMount};
pub use moto::Moto;
pub use pg::{pg_bin, pg_major_bin, psql, restore_started, Pg, Restored};
pub use proxy::{ChaosProxy, FaultProxy, Proxy, CHAOS_KINDS};
pub use tidemark::{bin, run_cmd, Tidemark};

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Once, OnceLock};
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

/// Environment every tidemark process gets in tests: moto credentials, no instance metadata.
pub const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_REGION", "us-east-1"),
];

/// Puts [`AWS_ENV`] into this process's environment, for the SDK clients tests make in
/// process; once, as every test shares that environment.
pub fn aws_env() {
    static SET: Once = Once::new();
    SET.call_once(|| {
        for (k, v) in AWS_ENV {
            std::env::set_var(k, v);
        }
    });
}

/// A command's stderr, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A command's stdout, as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Segment number of a 24-hex segment name (16 MiB segments).
pub fn seg_no(name: &str) -> u64 {
    let log = u64::from_str_radix(&name[8..16], 16).unwrap();
    let seg = u64::from_str_radix(&name[16..24], 16).unwrap();
    log * 256 + seg
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

/// The store at `url` (moto's `endpoint` for S3), as the tests read it behind tidemark's back.
pub fn store_for(url: &str, endpoint: Option<String>) -> std::sync::Arc<dyn ::tidemark::store::ObjectStore> {
    let opts =
        ::tidemark::store::StoreOptions { region: Some("us-east-1".into()), endpoint, multipart_threshold: None };
    tokio::runtime::Runtime::new().unwrap().block_on(::tidemark::store::open(url, &opts)).unwrap()
}
