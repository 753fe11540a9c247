//! The decision core: pure — no I/O, no clock, no randomness.
//!
//! The leader calls [`Core::tick`] with what it currently sees (a [`Situation`]:
//! time, topology, replicated records, fresh observations) and carries out
//! the [`Action`]s it returns; operator requests go through
//! [`Core::request`]. Everything that makes a failover safe is decided here
//! and checked by the seeded simulations in `crate::sim`:
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

mod archive;
mod choose;
mod detect;
mod lease;
mod placement;
mod request;
pub mod steps;
mod sync;
mod wait;

use std::collections::BTreeMap;

use drc_model::topology::Topology;
use drc_model::{ClusterRecord, Decision, Millis, Role};

pub use archive::{archive_plan, wal_prefix, ArchivePlan, Current};
pub use lease::LeaseConfig;
pub use placement::{placement_targets, Coordinators, PLACEMENT_CALM};
pub use request::{Refusal, Request};
pub use sync::{sync_standbys, SyncStandbys};
pub use wait::WaitKind;

/// One member as the leader sees it now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// Agent connected and its newest sample younger than the detection window.
    pub fresh: bool,
    /// The agent reaches its own database.
    pub reachable: bool,
    pub role: Role,
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
pub struct Situation<'a> {
    /// Wall time: what replicated instants (a promotion, an anti-flap
    /// block, a decision) are compared with.
    pub now: Millis,
    /// The same instant on the leader's monotonic clock, which no NTP step
    /// moves: every deadline the core keeps in memory (leases, windows)
    /// counts on it.
    pub mono: Millis,
    pub topology: &'a Topology,
    pub records: &'a BTreeMap<String, ClusterRecord>,
    /// `drctl pause` without a cluster.
    pub global_paused: bool,
    /// By member id; a member without an entry has never been heard from.
    pub observations: &'a BTreeMap<String, Observation>,
}

/// What the leader should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Record the first primary of a cluster (epoch 1).
    Adopt { cluster: String, primary: String, dataset: String },
    /// Record the dataset id the recorded primary now reports, derived from
    /// the recorded one ([`crate::state::Command::AdvanceDataset`]).
    AdvanceDataset { cluster: String, primary: String, dataset: String, previous: String },
    /// Commit this decision to Raft, then carry out its steps.
    Decide(Box<Decision>),
    /// Grant (renew) the primary's lease for `ttl` from now. `sync`: what
    /// a PostgreSQL primary's commits wait for (see [`sync_standbys`]).
    Lease { cluster: String, member: String, epoch: u64, ttl: Millis, sync: Option<SyncStandbys> },
    /// Nothing happens to this cluster, and why (shown in status).
    Wait { cluster: String, reason: String, kind: WaitKind },
}

#[derive(Clone, Debug, Default)]
struct Track {
    /// Since when the failure has been confirmed without interruption
    /// (this and every other instant of a track: monotonic).
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
    fn see(&mut self, primary: &Observation, members: &[(&String, Observation)]) {
        let probed = members.iter().map(|(_, o)| o.primary_position).max().unwrap_or(0);
        let own = if is_primary(primary) { primary.position } else { 0 };
        self.primary_position = self.primary_position.max(probed).max(own);
    }
}

/// Members with what the leader sees of each (default: never heard from).
fn observed<'a>(w: &Situation, ids: impl Iterator<Item = &'a String>) -> Vec<(&'a String, Observation)> {
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

impl Situation<'_> {
    /// A replicated wall-clock instant on the monotonic clock, as of now.
    fn mono_of(&self, wall: Millis) -> Millis {
        (self.mono + wall).saturating_sub(self.now)
    }

    /// A monotonic instant in wall time, to be replicated.
    fn wall_of(&self, mono: Millis) -> Millis {
        (self.now + mono).saturating_sub(self.mono)
    }
}

fn is_primary(o: &Observation) -> bool {
    o.fresh && o.reachable && o.role == Role::Primary
}

impl Core {
    /// A core for a node that became leader at `now` (monotonic). It assumes that the
    /// previous leader renewed every lease as late as `handover` after that
    /// (zero when a deposed leader stops renewing before a successor can be
    /// elected; see [`LeaseConfig::handover`]).
    pub fn new(lease: LeaseConfig, now: Millis) -> Core {
        Core { lease, leader_since: now, tracks: BTreeMap::new(), wake: None }
    }

    /// The cluster's track, reset when the epoch changed. `primary_position`
    /// is what is known of the recorded primary's position: after a
    /// promotion, at least the position it had as a replica.
    fn track(&mut self, w: &Situation, cluster: &str, rec: &ClusterRecord, primary_position: u64) -> &mut Track {
        let primary_position = primary_position.max(rec.known_position);
        let fresh = Track {
            // An adopted primary (never promoted: promoted_at 0) holds no promotion lease.
            lease_until: (self.leader_since + self.lease.handover + self.lease.lease).max(if rec.promoted_at > 0 {
                w.mono_of(rec.promoted_at + self.lease.promote_ttl())
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
            *t = Track { lease_until: t.lease_until.max(fresh.lease_until), primary_position: kept, ..fresh };
        }
        t
    }

    /// Re-evaluates every cluster. Members come indexed by cluster (built
    /// once per topology), so a tick costs O(members), not O(clusters × members).
    pub fn tick(&mut self, w: &Situation) -> Vec<Action> {
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
}

#[cfg(test)]
mod tests {
    use super::choose::{choose, Ask};
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

    fn replica(streaming: bool, position: u64, received: u64) -> Observation {
        Observation {
            fresh: true,
            reachable: true,
            role: Role::Replica,
            dataset: "ds".into(),
            position,
            received,
            streaming,
            ..Default::default()
        }
    }

    fn sync_of(t: &Topology, cluster: &str, obs: &BTreeMap<String, Observation>) -> Option<String> {
        let records = BTreeMap::new();
        let w = Situation { now: 0, mono: 0, topology: t, records: &records, global_paused: false, observations: obs };
        let ids: Vec<String> = t.members_of(cluster).map(|(id, _)| id.clone()).collect();
        let members = observed(&w, ids.iter());
        let primary = format!("{cluster}-a");
        sync_standbys(&w, cluster, &primary, &members).map(|s| s.to_string())
    }

    #[test]
    fn commits_wait_for_replicas_that_may_be_promoted_whatever_the_leader_has_seen_of_them() {
        let t = topology(2);
        let mut obs: BTreeMap<String, Observation> =
            ["pg-b", "pg-c", "pg-d", "rd-b"].iter().map(|id| (id.to_string(), replica(true, 0, 0))).collect();
        // pg-d has priority 0: never promoted automatically, so never waited for.
        assert_eq!(sync_of(&t, "pg", &obs).as_deref(), Some(r#"ANY 2 ("pg-b", "pg-c")"#));
        assert_eq!(sync_of(&t, "rd", &obs), None, "Redis has no synchronous replication");
        // A replica the leader has no fresh sample of (a new leader, an
        // agent restarting) may stream all along: only the primary's agent,
        // which sees pg_stat_replication, waits for fewer.
        obs.get_mut("pg-c").expect("c").streaming = false;
        obs.get_mut("pg-b").expect("b").fresh = false;
        assert_eq!(sync_of(&t, "pg", &obs).as_deref(), Some(r#"ANY 2 ("pg-b", "pg-c")"#));
        obs.clear();
        assert_eq!(sync_of(&t, "pg", &obs).as_deref(), Some(r#"ANY 2 ("pg-b", "pg-c")"#), "not even heard from yet");
        // Asynchronous clusters say so explicitly, so that turning the setting off takes effect.
        assert_eq!(sync_of(&topology(0), "pg", &obs).as_deref(), Some(""));
    }

    #[test]
    fn a_crashed_primary_is_replaced_only_on_samples_received_since_the_crash_was_seen() {
        let t = topology(1);
        let mut records = BTreeMap::new();
        records.insert("pg".to_string(), ClusterRecord { epoch: 1, primary: "pg-a".into(), dataset: "ds".into(), ..Default::default() });
        let gone = Observation { fresh: true, role: Role::Unknown, server_gone: true, epoch: 1, ..Default::default() };
        let replica = |position: u64, received: u64, age: Millis| Observation {
            dataset: "ds".into(),
            epoch: 1,
            age,
            ..replica(true, position, received)
        };
        let mut core = Core::new(LeaseConfig::default(), 0);
        let mut tick = |now: Millis, b_age: Millis| {
            let obs: BTreeMap<String, Observation> =
                [("pg-a", gone.clone()), ("pg-b", replica(500, 500, b_age)), ("pg-c", replica(400, 400, 0))]
                    .into_iter()
                    .map(|(id, o)| (id.to_string(), o))
                    .collect();
            let w = Situation { now, mono: now, topology: &t, records: &records, global_paused: false, observations: &obs };
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
        let obs: BTreeMap<String, Observation> = [("pg-b", replica(true, 1_000, 1_000)), ("pg-c", replica(true, 900, 1_100))]
            .into_iter()
            .map(|(id, o)| (id.to_string(), o))
            .collect();
        let records = BTreeMap::new();
        let w = Situation { now: 0, mono: 0, topology: &t, records: &records, global_paused: false, observations: &obs };
        let ids: Vec<String> = t.members_of("pg").map(|(id, _)| id.clone()).collect();
        let members = observed(&w, ids.iter());
        let rec = ClusterRecord { epoch: 1, primary: "pg-a".into(), dataset: "ds".into(), ..Default::default() };
        let policy = t.clusters["pg"].policy.clone();
        let (to, why) = choose(&w, &rec, &policy, &members, 1_100, Ask::default()).expect("a candidate");
        assert_eq!(to, "pg-c", "{why}");
    }

    #[test]
    fn a_switchover_refuses_a_replica_that_does_not_stream_which_a_failover_may_still_take() {
        let t = topology(1);
        // rd-b never synchronised: its link is down and it reports an offset
        // of its own, ahead of a primary that never wrote.
        let obs = BTreeMap::from([("rd-b".to_string(), Observation { dataset: String::new(), ..replica(false, 1, 0) })]);
        let records = BTreeMap::new();
        let w = Situation { now: 0, mono: 0, topology: &t, records: &records, global_paused: false, observations: &obs };
        let ids: Vec<String> = t.members_of("rd").map(|(id, _)| id.clone()).collect();
        let members = observed(&w, ids.iter());
        let rec = ClusterRecord { epoch: 1, primary: "rd-a".into(), dataset: "ds".into(), ..Default::default() };
        let policy = t.clusters["rd"].policy.clone();
        let planned = choose(&w, &rec, &policy, &members, 0, Ask { planned: true, ..Ask::default() });
        let why = planned.expect_err("a planned move needs a streaming candidate");
        assert!(why.contains("rd-b: it does not stream from the primary rd-a"), "{why}");
        // With the primary gone, no replica streams: the RPO budget decides.
        assert_eq!(choose(&w, &rec, &policy, &members, 0, Ask::default()).map(|(to, _)| to), Ok("rd-b".to_string()));
    }
}
