//! Watching `pg_wal/archive_status` for `.ready` files (notify), with a listing fallback.

use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Names of WAL files PostgreSQL has marked ready to archive, oldest first.
///
/// History files sort before segments so a new timeline's history is archived first,
/// as PostgreSQL's archiver does.
pub fn ready_files(archive_status: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(archive_status)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(wal) = name.strip_suffix(".ready") {
            out.push(wal.to_string());
        }
    }
    out.sort_by(|a, b| archive_order(a).cmp(&archive_order(b)));
    Ok(out)
}

/// The order PostgreSQL archives files in: history files first, then by name.
pub fn archive_order(name: &str) -> (bool, &str) {
    (!name.ends_with(".history"), name)
}

/// A running watch: wakes the receiver whenever `archive_status` changes.
pub struct ReadyWatch {
    _watcher: notify::RecommendedWatcher,
    /// Receives one message per change burst.
    pub changes: mpsc::Receiver<()>,
    /// The watched directory.
    pub dir: PathBuf,
}

/// Starts watching `<data_dir>/pg_wal/archive_status`.
pub fn watch(data_dir: &Path) -> notify::Result<ReadyWatch> {
    let dir = data_dir.join("pg_wal").join("archive_status");
    let (tx, rx) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Opening and reading the directory are events too, and every scan reads it: waking
        // on those would rescan in a loop.
        if res.is_ok_and(|ev| !matches!(ev.kind, notify::EventKind::Access(_))) {
            // A full channel already holds a wake-up; the scan that follows sees every file.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(ReadyWatch { _watcher: watcher, changes: rx, dir })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_ready_files_history_first() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "000000020000000000000005.ready",
            "000000010000000000000004.done",
            "00000002.history.ready",
            "000000010000000000000004.partial.ready",
        ] {
            std::fs::write(d.path().join(n), b"").unwrap();
        }
        assert_eq!(
            ready_files(d.path()).unwrap(),
            ["00000002.history", "000000010000000000000004.partial", "000000020000000000000005"]
        );
    }

    #[tokio::test]
    async fn watch_wakes_on_new_ready_file() {
        let d = tempfile::tempdir().unwrap();
        let st = d.path().join("pg_wal/archive_status");
        std::fs::create_dir_all(&st).unwrap();
        let mut w = watch(d.path()).unwrap();
        std::fs::write(st.join("000000010000000000000001.ready"), b"").unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), w.changes.recv()).await.unwrap().unwrap();
        // Drain the burst, then list the directory as a scan does: that alone wakes nothing.
        let quiet = std::time::Duration::from_millis(300);
        while tokio::time::timeout(quiet, w.changes.recv()).await.is_ok() {}
        assert_eq!(ready_files(&st).unwrap().len(), 1);
        assert!(tokio::time::timeout(quiet, w.changes.recv()).await.is_err(), "listing the directory woke the scan");
        std::fs::rename(st.join("000000010000000000000001.ready"), st.join("000000010000000000000001.done")).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), w.changes.recv()).await.unwrap().unwrap();
    }
}
