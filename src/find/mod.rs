//! `find`: the transactions people restore for (the commit that dropped or truncated a
//! table, a transaction by its id), from the push-time index, with table names from the
//! relation-name map. Segments the index has no events for are read from the archive.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::backup::time_format;
use crate::catalog::relnames::{self, RelNames, Removal};
use crate::catalog::wal_index::{self, DropEvent, XactEvents};
use crate::repo::Repository;
use crate::wal::name::{Lsn, Segment, WalFile};
use crate::wal::record;

/// At most this many segments without events are read from the archive per search.
pub const READ_LIMIT: usize = 4096;

/// What to look for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// The commit that dropped this table (`table`, `schema.table`, `db.schema.table`).
    Dropped(String),
    /// The commit that truncated (or rewrote) this table.
    Truncated(String),
    /// The end (commit or abort) of this transaction.
    Xid(u32),
}

impl std::fmt::Display for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Query::Dropped(t) => write!(f, "dropped {t}"),
            Query::Truncated(t) => write!(f, "truncated {t}"),
            Query::Xid(x) => write!(f, "transaction {x}"),
        }
    }
}

/// A search.
#[derive(Debug, Clone)]
pub struct Request {
    /// What.
    pub query: Query,
    /// Only events at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only events at or before this time.
    pub to: Option<DateTime<Utc>>,
    /// Refresh the relation-name map from this live server first (`postgres.conninfo`).
    pub refresh_from: Option<String>,
}

/// One transaction found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hit {
    /// `dropped`, `truncated`, `commit` or `abort`.
    pub event: &'static str,
    /// The transaction.
    pub xid: u32,
    /// When it committed (or aborted).
    #[serde(with = "time_format")]
    pub time: DateTime<Utc>,
    /// Start LSN of its commit or abort record.
    pub lsn: Lsn,
    /// The timeline it is on.
    pub timeline: u32,
    /// The segment holding the record.
    pub segment: String,
    /// The table the search named, qualified as `database.schema.table`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relation: Option<String>,
    /// The other relation files the same commit removed (indexes, TOAST), named where known.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
}

/// What a search found.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    /// The query, in words.
    pub query: String,
    /// The transactions, oldest first.
    pub hits: Vec<Hit>,
    /// Segments whose index was searched.
    pub segments_searched: u64,
    /// Segments read from the archive (no events in their index, or to find a transaction).
    pub segments_read: u64,
    /// When the relation-name map was last refreshed from the live database.
    #[serde(with = "time_format::option")]
    pub names_refreshed: Option<DateTime<Utc>>,
    /// What may make the answer incomplete.
    pub warnings: Vec<String>,
}

/// The events of one segment and where it is.
struct SegEvents {
    timeline: u32,
    number: u64,
    events: XactEvents,
    /// Its transaction ends, when it was read (for a transaction search).
    ends: Option<Vec<record::XactEnd>>,
}

/// Runs a search.
pub async fn run(repo: &Repository, req: &Request) -> anyhow::Result<Found> {
    let mut warnings = Vec::new();
    let names = match &req.refresh_from {
        Some(conninfo) => match relnames::refresh(repo, conninfo).await {
            Ok((map, refused)) => {
                if !refused.is_empty() {
                    warnings.push(format!(
                        "databases that refused the connection have no fresh names: {}",
                        refused.join(", ")
                    ));
                }
                map
            }
            Err(e) => {
                warnings.push(format!(
                    "the live database could not refresh the relation names ({e:#}); using the names the daemon stored"
                ));
                relnames::load(repo).await?
            }
        },
        None => relnames::load(repo).await?,
    };
    let seg_size = crate::repo::cluster::segment_size(repo).await?;
    let within = |us: i64| {
        req.from.is_none_or(|f| us >= f.timestamp_micros()) && req.to.is_none_or(|t| us <= t.timestamp_micros())
    };
    let commits_within = (req.from.is_some() || req.to.is_some()).then(|| {
        (req.from.map_or(i64::MIN, |f| f.timestamp_micros()), req.to.map_or(i64::MAX, |t| t.timestamp_micros()))
    });
    let wanted: Option<BTreeSet<(u32, u32)>> = match &req.query {
        Query::Dropped(t) | Query::Truncated(t) => {
            let files: BTreeSet<(u32, u32)> = names
                .files
                .iter()
                .filter(|r| RelNames::matches(r, t))
                .map(|r| (r.rel.db_oid, r.rel.relfilenode))
                .collect();
            if files.is_empty() {
                warnings.push(format!(
                    "no relation file named {t} is in the relation-name map{}: names are learned from the live database (the daemon refreshes them every minute, `find` when PostgreSQL is up), so a table created and removed between two refreshes has no name",
                    names.refreshed.map(|r| format!(" (refreshed {})", time_format::to_string(&r))).unwrap_or_default()
                ));
            }
            Some(files)
        }
        Query::Xid(_) => None,
    };
    let (mut searched, mut read) = (0u64, 0u64);
    let mut segs: Vec<SegEvents> = Vec::new();
    let mut unread: Vec<(u32, u64)> = Vec::new();
    for tli in wal_index::timelines(repo).await? {
        let index = wal_index::summaries(repo, tli, seg_size, commits_within).await?;
        let listed = repo.store().list(&repo.wal_prefix(tli)).await?;
        let archived = wal_index::segment_numbers(&listed, tli, seg_size);
        for n in &archived {
            match index.get(n).and_then(|i| i.xacts.clone()) {
                Some(events) => {
                    searched += 1;
                    segs.push(SegEvents { timeline: tli, number: *n, events, ends: None });
                }
                // Summarised before events were recorded, not summarised yet, or unreadable.
                None if index.get(n).is_none_or(|i| i.error.is_none()) => unread.push((tli, *n)),
                None => {}
            }
        }
    }
    // A transaction search reads the segments whose xid range holds it.
    if let Query::Xid(x) = req.query {
        let (holding, rest): (Vec<SegEvents>, Vec<SegEvents>) =
            segs.into_iter().partition(|s| s.events.xids.is_some_and(|(lo, hi)| lo <= x && x <= hi));
        unread.extend(holding.iter().map(|s| (s.timeline, s.number)));
        segs = rest;
    }
    if unread.len() > READ_LIMIT {
        warnings.push(format!(
            "{} segments have no events in the index; the {READ_LIMIT} newest were read (narrow the search with --from/--to, or run `tidemark wal-index rebuild`)",
            unread.len()
        ));
        unread.drain(..unread.len() - READ_LIMIT);
    }
    let bar = crate::snapshot::progress::count_bar(unread.len() as u64, "reading WAL segments", "segments");
    for (tli, n) in unread {
        let seg = Segment { timeline: tli, number: n };
        let key = repo.wal_key(&WalFile::Segment(seg), seg_size);
        let Some(bytes) = repo.get_opened(&key).await? else { continue };
        let start = seg.start_lsn(seg_size).0;
        let summary = tokio::task::spawn_blocking(move || record::summarize_segment_at(&bytes, seg_size, start))
            .await
            .context("reading a segment")?;
        bar.inc(1);
        read += 1;
        match summary {
            Ok(s) => segs.push(SegEvents {
                timeline: tli,
                number: n,
                events: wal_index::xact_events(&s),
                ends: Some(s.xact_ends),
            }),
            Err(e) => warnings.push(format!("segment {} could not be read: {e}", seg.name(seg_size))),
        }
    }
    bar.finish_and_clear();
    let mut hits = Vec::new();
    for s in &segs {
        let segment = Segment { timeline: s.timeline, number: s.number }.name(seg_size);
        match (&req.query, &wanted) {
            (Query::Xid(x), _) => {
                for e in s.ends.iter().flatten().filter(|e| e.xid == *x) {
                    let us = record::pg_time_to_unix_us(e.time_us);
                    if !within(us) {
                        continue;
                    }
                    hits.push(Hit {
                        event: if e.kind.is_commit() { "commit" } else { "abort" },
                        xid: e.xid,
                        time: DateTime::from_timestamp_micros(us).unwrap_or_default(),
                        lsn: Lsn(e.lsn),
                        timeline: s.timeline,
                        segment: segment.clone(),
                        relation: None,
                        also: Vec::new(),
                    });
                }
            }
            (q, Some(files)) => {
                let want = if matches!(q, Query::Dropped(_)) { Removal::Dropped } else { Removal::Truncated };
                for d in s.events.drops.iter().filter(|d| within(d.commit_us)) {
                    if let Some(hit) = removal_hit(d, files, &names, want, s.timeline, &segment) {
                        hits.push(hit);
                    }
                }
            }
            _ => {}
        }
    }
    hits.sort_by_key(|h| (h.time, h.timeline, h.lsn));
    hits.dedup();
    Ok(Found {
        query: req.query.to_string(),
        hits,
        segments_searched: searched,
        segments_read: read,
        names_refreshed: names.refreshed,
        warnings,
    })
}

/// The hit a commit's removed files make for a table search, if it removed one of `files`
/// the way `want` says (pure).
fn removal_hit(
    d: &DropEvent,
    files: &BTreeSet<(u32, u32)>,
    names: &RelNames,
    want: Removal,
    timeline: u32,
    segment: &str,
) -> Option<Hit> {
    let (_, db, rel) =
        *d.rels.iter().find(|(_, db, rel)| files.contains(&(*db, *rel)) && names.removal(*db, *rel) == want)?;
    let name = |db: u32, rel: u32| {
        names
            .file(db, rel)
            .map_or(format!("file {rel} of database {db}"), |r| format!("{}.{}", r.rel.database, r.qualified()))
    };
    Some(Hit {
        event: if want == Removal::Dropped { "dropped" } else { "truncated" },
        xid: d.xid,
        time: DateTime::from_timestamp_micros(d.commit_us).unwrap_or_default(),
        lsn: Lsn(d.lsn),
        timeline,
        segment: segment.to_string(),
        relation: Some(name(db, rel)),
        also: d.rels.iter().filter(|(_, o, r)| (*o, *r) != (db, rel)).map(|(_, o, r)| name(*o, *r)).collect(),
    })
}

/// Where transaction `xid` ended, for `restore --before-xid`: exactly one end in the
/// archive, or an error that says what to do.
pub async fn xid_end(repo: &Repository, xid: u32) -> anyhow::Result<Hit> {
    let found = run(repo, &Request { query: Query::Xid(xid), from: None, to: None, refresh_from: None }).await?;
    let mut ends: BTreeMap<(u32, u64), Hit> = BTreeMap::new();
    for h in found.hits {
        ends.insert((h.timeline, h.lsn.0), h);
    }
    match ends.len() {
        0 => anyhow::bail!(
            "transaction {xid} has no commit or abort in the archive ({} segments searched{}): check the id with `tidemark find --xid {xid}`, or restore with --target-time or --target-lsn",
            found.segments_searched + found.segments_read,
            if found.warnings.is_empty() { String::new() } else { format!("; {}", found.warnings.join("; ")) }
        ),
        1 => Ok(ends.into_values().next().expect("one")),
        _ => anyhow::bail!(
            "transaction {xid} ends more than once in the archive ({}): the id wrapped around or the timelines diverged; restore with --target-lsn just before the one you mean",
            ends.values().map(|h| format!("timeline {} LSN {} at {}", h.timeline, h.lsn, time_format::to_string(&h.time))).collect::<Vec<_>>().join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::relnames::tests::{at, live};

    fn names() -> RelNames {
        let mut m = RelNames::default();
        m.merge(&[live(5, 100, 100, "orders"), live(5, 101, 101, "orders_pkey"), live(5, 200, 200, "lines")], at(0));
        // orders dropped (with its index), lines truncated (new file, same relation).
        m.merge(&[live(5, 201, 200, "lines")], at(60));
        m
    }

    fn event(xid: u32, rels: &[u32]) -> DropEvent {
        DropEvent {
            lsn: 0x300_0028,
            xid,
            commit_us: at(30).timestamp_micros(),
            rels: rels.iter().map(|r| (1663, 5, *r)).collect(),
        }
    }

    #[test]
    fn a_drop_hit_names_the_table_and_what_went_with_it() {
        let m = names();
        let files: BTreeSet<(u32, u32)> = [(5, 100)].into();
        let h = removal_hit(&event(750, &[100, 101, 999]), &files, &m, Removal::Dropped, 1, "seg").unwrap();
        assert_eq!((h.event, h.xid, h.relation.as_deref()), ("dropped", 750, Some("app.public.orders")));
        assert_eq!(h.also, ["app.public.orders_pkey", "file 999 of database 5"]);
        assert_eq!(h.time, at(30));
        // The same commit is not a truncate of orders.
        assert!(removal_hit(&event(750, &[100]), &files, &m, Removal::Truncated, 1, "seg").is_none());
    }

    #[test]
    fn a_truncate_is_not_a_drop() {
        let m = names();
        let files: BTreeSet<(u32, u32)> = [(5, 200), (5, 201)].into();
        let h = removal_hit(&event(751, &[200]), &files, &m, Removal::Truncated, 1, "seg").unwrap();
        assert_eq!((h.event, h.relation.as_deref()), ("truncated", Some("app.public.lines")));
        assert!(removal_hit(&event(751, &[200]), &files, &m, Removal::Dropped, 1, "seg").is_none());
        // A commit removing files the search did not name is no hit.
        assert!(removal_hit(&event(752, &[100]), &files, &m, Removal::Dropped, 1, "seg").is_none());
    }
}
