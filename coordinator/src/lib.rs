//! drc's coordinator: a Raft-replicated (tikv raft-rs) group of nodes, one per
//! region, that holds the topology and — from its leader — detects failures
//! and drives failover, backups and recovery tests.
//!
//! * the topology and every replicated record: the `drc-model` crate.
//! * [`core`] — the pure decision core: what to do, never how.
//! * [`executor`] — the leader's I/O for the core's decisions.
//! * [`state`] — the replicated state machine.
//! * [`agents`] — the leader's soft state of its agents: streams, samples, health, events.
//! * [`jobs`] — backups, recovery tests, their schedules and retention, run by the leader.
//! * [`raft`] — storage, the node task and the transport.
//! * [`api`] — the gRPC services; `api::error` maps every error to its code.
//! * [`audit`] — the audit trail of every state-changing request.
//! * [`metrics`] — `/readyz` and `/metrics` on the HTTP listener; [`status_page`] — its live status page.
//! * [`server`] — how one coordinator process is put together.
//!
//! # Where each rule lives
//!
//! | rule (DESIGN.md) | home |
//! |---|---|
//! | 1. one writable primary per cluster; the epoch moves before any command | `state` (a decision applies only at the next epoch), `core::steps` (fence or demote before promote) |
//! | 2. fencing by lease; fail-static | `core::lease`, `core::detect` (the leader's side); the agent's `actions::lease` |
//! | 3. the RPO budget | `core::choose` |
//! | 4. no decision on stale evidence | `core::detect`, over `agents::board`'s fresh samples |
//! | 5. anti-flap | `state` (the block), `core::detect` (honours it), `core::steps::record_outcome` (lifts it when nobody was promoted) |
//! | 6. idempotent apply | `state` |
//! | 7. liveness is fresh evidence; every step has a bound | `agents::board` (fresh = stream open and sample recent), `core::steps` (bounds) |
//! | what a step's answer means, in which order steps run | `core::steps`, run by `executor` and by the simulation alike |
//! | leader placement | `core::placement` |
//!
//! Every rule of the core is also driven by the seeded simulation
//! (`sim`, tests only), which checks the safety rules after every step.

pub mod agents;
pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod core;
pub mod executor;
pub mod forward;
pub mod jobs;
pub mod lock;
pub mod metrics;
pub mod raft;
pub mod server;
#[cfg(test)]
mod sim;
pub mod state;
pub mod status_page;
