//! Executing a restore into a new, empty directory: parallel bundle download with every
//! part's checksum verified, then the recovery configuration. The source cluster is never
//! touched. Until everything is verified the directory has no `global/pg_control` and
//! carries a `TIDEMARK_RESTORE_INCOMPLETE` marker, so it cannot be started by mistake.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::catalog::backup::Manifest;
use crate::catalog::restore_plan::{rfc3339, Target};
use crate::pg::ctl;
use crate::wal::name::Lsn;

/// Marker left in a directory whose restore did not finish.
pub const INCOMPLETE_MARKER: &str = "TIDEMARK_RESTORE_INCOMPLETE";
/// Marker naming the cluster a restored directory came from (wal-push checks it).
pub const RESTORED_MARKER: &str = "tidemark.restored";
const PG_CONTROL: &str = "global/pg_control";
const PG_CONTROL_PENDING: &str = "global/pg_control.tidemark-restoring";

/// What a restored directory was restored from.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RestoredFrom {
    /// Source cluster handle.
    pub cluster: String,
    /// Backup id.
    pub backup: String,
    /// Recovery target.
    pub target: String,
    /// When the restore ran.
    pub restored_at: String,
}

/// How to write the recovery configuration.
#[derive(Debug, Clone)]
pub struct RecoverySettings {
    /// restore_command value.
    pub restore_command: String,
    /// Port for the new cluster.
    pub port: Option<u16>,
    /// `recovery_target_timeline`: the lineage the plan chose (instead of `latest`, which a
    /// stray history file in the archive could lead astray).
    pub timeline: Option<u32>,
    /// More settings for the restored cluster (a drill's private socket directory).
    pub extra: Vec<(String, String)>,
}

/// Checks DIR is absent or empty.
pub fn check_target_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut it) => {
            if it.next().is_some() {
                bail!(
                    "{} is not empty: restore always creates a new cluster; choose an empty or absent directory",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("checking {}", dir.display())),
    }
}

/// `p` with symlinks resolved as far as it exists, the rest appended as spelled (`..` and
/// `.` in the missing part are refused by the callers' emptiness check anyway).
fn resolve_lenient(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
    let mut existing = abs.as_path();
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return abs,
        }
    }
}

/// The source cluster's directories a restore must never write into: its data directory,
/// a symlinked pg_wal, and every tablespace it links (resolved; absent on another host).
pub fn source_dirs(data_dir: &Path) -> Vec<PathBuf> {
    let Ok(root) = data_dir.canonicalize() else { return Vec::new() };
    let mut out = vec![root.clone()];
    if let Ok(w) = root.join("pg_wal").canonicalize() {
        out.push(w);
    }
    if let Ok(entries) = std::fs::read_dir(root.join("pg_tblspc")) {
        for e in entries.flatten() {
            if let Ok(t) = e.path().canonicalize() {
                out.push(t);
            }
        }
    }
    out
}

/// Refuses a target (or the tablespace directory beside it) inside, or holding, one of the
/// source cluster's directories, however the path is spelled.
pub fn check_not_in_source(target: &Path, source: &[PathBuf]) -> anyhow::Result<()> {
    let t = resolve_lenient(target);
    let ts = resolve_lenient(&tablespace_dir(target, 0).with_file_name(""));
    for s in source {
        for (what, p) in [("the target directory", &t), ("its tablespace directory", &ts)] {
            if p.starts_with(s) || s.starts_with(p) {
                bail!(
                    "{what} {} is inside (or holds) the source cluster's {}: a restore always creates a separate cluster and never writes into the source; choose a directory outside it",
                    p.display(),
                    s.display()
                );
            }
        }
    }
    Ok(())
}

/// Where tablespace `oid` goes: beside the target directory, never at the source's location.
pub fn tablespace_dir(target: &Path, oid: u32) -> PathBuf {
    let mut name = target.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tablespaces");
    target.with_file_name(name).join(oid.to_string())
}

/// Where a files backup's paths go in a new data directory: tablespaces beside it, and
/// pg_control under a pending name until everything else is in place.
struct TargetLayout<'a>(&'a Path);

impl crate::snapshot::files::restore::Layout for TargetLayout<'_> {
    fn path(&self, rel: &str) -> PathBuf {
        dest_path(self.0, rel)
    }
    fn link(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
    fn link_target(&self, rel: &str, recorded: Option<&str>) -> PathBuf {
        match rel.strip_prefix("pg_tblspc/").and_then(|o| o.parse::<u32>().ok()) {
            Some(oid) => tablespace_dir(self.0, oid),
            None => PathBuf::from(recorded.unwrap_or_default()),
        }
    }
}

/// Maps a manifest path to its place on disk.
fn dest_path(target: &Path, rel: &str) -> PathBuf {
    if rel == PG_CONTROL {
        return target.join(PG_CONTROL_PENDING);
    }
    if let Some(rest) = rel.strip_prefix("pg_tblspc/") {
        let (oid, tail) = rest.split_once('/').unwrap_or((rest, ""));
        if let Ok(oid) = oid.parse::<u32>() {
            if !tail.is_empty() {
                return tablespace_dir(target, oid).join(tail);
            }
        }
    }
    target.join(rel)
}

/// Rewrites tablespace_map lines to the new tablespace locations.
pub fn remap_tablespace_map(map: &str, target: &Path) -> String {
    let mut out = String::new();
    for line in map.lines() {
        match line.split_once(' ').and_then(|(oid, _)| oid.parse::<u32>().ok()) {
            Some(oid) => out.push_str(&format!("{oid} {}\n", tablespace_dir(target, oid).display())),
            None if line.is_empty() => {}
            None => out.push_str(&format!("{line}\n")),
        }
    }
    out
}

/// The recovery settings appended to postgresql.auto.conf.
pub fn recovery_conf(m: &Manifest, target: Target, s: &RecoverySettings) -> String {
    let mut c = format!(
        "\n# Added by tidemark restore of backup {} (cluster {}) at {}\nrestore_command = '{}'\nrecovery_target_action = 'promote'\narchive_mode = 'off'\n",
        m.id,
        m.cluster,
        rfc3339(chrono::Utc::now()),
        s.restore_command.replace('\'', "''")
    );
    match target {
        Target::Latest => {}
        // PostgreSQL's timestamptz input wants a space and a numeric zone, not RFC 3339's T/Z.
        Target::Time(t) => c.push_str(&format!("recovery_target_time = '{}'\n", t.format("%Y-%m-%d %H:%M:%S%.6f+00"))),
        Target::Lsn(l) => c.push_str(&format!("recovery_target_lsn = '{l}'\n")),
        Target::BeforeXid { xid, .. } => {
            c.push_str(&format!("recovery_target_xid = '{xid}'\nrecovery_target_inclusive = off\n"))
        }
    }
    if let Some(t) = s.timeline {
        c.push_str(&format!("recovery_target_timeline = '{t}'\n"));
    }
    if let Some(p) = s.port {
        c.push_str(&format!("port = {p}\n"));
    }
    for (k, v) in &s.extra {
        c.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
    }
    c
}

/// One restore: what to write where, and how.
#[derive(Clone, Copy)]
pub struct Job<'a> {
    /// The backup.
    pub manifest: &'a Manifest,
    /// New data directory.
    pub target_dir: &'a Path,
    /// Recovery target.
    pub target: Target,
    /// restore_command and port.
    pub settings: &'a RecoverySettings,
    /// Parallel bundle downloads.
    pub workers: usize,
    /// Owner of the new files (when running as root).
    pub owner: Option<(u32, u32)>,
    /// The backup's provider, which brings its files back.
    pub provider: &'a dyn crate::snapshot::Provider,
}

/// Writes the backup's files into `target` and the recovery configuration. On failure the
/// directory keeps its incomplete marker and has no pg_control.
pub async fn execute(job: &Job<'_>) -> anyhow::Result<()> {
    let (m, target_dir) = (job.manifest, job.target_dir);
    check_target_dir(target_dir)?;
    for ts in &m.tablespaces {
        check_target_dir(&tablespace_dir(target_dir, ts.oid))?;
    }
    std::fs::create_dir_all(target_dir).with_context(|| format!("creating {}", target_dir.display()))?;
    std::fs::set_permissions(target_dir, std::fs::Permissions::from_mode(0o700))?;
    Incomplete::begin(target_dir, &m.id)?.finish(write_all(job).await)
}

/// The incomplete marker of a directory being restored: written first, removed when the
/// restore's steps succeed, rewritten to say FAILED and why when one fails. One left
/// behind without either (a panic, a cancelled task) says the restore stopped part way.
pub struct Incomplete {
    path: PathBuf,
    backup: String,
    settled: bool,
}

impl Incomplete {
    /// Marks `dir` as a restore of `backup` in progress.
    pub fn begin(dir: &Path, backup: &str) -> std::io::Result<Incomplete> {
        let path = dir.join(INCOMPLETE_MARKER);
        std::fs::write(
            &path,
            format!("restore of backup {backup} in progress; this directory is not a usable cluster\n"),
        )?;
        Ok(Incomplete { path, backup: backup.to_string(), settled: false })
    }

    /// Removes the marker when `res` is a success, else says in it why the restore failed;
    /// returns `res`.
    pub fn finish<T>(mut self, res: anyhow::Result<T>) -> anyhow::Result<T> {
        self.settled = true;
        match res {
            Ok(v) => {
                std::fs::remove_file(&self.path)
                    .with_context(|| format!("removing the incomplete marker {}", self.path.display()))?;
                Ok(v)
            }
            Err(e) => {
                write_marker(&self.path, &format!("restore of backup {} FAILED: {e:#}", self.backup));
                Err(e)
            }
        }
    }
}

impl Drop for Incomplete {
    fn drop(&mut self) {
        if !self.settled {
            write_marker(&self.path, &format!("restore of backup {} stopped before it finished", self.backup));
        }
    }
}

/// Writes the incomplete marker at `path` saying `why` (best effort: the caller is failing
/// with the same message already).
fn write_marker(path: &Path, why: &str) {
    let text = format!("{why}\nthis directory is not a usable cluster; remove it and restore again\n");
    if let Err(e) = std::fs::write(path, text) {
        tracing::warn!(marker = %path.display(), error = %e, "cannot mark the restored directory incomplete");
    }
}

async fn write_all(job: &Job<'_>) -> anyhow::Result<()> {
    let Job { manifest: m, target_dir, target, settings, workers, owner, provider } = *job;
    let layout = TargetLayout(target_dir);
    let into = crate::snapshot::RestoreInto { target_dir, workers, layout: Some(&layout), volumes: None };
    provider.restore_into(m.backup_ref(), &m.captured(), &into).await?;
    // Recovery configuration, then pg_control last: only now can the directory start.
    let map = (!m.tablespace_map.trim().is_empty()).then(|| remap_tablespace_map(&m.tablespace_map, target_dir));
    write_recovery(target_dir, m, target, settings, map.as_deref())?;
    let pending = target_dir.join(PG_CONTROL_PENDING);
    if !pending.is_file() {
        bail!("the backup has no {PG_CONTROL}; it cannot be started");
    }
    std::fs::File::open(&pending)?.sync_all()?;
    std::fs::rename(&pending, target_dir.join(PG_CONTROL))?;
    std::fs::File::open(target_dir.join("global"))?.sync_all()?;
    ctl::chown_tree(target_dir, owner)?;
    for ts in &m.tablespaces {
        ctl::chown_tree(&tablespace_dir(target_dir, ts.oid), owner)?;
    }
    Ok(())
}

/// Writes backup_label, tablespace_map (already pointing at the new locations),
/// recovery.signal, the recovery settings and the restored-from marker into `dir`.
pub fn write_recovery(
    dir: &Path,
    m: &Manifest,
    target: Target,
    settings: &RecoverySettings,
    tablespace_map: Option<&str>,
) -> anyhow::Result<()> {
    let write = |rel: &str, text: &str| -> anyhow::Result<()> {
        let p = dir.join(rel);
        let mut f = std::fs::File::create(&p).with_context(|| format!("writing {}", p.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
        Ok(())
    };
    write("backup_label", &m.backup_label)?;
    if let Some(map) = tablespace_map {
        write("tablespace_map", map)?;
    }
    write("recovery.signal", "")?;
    let auto = dir.join("postgresql.auto.conf");
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(&auto)?;
    f.write_all(recovery_conf(m, target, settings).as_bytes())?;
    f.sync_all()?;
    let from = RestoredFrom {
        cluster: m.cluster.clone(),
        backup: m.id.clone(),
        target: target.to_string(),
        restored_at: rfc3339(chrono::Utc::now()),
    };
    write(RESTORED_MARKER, &serde_json::to_string_pretty(&from)?)
}

/// Turns a mounted snapshot's data directory into a restore: stale server files and WAL
/// out, pg_wal and tablespaces pointed at their new mounts, then the recovery files.
/// Returns the data directory.
pub fn prepare_snapshot_dir(
    m: &Manifest,
    refs: &crate::catalog::backup::EbsRefs,
    mounted: &[crate::snapshot::ebs::restore::Remounted],
    target: Target,
    settings: &RecoverySettings,
) -> anyhow::Result<PathBuf> {
    use crate::snapshot::ebs::restore::relocate;
    let dir =
        relocate(mounted, refs, "data_dir").ok_or_else(|| anyhow::anyhow!("backup {} has no data_dir mount", m.id))?;
    if !dir.join("PG_VERSION").is_file() {
        bail!(
            "{} has no PG_VERSION: the snapshot does not hold the data directory recorded in backup {}",
            dir.display(),
            m.id
        );
    }
    let marker = Incomplete::begin(&dir, &m.id)?;
    let res = snapshot_fix_up(&dir, m, refs, mounted, target, settings);
    marker.finish(res)?;
    Ok(dir)
}

/// `prepare_snapshot_dir`'s steps once its marker is written.
fn snapshot_fix_up(
    dir: &Path,
    m: &Manifest,
    refs: &crate::catalog::backup::EbsRefs,
    mounted: &[crate::snapshot::ebs::restore::Remounted],
    target: Target,
    settings: &RecoverySettings,
) -> anyhow::Result<()> {
    use crate::snapshot::ebs::restore::relocate;
    for f in [
        "postmaster.pid",
        "postmaster.opts",
        "backup_label",
        "tablespace_map",
        "recovery.signal",
        "standby.signal",
        RESTORED_MARKER,
    ] {
        match std::fs::remove_file(dir.join(f)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    if let Some(wal) = relocate(mounted, refs, "pg_wal") {
        let link = dir.join("pg_wal");
        std::fs::remove_file(&link).with_context(|| format!("replacing the pg_wal link {}", link.display()))?;
        std::os::unix::fs::symlink(&wal, &link)?;
    }
    // WAL in the snapshot is replaced by the archive's; slots would pin WAL on the new cluster.
    for sub in ["pg_wal", "pg_wal/archive_status", "pg_replslot"] {
        let d = dir.join(sub);
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let ft = e.file_type()?;
            if ft.is_file() {
                std::fs::remove_file(&p)?;
            } else if ft.is_dir() && sub == "pg_replslot" {
                std::fs::remove_dir_all(&p)?;
            }
        }
    }
    let mut map = String::new();
    for ts in &m.tablespaces {
        let at = relocate(mounted, refs, &format!("tablespace:{}", ts.oid))
            .ok_or_else(|| anyhow::anyhow!("backup {} has no mount for tablespace {}", m.id, ts.oid))?;
        map.push_str(&format!("{} {}\n", ts.oid, at.display()));
    }
    let map = (!m.tablespaces.is_empty()).then_some(map);
    write_recovery(dir, m, target, settings, map.as_deref())?;
    // The snapshot keeps the database owner's files; what this (root) process wrote must
    // belong to the same owner or PostgreSQL cannot read it.
    let meta = std::fs::metadata(dir)?;
    let (uid, gid) = (std::os::unix::fs::MetadataExt::uid(&meta), std::os::unix::fs::MetadataExt::gid(&meta));
    for f in ["backup_label", "tablespace_map", "recovery.signal", "postgresql.auto.conf", RESTORED_MARKER, "pg_wal"] {
        let p = dir.join(f);
        if p.symlink_metadata().is_ok() {
            std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).with_context(|| format!("chown {}", p.display()))?;
        }
    }
    Ok(())
}

/// What recovery reached, read from the server log.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Reached {
    /// "recovery stopping ..." line.
    pub stopped: Option<String>,
    /// "last completed transaction was at log time ..." value.
    pub last_transaction: Option<String>,
    /// New timeline after promotion.
    pub timeline: Option<u32>,
    /// Start of the last record replayed ("redo done at").
    pub redo_done: Option<Lsn>,
}

/// Segments the server says it restored from the archive so far (pure).
fn segments_restored(log: &str) -> u64 {
    log.lines().filter(|l| l.contains("restored log file \"") && !l.contains(".history\"")).count() as u64
}

fn parse_reached(log: &str) -> Reached {
    let mut r = Reached::default();
    for line in log.lines() {
        if let Some(i) = line.find("recovery stopping") {
            r.stopped = Some(line[i..].to_string());
        }
        if let Some(i) = line.find("last completed transaction was at log time ") {
            r.last_transaction =
                Some(line[i + "last completed transaction was at log time ".len()..].trim().to_string());
        }
        if let Some(i) = line.find("redo done at ") {
            let rest = &line[i + "redo done at ".len()..];
            r.redo_done = rest.split_whitespace().next().and_then(|l| l.parse().ok());
        }
        if let Some(i) = line.find("selected new timeline ID: ") {
            let rest = &line[i + "selected new timeline ID: ".len()..];
            r.timeline = rest.split(|c: char| !c.is_ascii_digit()).next().and_then(|d| d.parse().ok());
        }
    }
    r
}

/// Stops a restored cluster (fast shutdown) and waits for it.
pub fn stop(bin_dir: &Path, target_dir: &Path, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
    let mut c = ctl::command(bin_dir.join("pg_ctl"), owner);
    c.arg("-D").arg(target_dir).args(["-m", "fast", "-w", "stop"]).current_dir(target_dir);
    let out = c.output().context("running pg_ctl stop")?;
    if !out.status.success() {
        bail!("pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Marks a restored directory as not a usable cluster, saying why (best effort: the
/// caller is already failing with the same message).
pub fn mark_incomplete(dir: &Path, why: &str) {
    write_marker(&dir.join(INCOMPLETE_MARKER), why);
}

/// Starts the restored cluster and waits until it has promoted; reports the point reached.
/// `segments` is how many WAL segments the plan has recovery read (0: not known), for the
/// progress's percent and time left.
pub fn start_and_wait(
    bin_dir: &Path,
    target_dir: &Path,
    owner: Option<(u32, u32)>,
    limit: Duration,
    segments: u64,
) -> anyhow::Result<Reached> {
    // A server of another major refuses the directory only in its log; say what to do here.
    let pg_version = std::fs::read_to_string(target_dir.join("PG_VERSION")).unwrap_or_default();
    if let Some(data_major) = ctl::major_of_pg_version_file(&pg_version) {
        let bin_major = ctl::server_major(bin_dir)?;
        if bin_major != data_major {
            bail!(
                "the restored cluster is PostgreSQL {data_major}, but postgres.bin_dir ({}) holds PostgreSQL {bin_major}: set postgres.bin_dir to PostgreSQL {data_major}'s binaries (the restored directory is complete; start it with PostgreSQL {data_major}'s pg_ctl, or restore again)",
                bin_dir.display()
            );
        }
    }
    let log = target_dir.join("tidemark-restore.log");
    let mut c = ctl::command(bin_dir.join("pg_ctl"), owner);
    c.arg("-D").arg(target_dir).arg("-l").arg(&log).args(["-W", "start"]).current_dir(target_dir);
    let out = c.output().context("running pg_ctl start")?;
    if !out.status.success() {
        bail!("pg_ctl start failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let began = Instant::now();
    // Replay can take hours: its progress is the segments the server restored so far.
    let pb = crate::snapshot::progress::count_bar(segments, "WAL replay", "segments");
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        pb.set_position(segments_restored(&text));
        if text.contains("database system is ready to accept connections") {
            pb.finish_and_clear();
            tracing::info!(
                segments = segments_restored(&text),
                seconds = began.elapsed().as_secs(),
                "WAL replay done, promoted"
            );
            return Ok(parse_reached(&text));
        }
        if text.contains("FATAL:") || text.contains("PANIC:") {
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("recovery failed; server log {}:\n{}", log.display(), tail.join("\n"));
        }
        if began.elapsed() > limit {
            bail!("recovery did not finish within {limit:?}; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_incomplete_marker_goes_only_when_the_restore_succeeded() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join(INCOMPLETE_MARKER);
        let read = || std::fs::read_to_string(&marker).unwrap();

        let m = Incomplete::begin(dir.path(), "B1").unwrap();
        assert!(read().contains("restore of backup B1 in progress"));
        assert_eq!(m.finish(Ok(7)).unwrap(), 7);
        assert!(!marker.exists());

        let m = Incomplete::begin(dir.path(), "B2").unwrap();
        let e = m.finish::<()>(Err(anyhow::anyhow!("the disk filled up"))).unwrap_err();
        assert_eq!(e.to_string(), "the disk filled up");
        assert!(read().contains("restore of backup B2 FAILED: the disk filled up"), "{}", read());
        assert!(read().contains("not a usable cluster"));

        // A step that returned early (a `?`, a panic) without settling it.
        drop(Incomplete::begin(dir.path(), "B3").unwrap());
        assert!(read().contains("restore of backup B3 stopped before it finished"), "{}", read());
    }

    #[test]
    fn tablespaces_go_beside_the_target() {
        let t = Path::new("/srv/restore/new");
        assert_eq!(tablespace_dir(t, 16384), PathBuf::from("/srv/restore/new.tablespaces/16384"));
        assert_eq!(
            dest_path(t, "pg_tblspc/16384/PG_15_1/5/1"),
            PathBuf::from("/srv/restore/new.tablespaces/16384/PG_15_1/5/1")
        );
        assert_eq!(dest_path(t, "base/1/1"), PathBuf::from("/srv/restore/new/base/1/1"));
        assert_eq!(
            dest_path(t, "global/pg_control"),
            PathBuf::from("/srv/restore/new/global/pg_control.tidemark-restoring")
        );
        assert_eq!(remap_tablespace_map("16384 /old/ts\n", t), "16384 /srv/restore/new.tablespaces/16384\n");
    }

    #[test]
    fn targets_inside_the_source_are_refused_however_spelled() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        let ts = d.path().join("ts1");
        std::fs::create_dir_all(data.join("pg_tblspc")).unwrap();
        std::fs::create_dir_all(&ts).unwrap();
        std::os::unix::fs::symlink(&ts, data.join("pg_tblspc/16384")).unwrap();
        std::os::unix::fs::symlink(&data, d.path().join("alias")).unwrap();
        let src = source_dirs(&data);
        assert_eq!(src.len(), 2, "the data directory and its tablespace: {src:?}");
        for bad in [
            data.join("x"),
            data.join("new/deeper"),
            d.path().join("alias/x"),
            data.join("../data/x"),
            ts.join("x"),
            data.join("pg_tblspc/16384/x"),
            d.path().to_path_buf(),
        ] {
            assert!(check_not_in_source(&bad, &src).is_err(), "{} accepted", bad.display());
        }
        assert!(check_not_in_source(&d.path().join("restored"), &src).is_ok());
        assert!(check_not_in_source(&d.path().join("data2"), &src).is_ok(), "a name sharing a prefix is not inside");
        assert!(source_dirs(&d.path().join("elsewhere")).is_empty(), "no source on this host: nothing to guard");
    }

    #[test]
    fn counts_the_segments_restored() {
        let log = "LOG:  restored log file \"00000002.history\" from archive\nLOG:  restored log file \"000000010000000000000003\" from archive\nLOG:  redo starts at 0/3000028\nLOG:  restored log file \"000000010000000000000004\" from archive\n";
        assert_eq!(segments_restored(log), 2);
        assert_eq!(segments_restored(""), 0);
    }

    #[test]
    fn reads_the_point_reached_from_the_log() {
        let log = "LOG:  recovery stopping before commit of transaction 750, time 2026-11-26 06:00:01.5+00\nLOG:  redo done at 0/6024410 system usage: CPU: user: 0.00 s, system: 0.00 s, elapsed: 0.01 s\nLOG:  last completed transaction was at log time 2026-11-26 06:00:00.25+00\nLOG:  selected new timeline ID: 2\n";
        let r = parse_reached(log);
        assert_eq!(r.timeline, Some(2));
        assert_eq!(r.redo_done, Some(Lsn(0x6024410)));
        // PostgreSQL 13 ends the line at the LSN.
        assert_eq!(parse_reached("LOG:  redo done at 1/A0\n").redo_done, Some(Lsn(0x1_0000_00A0)));
        assert_eq!(r.last_transaction.as_deref(), Some("2026-11-26 06:00:00.25+00"));
        assert!(r.stopped.unwrap().starts_with("recovery stopping before commit"));
    }

    #[test]
    fn non_empty_target_is_refused() {
        let d = tempfile::tempdir().unwrap();
        assert!(check_target_dir(&d.path().join("absent")).is_ok());
        assert!(check_target_dir(d.path()).is_ok());
        std::fs::write(d.path().join("x"), b"").unwrap();
        assert!(check_target_dir(d.path()).unwrap_err().to_string().contains("not empty"));
    }
}
