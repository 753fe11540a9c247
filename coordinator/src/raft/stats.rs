//! What this node counts of its own Raft work for `/metrics`: elections it
//! started, leaders it saw, how long proposals took to apply, how many wait.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Shared by the node task (which counts) and its handles (which time
/// proposals); the clones a registry holds read the same atomics.
#[derive(Clone, Debug)]
pub struct RaftStats {
    pub elections: Counter,
    pub leader_changes: Counter,
    pub commit_seconds: Histogram,
    pub in_flight: Gauge,
}

impl Default for RaftStats {
    fn default() -> Self {
        RaftStats {
            elections: Counter::default(),
            leader_changes: Counter::default(),
            commit_seconds: Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            in_flight: Gauge::default(),
        }
    }
}

impl RaftStats {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "raft_elections",
            "Elections this node started (as a candidate, after a successful pre-vote)",
            self.elections.clone(),
        );
        registry.register("raft_leader_changes", "Times this node saw the leader change", self.leader_changes.clone());
        registry.register(
            "raft_commit_seconds",
            "From proposing a command on this node until it was applied (committed by a quorum)",
            self.commit_seconds.clone(),
        );
        registry.register("raft_proposals_in_flight", "Proposals this node made that are not applied yet", self.in_flight.clone());
    }
}
