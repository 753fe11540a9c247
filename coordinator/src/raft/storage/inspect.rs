//! `drc-coordinator inspect`: what a stopped node's data dir holds, to pick
//! the survivor to recover from (the highest commit index) and to see the
//! formats it was written in.

use std::collections::BTreeMap;

use raft::prelude::EntryType;
use serde::Serialize;

use super::{RaftStore, StorageError};
use crate::lock;
use crate::state::format;

#[derive(Clone, Debug, Serialize)]
pub struct Described {
    pub cluster_id: String,
    pub node_id: u64,
    pub term: u64,
    pub vote: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Coordinator nodes in the state machine, with their addresses.
    pub members: BTreeMap<u64, String>,
    /// The format of the state machine checkpoint (1: before the stamp).
    pub snapshot_format: Option<u32>,
    /// Command entries in the log, by format.
    pub entry_formats: BTreeMap<u32, u64>,
    /// The format this release writes and the newest it reads.
    pub supported_format: u32,
    /// The coordinator group's generation (one more at each recovery).
    pub generation: u64,
}

impl RaftStore {
    pub fn describe(&self) -> Result<Described, StorageError> {
        let (cluster_id, node_id) = self.identity()?;
        let snapshot_format = self.read_meta("state_machine")?.and_then(|b| format::format_of(&b));
        let core = lock::read(&self.core);
        let mut entry_formats = BTreeMap::new();
        for e in core.entries.iter().filter(|e| e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty()) {
            *entry_formats.entry(format::format_of(&e.data).unwrap_or(0)).or_insert(0) += 1;
        }
        let mut voters = core.conf_state.voters.clone();
        voters.sort_unstable();
        Ok(Described {
            cluster_id,
            node_id,
            term: core.hard_state.term,
            vote: core.hard_state.vote,
            commit_index: core.hard_state.commit,
            applied_index: core.applied.0,
            first_index: core.first_index(),
            last_index: core.last_index(),
            voters,
            learners: core.conf_state.learners.clone(),
            members: core.sm.nodes.iter().map(|(id, a)| (*id, a.client.clone())).collect(),
            snapshot_format,
            entry_formats,
            supported_format: format::FORMAT,
            generation: core.sm.generation,
        })
    }
}
