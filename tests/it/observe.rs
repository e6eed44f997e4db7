//! What operators watch: the daemon's Prometheus endpoint after a backup (checked line by
//! line with the `prometheus-parse` crate's parser), its answers to other paths and
//! methods, JSON logs of real commands, and the progress lines long operations log when
//! not on a terminal.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_parse::{LineInfo, Scrape, Value};

use crate::harness::{self, stderr, Pg, Restored, Tidemark};

/// One HTTP/1.1 request to the loopback `port`; the whole response.
fn http(port: u16, method: &str, path: &str) -> String {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(conn, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    out
}

/// The status line and the body of a response.
fn split(resp: &str) -> (&str, &str) {
    let status = resp.lines().next().unwrap_or_default();
    (status, resp.split_once("\r\n\r\n").map_or("", |(_, b)| b))
}

/// Parses an exposition strictly: every line must be a HELP, TYPE or sample line to the
/// crate's parser, every sample's value a number, and every sample of a declared family.
fn parse_exposition(body: &str) -> Scrape {
    let mut declared: Vec<String> = Vec::new();
    let mut samples = 0;
    for line in body.lines() {
        match LineInfo::parse(line) {
            LineInfo::Doc { .. } | LineInfo::Empty => {}
            LineInfo::Type { metric_alias, metric_name, .. } => declared.push(metric_alias.unwrap_or(metric_name)),
            LineInfo::Sample { metric_name, value, .. } => {
                assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| metric_name.strip_suffix(s).filter(|f| declared.iter().any(|d| d == f)))
                    .unwrap_or(metric_name);
                assert!(declared.iter().any(|d| d == family), "sample of an undeclared family: {line}");
                samples += 1;
            }
            LineInfo::Ignored => panic!("not exposition format: {line:?}\n{body}"),
        }
    }
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert!(samples > 30 && !scrape.samples.is_empty(), "{body}");
    scrape
}

/// The value of `metric` with `labels` (counters and gauges).
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples.iter().find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))).map(|x| {
        match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => f64::NAN,
        }
    })
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn a_scrape_after_a_backup_shows_it_and_only_get_or_head_of_metrics_is_served() {
    let repo = harness::postgres_dir("repo");
    let mut pg = Pg::init();
    let mut tm = Tidemark::for_pg("metrics", &Tidemark::fs_url(repo.path()), None, &pg);
    pg.archive_to(&tm.config);
    pg.start();
    pg.sql("create table t as select g from generate_series(1, 10000) g");
    let port = harness::free_port();
    tm.daemon_env.push(("TIDEMARK_BACKUP_SCHEDULE".into(), "off".into()));
    tm.daemon_env.push(("TIDEMARK_DAEMON_METRICS_LISTEN".into(), format!("127.0.0.1:{port}")));
    // The catalog refresh and the index roll-up every second rather than every minute.
    tm.daemon_env.push(("TDMK_TEST_MINUTE_MS".into(), "1000".into()));
    tm.start_daemon();
    let before = unix_now();
    // Taken by the daemon, which notes it as it completes.
    let o = tm.cmd_as_postgres(&["backup", "create"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let scrape = || split(&http(port, "GET", "/metrics")).1.to_string();
    harness::wait_for("the backup in the metrics", Duration::from_secs(120), || {
        scrape().contains("tidemark_backup_last_success_timestamp_seconds{kind=\"manual\"}")
    });
    // A commit after the backup, archived: the window has an end.
    pg.sql("insert into t values (0)");
    pg.switch_wal_archived(Duration::from_secs(60));
    harness::wait_for("the window in the metrics", Duration::from_secs(60), || {
        scrape().contains("tidemark_window_end_timestamp_seconds{timeline=\"1\"}")
    });
    assert!(!scrape().contains("tidemark_verify_"), "no verify run yet");
    // `verify` runs as its own process (the timer) and leaves its result for the daemon.
    let o = tm.cmd_as_postgres(&["verify"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let body = scrape();
    let s = parse_exposition(&body);
    let after = unix_now();
    let manual = [("kind", "manual")];
    let last = value(&s, "tidemark_backup_last_success_timestamp_seconds", &manual).unwrap();
    assert!((before - 1.0..=after).contains(&last), "{before} <= {last} <= {after}");
    let took = value(&s, "tidemark_backup_duration_seconds", &manual).unwrap();
    assert!(took > 0.0 && took <= after - before, "{took} s\n{body}");
    assert_eq!(value(&s, "tidemark_backup_failures_total", &manual), Some(0.0), "{body}");
    assert_eq!(value(&s, "tidemark_backup_failures_total", &[("kind", "automatic")]), Some(0.0));
    let tl = [("timeline", "1")];
    let (start, end) = (
        value(&s, "tidemark_window_start_timestamp_seconds", &tl).unwrap(),
        value(&s, "tidemark_window_end_timestamp_seconds", &tl).unwrap(),
    );
    assert!(start >= before - 1.0 && start <= end && end <= after, "window {start} .. {end}");
    let version = s.samples.iter().find(|x| x.metric == "tidemark_build_info").and_then(|x| x.labels.get("version"));
    assert_eq!(version, Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(value(&s, "tidemark_verify_last_result", &[]), Some(1.0), "{body}");
    let verified = value(&s, "tidemark_verify_last_success_timestamp_seconds", &[]).unwrap();
    assert!((before..=after).contains(&verified), "{verified}");
    assert!(value(&s, "tidemark_archive_lag_segments", &[]).is_some_and(|n| n >= 0.0), "{body}");
    assert!(value(&s, "tidemark_archive_lag_seconds", &[]).is_some_and(|n| n >= 0.0), "{body}");
    // Renamed: one meaning of "stored" and "sealed" everywhere (status JSON: bytes_stored, bytes_sealed).
    assert!(value(&s, "tidemark_wal_plain_bytes_total", &[]).is_some() && !body.contains("bytes_shipped"));
    assert!(value(&s, "tidemark_wal_sealed_bytes_total", &[]).is_some(), "{body}");
    let stats = tm.daemon_stats();
    assert_eq!(value(&s, "tidemark_wal_stored_total", &[]), stats["stored"].as_f64(), "{stats}");
    // Anything but GET or HEAD of /metrics is refused.
    let (status, body) = split_owned(&http(port, "GET", "/nope"));
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    assert!(!body.contains("tidemark_"), "{body}");
    let resp = http(port, "POST", "/metrics");
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("\r\nallow: get, head\r\n"), "{resp}");
    let resp = http(port, "HEAD", "/metrics");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(split(&resp).1, "", "HEAD has no body");
    // HTTP/1.0, as the other metrics test and old scrapers speak it, still works.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut old = String::new();
    conn.read_to_string(&mut old).unwrap();
    assert!(old.starts_with("HTTP/1.0 200") && old.contains("tidemark_build_info"), "{old}");
    tm.stop_daemon();
    pg.stop();
}

fn split_owned(resp: &str) -> (String, String) {
    let (a, b) = split(resp);
    (a.to_string(), b.to_string())
}

/// Parses each stderr line as one JSON object.
fn json_lines(err: &str) -> Vec<serde_json::Value> {
    err.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object ({e}): {l}\n{err}")))
        .collect()
}

#[test]
fn json_logs_parse_line_by_line_and_long_operations_log_their_progress() {
    let repo = harness::postgres_dir("repo");
    let mut pg = Pg::init();
    let tm = Tidemark::for_pg("progress", &Tidemark::fs_url(repo.path()), None, &pg);
    pg.archive_to(&tm.config);
    pg.start();
    // About 150 MB: a few seconds of backup, many of the test's short intervals.
    pg.pgbench(&["-i", "-q", "-s", "10"]);
    let o = tm
        .cmd_as_postgres(&["--log-format", "json", "backup", "create", "--wait"])
        .env("TIDEMARK_PROGRESS_INTERVAL_MS", "100")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let lines = json_lines(&err);
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string() && l["message"].is_string(), "{l}");
    }
    assert!(lines.iter().any(|l| l["level"] == "INFO" && l["message"].as_str().is_some_and(|m| m.contains("backup"))));
    let progress: Vec<&serde_json::Value> = lines.iter().filter(|l| l["what"] == "backup").collect();
    assert!(!progress.is_empty(), "no progress lines:\n{err}");
    let total = progress[0]["total_bytes"].as_u64().unwrap();
    assert!(total > 100 << 20, "{}", progress[0]);
    for p in &progress {
        let (bytes, rate) = (p["bytes"].as_u64().unwrap(), p["rate_bytes_per_s"].as_u64().unwrap());
        assert!(bytes <= total && p["files"].as_u64().is_some_and(|f| f > 100), "{p}");
        assert!(p["elapsed_s"].is_u64() && p["percent"].is_f64(), "{p}");
        // Once something is stored there is a rate and an estimate of the time left.
        if bytes > 0 {
            assert!(rate > 0 && p["eta_s"].is_u64(), "{p}");
        }
    }
    assert!(progress.windows(2).all(|w| w[0]["bytes"].as_u64() <= w[1]["bytes"].as_u64()), "{progress:?}");
    assert!(progress.iter().any(|p| p["bytes"].as_u64() > Some(0)), "{progress:?}");

    // Text logs of `verify --deep` carry the same lines.
    let o = tm.cmd_as_postgres(&["verify", "--deep"]).env("TIDEMARK_PROGRESS_INTERVAL_MS", "50").output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let deep: Vec<&str> = err.lines().filter(|l| l.contains("verify --deep: ")).collect();
    assert!(!deep.is_empty(), "{err}");
    assert!(deep.iter().all(|l| l.contains("rate_bytes_per_s=") && l.contains("bytes=")), "{deep:?}");
    assert!(!err.contains("{\""), "text logs are text: {err}");

    // A restore logs its download and the WAL replay up to promotion; the environment
    // variable picks JSON as the flag does.
    pg.switch_wal_archived(Duration::from_secs(60));
    let target = harness::postgres_dir("restored");
    let dir = target.path().join("data");
    let port = harness::free_port();
    let o = tm
        .cmd(&["restore", "--target-dir", dir.to_str().unwrap(), "--start", "--port", &port.to_string(), "--latest"])
        .env("TIDEMARK_PROGRESS_INTERVAL_MS", "100")
        .env("TIDEMARK_LOG_FORMAT", "json")
        .output()
        .unwrap();
    let restored = Restored { dir: dir.clone(), sock: pg.sock.clone(), port, bin: pg.bin.clone() };
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let lines = json_lines(&err);
    let restored_bytes: Vec<u64> =
        lines.iter().filter(|l| l["what"] == "restore").filter_map(|l| l["bytes"].as_u64()).collect();
    assert!(!restored_bytes.is_empty(), "no restore progress:\n{err}");
    let replay = lines.iter().find(|l| l["message"] == "WAL replay done, promoted").unwrap_or_else(|| panic!("{err}"));
    assert!(replay["segments"].as_u64() >= Some(1), "{replay}");
    assert_eq!(restored.sql("select count(*) from pgbench_branches"), "10");
    drop(restored);
    pg.stop();
}

#[test]
fn the_front_end_takes_the_log_format_too() {
    let repo = harness::postgres_dir("repo");
    let data = harness::postgres_dir("data");
    std::fs::create_dir_all(data.path().join("pg_wal/archive_status")).unwrap();
    let name = "000000010000000000000001";
    std::fs::write(data.path().join("pg_wal").join(name), harness::fake_segment(42, 0)).unwrap();
    harness::chown_postgres(data.path());
    let tm = Tidemark::new("fe", &Tidemark::fs_url(repo.path()), None, data.path());
    // No daemon: the front end's local step finds none and hands the push to the agent.
    let o = tm
        .cmd_as_postgres(&["--log-format", "json", "wal-push", &format!("pg_wal/{name}")])
        .current_dir(data.path())
        .env("TIDEMARK_LOG", "debug")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = json_lines(&stderr(&o));
    assert!(lines.iter().any(|l| l["level"] == "INFO"), "{lines:?}");
    let _: HashMap<String, serde_json::Value> = serde_json::from_value(lines[0].clone()).unwrap();
    let o = tm.cmd_as_postgres(&["--log-format", "yaml", "wal-push", "pg_wal/x"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "clap explains a bad value: {}", stderr(&o));
    assert!(stderr(&o).contains("--log-format"), "{}", stderr(&o));
}

/// Every `tidemark_*` name in `text` (metric names in PromQL or a dashboard).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("tidemark_") {
        let name: String =
            rest[i..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        rest = &rest[i + name.len()..];
        out.insert(name);
    }
    out
}

/// The alert rules and the Grafana dashboard shipped in packaging/ parse, and name only
/// metrics the agent exports (as rendered with every series present); the rules cover
/// archive lag, push failures, backup age and failures, the window, verify and drills.
#[test]
fn the_alert_rules_and_the_dashboard_use_only_exported_metrics() {
    use tidemark::daemon::metrics::{self, BackupSeen, DrillSeen, Lag, Scraped, Seen, WindowSeen};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // What the agent exports, every family present.
    let mut seen = Seen::default();
    seen.backups.insert(
        tidemark::catalog::backup::BackupKind::Automatic,
        BackupSeen { last_success: Some(1.0), duration: Some(1.0), failures: 1 },
    );
    seen.windows = vec![WindowSeen { timeline: 1, start: Some(1.0), end: Some(2.0) }];
    seen.drill = Some(DrillSeen {
        last_run: Some(1.0),
        last_ok: true,
        last_success: Some(1.0),
        phases: vec![("replay".into(), 1.0)],
        restore_seconds: Some(1.0),
    });
    let verify = Some(tidemark::verify::last_run::LastRun {
        finished_at: "2026-12-01T00:00:00Z".into(),
        ok: true,
        deep: false,
        last_success_at: Some("2026-12-01T00:00:00Z".into()),
    });
    let text =
        metrics::render(&Scraped { seen, lag: Some(Lag { segments: 1, seconds: 1.0 }), verify, ..Scraped::default() });
    let mut exported = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            exported.insert(name.to_string());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{s}"));
                }
            }
        }
    }

    // The rules, read by PyYAML (Prometheus rule files are YAML).
    let venv = std::env::var_os("TEST_VENV").expect("TEST_VENV unset: run tests/run.sh, or point it at its venv");
    let rules_file = root.join("packaging/prometheus/tidemark-rules.yml");
    let o = std::process::Command::new(std::path::Path::new(&venv).join("bin/python3"))
        .args(["-c", "import sys, json, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"])
        .arg(&rules_file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let rules: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rules = rules["groups"][0]["rules"].as_array().expect("groups[0].rules");
    let mut alerts = std::collections::BTreeSet::new();
    let mut used = std::collections::BTreeSet::new();
    for r in rules {
        let name = r["alert"].as_str().expect("every rule is an alert");
        assert!(alerts.insert(name.to_string()), "alert {name} twice");
        let expr = r["expr"].as_str().unwrap_or_else(|| panic!("{name}: no expr"));
        assert!(["warning", "critical"].contains(&r["labels"]["severity"].as_str().unwrap_or("")), "{name}: severity");
        assert!(r["annotations"]["summary"].is_string() && r["annotations"]["description"].is_string(), "{name}");
        if let Some(f) = r.get("for") {
            let f = f.as_str().unwrap();
            assert!(f.ends_with('m') || f.ends_with('h'), "{name}: for {f}");
        }
        used.extend(metric_names(expr));
    }
    for want in [
        "tidemark_archive_lag_seconds",
        "tidemark_wal_push_failures_total",
        "tidemark_backup_last_success_timestamp_seconds",
        "tidemark_backup_failures_total",
        "tidemark_window_end_timestamp_seconds",
        "tidemark_window_start_timestamp_seconds",
        "tidemark_verify_last_result",
        "tidemark_drill_last_result",
    ] {
        assert!(used.contains(want), "no alert watches {want}");
    }

    // The dashboard: JSON whose every target and variable names exported metrics.
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("packaging/grafana/tidemark-dashboard.json")).unwrap())
            .unwrap();
    assert_eq!(dash["uid"], "tidemark");
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for p in panels {
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {} has no targets", p["title"]));
        assert!(!targets.is_empty());
        for t in targets {
            used.extend(metric_names(t["expr"].as_str().unwrap()));
        }
    }
    used.extend(metric_names(&dash["templating"].to_string()));
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(unknown.is_empty(), "rules or dashboard name metrics the agent does not export: {unknown:?}\n{text}");
}
