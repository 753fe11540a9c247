//! One step of a decision: what it does, to which member, and how it ended.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Millis;

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
