//! The CLI on bad inputs: every failure says what went wrong, exits as DESIGN.md says,
//! and changes nothing it should not.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::harness::{self, fake_segment, stderr, Tidemark};

struct Setup {
    tm: Tidemark,
    repo: tempfile::TempDir,
    wal: tempfile::TempDir,
}

fn setup(cluster: &str) -> Setup {
    let repo = tempfile::tempdir().unwrap();
    let wal = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(wal.path().join("pg_wal/archive_status")).unwrap();
    let tm = Tidemark::new(cluster, &Tidemark::fs_url(repo.path()), None, wal.path());
    Setup { tm, repo, wal }
}

impl Setup {
    /// The configured data directory's pg_wal: the only place files are archived from.
    fn pg_wal(&self) -> PathBuf {
        self.wal.path().join("pg_wal")
    }
    fn seg(&self, name: &str, sysid: u64, seed: u8) -> PathBuf {
        let p = self.pg_wal().join(name);
        std::fs::write(&p, fake_segment(sysid, seed)).unwrap();
        p
    }
    fn run(&self, args: &[&str]) -> Output {
        self.tm.cmd(args).env("TIDEMARK_LOG", "info").output().unwrap()
    }
    fn object(&self, cluster: &str, name: &str) -> PathBuf {
        self.repo.path().join(format!("clusters/{cluster}/wal/00000001/{name}"))
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

/// `cmd` run under the loose umask of a hand-run command.
fn loose_umask(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: umask is async-signal-safe and touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        })
    }
}

const S1: &str = "000000010000000000000001";
const S2: &str = "000000010000000000000002";

#[test]
fn push_is_idempotent_and_refuses_different_bytes() {
    let s = setup("c1");
    let p = s.seg(S1, 7, 0);
    let o = s.run(&["wal-push", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("Stored"), "{}", stderr(&o));
    // The fs store's objects are 0600 and the directories it made 0700.
    assert_eq!(mode(&s.object("c1", S1)), 0o600);
    for dir in ["clusters", "clusters/c1", "clusters/c1/wal", "clusters/c1/wal/00000001", "clusters/c1/wal-index"] {
        assert_eq!(mode(&s.repo.path().join(dir)), 0o700, "{dir}");
    }
    let stored = std::fs::read(s.object("c1", S1)).unwrap();
    let index = s.repo.path().join(format!("clusters/c1/wal-index/00000001/{S1}"));
    let summary = std::fs::read(&index).unwrap();
    let o = s.run(&["wal-push", p.to_str().unwrap()]);
    assert!(o.status.success() && stderr(&o).contains("AlreadyArchived"), "{}", stderr(&o));

    let original = harness::sha256_file(&p);
    std::fs::write(&p, fake_segment(7, 9)).unwrap();
    let changed = harness::sha256_file(&p);
    let o = s.run(&["wal-push", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains(&original) && e.contains(&changed), "error must name both digests: {e}");
    assert_eq!(std::fs::read(s.object("c1", S1)).unwrap(), stored, "archive was modified");
    // Sealing draws a fresh salt, so a rewritten summary would differ byte for byte.
    assert_eq!(std::fs::read(&index).unwrap(), summary, "the segment's commit-time summary was replaced");
}

#[test]
fn another_database_under_the_same_handle_is_refused() {
    let s = setup("c2");
    let o = s.run(&["wal-push", s.seg(S1, 1111, 0).to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.run(&["wal-push", s.seg(S2, 2222, 0).to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("1111") && stderr(&o).contains("2222"), "{}", stderr(&o));
    assert!(!s.object("c2", S2).exists());
}

#[test]
fn fetch_of_missing_segment_exits_1_and_writes_nothing() {
    let s = setup("c3");
    let dest = s.wal.path().join("RECOVERYXLOG");
    let o = s.run(&["wal-fetch", S1, dest.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("not in the archive"));
    assert!(!dest.exists());
    // An unreachable store is not "no more WAL": recovery must stop, not end early.
    let o =
        s.tm.cmd(&["wal-fetch", S1, dest.to_str().unwrap()])
            .env("TIDEMARK_REPOSITORY_URL", "s3://nowhere/p")
            .env("TIDEMARK_REPOSITORY_ENDPOINT", format!("http://127.0.0.1:{}", harness::free_port()))
            .output()
            .unwrap();
    assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));
    assert!(stderr(&o).contains("recovery stops here"), "{}", stderr(&o));
    assert!(!dest.exists());
}

fn no_files_but(dir: &Path, allowed: &[&str]) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        assert!(allowed.contains(&n.as_str()), "unexpected file {n} in {}", dir.display());
    }
}

#[test]
fn corrupt_tampered_or_misplaced_objects_never_reach_dest() {
    let s = setup("c4");
    let p = s.seg(S1, 7, 0);
    assert!(s.run(&["wal-push", p.to_str().unwrap()]).status.success());
    let obj = s.object("c4", S1);
    let good = std::fs::read(&obj).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("RECOVERYXLOG");
    let fetch = |needle: &str| {
        let o = s.run(&["wal-fetch", S1, dest.to_str().unwrap()]);
        // Damage must abort recovery (> 125), never read as "no more WAL" (1).
        assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(needle) && e.contains(S1), "expected '{needle}' naming the object: {e}");
        assert!(!dest.exists());
        no_files_but(out.path(), &[]);
    };

    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x10;
    std::fs::write(&obj, &bad).unwrap();
    fetch("failed authentication");

    std::fs::write(&obj, &good[..good.len() - 5]).unwrap();
    fetch("chunk");

    std::fs::write(&obj, b"plain text").unwrap();
    fetch("not a tidemark sealed object");

    // A valid object moved under another segment's name.
    std::fs::remove_file(&obj).unwrap();
    let other = s.object("c4", S2);
    std::fs::write(&other, &good).unwrap();
    let o = s.run(&["wal-fetch", S2, dest.to_str().unwrap()]);
    assert!(stderr(&o).contains("different name"), "{}", stderr(&o));
    assert!(!dest.exists());

    // The right object with the wrong keyring.
    std::fs::write(&obj, &good).unwrap();
    let o = s.run(&["wal-fetch", S1, dest.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(harness::sha256_file(&dest), harness::sha256_file(&p));
    std::fs::remove_file(&dest).unwrap();
    let other_ring = out.path().join("other-keyring");
    assert!(s.run(&["keygen", "--out", other_ring.to_str().unwrap()]).status.success());
    // Its own spool: read-ahead started by the calls above may have spooled S1 already
    // (verified with the right keyring), and a spooled segment is served without the keyring.
    let o =
        s.tm.cmd(&["wal-fetch", S1, dest.to_str().unwrap()])
            .env("TIDEMARK_ENCRYPTION_KEYRING", &other_ring)
            .env("TIDEMARK_FETCH_SPOOL_DIR", out.path().join("spool-other"))
            .output()
            .unwrap();
    assert_eq!(o.status.code(), Some(126));
    assert!(stderr(&o).contains("not in the keyring"), "{}", stderr(&o));
    assert!(!dest.exists());
}

/// Pushes `path` through the daemon's socket the way the front end does, returning the answer.
fn push_via_socket(socket: &Path, path: &Path) -> serde_json::Value {
    use std::io::{BufRead, Write};
    let mut c = std::os::unix::net::UnixStream::connect(socket).unwrap();
    writeln!(c, "{}", serde_json::json!({"op": "push", "path": path.display().to_string()})).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(c).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn only_wal_from_pg_wal_is_archived_by_the_cli_and_the_socket() {
    let mut s = setup("c9");
    let archive = s.repo.path().join("clusters/c9/wal");
    // A junk history file, a history whose parent timeline has no history, a symlink to the
    // keyring under a history name, a segment outside pg_wal, a directory, a .backup file
    // that is not one.
    std::fs::write(s.pg_wal().join("00000002.history"), b"this is not a timeline history\n").unwrap();
    std::fs::write(s.pg_wal().join("00000004.history"), b"1\t0/3000000\tx\n3\t0/5000000\tx\n").unwrap();
    std::os::unix::fs::symlink(&s.tm.keyring, s.pg_wal().join("00000003.history")).unwrap();
    let outside = s.wal.path().join(S2);
    std::fs::write(&outside, fake_segment(7, 3)).unwrap();
    std::fs::create_dir(s.pg_wal().join("000000010000000000000005")).unwrap();
    std::fs::write(s.pg_wal().join("000000010000000000000001.00000028.backup"), b"hello").unwrap();
    let escape = s.pg_wal().join("..").join(S2);
    let cases: Vec<(PathBuf, &str)> = vec![
        (s.pg_wal().join("00000002.history"), "not a timeline history file"),
        (s.pg_wal().join("00000004.history"), "parent timeline 3 has no history file"),
        (s.pg_wal().join("00000003.history"), "symbolic link"),
        (outside.clone(), "is not in"),
        (escape.clone(), "is not in"),
        (s.pg_wal().join("000000010000000000000005"), "not a regular file"),
        (s.pg_wal().join("000000010000000000000001.00000028.backup"), "not a backup history file"),
    ];
    for (p, needle) in &cases {
        let o = s.run(&["wal-push", p.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{}: {}", p.display(), stderr(&o));
        assert!(stderr(&o).contains(needle), "{}: expected '{needle}': {}", p.display(), stderr(&o));
    }
    // The same through the daemon's socket, which a member of its group can reach.
    harness::chown_postgres(s.wal.path());
    s.tm.start_daemon();
    for (p, needle) in &cases {
        let a = push_via_socket(&s.tm.socket, p);
        let msg = a["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{}: expected an error with '{needle}': {a}", p.display());
    }
    let etc = push_via_socket(&s.tm.socket, Path::new("/etc/passwd"));
    assert!(etc["message"].as_str().unwrap_or_default().contains("is not in"), "{etc}");
    s.tm.stop_daemon();
    // Nothing reached the archive; a real history file whose parent is timeline 1 does.
    let stored: Vec<_> = walkdir(&archive);
    assert!(stored.is_empty(), "archived: {stored:?}");
    std::fs::write(s.pg_wal().join("00000002.history"), b"1\t0/3000158\tno recovery target specified\n").unwrap();
    let o = s.run(&["wal-push", s.pg_wal().join("00000002.history").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A relative path resolves against the current directory, as PostgreSQL runs it.
    let p = s.seg(S1, 7, 0);
    let o = s.tm.cmd(&["wal-push", "pg_wal/000000010000000000000001"]).current_dir(s.wal.path()).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(s.object("c9", S1).is_file() && p.is_file());
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn keyring_must_be_private() {
    let s = setup("c5");
    let p = s.seg(S1, 7, 0);
    assert_eq!(std::fs::metadata(&s.tm.keyring).unwrap().permissions().mode() & 0o777, 0o600);
    std::fs::set_permissions(&s.tm.keyring, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = s.run(&["wal-push", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&format!("chmod 600 {}", s.tm.keyring.display())), "{}", stderr(&o));
    assert!(!s.object("c5", S1).exists());
}

#[test]
fn front_end_hands_other_commands_to_the_agent_beside_it() {
    // --version, --help and usage errors are the agent's, through the front end.
    let o = harness::run_cmd(harness::bin(), &["--version"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.starts_with("tidemark "), "{out}{}", stderr(&o));
    let o = harness::run_cmd(harness::bin(), &["wal-push"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("<PATH>"), "clap's usage message expected: {}", stderr(&o));
    // Without the agent beside it the front end says what is missing and exits 126 (which
    // also aborts recovery rather than ending it), whatever it is called, and never execs
    // itself.
    let d = tempfile::tempdir().unwrap();
    for name in ["tidemark", "renamed", "tidemark-agent"] {
        let lone = d.path().join(name);
        std::fs::copy(harness::bin(), &lone).unwrap();
        let o = harness::run_cmd(&lone, &["status"]);
        assert_eq!(o.status.code(), Some(126), "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains("tidemark-agent must be installed beside tidemark"), "{name}: {}", stderr(&o));
        std::fs::remove_file(&lone).unwrap();
    }
}

#[test]
fn config_errors_exit_2_and_name_the_field() {
    let s = setup("c6");
    let bad = s.wal.path().join("bad.toml");
    std::fs::write(&bad, "[archive]\nwrokers = 4\n").unwrap();
    let o = harness::run_cmd(harness::bin(), &["--config", bad.to_str().unwrap(), "wal-push", "x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("wrokers"), "{}", stderr(&o));
    std::fs::write(&bad, "[archive]\nworkers = 0\n").unwrap();
    let o = harness::run_cmd(harness::bin(), &["--config", bad.to_str().unwrap(), "wal-push", "x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("archive.workers"), "{}", stderr(&o));
    let o = harness::run_cmd(harness::bin(), &["--config", "/nonexistent.toml", "wal-push", "x"]);
    assert_eq!(o.status.code(), Some(2));
    let o = harness::run_cmd(harness::bin(), &["no-such-command"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn serial_fetches_hit_the_read_ahead_spool() {
    let s = setup("c7");
    let names: Vec<String> = (1..=6).map(|i| format!("0000000100000000000000{i:02X}")).collect();
    for (i, n) in names.iter().enumerate() {
        let p = s.seg(n, 7, i as u8);
        assert!(s.run(&["wal-push", p.to_str().unwrap()]).status.success());
    }
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("RECOVERYXLOG");
    let o = loose_umask(&mut s.tm.cmd(&["wal-fetch", &names[0], dest.to_str().unwrap()]))
        .env("TIDEMARK_LOG", "info")
        .output()
        .unwrap();
    assert!(o.status.success() && stderr(&o).contains("Fetched"), "{}", stderr(&o));
    // prefetch = 4 in the test config: the next four arrive in the spool.
    let spool = s.tm.dir.path().join("spool/c7");
    harness::wait_for("read-ahead to spool 4 segments", Duration::from_secs(60), || {
        names[1..5].iter().all(|n| spool.join(n).is_file())
    });
    // Plaintext WAL: private whatever the umask of the command that made the spool, and,
    // though this wal-fetch (and the read-ahead it started) ran as root, the database user's.
    use std::os::unix::fs::MetadataExt;
    let (uid, _) = harness::postgres_ids();
    assert_eq!(mode(&spool), 0o700);
    assert_eq!(std::fs::metadata(&spool).unwrap().uid(), uid);
    for e in std::fs::read_dir(&spool).unwrap().flatten() {
        assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
        assert_eq!(e.metadata().unwrap().uid(), uid, "{} is root's", e.path().display());
    }
    for (i, n) in names.iter().enumerate().skip(1) {
        if i == 5 {
            // Not in the first window: read-ahead follows recovery's requests and adds it.
            harness::wait_for("read-ahead to follow to the 6th segment", Duration::from_secs(60), || {
                spool.join(n).is_file()
            });
        }
        let o = s.run(&["wal-fetch", n, dest.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(harness::sha256_file(&dest), harness::sha256_file(&s.pg_wal().join(n)), "{n}");
        assert!(stderr(&o).contains("FromSpool"), "{n}: {}", stderr(&o));
    }
    let o = s.run(&["wal-fetch", "000000010000000000000007", dest.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}

#[test]
fn logs_never_contain_key_material_or_credentials() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = harness::Moto::start();
    rt.block_on(moto.create_bucket("secrets"));
    let wal = tempfile::tempdir().unwrap();
    let tm = Tidemark::new("c8", "s3://secrets/p", Some(&moto.endpoint()), wal.path());
    let ring = std::fs::read_to_string(&tm.keyring).unwrap();
    let key_hex: Vec<String> = ring
        .lines()
        .filter_map(|l| l.split_once('=').map(|(_, v)| v.trim().trim_matches('"').to_string()))
        .filter(|v| v.len() == 64)
        .collect();
    assert_eq!(key_hex.len(), 1, "{ring}");
    let secret = "tidemarkSecretAccessKey0123456789";
    // Shaped like a real access key id, so a leak through any path (signer, request dump,
    // credentials Debug) would show.
    let key_id = "AKIATIDEMARKTESTKEY1";
    std::fs::create_dir_all(wal.path().join("pg_wal")).unwrap();
    let p = wal.path().join("pg_wal").join(S1);
    std::fs::write(&p, fake_segment(7, 1)).unwrap();
    let dest = wal.path().join("back");
    let mut logs = String::new();
    for args in [vec!["wal-push", p.to_str().unwrap()], vec!["wal-fetch", S1, dest.to_str().unwrap()], vec!["status"]] {
        let o = tm
            .cmd(&args)
            .env("TIDEMARK_LOG", "trace")
            .env("AWS_ACCESS_KEY_ID", key_id)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .output()
            .unwrap();
        logs.push_str(&stderr(&o));
        logs.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    assert!(dest.is_file(), "fetch failed: {logs}");
    assert!(logs.len() > 1000, "expected trace logs, got: {logs}");
    assert!(!logs.contains(secret), "credentials in logs");
    assert!(!logs.contains(key_id), "access key id in logs");
    assert!(!logs.contains(&key_hex[0]), "key material in logs");
}

#[test]
fn systemd_unit_verifies() {
    let Ok(out) = std::process::Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not installed: unit not verified");
        return;
    };
    assert!(out.status.success());
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/tidemark.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec=") && unit.contains("ProtectSystem=strict"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidemark.service");
    std::fs::write(&path, unit.replace("/usr/bin/tidemark", harness::bin().to_str().unwrap())).unwrap();
    // --man=no: its man: Documentation= pages come with the package, and
    // packaging::installed_units_verify checks the installed unit against them.
    let o = std::process::Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().unwrap();
    assert!(o.status.success() && o.stderr.is_empty(), "{}", stderr(&o));
}

#[test]
fn typos_are_never_ok() {
    let s = setup("c10");
    let p = s.seg(S1, 7, 0);
    assert!(s.run(&["wal-push", p.to_str().unwrap()]).status.success());
    // A misspelt cluster: every read command fails and names the clusters that exist.
    for args in [
        vec!["verify", "--cluster", "c1O"],
        vec!["window", "--cluster", "c1O"],
        vec!["backup", "list", "--cluster", "c1O"],
        vec!["backup", "show", "x", "--cluster", "c1O"],
    ] {
        let o = s.run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("no cluster 'c1O'") && stderr(&o).contains("clusters there: c10"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    // A repository that does not exist, or is empty.
    for url in ["file:///nonexistent/tidemark-repo", &Tidemark::fs_url(tempfile::tempdir().unwrap().path())] {
        let o = s.tm.cmd(&["verify"]).env("TIDEMARK_REPOSITORY_URL", url).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{url}: {}", stderr(&o));
        assert!(stderr(&o).contains("does not exist or holds no cluster"), "{url}: {}", stderr(&o));
    }
    // The right names still work.
    assert!(s.run(&["verify"]).status.success());
    // No --config and nothing at the default path: exit 2 naming the path, not defaults.
    if !Path::new("/etc/tidemark/tidemark.toml").exists() {
        for args in [vec!["verify"], vec!["wal-push", p.to_str().unwrap()]] {
            let o = harness::run_cmd(harness::bin(), &args);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
            assert!(stderr(&o).contains("no config file at /etc/tidemark/tidemark.toml"), "{}", stderr(&o));
        }
    }
}

#[test]
fn output_contract_json_errors_closed_stdout_and_help() {
    let s = setup("c11");
    let p = s.seg(S1, 7, 0);
    assert!(s.run(&["wal-push", p.to_str().unwrap()]).status.success());
    // A failure with --output json is still one JSON document on stdout.
    let o = s.run(&["--output", "json", "verify", "--cluster", "nosuch"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", o.stdout));
    assert!(v["error"].as_str().unwrap().contains("no cluster 'nosuch'") && v["exit_code"] == 1, "{v}");
    let o = s.run(&["--output", "json", "verify"]);
    assert!(o.status.success());
    serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap();
    // A reader that goes away ends the command quietly (no panic, no error).
    let mut c =
        s.tm.cmd(&["verify"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    drop(c.stdout.take());
    let o = c.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    // Help names the command people type.
    let o = harness::run_cmd(harness::bin(), &["backup", "--help"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Usage: tidemark backup") && !out.contains("tidemark-agent"), "{out}");
}

#[test]
fn a_spool_is_served_only_to_the_repository_and_keyring_that_filled_it() {
    let s = setup("c9");
    let names: Vec<String> = (1..=4).map(|i| format!("0000000100000000000000{i:02X}")).collect();
    for (i, n) in names.iter().enumerate() {
        let p = s.seg(n, 7, i as u8);
        assert!(s.run(&["wal-push", p.to_str().unwrap()]).status.success());
    }
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("RECOVERYXLOG");
    let spool = s.tm.dir.path().join("spool/c9");
    let fetch = |n: &str, env: &[(&str, &std::ffi::OsStr)]| {
        let _ = std::fs::remove_file(&dest);
        s.tm.cmd(&["wal-fetch", n, dest.to_str().unwrap()])
            .env("TIDEMARK_LOG", "info")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let o = fetch(&names[0], &[]);
    assert!(o.status.success() && stderr(&o).contains("Fetched"), "{}", stderr(&o));
    harness::wait_for("read-ahead to spool", Duration::from_secs(60), || spool.join(&names[1]).is_file());
    assert_eq!(mode(&spool.join(".owner")), 0o600);

    // Another keyring over the same spool: nothing spooled is handed out, the spool is cleared
    // (read-ahead stopped first), and the agent's own read says why this keyring cannot read.
    let other_ring = out.path().join("other-keyring");
    assert!(s.run(&["keygen", "--out", other_ring.to_str().unwrap()]).status.success());
    let o = fetch(&names[1], &[("TIDEMARK_ENCRYPTION_KEYRING", other_ring.as_os_str())]);
    assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));
    assert!(stderr(&o).contains("not in the keyring"), "{}", stderr(&o));
    assert!(stderr(&o).contains("filled for another repository or keyring"), "{}", stderr(&o));
    assert!(!dest.exists());
    assert!(!spool.join(&names[1]).exists() && !spool.join(&names[2]).exists(), "the spool was not cleared");

    // Back to the right keyring: the spool is claimed back and read from the archive first.
    let o = fetch(&names[1], &[]);
    assert!(o.status.success() && stderr(&o).contains("Fetched"), "{}", stderr(&o));
    assert_eq!(harness::sha256_file(&dest), harness::sha256_file(&s.pg_wal().join(&names[1])));
    harness::wait_for("read-ahead to spool again", Duration::from_secs(60), || spool.join(&names[2]).is_file());
    let o = fetch(&names[2], &[]);
    assert!(o.status.success() && stderr(&o).contains("FromSpool"), "{}", stderr(&o));

    // Another repository (a copy of this one) with the same keyring is another binding too.
    let copy = out.path().join("repo-copy");
    harness::run_ok(std::process::Command::new("cp").arg("-a").arg(s.repo.path()).arg(&copy));
    harness::wait_for("read-ahead to spool the last one", Duration::from_secs(60), || spool.join(&names[3]).is_file());
    let url = Tidemark::fs_url(&copy);
    let o = fetch(&names[3], &[("TIDEMARK_REPOSITORY_URL", std::ffi::OsStr::new(&url))]);
    assert!(o.status.success() && stderr(&o).contains("Fetched"), "{}", stderr(&o));
    assert!(stderr(&o).contains("filled for another repository or keyring"), "{}", stderr(&o));
}

#[test]
fn metrics_off_loopback_need_metrics_public_and_are_logged_at_start() {
    let s = setup("c10");
    std::fs::create_dir_all(s.wal.path().join("pg_wal/archive_status")).unwrap();
    let port = harness::free_port();
    let addr = format!("0.0.0.0:{port}");
    let o = s.tm.cmd(&["daemon"]).env("TIDEMARK_DAEMON_METRICS_LISTEN", &addr).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("daemon.metrics_listen") && stderr(&o).contains("metrics_public = true"),
        "{}",
        stderr(&o)
    );

    let child =
        s.tm.cmd(&["daemon"])
            .env("TIDEMARK_DAEMON_METRICS_LISTEN", &addr)
            .env("TIDEMARK_DAEMON_METRICS_PUBLIC", "true")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    harness::wait_for("metrics to be served", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    harness::run_ok(std::process::Command::new("kill").arg(child.id().to_string()));
    let o = child.wait_with_output().unwrap();
    assert!(stderr(&o).contains("off loopback") && stderr(&o).contains(&addr), "{}", stderr(&o));
}

#[test]
fn keygen_as_root_gives_the_keyring_to_the_database_user() {
    use std::os::unix::fs::MetadataExt;
    let s = setup("c12");
    let d = harness::postgres_dir("ring");
    let ring = d.path().join("keyring");
    let o = s.run(&["keygen", "--out", ring.to_str().unwrap()]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("owned by postgres"), "{}", stderr(&o));
    let (uid, _) = harness::postgres_ids();
    assert_eq!(std::fs::metadata(&ring).unwrap().uid(), uid);
    // A keyring the database user cannot read says whose it is and what to do.
    std::os::unix::fs::chown(&s.tm.keyring, Some(0), Some(0)).unwrap();
    let p = s.seg(S1, 7, 0);
    harness::chown_postgres(s.wal.path());
    let o = s.tm.cmd_as_postgres(&["wal-push", p.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("owned by root") && e.contains("mode 600") && e.contains("chown"), "{e}");
    assert!(!e.contains("create one with"), "the keyring exists: {e}");
}
