//! Bounded retention of drc's own records (decisions, audit entries, job
//! records), so the replicated state and its snapshots cannot grow without
//! bound. Deterministic: "now" is the time carried by the command being
//! applied, never a clock.

use std::collections::BTreeMap;

use drc_model::Millis;
use serde::{Deserialize, Serialize};

/// The last id given to each kind of record. Ids are never reused, even
/// after retention dropped the newest records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastIds {
    pub decision: u64,
    pub backup: u64,
    pub recovery_test: u64,
    pub audit: u64,
    #[serde(default)]
    pub restore: u64,
}

impl LastIds {
    /// Raises each counter to the newest id its map holds: states written
    /// before the counters existed have them at 0.
    pub fn catch_up<A, B, C, D>(
        &mut self,
        decisions: &BTreeMap<u64, A>,
        backups: &BTreeMap<u64, B>,
        tests: &BTreeMap<u64, C>,
        audit: &BTreeMap<u64, D>,
    ) {
        self.decision = self.decision.max(newest(decisions));
        self.backup = self.backup.max(newest(backups));
        self.recovery_test = self.recovery_test.max(newest(tests));
        self.audit = self.audit.max(newest(audit));
    }
}

fn newest<T>(m: &BTreeMap<u64, T>) -> u64 {
    m.keys().next_back().copied().unwrap_or(0)
}

/// The next id after `last`, which it records.
pub fn next_id(last: &mut u64) -> u64 {
    *last += 1;
    *last
}

/// Drops finished records (those `finished` gives a time) beyond the newest
/// `keep` of them, and those finished more than `max_age` before `now` (0:
/// no age check). Records still running are never dropped nor counted.
pub fn prune<T>(map: &mut BTreeMap<u64, T>, keep: u32, max_age: Millis, now: Millis, finished: impl Fn(&T) -> Option<Millis>) {
    let done: Vec<(u64, Millis)> = map.iter().filter_map(|(id, r)| finished(r).map(|at| (*id, at))).collect();
    let excess = done.len().saturating_sub(keep as usize);
    for (i, (id, at)) in done.into_iter().enumerate() {
        let too_old = now > 0 && now.saturating_sub(at) > max_age;
        if i < excess || too_old {
            map.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_finished_records_and_every_running_one() {
        // id -> finished at (None: running)
        let mut m: BTreeMap<u64, Option<Millis>> = (1..=6).map(|i| (i, Some(i * 100))).collect();
        m.insert(2, None);
        prune(&mut m, 3, 10_000, 700, |r| *r);
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![2, 4, 5, 6], "the running record is neither dropped nor counted");
        prune(&mut m, 3, 250, 700, |r| *r);
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![2, 5, 6], "finished more than 250 ms before 700");
        prune(&mut m, 3, 1, 0, |r| *r);
        assert_eq!(m.len(), 3, "without a time, only the count applies");
    }

    #[test]
    fn ids_are_never_reused_after_the_newest_record_is_dropped() {
        let mut ids = LastIds::default();
        let decisions: BTreeMap<u64, ()> = BTreeMap::from([(7, ())]);
        let none: BTreeMap<u64, ()> = BTreeMap::new();
        ids.catch_up(&decisions, &none, &none, &none);
        assert_eq!(next_id(&mut ids.decision), 8);
        ids.catch_up(&none, &none, &none, &none);
        assert_eq!(next_id(&mut ids.decision), 9, "an emptied map does not lower the counter");
    }
}
