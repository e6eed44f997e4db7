//! An archive that grows: real PostgreSQL 15 with 1 MiB segments and 5,000 segments archived
//! after a backup. `window`, `status` and a restore to a time in the middle work under
//! `ulimit -n 256` and give the exact rows; the commit-time index rolled up, deleted in
//! part, rebuilt, or cut off by kill -9 in the middle of a rebuild still answers the same.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::{self, stderr, Pg, Restored, Tidemark};

const SEGMENTS: u32 = 5_000;

/// `tidemark --config CFG args...` as root with at most 256 open files.
fn limited(tm: &Tidemark, args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", "ulimit -n 256 && exec \"$@\"", "sh"]);
    c.arg(harness::bin()).arg("--config").arg(&tm.config).args(args);
    c.env("AWS_EC2_METADATA_DISABLED", "true");
    c
}

fn ok_json(tm: &Tidemark, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let o = limited(tm, &all).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}\n{}", stderr(&o), String::from_utf8_lossy(&o.stdout));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&o.stdout)))
}

fn window(tm: &Tidemark) -> serde_json::Value {
    ok_json(tm, &["window"])
}

/// Index objects of the cluster under `root`: (summary, range objects, per-segment summaries).
fn index_files(root: &Path) -> (Option<std::path::PathBuf>, Vec<std::path::PathBuf>, Vec<std::path::PathBuf>) {
    let dir = root.join("clusters/big/wal-index/00000001");
    let summary = Some(dir.join("summary")).filter(|p| p.exists());
    let list = |d: &Path| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .map(|r| r.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let ranges = list(&dir.join("range"));
    let singles = list(&dir).into_iter().filter(|p| p.file_name().is_some_and(|n| n.len() == 24)).collect();
    (summary, ranges, singles)
}

#[test]
fn five_thousand_segments_after_a_backup() {
    let mut pg = Pg::init_with(None, &["--wal-segsize=1"]);
    let repo = harness::postgres_dir("repo");
    let root = repo.path().join("r");
    let mut tm = Tidemark::for_pg("big", &Tidemark::fs_url(&root), None, &pg);
    tm.daemon_env.push(("TIDEMARK_BACKUP_SCHEDULE".into(), "off".into()));
    pg.archive_to(&tm.config);
    pg.conf("track_commit_timestamp = on\nwal_keep_size = '64MB'\nmax_wal_size = '64MB'\n");
    pg.start();
    tm.start_daemon();
    pg.sql("create table t(id int primary key)");
    let o = tm.cmd_as_postgres(&["backup", "create", "--wait", "--output", "json"]).output().unwrap();
    assert!(o.status.success(), "backup: {}", stderr(&o));

    // One commit per segment: each row's commit is the only one in its segment.
    pg.sql(&format!(
        "do $$ begin for i in 1..{SEGMENTS} loop insert into t values (i); commit; perform pg_switch_wal(); end loop; end $$"
    ));
    pg.switch_wal_archived(Duration::from_secs(900));
    let middle = SEGMENTS / 2;
    let mark = pg.sql(&format!(
        "select to_char(pg_xact_commit_timestamp(xmin) at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') from t where id = {middle}"
    ));
    tm.stop_daemon();
    let archived = std::fs::read_dir(root.join("clusters/big/wal/00000001")).unwrap().count();
    assert!(archived > SEGMENTS as usize, "only {archived} WAL objects archived");

    // Per-segment summaries first, then rolled up: the same window, and status is ok.
    let before = window(&tm);
    assert!(before["timelines"][0]["latest"].as_str().is_some_and(|l| l > mark.as_str()), "{before} {mark}");
    let o = limited(&tm, &["wal-index", "roll-up", "--output", "json"]).output().unwrap();
    assert!(o.status.success(), "roll-up: {}", stderr(&o));
    let (summary, ranges, singles) = index_files(&root);
    assert!(summary.is_some() && ranges.len() >= 19, "{} range objects", ranges.len());
    assert!(singles.len() <= 256 + 1, "{} per-segment summaries left after the roll-up", singles.len());
    assert_eq!(window(&tm), before);
    let st = ok_json(&tm, &["status"]);
    assert_eq!(st["verdict"], "ok", "{st}");
    assert_eq!(ok_json(&tm, &["verify"])["ok"], true);

    // A deleted summary, range object or per-segment summary: verify says so, a rebuild
    // brings back the same answers.
    let (summary, ranges, singles) = index_files(&root);
    std::fs::remove_file(summary.unwrap()).unwrap();
    std::fs::remove_file(&ranges[3]).unwrap();
    for s in singles.iter().take(5) {
        std::fs::remove_file(s).unwrap();
    }
    assert_ne!(window(&tm), before, "the index lost blocks but the window did not change");
    let o = limited(&tm, &["verify", "--output", "json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["timelines"][0]["unindexed_count"].as_u64().unwrap() >= 256, "{v}");
    let rebuilt = ok_json(&tm, &["wal-index", "rebuild"]);
    assert!(rebuilt["1"]["summarized"].as_u64().unwrap() >= 256 + 5, "{rebuilt}");
    assert_eq!(window(&tm), before);
    assert_eq!(ok_json(&tm, &["verify"])["ok"], true);

    // kill -9 in the middle of rebuilds, at different points: the index still answers the same.
    for delay_ms in [30u64, 120, 400] {
        let (summary, _, _) = index_files(&root);
        std::fs::remove_file(summary.unwrap()).unwrap();
        let mut child = limited(&tm, &["wal-index", "rebuild"]).spawn().unwrap();
        // Fault injection at a point in time, not a wait for a condition.
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let o = limited(&tm, &["wal-index", "rebuild"]).output().unwrap();
        assert!(o.status.success(), "rebuild after kill: {}", stderr(&o));
        assert_eq!(window(&tm), before, "after a rebuild killed at {delay_ms} ms");
    }

    // A restore to the middle under the same limit: exactly the rows committed by then.
    let scratch = harness::postgres_dir("restore");
    let dir = scratch.path().join("mid");
    let port = harness::free_port().to_string();
    let o = limited(
        &tm,
        &["restore", "--target-dir", dir.to_str().unwrap(), "--start", "--port", &port, "--target-time", &mark],
    )
    .output()
    .unwrap();
    let r = Restored { dir: dir.clone(), sock: pg.sock.clone(), port: port.parse().unwrap(), bin: pg.bin.clone() };
    assert!(
        o.status.success(),
        "restore: {}\n{}",
        stderr(&o),
        std::fs::read_to_string(dir.join("tidemark-restore.log")).unwrap_or_default()
    );
    assert_eq!(r.sql("select count(*) || ':' || max(id) from t"), format!("{middle}:{middle}"));
}
