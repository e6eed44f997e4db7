//! Metadata cost as the archive grows (benches/scale.sh drives it; see benches/SCALE.md).
//!
//! `scale build URL SEGMENTS [COPY_URL]` writes a synthetic repository through the library:
//! the cluster record, SEGMENTS tiny sealed segment objects of 16 MiB segments, their
//! commit-time index as the daemon leaves it (every summary in its block, the last two
//! blocks not completed), and
//! 30 completed backups with 100 bundle objects each. With COPY_URL the same objects go
//! there too (a cross-region copy in step). No PostgreSQL is needed.
//!
//! `scale op NAME URL [COPY_URL]` runs one operation in a fresh process and prints one JSON
//! line: milliseconds and store requests by kind (listing pages of 1,000 keys, as S3 bills).
//! NAME: window, status, plan, verify, list, purge-plan, copy.
//!
//! Environment: SCALE_KEYRING (the keyring file; `build` creates it), SCALE_ENDPOINT (S3).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tidemark::catalog::wal_index::{self, BlockIndex, SegmentIndex, TimelineSummary};
use tidemark::codec::Keyring;
use tidemark::repo::Repository;
use tidemark::store::{self, counting::Counting, ObjectStore, StoreOptions};
use tidemark::wal::name::{Segment, WalFile};

const SEG: u64 = 16 << 20;
const BACKUPS: u64 = 30;
const BUNDLES: usize = 100;
const CLUSTER: &str = "scale";

fn base() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").map(|t| t.to_utc()).unwrap_or_default()
}

fn keyring_path() -> std::path::PathBuf {
    std::env::var_os("SCALE_KEYRING").map(Into::into).unwrap_or_else(|| "/var/tmp/tidemark-scale.keyring".into())
}

fn opts() -> StoreOptions {
    StoreOptions {
        endpoint: std::env::var("SCALE_ENDPOINT").ok(),
        region: Some("us-east-1".into()),
        ..StoreOptions::default()
    }
}

async fn open(url: &str) -> anyhow::Result<(Repository, Arc<store::counting::Counts>)> {
    let ring = Keyring::load(&keyring_path())?;
    let counting = Counting::new(store::open(url, &opts()).await?);
    let counts = counting.counts.clone();
    let s: Arc<dyn ObjectStore> = Arc::new(counting);
    Ok((Repository::new(s, Arc::new(ring), 3, CLUSTER), counts))
}

/// One segment's synthetic summary: one commit a second, every segment joining the last.
fn summary(n: u64) -> SegmentIndex {
    let t = base().timestamp_micros() + n as i64 * 1_000_000;
    SegmentIndex {
        first_commit_us: Some(t),
        last_commit_us: Some(t + 500_000),
        records: 100,
        error: None,
        chain: true,
        first_record: Some((n * SEG + 40, (n - 1) * SEG + 9_000)),
        last_record_lsn: Some(n * SEG + 9_000),
        last_record_end: Some(n * SEG + 9_100),
        last_complete_lsn: Some(n * SEG + 9_000),
        unsupported_magic: None,
        xacts: Some(tidemark::catalog::wal_index::XactEvents {
            xids: Some((n as u32 * 10, n as u32 * 10 + 9)),
            drops: Vec::new(),
        }),
    }
}

fn json_bytes<T: serde::Serialize>(v: &T) -> anyhow::Result<Bytes> {
    Ok(Bytes::from(serde_json::to_vec(v)?))
}

/// Where `build` writes: a repository, and for a directory its root, which is written
/// directly (sealed the same way, without the store's fsyncs: a million of them would take
/// longer than the benchmark itself).
#[derive(Clone)]
struct Target {
    repo: Repository,
    dir: Option<std::path::PathBuf>,
}

/// Writes sealed objects to every target, many at a time.
async fn put_all(targets: &[Target], objects: Vec<(String, Bytes)>) -> anyhow::Result<()> {
    use futures::stream::{StreamExt, TryStreamExt};
    futures::stream::iter(objects.into_iter().map(|(k, v)| async move {
        for t in targets {
            match &t.dir {
                Some(root) => {
                    let sealed = t.repo.seal(&k, v.clone()).await?;
                    let path = root.join(&k);
                    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                        if let Some(p) = path.parent() {
                            std::fs::create_dir_all(p)?;
                        }
                        std::fs::write(&path, &sealed)
                    })
                    .await??;
                }
                None => t.repo.put_sealed(&k, v.clone()).await?,
            }
        }
        anyhow::Ok(())
    }))
    .buffer_unordered(64)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

async fn target(url: &str) -> anyhow::Result<Target> {
    Ok(Target { repo: open(url).await?.0, dir: url.strip_prefix("file://").map(Into::into) })
}

async fn build(url: &str, segments: u64, copy: Option<&str>) -> anyhow::Result<()> {
    if !keyring_path().exists() {
        Keyring::keygen(&keyring_path())?;
    }
    let mut repos = vec![target(url).await?];
    if let Some(c) = copy {
        repos.push(target(c).await?);
    }
    let r = repos[0].repo.clone();
    let record = serde_json::json!({
        "handle": CLUSTER, "system_identifier": "7000000000000000001", "wal_segment_size": SEG,
        "state": "active", "created_at": base().to_rfc3339(),
    });
    put_all(&repos, vec![(r.cluster_key(), json_bytes(&record)?)]).await?;
    let first = 1u64;
    let last = segments;
    let newest_block = wal_index::block_of(last, SEG);
    let mut summary_doc = TimelineSummary {
        version: 1,
        blocks: BTreeMap::new(),
        // As a roll-up leaves it: the block before the newest not completed yet.
        complete_to: newest_block.checked_sub(1).map(|p| wal_index::block_of(p, SEG)).and_then(|h| h.checked_sub(1)),
    };
    let mut batch = Vec::new();
    let started = Instant::now();
    let mut block = BlockIndex::default();
    for n in first..=last {
        let seg = Segment { timeline: 1, number: n };
        batch.push((r.wal_key(&WalFile::Segment(seg), SEG), Bytes::from_static(b"tiny segment")));
        // The daemon writes every summary into its block (the newest one partial).
        block.segments.insert(n, summary(n));
        {
            if n == last || n == wal_index::block_end(wal_index::block_of(n, SEG), SEG) {
                let b = wal_index::block_of(n, SEG);
                batch.push((wal_index::block_key(&r, 1, b, SEG), json_bytes(&block)?));
                summary_doc.blocks.insert(b, wal_index::block_runs(&block));
                block = BlockIndex::default();
            }
        }
        if batch.len() >= 4096 {
            put_all(&repos, std::mem::take(&mut batch)).await?;
            eprintln!("  {n}/{last} segments, {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    batch.push((wal_index::summary_key(&r, 1), json_bytes(&summary_doc)?));
    for i in 0..BACKUPS {
        let start_seg = first + (last - first) * i / BACKUPS;
        let t = |n: u64| (base() + chrono::Duration::seconds(n as i64)).to_rfc3339();
        let id = (base() + chrono::Duration::seconds(start_seg as i64)).format("%Y%m%dT%H%M%SZ").to_string();
        let sealed = r.seal("size", Bytes::from_static(b"bundle")).await?.len();
        let bundles: Vec<serde_json::Value> = (0..BUNDLES)
            .map(|b| serde_json::json!({"name": format!("b{b:05}"), "plain_bytes": 6, "stored_bytes": sealed}))
            .collect();
        let m = serde_json::json!({
            "id": id, "cluster": CLUSTER, "kind": "automatic", "state": "completed", "provider": "files",
            "pg_version": 150000, "system_identifier": "7000000000000000001", "timeline": 1,
            "wal_segment_size": SEG, "start_lsn": tidemark::wal::name::Lsn(start_seg * SEG + 40).to_string(),
            "stop_lsn": tidemark::wal::name::Lsn(start_seg * SEG + 4096).to_string(),
            "start_time": t(start_seg), "stop_time": t(start_seg), "bundles": bundles,
        });
        let prefix = r.backup_prefix(&id);
        for b in 0..BUNDLES {
            batch.push((format!("{prefix}data/b{b:05}"), Bytes::from_static(b"bundle")));
        }
        let manifest: tidemark::catalog::backup::Manifest = serde_json::from_value(m)?;
        batch.push((format!("{prefix}manifest.json"), json_bytes(&manifest)?));
        batch.push((format!("{prefix}record.json"), json_bytes(&tidemark::catalog::backup::record_of(&manifest))?));
    }
    put_all(&repos, batch).await?;
    eprintln!("built {segments} segments in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn op(name: &str, url: &str, copy: Option<&str>) -> anyhow::Result<serde_json::Value> {
    let (repo, counts) = open(url).await?;
    let cfg = tidemark::config::Config::from_toml("", "scale", std::iter::empty())?;
    let started = Instant::now();
    let mut extra = serde_json::json!({});
    match name {
        "window" => {
            let w = tidemark::restore::Inputs::load(&repo).await?.windows();
            extra = serde_json::json!({"ranges": w.iter().map(|(_, w)| w.ranges.len()).sum::<usize>()});
        }
        "status" => {
            let s = tidemark::cmd::status::gather(&cfg, &repo).await?;
            extra = serde_json::json!({"verdict": s.verdict});
        }
        "plan" => {
            let inputs = tidemark::restore::Inputs::load(&repo).await?;
            let segs = inputs.archives.values().map(|a| a.last().unwrap_or(0)).max().unwrap_or(0);
            let mid = base() + chrono::Duration::seconds((segs * 3 / 4) as i64);
            let (_, p) = inputs.plan(tidemark::catalog::restore_plan::Target::Time(mid), None)?;
            let (_, l) = inputs.plan(tidemark::catalog::restore_plan::Target::Latest, None)?;
            extra = serde_json::json!({"time_target_segments": p.last_segment - p.first_segment + 1, "latest_last": l.last_segment});
        }
        "verify" => {
            let v = tidemark::verify::verify(&repo, false).await?;
            extra = serde_json::json!({"ok": v.ok});
        }
        "list" => {
            let l = tidemark::catalog::backup::list(&repo).await?;
            extra = serde_json::json!({"backups": l.len()});
        }
        "purge-plan" => {
            let policy = tidemark::sweep::load(&repo).await?;
            let now = Utc::now();
            let plan = tidemark::sweep::plan_now(&repo, &policy, now).await?;
            let wal = tidemark::sweep::all_wal_deletions(&repo, &plan).await?;
            extra = serde_json::json!({"wal_deletions": wal.len()});
        }
        "records" => {
            // Repositories built before catalog records existed get them.
            extra = serde_json::json!({"written": tidemark::catalog::backup::reconcile_records(&repo).await?});
        }
        "copy" => {
            let dst = open(copy.ok_or_else(|| anyhow::anyhow!("copy needs COPY_URL"))?).await?.0;
            let mut marks = tidemark::copy::Marks::default();
            let full = tidemark::copy::sync_marked(&cfg, &repo, &dst, "copy", &mut marks).await?;
            let full_ms = started.elapsed().as_secs_f64() * 1e3;
            let full_requests = counts.json();
            let t = Instant::now();
            let before = counts.total();
            let steady = tidemark::copy::sync_marked(&cfg, &repo, &dst, "copy", &mut marks).await?;
            extra = serde_json::json!({
                "full_ms": full_ms, "full_requests": full_requests, "full_copied": full.objects,
                "steady_ms": t.elapsed().as_secs_f64() * 1e3, "steady_requests": counts.total() - before,
                "steady_copied": steady.objects,
            });
        }
        other => anyhow::bail!("unknown operation {other}"),
    }
    Ok(serde_json::json!({
        "op": name, "ms": started.elapsed().as_secs_f64() * 1e3, "requests": counts.json(), "result": extra,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["build", url, n, rest @ ..] => build(url, n.parse()?, rest.first().copied()).await,
        ["op", name, url, rest @ ..] => {
            println!("{}", op(name, url, rest.first().copied()).await?);
            Ok(())
        }
        _ => {
            eprintln!("usage: scale build URL SEGMENTS [COPY_URL] | scale op NAME URL [COPY_URL]");
            Ok(())
        }
    }
}
