//! What Raft remembers about one database cluster: its primary, epoch,
//! dataset lineage and failover state.

use serde::{Deserialize, Serialize};

use crate::time::Millis;

/// What Raft remembers about one database cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// Bumped by every change of primary, before any command is sent.
    pub epoch: u64,
    /// The member that is the primary in this epoch ("" until adopted).
    pub primary: String,
    /// System identifier / replication id of the cluster's data, as adopted.
    pub dataset: String,
    /// Operator pause (maintenance), besides the topology's `policy.paused`.
    pub paused: bool,
    /// Anti-flap: no automatic failover before this time.
    pub blocked_until: Millis,
    /// The decision being carried out, if any (its id in the history).
    pub in_progress: Option<u64>,
    /// When the primary last changed by a decision (0: adopted, never changed).
    #[serde(default)]
    pub changed_at: Millis,
    /// The anti-flap block before the decision in progress: restored when
    /// that decision fails before promoting anyone, since nothing flapped.
    #[serde(default)]
    pub blocked_before: Millis,
    /// Earlier dataset ids of this cluster, oldest first: a Redis promotion
    /// starts a new replication id, and members still on an older one hold
    /// the same data.
    #[serde(default)]
    pub lineage: Vec<String>,
    /// The highest position of the current primary known when a decision
    /// was made, kept until someone else is promoted: a decision that
    /// promoted nobody, followed by a leader change, must not forget how far
    /// the primary had got, or a later failover would measure lag against
    /// too little and promote beyond the RPO budget.
    #[serde(default)]
    pub known_position: u64,
    /// When the current primary's promotion was recorded: it holds a lease
    /// of `promote_ttl` from about then, which a new leader must honour too.
    #[serde(default)]
    pub promoted_at: Millis,
}

impl ClusterRecord {
    /// Whether a member reporting dataset `id` (and `previous` before its
    /// last promotion) holds this cluster's data. Unknown ids say nothing.
    pub fn holds(&self, id: &str, previous: &str) -> bool {
        if self.dataset.is_empty() || id.is_empty() {
            return true;
        }
        let ours = |d: &str| !d.is_empty() && (d == self.dataset || self.lineage.iter().any(|l| l == d));
        ours(id) || ours(previous)
    }

    /// A promotion that started a new dataset id (Redis) makes it current.
    pub fn advance_dataset(&mut self, id: &str) {
        if id.is_empty() || id == self.dataset {
            return;
        }
        if !self.dataset.is_empty() && !self.lineage.contains(&self.dataset) {
            self.lineage.push(std::mem::take(&mut self.dataset));
        }
        self.dataset = id.to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::ClusterRecord;

    #[test]
    fn a_redis_promotion_moves_the_dataset_on_without_disowning_members_of_the_old_id() {
        let mut rec = ClusterRecord { dataset: "X".into(), ..Default::default() };
        assert!(rec.holds("X", ""));
        assert!(rec.holds("X2", "X"), "the promoted member: new replid, the old one as replid2");
        assert!(!rec.holds("Y", ""), "another cluster's member");
        rec.advance_dataset("X2");
        assert_eq!((rec.dataset.as_str(), rec.lineage.as_slice()), ("X2", &["X".to_string()][..]));
        assert!(rec.holds("X", ""), "a member still on the older id");
        assert!(rec.holds("X3", "X2"));
        assert!(!rec.holds("Y", "Z"));
        rec.advance_dataset("X2");
        assert_eq!(rec.lineage.len(), 1, "idempotent");
    }
}
