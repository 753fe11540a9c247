//! Detection: each tick, what the leader does about every cluster — adopt
//! its first primary, renew the primary's lease, confirm a failure from
//! another region over the detection window, wait out the old primary's
//! lease, and decide a failover; a healthy cluster follows its failover
//! group.

use drc_model::topology::Policy;
use drc_model::{ClusterRecord, DecisionKind, Millis, Role, StepAction, Trigger};

use super::choose::{choose, decision, partners, preferred_region, Ask};
use super::lease::{bound_lease, lease_action};
use super::{is_primary, observed, Action, Core, Observation, Situation, WaitKind};

/// How often a failover waiting for newer samples looks again.
const SAMPLE_POLL: Millis = 50;

/// One cluster as a tick sees it.
#[derive(Clone, Copy)]
struct Cluster<'a> {
    name: &'a str,
    rec: &'a ClusterRecord,
    policy: &'a Policy,
    members: &'a [(&'a String, Observation)],
    /// What is seen of the recorded primary.
    primary: &'a Observation,
}

impl Core {
    /// What the leader does about one cluster this tick: adopt its first
    /// primary, renew the primary's lease (also one its agent fenced, to
    /// bring it back), or, when the primary looks down, [`Self::primary_down`].
    pub(super) fn tick_cluster(&mut self, w: &Situation, name: &str, ids: &[String], out: &mut Vec<Action>, wake: &mut Option<Millis>) {
        let wait =
            |out: &mut Vec<Action>, kind: WaitKind, reason: String| out.push(Action::Wait { cluster: name.to_string(), reason, kind });
        let Some(policy) = w.topology.clusters.get(name).map(|c| c.policy.clone()) else { return };
        let members = observed(w, ids.iter());
        let default_rec = ClusterRecord::default();
        let rec = w.records.get(name).unwrap_or(&default_rec);

        if rec.primary.is_empty() {
            let primaries: Vec<&(&String, Observation)> = members.iter().filter(|(_, o)| is_primary(o)).collect();
            match primaries.as_slice() {
                [(id, o)] => out.push(Action::Adopt { cluster: name.to_string(), primary: id.to_string(), dataset: o.dataset.clone() }),
                [] => wait(out, WaitKind::NoPrimarySeen, "no primary seen yet".into()),
                many => wait(out, WaitKind::ManyPrimaries, format!("{} members claim to be primary; waiting for one", many.len())),
            }
            return;
        }
        // Monotonic: every deadline below is kept in memory.
        let now = w.mono;
        let lease = self.lease;
        let primary_id = rec.primary.clone();
        let p = members.iter().find(|(id, _)| **id == primary_id).map(|(_, o)| o.clone()).unwrap_or_default();
        let moved_on = !p.dataset.is_empty() && p.dataset != rec.dataset && (rec.dataset.is_empty() || p.previous_dataset == rec.dataset);
        if moved_on && is_primary(&p) && rec.in_progress.is_none() {
            out.push(Action::AdvanceDataset {
                cluster: name.to_string(),
                primary: primary_id.clone(),
                dataset: p.dataset.clone(),
                previous: p.previous_dataset.clone(),
            });
        }
        let track = self.track(w, name, rec, p.position);
        // A renewal counts from the newest sample it answers, as the agent
        // counts it: a lease never outlasts the evidence it was granted on
        // by more than `lease`, however stale that evidence is by the time
        // the tick looks at it (a sample up to a detection window old still
        // counts as fresh).
        let ttl = lease.lease.saturating_sub(p.age);
        // A primary whose agent fenced it when its lease lapsed (the
        // coordinators were out of reach, and not every other member could
        // vouch for it) comes back with a new lease in the current epoch: it
        // is still the recorded primary, and no decision replaced it.
        let restartable = !is_primary(&p) && p.fresh && p.lease_fenced && p.epoch == rec.epoch && {
            let since = *track.fenced_since.get_or_insert(now);
            now < since + lease.restart_grace()
        };
        if is_primary(&p) {
            track.fenced_since = None;
        }
        if let Some(id) = rec.in_progress {
            // The executor grants a lease with the promotion, at a moment
            // this core does not see; once promoted, the new primary's
            // lease is renewed like any other.
            track.lease_until = track.lease_until.max(now + lease.promote_ttl());
            if (is_primary(&p) || restartable) && ttl > 0 {
                out.push(lease_action(w, name, &primary_id, rec.epoch, ttl, &members));
            }
            wait(out, WaitKind::DecisionInProgress, format!("decision {id} is being carried out"));
            return;
        }
        track.see(&p, &members);
        if restartable {
            track.down_since = None;
            if ttl > 0 {
                track.lease_until = track.lease_until.max(now + ttl);
                out.push(lease_action(w, name, &primary_id, rec.epoch, ttl, &members));
            }
            wait(
                out,
                WaitKind::FencedPrimary,
                format!("primary {primary_id} was fenced by its agent when its lease lapsed; a new lease brings it back"),
            );
            return;
        }
        if is_primary(&p) {
            track.down_since = None;
            // A renewal replaces the lease the agent holds, but only once it
            // arrives: until then the agent may still hold a longer one (a
            // promotion's), so what is assumed never shrinks.
            if ttl > 0 {
                track.lease_until = track.lease_until.max(now + ttl);
                out.push(lease_action(w, name, &primary_id, rec.epoch, ttl, &members));
            }
            self.follow_group(w, name, rec, &policy, &members, out);
            return;
        }

        let cluster = Cluster { name, rec, policy: &policy, members: &members, primary: &p };
        self.primary_down(w, &cluster, out, wake);
    }

    /// The recorded primary does not look healthy to its own agent (or the
    /// agent is silent): confirm the failure from another region over the
    /// detection window, wait out the old primary's lease, honour pause and
    /// anti-flap, and decide a failover to the best candidate.
    fn primary_down(&mut self, w: &Situation, c: &Cluster, out: &mut Vec<Action>, wake: &mut Option<Millis>) {
        let Cluster { name, rec, policy, members, primary: p } = *c;
        let wait =
            |out: &mut Vec<Action>, kind: WaitKind, reason: String| out.push(Action::Wait { cluster: name.to_string(), reason, kind });
        let mut wake_at = |at: Millis| *wake = Some(wake.map_or(at, |w: Millis| w.min(at)));
        let now = w.mono;
        let lease = self.lease;
        let leader_since = self.leader_since;
        let primary_id = rec.primary.clone();
        let primary_region = w.topology.members.get(&primary_id).map(|m| m.region.clone()).unwrap_or_default();
        let Some(track) = self.tracks.get_mut(name) else { return };
        // Do other regions agree?
        let observers: Vec<(&String, &Observation)> =
            members.iter().filter(|(id, o)| **id != primary_id && o.fresh).map(|(id, o)| (*id, o)).collect();
        let region_of = |id: &str| w.topology.members.get(id).map(|m| m.region.clone()).unwrap_or_default();
        if let Some((who, _)) = observers.iter().find(|(_, o)| o.primary_reachable) {
            // Nothing will replace it while others reach it: its lease is
            // renewed, so that an agent that merely lost its own link to the
            // database does not fence a primary that serves everyone else.
            // A silent agent's renewals do not stretch its lease while
            // another region's answer, up to a probe time-out old, still
            // says the primary is reachable.
            track.down_since = None;
            let ttl = lease.lease.saturating_sub(p.age);
            if ttl > 0 {
                track.lease_until = track.lease_until.max(now + ttl);
                out.push(lease_action(w, name, &primary_id, rec.epoch, ttl, members));
            }
            wait(
                out,
                WaitKind::StillReachable,
                format!("primary {primary_id} looks down to its own agent, but {who} (region {}) still reaches it", region_of(who)),
            );
            return;
        }
        if !observers.iter().any(|(id, o)| region_of(id) != primary_region && !o.primary_reachable) {
            track.down_since = None;
            wait(out, WaitKind::Unconfirmed, format!("primary {primary_id} looks down, but no agent in another region can confirm it"));
            return;
        }
        // A silent agent has shown no sign of life since its newest sample:
        // the window counts from then, not from when the silence was noticed
        // (itself a window later), so that a frozen or cut-off node is
        // replaced as soon as a dead one.
        let silent_since = (!p.fresh && p.age > 0).then(|| now.saturating_sub(p.age));
        let since = track.down_since.get_or_insert(now);
        if let Some(s) = silent_since {
            *since = (*since).min(s);
        }
        let since = *since;
        let window = policy.detection_window.as_millis() as u64;
        // A process its own agent sees gone is no network blip: a shorter
        // confirmation, still from another region as well.
        let confirm = if p.fresh && p.server_gone { window.min(policy.crash_detection_window.as_millis() as u64) } else { window };
        if now < since + confirm {
            wake_at(since + confirm);
            let what = if confirm < window { "its agent sees its server process gone; " } else { "" };
            wait(out, WaitKind::Confirming, format!("primary {primary_id} down for {} ms, {what}confirming for {confirm} ms", now - since));
            return;
        }
        if now < leader_since + window {
            wake_at(leader_since + window);
            wait(out, WaitKind::NewLeader, format!("new leader: collecting {window} ms of fresh samples before deciding"));
            return;
        }
        let lease_end = track.lease_until + lease.drift_margin;
        // The old primary's agent still answers (its member does not): it
        // fences the member through its data directory, which needs no
        // connection, and the promotion waits for that fence instead of for
        // the lease. A silent agent leaves only the lease.
        let agent_fences = p.fresh;
        if now < lease_end && !agent_fences {
            wake_at(lease_end);
            wait(out, WaitKind::LeaseRunningOut, format!("waiting {} ms for the old primary's lease to expire", lease_end - now));
            return;
        }
        if policy.paused || rec.paused || w.global_paused {
            wait(out, WaitKind::Paused, format!("primary {primary_id} is down, but automatic failover is paused"));
            return;
        }
        if w.now < rec.blocked_until {
            wait(
                out,
                WaitKind::AntiFlap,
                format!("primary {primary_id} is down, but automatic failover is blocked for {} ms (anti-flap)", rec.blocked_until - w.now),
            );
            return;
        }
        // Candidates are ranked by their newest samples. One received before
        // the failure was seen may not show WAL that reached the replica
        // just before the primary died, which a synchronous commit may have
        // counted on: wait for newer ones, at most for the detection window.
        let behind: Vec<&str> = members
            .iter()
            .filter(|(id, o)| **id != primary_id && o.fresh && o.role == Role::Replica && now.saturating_sub(o.age) < since)
            .map(|(id, _)| id.as_str())
            .collect();
        if !behind.is_empty() && now < since + window {
            wake_at((now + SAMPLE_POLL).min(since + window));
            wait(
                out,
                WaitKind::AwaitingSamples,
                format!("primary {primary_id} is down; waiting for samples of {} taken since", behind.join(", ")),
            );
            return;
        }
        let known = track.primary_position;
        let preferred = preferred_region(w, name, &primary_region, out);
        match choose(w, rec, policy, members, known, Ask { preferred_region: preferred.as_deref(), ..Ask::default() }) {
            Ok((to, why)) => {
                let gone = if confirm < window { " (its agent saw its server process gone)" } else { "" };
                let reason = format!("primary {primary_id} down for {} ms{gone}, confirmed from another region; {why}", now - since);
                let detected_at = w.wall_of(since);
                let mut d = decision(w, name, rec, DecisionKind::Failover, Trigger::Automatic, &to, reason, members, detected_at);
                bound_lease(&mut d, w.wall_of(lease_end.max(now + lease.lease + lease.drift_margin)));
                // The old primary's lease has already run out: the executor
                // need not wait for it again before skipping an impossible fence.
                if let Some(fence) = d.steps.iter_mut().find(|s| s.action == StepAction::Fence).filter(|_| now >= lease_end) {
                    fence.args.lease_expired_at = Some(w.wall_of(lease_end));
                }
                out.push(Action::Decide(Box::new(d)));
            }
            Err(why) => wait(out, WaitKind::NoCandidate, format!("primary {primary_id} is down, but no member can be promoted: {why}")),
        }
    }

    /// A healthy cluster whose failover-group partner has moved to another
    /// region more recently than it did follows it there, planned.
    fn follow_group(
        &self,
        w: &Situation,
        name: &str,
        rec: &ClusterRecord,
        policy: &Policy,
        members: &[(&String, Observation)],
        out: &mut Vec<Action>,
    ) {
        if policy.paused || rec.paused || w.global_paused {
            return;
        }
        let my_region = w.topology.members.get(&rec.primary).map(|m| m.region.as_str()).unwrap_or_default();
        for partner in partners(w.topology, name) {
            let Some(prec) = w.records.get(&partner) else { continue };
            let Some(pm) = w.topology.members.get(&prec.primary) else { continue };
            if prec.in_progress.is_some() || prec.changed_at <= rec.changed_at || pm.region == my_region {
                continue;
            }
            let known = self.tracks.get(name).map(|t| t.primary_position).unwrap_or(0);
            let region = pm.region.clone();
            match choose(w, rec, policy, members, known, Ask { preferred_region: Some(&region), planned: true, ..Ask::default() }) {
                Ok((to, why)) if w.topology.members.get(&to).is_some_and(|m| m.region == region) => {
                    let reason = format!("failover group: {partner} moved to region {region}; {why}");
                    let trigger = Trigger::Group { leader_cluster: partner.clone() };
                    out.push(Action::Decide(Box::new(decision(
                        w,
                        name,
                        rec,
                        DecisionKind::Switchover,
                        trigger,
                        &to,
                        reason,
                        members,
                        w.now,
                    ))));
                }
                Ok(_) | Err(_) => out.push(Action::Wait {
                    cluster: name.to_string(),
                    reason: format!("failover group: {partner} is in region {region}, but no member there can take over yet"),
                    kind: WaitKind::GroupWaiting,
                }),
            }
            return;
        }
    }
}
