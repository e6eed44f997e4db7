//! Oracle test: the WAL reader must agree with PostgreSQL 15's own pg_waldump
//! on real WAL produced by a throwaway cluster running a mixed workload.
//!
//! Needs PostgreSQL 15 binaries (default /usr/lib/postgresql/15/bin, or
//! TEST_PG_BIN); skips with a message only if they are missing. When run
//! as root, the server is run as the `postgres` OS user via runuser.

// When copied into tidemark this becomes `use tidemark::wal::record::{...}`.
use tidemark::wal::record::{
    parse_segment_file_name, summarize_segment, summarize_segment_at, xact_end_from_record, StopReason, WalReader,
    XactEnd, XactKind,
};

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::harness;

const SEG: u64 = 16 << 20;
const PAGE: u64 = 8192;

/// PG15 rmgr names as pg_waldump prints them, indexed by rmid (rmgrlist.h).
const RMGR_NAMES: [&str; 22] = [
    "XLOG",
    "Transaction",
    "Storage",
    "CLOG",
    "Database",
    "Tablespace",
    "MultiXact",
    "RelMap",
    "Standby",
    "Heap2",
    "Heap",
    "Btree",
    "Hash",
    "Gin",
    "Gist",
    "Sequence",
    "SPGist",
    "BRIN",
    "CommitTs",
    "ReplicationOrigin",
    "Generic",
    "LogicalMessage",
];

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn run_ok(mut cmd: Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout_of(&out),
        stderr_of(&out)
    );
    out
}

/// A throwaway PostgreSQL 15 cluster; dropping it stops the server and removes its files.
struct Pg {
    root: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    port: u16,
    bin: PathBuf,
    as_postgres_user: bool,
    running: bool,
}

impl Pg {
    fn new(bin: PathBuf) -> Pg {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let root = std::env::temp_dir().join(format!("tidemark-waldump-{}-{nanos}", std::process::id()));
        let mut id = Command::new("id");
        id.arg("-u");
        let as_postgres_user = stdout_of(&run_ok(id, "id -u")).trim() == "0";
        // The guard exists before the directory does, so every later failure
        // (including in this function) removes it again.
        let pg = Pg {
            data: root.join("data"),
            sock: root.join("sock"),
            port: 50_000 + (std::process::id() % 10_000) as u16,
            root,
            bin,
            as_postgres_user,
            running: false,
        };
        fs::create_dir_all(&pg.sock).expect("create temp dir");
        if as_postgres_user {
            // PostgreSQL refuses to run as root: hand the directory to `postgres`.
            let ids = |flag: &str| -> u32 {
                let mut c = Command::new("id");
                c.args([flag, "postgres"]);
                let out = run_ok(c, "id postgres (a `postgres` OS user is required when running as root)");
                stdout_of(&out).trim().parse().expect("numeric id")
            };
            let (u, g) = (ids("-u"), ids("-g"));
            for p in [&pg.root, &pg.sock] {
                std::os::unix::fs::chown(p, Some(u), Some(g)).expect("chown temp dir");
            }
        }
        pg
    }

    /// Command for server-side programs, which must not run as root.
    fn server_cmd(&self, prog: &str) -> Command {
        let path = self.bin.join(prog);
        let mut c = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        self.env(&mut c);
        c
    }

    /// Command for client programs (psql, pgbench, pg_waldump).
    fn client_cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(self.bin.join(prog));
        self.env(&mut c);
        c
    }

    fn env(&self, c: &mut Command) {
        c.env("PGHOST", &self.sock)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGDATABASE", "postgres")
            .env("PGTZ", "UTC")
            .env("TZ", "UTC")
            .env("LC_ALL", "C")
            .current_dir(&self.root);
    }

    fn init_and_start(&mut self) {
        let mut c = self.server_cmd("initdb");
        c.arg("-D").arg(&self.data).args(["-A", "trust", "-U", "postgres", "--no-sync", "--no-locale", "-E", "UTF8"]);
        run_ok(c, "initdb");
        let conf = format!(
            "\n# tidemark waldump oracle test\n\
             listen_addresses = ''\n\
             port = {}\n\
             unix_socket_directories = '{}'\n\
             wal_level = replica\n\
             max_prepared_transactions = 10\n\
             autovacuum = off\n\
             fsync = off\n\
             full_page_writes = on\n\
             checkpoint_timeout = '1h'\n\
             max_wal_size = '4GB'\n\
             wal_keep_size = '4GB'\n\
             timezone = 'UTC'\n",
            self.port,
            self.sock.display()
        );
        fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .expect("append postgresql.conf");
        let mut c = self.server_cmd("pg_ctl");
        c.arg("-D").arg(&self.data).arg("-l").arg(self.root.join("server.log")).args(["-w", "start"]);
        self.running = true; // set first: a half-started server must be stopped too
        run_ok(c, "pg_ctl start");
    }

    fn stop(&mut self, mode: &str) -> bool {
        let mut c = self.server_cmd("pg_ctl");
        c.arg("-D").arg(&self.data).args(["-m", mode, "-w", "stop"]);
        let ok = c.output().map(|o| o.status.success()).unwrap_or(false);
        if ok {
            self.running = false;
        }
        ok
    }

    fn psql(&self, sql: &str) -> String {
        let mut c = self.client_cmd("psql");
        c.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn psql");
        child.stdin.take().expect("psql stdin").write_all(sql.as_bytes()).expect("write sql");
        let out = child.wait_with_output().expect("psql output");
        assert!(out.status.success(), "psql failed:\n{sql}\nstderr:\n{}", stderr_of(&out));
        stdout_of(&out)
    }

    fn pgbench(&self, args: &[&str]) {
        let mut c = self.client_cmd("pgbench");
        c.args(args);
        run_ok(c, "pgbench");
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if self.running && !self.stop("fast") {
            self.stop("immediate");
        }
        if let Err(e) = fs::remove_dir_all(&self.root) {
            eprintln!("could not remove {}: {e}", self.root.display());
        }
    }
}

/// One record line of pg_waldump output.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DumpRec {
    rmgr: String,
    tot_len: u32,
    xid: u32,
    lsn: u64,
    desc: String,
}

fn parse_lsn(s: &str) -> u64 {
    let (hi, lo) = s.trim().split_once('/').expect("LSN has a slash");
    (u64::from_str_radix(hi, 16).expect("LSN hi") << 32) | u64::from_str_radix(lo, 16).expect("LSN lo")
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line.find(key).unwrap_or_else(|| panic!("no {key:?} in {line}")) + key.len();
    let rest = &line[start..];
    rest[..rest.find(',').unwrap_or(rest.len())].trim()
}

fn parse_dump(stdout: &str) -> Vec<DumpRec> {
    stdout
        .lines()
        .filter(|l| l.starts_with("rmgr: "))
        .map(|l| {
            let rmgr = l["rmgr: ".len()..].split_whitespace().next().expect("rmgr name").to_string();
            let lens = field(l, "len (rec/tot):");
            let tot_len = lens.split_once('/').expect("rec/tot").1.trim().parse().expect("tot len");
            let xid = field(l, "tx:").parse().expect("tx");
            let lsn = parse_lsn(field(l, "lsn:"));
            let desc = l.split_once(", desc: ").map(|(_, d)| d.to_string()).unwrap_or_default();
            DumpRec { rmgr, tot_len, xid, lsn, desc }
        })
        .collect()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parse pg_waldump's `2026-11-26 05:12:33.123456 UTC` into a PostgreSQL timestamp.
fn parse_pg_time(s: &str) -> i64 {
    let num = |r: std::ops::Range<usize>| -> i64 { s[r].parse().unwrap_or_else(|_| panic!("bad time {s:?}")) };
    assert_eq!(&s[26..30], " UTC", "timestamp not in UTC: {s:?}");
    let days = days_from_civil(num(0..4), num(5..7), num(8..10));
    let secs = days * 86_400 + num(11..13) * 3600 + num(14..16) * 60 + num(17..19);
    (secs - 946_684_800) * 1_000_000 + num(20..26)
}

/// The transaction end pg_waldump describes, if the record is one.
fn dump_xact(r: &DumpRec) -> Option<XactEnd> {
    if r.rmgr != "Transaction" {
        return None;
    }
    let (kind, rest) = r.desc.split_once(' ')?;
    let kind = match kind {
        "COMMIT" => XactKind::Commit,
        "ABORT" => XactKind::Abort,
        "COMMIT_PREPARED" => XactKind::CommitPrepared,
        "ABORT_PREPARED" => XactKind::AbortPrepared,
        _ => return None,
    };
    // Prepared variants print the prepared transaction's xid first: "728: ".
    let (xid, ts) = match rest.split_once(": ") {
        Some((x, t)) if x.bytes().all(|b| b.is_ascii_digit()) => (x.parse().expect("2PC xid"), t),
        _ => (r.xid, rest),
    };
    Some(XactEnd { lsn: r.lsn, xid, kind, time_us: parse_pg_time(ts), crc_verified: true })
}

/// Run pg_waldump; returns its records and raw output.
///
/// pg_waldump stops with an error at the end of WAL or of the files given;
/// those messages are expected, anything else is not.
fn waldump(pg: &Pg, wal_dir: &Path, args: &[&str]) -> (Vec<DumpRec>, String) {
    let mut c = pg.client_cmd("pg_waldump");
    c.arg("-p").arg(wal_dir).args(args);
    let out = c.output().expect("run pg_waldump");
    let err = stderr_of(&out);
    let expected_stop =
        ["invalid record length", "could not find a valid record", "invalid magic number 0000", "unexpected pageaddr"];
    assert!(
        out.status.success() || expected_stop.iter().any(|m| err.contains(m)),
        "pg_waldump {args:?} failed unexpectedly: {err}"
    );
    let stdout = stdout_of(&out);
    (parse_dump(&stdout), stdout)
}

fn workload(pg: &Pg) {
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    pg.pgbench(&["-n", "-c", "2", "-j", "1", "-t", "300"]);

    let mut sql = String::from(
        "CREATE TABLE big(id int, payload text);\n\
         ALTER TABLE big ALTER payload SET STORAGE EXTERNAL;\n\
         SELECT pg_switch_wal();\n",
    );
    for i in 0..20 {
        sql += &format!("BEGIN; INSERT INTO big VALUES ({i}, 'rolled back'); ROLLBACK;\n");
    }
    sql += "BEGIN; INSERT INTO big VALUES (-1, 'kept'); SAVEPOINT s; INSERT INTO big VALUES (-2, 'sub'); \
            ROLLBACK TO s; COMMIT;\n\
            BEGIN; INSERT INTO big VALUES (0, 'two-phase'); PREPARE TRANSACTION 'p1'; COMMIT PREPARED 'p1';\n\
            BEGIN; CREATE TABLE t2pc(a int); PREPARE TRANSACTION 'p2'; ROLLBACK PREPARED 'p2';\n\
            CREATE TABLE t2pc_drop(a int);\n\
            BEGIN; DROP TABLE t2pc_drop; PREPARE TRANSACTION 'p3'; COMMIT PREPARED 'p3';\n\
            SELECT pg_switch_wal();\n\
            -- ~29 MB of uncompressed TOAST in one transaction: records cross pages and segments.\n\
            BEGIN;\n\
            INSERT INTO big SELECT g, (SELECT string_agg(md5(g::text || '-' || i::text), '') \
              FROM generate_series(1, 600) i) FROM generate_series(1, 1500) g;\n\
            COMMIT;\n\
            CHECKPOINT;\n\
            UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 50 = 0;\n\
            -- One 40 MB record: longer than two segments, so it covers one entirely.\n\
            SELECT pg_logical_emit_message(false, 'big', repeat('m', 40000000)) IS NOT NULL;\n\
            ALTER SYSTEM SET wal_compression = 'pglz';\n\
            SELECT pg_reload_conf();\n\
            SELECT pg_sleep(0.5);\n\
            CHECKPOINT;\n\
            UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 40 = 0;\n\
            ALTER SYSTEM RESET wal_compression;\n\
            SELECT pg_reload_conf();\n";
    pg.psql(&sql);

    // Commits whose record straddles a segment end with xact_time still in
    // the first segment: after a switch, pad with one logical message sized
    // so the next record (the DDL's commit) starts 48 bytes before the end.
    for k in 0..2 {
        pg.psql(&format!(
            "SELECT pg_switch_wal();\n\
             DO $$\n\
             DECLARE\n\
               seg CONSTANT numeric := {SEG};\n\
               blk CONSTANT numeric := {PAGE};\n\
               off numeric; pg numeric; ub numeric; total numeric; n numeric;\n\
             BEGIN\n\
               CREATE TABLE straddle_{k} (a int, b text, c text, d text, e text);\n\
               off := pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0') % seg;\n\
               pg := floor(off / blk);\n\
               IF off % blk = 0 THEN off := off + CASE WHEN pg = 0 THEN 40 ELSE 24 END; END IF;\n\
               ub := off - 40 - 24 * pg;                 -- usable bytes before the insert point\n\
               total := seg - 40 - 24 * (seg / blk - 1); -- usable bytes in a segment\n\
               n := total - 48 - ub - 55;                -- message record = 24 + 5 + 24 + 2 + n\n\
               PERFORM pg_logical_emit_message(false, 'p', repeat('x', n::int));\n\
             END $$;\n"
        ));
    }

    pg.psql("SELECT pg_switch_wal();");
    pg.pgbench(&["-n", "-c", "1", "-t", "50"]);
}

#[test]
fn reader_matches_pg_waldump() {
    let bin = harness::pg_bin();
    let needed = ["initdb", "pg_ctl", "postgres", "psql", "pgbench", "pg_waldump"];
    if let Some(missing) = needed.iter().find(|p| !bin.join(p).exists()) {
        eprintln!(
            "SKIPPED reader_matches_pg_waldump: PostgreSQL 15 binary {missing} not found in {} (set TEST_PG_BIN)",
            bin.display()
        );
        return;
    }

    let mut pg = Pg::new(bin);
    pg.init_and_start();
    workload(&pg);
    // A clean stop writes the shutdown checkpoint and leaves the files still.
    assert!(pg.stop("fast"), "pg_ctl stop failed");

    let wal_dir = pg.data.join("pg_wal");
    let mut names: Vec<String> = fs::read_dir(&wal_dir)
        .expect("read pg_wal")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| parse_segment_file_name(n, SEG).is_some())
        .collect();
    names.sort();
    assert!(names.len() >= 8, "workload made too few segments: {names:?}");

    // --- Per segment: summarize_segment vs pg_waldump on that file alone. ---
    let mut unverified: Vec<XactEnd> = Vec::new();
    let (mut total_records, mut total_xacts, mut kinds_seen) = (0usize, 0usize, Vec::new());
    let mut last_with_wal = None;
    for name in &names {
        let bytes = fs::read(wal_dir.join(name)).expect("read segment");
        let s = summarize_segment(&bytes, SEG).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (_, start) = parse_segment_file_name(name, SEG).expect("segment name");
        let s_at = summarize_segment_at(&bytes, SEG, start).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((s.records, &s.xact_ends), (s_at.records, &s_at.xact_ends), "{name}");
        if !matches!(s.stop, StopReason::ZeroPage { page_lsn: None }) {
            assert_eq!(s.segment_start_lsn, Some(start), "{name}");
            last_with_wal = Some(name.clone());
        }

        let (dump, _) = waldump(&pg, &wal_dir, &[name]);
        assert_eq!(s.records, dump.len(), "{name}: record count vs pg_waldump");
        let dump_xacts: Vec<XactEnd> =
            waldump(&pg, &wal_dir, &["--rmgr=Transaction", name]).0.iter().filter_map(dump_xact).collect();
        let (verified, partial): (Vec<XactEnd>, Vec<XactEnd>) = s.xact_ends.iter().partition(|e| e.crc_verified);
        assert_eq!(verified, dump_xacts, "{name}: transaction ends vs pg_waldump");
        assert!(partial.len() <= 1, "{name}: at most the last record can be cut off");
        if let Some(p) = partial.first() {
            assert_eq!(s.incomplete.map(|i| i.lsn), Some(p.lsn), "{name}");
        }
        let commits = s.xact_ends.iter().filter(|e| e.kind.is_commit()).map(|e| e.time_us);
        assert_eq!(s.first_commit_us, commits.clone().min(), "{name}");
        assert_eq!(s.last_commit_us, commits.max(), "{name}");

        eprintln!(
            "{name}: {} records, {} xact ends ({} unverified), stop {:?}",
            s.records,
            s.xact_ends.len(),
            partial.len(),
            s.stop
        );
        total_records += s.records;
        total_xacts += verified.len();
        kinds_seen.extend(verified.iter().map(|e| e.kind));
        unverified.extend(partial);
    }
    kinds_seen.sort();
    kinds_seen.dedup();
    assert_eq!(
        kinds_seen,
        vec![XactKind::Commit, XactKind::Abort, XactKind::CommitPrepared, XactKind::AbortPrepared],
        "workload must produce every kind of transaction end"
    );
    assert!(!unverified.is_empty(), "the straddling DDL commits were not found cut off at a segment end");

    // --- Whole range: WalReader fed consecutive segments vs pg_waldump over the range. ---
    let last = last_with_wal.expect("some segment holds WAL");
    let mut reader = WalReader::new(SEG).expect("reader");
    let mut recs: Vec<(u64, u64, u32, u8, u32)> = Vec::new();
    let mut xacts: Vec<XactEnd> = Vec::new();
    let mut xact_err = None;
    for name in names.iter().take_while(|n| **n <= last) {
        let bytes = fs::read(wal_dir.join(name)).expect("read segment");
        reader
            .feed_segment(&bytes, |r| {
                recs.push((r.lsn, r.end_lsn, r.xl_tot_len, r.xl_rmid, r.xl_xid));
                match xact_end_from_record(r) {
                    Ok(Some(x)) => xacts.push(x),
                    Ok(None) => {}
                    Err(e) => xact_err = Some(e),
                }
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert_eq!(xact_err, None);
    assert!(reader.end_of_wal().is_some(), "the last segment should end the WAL");

    // -b prints block details (incl. the image compression method) on extra lines.
    let (range, range_text) = waldump(&pg, &wal_dir, &["-b", names[0].as_str(), last.as_str()]);
    assert_eq!(recs.len(), range.len(), "record count over the whole range");
    for (mine, theirs) in recs.iter().zip(&range) {
        let (lsn, _, tot_len, rmid, xid) = *mine;
        let name = RMGR_NAMES.get(rmid as usize).copied().unwrap_or("custom");
        assert_eq!(
            (lsn, tot_len, name, xid),
            (theirs.lsn, theirs.tot_len, theirs.rmgr.as_str(), theirs.xid),
            "record mismatch near {theirs:?}"
        );
    }
    let range_xacts: Vec<XactEnd> = range.iter().filter_map(dump_xact).collect();
    assert_eq!(xacts, range_xacts, "transaction ends over the whole range");
    // Every cut-off commit seen per segment is a real, identical record in the range.
    for u in &unverified {
        let full = range_xacts
            .iter()
            .find(|x| x.lsn == u.lsn)
            .unwrap_or_else(|| panic!("unverified xact end {u:?} not in pg_waldump"));
        assert_eq!(XactEnd { crc_verified: true, ..*u }, *full);
    }

    let crossing = recs.iter().filter(|r| r.0 / SEG != (r.1 - 1) / SEG).count();
    let spanning = recs.iter().filter(|r| (r.1 - 1) / SEG - r.0 / SEG >= 2).count();
    let split_headers = recs.iter().filter(|r| r.0 % PAGE > PAGE - 24).count();
    let compressed_fpis = range_text.matches("method: pglz").count();
    eprintln!(
        "compared {} segments, {total_records} records and {total_xacts} xact ends per segment; \
         {} records over the range ({crossing} cross a segment boundary, {spanning} span a whole segment, \
         {split_headers} have a page-split header, {compressed_fpis} carry pglz images); \
         {} cut-off commits checked",
        names.len(),
        recs.len(),
        unverified.len()
    );
    assert!(crossing >= 3, "expected records crossing segment boundaries");
    assert!(spanning >= 1, "expected a record spanning a whole segment");
    assert!(split_headers >= 1, "expected a record header split across pages");
    assert!(compressed_fpis >= 1, "expected pglz-compressed full-page images");
}
