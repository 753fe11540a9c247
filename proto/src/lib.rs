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

/// A PostgreSQL primary's `synchronous_standby_names` when its commits wait
/// for `count` of the standbys `names` (their `application_name`, which is
/// the member id): `ANY count ("a", "b")`, or empty when they wait for none.
/// The coordinator shows it, the primary's agent sets it.
pub fn sync_setting(count: usize, names: &[String]) -> String {
    if count == 0 || names.is_empty() {
        return String::new();
    }
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{}\"", n.replace('"', "\"\""))).collect();
    format!("ANY {} ({})", count.min(names.len()), quoted.join(", "))
}
