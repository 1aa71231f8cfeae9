//! WAL file names as PostgreSQL makes them, and the segment arithmetic behind them.
//!
//! Vocabulary: a *segment* `TTTTTTTTXXXXXXXXYYYYYYYY` (timeline, then the segment number
//! split in two hex halves); a *segment number* (`segno`) counts segments from the start
//! of the log whatever the timeline, so `wal_segment_size` says how the halves split;
//! a *history* file `TTTTTTTT.history` records where a timeline branched; a *backup
//! label* `<segment>.XXXXXXXX.backup` and a *partial* `<segment>.partial` are archived
//! too. Every name read from a target goes through [`WalName::parse`]: anything else is
//! not a WAL file of ours and is never fetched, listed or deleted.

/// The largest `wal_segment_size` PostgreSQL allows (1 GiB): a bound for what a fetch
/// writes, whatever a receipt claims.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Segment,
    Partial,
    Backup,
    History,
}

/// A parsed WAL file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalName {
    pub name: String,
    pub timeline: u32,
    pub kind: Kind,
    /// The two halves of the segment number (zero for a history file).
    log: u32,
    seg: u32,
}

fn hex8(s: &str) -> Option<u32> {
    (s.len() == 8
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)))
    .then(|| u32::from_str_radix(s, 16).ok())
    .flatten()
}

impl WalName {
    /// A file name PostgreSQL hands to `archive_command` or asks `restore_command` for;
    /// `None` for anything else (paths, lower case, other suffixes).
    pub fn parse(name: &str) -> Option<WalName> {
        let segment = |s: &str| {
            Some((
                hex8(s.get(0..8)?)?,
                hex8(s.get(8..16)?)?,
                hex8(s.get(16..24)?)?,
            ))
        };
        let (timeline, kind, log, seg) = if let Some(tli) = name.strip_suffix(".history") {
            (hex8(tli)?, Kind::History, 0, 0)
        } else if let Some(rest) = name.strip_suffix(".partial") {
            let (t, l, s) = (rest.len() == 24).then(|| segment(rest)).flatten()?;
            (t, Kind::Partial, l, s)
        } else if let Some(rest) = name.strip_suffix(".backup") {
            let (seg_part, offset) = rest.split_once('.')?;
            hex8(offset)?;
            let (t, l, s) = (seg_part.len() == 24)
                .then(|| segment(seg_part))
                .flatten()?;
            (t, Kind::Backup, l, s)
        } else {
            let (t, l, s) = (name.len() == 24).then(|| segment(name)).flatten()?;
            (t, Kind::Segment, l, s)
        };
        // Timeline 0 does not exist: PostgreSQL starts at 1.
        if timeline == 0 {
            return None;
        }
        Some(WalName {
            name: name.to_string(),
            timeline,
            kind,
            log,
            seg,
        })
    }

    /// The segment number, for every kind but a history file; `None` too when the low
    /// half is out of range for this segment size (a forged or foreign name).
    pub fn segno(&self, segment_bytes: u64) -> Option<u64> {
        if self.kind == Kind::History {
            return None;
        }
        let per_log = segments_per_log(segment_bytes)?;
        (u64::from(self.seg) < per_log).then(|| u64::from(self.log) * per_log + u64::from(self.seg))
    }
}

/// Segments per 4 GiB "log": PostgreSQL's XLogSegmentsPerXLogId.
fn segments_per_log(segment_bytes: u64) -> Option<u64> {
    (segment_bytes.is_power_of_two() && (1 << 20..=MAX_SEGMENT_BYTES).contains(&segment_bytes))
        .then(|| 0x1_0000_0000 / segment_bytes)
}

/// The name of segment `segno` on `timeline` (PostgreSQL's XLogFileName).
pub fn segment_name(timeline: u32, segno: u64, segment_bytes: u64) -> Option<String> {
    let per_log = segments_per_log(segment_bytes)?;
    Some(format!(
        "{timeline:08X}{:08X}{:08X}",
        segno / per_log,
        segno % per_log
    ))
}

/// An LSN as PostgreSQL prints it (`16/B374D848`).
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let ok = |h: &str| !h.is_empty() && h.len() <= 8 && h.bytes().all(|b| b.is_ascii_hexdigit());
    (ok(hi) && ok(lo)).then(|| {
        (u64::from(u32::from_str_radix(hi, 16).unwrap_or(0)) << 32)
            | u64::from(u32::from_str_radix(lo, 16).unwrap_or(0))
    })
}

/// Segment numbers in `have` missing from `from..=to`: each one makes every later point
/// unreachable. At most `limit` are returned (a long gap is reported by its first few).
pub fn gaps(have: &std::collections::BTreeSet<u64>, from: u64, to: u64, limit: usize) -> Vec<u64> {
    let mut missing = Vec::new();
    let mut expect = from;
    for &n in have.range(from..=to) {
        while expect < n && missing.len() < limit {
            missing.push(expect);
            expect += 1;
        }
        expect = n + 1;
    }
    while expect <= to && missing.len() < limit {
        missing.push(expect);
        expect += 1;
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 << 20;

    #[test]
    fn names_postgres_makes_parse_and_nothing_else_does() {
        let s = WalName::parse("000000010000000A000000FF").unwrap();
        assert_eq!((s.timeline, s.kind), (1, Kind::Segment));
        assert_eq!(s.segno(MB16), Some(10 * 256 + 255));
        assert_eq!(
            WalName::parse("00000002.history").unwrap().kind,
            Kind::History
        );
        assert_eq!(
            WalName::parse("000000010000000000000002.00000028.backup")
                .unwrap()
                .kind,
            Kind::Backup
        );
        assert_eq!(
            WalName::parse("000000020000000000000003.partial")
                .unwrap()
                .kind,
            Kind::Partial
        );
        for bad in [
            "",
            "../000000010000000000000001",
            "000000010000000000000001/..",
            "000000010000000a00000001",
            "00000001000000000000001",
            "0000000100000000000000011",
            "000000000000000000000001",
            "00000001.history.json",
            "0000000G.history",
            "000000010000000000000001.backup",
            "000000010000000000000001.0000002.backup",
            "000000010000000000000001.json",
        ] {
            assert!(WalName::parse(bad).is_none(), "{bad:?} parsed");
        }
        // A low half beyond the segments of a 4 GiB log is not a 16 MiB segment.
        assert_eq!(
            WalName::parse("000000010000000000000100")
                .unwrap()
                .segno(MB16),
            None
        );
    }

    #[test]
    fn segment_numbers_and_names_round_trip_across_log_boundaries() {
        for segno in [0u64, 1, 255, 256, 257, 4095, 1 << 20] {
            let name = segment_name(3, segno, MB16).unwrap();
            assert_eq!(WalName::parse(&name).unwrap().segno(MB16), Some(segno));
        }
        assert_eq!(
            segment_name(1, 256, MB16).unwrap(),
            "000000010000000100000000"
        );
        assert_eq!(
            segment_name(1, 2, 1 << 30).unwrap(),
            "000000010000000000000002"
        );
        assert_eq!(segment_name(1, 2, 3 << 20), None);
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/2000028"), Some(0x200_0028));
        assert_eq!(parse_lsn("x/1"), None);
        assert_eq!(parse_lsn("1/123456789"), None);
    }

    /// A manifest read from a target may carry any segment size: only PostgreSQL's own
    /// (a power of two from 1 MiB to 1 GiB) give segment numbers.
    #[test]
    fn forged_segment_sizes_give_no_segment_numbers() {
        let s = WalName::parse("000000010000000000000003").unwrap();
        for size in [0, 1, 3 << 20, 512 << 10, 2 << 30, u64::MAX, 1 << 63] {
            assert_eq!(s.segno(size), None, "{size}");
            assert_eq!(segment_name(1, 3, size), None, "{size}");
        }
        assert_eq!(s.segno(1 << 30), Some(3));
        assert_eq!(
            WalName::parse("00000002.history").unwrap().segno(16 << 20),
            None
        );
    }

    #[test]
    fn gaps_are_the_missing_numbers_in_the_range() {
        let have: std::collections::BTreeSet<u64> = [3, 4, 6, 9].into_iter().collect();
        assert_eq!(gaps(&have, 3, 9, 10), vec![5, 7, 8]);
        assert_eq!(gaps(&have, 3, 11, 10), vec![5, 7, 8, 10, 11]);
        assert_eq!(gaps(&have, 2, 4, 10), vec![2]);
        assert_eq!(gaps(&have, 3, 9, 2), vec![5, 7]);
        assert!(gaps(&have, 3, 4, 10).is_empty());
    }
}
