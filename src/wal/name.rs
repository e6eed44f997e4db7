//! WAL file names and LSN arithmetic (pure, no I/O).
//!
//! PostgreSQL names a segment `TTTTTTTTXXXXXXXXYYYYYYYY`: timeline, then the segment
//! number split into a "log" part and a "seg within log" part, where one log holds
//! `0x1_0000_0000 / wal_segment_size` segments.

use std::fmt;
use std::str::FromStr;

/// Default WAL segment size (16 MiB).
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// A WAL location (log sequence number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// Errors from parsing WAL names and LSNs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// The string is not an LSN of the form `X/Y`.
    #[error("'{0}' is not an LSN (expected hex 'X/Y', e.g. 0/3000028)")]
    BadLsn(String),
    /// The string is not a WAL file name tidemark archives.
    #[error("'{0}' is not a WAL file name (expected 24 hex digits, optionally with .partial, a .history or a .backup suffix)")]
    BadName(String),
    /// The segment size is not a power of two between 1 MiB and 1 GiB.
    #[error("invalid WAL segment size {0} (must be a power of two between 1 MiB and 1 GiB)")]
    BadSegmentSize(u64),
    /// Timeline 0 does not exist.
    #[error("timeline 0 is not valid in '{0}'")]
    ZeroTimeline(String),
}

impl Lsn {
    /// The segment number containing this LSN.
    pub fn segment_no(self, seg_size: u64) -> u64 {
        self.0 / seg_size
    }

    /// The offset of this LSN inside its segment.
    pub fn segment_offset(self, seg_size: u64) -> u64 {
        self.0 % seg_size
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NameError::BadLsn(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(bad());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((hi << 32) | lo))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether `name` is spelled like a segment file (24 hex digits), whatever its size: for
/// listings and directories, before the segment size is known. [`Segment::parse`] checks more.
pub fn is_segment_name(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks that `seg_size` is a segment size PostgreSQL accepts.
pub fn check_segment_size(seg_size: u64) -> Result<(), NameError> {
    if seg_size.is_power_of_two() && (1 << 20..=1 << 30).contains(&seg_size) {
        Ok(())
    } else {
        Err(NameError::BadSegmentSize(seg_size))
    }
}

/// Segments in one 4 GiB log file (the middle 8 digits of a segment name).
pub fn segments_per_log(seg_size: u64) -> u64 {
    0x1_0000_0000 / seg_size
}

/// One WAL segment: a timeline and a segment number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    /// Timeline id.
    pub timeline: u32,
    /// Segment number (LSN / segment size).
    pub number: u64,
}

impl Segment {
    /// Parses a 24-hex-digit segment name.
    pub fn parse(name: &str, seg_size: u64) -> Result<Segment, NameError> {
        check_segment_size(seg_size)?;
        let bad = || NameError::BadName(name.to_string());
        if !is_segment_name(name) {
            return Err(bad());
        }
        let tli = u32::from_str_radix(&name[0..8], 16).map_err(|_| bad())?;
        let log = u64::from_str_radix(&name[8..16], 16).map_err(|_| bad())?;
        let seg = u64::from_str_radix(&name[16..24], 16).map_err(|_| bad())?;
        if tli == 0 {
            return Err(NameError::ZeroTimeline(name.to_string()));
        }
        let per_log = segments_per_log(seg_size);
        if seg >= per_log {
            return Err(bad());
        }
        Ok(Segment { timeline: tli, number: log * per_log + seg })
    }

    /// The segment's file name.
    pub fn name(&self, seg_size: u64) -> String {
        let per_log = segments_per_log(seg_size);
        format!("{:08X}{:08X}{:08X}", self.timeline, self.number / per_log, self.number % per_log)
    }

    /// The next segment on the same timeline.
    pub fn next(&self) -> Segment {
        Segment { timeline: self.timeline, number: self.number + 1 }
    }

    /// The segment holding `lsn` on `timeline`.
    pub fn containing(timeline: u32, lsn: Lsn, seg_size: u64) -> Segment {
        Segment { timeline, number: lsn.segment_no(seg_size) }
    }

    /// The first LSN of this segment.
    pub fn start_lsn(&self, seg_size: u64) -> Lsn {
        Lsn(self.number * seg_size)
    }
}

/// What kind of file PostgreSQL hands to the archive.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalFile {
    /// A complete segment.
    Segment(Segment),
    /// A partial segment left at a timeline switch (`.partial`).
    Partial(Segment),
    /// A timeline history file (`TTTTTTTT.history`).
    History(u32),
    /// A backup history file (`<segment>.<offset>.backup`).
    BackupLabel(Segment, u32),
}

impl WalFile {
    /// Classifies a file name from `pg_wal` (or as requested by `restore_command`).
    pub fn parse(name: &str, seg_size: u64) -> Result<WalFile, NameError> {
        let bad = || NameError::BadName(name.to_string());
        if let Some(tli) = name.strip_suffix(".history") {
            if tli.len() != 8 || !tli.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            let tli = u32::from_str_radix(tli, 16).map_err(|_| bad())?;
            if tli == 0 {
                return Err(NameError::ZeroTimeline(name.to_string()));
            }
            return Ok(WalFile::History(tli));
        }
        if let Some(seg) = name.strip_suffix(".partial") {
            return Ok(WalFile::Partial(Segment::parse(seg, seg_size)?));
        }
        if let Some(rest) = name.strip_suffix(".backup") {
            let (seg, off) = rest.split_once('.').ok_or_else(bad)?;
            if off.len() != 8 || !off.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            let off = u32::from_str_radix(off, 16).map_err(|_| bad())?;
            return Ok(WalFile::BackupLabel(Segment::parse(seg, seg_size)?, off));
        }
        Ok(WalFile::Segment(Segment::parse(name, seg_size)?))
    }

    /// The timeline this file belongs to (the new timeline for a history file).
    pub fn timeline(&self) -> u32 {
        match self {
            WalFile::Segment(s) | WalFile::Partial(s) | WalFile::BackupLabel(s, _) => s.timeline,
            WalFile::History(t) => *t,
        }
    }

    /// The file name PostgreSQL uses for this file.
    pub fn file_name(&self, seg_size: u64) -> String {
        match self {
            WalFile::Segment(s) => s.name(seg_size),
            WalFile::Partial(s) => format!("{}.partial", s.name(seg_size)),
            WalFile::History(t) => format!("{t:08X}.history"),
            WalFile::BackupLabel(s, off) => format!("{}.{off:08X}.backup", s.name(seg_size)),
        }
    }

    /// True for full segments, the only files worth prefetching.
    pub fn is_segment(&self) -> bool {
        matches!(self, WalFile::Segment(_))
    }
}

/// Timeline id formatted as PostgreSQL does in file names.
pub fn timeline_hex(tli: u32) -> String {
    format!("{tli:08X}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SZ: u64 = DEFAULT_SEGMENT_SIZE;

    #[test]
    fn lsn_round_trip_and_format() {
        for s in ["0/0", "0/3000028", "1/0", "FFFFFFFF/FFFFFFFF", "16/B374D848"] {
            let l: Lsn = s.parse().unwrap();
            assert_eq!(l.to_string(), s);
        }
        assert_eq!("0/3000028".parse::<Lsn>().unwrap(), Lsn(0x3000028));
        assert_eq!("1/0".parse::<Lsn>().unwrap(), Lsn(1 << 32));
        assert_eq!("a/b".parse::<Lsn>().unwrap(), Lsn((0xa << 32) | 0xb));
    }

    #[test]
    fn lsn_rejects_garbage() {
        for s in ["", "/", "0/", "/0", "0", "g/0", "0/g", "123456789/0", "0/123456789", "0/1/2"] {
            assert!(matches!(s.parse::<Lsn>(), Err(NameError::BadLsn(_))), "{s}");
        }
    }

    #[test]
    fn segment_names_match_postgres_layout() {
        let s = Segment::parse("000000010000000000000001", SZ).unwrap();
        assert_eq!(s, Segment { timeline: 1, number: 1 });
        let s = Segment::parse("0000000200000001000000FF", SZ).unwrap();
        assert_eq!(s.number, 0x100 + 0xFF);
        assert_eq!(s.name(SZ), "0000000200000001000000FF");
        assert_eq!(s.next().name(SZ), "000000020000000200000000");
        // 1 GiB segments: only 4 per log.
        let g = 1 << 30;
        let s = Segment::parse("000000010000000000000003", g).unwrap();
        assert_eq!(s.next().name(g), "000000010000000100000000");
        assert!(Segment::parse("000000010000000000000004", g).is_err());
    }

    #[test]
    fn segment_name_round_trip_every_size() {
        let mut size = 1u64 << 20;
        while size <= 1 << 30 {
            for number in [0u64, 1, 255, 256, 4095, 4096, 123_456, 1 << 20] {
                let s = Segment { timeline: 7, number };
                assert_eq!(Segment::parse(&s.name(size), size).unwrap(), s, "size {size}");
            }
            size <<= 1;
        }
    }

    #[test]
    fn segment_rejects_bad_names() {
        for n in [
            "",
            "00000001000000000000000",
            "0000000100000000000000011",
            "00000001000000000000000G",
            "000000000000000000000001",
            "000000010000000000000100",
        ] {
            assert!(Segment::parse(n, SZ).is_err(), "{n}");
        }
        assert!(Segment::parse("000000010000000000000001", 3 << 20).is_err());
        assert!(Segment::parse("000000010000000000000001", 1 << 31).is_err());
    }

    #[test]
    fn segment_lsn_math() {
        let lsn: Lsn = "1/3000028".parse().unwrap();
        let s = Segment::containing(1, lsn, SZ);
        assert_eq!(s.name(SZ), "000000010000000100000003");
        assert_eq!(s.start_lsn(SZ), "1/3000000".parse().unwrap());
        assert_eq!(lsn.segment_offset(SZ), 0x28);
    }

    #[test]
    fn classifies_wal_files() {
        assert_eq!(WalFile::parse("00000002.history", SZ).unwrap(), WalFile::History(2));
        assert_eq!(
            WalFile::parse("000000010000000000000003.partial", SZ).unwrap(),
            WalFile::Partial(Segment { timeline: 1, number: 3 })
        );
        let b = WalFile::parse("000000010000000000000002.00000028.backup", SZ).unwrap();
        assert_eq!(b, WalFile::BackupLabel(Segment { timeline: 1, number: 2 }, 0x28));
        assert_eq!(b.file_name(SZ), "000000010000000000000002.00000028.backup");
        for n in ["00000002.history", "000000010000000000000003.partial", "000000010000000000000003"] {
            assert_eq!(WalFile::parse(n, SZ).unwrap().file_name(SZ), n);
        }
        assert!(WalFile::parse("00000000.history", SZ).is_err());
        assert!(WalFile::parse("0000001.history", SZ).is_err());
        assert!(WalFile::parse("000000010000000000000002.28.backup", SZ).is_err());
        assert!(WalFile::parse("archive_status", SZ).is_err());
        assert!(WalFile::parse("../../etc/passwd", SZ).is_err());
        assert_eq!(WalFile::parse("00000003.history", SZ).unwrap().timeline(), 3);
        assert!(WalFile::parse("000000010000000000000003", SZ).unwrap().is_segment());
    }
}

/// Bounded fuzzing of WAL names and LSNs: no input panics, and what parses names itself.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Every segment size PostgreSQL accepts, and some it does not.
    fn seg_size() -> impl Strategy<Value = u64> {
        prop_oneof![4 => (20u32..=30).prop_map(|b| 1u64 << b), 1 => any::<u64>()]
    }

    /// Strings made of what WAL names are made of, so many of them nearly parse.
    fn name_like() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9A-Fa-f]{0,26}",
            "[0-9A-F]{8}\\.history",
            "[0-9A-F]{24}\\.partial",
            "[0-9A-F]{24}\\.[0-9A-Fa-f]{0,9}\\.backup",
            "[0-9A-Fa-f./+ -]{0,40}(\\.history|\\.partial|\\.backup)?",
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn fuzz_wal_names_parse_or_fail_cleanly(name in name_like(), size in seg_size()) {
            if let Ok(f) = WalFile::parse(&name, size) {
                let back = f.file_name(size);
                prop_assert!(back.eq_ignore_ascii_case(&name), "{name} came back as {back}");
                prop_assert_eq!(WalFile::parse(&back, size), Ok(f.clone()));
                prop_assert!(f.timeline() > 0);
                if let WalFile::Segment(s) | WalFile::Partial(s) | WalFile::BackupLabel(s, _) = f {
                    // The arithmetic on a parsed segment stays in range.
                    let start = s.start_lsn(size);
                    prop_assert_eq!(Segment::containing(s.timeline, start, size), s);
                    prop_assert_eq!(start.segment_offset(size), 0);
                }
            }
            let _ = Segment::parse(&name, size);
        }

        #[test]
        fn fuzz_segments_round_trip(tli in 1u32.., log in any::<u32>(), seg in any::<u32>(), size in (20u32..=30).prop_map(|b| 1u64 << b)) {
            let per_log = 0x1_0000_0000 / size;
            let s = Segment { timeline: tli, number: u64::from(log) * per_log + u64::from(seg) % per_log };
            let name = s.name(size);
            prop_assert_eq!(name.len(), 24);
            prop_assert_eq!(Segment::parse(&name, size), Ok(s));
        }

        #[test]
        fn fuzz_lsns_parse_or_fail_cleanly(text in prop_oneof!["[0-9A-Fa-f]{0,10}/[0-9A-Fa-f]{0,10}", "[0-9a-f/+ -]{0,20}", any::<String>()]) {
            if let Ok(l) = text.parse::<Lsn>() {
                prop_assert_eq!(l.to_string().parse::<Lsn>(), Ok(l));
            }
        }

        #[test]
        fn fuzz_lsn_display_round_trips(v in any::<u64>()) {
            prop_assert_eq!(Lsn(v).to_string().parse::<Lsn>(), Ok(Lsn(v)));
        }
    }
}
