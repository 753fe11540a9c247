//! What a committed entry holds: a command for the state machine (see
//! [`crate::state::format`]) or a membership change, decoded in one place
//! for the node that applies it and for `drc-coordinator recover`.

use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType};

use crate::state::format::FormatError;
use crate::state::{Command, NodeAddress};

/// A committed command. One this version cannot decode stops the node
/// (nothing of its batch is applied): skipping it would make this node's
/// state differ from that of the nodes that applied it.
pub fn decode_command(e: &Entry) -> Result<Command, FormatError> {
    crate::state::format::decode::<Command>(&e.data, &format!("committed entry {}", e.index))
}

/// A decoded conf change entry: what raft-rs must apply, which node it is
/// about, and that node's address when it is added.
pub struct DecodedChange {
    pub v1: Option<ConfChange>,
    pub v2: Option<ConfChangeV2>,
    pub id: u64,
    pub address: Option<NodeAddress>,
}

pub fn decode_conf_change(e: &Entry) -> Result<DecodedChange, protobuf::ProtobufError> {
    if e.get_entry_type() == EntryType::EntryConfChangeV2 {
        let cc = ConfChangeV2::parse_from_bytes(&e.data)?;
        let (id, add) =
            cc.get_changes().first().map(|c| (c.node_id, c.get_change_type() != ConfChangeType::RemoveNode)).unwrap_or((0, false));
        let address = add.then(|| NodeAddress::from_context(&cc.context));
        return Ok(DecodedChange { v1: None, v2: Some(cc), id, address });
    }
    let cc = ConfChange::parse_from_bytes(&e.data)?;
    let id = cc.node_id;
    let address = (cc.get_change_type() != ConfChangeType::RemoveNode).then(|| NodeAddress::from_context(&cc.context));
    Ok(DecodedChange { v1: Some(cc), v2: None, id, address })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_entry_this_version_cannot_decode_stops_the_node_instead_of_being_skipped() {
        let e = Entry { index: 7, data: br#"{"SomeFutureCommand":{}}"#.to_vec().into(), ..Default::default() };
        let err = decode_command(&e).expect_err("undecodable");
        assert!(matches!(err, FormatError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("committed entry 7"), "{err}");
        let newer = Entry { index: 8, data: br#"{"format":99,"type":"clear_block","cluster":"pg"}"#.to_vec().into(), ..Default::default() };
        let err = decode_command(&newer).expect_err("newer format");
        assert!(err.to_string().contains("committed entry 8 was written in format 99"), "{err}");
    }
}
