//! The benchmarks behind `drc-bench`: each prints numbers, none asserts
//! on time. One file per benchmark; the statistics in [`stats`].

pub mod agents;
pub mod archive;
pub mod backup;
pub mod chaos;
pub mod failover;
pub mod pgbackrest;
pub mod raft;
pub mod stats;
