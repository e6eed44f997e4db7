//! Incremental backups against real PostgreSQL 15, on the fs store (direct `wal-push`) and
//! on S3 (moto, through the daemon): a full backup, writes, an incremental, writes, an
//! incremental. Restores to a time after each are exact (row digests, PostgreSQL's own
//! `pg_amcheck`); the incrementals read only part of the cluster and say which relation
//! files they copied in full and why (one because it was created since, one because the
//! block references of a segment it was written in were removed). Purging the full backup
//! keeps the bundles the incrementals point into, and restores stay exact; purging them all
//! leaves nothing. `kill -9` during an incremental and during a purge leaves no listed
//! backup without its data.

use std::time::Duration;

use crate::harness::{self, pg_bin, run_ok, stderr, stdout, Moto, Pg, Tidemark};

/// Row count and content checksum of the tables the test writes.
fn digest(sql: impl Fn(&str) -> String) -> String {
    sql("select (select count(*) || '/' || md5(string_agg(ledger::text, ',' order by id)) from ledger) || ' ' || \
         (select count(*) || '/' || sum(abalance) from pgbench_accounts) || ' ' || \
         (select coalesce(sum(delta), 0) from pgbench_history) || ' ' || \
         coalesce((select count(*) || '/' || md5(string_agg(fresh::text, ',' order by id)) from fresh), '-')")
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(o), stderr(o)))
}

/// `backup create --wait [--incremental]`, its JSON summary.
fn backup(tm: &Tidemark, incremental: bool) -> serde_json::Value {
    let mut args = vec!["backup", "create", "--wait", "--output", "json"];
    if incremental {
        args.push("--incremental");
    }
    let o = tm.cmd_as_postgres(&args).output().unwrap();
    assert!(o.status.success(), "backup: {}\n{}", stdout(&o), stderr(&o));
    json(&o)
}

fn show(tm: &Tidemark, id: &str) -> serde_json::Value {
    json(&run_ok(&mut tm.cmd(&["backup", "show", id, "--output", "json"])))
}

/// Restores `args` into a new directory, started; checks the digest and `pg_amcheck`.
fn restore_exact(tm: &Tidemark, pg: &Pg, tag: &str, args: &[&str], want: &str) {
    let dir = harness::postgres_dir(tag);
    let target = dir.path().join("data");
    let (o, r) = harness::restore_started(tm, pg, &target, args);
    assert!(o.status.success(), "restore {args:?}: {}\n{}", stdout(&o), stderr(&o));
    assert_eq!(digest(|s| r.sql(s)), want, "restore {args:?}");
    let amcheck = harness::as_postgres(pg_bin().join("pg_amcheck"))
        .args([
            "-h",
            r.sock.to_str().unwrap(),
            "-p",
            &r.port.to_string(),
            "--all",
            "--install-missing",
            "--heapallindexed",
        ])
        .output()
        .unwrap();
    assert!(amcheck.status.success(), "pg_amcheck after {args:?}: {}\n{}", stdout(&amcheck), stderr(&amcheck));
}

fn keys(store: &dyn tidemark::store::ObjectStore, rt: &tokio::runtime::Runtime, prefix: &str) -> Vec<String> {
    rt.block_on(store.list(prefix)).unwrap().into_iter().map(|o| o.key).collect()
}

fn scenario(url: &str, endpoint: Option<&str>, daemon: bool) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = harness::store_for(url, endpoint.map(str::to_string));
    let mut pg = Pg::init();
    let mut tm = Tidemark::for_pg("incr", url, endpoint, &pg);
    pg.archive_to(&tm.config);
    pg.start();
    pg.pgbench(&["-i", "-s", "4", "-q"]);
    pg.sql("create table ledger (id int primary key, v text); insert into ledger select g, md5(g::text) from generate_series(1, 2000) g");
    let full = backup(&tm, false);
    let a = full["id"].as_str().unwrap().to_string();
    assert!(full["incremental"].is_null(), "{full}");
    if daemon {
        // Started after the first backup, so it does not take one of its own at start.
        tm.start_daemon();
    }

    // Writes, then the first incremental.
    pg.pgbench(&["-n", "-c", "2", "-t", "300"]);
    pg.sql("insert into ledger select g, 'one' from generate_series(2001, 2500) g");
    pg.sql("create table fresh (id int, v text); insert into fresh select g, 'f' || g from generate_series(1, 700) g");
    let fresh_path = pg.sql("select pg_relation_filepath('fresh')");
    let inc1 = backup(&tm, true);
    let b = inc1["id"].as_str().unwrap().to_string();
    eprintln!("full: {full}\nfirst incremental: {inc1}");
    let i = &inc1["incremental"];
    assert_eq!(i["base"], a.as_str(), "{inc1}");
    let (copied, kept) = (i["bytes_copied"].as_u64().unwrap(), i["bytes_kept"].as_u64().unwrap());
    assert!(kept > 2 * copied, "an incremental reads less than it keeps: {inc1}");
    assert!(inc1["stored_bytes"].as_u64().unwrap() * 2 < full["stored_bytes"].as_u64().unwrap(), "{inc1}\n{full}");
    let m = show(&tm, &b);
    let notes = m["incremental"]["full_copies"].as_array().unwrap();
    assert!(
        notes.iter().any(|n| n["path"] == fresh_path.as_str() && n["why"].as_str().unwrap().contains("created")),
        "{fresh_path} not noted as created: {notes:?}"
    );
    let after_b = pg.time_mark();
    let d_b = digest(|s| pg.sql(s));

    // More writes; the block references of the segment they begin in are removed.
    pg.sql("select pg_switch_wal()");
    let gap_seg = pg.sql("select pg_walfile_name(pg_current_wal_lsn())");
    pg.pgbench(&["-n", "-c", "2", "-t", "300"]);
    pg.sql("update ledger set v = 'two' where id % 10 = 0");
    let accounts = pg.sql("select pg_relation_filepath('pgbench_accounts')");
    pg.switch_wal_archived(Duration::from_secs(120));
    let packs = keys(&*store, &rt, "clusters/incr/wal-index/");
    let gone: Vec<&String> = packs
        .iter()
        .filter(|k| k.contains("/blocks/"))
        .filter(|k| {
            let (first, last) = k.rsplit('/').next().unwrap().split_once('-').unwrap();
            first <= gap_seg.as_str() && gap_seg.as_str() <= last
        })
        .collect();
    // The daemon stores a batch's references just after its segments.
    assert_eq!(gone.len(), 1, "{gap_seg} in {packs:?}");
    rt.block_on(store.delete(gone[0])).unwrap();
    let after_c_writes = digest(|s| pg.sql(s));

    // kill -9 in the middle of an incremental: nothing listed lacks data.
    let mut killed = tm.cmd_as_postgres(&["backup", "create", "--wait", "--incremental"]);
    let o = killed.env("TIDEMARK_FAILPOINT", "backup-after-bundle").output().unwrap();
    assert!(stderr(&o).contains("failpoint backup-after-bundle"), "the failpoint did not fire: {}", stderr(&o));

    let inc2 = backup(&tm, true);
    let c = inc2["id"].as_str().unwrap().to_string();
    eprintln!("second incremental: {inc2}");
    assert_eq!(inc2["incremental"]["base"], b.as_str(), "{inc2}");
    let m = show(&tm, &c);
    let notes = m["incremental"]["full_copies"].as_array().unwrap();
    assert!(
        notes.iter().any(|n| {
            n["path"] == accounts.as_str() && n["why"].as_str().unwrap().contains(&format!("segment {gap_seg}"))
        }),
        "{accounts} not noted as copied in full for {gap_seg}: {notes:?}"
    );
    let list = json(&run_ok(&mut tm.cmd(&["backup", "list", "--output", "json"])));
    let states: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["id"].as_str().unwrap().to_string(), b["state"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(states.iter().filter(|(_, s)| s == "completed").count(), 3, "{states:?}");
    assert!(states.iter().all(|(_, s)| s == "completed" || s == "failed"), "{states:?}");

    pg.sql("insert into ledger select g, 'three' from generate_series(2501, 2600) g");
    let after_c = pg.time_mark();
    let d_c = digest(|s| pg.sql(s));
    assert_ne!(d_c, after_c_writes);
    pg.sql("insert into ledger values (9999, 'later')");
    pg.switch_wal_archived(Duration::from_secs(120));
    let latest = digest(|s| pg.sql(s));

    // Restores to a time after each incremental; the last equals the source.
    restore_exact(&tm, &pg, "from-b", &["--backup", &b, "--target-time", &after_b], &d_b);
    restore_exact(&tm, &pg, "from-c", &["--backup", &c, "--target-time", &after_c], &d_c);
    let deep = tm.cmd(&["verify", "--deep"]).output().unwrap();
    assert!(deep.status.success(), "verify --deep: {}\n{}", stdout(&deep), stderr(&deep));

    // kill -9 while purging the full backup, then the purge again: the incrementals stay whole.
    let o =
        tm.cmd(&["backup", "purge", &a, "--yes"]).env("TIDEMARK_FAILPOINT", "purge-before-record").output().unwrap();
    assert!(stderr(&o).contains("failpoint purge-before-record"), "the failpoint did not fire: {}", stderr(&o));
    restore_exact(&tm, &pg, "c-while-a-half-purged", &["--backup", &c, "--latest"], &latest);
    run_ok(&mut tm.cmd(&["backup", "purge", &a, "--yes"]));
    let left = keys(&*store, &rt, &format!("clusters/incr/backups/{a}/"));
    assert!(!left.is_empty() && left.iter().all(|k| k.contains("/data/b")), "A keeps only bundles: {left:?}");
    let deep = tm.cmd(&["verify", "--deep"]).output().unwrap();
    assert!(deep.status.success(), "verify --deep after purging A: {}\n{}", stdout(&deep), stderr(&deep));
    restore_exact(&tm, &pg, "latest-from-c", &["--backup", &c, "--latest"], &latest);

    // Purge the rest: nothing of any backup is left behind.
    for id in [&b, &c] {
        run_ok(&mut tm.cmd(&["backup", "purge", id, "--yes"]));
    }
    let failed: Vec<String> = states.iter().filter(|(_, s)| s == "failed").map(|(id, _)| id.clone()).collect();
    for id in &failed {
        run_ok(&mut tm.cmd(&["backup", "purge", id, "--yes"]));
    }
    let left = keys(&*store, &rt, "clusters/incr/backups/");
    assert!(left.is_empty(), "{left:?}");
    if daemon {
        tm.stop_daemon();
    }
}

#[test]
fn incremental_backups_restore_exactly_and_purge_cleanly_fs() {
    let repo = harness::postgres_dir("repo");
    scenario(&Tidemark::fs_url(repo.path()), None, false);
}

#[test]
fn incremental_backups_restore_exactly_and_purge_cleanly_s3() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start();
    rt.block_on(moto.create_bucket("incr"));
    scenario("s3://incr/env", Some(&moto.endpoint()), true);
}
