//! drc's coordinator: a Raft-replicated (tikv raft-rs) group of nodes, one per
//! region, that holds the topology and — from its leader — detects failures
//! and drives failover, backups and recovery tests.
//!
//! * the topology and every replicated record: the `drc-model` crate.
//! * [`state`] — the replicated state machine.
//! * [`agents`] — the leader's soft state of its agents: streams, samples, health, events.
//! * [`raft`] — storage, the node task and the transport.
//! * [`api`] — the gRPC services.
//! * [`server`] — how one coordinator process is put together.
//! * [`jobs`] — backups, recovery tests, their schedules and retention, run by the leader.

pub mod agents;
pub mod api;
pub mod config;
pub mod core;
pub mod executor;
pub mod jobs;
pub mod lock;
pub mod raft;
pub mod server;
#[cfg(test)]
mod sim;
pub mod state;

/// Sets up `tracing` output on stderr, filtered by `RUST_LOG` (default
/// `info`). raft-rs's own logs arrive under the `raft` target.
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(true).try_init();
}
