//! The object store seam: one trait, a folder-free file per backend, one constructor.

pub mod aws;
pub mod counting;
pub mod faulty;
pub mod fs;
pub mod memory;
pub mod s3;

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

/// A listed or inspected object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Full key relative to the store's root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// One level of a listing: the objects directly under a prefix and the "directories" below it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Level {
    /// Objects whose key has no further '/' after the prefix, sorted by key.
    pub objects: Vec<ObjectMeta>,
    /// Key prefixes one level down, each ending in '/', sorted.
    pub dirs: Vec<String>,
}

/// Result of a conditional put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object did not exist and now does.
    Created,
    /// An object already existed under that key; nothing was written.
    Exists,
}

/// What [`ObjectStore::sweep_leftovers`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Leftovers {
    /// Temp files of killed writers (fs).
    pub temp_files: usize,
    /// Empty directories (fs).
    pub dirs: usize,
    /// Abandoned multipart uploads (S3).
    pub uploads: usize,
}

/// A streaming object body.
pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

/// Store failures, each naming the store and object.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or refused the request.
    #[error("{store}: {op} {key} failed: {msg}")]
    Backend {
        /// Store description (URL).
        store: String,
        /// Operation name.
        op: &'static str,
        /// Object key.
        key: String,
        /// What went wrong.
        msg: String,
    },
    /// The key is not a valid object key.
    #[error("invalid object key '{0}'")]
    BadKey(String),
    /// The repository URL is not supported.
    #[error("repository url '{0}' is not supported (use file:///path or s3://bucket/prefix)")]
    BadUrl(String),
}

/// An object store holding sealed objects under '/'-separated keys.
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Writes an object atomically (readers see the old or the new object, never a mix).
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError>;
    /// Writes an object only if none exists under `key`.
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError>;
    /// Opens an object for streaming; `None` when absent.
    async fn get(&self, key: &str) -> Result<Option<ObjectReader>, StoreError>;
    /// Size of an object; `None` when absent.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError>;
    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;
    /// One level under `prefix` (which ends in '/'): S3 lists with a delimiter, fs reads one
    /// directory, so what lies deeper (bundles, WAL) costs nothing. Default: from [`Self::list`].
    async fn list_level(&self, prefix: &str) -> Result<Level, StoreError> {
        Ok(level_of(prefix, self.list(prefix).await?))
    }
    /// The objects under `prefix` whose keys sort after `after` and before `before` (either
    /// open), sorted: S3 starts the listing after `after` and stops at `before`, so a range
    /// costs what it holds, not what the prefix holds. Default: from [`Self::list`].
    async fn list_between(
        &self,
        prefix: &str,
        after: Option<&str>,
        before: Option<&str>,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        Ok(self.list(prefix).await?.into_iter().filter(|m| in_range(&m.key, after, before)).collect())
    }
    /// Up to about `max` objects under `prefix`, in no promised order: enough to tell whether
    /// there are any without listing them all. Default: from [`Self::list`].
    async fn list_some(&self, prefix: &str, max: usize) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut all = self.list(prefix).await?;
        all.truncate(max);
        Ok(all)
    }
    /// Deletes an object; deleting an absent object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Human-readable location, e.g. `s3://bucket/prefix`.
    fn describe(&self) -> String;

    /// Starts an object whose bytes are written before it is published with
    /// [`ObjectStore::commit_if_absent`] (default: in memory).
    fn stage(&self, key: &str) -> Result<Staged, StoreError> {
        check_key(key)?;
        Ok(Staged::Memory(Vec::new()))
    }

    /// Publishes a staged object unless one already exists under `key` (as `put_if_absent`).
    async fn commit_if_absent(&self, key: &str, staged: Staged) -> Result<PutOutcome, StoreError> {
        let data = staged.into_bytes().map_err(|e| StoreError::Backend {
            store: self.describe(),
            op: "put",
            key: key.to_string(),
            msg: e.to_string(),
        })?;
        self.put_if_absent(key, data).await
    }

    /// Removes what killed writers leave behind and no listing shows (fs: temp files and
    /// empty directories older than an hour; S3: multipart uploads older than a day).
    /// Default: nothing to remove.
    async fn sweep_leftovers(&self) -> Result<Leftovers, StoreError> {
        Ok(Leftovers::default())
    }

    /// Whether a failed request may succeed if sent again (S3: throttling, 5xx, resets;
    /// never a refusal such as access denied). Default: no.
    fn retryable(&self, _e: &StoreError) -> bool {
        false
    }

    /// Reads a whole object into memory; `None` when absent. Every repository read comes
    /// here, so one policy covers them all: a request the store calls retryable, or a body
    /// cut off mid-way (a reset, a truncated response), is read again with backoff.
    async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let err = match self.get(key).await {
                Ok(None) => return Ok(None),
                Ok(Some(mut r)) => {
                    let mut buf = Vec::new();
                    match r.read_to_end(&mut buf).await {
                        Ok(_) => return Ok(Some(Bytes::from(buf))),
                        Err(e) => StoreError::Backend {
                            store: self.describe(),
                            op: "read",
                            key: key.to_string(),
                            msg: e.to_string(),
                        },
                    }
                }
                Err(e) if self.retryable(&e) => e,
                Err(e) => return Err(e),
            };
            if attempt >= READ_ATTEMPTS {
                return Err(err);
            }
            let delay = read_backoff(attempt);
            tracing::warn!(%key, attempt, error = %err, ?delay, "read failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

/// Whether `key` sorts after `after` and before `before` (either open) (pure).
pub fn in_range(key: &str, after: Option<&str>, before: Option<&str>) -> bool {
    after.is_none_or(|a| key > a) && before.is_none_or(|b| key < b)
}

/// Folds a full listing into one level under `prefix` (pure).
pub fn level_of(prefix: &str, all: Vec<ObjectMeta>) -> Level {
    let mut out = Level::default();
    for m in all {
        let Some(rest) = m.key.strip_prefix(prefix) else { continue };
        match rest.find('/') {
            Some(i) => {
                let d = format!("{prefix}{}", &rest[..=i]);
                if out.dirs.last() != Some(&d) {
                    out.dirs.push(d);
                }
            }
            None => out.objects.push(m),
        }
    }
    out.dirs.sort();
    out.dirs.dedup();
    out
}

/// Attempts per object read (see [`ObjectStore::get_bytes`]).
pub const READ_ATTEMPTS: u32 = 5;

/// Wait before read attempt `attempt + 1`: 100 ms, 400 ms, 1.6 s, 3.2 s, with jitter so
/// parallel readers do not retry in step (pure apart from the random jitter).
pub fn read_backoff(attempt: u32) -> std::time::Duration {
    let base = (100u64 << (2 * attempt.saturating_sub(1).min(3))).min(3_200);
    let jitter = rand::random::<u64>() % (base / 4 + 1);
    std::time::Duration::from_millis(base + jitter)
}

/// An object's bytes on their way into a store (see [`ObjectStore::stage`]).
#[derive(Debug)]
pub enum Staged {
    /// Held in memory until the upload.
    Memory(Vec<u8>),
    /// Written to a temp file beside the destination (the directory store).
    File(fs::TempFile),
}

impl Staged {
    /// The staged bytes, in memory.
    pub fn into_bytes(self) -> std::io::Result<Bytes> {
        match self {
            Staged::Memory(v) => Ok(Bytes::from(v)),
            Staged::File(f) => std::fs::read(f.path()).map(Bytes::from),
        }
    }
}

impl std::io::Write for Staged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Staged::Memory(v) => v.write(buf),
            Staged::File(f) => f.file().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Rejects keys that could escape the repository root or confuse listings.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.ends_with('/')
        || key.split('/').any(|p| p.is_empty() || p == "." || p == ".." || p.starts_with(fs::TEMP_PREFIX))
        || key.contains('\0');
    if bad {
        Err(StoreError::BadKey(key.to_string()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_level_keeps_direct_objects_and_folds_deeper_ones() {
        let m = |k: &str| ObjectMeta { key: k.into(), size: 1 };
        let l = level_of("b/", vec![m("b/1/manifest"), m("b/1/data/x"), m("b/2/m"), m("b/top"), m("c/other")]);
        assert_eq!(l.objects, vec![m("b/top")]);
        assert_eq!(l.dirs, vec!["b/1/".to_string(), "b/2/".to_string()]);
        assert_eq!(level_of("none/", vec![m("b/x")]), Level::default());
    }

    #[test]
    fn read_backoff_grows_and_is_bounded() {
        for (attempt, lo, hi) in [(1, 100, 125), (2, 400, 500), (3, 1_600, 2_000), (4, 3_200, 4_000), (9, 3_200, 4_000)]
        {
            let d = read_backoff(attempt).as_millis() as u64;
            assert!((lo..=hi).contains(&d), "attempt {attempt}: {d} ms");
        }
    }
}

/// Settings for opening a store from a repository URL.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// S3 region.
    pub region: Option<String>,
    /// Custom S3 endpoint (S3-compatible stores, tests).
    pub endpoint: Option<String>,
    /// Objects above this size are uploaded in parts.
    pub multipart_threshold: Option<u64>,
}

/// Opens the store a repository URL names: `file:///path` or `s3://bucket/prefix`.
pub async fn open(url: &str, opts: &StoreOptions) -> Result<Arc<dyn ObjectStore>, StoreError> {
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(StoreError::BadUrl(url.to_string()));
        }
        return Ok(Arc::new(fs::FsStore::new(path)));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::BadUrl(url.to_string()));
        }
        return Ok(Arc::new(s3::S3Store::new(bucket, prefix.trim_matches('/'), opts).await));
    }
    Err(StoreError::BadUrl(url.to_string()))
}
