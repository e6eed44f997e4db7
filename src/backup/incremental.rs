//! Incremental backups: the base chosen, and what changed since its start read from the
//! block references stored at push time (with a segment that has none re-read from the
//! archive, and the segment being written read from `pg_wal`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::catalog::backup::{self, BackupState, Manifest};
use crate::catalog::block_index;
use crate::config::{Config, Provider as ProviderKind};
use crate::repo::Repository;
use crate::snapshot::files::incremental::{Base, Changes};
use crate::wal::name::{Lsn, Segment, WalFile};
use crate::wal::record::{summarize_segment_at, BlockRefs, RelChange};

/// Whether a backup is taken whole or from what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Every file read.
    Full,
    /// Only what changed since the newest backup (a full one when there is no base).
    Incremental,
    /// What `backup.incremental` and `backup.full_every_days` say (automatic backups).
    Configured,
}

/// Whether backup `m` (manifest or catalog record) holds all its data itself: no part
/// points into another backup's bundles.
pub fn is_full(m: &Manifest) -> bool {
    m.incremental.as_ref().is_none_or(|i| i.bytes_kept == 0)
}

/// The base an incremental backup builds on (pure): the newest completed `files` backup of
/// the same server, timeline and major; or why there is none and a full backup is taken.
pub fn choose_base<'a>(
    backups: &'a [Manifest],
    level: Level,
    cfg: &Config,
    now: DateTime<Utc>,
    system_identifier: &str,
    timeline: u32,
    pg_version: u32,
) -> Result<&'a Manifest, String> {
    match level {
        Level::Full => return Err("a full backup was asked for".into()),
        Level::Configured if !cfg.backup.incremental => return Err("backup.incremental is off".into()),
        _ => {}
    }
    if cfg.backup.provider != ProviderKind::Files {
        return Err("ebs snapshots store only changed blocks already".into());
    }
    let usable = |m: &&Manifest| {
        m.state == BackupState::Completed
            && m.provider == ProviderKind::Files
            && m.stop_lsn.is_some()
            && m.system_identifier == system_identifier
    };
    let Some(base) = backups.iter().filter(usable).max_by(|a, b| a.start_lsn.cmp(&b.start_lsn).then(a.id.cmp(&b.id)))
    else {
        return Err("there is no completed files backup to build on".into());
    };
    if base.timeline != timeline {
        return Err(format!(
            "the newest backup, {}, is on timeline {}, the server on {timeline}",
            base.id, base.timeline
        ));
    }
    if base.pg_version / 10000 != pg_version / 10000 {
        return Err(format!("the newest backup, {}, is of PostgreSQL {}", base.id, base.pg_version / 10000));
    }
    if level == Level::Configured {
        let days = cfg.backup.full_every_days;
        let last_full = backups.iter().filter(usable).filter(|m| is_full(m)).map(|m| m.start_time).max();
        match last_full {
            None => return Err("no full backup is kept".into()),
            Some(t) if now - t >= chrono::Duration::days(i64::from(days)) => {
                return Err(format!(
                    "the newest full backup is {} days old (backup.full_every_days = {days})",
                    (now - t).num_days()
                ))
            }
            Some(_) => {}
        }
    }
    Ok(base)
}

/// How long the references of the newest archived segments are awaited (the daemon stores
/// a batch's after its segments).
const FRESH_REFS_WAIT: Duration = Duration::from_secs(20);

/// What changed on `timeline` between `base`'s start and `start`, for a cluster whose data
/// directory is `data_dir`.
pub async fn changes_since(
    repo: &Repository,
    base: &Manifest,
    start: Lsn,
    data_dir: &Path,
    block_size: u64,
    relseg_blocks: u64,
) -> anyhow::Result<Changes> {
    let (tli, seg_size) = (base.timeline, base.wal_segment_size);
    let from = Segment::containing(tli, base.start_lsn, seg_size).number;
    let live = Segment::containing(tli, start, seg_size);
    let base_ref = Base {
        id: base.id.clone(),
        start_lsn: base.start_lsn,
        files: base.files.clone(),
        bundles: base.bundles.clone(),
    };
    let mut notes: Vec<(Vec<crate::wal::record::RelFileLocator>, String)> = Vec::new();
    let mut everything: Option<String> = None;
    let mut parts: BTreeMap<u64, BlockRefs> = BTreeMap::new();
    if live.number > from {
        let last = live.number - 1;
        if let Err(e) =
            super::wait_for_wal(repo, tli, base.start_lsn, live.start_lsn(seg_size), seg_size, Duration::from_secs(120))
                .await
        {
            everything = Some(format!("the WAL since the base backup is not all archived: {e:#}"));
        }
        let began = Instant::now();
        let mut stretch = block_index::between(repo, tli, seg_size, from, last).await?;
        // The newest segments' references may be a moment behind the segments.
        while stretch.missing.iter().any(|n| *n + 8 > last) && began.elapsed() < FRESH_REFS_WAIT {
            tokio::time::sleep(Duration::from_millis(200)).await;
            stretch = block_index::between(repo, tli, seg_size, from, last).await?;
        }
        let mut lost: Vec<(u64, String)> =
            stretch.missing.iter().map(|n| (*n, "no block references are stored".to_string())).collect();
        lost.extend(
            stretch.unreadable.iter().map(|(n, why)| (*n, format!("its stored block references do not read ({why})"))),
        );
        lost.sort();
        for (n, why) in lost {
            let seg = Segment { timeline: tli, number: n };
            let name = seg.name(seg_size);
            match reread(repo, seg, seg_size).await {
                Ok(refs) => {
                    notes.push((
                        relations_of(&refs),
                        format!("segment {name}: {why}; its relations are copied in full"),
                    ));
                    parts.insert(n, refs);
                }
                Err(e) => {
                    everything.get_or_insert(format!(
                        "segment {name}: {why}, and the archived segment cannot be read: {e:#}"
                    ));
                }
            }
        }
        parts.extend(stretch.segments);
    }
    // The segment being written holds the WAL from its start to this backup's start.
    let live_path = data_dir.join("pg_wal").join(live.name(seg_size));
    match std::fs::read(&live_path)
        .map_err(anyhow::Error::from)
        .and_then(|b| summarize_segment_at(&b, seg_size, live.start_lsn(seg_size).0).map_err(anyhow::Error::from))
    {
        Ok(s) => {
            parts.insert(live.number, s.block_refs.forget_unknown_from(start.0));
        }
        Err(e) => {
            everything
                .get_or_insert(format!("the segment being written, {}, cannot be read: {e:#}", live_path.display()));
        }
    }
    let merged = BlockRefs::merge(parts.values()).forget_unknown_from(start.0);
    let mut ch = Changes::from_refs(merged, base_ref, block_size, relseg_blocks);
    if let Some(why) = everything {
        ch.everything = Some(why);
    }
    for (rels, why) in notes {
        for r in rels {
            ch.relations.entry(r).or_insert_with(|| why.clone());
        }
    }
    Ok(ch)
}

/// The block references of an archived segment, read from the segment itself.
async fn reread(repo: &Repository, seg: Segment, seg_size: u64) -> anyhow::Result<BlockRefs> {
    let key = repo.wal_key(&WalFile::Segment(seg), seg_size);
    let Some(bytes) = repo.get_opened(&key).await? else { anyhow::bail!("{key} is not in the archive") };
    let start = seg.start_lsn(seg_size).0;
    let s = tokio::task::spawn_blocking(move || summarize_segment_at(&bytes, seg_size, start)).await??;
    Ok(s.block_refs)
}

/// Every relation a summary names (blocks, creates, truncates, drops).
fn relations_of(refs: &BlockRefs) -> Vec<crate::wal::record::RelFileLocator> {
    let mut out: Vec<_> = refs.blocks().keys().map(|f| f.rel).collect();
    for (_, c) in refs.changes() {
        match c {
            RelChange::Created { rel, .. } | RelChange::Truncated { rel, .. } | RelChange::Dropped { rel } => {
                out.push(*rel)
            }
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The backups the base choice looks at: every listed one, whole only for the chosen base.
pub async fn base_for(
    repo: &Repository,
    level: Level,
    cfg: &Config,
    system_identifier: &str,
    timeline: u32,
    pg_version: u32,
) -> anyhow::Result<Result<Manifest, String>> {
    let records = backup::list_records(repo).await?;
    let chosen = choose_base(&records, level, cfg, Utc::now(), system_identifier, timeline, pg_version);
    Ok(match chosen {
        Ok(rec) => match backup::load(repo, &rec.id).await? {
            Some(m) if m.state == BackupState::Completed => Ok(m),
            _ => Err(format!("backup {} went away while it was chosen", rec.id)),
        },
        Err(why) => Err(why),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::backup::tests::old_manifest;
    use crate::catalog::backup::IncrementalInfo;

    fn at(t: &str) -> DateTime<Utc> {
        backup::time_format::parse(t).unwrap()
    }

    fn done(id: &str, start: &str, lsn: u64, kept: Option<u64>) -> Manifest {
        let mut m = old_manifest("automatic", "completed", start);
        m.id = id.into();
        m.start_lsn = Lsn(lsn);
        m.stop_lsn = Some(Lsn(lsn + 0x100));
        m.incremental = kept.map(|k| IncrementalInfo { base: "x".into(), bytes_kept: k, ..Default::default() });
        m
    }

    fn cfg(incremental: bool, days: u32) -> Config {
        let mut c = Config::default();
        c.backup.incremental = incremental;
        c.backup.full_every_days = days;
        c
    }

    #[test]
    fn the_base_is_the_newest_completed_backup_of_the_same_server_timeline_and_major() {
        let now = at("2026-12-05T03:00:00Z");
        let mut failed = done("F", "2026-12-04T03:00:00Z", 0x9000000, None);
        failed.state = BackupState::Failed;
        let backups = vec![
            done("A", "2026-12-01T03:00:00Z", 0x1000000, None),
            done("B", "2026-12-02T03:00:00Z", 0x2000000, Some(10)),
            failed,
        ];
        let on = cfg(true, 7);
        let pick =
            |level, c: &Config, bs: &[Manifest]| choose_base(bs, level, c, now, "1", 1, 150004).map(|m| m.id.clone());
        assert_eq!(pick(Level::Incremental, &on, &backups), Ok("B".into()), "failed ones are never a base");
        assert_eq!(pick(Level::Configured, &on, &backups), Ok("B".into()));
        assert!(pick(Level::Full, &on, &backups).is_err());
        assert_eq!(pick(Level::Configured, &cfg(false, 7), &backups), Err("backup.incremental is off".into()));
        assert_eq!(pick(Level::Incremental, &cfg(false, 7), &backups), Ok("B".into()), "asked for by hand");
        // The newest full (A) is four days old: with a full every three days, a full one.
        let e = pick(Level::Configured, &cfg(true, 3), &backups).unwrap_err();
        assert!(e.contains("4 days old"), "{e}");
        assert_eq!(
            pick(Level::Incremental, &cfg(true, 3), &backups),
            Ok("B".into()),
            "by hand it is still incremental"
        );
        // An incremental that kept nothing counts as full.
        let mut all_new = backups.clone();
        all_new[1].incremental.as_mut().unwrap().bytes_kept = 0;
        all_new[1].start_time = at("2026-12-04T03:00:00Z");
        assert_eq!(pick(Level::Configured, &cfg(true, 3), &all_new), Ok("B".into()));

        let e = choose_base(&backups, Level::Incremental, &on, now, "2", 1, 150004).unwrap_err();
        assert!(e.contains("no completed files backup"), "another server's backups: {e}");
        let e = choose_base(&backups, Level::Incremental, &on, now, "1", 2, 150004).unwrap_err();
        assert!(e.contains("timeline 1, the server on 2"), "{e}");
        let e = choose_base(&backups, Level::Incremental, &on, now, "1", 1, 160001).unwrap_err();
        assert!(e.contains("PostgreSQL 15"), "{e}");
        assert!(pick(Level::Incremental, &on, &[]).unwrap_err().contains("no completed files backup"));
        let mut ebs = on.clone();
        ebs.backup.provider = ProviderKind::Ebs;
        assert!(pick(Level::Incremental, &ebs, &backups).unwrap_err().contains("ebs"));
    }
}
