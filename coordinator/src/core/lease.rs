//! Lease timing: how long a primary may serve without a renewal, and how
//! a decision records until when the old primary may still hold one.

use drc_model::{Decision, Millis, StepAction};

use super::sync::sync_standbys;
use super::{Action, Observation, Situation};

/// Lease timing. The agent of a primary fences it when `lease` passes
/// without a renewal; the leader replaces an unreachable primary only
/// `lease + drift_margin` after its last renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    pub lease: Millis,
    pub drift_margin: Millis,
    /// How long a deposed leader may go on renewing leases after its
    /// successor was elected; a new leader assumes every lease was renewed
    /// that long after it took over. The coordinator renews only while a
    /// quorum has confirmed its leadership recently enough that no successor
    /// can have been elected yet (`NodeHandle::may_renew`), so it runs with
    /// none. Without that rule it would be one election timeout: Raft
    /// (check-quorum) steps a leader down at most two election timeouts after
    /// it lost its quorum, and a successor is elected no sooner than one
    /// after that loss.
    pub handover: Millis,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig { lease: 1_500, drift_margin: 150, handover: 0 }
    }
}

impl LeaseConfig {
    /// The lease a promotion grants with it, from the moment the promotion
    /// completes: long enough to cover a leader change and the agents'
    /// reconnection right after it (the new primary cannot be vouched for
    /// before its replicas are repointed, nor ever by an old primary that
    /// died). The agent replaces it with the first renewal that reaches it;
    /// the core, which cannot know when that is, counts on it to its end.
    /// Until a decision finishes, the core assumes such a lease may have
    /// just been granted; anti-flap blocks automatic failover for far longer
    /// anyway, and an operator's failover of a new primary that vanished
    /// right after its promotion waits for it.
    pub fn promote_ttl(&self) -> Millis {
        10 * self.lease
    }

    /// How long a primary its agent fenced for a lapsed lease is offered new
    /// leases to come back (a PostgreSQL restart is a crash recovery) before
    /// it counts as down like any other.
    pub fn restart_grace(&self) -> Millis {
        10 * self.lease
    }
}

/// A renewal of `primary`'s lease, with the synchronous standbys it should
/// wait for.
pub(super) fn lease_action(
    w: &Situation,
    cluster: &str,
    primary: &str,
    epoch: u64,
    ttl: Millis,
    members: &[(&String, Observation)],
) -> Action {
    Action::Lease {
        cluster: cluster.to_string(),
        member: primary.to_string(),
        epoch,
        ttl,
        sync: sync_standbys(w, cluster, primary, members),
    }
}

/// Records on the decision's fence step until when the old primary may
/// still hold a lease (with the drift margin): a fence that cannot reach it
/// is skipped only after that. A promotion's long lease that was never
/// renewed may outlast `decided_at + lease` by far.
pub(super) fn bound_lease(d: &mut Decision, ends_at: Millis) {
    if let Some(fence) = d.steps.iter_mut().find(|s| s.action == StepAction::Fence) {
        fence.args.lease_ends_at = Some(ends_at);
    }
}
