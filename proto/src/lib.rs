//! The drc wire protocol: generated prost messages and tonic services.
//!
//! See `proto/drc.proto` for the compatibility rules.

#![allow(clippy::all, clippy::pedantic)]

/// Version 1 of the protocol.
pub mod v1 {
    tonic::include_proto!("drc.v1");
}

pub use v1::*;

/// The physical replication slot a member streams from on its primary: the
/// coordinator names it when it promotes, the agent when it repoints or
/// rejoins, so both sides must agree.
pub fn slot_name(member: &str) -> String {
    let clean: String = member.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    format!("drc_{clean}")
}
