//! The safety rules checked after every step, and the liveness bound.

use drc_model::{Decision, DecisionKind, Trigger};

use super::*;
use crate::core::steps;

impl Sim {
    pub(super) fn fail(&self, what: String) -> ! {
        let story = self.log.iter().rev().take(40).rev().cloned().collect::<Vec<_>>().join("\n");
        panic!("{what}\n--- last events ---\n{story}");
    }

    /// Safety rule 1 (one writable primary per cluster) and liveness.
    pub(super) fn check(&mut self) {
        for c in CLUSTERS {
            // A frozen server takes no write until it runs again; then its
            // agent fences it in the same step unless it is vouched for.
            let writable: Vec<&Member> = self.members.values().filter(|m| m.cluster == c && m.writable && !m.server_frozen).collect();
            if writable.len() > 1 {
                let ids: Vec<&str> = writable.iter().map(|m| m.id.as_str()).collect();
                self.fail(format!("two writable members in cluster {c}: {ids:?}"));
            }
            // Liveness: with no writable member, a leader, no pause or
            // block, and a healthy candidate, a promotion must follow
            // within a bound.
            let rec = self.sm.records.get(c).cloned().unwrap_or_default();
            let known = self.known_position.get(c).copied().unwrap_or(0);
            let candidate = self.members.values().any(|m| {
                m.cluster == c
                    && Self::answers(m)
                    && !m.primary
                    && m.position + RPO_BYTES >= known
                    && m.seen_primary.saturating_sub(m.position) <= RPO_BYTES
                    && m.seen_lag_ms <= RPO_MS
                    && self.agent_connected(m)
                    && m.refuse_promotion_until <= self.now
            });
            let may = writable.is_empty()
                && !rec.primary.is_empty()
                && candidate
                && self.leader.is_some()
                && !rec.paused
                && !self.sm.global_paused
                && rec.blocked_until <= self.now
                && !self.members.values().any(|m| m.cluster == c && m.up && m.primary);
            // (A frozen primary counts as one: its lease, which the leader
            // waits out, may still run.)
            if !may {
                self.unavailable_since.remove(c);
                continue;
            }
            let since = *self.unavailable_since.entry(c.to_string()).or_insert(self.now);
            // A step that cannot go ahead (a candidate that went away) holds
            // the cluster until its deadline.
            let bound = 2 * WINDOW + FRESH + LEASE.promote_ttl() + LEASE.drift_margin + steps::STEP_DEADLINE + 5_000;
            if self.now - since > bound {
                let positions: Vec<String> = self
                    .members
                    .values()
                    .filter(|m| m.cluster == c)
                    .map(|m| {
                        format!(
                            "{}@{} up={} seen={} lag_ms={} agent={} refuse_until={}",
                            m.id,
                            m.position,
                            m.up,
                            m.seen_primary,
                            m.seen_lag_ms,
                            self.agent_connected(m),
                            m.refuse_promotion_until
                        )
                    })
                    .collect();
                self.fail(format!(
                    "liveness: cluster {c} has had no primary for {} ms with a healthy candidate (known position {known}, members {positions:?})",
                    self.now - since
                ));
            }
        }
    }

    /// Never two primaries in one epoch; never an automatic promotion
    /// beyond the RPO budget.
    pub(super) fn check_promotion(&mut self, d: &Decision, m: &Member) {
        if let Some(other) = self.promoted.insert((d.cluster.clone(), d.epoch), m.id.clone()) {
            if other != m.id {
                self.fail(format!("two primaries in epoch {} of {}: {other} and {}", d.epoch, d.cluster, m.id));
            }
        }
        let forced = matches!(d.trigger, Trigger::Operator { force: true });
        let known = self.known_position.get(&d.cluster).copied().unwrap_or(0);
        if !forced && d.kind == DecisionKind::Failover && known.saturating_sub(m.position) > RPO_BYTES {
            self.fail(format!(
                "promotion of {} beyond the RPO budget: at {} while the primary was seen at {known} ({:?})",
                m.id, m.position, d.trigger
            ));
        }
    }

    /// Synchronous replication: an automatic failover promotes a member
    /// holding every commit acknowledged while commits waited for a
    /// replica, whenever a member holding them answers and is heard from.
    pub(super) fn check_synchronous(&self, d: &Decision) {
        let Some(&acked) = self.sync_acked.get(&d.cluster) else { return };
        let Some(to) = self.members.get(&d.to) else { return };
        if to.position >= acked {
            return;
        }
        // A holder the RPO budget rules out (its replay held back beyond the
        // time budget) is not promoted automatically, synchronous or not.
        let within_budget = |id: &str| self.samples.get(id).is_some_and(|o| o.lag_ms <= RPO_MS);
        let holder = self.members.values().find(|o| {
            o.cluster == d.cluster
                && o.id != d.from
                && Self::answers(o)
                && !o.primary
                && o.position >= acked
                && self.agent_connected(o)
                && within_budget(&o.id)
        });
        if let Some(h) = holder {
            self.fail(format!(
                "synchronous commits up to {acked} acknowledged, but {} (at {}) is promoted while {} holds {}: {}\nsamples: {:?}",
                d.to,
                to.position,
                h.id,
                h.position,
                d.reason,
                self.samples.iter().filter(|(id, _)| id.starts_with(&d.cluster)).collect::<Vec<_>>()
            ));
        }
    }

    /// Never a failover while the primary is reachable from a majority of
    /// regions and only its agent link is down.
    pub(super) fn check_no_failover_of_reachable_primary(&self, d: &Decision) {
        let Some(p) = self.members.get(&d.from) else { return };
        let reach = (0..3).filter(|&r| self.talk(r, p.region)).count();
        if Self::answers(p) && reach >= 2 {
            self.fail(format!("automatic failover of {} while it is up and reachable from {reach} regions", p.id));
        }
    }
}
