//! Filesystem freeze around the snapshot call.
//!
//! The freeze is held by a small guard process (`tidemark freeze-guard`), not by the agent
//! itself: a frozen filesystem blocks every writer, PostgreSQL included, so the thaw must
//! not depend on the agent surviving. The guard thaws when told to, when its stdin closes
//! (the agent died, even by `kill -9`), or when its own watchdog expires, whichever is first.
//! It ignores SIGINT/SIGTERM/SIGHUP so a Ctrl-C to the terminal's process group reaches it
//! only through the agent's death, that is as EOF.

use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// `_IOWR('X', 119, int)`: freeze a filesystem (linux/fs.h).
const FIFREEZE: libc::c_ulong = 0xC004_5877;
/// `_IOWR('X', 120, int)`: thaw it.
const FITHAW: libc::c_ulong = 0xC004_5878;

fn ioctl_dir(dir: &Path, request: libc::c_ulong) -> std::io::Result<std::fs::File> {
    let f = std::fs::File::open(dir)?;
    // SAFETY: FIFREEZE/FITHAW take an int argument that the kernel ignores; fd is valid.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), request as _, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

/// Freezes one mount (FIFREEZE).
pub fn freeze_mount(dir: &Path) -> std::io::Result<()> {
    ioctl_dir(dir, FIFREEZE).map(drop)
}

/// Thaws one mount (FITHAW); a mount that is not frozen is not an error.
pub fn thaw_mount(dir: &Path) -> std::io::Result<()> {
    match ioctl_dir(dir, FITHAW) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        other => other.map(drop),
    }
}

fn thaw_all(mounts: &[PathBuf]) -> Vec<String> {
    mounts.iter().filter_map(|m| thaw_mount(m).err().map(|e| format!("{}: {e}", m.display()))).collect()
}

/// The guard process: freeze `mounts`, report `frozen`, then thaw on `thaw`, EOF or timeout.
/// Returns the process exit code.
pub fn guard_main(mounts: &[PathBuf], timeout: Duration) -> i32 {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
        // SAFETY: installing SIG_IGN is async-signal-safe and has no other effect.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let began = Instant::now();
    let mut out = std::io::stdout();
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = freeze_mount(m) {
            let failed = thaw_all(&mounts[..i]);
            let _ = writeln!(out, "error cannot freeze {}: {e}; thawed the others{}", m.display(), suffix(&failed));
            return 1;
        }
    }
    let _ = writeln!(out, "frozen");
    let _ = out.flush();
    let reason = wait_for_release(began + timeout);
    let failed = thaw_all(mounts);
    if failed.is_empty() {
        let _ = writeln!(out, "thawed {reason}");
        0
    } else {
        let _ = writeln!(out, "error thaw failed{}", suffix(&failed));
        1
    }
}

fn suffix(failed: &[String]) -> String {
    if failed.is_empty() {
        String::new()
    } else {
        format!(" (thaw failed: {}; run `fsfreeze -u` on them now)", failed.join(", "))
    }
}

/// Blocks until stdin says `thaw`, closes, or the deadline passes.
fn wait_for_release(deadline: Instant) -> &'static str {
    let stdin = std::io::stdin();
    let fd = stdin.as_raw_fd();
    let mut lines = stdin.lock();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return "watchdog";
        }
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut p, 1, ms) };
        if rc == 0 {
            return "watchdog";
        }
        if rc < 0 {
            continue; // EINTR
        }
        let mut line = String::new();
        match lines.read_line(&mut line) {
            Ok(0) | Err(_) => return "agent-gone",
            Ok(_) if line.trim() == "thaw" => return "requested",
            Ok(_) => continue,
        }
    }
}

/// How mounts get frozen: the real guard process, or a test double.
#[async_trait]
pub trait Freezer: Send + Sync {
    /// Freezes `mounts`; they thaw by themselves after `timeout` at the latest.
    async fn freeze(&self, mounts: &[PathBuf], timeout: Duration) -> anyhow::Result<Box<dyn Frozen>>;
}

/// Frozen mounts; dropping without `thaw` still thaws (the guard sees EOF).
#[async_trait]
pub trait Frozen: Send {
    /// Thaws now and says how the thaw happened (`requested` or `watchdog`).
    async fn thaw(self: Box<Self>) -> anyhow::Result<String>;
}

/// Freezes through a `tidemark freeze-guard` child process.
pub struct GuardProcess {
    /// The tidemark binary.
    pub exe: PathBuf,
}

impl GuardProcess {
    /// Uses the running binary.
    pub fn current() -> anyhow::Result<GuardProcess> {
        Ok(GuardProcess { exe: std::env::current_exe().context("locating the tidemark binary for freeze-guard")? })
    }
}

struct Guard {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

#[async_trait]
impl Freezer for GuardProcess {
    async fn freeze(&self, mounts: &[PathBuf], timeout: Duration) -> anyhow::Result<Box<dyn Frozen>> {
        let mut child = tokio::process::Command::new(&self.exe)
            .arg("freeze-guard")
            .arg("--timeout-ms")
            .arg(timeout.as_millis().to_string())
            .args(mounts)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(false) // a killed guard could not thaw; closing stdin makes it thaw
            .spawn()
            .with_context(|| format!("starting {} freeze-guard", self.exe.display()))?;
        let stdin = child.stdin.take();
        let out = child.stdout.take().ok_or_else(|| anyhow!("freeze-guard has no stdout"))?;
        let mut stdout = tokio::io::BufReader::new(out).lines();
        let first = tokio::time::timeout(timeout, stdout.next_line()).await;
        let guard = Guard { child, stdin, stdout };
        match first {
            Ok(Ok(Some(l))) if l == "frozen" => Ok(Box::new(guard)),
            Ok(Ok(Some(l))) => bail!("{}", l.strip_prefix("error ").unwrap_or(&l)),
            Ok(Ok(None)) | Ok(Err(_)) => bail!("freeze-guard exited before freezing"),
            Err(_) => bail!("freezing did not finish within {timeout:?} (a flush to the volume is stuck); the guard thaws whatever it froze"),
        }
    }
}

#[async_trait]
impl Frozen for Guard {
    async fn thaw(mut self: Box<Self>) -> anyhow::Result<String> {
        if let Some(mut stdin) = self.stdin.take() {
            // The guard may already have thawed on its watchdog and gone: that is fine.
            let _ = stdin.write_all(b"thaw\n").await;
            let _ = stdin.flush().await;
        }
        let line = self.stdout.next_line().await.ok().flatten().unwrap_or_default();
        let _ = self.child.wait().await;
        match line.strip_prefix("thawed ") {
            Some(how) => Ok(how.to_string()),
            None => bail!("{}", line.strip_prefix("error ").unwrap_or("freeze-guard ended without reporting a thaw")),
        }
    }
}

/// What happens while the mounts are held, behind a trait so a recording double proves its
/// order (with the backup flow's start and stop around it: `backup::capture_between`).
#[async_trait]
pub trait Hold: Send {
    /// Freeze the mounts.
    async fn freeze(&mut self) -> anyhow::Result<()>;
    /// The snapshot call (returns once the point in time is fixed).
    async fn snapshot(&mut self) -> anyhow::Result<()>;
    /// Thaw the mounts.
    async fn thaw(&mut self) -> anyhow::Result<()>;
}

/// freeze → snapshot → thaw. Thaw runs whenever a freeze was attempted, also when the
/// snapshot call fails, hangs past `limit` (the frozen period never exceeds it) or
/// `interrupt` fires.
pub async fn hold<S: Hold + ?Sized>(
    steps: &mut S,
    freeze: bool,
    limit: Duration,
    mut interrupt: crate::snapshot::Interrupt<'_>,
) -> anyhow::Result<()> {
    let mut tried_freeze = false;
    let captured: anyhow::Result<()> = async {
        let deadline = tokio::time::Instant::now() + limit;
        if freeze {
            tried_freeze = true;
            tokio::select! {
                r = tokio::time::timeout_at(deadline, steps.freeze()) => {
                    r.map_err(|_| anyhow!("freezing took longer than ebs.freeze_timeout_s ({limit:?})"))??
                }
                _ = &mut interrupt => bail!("interrupted while freezing"),
            }
        }
        tokio::select! {
            r = tokio::time::timeout_at(deadline, steps.snapshot()) => {
                r.map_err(|_| anyhow!("the snapshot call did not return within ebs.freeze_timeout_s ({limit:?}); thawed and gave up"))?
            }
            _ = &mut interrupt => bail!("interrupted during the snapshot call"),
        }
    }
    .await;
    let thawed = if tried_freeze { steps.thaw().await } else { Ok(()) };
    captured?;
    thawed.context("thawing the mounts")
}

/// Resolves on SIGINT or SIGTERM.
pub async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
