//! A store held in memory: the semantics of the real stores (put-if-absent, prefix,
//! level and range listings, key checks) without a disk or a network, for tests of the
//! flows that write to a repository.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;

use super::{check_key, in_range, ObjectMeta, ObjectReader, ObjectStore, PutOutcome, StoreError};

/// Objects by key, in memory; cloning a handle is not supported (share it in an `Arc`).
#[derive(Debug, Default)]
pub struct MemoryStore {
    name: String,
    objects: Mutex<BTreeMap<String, Bytes>>,
}

impl MemoryStore {
    /// An empty store described as `memory://`.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// An empty store described as `memory://<name>` (tests with two repositories).
    pub fn named(name: &str) -> MemoryStore {
        MemoryStore { name: name.to_string(), ..MemoryStore::default() }
    }

    /// Every key held, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.objects().keys().cloned().collect()
    }

    /// The bytes under `key`, if any (no key check, no fault: for assertions).
    pub fn bytes(&self, key: &str) -> Option<Bytes> {
        self.objects().get(key).cloned()
    }

    fn objects(&self) -> MutexGuard<'_, BTreeMap<String, Bytes>> {
        // No operation panics while holding the lock with the map half-changed.
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The objects with keys from `lo` on that start with `prefix` and satisfy `keep`.
    fn scan(&self, prefix: &str, lo: Bound<&str>, keep: impl Fn(&str) -> bool) -> Vec<ObjectMeta> {
        self.objects()
            .range::<str, _>((lo, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| keep(k))
            .map(|(k, v)| ObjectMeta { key: k.clone(), size: v.len() as u64 })
            .collect()
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        check_key(key)?;
        self.objects().insert(key.to_string(), data);
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        check_key(key)?;
        let mut objects = self.objects();
        if objects.contains_key(key) {
            return Ok(PutOutcome::Exists);
        }
        objects.insert(key.to_string(), data);
        Ok(PutOutcome::Created)
    }

    async fn get(&self, key: &str) -> Result<Option<ObjectReader>, StoreError> {
        check_key(key)?;
        Ok(self.objects().get(key).cloned().map(|b| -> ObjectReader { Box::pin(std::io::Cursor::new(b)) }))
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        check_key(key)?;
        Ok(self.objects().get(key).cloned())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        check_key(key)?;
        Ok(self.objects().get(key).map(|v| ObjectMeta { key: key.to_string(), size: v.len() as u64 }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        Ok(self.scan(prefix, Bound::Included(prefix), |_| true))
    }

    async fn list_between(
        &self,
        prefix: &str,
        after: Option<&str>,
        before: Option<&str>,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        // Start at whichever sorts later, the prefix or `after`, as S3's StartAfter does.
        let lo = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        Ok(self.scan(prefix, lo, |k| in_range(k, after, before)))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        self.objects().remove(key);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("memory://{}", self.name)
    }
}

/// A repository of cluster `cluster` over `store`, sealing with a fresh keyring (tests).
#[cfg(test)]
pub(crate) fn repo_over(store: std::sync::Arc<dyn ObjectStore>, cluster: &str) -> crate::repo::Repository {
    let ring = std::sync::Arc::new(crate::codec::Keyring::generate("test-key"));
    crate::repo::Repository::new(store, ring, 1, cluster)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn ranges_levels_and_conditional_puts() {
        let s = MemoryStore::named("t");
        assert_eq!(s.describe(), "memory://t");
        for k in ["a/1", "a/2", "a/d/x", "a/d/y", "a/e/z", "ab", "b/1"] {
            s.put(k, Bytes::from(k.to_string())).await.unwrap();
        }
        let keys = |v: Vec<ObjectMeta>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
        assert_eq!(keys(s.list("a/").await.unwrap()), ["a/1", "a/2", "a/d/x", "a/d/y", "a/e/z"]);
        assert_eq!(keys(s.list("a").await.unwrap()).len(), 6);
        let l = s.list_level("a/").await.unwrap();
        assert_eq!(
            (keys(l.objects), l.dirs),
            (vec!["a/1".to_string(), "a/2".into()], vec!["a/d/".into(), "a/e/".into()])
        );
        assert_eq!(keys(s.list_between("a/", Some("a/1"), Some("a/e/")).await.unwrap()), ["a/2", "a/d/x", "a/d/y"]);
        // An `after` below the prefix starts at the prefix; one above it skips ahead.
        assert_eq!(keys(s.list_between("a/d/", Some("a/"), None).await.unwrap()), ["a/d/x", "a/d/y"]);
        assert_eq!(keys(s.list_between("a/", Some("a/d/x"), None).await.unwrap()), ["a/d/y", "a/e/z"]);
        assert_eq!(s.put_if_absent("a/1", Bytes::from_static(b"new")).await.unwrap(), PutOutcome::Exists);
        let mut r = s.get("a/1").await.unwrap().unwrap();
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"a/1");
        s.delete("a/1").await.unwrap();
        assert_eq!((s.head("a/1").await.unwrap(), s.bytes("a/1")), (None, None));
        assert!(s.delete("../x").await.is_err() && s.get("a//b").await.is_err());
    }
}
