//! The leader's failover loop: feeds the decision core, commits what it
//! decides to Raft *before* acting, and carries out each decision's steps
//! through the agents, recording every outcome in Raft.
//!
//! A decision lives in the replicated history, so when the leader dies in the
//! middle of one the next leader picks up the same decision at its first
//! step not yet recorded as done; every agent action is idempotent (promoting
//! a primary, fencing a stopped server, repointing a replica that already
//! follows the right primary all succeed without doing anything).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use drc_model::time::wall_now_ms;
use drc_model::topology::Topology;
use drc_model::{Decision, Millis, StepAction, StepArgs, StepState};
use drc_proto::command_result::Found;
use drc_proto::{FailoverAction, FailoverStep, LeaseGrant};

use crate::agents::{Agents, EventKind};
use crate::core::steps::{self, Verdict};
use crate::core::{
    placement_targets, Action, Coordinators, Core, LeaseConfig, Refusal, Request, Situation, SyncStandbys, WaitKind, PLACEMENT_CALM,
};
use crate::lock::lock;
use crate::raft::{NodeHandle, ProposeError, Role};
use crate::state::{Command, Outcome};

mod hook;
pub use hook::Hook;

/// How often the core is consulted.
pub const TICK: Duration = Duration::from_millis(200);
/// How long an operator's request waits for a just-promoted primary to
/// report as one before it is refused (`Core::settling`).
const SETTLE_WAIT: Duration = Duration::from_secs(3);
/// Leases held back this long (no quorum confirmed the leadership) are
/// logged as a warning.
const HELD_WARN: Duration = Duration::from_millis(500);
/// Leader placement waits this long after this node became leader and
/// between two attempts (what else it waits for: `core::placement`).
const PLACEMENT_PACE: Duration = Duration::from_millis(PLACEMENT_CALM);
/// The least time between two passes that agents' first samples trigger.
const FIRST_SAMPLE_SPACING: Duration = Duration::from_millis(50);

/// Why each cluster is not failing over right now, for `drctl status`.
pub type Waits = Arc<Mutex<BTreeMap<String, (String, WaitKind)>>>;

pub struct Executor {
    node: NodeHandle,
    agents: Arc<Agents>,
    lease: LeaseConfig,
    hook: Hook,
    write_timeout: Duration,
    waits: Waits,
    running: Mutex<HashSet<u64>>,
    requests: mpsc::Sender<Asked>,
    inbox: Mutex<Option<mpsc::Receiver<Asked>>>,
    /// Since when leases have been held back (see `act`).
    held_since: Mutex<Option<Instant>>,
    /// Each coordinator's region, when leader placement is on.
    placement: BTreeMap<u64, String>,
    /// What each PostgreSQL cluster's primary was last asked to wait for
    /// (absent: nothing).
    sync: Mutex<BTreeMap<String, String>>,
    /// The origin of the core's monotonic clock.
    started: Instant,
    /// Operators' requests refused, for `/metrics`.
    refused: Refusals,
}

/// Why an operator's request was not decided.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("this coordinator is not the leader")]
    NotLeader,
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// The state machine refused the decision: another one came first.
    #[error("{0}")]
    Stale(String),
}

impl RequestError {
    /// The bounded name of why, a label of `/metrics`.
    pub fn label(&self) -> &'static str {
        match self {
            RequestError::NotLeader => "not_leader",
            RequestError::ShuttingDown => "shutting_down",
            RequestError::Refused(Refusal::UnknownCluster(_)) => "unknown_cluster",
            RequestError::Refused(Refusal::Invalid(_)) => "invalid",
            RequestError::Refused(Refusal::NotNow(_)) => "not_now",
            RequestError::Propose(_) => "no_quorum",
            RequestError::Stale(_) => "stale",
        }
    }
}

/// Counts of refused requests, by [`RequestError::label`].
pub type Refusals =
    prometheus_client::metrics::family::Family<[(&'static str, &'static str); 1], prometheus_client::metrics::counter::Counter>;

/// An operator's request and where its answer goes.
type Asked = (Request, oneshot::Sender<Result<Decision, RequestError>>);

impl Executor {
    pub fn new(
        node: NodeHandle,
        agents: Arc<Agents>,
        lease: LeaseConfig,
        hook: Hook,
        write_timeout: Duration,
        waits: Waits,
        placement: BTreeMap<u64, String>,
    ) -> Arc<Self> {
        let (requests, inbox) = mpsc::channel(16);
        Arc::new(Executor {
            node,
            agents,
            lease,
            hook,
            write_timeout,
            waits,
            running: Mutex::new(HashSet::new()),
            requests,
            inbox: Mutex::new(Some(inbox)),
            held_since: Mutex::new(None),
            placement,
            sync: Mutex::new(BTreeMap::new()),
            started: Instant::now(),
            refused: Refusals::default(),
        })
    }

    /// Says when what a cluster's commits wait for changes: replication
    /// became synchronous, or degraded because fewer replicas stream.
    /// Called with every renewal: no allocation unless something changed
    /// (an asynchronous cluster, the default, has nothing to format).
    fn note_sync(&self, cluster: &str, primary: &str, sync: &SyncStandbys) {
        let sync = sync.to_string();
        let mut told = lock(&self.sync);
        if told.get(cluster).map_or("", String::as_str) == sync {
            return;
        }
        if sync.is_empty() {
            told.remove(cluster);
        } else {
            told.insert(cluster.to_string(), sync.clone());
        }
        drop(told);
        let text = if sync.is_empty() {
            format!("{primary}'s commits wait for no replica: asynchronous replication")
        } else {
            format!("{primary}'s commits wait for {sync}, of the standbys its agent sees streaming")
        };
        tracing::info!(%cluster, %primary, synchronous_standby_names = %sync, "synchronous standbys");
        self.agents.events.emit(EventKind::Replication, cluster, primary, text);
    }

    /// An operator's failover or switchover, decided by the core and
    /// committed: the recorded decision, or exactly why not.
    pub async fn request(&self, req: Request) -> Result<Decision, RequestError> {
        let (tx, rx) = oneshot::channel();
        self.requests.send((req, tx)).await.map_err(|_| RequestError::ShuttingDown)?;
        let answer = rx.await.map_err(|_| RequestError::ShuttingDown)?;
        if let Err(e) = &answer {
            self.refused.get_or_create(&[("reason", e.label())]).inc();
        }
        answer
    }

    /// Operators' failovers and switchovers this node refused, by reason.
    pub fn refusals(&self) -> Refusals {
        self.refused.clone()
    }

    /// `at` on the core's monotonic clock: milliseconds since this executor
    /// was made.
    fn mono_ms(&self, at: Instant) -> Millis {
        at.saturating_duration_since(self.started).as_millis() as Millis
    }

    /// Why nothing happens to `cluster` right now.
    pub fn wait_reason(&self, cluster: &str) -> String {
        lock(&self.waits).get(cluster).map(|(reason, _)| reason.clone()).unwrap_or_default()
    }

    /// What each cluster waits for now (leader only; empty elsewhere).
    pub fn waits(&self) -> BTreeMap<String, WaitKind> {
        lock(&self.waits).iter().map(|(c, (_, k))| (c.clone(), *k)).collect()
    }

    fn is_leader(&self) -> bool {
        self.node.status().role == Role::Leader
    }

    /// Runs until `cancel`: a fresh core each time this node becomes leader.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut core: Option<Core> = None;
        let mut topology: Option<(u64, std::sync::Arc<Topology>)> = None;
        let Some(mut inbox) = lock(&self.inbox).take() else { return };
        // Requests waiting for their cluster to settle, with when they came.
        let mut settling: Vec<(Asked, Instant)> = Vec::new();
        // A failover waiting for a window or a lease to run out goes ahead
        // at that instant, not on the next regular tick.
        let mut wake: Option<Instant> = None;
        // A new leader starts at once: the leases it must honour count from
        // its first tick, not from its election.
        let mut role = self.node.watch_role();
        let mut role_alive = true;
        let mut last_pass = Instant::now();
        // When this node's current leadership began, and its last placement attempt.
        let mut leading_since: Option<Instant> = None;
        let mut placed_at: Option<Instant> = None;
        loop {
            let request = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => None,
                changed = role.changed(), if role_alive => {
                    role_alive = changed.is_ok();
                    None
                }
                // At most every FIRST_SAMPLE_SPACING: thousands of agents
                // connect at once when a leader starts. (A notification taken
                // here and then cut short by another branch is not lost:
                // that branch makes a pass too.)
                _ = async {
                    self.agents.board.first_sample.notified().await;
                    tokio::time::sleep_until((last_pass + FIRST_SAMPLE_SPACING).into()).await;
                } => None,
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now).into()), if wake.is_some() => None,
                r = inbox.recv() => r.map(|r| (r, Instant::now())),
            };
            wake = None;
            last_pass = Instant::now();
            if !self.is_leader() {
                leading_since = None;
                lock(&self.sync).clear();
                core = None;
                lock(&self.waits).clear();
                for ((_, reply), _) in request.into_iter().chain(settling.drain(..)) {
                    let _ = reply.send(Err(RequestError::NotLeader));
                }
                continue;
            }
            let core = core.get_or_insert_with(|| Core::new(self.lease, self.mono_ms(Instant::now())));
            let version = self.node.store().with_state(|sm| sm.topology_version);
            if topology.as_ref().is_none_or(|(v, _)| *v != version) {
                topology = Some((version, self.node.store().with_state(|sm| sm.topology.clone())));
            }
            let Some((_, t)) = &topology else { continue };
            let leading_since = *leading_since.get_or_insert_with(Instant::now);
            let (records, global_paused, open) = self.node.store().with_state(|sm| {
                let open: Vec<u64> = sm.history.values().filter(|d| d.finished_at.is_none()).map(|d| d.id).collect();
                (sm.records.clone(), sm.global_paused, open)
            });
            // The core's clock, and the same instant on the monotonic one.
            let (now, at) = (wall_now_ms(), Instant::now());
            let mono = self.mono_ms(at);
            let observations = self.agents.board.observations(t, at);
            let world = Situation { now, mono, topology: t, records: &records, global_paused, observations: &observations };
            // Requests first, in the order they came; one that waits for its
            // cluster to settle is asked again on each tick, for a while. At
            // most one is answered per pass, and then the core's tick waits
            // for the next one: the world was read before that decision
            // committed.
            let mut asked = request.is_some();
            let mut ready = Vec::new();
            let mut answered = false;
            for ((req, reply), at) in settling.drain(..).chain(request) {
                if answered || (core.settling(&world, req.cluster()).is_some() && at.elapsed() < SETTLE_WAIT) {
                    ready.push(((req, reply), at));
                    continue;
                }
                answered = true;
                let answer = match core.request(&world, &req) {
                    Ok(d) => self.commit(d).await,
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(answer);
                asked = true;
            }
            settling = ready;
            if asked {
                continue;
            }
            let actions = core.tick(&world);
            let decided = actions.iter().any(|a| matches!(a, Action::Decide(_)));
            self.act(t, actions, world.now, at).await;
            wake = core.wake().map(|w| at + Duration::from_millis(w.saturating_sub(mono)));
            // A decision just committed starts now, not on the next tick.
            let open = if decided {
                self.node.store().with_state(|sm| sm.history.values().filter(|d| d.finished_at.is_none()).map(|d| d.id).collect())
            } else {
                open
            };
            // Leader placement: the cheap conditions first; the history and
            // the job catalogue are read only when those hold (at most every
            // PLACEMENT_CALM), not on every pass.
            if !self.placement.is_empty()
                && open.is_empty()
                && settling.is_empty()
                && leading_since.elapsed() >= PLACEMENT_PACE
                && placed_at.is_none_or(|at| at.elapsed() >= PLACEMENT_PACE)
            {
                placed_at = Some(Instant::now());
                // No job may start between this look and the move; one
                // being recorded now makes this attempt wait for the next.
                let no_job_starts = self.node.try_hold_leadership();
                let running = drc_model::job::JobState::Running;
                let (targets, me) = self.node.store().with_state(|sm| {
                    let jobs_running =
                        sm.backups.values().any(|b| b.state == running) || sm.recovery_tests.values().any(|t| t.state == running);
                    let me = self.node.status();
                    let coordinators = Coordinators { me: me.id, voters: &me.voters, regions: &self.placement };
                    (placement_targets(&world, &sm.history, jobs_running, &coordinators), me.id)
                });
                if no_job_starts.is_some() && !targets.is_empty() {
                    self.place(me, targets).await;
                }
                drop(no_job_starts);
            }
            for id in open {
                let fresh = lock(&self.running).insert(id);
                if fresh {
                    let this = Arc::clone(&self);
                    let cancel = cancel.clone();
                    // Every line logged while it runs carries the decision,
                    // its cluster and the member it promotes.
                    let (cluster, to) = self.decision(id).map(|(d, _)| (d.cluster, d.to)).unwrap_or_default();
                    let span = tracing::info_span!("decision", decision = id, cluster = %cluster, member = %to);
                    tokio::spawn(
                        async move {
                            this.carry_out(id, cancel).await;
                            lock(&this.running).remove(&id);
                        }
                        .instrument(span),
                    );
                }
            }
        }
    }

    /// Leader placement: when this node's region holds a primary, hands the
    /// leadership to a caught-up coordinator in a region that holds none, so
    /// that losing the primaries' region costs a failover but no election.
    async fn place(&self, me: u64, targets: Vec<u64>) {
        let mine = self.placement.get(&me).cloned().unwrap_or_default();
        if let Some(to) = self.node.place_leader(targets).await {
            let region = self.placement.get(&to).cloned().unwrap_or_default();
            tracing::info!(to, %region, "handing the coordinator leadership out of region {mine}, which holds a primary");
            self.agents.events.emit(
                EventKind::Leader,
                "",
                "",
                format!("node {me} hands leadership to node {to} (region {region}): region {mine} holds a primary"),
            );
        }
    }

    /// Commits a decision to Raft; its steps start on the next tick.
    async fn commit(&self, d: Decision) -> Result<Decision, RequestError> {
        let mut d = d;
        match self.node.propose(Command::Decide { decision: Box::new(d.clone()) }, self.write_timeout).await {
            Ok(Outcome::Decided { id }) => {
                d.id = id;
                tracing::warn!(decision = id, cluster = %d.cluster, member = %d.to, from = %d.from, kind = d.kind.as_str(), reason = %d.reason, "failover decided");
                self.agents.events.emit(
                    EventKind::Failover,
                    &d.cluster,
                    &d.to,
                    format!("decision {id}: {} -> {}: {}", d.from, d.to, d.reason),
                );
                Ok(d)
            }
            Ok(Outcome::Refused { reason }) => Err(RequestError::Stale(reason)),
            Ok(other) => Err(RequestError::Stale(format!("unexpected outcome {other:?}"))),
            Err(e) => Err(RequestError::Propose(e)),
        }
    }

    /// Says what a record of a cluster's primary, just committed, changed.
    fn recorded(&self, cmd: &Command) {
        match cmd {
            Command::Adopt { cluster, primary, .. } => {
                tracing::info!(%cluster, %primary, "adopted primary");
                let what = format!("{primary} adopted as the primary of {cluster} (epoch 1)");
                self.agents.events.emit(EventKind::Failover, cluster, primary, what);
            }
            Command::AdvanceDataset { cluster, primary, dataset, previous } => {
                tracing::info!(%cluster, %primary, %dataset, %previous, "the primary's dataset id moved on");
            }
            _ => {}
        }
    }

    /// `now` is the core's clock of this tick and `at` the same instant on
    /// the monotonic clock: the leases it granted end at `now + ttl`, and the
    /// agents are told that instant, the ttl, and how long after the newest
    /// sample received from them it is.
    async fn act(&self, t: &Topology, actions: Vec<Action>, now: Millis, at: Instant) {
        let mut waits = BTreeMap::new();
        // Records of a cluster's primary (adoptions, dataset ids) are
        // independent: proposed together, they share Raft round trips
        // (thousands of clusters are adopted when a topology first meets
        // its agents).
        let records = actions.iter().filter_map(|a| match a {
            Action::Adopt { cluster, primary, dataset } => {
                Some(Command::Adopt { cluster: cluster.clone(), primary: primary.clone(), dataset: dataset.clone() })
            }
            Action::AdvanceDataset { cluster, primary, dataset, previous } => Some(Command::AdvanceDataset {
                cluster: cluster.clone(),
                primary: primary.clone(),
                dataset: dataset.clone(),
                previous: previous.clone(),
            }),
            _ => None,
        });
        futures::future::join_all(records.map(|cmd| async move {
            if self.propose(cmd.clone()).await.is_some() {
                self.recorded(&cmd);
            }
        }))
        .await;
        // Checked after `at`, the instant the leases count from: a leader
        // that cannot show no successor exists renews nothing.
        let may_renew = self.node.may_renew();
        let mut held = 0usize;
        for a in actions {
            match a {
                Action::Adopt { .. } | Action::AdvanceDataset { .. } => {}
                Action::Decide(d) => {
                    let cluster = d.cluster.clone();
                    if let Err(reason) = self.commit(*d).await {
                        tracing::info!(%cluster, %reason, "decision not recorded");
                    }
                }
                Action::Lease { .. } if !may_renew => held += 1,
                Action::Lease { cluster, member, epoch, ttl, sync } => {
                    // The topology's cluster index: no walk over every member per lease.
                    let replicas = t.by_cluster().get(cluster.as_str()).map_or(0, Vec::len).saturating_sub(1);
                    let mut grant = LeaseGrant { ttl_ms: ttl, expires_at_ms: now + ttl, replicas: replicas as u32, ..Default::default() };
                    if let Some(sync) = sync {
                        self.note_sync(&cluster, &member, &sync);
                        grant.sync = Some(drc_proto::SyncStandbys { count: sync.count as u32, names: sync.names });
                    }
                    self.agents.hub.renew(&member, &cluster, epoch, grant, at + Duration::from_millis(ttl));
                }
                Action::Wait { cluster, reason, kind } => {
                    waits.insert(cluster, (reason, kind));
                }
            }
        }
        let mut held_since = lock(&self.held_since);
        if held > 0 {
            // A new leader's first passes may come before its first round
            // (its first entry must commit before a round can start).
            let since = *held_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= HELD_WARN {
                tracing::warn!(
                    leases = held,
                    for_ms = since.elapsed().as_millis() as u64,
                    "leases not renewed: no quorum confirmed this leadership within an election timeout"
                );
            }
        } else {
            *held_since = None;
        }
        drop(held_since);
        let mut current = lock(&self.waits);
        for (cluster, (reason, kind)) in &waits {
            if announce(current.get(cluster), reason, *kind) {
                self.agents.events.emit(EventKind::Failover, cluster, "", reason.clone());
            }
        }
        *current = waits;
    }

    async fn propose(&self, cmd: Command) -> Option<Outcome> {
        match self.node.propose(cmd, self.write_timeout).await {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!(error = %e, "failover: proposal failed");
                None
            }
        }
    }

    fn decision(&self, id: u64) -> Option<(Decision, std::sync::Arc<Topology>)> {
        self.node.store().with_state(|sm| sm.history.get(&id).map(|d| (d.clone(), sm.topology.clone())))
    }

    /// Carries out one decision until it is finished or this node stops
    /// leading. Which steps run, and what each answer means, is decided by
    /// `core::steps`; this only does the I/O.
    async fn carry_out(&self, id: u64, cancel: CancellationToken) {
        let mut first_attempt: BTreeMap<usize, Instant> = BTreeMap::new();
        let mut next_try: BTreeMap<usize, Instant> = BTreeMap::new();
        loop {
            if cancel.is_cancelled() || !self.is_leader() {
                return;
            }
            let Some((d, t)) = self.decision(id) else { return };
            if d.finished_at.is_some() {
                return;
            }
            let runnable = steps::runnable(&d);
            let now = Instant::now();
            let todo: Vec<usize> = runnable.iter().copied().filter(|i| next_try.get(i).is_none_or(|at| now >= *at)).collect();
            if todo.is_empty() {
                let until = runnable.iter().filter_map(|i| next_try.get(i)).min().copied();
                tokio::time::sleep_until(until.unwrap_or(now + ms(steps::MAIN_RETRY)).into()).await;
                continue;
            }
            for i in todo {
                let started = wall_now_ms();
                let since = *first_attempt.entry(i).or_insert_with(Instant::now);
                let (state, error, output) = match self.attempt(&d, i, &t, since).await {
                    Verdict::Record { state, error, output } => (state, error, output),
                    Verdict::Retry { why, after } => {
                        tracing::debug!(decision = id, step = i, %why, "step not possible yet");
                        next_try.insert(i, Instant::now() + ms(after));
                        continue;
                    }
                };
                // The next main-line step starts while this outcome is being
                // committed: every step is idempotent and a new leader redoes
                // any step not recorded, so only the order of the records
                // matters, and it is kept. This saves one Raft commit
                // (~30-300 ms) between fence and promote.
                let mut ahead = d.clone();
                ahead.steps[i].state = state;
                ahead.steps[i].args.merge(output.clone());
                let next = (!steps::is_background(&d, i) && state != StepState::Failed)
                    .then(|| steps::runnable(&ahead).first().copied())
                    .flatten()
                    .filter(|&j| !steps::is_background(&ahead, j));
                let Some(j) = next else {
                    self.record(&d, i, state, error, output, started).await;
                    continue;
                };
                let since_j = *first_attempt.entry(j).or_insert_with(Instant::now);
                let started_j = wall_now_ms();
                let (recorded, verdict) =
                    tokio::join!(self.record(&d, i, state, error, output, started), self.attempt(&ahead, j, &t, since_j));
                match verdict {
                    Verdict::Record { state, error, output } if recorded => {
                        self.record(&ahead, j, state, error, output, started_j).await;
                    }
                    Verdict::Record { .. } => {}
                    Verdict::Retry { why, after } => {
                        tracing::debug!(decision = id, step = j, %why, "step not possible yet");
                        next_try.insert(j, Instant::now() + ms(after));
                    }
                }
            }
        }
    }

    /// Commits the outcome of step `i` of `d`; false if it was not committed.
    async fn record(&self, d: &Decision, i: usize, state: StepState, error: String, output: StepArgs, started: Millis) -> bool {
        let cmd = Command::Step { decision: d.id, index: i, state, started, finished: wall_now_ms(), error: error.clone(), output };
        if self.propose(cmd).await.is_none() {
            return false;
        }
        let s = &d.steps[i];
        let what = format!(
            "decision {}: {} {} {:?}{}",
            d.id,
            s.action,
            s.member,
            state,
            if error.is_empty() { String::new() } else { format!(": {error}") }
        );
        tracing::info!(step = %s.action, step_member = %s.member, "{what}");
        self.agents.events.emit(EventKind::Failover, &d.cluster, &s.member, what);
        true
    }

    /// One attempt at step `i`, judged by the core.
    async fn attempt(&self, d: &Decision, i: usize, t: &Topology, since: Instant) -> Verdict {
        if let Some(why) = steps::not_ready(d, i) {
            return Verdict::Retry { why: why.into(), after: steps::retry_after(d, i) };
        }
        let step = &d.steps[i];
        let answer = match step.action {
            StepAction::Publish => self.hook.run(d, t).await,
            _ => {
                let mut body = failover_step(d, i, t);
                if let Some(lease) = body.lease.as_mut() {
                    // The new primary serves under a lease from its promotion
                    // on; the core keeps it from being replaced until that ends.
                    lease.ttl_ms = self.lease.promote_ttl();
                    lease.expires_at_ms = wall_now_ms() + lease.ttl_ms;
                }
                let cmd = drc_proto::Command {
                    command_id: 0,
                    cluster: d.cluster.clone(),
                    epoch: d.epoch,
                    body: Some(drc_proto::command::Body::Step(body)),
                };
                let bound = steps::attempt_bound(d, i, wall_now_ms(), since.elapsed().as_millis() as u64, &self.lease);
                match self.agents.hub.command(&step.member, cmd, ms(bound)).await {
                    Ok(r) if r.ok => Ok(found_args(r.found)),
                    Ok(r) => Err(r.error),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        steps::judge(d, i, answer, wall_now_ms(), since.elapsed().as_millis() as u64, &self.lease)
    }
}

/// What an agent's step found, as the step's arguments.
fn found_args(found: Option<Found>) -> StepArgs {
    let Some(Found::Step(f)) = found else { return StepArgs::default() };
    let mut args = StepArgs { position: f.position, dataset_id: Some(f.dataset_id).filter(|d| !d.is_empty()), ..Default::default() };
    if !f.already.is_empty() {
        args.other.insert("already".into(), f.already);
    }
    args
}

/// Whether a cluster's wait is news for `drctl watch`: a new reason is; a
/// countdown is when it starts, not on every tick.
fn announce(before: Option<&(String, WaitKind)>, reason: &str, kind: WaitKind) -> bool {
    match before {
        Some((_, was)) if *was == kind && kind.counts_down() => false,
        Some((earlier, _)) => earlier != reason,
        None => true,
    }
}

fn ms(n: Millis) -> Duration {
    Duration::from_millis(n)
}

/// Whether `cluster`'s WAL is archived (its new primaries keep the
/// archiver's slot).
fn archives_wal(t: &Topology, cluster: &str) -> bool {
    t.clusters
        .get(cluster)
        .is_some_and(|c| c.kind == drc_model::topology::ClusterKind::Postgres && c.backup.archive_wal && !c.backup.destinations.is_empty())
}

/// What an agent needs to carry out step `i` of `d`: the new primary and
/// where it listens, the old primary, the replication slots, whether the
/// old primary is fenced; for a promotion the lease it grants (its times
/// filled in when sent), for catch-up the demoted primary's final position
/// (0, which the agent refuses, if it is not known).
fn failover_step(d: &Decision, i: usize, t: &Topology) -> FailoverStep {
    let step = &d.steps[i];
    let address = |m: &str| t.members.get(m).map(|m| m.address.clone()).unwrap_or_default();
    let to = address(&d.to);
    let (host, port) = to.rsplit_once(':').map(|(h, p)| (h.to_string(), p.parse().unwrap_or(0))).unwrap_or_default();
    let action = match step.action {
        StepAction::Fence => FailoverAction::Fence,
        StepAction::Demote => FailoverAction::Demote,
        StepAction::CatchUp => FailoverAction::CatchUp,
        StepAction::Promote => FailoverAction::Promote,
        StepAction::Repoint => FailoverAction::Repoint,
        StepAction::Rejoin => FailoverAction::Rejoin,
        StepAction::Publish => FailoverAction::Unspecified,
    };
    let in_cluster = |m: &drc_model::topology::Member| m.cluster == d.cluster;
    let fenced = d.steps.iter().any(|s| matches!(s.action, StepAction::Fence | StepAction::Demote) && s.state == StepState::Done);
    let demoted_at = d.steps.iter().find(|s| s.action == StepAction::Demote).and_then(|s| s.args.position);
    FailoverStep {
        action: action as i32,
        primary_member: d.to.clone(),
        primary_host: host,
        primary_port: port,
        old_primary: d.from.clone(),
        old_primary_address: address(&d.from),
        slots: t
            .members
            .iter()
            .filter(|(id, m)| in_cluster(m) && **id != d.to)
            .map(|(id, _)| drc_proto::slot_name(id))
            .chain(archives_wal(t, &d.cluster).then(|| drc_proto::ARCHIVE_SLOT.to_string()))
            .collect(),
        old_primary_fenced: fenced,
        catch_up_to: if step.action == StepAction::CatchUp { demoted_at.unwrap_or(0) } else { 0 },
        catch_up_known: step.action == StepAction::CatchUp && demoted_at.is_some(),
        lease: (step.action == StepAction::Promote).then(|| LeaseGrant {
            replicas: t.members.values().filter(|m| in_cluster(m)).count().saturating_sub(1) as u32,
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use drc_model::topology::parse::parse_topology;
    use drc_model::{DecisionKind, Step, Trigger};

    use super::*;

    #[test]
    fn a_wait_is_announced_when_its_reason_changes_and_a_countdown_only_when_it_starts() {
        let quiet = ("paused".to_string(), WaitKind::Paused);
        let counting = ("down for 100 ms".to_string(), WaitKind::Confirming);
        assert!(announce(None, "paused", WaitKind::Paused));
        assert!(!announce(Some(&quiet), "paused", WaitKind::Paused));
        assert!(announce(Some(&quiet), "down for 0 ms", WaitKind::Confirming), "a countdown starts");
        assert!(!announce(Some(&counting), "down for 300 ms", WaitKind::Confirming), "and goes on quietly");
        assert!(announce(Some(&counting), "waiting 200 ms for the lease", WaitKind::LeaseRunningOut), "another countdown starts");
        assert!(announce(Some(&counting), "paused", WaitKind::Paused));
    }

    #[test]
    fn an_agent_is_told_the_new_primary_the_slots_and_for_catch_up_the_demoted_primarys_final_position() {
        let t = parse_topology(
            "[regions.a]\n[regions.b]\n[clusters.pg]\nkind='postgres'\n\
             [[members]]\nid='pg-a'\ncluster='pg'\nregion='a'\naddress='10.0.0.1:5432'\n\
             [[members]]\nid='pg-b'\ncluster='pg'\nregion='b'\naddress='10.0.0.2:5433'\n\
             [[members]]\nid='pg-c'\ncluster='pg'\nregion='b'\naddress='10.0.0.3:5434'\n",
        )
        .expect("valid");
        let mut demote = Step::pending(StepAction::Demote, "pg-a");
        demote.state = StepState::Done;
        demote.args.position = Some(4_096);
        let d = Decision {
            id: 7,
            cluster: "pg".into(),
            kind: DecisionKind::Switchover,
            trigger: Trigger::Operator { force: false },
            epoch: 3,
            from: "pg-a".into(),
            to: "pg-b".into(),
            reason: String::new(),
            evidence: Vec::new(),
            detected_at: 0,
            decided_at: 0,
            steps: vec![demote, Step::pending(StepAction::CatchUp, "pg-b"), Step::pending(StepAction::Promote, "pg-b")],
            finished_at: None,
            outcome: String::new(),
            known_position: 0,
        };
        let catch_up = failover_step(&d, 1, &t);
        assert_eq!(catch_up.action, FailoverAction::CatchUp as i32);
        assert_eq!(catch_up.catch_up_to, 4_096);
        assert_eq!((catch_up.primary_host.as_str(), catch_up.primary_port), ("10.0.0.2", 5433));
        assert!(catch_up.old_primary_fenced, "demoted");
        assert_eq!(catch_up.slots, vec![drc_proto::slot_name("pg-a"), drc_proto::slot_name("pg-c")]);
        assert!(catch_up.lease.is_none());
        let promote = failover_step(&d, 2, &t);
        assert_eq!(promote.lease.map(|l| l.replicas), Some(2));
        assert_eq!(promote.catch_up_to, 0, "only catch-up is told a target");
        // Without the demoted primary's final position, catch-up is sent 0,
        // which the agent refuses rather than taking as reached.
        let mut unknown = d.clone();
        unknown.steps[0].args.position = None;
        assert_eq!((failover_step(&unknown, 1, &t).catch_up_to, failover_step(&unknown, 1, &t).catch_up_known), (0, false));
        // A primary that never wrote anything ended at 0, and says so.
        let mut empty = d.clone();
        empty.steps[0].args.position = Some(0);
        assert_eq!((failover_step(&empty, 1, &t).catch_up_to, failover_step(&empty, 1, &t).catch_up_known), (0, true));
        assert!(catch_up.catch_up_known && !promote.catch_up_known);
    }
}
