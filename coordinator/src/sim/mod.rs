//! Seeded simulations of the decision core against a model of the world:
//! three regions, two clusters in one failover group (one member of each per
//! region), agents with leases, a coordinator leader that comes and goes,
//! and random faults — member crashes, region loss, agent link loss,
//! partitions between regions, lagging replicas, flapping links, operator
//! requests. The core's decisions go through the real [`StateMachine`],
//! and their steps run by the production rules (`core::steps`) against the
//! model of the agents.
//!
//! After every step of 100 ms the safety rules are checked (see
//! [`Sim::check`]). `cargo test -p drc-coordinator sim` runs 1,000 seeds;
//! `DRC_SIM_SEEDS=100000` runs more; `DRC_SIM_SEED=N` replays one seed and
//! prints its story.

use std::collections::BTreeMap;

use drc_model::topology::parse::parse_topology;
use drc_model::topology::Topology;
use drc_model::{Decision, DecisionKind, Millis, Role, StepAction, StepArgs, StepState, Trigger};

use crate::core::steps::{self, Verdict};
use crate::core::{placement_targets, Action, Coordinators, Core, LeaseConfig, Obs, Refusal, Request, World, PLACEMENT_CALM};
use crate::state::{Command, Outcome, StateMachine};

const REGIONS: [&str; 3] = ["a", "b", "c"];
const CLUSTERS: [&str; 2] = ["pg", "rd"];
const TICK: Millis = 100;
const STEPS: u64 = 800;
/// The simulated leader stops at once when it loses its quorum: no handover.
const LEASE: LeaseConfig = LeaseConfig { lease: 1_000, drift_margin: 150, handover: 0 };
const WINDOW: Millis = 1_000;
const RPO_BYTES: u64 = 1_000;
const RPO_MS: u64 = 5_000;
/// Time a new leader needs to be elected.
const ELECTION: Millis = 1_000;
/// An agent's samples count as fresh this long (the detection window).
const FRESH: Millis = WINDOW;

/// splitmix64: small, seedable, good enough to draw fault schedules.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Debug)]
struct Member {
    id: String,
    cluster: String,
    region: usize,
    /// The server process runs (a crash or a fence stops it).
    up: bool,
    primary: bool,
    /// Accepts writes: up, primary, not fenced.
    writable: bool,
    position: u64,
    /// Wall time of the newest write it holds.
    written_at: Millis,
    /// Member this replica streams from.
    upstream: String,
    /// Replay held back far beyond the RPO budget.
    lagging: bool,
    // --- its agent ---
    link: bool,
    epoch: u64,
    /// The primary of `epoch`, as this agent knows it.
    epoch_primary: String,
    lease_until: Option<Millis>,
    /// The agent fenced this primary when its lease lapsed; a new lease in
    /// the current epoch brings it back.
    lease_fenced: bool,
    refuse_promotion_until: Millis,
    last_sample: Option<Millis>,
    seen_epoch: u64,
    seen_primary: u64,
    seen_lag_ms: u64,
    /// A primary: how many replicas its commits wait for, as its agent last
    /// set it from a renewal (0: none).
    sync_count: usize,
}

impl Member {
    /// The agent learns of `epoch`, whose primary is `primary`.
    fn learn(&mut self, epoch: u64, primary: &str) {
        if epoch >= self.epoch {
            self.epoch = epoch;
            self.epoch_primary = primary.to_string();
            if primary != self.id {
                // Not the primary of the newest epoch: any lease is void.
                self.lease_until = None;
                self.lease_fenced = false;
            }
        }
    }
}

struct Sim {
    rng: Rng,
    now: Millis,
    topology: Topology,
    sm: StateMachine,
    members: BTreeMap<String, Member>,
    region_up: [bool; 3],
    /// cut[i][j]: regions i and j cannot talk.
    cut: [[bool; 3]; 3],
    leader: Option<usize>,
    election_until: Millis,
    core: Option<Core>,
    /// Per (decision, step): when it was first attempted, and when it may
    /// be attempted again.
    first_attempt: BTreeMap<(u64, usize), Millis>,
    next_try: BTreeMap<(u64, usize), Millis>,
    /// (cluster, epoch) -> member promoted in it.
    promoted: BTreeMap<(String, u64), String>,
    /// Highest primary position the coordinator has seen, per cluster.
    known_position: BTreeMap<String, u64>,
    /// Highest position acknowledged to a client while the recorded primary's
    /// commits waited for a replica, per cluster, since its last promotion.
    sync_acked: BTreeMap<String, u64>,
    /// Since when each cluster has had no writable member while it could have.
    unavailable_since: BTreeMap<String, Millis>,
    log: Vec<String>,
    last_wait: BTreeMap<String, String>,
    /// The newest sample of each member the leader received.
    samples: BTreeMap<String, Obs>,
    verbose: bool,
    /// The seeded schedules: replicas now and then receive only part of
    /// what is new (the scenario tests keep whole steps).
    partial_replication: bool,
    /// The seeded schedules: leader placement moves the leadership out of
    /// the primaries' region.
    placement: bool,
}

fn topology() -> Topology {
    let mut t = String::from("[regions.a]\npriority = 1\n[regions.b]\npriority = 2\n[regions.c]\npriority = 3\n");
    for c in CLUSTERS {
        t.push_str(&format!(
            "[clusters.{c}]\nkind = \"{}\"\n[clusters.{c}.policy]\nrpo_max_lag_bytes = {RPO_BYTES}\nrpo_max_lag_time = \"{RPO_MS}ms\"\ndetection_window = \"{WINDOW}ms\"\nanti_flap_window = \"4s\"\n",
            if c == "pg" { "postgres" } else { "redis" }
        ));
        // PostgreSQL commits wait for a replica: checked by `check_synchronous`.
        if c == "pg" {
            t.push_str("synchronous_replicas = 1\n");
        }
        for r in REGIONS {
            t.push_str(&format!("[[members]]\nid = \"{c}-{r}\"\ncluster = \"{c}\"\nregion = \"{r}\"\naddress = \"h:1\"\npriority = 100\n"));
        }
    }
    t.push_str("[failover_groups.app]\nclusters = [\"pg\", \"rd\"]\n");
    parse_topology(&t).expect("the simulation's topology is valid")
}

impl Sim {
    /// A simulation of `seed` after 3 quiet seconds: primaries adopted and
    /// replicas streaming, before a test breaks something.
    fn settled(seed: u64) -> Sim {
        let mut sim = Sim::new(seed, false);
        for _ in 0..30 {
            sim.step();
        }
        sim
    }

    fn new(seed: u64, verbose: bool) -> Sim {
        let topology = topology();
        let mut sm = StateMachine::default();
        sm.apply(Command::ApplyTopology { topology: topology.clone() });
        let mut members = BTreeMap::new();
        for c in CLUSTERS {
            for (i, r) in REGIONS.iter().enumerate() {
                let id = format!("{c}-{r}");
                let primary = i == 0;
                members.insert(
                    id.clone(),
                    Member {
                        id,
                        cluster: c.to_string(),
                        region: i,
                        up: true,
                        primary,
                        writable: primary,
                        position: 0,
                        written_at: 0,
                        upstream: if primary { String::new() } else { format!("{c}-a") },
                        lagging: false,
                        link: true,
                        epoch: 0,
                        epoch_primary: format!("{c}-a"),
                        lease_until: if primary { Some(LEASE.lease) } else { None },
                        lease_fenced: false,
                        refuse_promotion_until: 0,
                        last_sample: None,
                        seen_epoch: 0,
                        seen_primary: 0,
                        seen_lag_ms: 0,
                        sync_count: 0,
                    },
                );
            }
        }
        Sim {
            rng: Rng(seed),
            now: 0,
            topology,
            sm,
            members,
            region_up: [true; 3],
            cut: [[false; 3]; 3],
            leader: Some(0),
            election_until: 0,
            core: Some(Core::new(LEASE, 0)),
            first_attempt: BTreeMap::new(),
            next_try: BTreeMap::new(),
            promoted: BTreeMap::new(),
            known_position: BTreeMap::new(),
            sync_acked: BTreeMap::new(),
            unavailable_since: BTreeMap::new(),
            log: Vec::new(),
            last_wait: BTreeMap::new(),
            samples: BTreeMap::new(),
            verbose,
            partial_replication: false,
            placement: false,
        }
    }

    fn say(&mut self, what: String) {
        if self.verbose {
            println!("{:>6} ms  {what}", self.now);
        }
        self.log.push(format!("{} ms: {what}", self.now));
    }

    fn talk(&self, a: usize, b: usize) -> bool {
        self.region_up[a] && self.region_up[b] && !self.cut[a][b]
    }

    /// The positions of the replicas that stream from `m` now (a replica
    /// whose replay is held back receives nothing in this model).
    fn streaming_from(&self, m: &Member) -> Vec<u64> {
        self.members
            .values()
            .filter(|r| r.cluster == m.cluster && r.up && !r.primary && !r.lagging && r.upstream == m.id && self.talk(r.region, m.region))
            .map(|r| r.position)
            .collect()
    }

    /// The agent of `m` and the coordinator leader can exchange messages.
    fn agent_connected(&self, m: &Member) -> bool {
        self.leader.is_some_and(|l| m.link && self.talk(m.region, l))
    }

    // ------------------------------------------------------------ faults

    fn fault(&mut self) {
        let ids: Vec<String> = self.members.keys().cloned().collect();
        let pick = ids[self.rng.below(ids.len() as u64) as usize].clone();
        let region = self.rng.below(3) as usize;
        match self.rng.below(16) {
            0 | 1 => {
                // Crash the writable member of a cluster.
                let writable: Vec<String> = self.members.values().filter(|m| m.writable).map(|m| m.id.clone()).collect();
                if !writable.is_empty() {
                    let id = writable[self.rng.below(writable.len() as u64) as usize].clone();
                    self.set(&id, |m| {
                        m.up = false;
                        m.writable = false;
                    });
                    self.say(format!("crash primary {id}"));
                }
            }
            2 => {
                let m = self.members.get_mut(&pick).expect("picked");
                if !m.up && self.region_up[m.region] {
                    m.up = true;
                    m.lease_fenced = false;
                    // A restarted server comes back in the role it had; a
                    // restarted old primary is writable until its agent acts.
                    m.writable = m.primary;
                    self.say(format!("restart {pick}"));
                }
            }
            3 => {
                self.region_up[region] = false;
                for m in self.members.values_mut().filter(|m| m.region == region) {
                    m.up = false;
                    m.writable = false;
                }
                self.say(format!("region {} lost", REGIONS[region]));
            }
            4 => {
                if !self.region_up[region] {
                    self.region_up[region] = true;
                    for m in self.members.values_mut().filter(|m| m.region == region) {
                        m.up = true;
                        m.writable = m.primary;
                        m.lease_until = None;
                        m.lease_fenced = false;
                    }
                    self.say(format!("region {} back", REGIONS[region]));
                }
            }
            5 | 6 => {
                let m = self.members.get_mut(&pick).expect("picked");
                m.link = !m.link;
                let state = if m.link { "restored" } else { "cut" };
                self.say(format!("agent link of {pick} {state}"));
            }
            7 | 8 => {
                let other = (region + 1 + self.rng.below(2) as usize) % 3;
                let cut = !self.cut[region][other];
                self.cut[region][other] = cut;
                self.cut[other][region] = cut;
                let state = if cut { "partitioned" } else { "healed" };
                self.say(format!("regions {} and {} {state}", REGIONS[region], REGIONS[other]));
            }
            9 => {
                if self.leader.is_some() {
                    self.leader = None;
                    self.core = None;
                    self.election_until = self.now + ELECTION;
                    self.say("coordinator leader lost".into());
                }
            }
            10 | 11 => {
                let m = self.members.get_mut(&pick).expect("picked");
                m.lagging = !m.lagging;
                let state = if m.lagging { "lags" } else { "catches up" };
                self.say(format!("{pick} {state}"));
            }
            12 => {
                // A flapping agent link: a few quick toggles.
                for _ in 0..(1 + self.rng.below(3)) * 2 {
                    let m = self.members.get_mut(&pick).expect("picked");
                    m.link = !m.link;
                    self.step();
                }
                self.say(format!("agent link of {pick} flapped"));
            }
            13 => {
                let c = CLUSTERS[self.rng.below(2) as usize].to_string();
                let paused = self.rng.chance(50);
                let cluster = if self.rng.chance(30) { None } else { Some(c) };
                self.say(format!("operator: pause {cluster:?} = {paused}"));
                self.sm.apply(Command::Pause { cluster, paused });
            }
            14 => {
                let c = CLUSTERS[self.rng.below(2) as usize].to_string();
                let force = self.rng.chance(30);
                let to = self.rng.chance(50).then(|| pick.clone()).filter(|p| p.starts_with(&c));
                let req = match self.rng.below(3) {
                    0 => Request::Failover { cluster: c, to, force },
                    1 => Request::Switchover { cluster: c, to },
                    _ => {
                        let from = REGIONS[self.rng.below(3) as usize].to_string();
                        let to = self.rng.chance(50).then(|| REGIONS[self.rng.below(3) as usize].to_string()).filter(|t| *t != from);
                        Request::Evacuate { cluster: c, from, to, prefer: None, force }
                    }
                };
                self.operator(req);
            }
            _ => {
                let c = CLUSTERS[self.rng.below(2) as usize].to_string();
                self.sm.apply(Command::ClearBlock { cluster: c });
            }
        }
    }

    fn operator(&mut self, req: Request) {
        let obs = self.observations();
        let Some(core) = self.core.as_mut() else { return };
        let world = World {
            now: self.now,
            mono: self.now,
            topology: &self.topology,
            records: &self.sm.records,
            global_paused: self.sm.global_paused,
            observations: &obs,
        };
        match core.request(&world, &req) {
            Ok(d) => {
                self.say(format!("operator {req:?}: accepted"));
                self.commit(d);
            }
            Err(e) => self.say(format!("operator {req:?}: refused: {e}")),
        }
    }

    // ------------------------------------------------------------ the world

    /// What the leader holds: the newest sample each agent could deliver
    /// (frozen while its agent is cut off), fresh within the window.
    fn observations(&mut self) -> BTreeMap<String, Obs> {
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let m = &self.members[&id];
            if !self.agent_connected(m) {
                continue;
            }
            let rec = self.sm.records.get(&m.cluster).cloned().unwrap_or_default();
            let p = self.members.get(&rec.primary);
            let primary_reachable = p.is_some_and(|p| p.up && self.talk(m.region, p.region));
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
            let obs = Obs {
                fresh: true,
                reachable: m.up,
                role: if !m.up {
                    Role::Unknown
                } else if m.primary {
                    Role::Primary
                } else {
                    Role::Replica
                },
                dataset: format!("ds-{}", m.cluster),
                previous_dataset: String::new(),
                // A stopped server tells its agent nothing.
                position: if m.up { m.position } else { 0 },
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
                streaming: m.up
                    && !m.primary
                    && !m.lagging
                    && self.members.get(&m.upstream).is_some_and(|u| u.up && self.talk(m.region, u.region)),
            };
            if m.primary && m.up {
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
    fn world_step(&mut self) {
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in &ids {
            if self.members[id].writable && self.rng.chance(70) {
                let now = self.now;
                let m = self.members.get_mut(id).expect("member");
                m.position += 1 + self.rng.below(50);
                m.written_at = now;
            }
        }
        for id in &ids {
            let m = &self.members[id];
            if m.primary || !m.up || m.upstream.is_empty() {
                continue;
            }
            let Some(up) = self.members.get(&m.upstream) else { continue };
            if !up.up || !self.talk(m.region, up.region) {
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
            if !m.writable || m.sync_count == 0 || !recorded {
                continue;
            }
            let mut held = self.streaming_from(m);
            held.sort_unstable_by(|a, b| b.cmp(a));
            if let Some(&p) = held.get(m.sync_count - 1) {
                let acked = self.sync_acked.entry(m.cluster.clone()).or_default();
                *acked = (*acked).max(p.min(m.position));
            }
        }
        // An agent whose primary runs without a valid lease fences it,
        // unless every other member vouches that no newer epoch exists.
        for id in &ids {
            let m = &self.members[id];
            if !m.writable || m.lease_until.is_some_and(|t| self.now < t) {
                continue;
            }
            let others: Vec<&Member> = self.members.values().filter(|o| o.cluster == m.cluster && o.id != m.id).collect();
            // Only the primary of the newest epoch this agent knows may stay
            // up, and only if no other member knows of a newer one (or of
            // another primary in this one).
            // As the real agent counts them: replicas that run and stream
            // from it.
            let vouched = m.epoch_primary == m.id
                && others.iter().all(|o| {
                    self.talk(m.region, o.region)
                        && o.up
                        && !o.primary
                        && o.upstream == m.id
                        && (o.epoch < m.epoch || (o.epoch == m.epoch && o.epoch_primary == m.id))
                });
            if vouched {
                let (until, names) = (self.now + LEASE.lease, others.iter().map(|o| o.id.clone()).collect::<Vec<_>>());
                for o in names {
                    self.members.get_mut(&o).expect("member").refuse_promotion_until = until;
                }
            } else {
                let m = self.members.get_mut(id).expect("member");
                m.writable = false;
                m.up = false;
                m.lease_fenced = m.epoch_primary == m.id;
                self.say(format!("agent of {id} fences it: lease expired"));
            }
        }
    }

    fn commit(&mut self, d: Decision) {
        let summary = format!("decide {} epoch {}: {} -> {} ({:?}, {})", d.cluster, d.epoch, d.from, d.to, d.trigger, d.reason);
        if d.trigger == Trigger::Automatic {
            self.check_no_failover_of_reachable_primary(&d);
            self.check_synchronous(&d);
        }
        match self.sm.apply(Command::Decide { decision: Box::new(d) }) {
            Outcome::Decided { id } => self.say(format!("{summary} => decision {id}")),
            other => self.say(format!("{summary} => {other:?}")),
        }
    }

    /// Carries out the steps of every decision in progress as the executor
    /// does: the steps `core::steps` says may run, each answered by the
    /// model of its agent, and the answer judged by `core::steps` too.
    fn execute(&mut self) {
        if self.leader.is_none() {
            return;
        }
        let running: Vec<Decision> = self.sm.history.values().filter(|d| d.finished_at.is_none()).cloned().collect();
        for d in running {
            for i in steps::runnable(&d) {
                let key = (d.id, i);
                if self.next_try.get(&key).is_some_and(|at| self.now < *at) {
                    continue;
                }
                if let Some(why) = steps::not_ready(&d, i) {
                    self.next_try.insert(key, self.now + steps::retry_after(&d, i));
                    self.say(format!("decision {} step {i} {}: {why}", d.id, d.steps[i].action));
                    continue;
                }
                let since = *self.first_attempt.entry(key).or_insert(self.now);
                let answer = self.answer(&d, i);
                match steps::judge(&d, i, answer, self.now, self.now - since, &LEASE) {
                    Verdict::Record { state, error, output } => self.finish_step(&d, i, state, error, output),
                    Verdict::Retry { why, after } => {
                        self.next_try.insert(key, self.now + after);
                        if since == self.now {
                            self.say(format!("decision {} step {i} {} {}: retry ({why})", d.id, d.steps[i].action, d.steps[i].member));
                        }
                    }
                }
            }
        }
    }

    /// What the agent of step `i`'s member answers (and does), as the real
    /// agent would: `Err` when it cannot be reached or cannot do it.
    fn answer(&mut self, d: &Decision, i: usize) -> Result<StepArgs, String> {
        let step = d.steps[i].clone();
        if step.action == StepAction::Publish {
            return Ok(StepArgs::default());
        }
        let Some(m) = self.members.get(&step.member).cloned() else { return Err(format!("no member {}", step.member)) };
        let reach = self.agent_connected(&m) && self.region_up[m.region];
        if !reach {
            return Err(format!("the agent of {} is not connected", m.id));
        }
        if d.epoch < m.epoch {
            return Err(format!("agent refused: epoch {} < {}", d.epoch, m.epoch));
        }
        match step.action {
            StepAction::Fence | StepAction::Demote => {
                let mut output = StepArgs::default();
                if step.action == StepAction::Demote {
                    // As the agent: the demoted primary's final position.
                    output.position = Some(m.position);
                    let k = self.known_position.entry(d.cluster.clone()).or_default();
                    *k = (*k).max(m.position);
                    // A clean stop (PostgreSQL) or a write pause (Redis)
                    // sends what is left to the replicas streaming from it.
                    let streaming: Vec<String> = self
                        .members
                        .values()
                        .filter(|r| r.cluster == m.cluster && r.up && !r.primary && !r.lagging && r.upstream == m.id)
                        .filter(|r| self.talk(r.region, m.region))
                        .map(|r| r.id.clone())
                        .collect();
                    for r in streaming {
                        self.set(&r, |x| {
                            x.position = m.position;
                            x.written_at = m.written_at;
                        });
                    }
                }
                self.set(&m.id, |x| {
                    x.writable = false;
                    x.up = false;
                    x.learn(d.epoch, &d.to);
                });
                Ok(output)
            }
            StepAction::CatchUp => {
                let target = d.steps.iter().find(|s| s.action == StepAction::Demote).and_then(|s| s.args.position).unwrap_or(0);
                if m.position >= target {
                    Ok(StepArgs { position: Some(m.position), ..Default::default() })
                } else {
                    Err(format!("replayed {} of {target}", m.position))
                }
            }
            StepAction::Promote if !m.up => Err(format!("{} is not running", m.id)),
            StepAction::Promote if self.now < m.refuse_promotion_until => Err("every other member vouches for the primary".into()),
            StepAction::Promote => {
                self.check_promotion(d, &m);
                self.known_position.insert(d.cluster.clone(), m.position);
                let now = self.now;
                self.set(&m.id, |x| {
                    x.primary = true;
                    x.writable = true;
                    x.lease_fenced = false;
                    x.upstream.clear();
                    x.learn(d.epoch, &d.to);
                    // A promoted standby starts asynchronous.
                    x.sync_count = 0;
                    x.lease_until = Some(now + LEASE.promote_ttl());
                });
                self.sync_acked.remove(&d.cluster);
                Ok(StepArgs::default())
            }
            StepAction::Repoint | StepAction::Rejoin if !m.up => Err(format!("{} is not running", m.id)),
            StepAction::Repoint | StepAction::Rejoin => {
                let to = d.to.clone();
                self.set(&m.id, |x| {
                    x.primary = false;
                    x.writable = false;
                    x.upstream = to.clone();
                    x.learn(d.epoch, &to);
                });
                Ok(StepArgs::default())
            }
            StepAction::Publish => Ok(StepArgs::default()),
        }
    }

    fn set(&mut self, id: &str, f: impl FnOnce(&mut Member)) {
        if let Some(m) = self.members.get_mut(id) {
            f(m);
        }
    }

    /// Leader placement by the production rule (`core::placement`), at most
    /// every PLACEMENT_CALM: the leadership moves to a coordinator that can
    /// talk to a majority, which starts a fresh core as a new leader does.
    fn place_leader(&mut self) {
        let Some(l) = self.leader else { return };
        if !self.placement || !self.now.is_multiple_of(PLACEMENT_CALM) {
            return;
        }
        let obs = self.observations();
        let regions: BTreeMap<u64, String> = (0..3).map(|r| (r as u64 + 1, REGIONS[r].to_string())).collect();
        let voters = [1, 2, 3];
        let world = World {
            now: self.now,
            mono: self.now,
            topology: &self.topology,
            records: &self.sm.records,
            global_paused: self.sm.global_paused,
            observations: &obs,
        };
        let targets =
            placement_targets(&world, &self.sm.history, false, &Coordinators { me: l as u64 + 1, voters: &voters, regions: &regions });
        let to = targets.into_iter().map(|id| id as usize - 1).find(|&r| self.region_up[r] && self.talk(l, r));
        if let Some(r) = to {
            self.leader = Some(r);
            self.core = Some(Core::new(LEASE, self.now));
            self.say(format!("leader placement hands the leadership from region {} to region {}", REGIONS[l], REGIONS[r]));
        }
    }

    fn finish_step(&mut self, d: &Decision, i: usize, state: StepState, error: String, output: StepArgs) {
        self.say(format!("decision {} step {} {} {}: {state:?} {error}", d.id, i, d.steps[i].action, d.steps[i].member));
        self.sm.apply(Command::Step { decision: d.id, index: i, state, started: self.now, finished: self.now, error, output });
    }

    fn step(&mut self) {
        self.now += TICK;
        self.world_step();
        if self.leader.is_none() && self.now >= self.election_until {
            // A majority of coordinators that can talk elects a leader.
            let candidates: Vec<usize> =
                (0..3).filter(|&r| self.region_up[r] && (0..3).filter(|&o| o != r && self.talk(r, o)).count() >= 1).collect();
            if let Some(&r) = candidates.get(self.rng.below(candidates.len().max(1) as u64) as usize) {
                self.leader = Some(r);
                self.core = Some(Core::new(LEASE, self.now));
                self.say(format!("coordinator in region {} becomes leader", REGIONS[r]));
            }
        }
        if let Some(l) = self.leader {
            if !self.region_up[l] || (0..3).all(|o| o == l || !self.talk(l, o)) {
                self.leader = None;
                self.core = None;
                self.election_until = self.now + ELECTION;
                self.say("coordinator leader lost its quorum".into());
            }
        }
        self.place_leader();
        let obs = self.observations();
        if let Some(core) = self.core.as_mut() {
            let world = World {
                now: self.now,
                mono: self.now,
                topology: &self.topology,
                records: &self.sm.records,
                global_paused: self.sm.global_paused,
                observations: &obs,
            };
            let actions = core.tick(&world);
            for a in actions {
                match a {
                    Action::Adopt { cluster, primary, dataset } => {
                        self.say(format!("adopt {primary} as primary of {cluster}"));
                        self.sm.apply(Command::Adopt { cluster, primary, dataset });
                    }
                    Action::Decide(d) => self.commit(*d),
                    Action::Lease { member, epoch, ttl, sync, .. } => {
                        let now = self.now;
                        let connected = self.members.get(&member).is_some_and(|m| self.agent_connected(m));
                        // As the agent: no more replicas than stream from it.
                        let streaming = self.members.get(&member).map_or(0, |m| self.streaming_from(m).len());
                        let sync_count = sync.map_or(0, |s| s.count.min(streaming));
                        if connected {
                            let id = member.clone();
                            let region_up = self.members.get(&member).is_some_and(|m| self.region_up[m.region]);
                            let mut restarted = false;
                            self.set(&member, |m| {
                                if epoch >= m.epoch {
                                    m.learn(epoch, &id);
                                    m.lease_until = Some(now + ttl);
                                    m.sync_count = sync_count;
                                    // The agent brings back the primary it
                                    // fenced for a lapsed lease.
                                    if m.lease_fenced && m.primary && region_up {
                                        m.lease_fenced = false;
                                        m.up = true;
                                        m.writable = true;
                                        restarted = true;
                                    }
                                }
                            });
                            if restarted {
                                self.say(format!("agent of {member} restarts it under a new lease in epoch {epoch}"));
                            }
                        }
                    }
                    Action::Wait { cluster, reason, .. } => {
                        let short: String = reason.split(" for ").next().unwrap_or_default().chars().take(60).collect();
                        if self.last_wait.get(&cluster) != Some(&short) {
                            self.last_wait.insert(cluster.clone(), short);
                            self.say(format!("{cluster} waits: {reason}"));
                        }
                    }
                }
            }
        }
        // Agents learn the current epoch from the views the leader sends.
        let epochs: Vec<(String, u64, String)> = self.sm.records.iter().map(|(c, r)| (c.clone(), r.epoch, r.primary.clone())).collect();
        let connected: Vec<String> = self.members.values().filter(|m| self.agent_connected(m)).map(|m| m.id.clone()).collect();
        for id in connected {
            let m = self.members.get_mut(&id).expect("member");
            if let Some((_, e, p)) = epochs.iter().find(|(c, _, _)| *c == m.cluster) {
                m.learn(*e, p);
            }
        }
        self.execute();
        self.check();
    }

    // ------------------------------------------------------------ checks

    fn fail(&self, what: String) -> ! {
        let story = self.log.iter().rev().take(40).rev().cloned().collect::<Vec<_>>().join("\n");
        panic!("{what}\n--- last events ---\n{story}");
    }

    /// Safety rule 1 (one writable primary per cluster) and liveness.
    fn check(&mut self) {
        for c in CLUSTERS {
            let writable: Vec<&Member> = self.members.values().filter(|m| m.cluster == c && m.writable).collect();
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
                    && m.up
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
    fn check_promotion(&mut self, d: &Decision, m: &Member) {
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
    /// replica, whenever a member holding them is up and heard from.
    fn check_synchronous(&self, d: &Decision) {
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
                && o.up
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
    fn check_no_failover_of_reachable_primary(&self, d: &Decision) {
        let Some(p) = self.members.get(&d.from) else { return };
        let reach = (0..3).filter(|&r| self.talk(r, p.region)).count();
        if p.up && reach >= 2 {
            self.fail(format!("automatic failover of {} while it is up and reachable from {reach} regions", p.id));
        }
    }
}

fn run(seed: u64, verbose: bool) {
    let mut sim = Sim::new(seed, verbose);
    sim.partial_replication = true;
    sim.placement = true;
    for _ in 0..STEPS {
        if sim.rng.chance(4) {
            sim.fault();
        }
        sim.step();
    }
}

fn replay_line(seed: u64) -> String {
    format!("DRC_SIM_SEED={seed} cargo test -p drc-coordinator sim:: -- --nocapture")
}

#[test]
fn seeded_fault_schedules_keep_every_safety_rule() {
    if let Some(seed) = std::env::var("DRC_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        run(seed, true);
        return;
    }
    let seeds: u64 = std::env::var("DRC_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000);
    let base: u64 = std::env::var("DRC_SIM_BASE").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    for seed in base..base + seeds {
        if let Err(e) = std::panic::catch_unwind(|| run(seed, false)) {
            let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
            panic!("seed {seed} failed: {msg}\nreplay: {}", replay_line(seed));
        }
    }
}

#[test]
fn a_crashed_primary_is_replaced_within_the_bound() {
    let mut sim = Sim::settled(1);
    assert_eq!(sim.sm.records["pg"].primary, "pg-a");
    sim.set("pg-a", |m| {
        m.up = false;
        m.writable = false;
    });
    for _ in 0..80 {
        sim.step();
    }
    let rec = &sim.sm.records["pg"];
    assert_eq!(rec.epoch, 2, "{:?}", sim.log);
    assert_eq!(rec.primary, "pg-b", "region b has the better priority");
    // The group follows: Redis moved to region b too.
    assert_eq!(sim.sm.records["rd"].primary, "rd-b", "{:#?}", sim.log);
}

#[test]
fn a_waiting_failover_names_the_instant_it_may_go_ahead() {
    let mut sim = Sim::settled(1);
    sim.set("pg-a", |m| {
        m.up = false;
        m.writable = false;
    });
    let mut gates = 0;
    for _ in 0..80 {
        sim.step();
        if sim.sm.records["pg"].epoch > 1 {
            break;
        }
        let obs = sim.observations();
        let Some(core) = sim.core.as_mut() else { continue };
        let Some(wake) = core.wake() else { continue };
        assert!(wake > sim.now, "a wake-up in the past");
        let world =
            |now| World { now, mono: now, topology: &sim.topology, records: &sim.sm.records, global_paused: false, observations: &obs };
        let decides = |actions: &[Action]| actions.iter().any(|a| matches!(a, Action::Decide(d) if d.cluster == "pg"));
        // Just before it nothing may happen, and the core still names it;
        // at it, the gate is open: a decision, or a later gate.
        assert!(!decides(&core.tick(&world(wake - 1))), "decided before its wake-up");
        assert_eq!(core.wake(), Some(wake));
        let at = core.tick(&world(wake));
        assert!(decides(&at) || core.wake().is_some_and(|w| w > wake), "nothing opened at {wake}: {at:?}");
        gates += 1;
    }
    assert!(gates > 0, "the failover never waited on a timed gate");
    assert_eq!(sim.sm.records["pg"].epoch, 2, "{:#?}", sim.log);
}

#[test]
fn an_operator_failover_of_a_serving_primary_waits_for_its_final_writes_unless_forced() {
    let mut sim = Sim::settled(9);
    assert_eq!(sim.sm.records["pg"].primary, "pg-a");
    sim.operator(Request::Failover { cluster: "pg".into(), to: Some("pg-b".into()), force: false });
    let d = sim.sm.history.values().last().expect("a decision").clone();
    let actions: Vec<&str> = d.steps.iter().map(|s| s.action.as_str()).collect();
    assert_eq!(d.kind, DecisionKind::Switchover, "{:#?}", sim.log);
    assert!(actions.starts_with(&["demote", "catch_up"]), "{actions:?}");
    assert!(d.reason.contains("carried out as a switchover"), "{}", d.reason);
    for _ in 0..80 {
        sim.step();
    }
    assert_eq!(sim.sm.records["pg"].primary, "pg-b", "{:#?}", sim.log);
    // Forced, the serving primary is fenced at once.
    sim.operator(Request::Failover { cluster: "pg".into(), to: Some("pg-c".into()), force: true });
    let d = sim.sm.history.values().last().expect("a decision").clone();
    assert_eq!(d.kind, DecisionKind::Failover, "{:#?}", sim.log);
    assert_eq!(d.steps.first().map(|s| s.action.as_str()), Some("fence"));
}

#[test]
fn an_agent_link_loss_alone_causes_no_failover() {
    let mut sim = Sim::settled(2);
    sim.set("pg-a", |m| m.link = false);
    for _ in 0..100 {
        sim.step();
    }
    assert_eq!(sim.sm.records["pg"].epoch, 1, "{:#?}", sim.log);
    assert!(sim.members["pg-a"].writable, "fail-static: every other member vouched for it");
}

#[test]
fn a_lagging_replica_is_not_promoted_but_force_does() {
    let mut sim = Sim::new(3, false);
    sim.set("pg-b", |m| m.lagging = true);
    sim.set("pg-c", |m| m.lagging = true);
    for _ in 0..100 {
        sim.step();
    }
    sim.set("pg-a", |m| {
        m.up = false;
        m.writable = false;
    });
    for _ in 0..80 {
        sim.step();
    }
    assert_eq!(sim.sm.records["pg"].epoch, 1, "no automatic promotion beyond the RPO budget");
    sim.operator(Request::Failover { cluster: "pg".into(), to: Some("pg-c".into()), force: true });
    for _ in 0..10 {
        sim.step();
    }
    let d = sim.sm.history.values().find(|d| d.cluster == "pg").expect("a decision");
    assert_eq!(d.trigger, Trigger::Operator { force: true });
    assert!(sim.members["pg-c"].writable);
}

#[test]
fn a_primary_fenced_while_the_coordinators_were_away_comes_back_without_a_failover() {
    let mut sim = Sim::settled(4);
    // One replica down: the primary can no longer be vouched for by every
    // other member, so losing the coordinators for longer than a lease
    // makes its agent fence it.
    sim.set("pg-c", |m| {
        m.up = false;
        m.writable = false;
    });
    for _ in 0..10 {
        sim.step();
    }
    sim.leader = None;
    sim.core = None;
    sim.election_until = sim.now + 3 * LEASE.lease;
    for _ in 0..25 {
        sim.step();
    }
    assert!(sim.members["pg-a"].lease_fenced && !sim.members["pg-a"].writable, "{:#?}", sim.log);
    for _ in 0..20 {
        sim.step();
    }
    assert!(sim.leader.is_some());
    assert!(sim.members["pg-a"].writable, "a new lease brought it back: {:#?}", sim.log);
    assert_eq!(sim.sm.records["pg"].epoch, 1, "and nobody was promoted: {:#?}", sim.log);
}

#[test]
fn a_region_loss_moves_the_group_to_one_region_even_when_one_candidate_is_silent() {
    let mut sim = Sim::settled(5);
    // pg-b cannot be promoted (its agent is cut off), so PostgreSQL can only
    // go to region c; Redis, deciding in the same tick, must follow it there
    // rather than to region b, which it would prefer by priority.
    sim.set("pg-b", |m| m.link = false);
    sim.region_up[0] = false;
    for m in sim.members.values_mut().filter(|m| m.region == 0) {
        m.up = false;
        m.writable = false;
    }
    for _ in 0..80 {
        sim.step();
    }
    assert_eq!(sim.sm.records["pg"].primary, "pg-c", "{:#?}", sim.log);
    assert_eq!(sim.sm.records["rd"].primary, "rd-c", "{:#?}", sim.log);
}

#[test]
fn an_evacuation_keeps_the_group_together_over_a_more_advanced_member_elsewhere() {
    let mut sim = Sim::settled(6);
    // rd-b falls a little behind (well within the RPO budget), so rd-c is
    // the most advanced replica; PostgreSQL has already gone to region b.
    sim.set("rd-b", |m| m.lagging = true);
    while sim.members["rd-b"].position == sim.members["rd-c"].position {
        sim.step();
    }
    sim.set("rd-b", |m| m.lagging = false);
    let (b, c) = (sim.members["rd-b"].position, sim.members["rd-c"].position);
    assert!(b < c && c - b < RPO_BYTES, "rd-b {b}, rd-c {c}");
    sim.operator(Request::Evacuate { cluster: "rd".into(), from: "a".into(), to: None, prefer: Some("b".into()), force: false });
    let d = sim.sm.history.values().find(|d| d.cluster == "rd").expect("a decision");
    assert_eq!(d.to, "rd-b", "{:#?}", sim.log);
}

#[test]
fn a_request_right_after_a_promotion_waits_until_the_new_primary_reports_as_one() {
    let mut sim = Sim::settled(8);
    sim.operator(Request::Switchover { cluster: "rd".into(), to: Some("rd-b".into()) });
    for _ in 0..50 {
        if sim.sm.records["rd"].in_progress.is_none() {
            break;
        }
        sim.step();
    }
    let rec = sim.sm.records["rd"].clone();
    assert_eq!((rec.primary.as_str(), rec.in_progress), ("rd-b", None), "{:#?}", sim.log);
    assert!(sim.now - rec.promoted_at < LEASE.promote_ttl());
    // The agent's newest sample was taken just before the promotion.
    let mut obs = sim.observations();
    obs.get_mut("rd-b").expect("rd-b").role = Role::Replica;
    let evacuate = Request::Evacuate { cluster: "rd".into(), from: "b".into(), to: None, prefer: None, force: false };
    let core = sim.core.as_mut().expect("a leader");
    let world =
        World { now: sim.now, mono: sim.now, topology: &sim.topology, records: &sim.sm.records, global_paused: false, observations: &obs };
    let refused = core.request(&world, &evacuate).expect_err("the new primary has not reported yet");
    assert!(matches!(refused, Refusal::NotNow(_)), "a refusal to retry: {refused:?}");
    let refused = refused.to_string();
    assert!(refused.contains("rd-b was promoted") && refused.contains("not reported as the primary yet"), "{refused}");
    assert!(core.settling(&world, "rd").is_some());
    // Once it reports, the same request is a planned move, not a failover.
    obs.get_mut("rd-b").expect("rd-b").role = Role::Primary;
    let world =
        World { now: sim.now, mono: sim.now, topology: &sim.topology, records: &sim.sm.records, global_paused: false, observations: &obs };
    assert!(core.settling(&world, "rd").is_none());
    let d = core.request(&world, &evacuate).expect("accepted");
    assert_eq!(d.kind, DecisionKind::Switchover, "{d:?}");
}
