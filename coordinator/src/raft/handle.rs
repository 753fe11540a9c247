//! The handle the rest of the coordinator holds on the node task: its
//! status, the replicated state, proposals and leadership moves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::input::{MembershipChange, NodeInput, ProposeError, Reply};
use super::storage::RaftStore;
use crate::lock::lock;
use crate::state::{Command, Outcome};

/// The Raft role of a node, as shown by `drctl status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    PreCandidate,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre_candidate",
        }
    }
}

/// What the node publishes about itself after every step.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeStatus {
    pub id: u64,
    pub role: Role,
    pub term: u64,
    /// 0 when no leader is known.
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

/// Handle used by the API layer. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    pub(super) tx: mpsc::Sender<NodeInput>,
    pub(super) status: watch::Receiver<NodeStatus>,
    /// The role alone: thousands of agent streams wait on it, and the
    /// status changes with every commit.
    pub(super) role: watch::Receiver<Role>,
    pub(super) store: RaftStore,
    /// Until when this node may renew primaries' leases (see [`Self::may_renew`]).
    pub(super) renew_until: Arc<std::sync::Mutex<Option<Instant>>>,
    /// Held while a job (backup, recovery test) is recorded as started, and
    /// while leader placement decides to move: see [`Self::hold_leadership`].
    pub(super) moves: Arc<tokio::sync::Mutex<()>>,
    pub(super) stats: super::stats::RaftStats,
}

impl NodeHandle {
    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    pub fn watch_status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// Whether this node may renew a primary's lease now, counted from any
    /// instant before this call: it is the leader, and a quorum confirmed
    /// that recently enough that no other coordinator can have been elected
    /// yet. Every Raft tick the leader asks its followers (a ReadIndex
    /// round, sent after the instant it records). A follower that answered
    /// refuses to vote for anyone else for one election timeout after it
    /// heard the leader (raft-rs with check-quorum), and a successor needs
    /// the vote of at least one of them; so leases granted until then all
    /// end before a successor's own `leader_since + lease`. The window is
    /// closed before this node can vote once it steps down, and when it
    /// hands its leadership over. A leader that cannot confirm stops
    /// renewing; its primaries' agents then count down the leases they hold.
    pub fn may_renew(&self) -> bool {
        lock(&self.renew_until).is_some_and(|t| Instant::now() < t)
    }

    /// Changes only when this node's role does.
    pub fn watch_role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    pub fn store(&self) -> &RaftStore {
        &self.store
    }

    /// What the node counts, for `/metrics`.
    pub fn stats(&self) -> &super::stats::RaftStats {
        &self.stats
    }

    /// Proposes a command and waits until it is applied, or fails with
    /// [`ProposeError::NoQuorum`] after `timeout`.
    pub async fn propose(&self, cmd: Command, timeout: Duration) -> Result<Outcome, ProposeError> {
        let started = Instant::now();
        let outcome = self.request(|reply| NodeInput::Propose { cmd, reply }, timeout).await;
        if outcome.is_ok() {
            self.stats.commit_seconds.observe(started.elapsed().as_secs_f64());
        }
        outcome
    }

    pub async fn change_membership(&self, change: MembershipChange, timeout: Duration) -> Result<Outcome, ProposeError> {
        self.request(|reply| NodeInput::ChangeMembership { change, reply }, timeout).await
    }

    pub async fn transfer_leader(&self, to: u64) {
        let _ = self.tx.send(NodeInput::TransferLeader { to }).await;
    }

    /// Serialises starting a job with a leader placement move. A job
    /// recorded as started while the guard is held is seen by a placement
    /// that takes the guard next (and does not move); a placement that moved
    /// first makes the job's proposal fail (raft-rs drops proposals while
    /// it transfers), so the job starts under the next leader or not at all,
    /// instead of being interrupted a moment after it started.
    pub async fn hold_leadership(&self) -> tokio::sync::OwnedMutexGuard<()> {
        Arc::clone(&self.moves).lock_owned().await
    }

    /// [`Self::hold_leadership`] without waiting: None while a job is being
    /// recorded as started.
    pub fn try_hold_leadership(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        Arc::clone(&self.moves).try_lock_owned().ok()
    }

    /// See [`NodeInput::Place`].
    pub async fn place_leader(&self, candidates: Vec<u64>) -> Option<u64> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(NodeInput::Place { candidates, reply }).await.ok()?;
        rx.await.ok().flatten()
    }

    async fn request(&self, make: impl FnOnce(Reply) -> NodeInput, timeout: Duration) -> Result<Outcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        let round_trip = async {
            self.tx.send(make(reply)).await.map_err(|_| ProposeError::ShuttingDown)?;
            rx.await.map_err(|_| ProposeError::ShuttingDown)?
        };
        match tokio::time::timeout(timeout, round_trip).await {
            Ok(result) => result,
            Err(_) => Err(ProposeError::NoQuorum(format!(
                "the write was not committed within {} (fewer than a quorum of coordinators acknowledged it; it may still be applied if they return)",
                humantime::format_duration(timeout)
            ))),
        }
    }
}
