//! The drc wire protocol: generated prost messages and tonic services.
//!
//! See `proto/drc.proto` for the compatibility rules.

#![allow(clippy::all, clippy::pedantic)]

/// Version 1 of the protocol.
pub mod v1 {
    tonic::include_proto!("drc.v1");
}

pub use v1::*;

/// The compiled `drc.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/drc_descriptor.bin"));

pub mod jobs;
pub mod keepalive;

/// The command protocol this release speaks (`AgentHello.command_protocol`):
/// 2 since commands are typed messages, 3 since their results are.
pub const COMMAND_PROTOCOL: u32 = 3;

/// The physical replication slot the WAL archiver streams from on the
/// primary; a promotion creates it, so that the new timeline is kept from
/// its first byte until the archiver has it.
pub const ARCHIVE_SLOT: &str = "drc_archive";

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

/// Whether a `synchronous_standby_names` value has the shape drc writes
/// (`ANY n ("a", "b")`): an agent clears such a value when commits should
/// wait for no standby, and leaves any other (an operator's own) alone.
pub fn is_drc_sync_setting(value: &str) -> bool {
    let Some(rest) = value.strip_prefix("ANY ") else { return false };
    let Some((count, list)) = rest.split_once(" (") else { return false };
    let Some(list) = list.strip_suffix(')') else { return false };
    count.parse::<usize>().is_ok_and(|n| n > 0)
        && list
            .split(", ")
            .all(|name| name.len() > 2 && name.starts_with('"') && name.ends_with('"') && !name[1..name.len() - 1].contains('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drc_recognises_the_synchronous_standby_settings_it_writes_and_no_other() {
        let names = vec!["pg-b".to_string(), "pg-c".to_string()];
        assert_eq!(sync_setting(1, &names), r#"ANY 1 ("pg-b", "pg-c")"#);
        assert_eq!(sync_setting(0, &names), "");
        assert_eq!(sync_setting(5, &names), r#"ANY 2 ("pg-b", "pg-c")"#, "never more than are listed");
        for n in 1..=2 {
            assert!(is_drc_sync_setting(&sync_setting(n, &names)));
        }
        for other in ["", "*", "pg-b", "FIRST 1 (pg-b)", "ANY 1 (pg-b, pg-c)", "ANY 0 (\"pg-b\")", "ANY 1 (\"\")", "2 (\"a\", \"b\")"] {
            assert!(!is_drc_sync_setting(other), "{other:?}");
        }
    }
}
