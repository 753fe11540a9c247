//! The WAL archive's catalog, as Raft keeps it: for each archived database
//! (its key in the bucket, `<prefix>/<system id>`), which WAL of which
//! timeline is there. Ranges that touch merge; a space between two ranges
//! of one timeline is a gap a restore cannot cross.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Millis;
use crate::wal::Lsn;

/// WAL from `begin` up to `end` (exclusive) is in the bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalRange {
    pub begin: Lsn,
    pub end: Lsn,
}

/// One database's archived WAL.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalArchive {
    pub cluster: String,
    pub destination: String,
    pub system_id: String,
    /// Per timeline, disjoint ranges in order.
    pub timelines: BTreeMap<u32, Vec<WalRange>>,
    /// When the archive last grew (leader's wall clock).
    pub updated_at: Millis,
}

/// A hole in the archive: WAL of `timeline` from `from` to `to` is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    pub timeline: u32,
    pub from: Lsn,
    pub to: Lsn,
}

impl WalArchive {
    /// The catalog's key of an archive: a database's WAL in one bucket (it
    /// moves to another when a failover brings the primary into its region).
    pub fn catalog_key(destination: &str, key: &str) -> String {
        format!("{destination}:{key}")
    }

    /// Records that `range` of `timeline` is archived; false when the
    /// catalog knew it already.
    pub fn record(&mut self, timeline: u32, range: WalRange) -> bool {
        if range.end <= range.begin {
            return false;
        }
        let ranges = self.timelines.entry(timeline).or_default();
        if ranges.iter().any(|r| r.begin <= range.begin && range.end <= r.end) {
            return false;
        }
        let mut merged = range;
        ranges.retain(|r| {
            let touches = r.begin <= merged.end && merged.begin <= r.end;
            if touches {
                merged = WalRange { begin: r.begin.min(merged.begin), end: r.end.max(merged.end) };
            }
            !touches
        });
        let at = ranges.iter().position(|r| r.begin > merged.begin).unwrap_or(ranges.len());
        ranges.insert(at, merged);
        true
    }

    /// Forgets what lies before `from`, on every timeline (retention
    /// deleted it); false when nothing was.
    pub fn forget_before(&mut self, from: Lsn) -> bool {
        let mut changed = false;
        for ranges in self.timelines.values_mut() {
            ranges.retain_mut(|r| {
                if r.end <= from {
                    changed = true;
                    return false;
                }
                if r.begin < from {
                    r.begin = from;
                    changed = true;
                }
                true
            });
        }
        self.timelines.retain(|_, ranges| !ranges.is_empty());
        changed
    }

    /// Where the archive begins: its oldest range's start.
    pub fn begins(&self) -> Option<Lsn> {
        self.timelines.values().filter_map(|r| r.first()).map(|r| r.begin).min()
    }

    /// The newest timeline and where its archive ends.
    pub fn reach(&self) -> Option<(u32, Lsn)> {
        self.timelines.iter().next_back().and_then(|(tl, ranges)| Some((*tl, ranges.last()?.end)))
    }

    /// The holes between ranges of each timeline.
    pub fn gaps(&self) -> Vec<Gap> {
        let mut gaps = Vec::new();
        for (tl, ranges) in &self.timelines {
            for pair in ranges.windows(2) {
                gaps.push(Gap { timeline: *tl, from: pair[0].end, to: pair[1].begin });
            }
        }
        gaps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(begin: u64, end: u64) -> WalRange {
        WalRange { begin: Lsn(begin), end: Lsn(end) }
    }

    #[test]
    fn ranges_that_touch_merge_and_a_space_between_them_is_a_gap() {
        let mut a = WalArchive::default();
        assert!(a.record(1, r(100, 200)));
        assert!(a.record(1, r(200, 300)), "touching");
        assert!(!a.record(1, r(150, 250)), "known already");
        assert!(a.record(1, r(400, 500)));
        assert_eq!(a.timelines[&1], vec![r(100, 300), r(400, 500)]);
        assert_eq!(a.gaps(), vec![Gap { timeline: 1, from: Lsn(300), to: Lsn(400) }]);
        assert!(a.record(1, r(250, 450)), "fills the gap");
        assert_eq!(a.timelines[&1], vec![r(100, 500)]);
        assert!(a.gaps().is_empty());
        assert!(a.record(2, r(480, 600)));
        assert_eq!(a.reach(), Some((2, Lsn(600))), "the newest timeline");
        assert!(!a.record(2, r(700, 700)), "an empty range says nothing");
    }

    #[test]
    fn retention_forgets_whole_ranges_before_the_horizon_and_trims_the_one_across_it() {
        let mut a = WalArchive::default();
        a.record(1, r(100, 200));
        a.record(1, r(300, 500));
        a.record(2, r(500, 700));
        assert_eq!(a.begins(), Some(Lsn(100)));
        assert!(a.forget_before(Lsn(400)));
        assert_eq!(a.timelines[&1], vec![r(400, 500)]);
        assert_eq!(a.timelines[&2], vec![r(500, 700)]);
        assert!(a.gaps().is_empty(), "the gap before the horizon went with it");
        assert!(!a.forget_before(Lsn(400)), "nothing more to forget");
        assert!(a.forget_before(Lsn(600)));
        assert!(!a.timelines.contains_key(&1), "an emptied timeline goes");
        assert_eq!(a.begins(), Some(Lsn(600)));
    }

    #[test]
    fn a_range_recorded_before_an_earlier_one_keeps_the_order() {
        let mut a = WalArchive::default();
        a.record(1, r(500, 600));
        a.record(1, r(100, 200));
        a.record(1, r(300, 400));
        assert_eq!(a.timelines[&1], vec![r(100, 200), r(300, 400), r(500, 600)]);
        assert_eq!(a.gaps().len(), 2);
    }
}
