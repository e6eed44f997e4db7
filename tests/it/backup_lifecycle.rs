//! Backup lifecycle against real PostgreSQL: a failed automatic backup is retried with
//! backoff inside its slot; a `backup create` killed mid-way leaves a `running` record with
//! a lease that the next sweep marks failed and retention purges; the sweep removes old
//! temp files and empty directories from the fs repository and leaves fresh ones; the S3
//! sweep aborts only old multipart uploads under its prefix.

use std::io::BufRead;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::harness::{self, stderr, Pg, Tidemark};

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

fn list(tm: &Tidemark) -> Vec<serde_json::Value> {
    let v = json(&tm.cmd(&["backup", "list", "--output", "json"]).output().unwrap());
    v.as_array().cloned().unwrap_or_default()
}

/// [`list`], or none while the cluster's record is not there yet (the daemon's first backup
/// or archived segment writes it; until then the repository "holds no cluster", or, with
/// its directory made and the record not yet in it, "no cluster 'NAME'").
fn list_once_there(tm: &Tidemark) -> Vec<serde_json::Value> {
    let o = tm.cmd(&["backup", "list", "--output", "json"]).output().unwrap();
    let err = stderr(&o);
    if !o.status.success() && (err.contains("holds no cluster") || err.contains("no cluster 'retry'")) {
        return Vec::new();
    }
    json(&o).as_array().cloned().unwrap_or_default()
}

fn state_of(tm: &Tidemark, id: &str) -> Option<String> {
    list(tm).iter().find(|b| b["id"] == id).and_then(|b| b["state"].as_str().map(str::to_string))
}

/// Sets a path's mtime `hours` back (as a writer killed that long ago would have left it).
fn age(p: &Path, hours: u32) {
    harness::run_ok(std::process::Command::new("touch").arg("-h").arg("-d").arg(format!("{hours} hours ago")).arg(p));
}

#[test]
fn failed_automatic_backup_is_retried_within_its_slot() {
    let repo = harness::postgres_dir("repo");
    let mut pg = Pg::init();
    let mut tm = Tidemark::for_pg("retry", &Tidemark::fs_url(repo.path()), None, &pg);
    pg.archive_to(&tm.config);
    pg.start();
    pg.sql("create table t as select g from generate_series(1, 1000) g");
    // The first two attempts fail after their record is written (the failed records used to
    // hold the slot for a day); a timer minute of 200 ms makes the backoff 0.2 s, 0.4 s.
    tm.daemon_env.push(("TIDEMARK_FAILPOINT".into(), "backup-copy:error:2".into()));
    tm.daemon_env.push(("TDMK_TEST_MINUTE_MS".into(), "200".into()));
    tm.start_daemon();
    let completed = |tm: &Tidemark| {
        list_once_there(tm).iter().filter(|b| b["kind"] == "automatic" && b["state"] == "completed").count()
    };
    harness::wait_for("the retried automatic backup", Duration::from_secs(120), || completed(&tm) == 1);
    let log = tm.daemon_log();
    assert!(log.contains("failpoint backup-copy: injected failure"), "{log}");
    assert!(log.contains("attempt=1") && log.contains("attempt=2") && !log.contains("attempt=3"), "{log}");
    assert!(log.contains("retry_in_s=0.2") && log.contains("retry_in_s=0.4"), "{log}");
    // No failed record counts for the slot, and the completed one does: no more attempts
    // over the next seven ticks (an absence, so there is no condition to wait on).
    let ticks = || tm.daemon_log().matches("automatic backup completed").count();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ticks(), 1, "{}", tm.daemon_log());
    assert_eq!(completed(&tm), 1);
    tm.stop_daemon();
    pg.stop();
}

/// The daemon's periodic work runs as separate tasks: while its automatic backup is held
/// inside its copy (an EBS backup waits hours for its snapshots), the hourly retention
/// sweep still runs on time. A timer minute of 200 ms makes the hour 12 s.
#[test]
fn a_backup_held_in_its_copy_does_not_hold_up_the_sweep() {
    let repo = harness::postgres_dir("repo");
    let mut pg = Pg::init();
    let mut tm = Tidemark::for_pg("apart", &Tidemark::fs_url(repo.path()), None, &pg);
    pg.archive_to(&tm.config);
    pg.start();
    let go = repo.path().join("go-ahead");
    tm.daemon_env.push(("TIDEMARK_FAILPOINT".into(), format!("backup-copy:pause-until:{}", go.display())));
    tm.daemon_env.push(("TDMK_TEST_MINUTE_MS".into(), "200".into()));
    tm.start_daemon();
    harness::wait_for("the automatic backup to reach its pause", Duration::from_secs(60), || {
        tm.daemon_log().contains("failpoint backup-copy: paused")
    });
    let sweeps = || tm.daemon_log().matches("retention sweep done").count();
    let before = sweeps();
    harness::wait_for("two more sweeps while the backup is held", Duration::from_secs(90), || sweeps() >= before + 2);
    let running = list(&tm).iter().filter(|b| b["kind"] == "automatic" && b["state"] == "running").count();
    assert_eq!(running, 1, "the held backup must still be running: {}", tm.daemon_log());
    std::fs::write(&go, b"").unwrap();
    harness::wait_for("the released backup to complete", Duration::from_secs(120), || {
        list(&tm).iter().any(|b| b["kind"] == "automatic" && b["state"] == "completed")
    });
    tm.stop_daemon();
    pg.stop();
}

#[test]
fn killed_backup_is_marked_failed_and_purged_and_leftovers_are_swept() {
    let repo = harness::postgres_dir("repo");
    let mut pg = Pg::init();
    let mut tm = Tidemark::for_pg("killed", &Tidemark::fs_url(repo.path()), None, &pg);
    pg.archive_to(&tm.config);
    pg.start();
    pg.sql("create table t as select g from generate_series(1, 1000) g");

    // A manual backup paused inside its copy, then killed as kill -9 would.
    let mut child = tm
        .cmd_as_postgres(&["backup", "create", "--wait", "--output", "json"])
        .env("TIDEMARK_FAILPOINT", "backup-copy:pause")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let paused = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if l.contains("failpoint backup-copy: paused") => break true,
            Ok(l) => seen.push(l),
            Err(_) => break false,
        }
    };
    assert!(paused, "backup create never reached its pause: {seen:?}");
    let running: Vec<serde_json::Value> =
        list(&tm).into_iter().filter(|b| b["kind"] == "manual" && b["state"] == "running").collect();
    assert_eq!(running.len(), 1, "{running:?}");
    let id = running[0]["id"].as_str().unwrap().to_string();
    let shown = json(&tm.cmd(&["backup", "show", &id, "--output", "json"]).output().unwrap());
    assert_eq!(shown["lease"]["pid"].as_u64(), Some(u64::from(child.id())), "{shown}");
    assert!(shown["lease"]["token"].as_str().is_some_and(|t| t.len() == 16), "{shown}");
    assert!(shown["lease"]["heartbeat_at"].as_str().is_some(), "{shown}");
    child.kill().unwrap();
    child.wait().unwrap();
    // Nothing finishes it: it stays running until a sweep.
    assert_eq!(state_of(&tm, &id).as_deref(), Some("running"));

    // Leftovers of killed writers, old and fresh, in the repository.
    let wal_dir = repo.path().join("clusters/killed/wal/00000001");
    let old_tmp = wal_dir.join(".tidemark-tmp.00112233deadbeef");
    let new_tmp = wal_dir.join(".tidemark-tmp.fresh0000fresh00");
    std::fs::create_dir_all(&wal_dir).unwrap();
    std::fs::write(&old_tmp, vec![7u8; 4096]).unwrap();
    std::fs::write(&new_tmp, vec![7u8; 4096]).unwrap();
    let old_empty = repo.path().join("clusters/killed/backups/20200101T000000Z/data");
    let new_empty = repo.path().join("clusters/killed/backups/20200102T000000Z/data");
    std::fs::create_dir_all(&old_empty).unwrap();
    std::fs::create_dir_all(&new_empty).unwrap();
    harness::chown_postgres(repo.path());
    age(&old_tmp, 2);
    age(&old_empty, 3);
    age(old_empty.parent().unwrap(), 3);
    age(new_empty.parent().unwrap(), 3);

    // The next backup's sweep: the dead holder's backup is failed, with the reason; the old
    // leftovers are gone, the fresh ones stay; the root stays.
    let o = tm.cmd_as_postgres(&["backup", "create", "--wait", "--output", "json"]).output().unwrap();
    let next = json(&o)["id"].as_str().unwrap().to_string();
    let shown = json(&tm.cmd(&["backup", "show", &id, "--output", "json"]).output().unwrap());
    assert_eq!(shown["state"], "failed", "{shown}");
    assert!(shown["error"].as_str().is_some_and(|e| e.contains("abandoned") && e.contains("is gone")), "{shown}");
    assert!(!old_tmp.exists(), "an old temp file survived the sweep");
    assert!(new_tmp.exists(), "a fresh temp file was removed");
    assert!(!old_empty.exists() && !old_empty.parent().unwrap().exists(), "old empty directories survived");
    assert!(new_empty.exists(), "a fresh empty directory was removed");
    assert!(wal_dir.exists() && repo.path().exists());
    // A failed backup is never restored from.
    let o = tm.cmd(&["verify"]).output().unwrap();
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));

    // The daemon's sweep applies retention: the failed manual backup is purged, the
    // completed ones stay.
    tm.start_daemon();
    harness::wait_for("the failed backup's purge", Duration::from_secs(120), || state_of(&tm, &id).is_none());
    assert!(!repo.path().join(format!("clusters/killed/backups/{id}/manifest.json")).exists());
    assert_eq!(state_of(&tm, &next).as_deref(), Some("completed"));
    // The sweep's summary is logged after the purge has removed the record.
    harness::wait_for("the retention summary", Duration::from_secs(30), || {
        tm.daemon_log().contains(&format!("killed/{id}"))
    });
    tm.stop_daemon();
    pg.stop();
}

#[test]
fn backup_create_returns_at_once_with_the_daemon_and_takes_it_here_without() {
    let repo = harness::postgres_dir("repo");
    let mut pg = Pg::init();
    let mut tm = Tidemark::for_pg("handed", &Tidemark::fs_url(repo.path()), None, &pg);
    pg.archive_to(&tm.config);
    pg.start();
    pg.sql("create table t as select g from generate_series(1, 1000) g");
    // The daemon's backups hold inside their copy until the test says go: "returns before it
    // completes" is then certain, not a race with a small database.
    let go = tm.dir.path().join("go");
    tm.daemon_env.push(("TIDEMARK_BACKUP_SCHEDULE".into(), "off".into()));
    tm.daemon_env.push(("TIDEMARK_FAILPOINT".into(), format!("backup-copy:pause-until:{}", go.display())));
    tm.start_daemon();
    let o = tm.cmd_as_postgres(&["--output", "json", "backup", "create"]).output().unwrap();
    let started = json(&o);
    assert_eq!((&started["state"], &started["taken_by"]), (&"running".into(), &"daemon".into()), "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    assert_eq!(state_of(&tm, &id).as_deref(), Some("running"));
    let o = tm.cmd_as_postgres(&["backup", "create"]).output().unwrap();
    // Two never run at once: neither through the daemon nor in the foreground (the lease).
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("never run at once"), "{}", stderr(&o));
    let o = tm.cmd_as_postgres(&["backup", "create", "--wait"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("backup {id} of cluster handed is already running")), "{}", stderr(&o));
    // Go: the daemon finishes it.
    std::fs::write(&go, b"").unwrap();
    harness::wait_for("the daemon's backup to complete", Duration::from_secs(120), || {
        state_of(&tm, &id).as_deref() == Some("completed")
    });
    // Logged once the completed record is written, so it may trail what `backup list` shows.
    harness::wait_for("the daemon to log the completed backup", Duration::from_secs(30), || {
        tm.daemon_log().contains("manual backup completed")
    });
    // No daemon: the backup is taken here, and says so.
    tm.stop_daemon();
    let o = tm.cmd_as_postgres(&["--output", "json", "backup", "create"]).output().unwrap();
    let here = json(&o);
    assert!(stderr(&o).contains("no daemon answers") && stderr(&o).contains("foreground"), "{}", stderr(&o));
    assert_eq!(here["state"], "completed", "{here}");
    let done = list(&tm).iter().filter(|b| b["state"] == "completed").count();
    assert_eq!(done, 2);
    pg.stop();
}

#[tokio::test]
async fn s3_sweep_aborts_only_old_multipart_uploads_under_its_prefix() {
    let moto = harness::Moto::start();
    moto.create_bucket("sweep").await;
    let opts = tidemark::store::StoreOptions {
        region: Some("us-east-1".into()),
        endpoint: Some(moto.endpoint()),
        multipart_threshold: None,
    };
    let s = tidemark::store::s3::S3Store::new("sweep", "repo", &opts).await;
    for key in ["repo/clusters/c/backups/b/data/0001", "other/clusters/c/x"] {
        s.client().create_multipart_upload().bucket("sweep").key(key).send().await.unwrap();
    }
    let uploads = || async {
        let page = s.client().list_multipart_uploads().bucket("sweep").send().await.unwrap();
        let mut keys: Vec<String> = page.uploads().iter().filter_map(|u| u.key().map(str::to_string)).collect();
        keys.sort();
        keys
    };
    // moto reports every upload as initiated at 2010-11-10T20:48:33Z, so the ages are set
    // through the cutoff. Started after it: a writer may still be uploading, both stay.
    let before_2010 = 1_262_304_000; // 2010-01-01T00:00:00Z
    assert_eq!(s.abort_uploads_before(before_2010).await.unwrap(), 0);
    assert_eq!(uploads().await.len(), 2);
    // Started before it: only the one under this store's prefix is aborted.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert_eq!(s.abort_uploads_before(now).await.unwrap(), 1);
    assert_eq!(uploads().await, vec!["other/clusters/c/x".to_string()]);
    // The trait's sweep (cutoff a day ago) finds nothing left under the prefix.
    let swept = tidemark::store::ObjectStore::sweep_leftovers(&s).await.unwrap();
    assert_eq!(swept, tidemark::store::Leftovers::default());
    assert_eq!(uploads().await.len(), 1);
}
