//! Base backups and point-in-time restore against real PostgreSQL 15, on the fs store and
//! on S3 (moto): exact rows at a target time, --latest, refusals with the window,
//! a damaged bundle, verify, and the promoted copy's timeline 2.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::harness::{self, stderr, stdout, Moto, Pg, Restored, Tidemark};

const CHECKSUM: &str =
    "select count(*) || ':' || md5(coalesce(string_agg(id::text || ':' || payload, ',' order by id), '')) from t";

fn restore(tm: &Tidemark, pg: &Pg, dir: &Path, target: &[&str]) -> (Output, Restored) {
    harness::restore_started(tm, pg, dir, target)
}

fn scenario(url: &str, endpoint: Option<String>) {
    let mut pg = Pg::init();
    let tm = Tidemark::for_pg("pitr", url, endpoint.as_deref(), &pg);
    pg.archive_to(&tm.config);
    pg.start();
    // A tablespace outside the data directory: restores must put it beside the new
    // directory and never touch the source's.
    let ts_dir = harness::postgres_dir("tblspc");
    pg.sql(&format!("create tablespace ts location '{}'", ts_dir.path().display()));
    pg.sql("create table in_ts(id int) with (autovacuum_enabled = false) tablespace ts");
    pg.sql("insert into in_ts select generate_series(1, 5000)");
    // Settle the source's own files (visibility map, free space map, dirty pages) first,
    // so any later change there could only come from the restore.
    pg.sql("vacuum in_ts");
    pg.sql("checkpoint");
    let ts_before = dir_listing(ts_dir.path());
    pg.sql("create table t(id int primary key, payload text)");
    pg.sql("insert into t select g, md5(g::text) from generate_series(1, 1000) g");

    // Nothing restorable before the first backup: refused, nothing written.
    let scratch = harness::postgres_dir("restore");
    let early = scratch.path().join("early");
    let o = tm.cmd(&["restore", "--target-dir", early.to_str().unwrap(), "--latest"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("backup create"), "{}", stderr(&o));
    assert!(!early.exists());

    let o = tm.cmd_as_postgres(&["backup", "create", "--wait", "--output", "json"]).output().unwrap();
    assert!(o.status.success(), "backup: {}", stderr(&o));
    let b: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(b["state"], "completed", "{b}");
    let backup_id = b["id"].as_str().unwrap().to_string();

    // t1 < t2 < t3, each after its batch committed.
    let mut marks = Vec::new();
    let mut sums = Vec::new();
    for batch in 0..3 {
        let lo = 1001 + batch * 100;
        pg.sql(&format!("insert into t select g, md5(g::text) from generate_series({lo}, {}) g", lo + 99));
        sums.push(pg.sql(CHECKSUM));
        marks.push(pg.now_utc());
        pg.sql("select pg_sleep(0.05)");
    }
    pg.switch_wal_archived(Duration::from_secs(120));

    // The window covers t2.
    let o = tm.cmd(&["window", "--output", "json"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let w: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tl = &w["timelines"][0];
    assert!(
        tl["earliest"].as_str().unwrap() <= marks[1].as_str() && marks[1].as_str() <= tl["latest"].as_str().unwrap(),
        "{w} {marks:?}"
    );

    // status: what an operator checks.
    let o = tm.cmd(&["status", "--output", "json"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["last_backup"], backup_id.as_str(), "{st}");
    assert_eq!(st["archiving"]["failed_count"], 0, "{st}");
    assert_eq!(st["archiving"]["lag_segments"], 0, "{st}");
    assert_eq!(st["restorable_from"], tl["earliest"], "{st}");
    assert!(st["next_backup"].is_string() && st["daemon"].is_null(), "{st}");

    // Outside the window: refused before any download, window printed.
    for (t, why) in [("2000-01-01 00:00:00", "before the oldest"), ("2999-01-01T00:00:00Z", "after the end")] {
        let dir = scratch.path().join("refused");
        let o = tm.cmd(&["restore", "--target-dir", dir.to_str().unwrap(), "--target-time", t]).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains(why) && stderr(&o).contains("restorable by time from"), "{}", stderr(&o));
        assert!(!dir.exists(), "a refused restore created {}", dir.display());
    }

    // Restore to t2: exactly the rows committed by t2.
    let at_t2 = scratch.path().join("t2");
    let (o, r) = restore(&tm, &pg, &at_t2, &["--target-time", &marks[1]]);
    assert!(
        o.status.success(),
        "restore t2: {}\n{}",
        stderr(&o),
        std::fs::read_to_string(at_t2.join("tidemark-restore.log")).unwrap_or_default()
    );
    assert!(stdout(&o).contains("promoted on timeline 2"), "{}", stdout(&o));
    assert_eq!(r.sql(CHECKSUM), sums[1]);
    assert_eq!(r.sql("select count(*) from t"), "1200");
    assert_eq!(r.sql("select pg_is_in_recovery()"), "f");
    assert_eq!(r.sql("select count(*) from in_ts"), "5000");
    let oid = pg.sql("select oid from pg_tablespace where spcname = 'ts'");
    let link = std::fs::read_link(at_t2.join("pg_tblspc").join(&oid)).unwrap();
    assert_eq!(link, scratch.path().join(format!("t2.tablespaces/{oid}")), "tablespace not remapped");
    assert_eq!(
        r.sql("select pg_tablespace_location(oid) from pg_tablespace where spcname = 'ts'"),
        link.display().to_string()
    );
    // The source was never touched, its tablespace included.
    assert_eq!(pg.sql("select count(*) from t"), "1300");
    assert_eq!(dir_listing(ts_dir.path()), ts_before, "restore wrote into the source's tablespace");

    // The promoted copy wrote timeline 2's history; archiving it under the same handle is refused.
    let hist = at_t2.join("pg_wal/00000002.history");
    assert!(hist.is_file());
    // (Configured as its own data directory: files are archived only from the configured pg_wal.)
    let o = tm.push_from(&at_t2, "00000002.history", None);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("restored from backup") && stderr(&o).contains("same handle"), "{}", stderr(&o));
    // Under a handle of its own, the history file archives (and fetches back identical).
    let o = tm.push_from(&at_t2, "00000002.history", Some("pitr-copy"));
    assert!(o.status.success(), "{}", stderr(&o));
    let back = scratch.path().join("history.back");
    let o = tm
        .cmd_as_postgres(&["wal-fetch", "00000002.history", back.to_str().unwrap()])
        .env("TIDEMARK_CLUSTER", "pitr-copy")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&hist).unwrap());
    drop(r);

    // --latest: everything.
    let latest = scratch.path().join("latest");
    let (o, r) = restore(&tm, &pg, &latest, &["--latest"]);
    assert!(o.status.success(), "restore latest: {}", stderr(&o));
    assert_eq!(r.sql(CHECKSUM), sums[2]);
    drop(r);

    // verify is clean; then a bundle is damaged: restore fails naming it, the directory is
    // marked incomplete and cannot start, verify reports it.
    let o = tm.cmd(&["verify", "--deep"]).output().unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let store = store_for(url, endpoint.clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = format!("clusters/pitr/backups/{backup_id}/data/b000000");
    let good = rt.block_on(store.get_bytes(&key)).unwrap().unwrap();
    let mut bad = good.to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    rt.block_on(store.put(&key, bad.into())).unwrap();
    let broken = scratch.path().join("broken");
    let o = tm.cmd(&["restore", "--target-dir", broken.to_str().unwrap(), "--latest"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("b000000"), "{}", stderr(&o));
    assert!(broken.join("TIDEMARK_RESTORE_INCOMPLETE").is_file());
    assert!(!broken.join("global/pg_control").exists());
    let o = harness::as_postgres(harness::pg_bin().join("pg_ctl"))
        .arg("-D")
        .arg(&broken)
        .args(["-w", "-t", "10", "start"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "an incomplete restore started");
    let o = tm.cmd(&["verify", "--deep"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("b000000") && stdout(&o).contains("PROBLEMS"), "{}", stdout(&o));
    rt.block_on(store.delete(&key)).unwrap();
    let o = tm.cmd(&["verify"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("b000000 is missing"), "{}", stdout(&o));
    let gone = scratch.path().join("gone");
    let o = tm.cmd(&["restore", "--target-dir", gone.to_str().unwrap(), "--latest"]).output().unwrap();
    assert!(stderr(&o).contains("b000000") && stderr(&o).contains("missing"), "{}", stderr(&o));

    // backup list and show.
    let o = tm.cmd(&["backup", "list"]).output().unwrap();
    assert!(stdout(&o).contains(&backup_id) && stdout(&o).contains("completed"), "{}", stdout(&o));
    let o = tm.cmd(&["backup", "show", &backup_id, "--output", "json"]).output().unwrap();
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(m["backup_label"].as_str().unwrap().contains("START WAL LOCATION"), "{m}");
    assert!(m["files"].as_array().unwrap().iter().any(|f| f["path"] == "global/pg_control"));
    pg.stop();
}

/// Every path under `dir` (sorted), with sizes.
fn dir_listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path().display().to_string(), if m.is_dir() { 0 } else { m.len() }));
        }
    }
    out.sort();
    out
}

use harness::store_for;

#[test]
fn point_in_time_restore_fs() {
    let repo = harness::postgres_dir("repo");
    scenario(&Tidemark::fs_url(repo.path()), None);
}

#[test]
fn point_in_time_restore_s3() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start();
    rt.block_on(moto.create_bucket("pitr"));
    scenario("s3://pitr/env", Some(moto.endpoint()));
}
