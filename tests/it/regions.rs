//! Cross-region copies with the files provider on S3 (moto, two regions' buckets): WAL,
//! backups and records copied; a purge in the source is followed in the copy; and with
//! the source repository wiped, `restore --region` recovers a point in time from the copy.

use std::time::Duration;

use crate::harness::{self, Moto, Pg, Tidemark};

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_follow_the_source_and_restore_from_another_region() {
    harness::aws_env();
    let moto = Moto::start();
    let ep = moto.endpoint();
    moto.create_bucket("east").await;
    moto.create_bucket("west").await;
    let mut pg = Pg::init();
    let tm = Tidemark::for_pg("orders", "s3://east/repo", Some(&ep), &pg);
    let mut conf = std::fs::read_to_string(&tm.config).unwrap();
    conf.push_str(&format!("[regions.us-west-1]\nurl = \"s3://west/copy\"\nendpoint = \"{ep}\"\n"));
    std::fs::write(&tm.config, conf).unwrap();
    pg.archive_to(&tm.config);
    pg.start();

    let o = tm.cmd(&["policy", "set", "--copy-regions", "us-west-1", "--yes"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    pg.sql("CREATE TABLE orders (id int primary key, note text); INSERT INTO orders SELECT g, 'first' FROM generate_series(1, 500) g;");
    let first = tm.cmd(&["--output", "json", "backup", "create", "--wait"]).output().unwrap();
    assert!(first.status.success(), "{}", text(&first));
    let b1: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let second = tm.cmd(&["--output", "json", "backup", "create", "--wait"]).output().unwrap();
    assert!(second.status.success(), "{}", text(&second));
    let b2: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    pg.sql("INSERT INTO orders SELECT g, 'second' FROM generate_series(501, 800) g;");
    let target = pg.time_mark();
    pg.sql("DROP TABLE orders;");
    pg.switch_wal_archived(Duration::from_secs(60));

    let cfg = tidemark::config::Config::load(Some(&tm.config)).unwrap();
    let repo = tidemark::repo::Repository::open(&cfg).await.unwrap();
    let done = tidemark::copy::sync_all(&cfg, &repo).await.unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!((done[0].region.as_str(), done[0].backups), ("us-west-1", 2), "{done:?}");
    assert!(done[0].objects > 4, "{done:?}");
    // Nothing left to do: a second pass copies nothing.
    let again = tidemark::copy::sync_all(&cfg, &repo).await.unwrap();
    assert_eq!((again[0].objects, again[0].backups, again[0].purged), (0, 0, 0), "{again:?}");

    // Retention in the source is followed by the copy.
    let id1 = b1["id"].as_str().unwrap();
    let o = tm.cmd(&["backup", "purge", id1, "--yes"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let after = tidemark::copy::sync_all(&cfg, &repo).await.unwrap();
    assert_eq!(after[0].purged, 1, "{after:?}");
    let west = tidemark::repo::Repository::open(&cfg.for_region("us-west-1").unwrap()).await.unwrap();
    let ids: Vec<String> = tidemark::catalog::backup::list(&west).await.unwrap().into_iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![b2["id"].as_str().unwrap().to_string()]);

    // The source region is gone: every object of the east repository deleted.
    let east = tidemark::store::s3::S3Store::new(
        "east",
        "",
        &tidemark::store::StoreOptions {
            region: Some("us-east-1".into()),
            endpoint: Some(ep.clone()),
            multipart_threshold: None,
        },
    )
    .await;
    let listed = east.client().list_objects_v2().bucket("east").send().await.unwrap();
    assert!(!listed.contents().is_empty());
    for o in listed.contents() {
        east.client().delete_object().bucket("east").key(o.key().unwrap()).send().await.unwrap();
    }
    let o = tm.cmd(&["backup", "list"]).output().unwrap();
    assert!(!text(&o).contains(b2["id"].as_str().unwrap()), "the source repository is really empty");

    let dir = tm.dir.path().join("restored");
    let port = harness::free_port().to_string();
    let o = tm
        .cmd(&[
            "restore",
            "--region",
            "us-west-1",
            "--target-dir",
            dir.to_str().unwrap(),
            "--target-time",
            &target,
            "--start",
            "--port",
            &port,
        ])
        .output()
        .unwrap();
    let stop = || {
        let _ = harness::as_postgres(harness::pg_bin().join("pg_ctl"))
            .arg("-D")
            .arg(&dir)
            .args(["-w", "-m", "immediate", "stop"])
            .output();
    };
    if !o.status.success() {
        stop();
        panic!("restore --region failed: {}", text(&o));
    }
    let rows = harness::psql(&pg.sock, port.parse().unwrap(), "SELECT count(*), max(id) FROM orders");
    stop();
    assert_eq!(rows, "800|800", "{}", text(&o));

    // A region without a [regions.R] section: a usage error that says what to add.
    let o =
        tm.cmd(&["restore", "--region", "eu-west-1", "--target-dir", "/nonexistent/x", "--latest"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("[regions.eu-west-1]"), "{}", text(&o));
}
