//! Timeline history files (`<TLI>.history`) and backup history files (`.backup`): what a
//! file must look like before it is archived (pure). PostgreSQL reads a history file as
//! `readTimeLineHistory` does: one line per ancestor, "parentTLI<TAB>switchpoint<TAB>reason",
//! `#` comments and blank lines ignored; a file it cannot read fails every later recovery
//! that asks for it, so a malformed one must never reach the archive.

use crate::wal::name::Lsn;

/// One ancestor timeline and where the history switched away from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ancestor {
    /// The ancestor timeline.
    pub timeline: u32,
    /// Where this history left it.
    pub switchpoint: Lsn,
}

/// Largest history file accepted: one line per timeline switch is a few dozen bytes.
pub const MAX_HISTORY_BYTES: usize = 256 << 10;

/// Parses the history file of timeline `tli`, refusing what PostgreSQL would refuse or
/// what cannot be the history of `tli` (ancestors out of order, not below `tli`, none).
pub fn parse_history(bytes: &[u8], tli: u32) -> Result<Vec<Ancestor>, String> {
    if bytes.len() > MAX_HISTORY_BYTES {
        return Err(format!("{} bytes is far larger than any timeline history file", bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not text".to_string())?;
    let mut out: Vec<Ancestor> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split(|c: char| c.is_ascii_whitespace()).filter(|f| !f.is_empty());
        let at = |what: &str| format!("line {}: {what}", i + 1);
        let timeline: u32 = fields
            .next()
            .and_then(|f| f.parse().ok())
            .filter(|t| *t > 0)
            .ok_or_else(|| at("expected a numeric timeline ID"))?;
        let switchpoint = fields
            .next()
            .and_then(|f| f.parse::<Lsn>().ok())
            .ok_or_else(|| at("expected a write-ahead log switchpoint location"))?;
        if let Some(last) = out.last() {
            if timeline <= last.timeline {
                return Err(at("timeline IDs must be in increasing sequence"));
            }
            if switchpoint < last.switchpoint {
                return Err(at("switchpoints must not go backwards"));
            }
        }
        if timeline >= tli {
            return Err(at(&format!("ancestor timeline {timeline} is not older than timeline {tli}")));
        }
        out.push(Ancestor { timeline, switchpoint });
    }
    if out.is_empty() {
        return Err(format!("no ancestor timeline: the history of timeline {tli} names its parent"));
    }
    Ok(out)
}

/// Checks a backup history file (`<segment>.<offset>.backup`) names where its backup started.
pub fn check_backup_file(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() > MAX_HISTORY_BYTES {
        return Err(format!("{} bytes is far larger than any backup history file", bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not text".to_string())?;
    let start = text
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
        .ok_or_else(|| "no START WAL LOCATION line".to_string())?;
    start
        .split_whitespace()
        .next()
        .and_then(|l| l.parse::<Lsn>().ok())
        .map(|_| ())
        .ok_or_else(|| "START WAL LOCATION is not a WAL location".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_postgresql_writes() {
        let h = b"1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tbefore 2026-11-01 00:00:00+00\n";
        assert_eq!(
            parse_history(h, 3).unwrap(),
            vec![
                Ancestor { timeline: 1, switchpoint: Lsn(0x3000158) },
                Ancestor { timeline: 2, switchpoint: Lsn(0x5000000) }
            ]
        );
        assert_eq!(parse_history(b"# a comment\n  1\t0/30000A0\treason\n", 2).unwrap().len(), 1);
        // The reason is optional to PostgreSQL's reader.
        assert_eq!(parse_history(b"1\t0/3000000", 2).unwrap()[0].timeline, 1);
    }

    #[test]
    fn refuses_what_recovery_would_choke_on() {
        for (bytes, tli, needle) in [
            (&b"junk\n"[..], 2, "numeric timeline"),
            (b"1\n", 2, "switchpoint"),
            (b"1\tzz/1\tx\n", 2, "switchpoint"),
            (b"2\t0/1\tx\n1\t0/2\tx\n", 3, "increasing"),
            (b"1\t0/5\tx\n2\t0/4\tx\n", 3, "backwards"),
            (b"2\t0/5\tx\n", 2, "not older"),
            (b"0\t0/5\tx\n", 2, "numeric timeline"),
            (b"", 2, "no ancestor"),
            (b"# only a comment\n", 2, "no ancestor"),
            (b"\xff\xfe", 2, "not text"),
        ] {
            let e = parse_history(bytes, tli).unwrap_err();
            assert!(e.contains(needle), "{:?}: {e}", String::from_utf8_lossy(bytes));
        }
        assert!(parse_history(&vec![b'#'; MAX_HISTORY_BYTES + 1], 2).unwrap_err().contains("larger"));
    }

    #[test]
    fn backup_files_name_their_start() {
        let ok = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\n";
        assert!(check_backup_file(ok).is_ok());
        assert!(check_backup_file(b"hello").is_err());
        assert!(check_backup_file(b"START WAL LOCATION: nope").is_err());
    }
}
