//! The gRPC services a coordinator serves, all on one listen address.

pub mod admin;
pub mod agent;
pub mod error;
mod jobs;
pub mod watch;
