//! Leader placement: the Raft leadership is kept out of the region that
//! holds the primaries, so that losing that region costs a failover but no
//! election on top of it.

use std::collections::{BTreeMap, BTreeSet};

use drc_model::{Decision, Millis};

use super::Situation;

/// After a decision finished, placement waits this long before it moves.
pub const PLACEMENT_CALM: Millis = 3_000;

/// The coordinators as placement sees them.
pub struct Coordinators<'a> {
    /// This node, the leader.
    pub me: u64,
    pub voters: &'a [u64],
    /// Each coordinator's region (those without one are never chosen).
    pub regions: &'a BTreeMap<u64, String>,
}

/// The voters the leadership should move to, best first, or none.
///
/// It moves only a whole system at rest: every member fresh and reachable
/// (with a member down the move would add a leadership change, and the
/// agents' reconnection, to a degraded system, for a gain it may not have),
/// no decision in progress, none finished within [`PLACEMENT_CALM`], no job
/// running (a leadership change interrupts it), and only when this node's
/// region holds a primary; then to voters in regions holding none.
pub fn placement_targets(w: &Situation, history: &BTreeMap<u64, Decision>, jobs_running: bool, c: &Coordinators) -> Vec<u64> {
    let Some(mine) = c.regions.get(&c.me) else { return Vec::new() };
    let busy: BTreeSet<&str> = w.records.values().filter_map(|r| w.topology.members.get(&r.primary)).map(|m| m.region.as_str()).collect();
    if !busy.contains(mine.as_str()) || jobs_running {
        return Vec::new();
    }
    let settled = w.records.values().all(|r| r.in_progress.is_none())
        && history.values().all(|d| d.finished_at.is_some_and(|f| w.now.saturating_sub(f) >= PLACEMENT_CALM));
    let whole = w.topology.members.keys().all(|id| w.observations.get(id).is_some_and(|o| o.fresh && o.reachable));
    if !settled || !whole {
        return Vec::new();
    }
    c.voters.iter().copied().filter(|id| *id != c.me && c.regions.get(id).is_some_and(|r| !busy.contains(r.as_str()))).collect()
}

#[cfg(test)]
mod tests {
    use drc_model::topology::parse::parse_topology;
    use drc_model::ClusterRecord;

    use super::*;
    use crate::core::Observation;

    #[test]
    fn the_leadership_leaves_the_primaries_region_only_when_the_whole_system_is_at_rest() {
        let t = parse_topology(
            "[regions.a]\n[regions.b]\n[regions.c]\n[clusters.pg]\nkind='postgres'\n\
             [[members]]\nid='pg-a'\ncluster='pg'\nregion='a'\naddress='h:1'\n[[members]]\nid='pg-b'\ncluster='pg'\nregion='b'\naddress='h:2'\n",
        )
        .expect("valid");
        let mut records = BTreeMap::from([("pg".to_string(), ClusterRecord { epoch: 1, primary: "pg-a".into(), ..Default::default() })]);
        let healthy = Observation { fresh: true, reachable: true, ..Default::default() };
        let mut obs = BTreeMap::from([("pg-a".to_string(), healthy.clone()), ("pg-b".to_string(), healthy)]);
        let regions = BTreeMap::from([(1, "a".to_string()), (2, "b".to_string()), (3, "c".to_string())]);
        let voters = [1, 2, 3];
        let history = BTreeMap::new();
        let targets = |records: &BTreeMap<String, ClusterRecord>, obs: &BTreeMap<String, Observation>, me: u64, jobs: bool| {
            let w = Situation { now: 10_000, mono: 10_000, topology: &t, records, global_paused: false, observations: obs };
            placement_targets(&w, &history, jobs, &Coordinators { me, voters: &voters, regions: &regions })
        };
        assert_eq!(targets(&records, &obs, 1, false), vec![2, 3], "out of region a, which holds the primary");
        assert_eq!(targets(&records, &obs, 2, false), Vec::<u64>::new(), "region b holds no primary: stay");
        assert!(targets(&records, &obs, 1, true).is_empty(), "a running job is not interrupted");
        obs.get_mut("pg-b").expect("pg-b").fresh = false;
        assert!(targets(&records, &obs, 1, false).is_empty(), "a member is down: no move");
        obs.get_mut("pg-b").expect("pg-b").fresh = true;
        records.get_mut("pg").expect("pg").in_progress = Some(4);
        assert!(targets(&records, &obs, 1, false).is_empty(), "a decision is in progress");
    }
}
