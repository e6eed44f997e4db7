//! Progress of the long operations (backup, restore, WAL replay, prewarm, `verify --deep`,
//! purges): a bar on a terminal; elsewhere (systemd, cron, a pipe) a log line every 10 s with
//! what is done, the rate and the time left.
//!
//! Callers get an `indicatif::ProgressBar` either way and only `inc`/`set_position` it; off a
//! terminal the bar is hidden and a thread reads its position. `TIDEMARK_PROGRESS_INTERVAL_MS`
//! sets the interval (for tests; default 10 000).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

/// The environment variable that overrides the log interval (milliseconds).
pub const INTERVAL_ENV: &str = "TIDEMARK_PROGRESS_INTERVAL_MS";

/// What the bar counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Bytes; `files` is how many files they are, when known.
    Bytes { files: Option<u64> },
    /// Things of this name (segments, bundles, objects).
    Count(&'static str),
}

/// Bytes of a transfer of `total` bytes (0: not known yet; `set_length` may follow).
pub fn bytes_bar(total: u64, what: &str) -> ProgressBar {
    bar(total, what, Unit::Bytes { files: None })
}

/// Bytes of a transfer of `total` bytes in `files` files.
pub fn files_bar(total: u64, files: u64, what: &str) -> ProgressBar {
    bar(total, what, Unit::Bytes { files: Some(files) })
}

/// A count of `total` `unit` (0: not known).
pub fn count_bar(total: u64, what: &str, unit: &'static str) -> ProgressBar {
    bar(total, what, Unit::Count(unit))
}

fn bar(total: u64, what: &str, unit: Unit) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        let pb = ProgressBar::hidden();
        pb.set_length(total);
        log_every(&pb, what.to_string(), unit, interval());
        return pb;
    }
    let pb = ProgressBar::new(total);
    let template = match unit {
        Unit::Bytes { .. } => "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}".to_string(),
        // No total to draw a bar against: a spinner and the count.
        Unit::Count(u) if total == 0 => format!("{{spinner}} {{msg}}: {{pos}} {u} {{per_sec}}"),
        Unit::Count(u) => format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {u} {{per_sec}} eta {{eta}}"),
    };
    let style =
        indicatif::ProgressStyle::with_template(&template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    pb.set_style(style.progress_chars("=> "));
    pb.set_message(what.to_string());
    pb
}

/// The log interval: 10 s, or `TIDEMARK_PROGRESS_INTERVAL_MS`.
fn interval() -> Duration {
    std::env::var(INTERVAL_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// Rate and time left of `done` out of `total` after `elapsed` (pure; `total` 0 is unknown).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Per second, since the start.
    pub per_second: f64,
    /// Percent done, when the total is known.
    pub percent: Option<f64>,
    /// Seconds left at this rate, when the total is known and something was done.
    pub eta_seconds: Option<u64>,
}

impl Rate {
    /// The rate of `done` of `total` in `elapsed`.
    pub fn of(done: u64, total: u64, elapsed: Duration) -> Rate {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let per_second = done as f64 / secs;
        let known = total > 0;
        let percent = known.then(|| (done as f64 * 100.0 / total as f64).min(100.0));
        let eta_seconds =
            (known && per_second > 0.0).then(|| (total.saturating_sub(done) as f64 / per_second).ceil() as u64);
        Rate { per_second, percent, eta_seconds }
    }
}

/// Bytes for people: `1.5 GiB` (pure).
pub fn human_bytes(n: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", units[i])
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// The summary a progress line carries (pure).
fn summary(what: &str, unit: Unit, done: u64, total: u64, r: &Rate) -> String {
    let (done_s, total_s, rate_s) = match unit {
        Unit::Bytes { .. } => {
            (human_bytes(done as f64), human_bytes(total as f64), format!("{}/s", human_bytes(r.per_second)))
        }
        Unit::Count(u) => (format!("{done} {u}"), format!("{total} {u}"), format!("{:.1} {u}/s", r.per_second)),
    };
    let mut s = format!("{what}: {done_s}");
    if let Some(p) = r.percent {
        s.push_str(&format!(" of {total_s} ({p:.0}%)"));
    }
    s.push_str(&format!(", {rate_s}"));
    if let Some(e) = r.eta_seconds {
        s.push_str(&format!(", eta {e} s"));
    }
    s
}

/// Logs `pb`'s progress every `every` until it is finished or dropped.
fn log_every(pb: &ProgressBar, what: String, unit: Unit, every: Duration) {
    let weak = pb.downgrade();
    let began = Instant::now();
    let spawned = std::thread::Builder::new().name("progress".into()).spawn(move || loop {
        // A periodic report, not a wait for a condition: nothing to wake it early for.
        std::thread::sleep(every);
        let Some(pb) = weak.upgrade() else { return };
        if pb.is_finished() {
            return;
        }
        let (done, total) = (pb.position(), pb.length().unwrap_or(0));
        drop(pb);
        let r = Rate::of(done, total, began.elapsed());
        let msg = summary(&what, unit, done, total, &r);
        let elapsed_s = began.elapsed().as_secs();
        match unit {
            Unit::Bytes { files } => tracing::info!(
                what = %what,
                bytes = done,
                total_bytes = total,
                files,
                percent = r.percent.map(|p| (p * 10.0).round() / 10.0),
                rate_bytes_per_s = r.per_second.round() as u64,
                eta_s = r.eta_seconds,
                elapsed_s,
                "{msg}"
            ),
            Unit::Count(u) => tracing::info!(
                what = %what,
                done,
                total = (total > 0).then_some(total),
                unit = u,
                percent = r.percent.map(|p| (p * 10.0).round() / 10.0),
                rate_per_s = (r.per_second * 100.0).round() / 100.0,
                eta_s = r.eta_seconds,
                elapsed_s,
                "{msg}"
            ),
        }
    });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "no progress lines: cannot start their thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_time_left() {
        let r = Rate::of(50 << 20, 200 << 20, Duration::from_secs(10));
        assert_eq!(r.per_second, 5.0 * 1048576.0);
        assert_eq!(r.percent, Some(25.0));
        assert_eq!(r.eta_seconds, Some(30));
        let unknown = Rate::of(7, 0, Duration::from_secs(2));
        assert_eq!((unknown.per_second, unknown.percent, unknown.eta_seconds), (3.5, None, None));
        assert_eq!(Rate::of(0, 10, Duration::from_secs(2)).eta_seconds, None, "nothing done: no estimate");
    }

    #[test]
    fn summaries_for_people() {
        let r = Rate::of(512 << 20, 2 << 30, Duration::from_secs(4));
        assert_eq!(
            summary("backup", Unit::Bytes { files: Some(3) }, 512 << 20, 2 << 30, &r),
            "backup: 512.0 MiB of 2.0 GiB (25%), 128.0 MiB/s, eta 12 s"
        );
        let r = Rate::of(3, 0, Duration::from_secs(2));
        assert_eq!(summary("replay", Unit::Count("segments"), 3, 0, &r), "replay: 3 segments, 1.5 segments/s");
        assert_eq!(human_bytes(1000.0), "1000 B");
    }

    #[test]
    fn a_hidden_bar_keeps_its_position_for_the_logger() {
        let pb = ProgressBar::hidden();
        pb.set_length(10);
        let weak = pb.downgrade();
        pb.inc(4);
        assert_eq!(weak.upgrade().map(|p| (p.position(), p.length())), Some((4, Some(10))));
        pb.finish_and_clear();
        assert!(weak.upgrade().is_some_and(|p| p.is_finished()));
        drop(pb);
        assert!(weak.upgrade().is_none(), "the logger stops once the caller drops the bar");
    }
}
