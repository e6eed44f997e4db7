//! The whole point-in-time flow once on every PostgreSQL major a host runs, 13 to 18, with
//! real servers of that major (tests/run.sh installs 13, 14, 16, 17 and 18 under
//! target/pg/; 15 is Debian's) and 1 MiB WAL segments: rows committed at t1 < t2 < t3 after
//! a backup, a restore to t2 with exactly t2's rows, --latest with all of them, the window,
//! the promoted copy (timeline 2) archiving under its own handle and refused under the
//! source's. Oracles nobody here wrote: the server's own commit timestamps
//! (`track_commit_timestamp`, `pg_xact_commit_timestamp`) against every commit the index
//! counts, and the restored server's "recovery stopping before commit of transaction X,
//! time T".

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tidemark::catalog::wal_index;
use tidemark::wal::name::Segment;
use tidemark::wal::record;

use crate::harness::{self, stderr, stdout, Pg, Restored, Tidemark};

const SEG: u64 = 1 << 20;

const CHECKSUM: &str =
    "select count(*) || ':' || md5(coalesce(string_agg(id::text || ':' || payload, ',' order by id), '')) from t";

fn restore(tm: &Tidemark, pg: &Pg, dir: &Path, target: &[&str]) -> (Output, Restored) {
    harness::restore_started(tm, pg, dir, target)
}

/// PostgreSQL's timestamptz text (`2026-12-01 10:00:00.123456+00`) or RFC 3339, in UTC.
fn parse_time(s: &str) -> DateTime<Utc> {
    let s = s.trim();
    DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .unwrap_or_else(|e| panic!("time {s:?}: {e}"))
        .with_timezone(&Utc)
}

/// The server's commit timestamps of `xids` (unix microseconds), where it recorded one.
fn commit_ts(sql: impl Fn(&str) -> String, xids: &[u32]) -> BTreeMap<u32, i64> {
    if xids.is_empty() {
        return BTreeMap::new();
    }
    let list: Vec<String> = xids.iter().map(u32::to_string).collect();
    let out = sql(&format!(
        "select x::text || ' ' || coalesce(to_char(pg_xact_commit_timestamp(x) at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), '') from unnest('{{{}}}'::xid[]) x",
        list.join(",")
    ));
    out.lines()
        .filter_map(|l| {
            let (x, t) = l.split_once(' ')?;
            (!t.is_empty()).then(|| (x.parse().unwrap(), parse_time(t).timestamp_micros()))
        })
        .collect()
}

/// Inserts ids `lo..lo+100` in one transaction (with `sql`); returns its xid.
fn batch(sql: impl Fn(&str) -> String, lo: u32) -> u32 {
    let out = sql(&format!(
        "with ins as (insert into t select g, md5(g::text) from generate_series({lo}, {}) g returning 1) select (select count(*) from ins) || ' ' || txid_current()",
        lo + 99
    ));
    let (n, xid) = out.split_once(' ').unwrap_or_else(|| panic!("batch output {out:?}"));
    assert_eq!(n, "100");
    xid.parse().unwrap()
}

fn scenario(major: u32) {
    let started = Instant::now();
    let repo_dir = harness::postgres_dir("repo");
    let url = Tidemark::fs_url(repo_dir.path());
    let mut pg = Pg::init_major(major, &["--wal-segsize=1"]);
    let handle = format!("maj{major}");
    let tm = Tidemark::for_pg(&handle, &url, None, &pg);
    pg.archive_to(&tm.config);
    // No background commits between the test's own (autovacuum), every commit timestamped,
    // and two-phase commits allowed.
    // Full-page images compressed (with their hole), so the image flags of the major are read.
    pg.conf("track_commit_timestamp = on\nautovacuum = off\nmax_prepared_transactions = 4\nwal_compression = on");
    pg.start();
    let version: u32 = pg.sql("show server_version_num").parse().unwrap();
    assert_eq!(version / 10000, major, "server {version} is not PostgreSQL {major}");
    pg.sql("create table t(id int primary key, payload text)");
    pg.sql("insert into t select g, md5(g::text) from generate_series(1, 1000) g");
    pg.sql("create table drop_me(i int)");
    pg.pgbench(&["-i", "-q", "-s", "1"]);

    let o = tm.cmd_as_postgres(&["backup", "create", "--wait", "--output", "json"]).output().unwrap();
    assert!(o.status.success(), "PG{major} backup: {}\n{}", stderr(&o), pg.log());
    let b: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(b["state"], "completed", "{b}");
    assert_eq!(b["pg_version"], version, "{b}");
    let stop_time = parse_time(b["stop_time"].as_str().unwrap());
    let start_seg = {
        let lsn: tidemark::wal::name::Lsn = b["start_lsn"].as_str().unwrap().parse().unwrap();
        Segment::containing(1, lsn, SEG).number
    };

    // A two-phase commit that drops a table: its xid lies past the dropped-stats section
    // (15+: 12-byte items, 18: 16-byte ones).
    pg.sql("begin; drop table drop_me; prepare transaction 'p1'");
    let prepared: u32 = pg.sql("select transaction from pg_prepared_xacts where gid = 'p1'").parse().unwrap();
    pg.sql("commit prepared 'p1'");
    // Hundreds of small concurrent commits (their times interleave with LSN order).
    pg.pgbench(&["-n", "-c", "2", "-t", "200"]);

    // t1 < t2 < t3, each after its batch committed.
    let mut marks = Vec::new();
    let mut sums = Vec::new();
    let mut xids = Vec::new();
    for k in 0..3 {
        xids.push(batch(|q| pg.sql(q), 1001 + k * 100));
        sums.push(pg.sql(CHECKSUM));
        marks.push(pg.time_mark());
    }
    pg.switch_wal_archived(Duration::from_secs(120));

    // Oracle 1: every commit the reader finds in each archived segment has the server's own
    // commit timestamp, the test's transactions among them, and the index's first and last
    // commit times of each segment are the server's min and max over its commits.
    let cfg = tidemark::config::Config::load(Some(&tm.config)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let repo = rt.block_on(tidemark::repo::Repository::open(&cfg)).unwrap();
    let mut found: BTreeMap<u32, (i64, u64)> = BTreeMap::new();
    let mut checked = 0;
    let mut prev_last: Option<u64> = None;
    for name in pg.done_segments() {
        let Some((tli, start)) = record::parse_segment_file_name(&name, SEG) else { continue };
        let number = start / SEG;
        if tli != 1 || number < start_seg {
            continue;
        }
        let bytes = std::fs::read(pg.data.join("pg_wal").join(&name)).unwrap();
        let s = record::summarize_segment_at(&bytes, SEG, start).unwrap_or_else(|e| panic!("PG{major} {name}: {e}"));
        let idx = rt
            .block_on(wal_index::load(&repo, Segment { timeline: 1, number }, SEG))
            .unwrap()
            .unwrap_or_else(|| panic!("PG{major}: no index for {name}"));
        assert_eq!(idx.error, None, "PG{major} {name}");
        // Where the segment joins its predecessor, for the chain checks.
        assert!(idx.chain && idx.last_complete_lsn.is_some(), "PG{major} {name}: {idx:?}");
        if let (Some((_, prev)), Some(last)) = (idx.first_record, prev_last) {
            assert_eq!(prev, last, "PG{major} {name}: xl_prev of its first record vs the last record before it");
        }
        prev_last = idx.last_record_lsn;
        let commits: Vec<_> = s.xact_ends.iter().filter(|e| e.kind.is_commit()).collect();
        let times = commit_ts(|q| pg.sql(q), &commits.iter().map(|e| e.xid).collect::<Vec<_>>());
        let mut server = Vec::new();
        for e in commits {
            let ts = *times.get(&e.xid).unwrap_or_else(|| panic!("PG{major}: no commit timestamp for {}", e.xid));
            let ours = record::pg_time_to_unix_us(e.time_us);
            assert_eq!(ours, ts, "PG{major} {name}: commit time of xid {} ({:?})", e.xid, e.kind);
            found.insert(e.xid, (ts, number));
            server.push(ts);
        }
        assert_eq!(
            (idx.first_commit_us, idx.last_commit_us),
            (server.iter().min().copied(), server.iter().max().copied()),
            "PG{major} {name}: index vs the server's commit timestamps"
        );
        checked += server.len();
    }
    for x in xids.iter().chain([&prepared]) {
        assert!(found.contains_key(x), "PG{major}: the index walk did not find the commit of xid {x}: {found:?}");
    }
    let t3_commit = found[&xids[2]].0;
    // verify checks the join at every archived boundary and the backup.
    let o = tm.cmd(&["verify"]).output().unwrap();
    assert!(o.status.success(), "PG{major} verify: {}{}", stdout(&o), stderr(&o));

    // The window: from the backup's stop to the last commit (t3's batch), one timeline.
    let o = tm.cmd(&["window", "--output", "json"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let w: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tls = w["timelines"].as_array().unwrap();
    assert_eq!(tls.len(), 1, "{w}");
    assert_eq!(tls[0]["timeline"], 1, "{w}");
    assert_eq!(parse_time(tls[0]["earliest"].as_str().unwrap()), stop_time, "{w}");
    assert_eq!(parse_time(tls[0]["latest"].as_str().unwrap()).timestamp_micros(), t3_commit, "{w}");
    let o = tm.cmd(&["window"]).output().unwrap();
    assert!(stdout(&o).contains("restorable by time from"), "{}", stdout(&o));

    // Restore to t2: exactly t2's rows; the server stopped before t3's commit, at its time.
    let scratch = harness::postgres_dir("restore");
    let at_t2 = scratch.path().join("t2");
    let (o, r) = restore(&tm, &pg, &at_t2, &["--target-time", &marks[1]]);
    let log = std::fs::read_to_string(at_t2.join("tidemark-restore.log")).unwrap_or_default();
    assert!(o.status.success(), "PG{major} restore t2: {}\n{log}", stderr(&o));
    assert!(stdout(&o).contains("promoted on timeline 2"), "{}", stdout(&o));
    assert_eq!(r.sql(CHECKSUM), sums[1], "PG{major}");
    assert_eq!(r.sql("select count(*) from t"), "1200");
    let line =
        log.lines().find(|l| l.contains("recovery stopping before commit of transaction")).unwrap_or_else(|| {
            panic!("PG{major}: no recovery stopping line:\n{log}");
        });
    let rest = &line[line.find("transaction ").unwrap() + "transaction ".len()..];
    let (xid, time) = rest.split_once(", time ").unwrap();
    assert_eq!(xid.parse::<u32>().unwrap(), xids[2], "PG{major}: {line}");
    assert_eq!(parse_time(time).timestamp_micros(), t3_commit, "PG{major}: {line}");

    // The promoted copy (timeline 2) archives under a handle of its own ...
    let copy = format!("maj{major}-copy");
    let auto = at_t2.join("postgresql.auto.conf");
    let mut conf = std::fs::read_to_string(&auto).unwrap();
    conf.push_str(&format!(
        "archive_mode = on\narchive_command = 'TIDEMARK_CLUSTER={copy} TIDEMARK_POSTGRES_DATA_DIR={} {} --config {} wal-push %p'\n",
        at_t2.display(),
        harness::bin().display(),
        tm.config.display()
    ));
    std::fs::write(&auto, conf).unwrap();
    let o = r.pg_ctl(&["-w", "-m", "fast", "stop"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log2 = at_t2.join("copy.log");
    let o = r.pg_ctl(&["-w", "-t", "120", "-l", log2.to_str().unwrap(), "start"]);
    assert!(o.status.success(), "PG{major} copy start: {}", stderr(&o));
    r.sql("insert into t values (9999, 'on timeline 2')");
    let seg2 = r.sql("select pg_walfile_name(pg_current_wal_lsn())");
    assert!(seg2.starts_with("00000002"), "{seg2}");
    r.sql("select pg_switch_wal()");
    harness::wait_for("the copy to archive its segment", Duration::from_secs(60), || {
        let last = r.sql("select coalesce(last_archived_wal, '') from pg_stat_archiver");
        last.len() >= 24 && last[..24] >= *seg2
    });
    let back = scratch.path().join("seg2.back");
    let o = tm.cmd(&["wal-fetch", &seg2, back.to_str().unwrap()]).env("TIDEMARK_CLUSTER", &copy).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(at_t2.join("pg_wal").join(&seg2)).unwrap());
    // Its own backup and window, on timeline 2 (it needs its timeline's history archived:
    // it promoted before archiving was on).
    let as_copy = |args: &[&str]| {
        tm.cmd_as_postgres(args)
            .current_dir(&at_t2)
            .env("TIDEMARK_CLUSTER", &copy)
            .env("TIDEMARK_POSTGRES_DATA_DIR", &at_t2)
            .env(
                "TIDEMARK_POSTGRES_CONNINFO",
                format!("host={} port={} user=postgres dbname=postgres", r.sock.display(), r.port),
            )
            .output()
            .unwrap()
    };
    let o = as_copy(&["wal-push", "pg_wal/00000002.history"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = as_copy(&["backup", "create", "--wait", "--output", "json"]);
    assert!(o.status.success(), "PG{major} copy backup: {}", stderr(&o));
    let cb: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((&cb["state"], &cb["timeline"]), (&serde_json::json!("completed"), &serde_json::json!(2)), "{cb}");
    let x2 = batch(|q| r.sql(q), 20_001);
    let x2_ts = commit_ts(|q| r.sql(q), &[x2])[&x2];
    let seg3 = r.sql("select pg_walfile_name(pg_current_wal_lsn())");
    r.sql("select pg_switch_wal()");
    harness::wait_for("the copy to archive its commit", Duration::from_secs(60), || {
        let last = r.sql("select coalesce(last_archived_wal, '') from pg_stat_archiver");
        last.len() >= 24 && last[..24] >= *seg3
    });
    let o = as_copy(&["window", "--output", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let w2: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tls2 = w2["timelines"].as_array().unwrap();
    assert_eq!(tls2.len(), 1, "{w2}");
    assert_eq!(tls2[0]["timeline"], 2, "{w2}");
    assert_eq!(
        tls2[0]["earliest"].as_str().map(parse_time),
        Some(parse_time(cb["stop_time"].as_str().unwrap())),
        "{w2}"
    );
    assert_eq!(tls2[0]["latest"].as_str().map(|t| parse_time(t).timestamp_micros()), Some(x2_ts), "{w2}");
    // The source's window is unchanged: still timeline 1 only.
    let o = tm.cmd(&["window", "--output", "json"]).output().unwrap();
    let again: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(again, w);

    // ... and is refused under the source's.
    let o = tm.push_from(&at_t2, &seg2, None);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("restored from backup") && stderr(&o).contains("same handle"), "{}", stderr(&o));
    drop(r);

    // Another major's binaries are refused before they start, naming both majors.
    let other = if major == 15 { 16 } else { 15 };
    let wrong = scratch.path().join("wrong-major");
    let o = tm
        .cmd(&["restore", "--target-dir", wrong.to_str().unwrap(), "--latest", "--start", "--port", "1"])
        .env("TIDEMARK_POSTGRES_BIN_DIR", harness::pg_major_bin(other))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("is PostgreSQL {major}, but postgres.bin_dir"))
            && stderr(&o).contains(&format!("holds PostgreSQL {other}")),
        "{}",
        stderr(&o)
    );

    // --latest: every row.
    let latest = scratch.path().join("latest");
    let (o, r) = restore(&tm, &pg, &latest, &["--latest"]);
    assert!(o.status.success(), "PG{major} restore latest: {}", stderr(&o));
    assert_eq!(r.sql(CHECKSUM), sums[2], "PG{major}");
    drop(r);
    pg.stop();
    eprintln!(
        "PostgreSQL {major}: {checked} commit times checked against the server, scenario {:?}",
        started.elapsed()
    );
}

/// A major the reader does not know (here PostgreSQL 15's WAL relabelled with a future
/// page magic on its way to the archive): archiving never stops, and `window` and a
/// --target-time restore say commit times are unknown and what works, not "no commits".
#[test]
fn unknown_major_keeps_archiving_and_says_what_works() {
    let repo_dir = harness::postgres_dir("repo");
    let url = Tidemark::fs_url(repo_dir.path());
    let mut pg = Pg::init_major(15, &["--wal-segsize=1"]);
    let tm = Tidemark::for_pg("future", &url, None, &pg);
    pg.archive_to(&tm.config);
    // Record CRCs do not cover page headers: relabelled WAL stays intact WAL of "PostgreSQL 19".
    let script = tm.dir.path().join("relabel.py");
    std::fs::write(
        &script,
        "import os, re, sys\np = sys.argv[1]\nif re.fullmatch(r'[0-9A-F]{24}', os.path.basename(p)):\n    with open(p, 'r+b') as f:\n        for off in range(0, os.fstat(f.fileno()).st_size, 8192):\n            f.seek(off)\n            if f.read(2) != b'\\0\\0':\n                f.seek(off)\n                f.write((0xD121).to_bytes(2, 'little'))\n",
    )
    .unwrap();
    harness::chown_postgres(&script);
    pg.conf(&format!(
        "archive_command = 'python3 {} %p && {} --config {} wal-push %p'",
        script.display(),
        harness::bin().display(),
        tm.config.display()
    ));
    pg.start();
    pg.sql("create table t(id int)");
    let o = tm.cmd_as_postgres(&["backup", "create", "--wait", "--output", "json"]).output().unwrap();
    assert!(o.status.success(), "backup: {}\n{}", stderr(&o), pg.log());
    pg.sql("insert into t select generate_series(1, 1000)");
    let mark = pg.time_mark();
    pg.sql("insert into t select generate_series(1, 1000)");
    pg.switch_wal_archived(Duration::from_secs(120));
    assert_eq!(pg.sql("select failed_count from pg_stat_archiver"), "0", "{}", pg.log());

    let why = "unknown WAL page magic 0xD121 (a PostgreSQL newer than 18?) is not supported for time targets; --latest and --target-lsn work";
    let cfg = tidemark::config::Config::load(Some(&tm.config)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let repo = rt.block_on(tidemark::repo::Repository::open(&cfg)).unwrap();
    let last = pg.done_segments().pop().unwrap();
    let (_, start) = record::parse_segment_file_name(&last, SEG).unwrap();
    let idx = rt.block_on(wal_index::load(&repo, Segment { timeline: 1, number: start / SEG }, SEG)).unwrap().unwrap();
    assert_eq!(idx.error.as_deref(), Some(why));
    assert_eq!((idx.first_commit_us, idx.last_commit_us), (None, None));

    let o = tm.cmd(&["window"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains(&format!("by LSN; commit times unknown: {why}")), "{text}");
    assert!(!text.contains("no commits"), "{text}");
    let scratch = harness::postgres_dir("restore");
    let dir = scratch.path().join("t");
    let o = tm.cmd(&["restore", "--target-dir", dir.to_str().unwrap(), "--target-time", &mark]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("commit times unknown: {why}")), "{}", stderr(&o));
    assert!(!dir.exists());
    eprintln!("window: {text}restore --target-time: {}", stderr(&o));
}

#[test]
fn pg13() {
    scenario(13);
}

#[test]
fn pg14() {
    scenario(14);
}

#[test]
fn pg15() {
    scenario(15);
}

#[test]
fn pg16() {
    scenario(16);
}

#[test]
fn pg17() {
    scenario(17);
}

#[test]
fn pg18() {
    scenario(18);
}
