//! Archive read-ahead: push `.ready` files in parallel before the archiver asks for them,
//! and answer the archiver's request once its file is durably stored.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::archive::push::{Archiver, PushOutcome};
use crate::daemon::control::Stats;
use crate::wal::watch;

/// Identity of a file on disk: a recycled segment file gets a new stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

type PushResult = Result<(Stamp, PushOutcome), Arc<str>>;
type PushFuture = Shared<BoxFuture<'static, PushResult>>;

#[derive(Default)]
struct State {
    inflight: HashMap<String, PushFuture>,
    done: HashMap<String, (Stamp, PushOutcome)>,
    /// Failed names: attempts so far and when to try again.
    backoff: HashMap<String, (u32, Instant)>,
    /// Timelines this node holds another history of than the archive: push-ahead stops
    /// pushing them (the archiver's own requests are still tried, and fail loudly).
    fenced: std::collections::HashSet<u32>,
    /// Names whose push-ahead was refused until their predecessor is archived: the
    /// archiver's own request for one pushes it in order instead of taking that answer.
    unordered: std::collections::HashSet<String>,
    /// Pushes waiting for a worker, in archive order (history files first): each gets its
    /// permit in this order, so a push never holds a worker while its predecessor waits.
    queue: std::collections::BTreeMap<(bool, String), tokio::sync::oneshot::Sender<OwnedSemaphorePermit>>,
    dispatching: bool,
    stats: Stats,
}

/// The timeline of a WAL file name (its first 8 hex digits).
fn timeline_of(name: &str) -> Option<u32> {
    name.get(..8).and_then(|t| u32::from_str_radix(t, 16).ok())
}

/// The read-ahead engine for one data directory.
pub struct ReadAhead {
    archiver: Arc<Archiver>,
    pg_wal: PathBuf,
    permits: Arc<Semaphore>,
    state: Arc<Mutex<State>>,
    queued: Arc<Notify>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave State inconsistent in a way that loses WAL:
    // at worst a file is pushed again, which is idempotent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ReadAhead {
    /// Read-ahead with `workers` parallel uploads.
    pub fn new(archiver: Arc<Archiver>, data_dir: &Path, workers: usize) -> ReadAhead {
        ReadAhead {
            archiver,
            pg_wal: data_dir.join("pg_wal"),
            permits: Arc::new(Semaphore::new(workers.max(1))),
            state: Arc::new(Mutex::new(State::default())),
            queued: Arc::new(Notify::new()),
        }
    }

    /// Records a `wal-fetch` duration.
    pub fn record_fetch(&self, seconds: f64) {
        lock(&self.state).stats.fetch_seconds.observe(seconds);
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        let mut s = lock(&self.state).stats.clone();
        if let Some(c) = self.archiver.repo().requests() {
            s.store_requests = c.total();
            s.store_puts = c.put.load(std::sync::atomic::Ordering::Relaxed);
            s.store_requests_by_kind = c.json();
        }
        s
    }

    /// Starts (or joins) the push of `name` from pg_wal.
    fn ensure(&self, name: &str, priority: bool) -> PushFuture {
        let mut st = lock(&self.state);
        if let Some(f) = st.inflight.get(name) {
            return f.clone();
        }
        let archiver = self.archiver.clone();
        let path = self.pg_wal.join(name);
        let state = self.state.clone();
        let n = name.to_string();
        // Reserved before it queues: a successor's chain check waits for this push.
        let reserved = archiver.reserve(name);
        // The archiver's own request skips the queue: it is what PostgreSQL waits on.
        let turn = (!priority).then(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (rank, name) = watch::archive_order(name);
            st.queue.insert((rank, name.to_string()), tx);
            if !std::mem::replace(&mut st.dispatching, true) {
                tokio::spawn(dispatch(self.state.clone(), self.permits.clone(), self.queued.clone()));
            }
            self.queued.notify_one();
            rx
        });
        let task = tokio::spawn(async move {
            let _permit = match turn {
                Some(rx) => rx.await.ok(),
                None => None,
            };
            let began = Instant::now();
            let res = async {
                let before =
                    stamp(&path).map_err(|e| (false, false, format!("cannot stat {}: {e}", path.display())))?;
                let pushed = if priority { archiver.push(&path).await } else { archiver.push_ahead(&path).await };
                let outcome = pushed.map_err(|e| (e.is_other_history(), e.is_unordered(), e.to_string()))?;
                Ok::<_, (bool, bool, String)>((before, outcome))
            }
            .await;
            let result = {
                let mut st = lock(&state);
                st.inflight.remove(&n);
                st.stats.push_seconds.observe(began.elapsed().as_secs_f64());
                st.stats.bytes_sealed = archiver.sealed_bytes();
                match res {
                    Ok((s, outcome)) => {
                        st.backoff.remove(&n);
                        st.unordered.remove(&n);
                        match outcome {
                            PushOutcome::Stored => {
                                st.stats.stored += 1;
                                st.stats.bytes_stored += s.len;
                            }
                            PushOutcome::AlreadyArchived => st.stats.already_archived += 1,
                        }
                        st.stats.last_archived =
                            Some((n.clone(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
                        st.done.insert(n.clone(), (s, outcome));
                        tracing::info!(file = %n, ?outcome, "archived");
                        Ok((s, outcome))
                    }
                    Err((_, true, e)) => {
                        // Not a failure: it goes in order, after its predecessor.
                        st.unordered.insert(n.clone());
                        st.backoff.insert(n.clone(), (1, Instant::now() + Duration::from_secs(2)));
                        tracing::debug!(file = %n, reason = %e, "not pushed ahead");
                        Err(Arc::<str>::from(e))
                    }
                    Err((other_history, _, e)) => {
                        if other_history {
                            st.stats.other_history += 1;
                            if let Some(tli) = timeline_of(&n) {
                                if st.fenced.insert(tli) {
                                    tracing::error!(file = %n, timeline = tli, error = %e, "this server's WAL is another history than the archive's; push-ahead stops on this timeline");
                                }
                            }
                            st.stats.other_history_error = Some(e.clone());
                        }
                        st.stats.failures += 1;
                        st.stats.last_failure = Some(e.clone());
                        let attempts = st.backoff.get(&n).map_or(0, |b| b.0) + 1;
                        let delay = Duration::from_secs((1u64 << attempts.min(5)).min(30));
                        st.backoff.insert(n.clone(), (attempts, Instant::now() + delay));
                        tracing::warn!(file = %n, attempts, error = %e, "push failed; will retry");
                        Err(Arc::<str>::from(e))
                    }
                }
            };
            drop(reserved);
            if archiver.pending_summaries() >= crate::archive::push::BATCH {
                if let Err(e) = archiver.flush_summaries().await {
                    tracing::warn!(error = %e, "writing a batch of WAL summaries failed; retrying with the next");
                }
            }
            result
        });
        let fut: BoxFuture<'static, PushResult> =
            async move { task.await.unwrap_or_else(|e| Err(Arc::<str>::from(format!("push task failed: {e}")))) }
                .boxed();
        let shared = fut.shared();
        st.inflight.insert(name.to_string(), shared.clone());
        shared
    }

    /// One pass over archive_status: queue every ready file not yet pushed.
    pub fn scan(&self) {
        let names = match watch::ready_files(&self.pg_wal.join("archive_status")) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list archive_status");
                return;
            }
        };
        let now = Instant::now();
        let todo: Vec<String> = {
            let mut st = lock(&self.state);
            st.stats.ready = names.len() as u64;
            // Files PostgreSQL has since marked .done need no answer any more.
            let ready: std::collections::HashSet<&String> = names.iter().collect();
            st.done.retain(|n, _| ready.contains(n));
            st.backoff.retain(|n, _| ready.contains(n));
            st.unordered.retain(|n| ready.contains(n));
            // Names come in order: past one still backing off on a timeline, nothing more
            // of it is pushed ahead (its successors are archived after it anyway).
            let mut waiting = std::collections::HashSet::new();
            names
                .into_iter()
                .filter(|n| {
                    let tli = timeline_of(n);
                    if tli.is_some_and(|t| st.fenced.contains(&t) || waiting.contains(&t)) {
                        return false;
                    }
                    if st.backoff.get(n).is_some_and(|b| b.1 > now) {
                        waiting.extend(tli);
                        return false;
                    }
                    !st.done.contains_key(n) && !st.inflight.contains_key(n)
                })
                .collect()
        };
        for n in todo {
            drop(self.ensure(&n, false));
        }
    }

    /// Answers the archiver for `path`: done already, or push it now and wait.
    pub async fn request(&self, path: &Path) -> Result<(PushOutcome, bool), String> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let in_pg_wal = path.parent().is_some_and(|p| same_dir(p, &self.pg_wal));
        if !in_pg_wal {
            // The socket is reachable by the daemon's group: a path outside pg_wal is never
            // read (the archiver refuses it too; this names the reason without touching it).
            return Err(crate::archive::push::check_in_wal_dir(path, &self.pg_wal)
                .err()
                .map_or_else(|| format!("{} is not in {}", path.display(), self.pg_wal.display()), |e| e.to_string()));
        }
        let current = stamp(path).map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
        let served = {
            let mut st = lock(&self.state);
            // The entry stays until PostgreSQL renames .ready to .done (the scan prunes it),
            // so a scan in between does not push the same file again.
            match st.done.get(&name) {
                Some(&(s, outcome)) if s == current => {
                    st.stats.served_from_read_ahead += 1;
                    Some(outcome)
                }
                _ => None,
            }
        };
        if let Some(outcome) = served {
            self.settle(Some(&name)).await;
            return Ok((outcome, true));
        }
        let (s, outcome) = match self.ensure(&name, true).await {
            Ok(v) => v,
            // A push-ahead refused until its predecessor is archived, which it now is.
            Err(_) if lock(&self.state).unordered.remove(&name) => {
                self.ensure(&name, true).await.map_err(|e| e.to_string())?
            }
            Err(e) => return Err(e.to_string()),
        };
        lock(&self.state).stats.served_after_push += 1;
        if s != current {
            // The file changed under us: push exactly what is there now.
            let o = self.archiver.push(path).await.map(|o| (o, false)).map_err(|e| e.to_string());
            self.settle(Some(&name)).await;
            return o;
        }
        self.settle(Some(&name)).await;
        Ok((outcome, false))
    }

    /// Writes the batched summaries once the archive has caught up (no file but `answering`
    /// waits in archive_status), so what is archived is indexed before PostgreSQL moves on;
    /// under load they go in full batches instead.
    pub async fn settle(&self, answering: Option<&str>) {
        if self.archiver.pending_summaries() == 0 {
            return;
        }
        let caught_up = match watch::ready_files(&self.pg_wal.join("archive_status")) {
            Ok(names) => names.iter().all(|r| Some(r.as_str()) == answering),
            Err(_) => true,
        };
        if caught_up || self.archiver.pending_summaries() >= crate::archive::push::BATCH {
            if let Err(e) = self.archiver.flush_summaries().await {
                tracing::warn!(error = %e, "writing the WAL summaries failed; retrying in a moment");
            }
        }
    }

    /// Writes whatever summaries wait (shutdown).
    pub async fn flush(&self) {
        if let Err(e) = self.archiver.flush_summaries().await {
            tracing::warn!(error = %e, "writing the WAL summaries at shutdown failed; the next roll-up summarizes those segments from their bytes");
        }
    }

    /// Waits until no push is running (shutdown).
    pub async fn drain(&self) {
        let futs: Vec<PushFuture> = lock(&self.state).inflight.values().cloned().collect();
        for f in futs {
            let _ = f.await;
        }
    }
}

/// Hands out workers to the queued pushes, oldest name first.
async fn dispatch(state: Arc<Mutex<State>>, permits: Arc<Semaphore>, queued: Arc<Notify>) {
    loop {
        if lock(&state).queue.is_empty() {
            queued.notified().await;
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let next = lock(&state).queue.pop_first();
        if let Some((_, tx)) = next {
            // A dropped receiver (its task ended) gives the permit straight back.
            let _ = tx.send(permit);
        }
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}
