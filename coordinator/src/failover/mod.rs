//! Automated failover: the replicated records it keeps, the pure decision
//! core ([`core`]) and the executor that carries decisions out on the leader
//! ([`executor`]).
//!
//! The split follows DESIGN.md: the core sees observations and time as
//! values and answers with actions; it is covered by seeded simulations
//! (`sim`). Everything that touches the network or Raft is in the executor.

pub mod core;
pub mod executor;
#[cfg(test)]
mod sim;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch on the leader's clock. Replicated
/// deadlines (anti-flap blocks) use it because the next leader must read them.
pub type Millis = u64;

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

/// Why a decision was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Trigger {
    /// The leader detected the failure itself.
    Automatic,
    /// An operator asked; `force` overrode the RPO gate.
    Operator { force: bool },
    /// The cluster follows its failover group to another region.
    Group { leader_cluster: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// Unplanned: the old primary is gone or fenced.
    Failover,
    /// Planned: the old primary hands over without losing a write.
    Switchover,
}

/// One member as the leader saw it when it decided.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEvidence {
    pub id: String,
    pub region: String,
    pub fresh: bool,
    pub reachable: bool,
    pub role: String,
    pub position: u64,
    pub lag_bytes: u64,
    pub lag_ms: u64,
    /// Whether this member's agent could reach the old primary.
    pub primary_reachable: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Done,
    Failed,
    /// Not needed or not possible (e.g. fencing an unreachable old primary
    /// whose lease has expired); the reason is in `error`.
    Skipped,
}

/// One command of a decision, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// "fence", "catch_up", "promote", "repoint", "rejoin", "publish".
    pub action: String,
    pub member: String,
    pub state: StepState,
    #[serde(default)]
    pub started: Millis,
    #[serde(default)]
    pub finished: Millis,
    #[serde(default)]
    pub error: String,
    /// Extra arguments (the new primary's address, the target position...).
    #[serde(default)]
    pub args: BTreeMap<String, String>,
}

/// A change of primary, with everything that justified it. Kept forever in
/// the history; its steps are updated as the executor carries them out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub id: u64,
    pub cluster: String,
    pub kind: DecisionKind,
    pub trigger: Trigger,
    /// The epoch this decision starts.
    pub epoch: u64,
    pub from: String,
    pub to: String,
    /// One line: what was seen and why this candidate.
    pub reason: String,
    pub evidence: Vec<MemberEvidence>,
    /// When the failure was first seen, when it was decided.
    pub detected_at: Millis,
    pub decided_at: Millis,
    pub steps: Vec<Step>,
    /// Set once every step is done or the decision was abandoned.
    pub finished_at: Option<Millis>,
    #[serde(default)]
    pub outcome: String,
    /// The old primary's highest known position when this was decided.
    #[serde(default)]
    pub known_position: u64,
}

impl Step {
    /// Repointing a replica and rejoining the old primary wait for their
    /// member to be reachable; they do not hold the cluster's next decision.
    /// A step not started yet.
    pub fn pending(action: &str, member: &str) -> Step {
        Step {
            action: action.into(),
            member: member.into(),
            state: StepState::Pending,
            started: 0,
            finished: 0,
            error: String::new(),
            args: BTreeMap::new(),
        }
    }

    /// Steps that do not hold up the promotion. A fence decided only after
    /// the old primary's lease ran out is one of them: by then its agent has
    /// fenced it, or every other member vouches for it and the candidate
    /// refuses the promotion; the fence is then a second line, not the first.
    pub fn is_background(&self) -> bool {
        matches!(self.action.as_str(), "repoint" | "rejoin" | "publish")
            || (self.action == "fence" && self.args.contains_key("lease_expired_at"))
    }

    /// Until when the old primary of a decision made at `decided_at` may
    /// still hold a lease (drift margin included), as its fence step
    /// records it; decisions recorded before that was written fall back on
    /// `decided_at + lease + margin`.
    pub fn lease_end(&self, decided_at: Millis, lease: Millis, drift_margin: Millis) -> Millis {
        ["lease_expired_at", "lease_ends_at"]
            .iter()
            .find_map(|k| self.args.get(*k).and_then(|t| t.parse().ok()))
            .unwrap_or(decided_at + lease + drift_margin)
    }
}

impl Decision {
    pub fn next_pending(&self) -> Option<usize> {
        self.steps.iter().position(|s| s.state == StepState::Pending)
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
