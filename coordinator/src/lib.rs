//! drc's coordinator: a Raft-replicated (tikv raft-rs) group of nodes, one per
//! region, that holds the topology and — from its leader — detects failures
//! and drives failover, backups and recovery tests.
//!
//! * [`topology`] — the declared regions, clusters, members and policy.
//! * [`state`] — the replicated state machine.
//! * [`health`] — the leader's soft state of member health (never in Raft).
//! * [`raft`] — storage, the node task and the transport.
//! * [`api`] — the gRPC services.
//! * [`server`] — how one coordinator process is put together.
//! * [`cli`] — drctl.
//! * [`backup`] — the backup catalog and the backup / recovery-test jobs.
//! * [`proxy`] — drc-proxy, a TCP forwarder that follows the primary.

pub mod api;
pub mod backup;
pub mod cli;
pub mod config;
pub mod failover;
pub mod health;
pub mod proxy;
pub mod raft;
pub mod server;
pub mod state;
pub mod topology;

/// Sets up `tracing` output on stderr, filtered by `RUST_LOG` (default
/// `info`). raft-rs's own logs arrive under the `raft` target.
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(true).try_init();
}
