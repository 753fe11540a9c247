//! The model of the world: writes, replication, agents' leases and what
//! the leader observes of each member.

use std::collections::BTreeMap;

use drc_model::Role;

use super::*;

impl Sim {
    /// Regions `a` and `b` can hold a connection: packets go both ways.
    pub(super) fn talk(&self, a: usize, b: usize) -> bool {
        self.region_up[a] && self.region_up[b] && !self.cut[a][b] && !self.cut[b][a]
    }

    /// A server answers: it runs and is not frozen.
    pub(super) fn answers(m: &Member) -> bool {
        m.up && !m.server_frozen
    }

    /// Replica `r` has fresh evidence of its primary `p`, as its agent
    /// counts it: its stream from `p` is up and its own cross-probe of `p`
    /// answered (a round trip), not merely a replication status that says
    /// `streaming`.
    pub(super) fn sees_primary(&self, r: &Member, p: &Member) -> bool {
        Self::answers(r) && !r.primary && !r.lagging && r.upstream == p.id && Self::answers(p) && self.talk(r.region, p.region)
    }

    /// The positions of the replicas that stream from `m` now (a replica
    /// whose replay is held back receives nothing in this model).
    pub(super) fn streaming_from(&self, m: &Member) -> Vec<u64> {
        self.members
            .values()
            .filter(|r| r.cluster == m.cluster && Self::answers(r) && Self::answers(m) && !r.primary && !r.lagging && r.upstream == m.id)
            .filter(|r| self.talk(r.region, m.region))
            .map(|r| r.position)
            .collect()
    }

    /// The agent of `m` and the coordinator leader can exchange messages.
    pub(super) fn agent_connected(&self, m: &Member) -> bool {
        self.leader.is_some_and(|l| m.link && !m.agent_frozen && self.talk(m.region, l))
    }

    /// What the leader holds: the newest sample each agent could deliver
    /// (frozen while its agent is cut off), fresh within the window.
    pub(super) fn observations(&mut self) -> BTreeMap<String, Observation> {
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let m = &self.members[&id];
            if !self.agent_connected(m) {
                continue;
            }
            let rec = self.sm.records.get(&m.cluster).cloned().unwrap_or_default();
            let p = self.members.get(&rec.primary);
            let primary_reachable = p.is_some_and(|p| Self::answers(p) && self.talk(m.region, p.region));
            // The agent remembers the primary's newest position it saw in
            // this epoch, so a replica's lag outlives the primary.
            let (mut seen, mut seen_lag_ms) = if m.seen_epoch == rec.epoch { (m.seen_primary, m.seen_lag_ms) } else { (0, 0) };
            if let Some(p) = p.filter(|_| primary_reachable) {
                seen = seen.max(p.position);
                seen_lag_ms = if p.position > m.position { p.written_at.saturating_sub(m.written_at) } else { 0 };
            }
            let primary_position = seen;
            // What any agent saw of the primary is known, as the core knows it.
            let k = self.known_position.entry(m.cluster.clone()).or_default();
            *k = (*k).max(seen);
            let lag_bytes = seen.saturating_sub(m.position);
            // As the agent: no lag in time once it holds everything of the
            // primary it has seen.
            let lag_ms = if lag_bytes == 0 { 0 } else { seen_lag_ms };
            let epoch = rec.epoch;
            self.set(&id, |x| {
                x.seen_epoch = epoch;
                x.seen_primary = seen;
                x.seen_lag_ms = seen_lag_ms;
            });
            let m = &self.members[&id];
            let answers = Self::answers(m);
            let obs = Observation {
                fresh: true,
                reachable: answers,
                role: if !answers {
                    Role::Unknown
                } else if m.primary {
                    Role::Primary
                } else {
                    Role::Replica
                },
                dataset: format!("ds-{}", m.cluster),
                previous_dataset: String::new(),
                // A stopped or frozen server tells its agent nothing.
                position: if answers { m.position } else { 0 },
                lag_bytes: if m.primary { 0 } else { lag_bytes },
                lag_ms: if m.primary { 0 } else { lag_ms },
                primary_reachable,
                primary_position,
                epoch: m.epoch,
                lease_fenced: m.lease_fenced,
                server_gone: !m.up,
                // The simulation models one position per member.
                received: 0,
                age: 0,
                // As PostgreSQL's walreceiver (and Redis's link status)
                // says it: `streaming` from a frozen primary, until a
                // time-out far longer than anything here.
                streaming: answers
                    && !m.primary
                    && !m.lagging
                    && self.members.get(&m.upstream).is_some_and(|u| u.up && self.talk(m.region, u.region)),
            };
            if m.primary && answers {
                let k = self.known_position.entry(m.cluster.clone()).or_default();
                *k = (*k).max(m.position);
            }
            self.members.get_mut(&id).expect("member").last_sample = Some(self.now);
            self.samples.insert(id, obs);
        }
        let mut out = self.samples.clone();
        for (id, o) in out.iter_mut() {
            let received = self.members[id].last_sample;
            o.fresh = received.is_some_and(|at| self.now - at <= FRESH);
            o.age = received.map_or(0, |at| self.now - at);
        }
        out
    }

    /// Writes, replication, agents' leases.
    pub(super) fn world_step(&mut self) {
        let ids: Vec<String> = self.members.keys().cloned().collect();
        let now = self.now;
        for m in self.members.values_mut().filter(|m| m.agent_thaw_at.is_some_and(|t| now >= t)) {
            m.agent_frozen = false;
            m.agent_thaw_at = None;
        }
        for id in &ids {
            if self.members[id].writable && !self.members[id].server_frozen && self.rng.chance(70) {
                let now = self.now;
                let m = self.members.get_mut(id).expect("member");
                m.position += 1 + self.rng.below(50);
                m.written_at = now;
            }
        }
        for id in &ids {
            let m = &self.members[id];
            if m.primary || !Self::answers(m) || m.upstream.is_empty() {
                continue;
            }
            let Some(up) = self.members.get(&m.upstream) else { continue };
            if !Self::answers(up) || !self.talk(m.region, up.region) {
                continue;
            }
            let (pos, at) = (up.position, up.written_at);
            // Now and then a replica receives only part of what is new, so
            // that replicas hold different amounts when the primary dies.
            let partial = self.partial_replication && self.rng.chance(30);
            let m = self.members.get_mut(id).expect("member");
            // A lagging replica's replay is paused: it falls behind in bytes
            // and in time.
            if !m.lagging && pos >= m.position {
                // The model keeps one write time per member: a partial copy
                // counts as recent, as the agent's lag in time (measured
                // from when the primary passed the replica's position)
                // would say of a replica a step behind.
                m.position = if partial { m.position + (pos - m.position) / 2 } else { pos };
                m.written_at = at;
            }
        }
        // A synchronous primary acknowledges a commit once `sync_count` of
        // the replicas streaming from it hold it.
        for id in &ids {
            let m = &self.members[id];
            let recorded = self.sm.records.get(&m.cluster).is_some_and(|r| r.primary == *id);
            if !m.writable || m.server_frozen || m.sync_count == 0 || !recorded {
                continue;
            }
            let mut held = self.streaming_from(m);
            held.sort_unstable_by(|a, b| b.cmp(a));
            if let Some(&p) = held.get(m.sync_count - 1) {
                let acked = self.sync_acked.entry(m.cluster.clone()).or_default();
                *acked = (*acked).max(p.min(m.position));
            }
        }
        // A replica's agent refuses an automatic promotion for one lease
        // after its last fresh evidence of its primary: it vouches for it.
        for id in &ids {
            let r = &self.members[id];
            let fresh = !r.agent_frozen && self.members.get(&r.upstream).is_some_and(|p| self.sees_primary(r, p));
            if fresh {
                let until = self.now + LEASE.lease;
                self.set(id, |x| x.refuse_promotion_until = until);
            }
        }
        // An agent whose primary runs without a valid lease fences it (a
        // frozen server too: SIGKILL stops it), unless every other member
        // vouches that no newer epoch exists. A frozen agent does nothing.
        for id in &ids {
            let m = &self.members[id];
            if !m.writable || m.agent_frozen || m.lease_until.is_some_and(|t| self.now < t) {
                continue;
            }
            let others: Vec<&Member> = self.members.values().filter(|o| o.cluster == m.cluster && o.id != m.id).collect();
            // Only the primary of the newest epoch this agent knows may stay
            // up, and only if no other member knows of a newer one (or of
            // another primary in this one).
            // As the real agent counts them: replicas that stream from it
            // and were heard from recently, over a round trip (a replica
            // whose replies still arrive but which hears nothing from it,
            // behind a one-way partition, does not refuse a promotion).
            let vouched = m.epoch_primary == m.id
                && others.iter().all(|o| {
                    self.sees_primary(o, m) && !o.primary && (o.epoch < m.epoch || (o.epoch == m.epoch && o.epoch_primary == m.id))
                });
            if !vouched {
                let m = self.members.get_mut(id).expect("member");
                m.writable = false;
                m.up = false;
                m.server_frozen = false;
                m.lease_fenced = m.epoch_primary == m.id;
                self.say(format!("agent of {id} fences it: lease expired"));
            }
        }
    }

    pub(super) fn set(&mut self, id: &str, f: impl FnOnce(&mut Member)) {
        if let Some(m) = self.members.get_mut(id) {
            f(m);
        }
    }
}
