//! Why nothing happens to a cluster: a closed set of reasons, so that
//! alerts and dashboards can tell a healthy cluster from one whose failed
//! primary nothing will replace without help. The text beside it says the
//! rest (who, how long).

/// What a cluster waits for; its name is the `reason` label of
/// `drc_failover_waiting`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WaitKind {
    /// No member has reported as the primary yet.
    NoPrimarySeen,
    /// Several members claim to be the primary.
    ManyPrimaries,
    /// A decision is being carried out.
    DecisionInProgress,
    /// The primary's agent fenced it; a new lease brings it back.
    FencedPrimary,
    /// The primary looks down to its own agent, but another region reaches it.
    StillReachable,
    /// The primary looks down, but no other region can confirm it.
    Unconfirmed,
    /// The failure is being confirmed over the detection window.
    Confirming,
    /// A new leader collects fresh samples before deciding.
    NewLeader,
    /// The old primary's lease has not run out yet.
    LeaseRunningOut,
    /// The primary is down, but automatic failover is paused.
    Paused,
    /// The primary is down, but the anti-flap block holds.
    AntiFlap,
    /// The primary is down; newer samples of the candidates are awaited.
    AwaitingSamples,
    /// The primary is down, but no member can be promoted.
    NoCandidate,
    /// The cluster's failover group moved; no member there can take over yet.
    GroupWaiting,
}

impl WaitKind {
    pub const ALL: [WaitKind; 14] = [
        WaitKind::NoPrimarySeen,
        WaitKind::ManyPrimaries,
        WaitKind::DecisionInProgress,
        WaitKind::FencedPrimary,
        WaitKind::StillReachable,
        WaitKind::Unconfirmed,
        WaitKind::Confirming,
        WaitKind::NewLeader,
        WaitKind::LeaseRunningOut,
        WaitKind::Paused,
        WaitKind::AntiFlap,
        WaitKind::AwaitingSamples,
        WaitKind::NoCandidate,
        WaitKind::GroupWaiting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WaitKind::NoPrimarySeen => "no_primary_seen",
            WaitKind::ManyPrimaries => "many_primaries",
            WaitKind::DecisionInProgress => "decision_in_progress",
            WaitKind::FencedPrimary => "fenced_primary",
            WaitKind::StillReachable => "still_reachable",
            WaitKind::Unconfirmed => "unconfirmed",
            WaitKind::Confirming => "confirming",
            WaitKind::NewLeader => "new_leader",
            WaitKind::LeaseRunningOut => "lease_running_out",
            WaitKind::Paused => "paused",
            WaitKind::AntiFlap => "anti_flap",
            WaitKind::AwaitingSamples => "awaiting_samples",
            WaitKind::NoCandidate => "no_candidate",
            WaitKind::GroupWaiting => "group_waiting",
        }
    }

    /// Its text counts down to an instant and changes on every tick: only
    /// its start is news.
    pub fn counts_down(self) -> bool {
        matches!(self, WaitKind::Confirming | WaitKind::LeaseRunningOut | WaitKind::AntiFlap)
    }

    /// The primary is down and nothing will replace it until someone acts
    /// (or the block ends): what the "failover blocked" alert fires on.
    pub fn blocks_failover(self) -> bool {
        matches!(self, WaitKind::Paused | WaitKind::AntiFlap | WaitKind::NoCandidate | WaitKind::Unconfirmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_label() {
        let names: std::collections::BTreeSet<_> = WaitKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), WaitKind::ALL.len());
    }
}
