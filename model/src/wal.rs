//! PostgreSQL write-ahead log positions and the names of its files, as
//! PostgreSQL itself writes them (`pg_lsn`, `XLogFileName`,
//! `TLHistoryFileName`): what the WAL archive, its catalog and a
//! `restore_command` agree on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The size PostgreSQL is built and initialised with unless told otherwise.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// A position in the WAL (`pg_lsn`), shown as PostgreSQL shows it:
/// `16/B374D848`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Lsn(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalError {
    #[error("{0:?} is not a WAL position (expected two hex numbers, as in 16/B374D848)")]
    BadLsn(String),
    #[error("{0:?} is not a WAL segment file name (24 hex digits)")]
    BadSegmentName(String),
    #[error("WAL segment size {0} is not a power of two between 1 MiB and 1 GiB")]
    BadSegmentSize(u64),
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = WalError;
    fn from_str(s: &str) -> Result<Self, WalError> {
        let bad = || WalError::BadLsn(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let part = |p: &str| {
            let hex = !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
            if hex {
                u32::from_str_radix(p, 16).map_err(|_| bad())
            } else {
                Err(bad())
            }
        };
        Ok(Lsn((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

/// A checked segment size (`wal_segment_size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSize(u64);

impl SegmentSize {
    pub fn new(bytes: u64) -> Result<Self, WalError> {
        if bytes.is_power_of_two() && (1 << 20..=1 << 30).contains(&bytes) {
            Ok(SegmentSize(bytes))
        } else {
            Err(WalError::BadSegmentSize(bytes))
        }
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Segments per "xlogid" (the middle 8 hex digits of a file name).
    fn per_id(self) -> u64 {
        0x1_0000_0000 / self.0
    }
}

impl Default for SegmentSize {
    fn default() -> Self {
        SegmentSize(DEFAULT_SEGMENT_BYTES)
    }
}

/// One WAL segment file of one timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub timeline: u32,
    /// The segment's number: its first byte is at `number * segment size`.
    pub number: u64,
}

impl Segment {
    /// The segment that holds `lsn`.
    pub fn holding(timeline: u32, lsn: Lsn, size: SegmentSize) -> Self {
        Segment { timeline, number: lsn.0 / size.bytes() }
    }

    /// Where the segment starts.
    pub fn start(self, size: SegmentSize) -> Lsn {
        Lsn(self.number * size.bytes())
    }

    /// Its file name, as in `pg_wal/`: `000000010000000000000001`.
    pub fn file_name(self, size: SegmentSize) -> String {
        format!("{:08X}{:08X}{:08X}", self.timeline, self.number / size.per_id(), self.number % size.per_id())
    }

    /// The segment a file name names (a `.partial` suffix is not part of it).
    pub fn parse(name: &str, size: SegmentSize) -> Result<Self, WalError> {
        let bad = || WalError::BadSegmentName(name.to_string());
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let field = |r: std::ops::Range<usize>| u64::from_str_radix(&name[r], 16).map_err(|_| bad());
        let (timeline, id, seg) = (field(0..8)?, field(8..16)?, field(16..24)?);
        if seg >= size.per_id() || timeline == 0 {
            return Err(bad());
        }
        Ok(Segment { timeline: timeline as u32, number: id * size.per_id() + seg })
    }
}

/// A timeline's history file name: `00000002.history`.
pub fn history_file_name(timeline: u32) -> String {
    format!("{timeline:08X}.history")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_and_print_as_postgresql_shows_them() {
        let lsn: Lsn = "16/B374D848".parse().expect("valid");
        assert_eq!(lsn, Lsn(0x16_B374_D848));
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert!("0/3000060".parse::<Lsn>().is_ok());
        for bad in ["", "16", "16/", "/1", "g/1", "1/123456789", "1/2/3", "-1/0", "+1/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn segment_names_are_those_postgresql_writes_for_any_segment_size() {
        let size = SegmentSize::default();
        let lsn: Lsn = "1/2C000028".parse().expect("valid");
        let seg = Segment::holding(2, lsn, size);
        // SELECT pg_walfile_name('1/2C000028') on timeline 2, 16 MiB segments.
        assert_eq!(seg.file_name(size), "00000002000000010000002C");
        assert_eq!(seg.start(size), "1/2C000000".parse().expect("valid"));
        assert_eq!(Segment::parse("00000002000000010000002C", size), Ok(seg));
        // 64 MiB segments: 64 per xlogid; 1/2C000028 is in segment 0xB of id 1.
        let big = SegmentSize::new(64 << 20).expect("valid");
        let seg = Segment::holding(1, lsn, big);
        assert_eq!(seg.file_name(big), "00000001000000010000000B");
        assert_eq!(Segment::parse(&seg.file_name(big), big), Ok(seg));
        assert!(Segment::parse("000000010000000100000040", big).is_err(), "beyond the segments of an id");
        for bad in ["00000001000000010000002", "0000000100000001000000ZZ", "000000000000000100000001", "00000001.history"] {
            assert!(Segment::parse(bad, size).is_err(), "{bad:?} accepted");
        }
        assert!(SegmentSize::new(3 << 20).is_err() && SegmentSize::new(512 << 10).is_err());
        assert_eq!(history_file_name(10), "0000000A.history");
    }
}
