//! One contract suite for every `ObjectStore`: the fs store, S3 through a local moto server,
//! the in-memory store, and the fault-injecting wrapper with no fault set.

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tidemark::store::faulty::Faulty;
use tidemark::store::memory::MemoryStore;
use tidemark::store::{self, ObjectStore, PutOutcome, StoreOptions};
use tokio::io::AsyncReadExt;

use crate::harness;

async fn contract(s: Arc<dyn ObjectStore>) {
    // Absent objects.
    assert!(s.get("a/missing").await.unwrap().is_none());
    assert!(s.head("a/missing").await.unwrap().is_none());
    assert!(s.list("a/").await.unwrap().is_empty());
    s.delete("a/missing").await.unwrap();

    // Put, head, streaming get.
    s.put("a/one", Bytes::from_static(b"first")).await.unwrap();
    assert_eq!(s.head("a/one").await.unwrap().unwrap().size, 5);
    let mut r = s.get("a/one").await.unwrap().unwrap();
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).await.unwrap();
    assert_eq!(buf, b"first");

    // Put replaces; put-if-absent never does.
    s.put("a/one", Bytes::from_static(b"second")).await.unwrap();
    assert_eq!(&s.get_bytes("a/one").await.unwrap().unwrap()[..], b"second");
    assert_eq!(s.put_if_absent("a/one", Bytes::from_static(b"third")).await.unwrap(), PutOutcome::Exists);
    assert_eq!(&s.get_bytes("a/one").await.unwrap().unwrap()[..], b"second");
    assert_eq!(s.put_if_absent("a/two", Bytes::from_static(b"2")).await.unwrap(), PutOutcome::Created);
    assert_eq!(&s.get_bytes("a/two").await.unwrap().unwrap()[..], b"2");

    // Empty and large objects (large crosses the S3 multipart threshold set below).
    s.put("a/empty", Bytes::new()).await.unwrap();
    assert_eq!(s.get_bytes("a/empty").await.unwrap().unwrap().len(), 0);
    let big: Vec<u8> = (0..(40u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    s.put("b/big", Bytes::from(big.clone())).await.unwrap();
    let back = s.get_bytes("b/big").await.unwrap().unwrap();
    assert_eq!(back.len(), big.len());
    assert!(back[..] == big[..], "large object differs");
    assert_eq!(s.put_if_absent("b/big2", Bytes::from(big)).await.unwrap(), PutOutcome::Created);

    // Listing is by prefix, sorted, recursive, and not fooled by sibling prefixes.
    s.put("a/sub/deep", Bytes::from_static(b"d")).await.unwrap();
    s.put("ab/other", Bytes::from_static(b"o")).await.unwrap();
    let keys: Vec<String> = s.list("a/").await.unwrap().into_iter().map(|m| m.key).collect();
    assert_eq!(keys, ["a/empty", "a/one", "a/sub/deep", "a/two"]);
    let keys: Vec<String> = s.list("a").await.unwrap().into_iter().map(|m| m.key).collect();
    assert_eq!(keys, ["a/empty", "a/one", "a/sub/deep", "a/two", "ab/other"]);
    let metas = s.list("a/o").await.unwrap();
    assert_eq!(metas.len(), 1);
    assert_eq!((metas[0].key.as_str(), metas[0].size), ("a/one", 6));

    // One level: direct objects, and the directories below folded into prefixes.
    let l = s.list_level("a/").await.unwrap();
    let keys: Vec<&str> = l.objects.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(keys, ["a/empty", "a/one", "a/two"]);
    assert_eq!(l.dirs, ["a/sub/"]);
    assert_eq!(s.list_level("nothing/").await.unwrap(), store::Level::default());
    let some = s.list_some("a/", 2).await.unwrap();
    assert!(!some.is_empty() && some.len() <= 2, "{some:?}");
    assert!(some.iter().all(|m| m.key.starts_with("a/")));
    assert!(s.list_some("nothing/", 5).await.unwrap().is_empty());

    // Delete.
    s.delete("a/one").await.unwrap();
    assert!(s.get("a/one").await.unwrap().is_none());
    assert!(s.head("a/one").await.unwrap().is_none());

    // Keys that could escape the root are refused.
    for bad in ["", "/abs", "a/../b", "a//b", "a/", "./a", "a/.tidemark-tmp.x"] {
        assert!(s.put(bad, Bytes::from_static(b"x")).await.is_err(), "{bad}");
    }

    // More than 1,000 objects: every listing paginates.
    let n = 1_234;
    put_all((0..n).map(|i| (format!("many/{i:05}"), Bytes::from(i.to_string()))), &s).await;
    let all = s.list("many/").await.unwrap();
    assert_eq!(all.len(), n);
    assert_eq!(all[0].key, "many/00000");
    assert_eq!(all[n - 1].key, format!("many/{:05}", n - 1));
    assert!(all.windows(2).all(|w| w[0].key < w[1].key));
    // A level listing paginates too, objects and directories alike.
    put_all((0..1_100).map(|i| (format!("many/d{i:05}/x"), Bytes::from_static(b"x"))), &s).await;
    let l = s.list_level("many/").await.unwrap();
    assert_eq!((l.objects.len(), l.dirs.len()), (n, 1_100));
    assert_eq!(l.dirs[1_099], "many/d01099/");
    // A range of keys, across pages, with either end open.
    let keys = |v: Vec<store::ObjectMeta>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
    let r = keys(s.list_between("many/", Some("many/00100"), Some("many/01200")).await.unwrap());
    assert_eq!((r.len(), r[0].as_str(), r[r.len() - 1].as_str()), (1_099, "many/00101", "many/01199"));
    let r = keys(s.list_between("many/", Some("many/01230"), None).await.unwrap());
    assert_eq!(&r[..4], ["many/01231", "many/01232", "many/01233", "many/d00000/x"]);
    assert_eq!(keys(s.list_between("many/", None, Some("many/00002")).await.unwrap()), ["many/00000", "many/00001"]);
}

/// Puts every `(key, body)`, a few at a time: a thousand at once is a thousand connects to
/// moto, whose listen queue (128) then overflows on a busy machine and connects time out.
async fn put_all(objects: impl Iterator<Item = (String, Bytes)>, s: &Arc<dyn ObjectStore>) {
    futures::stream::iter(objects)
        .map(|(key, body)| {
            let s = s.clone();
            async move { s.put(&key, body).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
}

#[tokio::test]
async fn fs_store_meets_the_contract() {
    let d = tempfile::tempdir().unwrap();
    let url = format!("file://{}/repo", d.path().display());
    let s = store::open(&url, &StoreOptions::default()).await.unwrap();
    contract(s).await;
    // No temp files are left behind by successful writes.
    let leftovers = walk(&d.path().join("repo")).into_iter().filter(|p| p.contains(".tidemark-tmp.")).count();
    assert_eq!(leftovers, 0);
}

#[tokio::test]
async fn memory_store_meets_the_contract() {
    contract(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn faulty_store_without_faults_meets_the_contract() {
    let f = Arc::new(Faulty::new(MemoryStore::new()));
    contract(f.clone()).await;
    assert!(f.log().iter().all(|l| !l.failed));
}

fn walk(p: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

#[tokio::test]
async fn s3_store_meets_the_contract() {
    let moto = harness::Moto::start();
    moto.create_bucket("contract").await;
    let opts = StoreOptions {
        region: Some("us-east-1".into()),
        endpoint: Some(moto.endpoint()),
        multipart_threshold: Some(16 << 20),
    };
    let s = store::open("s3://contract/some/prefix", &opts).await.unwrap();
    assert_eq!(s.describe(), "s3://contract/some/prefix");
    contract(s).await;

    // A service error reads as what S3 said, not as the SDK's dump of the raw response.
    let missing = store::open("s3://no-such-bucket/p", &opts).await.unwrap();
    let e = missing.get_bytes("x").await.unwrap_err().to_string();
    assert!(e.contains("get x failed: NoSuchBucket: The specified bucket does not exist"), "{e}");
    assert!(!e.contains("Response {") && e.len() < 300, "{e}");
}

#[tokio::test]
async fn s3_store_unreachable_is_a_clear_error() {
    harness::aws_env();
    let port = harness::free_port();
    let opts = StoreOptions {
        region: Some("us-east-1".into()),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        multipart_threshold: None,
    };
    let s = store::open("s3://nowhere", &opts).await.unwrap();
    let e = s.head("x").await.unwrap_err().to_string();
    assert!(e.contains("s3://nowhere") && e.contains("head x"), "{e}");
}

#[tokio::test]
async fn bad_urls_are_refused() {
    for url in ["ftp://x", "file://relative", "s3://"] {
        assert!(store::open(url, &StoreOptions::default()).await.is_err(), "{url}");
    }
}
