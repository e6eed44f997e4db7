//! `window` on a terminal (a real tmux pane): a gap planted in the archive between two
//! backups shows in the bar as a gap between two restorable spans; off a terminal the
//! output has no bar.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{self, stderr, stdout, Pg, Tidemark};

#[test]
fn a_gap_in_the_archive_shows_in_the_terminal_bar() {
    let repo_dir = harness::postgres_dir("repo");
    let mut pg = Pg::init();
    let tm = Tidemark::for_pg("bars", &Tidemark::fs_url(repo_dir.path()), None, &pg);
    pg.archive_to(&tm.config);
    pg.start();
    pg.sql("create table t(id int)");
    let backup = || {
        let o = tm.cmd_as_postgres(&["backup", "create", "--wait"]).output().unwrap();
        assert!(o.status.success(), "backup: {}", stderr(&o));
    };
    let commit_and_switch = |n: i32| {
        pg.sql(&format!("insert into t values ({n})"));
        pg.sql("select pg_sleep(0.3)");
        pg.switch_wal_archived(Duration::from_secs(60));
    };
    backup();
    for i in 0..3 {
        commit_and_switch(i);
    }
    // The gap: a segment of commits after the first backup, gone with its summary.
    let lost = pg.sql("select pg_walfile_name(pg_current_wal_lsn())");
    commit_and_switch(10);
    commit_and_switch(11);
    for key in [format!("clusters/bars/wal/00000001/{lost}"), format!("clusters/bars/wal-index/00000001/{lost}")] {
        let path = repo_dir.path().join(&key);
        assert!(path.is_file(), "{key} is not in the repository");
        std::fs::remove_file(&path).unwrap();
    }
    backup();
    for i in 20..23 {
        commit_and_switch(i);
    }

    // Off a terminal: the window line only.
    let o = tm.cmd(&["window"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains('█'), "{}", stdout(&o));

    // In a tmux pane 120 columns wide.
    let sock = format!("tidemark-{}", std::process::id());
    let tmux = |args: &[&str]| Command::new("tmux").arg("-L").arg(&sock).args(args).output().unwrap();
    let cmd = format!("{} --config {} window; sleep 120", harness::bin().display(), tm.config.display());
    let o = tmux(&["new-session", "-d", "-s", "w", "-x", "120", "-y", "20", &cmd]);
    assert!(o.status.success(), "tmux: {}", stderr(&o));
    let began = Instant::now();
    let screen = loop {
        let o = tmux(&["capture-pane", "-p", "-t", "w"]);
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        if text.contains("retention horizon") || began.elapsed() > Duration::from_secs(30) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // status draws the same bars under its report.
    let cmd = format!("{} --config {} status; sleep 120", harness::bin().display(), tm.config.display());
    let o = tmux(&["new-session", "-d", "-s", "s", "-x", "120", "-y", "40", &cmd]);
    assert!(o.status.success(), "tmux: {}", stderr(&o));
    let began = Instant::now();
    let status_screen = loop {
        let o = tmux(&["capture-pane", "-p", "-t", "s"]);
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        if text.contains("timeline 1:") && text.contains('█') || began.elapsed() > Duration::from_secs(30) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = tmux(&["kill-server"]);
    let status_bar = status_screen
        .lines()
        .skip_while(|l| !l.starts_with("timeline 1:"))
        .find(|l| l.contains('█'))
        .unwrap_or_else(|| panic!("no bar in status on the terminal:\n{status_screen}"));
    assert!(status_bar.contains('░'), "the gap is missing from status's bar:\n{status_screen}");
    let bar = screen.lines().find(|l| l.contains('█')).unwrap_or_else(|| panic!("no bar on the terminal:\n{screen}"));
    // Restorable, then the gap, then restorable again (from the second backup).
    let shape: String = bar.trim().chars().fold(String::new(), |mut s, c| {
        if !s.ends_with(c) {
            s.push(c);
        }
        s
    });
    assert!(shape.starts_with("█░█"), "{shape}\n{screen}");
    let marks = screen.lines().skip_while(|l| !l.contains('█')).nth(1).unwrap_or_default();
    assert_eq!(marks.matches('^').count(), 2, "a tick per backup:\n{screen}");
    drop(pg);
}
