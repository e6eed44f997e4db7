//! Prometheus metrics on `daemon.metrics_listen` (loopback unless `daemon.metrics_public`).
//!
//! Served by hyper (HTTP/1): `GET` or `HEAD /metrics` only, 404 for any other path, 405 for
//! any other method. The text exposition format is rendered here (a few dozen lines, checked
//! by a parser in the tests): the values are snapshots the daemon already keeps, which a
//! client library's registry would only copy.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::Full;
use hyper::{header, Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::catalog::backup::{BackupKind, Manifest};
use crate::catalog::restore_plan::Window;
use crate::daemon::control::{Histogram, Stats, PUSH_BUCKETS};
use crate::daemon::read_ahead::ReadAhead;
use crate::verify::last_run::{self, LastRun};

/// The backup kinds, each with its series.
const KINDS: [BackupKind; 3] = [BackupKind::Automatic, BackupKind::Manual, BackupKind::Final];

/// What the daemon knows of one backup kind.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BackupSeen {
    /// Stop time of the newest completed backup (Unix seconds).
    pub last_success: Option<f64>,
    /// Its duration, start to stop (seconds).
    pub duration: Option<f64>,
    /// Backups of this kind the daemon ran that failed, since it started.
    pub failures: u64,
}

/// The restorable window of one timeline (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowSeen {
    /// Timeline.
    pub timeline: u32,
    /// Earliest restorable time.
    pub start: Option<f64>,
    /// Latest restorable time.
    pub end: Option<f64>,
}

/// The restore drills, as the daemon last read their records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrillSeen {
    /// When the newest drill finished (Unix seconds).
    pub last_run: Option<f64>,
    /// Whether it passed.
    pub last_ok: bool,
    /// When a drill last passed.
    pub last_success: Option<f64>,
    /// The newest drill's phases and their seconds.
    pub phases: Vec<(String, f64)>,
    /// Its seconds to a promoted cluster (the measured restore time).
    pub restore_seconds: Option<f64>,
}

/// Backups and the window, as the daemon's tasks last saw them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    /// By kind.
    pub backups: BTreeMap<BackupKind, BackupSeen>,
    /// By timeline, oldest first.
    pub windows: Vec<WindowSeen>,
    /// Restore drills, once one has run.
    pub drill: Option<DrillSeen>,
}

/// Shared between the tasks that learn things (backups, catalog refresh) and the scrapes.
#[derive(Debug, Default)]
pub struct Observed {
    seen: Mutex<Seen>,
    /// Woken after a backup, so the catalog refresh need not wait for its tick.
    pub changed: tokio::sync::Notify,
}

fn secs(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// Stop time and duration of a completed backup.
fn completed(m: &Manifest) -> Option<(f64, f64)> {
    let stop = m.stop_at()?;
    let start = m.start_time;
    Some((secs(stop), (stop - start).num_milliseconds().max(0) as f64 / 1000.0))
}

impl Observed {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        // A panic elsewhere leaves plain numbers behind: still fine to read and write.
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A copy for one scrape.
    pub fn snapshot(&self) -> Seen {
        self.seen().clone()
    }

    /// Notes a backup the daemon completed, and wakes the catalog refresh (the window grew).
    pub fn backup_completed(&self, m: &Manifest) {
        self.note(m);
        self.changed.notify_one();
    }

    /// Notes a completed backup (the newest of its kind wins).
    fn note(&self, m: &Manifest) {
        if let Some((stop, duration)) = completed(m) {
            let mut seen = self.seen();
            let b = seen.backups.entry(m.kind).or_default();
            if b.last_success.is_none_or(|t| t <= stop) {
                (b.last_success, b.duration) = (Some(stop), Some(duration));
            }
        }
    }

    /// Notes a backup of `kind` the daemon ran that failed.
    pub fn backup_failed(&self, kind: BackupKind) {
        self.seen().backups.entry(kind).or_default().failures += 1;
    }

    /// Takes in drill records, oldest first (the newest sets the result and phases).
    pub fn drills(&self, records: &[crate::catalog::drill::DrillRecord]) {
        let mut seen = self.seen();
        for r in records {
            let d = seen.drill.get_or_insert_with(DrillSeen::default);
            let finished = secs(r.finished_at);
            if d.last_run.is_some_and(|t| t > finished) {
                continue;
            }
            d.last_run = Some(finished);
            d.last_ok = r.ok;
            d.phases = r.phases.iter().map(|p| (p.name.clone(), p.seconds)).collect();
            d.restore_seconds = r.restore_seconds;
            if r.ok {
                d.last_success = Some(finished);
            }
        }
    }

    /// Takes in what the catalog says: its completed backups (any process's) and the window.
    pub fn catalog(&self, completed_backups: &[Manifest], windows: &[(u32, Window)]) {
        for m in completed_backups {
            self.note(m);
        }
        self.seen().windows = windows
            .iter()
            .map(|(tli, w)| WindowSeen { timeline: *tli, start: w.earliest().map(secs), end: w.latest().map(secs) })
            .collect();
    }
}

/// How far archiving is behind: the files PostgreSQL marked ready and the age of the oldest.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Lag {
    /// Files marked `.ready`.
    pub segments: u64,
    /// Seconds since the oldest of them was marked (0 when none).
    pub seconds: f64,
}

/// The lag read from `archive_status` (a directory listing and one stat: cheap per scrape).
pub fn archive_lag(archive_status: &Path, now: SystemTime) -> Option<Lag> {
    let ready = crate::wal::watch::ready_files(archive_status).ok()?;
    let oldest = ready
        .iter()
        .filter_map(|n| std::fs::metadata(archive_status.join(format!("{n}.ready"))).ok()?.modified().ok())
        .min();
    let seconds = oldest.map_or(0.0, |t| now.duration_since(t).unwrap_or(Duration::ZERO).as_secs_f64());
    Some(Lag { segments: ready.len() as u64, seconds })
}

/// Everything one scrape renders.
#[derive(Debug, Clone, Default)]
pub struct Scraped {
    /// The WAL counters.
    pub stats: Stats,
    /// Backups and window.
    pub seen: Seen,
    /// Archive lag (none when `archive_status` cannot be read).
    pub lag: Option<Lag>,
    /// The last `verify` run recorded in the state directory.
    pub verify: Option<LastRun>,
}

/// The text exposition format, one family at a time.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let body: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            let _ = write!(self.0, "{{{}}}", body.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let mut cum = 0;
        for (i, b) in PUSH_BUCKETS.iter().enumerate() {
            cum += h.buckets.get(i).copied().unwrap_or(0);
            self.sample(&format!("{name}_bucket"), &[("le", &b.to_string())], cum);
        }
        self.sample(&format!("{name}_bucket"), &[("le", "+Inf")], h.count);
        self.sample(&format!("{name}_sum"), &[], h.sum);
        self.sample(&format!("{name}_count"), &[], h.count);
    }
}

/// A label value as the format wants it: backslash, quote and newline escaped (pure).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Renders the text exposition format (pure).
pub fn render(x: &Scraped) -> String {
    let s = &x.stats;
    let mut o = Exposition(String::new());
    o.family("tidemark_build_info", "gauge", "The running agent's version (always 1).");
    o.sample("tidemark_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
    o.single("tidemark_wal_stored_total", "counter", "WAL files stored by the daemon.", s.stored);
    o.single("tidemark_wal_already_archived_total", "counter", "WAL files found already archived.", s.already_archived);
    o.single("tidemark_wal_push_failures_total", "counter", "Failed push attempts.", s.failures);
    o.single(
        "tidemark_wal_plain_bytes_total",
        "counter",
        "Plaintext bytes of the WAL files stored (status: bytes_stored).",
        s.bytes_stored,
    );
    o.single(
        "tidemark_wal_sealed_bytes_total",
        "counter",
        "Sealed (compressed, encrypted) bytes of the WAL files stored, as written to the repository (status: bytes_sealed).",
        s.bytes_sealed,
    );
    o.single(
        "tidemark_wal_other_history_total",
        "counter",
        "Pushes refused because this server's WAL is another history than the archive's.",
        s.other_history,
    );
    o.single(
        "tidemark_store_requests_total",
        "counter",
        "Requests sent to the repository store (S3 listing pages of 1,000 keys).",
        s.store_requests,
    );
    o.single("tidemark_store_puts_total", "counter", "PUT requests sent to the repository store.", s.store_puts);
    o.family("tidemark_archiver_requests_total", "counter", "archive_command calls answered by the daemon.");
    o.sample("tidemark_archiver_requests_total", &[("path", "read_ahead")], s.served_from_read_ahead);
    o.sample("tidemark_archiver_requests_total", &[("path", "after_push")], s.served_after_push);
    o.single("tidemark_wal_ready_files", "gauge", "WAL files marked .ready.", s.ready);
    let last = s
        .last_archived
        .as_ref()
        .and_then(|(_, t)| DateTime::parse_from_rfc3339(t).ok())
        .map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
    o.single("tidemark_wal_last_archived_timestamp_seconds", "gauge", "When the last WAL file was archived.", last);
    o.histogram("tidemark_wal_push_seconds", "Time to push one WAL file.", &s.push_seconds);
    o.histogram("tidemark_wal_fetch_seconds", "Time wal-fetch took to put one WAL file in place.", &s.fetch_seconds);
    if let Some(lag) = x.lag {
        o.single(
            "tidemark_archive_lag_segments",
            "gauge",
            "WAL files PostgreSQL marked ready that are not archived yet.",
            lag.segments,
        );
        o.single(
            "tidemark_archive_lag_seconds",
            "gauge",
            "How long the oldest WAL file waiting to be archived has waited (0: none waits).",
            lag.seconds,
        );
    }
    backups(&mut o, &x.seen);
    windows(&mut o, &x.seen.windows);
    if let Some(d) = &x.seen.drill {
        drills(&mut o, d);
    }
    if let Some(v) = &x.verify {
        o.single(
            "tidemark_verify_last_run_timestamp_seconds",
            "gauge",
            "When the last `tidemark verify` finished.",
            v.finished().map_or(0.0, secs),
        );
        o.single(
            "tidemark_verify_last_result",
            "gauge",
            "1 when the last `tidemark verify` found everything sound, 0 when it found problems or failed.",
            u8::from(v.ok),
        );
        if let Some(t) = v.last_success() {
            o.single(
                "tidemark_verify_last_success_timestamp_seconds",
                "gauge",
                "When `tidemark verify` last found everything sound.",
                secs(t),
            );
        }
    }
    o.0
}

fn backups(o: &mut Exposition, seen: &Seen) {
    let get = |k: BackupKind| seen.backups.get(&k).copied().unwrap_or_default();
    o.family(
        "tidemark_backup_last_success_timestamp_seconds",
        "gauge",
        "Stop time of the newest completed backup of each kind.",
    );
    for k in KINDS {
        if let Some(t) = get(k).last_success {
            o.sample("tidemark_backup_last_success_timestamp_seconds", &[("kind", k.as_str())], t);
        }
    }
    o.family("tidemark_backup_duration_seconds", "gauge", "How long the newest completed backup of each kind took.");
    for k in KINDS {
        if let Some(d) = get(k).duration {
            o.sample("tidemark_backup_duration_seconds", &[("kind", k.as_str())], d);
        }
    }
    o.family(
        "tidemark_backup_failures_total",
        "counter",
        "Backups the daemon ran (scheduled or requested) that failed, since it started.",
    );
    for k in KINDS {
        o.sample("tidemark_backup_failures_total", &[("kind", k.as_str())], get(k).failures);
    }
}

fn drills(o: &mut Exposition, d: &DrillSeen) {
    if let Some(t) = d.last_run {
        o.single("tidemark_drill_last_run_timestamp_seconds", "gauge", "When the newest restore drill finished.", t);
    }
    o.single(
        "tidemark_drill_last_result",
        "gauge",
        "1 when the newest restore drill passed, 0 when it failed.",
        u8::from(d.last_ok),
    );
    if let Some(t) = d.last_success {
        o.single("tidemark_drill_last_success_timestamp_seconds", "gauge", "When a restore drill last passed.", t);
    }
    o.family("tidemark_drill_duration_seconds", "gauge", "How long each phase of the newest restore drill took.");
    for (phase, s) in &d.phases {
        o.sample("tidemark_drill_duration_seconds", &[("phase", phase)], s);
    }
    if let Some(s) = d.restore_seconds {
        o.single(
            "tidemark_drill_restore_seconds",
            "gauge",
            "Seconds the newest restore drill took to a promoted cluster: the restore time last measured.",
            s,
        );
    }
}

fn windows(o: &mut Exposition, windows: &[WindowSeen]) {
    let start: Vec<(u32, Option<f64>)> = windows.iter().map(|w| (w.timeline, w.start)).collect();
    let end: Vec<(u32, Option<f64>)> = windows.iter().map(|w| (w.timeline, w.end)).collect();
    for (name, help, values) in [
        ("tidemark_window_start_timestamp_seconds", "Earliest restorable time on each timeline.", start),
        ("tidemark_window_end_timestamp_seconds", "Latest restorable time on each timeline.", end),
    ] {
        o.family(name, "gauge", help);
        for (tli, t) in values {
            if let Some(t) = t {
                o.sample(name, &[("timeline", &tli.to_string())], t);
            }
        }
    }
}

/// What a request gets (pure): the metrics, or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET` or `HEAD /metrics`.
    Metrics,
    /// Another method.
    MethodNotAllowed,
    /// Another path.
    NotFound,
}

/// Routes a request (pure).
pub fn route(method: &Method, path: &str) -> Route {
    match (path, method) {
        ("/metrics", &Method::GET | &Method::HEAD) => Route::Metrics,
        ("/metrics", _) => Route::MethodNotAllowed,
        _ => Route::NotFound,
    }
}

/// What a scrape reads: the daemon's live state.
pub struct Sources {
    /// Read-ahead, holding the WAL counters.
    pub ra: Arc<ReadAhead>,
    /// Backups and window.
    pub observed: Arc<Observed>,
    /// `<data_dir>/pg_wal/archive_status`.
    pub archive_status: PathBuf,
    /// `daemon.state_dir`, where `verify` records its result.
    pub state_dir: PathBuf,
}

impl Sources {
    fn scrape(&self) -> Scraped {
        Scraped {
            stats: self.ra.stats(),
            seen: self.observed.snapshot(),
            lag: archive_lag(&self.archive_status, SystemTime::now()),
            verify: last_run::load(&self.state_dir),
        }
    }
}

fn respond(req: &Request<hyper::body::Incoming>, src: &Sources) -> Response<Full<Bytes>> {
    let (status, body) = match route(req.method(), req.uri().path()) {
        Route::Metrics => (StatusCode::OK, render(&src.scrape())),
        Route::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".to_string()),
        Route::NotFound => (StatusCode::NOT_FOUND, "not found: metrics are at /metrics\n".to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let content_type = if status == StatusCode::OK { "text/plain; version=0.0.4; charset=utf-8" } else { "text/plain" };
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    }
    resp
}

/// Serves `/metrics` until the task is dropped.
pub async fn serve(listener: TcpListener, src: Arc<Sources>) {
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                tracing::debug!(error = %e, "metrics: accept failed");
                continue;
            }
        };
        let src = src.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let resp = respond(&req, &src);
                async move { Ok::<_, Infallible>(resp) }
            });
            // A client that never finishes its headers does not hold a task for ever.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(sock), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics: connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_histogram() {
        let mut s = Stats { stored: 3, bytes_stored: 48 << 20, ..Stats::default() };
        s.push_seconds.observe(0.004);
        s.push_seconds.observe(0.3);
        let text = render(&Scraped { stats: s, ..Scraped::default() });
        assert!(text.contains("tidemark_wal_stored_total 3\n"));
        assert!(text.contains("tidemark_wal_plain_bytes_total 50331648\n"), "{text}");
        assert!(text.contains("tidemark_wal_push_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("tidemark_wal_fetch_seconds_count 0\n"), "{text}");
        assert!(text.contains("tidemark_wal_push_seconds_bucket{le=\"0.5\"} 2\n"));
        assert!(text.contains("tidemark_wal_push_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("tidemark_wal_push_seconds_count 2\n"));
        assert!(!text.contains("bytes_shipped"), "{text}");
    }

    #[test]
    fn renders_backups_windows_lag_and_verify() {
        let mut seen = Seen::default();
        seen.backups.insert(
            BackupKind::Manual,
            BackupSeen { last_success: Some(1_764_600_000.5), duration: Some(12.25), failures: 2 },
        );
        seen.windows = vec![WindowSeen { timeline: 2, start: Some(1_764_500_000.0), end: Some(1_764_600_100.0) }];
        let verify = Some(LastRun {
            finished_at: "2026-12-01T03:00:00Z".into(),
            ok: false,
            deep: false,
            last_success_at: Some("2026-11-30T03:00:00Z".into()),
        });
        let lag = Some(Lag { segments: 4, seconds: 90.5 });
        let text = render(&Scraped { stats: Stats::default(), seen, lag, verify });
        for want in [
            "tidemark_build_info{version=\"",
            "tidemark_backup_last_success_timestamp_seconds{kind=\"manual\"} 1764600000.5\n",
            "tidemark_backup_duration_seconds{kind=\"manual\"} 12.25\n",
            "tidemark_backup_failures_total{kind=\"manual\"} 2\n",
            "tidemark_backup_failures_total{kind=\"automatic\"} 0\n",
            "tidemark_window_start_timestamp_seconds{timeline=\"2\"} 1764500000\n",
            "tidemark_window_end_timestamp_seconds{timeline=\"2\"} 1764600100\n",
            "tidemark_archive_lag_segments 4\n",
            "tidemark_archive_lag_seconds 90.5\n",
            "tidemark_verify_last_result 0\n",
            "tidemark_verify_last_run_timestamp_seconds 1796094000\n",
            "tidemark_verify_last_success_timestamp_seconds 1796007600\n",
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
        // No backup of a kind yet: no timestamp rather than a zero that reads as 1970.
        assert!(!text.contains("tidemark_backup_last_success_timestamp_seconds{kind=\"automatic\"}"), "{text}");
    }

    #[test]
    fn drills_show_the_newest_result_its_phases_and_the_last_success() {
        use crate::catalog::drill::{DrillRecord, Phase};
        let t = |s: &str| crate::catalog::backup::time_format::parse(s).unwrap();
        let rec = |finished: &str, ok: bool, replay: f64| DrillRecord {
            id: format!("{finished}-x"),
            cluster: "c".into(),
            started_at: t(finished),
            finished_at: t(finished),
            ok,
            trigger: "scheduled".into(),
            target: "latest".into(),
            backup: None,
            phases: vec![Phase { name: "replay".into(), seconds: replay }],
            checks: Vec::new(),
            restore_seconds: Some(replay + 1.0),
            error: None,
        };
        let o = Observed::default();
        o.drills(&[rec("2026-11-29T04:00:00Z", true, 3.0), rec("2026-11-30T04:00:00Z", false, 4.5)]);
        // An older record read later changes nothing.
        o.drills(&[rec("2026-11-28T04:00:00Z", true, 9.0)]);
        let text = render(&Scraped { seen: o.snapshot(), ..Scraped::default() });
        for want in [
            "tidemark_drill_last_result 0\n",
            "tidemark_drill_last_run_timestamp_seconds 1796011200\n",
            "tidemark_drill_last_success_timestamp_seconds 1795924800\n",
            "tidemark_drill_duration_seconds{phase=\"replay\"} 4.5\n",
            "tidemark_drill_restore_seconds 5.5\n",
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
        // No drill yet: no drill series at all.
        assert!(!render(&Scraped::default()).contains("tidemark_drill_"));
    }

    #[test]
    fn only_get_and_head_of_metrics() {
        assert_eq!(route(&Method::GET, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::HEAD, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::POST, "/metrics"), Route::MethodNotAllowed);
        assert_eq!(route(&Method::GET, "/"), Route::NotFound);
        assert_eq!(route(&Method::GET, "/metrics/x"), Route::NotFound);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn lag_is_the_ready_files_and_the_age_of_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(archive_lag(dir.path(), SystemTime::now()), Some(Lag::default()));
        std::fs::write(dir.path().join("000000010000000000000003.ready"), b"").unwrap();
        std::fs::write(dir.path().join("000000010000000000000002.done"), b"").unwrap();
        let later = SystemTime::now() + Duration::from_secs(60);
        let lag = archive_lag(dir.path(), later).unwrap();
        assert_eq!(lag.segments, 1);
        assert!((59.0..120.0).contains(&lag.seconds), "{lag:?}");
        assert_eq!(archive_lag(&dir.path().join("absent"), later), None);
    }

    #[test]
    fn the_newest_completed_backup_of_a_kind_wins() {
        use crate::catalog::backup::tests::old_manifest;
        let o = Observed::default();
        let mut a = old_manifest("automatic", "completed", "2026-12-01T03:00:00Z");
        a.stop_time = crate::catalog::backup::time_format::parse("2026-12-01T03:00:30Z");
        let mut b = a.clone();
        b.start_time = crate::catalog::backup::time_format::parse("2026-11-30T03:00:00Z").unwrap();
        b.stop_time = crate::catalog::backup::time_format::parse("2026-11-30T03:01:00Z");
        o.backup_completed(&a);
        o.backup_completed(&b);
        o.backup_failed(BackupKind::Automatic);
        let seen = o.snapshot().backups[&BackupKind::Automatic];
        assert_eq!(seen.duration, Some(30.0));
        assert_eq!(seen.failures, 1);
        assert_eq!(seen.last_success, Some(secs(a.stop_at().unwrap())));
    }
}
