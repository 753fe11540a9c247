//! The leader's soft state of member health: the newest sample of every
//! member, who is connected, and what that says about each cluster.
//!
//! Samples never go through Raft (DESIGN.md: heartbeats would make consensus
//! the bottleneck). The board is cleared whenever this node becomes leader, so
//! a new leader decides only on samples it received itself.
//!
//! Time is passed in (`now`), so the board is deterministic under test.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use drc_proto::{
    coordinator_message, ClusterHealth, ClusterView, CommandResult, CoordinatorMessage, MemberHealth, Progress, Sample, WatchEvent,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::core::Obs;
use drc_model::time::wall_now_ms;
use drc_model::topology::Topology;
use drc_model::ClusterRecord;

/// Where the messages for one agent stream go.
pub type AgentSender = mpsc::Sender<Result<CoordinatorMessage, tonic::Status>>;

/// Roles an agent may report.
pub const ROLES: [&str; 3] = ["primary", "replica", "unknown"];

#[derive(Default)]
struct MemberState {
    sample: Option<Sample>,
    received: Option<Instant>,
    /// Session id of the connected agent stream, if any.
    session: Option<u64>,
    /// Commands for the connected stream.
    sender: Option<AgentSender>,
    /// Health and role last reported in events, to report only changes.
    reported: Option<(bool, &'static str)>,
    /// The connected stream has not sent a sample yet.
    awaiting_first: bool,
}

#[derive(Default)]
struct Board {
    members: HashMap<String, MemberState>,
    /// cluster -> member -> dataset id, from the newest samples.
    datasets: HashMap<String, HashMap<String, (String, String)>>,
    next_session: u64,
    last_primary: HashMap<String, String>,
    /// Commands sent and not yet answered, by command id.
    pending: HashMap<u64, oneshot::Sender<CommandResult>>,
    /// The newest progress report of each pending long command.
    progress: HashMap<u64, Progress>,
    next_command: u64,
}

/// Shared health board of the leader.
pub struct HealthBoard {
    board: Mutex<Board>,
    events: broadcast::Sender<WatchEvent>,
    /// cluster -> its published view (see [`Self::view_of`]).
    views: Mutex<HashMap<String, watch::Sender<Option<ClusterView>>>>,
    /// Signalled by the first sample of a new agent stream: a new leader
    /// renews the lease of a primary whose agent just found it at once,
    /// rather than on its next tick.
    pub first_sample: tokio::sync::Notify,
}

impl Default for HealthBoard {
    fn default() -> Self {
        Self::new()
    }
}

/// Queues a command on an agent's stream without waiting; false if there
/// is no stream or it is full.
fn send_now(sender: Option<AgentSender>, cmd: drc_proto::Command) -> bool {
    sender.is_some_and(|s| s.try_send(Ok(CoordinatorMessage { body: Some(coordinator_message::Body::Command(cmd)) })).is_ok())
}

impl HealthBoard {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(1024);
        HealthBoard { board: Mutex::new(Board::default()), events, views: Mutex::new(HashMap::new()), first_sample: Default::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<WatchEvent> {
        self.events.subscribe()
    }

    pub fn emit(&self, kind: &str, cluster: &str, member: &str, message: String) {
        let _ = self.events.send(WatchEvent {
            at_ms: wall_now_ms(),
            kind: kind.into(),
            cluster: cluster.into(),
            member: member.into(),
            message,
        });
    }

    /// Forgets what an earlier leadership learned: called when this node's
    /// role changes. Members whose stream is still connected stay: a
    /// follower accepts no stream, so theirs were accepted by this
    /// leadership, possibly in the moment before this call (an agent waiting
    /// for the election is accepted as soon as it ends). Streams of an
    /// earlier leadership end when it does. Session and command numbers go
    /// on, so an old stream can never pass for a new one.
    pub fn reset(&self) {
        let mut b = self.lock();
        b.members.retain(|_, m| m.session.is_some());
        let Board { members, datasets, .. } = &mut *b;
        for ds in datasets.values_mut() {
            ds.retain(|member, _| members.contains_key(member));
        }
        b.last_primary.clear();
        drop(b);
        for view in self.views.lock().unwrap_or_else(|p| p.into_inner()).values() {
            view.send_replace(None);
        }
    }

    /// Registers a new agent stream for `member`, replacing any older one;
    /// commands for the member go to `sender`.
    pub fn connect(&self, member: &str, cluster: &str, sender: AgentSender) -> u64 {
        let id = {
            let mut b = self.lock();
            b.next_session += 1;
            let id = b.next_session;
            let m = b.members.entry(member.to_string()).or_default();
            m.session = Some(id);
            m.sender = Some(sender);
            m.awaiting_first = true;
            id
        };
        self.emit("agent", cluster, member, format!("agent of {member} connected"));
        id
    }

    /// Ends a stream; a newer stream of the same member is left alone.
    pub fn disconnect(&self, member: &str, cluster: &str, session: u64) {
        let gone = {
            let mut b = self.lock();
            match b.members.get_mut(member) {
                Some(m) if m.session == Some(session) => {
                    m.session = None;
                    m.sender = None;
                    true
                }
                _ => false,
            }
        };
        if gone {
            self.emit("agent", cluster, member, format!("agent of {member} disconnected"));
        }
    }

    /// Whether `session` is still the member's current stream.
    pub fn is_current(&self, member: &str, session: u64) -> bool {
        self.lock().members.get(member).is_some_and(|m| m.session == Some(session))
    }

    /// Records a sample of a member of `cluster`, received at `now`.
    pub fn ingest(&self, cluster: &str, sample: Sample, now: Instant) {
        let mut guard = self.lock();
        let b = &mut *guard;
        // Thousands of samples a second: no allocation unless something new.
        if !sample.dataset_id.is_empty() {
            if !b.datasets.contains_key(cluster) {
                b.datasets.insert(cluster.to_string(), HashMap::new());
            }
            if let Some(ds) = b.datasets.get_mut(cluster) {
                let same = ds.get(&sample.member_id).is_some_and(|(d, p)| *d == sample.dataset_id && *p == sample.previous_dataset_id);
                if !same {
                    ds.insert(sample.member_id.clone(), (sample.dataset_id.clone(), sample.previous_dataset_id.clone()));
                }
            }
        }
        if !b.members.contains_key(&sample.member_id) {
            b.members.insert(sample.member_id.clone(), MemberState::default());
        }
        if let Some(m) = b.members.get_mut(&sample.member_id) {
            m.sample = Some(sample);
            m.received = Some(now);
            if std::mem::take(&mut m.awaiting_first) {
                self.first_sample.notify_one();
            }
        }
    }

    /// A command id for [`Self::command`], to follow the command's progress
    /// while it runs.
    pub fn command_id(&self) -> u64 {
        let mut b = self.lock();
        b.next_command += 1;
        b.next_command
    }

    /// Sends a command to a member's agent and waits for its result, at most
    /// `timeout`. `Err` says why there is no result (not connected, stream
    /// gone, no answer in time). `cmd.command_id` 0 takes a fresh id.
    pub async fn command(&self, member: &str, mut cmd: drc_proto::Command, timeout: Duration) -> Result<CommandResult, String> {
        let (tx, rx) = oneshot::channel();
        let sender = {
            let mut b = self.lock();
            if cmd.command_id == 0 {
                b.next_command += 1;
                cmd.command_id = b.next_command;
            }
            let sender =
                b.members.get(member).and_then(|m| m.sender.clone()).ok_or_else(|| format!("the agent of {member} is not connected"))?;
            b.pending.insert(cmd.command_id, tx);
            sender
        };
        let id = cmd.command_id;
        let msg = CoordinatorMessage { body: Some(coordinator_message::Body::Command(cmd)) };
        if sender.try_send(Ok(msg)).is_err() {
            self.lock().pending.remove(&id);
            return Err(format!("the stream of {member}'s agent is full or closed"));
        }
        let out = tokio::time::timeout(timeout, rx).await;
        let mut b = self.lock();
        b.pending.remove(&id);
        b.progress.remove(&id);
        drop(b);
        match out {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(format!("the agent of {member} went away")),
            Err(_) => Err(format!("no answer from the agent of {member} within {timeout:?}")),
        }
    }

    /// Sends a message to a member's agent without waiting; false if it is
    /// not connected or its stream is full.
    pub fn notify(&self, member: &str, cmd: drc_proto::Command) -> bool {
        let sender = self.lock().members.get(member).and_then(|m| m.sender.clone());
        send_now(sender, cmd)
    }

    /// Sends a lease renewal that ends at `until` on this clock. It names the
    /// newest sample received from the member and how long after *its
    /// receipt* `until` is: the agent counts from when it took that sample,
    /// which was earlier, so its lease never outlasts `until`, however late
    /// the renewal arrives. False if the agent is not connected or its
    /// stream is full.
    pub fn renew(&self, member: &str, mut cmd: drc_proto::Command, until: Instant) -> bool {
        let sender = {
            let b = self.lock();
            let Some(m) = b.members.get(member) else { return false };
            if let (Some(sample), Some(received)) = (&m.sample, m.received) {
                if sample.seq > 0 {
                    cmd.args.insert("basis_seq".into(), sample.seq.to_string());
                    cmd.args.insert("basis_ttl_ms".into(), until.saturating_duration_since(received).as_millis().to_string());
                }
            }
            m.sender.clone()
        };
        send_now(sender, cmd)
    }

    /// An agent's answer to a command.
    pub fn complete(&self, result: CommandResult) {
        if let Some(tx) = self.lock().pending.remove(&result.command_id) {
            let _ = tx.send(result);
        }
    }

    /// How far a pending command has got, from its agent; reported in
    /// `drctl watch` too. Reports of unknown commands are dropped.
    pub fn progress(&self, cluster: &str, member: &str, p: Progress) {
        let mut b = self.lock();
        if !b.pending.contains_key(&p.command_id) {
            return;
        }
        b.progress.insert(p.command_id, p.clone());
        drop(b);
        self.emit("progress", cluster, member, describe_progress(&p));
    }

    pub fn progress_of(&self, command_id: u64) -> Option<Progress> {
        self.lock().progress.get(&command_id).cloned()
    }

    /// Every member as the decision core sees it at `now`.
    pub fn observations(&self, topology: &Topology, now: Instant) -> BTreeMap<String, Obs> {
        let b = self.lock();
        let mut out = Vec::with_capacity(topology.members.len());
        let mut windows: HashMap<&str, Duration> = HashMap::new();
        // In id order, so that collecting into the map needs no sorting.
        for (id, decl) in &topology.members {
            let Some(state) = b.members.get(id) else { continue };
            let Some(s) = &state.sample else { continue };
            let window = *windows
                .entry(decl.cluster.as_str())
                .or_insert_with(|| topology.clusters.get(&decl.cluster).map(|c| c.policy.detection_window).unwrap_or_default());
            let fresh = state.session.is_some() && state.received.is_some_and(|r| now.saturating_duration_since(r) <= window);
            out.push((
                id.clone(),
                Obs {
                    fresh,
                    reachable: s.reachable,
                    role: s.role.clone(),
                    dataset: s.dataset_id.clone(),
                    previous_dataset: s.previous_dataset_id.clone(),
                    position: s.position,
                    lag_bytes: s.lag_bytes,
                    lag_ms: s.lag_ms,
                    primary_reachable: s.primary_reachable,
                    primary_position: s.primary_position,
                    epoch: s.epoch,
                    lease_fenced: s.lease_fenced,
                    server_gone: s.server_gone,
                    age: state.received.map_or(0, |r| now.saturating_duration_since(r).as_millis() as u64),
                    received: s.receive_position,
                    streaming: s.replication_connected,
                },
            ));
        }
        out.into_iter().collect()
    }

    /// The dataset (system identifier / replication id) that a member of
    /// `cluster` other than `except` reports, if any does.
    pub fn dataset_of(&self, cluster: &str, except: &str) -> Option<(String, (String, String))> {
        let b = self.lock();
        b.datasets.get(cluster)?.iter().filter(|(m, _)| m.as_str() != except).min().map(|(m, d)| (m.clone(), d.clone()))
    }

    /// Health of every declared cluster (or of `only`) as of `now`.
    pub fn clusters(
        &self,
        topology: &Topology,
        records: &BTreeMap<String, ClusterRecord>,
        only: Option<&str>,
        now: Instant,
    ) -> Vec<ClusterHealth> {
        let by_cluster = topology.by_cluster();
        let b = self.lock();
        topology
            .clusters
            .iter()
            .filter(|(name, _)| only.is_none_or(|c| c == name.as_str()))
            .map(|(name, cluster)| {
                let window = cluster.policy.detection_window;
                let mut reach: BTreeMap<String, bool> = BTreeMap::new();
                let mut members = Vec::new();
                for (id, decl) in by_cluster.get(name).into_iter().flatten().filter_map(|id| topology.members.get_key_value(id)) {
                    let state = b.members.get(id);
                    let sample = state.and_then(|m| m.sample.as_ref());
                    let age = state.and_then(|m| m.received).map(|r| now.saturating_duration_since(r));
                    let connected = state.is_some_and(|m| m.session.is_some());
                    let fresh = age.is_some_and(|a| a <= window);
                    if let (Some(s), true) = (sample, fresh) {
                        let e = reach.entry(decl.region.clone()).or_insert(false);
                        *e |= s.primary_reachable;
                    }
                    members.push(member_health(id, &decl.region, sample, age, connected, fresh));
                }
                // The recorded primary once there is one; before, what the
                // agents report.
                let rec = records.get(name);
                let primary = rec.map(|r| r.primary.clone()).filter(|p| !p.is_empty()).unwrap_or_else(|| primary_of(&members));
                let epoch = rec.map(|r| r.epoch).unwrap_or(0);
                for m in &mut members {
                    m.primary_reachable_from = reach.iter().map(|(k, v)| (k.clone(), *v)).collect();
                }
                ClusterHealth {
                    name: name.clone(),
                    kind: cluster.kind.as_str().to_string(),
                    primary,
                    members,
                    epoch,
                    failover_state: String::new(),
                    paused: cluster.policy.paused || rec.is_some_and(|r| r.paused),
                    blocked_until_ms: rec.map(|r| r.blocked_until).unwrap_or(0),
                    decision_in_progress: rec.and_then(|r| r.in_progress).unwrap_or(0),
                }
            })
            .collect()
    }

    /// The primary of `cluster` as published to its agents and to
    /// `WatchPrimary`: changes only when the cluster's primary, its address
    /// or the epoch change, so one cluster's change wakes only its own
    /// agents' streams.
    pub fn view_of(&self, cluster: &str) -> watch::Receiver<Option<ClusterView>> {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        views.entry(cluster.to_string()).or_insert_with(|| watch::channel(None).0).subscribe()
    }

    /// Recomputes the clusters at `now`: publishes changed primaries to the
    /// agents and emits an event for every health, role or primary change.
    ///
    /// It runs several times a second over every member of the topology, so
    /// it allocates only for what changed: a member whose health and role
    /// are as last reported costs a map lookup and a few comparisons.
    pub fn refresh(&self, topology: &Topology, records: &BTreeMap<String, ClusterRecord>, now: Instant) {
        let mut events = Vec::new();
        // cluster -> the most advanced healthy member claiming the primary
        // role, (timeline, position, id): the primary before one is recorded.
        let mut claimed: HashMap<&str, (u32, u64, &str)> = HashMap::new();
        {
            let mut guard = self.lock();
            let b = &mut *guard;
            for (name, ids) in topology.by_cluster() {
                let Some(cluster) = topology.clusters.get(name) else { continue };
                let window = cluster.policy.detection_window;
                for id in ids {
                    // One map lookup per member and refresh: the member's
                    // state holds what was last reported of it too.
                    if !b.members.contains_key(id.as_str()) {
                        b.members.insert(id.clone(), MemberState::default());
                    }
                    let Some(state) = b.members.get_mut(id.as_str()) else { continue };
                    let sample = state.sample.as_ref();
                    let age = state.received.map(|r| now.saturating_duration_since(r));
                    let connected = state.session.is_some();
                    let fresh = age.is_some_and(|a| a <= window);
                    let (healthy, role) = health_and_role(sample, connected, fresh);
                    if let (true, "primary", Some(s)) = (healthy, role, sample) {
                        let e = claimed.entry(name.as_str()).or_insert((s.timeline, s.position, id.as_str()));
                        // Ties go to the later id, as in `primary_of`.
                        if (s.timeline, s.position) >= (e.0, e.1) {
                            *e = (s.timeline, s.position, id.as_str());
                        }
                    }
                    let prev = state.reported;
                    if prev == Some((healthy, role)) {
                        continue;
                    }
                    state.reported = Some((healthy, role));
                    if prev.map(|p| p.0) != Some(healthy) {
                        let what = if healthy {
                            "healthy".to_string()
                        } else {
                            let region = topology.members.get(id).map(|m| m.region.as_str()).unwrap_or("");
                            format!("unhealthy{}", reason(&member_health(id, region, sample, age, connected, fresh)))
                        };
                        events.push(("member_health", name.clone(), id.clone(), format!("{id} is {what}")));
                    }
                    if prev.map(|p| p.1) != Some(role) {
                        events.push(("member_role", name.clone(), id.clone(), format!("{id} is {role}")));
                    }
                }
            }
            for name in topology.clusters.keys() {
                let recorded = records.get(name).map(|r| r.primary.as_str()).filter(|p| !p.is_empty());
                let primary = recorded.or_else(|| claimed.get(name.as_str()).map(|c| c.2)).unwrap_or("");
                if b.last_primary.get(name).is_some_and(|p| p == primary) {
                    continue;
                }
                b.last_primary.insert(name.clone(), primary.to_string());
                let msg = if primary.is_empty() { format!("{name} has no primary") } else { format!("{name} primary is {primary}") };
                events.push(("primary", name.clone(), primary.to_string(), msg));
            }
        }
        for (kind, cluster, member, msg) in events {
            self.emit(kind, &cluster, &member, msg);
        }
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        for name in topology.clusters.keys() {
            let rec = records.get(name);
            let recorded = rec.map(|r| r.primary.as_str()).filter(|p| !p.is_empty());
            let primary = recorded.or_else(|| claimed.get(name.as_str()).map(|c| c.2)).unwrap_or("");
            let address = topology.members.get(primary).map(|m| m.address.as_str()).unwrap_or("");
            let epoch = rec.map(|r| r.epoch).unwrap_or(0);
            if !views.contains_key(name) {
                views.insert(name.clone(), watch::channel(None).0);
            }
            let Some(sender) = views.get(name) else { continue };
            sender.send_if_modified(|v| {
                if v.as_ref().is_some_and(|v| v.primary_member == primary && v.primary_address == address && v.epoch == epoch) {
                    return false;
                }
                *v = Some(ClusterView {
                    cluster: name.clone(),
                    primary_member: primary.to_string(),
                    primary_address: address.to_string(),
                    epoch,
                });
                true
            });
        }
    }
}

/// The role as one of [`ROLES`] ("unknown" for anything else; the agent
/// API refuses other roles anyway).
fn role_name(role: &str) -> &'static str {
    ROLES.iter().copied().find(|r| *r == role).unwrap_or("unknown")
}

/// Bytes per second and seconds left of a progress report (rate 0 and no
/// ETA until something moved; no ETA without a total).
pub fn rate_and_eta(p: &Progress) -> (u64, Option<u64>) {
    let rate = p.bytes_done.saturating_mul(1000).checked_div(p.elapsed_ms).unwrap_or(0);
    let eta = (rate > 0 && p.bytes_total > 0).then(|| p.bytes_total.saturating_sub(p.bytes_done).div_ceil(rate));
    (rate, eta)
}

/// "upload: 120 MiB of ~1024 MiB (11%), 40.0 MiB/s, ETA 23 s".
pub fn describe_progress(p: &Progress) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let (rate, eta) = rate_and_eta(p);
    let mut s = format!("{}: {:.1} MiB", p.phase, mib(p.bytes_done));
    if let Some(pct) = p.bytes_done.saturating_mul(100).checked_div(p.bytes_total) {
        let pct = pct.min(100);
        s += &format!(" of ~{:.1} MiB ({pct}%)", mib(p.bytes_total));
    }
    s += &format!(", {:.1} MiB/s", mib(rate));
    if let Some(eta) = eta {
        s += &format!(", ETA {eta} s");
    }
    s
}

fn reason(m: &MemberHealth) -> String {
    if !m.has_sample {
        " (no sample yet)".into()
    } else if !m.agent_connected {
        " (agent disconnected)".into()
    } else if !m.error.is_empty() {
        format!(" ({})", m.error)
    } else {
        format!(" (last sample {} ms ago)", m.sample_age_ms)
    }
}

fn member_health(id: &str, region: &str, sample: Option<&Sample>, age: Option<Duration>, connected: bool, fresh: bool) -> MemberHealth {
    let (healthy, role) = health_and_role(sample, connected, fresh);
    let mut h = MemberHealth {
        id: id.to_string(),
        region: region.to_string(),
        role: role.to_string(),
        healthy,
        agent_connected: connected,
        ..Default::default()
    };
    if let Some(s) = sample {
        h.has_sample = true;
        h.lag_bytes = s.lag_bytes;
        h.lag_ms = s.lag_ms;
        h.timeline = s.timeline;
        h.dataset_id = s.dataset_id.clone();
        h.error = s.error.clone();
        h.position = s.position;
        h.replication_connected = s.replication_connected;
        h.replication_state = s.replication_state.clone();
        h.lease_ms = s.lease_ms;
        h.lease_fenced = s.lease_fenced;
        h.server_gone = s.server_gone;
        h.sync_standbys = s.sync_standbys.clone();
        h.sample_age_ms = age.map(|a| a.as_millis() as u64).unwrap_or(0);
    }
    h
}

/// Whether a member is healthy, and the role it is shown with: the one
/// definition behind `drctl status` and the refresh's events.
fn health_and_role(sample: Option<&Sample>, connected: bool, fresh: bool) -> (bool, &'static str) {
    match sample {
        Some(s) => {
            (connected && fresh && s.reachable && s.error.is_empty(), if fresh && s.reachable { role_name(&s.role) } else { "unknown" })
        }
        None => (false, "unknown"),
    }
}

/// The primary: the one healthy member reporting the primary role; with
/// several (split brain as seen by agents), the most advanced; none if none.
fn primary_of(members: &[MemberHealth]) -> String {
    members
        .iter()
        .filter(|m| m.healthy && m.role == "primary")
        .max_by_key(|m| (m.timeline, m.position))
        .map(|m| m.id.clone())
        .unwrap_or_default()
}

/// Keeps the board in step with leadership and time: cleared whenever this
/// node gains or loses leadership, refreshed every `interval` while leading
/// (so that staleness turns members unhealthy even when nothing arrives).
pub async fn run_monitor(
    board: std::sync::Arc<HealthBoard>,
    node: crate::raft::NodeHandle,
    interval: Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut status = node.watch_status();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_leader = false;
    let mut topology: Option<(u64, std::sync::Arc<Topology>)> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
            r = status.changed() => if r.is_err() { return },
        }
        let s = status.borrow_and_update().clone();
        let leader = s.role == crate::raft::Role::Leader;
        if leader != was_leader {
            board.reset();
            if leader {
                board.emit("leader", "", "", format!("node {} leads (term {}); waiting for fresh samples", s.id, s.term));
            }
            was_leader = leader;
        }
        if leader {
            // Clone the topology only when it changed: it can hold thousands of members.
            let version = node.store().with_state(|sm| sm.topology_version);
            if topology.as_ref().is_none_or(|(v, _)| *v != version) {
                topology = Some((version, node.store().with_state(|sm| sm.topology.clone())));
            }
            if let Some((_, t)) = &topology {
                let records = node.store().with_state(|sm| sm.records.clone());
                board.refresh(t, &records, Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drc_model::topology::parse::parse_topology;

    fn topo() -> Topology {
        parse_topology(
            "[regions.a]\n[regions.b]\n[clusters.pg]\nkind='postgres'\n[clusters.pg.policy]\ndetection_window='1s'\n\
             [[members]]\nid='p'\ncluster='pg'\nregion='a'\naddress='h:1'\n[[members]]\nid='r'\ncluster='pg'\nregion='b'\naddress='h:2'\n",
        )
        .expect("valid")
    }

    fn sample(member: &str, role: &str) -> Sample {
        Sample {
            member_id: member.into(),
            reachable: true,
            role: role.into(),
            dataset_id: "42".into(),
            primary_reachable: true,
            ..Default::default()
        }
    }

    #[test]
    fn fresh_connected_members_are_healthy_and_stale_ones_are_not() {
        let board = HealthBoard::new();
        let t = topo();
        let t0 = Instant::now();
        board.connect("p", "pg", mpsc::channel(1).0);
        board.connect("r", "pg", mpsc::channel(1).0);
        board.ingest("pg", sample("p", "primary"), t0);
        board.ingest("pg", Sample { lag_bytes: 10, ..sample("r", "replica") }, t0);
        let c = &board.clusters(&t, &BTreeMap::new(), None, t0 + Duration::from_millis(500))[0];
        assert_eq!(c.primary, "p");
        assert!(c.members.iter().all(|m| m.healthy));
        assert_eq!(c.members[1].lag_bytes, 10);
        assert_eq!(c.members[1].primary_reachable_from.get("a"), Some(&true));
        let c = &board.clusters(&t, &BTreeMap::new(), None, t0 + Duration::from_secs(2))[0];
        assert!(c.members.iter().all(|m| !m.healthy), "stale samples beyond the detection window");
        assert_eq!(c.primary, "");
    }

    #[test]
    fn refresh_reports_changes_once_and_publishes_the_primary() {
        let board = HealthBoard::new();
        let mut events = board.subscribe();
        let views = board.view_of("pg");
        let t = topo();
        let t0 = Instant::now();
        let s = board.connect("p", "pg", mpsc::channel(1).0);
        board.ingest("pg", sample("p", "primary"), t0);
        board.refresh(&t, &BTreeMap::new(), t0);
        board.refresh(&t, &BTreeMap::new(), t0);
        assert_eq!(views.borrow().as_ref().map(|v| v.primary_address.clone()).as_deref(), Some("h:1"));
        let mut kinds = Vec::new();
        while let Ok(e) = events.try_recv() {
            kinds.push(e.kind);
        }
        assert_eq!(kinds.iter().filter(|k| *k == "primary").count(), 1, "{kinds:?}");
        board.disconnect("p", "pg", s);
        board.refresh(&t, &BTreeMap::new(), t0);
        assert_eq!(views.borrow().as_ref().map(|v| v.primary_member.clone()).as_deref(), Some(""));
    }

    #[test]
    fn progress_reads_as_rate_and_eta() {
        let p = Progress { command_id: 1, phase: "upload".into(), bytes_done: 100 << 20, bytes_total: 400 << 20, elapsed_ms: 10_000 };
        assert_eq!(rate_and_eta(&p), (10_485_760, Some(30)));
        assert_eq!(describe_progress(&p), "upload: 100.0 MiB of ~400.0 MiB (25%), 10.0 MiB/s, ETA 30 s");
        let unknown = Progress { elapsed_ms: 0, bytes_total: 0, ..p };
        assert_eq!(rate_and_eta(&unknown), (0, None));
        assert_eq!(describe_progress(&unknown), "upload: 100.0 MiB, 0.0 MiB/s");
    }

    #[test]
    fn a_primary_change_wakes_only_its_own_clusters_streams() {
        let t = parse_topology(
            "[regions.a]\n[clusters.x]\nkind='redis'\n[clusters.y]\nkind='redis'\n\
             [[members]]\nid='x1'\ncluster='x'\nregion='a'\naddress='h:1'\n[[members]]\nid='y1'\ncluster='y'\nregion='a'\naddress='h:2'\n",
        )
        .expect("valid");
        let board = HealthBoard::new();
        let t0 = Instant::now();
        board.refresh(&t, &BTreeMap::new(), t0);
        let mut x = board.view_of("x");
        let mut y = board.view_of("y");
        x.borrow_and_update();
        y.borrow_and_update();
        board.connect("x1", "x", mpsc::channel(1).0);
        board.ingest("x", sample("x1", "primary"), t0);
        board.refresh(&t, &BTreeMap::new(), t0);
        assert!(x.has_changed().expect("open"), "x has a primary now");
        assert_eq!(x.borrow_and_update().as_ref().map(|v| v.primary_address.clone()).as_deref(), Some("h:1"));
        assert!(!y.has_changed().expect("open"), "y's streams stay asleep");
        board.refresh(&t, &BTreeMap::new(), t0);
        assert!(!x.has_changed().expect("open"), "an unchanged view is not sent again");
    }

    #[test]
    fn a_leadership_change_forgets_ended_streams_but_keeps_live_ones() {
        let board = HealthBoard::new();
        let t = topo();
        let t0 = Instant::now();
        // "r" streamed to an earlier leadership; "p" was accepted by this
        // one just before the monitor saw the role change.
        let old = board.connect("r", "pg", mpsc::channel(1).0);
        board.ingest("pg", sample("r", "replica"), t0);
        board.disconnect("r", "pg", old);
        let live = board.connect("p", "pg", mpsc::channel(1).0);
        board.ingest("pg", sample("p", "primary"), t0);
        board.reset();
        assert!(board.is_current("p", live), "a live stream survives");
        let obs = board.observations(&t, t0);
        assert!(obs.get("p").is_some_and(|o| o.fresh), "{obs:?}");
        assert!(obs.get("r").is_none_or(|o| !o.fresh), "{obs:?}");
        assert_eq!(board.dataset_of("pg", "").map(|(m, _)| m), Some("p".to_string()));
        // Session numbers go on: the old stream cannot pass for a new one.
        let next = board.connect("r", "pg", mpsc::channel(1).0);
        assert!(next > live && next != old);
    }

    #[test]
    fn a_newer_stream_replaces_an_older_one() {
        let board = HealthBoard::new();
        let old = board.connect("p", "pg", mpsc::channel(1).0);
        let new = board.connect("p", "pg", mpsc::channel(1).0);
        board.disconnect("p", "pg", old);
        assert!(board.is_current("p", new));
        assert!(!board.is_current("p", old));
    }
}
