//! Where archived WAL lives in a bucket, and what the files pg_receivewal
//! writes are. Under `<prefix>/<system id>/`:
//!
//! - `<TL>/<segment>`: a whole segment;
//! - `<TL>/<segment>.chunks/<offset>`: a chunk of a segment being written,
//!   its bytes from `offset` (8 hex digits) on; chunks may overlap, and a
//!   later one holds the same bytes as an earlier one where they do;
//! - `<TL>/<segment>.partial`: the last, partial segment of a timeline that
//!   ended (after a failover), as PostgreSQL itself archives it;
//! - `<TL>.history`: a timeline's history file;
//! - `wal.json`: the system id and segment size.
//!
//! No key is the prefix of another key's folder, which S3 allows but
//! file-backed stores (MinIO, s3s-fs) refuse.
//!
//! Every object is `age(zstd(bytes))`.

use drc_model::wal::{Segment, SegmentSize};

/// A database's WAL in a bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    root: String,
}

impl Layout {
    pub fn new(prefix: &str, system_id: &str) -> Self {
        Layout { root: format!("{}/{system_id}", prefix.trim_end_matches('/')) }
    }

    /// The layout under `root` (`<prefix>/<system id>`).
    pub fn at(root: &str) -> Self {
        Layout { root: root.trim_end_matches('/').to_string() }
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn segment(&self, name: &str) -> String {
        format!("{}/{}/{name}", self.root, &name[..8.min(name.len())])
    }

    /// The prefix every chunk of segment `name` shares.
    pub fn chunks(&self, name: &str) -> String {
        format!("{}.chunks/", self.segment(name))
    }

    pub fn chunk(&self, name: &str, offset: u64) -> String {
        format!("{}{offset:08x}", self.chunks(name))
    }

    pub fn partial(&self, name: &str) -> String {
        format!("{}.partial", self.segment(name))
    }

    pub fn history(&self, name: &str) -> String {
        format!("{}/{name}", self.root)
    }

    pub fn meta(&self) -> String {
        format!("{}/wal.json", self.root)
    }
}

/// The offset of a chunk from its key.
pub fn chunk_offset(key: &str) -> Option<u64> {
    let last = key.rsplit('/').next()?;
    (last.len() == 8).then(|| u64::from_str_radix(last, 16).ok()).flatten()
}

/// A file in pg_receivewal's directory.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Local {
    /// A whole segment (renamed from `.partial` once complete).
    Segment(String),
    /// The segment being written, or the last one of a timeline that ended.
    Partial(String),
    /// A timeline history file (`00000002.history`).
    History(String),
}

impl Local {
    pub fn of(file: &str) -> Option<Local> {
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase());
        if hex(file, 24) {
            Some(Local::Segment(file.to_string()))
        } else if let Some(name) = file.strip_suffix(".partial").filter(|n| hex(n, 24)) {
            Some(Local::Partial(name.to_string()))
        } else if file.strip_suffix(".history").is_some_and(|n| hex(n, 8)) {
            Some(Local::History(file.to_string()))
        } else {
            None
        }
    }
}

/// Where segment `name` starts (an LSN as an integer), as PostgreSQL names
/// segments of `size` bytes; none for another name or size.
pub fn segment_start(name: &str, size: u64) -> Option<u64> {
    let size = SegmentSize::new(size).ok()?;
    Some(Segment::parse(name, size).ok()?.start(size).0)
}

/// The timeline a segment name starts with.
pub fn timeline_of(name: &str) -> u32 {
    name.get(..8).and_then(|t| u32::from_str_radix(t, 16).ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_timeline_segment_and_chunk_offset() {
        let l = Layout::new("drc-wal/app-pg/", "7312");
        let seg = "000000020000000000000005";
        assert_eq!(l.segment(seg), "drc-wal/app-pg/7312/00000002/000000020000000000000005");
        assert_eq!(l.chunk(seg, 0x2000), "drc-wal/app-pg/7312/00000002/000000020000000000000005.chunks/00002000");
        assert_eq!(chunk_offset(&l.chunk(seg, 0x2000)), Some(0x2000));
        assert_eq!(chunk_offset(&l.segment(seg)), None, "a whole segment is no chunk");
        assert_eq!(l.partial(seg), "drc-wal/app-pg/7312/00000002/000000020000000000000005.partial");
        assert_eq!(l.history("00000002.history"), "drc-wal/app-pg/7312/00000002.history");
        assert_eq!(timeline_of(seg), 2);
        assert_eq!(segment_start(seg, 16 << 20), Some(5 * (16 << 20)));
        assert_eq!(segment_start("000000010000000100000002", 16 << 20), Some((256 + 2) * (16 << 20)));
        assert_eq!(segment_start("00000002.history", 16 << 20), None);
    }

    #[test]
    fn only_the_files_pg_receivewal_writes_are_recognised() {
        assert_eq!(Local::of("000000010000000000000003"), Some(Local::Segment("000000010000000000000003".into())));
        assert_eq!(Local::of("000000010000000000000003.partial"), Some(Local::Partial("000000010000000000000003".into())));
        assert_eq!(Local::of("00000002.history"), Some(Local::History("00000002.history".into())));
        for other in ["00000001000000000000000g", "000000010000000000000003.gz", "x.partial", "archive_status", "0000000a0000000000000003"]
        {
            assert_eq!(Local::of(other), None, "{other}");
        }
    }
}
