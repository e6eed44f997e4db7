//! A store that fails chosen operations, deterministically: the Nth put, every delete
//! under a prefix, everything after K operations, or a crash (from one operation on,
//! nothing is performed), so that a test can stop a flow at each of its steps and check
//! what a re-run makes of what it left.

use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Leftovers, Level, ObjectMeta, ObjectReader, ObjectStore, PutOutcome, Staged, StoreError};

/// Kinds of operation a fault matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `get`, `get_bytes`.
    Get,
    /// `head`.
    Head,
    /// Every listing (`list`, `list_level`, `list_between`, `list_some`).
    List,
    /// `put`, `put_if_absent`, `commit_if_absent`.
    Put,
    /// `delete`.
    Delete,
    /// `sweep_leftovers`.
    Sweep,
}

/// Which operations fail, and how.
#[derive(Debug, Clone)]
pub struct Fault {
    op: Option<Op>,
    prefix: String,
    /// Matching operations let through before the first failure.
    skip: u64,
    /// How many matching operations fail after those (`None`: all).
    times: Option<u64>,
    /// From the first failure on, the store performs nothing (a crashed process).
    crash: bool,
    /// The failing operation is performed before it reports failure (a lost reply).
    performed: bool,
    seen: u64,
}

impl Fault {
    /// Every operation of kind `op` fails.
    pub fn on(op: Op) -> Fault {
        Fault { op: Some(op), prefix: String::new(), skip: 0, times: None, crash: false, performed: false, seen: 0 }
    }

    /// Every operation fails, whatever its kind.
    pub fn any() -> Fault {
        Fault { op: None, ..Fault::on(Op::Get) }
    }

    /// Only operations on keys (or listing prefixes) starting with `prefix` match.
    pub fn under(mut self, prefix: &str) -> Fault {
        self.prefix = prefix.to_string();
        self
    }

    /// Only the `n`th matching operation fails (counted from 1).
    pub fn nth(mut self, n: u64) -> Fault {
        self.skip = n.saturating_sub(1);
        self.times = Some(1);
        self
    }

    /// The first `n` matching operations succeed, every later one fails.
    pub fn after(mut self, n: u64) -> Fault {
        self.skip = n;
        self.times = None;
        self
    }

    /// Once this fault fires, every later operation of any kind fails too (until healed).
    pub fn crash(mut self) -> Fault {
        self.crash = true;
        self
    }

    /// The failing operation takes effect, and then reports failure (a reply lost on the way).
    pub fn performed(mut self) -> Fault {
        self.performed = true;
        self
    }

    fn matches(&self, op: Op, key: &str) -> bool {
        self.op.is_none_or(|o| o == op) && key.starts_with(&self.prefix)
    }

    /// Counts a matching operation; whether it fails.
    fn fires(&mut self) -> bool {
        self.seen += 1;
        self.seen > self.skip && self.times.is_none_or(|t| self.seen <= self.skip + t)
    }
}

/// One operation that went through the store, failed or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// Its kind.
    pub op: Op,
    /// Its key or listing prefix.
    pub key: String,
    /// Whether it was failed.
    pub failed: bool,
}

#[derive(Debug, Default)]
struct State {
    faults: Vec<Fault>,
    crashed: bool,
    log: Vec<Logged>,
}

/// What to do with one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Fail,
    PerformThenFail,
}

/// Wraps a store and fails the operations its faults match.
#[derive(Debug)]
pub struct Faulty<S> {
    inner: S,
    state: Mutex<State>,
}

/// The error an injected failure returns.
pub const INJECTED: &str = "injected fault";

impl<S: ObjectStore> Faulty<S> {
    /// Passes everything to `inner` until told to fail.
    pub fn new(inner: S) -> Faulty<S> {
        Faulty { inner, state: Mutex::default() }
    }

    /// Adds a fault (faults are checked in the order added; each counts what it matches).
    pub fn fail(&self, f: Fault) -> &Self {
        self.state().faults.push(f);
        self
    }

    /// From the next operation on, nothing is performed.
    pub fn crash_now(&self) {
        self.state().crashed = true;
    }

    /// The first `k` operations from now succeed (unless another fault says otherwise); after
    /// them the store is down.
    pub fn crash_after(&self, k: u64) -> &Self {
        self.fail(Fault::any().after(k).crash())
    }

    /// Drops every fault and the crash: the store works again (the process restarted).
    pub fn heal(&self) {
        let mut s = self.state();
        s.faults.clear();
        s.crashed = false;
    }

    /// Whether a crash fault fired (or [`Faulty::crash_now`] was called) since the last heal.
    pub fn crashed(&self) -> bool {
        self.state().crashed
    }

    /// Every operation so far, in order.
    pub fn log(&self) -> Vec<Logged> {
        self.state().log.clone()
    }

    /// How many operations of kind `op` went through (failed ones included).
    pub fn count(&self, op: Op) -> usize {
        self.state().log.iter().filter(|l| l.op == op).count()
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs the operation and decides its fate (every fault that matches counts it).
    fn judge(&self, op: Op, key: &str) -> Verdict {
        let mut s = self.state();
        let mut verdict = if s.crashed { Verdict::Fail } else { Verdict::Pass };
        let mut crash = false;
        for f in s.faults.iter_mut().filter(|f| f.matches(op, key)) {
            if f.fires() && verdict == Verdict::Pass {
                verdict = if f.performed { Verdict::PerformThenFail } else { Verdict::Fail };
                crash = f.crash;
            }
        }
        s.crashed |= crash;
        s.log.push(Logged { op, key: key.to_string(), failed: verdict != Verdict::Pass });
        verdict
    }

    fn error(&self, op: &'static str, key: &str) -> StoreError {
        StoreError::Backend { store: self.inner.describe(), op, key: key.to_string(), msg: INJECTED.to_string() }
    }

    /// Runs `f` unless the operation is failed; a lost reply runs it and fails anyway.
    async fn run<T, F>(&self, op: Op, name: &'static str, key: &str, f: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        match self.judge(op, key) {
            Verdict::Pass => f.await,
            Verdict::Fail => Err(self.error(name, key)),
            Verdict::PerformThenFail => {
                f.await?;
                Err(self.error(name, key))
            }
        }
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for Faulty<S> {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.run(Op::Put, "put", key, self.inner.put(key, data)).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        self.run(Op::Put, "put", key, self.inner.put_if_absent(key, data)).await
    }
    async fn get(&self, key: &str) -> Result<Option<ObjectReader>, StoreError> {
        self.run(Op::Get, "get", key, self.inner.get(key)).await
    }
    async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.run(Op::Get, "get", key, self.inner.get_bytes(key)).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.run(Op::Head, "head", key, self.inner.head(key)).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.run(Op::List, "list", prefix, self.inner.list(prefix)).await
    }
    async fn list_level(&self, prefix: &str) -> Result<Level, StoreError> {
        self.run(Op::List, "list", prefix, self.inner.list_level(prefix)).await
    }
    async fn list_between(
        &self,
        prefix: &str,
        after: Option<&str>,
        before: Option<&str>,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        self.run(Op::List, "list", prefix, self.inner.list_between(prefix, after, before)).await
    }
    async fn list_some(&self, prefix: &str, max: usize) -> Result<Vec<ObjectMeta>, StoreError> {
        self.run(Op::List, "list", prefix, self.inner.list_some(prefix, max)).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.run(Op::Delete, "delete", key, self.inner.delete(key)).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn stage(&self, key: &str) -> Result<Staged, StoreError> {
        // Staging writes nothing a reader sees: the commit is the operation that counts.
        self.inner.stage(key)
    }
    async fn commit_if_absent(&self, key: &str, staged: Staged) -> Result<PutOutcome, StoreError> {
        self.run(Op::Put, "put", key, self.inner.commit_if_absent(key, staged)).await
    }
    async fn sweep_leftovers(&self) -> Result<Leftovers, StoreError> {
        self.run(Op::Sweep, "sweep", "", self.inner.sweep_leftovers()).await
    }
    fn retryable(&self, e: &StoreError) -> bool {
        // An injected failure is final: a retry with backoff would only slow the test down.
        !matches!(e, StoreError::Backend { msg, .. } if msg == INJECTED) && self.inner.retryable(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[tokio::test]
    async fn nth_prefix_crash_and_lost_replies() {
        let f = Faulty::new(MemoryStore::new());
        f.fail(Fault::on(Op::Put).nth(2));
        f.put("a", b("1")).await.unwrap();
        assert!(f.put("b", b("2")).await.unwrap_err().to_string().contains(INJECTED));
        f.put("c", b("3")).await.unwrap();
        assert_eq!(f.inner().keys(), ["a", "c"]);

        f.heal();
        f.fail(Fault::on(Op::Delete).under("x/"));
        f.put("x/1", b("1")).await.unwrap();
        assert!(f.delete("x/1").await.is_err() && f.inner().bytes("x/1").is_some());
        f.delete("a").await.unwrap();

        // A reply lost after the put: the object is there all the same.
        f.heal();
        f.fail(Fault::on(Op::Put).nth(1).performed());
        assert!(f.put_if_absent("y", b("y")).await.is_err());
        assert_eq!(f.put_if_absent("y", b("z")).await.unwrap(), PutOutcome::Exists);

        // A crash at the second head: nothing after it is performed, whatever its kind.
        f.heal();
        f.fail(Fault::on(Op::Head).nth(2).crash());
        assert!(f.head("c").await.unwrap().is_some());
        assert!(!f.crashed());
        assert!(f.head("c").await.is_err());
        assert!(f.crashed());
        assert!(f.put("z", b("z")).await.is_err() && f.list("").await.is_err());
        assert!(f.inner().bytes("z").is_none());
        f.heal();
        assert!(f.get_bytes("c").await.unwrap().is_some());

        // After K operations the store is down.
        f.crash_after(2);
        f.head("c").await.unwrap();
        f.list("").await.unwrap();
        assert!(f.head("c").await.is_err());
        let failed: Vec<bool> = f.log().iter().rev().take(3).map(|l| l.failed).collect();
        assert_eq!(failed, [true, false, false]);
        assert_eq!(f.count(Op::Delete), 2);
    }
}
