//! Finding the moment to restore to, against real PostgreSQL 15 on the fs store and on S3
//! (moto): `DROP TABLE orders` and `TRUNCATE lines`, then `find --dropped orders` and
//! `find --truncated lines` name the transactions (checked against PostgreSQL's own commit
//! timestamps), and `restore --before-xid` of each brings the table back with exactly its
//! rows. On S3 the daemon learns the names (nothing else asks PostgreSQL before the drop).

use std::time::{Duration, Instant};

use crate::harness::{self, stderr, stdout, Moto, Pg, Tidemark};

/// A content checksum of a table, and its row count.
fn digest(sql: impl Fn(&str) -> String, table: &str) -> String {
    sql(&format!(
        "select count(*) || '/' || coalesce(md5(string_agg({table}::text, ',' order by id)), '-') from {table}"
    ))
}

/// `find ARGS --output json`: the exit code and the result.
fn find(tm: &Tidemark, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut all = vec!["find"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--output", "json"]);
    let o = tm.cmd(&all).output().unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&o), stderr(&o)));
    (o.status.code(), v)
}

/// The commit time PostgreSQL recorded for `xid`, as tidemark writes times.
fn commit_time(pg: &Pg, xid: &str) -> String {
    pg.sql(&format!(
        "select to_char(pg_xact_commit_timestamp('{xid}'::xid) at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
    ))
}

fn scenario(url: &str, endpoint: Option<&str>, daemon_names: bool) {
    let mut pg = Pg::init();
    let mut tm = Tidemark::for_pg("found", url, endpoint, &pg);
    pg.archive_to(&tm.config);
    pg.conf("track_commit_timestamp = on");
    pg.start();
    pg.sql("create table orders (id int primary key, item text); insert into orders select g, md5(g::text) from generate_series(1, 5000) g");
    pg.sql("create table lines (id int, qty int); insert into lines select g, g % 7 from generate_series(1, 3000) g");
    let o = tm.cmd_as_postgres(&["backup", "create", "--wait"]).output().unwrap();
    assert!(o.status.success(), "backup: {}", stderr(&o));
    // Rows after the backup: only replay brings them back.
    pg.sql(
        "insert into orders select g, 'late' from generate_series(5001, 5100) g; insert into lines values (3001, 1)",
    );
    let orders = digest(|s| pg.sql(s), "orders");
    let lines = digest(|s| pg.sql(s), "lines");
    assert!(orders.starts_with("5100/") && lines.starts_with("3001/"), "{orders} {lines}");

    if daemon_names {
        tm.daemon_env.push(("TDMK_TEST_MINUTE_MS".into(), "300".into()));
        tm.start_daemon();
        let store = harness::store_for(url, endpoint.map(str::to_string));
        let rt = tokio::runtime::Runtime::new().unwrap();
        let start = Instant::now();
        while rt.block_on(store.get_bytes("clusters/found/relation-names.json")).unwrap().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the daemon stored no relation names:\n{}",
                tm.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    } else {
        // Nothing dropped yet: nothing found, exit 1; the names are learned on the way.
        let (code, v) = find(&tm, &["--dropped", "orders"]);
        assert_eq!(code, Some(1), "{v}");
        assert_eq!(v["hits"].as_array().unwrap().len(), 0, "{v}");
    }

    let drop_xid = pg.sql("begin; select pg_current_xact_id(); drop table orders; commit");
    pg.sql("insert into lines values (3002, 2)");
    let truncate_xid = pg.sql("begin; select pg_current_xact_id(); truncate lines; commit");
    pg.sql("insert into lines values (1, 1)");
    pg.switch_wal_archived(Duration::from_secs(120));

    let (code, v) = find(&tm, &["--dropped", "orders"]);
    assert_eq!(code, Some(0), "{v}");
    let hits = v["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{v}");
    let h = &hits[0];
    assert_eq!(h["event"], "dropped", "{v}");
    assert_eq!(h["xid"].to_string(), drop_xid, "{v}");
    assert_eq!(h["relation"], "postgres.public.orders", "{v}");
    assert!(h["also"].as_array().unwrap().iter().any(|a| a == "postgres.public.orders_pkey"), "{v}");
    assert_eq!(h["time"].as_str().unwrap(), commit_time(&pg, &drop_xid), "{v}");
    assert_eq!(h["timeline"], 1, "{v}");
    let drop_lsn = h["lsn"].clone();

    // The same transaction by id; a drop is not a truncate, and the reverse.
    let (code, x) = find(&tm, &["--xid", &drop_xid]);
    assert_eq!(code, Some(0), "{x}");
    assert_eq!((x["hits"][0]["event"].as_str(), &x["hits"][0]["lsn"]), (Some("commit"), &drop_lsn), "{x}");
    assert_eq!(x["hits"].as_array().unwrap().len(), 1, "{x}");
    assert_eq!(find(&tm, &["--truncated", "orders"]).0, Some(1));
    assert_eq!(find(&tm, &["--dropped", "lines"]).0, Some(1));

    let (code, t) = find(&tm, &["--truncated", "public.lines"]);
    assert_eq!(code, Some(0), "{t}");
    assert_eq!(t["hits"].as_array().unwrap().len(), 1, "{t}");
    assert_eq!(t["hits"][0]["event"], "truncated", "{t}");
    assert_eq!(t["hits"][0]["xid"].to_string(), truncate_xid, "{t}");
    assert_eq!(t["hits"][0]["time"].as_str().unwrap(), commit_time(&pg, &truncate_xid), "{t}");
    // A time range that ends before the truncate finds nothing; one from the drop on does.
    let dropped_at = h["time"].as_str().unwrap();
    assert_eq!(find(&tm, &["--truncated", "lines", "--to", dropped_at]).0, Some(1));
    assert_eq!(find(&tm, &["--truncated", "lines", "--from", dropped_at]).0, Some(0));
    let text = stdout(&tm.cmd(&["find", "--xid", &drop_xid]).output().unwrap());
    assert!(text.contains(&format!("restore --before-xid {drop_xid}")), "{text}");

    // Restores to just before each: the table is back with exactly its rows.
    let dir = harness::postgres_dir("before-truncate");
    let target = dir.path().join("data");
    let (o, r) = harness::restore_started(&tm, &pg, &target, &["--before-xid", &truncate_xid]);
    assert!(o.status.success(), "restore: {}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains(&format!("before commit of transaction {truncate_xid}")), "{}", stdout(&o));
    let with_3002 = digest(|s| r.sql(s), "lines");
    assert!(with_3002.starts_with("3002/"), "{with_3002}");
    assert_eq!(r.sql("select to_regclass('orders') is null"), "t", "orders was dropped before the truncate");
    drop(r);

    let dir = harness::postgres_dir("before-drop");
    let target = dir.path().join("data");
    let (o, r) = harness::restore_started(&tm, &pg, &target, &["--before-xid", &drop_xid]);
    assert!(o.status.success(), "restore: {}\n{}", stdout(&o), stderr(&o));
    assert_eq!(digest(|s| r.sql(s), "orders"), orders);
    assert_eq!(digest(|s| r.sql(s), "lines"), lines);
    drop(r);

    // A transaction the archive does not hold: refused before anything is written.
    let dir = harness::postgres_dir("unknown-xid");
    let target = dir.path().join("data");
    let (o, _r) = harness::restore_started(&tm, &pg, &target, &["--before-xid", "3999999999"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("transaction 3999999999 has no commit or abort in the archive"), "{}", stderr(&o));
    assert!(!target.exists(), "a refused restore wrote its target");
    if daemon_names {
        tm.stop_daemon();
    }
}

#[test]
fn find_names_a_drop_and_a_truncate_and_restores_before_them_fs() {
    let repo = harness::postgres_dir("repo");
    scenario(&Tidemark::fs_url(repo.path()), None, false);
}

#[test]
fn find_names_a_drop_and_a_truncate_and_restores_before_them_s3() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start();
    rt.block_on(moto.create_bucket("found"));
    scenario("s3://found/env", Some(&moto.endpoint()), true);
}
