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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::core::{Action, Core, LeaseConfig, Request, SyncStandbys, World};
use super::{Decision, Millis, Step, StepState};
use crate::health::HealthBoard;
use crate::raft::{NodeHandle, Role};
use crate::state::{Command, Outcome};
use drc_model::topology::Topology;

/// How often the core is consulted.
pub const TICK: Duration = Duration::from_millis(200);
/// How long one agent command may take (pg_rewind takes a few seconds).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long promote and catch-up are retried before the decision fails.
const STEP_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between attempts of a step that cannot proceed yet.
const RETRY: Duration = Duration::from_millis(500);
/// How long an operator's request waits for a just-promoted primary to
/// report as one before it is refused (`Core::settling`).
const SETTLE_WAIT: Duration = Duration::from_secs(3);
/// Leases held back this long (no quorum confirmed the leadership) are
/// logged as a warning.
const HELD_WARN: Duration = Duration::from_millis(500);
/// Leader placement waits this long after this node became leader, after
/// any decision finished, and between two attempts; it moves only while
/// every member is healthy, and never while a decision, a backup or a
/// recovery test runs or starts.
const PLACEMENT_CALM: Duration = Duration::from_secs(3);
/// The least time between two passes that agents' first samples trigger.
const FIRST_SAMPLE_SPACING: Duration = Duration::from_millis(50);

pub fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Why each cluster is not failing over right now, for `drctl status`.
pub type Waits = Arc<Mutex<BTreeMap<String, String>>>;

pub struct Executor {
    node: NodeHandle,
    health: Arc<HealthBoard>,
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
}

/// The command run after each promotion (empty: none), and its time limit.
#[derive(Clone, Debug, Default)]
pub struct Hook {
    pub command: Vec<String>,
    pub timeout: Duration,
}

/// An operator's request and where its answer goes.
type Asked = (Request, oneshot::Sender<Result<Decision, String>>);

impl Executor {
    pub fn new(
        node: NodeHandle,
        health: Arc<HealthBoard>,
        lease: LeaseConfig,
        hook: Hook,
        write_timeout: Duration,
        waits: Waits,
        placement: BTreeMap<u64, String>,
    ) -> Arc<Self> {
        let (requests, inbox) = mpsc::channel(16);
        Arc::new(Executor {
            node,
            health,
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
        })
    }

    /// Says when what a cluster's commits wait for changes: replication
    /// became synchronous, or degraded because fewer replicas stream.
    /// Called with every renewal: no allocation unless something changed
    /// (an asynchronous cluster, the default, has nothing to format).
    fn note_sync(&self, cluster: &str, primary: &str, sync: &SyncStandbys) {
        let sync = sync.to_string();
        let mut told = self.sync.lock().unwrap_or_else(|p| p.into_inner());
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
            format!("{primary}'s commits wait for {sync}")
        };
        tracing::info!(%cluster, %primary, synchronous_standby_names = %sync, "synchronous standbys");
        self.health.emit("replication", cluster, primary, text);
    }

    /// An operator's failover or switchover, decided by the core and
    /// committed: the recorded decision, or exactly why not.
    pub async fn request(&self, req: Request) -> Result<Decision, String> {
        let (tx, rx) = oneshot::channel();
        self.requests.send((req, tx)).await.map_err(|_| "the coordinator is shutting down".to_string())?;
        rx.await.map_err(|_| "the coordinator is shutting down".to_string())?
    }

    /// Why nothing happens to `cluster` right now.
    pub fn wait_reason(&self, cluster: &str) -> String {
        self.waits.lock().unwrap_or_else(|p| p.into_inner()).get(cluster).cloned().unwrap_or_default()
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
        let Some(mut inbox) = self.inbox.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
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
                    self.health.first_sample.notified().await;
                    tokio::time::sleep_until((last_pass + FIRST_SAMPLE_SPACING).into()).await;
                } => None,
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now).into()), if wake.is_some() => None,
                r = inbox.recv() => r.map(|r| (r, Instant::now())),
            };
            wake = None;
            last_pass = Instant::now();
            if !self.is_leader() {
                leading_since = None;
                self.sync.lock().unwrap_or_else(|p| p.into_inner()).clear();
                core = None;
                self.waits.lock().unwrap_or_else(|p| p.into_inner()).clear();
                for ((_, reply), _) in request.into_iter().chain(settling.drain(..)) {
                    let _ = reply.send(Err("this coordinator is not the leader".into()));
                }
                continue;
            }
            let core = core.get_or_insert_with(|| Core::new(self.lease, now_ms()));
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
            let (now, at) = (now_ms(), Instant::now());
            let observations = self.health.observations(t, at);
            let world = World { now, topology: t, records: &records, global_paused, observations: &observations };
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
                    Err(e) => Err(e),
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
            wake = core.wake().map(|w| at + Duration::from_millis(w.saturating_sub(now)));
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
                && leading_since.elapsed() >= PLACEMENT_CALM
                && placed_at.is_none_or(|at| at.elapsed() >= PLACEMENT_CALM)
            {
                placed_at = Some(Instant::now());
                // No job may start between this look and the move; one
                // being recorded now makes this attempt wait for the next.
                let no_job_starts = self.node.try_hold_leadership();
                let (last_finished, jobs_running) = self.node.store().with_state(|sm| {
                    let last_finished = sm.history.values().filter_map(|d| d.finished_at).max().unwrap_or(0);
                    // A leadership change interrupts the backups and recovery tests it runs.
                    let running = drc_model::job::JobState::Running;
                    let jobs_running =
                        sm.backups.values().any(|b| b.state == running) || sm.recovery_tests.values().any(|t| t.state == running);
                    (last_finished, jobs_running)
                });
                // Only a whole system moves its leader: with a member down,
                // the move would add a leadership change (and the agents'
                // reconnection) to a degraded system, for a gain it may not
                // have (with three coordinators, losing a second region
                // loses the quorum anyway).
                let whole = t.members.keys().all(|id| observations.get(id).is_some_and(|o| o.fresh && o.reachable));
                if whole
                    && no_job_starts.is_some()
                    && !jobs_running
                    && now_ms().saturating_sub(last_finished) >= PLACEMENT_CALM.as_millis() as u64
                {
                    self.place(t, &records).await;
                }
                drop(no_job_starts);
            }
            for id in open {
                let fresh = self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
                if fresh {
                    let this = Arc::clone(&self);
                    let cancel = cancel.clone();
                    tokio::spawn(async move {
                        this.carry_out(id, cancel).await;
                        this.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    });
                }
            }
        }
    }

    /// Leader placement: when this node's region holds a primary, hands the
    /// leadership to a caught-up coordinator in a region that holds none, so
    /// that losing the primaries' region costs a failover but no election.
    async fn place(&self, t: &Topology, records: &BTreeMap<String, super::ClusterRecord>) {
        let me = self.node.status();
        let Some(mine) = self.placement.get(&me.id) else { return };
        let busy: std::collections::BTreeSet<&str> =
            records.values().filter_map(|r| t.members.get(&r.primary)).map(|m| m.region.as_str()).collect();
        if !busy.contains(mine.as_str()) {
            return;
        }
        let candidates: Vec<u64> = me
            .voters
            .iter()
            .copied()
            .filter(|id| *id != me.id && self.placement.get(id).is_some_and(|r| !busy.contains(r.as_str())))
            .collect();
        if candidates.is_empty() {
            return;
        }
        if let Some(to) = self.node.place_leader(candidates).await {
            let region = self.placement.get(&to).cloned().unwrap_or_default();
            tracing::info!(to, %region, "handing the coordinator leadership out of region {mine}, which holds a primary");
            self.health.emit(
                "leader",
                "",
                "",
                format!("node {} hands leadership to node {to} (region {region}): region {mine} holds a primary", me.id),
            );
        }
    }

    /// Commits a decision to Raft; its steps start on the next tick.
    async fn commit(&self, d: Decision) -> Result<Decision, String> {
        let mut d = d;
        match self.node.propose(Command::Decide { decision: Box::new(d.clone()) }, self.write_timeout).await {
            Ok(Outcome::Decided { id }) => {
                d.id = id;
                tracing::warn!(cluster = %d.cluster, from = %d.from, to = %d.to, id, reason = %d.reason, "failover decided");
                self.health.emit("failover", &d.cluster, &d.to, format!("decision {id}: {} -> {}: {}", d.from, d.to, d.reason));
                Ok(d)
            }
            Ok(Outcome::Refused { reason }) => Err(reason),
            Ok(other) => Err(format!("unexpected outcome {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `now` is the core's clock of this tick and `at` the same instant on
    /// the monotonic clock: the leases it granted end at `now + ttl`, and the
    /// agents are told that instant, the ttl, and how long after the newest
    /// sample received from them it is.
    async fn act(&self, t: &Topology, actions: Vec<Action>, now: Millis, at: Instant) {
        let mut waits = BTreeMap::new();
        // Adoptions are independent: proposed together, they share Raft
        // round trips (thousands of clusters are adopted when a topology
        // first meets its agents).
        let adopts = actions.iter().filter_map(|a| match a {
            Action::Adopt { cluster, primary, dataset } => Some(async move {
                let cmd = Command::Adopt { cluster: cluster.clone(), primary: primary.clone(), dataset: dataset.clone() };
                if self.propose(cmd).await.is_some() {
                    tracing::info!(%cluster, %primary, "adopted primary");
                    self.health.emit("failover", cluster, primary, format!("{primary} adopted as the primary of {cluster} (epoch 1)"));
                }
            }),
            _ => None,
        });
        futures::future::join_all(adopts).await;
        // Checked after `at`, the instant the leases count from: a leader
        // that cannot show no successor exists renews nothing.
        let may_renew = self.node.may_renew();
        let mut held = 0usize;
        for a in actions {
            match a {
                Action::Adopt { .. } => {}
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
                    let mut args: std::collections::HashMap<String, String> = [
                        ("ttl_ms".to_string(), ttl.to_string()),
                        ("expires_at_ms".to_string(), (now + ttl).to_string()),
                        ("replicas".to_string(), replicas.to_string()),
                    ]
                    .into();
                    if let Some(sync) = sync {
                        self.note_sync(&cluster, &member, &sync);
                        args.insert("sync_count".into(), sync.count.to_string());
                        args.insert("sync_names".into(), sync.names.join(","));
                    }
                    let cmd = drc_proto::Command { command_id: 0, cluster, epoch, action: "lease".into(), args };
                    self.health.renew(&member, cmd, at + Duration::from_millis(ttl));
                }
                Action::Wait { cluster, reason } => {
                    waits.insert(cluster, reason);
                }
            }
        }
        let mut held_since = self.held_since.lock().unwrap_or_else(|p| p.into_inner());
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
        let mut current = self.waits.lock().unwrap_or_else(|p| p.into_inner());
        for (cluster, reason) in &waits {
            if current.get(cluster) != Some(reason) && !reason.starts_with("waiting ") && !reason.contains(" down for ") {
                self.health.emit("failover", cluster, "", reason.clone());
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

    /// Carries out one decision until it is finished or this node stops leading.
    async fn carry_out(&self, id: u64, cancel: CancellationToken) {
        let mut first_attempt: BTreeMap<usize, Instant> = BTreeMap::new();
        let mut background_next: BTreeMap<usize, Instant> = BTreeMap::new();
        loop {
            if cancel.is_cancelled() || !self.is_leader() {
                return;
            }
            let Some((d, t)) = self.decision(id) else { return };
            if d.finished_at.is_some() {
                return;
            }
            // The main line in order; background steps whenever possible.
            let main = d.steps.iter().position(|s| s.state == StepState::Pending && !s.is_background());
            let todo: Vec<usize> = match main {
                Some(i) => vec![i],
                None => d
                    .steps
                    .iter()
                    .enumerate()
                    .filter(|(i, s)| s.state == StepState::Pending && background_next.get(i).is_none_or(|at| Instant::now() >= *at))
                    .map(|(i, _)| i)
                    .collect(),
            };
            if todo.is_empty() {
                tokio::time::sleep(RETRY).await;
                continue;
            }
            for i in todo {
                let started = now_ms();
                let since = *first_attempt.entry(i).or_insert_with(Instant::now);
                let outcome = self.attempt(&d, i, &t, since).await;
                match outcome {
                    Attempt::Record(state, error, output) => {
                        // The next main-line step starts while this outcome
                        // is being committed: every step is idempotent and a
                        // new leader redoes any step not recorded, so only
                        // the order of the records matters, and it is kept.
                        // This saves one Raft commit (~30-300 ms) between
                        // fence and promote.
                        let mut ahead = d.clone();
                        ahead.steps[i].state = state;
                        ahead.steps[i].args.extend(output.clone());
                        let next = (main.is_some() && state != StepState::Failed)
                            .then(|| ahead.steps.iter().position(|s| s.state == StepState::Pending && !s.is_background()))
                            .flatten();
                        let Some(j) = next else {
                            self.record(&d, i, state, error, output, started).await;
                            continue;
                        };
                        let since_j = *first_attempt.entry(j).or_insert_with(Instant::now);
                        let started_j = now_ms();
                        let (recorded, outcome) =
                            tokio::join!(self.record(&d, i, state, error, output, started), self.attempt(&ahead, j, &t, since_j));
                        match outcome {
                            Attempt::Record(state, error, output) if recorded => {
                                self.record(&ahead, j, state, error, output, started_j).await;
                            }
                            Attempt::Record(..) => {}
                            Attempt::Later(why) => {
                                tracing::debug!(decision = id, step = j, %why, "step not possible yet");
                                tokio::time::sleep(RETRY).await;
                            }
                        }
                    }
                    Attempt::Later(why) => {
                        tracing::debug!(decision = id, step = i, %why, "step not possible yet");
                        background_next.insert(i, Instant::now() + Duration::from_secs(2));
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        }
    }

    /// Commits the outcome of step `i` of `d`; false if it was not committed.
    async fn record(
        &self,
        d: &Decision,
        i: usize,
        state: StepState,
        error: String,
        output: BTreeMap<String, String>,
        started: Millis,
    ) -> bool {
        let cmd = Command::Step { decision: d.id, index: i, state, started, finished: now_ms(), error: error.clone(), output };
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
        tracing::info!("{what}");
        self.health.emit("failover", &d.cluster, &s.member, what);
        true
    }

    /// Runs the hook for a promoted decision; its outcome is the step's.
    async fn publish(&self, d: &Decision, t: &Topology) -> Attempt {
        if !d.steps.iter().any(|s| s.action == "promote" && s.state == StepState::Done) {
            return Attempt::Later("not promoted yet".into());
        }
        let Some((program, rest)) = self.hook.command.split_first() else {
            return Attempt::Record(StepState::Done, String::new(), BTreeMap::from([("hook".to_string(), "none configured".to_string())]));
        };
        let decl = t.members.get(&d.to);
        let address = decl.map(|m| m.address.clone()).unwrap_or_default();
        let (host, port) = address.rsplit_once(':').map(|(h, p)| (h.to_string(), p.to_string())).unwrap_or_default();
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(rest)
            .env("DRC_CLUSTER", &d.cluster)
            .env("DRC_EPOCH", d.epoch.to_string())
            .env("DRC_PRIMARY", &d.to)
            .env("DRC_PRIMARY_ADDRESS", &address)
            .env("DRC_PRIMARY_HOST", host)
            .env("DRC_PRIMARY_PORT", port)
            .env("DRC_PRIMARY_REGION", decl.map(|m| m.region.clone()).unwrap_or_default())
            .env("DRC_OLD_PRIMARY", &d.from)
            .env("DRC_DECISION", d.id.to_string())
            .env("DRC_KIND", format!("{:?}", d.kind).to_lowercase())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let start = Instant::now();
        let outcome = tokio::time::timeout(self.hook.timeout, cmd.output()).await;
        let ms = start.elapsed().as_millis().to_string();
        let tail = |b: &[u8]| {
            let text = String::from_utf8_lossy(b);
            let t = text.trim();
            t[t.len().saturating_sub(500)..].to_string()
        };
        match outcome {
            Ok(Ok(out)) if out.status.success() => Attempt::Record(
                StepState::Done,
                String::new(),
                BTreeMap::from([("hook_ms".to_string(), ms), ("hook_output".to_string(), tail(&out.stdout))]),
            ),
            Ok(Ok(out)) => Attempt::Record(
                StepState::Failed,
                format!("hook {program} failed ({}): {}", out.status, tail(&out.stderr)),
                BTreeMap::from([("hook_ms".to_string(), ms)]),
            ),
            Ok(Err(e)) => Attempt::Record(StepState::Failed, format!("hook {program} could not start: {e}"), BTreeMap::new()),
            Err(_) => Attempt::Record(
                StepState::Failed,
                format!("hook {program} timed out after {} and was killed", humantime::format_duration(self.hook.timeout)),
                BTreeMap::from([("hook_ms".to_string(), ms)]),
            ),
        }
    }

    /// One attempt at step `i`.
    async fn attempt(&self, d: &Decision, i: usize, t: &Topology, since: Instant) -> Attempt {
        let step = &d.steps[i];
        if step.action == "publish" {
            return self.publish(d, t).await;
        }
        // Leases granted up to the decision run out lease + margin later,
        // unless the core decided only after the old primary's lease ended.
        let lease_end = step.lease_end(d.decided_at, self.lease.lease, self.lease.drift_margin);
        let lease_over = now_ms() >= lease_end;
        let cmd = drc_proto::Command {
            command_id: 0,
            cluster: d.cluster.clone(),
            epoch: d.epoch,
            action: step.action.clone(),
            args: args(d, step, t).into_iter().collect(),
        };
        let mut cmd = cmd;
        if step.action == "promote" {
            // The new primary serves under a lease from its promotion on;
            // the core keeps it from being replaced until that ends.
            let ttl = self.lease.promote_ttl();
            cmd.args.insert("ttl_ms".into(), ttl.to_string());
            cmd.args.insert("expires_at_ms".into(), (now_ms() + ttl).to_string());
            let replicas = t.members.values().filter(|m| m.cluster == d.cluster).count().saturating_sub(1);
            cmd.args.insert("replicas".into(), replicas.to_string());
        }
        let result = self.health.command(&step.member, cmd, COMMAND_TIMEOUT).await;
        let expired = since.elapsed() > STEP_DEADLINE;
        match (step.action.as_str(), result) {
            (_, Ok(r)) if r.ok => Attempt::Record(StepState::Done, String::new(), r.output.into_iter().collect()),
            // An old primary that cannot be fenced through its agent fences
            // itself when its lease runs out; only then may anyone be promoted.
            ("fence", Ok(r)) if lease_over => {
                Attempt::Record(StepState::Skipped, format!("fence failed ({}); its lease has expired", r.error), BTreeMap::new())
            }
            ("fence", Err(e)) if lease_over => Attempt::Record(StepState::Skipped, format!("{e}; its lease has expired"), BTreeMap::new()),
            ("fence", Ok(r)) => Attempt::Later(r.error),
            ("fence", Err(e)) => Attempt::Later(e),
            ("demote", Ok(r)) => Attempt::Record(StepState::Failed, r.error, BTreeMap::new()),
            ("demote", Err(e)) => Attempt::Record(StepState::Failed, e, BTreeMap::new()),
            ("repoint" | "rejoin", Ok(r)) => Attempt::Later(r.error),
            ("repoint" | "rejoin", Err(e)) => Attempt::Later(e),
            (_, Ok(r)) if expired => Attempt::Record(StepState::Failed, r.error, BTreeMap::new()),
            (_, Err(e)) if expired => Attempt::Record(StepState::Failed, e, BTreeMap::new()),
            (_, Ok(r)) => Attempt::Later(r.error),
            (_, Err(e)) => Attempt::Later(e),
        }
    }
}

enum Attempt {
    Record(StepState, String, BTreeMap<String, String>),
    Later(String),
}

/// What an agent needs to carry out a step.
fn args(d: &Decision, step: &Step, t: &Topology) -> BTreeMap<String, String> {
    let mut a = step.args.clone();
    let address = |m: &str| t.members.get(m).map(|m| m.address.clone()).unwrap_or_default();
    let (host, port) = address(&d.to).rsplit_once(':').map(|(h, p)| (h.to_string(), p.to_string())).unwrap_or_default();
    a.insert("primary_member".into(), d.to.clone());
    a.insert("primary_host".into(), host);
    a.insert("primary_port".into(), port);
    a.insert("old_primary".into(), d.from.clone());
    a.insert("old_primary_address".into(), address(&d.from));
    a.insert("slot".into(), drc_proto::slot_name(&step.member));
    let others: Vec<String> =
        t.members.iter().filter(|(id, m)| m.cluster == d.cluster && **id != d.to).map(|(id, _)| drc_proto::slot_name(id)).collect();
    a.insert("slots".into(), others.join(","));
    let fenced = d.steps.iter().any(|s| (s.action == "fence" || s.action == "demote") && s.state == StepState::Done);
    a.insert("old_primary_fenced".into(), fenced.to_string());
    if step.action == "catch_up" {
        // The demoted primary's final position, as its agent reported it.
        let target = d.steps.iter().find(|s| s.action == "demote").and_then(|s| s.args.get("position").cloned());
        a.insert("position".into(), target.unwrap_or_default());
    }
    a
}
