//! The gRPC services a coordinator serves, all on one listen address.

pub mod admin;
pub mod agent;
pub mod auth;
pub mod error;
pub mod forward;
mod jobs;
mod watch;
