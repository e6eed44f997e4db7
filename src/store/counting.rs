//! A store that counts the requests it passes on: how the benchmarks tell what an
//! operation costs on S3, where every request is billed and a listing page holds 1,000 keys.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Leftovers, Level, ObjectMeta, ObjectReader, ObjectStore, PutOutcome, Staged, StoreError};

/// Keys per listing page on S3.
const PAGE: u64 = 1000;

/// Requests by kind.
#[derive(Debug, Default)]
pub struct Counts {
    /// GETs (whole or streamed).
    pub get: AtomicU64,
    /// PUTs, conditional or not.
    pub put: AtomicU64,
    /// HEADs.
    pub head: AtomicU64,
    /// Listing pages.
    pub list: AtomicU64,
    /// DELETEs.
    pub delete: AtomicU64,
}

impl Counts {
    /// Every request so far.
    pub fn total(&self) -> u64 {
        [&self.get, &self.put, &self.head, &self.list, &self.delete].iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// As JSON, by kind and in total.
    pub fn json(&self) -> serde_json::Value {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "get": l(&self.get), "put": l(&self.put), "head": l(&self.head),
            "list": l(&self.list), "delete": l(&self.delete), "total": self.total(),
        })
    }
}

/// Wraps a store and counts what goes through it.
#[derive(Debug)]
pub struct Counting {
    inner: Arc<dyn ObjectStore>,
    /// The counts.
    pub counts: Arc<Counts>,
}

impl Counting {
    /// Counts the requests sent to `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Counting {
        Counting { inner, counts: Arc::default() }
    }
}

fn pages(n: usize) -> u64 {
    (n as u64).div_ceil(PAGE).max(1)
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

#[async_trait]
impl ObjectStore for Counting {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        add(&self.counts.put, 1);
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        add(&self.counts.put, 1);
        self.inner.put_if_absent(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Option<ObjectReader>, StoreError> {
        add(&self.counts.get, 1);
        self.inner.get(key).await
    }
    async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        add(&self.counts.get, 1);
        self.inner.get_bytes(key).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        add(&self.counts.head, 1);
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let out = self.inner.list(prefix).await?;
        add(&self.counts.list, pages(out.len()));
        Ok(out)
    }
    async fn list_level(&self, prefix: &str) -> Result<Level, StoreError> {
        let out = self.inner.list_level(prefix).await?;
        add(&self.counts.list, pages(out.objects.len() + out.dirs.len()));
        Ok(out)
    }
    async fn list_between(
        &self,
        prefix: &str,
        after: Option<&str>,
        before: Option<&str>,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        let out = self.inner.list_between(prefix, after, before).await?;
        add(&self.counts.list, pages(out.len()));
        Ok(out)
    }
    async fn list_some(&self, prefix: &str, max: usize) -> Result<Vec<ObjectMeta>, StoreError> {
        add(&self.counts.list, 1);
        self.inner.list_some(prefix, max).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        add(&self.counts.delete, 1);
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn stage(&self, key: &str) -> Result<Staged, StoreError> {
        self.inner.stage(key)
    }
    async fn commit_if_absent(&self, key: &str, staged: Staged) -> Result<PutOutcome, StoreError> {
        add(&self.counts.put, 1);
        self.inner.commit_if_absent(key, staged).await
    }
    async fn sweep_leftovers(&self) -> Result<Leftovers, StoreError> {
        self.inner.sweep_leftovers().await
    }
    fn retryable(&self, e: &StoreError) -> bool {
        self.inner.retryable(e)
    }
}
