//! Synchronous replication: what a PostgreSQL primary's commits wait for.

use drc_model::topology::ClusterKind;
use drc_model::Role;

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
/// cluster, which has no such setting). The primary's agent waits for no
/// more of them than it sees streaming under those names itself.
///
/// With `synchronous_replicas = n`, every replica that may be promoted
/// automatically is listed, and a commit waits for `n` of them: a replica
/// that stops streaming is not waited for while enough others stream, so
/// the setting changes only when fewer than `n` stream. Then commits wait
/// for as many as stream, and when none does, for none: writes go on
/// asynchronously, with the RPO budget bounding what a failover may lose,
/// rather than stopping until a replica comes back (PostgreSQL would wait
/// for ever). Every replica is a candidate, and the most advanced one is
/// promoted, so while a replica holding each acknowledged commit is
/// reachable and within the RPO budget, no acknowledged commit is lost.
pub fn sync_standbys(w: &Situation, cluster: &str, primary: &str, members: &[(&String, Observation)]) -> Option<SyncStandbys> {
    let c = w.topology.clusters.get(cluster)?;
    if c.kind != ClusterKind::Postgres {
        return None;
    }
    let wanted = c.policy.synchronous_replicas as usize;
    if wanted == 0 {
        // Asynchronous (the default): nothing to look at on every renewal.
        return Some(SyncStandbys::default());
    }
    let listed: Vec<&(&String, Observation)> = members
        .iter()
        .filter(|(id, _)| id.as_str() != primary && w.topology.members.get(id.as_str()).is_some_and(|m| m.priority > 0))
        .collect();
    let streaming = listed.iter().filter(|(_, o)| o.fresh && o.role == Role::Replica && o.streaming).count();
    let count = wanted.min(streaming);
    if count == 0 {
        // The agent clears a setting of drc's making (it knows it by its
        // shape) and leaves an operator's own alone.
        return Some(SyncStandbys::default());
    }
    Some(SyncStandbys { count, names: listed.iter().map(|(id, _)| id.to_string()).collect() })
}
