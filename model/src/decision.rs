//! A change of primary as the history keeps it: why it was taken, the
//! evidence, and its steps.

use serde::{Deserialize, Serialize};

use crate::role::Role;
use crate::step::Step;
use crate::time::Millis;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// Unplanned: the old primary is gone or fenced.
    Failover,
    /// Planned: the old primary hands over without losing a write.
    Switchover,
}

impl DecisionKind {
    pub const ALL: [DecisionKind; 2] = [DecisionKind::Failover, DecisionKind::Switchover];

    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Failover => "failover",
            DecisionKind::Switchover => "switchover",
        }
    }
}

/// One member as the leader saw it when it decided.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEvidence {
    pub id: String,
    pub region: String,
    pub fresh: bool,
    pub reachable: bool,
    pub role: Role,
    pub position: u64,
    pub lag_bytes: u64,
    pub lag_ms: u64,
    /// Whether this member's agent could reach the old primary.
    pub primary_reachable: bool,
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
