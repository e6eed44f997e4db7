//! Prometheus metrics on `daemon.metrics_listen` (loopback unless `daemon.metrics_public`).

use std::fmt::Write;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::daemon::control::{Stats, PUSH_BUCKETS};
use crate::daemon::read_ahead::ReadAhead;

/// Renders the text exposition format (pure).
pub fn render(s: &Stats) -> String {
    let mut o = String::new();
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    };
    counter("tidemark_wal_stored_total", "WAL files stored by the daemon.", s.stored);
    counter("tidemark_wal_already_archived_total", "WAL files found already archived.", s.already_archived);
    counter("tidemark_wal_push_failures_total", "Failed push attempts.", s.failures);
    counter("tidemark_wal_bytes_shipped_total", "Plaintext WAL bytes stored.", s.bytes_stored);
    counter("tidemark_wal_bytes_stored_total", "Compressed, encrypted WAL bytes stored.", s.bytes_sealed);
    counter(
        "tidemark_wal_other_history_total",
        "Pushes refused because this server's WAL is another history than the archive's.",
        s.other_history,
    );
    counter(
        "tidemark_store_requests_total",
        "Requests sent to the repository store (S3 listing pages of 1,000 keys).",
        s.store_requests,
    );
    counter("tidemark_store_puts_total", "PUT requests sent to the repository store.", s.store_puts);
    let _ = writeln!(
        o,
        "# HELP tidemark_archiver_requests_total archive_command calls answered by the daemon.\n# TYPE tidemark_archiver_requests_total counter\ntidemark_archiver_requests_total{{path=\"read_ahead\"}} {}\ntidemark_archiver_requests_total{{path=\"after_push\"}} {}",
        s.served_from_read_ahead, s.served_after_push
    );
    let _ = writeln!(o, "# HELP tidemark_wal_ready_files WAL files marked .ready.\n# TYPE tidemark_wal_ready_files gauge\ntidemark_wal_ready_files {}", s.ready);
    let last = s
        .last_archived
        .as_ref()
        .and_then(|(_, t)| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
    let _ = writeln!(
        o,
        "# HELP tidemark_wal_last_archived_timestamp_seconds When the last WAL file was archived.\n# TYPE tidemark_wal_last_archived_timestamp_seconds gauge\ntidemark_wal_last_archived_timestamp_seconds {last}"
    );
    histogram(&mut o, "tidemark_wal_push_seconds", "Time to push one WAL file.", &s.push_seconds);
    histogram(
        &mut o,
        "tidemark_wal_fetch_seconds",
        "Time wal-fetch took to put one WAL file in place.",
        &s.fetch_seconds,
    );
    o
}

fn histogram(o: &mut String, name: &str, help: &str, h: &crate::daemon::control::Histogram) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cum = 0;
    for (i, b) in PUSH_BUCKETS.iter().enumerate() {
        cum += h.buckets.get(i).copied().unwrap_or(0);
        let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {cum}");
    }
    let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}", h.count, h.sum, h.count);
}

/// Serves `/metrics` (any path) until the task is dropped.
pub async fn serve(listener: TcpListener, ra: Arc<ReadAhead>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else { continue };
        let body = render(&ra.stats());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let _ = sock.read(&mut buf).await;
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
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
        let text = render(&s);
        assert!(text.contains("tidemark_wal_stored_total 3\n"));
        assert!(text.contains("tidemark_wal_push_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("tidemark_wal_fetch_seconds_count 0\n"), "{text}");
        assert!(text.contains("tidemark_wal_push_seconds_bucket{le=\"0.5\"} 2\n"));
        assert!(text.contains("tidemark_wal_push_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("tidemark_wal_push_seconds_count 2\n"));
    }
}
