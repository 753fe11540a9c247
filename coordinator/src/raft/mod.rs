//! The coordinator's Raft layer: durable storage ([`storage`]), the task that
//! owns the `RawNode` ([`node`]), and the gRPC transport between
//! coordinators ([`transport`]).

pub mod logger;
pub mod node;
pub mod storage;
pub mod transport;

pub use node::{MembershipChange, NodeHandle, NodeStatus, ProposeError, Role};
pub use storage::{RaftStore, StorageError};
