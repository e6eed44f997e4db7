//! Real PostgreSQL 15 archiving through `tidemark wal-push`, to the fs store and to S3 (moto),
//! with and without the daemon, and across a store outage.

use std::path::Path;
use std::time::Duration;

use crate::harness::{self, fake_segment, Moto, Pg, Proxy, Tidemark};

/// Every archived segment comes back through wal-fetch byte-identical to PostgreSQL's file.
fn fetch_back_identical(tm: &Tidemark, pg: &Pg, names: &[String]) {
    let out = harness::postgres_dir("fetch");
    for n in names {
        let dest = out.path().join("RECOVERYXLOG");
        let o = tm.cmd_as_postgres(&["wal-fetch", n, dest.to_str().unwrap()]).output().unwrap();
        assert!(o.status.success(), "wal-fetch {n}: {}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            harness::sha256_file(&dest),
            harness::sha256_file(&pg.data.join("pg_wal").join(n)),
            "segment {n} differs"
        );
        std::fs::remove_file(&dest).unwrap();
    }
}

/// The archive holds every segment PostgreSQL marked done, with no gap between them.
async fn assert_no_gaps(url: &str, endpoint: Option<String>, cluster: &str, done: &[String]) {
    let opts = tidemark::store::StoreOptions { region: Some("us-east-1".into()), endpoint, multipart_threshold: None };
    let store = tidemark::store::open(url, &opts).await.unwrap();
    let listed: Vec<String> = store
        .list(&format!("clusters/{cluster}/wal/00000001/"))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| m.key.rsplit('/').next().map(str::to_string))
        .filter(|n| n.len() == 24)
        .collect();
    for n in done {
        assert!(listed.contains(n), "{n} marked done by PostgreSQL but not in the archive");
    }
    let nums: Vec<u64> = listed.iter().map(|n| harness::seg_no(n)).collect();
    for w in nums.windows(2) {
        assert_eq!(w[1], w[0] + 1, "gap in the archive after segment {}", w[0]);
    }
}

async fn archive_run(tm_url: &str, endpoint: Option<String>, with_daemon: bool) {
    let mut pg = Pg::init();
    let mut tm = Tidemark::new("arch", tm_url, endpoint.as_deref(), &pg.data);
    pg.archive_to(&tm.config);
    if with_daemon {
        tm.start_daemon();
    }
    pg.start();
    let last = pg.write_segments(20);
    pg.wait_archived(&last, Duration::from_secs(300));
    assert_eq!(pg.sql("select failed_count from pg_stat_archiver"), "0", "server log:\n{}", pg.log());
    let done = pg.done_segments();
    assert!(done.len() >= 20, "only {} segments archived", done.len());
    assert_no_gaps(tm_url, endpoint, "arch", &done).await;
    fetch_back_identical(&tm, &pg, &done);
    if with_daemon {
        let stats = tm.daemon_stats();
        let served = stats["served_from_read_ahead"].as_u64().unwrap() + stats["served_after_push"].as_u64().unwrap();
        assert!(served >= 20, "archiver did not go through the daemon: {stats}");
        assert!(stats["stored"].as_u64().unwrap() >= 20, "{stats}");
    }
    pg.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_archives_every_segment_to_fs_repo() {
    let repo = harness::postgres_dir("repo");
    archive_run(&Tidemark::fs_url(repo.path()), None, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_archives_every_segment_to_s3_through_daemon() {
    let moto = Moto::start();
    moto.create_bucket("wal").await;
    archive_run("s3://wal/prod", Some(moto.endpoint()), true).await;
}

#[test]
fn store_outage_loses_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start();
    rt.block_on(moto.create_bucket("wal"));
    let mut proxy = Proxy::start(moto.port);
    let url = "s3://wal/outage";
    let mut pg = Pg::init();
    let mut tm = Tidemark::new("arch", url, Some(&proxy.endpoint()), &pg.data);
    pg.archive_to(&tm.config);
    tm.start_daemon();
    pg.start();
    let first = pg.write_segments(3);
    pg.wait_archived(&first, Duration::from_secs(120));

    proxy.down();
    // Both the daemon and PostgreSQL's own wal-push calls fail while the store is away.
    let during = pg.write_segments(4);
    harness::wait_for("archive failures during the outage", Duration::from_secs(120), || {
        pg.sql("select failed_count from pg_stat_archiver").parse::<u64>().unwrap() > 0
    });
    let last_during = pg.sql("select coalesce(last_archived_wal, '') from pg_stat_archiver");
    assert!(last_during.as_str() < during.as_str(), "archived {last_during} while the store was down");

    proxy.up();
    let last = pg.write_segments(2);
    pg.wait_archived(&last, Duration::from_secs(300));
    let done = pg.done_segments();
    rt.block_on(assert_no_gaps(url, Some(moto.endpoint()), "arch", &done));
    fetch_back_identical(&tm, &pg, &done);
    let stats = tm.daemon_stats();
    assert!(stats["failures"].as_u64().unwrap() > 0, "daemon never saw the outage: {stats}");
    pg.stop();
    tm.stop_daemon();
}

#[test]
fn wal_push_takes_the_daemon_path_when_read_ahead_already_pushed() {
    let repo = harness::postgres_dir("repo");
    let data = harness::postgres_dir("data");
    let status = data.path().join("pg_wal/archive_status");
    std::fs::create_dir_all(&status).unwrap();
    let mut tm = Tidemark::new("ra", &Tidemark::fs_url(repo.path()), None, data.path());
    let names = ["000000010000000000000001", "000000010000000000000002", "000000010000000000000003"];
    for (i, n) in names.iter().enumerate() {
        std::fs::write(data.path().join("pg_wal").join(n), fake_segment(42, i as u8)).unwrap();
    }
    harness::chown_postgres(data.path());
    let metrics_port = harness::free_port();
    tm.daemon_env = vec![("TIDEMARK_DAEMON_METRICS_LISTEN".into(), format!("127.0.0.1:{metrics_port}"))];
    tm.start_daemon();
    for n in names {
        std::fs::write(status.join(format!("{n}.ready")), b"").unwrap();
    }
    harness::wait_for("read-ahead to store 3 segments", Duration::from_secs(60), || {
        tm.daemon_stats()["stored"].as_u64() == Some(3)
    });
    // Now the archiver's call: answered from read-ahead, not pushed again.
    for n in names {
        let o = tm
            .cmd_as_postgres(&["wal-push", &format!("pg_wal/{n}")])
            .current_dir(data.path())
            .env("TIDEMARK_LOG", "info")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(err.contains("archived via daemon") && err.contains("read_ahead=true"), "{err}");
    }
    let stats = tm.daemon_stats();
    assert_eq!(stats["served_from_read_ahead"], 3, "{stats}");
    assert_eq!(stats["stored"], 3, "{stats}");
    // The same figures on the Prometheus endpoint.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    std::io::Write::write_all(&mut conn, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    std::io::Read::read_to_string(&mut conn, &mut body).unwrap();
    assert!(body.contains("tidemark_wal_stored_total 3\n"), "{body}");
    assert!(body.contains("tidemark_archiver_requests_total{path=\"read_ahead\"} 3\n"), "{body}");
    assert!(body.contains("tidemark_wal_push_seconds_count 3\n"), "{body}");
    assert!(body.contains("tidemark_wal_plain_bytes_total 50331648\n"), "{body}");
    // A wal-fetch reports its latency to the running daemon.
    let dest = tm.dir.path().join("fetched");
    let o = tm.cmd_as_postgres(&["wal-fetch", names[0], dest.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let fetches = tm.daemon_stats()["fetch_seconds"]["count"].as_u64();
    assert_eq!(fetches, Some(1), "{}", tm.daemon_stats());
    // Without a daemon the same call pushes directly and finds the segment already archived.
    tm.stop_daemon();
    let o = tm
        .cmd_as_postgres(&["wal-push", &format!("pg_wal/{}", names[0])])
        .current_dir(data.path())
        .env("TIDEMARK_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("archived directly") && err.contains("AlreadyArchived"), "{err}");
    assert!(!Path::new(&tm.socket).exists(), "daemon left its socket behind");
}

/// In the steady state of a busy server, archiving one segment costs about one S3 request:
/// the segment's PUT. Summaries go in batches into the index blocks; the chain check reads
/// what the daemon pushed itself. Counted by the daemon over a burst of 1 MiB segments.
#[tokio::test(flavor = "multi_thread")]
async fn s3_requests_per_archived_segment_stay_near_one() {
    let moto = Moto::start();
    moto.create_bucket("wal").await;
    let mut pg = Pg::init_with(None, &["--wal-segsize=1"]);
    let mut tm = Tidemark::new("req", "s3://wal/req", Some(&moto.endpoint()), &pg.data);
    pg.archive_to(&tm.config);
    pg.conf("wal_keep_size = '64MB'\nmax_wal_size = '64MB'\n");
    tm.start_daemon();
    pg.start();
    pg.sql("create table t(id int)");
    pg.switch_wal_archived(Duration::from_secs(60));
    let before = tm.daemon_stats();
    pg.sql(
        "do $$ begin for i in 1..400 loop insert into t values (i); commit; perform pg_switch_wal(); end loop; end $$",
    );
    pg.switch_wal_archived(Duration::from_secs(300));
    let after = tm.daemon_stats();
    let n = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap_or(0);
    let stored = n(&after, "stored") - n(&before, "stored");
    let requests = n(&after, "store_requests") - n(&before, "store_requests");
    assert!(stored >= 400, "only {stored} segments stored: {after}");
    let per = requests as f64 / stored as f64;
    eprintln!(
        "{requests} requests for {stored} segments: {per:.3} per segment ({} PUTs)",
        n(&after, "store_puts") - n(&before, "store_puts")
    );
    let warnings: Vec<String> = tm.daemon_log().lines().filter(|l| !l.contains(" INFO ")).map(str::to_string).collect();
    assert!(per <= 1.1, "{requests} requests for {stored} segments ({per:.3} each): {after}\n{}", warnings.join("\n"));
    // Everything archived is indexed: the window reaches the last commit.
    let v = tm.cmd(&["verify", "--output", "json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(report["timelines"][0]["unindexed_count"], 0, "{report}");
    pg.stop();
}
