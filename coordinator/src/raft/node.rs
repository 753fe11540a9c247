//! The task that owns the raft-rs `RawNode`.
//!
//! The task runs on a thread and runtime of its own (see
//! [`crate::server`]): thousands of agent streams or a burst of admin calls
//! can load the main runtime without delaying heartbeats, and the fsyncs it
//! waits for block only this thread.
//!
//! Everything that touches the Raft state happens on this one task: ticks,
//! inbound messages, proposals, and the handling of each `Ready` in the order
//! raft-rs documents — send the leader's messages, persist snapshot, entries
//! and hard state in one fsynced transaction, send the messages that had to
//! wait for persistence, apply committed entries, advance.
//!
//! Proposals are tracked by (term, index). A proposal is answered when the
//! entry at its index is applied: with the outcome if the entry still carries
//! the term it was proposed in, with [`ProposeError::LeadershipLost`] if
//! another leader overwrote it. When this node stops being leader, every
//! pending proposal fails at once with the same error, so no caller waits on
//! an entry that may never commit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::prelude::{ConfChange, ConfChangeType, Entry, EntryType, Message, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::entry::{decode_command, decode_conf_change};
use super::handle::{NodeHandle, NodeStatus, Role};
use super::input::{MembershipChange, NodeInput, ProposeError, Reply};
use super::logger::raft_logger;
use super::storage::{RaftStore, StorageError};
use super::transport::Transport;
use crate::lock::lock;
use crate::state::Outcome;

/// Tuning of the Raft node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: u64,
    pub tick_interval: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Compact the log once this many applied entries have accumulated.
    pub snapshot_entries: u64,
}

struct Pending {
    term: u64,
    reply: Reply,
}

/// The Raft node task.
pub struct Node {
    cfg: NodeConfig,
    raw: RawNode<RaftStore>,
    store: RaftStore,
    transport: Arc<Transport>,
    rx: mpsc::Receiver<NodeInput>,
    status_tx: watch::Sender<NodeStatus>,
    role_tx: watch::Sender<Role>,
    pending: BTreeMap<u64, Pending>,
    /// Vote requests are dropped for one election timeout from here.
    started: std::time::Instant,
    last_role: (StateRole, u64),
    /// Shared with the handles: until when leases may be renewed.
    renew_until: Arc<std::sync::Mutex<Option<Instant>>>,
    stats: super::stats::RaftStats,
    /// ReadIndex rounds in flight: context number and when it was asked.
    confirming: std::collections::VecDeque<(u64, Instant)>,
    next_confirm: u64,
    /// Rounds asked before this instant do not count (a leadership transfer:
    /// its target is elected without waiting for the followers' timeouts).
    confirm_after: Option<Instant>,
}

/// How many ReadIndex rounds may be in flight; older ones are forgotten.
const CONFIRMING_KEPT: usize = 64;

/// Kept off the end of the window a quorum's answer opens: timer and
/// scheduling slack between this node's clock and its followers' ticks.
const RENEW_GUARD: Duration = Duration::from_millis(50);

/// Channel capacity of the node's input queue. Raft messages beyond it are
/// dropped (raft retransmits); API requests wait.
pub const INPUT_CAPACITY: usize = 4096;

impl Node {
    /// Builds the node on opened storage. `applied` comes from storage so
    /// that raft-rs does not re-deliver entries that were already applied.
    pub fn new(
        cfg: NodeConfig,
        store: RaftStore,
        transport: Arc<Transport>,
        rx: mpsc::Receiver<NodeInput>,
        tx: mpsc::Sender<NodeInput>,
    ) -> Result<(Self, NodeHandle), raft::Error> {
        let rcfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: store.applied(),
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        rcfg.validate()?;
        let raw = RawNode::new(&rcfg, store.clone(), &raft_logger(cfg.id))?;
        let status = status_of(&raw);
        let (role_tx, role_rx) = watch::channel(status.role);
        let (status_tx, status_rx) = watch::channel(status);
        let renew_until = Arc::new(std::sync::Mutex::new(None));
        let stats = super::stats::RaftStats::default();
        let handle = NodeHandle {
            tx,
            status: status_rx,
            role: role_rx,
            store: store.clone(),
            renew_until: Arc::clone(&renew_until),
            moves: Arc::default(),
            stats: stats.clone(),
        };
        let last_role = (raw.raft.state, raw.raft.term);
        transport.set_members(&store.with_state(|sm| sm.nodes.clone()));
        Ok((
            Node {
                cfg,
                raw,
                store,
                transport,
                rx,
                status_tx,
                role_tx,
                pending: BTreeMap::new(),
                started: std::time::Instant::now(),
                last_role,
                renew_until,
                stats,
                confirming: std::collections::VecDeque::new(),
                next_confirm: 0,
                confirm_after: None,
            },
            handle,
        ))
    }

    /// Runs until `cancel` fires or storage fails. A storage failure is fatal:
    /// the error is returned and the process must exit.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), StorageError> {
        // Each node ticks a little slower than configured, by 2 ms per id
        // (mod 8). A stall that several nodes share (a loaded machine)
        // realigns their ticks, and two followers whose randomised timeouts
        // then agree campaign at the same instant and split the vote, again
        // and again (seen: twice in a row, 700 ms each). Slightly different
        // periods pull them apart within a few ticks. Longer ticks only
        // lengthen every timeout, which every bound here tolerates.
        let period = self.cfg.tick_interval + Duration::from_millis(2 * (self.cfg.id % 8));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = ticker.tick() => {
                    self.raw.tick();
                    self.confirm_leadership();
                }
                input = self.rx.recv() => match input {
                    Some(input) => {
                        self.handle(input);
                        // Batch whatever else is already queued into the same Ready.
                        for _ in 0..256 {
                            match self.rx.try_recv() {
                                Ok(input) => self.handle(input),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
            }
            // Before anything this pass did is sent: a node that stepped
            // down may vote in this very pass.
            self.close_window_unless_leader();
            self.on_ready()?;
            self.after_step();
        }
        self.fail_all(|| ProposeError::ShuttingDown);
        Ok(())
    }

    fn handle(&mut self, input: NodeInput) {
        match input {
            NodeInput::Raft(m) => {
                let vote = matches!(m.get_msg_type(), MessageType::MsgRequestVote | MessageType::MsgRequestPreVote);
                if vote && self.started.elapsed() < self.cfg.tick_interval * self.cfg.election_ticks as u32 {
                    // A restarted node has forgotten when it last heard from
                    // the leader, so raft-rs would vote at once; it waits one
                    // election timeout, like a node that heard from the
                    // leader just before it went down. This bounds how long a
                    // deposed leader overlaps its successor (see
                    // `LeaseConfig::handover`).
                    return;
                }
                // A node outside a configuration this node has (one removed,
                // or lost and started again on its old data after a
                // recovery) must not disturb it, e.g. depose its leader.
                let conf = self.raw.raft.prs().conf();
                let known = conf.voters().ids().iter().any(|id| id == m.from) || conf.learners().contains(&m.from);
                if !known && !conf.voters().ids().is_empty() {
                    tracing::debug!(from = m.from, "dropped a raft message from a node outside the configuration");
                    return;
                }
                if let Some(why) = impossible(&m, self.raw.raft.raft_log.last_index()) {
                    // raft-rs would panic on it; no honest peer sends it.
                    tracing::warn!(from = m.from, "dropped a raft message: {why}");
                    return;
                }
                if let Err(e) = self.raw.step(*m) {
                    tracing::debug!(error = %e, "dropped raft message");
                }
            }
            NodeInput::Unreachable(id) => self.raw.report_unreachable(id),
            NodeInput::SnapshotReport { to, ok } => {
                let status = if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                self.raw.report_snapshot(to, status);
            }
            NodeInput::Propose { cmd, reply } => {
                if let Err(e) = self.check_leader() {
                    let _ = reply.send(Err(e));
                    return;
                }
                let data = match crate::state::format::encode(&cmd) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = reply.send(Err(ProposeError::Rejected(format!("cannot encode command: {e}"))));
                        return;
                    }
                };
                let before = self.raw.raft.raft_log.last_index();
                let result = self.raw.propose(vec![], data);
                self.track(before, result, reply);
            }
            NodeInput::ChangeMembership { change, reply } => {
                if let Err(e) = self.check_leader() {
                    let _ = reply.send(Err(e));
                    return;
                }
                if self.raw.raft.has_pending_conf() {
                    let _ = reply.send(Err(ProposeError::ChangeInProgress));
                    return;
                }
                let voters: Vec<u64> = self.raw.raft.prs().conf().voters().ids().iter().collect();
                let mut cc = ConfChange::default();
                let context = match &change {
                    MembershipChange::Add { id, address } => {
                        if voters.contains(id) {
                            let _ = reply.send(Err(ProposeError::Rejected(format!("node {id} is already a voter"))));
                            return;
                        }
                        cc.set_change_type(ConfChangeType::AddNode);
                        cc.node_id = *id;
                        address.to_context()
                    }
                    MembershipChange::Remove { id } => {
                        if !voters.contains(id) {
                            let _ = reply.send(Err(ProposeError::Rejected(format!("node {id} is not a member (voters: {voters:?})"))));
                            return;
                        }
                        if voters.len() == 1 {
                            let _ = reply.send(Err(ProposeError::Rejected("cannot remove the last voter".into())));
                            return;
                        }
                        cc.set_change_type(ConfChangeType::RemoveNode);
                        cc.node_id = *id;
                        Vec::new()
                    }
                };
                cc.context = context.into();
                let before = self.raw.raft.raft_log.last_index();
                let result = self.raw.propose_conf_change(vec![], cc);
                self.track(before, result, reply);
            }
            NodeInput::Place { candidates, reply } => {
                let raft = &self.raw.raft;
                let chosen = (raft.state == StateRole::Leader && raft.lead_transferee.is_none())
                    .then(|| {
                        let last = raft.raft_log.last_index();
                        candidates
                            .into_iter()
                            .find(|id| *id != raft.id && raft.prs().get(*id).is_some_and(|p| p.recent_active && p.matched >= last))
                    })
                    .flatten();
                if let Some(to) = chosen {
                    self.handle(NodeInput::TransferLeader { to });
                }
                let _ = reply.send(chosen);
            }
            NodeInput::TransferLeader { to } => {
                // The target campaigns as soon as it has caught up (within
                // an election timeout, when raft-rs gives up the transfer),
                // and the followers vote for it without waiting for their
                // timeouts: no lease may be renewed from now on, nor on the
                // strength of a round asked before two election timeouts.
                let election = self.cfg.tick_interval * self.cfg.election_ticks as u32;
                self.confirm_after = Some(Instant::now() + 2 * election);
                self.close_window();
                self.raw.transfer_leader(to);
            }
        }
    }

    /// As leader, asks the followers to confirm the leadership (ReadIndex).
    fn confirm_leadership(&mut self) {
        if self.raw.raft.state != StateRole::Leader {
            return;
        }
        // Asked before the round's heartbeats leave, so it is a lower bound
        // of when each follower heard from this leader.
        let at = Instant::now();
        if self.confirming.len() == CONFIRMING_KEPT {
            self.confirming.pop_front();
        }
        self.next_confirm += 1;
        self.confirming.push_back((self.next_confirm, at));
        self.raw.read_index(self.next_confirm.to_be_bytes().to_vec());
    }

    /// A quorum answered the rounds up to `ctx`: leases may be renewed until
    /// one election timeout (less a tick and a guard) after it was asked.
    fn confirmed(&mut self, ctx: &[u8]) {
        let Ok(bytes) = <[u8; 8]>::try_from(ctx) else { return };
        let n = u64::from_be_bytes(bytes);
        let Some(&(_, asked)) = self.confirming.iter().find(|(c, _)| *c == n) else { return };
        self.confirming.retain(|(c, _)| *c > n);
        if self.confirm_after.is_some_and(|after| asked < after) || self.raw.raft.state != StateRole::Leader {
            return;
        }
        let span = (self.cfg.tick_interval * (self.cfg.election_ticks as u32).saturating_sub(1)).saturating_sub(RENEW_GUARD);
        let mut until = lock(&self.renew_until);
        *until = Some(until.map_or(asked + span, |u| u.max(asked + span)));
    }

    fn close_window_unless_leader(&mut self) {
        if self.raw.raft.state != StateRole::Leader {
            self.confirming.clear();
            self.confirm_after = None;
            self.close_window();
        }
    }

    fn close_window(&self) {
        *lock(&self.renew_until) = None;
    }

    fn check_leader(&self) -> Result<(), ProposeError> {
        if self.raw.raft.state == StateRole::Leader {
            return Ok(());
        }
        let leader = self.raw.raft.leader_id;
        Err(ProposeError::NotLeader { leader: (leader != 0).then_some(leader) })
    }

    fn track(&mut self, before: u64, result: raft::Result<()>, reply: Reply) {
        let index = self.raw.raft.raft_log.last_index();
        match result {
            Ok(()) if index > before => {
                self.pending.insert(index, Pending { term: self.raw.raft.term, reply });
            }
            Ok(()) | Err(raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(ProposeError::NotLeader { leader: None }));
            }
            Err(e) => {
                let _ = reply.send(Err(ProposeError::Rejected(e.to_string())));
            }
        }
    }

    fn on_ready(&mut self) -> Result<(), StorageError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        if !rd.messages().is_empty() {
            self.transport.send(rd.take_messages());
        }
        let snapshot = (!rd.snapshot().is_empty()).then(|| rd.snapshot().clone());
        let store = self.store.clone();
        let sync = rd.must_sync();
        store.persist_ready(snapshot.as_ref(), rd.entries(), rd.hs(), sync)?;
        if let Some(s) = &snapshot {
            let index = s.get_metadata().index;
            tracing::info!(index, term = s.get_metadata().term, "installed snapshot from the leader");
            self.transport.set_members(&self.store.with_state(|sm| sm.nodes.clone()));
            let stale: Vec<u64> = self.pending.range(..=index).map(|(i, _)| *i).collect();
            for i in stale {
                if let Some(p) = self.pending.remove(&i) {
                    let _ = p.reply.send(Err(ProposeError::LeadershipLost));
                }
            }
        }
        if !rd.persisted_messages().is_empty() {
            self.transport.send(rd.take_persisted_messages());
        }
        for rs in rd.take_read_states() {
            self.confirmed(&rs.request_ctx);
        }
        let committed = rd.take_committed_entries();
        self.apply(committed, None)?;
        let mut light = self.raw.advance(rd);
        if !light.messages().is_empty() {
            self.transport.send(light.take_messages());
        }
        let committed = light.take_committed_entries();
        self.apply(committed, light.commit_index())?;
        self.raw.advance_apply();
        if let Some(at) = self.store.compact_if_needed(self.cfg.snapshot_entries)? {
            tracing::info!(compacted_to = at, "compacted the raft log");
        }
        Ok(())
    }

    /// Applies committed entries in one durable batch, then answers proposers.
    fn apply(&mut self, entries: Vec<Entry>, commit: Option<u64>) -> Result<(), StorageError> {
        if entries.is_empty() && commit.is_none() {
            return Ok(());
        }
        let mut batch = self.store.begin_apply();
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut membership_changed = false;
        for e in entries {
            // Idempotent apply: raft-rs may re-deliver entries applied before a restart.
            if e.index <= batch.applied.0 {
                continue;
            }
            let outcome = match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => Outcome::Nothing,
                EntryType::EntryNormal => batch.sm.apply(decode_command(&e)?),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let change =
                        decode_conf_change(&e).map_err(|err| StorageError::Corrupt(format!("conf change at {}: {err}", e.index)))?;
                    let applied = match (&change.v1, &change.v2) {
                        (Some(cc), _) => self.raw.apply_conf_change(cc),
                        (None, Some(cc)) => self.raw.apply_conf_change(cc),
                        (None, None) => unreachable!("decode_conf_change returns one of them"),
                    };
                    let cs = applied.map_err(|err| StorageError::Corrupt(format!("conf change at {}: {err}", e.index)))?;
                    let (id, address) = (change.id, change.address);
                    batch.sm.apply_membership(id, address);
                    let mut voters = cs.voters.clone();
                    voters.sort_unstable();
                    batch.conf_state = Some(cs);
                    membership_changed = true;
                    tracing::info!(index = e.index, node = id, ?voters, "membership changed");
                    Outcome::Membership { voters }
                }
            };
            batch.applied = (e.index, e.term);
            outcomes.push((e.index, e.term, outcome));
        }
        let store = self.store.clone();
        store.commit_apply(batch, commit)?;
        if membership_changed {
            self.transport.set_members(&self.store.with_state(|sm| sm.nodes.clone()));
        }
        for (index, term, outcome) in outcomes {
            if let Some(p) = self.pending.remove(&index) {
                let result = if p.term == term { Ok(outcome) } else { Err(ProposeError::LeadershipLost) };
                let _ = p.reply.send(result);
            }
        }
        Ok(())
    }

    /// Publishes the status and fails pending proposals on a leadership change.
    /// The status goes out first, so that a caller woken by the failure
    /// already sees the new role (and can say "no quorum" when no leader is left).
    fn after_step(&mut self) {
        let status = status_of(&self.raw);
        self.stats.in_flight.set(self.pending.len() as i64);
        if status.leader_id != 0 && status.leader_id != self.status_tx.borrow().leader_id {
            self.stats.leader_changes.inc();
        }
        self.role_tx.send_if_modified(|r| std::mem::replace(r, status.role) != status.role);
        self.status_tx.send_if_modified(|s| {
            if *s != status {
                *s = status;
                true
            } else {
                false
            }
        });
        let now = (self.raw.raft.state, self.raw.raft.term);
        if now != self.last_role {
            if self.last_role.0 == StateRole::Leader {
                tracing::info!(term = now.1, "stepped down as leader");
                self.fail_all(|| ProposeError::LeadershipLost);
            }
            if now.0 == StateRole::Leader {
                tracing::info!(term = now.1, "became leader");
            }
            if now.0 == StateRole::Candidate && self.last_role.0 != StateRole::Candidate {
                self.stats.elections.inc();
            }
            self.last_role = now;
        }
    }

    fn fail_all(&mut self, err: impl Fn() -> ProposeError) {
        for (_, p) in std::mem::take(&mut self.pending) {
            let _ = p.reply.send(Err(err()));
        }
    }
}

fn status_of(raw: &RawNode<RaftStore>) -> NodeStatus {
    let r = &raw.raft;
    let conf = r.prs().conf();
    let (first_index, last_index, _) = raw.store().log_bounds();
    NodeStatus {
        id: r.id,
        role: match r.state {
            StateRole::Leader => Role::Leader,
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
        },
        term: r.term,
        leader_id: r.leader_id,
        commit_index: r.raft_log.committed,
        applied_index: raw.store().applied(),
        first_index,
        last_index,
        voters: conf.voters().ids().iter().collect(),
        learners: conf.learners().iter().copied().collect(),
    }
}

/// Why no honest peer could have sent `m` to a node whose log ends at
/// `last_index`. A leader's heartbeat commits at most what the follower
/// matched; one beyond the follower's log makes raft-rs panic
/// (`commit_to` out of range), so it is dropped here instead.
fn impossible(m: &Message, last_index: u64) -> Option<String> {
    (m.get_msg_type() == MessageType::MsgHeartbeat && m.commit > last_index)
        .then(|| format!("a heartbeat committing index {} beyond this log's last index {last_index}", m.commit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NodeAddress;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_node_votes_for_nobody_for_one_election_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let founders = BTreeMap::from([
            (1, NodeAddress::shared("127.0.0.1:1")),
            (2, NodeAddress::shared("127.0.0.1:2")),
            (3, NodeAddress::shared("127.0.0.1:3")),
        ]);
        let store = RaftStore::open(dir.path(), "test", 1, Some(&founders)).expect("open");
        let cancel = CancellationToken::new();
        let (tx, rx) = mpsc::channel(INPUT_CAPACITY);
        let transport =
            Transport::new("test".into(), 1, "127.0.0.1:1".into(), tx.clone(), cancel.child_token(), drc_tls::Security::Insecure);
        transport.merge_addresses(&founders);
        let election = Duration::from_millis(1000);
        let cfg =
            NodeConfig { id: 1, tick_interval: Duration::from_millis(100), election_ticks: 10, heartbeat_ticks: 2, snapshot_entries: 1000 };
        // Taken before the node's own start: its elapsed time is never more.
        let started = std::time::Instant::now();
        let (node, handle) = Node::new(cfg, store, transport, rx, tx.clone()).expect("node");
        tokio::spawn(node.run(cancel.clone()));
        // A vote request in a higher term: once heeded, the node moves to
        // that term (pre-votes, which its own campaign starts with, do not).
        let ask = |term: u64| {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgRequestVote);
            (m.from, m.to, m.term, m.log_term, m.index) = (2, 1, term, 100, 100);
            NodeInput::Raft(Box::new(m))
        };
        tx.send(ask(5)).await.expect("send");
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Whatever the node did with the request, it did within its first
        // election timeout if this check still comes before its end.
        let term = handle.status().term;
        if started.elapsed() < election {
            assert!(term < 5, "voted right after a restart: {:?}", handle.status());
        } else {
            eprintln!("this machine was too slow to check the first election timeout; checking the rest");
        }
        tokio::time::sleep(election.saturating_sub(started.elapsed()) + Duration::from_millis(50)).await;
        tx.send(ask(6)).await.expect("send");
        let mut status = handle.watch_status();
        tokio::time::timeout(Duration::from_secs(5), status.wait_for(|s| s.term == 6)).await.expect("heeded").expect("status");
        cancel.cancel();
    }

    /// One in-process node of a test cluster, with its Raft server on a
    /// loopback port. `link` cuts both directions of its Raft traffic.
    struct TestNode {
        handle: NodeHandle,
        link: CancellationToken,
        all: CancellationToken,
    }

    async fn cluster(dir: &std::path::Path, n: u64) -> Vec<TestNode> {
        let listeners: Vec<std::net::TcpListener> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
        let founders: BTreeMap<u64, NodeAddress> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (i as u64 + 1, NodeAddress::shared(l.local_addr().expect("addr").to_string())))
            .collect();
        let mut nodes = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let id = i as u64 + 1;
            let store = RaftStore::open(&dir.join(id.to_string()), "test", id, Some(&founders)).expect("open");
            let (all, link) = (CancellationToken::new(), CancellationToken::new());
            let (tx, rx) = mpsc::channel(INPUT_CAPACITY);
            let address = founders[&id].client.clone();
            let transport = Transport::new("test".into(), id, address, tx.clone(), link.clone(), drc_tls::Security::Insecure);
            transport.merge_addresses(&founders);
            let cfg =
                NodeConfig { id, tick_interval: Duration::from_millis(50), election_ticks: 8, heartbeat_ticks: 2, snapshot_entries: 1000 };
            let (node, handle) = Node::new(cfg, store, Arc::clone(&transport), rx, tx).expect("node");
            listener.set_nonblocking(true).expect("nonblocking");
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let stop = link.clone();
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(drc_proto::raft_transport_server::RaftTransportServer::new(super::super::transport::RaftService::new(
                        transport,
                    )))
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener),
                        async move { stop.cancelled().await },
                    ),
            );
            tokio::spawn(node.run(all.clone()));
            nodes.push(TestNode { handle, link, all });
        }
        nodes
    }

    async fn leader_of(nodes: &[TestNode], except: Option<usize>) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(i) = (0..nodes.len()).find(|i| Some(*i) != except && nodes[*i].handle.status().role == Role::Leader) {
                return i;
            }
            assert!(Instant::now() < deadline, "no leader elected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_off_leader_stops_renewing_before_a_successor_is_elected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes = cluster(dir.path(), 3).await;
        let old = leader_of(&nodes, None).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !nodes[old].handle.may_renew() {
            assert!(Instant::now() < deadline, "the leader never had its leadership confirmed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for (i, n) in nodes.iter().enumerate().filter(|(i, _)| *i != old) {
            assert!(!n.handle.may_renew(), "follower {} may renew", i + 1);
        }
        // Cut the leader off both ways. It stays leader in its own eyes for
        // a while (check-quorum), but its window must close before anyone
        // else leads: each poll reads the old leader first, so a successor
        // seen in a poll was elected after the old leader's reading.
        nodes[old].link.cancel();
        let mut last_renewing = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        let new = loop {
            if nodes[old].handle.may_renew() {
                last_renewing = Some(Instant::now());
            }
            if let Some(i) = (0..3).find(|i| *i != old && nodes[*i].handle.status().role == Role::Leader) {
                assert!(!nodes[old].handle.may_renew(), "the old leader may still renew while node {} leads", i + 1);
                break i;
            }
            assert!(Instant::now() < deadline, "no successor elected");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        eprintln!("old leader renewed until {:?} before its successor was seen", last_renewing.map(|t| t.elapsed()).unwrap_or_default());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !nodes[new].handle.may_renew() {
            assert!(Instant::now() < deadline, "the new leader never had its leadership confirmed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!nodes[old].handle.may_renew());
        // Handing leadership over closes the window before the target
        // leads (it is elected without waiting for any timeout).
        let to = (0..3).find(|i| *i != old && *i != new).expect("third node");
        nodes[new].handle.transfer_leader(to as u64 + 1).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let renewing = nodes[new].handle.may_renew();
            if nodes[to].handle.status().role == Role::Leader {
                assert!(!renewing, "node {} may still renew while node {} leads after a transfer", new + 1, to + 1);
                break;
            }
            assert!(Instant::now() < deadline, "the transfer never completed");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for n in &nodes {
            n.all.cancel();
            n.link.cancel();
        }
    }
}
