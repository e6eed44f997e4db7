//! Retention and lifecycle against real PostgreSQL: policy defaults, crash-safe purges
//! (kill -9 at each step leaves `verify` clean), deprovision, orphaned backups, and a
//! destructive policy change that needs --yes.

use std::process::Output;

use crate::harness::{self, stderr, stdout, Pg, Tidemark};

fn backup(tm: &Tidemark) -> String {
    let o = tm
        .cmd_as_postgres(&["backup", "create", "--wait", "--output", "json"])
        .env("TIDEMARK_BACKUP_BUNDLE_MIB", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["bundles"].as_u64().unwrap() >= 3, "{v}");
    v["id"].as_str().unwrap().to_string()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

#[test]
fn retention_lifecycle() {
    let repo = harness::postgres_dir("repo");
    let mut pg = Pg::init();
    let tm = Tidemark::for_pg("life", &Tidemark::fs_url(repo.path()), None, &pg);
    pg.archive_to(&tm.config);
    pg.start();
    pg.sql("create table t as select g from generate_series(1, 100000) g");

    // A fresh repository has the default policy.
    let p = json(&tm.cmd(&["policy", "show", "--output", "json"]).output().unwrap());
    assert_eq!(
        p,
        serde_json::json!({"daily": 30, "monthly": 12, "yearly": 6, "copy_regions": "none", "keep_final": true, "pitr_enabled": true, "pitr_days": 1})
    );

    // A purge killed at each step leaves nothing half-listed: verify stays clean, and the
    // interrupted purge finishes when run again.
    let keep = backup(&tm);
    for fp in ["purge-after-mark", "purge-mid-data", "purge-before-record"] {
        let id = backup(&tm);
        let o = tm.cmd_as_postgres(&["backup", "purge", &id, "--yes"]).env("TIDEMARK_FAILPOINT", fp).output().unwrap();
        assert!(!o.status.success() && stderr(&o).contains(fp), "{fp}: {}", stderr(&o));
        let o = tm.cmd(&["verify"]).output().unwrap();
        assert!(o.status.success(), "verify after crash at {fp}: {}{}", stdout(&o), stderr(&o));
        let list = json(&tm.cmd(&["backup", "list", "--output", "json"]).output().unwrap());
        let entry = list.as_array().unwrap().iter().find(|b| b["id"] == id.as_str()).cloned();
        assert_eq!(entry.map(|e| e["state"].clone()), Some(serde_json::json!("purging")), "{fp}: {list}");
        let o = tm.cmd_as_postgres(&["backup", "purge", &id, "--yes"]).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let list = json(&tm.cmd(&["backup", "list", "--output", "json"]).output().unwrap());
        assert!(!list.as_array().unwrap().iter().any(|b| b["id"] == id.as_str()), "{list}");
        assert!(!repo.path().join(format!("clusters/life/backups/{id}")).join("manifest.json").exists());
        let o = tm.cmd(&["verify", "--deep"]).output().unwrap();
        assert!(o.status.success(), "{}", stdout(&o));
    }
    // Purge needs confirmation.
    let o = tm.cmd(&["backup", "purge", &keep]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    // Deprovision: final backup (keep_final on, automatic backups enabled), cluster marked,
    // manual and final kept and listed as orphaned.
    let o = tm.cmd(&["deprovision"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "deprovision without --yes: {}", stderr(&o));
    let d = json(&tm.cmd_as_postgres(&["deprovision", "--yes", "--output", "json"]).output().unwrap());
    let final_id = d["final_backup"].as_str().expect("final backup taken").to_string();
    let orphaned = json(&tm.cmd(&["backup", "orphaned", "--output", "json"]).output().unwrap());
    let ids: Vec<&str> = orphaned.as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&keep.as_str()) && ids.contains(&final_id.as_str()), "{orphaned}");
    let kinds: Vec<&str> = orphaned.as_array().unwrap().iter().map(|b| b["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"final") && kinds.contains(&"manual") && !kinds.contains(&"automatic"), "{orphaned}");

    // Turning keep_final off deletes the final backup: dry-run lists it, the change needs --yes.
    let dry =
        json(&tm.cmd(&["policy", "set", "--keep-final", "false", "--dry-run", "--output", "json"]).output().unwrap());
    let would: Vec<&str> = dry["would_delete"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(would, vec![final_id.as_str()], "{dry}");
    let o = tm.cmd(&["policy", "set", "--keep-final", "false"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("WARNING") && stderr(&o).contains(&final_id), "{}", stderr(&o));
    let p = json(&tm.cmd(&["policy", "show", "--output", "json"]).output().unwrap());
    assert_eq!(p["keep_final"], true, "policy changed without --yes");
    let wal_listed = dry["would_delete_wal"].as_array().expect("dry-run lists WAL deletions too").len();
    let o =
        tm.cmd_as_postgres(&["policy", "set", "--keep-final", "false", "--yes", "--output", "json"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let applied: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        applied["applied"]["wal_objects"].as_u64(),
        Some(wal_listed as u64),
        "dry-run listed what was deleted: {applied}"
    );
    let orphaned = json(&tm.cmd(&["backup", "orphaned", "--output", "json"]).output().unwrap());
    let ids: Vec<&str> = orphaned.as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![keep.as_str()], "manual backups survive every policy: {orphaned}");
    let o = tm.cmd(&["verify"]).output().unwrap();
    assert!(o.status.success(), "{}", stdout(&o));
    pg.stop();
}

#[test]
fn daemon_takes_the_automatic_backup_when_one_is_due() {
    let repo = harness::postgres_dir("repo");
    let mut pg = Pg::init();
    let mut tm = Tidemark::for_pg("sched", &Tidemark::fs_url(repo.path()), None, &pg);
    pg.archive_to(&tm.config);
    pg.start();
    pg.sql("create table t as select g from generate_series(1, 1000) g");
    // No automatic backup yet: the first scheduler tick takes one (the catch-up).
    tm.start_daemon();
    let automatic = || {
        let o = tm.cmd(&["backup", "list", "--output", "json"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v.as_array()
            .map(|a| a.iter().filter(|b| b["kind"] == "automatic" && b["state"] == "completed").count())
            .unwrap_or(0)
    };
    harness::wait_for("the daemon's automatic backup", std::time::Duration::from_secs(120), || automatic() == 1);
    // Excluding the cluster leaves the existing automatic backup alone.
    let o = tm.cmd_as_postgres(&["automatic-backups", "disable"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let st = json(&tm.cmd(&["status", "--output", "json"]).output().unwrap());
    assert!(st["daemon"]["stored"].as_u64().unwrap() >= 1, "{st}\n{}", tm.daemon_log());
    assert_eq!(automatic(), 1);
    tm.stop_daemon();
    pg.stop();
}

#[test]
fn daemon_start_after_a_recent_backup_waits_for_the_scheduled_time() {
    let repo = harness::postgres_dir("repo");
    let mut pg = Pg::init();
    let mut tm = Tidemark::for_pg("sched2", &Tidemark::fs_url(repo.path()), None, &pg);
    pg.archive_to(&tm.config);
    pg.start();
    let o = tm.cmd_as_postgres(&["backup", "create", "--wait"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    tm.start_daemon();
    harness::wait_for("the scheduler's first decision", std::time::Duration::from_secs(60), || {
        tm.daemon_log().contains("waits for its next scheduled time")
    });
    let v = json(&tm.cmd(&["backup", "list", "--output", "json"]).output().unwrap());
    let kinds: Vec<&str> = v.as_array().unwrap().iter().map(|b| b["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["manual"], "no automatic backup at start after a recent one");
    // status says when the automatic backup runs.
    let st = tm.cmd(&["--output", "json", "status"]).output().unwrap();
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(st["next_backup"].is_string(), "{st}");
    tm.stop_daemon();
    pg.stop();
}
