//! Operator requests: failover, switchover and evacuation of a region,
//! decided by the same rules as automatic failover, or refused with exactly
//! why.

use drc_model::{Decision, DecisionKind, Role, Trigger};

use super::choose::{choose, decision, Ask};
use super::lease::bound_lease;
use super::{is_primary, observed, Core, Observation, Situation};

/// An operator's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Failover {
        cluster: String,
        to: Option<String>,
        force: bool,
    },
    Switchover {
        cluster: String,
        to: Option<String>,
    },
    /// Moves the cluster's primary out of region `from` (into region `to`
    /// when given, else preferably into `prefer`): a switchover when the
    /// primary is healthy, a failover when it is not.
    Evacuate {
        cluster: String,
        from: String,
        to: Option<String>,
        prefer: Option<String>,
        force: bool,
    },
}

impl Request {
    pub fn cluster(&self) -> &str {
        match self {
            Request::Failover { cluster, .. } | Request::Switchover { cluster, .. } | Request::Evacuate { cluster, .. } => cluster,
        }
    }
}

/// Why an operator's request is refused, by what the operator may do
/// about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown cluster {0:?}")]
    UnknownCluster(String),
    /// The request cannot be right as asked.
    #[error("{0}")]
    Invalid(String),
    /// Not possible now; it may be later.
    #[error("{0}")]
    NotNow(String),
}

impl Core {
    /// Why an operator's request on `cluster` should wait a moment: its
    /// primary was promoted so recently that its agent, which answers, has
    /// not reported it as a primary yet. Taken at its word, that sample
    /// would make a healthy primary look down, and a planned move an
    /// unplanned one.
    pub fn settling(&self, w: &Situation, cluster: &str) -> Option<String> {
        let rec = w.records.get(cluster)?;
        let p = w.observations.get(&rec.primary)?;
        let since = w.now.saturating_sub(rec.promoted_at);
        (rec.promoted_at > 0 && since < self.lease.promote_ttl() && p.fresh && p.reachable && p.role != Role::Primary)
            .then(|| format!("{} was promoted {since} ms ago and has not reported as the primary yet; retry in a moment", rec.primary))
    }

    /// An operator's failover or switchover: the decision to commit, or
    /// exactly why not.
    pub fn request(&mut self, w: &Situation, req: &Request) -> Result<Decision, Refusal> {
        let none = None;
        let (name, to, force, kind) = match req {
            Request::Failover { cluster, to, force } => (cluster, to, *force, DecisionKind::Failover),
            Request::Switchover { cluster, to } => (cluster, to, false, DecisionKind::Switchover),
            Request::Evacuate { cluster, force, .. } => (cluster, &none, *force, DecisionKind::Failover),
        };
        let policy = w.topology.clusters.get(name).map(|c| c.policy.clone()).ok_or_else(|| Refusal::UnknownCluster(name.clone()))?;
        let rec = w.records.get(name).cloned().unwrap_or_default();
        if rec.primary.is_empty() {
            return Err(Refusal::NotNow(format!("cluster {name:?} has no recorded primary yet")));
        }
        if let Some(id) = rec.in_progress {
            return Err(Refusal::NotNow(format!("decision {id} is still being carried out for {name:?}")));
        }
        if let Some(to) = to {
            match w.topology.members.get(to) {
                Some(m) if m.cluster == *name => {}
                _ => return Err(Refusal::Invalid(format!("{to:?} is not a member of cluster {name:?}"))),
            }
            if *to == rec.primary {
                return Err(Refusal::Invalid(format!("{to:?} is already the primary of {name:?}")));
            }
        }
        let members = observed(w, w.topology.members.iter().filter(|(_, m)| m.cluster == *name).map(|(id, _)| id));
        let p = members.iter().find(|(id, _)| **id == rec.primary).map(|(_, o)| o.clone()).unwrap_or_default();
        // Monotonic, as the leases it checks.
        let now = w.mono;
        let lease = self.lease;
        if let Some(why) = self.settling(w, name) {
            return Err(Refusal::NotNow(why));
        }
        let track = self.track(w, name, &rec, p.position);
        let healthy = is_primary(&p);
        track.see(&p, &members);
        let known = track.primary_position;
        let lease_until = track.lease_until;
        let region_of = |id: &str| w.topology.members.get(id).map(|m| m.region.as_str()).unwrap_or_default();
        let (kind, members, preferred) = match req {
            Request::Evacuate { from, to, prefer, .. } => {
                if region_of(&rec.primary) != from.as_str() {
                    return Err(Refusal::Invalid(format!("the primary of {name:?} ({}) is not in region {from:?}", rec.primary)));
                }
                // The primary stays in the list: candidates are compared with it.
                let keep = |id: &str| {
                    id == rec.primary || (region_of(id) != from.as_str() && to.as_ref().is_none_or(|t| region_of(id) == t.as_str()))
                };
                let members: Vec<(&String, Observation)> = members.into_iter().filter(|(id, _)| keep(id.as_str())).collect();
                let kind = if healthy { DecisionKind::Switchover } else { DecisionKind::Failover };
                (kind, members, prefer.clone())
            }
            // A primary that still serves keeps writing until it is fenced,
            // past anything the last samples showed: fenced at once, the
            // candidate's lag could end beyond the RPO budget (simulation
            // seed 84417). Without --force it is demoted, and the candidate
            // catches up with its final position first, as in a switchover.
            Request::Failover { force: false, .. } if healthy => (DecisionKind::Switchover, members, None),
            _ => (kind, members, None),
        };
        match kind {
            DecisionKind::Switchover if !healthy => {
                return Err(Refusal::NotNow(format!("switchover needs a healthy primary, and {} is not; use failover", rec.primary)));
            }
            // A healthy primary is fenced through its agent first; an
            // unreachable one only after its lease ran out.
            DecisionKind::Failover if !healthy && now < track.lease_until + lease.drift_margin => {
                return Err(Refusal::NotNow(format!(
                    "the old primary {} is unreachable and may still hold its lease for {} ms; retry then",
                    rec.primary,
                    track.lease_until + lease.drift_margin - now
                )));
            }
            _ => {}
        }
        let ask = Ask { only: to.as_deref(), force, preferred_region: None, planned: kind == DecisionKind::Switchover };
        let (chosen, why) = match preferred.as_deref() {
            // An evacuation keeps a failover group together: the region its
            // partner has just moved to wins over a more advanced member
            // elsewhere (a switchover waits for its candidate to catch up,
            // and a failover stays within the RPO budget either way). Only
            // when nobody there can take over does the cluster go elsewhere,
            // and the reason says so.
            Some(region) => {
                let there: Vec<(&String, Observation)> =
                    members.iter().filter(|(id, _)| **id == rec.primary || region_of(id) == region).cloned().collect();
                choose(w, &rec, &policy, &there, known, Ask { preferred_region: Some(region), ..ask })
                    .or_else(|none_there| {
                        let (chosen, why) = choose(w, &rec, &policy, &members, known, ask)?;
                        Ok::<_, String>((
                            chosen,
                            format!("{why}; its failover group is in region {region}, but no member there can take over: {none_there}"),
                        ))
                    })
                    .map_err(Refusal::NotNow)?
            }
            None => choose(w, &rec, &policy, &members, known, ask).map_err(Refusal::NotNow)?,
        };
        let trigger = Trigger::Operator { force };
        let reason = match (kind, req) {
            (_, Request::Evacuate { from, .. }) => format!("operator moving every primary out of region {from}; {why}"),
            (DecisionKind::Switchover, Request::Failover { .. }) => {
                format!("operator failover of a primary that still serves, carried out as a switchover (--force fences it at once); {why}")
            }
            (DecisionKind::Switchover, _) => format!("operator switchover; {why}"),
            (DecisionKind::Failover, _) if force => format!("operator failover with --force; {why}"),
            (DecisionKind::Failover, _) => format!("operator failover; {why}"),
        };
        let mut d = decision(w, name, &rec, kind, trigger, &chosen, reason, &members, w.now);
        d.known_position = self.known_position(name);
        bound_lease(&mut d, w.wall_of(lease_until.max(now + lease.lease) + lease.drift_margin));
        Ok(d)
    }
}
