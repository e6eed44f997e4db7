//! `window`: what is restorable, per timeline.

use super::*;

/// `window`.
pub(super) async fn run(cli: &Cli, cluster: &Option<String>) -> Result<u8, Failure> {
    let cfg = load_config(cli)?;
    let repo = open_existing(&cfg, cluster.as_deref()).await?;
    let inputs = crate::restore::Inputs::load(&repo).await?;
    let windows = inputs.windows();
    match cli.output {
        Output::Json => {
            let v: Vec<serde_json::Value> = windows
                .iter()
                .map(|(tli, w)| {
                    serde_json::json!({
                        "timeline": tli,
                        "earliest": w.earliest().map(rfc3339),
                        "latest": w.latest().map(rfc3339),
                        "ranges": w.ranges.iter().map(|r| serde_json::json!({
                            "backup": r.backup, "from_time": rfc3339(r.from_time), "to_time": r.to_time.map(rfc3339),
                            "from_lsn": r.from_lsn.to_string(), "to_lsn": r.to_lsn.to_string(),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            outln!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "cluster": repo.cluster(), "timelines": v }))
                    .map_err(anyhow::Error::from)?
            );
        }
        Output::Text => {
            if windows.is_empty() {
                outln!("cluster {}: nothing is restorable: no completed backup yet", repo.cluster());
            }
            // On a terminal, each timeline also as a bar over time.
            let bars = std::io::IsTerminal::is_terminal(&std::io::stdout());
            let horizon = horizon(&repo).await;
            for (tli, w) in &windows {
                outln!("cluster {} timeline {tli}: {w}", repo.cluster());
                if bars {
                    out!("{}", bar(w, horizon, chrono::Utc::now(), terminal_width().saturating_sub(4).clamp(20, 200)));
                }
            }
            if bars && !windows.is_empty() {
                outln!(
                    "  █ restorable  ░ gap  · not restorable  ^ backup  H retention horizon ({})",
                    match horizon {
                        Some(h) => format!("PITR from {}", rfc3339(h)),
                        None => "PITR off".into(),
                    }
                );
            }
        }
    }
    Ok(0)
}

/// The retention horizon the bars mark: the start of the PITR window, when PITR is on (and
/// the policy reads).
pub(super) async fn horizon(repo: &Repository) -> Option<chrono::DateTime<chrono::Utc>> {
    match crate::sweep::load(repo).await {
        Ok(p) if p.pitr_enabled => Some(chrono::Utc::now() - chrono::Duration::days(i64::from(p.pitr_days))),
        _ => None,
    }
}

/// The terminal's width in columns (80 when it cannot be told).
pub(super) fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills the winsize it is given; a failure leaves it zeroed.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()).unwrap_or(80)
    }
}

/// A timeline's window as a bar of `width` cells from its oldest restorable point (or the
/// retention horizon, if later) to `now`, with a line of markers under it and the times at
/// its ends (pure). Cells: `█` restorable, `░` a gap between restorable spans, `·` not
/// restorable; markers: `^` a backup, `H` the horizon (`<` left of the bar: it lies before).
pub fn bar(
    w: &crate::catalog::restore_plan::Window,
    horizon: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
    width: usize,
) -> String {
    let Some(first) = w.ranges.iter().map(|r| r.from_time).min() else { return String::new() };
    let end_of = |r: &crate::catalog::restore_plan::Range| r.to_time.unwrap_or(r.from_time);
    let last = w.ranges.iter().map(end_of).max().unwrap_or(first);
    let t0 = match horizon {
        Some(h) if h > first && h < now => h,
        _ => first,
    };
    let t1 = now.max(last).max(t0 + chrono::Duration::seconds(1));
    let span = (t1 - t0).num_microseconds().unwrap_or(i64::MAX).max(1) as f64;
    let at = |t: chrono::DateTime<chrono::Utc>| {
        let x = (t - t0).num_microseconds().unwrap_or(0) as f64 / span * width as f64;
        (x.max(0.0) as usize).min(width - 1)
    };
    let cell_time = |i: usize| t0 + chrono::Duration::microseconds((span * i as f64 / width as f64) as i64);
    let mut cells: Vec<char> = (0..width)
        .map(|i| {
            let (a, b) = (cell_time(i), cell_time(i + 1));
            if w.ranges.iter().any(|r| r.from_time < b && end_of(r) >= a) {
                '█'
            } else if a > first && b <= last {
                '░'
            } else {
                '·'
            }
        })
        .collect();
    // A span shorter than a cell still shows.
    for r in &w.ranges {
        cells[at(r.from_time)] = '█';
    }
    let mut marks = vec![' '; width];
    for r in &w.ranges {
        marks[at(r.from_time)] = '^';
    }
    // A horizon before the bar's start is marked just left of it.
    let before = match horizon {
        Some(h) if h >= t0 && h <= t1 => {
            marks[at(h)] = 'H';
            false
        }
        Some(h) => h < t0,
        None => false,
    };
    let from = rfc3339(t0);
    let to = rfc3339(t1);
    let pad = width.saturating_sub(from.len() + to.len()).max(1);
    format!(
        "  {}\n {}{}\n  {from}{}{to}\n",
        cells.iter().collect::<String>(),
        if before { '<' } else { ' ' },
        marks.iter().collect::<String>().trim_end(),
        " ".repeat(pad)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::restore_plan::{Range, Window};
    use crate::wal::name::Lsn;

    fn t(s: &str) -> chrono::DateTime<chrono::Utc> {
        crate::catalog::backup::time_format::parse(s).expect("time")
    }

    fn range(from: &str, to: &str) -> Range {
        Range {
            backup: "b".into(),
            from_time: t(from),
            to_time: Some(t(to)),
            from_lsn: Lsn(0),
            to_lsn: Lsn(0),
            last_segment: 0,
            broken: None,
            unsupported: None,
        }
    }

    #[test]
    fn a_gap_between_backups_shows_as_a_gap() {
        let w = Window {
            ranges: vec![
                range("2026-12-01T00:00:00Z", "2026-12-01T00:30:00Z"),
                range("2026-12-01T01:00:00Z", "2026-12-01T01:30:00Z"),
            ],
        };
        let out = bar(&w, None, t("2026-12-01T02:00:00Z"), 40);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0].trim(), "███████████░░░░░░░░░███████████·········", "{out}");
        assert_eq!(lines[1].trim_end(), "  ^                   ^", "{out}");
        assert!(lines[2].contains("2026-12-01T00:00:00") && lines[2].contains("2026-12-01T02:00:00"), "{out}");
    }

    #[test]
    fn the_horizon_is_marked_or_said_to_lie_before() {
        let w = Window { ranges: vec![range("2026-12-01T00:00:00Z", "2026-12-01T02:00:00Z")] };
        let out = bar(&w, Some(t("2026-12-01T01:00:00Z")), t("2026-12-01T02:00:00Z"), 20);
        // The bar starts at the horizon when it is later than the oldest point.
        assert!(out.lines().next().unwrap().trim() == "████████████████████", "{out}");
        assert!(out.lines().nth(1).unwrap().contains('H'), "{out}");
        let out = bar(&w, Some(t("2026-11-30T00:00:00Z")), t("2026-12-01T02:00:00Z"), 20);
        assert!(out.lines().nth(1).unwrap().starts_with(" <^"), "{out}");
        assert_eq!(bar(&Window::default(), None, t("2026-12-01T02:00:00Z"), 20), "");
    }
}
