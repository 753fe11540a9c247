//! Synchronous replication: what a PostgreSQL primary's commits wait for.

use drc_model::topology::ClusterKind;

use super::{Observation, Situation};

/// What a PostgreSQL primary's commits wait for: `count` of `names` to
/// have flushed them (`synchronous_standby_names = 'ANY count (names)'`;
/// none when `count` is 0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStandbys {
    pub count: usize,
    pub names: Vec<String>,
}

impl std::fmt::Display for SyncStandbys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&drc_proto::sync_setting(self.count, &self.names))
    }
}

/// What a PostgreSQL cluster's primary should wait for (None: a Redis
/// cluster, which has no such setting).
///
/// With `synchronous_replicas = n`, every replica that may be promoted
/// automatically is listed, and a commit waits for `n` of them. The
/// primary's agent waits for no more of them than it sees streaming in
/// `pg_stat_replication` under those names: a replica that stops streaming
/// is not waited for while enough others stream; with fewer, commits wait
/// for as many as stream, and with none for none, so writes go on
/// asynchronously, the RPO budget bounding what a failover may lose,
/// rather than stopping until a replica comes back (PostgreSQL would wait
/// for ever). Every replica is a candidate, and the most advanced one is
/// promoted, so while a replica holding each acknowledged commit is
/// reachable and within the RPO budget, no acknowledged commit is lost.
///
/// The leader does not lower `n` by what its own samples show: a new
/// leader has no sample of a replica yet, and an agent that restarts sends
/// none for a moment, while the replica streams all along; lowering on
/// that would make commits asynchronous on every leader change.
pub fn sync_standbys(w: &Situation, cluster: &str, primary: &str, members: &[(&String, Observation)]) -> Option<SyncStandbys> {
    let c = w.topology.clusters.get(cluster)?;
    if c.kind != ClusterKind::Postgres {
        return None;
    }
    let wanted = c.policy.synchronous_replicas as usize;
    let names: Vec<String> = members
        .iter()
        .map(|(id, _)| id.to_string())
        .filter(|id| id.as_str() != primary && w.topology.members.get(id.as_str()).is_some_and(|m| m.priority > 0))
        .collect();
    if wanted == 0 || names.is_empty() {
        // Asynchronous (the default), said explicitly so that turning it off
        // takes effect; the agent clears a setting of drc's making (it knows
        // it by its shape) and leaves an operator's own alone.
        return Some(SyncStandbys::default());
    }
    Some(SyncStandbys { count: wanted, names })
}
