//! The coordinator's Raft layer: durable storage ([`storage`]), the task that
//! owns the `RawNode` ([`node`]), its inputs ([`input`]) and the handle the
//! rest of the coordinator holds on it ([`handle`]), the gRPC transport
//! between coordinators ([`transport`]), and what it counts ([`stats`]).

pub mod entry;
pub mod handle;
pub mod input;
pub mod logger;
pub mod node;
pub mod pieces;
pub mod stats;
pub mod storage;
pub mod transport;

pub use handle::{NodeHandle, NodeStatus, Role};
pub use input::{MembershipChange, ProposeError};
pub use storage::{RaftStore, StorageError};
