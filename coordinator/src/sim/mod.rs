//! Seeded simulations of the decision core against a model of the world:
//! three regions, two clusters in one failover group (one member of each per
//! region), agents with leases, a coordinator leader that comes and goes,
//! and random faults — member crashes, region loss, agent link loss,
//! partitions between regions (both ways or one), lagging replicas,
//! flapping links, frozen nodes, servers and agents (connected but silent;
//! their replicas' replication status still says `streaming`), operator
//! requests. The core's decisions go through the real [`StateMachine`],
//! and their steps run by the production rules (`core::steps`) against the
//! model of the agents.
//!
//! After every step of 100 ms the safety rules are checked (see
//! [`Sim::check`]). `cargo test -p drc-coordinator sim` runs 1,000 seeds;
//! `DRC_SIM_SEEDS=100000` runs more; `DRC_SIM_SEED=N` replays one seed and
//! prints its story.

mod checks;
mod execute;
mod faults;
mod scenarios;
mod world;

use std::collections::BTreeMap;

use drc_model::topology::parse::parse_topology;
use drc_model::topology::Topology;
use drc_model::Millis;

use crate::core::{Action, Core, LeaseConfig, Observation, Request, Situation};
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
    /// The server process is stopped (SIGSTOP, a hung machine): it runs,
    /// keeps its connections open and answers nothing.
    server_frozen: bool,
    // --- its agent ---
    link: bool,
    /// The agent is stopped: its stream stays open and silent, it acts on
    /// nothing.
    agent_frozen: bool,
    /// An agent frozen alone runs again at this time. The lease is enforced
    /// by the agent process: an agent stopped across the end of its lease
    /// for longer than the slack the leader leaves it (the drift margin)
    /// while its server serves on, behind a partition, is beyond what
    /// agent-side fencing covers (that needs a watchdog process of its
    /// own), so the schedules freeze an agent alone for less than that.
    agent_thaw_at: Option<Millis>,
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
    /// cut[i][j]: what region i sends to region j is dropped. A TCP
    /// connection needs both ways; what a primary receives from a replica
    /// (its replication replies) needs only one.
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
    samples: BTreeMap<String, Observation>,
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
    pub(super) fn settled(seed: u64) -> Sim {
        let mut sim = Sim::new(seed, false);
        for _ in 0..30 {
            sim.step();
        }
        sim
    }

    pub(super) fn new(seed: u64, verbose: bool) -> Sim {
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
                        server_frozen: false,
                        link: true,
                        agent_frozen: false,
                        agent_thaw_at: None,
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

    pub(super) fn say(&mut self, what: String) {
        if self.verbose {
            println!("{:>6} ms  {what}", self.now);
        }
        self.log.push(format!("{} ms: {what}", self.now));
    }

    pub(super) fn step(&mut self) {
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
        let obs = self.observations();
        self.place_leader(&obs);
        if let Some(core) = self.core.as_mut() {
            let world = situation(self.now, &self.topology, &self.sm, &obs);
            let actions = core.tick(&world);
            for a in actions {
                match a {
                    Action::Adopt { cluster, primary, dataset } => {
                        self.say(format!("adopt {primary} as primary of {cluster}"));
                        self.sm.apply(Command::Adopt { cluster, primary, dataset });
                    }
                    Action::AdvanceDataset { cluster, primary, dataset, previous } => {
                        self.sm.apply(Command::AdvanceDataset { cluster, primary, dataset, previous });
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
}

/// What the simulated leader's core sees now: one clock for wall and
/// monotonic time.
fn situation<'a>(now: Millis, topology: &'a Topology, sm: &'a StateMachine, obs: &'a BTreeMap<String, Observation>) -> Situation<'a> {
    Situation { now, mono: now, topology, records: &sm.records, global_paused: sm.global_paused, observations: obs }
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
