//! The control socket: one JSON request line, one JSON response line.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::archive::push::PushOutcome;

/// A request to the daemon.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Archive the file at `path` (absolute), answering once it is durably stored.
    Push {
        /// Absolute path of the WAL file.
        path: String,
    },
    /// Counters and state.
    Stats,
    /// Take a manual backup (`backup create` without `--wait`): answered once it is recorded
    /// as running, or with why it could not start.
    Backup,
    /// `Backup`, incremental (`backup create --incremental`).
    BackupIncremental,
    /// A `wal-fetch` reports how long it took (for the fetch latency histogram).
    FetchTiming {
        /// Seconds from start to the file in place.
        seconds: f64,
    },
}

/// The daemon's counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// Files the daemon stored.
    pub stored: u64,
    /// Files that were already in the archive.
    pub already_archived: u64,
    /// Archiver requests answered from read-ahead that had already finished.
    pub served_from_read_ahead: u64,
    /// Archiver requests that waited for or performed the push.
    pub served_after_push: u64,
    /// Failed push attempts.
    pub failures: u64,
    /// Plain bytes (their size on the server) of the files stored: the metrics'
    /// `tidemark_wal_plain_bytes_total`.
    pub bytes_stored: u64,
    /// Last file archived and when (RFC 3339).
    pub last_archived: Option<(String, String)>,
    /// Last failure message.
    pub last_failure: Option<String>,
    /// Files currently marked .ready.
    pub ready: u64,
    /// Sealed (compressed, encrypted) bytes of the files stored, as the repository holds
    /// them: the metrics' `tidemark_wal_sealed_bytes_total`.
    #[serde(default)]
    pub bytes_sealed: u64,
    /// Push durations.
    #[serde(default)]
    pub push_seconds: Histogram,
    /// `wal-fetch` durations reported by the fetching processes.
    #[serde(default)]
    pub fetch_seconds: Histogram,
    /// Pushes refused because this server's WAL is another history than the archive's
    /// (a different file under an archived name, or a segment that does not chain).
    #[serde(default)]
    pub other_history: u64,
    /// The last such refusal (names both digests, or the LSNs that do not join).
    #[serde(default)]
    pub other_history_error: Option<String>,
    /// Requests the daemon sent to the repository store, everything included (S3 listing
    /// pages of 1,000 keys): what archiving costs per segment, with `stored`.
    #[serde(default)]
    pub store_requests: u64,
    /// Of those, PUTs.
    #[serde(default)]
    pub store_puts: u64,
    /// The same by kind (get, put, head, list, delete).
    #[serde(default)]
    pub store_requests_by_kind: serde_json::Value,
}

/// Upper bounds (seconds) of the push latency histogram buckets.
pub const PUSH_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A Prometheus-style histogram over `PUSH_BUCKETS`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Histogram {
    /// Observations at or below each bucket bound (not cumulative).
    pub buckets: Vec<u64>,
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, secs: f64) {
        if self.buckets.len() != PUSH_BUCKETS.len() {
            self.buckets = vec![0; PUSH_BUCKETS.len()];
        }
        if let Some(i) = PUSH_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += secs;
        self.count += 1;
    }
}

/// A daemon response.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    /// The file is durably archived.
    Pushed {
        /// Stored now or earlier.
        outcome: PushOutcome,
        /// True when read-ahead had finished before the request came.
        read_ahead: bool,
    },
    /// Counters.
    Stats(Box<Stats>),
    /// Noted (fetch timings).
    Noted,
    /// The daemon took the backup: it is recorded as running and goes on in the daemon.
    BackupStarted {
        /// Backup id.
        id: String,
    },
    /// The request failed.
    Error {
        /// What went wrong and what to do.
        message: String,
    },
}

/// Why the client could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket: the caller should do the work itself.
    #[error("no daemon at {0}: {1}")]
    NoDaemon(String, std::io::Error),
    /// The daemon went away or sent garbage mid-request.
    #[error("daemon at {0} failed mid-request: {1}")]
    Broken(String, String),
}

/// Sends one request and waits up to `timeout` for the answer.
pub async fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let line = encode(socket, req)?;
    let socket = socket.to_path_buf();
    let s = socket.display().to_string();
    tokio::task::spawn_blocking(move || exchange(&socket, &line, timeout))
        .await
        .map_err(|e| ClientError::Broken(s, format!("client task failed: {e}")))?
}

/// `call` without an async runtime: `wal-push` and `wal-fetch` run once per WAL file, and
/// starting a runtime only to wait on one socket is a measurable part of each call.
pub fn call_blocking(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    exchange(socket, &encode(socket, req)?, timeout)
}

/// The request as one JSON line.
fn encode(socket: &Path, req: &Request) -> Result<String, ClientError> {
    let mut line = serde_json::to_string(req)
        .map_err(|e| ClientError::Broken(socket.display().to_string(), format!("cannot encode the request: {e}")))?;
    line.push('\n');
    Ok(line)
}

fn exchange(socket: &Path, line: &str, timeout: Duration) -> Result<Response, ClientError> {
    use std::io::{BufRead, Write};
    let s = socket.display().to_string();
    // A listening daemon accepts at once (the kernel queues the connection), so connect
    // needs no timeout of its own: a missing or stale socket fails immediately.
    let mut stream =
        std::os::unix::net::UnixStream::connect(socket).map_err(|e| ClientError::NoDaemon(s.clone(), e))?;
    let broken = |e: std::io::Error| {
        let msg = if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
            format!("no answer within {timeout:?}")
        } else {
            e.to_string()
        };
        ClientError::Broken(s.clone(), msg)
    };
    stream.set_write_timeout(Some(timeout)).map_err(broken)?;
    stream.set_read_timeout(Some(timeout)).map_err(broken)?;
    stream.write_all(line.as_bytes()).map_err(broken)?;
    let mut resp = String::new();
    std::io::BufReader::new(&stream).read_line(&mut resp).map_err(broken)?;
    if resp.is_empty() {
        return Err(ClientError::Broken(s, "connection closed without an answer".to_string()));
    }
    serde_json::from_str::<Response>(&resp).map_err(|e| ClientError::Broken(s, format!("bad answer: {e}")))
}
