//! Choosing whom to promote, and building the decision that does it.

use drc_model::topology::{Policy, Topology};
use drc_model::{ClusterRecord, Decision, DecisionKind, MemberEvidence, Millis, Role, Step, StepAction, Trigger};

use super::{Action, Observation, Situation};

/// The policy's gate, or `None` when the member may be promoted.
pub(super) fn rpo_problem(policy: &Policy, lag_bytes: u64, lag_ms: u64) -> Option<String> {
    let budget_ms = policy.rpo_max_lag_time.as_millis() as u64;
    if lag_bytes > policy.rpo_max_lag_bytes {
        Some(format!("lag {lag_bytes} bytes > RPO budget {} bytes", policy.rpo_max_lag_bytes))
    } else if lag_ms > budget_ms {
        Some(format!("lag {lag_ms} ms > RPO budget {budget_ms} ms"))
    } else {
        None
    }
}

/// The other clusters of `cluster`'s failover groups.
pub(super) fn partners(t: &Topology, cluster: &str) -> Vec<String> {
    let mut out: Vec<String> = t
        .failover_groups
        .values()
        .filter(|g| g.clusters.iter().any(|c| c == cluster))
        .flat_map(|g| g.clusters.iter().filter(|c| *c != cluster).cloned())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Where a failing cluster should go to stay with its group: the region of
/// a partner's primary that is not in the failing region.
pub(super) fn preferred_region(w: &Situation, cluster: &str, failing_region: &str, decided: &[Action]) -> Option<String> {
    let partners = partners(w.topology, cluster);
    // A partner decided in this same tick (a region loss fails the whole
    // group at once) is not in the records yet: its choice comes first.
    let now = decided.iter().filter_map(|a| match a {
        Action::Decide(d) if partners.contains(&d.cluster) => Some(d.to.clone()),
        _ => None,
    });
    let recorded = partners.iter().filter_map(|p| w.records.get(p)).map(|r| r.primary.clone());
    now.chain(recorded).filter_map(|m| w.topology.members.get(&m)).map(|m| m.region.clone()).find(|r| r != failing_region)
}

/// What a promotion asks of its candidate, beyond the policy.
#[derive(Clone, Copy, Default)]
pub(super) struct Ask<'a> {
    /// The operator named the member (`--to`).
    pub only: Option<&'a str>,
    /// `--force`: the RPO budget does not count.
    pub force: bool,
    /// A region that wins ties in position (a failover group's).
    pub preferred_region: Option<&'a str>,
    /// A planned move (switchover): the primary serves and the candidate
    /// must catch up with it, so it must stream from it now. A replica that
    /// does not (a Redis replica that never synchronised reports a position
    /// of its own) would otherwise look caught up.
    pub planned: bool,
}

/// The best member to promote: eligible members ranked by position, then
/// the preferred region, region priority, member priority and id.
pub(super) fn choose(
    w: &Situation,
    rec: &ClusterRecord,
    policy: &Policy,
    members: &[(&String, Observation)],
    known_primary_position: u64,
    ask: Ask,
) -> Result<(String, String), String> {
    let Ask { only, force, preferred_region, planned } = ask;
    let mut eligible = Vec::new();
    let mut refused = Vec::new();
    for (id, o) in members {
        if **id == rec.primary || only.is_some_and(|t| t != id.as_str()) {
            continue;
        }
        let decl = &w.topology.members[*id];
        let lag_bytes = o.lag_bytes.max(known_primary_position.saturating_sub(o.position));
        let problem = if !o.fresh {
            Some("no fresh sample".to_string())
        } else if !o.reachable {
            Some("its agent cannot reach it".to_string())
        } else if o.role != Role::Replica {
            Some(format!("role is {}", o.role))
        } else if !rec.holds(&o.dataset, &o.previous_dataset) {
            Some(format!("holds dataset {} instead of {}", o.dataset, rec.dataset))
        } else if planned && !o.streaming {
            Some(format!("it does not stream from the primary {}, so it cannot catch up with it", rec.primary))
        } else if decl.priority == 0 && only.is_none() {
            Some("priority 0 (never promoted automatically)".to_string())
        } else if force {
            None
        } else {
            rpo_problem(policy, lag_bytes, o.lag_ms)
        };
        match problem {
            Some(p) => refused.push(format!("{id}: {p}")),
            None => {
                let region_priority = w.topology.regions.get(&decl.region).map(|r| r.priority).unwrap_or(u32::MAX);
                let preferred = preferred_region.is_some_and(|r| r == decl.region);
                eligible.push((
                    // What it will hold once promoted.
                    o.position.max(o.received),
                    preferred,
                    std::cmp::Reverse(region_priority),
                    decl.priority,
                    std::cmp::Reverse(id.to_string()),
                    lag_bytes,
                    o.lag_ms,
                ));
            }
        }
    }
    eligible.sort();
    match eligible.last() {
        Some((pos, _, _, _, std::cmp::Reverse(id), lag_bytes, lag_ms)) => {
            let region = &w.topology.members[id].region;
            Ok((id.clone(), format!("promoting {id} (region {region}, position {pos}, lag {lag_bytes} bytes / {lag_ms} ms)")))
        }
        None if refused.is_empty() => Err("the cluster has no other member".into()),
        None => Err(refused.join("; ")),
    }
}

/// Builds the decision and its steps. Its id is assigned when committed.
#[allow(clippy::too_many_arguments)]
pub(super) fn decision(
    w: &Situation,
    name: &str,
    rec: &ClusterRecord,
    kind: DecisionKind,
    trigger: Trigger,
    to: &str,
    reason: String,
    members: &[(&String, Observation)],
    detected_at: Millis,
) -> Decision {
    let step = Step::pending;
    let mut steps = Vec::new();
    match kind {
        DecisionKind::Failover => steps.push(step(StepAction::Fence, &rec.primary)),
        DecisionKind::Switchover => {
            steps.push(step(StepAction::Demote, &rec.primary));
            steps.push(step(StepAction::CatchUp, to));
        }
    }
    steps.push(step(StepAction::Promote, to));
    // Clients learn the new endpoint (WatchPrimary publishes it as soon as
    // the promotion is recorded); this step runs the configured hook.
    steps.push(step(StepAction::Publish, to));
    for (id, _) in members {
        if id.as_str() != to && **id != rec.primary {
            steps.push(step(StepAction::Repoint, id));
        }
    }
    // The old primary follows the new one: at once after a switchover, when
    // it comes back after a failover.
    steps.push(step(StepAction::Rejoin, &rec.primary));
    let evidence = members
        .iter()
        .map(|(id, o)| MemberEvidence {
            id: id.to_string(),
            region: w.topology.members.get(*id).map(|m| m.region.clone()).unwrap_or_default(),
            fresh: o.fresh,
            reachable: o.reachable,
            role: o.role,
            position: o.position,
            lag_bytes: o.lag_bytes,
            lag_ms: o.lag_ms,
            primary_reachable: o.primary_reachable,
        })
        .collect();
    Decision {
        id: 0,
        cluster: name.to_string(),
        kind,
        trigger,
        epoch: rec.epoch + 1,
        from: rec.primary.clone(),
        to: to.to_string(),
        reason,
        evidence,
        detected_at,
        decided_at: w.now,
        steps,
        finished_at: None,
        outcome: String::new(),
        // Filled in by the core, which tracks it.
        known_position: 0,
    }
}
