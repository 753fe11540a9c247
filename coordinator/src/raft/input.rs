//! What the node task takes in — Raft messages from peers, proposals,
//! membership changes, leadership moves — and what a proposal can fail with.

use raft::prelude::Message;
use tokio::sync::oneshot;

use crate::state::{Command, NodeAddress, Outcome};

/// Why a proposal did not (or may not have) taken effect.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader")]
    NotLeader { leader: Option<u64> },
    #[error("leadership changed before the write committed; it was not applied")]
    LeadershipLost,
    #[error("no quorum: {0}")]
    NoQuorum(String),
    #[error("a membership change is already in progress; retry once it has been applied")]
    ChangeInProgress,
    #[error("{0}")]
    Rejected(String),
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    #[error("storage failure: {0}")]
    Storage(String),
}

/// One membership change; raft-rs allows one at a time.
#[derive(Clone, Debug)]
pub enum MembershipChange {
    Add { id: u64, address: NodeAddress },
    Remove { id: u64 },
}

pub type Reply = oneshot::Sender<Result<Outcome, ProposeError>>;

/// Inputs of the node task.
pub enum NodeInput {
    Raft(Box<Message>),
    Unreachable(u64),
    SnapshotReport {
        to: u64,
        ok: bool,
    },
    Propose {
        cmd: Command,
        reply: Reply,
    },
    ChangeMembership {
        change: MembershipChange,
        reply: Reply,
    },
    TransferLeader {
        to: u64,
    },
    /// Hands leadership to the first of `candidates` that is active and
    /// fully caught up, if this node leads and no transfer is under way;
    /// answers with the node it chose.
    Place {
        candidates: Vec<u64>,
        reply: oneshot::Sender<Option<u64>>,
    },
}
