//! Restore drills against real PostgreSQL 15, on the fs store and on S3 (moto): a drill of
//! a pgbench database restores, replays, promotes, passes pg_amcheck and a probe, records
//! its phases, and leaves no scratch data and nothing changed in the repository but its
//! record; a drill over a damaged bundle fails naming it and turns `status` critical.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;

use crate::harness::{self, stderr, Moto, Pg, Tidemark};

use harness::store_for;

/// Every object of the repository with its size and content hash, but the drills' records.
fn objects(store: &Arc<dyn tidemark::store::ObjectStore>) -> BTreeMap<String, (u64, String)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut out = BTreeMap::new();
    for o in rt.block_on(store.list("")).unwrap() {
        if o.key.contains("/drills/") {
            continue;
        }
        let bytes = rt.block_on(store.get_bytes(&o.key)).unwrap().unwrap();
        out.insert(o.key.clone(), (o.size, hex::encode(sha2::Sha256::digest(&bytes))));
    }
    out
}

fn drill(tm: &Tidemark) -> (std::process::Output, serde_json::Value) {
    let o = tm.cmd(&["drill", "run", "--output", "json"]).output().unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", harness::stdout(&o), stderr(&o)));
    (o, v)
}

fn scenario(url: &str, endpoint: Option<String>) {
    let mut pg = Pg::init();
    let tm = Tidemark::for_pg("drilled", url, endpoint.as_deref(), &pg);
    pg.archive_to(&tm.config);
    pg.start();
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    let o = tm.cmd_as_postgres(&["backup", "create", "--wait", "--output", "json"]).output().unwrap();
    assert!(o.status.success(), "backup: {}", stderr(&o));
    let backup: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let backup_id = backup["id"].as_str().unwrap().to_string();
    pg.pgbench(&["-t", "200", "-c", "2"]);
    let accounts = pg.sql("select sum(abalance) from pgbench_accounts");
    pg.switch_wal_archived(Duration::from_secs(120));

    let scratch = harness::postgres_dir("drill");
    let mut cfg = std::fs::read_to_string(&tm.config).unwrap();
    cfg.push_str(&format!(
        "[drill]\nscratch_dir = \"{}\"\nprobe_sql = \"select sum(abalance) from pgbench_accounts\"\nprobe_expect = \"{accounts}\"\ntime_limit_s = 600\n",
        scratch.path().display()
    ));
    std::fs::write(&tm.config, cfg).unwrap();

    let store = store_for(url, endpoint.clone());
    let before = objects(&store);
    let (o, rec) = drill(&tm);
    assert!(o.status.success(), "drill: {rec}\n{}", stderr(&o));
    assert_eq!(rec["ok"], true, "{rec}");
    assert_eq!(rec["backup"], backup_id.as_str(), "{rec}");
    assert_eq!(rec["target"], "latest", "{rec}");
    let phases: Vec<&str> = rec["phases"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(phases, ["plan", "restore", "replay", "checks", "teardown"], "{rec}");
    assert!(rec["phases"].as_array().unwrap().iter().all(|p| p["seconds"].as_f64().unwrap() >= 0.0), "{rec}");
    assert!(rec["restore_seconds"].as_f64().unwrap() > 0.0, "{rec}");
    let check = |name: &str| rec["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap();
    assert_eq!(check("target reached")["ok"], true, "{rec}");
    assert_eq!(check("pg_amcheck")["ok"], true, "{rec}");
    assert_eq!(check("pg_amcheck")["detail"], "no corruption found in any database", "{rec}");
    let probe = check("probe");
    assert_eq!(probe["ok"], true, "{rec}");
    assert!(probe["detail"].as_str().unwrap().starts_with(&format!("returned {accounts},")), "{rec}");
    // Nothing left of the scratch cluster; nothing in the repository changed but the record.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0, "scratch data left behind");
    assert_eq!(objects(&store), before, "a drill changed the repository");
    // The source is untouched and still the primary.
    assert_eq!(pg.sql("select sum(abalance) from pgbench_accounts"), accounts);
    assert_eq!(pg.sql("select pg_is_in_recovery()"), "f");

    let o = tm.cmd(&["drill", "list", "--output", "json"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let all: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    assert_eq!(all[0]["id"], rec["id"]);
    let o = tm.cmd(&["backup", "show", &backup_id, "--output", "json"]).output().unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown["last_drill"]["id"], rec["id"], "{shown}");
    assert_eq!(shown["last_drill"]["restore_seconds"], rec["restore_seconds"], "{shown}");
    let o = tm.cmd(&["status", "--output", "json"]).output().unwrap();
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["last_drill"]["ok"], true, "{st}");
    assert_eq!(st["last_drill"]["restore_seconds"], rec["restore_seconds"], "{st}");
    assert_eq!(st["last_drill"]["id"], rec["id"], "{st}");

    // A damaged bundle: the drill fails naming it, cleans up, and status turns critical.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = format!("clusters/drilled/backups/{backup_id}/data/b000000");
    let good = rt.block_on(store.get_bytes(&key)).unwrap().unwrap();
    let mut bad = good.to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    rt.block_on(store.put(&key, bad.into())).unwrap();
    let (o, failed) = drill(&tm);
    assert_eq!(o.status.code(), Some(1), "{failed}\n{}", stderr(&o));
    assert_eq!(failed["ok"], false, "{failed}");
    assert!(failed["error"].as_str().unwrap().contains("b000000"), "{failed}");
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0, "a failed drill left scratch data");
    let o = tm.cmd(&["status", "--output", "json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["verdict"], "critical", "{st}");
    let msgs: Vec<&str> = st["problems"].as_array().unwrap().iter().map(|p| p["message"].as_str().unwrap()).collect();
    assert!(msgs.iter().any(|m| m.contains("restore drill") && m.contains("FAILED") && m.contains("b000000")), "{st}");
    let o = tm.cmd(&["drill", "list"]).output().unwrap();
    let text = harness::stdout(&o);
    assert!(text.contains("passed") && text.contains("FAILED") && text.contains("last drill failed"), "{text}");
    rt.block_on(store.put(&key, good)).unwrap();
}

#[test]
fn a_drill_restores_checks_and_cleans_up_fs() {
    let repo = harness::postgres_dir("repo");
    scenario(&Tidemark::fs_url(repo.path()), None);
}

#[test]
fn a_drill_restores_checks_and_cleans_up_s3() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start();
    rt.block_on(moto.create_bucket("drill"));
    scenario("s3://drill/env", Some(moto.endpoint()));
}
