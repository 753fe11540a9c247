//! drc's typed model: the records every part of drc shares.
//!
//! The coordinator's decision core, its replicated state machine, the
//! simulation, drctl and the agent all read these types; none of them needs
//! another's code to do so. Records are serialised as JSON in Raft entries
//! and snapshots: fields and variants are only ever added, with defaults, so
//! that logs written by earlier releases still decode.
//!
//! * [`audit`] — who asked for what, through which node, and what came of it.
//! * [`topology`] — regions, clusters, members, policies; TOML parse, render, diff.
//! * [`cluster`] — a cluster's replicated record (primary, epoch, lineage).
//! * [`decision`] and [`step`] — a change of primary and its steps.
//! * [`job`] — backups, recovery tests and schedules.
//! * [`time`] — wall-clock milliseconds, for what is replicated or shown.
//! * [`wal`] — PostgreSQL WAL positions and file names.

pub mod archive;
pub mod audit;
pub mod cluster;
pub mod decision;
pub mod job;
pub mod role;
pub mod step;
pub mod time;
pub mod topology;
pub mod wal;

pub use cluster::ClusterRecord;
pub use decision::{Decision, DecisionKind, MemberEvidence, Trigger};
pub use role::Role;
pub use step::{Step, StepAction, StepArgs, StepState};
pub use time::Millis;
