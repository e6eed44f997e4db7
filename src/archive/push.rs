//! Archiving one WAL file: validate, seal, store without overwriting, acknowledge.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::catalog::block_index;
use crate::catalog::restore_plan::Join;
use crate::catalog::wal_index::{self, IndexBuilder, SegmentIndex};
use crate::codec::envelope::read_full;
use crate::codec::{CodecError, Sealer};
use crate::repo::cluster::{self, ClusterRecord};
use crate::repo::{RepoError, Repository};
use crate::store::{PutOutcome, Staged};
use crate::wal::name::{Lsn, Segment, WalFile, DEFAULT_SEGMENT_SIZE};
use crate::wal::{header, history};

/// What happened to a pushed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushOutcome {
    /// Newly stored.
    Stored,
    /// The same bytes were already archived.
    AlreadyArchived,
}

/// Why a file was not archived. Nothing in the archive changes in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The file could not be read.
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    /// The file name is not one PostgreSQL archives.
    #[error("{0}")]
    Name(#[from] crate::wal::name::NameError),
    /// The segment's header is unreadable.
    #[error("{0}: {1}")]
    Header(String, header::HeaderError),
    /// The segment's length does not match its declared segment size.
    #[error(
        "{0}: segment is {1} bytes but its header declares {2}-byte segments (file still being written, or damaged?)"
    )]
    Length(String, u64, u64),
    /// Another database is archiving under this handle.
    #[error("{name}: system identifier {found} does not match cluster '{cluster}' (system identifier {expected}) in the repository; a different database is configured with the same cluster handle: give it its own `cluster` in the config")]
    WrongSystem {
        /// File name.
        name: String,
        /// Handle.
        cluster: String,
        /// Identifier recorded in the repository.
        expected: String,
        /// Identifier in the segment.
        found: String,
    },
    /// A different file is already archived under this name.
    #[error("{name}: a different file is already archived under this name (archive sha256 {archived}, local sha256 {local}); the archive was left untouched. Another cluster may share this handle, or this server was restored without a new handle")]
    Conflict {
        /// File name.
        name: String,
        /// Digest of the archived object's plaintext.
        archived: String,
        /// Digest of the local file.
        local: String,
    },
    /// A segment that does not continue the WAL archived next to it: another server with the
    /// same system identifier (a copy of this one) is archiving under this handle.
    #[error("{name}: does not continue the archived WAL: {detail}; the archive was left untouched. Two servers with the same system identifier are archiving under one handle (a copied data directory started, or a split brain): stop the one that is not the primary, or give it its own `cluster`")]
    ChainBreak {
        /// File name.
        name: String,
        /// Which boundary does not join, and the LSNs.
        detail: String,
    },
    /// A segment pushed ahead whose predecessor this archiver has not archived yet (being
    /// pushed, or failed here): archived only after it, so that a successor never lands
    /// past a predecessor that turns out to be another history.
    #[error("{name}: not archived yet: its predecessor {before} is not in the archive, and this server's push of it has not succeeded; it goes after its predecessor")]
    Unordered {
        /// File name.
        name: String,
        /// The predecessor's name.
        before: String,
    },
    /// Not a file PostgreSQL's archiver would hand over: only WAL is archived.
    #[error("{0}")]
    NotWal(String),
    /// The cluster record could not be claimed.
    #[error(transparent)]
    Claim(#[from] cluster::ClaimError),
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl PushError {
    /// Whether this node holds another history than the archive's for this file (a conflict
    /// under the name or a broken chain): pushing more of the same timeline would only spread it.
    pub fn is_other_history(&self) -> bool {
        matches!(self, PushError::Conflict { .. } | PushError::ChainBreak { .. })
    }

    /// Whether the push only has to wait for its predecessor (a push ahead of it).
    pub fn is_unordered(&self) -> bool {
        matches!(self, PushError::Unordered { .. })
    }
}

/// Pushes WAL files of one cluster; caches the cluster record between pushes.
#[derive(Debug)]
pub struct Archiver {
    repo: Repository,
    record: OnceCell<ClusterRecord>,
    sealed_bytes: std::sync::atomic::AtomicU64,
    /// The only directory files are archived from (the cluster's `pg_wal`), when known.
    wal_dir: Option<PathBuf>,
    /// Summaries of segments this archiver stored or read, for the chain checks of their
    /// neighbours (the daemon pushes consecutive segments, so most checks need no request).
    summaries: Mutex<HashMap<(u32, u64), SegmentIndex>>,
    /// With batching (the daemon): summaries of stored segments not written yet, by
    /// (timeline, segment), with the segment size.
    pending: Option<Mutex<Pending>>,
    /// With batching: block references of stored segments not written yet, by (timeline,
    /// segment size), then segment. Not journaled: a crash leaves their segments a gap.
    pending_blocks: Mutex<PendingBlocks>,
    /// The lowest segment per timeline this archiver has stored or seen summarized: one
    /// after it that is not in the cache is one this archiver has not pushed yet.
    frontier: Mutex<HashMap<u32, u64>>,
    /// One batch written at a time.
    flushing: tokio::sync::Mutex<()>,
    /// Where waiting summaries are kept on local disk until their batch is written, so a
    /// killed daemon finds them again at start (appended and synced before the answer).
    journal: Option<Mutex<PathBuf>>,
    /// Segments being pushed by this archiver right now.
    pushing: Arc<Mutex<InFlight>>,
    /// Segments whose push failed here and that are not archived since: whether as another
    /// history. A successor of one is not archived ahead of it.
    refused: Mutex<HashMap<(u32, u64), bool>>,
}

/// (timeline, segment) → (segment size, summary) of what waits for its batch.
type Pending = BTreeMap<(u32, u64), (u64, SegmentIndex)>;

/// Encoded block references waiting for their batch: (timeline, segment size) → segment → bytes.
type PendingBlocks = BTreeMap<(u32, u64), BTreeMap<u64, Vec<u8>>>;

/// WAL file name → (holders, who to wake when the last lets go).
type InFlight = HashMap<String, (usize, Arc<tokio::sync::Notify>)>;

/// Summaries a batch holds before it is written whatever else happens.
pub const BATCH: usize = 64;

/// Summaries kept for chain checks before the cache is emptied.
const SUMMARY_CACHE: usize = 1024;

/// Whether a push follows PostgreSQL's archiver (its predecessor is archived) or runs
/// ahead of it (the daemon's push-ahead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    InOrder,
    Ahead,
}

/// How long a successor's chain check waits for this archiver's push of its predecessor.
const PREDECESSOR_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Bytes read per step while a file streams through the sealer: whole pages for any WAL
/// page size, and small enough that many parallel pushes stay within a few MiB each.
const PIECE: usize = 256 << 10;

/// Where pushed bytes come from; opened again to hash them when a name is already taken.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Memory(Bytes),
}

impl Source {
    /// Opens the bytes and tells their length.
    fn open(&self) -> std::io::Result<(Box<dyn Read + Send>, u64)> {
        match self {
            Source::File(p) => {
                // Never through a symlink swapped in after the checks.
                let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(p)?;
                let len = f.metadata()?.len();
                Ok((Box::new(f), len))
            }
            Source::Memory(b) => Ok((Box::new(std::io::Cursor::new(b.clone())), b.len() as u64)),
        }
    }

    /// Hex SHA-256 of the bytes.
    fn digest(&self) -> std::io::Result<String> {
        let (mut r, _) = self.open()?;
        let mut w = Sha256::new();
        std::io::copy(&mut r, &mut w)?;
        Ok(hex::encode(w.finalize()))
    }
}

/// An opened source with its first piece read.
struct Opened {
    reader: Box<dyn Read + Send>,
    first: Vec<u8>,
    len: u64,
}

/// What streaming a file into the store produced.
struct Streamed {
    staged: Staged,
    index: Option<SegmentIndex>,
    /// The segment's block references, encoded.
    blocks: Option<Vec<u8>>,
    sealed_bytes: u64,
}

/// Streams the rest of `src` through the sealer into `staged`, walking a segment's records
/// on the way; nothing holds more than one piece of the file.
fn seal_stream(
    repo: &Repository,
    key: &str,
    mut src: Opened,
    staged: Staged,
    mut index: Option<IndexBuilder>,
) -> Result<Streamed, RepoError> {
    let io_err = |e| RepoError::from(CodecError::Io(key.to_string(), e));
    let (keyring, level) = repo.sealing();
    let mut sealer = Sealer::new(keyring, key, level, staged)?;
    let mut buf = std::mem::take(&mut src.first);
    let mut total = 0u64;
    while !buf.is_empty() {
        total += buf.len() as u64;
        if let Some(ix) = index.as_mut() {
            ix.feed(&buf);
        }
        sealer.write_all(&buf).map_err(io_err)?;
        buf.resize(PIECE, 0);
        let n = read_full(&mut src.reader, &mut buf).map_err(io_err)?;
        buf.truncate(n);
    }
    if total != src.len {
        return Err(io_err(std::io::Error::other(format!(
            "the file changed while it was read ({} bytes at open, {total} read)",
            src.len
        ))));
    }
    let (staged, stats) = sealer.finish()?;
    let (index, blocks) = match index.map(IndexBuilder::finish_with_blocks) {
        Some((i, b)) => (Some(i), b),
        None => (None, None),
    };
    Ok(Streamed { staged, index, blocks, sealed_bytes: stats.sealed_bytes })
}

impl Archiver {
    /// An archiver for the repository's cluster.
    pub fn new(repo: Repository) -> Archiver {
        Archiver {
            repo,
            record: OnceCell::new(),
            sealed_bytes: std::sync::atomic::AtomicU64::new(0),
            wal_dir: None,
            summaries: Mutex::new(HashMap::new()),
            pending: None,
            pending_blocks: Mutex::new(BTreeMap::new()),
            frontier: Mutex::new(HashMap::new()),
            flushing: tokio::sync::Mutex::const_new(()),
            pushing: Arc::default(),
            journal: None,
            refused: Mutex::new(HashMap::new()),
        }
    }

    /// Archives only regular files directly inside `pg_wal` (resolved: no symlink escapes).
    pub fn only_from(mut self, pg_wal: &Path) -> Archiver {
        self.wal_dir = Some(pg_wal.to_path_buf());
        self
    }

    /// Keeps summaries in memory and writes them in batches into the index blocks
    /// ([`Archiver::flush_summaries`]): one request per segment instead of two (the daemon).
    pub fn batching_summaries(mut self) -> Archiver {
        self.pending = Some(Mutex::new(BTreeMap::new()));
        self
    }

    /// Keeps the waiting summaries in `path` too (one JSON line each, synced), and takes
    /// back what a killed predecessor left there.
    pub fn with_journal(mut self, path: &Path) -> Archiver {
        if let Some(p) = &self.pending {
            let mut pending = lock(p);
            let mut found = 0;
            for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
                // A line cut short by the kill is dropped: its segment's summary comes back
                // from the segment at the next roll-up.
                if let Ok(e) = serde_json::from_str::<JournalEntry>(line) {
                    pending.insert((e.timeline, e.segment), (e.seg_size, e.summary));
                    found += 1;
                }
            }
            if found > 0 {
                tracing::info!(summaries = found, journal = %path.display(), "WAL summaries left unwritten by the last run; writing them");
            }
            self.journal = Some(Mutex::new(path.to_path_buf()));
        }
        self
    }

    /// Summaries waiting to be written.
    pub fn pending_summaries(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| lock(p).len())
    }

    /// Writes the waiting summaries into their blocks; on failure they wait for the next try.
    pub async fn flush_summaries(&self) -> Result<usize, RepoError> {
        let Some(pending) = &self.pending else { return Ok(0) };
        let _one = self.flushing.lock().await;
        let batch = std::mem::take(&mut *lock(pending));
        if batch.is_empty() {
            return Ok(0);
        }
        let mut by_tli: BTreeMap<(u32, u64), BTreeMap<u64, SegmentIndex>> = BTreeMap::new();
        for ((tli, n), (seg_size, idx)) in &batch {
            by_tli.entry((*tli, *seg_size)).or_default().insert(*n, idx.clone());
        }
        // The batch's block references, one pack per timeline, before the summaries: a
        // failure puts them back to wait for the next batch.
        let blocks = std::mem::take(&mut *lock(&self.pending_blocks));
        for ((tli, seg_size), entries) in &blocks {
            if let Err(e) = block_index::save(&self.repo, *tli, *seg_size, entries).await {
                let mut p = lock(&self.pending_blocks);
                for (k, v) in blocks {
                    p.entry(k).or_default().extend(v);
                }
                let mut p = lock(pending);
                for (k, v) in batch {
                    p.entry(k).or_insert(v);
                }
                return Err(e);
            }
        }
        for ((tli, seg_size), entries) in &by_tli {
            if let Err(e) = wal_index::merge_into_blocks(&self.repo, *tli, *seg_size, entries).await {
                let mut p = lock(pending);
                for (k, v) in batch {
                    p.entry(k).or_insert(v);
                }
                return Err(e);
            }
        }
        if let Some(j) = &self.journal {
            // What was written leaves the journal; what arrived meanwhile stays.
            let path = lock(j);
            let rest: Vec<JournalEntry> = lock(pending)
                .iter()
                .map(|((timeline, segment), (seg_size, summary))| JournalEntry {
                    timeline: *timeline,
                    segment: *segment,
                    seg_size: *seg_size,
                    summary: summary.clone(),
                })
                .collect();
            if let Err(e) = rewrite_journal(&path, &rest) {
                tracing::warn!(journal = %path.display(), error = %e, "cannot rewrite the WAL summary journal");
            }
        }
        Ok(batch.len())
    }

    /// Compressed, encrypted bytes this archiver has stored.
    pub fn sealed_bytes(&self) -> u64 {
        self.sealed_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The repository.
    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    /// Checks the segment belongs to this handle, creating the record on first use.
    async fn check_identity(&self, name: &str, sysid: u64, seg_size: u64) -> Result<(), PushError> {
        let rec = self.record.get_or_try_init(|| async { cluster::claim(&self.repo, sysid, seg_size).await }).await?;
        if rec.system_identifier != sysid.to_string() {
            return Err(PushError::WrongSystem {
                name: name.to_string(),
                cluster: rec.handle.clone(),
                expected: rec.system_identifier.clone(),
                found: sysid.to_string(),
            });
        }
        Ok(())
    }

    /// Archives the file at `path` (a segment, .partial, .history or .backup file), as
    /// PostgreSQL's archiver hands it over: in order, so its predecessor is archived.
    pub async fn push(&self, path: &Path) -> Result<PushOutcome, PushError> {
        self.push_path(path, Order::InOrder).await
    }

    /// Archives the file at `path` ahead of PostgreSQL's archiver (the daemon's push-ahead):
    /// refused, to be pushed in order later, while this archiver has not archived its
    /// predecessor.
    pub async fn push_ahead(&self, path: &Path) -> Result<PushOutcome, PushError> {
        self.push_path(path, Order::Ahead).await
    }

    async fn push_path(&self, path: &Path, order: Order) -> Result<PushOutcome, PushError> {
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if let Some(dir) = &self.wal_dir {
            check_in_wal_dir(path, dir)?;
        } else {
            check_regular(path)?;
        }
        let r = self.push_source(&file_name, Source::File(path.to_path_buf()), order).await;
        self.note_outcome(&file_name, &r);
        r
    }

    /// Archives `data` as the WAL file `file_name`.
    pub async fn push_bytes(&self, file_name: &str, data: Bytes) -> Result<PushOutcome, PushError> {
        let r = self.push_source(file_name, Source::Memory(data), Order::InOrder).await;
        self.note_outcome(file_name, &r);
        r
    }

    /// Remembers which segments failed here (and whether as another history) until they
    /// are archived.
    fn note_outcome(&self, file_name: &str, r: &Result<PushOutcome, PushError>) {
        let seg_size = self.record.get().map_or(DEFAULT_SEGMENT_SIZE, |r| r.wal_segment_size);
        let Ok(seg) = Segment::parse(file_name, seg_size) else { return };
        let seg = (seg.timeline, seg.number);
        let mut m = lock(&self.refused);
        match r {
            Ok(_) => {
                m.remove(&seg);
            }
            Err(e) => {
                if m.len() >= SUMMARY_CACHE {
                    m.clear();
                }
                let other = e.is_other_history() || m.get(&seg).copied().unwrap_or(false);
                m.insert(seg, other);
            }
        }
    }

    /// The lowest segment below `seg` on its timeline this archiver refused as another
    /// history: everything after it in this server's WAL continues that history.
    fn diverged_below(&self, seg: Segment) -> Option<u64> {
        lock(&self.refused)
            .iter()
            .filter(|((t, n), other)| **other && *t == seg.timeline && *n < seg.number)
            .map(|((_, n), _)| *n)
            .min()
    }

    async fn push_source(&self, file_name: &str, src: Source, order: Order) -> Result<PushOutcome, PushError> {
        let read_err = |e| PushError::Read(file_name.to_string(), e);
        let s = src.clone();
        let opened = blocking(move || {
            let (mut reader, len) = s.open()?;
            let mut first = vec![0u8; PIECE];
            let n = read_full(&mut reader, &mut first)?;
            first.truncate(n);
            Ok(Opened { reader, first, len })
        })
        .await
        .map_err(read_err)?;

        let is_segment_like = crate::wal::name::is_segment_name(file_name) || file_name.ends_with(".partial");
        let seg_size = if is_segment_like {
            let h = header::parse(&opened.first).map_err(|e| PushError::Header(file_name.to_string(), e))?;
            let seg_size = u64::from(h.segment_size);
            crate::wal::name::check_segment_size(seg_size)?;
            if opened.len != seg_size {
                return Err(PushError::Length(file_name.to_string(), opened.len, seg_size));
            }
            self.check_identity(file_name, h.system_identifier, seg_size).await?;
            seg_size
        } else {
            self.record.get().map(|r| r.wal_segment_size).unwrap_or(DEFAULT_SEGMENT_SIZE)
        };
        let file = WalFile::parse(file_name, seg_size)?;
        self.check_small_file(file_name, &file, &opened.first, opened.len, seg_size).await?;
        let key = self.repo.wal_key(&file, seg_size);
        // No existence check first: the conditional commit below is one (a HEAD would cost an
        // extra request per segment on S3); an already archived file only costs a wasted seal.
        let index = match file {
            WalFile::Segment(seg) => Some((seg, IndexBuilder::new(seg, seg_size))),
            _ => None,
        };
        let segment = index.as_ref().map(|(seg, _)| *seg);
        if let (Some(seg), Order::Ahead) = (segment, order) {
            // Cheap refusals first, without waiting: no seal for a segment that cannot go
            // ahead anyway.
            self.check_ahead(file_name, seg, seg_size, true).await?;
        }
        let _pushing = Pushing::new(&self.pushing, file_name);
        let staged = self.repo.store().stage(&key).map_err(RepoError::from)?;
        let (repo, k) = (self.repo.clone(), key.clone());
        let streamed =
            tokio::task::spawn_blocking(move || seal_stream(&repo, &k, opened, staged, index.map(|(_, ix)| ix)))
                .await
                .map_err(|e| read_err(std::io::Error::other(e)))??;

        if let (Some(seg), Some(idx)) = (segment, &streamed.index) {
            if let Some(e) = &idx.error {
                tracing::warn!(file = %file_name, error = %e, "cannot read commit times from segment; archiving it anyway");
            }
            self.check_chain(file_name, seg, seg_size, idx, order).await?;
        }
        let outcome = match self.repo.store().commit_if_absent(&key, streamed.staged).await.map_err(RepoError::from)? {
            PutOutcome::Created => {
                self.sealed_bytes.fetch_add(streamed.sealed_bytes, std::sync::atomic::Ordering::Relaxed);
                PushOutcome::Stored
            }
            // Lost a race with another pusher (the daemon): same bytes is success.
            PutOutcome::Exists => self.compare_existing(file_name, &key, &src).await?,
        };
        if let (Some(seg), Some(blocks), PushOutcome::Stored) = (segment, streamed.blocks, outcome) {
            // Block references go after the segment too, from the pusher that stored it
            // (one that found it archived leaves them to that one: a gap at worst, which an
            // incremental backup covers by copying in full).
            match &self.pending {
                Some(_) => {
                    lock(&self.pending_blocks).entry((seg.timeline, seg_size)).or_default().insert(seg.number, blocks);
                }
                // Derived data: a failure leaves a gap (copied in full), not a failed push.
                None => {
                    if let Err(e) =
                        block_index::save(&self.repo, seg.timeline, seg_size, &[(seg.number, blocks)].into()).await
                    {
                        tracing::warn!(file = %file_name, error = %e, "cannot store the segment's block references; incremental backups copy what it changed in full");
                    }
                }
            }
        }
        if let (Some(seg), Some(idx)) = (segment, streamed.index) {
            // The summary goes after the segment, and only from a pusher whose bytes are the
            // archived ones, so it always describes the archived segment. A crash in between
            // leaves it missing until PostgreSQL pushes the file again (it retries until this
            // call succeeds), which writes it then.
            match &self.pending {
                // Already archived by another pusher, whose summary may be missing: one
                // object of its own, written only if absent (no block to read and rewrite).
                Some(_) if outcome == PushOutcome::AlreadyArchived => {
                    wal_index::save(&self.repo, seg, seg_size, &idx).await?
                }
                Some(p) => {
                    // Journal first (under its lock, so a flush rewriting it sees this
                    // entry either in the journal or still pending), then the batch.
                    let j = self.journal.as_ref().map(lock);
                    if let Some(path) = &j {
                        let e = JournalEntry {
                            timeline: seg.timeline,
                            segment: seg.number,
                            seg_size,
                            summary: idx.clone(),
                        };
                        if let Err(err) = append_journal(path, &e) {
                            tracing::warn!(journal = %path.display(), error = %err, "cannot journal a WAL summary; a crash before its batch is written leaves it to the next roll-up");
                        }
                    }
                    lock(p).insert((seg.timeline, seg.number), (seg_size, idx.clone()));
                    drop(j);
                }
                None => wal_index::save(&self.repo, seg, seg_size, &idx).await?,
            }
            self.remember(seg, idx);
        }
        Ok(outcome)
    }

    /// A cached or stored summary of segment `seg`.
    async fn summary(&self, seg: Segment, seg_size: u64) -> Result<Option<SegmentIndex>, PushError> {
        if let Some(s) = lock(&self.summaries).get(&(seg.timeline, seg.number)) {
            return Ok(Some(s.clone()));
        }
        let found = wal_index::find(&self.repo, seg, seg_size).await?;
        if let Some(s) = &found {
            self.remember(seg, s.clone());
        }
        Ok(found)
    }

    /// Whether a batching archiver (the daemon) has not stored `seg` yet: not in the cache,
    /// and being pushed here now or after the first segment it pushed on that timeline (it
    /// pushes in order, so such a segment is still to come, or another server's). Asking
    /// the store would cost requests per segment; a foreign segment is still refused at this
    /// archiver's own push under its name, and every reader checks the chain.
    fn past_frontier(&self, seg: Segment, seg_size: u64) -> bool {
        let key = (seg.timeline, seg.number);
        self.pending.is_some()
            && !lock(&self.summaries).contains_key(&key)
            && (lock(&self.pushing).contains_key(&seg.name(seg_size))
                || lock(&self.frontier).get(&seg.timeline).is_some_and(|low| seg.number > *low))
    }

    /// Marks `name` as about to be pushed by this archiver (the daemon's queue), so that a
    /// successor's chain check waits for it rather than asking the store.
    pub fn reserve(&self, name: &str) -> Pushing {
        Pushing::new(&self.pushing, name)
    }

    /// Waits while this archiver is pushing (or about to push) `seg`, a predecessor whose
    /// outcome decides the check; never a successor, so two pushes do not wait on each
    /// other. Bounded: false when the predecessor is still being pushed after the wait.
    async fn await_push(&self, seg: Segment, seg_size: u64) -> bool {
        let name = seg.name(seg_size);
        let wait = async {
            loop {
                let Some((_, n)) = lock(&self.pushing).get(&name).cloned() else { return };
                let woken = n.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                if !lock(&self.pushing).contains_key(&name) {
                    return;
                }
                woken.await;
            }
        };
        tokio::time::timeout(PREDECESSOR_WAIT, wait).await.is_ok()
    }

    fn remember(&self, seg: Segment, idx: SegmentIndex) {
        let mut f = lock(&self.frontier);
        let low = f.entry(seg.timeline).or_insert(seg.number);
        *low = (*low).min(seg.number);
        drop(f);
        let mut m = lock(&self.summaries);
        if m.len() >= SUMMARY_CACHE {
            m.clear();
        }
        m.insert((seg.timeline, seg.number), idx);
    }

    /// What a segment pushed ahead must not have: a predecessor refused here as another
    /// history (everything after it continues that history), or a predecessor not archived
    /// whose push here failed or, when `resolved` is false, was still running after
    /// `PREDECESSOR_WAIT`.
    async fn check_ahead(&self, name: &str, seg: Segment, seg_size: u64, resolved: bool) -> Result<(), PushError> {
        if let Some(m) = self.diverged_below(seg) {
            return Err(PushError::ChainBreak {
                name: name.to_string(),
                detail: format!(
                    "this server's {} was refused as another history than the archive's, and this segment continues it",
                    Segment { timeline: seg.timeline, number: m }.name(seg_size)
                ),
            });
        }
        let Some(number) = seg.number.checked_sub(1) else { return Ok(()) };
        let before = Segment { timeline: seg.timeline, number };
        let failed_here = lock(&self.refused).contains_key(&(before.timeline, before.number));
        // Absent otherwise is normal: the first segment, a new timeline, a purged predecessor.
        if (failed_here || !resolved) && self.summary(before, seg_size).await?.is_none() {
            return Err(PushError::Unordered { name: name.to_string(), before: before.name(seg_size) });
        }
        Ok(())
    }

    /// Refuses a segment that does not join the archived segments on either side of it: its
    /// first record must point back at the predecessor's last record, and the successor's
    /// first record at its own last one. A segment pushed ahead must pass
    /// [`Self::check_ahead`] too, whether or not its commit times could be read.
    async fn check_chain(
        &self,
        name: &str,
        seg: Segment,
        seg_size: u64,
        idx: &SegmentIndex,
        order: Order,
    ) -> Result<(), PushError> {
        let before = seg.number.checked_sub(1).map(|number| Segment { timeline: seg.timeline, number });
        // A predecessor this archiver is pushing (pushes run in parallel) is waited for:
        // stored, it is in the cache; refused, the archived one is read.
        let resolved = match before {
            Some(b) => self.await_push(b, seg_size).await,
            None => true,
        };
        if order == Order::Ahead {
            self.check_ahead(name, seg, seg_size, resolved).await?;
        }
        let Join::Starts { prev, last } = idx.join() else { return Ok(()) };
        let brk = |detail: String| PushError::ChainBreak { name: name.to_string(), detail };
        if let Some(before) = before {
            let found = self.summary(before, seg_size).await?;
            if let Some(Join::Starts { last: expected, .. }) = found.map(|s| s.join()) {
                if expected != prev {
                    return Err(brk(format!(
                        "its first record points back to {}, but the archived {} ends with a record at {}",
                        Lsn(prev),
                        before.name(seg_size),
                        Lsn(expected)
                    )));
                }
            }
        }
        let after = seg.next();
        // A batching archiver (the daemon) pushes in order: past the highest segment it has
        // seen there is normally nothing to check, and asking would cost a request per
        // segment. A successor another server stored meanwhile is still caught: at this
        // archiver's own push of it (a conflict) and by every reader of the chain.
        let successor = if self.past_frontier(after, seg_size) { None } else { self.summary(after, seg_size).await? };
        if let Some(Join::Starts { prev: found, .. }) = successor.map(|s| s.join()) {
            if found != last {
                return Err(brk(format!(
                    "its last record is at {}, but the archived {} points back to {}",
                    Lsn(last),
                    after.name(seg_size),
                    Lsn(found)
                )));
            }
        }
        Ok(())
    }

    /// History and backup history files are small: they are checked whole before sealing.
    async fn check_small_file(
        &self,
        name: &str,
        file: &WalFile,
        first: &[u8],
        len: u64,
        seg_size: u64,
    ) -> Result<(), PushError> {
        let refuse = |why: String| PushError::NotWal(format!("{name}: {why}; not archived"));
        match *file {
            WalFile::History(tli) => {
                if (first.len() as u64) < len {
                    return Err(refuse(format!("{len} bytes is not a timeline history file")));
                }
                let ancestors = history::parse_history(first, tli)
                    .map_err(|e| refuse(format!("not a timeline history file PostgreSQL can read ({e})")))?;
                // The parent's own history must already be archived (timeline 1 has none), or
                // recovery could never follow this one.
                let parent = ancestors.last().map_or(1, |a| a.timeline);
                if parent > 1 {
                    let key = self.repo.wal_key(&WalFile::History(parent), seg_size);
                    if self.repo.store().head(&key).await.map_err(RepoError::from)?.is_none() {
                        return Err(refuse(format!("its parent timeline {parent} has no history file in the archive")));
                    }
                }
                Ok(())
            }
            WalFile::BackupLabel(..) => {
                if (first.len() as u64) < len {
                    return Err(refuse(format!("{len} bytes is not a backup history file")));
                }
                history::check_backup_file(first).map_err(|e| refuse(format!("not a backup history file ({e})")))
            }
            _ => Ok(()),
        }
    }

    async fn compare_existing(&self, name: &str, key: &str, src: &Source) -> Result<PushOutcome, PushError> {
        let s = src.clone();
        let local = blocking(move || s.digest()).await.map_err(|e| PushError::Read(name.to_string(), e))?;
        let archived = self.repo.digest_of(key).await?.unwrap_or_default();
        if archived == local {
            Ok(PushOutcome::AlreadyArchived)
        } else {
            Err(PushError::Conflict { name: name.to_string(), archived, local })
        }
    }
}

/// One waiting summary in the journal.
#[derive(serde::Serialize, serde::Deserialize)]
struct JournalEntry {
    timeline: u32,
    segment: u64,
    seg_size: u64,
    summary: SegmentIndex,
}

/// One entry as its journal line.
fn journal_line(e: &JournalEntry) -> std::io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

fn append_journal(path: &Path, e: &JournalEntry) -> std::io::Result<()> {
    let line = journal_line(e)?;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    f.write_all(&line)?;
    f.sync_data()
}

fn rewrite_journal(path: &Path, rest: &[JournalEntry]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
    for e in rest {
        f.write_all(&journal_line(e)?)?;
    }
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

/// Marks a WAL file as being pushed (or about to be) by this archiver until dropped.
pub struct Pushing {
    set: Arc<Mutex<InFlight>>,
    name: String,
}

impl Pushing {
    fn new(set: &Arc<Mutex<InFlight>>, name: &str) -> Pushing {
        lock(set).entry(name.to_string()).or_default().0 += 1;
        Pushing { set: set.clone(), name: name.to_string() }
    }
}

impl Drop for Pushing {
    fn drop(&mut self) {
        let mut m = lock(&self.set);
        if let Some(e) = m.get_mut(&self.name) {
            e.0 -= 1;
            if e.0 == 0 {
                if let Some((_, n)) = m.remove(&self.name) {
                    n.notify_waiters();
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The cache holds only copies of stored summaries: a poisoned one is still valid.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Refuses anything but a regular file (a symlink could point at any file the pusher can
/// read, such as the keyring).
fn check_regular(path: &Path) -> Result<(), PushError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| PushError::Read(path.display().to_string(), e))?;
    if meta.file_type().is_symlink() {
        return Err(PushError::NotWal(format!(
            "{} is a symbolic link; only files PostgreSQL writes in pg_wal are archived",
            path.display()
        )));
    }
    if !meta.is_file() {
        return Err(PushError::NotWal(format!(
            "{} is not a regular file; only WAL files are archived",
            path.display()
        )));
    }
    Ok(())
}

/// Refuses a file that is not a regular file directly inside `pg_wal`, however spelled.
pub fn check_in_wal_dir(path: &Path, pg_wal: &Path) -> Result<(), PushError> {
    check_regular(path)?;
    let outside = || {
        PushError::NotWal(format!(
            "{} is not in {}: only files in the configured cluster's pg_wal are archived (postgres.data_dir names the data directory)",
            path.display(),
            pg_wal.display()
        ))
    };
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (Ok(dir), Ok(want)) = (parent.canonicalize(), pg_wal.canonicalize()) else { return Err(outside()) };
    if dir != want {
        return Err(outside());
    }
    Ok(())
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(std::io::Error::other)?
}

/// Refuses to archive a cluster restored from `cluster` under the same handle: its new
/// timeline would mix with the source's archive (PostgreSQL runs archive_command in the
/// data directory, where `restore` left its marker).
pub fn refuse_restored_copy(data_dir: &Path, cluster: &str) -> anyhow::Result<()> {
    let marker = data_dir.join(crate::restore::execute::RESTORED_MARKER);
    let Ok(text) = std::fs::read_to_string(&marker) else { return Ok(()) };
    let from: crate::restore::execute::RestoredFrom = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: unreadable restore marker: {e}", marker.display()))?;
    if from.cluster == cluster {
        anyhow::bail!(
            "this cluster was restored from backup {} of cluster '{cluster}' and must not archive under the same handle (its new timeline would mix with the source's WAL); set a new `cluster` in its config (or remove {} if this cluster really replaces the source)",
            from.backup,
            marker.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::faulty::{Fault, Faulty, Op};
    use crate::store::memory::{repo_over, MemoryStore};
    use crate::wal::record::synth::{history, SEG};

    /// Keys of a segment's object and of its summary.
    fn keys(repo: &Repository, name: &str) -> (String, String) {
        let file = WalFile::parse(name, SEG).unwrap();
        (repo.wal_key(&file, SEG), repo.wal_index_key(1, name))
    }

    async fn push(a: &Archiver, (name, bytes): &(String, Vec<u8>)) -> Result<PushOutcome, PushError> {
        a.push_bytes(name, Bytes::from(bytes.clone())).await
    }

    #[tokio::test]
    async fn the_same_bytes_twice_are_already_archived() {
        let store = Arc::new(MemoryStore::new());
        let a = Archiver::new(repo_over(store.clone(), "c"));
        let wal = history(2, 0);
        assert_eq!(push(&a, &wal[0]).await.unwrap(), PushOutcome::Stored);
        assert_eq!(push(&a, &wal[0]).await.unwrap(), PushOutcome::AlreadyArchived);
        // A successor that joins is stored; so is a push by a fresh archiver (no cache).
        assert_eq!(push(&a, &wal[1]).await.unwrap(), PushOutcome::Stored);
        let b = Archiver::new(a.repo().clone());
        assert_eq!(push(&b, &wal[1]).await.unwrap(), PushOutcome::AlreadyArchived);
        let (seg, summary) = keys(a.repo(), &wal[0].0);
        assert!(store.bytes(&seg).is_some() && store.bytes(&summary).is_some());
    }

    #[tokio::test]
    async fn other_bytes_under_an_archived_name_conflict_and_leave_the_archive() {
        let store = Arc::new(MemoryStore::new());
        let a = Archiver::new(repo_over(store.clone(), "c"));
        let (mine, theirs) = (history(1, 0), history(1, 64));
        assert_eq!(mine[0].0, theirs[0].0);
        push(&a, &mine[0]).await.unwrap();
        let before: Vec<_> = store.keys().into_iter().map(|k| (store.bytes(&k), k)).collect();
        let e = push(&a, &theirs[0]).await.unwrap_err();
        assert!(matches!(e, PushError::Conflict { .. }) && e.is_other_history(), "{e}");
        let after: Vec<_> = store.keys().into_iter().map(|k| (store.bytes(&k), k)).collect();
        assert_eq!(before, after, "the archive is untouched");
        // And the archived bytes still read back as the first push's.
        let (seg, _) = keys(a.repo(), &mine[0].0);
        assert_eq!(a.repo().get_opened(&seg).await.unwrap().unwrap(), mine[0].1);
    }

    #[tokio::test]
    async fn a_summary_lost_after_its_segment_is_written_by_the_next_push() {
        let store = Arc::new(Faulty::new(MemoryStore::new()));
        let repo = repo_over(store.clone(), "c");
        let wal = history(1, 0);
        let (seg, summary) = keys(&repo, &wal[0].0);
        store.fail(Fault::on(Op::Put).under(&summary).nth(1));
        let a = Archiver::new(repo.clone());
        let e = push(&a, &wal[0]).await.unwrap_err();
        assert!(e.to_string().contains(crate::store::faulty::INJECTED), "{e}");
        assert!(store.inner().bytes(&seg).is_some() && store.inner().bytes(&summary).is_none());
        // PostgreSQL pushes the file again (a new archiver: the process may have died).
        let a = Archiver::new(repo.clone());
        assert_eq!(push(&a, &wal[0]).await.unwrap(), PushOutcome::AlreadyArchived);
        let want = wal_index::summarize(&wal[0].1, Segment::parse(&wal[0].0, SEG).unwrap(), SEG);
        assert_eq!(wal_index::load(&repo, Segment::parse(&wal[0].0, SEG).unwrap(), SEG).await.unwrap(), Some(want));
    }

    #[tokio::test]
    async fn block_references_follow_the_segment_directly_or_with_the_batch() {
        let wal = history(2, 0);
        let n = |i: usize| Segment::parse(&wal[i].0, SEG).unwrap().number;
        let stretch = |repo: Repository| async move { block_index::between(&repo, 1, SEG, n(0), n(1)).await.unwrap() };
        // Direct: each stored segment's own references, one pack each.
        let repo = repo_over(Arc::new(MemoryStore::new()), "c");
        let a = Archiver::new(repo.clone());
        push(&a, &wal[0]).await.unwrap();
        push(&a, &wal[1]).await.unwrap();
        let s = stretch(repo.clone()).await;
        assert!(s.whole(), "{s:?}");
        let own = crate::wal::record::summarize_segment_at(&wal[0].1, SEG, n(0) * SEG).unwrap().block_refs;
        assert_eq!(s.segments[&n(0)], own);
        // Batching (the daemon): nothing until the batch is written, then one pack.
        let store = Arc::new(MemoryStore::new());
        let repo = repo_over(store.clone(), "c");
        let a = Archiver::new(repo.clone()).batching_summaries();
        push(&a, &wal[0]).await.unwrap();
        push(&a, &wal[1]).await.unwrap();
        assert_eq!(stretch(repo.clone()).await.missing, [n(0), n(1)]);
        a.flush_summaries().await.unwrap();
        assert!(stretch(repo.clone()).await.whole());
        assert_eq!(store.keys().iter().filter(|k| k.contains("/blocks/")).count(), 1);
        // A pack that cannot be written does not fail a direct push: its segment is a gap.
        let store = Arc::new(Faulty::new(MemoryStore::new()));
        let repo = repo_over(store.clone(), "c");
        store.fail(Fault::on(Op::Put).under(&format!("{}wal-index/00000001/blocks/", repo.cluster_prefix())));
        assert_eq!(push(&Archiver::new(repo.clone()), &wal[0]).await.unwrap(), PushOutcome::Stored);
        assert_eq!(stretch(repo.clone()).await.missing, [n(0), n(1)]);
        assert!(wal_index::load(&repo, Segment::parse(&wal[0].0, SEG).unwrap(), SEG).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_segment_that_does_not_continue_its_archived_neighbour_is_a_chain_break() {
        let (mine, theirs) = (history(2, 0), history(2, 64));
        // Its predecessor archived: the successor of another history is refused.
        let store = Arc::new(MemoryStore::new());
        let a = Archiver::new(repo_over(store.clone(), "c"));
        push(&a, &mine[0]).await.unwrap();
        let e = push(&a, &theirs[1]).await.unwrap_err();
        assert!(matches!(e, PushError::ChainBreak { .. }) && e.is_other_history(), "{e}");
        assert!(e.to_string().contains("first record points back to"), "{e}");
        assert!(store.bytes(&keys(a.repo(), &theirs[1].0).0).is_none(), "nothing stored");
        // Its successor archived (by another archiver, say): the predecessor is refused.
        let store = Arc::new(MemoryStore::new());
        let repo = repo_over(store.clone(), "c");
        push(&Archiver::new(repo.clone()), &mine[1]).await.unwrap();
        let e = push(&Archiver::new(repo.clone()), &theirs[0]).await.unwrap_err();
        assert!(matches!(e, PushError::ChainBreak { .. }), "{e}");
        assert!(e.to_string().contains("last record is at"), "{e}");
        assert!(store.bytes(&keys(&repo, &theirs[0].0).0).is_none(), "nothing stored");
        // While the segment of this history joins.
        assert_eq!(push(&Archiver::new(repo), &mine[0]).await.unwrap(), PushOutcome::Stored);
    }
}
