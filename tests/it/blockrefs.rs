//! Block references and relation changes read from real WAL of every major 13 to 18, against
//! oracles nobody here wrote:
//! - the server's own WAL decoder where a host has one: PostgreSQL 15's `pg_waldump -b`
//!   (it reads only 15's WAL), and `pg_walinspect`'s `pg_get_wal_block_info` and
//!   `pg_get_wal_records_info` on 16, 17 and 18 (the npm builds of the other majors ship
//!   no pg_waldump; 13 and 14 have no `pg_get_wal_block_info`);
//! - on every major, what the catalog shows: each table's relfilenode and its length
//!   (`pg_relation_filenode`, `pg_relation_size`) before and after a truncating VACUUM,
//!   the relfilenodes TRUNCATE and DROP TABLE give up, the OIDs of a database and a
//!   tablespace created and dropped.
//!
//! And the per-segment summaries (1 MiB segments, so many records cross an edge), merged,
//! equal the streaming reader's block references over the whole WAL.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use tidemark::wal::record::{
    self, BlockRefs, RelChange, RelFileLocator, RelFork, WalReader, FSM_FORK, INIT_FORK, MAIN_FORK, VM_FORK,
};

use crate::harness::{self, Pg};

const SEG: u64 = 1 << 20;

/// One block reference as both sides print it: (record LSN, block id, rel, fork, block).
type Ref = (u64, u8, RelFileLocator, u8, u32);

/// Records as the server's decoder describes them: LSN to (rmgr, record type and description).
type Described = BTreeMap<u64, (String, String)>;

fn parse_lsn(s: &str) -> u64 {
    let (hi, lo) = s.trim().split_once('/').unwrap_or_else(|| panic!("LSN {s:?}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

fn fork_number(name: &str) -> u8 {
    match name {
        "main" => MAIN_FORK,
        "fsm" => FSM_FORK,
        "vm" => VM_FORK,
        "init" => INIT_FORK,
        other => panic!("fork {other:?}"),
    }
}

fn rel_of(s: &str) -> RelFileLocator {
    let p: Vec<u32> = s.split('/').map(|x| x.parse().unwrap_or_else(|_| panic!("rel {s:?}"))).collect();
    RelFileLocator { spc_oid: p[0], db_oid: p[1], rel_number: p[2] }
}

/// The path PostgreSQL's descriptions print for a relation fork, from the database on
/// (`relpathperm` without the tablespace's version directory).
fn rel_path_tail(rel: &RelFileLocator, fork: u8) -> String {
    let suffix = ["", "_fsm", "_vm", "_init"][fork as usize];
    if rel.spc_oid == 1664 {
        format!("global/{}{suffix}", rel.rel_number)
    } else {
        format!("/{}/{}{suffix}", rel.db_oid, rel.rel_number)
    }
}

/// The relation changes as PostgreSQL describes them: (LSN, rmgr, the record type the
/// description starts with, text it holds).
fn described_changes(changes: &[(u64, RelChange)]) -> Vec<(u64, &'static str, &'static str, String)> {
    let mut v = Vec::new();
    for (lsn, c) in changes {
        let (rmgr, kind, text) = match c {
            RelChange::Created { rel, fork } => ("Storage", "CREATE", rel_path_tail(rel, *fork)),
            RelChange::Truncated { rel, blkno, flags } => {
                ("Storage", "TRUNCATE", format!("{} to {blkno} blocks flags {flags}", rel_path_tail(rel, MAIN_FORK)))
            }
            RelChange::Dropped { rel } => ("Transaction", "", rel_path_tail(rel, MAIN_FORK)),
            RelChange::DatabaseCreated { spc_oid, db_oid } => ("Database", "CREATE", format!("{spc_oid}/{db_oid}")),
            RelChange::DatabaseDropped { db_oid, spc_oids } => {
                ("Database", "DROP", spc_oids.iter().map(|s| format!("{s}/{db_oid}")).collect::<Vec<_>>().join(" "))
            }
            RelChange::TablespaceCreated { spc_oid } => ("Tablespace", "CREATE", format!("{spc_oid} ")),
            RelChange::TablespaceDropped { spc_oid } => ("Tablespace", "DROP", format!("{spc_oid}")),
        };
        v.push((*lsn, rmgr, kind, text));
    }
    v
}

/// Checks every change against the description of the record at its LSN (rmgr, desc), and
/// that every record that changes relation files without block references is among them.
fn changes_match_descriptions(major: u32, changes: &[(u64, RelChange)], records: &Described) {
    for (lsn, want_rmgr, kind, want) in described_changes(changes) {
        let (rmgr, desc) = records.get(&lsn).unwrap_or_else(|| panic!("PG{major}: no record at {lsn:X}"));
        assert!(
            rmgr == want_rmgr && desc.starts_with(kind) && desc.contains(&want),
            "PG{major}: {rmgr} record at {lsn:X} is {desc:?}, expected {want_rmgr} {kind} ... {want:?}"
        );
    }
    let ours: BTreeSet<u64> = changes.iter().map(|(l, _)| *l).collect();
    for (lsn, (rmgr, desc)) in records {
        let kind = desc.split_whitespace().next().unwrap_or("");
        let relevant = match rmgr.as_str() {
            "Storage" => true,
            "Database" => true,
            "Tablespace" => true,
            "Transaction" => desc.contains("rels:"),
            _ => false,
        };
        assert!(!relevant || ours.contains(lsn), "PG{major}: {rmgr} {kind} at {lsn:X} ({desc}) not read as a change");
    }
}

/// Every block reference of every record the reader hands out from `segments` (in order).
fn reader_refs(segments: &[Vec<u8>], first_start: u64) -> (Vec<Ref>, Vec<(u64, u64)>) {
    let mut r = WalReader::starting_at(SEG, first_start).unwrap();
    let (mut refs, mut records) = (Vec::new(), Vec::new());
    for seg in segments {
        if r.end_of_wal().is_some() {
            break;
        }
        r.feed_segment(seg, |rec| {
            records.push((rec.lsn, rec.end_lsn));
            rec.for_each_block_ref(|b| refs.push((rec.lsn, b.block_id, b.rel, b.fork, b.block)));
        })
        .unwrap();
    }
    assert!(r.end_of_wal().is_some(), "the segments read should end the WAL");
    (refs, records)
}

/// What the catalog says about the workload's relations.
#[derive(Debug, Default)]
struct Observed {
    db: u32,
    /// Table `t`: relfilenode, blocks before and after the truncating VACUUM.
    t: (u32, u32, u32),
    /// Dropped by DROP TABLE.
    dropped: u32,
    /// TRUNCATE: the relfilenode before and after.
    truncated: (u32, u32),
    /// CREATE DATABASE (default strategy) then DROP DATABASE.
    db2: u32,
    /// 15+: CREATE DATABASE STRATEGY FILE_COPY.
    db3: Option<u32>,
    /// Tablespace created and dropped, and the table made and dropped in it.
    ts: (u32, u32),
    /// Tables dropped by commits that cross a segment's end 16 and 40 bytes in.
    cut: Vec<u32>,
}

fn workload(pg: &Pg, major: u32, ts_dir: &std::path::Path) -> Observed {
    let num = |q: &str| -> u32 { pg.sql(q).parse().unwrap_or_else(|e| panic!("PG{major} {q}: {e}")) };
    let mut o =
        Observed { db: num("select oid from pg_database where datname = current_database()"), ..Default::default() };
    pg.sql("create table t(id int, pad text) with (autovacuum_enabled = off)");
    pg.sql("insert into t select g, repeat('x', 200) from generate_series(1, 4000) g");
    let size = |rel: &str| num(&format!("select pg_relation_size('{rel}') / 8192"));
    o.t = (num("select pg_relation_filenode('t')"), size("t"), 0);
    pg.sql("delete from t where id > 1000");
    pg.sql("vacuum t");
    o.t.2 = size("t");
    assert!(o.t.2 < o.t.1, "PG{major}: VACUUM did not truncate t ({:?})", o.t);
    pg.sql("create table gone(i int)");
    pg.sql("insert into gone select generate_series(1, 1000)");
    o.dropped = num("select pg_relation_filenode('gone')");
    pg.sql("drop table gone");
    pg.sql("create table tr(i int)");
    pg.sql("insert into tr select generate_series(1, 1000)");
    o.truncated.0 = num("select pg_relation_filenode('tr')");
    pg.sql("truncate tr");
    o.truncated.1 = num("select pg_relation_filenode('tr')");
    pg.sql("create database db2");
    o.db2 = num("select oid from pg_database where datname = 'db2'");
    pg.sql("drop database db2");
    if major >= 15 {
        pg.sql("create database db3 strategy file_copy");
        o.db3 = Some(num("select oid from pg_database where datname = 'db3'"));
    }
    pg.sql(&format!("create tablespace ts location '{}'", ts_dir.display()));
    let ts = num("select oid from pg_tablespace where spcname = 'ts'");
    pg.sql("create table in_ts(i int) tablespace ts");
    pg.sql("insert into in_ts select generate_series(1, 1000)");
    o.ts = (ts, num("select pg_relation_filenode('in_ts')"));
    pg.sql("drop table in_ts");
    pg.sql("drop tablespace ts");
    // Commits dropping a table that start 16 and 40 bytes before a segment's end (one cut
    // in its header, one in its main data before the relations): padded with one logical
    // message sized from the insert position (records: 24 + 5 + 24 + 2 + n bytes).
    for (k, before) in [(0, 16), (1, 40)] {
        pg.sql(&format!("create table cut_{k}(i int)"));
        o.cut.push(num(&format!("select pg_relation_filenode('cut_{k}')")));
        pg.sql("select pg_switch_wal()");
        pg.sql(&format!(
            "DO $$\n\
             DECLARE\n\
               seg CONSTANT numeric := {SEG};\n\
               blk CONSTANT numeric := 8192;\n\
               off numeric; pg numeric; ub numeric; total numeric; n numeric;\n\
             BEGIN\n\
               DROP TABLE cut_{k};\n\
               off := pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0') % seg;\n\
               pg := floor(off / blk);\n\
               IF off % blk = 0 THEN off := off + CASE WHEN pg = 0 THEN 40 ELSE 24 END; END IF;\n\
               ub := off - 40 - 24 * pg;\n\
               total := seg - 40 - 24 * (seg / blk - 1);\n\
               n := total - {before} - ub - 55;\n\
               PERFORM pg_logical_emit_message(false, 'p', repeat('x', n::int));\n\
             END $$;\n"
        ));
    }
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    pg.sql("checkpoint");
    pg.pgbench(&["-n", "-c", "2", "-t", "200"]);
    pg.sql("update t set pad = 'y' where id % 10 = 0");
    o
}

fn scenario(major: u32) {
    let mut pg = Pg::init_major(major, &["--wal-segsize=1"]);
    pg.conf("autovacuum = off\nwal_keep_size = '2GB'\nmax_wal_size = '2GB'\ncheckpoint_timeout = '1h'\nwal_compression = on");
    pg.start();
    let walinspect = major >= 16;
    if walinspect {
        pg.sql("create extension pg_walinspect");
    }
    pg.sql("checkpoint");
    pg.sql("select pg_switch_wal()");
    let first = pg.sql("select pg_walfile_name(pg_current_wal_insert_lsn())");
    let (_, first_start) = record::parse_segment_file_name(&first, SEG).unwrap();
    let ts_dir = harness::postgres_dir("ts");
    let o = workload(&pg, major, ts_dir.path());
    pg.sql("checkpoint");
    let end = parse_lsn(&pg.sql("select pg_current_wal_flush_lsn()"));

    // The server's own decoder, while it runs (16+).
    let mut oracle: Option<(Vec<Ref>, Described)> = None;
    if walinspect {
        let range = format!("'{:X}/{:X}', '{:X}/{:X}'", first_start >> 32, first_start as u32, end >> 32, end as u32);
        let rows = pg.sql(&format!(
            "select start_lsn, block_id, reltablespace, reldatabase, relfilenode, relforknumber, relblocknumber \
             from pg_get_wal_block_info({range}, false) order by start_lsn, block_id"
        ));
        let refs: Vec<Ref> = rows
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                let n = |i: usize| -> u64 { f[i].parse().unwrap_or_else(|_| panic!("{l}")) };
                let rel = RelFileLocator { spc_oid: n(2) as u32, db_oid: n(3) as u32, rel_number: n(4) as u32 };
                (parse_lsn(f[0]), n(1) as u8, rel, n(5) as u8, n(6) as u32)
            })
            .collect();
        let recs = pg.sql(&format!(
            "select start_lsn, resource_manager, record_type || ' ' || coalesce(description, '') \
             from pg_get_wal_records_info({range})"
        ));
        let records = recs
            .lines()
            .map(|l| {
                let mut f = l.splitn(3, '|');
                let lsn = parse_lsn(f.next().unwrap());
                (lsn, (f.next().unwrap().to_string(), f.next().unwrap_or("").to_string()))
            })
            .collect();
        oracle = Some((refs, records));
    }
    pg.stop();

    // Every segment from `first` on, as written.
    let wal = pg.data.join("pg_wal");
    let mut names: Vec<String> = std::fs::read_dir(&wal)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| record::parse_segment_file_name(n, SEG).is_some_and(|(tli, s)| tli == 1 && s >= first_start))
        .collect();
    names.sort();
    let segments: Vec<Vec<u8>> = names.iter().map(|n| std::fs::read(wal.join(n)).unwrap()).collect();
    let (refs, records) = reader_refs(&segments, first_start);

    // pg_waldump (15 only): over the same files, after the shutdown.
    if major == 15 {
        let last = names.last().unwrap();
        let out = Command::new(harness::pg_bin().join("pg_waldump"))
            .args(["-b", "-p"])
            .arg(&wal)
            .args([names[0].as_str(), last.as_str()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (mut drefs, mut drecs) = (Vec::new(), BTreeMap::new());
        let mut at = 0u64;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("rmgr: ") {
                let lsn = rest.split("lsn: ").nth(1).and_then(|s| s.split(',').next()).unwrap();
                at = parse_lsn(lsn);
                let rmgr = rest.split_whitespace().next().unwrap().to_string();
                let desc = rest.split_once("desc: ").map(|(_, d)| d.to_string()).unwrap_or_default();
                drecs.insert(at, (rmgr, desc));
            } else if let Some(b) = line.trim_start().strip_prefix("blkref #") {
                // "blkref #0: rel 1663/5/16384 fork main blk 0 (FPW); hole: ..."
                let w: Vec<&str> = b.split_whitespace().collect();
                let id: u8 = w[0].trim_end_matches(':').parse().unwrap();
                assert_eq!((w[1], w[3], w[5]), ("rel", "fork", "blk"), "{line}");
                let blk: u32 = w[6].trim_end_matches(|c: char| !c.is_ascii_digit()).parse().unwrap();
                drefs.push((at, id, rel_of(w[2]), fork_number(w[4]), blk));
            }
        }
        assert!(
            drefs.len() > 1000,
            "PG15: pg_waldump printed {} block refs:\n{}",
            drefs.len(),
            String::from_utf8_lossy(&out.stderr)
        );
        oracle = Some((drefs, drecs));
    }

    // Oracle 1: each record's block references, exactly (records ending by `end` for
    // pg_walinspect, which reads up to there; all of them for pg_waldump).
    let limit: BTreeMap<u64, u64> = records.iter().copied().collect();
    let mut compared_changes = None;
    if let Some((theirs, descs)) = &oracle {
        let ours: Vec<Ref> =
            refs.iter().filter(|r| major == 15 || limit.get(&r.0).is_some_and(|&e| e <= end)).copied().collect();
        assert_eq!(ours.len(), theirs.len(), "PG{major}: block reference count vs the server's decoder");
        for (a, b) in ours.iter().zip(theirs) {
            assert_eq!(a, b, "PG{major}: block reference mismatch");
        }
        compared_changes = Some(descs);
    }

    // The per-segment summaries, each read alone, merged: the same blocks as the stream, no
    // change unknown, and some record cut at a segment's end joined across it.
    let parts: Vec<BlockRefs> = names
        .iter()
        .zip(&segments)
        .map(|(n, s)| {
            let (_, start) = record::parse_segment_file_name(n, SEG).unwrap();
            let sum = record::summarize_segment_at(s, SEG, start).unwrap_or_else(|e| panic!("PG{major} {n}: {e}"));
            let b = BlockRefs::decode(&sum.block_refs.encode()).unwrap();
            assert_eq!(b, sum.block_refs);
            b
        })
        .collect();
    let opened = parts.iter().filter(|p| p.open_record_lsn().is_some()).count();
    let merged = BlockRefs::merge(&parts);
    assert!(merged.complete(), "PG{major}: {:?}", merged.unknown());
    let mut stream: BTreeMap<RelFork, BTreeSet<u32>> = BTreeMap::new();
    for (_, _, rel, fork, blk) in &refs {
        stream.entry(RelFork { rel: *rel, fork: *fork }).or_default().insert(*blk);
    }
    let summarized: BTreeMap<RelFork, BTreeSet<u32>> =
        merged.blocks().iter().map(|(f, s)| (*f, s.iter().collect())).collect();
    assert!(summarized == stream, "PG{major}: merged segment summaries differ from the stream's block references");

    // Oracle 2: the relation changes, against the server's descriptions of those records.
    let changes = merged.changes();
    if let Some(descs) = compared_changes {
        let upto: Vec<(u64, RelChange)> = changes.iter().filter(|(l, _)| *l < end).cloned().collect();
        changes_match_descriptions(major, &upto, descs);
    }

    // Oracle 3 (every major): the catalog's relfilenodes, lengths and OIDs.
    let r = |spc_oid, rel_number| RelFileLocator { spc_oid, db_oid: o.db, rel_number };
    let t = r(1663, o.t.0);
    let t_blocks: BTreeSet<u32> = (0..o.t.1).collect();
    let main = |rel| RelFork { rel, fork: MAIN_FORK };
    assert_eq!(
        summarized.get(&main(t)),
        Some(&t_blocks),
        "PG{major}: blocks of t (created in the range) vs its length"
    );
    let has = |c: RelChange| changes.iter().any(|(_, x)| *x == c);
    assert!(has(RelChange::Created { rel: t, fork: MAIN_FORK }), "PG{major}: {changes:?}");
    assert!(
        changes.iter().any(|(_, c)| matches!(c, RelChange::Truncated { rel, blkno, flags }
            if *rel == t && *blkno == o.t.2 && flags & record::SMGR_TRUNCATE_HEAP != 0)),
        "PG{major}: VACUUM's truncation of t to {} blocks: {changes:?}",
        o.t.2
    );
    assert!(has(RelChange::Dropped { rel: r(1663, o.dropped) }), "PG{major}: DROP TABLE");
    assert!(has(RelChange::Created { rel: r(1663, o.truncated.1), fork: MAIN_FORK }), "PG{major}: TRUNCATE's new file");
    assert!(has(RelChange::Dropped { rel: r(1663, o.truncated.0) }), "PG{major}: TRUNCATE's old file");
    assert!(has(RelChange::DatabaseCreated { spc_oid: 1663, db_oid: o.db2 }), "PG{major}: CREATE DATABASE");
    assert!(has(RelChange::DatabaseDropped { db_oid: o.db2, spc_oids: vec![1663] }), "PG{major}: DROP DATABASE");
    if let Some(db3) = o.db3 {
        assert!(has(RelChange::DatabaseCreated { spc_oid: 1663, db_oid: db3 }), "PG{major}: FILE_COPY");
    }
    let (ts, in_ts) = o.ts;
    assert!(has(RelChange::TablespaceCreated { spc_oid: ts }) && has(RelChange::TablespaceDropped { spc_oid: ts }));
    assert!(has(RelChange::Created { rel: r(ts, in_ts), fork: MAIN_FORK }), "PG{major}: table in the tablespace");
    assert!(summarized.contains_key(&main(r(ts, in_ts))), "PG{major}: blocks in the tablespace");
    let full = merged.copy_in_full();
    assert!(full.relations.contains(&t) && full.relations.contains(&r(1663, o.truncated.1)));
    assert!(full.databases.contains(&(1663, o.db2)) && full.tablespaces.contains(&ts));
    assert_eq!(merged.truncated().get(&main(t)), Some(&o.t.2));

    // The two cut commits were left open by their segments and joined by the merge.
    for c in &o.cut {
        assert!(has(RelChange::Dropped { rel: r(1663, *c) }), "PG{major}: the cut commit dropping {c}: {changes:?}");
    }
    assert!(opened >= 2, "PG{major}: {opened} records were left open at a segment's end, expected the two cut commits");

    // A restart at wal_level minimal: the summary of its segment says it does not know.
    pg.conf("wal_level = minimal\nmax_wal_senders = 0");
    pg.start();
    let restarted = pg.sql("select pg_walfile_name(pg_current_wal_insert_lsn())");
    pg.sql("create table after_minimal(i int)");
    pg.stop();
    // The record is written at startup: in that segment or, at an edge, the one before.
    let mut now: Vec<String> = std::fs::read_dir(&wal)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| record::parse_segment_file_name(n, SEG).is_some())
        .collect();
    now.sort();
    let seg = BlockRefs::merge(
        &now.iter()
            .filter(|n| n.as_str() <= restarted.as_str())
            .rev()
            .take(2)
            .map(|n| {
                let (_, start) = record::parse_segment_file_name(n, SEG).unwrap();
                let bytes = std::fs::read(wal.join(n)).unwrap();
                record::summarize_segment_at(&bytes, SEG, start).unwrap().block_refs
            })
            .collect::<Vec<_>>(),
    );
    let reasons: Vec<_> = seg.unknown().iter().map(|u| u.reason).collect();
    assert!(reasons.contains(&record::UnknownReason::WalLevelMinimal), "PG{major}: {reasons:?}");
    assert!(seg.copy_in_full().everything);

    let bytes: usize = parts.iter().map(|p| p.encode().len()).sum();
    eprintln!(
        "PG{major}: {} segments, {} records, {} block refs ({} distinct), {} changes, {} records joined across an edge; \
         summaries {bytes} bytes; oracle: {}",
        parts.len(),
        records.len(),
        refs.len(),
        merged.block_count(),
        changes.len(),
        opened,
        match major {
            15 => "pg_waldump",
            16.. => "pg_walinspect",
            _ => "catalog only (no pg_waldump or pg_get_wal_block_info for this major)",
        }
    );
}

#[test]
fn pg13() {
    scenario(13);
}

#[test]
fn pg14() {
    scenario(14);
}

#[test]
fn pg15() {
    scenario(15);
}

#[test]
fn pg16() {
    scenario(16);
}

#[test]
fn pg17() {
    scenario(17);
}

#[test]
fn pg18() {
    scenario(18);
}

/// The archive's stored block references, read back over every archived segment, are the
/// segments' own (summarized here from the archived bytes), and a dropped table's file is
/// among the changes. `daemon`: the daemon's batched packs (S3); else one pack per direct
/// `wal-push` (fs).
async fn archived_refs_are_the_segments_own(url: &str, endpoint: Option<&str>, daemon: bool) {
    let mut pg = Pg::init_with(None, &["--wal-segsize=1"]);
    let mut tm = harness::Tidemark::new("refs", url, endpoint, &pg.data);
    pg.archive_to(&tm.config);
    if daemon {
        tm.start_daemon();
    }
    pg.start();
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    pg.pgbench(&["-n", "-c", "2", "-t", "300"]);
    pg.sql("create table gone (id int); insert into gone select generate_series(1, 1000)");
    let gone: u32 = pg.sql("select pg_relation_filenode('gone')").parse().unwrap();
    pg.sql("drop table gone");
    pg.switch_wal_archived(std::time::Duration::from_secs(120));

    let cfg = tidemark::config::Config::load(Some(&tm.config)).unwrap();
    let repo = tidemark::repo::Repository::open(&cfg).await.unwrap();
    let archived: Vec<u64> = repo
        .store()
        .list(&repo.wal_prefix(1))
        .await
        .unwrap()
        .iter()
        .filter_map(|o| tidemark::wal::name::Segment::parse(o.key.rsplit('/').next()?, SEG).ok())
        .map(|s| s.number)
        .collect();
    let (first, last) = (*archived.first().unwrap(), *archived.last().unwrap());
    assert!(last - first >= 8, "{archived:?}");
    // The daemon writes its last batch once it has caught up: wait for it, not for a time.
    let start = std::time::Instant::now();
    let stretch = loop {
        let s = tidemark::catalog::block_index::between(&repo, 1, SEG, first, last).await.unwrap();
        if s.whole() || start.elapsed() > std::time::Duration::from_secs(60) {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(stretch.whole(), "missing {:?}, unreadable {:?}", stretch.missing, stretch.unreadable);
    let mut own = Vec::new();
    for n in first..=last {
        let seg = tidemark::wal::name::Segment { timeline: 1, number: n };
        let key = repo.wal_key(&tidemark::wal::name::WalFile::Segment(seg), SEG);
        let bytes = repo.get_opened(&key).await.unwrap().unwrap();
        let s = record::summarize_segment_at(&bytes, SEG, n * SEG).unwrap();
        assert_eq!(stretch.segments[&n], s.block_refs, "segment {n}");
        own.push(s.block_refs);
    }
    let stored = |prefix: String| {
        let repo = &repo;
        async move { repo.store().list(&prefix).await.unwrap().iter().map(|o| o.size).sum::<u64>() }
    };
    let packs = stored("clusters/refs/wal-index/00000001/blocks/".to_string()).await;
    let wal = stored(repo.wal_prefix(1)).await;
    eprintln!("block references: {packs} bytes stored for {} segments ({wal} bytes stored)", last - first + 1);
    let merged = stretch.merged();
    assert_eq!(merged, BlockRefs::merge(&own));
    assert!(
        merged.changes().iter().any(|(_, c)| matches!(c, RelChange::Dropped { rel } if rel.rel_number == gone)),
        "the drop of file {gone} is not among the changes"
    );
    assert!(merged.blocks().keys().any(|f| f.fork == MAIN_FORK), "no main-fork blocks");
    if daemon {
        tm.stop_daemon();
    }
    pg.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn archived_block_references_are_the_segments_own_daemon_s3() {
    let moto = harness::Moto::start();
    moto.create_bucket("refs").await;
    archived_refs_are_the_segments_own("s3://refs/env", Some(&moto.endpoint()), true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn archived_block_references_are_the_segments_own_direct_fs() {
    let repo = harness::postgres_dir("refs");
    archived_refs_are_the_segments_own(&harness::Tidemark::fs_url(repo.path()), None, false).await;
}
