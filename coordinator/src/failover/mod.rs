//! Automated failover: the replicated records it keeps, the pure decision
//! core ([`core`]) and the executor that carries decisions out on the leader
//! ([`executor`]).
//!
//! The split follows DESIGN.md: the core sees observations and time as
//! values and answers with actions; it is covered by seeded simulations
//! (`sim`). Everything that touches the network or Raft is in the executor.

pub mod core;
pub mod executor;
#[cfg(test)]
mod sim;

pub use drc_model::time::Millis;
pub use drc_model::{ClusterRecord, Decision, DecisionKind, MemberEvidence, Step, StepState, Trigger};
