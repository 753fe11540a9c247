//! The decision core: pure — no I/O, no clock, no randomness.
//!
//! The leader calls [`Core::tick`] with what it currently sees (a [`World`]:
//! time, topology, replicated records, fresh observations) and carries out
//! the [`Action`]s it returns; operator requests go through
//! [`Core::request`]. Everything that makes a failover safe is decided here
//! and checked by the seeded simulations in `sim.rs`:
//!
//! - a failure is declared only when the primary's own agent reports it down
//!   or is silent, no agent anywhere can reach it, agents in at least one
//!   other region confirm it, and that has held for the detection window
//!   (DESIGN.md rule 4);
//! - an unreachable primary is replaced only after its lease has expired,
//!   plus a clock-drift margin (rule 2): leases are granted only to a
//!   healthy primary, and a new leader assumes its predecessor just granted
//!   one;
//! - a candidate is promoted automatically only within the RPO budget in
//!   bytes and in time (rule 3); an operator's `force` is the only override;
//! - after a failover the cluster is blocked for the anti-flap window
//!   (rule 5); pause stops automatic decisions, not operators;
//! - clusters of a failover group end up in one region.

use std::collections::BTreeMap;

use drc_model::topology::{Policy, Topology};
use drc_model::{ClusterRecord, Decision, DecisionKind, MemberEvidence, Millis, Step, StepAction, Trigger};

pub mod steps;

/// One member as the leader sees it now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Obs {
    /// Agent connected and its newest sample younger than the detection window.
    pub fresh: bool,
    /// The agent reaches its own database.
    pub reachable: bool,
    /// "primary", "replica" or "unknown".
    pub role: String,
    pub dataset: String,
    /// The dataset id before the member's last promotion (Redis).
    pub previous_dataset: String,
    /// Replayed LSN / replication offset (the primary: its current one).
    pub position: u64,
    pub lag_bytes: u64,
    pub lag_ms: u64,
    /// This agent's cross-probe of the recorded primary.
    pub primary_reachable: bool,
    /// The primary's position as this agent's cross-probe last read it.
    pub primary_position: u64,
    /// The highest epoch the agent has seen.
    pub epoch: u64,
    /// The agent fenced this member, a primary, when its lease lapsed.
    pub lease_fenced: bool,
    /// The member is unreachable and its agent found its process gone.
    pub server_gone: bool,
    /// How long ago the leader received the newest sample.
    pub age: Millis,
    /// A replica: what it holds durably, which a promotion keeps (PostgreSQL:
    /// WAL received and flushed, replayed first when promoted; 0 when not
    /// reported, and then `position` counts).
    pub received: u64,
    /// A replica streams from its primary now (PostgreSQL: its WAL receiver
    /// streams; Redis: its link is up).
    pub streaming: bool,
}

/// Everything the core reads at one instant.
pub struct World<'a> {
    pub now: Millis,
    pub topology: &'a Topology,
    pub records: &'a BTreeMap<String, ClusterRecord>,
    /// `drctl pause` without a cluster.
    pub global_paused: bool,
    /// By member id; a member without an entry has never been heard from.
    pub observations: &'a BTreeMap<String, Obs>,
}

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

/// What the leader should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Record the first primary of a cluster (epoch 1).
    Adopt { cluster: String, primary: String, dataset: String },
    /// Commit this decision to Raft, then carry out its steps.
    Decide(Box<Decision>),
    /// Grant (renew) the primary's lease for `ttl` from now. `sync`: what
    /// a PostgreSQL primary's commits wait for (see [`sync_standbys`]).
    Lease { cluster: String, member: String, epoch: u64, ttl: Millis, sync: Option<SyncStandbys> },
    /// Nothing happens to this cluster, and why (shown in status).
    Wait { cluster: String, reason: String },
}

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

#[derive(Clone, Debug, Default)]
struct Track {
    /// Since when the failure has been confirmed without interruption.
    down_since: Option<Millis>,
    /// The newest lease the primary may hold ends here.
    lease_until: Millis,
    /// Highest position of the primary seen in this epoch.
    primary_position: u64,
    epoch: u64,
    /// The primary of `epoch`.
    primary: String,
    /// When that primary's promotion was recorded (the record's).
    promoted_at: Millis,
    /// Since when the primary's agent has reported it fenced for a lapsed
    /// lease; leases are offered to bring it back until `restart_grace`.
    fenced_since: Option<Millis>,
}

impl Track {
    /// Raises the known primary position with what the primary and the
    /// replicas' cross-probes report.
    fn see(&mut self, primary: &Obs, members: &[(&String, Obs)]) {
        let probed = members.iter().map(|(_, o)| o.primary_position).max().unwrap_or(0);
        let own = if is_primary(primary) { primary.position } else { 0 };
        self.primary_position = self.primary_position.max(probed).max(own);
    }
}

/// A renewal of `primary`'s lease, with the synchronous standbys it should
/// wait for.
fn lease_action(w: &World, cluster: &str, primary: &str, epoch: u64, ttl: Millis, members: &[(&String, Obs)]) -> Action {
    Action::Lease {
        cluster: cluster.to_string(),
        member: primary.to_string(),
        epoch,
        ttl,
        sync: sync_standbys(w, cluster, primary, members),
    }
}

/// What a PostgreSQL primary's commits wait for: `count` of `names` to
/// have flushed them (`synchronous_standby_names = 'ANY count (names)'`;
/// none when `count` is 0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStandbys {
    pub count: usize,
    pub names: Vec<String>,
}

impl std::fmt::Display for SyncStandbys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&drc_proto::sync_setting(self.count, &self.names))
    }
}

/// What a PostgreSQL cluster's primary should wait for (None: a Redis
/// cluster, which has no such setting). The primary's agent waits for no
/// more of them than it sees streaming under those names itself.
///
/// With `synchronous_replicas = n`, every replica that may be promoted
/// automatically is listed, and a commit waits for `n` of them: a replica
/// that stops streaming is not waited for while enough others stream, so
/// the setting changes only when fewer than `n` stream. Then commits wait
/// for as many as stream, and when none does, for none: writes go on
/// asynchronously, with the RPO budget bounding what a failover may lose,
/// rather than stopping until a replica comes back (PostgreSQL would wait
/// for ever). Every replica is a candidate, and the most advanced one is
/// promoted, so while a replica holding each acknowledged commit is
/// reachable and within the RPO budget, no acknowledged commit is lost.
pub fn sync_standbys(w: &World, cluster: &str, primary: &str, members: &[(&String, Obs)]) -> Option<SyncStandbys> {
    let c = w.topology.clusters.get(cluster)?;
    if c.kind != drc_model::topology::ClusterKind::Postgres {
        return None;
    }
    let wanted = c.policy.synchronous_replicas as usize;
    if wanted == 0 {
        // Asynchronous (the default): nothing to look at on every renewal.
        return Some(SyncStandbys::default());
    }
    let listed: Vec<&(&String, Obs)> = members
        .iter()
        .filter(|(id, _)| id.as_str() != primary && w.topology.members.get(id.as_str()).is_some_and(|m| m.priority > 0))
        .collect();
    let streaming = listed.iter().filter(|(_, o)| o.fresh && o.role == "replica" && o.streaming).count();
    let count = wanted.min(streaming);
    if count == 0 {
        // The agent clears a setting of drc's making (it knows it by its
        // shape) and leaves an operator's own alone.
        return Some(SyncStandbys::default());
    }
    Some(SyncStandbys { count, names: listed.iter().map(|(id, _)| id.to_string()).collect() })
}

/// How often a failover waiting for newer samples looks again.
const SAMPLE_POLL: Millis = 50;

/// Members with what the leader sees of each (default: never heard from).
fn observed<'a>(w: &World, ids: impl Iterator<Item = &'a String>) -> Vec<(&'a String, Obs)> {
    ids.map(|id| (id, w.observations.get(id).cloned().unwrap_or_default())).collect()
}

/// The leader's decision state: soft, rebuilt from nothing by every new leader.
pub struct Core {
    lease: LeaseConfig,
    leader_since: Millis,
    tracks: BTreeMap<String, Track>,
    /// The earliest instant at which a waiting failover may go ahead (a
    /// confirmation window or a lease running out), from the last tick.
    wake: Option<Millis>,
}

fn is_primary(o: &Obs) -> bool {
    o.fresh && o.reachable && o.role == "primary"
}

/// The policy's gate, or `None` when the member may be promoted.
fn rpo_problem(policy: &Policy, lag_bytes: u64, lag_ms: u64) -> Option<String> {
    let budget_ms = policy.rpo_max_lag_time.as_millis() as u64;
    if lag_bytes > policy.rpo_max_lag_bytes {
        Some(format!("lag {lag_bytes} bytes > RPO budget {} bytes", policy.rpo_max_lag_bytes))
    } else if lag_ms > budget_ms {
        Some(format!("lag {lag_ms} ms > RPO budget {budget_ms} ms"))
    } else {
        None
    }
}

impl Core {
    /// A core for a node that became leader at `now`. It assumes that the
    /// previous leader renewed every lease as late as `handover` after that
    /// (zero when a deposed leader stops renewing before a successor can be
    /// elected; see [`LeaseConfig::handover`]).
    pub fn new(lease: LeaseConfig, now: Millis) -> Core {
        Core { lease, leader_since: now, tracks: BTreeMap::new(), wake: None }
    }

    /// The cluster's track, reset when the epoch changed. `primary_position`
    /// is what is known of the recorded primary's position: after a
    /// promotion, at least the position it had as a replica.
    fn track(&mut self, cluster: &str, rec: &ClusterRecord, primary_position: u64) -> &mut Track {
        let primary_position = primary_position.max(rec.known_position);
        let fresh = Track {
            // An adopted primary (never promoted: promoted_at 0) holds no promotion lease.
            lease_until: (self.leader_since + self.lease.handover + self.lease.lease).max(if rec.promoted_at > 0 {
                rec.promoted_at + self.lease.promote_ttl()
            } else {
                0
            }),
            epoch: rec.epoch,
            primary_position,
            primary: rec.primary.clone(),
            promoted_at: rec.promoted_at,
            ..Track::default()
        };
        let t = self.tracks.entry(cluster.to_string()).or_insert_with(|| fresh.clone());
        // A new primary starts a new history of positions: a candidate when
        // it is decided, again once its promotion is recorded (what the old
        // primary wrote beyond it was given up within the RPO budget), and
        // the old primary when a decision that promoted nobody brings it
        // back, with what the record knows of it.
        let new_history = t.primary != rec.primary || t.promoted_at != rec.promoted_at;
        if t.epoch != rec.epoch || new_history {
            // A lease we granted before must still run out. The same primary
            // in a new epoch (a decision that promoted nobody, between two
            // ticks) keeps what is known of its position, or the next
            // failover would measure lag against too little.
            let kept = if new_history { primary_position } else { t.primary_position.max(primary_position) };
            *t = Track { lease_until: t.lease_until, primary_position: kept, ..fresh };
        }
        t
    }

    /// Re-evaluates every cluster. Members come indexed by cluster (built
    /// once per topology), so a tick costs O(members), not O(clusters × members).
    pub fn tick(&mut self, w: &World) -> Vec<Action> {
        let by_cluster = w.topology.by_cluster();
        let mut out = Vec::new();
        let mut wake = None;
        for name in w.topology.clusters.keys() {
            let ids = by_cluster.get(name).map(Vec::as_slice).unwrap_or_default();
            self.tick_cluster(w, name, ids, &mut out, &mut wake);
        }
        self.wake = wake;
        for a in out.iter_mut() {
            if let Action::Decide(d) = a {
                d.known_position = self.known_position(&d.cluster);
            }
        }
        out
    }

    /// When the last tick's earliest waiting failover may go ahead: the
    /// leader ticks again then instead of on its next regular tick.
    pub fn wake(&self) -> Option<Millis> {
        self.wake
    }

    fn known_position(&self, cluster: &str) -> u64 {
        self.tracks.get(cluster).map(|t| t.primary_position).unwrap_or(0)
    }

    fn tick_cluster(&mut self, w: &World, name: &str, ids: &[String], out: &mut Vec<Action>, wake: &mut Option<Millis>) {
        let wait = |out: &mut Vec<Action>, reason: String| out.push(Action::Wait { cluster: name.to_string(), reason });
        let mut wake_at = |at: Millis| *wake = Some(wake.map_or(at, |w: Millis| w.min(at)));
        let Some(policy) = w.topology.clusters.get(name).map(|c| c.policy.clone()) else { return };
        let members = observed(w, ids.iter());
        let default_rec = ClusterRecord::default();
        let rec = w.records.get(name).unwrap_or(&default_rec);

        if rec.primary.is_empty() {
            let primaries: Vec<&(&String, Obs)> = members.iter().filter(|(_, o)| is_primary(o)).collect();
            match primaries.as_slice() {
                [(id, o)] => out.push(Action::Adopt { cluster: name.to_string(), primary: id.to_string(), dataset: o.dataset.clone() }),
                [] => wait(out, "no primary seen yet".into()),
                many => wait(out, format!("{} members claim to be primary; waiting for one", many.len())),
            }
            return;
        }
        let now = w.now;
        let lease = self.lease;
        let leader_since = self.leader_since;
        let primary_id = rec.primary.clone();
        let p = members.iter().find(|(id, _)| **id == primary_id).map(|(_, o)| o.clone()).unwrap_or_default();
        let primary_region = w.topology.members.get(&primary_id).map(|m| m.region.clone()).unwrap_or_default();
        let track = self.track(name, rec, p.position);
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
            if is_primary(&p) || restartable {
                out.push(lease_action(w, name, &primary_id, rec.epoch, lease.lease, &members));
            }
            wait(out, format!("decision {id} is being carried out"));
            return;
        }
        track.see(&p, &members);
        if restartable {
            track.down_since = None;
            track.lease_until = track.lease_until.max(now + lease.lease);
            out.push(lease_action(w, name, &primary_id, rec.epoch, lease.lease, &members));
            wait(out, format!("primary {primary_id} was fenced by its agent when its lease lapsed; a new lease brings it back"));
            return;
        }
        if is_primary(&p) {
            track.down_since = None;
            // A renewal replaces the lease the agent holds, but only once it
            // arrives: until then the agent may still hold a longer one (a
            // promotion's), so what is assumed never shrinks.
            track.lease_until = track.lease_until.max(now + lease.lease);
            out.push(lease_action(w, name, &primary_id, rec.epoch, lease.lease, &members));
            self.follow_group(w, name, rec, &policy, &members, out);
            return;
        }

        // The primary does not look healthy to its own agent (or the agent is
        // silent). Do other regions agree?
        let observers: Vec<(&String, &Obs)> =
            members.iter().filter(|(id, o)| **id != primary_id && o.fresh).map(|(id, o)| (*id, o)).collect();
        let region_of = |id: &str| w.topology.members.get(id).map(|m| m.region.clone()).unwrap_or_default();
        if let Some((who, _)) = observers.iter().find(|(_, o)| o.primary_reachable) {
            // Nothing will replace it while others reach it: its lease is
            // renewed, so that an agent that merely lost its own link to the
            // database does not fence a primary that serves everyone else.
            track.down_since = None;
            track.lease_until = track.lease_until.max(now + lease.lease);
            out.push(lease_action(w, name, &primary_id, rec.epoch, lease.lease, &members));
            wait(out, format!("primary {primary_id} looks down to its own agent, but {who} (region {}) still reaches it", region_of(who)));
            return;
        }
        if !observers.iter().any(|(id, o)| region_of(id) != primary_region && !o.primary_reachable) {
            track.down_since = None;
            wait(out, format!("primary {primary_id} looks down, but no agent in another region can confirm it"));
            return;
        }
        let since = *track.down_since.get_or_insert(now);
        let window = policy.detection_window.as_millis() as u64;
        // A process its own agent sees gone is no network blip: a shorter
        // confirmation, still from another region as well.
        let confirm = if p.fresh && p.server_gone { window.min(policy.crash_detection_window.as_millis() as u64) } else { window };
        if now < since + confirm {
            wake_at(since + confirm);
            let what = if confirm < window { "its agent sees its server process gone; " } else { "" };
            wait(out, format!("primary {primary_id} down for {} ms, {what}confirming for {confirm} ms", now - since));
            return;
        }
        if now < leader_since + window {
            wake_at(leader_since + window);
            wait(out, format!("new leader: collecting {window} ms of fresh samples before deciding"));
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
            wait(out, format!("waiting {} ms for the old primary's lease to expire", lease_end - now));
            return;
        }
        if policy.paused || rec.paused || w.global_paused {
            wait(out, format!("primary {primary_id} is down, but automatic failover is paused"));
            return;
        }
        if now < rec.blocked_until {
            wait(
                out,
                format!("primary {primary_id} is down, but automatic failover is blocked for {} ms (anti-flap)", rec.blocked_until - now),
            );
            return;
        }
        // Candidates are ranked by their newest samples. One received before
        // the failure was seen may not show WAL that reached the replica
        // just before the primary died, which a synchronous commit may have
        // counted on: wait for newer ones, at most for the detection window.
        let behind: Vec<&str> = members
            .iter()
            .filter(|(id, o)| **id != primary_id && o.fresh && o.role == "replica" && now.saturating_sub(o.age) < since)
            .map(|(id, _)| id.as_str())
            .collect();
        if !behind.is_empty() && now < since + window {
            wake_at((now + SAMPLE_POLL).min(since + window));
            wait(out, format!("primary {primary_id} is down; waiting for samples of {} taken since", behind.join(", ")));
            return;
        }
        let known = track.primary_position;
        let preferred = preferred_region(w, name, &primary_region, out);
        match choose(w, rec, &policy, &members, known, None, false, preferred.as_deref()) {
            Ok((to, why)) => {
                let gone = if confirm < window { " (its agent saw its server process gone)" } else { "" };
                let reason = format!("primary {primary_id} down for {} ms{gone}, confirmed from another region; {why}", now - since);
                let mut d = decision(w, name, rec, DecisionKind::Failover, Trigger::Automatic, &to, reason, &members, since);
                bound_lease(&mut d, lease_end.max(now + lease.lease + lease.drift_margin));
                // The old primary's lease has already run out: the executor
                // need not wait for it again before skipping an impossible fence.
                if let Some(fence) = d.steps.iter_mut().find(|s| s.action == StepAction::Fence).filter(|_| now >= lease_end) {
                    fence.args.lease_expired_at = Some(lease_end);
                }
                out.push(Action::Decide(Box::new(d)));
            }
            Err(why) => wait(out, format!("primary {primary_id} is down, but no member can be promoted: {why}")),
        }
    }

    /// A healthy cluster whose failover-group partner has moved to another
    /// region more recently than it did follows it there, planned.
    fn follow_group(&self, w: &World, name: &str, rec: &ClusterRecord, policy: &Policy, members: &[(&String, Obs)], out: &mut Vec<Action>) {
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
            match choose(w, rec, policy, members, known, None, false, Some(&region)) {
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
                }),
            }
            return;
        }
    }

    /// Why an operator's request on `cluster` should wait a moment: its
    /// primary was promoted so recently that its agent, which answers, has
    /// not reported it as a primary yet. Taken at its word, that sample
    /// would make a healthy primary look down, and a planned move an
    /// unplanned one.
    pub fn settling(&self, w: &World, cluster: &str) -> Option<String> {
        let rec = w.records.get(cluster)?;
        let p = w.observations.get(&rec.primary)?;
        let since = w.now.saturating_sub(rec.promoted_at);
        (rec.promoted_at > 0 && since < self.lease.promote_ttl() && p.fresh && p.reachable && p.role != "primary")
            .then(|| format!("{} was promoted {since} ms ago and has not reported as the primary yet; retry in a moment", rec.primary))
    }

    /// An operator's failover or switchover: the decision to commit, or
    /// exactly why not.
    pub fn request(&mut self, w: &World, req: &Request) -> Result<Decision, String> {
        let none = None;
        let (name, to, force, kind) = match req {
            Request::Failover { cluster, to, force } => (cluster, to, *force, DecisionKind::Failover),
            Request::Switchover { cluster, to } => (cluster, to, false, DecisionKind::Switchover),
            Request::Evacuate { cluster, force, .. } => (cluster, &none, *force, DecisionKind::Failover),
        };
        let policy = w.topology.clusters.get(name).map(|c| c.policy.clone()).ok_or_else(|| format!("unknown cluster {name:?}"))?;
        let rec = w.records.get(name).cloned().unwrap_or_default();
        if rec.primary.is_empty() {
            return Err(format!("cluster {name:?} has no recorded primary yet"));
        }
        if let Some(id) = rec.in_progress {
            return Err(format!("decision {id} is still being carried out for {name:?}"));
        }
        if let Some(to) = to {
            match w.topology.members.get(to) {
                Some(m) if m.cluster == *name => {}
                _ => return Err(format!("{to:?} is not a member of cluster {name:?}")),
            }
            if *to == rec.primary {
                return Err(format!("{to:?} is already the primary of {name:?}"));
            }
        }
        let members = observed(w, w.topology.members.iter().filter(|(_, m)| m.cluster == *name).map(|(id, _)| id));
        let p = members.iter().find(|(id, _)| **id == rec.primary).map(|(_, o)| o.clone()).unwrap_or_default();
        let now = w.now;
        let lease = self.lease;
        if let Some(why) = self.settling(w, name) {
            return Err(why);
        }
        let track = self.track(name, &rec, p.position);
        let healthy = is_primary(&p);
        track.see(&p, &members);
        let known = track.primary_position;
        let lease_until = track.lease_until;
        let region_of = |id: &str| w.topology.members.get(id).map(|m| m.region.as_str()).unwrap_or_default();
        let (kind, members, preferred) = match req {
            Request::Evacuate { from, to, prefer, .. } => {
                if region_of(&rec.primary) != from.as_str() {
                    return Err(format!("the primary of {name:?} ({}) is not in region {from:?}", rec.primary));
                }
                // The primary stays in the list: candidates are compared with it.
                let keep = |id: &str| {
                    id == rec.primary || (region_of(id) != from.as_str() && to.as_ref().is_none_or(|t| region_of(id) == t.as_str()))
                };
                let members: Vec<(&String, Obs)> = members.into_iter().filter(|(id, _)| keep(id.as_str())).collect();
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
                return Err(format!("switchover needs a healthy primary, and {} is not; use failover", rec.primary));
            }
            // A healthy primary is fenced through its agent first; an
            // unreachable one only after its lease ran out.
            DecisionKind::Failover if !healthy && now < track.lease_until + lease.drift_margin => {
                return Err(format!(
                    "the old primary {} is unreachable and may still hold its lease for {} ms; retry then",
                    rec.primary,
                    track.lease_until + lease.drift_margin - now
                ));
            }
            _ => {}
        }
        let (chosen, why) = match preferred.as_deref() {
            // An evacuation keeps a failover group together: the region its
            // partner has just moved to wins over a more advanced member
            // elsewhere (a switchover waits for its candidate to catch up,
            // and a failover stays within the RPO budget either way). Only
            // when nobody there can take over does the cluster go elsewhere,
            // and the reason says so.
            Some(region) => {
                let there: Vec<(&String, Obs)> =
                    members.iter().filter(|(id, _)| **id == rec.primary || region_of(id) == region).cloned().collect();
                choose(w, &rec, &policy, &there, known, to.as_deref(), force, Some(region)).or_else(|none_there| {
                    let (chosen, why) = choose(w, &rec, &policy, &members, known, to.as_deref(), force, None)?;
                    Ok::<_, String>((
                        chosen,
                        format!("{why}; its failover group is in region {region}, but no member there can take over: {none_there}"),
                    ))
                })?
            }
            None => choose(w, &rec, &policy, &members, known, to.as_deref(), force, None)?,
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
        let mut d = decision(w, name, &rec, kind, trigger, &chosen, reason, &members, now);
        d.known_position = self.known_position(name);
        bound_lease(&mut d, lease_until.max(now + lease.lease) + lease.drift_margin);
        Ok(d)
    }
}

/// Records on the decision's fence step until when the old primary may
/// still hold a lease (with the drift margin): a fence that cannot reach it
/// is skipped only after that. A promotion's long lease that was never
/// renewed may outlast `decided_at + lease` by far.
fn bound_lease(d: &mut Decision, ends_at: Millis) {
    if let Some(fence) = d.steps.iter_mut().find(|s| s.action == StepAction::Fence) {
        fence.args.lease_ends_at = Some(ends_at);
    }
}

/// The other clusters of `cluster`'s failover groups.
fn partners(t: &Topology, cluster: &str) -> Vec<String> {
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
fn preferred_region(w: &World, cluster: &str, failing_region: &str, decided: &[Action]) -> Option<String> {
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

/// The best member to promote: eligible members ranked by position, then
/// the preferred region, region priority, member priority and id.
#[allow(clippy::too_many_arguments)]
fn choose(
    w: &World,
    rec: &ClusterRecord,
    policy: &Policy,
    members: &[(&String, Obs)],
    known_primary_position: u64,
    only: Option<&str>,
    force: bool,
    preferred_region: Option<&str>,
) -> Result<(String, String), String> {
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
        } else if o.role != "replica" {
            Some(format!("role is {}", o.role))
        } else if !rec.holds(&o.dataset, &o.previous_dataset) {
            Some(format!("holds dataset {} instead of {}", o.dataset, rec.dataset))
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
fn decision(
    w: &World,
    name: &str,
    rec: &ClusterRecord,
    kind: DecisionKind,
    trigger: Trigger,
    to: &str,
    reason: String,
    members: &[(&String, Obs)],
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
            role: o.role.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use drc_model::topology::parse::parse_topology;

    fn topology(synchronous: u32) -> Topology {
        let mut t = format!(
            "[regions.a]\n[regions.b]\n[regions.c]\n[clusters.pg]\nkind = 'postgres'\n[clusters.pg.policy]\nsynchronous_replicas = {synchronous}\n\
             [clusters.rd]\nkind = 'redis'\n"
        );
        for (id, region, priority) in [("pg-a", "a", 100), ("pg-b", "b", 100), ("pg-c", "c", 100), ("pg-d", "c", 0)] {
            t.push_str(&format!("[[members]]\nid = '{id}'\ncluster = 'pg'\nregion = '{region}'\naddress = 'h:1'\npriority = {priority}\n"));
        }
        t.push_str("[[members]]\nid = 'rd-a'\ncluster = 'rd'\nregion = 'a'\naddress = 'h:2'\n[[members]]\nid = 'rd-b'\ncluster = 'rd'\nregion = 'b'\naddress = 'h:3'\n");
        parse_topology(&t).expect("valid")
    }

    fn replica(streaming: bool, position: u64, received: u64) -> Obs {
        Obs {
            fresh: true,
            reachable: true,
            role: "replica".into(),
            dataset: "ds".into(),
            position,
            received,
            streaming,
            ..Default::default()
        }
    }

    fn sync_of(t: &Topology, cluster: &str, obs: &BTreeMap<String, Obs>) -> Option<String> {
        let records = BTreeMap::new();
        let w = World { now: 0, topology: t, records: &records, global_paused: false, observations: obs };
        let ids: Vec<String> = t.members_of(cluster).map(|(id, _)| id.clone()).collect();
        let members = observed(&w, ids.iter());
        let primary = format!("{cluster}-a");
        sync_standbys(&w, cluster, &primary, &members).map(|s| s.to_string())
    }

    #[test]
    fn commits_wait_for_streaming_replicas_that_may_be_promoted_and_for_none_when_none_streams() {
        let t = topology(2);
        let mut obs: BTreeMap<String, Obs> =
            ["pg-b", "pg-c", "pg-d", "rd-b"].iter().map(|id| (id.to_string(), replica(true, 0, 0))).collect();
        // pg-d has priority 0: never promoted automatically, so never waited for.
        assert_eq!(sync_of(&t, "pg", &obs).as_deref(), Some(r#"ANY 2 ("pg-b", "pg-c")"#));
        assert_eq!(sync_of(&t, "rd", &obs), None, "Redis has no synchronous replication");
        // One of the two stops streaming: commits wait for the other alone.
        obs.get_mut("pg-c").expect("c").streaming = false;
        assert_eq!(sync_of(&t, "pg", &obs).as_deref(), Some(r#"ANY 1 ("pg-b", "pg-c")"#));
        // A silent agent counts as not streaming; with none left, commits wait for none.
        obs.get_mut("pg-b").expect("b").fresh = false;
        assert_eq!(sync_of(&t, "pg", &obs).as_deref(), Some(""));
        // Asynchronous clusters say so explicitly, so that turning the setting off takes effect.
        assert_eq!(sync_of(&topology(0), "pg", &obs).as_deref(), Some(""));
        obs.get_mut("pg-b").expect("b").fresh = true;
        assert_eq!(sync_of(&topology(0), "pg", &obs).as_deref(), Some(""));
    }

    #[test]
    fn a_crashed_primary_is_replaced_only_on_samples_received_since_the_crash_was_seen() {
        let t = topology(1);
        let mut records = BTreeMap::new();
        records.insert("pg".to_string(), ClusterRecord { epoch: 1, primary: "pg-a".into(), dataset: "ds".into(), ..Default::default() });
        let gone = Obs { fresh: true, role: "unknown".into(), server_gone: true, epoch: 1, ..Default::default() };
        let replica =
            |position: u64, received: u64, age: Millis| Obs { dataset: "ds".into(), epoch: 1, age, ..replica(true, position, received) };
        let mut core = Core::new(LeaseConfig::default(), 0);
        let mut tick = |now: Millis, b_age: Millis| {
            let obs: BTreeMap<String, Obs> = [("pg-a", gone.clone()), ("pg-b", replica(500, 500, b_age)), ("pg-c", replica(400, 400, 0))]
                .into_iter()
                .map(|(id, o)| (id.to_string(), o))
                .collect();
            let w = World { now, topology: &t, records: &records, global_paused: false, observations: &obs };
            core.tick(&w)
                .into_iter()
                .filter(|a| match a {
                    Action::Decide(_) => true,
                    Action::Wait { cluster, .. } => cluster == "pg",
                    _ => false,
                })
                .collect::<Vec<_>>()
        };
        // First seen down at 5,000; confirmed once the crash window (200 ms) has passed.
        assert!(matches!(&tick(5_000, 0)[..], [Action::Wait { .. }]));
        // pg-b's newest sample was received before the crash was seen: wait for another.
        match &tick(5_200, 300)[..] {
            [Action::Wait { reason, .. }] => assert!(reason.contains("waiting for samples of pg-b"), "{reason}"),
            other => panic!("expected a wait, got {other:?}"),
        }
        // A newer one came: pg-b is promoted (it holds the most).
        match &tick(5_250, 10)[..] {
            [Action::Decide(d)] => assert_eq!(d.to, "pg-b"),
            other => panic!("expected a decision, got {other:?}"),
        }
    }

    #[test]
    fn the_replica_that_received_the_most_is_promoted_even_if_it_replayed_less() {
        let t = topology(1);
        // pg-b replayed more, but pg-c received (and flushed) more: a
        // synchronous commit may have been acknowledged by pg-c alone.
        let obs: BTreeMap<String, Obs> = [("pg-b", replica(true, 1_000, 1_000)), ("pg-c", replica(true, 900, 1_100))]
            .into_iter()
            .map(|(id, o)| (id.to_string(), o))
            .collect();
        let records = BTreeMap::new();
        let w = World { now: 0, topology: &t, records: &records, global_paused: false, observations: &obs };
        let ids: Vec<String> = t.members_of("pg").map(|(id, _)| id.clone()).collect();
        let members = observed(&w, ids.iter());
        let rec = ClusterRecord { epoch: 1, primary: "pg-a".into(), dataset: "ds".into(), ..Default::default() };
        let policy = t.clusters["pg"].policy.clone();
        let (to, why) = choose(&w, &rec, &policy, &members, 1_100, None, false, None).expect("a candidate");
        assert_eq!(to, "pg-c", "{why}");
    }
}
