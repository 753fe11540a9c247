//! The replicated state machine: what every coordinator holds at a given
//! Raft index.
//!
//! Invariant (DESIGN.md rule 6, idempotent apply): applying the same command
//! twice leaves the state exactly as applying it once. The Raft layer already
//! skips entries at or below the persisted applied index; commands are
//! additionally written as "set to" rather than "change by" so that a
//! re-delivered entry is harmless even without that guard.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use drc_model::audit::{AuditEntry, AuditOutcome};
use drc_model::job::{JobKind, JobState};
use drc_model::wal::Lsn;
use drc_model::{ClusterRecord, Decision, DecisionKind, Millis, StepArgs, StepState};

use crate::core::steps;
use drc_model::topology::Topology;

pub mod format;
mod prune;
pub mod tally;
pub use prune::LastIds;
use prune::{next_id, prune};
use tally::Tally;

/// A change proposed through Raft. Serialised as JSON into the entry data;
/// variants are only ever added, so old logs stay readable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Replace the whole topology.
    ApplyTopology { topology: Topology },
    /// Record the first primary of a cluster (epoch 1). Ignored once a
    /// cluster has a primary.
    Adopt { cluster: String, primary: String, dataset: String },
    /// The recorded primary's dataset id moved on without a promotion (a
    /// Redis primary takes a new replication id when its first replica
    /// connects, or when it restarts): applied only while `primary` is still
    /// the primary and `previous` is the recorded id (or none is recorded).
    AdvanceDataset { cluster: String, primary: String, dataset: String, previous: String },
    /// Start a change of primary: applied only if it starts the epoch right
    /// after the recorded one and nothing else is in progress
    /// (compare-and-set, so a stale or repeated proposal changes nothing).
    Decide { decision: Box<Decision> },
    /// The outcome of one step of a decision.
    Step {
        decision: u64,
        index: usize,
        state: StepState,
        started: Millis,
        finished: Millis,
        error: String,
        /// What the agent reported (e.g. a demoted primary's final position).
        #[serde(default)]
        output: StepArgs,
    },
    /// Maintenance: pause or resume automatic failover of one cluster, or of all.
    Pause { cluster: Option<String>, paused: bool },
    /// Lift a cluster's anti-flap block.
    ClearBlock { cluster: String },
    /// Add a backup to the catalog (id 0: it gets the next id) or update it.
    Backup { record: Box<drc_model::job::BackupRecord> },
    /// Add (id 0) or update a recovery test.
    RecoveryTest { record: Box<drc_model::job::RecoveryTest> },
    /// Add (id 0) or update a restore to a point.
    Restore { record: Box<drc_model::job::Restore> },
    /// Set (or, with an empty cron expression, remove) a cluster's schedule
    /// of `job`, from `at` on.
    SetSchedule { cluster: String, job: JobKind, cron: String, at: Millis },
    /// A schedule fired for its occurrence `at`: applied only if `at` is
    /// newer than the last firing, so an occurrence fires once even when a
    /// new leader retries it.
    Fire { cluster: String, job: JobKind, at: Millis },
    /// Retention deleted a backup's objects: drop it from the catalog.
    ForgetBackup { id: u64 },
    /// WAL of `timeline` from `begin` to `end` is in the archive `key`
    /// (`<prefix>/<system id>`) at `destination`.
    WalArchived { cluster: String, destination: String, key: String, system_id: String, timeline: u32, begin: u64, end: u64, at: Millis },
    /// Retention deleted the archive's WAL before `from` at `destination`.
    WalPruned { destination: String, key: String, from: u64 },
    /// A state-changing request, recorded before it runs (its outcome
    /// pending) or, refused before it could run, with its outcome. It gets
    /// the next id.
    Audit { entry: Box<AuditEntry> },
    /// The outcome of an audited request: applied only while it is pending.
    AuditOutcome { id: u64, outcome: AuditOutcome, at: Millis },
}

/// What applying a command did, returned to the proposer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The topology now has this version (unchanged if the command changed nothing).
    Topology { version: u64 },
    /// Raft membership after a configuration change.
    Membership { voters: Vec<u64> },
    /// An entry with nothing to apply (leader's empty entry).
    Nothing,
    /// A decision was recorded with this id (or, repeated, already had it).
    Decided { id: u64 },
    /// The command was not applied, and why.
    Refused { reason: String },
    /// Applied.
    Done,
    /// A backup or recovery test was recorded under this id.
    Recorded { id: u64 },
}

/// Where a coordinator is reached: clients (agents, drctl, other
/// coordinators forwarding admin requests) use `client`; Raft traffic goes to
/// `raft` when the node serves it on a listener of its own, so that heartbeats
/// never queue behind thousands of agent connections.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "NodeAddressRepr")]
pub struct NodeAddress {
    pub client: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft: Option<String>,
}

/// Accepts the older form, a bare client address.
#[derive(Deserialize)]
#[serde(untagged)]
enum NodeAddressRepr {
    Bare(String),
    Full {
        client: String,
        #[serde(default)]
        raft: Option<String>,
    },
}

impl From<NodeAddressRepr> for NodeAddress {
    fn from(r: NodeAddressRepr) -> Self {
        match r {
            NodeAddressRepr::Bare(client) => NodeAddress { client, raft: None },
            NodeAddressRepr::Full { client, raft } => NodeAddress { client, raft },
        }
    }
}

impl NodeAddress {
    pub fn shared(client: impl Into<String>) -> Self {
        NodeAddress { client: client.into(), raft: None }
    }

    /// Where this node takes Raft messages.
    pub fn raft(&self) -> &str {
        self.raft.as_deref().unwrap_or(&self.client)
    }

    /// The bytes carried in a conf change's context.
    pub fn to_context(&self) -> Vec<u8> {
        match &self.raft {
            None => self.client.clone().into_bytes(),
            Some(_) => serde_json::to_vec(self).unwrap_or_default(),
        }
    }

    /// Reads [`NodeAddress::to_context`]: JSON, or a bare client address.
    pub fn from_context(bytes: &[u8]) -> Self {
        serde_json::from_slice(bytes).unwrap_or_else(|_| NodeAddress::shared(String::from_utf8_lossy(bytes).into_owned()))
    }
}

/// Serialises an `Arc<T>` as the `T` it holds (serde's own support needs
/// its `rc` feature, which would rebuild every serde user of the workspace).
mod shared {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(v: &Arc<T>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().serialize(s)
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Arc<T>, D::Error> {
        T::deserialize(d).map(Arc::new)
    }
}

/// The replicated state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StateMachine {
    /// Shared: readers (every health request, every tick) take a reference,
    /// not a copy of thousands of members.
    #[serde(with = "shared")]
    pub topology: Arc<Topology>,
    /// Bumped each time the topology actually changes.
    pub topology_version: u64,
    /// Addresses of every coordinator node in the Raft configuration, by id.
    pub nodes: BTreeMap<u64, NodeAddress>,
    /// Primary, epoch and failover state of every cluster.
    /// Shared like the topology: read on every tick, changed by decisions.
    #[serde(default, with = "shared")]
    pub records: Arc<BTreeMap<String, ClusterRecord>>,
    /// Every decision ever taken, by id (1, 2, ...).
    #[serde(default)]
    pub history: BTreeMap<u64, Decision>,
    /// `drctl pause` for every cluster.
    #[serde(default)]
    pub global_paused: bool,
    /// The backup catalog, by id.
    #[serde(default)]
    pub backups: BTreeMap<u64, drc_model::job::BackupRecord>,
    /// Recovery tests, by id.
    #[serde(default)]
    pub recovery_tests: BTreeMap<u64, drc_model::job::RecoveryTest>,
    /// Restores to a point, by id.
    #[serde(default)]
    pub restores: BTreeMap<u64, drc_model::job::Restore>,
    /// Backup and recovery-test schedules, by "cluster/job".
    #[serde(default)]
    pub schedules: BTreeMap<String, drc_model::job::Schedule>,
    /// The audit trail, by id.
    #[serde(default)]
    pub audit: BTreeMap<u64, AuditEntry>,
    /// The WAL archive catalog, by `WalArchive::catalog_key`.
    #[serde(default)]
    pub wal_archives: BTreeMap<String, drc_model::archive::WalArchive>,
    #[serde(default)]
    pub last_ids: LastIds,
    /// What ended, counted for `/metrics`.
    #[serde(default)]
    pub tally: Tally,
    /// The coordinator group's generation: 0 when founded, one more at each
    /// `drc-coordinator recover`, which sets it outside the log, in the
    /// state every later member starts from (a snapshot). Agents and
    /// proxies leave a group older than one they have seen.
    #[serde(default)]
    pub generation: u64,
}

impl StateMachine {
    /// The state a brand-new cluster starts from: its founding nodes and
    /// nothing else. Every founding node computes the same value.
    pub fn bootstrap(nodes: &BTreeMap<u64, NodeAddress>) -> Self {
        StateMachine { nodes: nodes.clone(), ..Default::default() }
    }

    pub fn apply(&mut self, cmd: Command) -> Outcome {
        match cmd {
            Command::ApplyTopology { topology } => {
                if topology != *self.topology {
                    self.topology = Arc::new(topology);
                    self.topology_version += 1;
                    self.retain(0);
                }
                Outcome::Topology { version: self.topology_version }
            }
            Command::Adopt { cluster, primary, dataset } => {
                let rec = Arc::make_mut(&mut self.records).entry(cluster).or_default();
                if rec.primary.is_empty() {
                    *rec = ClusterRecord { epoch: rec.epoch.max(1), primary, dataset, ..rec.clone() };
                }
                Outcome::Done
            }
            Command::AdvanceDataset { cluster, primary, dataset, previous } => {
                let from_recorded = |r: &ClusterRecord| r.primary == primary && (r.dataset.is_empty() || r.dataset == previous);
                if self.records.get(&cluster).is_some_and(from_recorded) {
                    Arc::make_mut(&mut self.records).entry(cluster).or_default().advance_dataset(&dataset);
                }
                Outcome::Done
            }
            Command::Decide { decision } => self.decide(*decision),
            Command::Backup { record } => {
                let mut r = *record;
                if r.id == 0 {
                    r.id = next_id(&mut self.last_ids.backup);
                } else if !self.backups.contains_key(&r.id) {
                    return Outcome::Refused { reason: format!("no backup {}", r.id) };
                }
                let (id, now) = (r.id, r.finished_at.max(r.started_at));
                self.tally.job_ended(&r.cluster, JobKind::Backup, self.backups.get(&id).map(|b| b.state), r.state);
                self.backups.insert(id, r);
                self.retain(now);
                Outcome::Recorded { id }
            }
            Command::SetSchedule { cluster, job, cron, at } => {
                if !self.topology.clusters.contains_key(&cluster) {
                    return Outcome::Refused { reason: format!("unknown cluster {cluster:?}") };
                }
                if job == JobKind::Restore {
                    return Outcome::Refused { reason: "restores are never scheduled".into() };
                }
                let key = format!("{cluster}/{job}");
                if cron.is_empty() {
                    self.schedules.remove(&key);
                } else {
                    let last_fired = self.schedules.get(&key).map(|s| s.last_fired).unwrap_or(0);
                    self.schedules.insert(key, drc_model::job::Schedule { cluster, job, cron, since: at, last_fired });
                }
                Outcome::Done
            }
            Command::Fire { cluster, job, at } => match self.schedules.get_mut(&format!("{cluster}/{job}")) {
                Some(s) if at > s.last_fired && at >= s.since => {
                    s.last_fired = at;
                    Outcome::Done
                }
                Some(_) => Outcome::Refused { reason: format!("the {job} of {cluster} at {at} has fired already") },
                None => Outcome::Refused { reason: format!("no {job} schedule for {cluster}") },
            },
            Command::ForgetBackup { id } => {
                self.backups.remove(&id);
                Outcome::Done
            }
            Command::WalArchived { cluster, destination, key, system_id, timeline, begin, end, at } => {
                let archive = self
                    .wal_archives
                    .entry(drc_model::archive::WalArchive::catalog_key(&destination, &key))
                    .or_insert_with(|| drc_model::archive::WalArchive { cluster, destination, system_id, ..Default::default() });
                let range = drc_model::archive::WalRange { begin: Lsn(begin), end: Lsn(end) };
                if archive.record(timeline, range) {
                    archive.updated_at = at;
                }
                Outcome::Done
            }
            Command::WalPruned { destination, key, from } => {
                if let Some(a) = self.wal_archives.get_mut(&drc_model::archive::WalArchive::catalog_key(&destination, &key)) {
                    a.forget_before(Lsn(from));
                }
                Outcome::Done
            }
            Command::RecoveryTest { record } => {
                let mut r = *record;
                if r.id == 0 {
                    r.id = next_id(&mut self.last_ids.recovery_test);
                } else if !self.recovery_tests.contains_key(&r.id) {
                    return Outcome::Refused { reason: format!("no recovery test {}", r.id) };
                }
                let (id, now) = (r.id, r.finished_at.max(r.started_at));
                self.tally.job_ended(&r.cluster, JobKind::RecoveryTest, self.recovery_tests.get(&id).map(|t| t.state), r.state);
                self.recovery_tests.insert(id, r);
                self.retain(now);
                Outcome::Recorded { id }
            }
            Command::Restore { record } => {
                let mut r = *record;
                if r.id == 0 {
                    r.id = next_id(&mut self.last_ids.restore);
                } else if !self.restores.contains_key(&r.id) {
                    return Outcome::Refused { reason: format!("no restore {}", r.id) };
                }
                let (id, now) = (r.id, r.finished_at.max(r.started_at));
                self.tally.job_ended(&r.cluster, JobKind::Restore, self.restores.get(&id).map(|t| t.state), r.state);
                self.restores.insert(id, r);
                self.retain(now);
                Outcome::Recorded { id }
            }
            Command::Step { decision, index, state, started, finished, error, output } => {
                self.step(decision, index, state, started, finished, error, output)
            }
            Command::Pause { cluster: None, paused } => {
                self.global_paused = paused;
                Outcome::Done
            }
            Command::Pause { cluster: Some(c), paused } => {
                if !self.topology.clusters.contains_key(&c) {
                    return Outcome::Refused { reason: format!("unknown cluster {c:?}") };
                }
                Arc::make_mut(&mut self.records).entry(c).or_default().paused = paused;
                Outcome::Done
            }
            Command::ClearBlock { cluster } => match Arc::make_mut(&mut self.records).get_mut(&cluster) {
                Some(r) => {
                    r.blocked_until = 0;
                    Outcome::Done
                }
                None => Outcome::Refused { reason: format!("unknown cluster {cluster:?}") },
            },
            Command::Audit { entry } => {
                let mut e = *entry;
                e.id = next_id(&mut self.last_ids.audit);
                let (id, now) = (e.id, e.at);
                self.audit.insert(id, e);
                self.retain(now);
                Outcome::Recorded { id }
            }
            Command::AuditOutcome { id, outcome, at } => match self.audit.get_mut(&id) {
                Some(e) if e.outcome.is_pending() => {
                    e.outcome = outcome;
                    e.finished_at = at;
                    Outcome::Done
                }
                Some(_) => Outcome::Refused { reason: format!("audit entry {id} has its outcome already") },
                None => Outcome::Refused { reason: format!("no audit entry {id}") },
            },
        }
    }

    /// Applies the topology's retention to decisions, audit entries and
    /// finished jobs, as of `now` (0: counts only).
    fn retain(&mut self, now: Millis) {
        let r = self.topology.retention.clone();
        let age = r.max_age.as_millis() as Millis;
        prune(&mut self.history, r.decisions, age, now, |d| d.finished_at);
        prune(&mut self.audit, r.audit, age, now, |e| (!e.outcome.is_pending()).then_some(e.finished_at.max(e.at)));
        prune(&mut self.recovery_tests, r.jobs, age, now, |t| (t.state != JobState::Running).then_some(t.finished_at));
        prune(&mut self.restores, r.jobs, age, now, |t| (t.state != JobState::Running).then_some(t.finished_at));
        // Completed backups follow their cluster's backup retention, which
        // deletes their objects first.
        prune(&mut self.backups, r.jobs, age, now, |b| (b.state == JobState::Failed).then_some(b.finished_at));
    }

    fn decide(&mut self, mut d: Decision) -> Outcome {
        if let Some((id, _)) = self.history.iter().find(|(_, h)| h.cluster == d.cluster && h.epoch == d.epoch && h.to == d.to) {
            return Outcome::Decided { id: *id };
        }
        let Some(cluster) = self.topology.clusters.get(&d.cluster) else {
            return Outcome::Refused { reason: format!("unknown cluster {:?}", d.cluster) };
        };
        let anti_flap = cluster.policy.anti_flap_window.as_millis() as u64;
        let rec = Arc::make_mut(&mut self.records).entry(d.cluster.clone()).or_default();
        if rec.epoch + 1 != d.epoch || rec.primary != d.from {
            return Outcome::Refused {
                reason: format!("stale decision: {} is at epoch {} with primary {:?}", d.cluster, rec.epoch, rec.primary),
            };
        }
        if let Some(id) = rec.in_progress {
            return Outcome::Refused { reason: format!("decision {id} is still in progress for {}", d.cluster) };
        }
        let id = next_id(&mut self.last_ids.decision);
        d.id = id;
        rec.known_position = rec.known_position.max(d.known_position);
        // Steps of older decisions still waiting (a member to repoint or
        // rejoin) are replaced by this decision's own.
        for old in self.history.values_mut().filter(|h| h.cluster == d.cluster && h.finished_at.is_none()) {
            for s in old.steps.iter_mut().filter(|s| s.state == StepState::Pending) {
                s.state = StepState::Skipped;
                s.error = format!("superseded by decision {id}");
            }
            old.finished_at = Some(d.decided_at);
            if old.outcome.is_empty() {
                old.outcome = format!("superseded by decision {id}");
                self.tally.decision_ended(old, true);
            }
        }
        rec.epoch = d.epoch;
        rec.primary = d.to.clone();
        rec.in_progress = Some(id);
        rec.changed_at = d.decided_at;
        rec.blocked_before = rec.blocked_until;
        if d.kind == DecisionKind::Failover {
            rec.blocked_until = d.decided_at + anti_flap;
        }
        let now = d.decided_at;
        self.history.insert(id, d);
        self.retain(now);
        Outcome::Decided { id }
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        id: u64,
        index: usize,
        state: StepState,
        started: Millis,
        finished: Millis,
        error: String,
        output: StepArgs,
    ) -> Outcome {
        let Some(d) = self.history.get_mut(&id) else {
            return Outcome::Refused { reason: format!("no decision {id}") };
        };
        if index >= d.steps.len() {
            return Outcome::Refused { reason: format!("decision {id} has no step {index}") };
        }
        let rec = Arc::make_mut(&mut self.records).get_mut(&d.cluster);
        let (was, had_outcome) = (d.steps[index].state, !d.outcome.is_empty());
        steps::record_outcome(d, rec, index, state, started, finished, error, output);
        if was == StepState::Pending && state != StepState::Pending {
            self.tally.step_ended(d, index);
        }
        if !had_outcome && !d.outcome.is_empty() {
            self.tally.decision_ended(d, false);
        }
        Outcome::Done
    }

    /// The member clients may write to: the recorded primary, except while a
    /// decision that changes it has not promoted its candidate yet (then
    /// `None`: the old primary is being fenced and the new one is not
    /// writable). With the cluster's epoch; `None` for an unknown cluster.
    pub fn published_primary(&self, cluster: &str) -> Option<(u64, Option<String>)> {
        if !self.topology.clusters.contains_key(cluster) {
            return None;
        }
        let Some(rec) = self.records.get(cluster) else { return Some((0, None)) };
        let promoting = rec.in_progress.and_then(|id| self.history.get(&id)).is_some_and(|d| d.to == rec.primary && !steps::promoted(d));
        let member = (!promoting && !rec.primary.is_empty()).then(|| rec.primary.clone());
        Some((rec.epoch, member))
    }

    /// Records a node joining (with its address) or leaving the Raft group.
    pub fn apply_membership(&mut self, id: u64, address: Option<NodeAddress>) {
        match address {
            Some(a) => {
                self.nodes.insert(id, a);
            }
            None => {
                self.nodes.remove(&id);
            }
        }
    }

    /// How far the WAL archive of `cluster`'s current dataset reaches, at
    /// its best bucket (the newest timeline's end); none before any.
    pub fn archive_reach(&self, cluster: &str) -> Option<Lsn> {
        let dataset = self.records.get(cluster).map(|r| r.dataset.as_str()).unwrap_or_default();
        self.wal_archives.values().filter(|a| a.cluster == cluster && a.system_id == dataset).filter_map(|a| Some(a.reach()?.1)).max()
    }

    /// The state as a snapshot: stamped with the format (see [`format`]).
    pub fn encode(&self) -> Vec<u8> {
        format::encode(self).unwrap_or_default()
    }

    /// Reads a snapshot of this format or an older one.
    pub fn decode(bytes: &[u8]) -> Result<Self, format::FormatError> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        let mut sm: Self = format::decode(bytes, "the state machine snapshot")?;
        sm.last_ids.catch_up(&sm.history, &sm.backups, &sm.recovery_tests, &sm.audit);
        sm.last_ids.restore = sm.last_ids.restore.max(sm.restores.keys().next_back().copied().unwrap_or(0));
        Ok(sm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drc_model::topology::parse::parse_topology;

    #[test]
    fn idempotent_apply_reapplying_a_command_changes_nothing() {
        let t = parse_topology("[regions.a]\n[clusters.c]\nkind='redis'\n").expect("valid");
        let mut sm = StateMachine::default();
        let cmd = Command::ApplyTopology { topology: t };
        assert_eq!(sm.apply(cmd.clone()), Outcome::Topology { version: 1 });
        let once = sm.clone();
        assert_eq!(sm.apply(cmd), Outcome::Topology { version: 1 });
        assert_eq!(sm, once);
        sm.apply_membership(4, Some(NodeAddress::shared("h:1")));
        let once = sm.clone();
        sm.apply_membership(4, Some(NodeAddress::shared("h:1")));
        assert_eq!(sm, once);
    }

    #[test]
    fn the_primarys_dataset_id_moves_on_only_from_the_recorded_one_and_only_while_it_is_the_primary() {
        let mut sm = StateMachine::default();
        sm.apply(Command::Adopt { cluster: "c".into(), primary: "m1".into(), dataset: "A".into() });
        let advance = |primary: &str, dataset: &str, previous: &str| Command::AdvanceDataset {
            cluster: "c".into(),
            primary: primary.into(),
            dataset: dataset.into(),
            previous: previous.into(),
        };
        sm.apply(advance("m2", "B", "A"));
        assert_eq!(sm.records["c"].dataset, "A", "m2 is not the primary");
        sm.apply(advance("m1", "B", "Z"));
        assert_eq!(sm.records["c"].dataset, "A", "not derived from the recorded id");
        sm.apply(advance("m1", "B", "A"));
        assert_eq!((sm.records["c"].dataset.as_str(), sm.records["c"].lineage.as_slice()), ("B", &["A".to_string()][..]));
        let once = sm.clone();
        sm.apply(advance("m1", "B", "A"));
        assert_eq!(sm, once, "applied twice, changed once");
        assert!(sm.records["c"].holds("A", ""), "a replica still on the older id");
        sm.apply(Command::AdvanceDataset { cluster: "x".into(), primary: "m1".into(), dataset: "X".into(), previous: String::new() });
        assert!(!sm.records.contains_key("x"), "no record for an unknown cluster");
    }

    #[test]
    fn encodes_and_decodes() {
        let mut sm = StateMachine::bootstrap(&BTreeMap::from([(1, NodeAddress::shared("a:1"))]));
        sm.topology_version = 3;
        assert_eq!(StateMachine::decode(&sm.encode()).expect("decodes"), sm);
    }

    fn failover(sm: &StateMachine, to: &str) -> Decision {
        use drc_model::{Step, StepAction, Trigger};
        let rec = &sm.records["c"];
        let step = Step::pending;
        Decision {
            id: 0,
            cluster: "c".into(),
            kind: DecisionKind::Failover,
            trigger: Trigger::Automatic,
            epoch: rec.epoch + 1,
            from: rec.primary.clone(),
            to: to.into(),
            reason: String::new(),
            evidence: Vec::new(),
            detected_at: 1_000,
            decided_at: 1_000,
            steps: vec![step(StepAction::Fence, &rec.primary), step(StepAction::Promote, to), step(StepAction::Repoint, "m3")],
            finished_at: None,
            outcome: String::new(),
            known_position: 500,
        }
    }

    fn step_result(id: u64, index: usize, state: StepState) -> Command {
        Command::Step { decision: id, index, state, started: 1, finished: 2, error: String::new(), output: StepArgs::default() }
    }

    #[test]
    fn the_published_primary_is_withheld_until_promotion_and_a_failure_before_it_hands_everything_back() {
        let t = parse_topology("[regions.a]\n[clusters.c]\nkind='redis'\n[clusters.c.policy]\nanti_flap_window='1m'\n").expect("valid");
        let mut sm = StateMachine::default();
        sm.apply(Command::ApplyTopology { topology: t });
        assert_eq!(sm.published_primary("nope"), None);
        assert_eq!(sm.published_primary("c"), Some((0, None)));
        sm.apply(Command::Adopt { cluster: "c".into(), primary: "m1".into(), dataset: "d".into() });
        assert_eq!(sm.published_primary("c"), Some((1, Some("m1".into()))));

        // A decision that fails at the fence: nobody promoted, the old
        // primary is back (new epoch) and so is the absence of a block.
        let Outcome::Decided { id } = sm.apply(Command::Decide { decision: Box::new(failover(&sm, "m2")) }) else { panic!("decided") };
        assert_eq!(sm.published_primary("c"), Some((2, None)), "nothing is writable while the change is under way");
        assert_eq!(sm.records["c"].blocked_until, 61_000);
        sm.apply(step_result(id, 0, StepState::Failed));
        assert_eq!(sm.records["c"].primary, "m1");
        assert_eq!(sm.records["c"].blocked_until, 0, "a failover that promoted nobody does not block the next one");
        assert_eq!(sm.published_primary("c"), Some((2, Some("m1".into()))));
        assert_eq!(sm.records["c"].known_position, 500, "m1's known position outlives the failed decision");

        // A switchover that demoted m1 and then failed to promote: m1's final
        // position, as its agent reported it, is known from then on.
        let mut switchover = failover(&sm, "m2");
        switchover.kind = DecisionKind::Switchover;
        switchover.steps[0] = drc_model::Step::pending(drc_model::StepAction::Demote, "m1");
        let Outcome::Decided { id } = sm.apply(Command::Decide { decision: Box::new(switchover) }) else { panic!("decided") };
        let output = StepArgs { position: Some(730), ..Default::default() };
        sm.apply(Command::Step { decision: id, index: 0, state: StepState::Done, started: 1, finished: 2, error: String::new(), output });
        sm.apply(step_result(id, 1, StepState::Failed));
        assert_eq!((sm.records["c"].primary.as_str(), sm.records["c"].known_position), ("m1", 730));

        // One that promotes: published once the promotion is done, blocked.
        let Outcome::Decided { id } = sm.apply(Command::Decide { decision: Box::new(failover(&sm, "m2")) }) else { panic!("decided") };
        sm.apply(step_result(id, 0, StepState::Skipped));
        assert_eq!(sm.published_primary("c"), Some((4, None)));
        sm.apply(step_result(id, 1, StepState::Done));
        assert_eq!(sm.published_primary("c"), Some((4, Some("m2".into()))));
        assert_eq!(sm.records["c"].known_position, 0, "a new primary starts a new history");
        sm.apply(step_result(id, 2, StepState::Failed));
        assert_eq!(
            (sm.records["c"].primary.as_str(), sm.records["c"].blocked_until),
            ("m2", 61_000),
            "a failed repoint keeps the new primary"
        );
    }

    #[test]
    fn audit_entries_take_one_outcome_and_retention_keeps_the_newest() {
        use drc_model::audit::{AuditAction, AuditEntry};
        let t = parse_topology("[regions.a]\n[clusters.c]\nkind='redis'\n[retention]\naudit=2\nmax_age='1s'\n").expect("valid");
        let mut sm = StateMachine::default();
        sm.apply(Command::ApplyTopology { topology: t });
        let entry = |at: Millis| AuditEntry {
            id: 0,
            at,
            finished_at: 0,
            caller: "insecure".into(),
            role: String::new(),
            via: 1,
            ran_on: 1,
            action: AuditAction::Pause,
            cluster: "c".into(),
            request: Default::default(),
            outcome: AuditOutcome::Pending,
        };
        let audit = |sm: &mut StateMachine, at| sm.apply(Command::Audit { entry: Box::new(entry(at)) });
        let done = |id, at| Command::AuditOutcome { id, outcome: AuditOutcome::Done { detail: "ok".into() }, at };
        assert_eq!(audit(&mut sm, 100), Outcome::Recorded { id: 1 });
        assert_eq!(sm.apply(done(1, 110)), Outcome::Done);
        assert!(matches!(sm.apply(done(1, 120)), Outcome::Refused { .. }), "an outcome is recorded once");
        for at in [200, 300, 400] {
            audit(&mut sm, at);
        }
        assert_eq!(sm.audit.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3, 4], "pending entries are kept, whatever the count");
        for id in [2, 3, 4] {
            sm.apply(done(id, 500));
        }
        assert_eq!(audit(&mut sm, 2_000), Outcome::Recorded { id: 5 });
        assert_eq!(sm.audit.keys().copied().collect::<Vec<_>>(), vec![5], "finished more than 1 s before entry 5, or beyond 2");
        sm.audit.clear();
        assert_eq!(audit(&mut sm, 2_100), Outcome::Recorded { id: 6 }, "ids are not reused");
    }

    /// Raft logs and snapshots written by earlier releases (the fixture was
    /// written by 2413a37) still decode, and replaying the log gives the
    /// snapshot's state.
    #[test]
    fn logs_and_snapshots_written_by_earlier_releases_still_decode() {
        let log = include_str!("../../tests/fixtures/raft-log-2413a37.jsonl");
        let snapshot = include_bytes!("../../tests/fixtures/snapshot-2413a37.json");
        let mut sm = StateMachine::bootstrap(&BTreeMap::from([
            (1, NodeAddress::shared("10.0.0.1:7400")),
            (2, NodeAddress { client: "10.0.0.2:7400".into(), raft: Some("10.0.0.2:7401".into()) }),
        ]));
        for (n, line) in log.lines().enumerate() {
            let cmd: Command = serde_json::from_str(line).unwrap_or_else(|e| panic!("log entry {n}: {e}"));
            let outcome = sm.apply(cmd);
            assert!(!matches!(outcome, Outcome::Refused { .. }), "log entry {n}: {outcome:?}");
        }
        let stored = StateMachine::decode(snapshot).expect("the snapshot decodes");
        // Id counters are newer than the fixture: its snapshot can only tell
        // the newest id it still holds, while the replay also counted the
        // backup the log later forgot (retention never forgets the newest,
        // so live states agree).
        assert_eq!((sm.last_ids.backup, stored.last_ids.backup), (2, 1));
        sm.last_ids.backup = 1;
        // So is the tally: replaying the log counts what ended, while the
        // older snapshot starts counting from nothing, as a counter does.
        let ended = &sm.tally.decisions["n8n-pg"];
        assert_eq!((ended[&DecisionKind::Failover].superseded, ended[&DecisionKind::Switchover].failed), (1, 1));
        assert_eq!(sm.tally.promoted_in[&DecisionKind::Failover].sum_ms, 1201, "detected at 1000 ms, promoted at 2201 ms");
        assert_eq!(sm.tally.jobs["n8n-pg"][&JobKind::Backup].done, 1);
        assert_eq!(sm.tally.jobs["n8n-pg"][&JobKind::RecoveryTest].failed, 1);
        assert_eq!(stored.tally, Tally::default());
        sm.tally = Tally::default();
        assert_eq!(sm, stored, "replaying the log gives the snapshot");
        assert_eq!(StateMachine::decode(&stored.encode()).expect("re-encoded"), stored);
        let failover = &stored.history[&1];
        assert_eq!(failover.steps.len(), 5);
        assert_eq!(failover.outcome, "superseded by decision 2", "its rejoin was still waiting");
        assert_eq!(stored.history[&2].outcome, "failed at catch_up");
        assert_eq!(stored.records["n8n-pg"].primary, "pg-eu-west", "the failed switchover handed the primary back");
        assert_eq!(stored.records["n8n-pg"].known_position, 1500, "the demoted primary's final position");
        assert_eq!(stored.backups.len(), 1);
        assert_eq!(stored.schedules.len(), 2);
    }
}
