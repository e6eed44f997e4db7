//! One history per handle, against real PostgreSQL 15 and the fs store: a cold copy of a
//! primary archiving under the same handle (split brain), two new databases racing for one
//! fresh handle, a planted segment that does not chain, and restores that prove their end.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::harness::{self, stderr, stdout, Pg, Restored, Tidemark};

const CHECKSUM: &str =
    "select count(*) || ':' || md5(coalesce(string_agg(id::text || ':' || who, ',' order by id), '')) from t";

fn restore_latest(tm: &Tidemark, pg: &Pg, dir: &Path) -> (Output, Restored) {
    harness::restore_started(tm, pg, dir, &["--latest"])
}

/// A server with 1 MiB segments archiving through `tm`'s config, with a daemon.
fn server(handle: &str, url: &str) -> (Pg, Tidemark) {
    server_at(handle, url, None)
}

/// `server`, with an S3 `endpoint` for the repository.
fn server_at(handle: &str, url: &str, endpoint: Option<&str>) -> (Pg, Tidemark) {
    let pg = Pg::init_with(None, &["--wal-segsize=1"]);
    let mut tm = Tidemark::for_pg(handle, url, endpoint, &pg);
    // No automatic backup at daemon start: each server's WAL moves only when the test says.
    tm.daemon_env.push(("TIDEMARK_BACKUP_SCHEDULE".into(), "off".into()));
    pg.archive_to(&tm.config);
    (pg, tm)
}

/// Inserts `n` rows tagged `who` and closes the segment.
fn write_and_switch(pg: &Pg, who: &str, n: u32) {
    pg.sql(&format!(
        "insert into t select (select coalesce(max(id), 0) from t) + g, '{who}' from generate_series(1, {n}) g"
    ));
    pg.sql("select pg_switch_wal()");
}

/// The name of the segment `k` after `name` (same timeline, 1 MiB segments).
fn nth_after(name: &str, k: u32) -> String {
    format!("{}{:08X}", &name[..16], u32::from_str_radix(&name[16..], 16).unwrap() + k)
}

fn archiver_failures(pg: &Pg) -> i64 {
    pg.sql("select failed_count from pg_stat_archiver").parse().unwrap()
}

fn index_key(repo: &Path, handle: &str, seg: &str) -> PathBuf {
    repo.join(format!("clusters/{handle}/wal-index/00000001/{seg}"))
}

#[test]
fn a_cold_copy_under_the_same_handle_never_mixes_histories() {
    let repo = harness::postgres_dir("repo");
    let url = Tidemark::fs_url(repo.path());
    for round in 0..5 {
        let handle = format!("sb{round}");
        let (mut primary, mut tm_p) = server(&handle, &url);
        primary.start();
        primary.sql("create table t(id int primary key, who text)");
        write_and_switch(&primary, "both", 1000);
        let o = tm_p.cmd_as_postgres(&["backup", "create", "--wait"]).output().unwrap();
        assert!(o.status.success(), "backup: {}", stderr(&o));
        primary.stop();
        // The copy: same system identifier, same history so far, its own daemon and config
        // under the same handle (the same repository and keyring).
        let mut copy = primary.cold_copy();
        let mut tm_c = Tidemark::for_pg(&handle, &url, None, &copy);
        tm_c.daemon_env.push(("TIDEMARK_BACKUP_SCHEDULE".into(), "off".into()));
        std::fs::copy(&tm_p.keyring, &tm_c.keyring).unwrap();
        copy.archive_to(&tm_c.config);
        primary.start();
        copy.start();
        // Whoever archives the first diverging segment wins; alternate who goes first.
        let (winner, loser, tm_w, tm_l) = if round % 2 == 0 {
            (&primary, &copy, &mut tm_p, &mut tm_c)
        } else {
            (&copy, &primary, &mut tm_c, &mut tm_p)
        };
        tm_w.start_daemon();
        let first = winner.sql("select pg_walfile_name(pg_current_wal_lsn())");
        write_and_switch(winner, "winner", 500);
        winner.wait_archived(&first, Duration::from_secs(60));
        // The loser's segments pile up while its archive_command (no daemon yet: a direct
        // push) refuses the first; then its daemon finds them all ready at once and pushes
        // them ahead in parallel, while the winner has not archived their predecessors yet.
        for _ in 0..4 {
            write_and_switch(loser, "loser", 300);
        }
        harness::wait_for("the loser's archive_command to fail", Duration::from_secs(60), || {
            archiver_failures(loser) > 0
        });
        tm_l.start_daemon();
        let later: Vec<String> = (1..4).map(|k| nth_after(&first, k)).collect();
        harness::wait_for("the loser's daemon to try its later segments", Duration::from_secs(60), || {
            let log = tm_l.daemon_log();
            later.iter().all(|n| log.contains(&format!("file={n}")))
        });
        for n in &later {
            assert!(
                !tm_l.daemon_log().contains(&format!("archived file={n}")),
                "round {round}: the loser archived {n} ahead of its refused predecessor:\n{}",
                tm_l.daemon_log()
            );
        }
        // The winner goes on archiving those names: nothing of the loser's is in its way.
        write_and_switch(winner, "winner", 500);
        write_and_switch(winner, "winner", 500);
        winner.wait_archived(&later[1], Duration::from_secs(60));
        let (tm_w, tm_l) = (&*tm_w, &*tm_l);
        let log = loser.log();
        assert!(
            log.contains("a different file is already archived under this name")
                || log.contains("does not continue the archived WAL"),
            "round {round}: the loser's archive_command must say why: {log}"
        );
        // The loser's daemon stopped pushing ahead on that timeline and says so.
        let stats = tm_l.daemon_stats();
        assert!(stats["other_history"].as_u64().unwrap_or(0) > 0, "round {round}: {stats}");
        let st = tm_l.cmd(&["--output", "json", "status"]).output().unwrap();
        assert_eq!(st.status.code(), Some(1), "round {round}: status of the loser must not be ok");
        assert!(stdout(&st).contains("critical") && stdout(&st).contains("another history"), "{}", stdout(&st));
        // One history: verify finds no break.
        let v = tm_w.cmd(&["verify"]).output().unwrap();
        assert!(
            v.status.success(),
            "round {round}: verify: {}{}\nwinner's daemon:\n{}\nloser's daemon:\n{}",
            stdout(&v),
            stderr(&v),
            tm_w.daemon_log(),
            tm_l.daemon_log()
        );
        let want = winner.sql(CHECKSUM);
        let scratch = harness::postgres_dir("restore");
        if round == 0 {
            planted_segment_is_caught(&repo, &handle, tm_w, tm_l, loser, &primary, &scratch);
        }
        // (The restored cluster keeps the backup's socket directory: the primary's.)
        let (o, r) = restore_latest(tm_w, &primary, &scratch.path().join("latest"));
        assert!(o.status.success(), "round {round}: restore: {}{}", stdout(&o), stderr(&o));
        assert_eq!(r.sql(CHECKSUM), want, "round {round}: the restore must hold exactly the winner's rows");
        assert_eq!(r.sql("select count(*) from t where who = 'loser'"), "0");
        drop(r);
        tm_p.stop_daemon();
        tm_c.stop_daemon();
    }
}

/// A segment of the loser's history planted in the archive (as a pusher without chain
/// checks, or a crash window, could) makes verify fail and `--latest` refuse; without its
/// summary the plan cannot see it, and the restore's end check fails instead.
fn planted_segment_is_caught(
    repo: &tempfile::TempDir,
    handle: &str,
    tm_w: &Tidemark,
    tm_l: &Tidemark,
    loser: &Pg,
    backup_source: &Pg,
    scratch: &tempfile::TempDir,
) {
    let wal_dir = repo.path().join(format!("clusters/{handle}/wal/00000001"));
    let last = std::fs::read_dir(&wal_dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_string))
        .filter(|n| n.len() == 24)
        .max()
        .unwrap();
    let next = format!("{}{:08X}", &last[..16], u32::from_str_radix(&last[16..], 16).unwrap() + 1);
    let planted = loser.data.join("pg_wal").join(&next);
    assert!(planted.is_file(), "the loser wrote {next}");
    // Hide the predecessor's summary (its own object, or the roll-up summary naming its
    // block, where the daemon writes it) so the push cannot see the break, then plant.
    let hide: Vec<PathBuf> = [index_key(repo.path(), handle, &last), index_key(repo.path(), handle, "summary")]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    assert!(!hide.is_empty(), "no summary of {last} to hide");
    for p in &hide {
        std::fs::rename(p, p.with_extension("hidden")).unwrap();
    }
    let mut direct = tm_l.cmd_as_postgres(&["wal-push", planted.to_str().unwrap()]);
    let o = direct.env("TIDEMARK_DAEMON_SOCKET", "/nonexistent/socket").output().unwrap();
    assert!(o.status.success(), "planting {next}: {}", stderr(&o));
    for p in &hide {
        std::fs::rename(p.with_extension("hidden"), p).unwrap();
    }

    let v = tm_w.cmd(&["verify"]).output().unwrap();
    assert_eq!(v.status.code(), Some(1), "verify must fail: {}", stdout(&v));
    assert!(stdout(&v).contains("history breaks") && stdout(&v).contains(&next), "{}", stdout(&v));
    let o = tm_w
        .cmd(&["restore", "--target-dir", scratch.path().join("p1").to_str().unwrap(), "--latest"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("cannot restore --latest") && stderr(&o).contains("does not continue"),
        "{}",
        stderr(&o)
    );
    assert!(!scratch.path().join("p1").exists(), "a refused plan writes nothing");

    // Without the planted segment's summary, the restore reads the segments archived after
    // the index's end itself: the plan refuses the same way, before anything is written.
    std::fs::remove_file(index_key(repo.path(), handle, &next)).unwrap();
    let dir = scratch.path().join("p2");
    let (o, r) = restore_latest(tm_w, backup_source, &dir);
    assert_eq!(o.status.code(), Some(1), "a restore short of the archive's end must fail: {}", stdout(&o));
    assert!(stderr(&o).contains("does not continue"), "{}", stderr(&o));
    assert!(!dir.exists(), "a refused plan writes nothing");
    drop(r);
    // The planted segment removed (no backup needs it), the archive is one history again.
    let o = tm_w.cmd_as_postgres(&["wal-remove", &next, "--yes"]).output().unwrap();
    assert!(o.status.success() && stdout(&o).contains("removed"), "{}{}", stdout(&o), stderr(&o));
    assert!(!wal_dir.join(&next).exists());
    let v = tm_w.cmd(&["verify"]).output().unwrap();
    assert!(v.status.success(), "{}", stdout(&v));
}

#[test]
fn two_new_databases_racing_for_one_handle_leave_one_identity() {
    let repo = harness::postgres_dir("repo");
    let url = Tidemark::fs_url(repo.path());
    for round in 0..5 {
        let handle = format!("race{round}");
        let (mut a, tm_a) = server(&handle, &url);
        let (mut b, tm_b) = server(&handle, &url);
        std::fs::copy(&tm_a.keyring, &tm_b.keyring).unwrap();
        a.start();
        b.start();
        // Both archive their first segment at the same moment, without daemons: two
        // wal-push processes claim the fresh handle at once.
        std::thread::scope(|s| {
            s.spawn(|| a.sql("select pg_switch_wal()"));
            s.spawn(|| b.sql("select pg_switch_wal()"));
        });
        let sysid = |pg: &Pg| {
            let o = harness::run_ok(std::process::Command::new(harness::pg_bin().join("pg_controldata")).arg(&pg.data));
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines()
                .find_map(|l| l.strip_prefix("Database system identifier:"))
                .map(|v| v.trim().to_string())
                .unwrap()
        };
        let (id_a, id_b) = (sysid(&a), sysid(&b));
        harness::wait_for("one server to archive", Duration::from_secs(60), || {
            a.sql("select archived_count from pg_stat_archiver") != "0"
                || b.sql("select archived_count from pg_stat_archiver") != "0"
        });
        let a_won = a.sql("select archived_count from pg_stat_archiver") != "0";
        let (winner, loser, tm_w, win_id, lose_id) =
            if a_won { (&a, &b, &tm_a, &id_a, &id_b) } else { (&b, &a, &tm_b, &id_b, &id_a) };
        harness::wait_for("the loser's archive_command to fail", Duration::from_secs(60), || {
            archiver_failures(loser) > 0
        });
        assert_eq!(loser.sql("select archived_count from pg_stat_archiver"), "0", "round {round}: both archived");
        let log = loser.log();
        assert!(log.contains("does not match cluster") && log.contains(win_id.as_str()), "round {round}: {log}");
        // Every archived segment is the winner's: fetch each and read its system identifier.
        let wal_dir = repo.path().join(format!("clusters/{handle}/wal/00000001"));
        let names: Vec<String> = std::fs::read_dir(&wal_dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_string))
            .collect();
        assert!(!names.is_empty());
        for n in &names {
            let dest = tm_w.dir.path().join("fetched");
            let o = tm_w.cmd(&["wal-fetch", n, dest.to_str().unwrap()]).output().unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            let bytes = std::fs::read(&dest).unwrap();
            let id = u64::from_le_bytes(bytes[24..32].try_into().unwrap()).to_string();
            assert_eq!(&id, win_id, "round {round}: {n} is not the winner's");
            assert_ne!(&id, lose_id);
            std::fs::remove_file(&dest).unwrap();
        }
        if round == 0 {
            // The winner's history restores; a target inside its data directory is refused.
            winner.sql("create table t(id int primary key, who text)");
            write_and_switch(winner, "winner", 200);
            let o = tm_w.cmd_as_postgres(&["backup", "create", "--wait"]).output().unwrap();
            assert!(o.status.success(), "backup: {}", stderr(&o));
            write_and_switch(winner, "winner", 200);
            winner.switch_wal_archived(Duration::from_secs(60));
            let inside = winner.data.join("x");
            let o = tm_w.cmd(&["restore", "--target-dir", inside.to_str().unwrap(), "--latest"]).output().unwrap();
            assert_eq!(o.status.code(), Some(1));
            assert!(stderr(&o).contains("inside (or holds) the source cluster"), "{}", stderr(&o));
            assert!(!inside.exists(), "nothing may be written inside the source");
            let scratch = harness::postgres_dir("restore");
            let (o, r) = restore_latest(tm_w, winner, &scratch.path().join("latest"));
            assert!(o.status.success(), "restore: {}{}", stdout(&o), stderr(&o));
            assert_eq!(r.sql(CHECKSUM), winner.sql(CHECKSUM));
        }
        a.stop();
        b.stop();
    }
}

/// Kills the daemon with SIGKILL (no drain, no cleanup) and starts a new one.
fn kill_and_restart_daemon(tm: &mut Tidemark) {
    tm.kill_daemon();
    tm.start_daemon();
}

#[test]
fn archiving_and_restore_survive_a_faulty_store_and_daemon_kills() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = harness::Moto::start();
    rt.block_on(moto.create_bucket("chaos"));
    // One request in ten broken: resets, 503 SlowDown, 500, truncated bodies, delays, and
    // resets after the request was applied.
    let proxy = harness::ChaosProxy::start(moto.port, 10);
    let (mut pg, mut tm) = {
        let pg = Pg::init_with(None, &["--wal-segsize=1"]);
        let mut tm = Tidemark::for_pg("chaos", "s3://chaos/p", Some(&proxy.endpoint()), &pg);
        tm.daemon_env.push(("TIDEMARK_BACKUP_SCHEDULE".into(), "off".into()));
        pg.archive_to(&tm.config);
        (pg, tm)
    };
    pg.start();
    tm.start_daemon();
    pg.pgbench(&["-i", "-q", "-s", "2"]);
    let o = tm.cmd_as_postgres(&["backup", "create", "--wait"]).output().unwrap();
    assert!(o.status.success(), "backup through the faulty store: {}", stderr(&o));
    let archived = |pg: &Pg| pg.sql("select archived_count from pg_stat_archiver").parse::<u64>().unwrap();
    for kill in 0..3 {
        pg.pgbench(&["-n", "-c", "2", "-t", "1500"]);
        pg.sql("select pg_switch_wal()");
        let before = archived(&pg);
        kill_and_restart_daemon(&mut tm);
        pg.pgbench(&["-n", "-c", "2", "-t", "500"]);
        pg.sql("select pg_switch_wal()");
        harness::wait_for("archiving to go on after the daemon kill", Duration::from_secs(120), || {
            archived(&pg) > before
        });
        eprintln!("daemon kill {}: {} segments archived so far", kill + 1, archived(&pg));
    }
    pg.switch_wal_archived(Duration::from_secs(180));
    let want = pg.sql("select count(*) || ':' || sum(abalance) || ':' || (select count(*) from pgbench_history) from pgbench_accounts");
    let segments = archived(&pg);
    let failed: u64 = pg.sql("select failed_count from pg_stat_archiver").parse().unwrap();
    let v = tm.cmd(&["--output", "json", "verify"]).output().unwrap();
    assert!(v.status.success(), "verify: {}{}", stdout(&v), stderr(&v));
    let report: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    let gaps: usize = report["timelines"].as_array().unwrap().iter().map(|t| t["gaps"].as_array().unwrap().len()).sum();
    assert_eq!(gaps, 0);
    // A first-attempt restore of everything archived, through the same faulty store.
    let scratch = harness::postgres_dir("restore");
    let (o, r) = restore_latest(&tm, &pg, &scratch.path().join("latest"));
    assert!(o.status.success(), "restore through the faulty store: {}{}", stdout(&o), stderr(&o));
    let got = r.sql("select count(*) || ':' || sum(abalance) || ':' || (select count(*) from pgbench_history) from pgbench_accounts");
    assert_eq!(got, want, "the restore must hold exactly the source's rows");
    drop(r);
    let injected = *proxy.injected.lock().unwrap();
    let requests = proxy.requests.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "faulty store: {requests} requests, {} faults injected ({}); {segments} segments archived, {failed} archive_command failures, {gaps} gaps, restore succeeded on the first attempt",
        injected.iter().sum::<u64>(),
        harness::CHAOS_KINDS.iter().zip(injected).map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", ")
    );
    assert!(injected.iter().all(|n| *n > 0), "every kind of fault was injected: {injected:?}");
    tm.stop_daemon();
}

fn backups(tm: &Tidemark) -> Vec<serde_json::Value> {
    let o = tm.cmd(&["backup", "list", "--output", "json"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array().cloned().or_else(|| v["backups"].as_array().cloned()).unwrap_or_default()
}

/// Every file and directory under `dir`: (temp files, empty directories), the root excluded.
fn leftovers(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut temps, mut empty) = (Vec::new(), Vec::new());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().collect();
        if entries.is_empty() && d != dir {
            empty.push(d.clone());
        }
        for e in entries {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.file_name().to_string_lossy().starts_with(".tidemark-tmp") {
                temps.push(e.path());
            }
        }
    }
    (temps, empty)
}

/// Waits until `cond`, or the child exits; then SIGKILLs the child.
fn kill_when(child: &mut std::process::Child, what: &str, mut cond: impl FnMut() -> bool) {
    harness::wait_for(what, Duration::from_secs(60), || cond() || child.try_wait().ok().flatten().is_some());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn twenty_kill_9_rounds_during_push_backup_and_purge_leave_nothing_behind() {
    let repo = harness::postgres_dir("repo");
    let url = Tidemark::fs_url(repo.path());
    let (mut pg, mut tm) = server("kills", &url);
    pg.start();
    tm.start_daemon();
    pg.sql("create table t(id int primary key, who text)");
    write_and_switch(&pg, "start", 1000);
    let o = tm.cmd_as_postgres(&["backup", "create", "--wait"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (mut pushes, mut backups_killed, mut purges_killed) = (0, 0, 0);
    for round in 0..20 {
        match round % 3 {
            0 => {
                // The daemon, SIGKILLed while it pushes ahead.
                let before = tm.daemon_stats()["stored"].as_u64().unwrap_or(0);
                for _ in 0..3 {
                    write_and_switch(&pg, "push", 2000);
                }
                harness::wait_for("a push to complete", Duration::from_secs(60), || {
                    tm.daemon_stats()["stored"].as_u64().unwrap_or(0) > before
                });
                tm.kill_daemon();
                tm.start_daemon();
                pushes += 1;
            }
            1 => {
                // A backup, SIGKILLed once its record says it is running, or while it is
                // paused mid-copy (pg_backup_start done, data half copied).
                write_and_switch(&pg, "backup", 500);
                let mut cmd = tm.cmd_as_postgres(&["backup", "create", "--wait"]);
                let paused = round % 2 == 0;
                if paused {
                    cmd.env("TIDEMARK_FAILPOINT", "backup-copy:pause").stderr(std::process::Stdio::piped());
                }
                let mut child = cmd.spawn().unwrap();
                if paused {
                    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
                    let mut line = String::new();
                    while std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0 && !line.contains("paused") {
                        line.clear();
                    }
                    assert!(line.contains("failpoint backup-copy: paused"), "{line}");
                }
                kill_when(&mut child, "the backup to be running", || {
                    backups(&tm).iter().any(|b| b["state"] == "running")
                });
                backups_killed += 1;
            }
            _ => {
                // A purge of the oldest completed backup, crashed (abort, no cleanup) after it
                // marks the record, half-way through its data, or before removing the record.
                let o = tm.cmd_as_postgres(&["backup", "create", "--wait"]).output().unwrap();
                assert!(o.status.success(), "{}", stderr(&o));
                let oldest = backups(&tm)
                    .into_iter()
                    .find(|b| b["state"] == "completed")
                    .and_then(|b| b["id"].as_str().map(str::to_string))
                    .unwrap();
                let at = ["purge-after-mark", "purge-mid-data", "purge-before-record"][(round / 3) % 3];
                let o = tm
                    .cmd_as_postgres(&["backup", "purge", &oldest, "--yes"])
                    .env("TIDEMARK_FAILPOINT", at)
                    .output()
                    .unwrap();
                assert!(!o.status.success() && stderr(&o).contains(at), "{at}: {}", stderr(&o));
                assert_eq!(
                    backups(&tm).iter().find(|b| b["id"] == oldest.as_str()).map(|b| b["state"].clone()),
                    Some(serde_json::json!("purging")),
                    "{at}: a crashed purge leaves its record marked purging"
                );
                purges_killed += 1;
            }
        }
    }
    pg.switch_wal_archived(Duration::from_secs(120));
    // The next backup's sweep marks the killed ones failed; none stays running.
    let o = tm.cmd_as_postgres(&["backup", "create", "--wait"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let list = backups(&tm);
    assert!(list.iter().all(|b| b["state"] != "running"), "a killed backup still running: {list:?}");
    let v = tm.cmd(&["verify", "--deep"]).output().unwrap();
    assert!(v.status.success(), "verify --deep after the kills: {}{}", stdout(&v), stderr(&v));
    // Purge everything (interrupted purges resume), then a sweep an hour later (mtimes aged)
    // leaves no temp file and no empty directory.
    for b in backups(&tm) {
        let id = b["id"].as_str().unwrap();
        let o = tm.cmd_as_postgres(&["backup", "purge", id, "--yes"]).output().unwrap();
        assert!(o.status.success(), "purge {id}: {}", stderr(&o));
    }
    assert!(backups(&tm).is_empty(), "{:?}", backups(&tm));
    tm.stop_daemon();
    harness::run_ok(std::process::Command::new("find").arg(repo.path()).args([
        "-exec",
        "touch",
        "-h",
        "-d",
        "2 hours ago",
        "{}",
        "+",
    ]));
    let cfg = tidemark::config::Config::load(Some(&tm.config)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let r = tidemark::repo::Repository::open(&cfg).await.unwrap();
        tidemark::sweep::sweep(&r, chrono::Utc::now()).await.unwrap();
    });
    let (temps, empty) = leftovers(repo.path());
    eprintln!("kill -9 rounds: {pushes} during push, {backups_killed} during backup, {purges_killed} during purge; left: {} temp files, {} empty directories", temps.len(), empty.len());
    assert!(temps.is_empty(), "temp files left: {temps:?}");
    assert!(empty.is_empty(), "empty directories left: {empty:?}");
}

fn check(tm: &Tidemark, extra: &[&str]) -> (Output, serde_json::Value) {
    let mut args = vec!["--output", "json", "check", "--timeout", "10"];
    args.extend_from_slice(extra);
    let o = tm.cmd_as_postgres(&args).output().unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&o), stderr(&o)));
    (o, v)
}

fn failed(v: &serde_json::Value) -> Vec<String> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn check_proves_the_archive_path_and_names_what_is_wrong() {
    let repo = harness::postgres_dir("repo");
    let (mut pg, mut tm) = server("chk", &Tidemark::fs_url(repo.path()));
    pg.conf("archive_timeout = 60");
    pg.start();
    tm.start_daemon();
    let (o, v) = check(&tm, &[]);
    assert!(o.status.success(), "{v:#}");
    assert_eq!(v["ok"], true);
    assert!(v["checks"].as_array().unwrap().iter().any(|c| c["name"] == "wal switch" && c["ok"] == true), "{v:#}");
    // Text: one PASS line per check.
    let o = tm.cmd_as_postgres(&["check"]).output().unwrap();
    assert!(o.status.success() && stdout(&o).lines().filter(|l| l.starts_with("PASS")).count() >= 8, "{}", stdout(&o));

    // A stopped daemon.
    tm.stop_daemon();
    let (o, v) = check(&tm, &[]);
    assert_eq!((o.status.code(), failed(&v)), (Some(1), vec!["daemon".to_string()]), "{v:#}");
    tm.start_daemon();

    // A read-only repository: the probe and then the switch fail, with the fix.
    harness::run_ok(std::process::Command::new("chmod").arg("0500").arg(repo.path()));
    let (o, v) = check(&tm, &[]);
    harness::run_ok(std::process::Command::new("chmod").arg("0700").arg(repo.path()));
    assert_eq!(o.status.code(), Some(1));
    assert!(failed(&v).contains(&"repository".to_string()), "{v:#}");
    let probe = v["checks"].as_array().unwrap().iter().find(|c| c["name"] == "repository").unwrap().clone();
    assert!(probe["fix"].as_str().unwrap().contains("writable"), "{probe}");

    // An archive_command that does not call tidemark with this config.
    pg.sql("alter system set archive_command = 'cp %p /dev/null'");
    pg.sql("select pg_reload_conf()");
    harness::wait_for("the new archive_command", Duration::from_secs(10), || {
        pg.sql("show archive_command") == "cp %p /dev/null"
    });
    let (o, v) = check(&tm, &[]);
    assert_eq!(o.status.code(), Some(1));
    // The setting fails. The daemon still pushes ahead what PostgreSQL marks ready, so the
    // switched segment may reach the repository anyway: whether it does is a race between
    // the daemon's scan and `cp` marking it done, so the switch may pass or fail...
    let f = failed(&v);
    assert!(f.contains(&"archive_command".to_string()), "{v:#}");
    assert!(f.iter().all(|n| n == "archive_command" || n == "wal switch"), "{v:#}");
    let cmd = v["checks"].as_array().unwrap().iter().find(|c| c["name"] == "archive_command").unwrap().clone();
    assert!(cmd["fix"].as_str().unwrap().contains(&format!("--config {}", tm.config.display())), "{cmd}");
    // ...until it is down: then nothing reaches the repository.
    tm.stop_daemon();
    let (o, v) = check(&tm, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(failed(&v), ["archive_command", "daemon", "wal switch"].map(String::from).to_vec(), "{v:#}");
}

#[test]
fn a_root_backup_leaves_nothing_the_database_user_cannot_use() {
    use std::os::unix::fs::MetadataExt;
    let repo = harness::postgres_dir("repo");
    let (mut pg, tm) = server("rooted", &Tidemark::fs_url(repo.path()));
    pg.start();
    pg.sql("create table t(id int primary key, who text)");
    write_and_switch(&pg, "a", 100);
    // An administrator's backup, as root.
    let o = tm.cmd(&["--output", "json", "backup", "create", "--wait"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let id = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["id"].as_str().unwrap().to_string();
    let (uid, _) = harness::postgres_ids();
    let mut stack = vec![repo.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            assert_eq!(m.uid(), uid, "{} is not the database user's", e.path().display());
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    // Archiving (PostgreSQL's own archive_command, as postgres) goes on, and the database
    // user can purge the administrator's backup.
    write_and_switch(&pg, "b", 100);
    pg.switch_wal_archived(Duration::from_secs(60));
    let o = tm.cmd_as_postgres(&["backup", "purge", &id, "--yes"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(pg.sql("select failed_count from pg_stat_archiver") == "0", "{}", pg.log());
}

#[test]
fn stray_history_files_are_reported_never_followed_and_removed() {
    let repo = harness::postgres_dir("repo");
    stray_history_files(&Tidemark::fs_url(repo.path()), None);
}

#[test]
fn stray_history_files_in_s3_are_reported_never_followed_and_removed() {
    let moto = harness::Moto::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(moto.create_bucket("hist"));
    stray_history_files("s3://hist/p", Some(&moto.endpoint()));
}

/// Two history files planted by hand: `verify` names the foreign one, `--latest` follows
/// timeline 1, and `wal-remove` takes the foreign one out only with `--yes`, refusing a
/// segment the backup needs.
fn stray_history_files(url: &str, endpoint: Option<&str>) {
    let (mut pg, tm) = server_at("hist", url, endpoint);
    pg.start();
    pg.sql("create table t(id int primary key, who text)");
    write_and_switch(&pg, "a", 300);
    let o = tm.cmd_as_postgres(&["--output", "json", "backup", "create", "--wait"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let backup: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    write_and_switch(&pg, "b", 300);
    pg.switch_wal_archived(Duration::from_secs(60));
    // Planted by hand (not through wal-push, which refuses both): a history that branches
    // from timeline 1 far ahead but has no WAL, and one whose lineage is not this cluster's.
    let cfg = tidemark::config::Config::load(Some(&tm.config)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(tidemark::repo::Repository::open(&cfg)).unwrap();
    let key = |tli| r.wal_key(&tidemark::wal::name::WalFile::History(tli), 1 << 20);
    rt.block_on(async {
        for (tli, text) in [(2u32, "1\t10/0\tplanted\n"), (5, "4\t0/5000000\tplanted\n")] {
            r.put_sealed(&key(tli), bytes::Bytes::from(text)).await.unwrap();
        }
    });
    let exists = |k: &str| rt.block_on(r.store().head(k)).unwrap().is_some();
    let v = tm.cmd(&["verify"]).output().unwrap();
    assert_eq!(v.status.code(), Some(1), "{}", stdout(&v));
    assert!(stdout(&v).contains("00000005.history") && !stdout(&v).contains("00000002.history"), "{}", stdout(&v));
    // `--latest` follows timeline 1 (the only lineage with WAL) and gets every row.
    let want = pg.sql(CHECKSUM);
    let scratch = harness::postgres_dir("restore");
    let dir = scratch.path().join("latest");
    let (o, restored) = restore_latest(&tm, &pg, &dir);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(restored.sql(CHECKSUM), want);
    let conf = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
    assert!(conf.contains("recovery_target_timeline = '1'"), "{conf}");
    drop(restored);

    // Without --yes: says what would go, removes nothing.
    let o = tm.cmd_as_postgres(&["wal-remove", "00000005.history"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("would remove") && stdout(&o).contains(&key(5)), "{}", stdout(&o));
    assert!(stderr(&o).contains("--yes"), "{}", stderr(&o));
    let o = tm.cmd_as_postgres(&["--output", "json", "wal-remove", "00000005.history"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["would_remove"], serde_json::json!([key(5)]), "{j}");
    assert!(exists(&key(5)), "nothing is removed without --yes");
    // A segment the completed backup needs for consistency is refused, --yes or not.
    let start_seg = backup["start_lsn"].as_str().unwrap().parse::<tidemark::wal::name::Lsn>().unwrap();
    let start_seg = tidemark::wal::name::Segment::containing(1, start_seg, 1 << 20).name(1 << 20);
    let o = tm.cmd_as_postgres(&["wal-remove", &start_seg, "--yes"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let id = backup["id"].as_str().unwrap();
    assert!(stderr(&o).contains("refusing") && stderr(&o).contains(id), "{}", stderr(&o));
    assert!(exists(&r.wal_key(&tidemark::wal::name::WalFile::parse(&start_seg, 1 << 20).unwrap(), 1 << 20)));
    // A bad name is a usage error.
    let o = tm.cmd_as_postgres(&["wal-remove", "../cluster.json", "--yes"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // With --yes the foreign history goes, and says so; verify is then clean.
    let o = tm.cmd_as_postgres(&["--output", "json", "wal-remove", "00000005.history", "--yes"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["removed"], serde_json::json!([key(5)]), "{j}");
    assert!(j["reason"].as_str().unwrap().contains("foreign"), "{j}");
    assert!(!exists(&key(5)));
    let v = tm.cmd(&["verify"]).output().unwrap();
    assert!(v.status.success(), "{}", stdout(&v));
    // The other planted file is not foreign, but nothing follows timeline 2: it can go too.
    let o = tm.cmd_as_postgres(&["wal-remove", "00000002.history", "--yes"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("removed 00000002.history") && stdout(&o).contains(&key(2)), "{}", stdout(&o));
    assert!(!exists(&key(2)));
    let o = tm.cmd_as_postgres(&["wal-remove", "00000002.history", "--yes"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "removing it twice: {}", stderr(&o));
    assert!(stderr(&o).contains("no WAL object 00000002.history"), "{}", stderr(&o));
}

/// `--output json ARGS` as postgres: its exit status must be `ok`, its stdout one JSON document.
fn json_of(tm: &Tidemark, args: &[&str], ok: bool) -> serde_json::Value {
    let mut full = vec!["--output", "json"];
    full.extend_from_slice(args);
    let o = tm.cmd_as_postgres(&full).output().unwrap();
    assert_eq!(o.status.success(), ok, "{args:?}: {}{}", stdout(&o), stderr(&o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: not one JSON document ({e}): {}", stdout(&o)))
}

#[test]
fn every_command_prints_one_json_document() {
    let repo = harness::postgres_dir("repo");
    let (mut pg, mut tm) = server("json", &Tidemark::fs_url(repo.path()));
    pg.conf("archive_timeout = 60");
    pg.start();
    pg.sql("create table t(id int primary key, who text)");
    write_and_switch(&pg, "a", 100);
    tm.start_daemon();
    let b = json_of(&tm, &["backup", "create", "--wait"], true);
    let id = b["id"].as_str().unwrap().to_string();
    write_and_switch(&pg, "b", 100);
    pg.switch_wal_archived(Duration::from_secs(60));
    let scratch = harness::postgres_dir("restore");
    let target = scratch.path().join("r");
    let ring = scratch.path().join("ring");
    for (args, ok) in [
        (vec!["status"], true),
        (vec!["check", "--timeout", "30"], true),
        (vec!["window"], true),
        (vec!["verify"], true),
        (vec!["backup", "list"], true),
        (vec!["backup", "show", &id], true),
        (vec!["backup", "orphaned"], true),
        (vec!["policy", "show"], true),
        (vec!["policy", "set", "--daily", "40", "--dry-run"], true),
        (vec!["automatic-backups", "disable"], true),
        (vec!["automatic-backups", "enable"], true),
        (vec!["keygen", "--out", ring.to_str().unwrap()], true),
        (vec!["restore", "--target-dir", target.to_str().unwrap(), "--latest"], true),
        (vec!["backup", "show", "nosuch"], false),
        (vec!["window", "--cluster", "nosuch"], false),
        (vec!["wal-remove", "00000009.history", "--yes"], false),
        (vec!["restore", "--target-dir", target.to_str().unwrap(), "--latest"], false),
        (vec!["backup", "purge", &id, "--yes"], true),
    ] {
        let v = json_of(&tm, &args, ok);
        if !ok {
            assert!(v["error"].is_string() && v["exit_code"] == 1, "{args:?}: {v}");
        }
    }
    tm.stop_daemon();
    let v = json_of(&tm, &["deprovision", "--yes"], true);
    assert!(v.is_object(), "{v}");
}
