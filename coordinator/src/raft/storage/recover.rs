//! `drc-coordinator recover`: when a majority of the coordinators is lost
//! for good, a survivor's data becomes a one-node cluster (as etcd's
//! `--force-new-cluster`). What it had committed is kept and applied;
//! entries it had not seen committed are dropped (the lost majority may or
//! may not have committed them: nothing can tell); every other node leaves
//! the configuration. Members are then added back, each with an empty data
//! dir, by `drctl members add`.

use raft::prelude::{ConfState, EntryType};
use serde::Serialize;

use super::{enc, remove_from, RaftStore, StorageError, ENTRIES, META};
use crate::lock;
use crate::raft::entry::{decode_command, decode_conf_change};

/// What [`RaftStore::force_new_cluster`] did.
#[derive(Clone, Debug, Serialize)]
pub struct Recovered {
    pub node_id: u64,
    /// Everything up to this index (committed) is in the recovered state.
    pub applied_index: u64,
    pub term: u64,
    /// Entries past the commit index that were dropped.
    pub dropped_entries: u64,
    /// The voters before, this node included.
    pub voters_before: Vec<u64>,
    /// Nodes removed from the membership.
    pub removed: Vec<u64>,
    /// The group's new generation: the removed nodes, should they start
    /// again on their old data, keep the old one, and agents and proxies
    /// that have seen this one leave them.
    pub generation: u64,
}

impl RaftStore {
    /// Makes this node the only voter of its cluster, keeping every entry
    /// it knows committed (applied to the state machine now) and dropping
    /// the uncommitted rest, in one transaction.
    pub fn force_new_cluster(&self) -> Result<Recovered, StorageError> {
        let mut core = lock::write(&self.core);
        let (_, node_id) = self.identity()?;
        let commit = core.hard_state.commit.min(core.last_index());
        let mut sm = core.sm.clone();
        for e in core.entries.iter().filter(|e| e.index > core.applied.0 && e.index <= commit) {
            match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => {}
                EntryType::EntryNormal => {
                    sm.apply(decode_command(e)?);
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let change =
                        decode_conf_change(e).map_err(|err| StorageError::Corrupt(format!("conf change at {}: {err}", e.index)))?;
                    sm.apply_membership(change.id, change.address);
                }
            }
        }
        if !sm.nodes.contains_key(&node_id) {
            return Err(StorageError::Corrupt(format!(
                "node {node_id} is not a member in the state this data dir holds (members: {:?}); recover from a node that was a voter",
                sm.nodes.keys().collect::<Vec<_>>()
            )));
        }
        let term = core.term(commit).map_err(|e| StorageError::Corrupt(format!("the term of entry {commit}: {e}")))?;
        let removed: Vec<u64> = sm.nodes.keys().copied().filter(|id| *id != node_id).collect();
        for id in &removed {
            sm.apply_membership(*id, None);
        }
        sm.generation += 1;
        let generation = sm.generation;
        let mut voters_before = core.conf_state.voters.clone();
        voters_before.sort_unstable();
        let conf_state = ConfState { voters: vec![node_id], ..Default::default() };
        let mut hard_state = core.hard_state.clone();
        hard_state.commit = commit;
        let dropped_entries = core.last_index() - commit;

        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut table = tx.open_table(ENTRIES).map_err(|e| self.db_err(e))?;
            remove_from(&mut table, 0).map_err(|e| self.db_err(e))?;
            let mut meta = tx.open_table(META).map_err(|e| self.db_err(e))?;
            let at = serde_json::to_vec(&(commit, term)).unwrap_or_default();
            meta.insert("compacted", at.as_slice()).map_err(|e| self.db_err(e))?;
            meta.insert("applied", at.as_slice()).map_err(|e| self.db_err(e))?;
            meta.insert("conf_state", enc(&conf_state).as_slice()).map_err(|e| self.db_err(e))?;
            meta.insert("hard_state", enc(&hard_state).as_slice()).map_err(|e| self.db_err(e))?;
            meta.insert("state_machine", sm.encode().as_slice()).map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))?;
        core.entries.clear();
        core.compacted = (commit, term);
        core.applied = (commit, term);
        core.checkpointed = commit;
        core.conf_state = conf_state;
        core.hard_state = hard_state;
        core.sm = sm;
        Ok(Recovered { node_id, applied_index: commit, term, dropped_entries, voters_before, removed, generation })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of a data dir written by a three-node lab in format 2 (two
    /// backups of app-pg and one of app-redis, a switchover (and its
    /// failover group's), a recovery
    /// test, two schedules, 35 pauses and resumes): 262 entries, the state
    /// machine checkpointed at 257.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("raft.redb"), include_bytes!("../../../tests/fixtures/datadir-format-2/raft.redb")).expect("copy");
        dir
    }

    #[test]
    fn a_data_dir_written_in_format_2_still_opens_with_its_log_and_snapshot() {
        let dir = fixture();
        let store = RaftStore::open_existing(dir.path()).expect("opens");
        let d = store.describe().expect("describe");
        assert_eq!((d.cluster_id.as_str(), d.node_id, d.voters.as_slice()), ("lab", 1, &[1, 2, 3][..]));
        assert_eq!((d.commit_index, d.applied_index, d.snapshot_format), (263, 257, Some(2)));
        assert_eq!(d.entry_formats.keys().copied().collect::<Vec<_>>(), vec![2], "{:?}", d.entry_formats);
        store.with_state(|sm| {
            assert_eq!(sm.records["app-pg"].primary, "pg-b", "the switchover");
            assert_eq!(sm.records["app-redis"].primary, "redis-b", "its failover group followed");
            assert_eq!(sm.history.len(), 2);
            assert_eq!(sm.schedules.len(), 2);
            assert!(!sm.audit.is_empty());
        });
    }

    #[test]
    fn recovery_keeps_every_committed_entry_and_leaves_this_node_the_only_voter() {
        let dir = fixture();
        let r = RaftStore::open_existing(dir.path()).expect("opens").force_new_cluster().expect("recovers");
        assert_eq!((r.node_id, r.applied_index, r.dropped_entries), (1, 263, 0));
        assert_eq!((r.voters_before.as_slice(), r.removed.as_slice()), (&[1, 2, 3][..], &[2, 3][..]));
        assert_eq!(r.generation, 1, "a founded group is generation 0");
        // What a restart reads: one voter, nothing left to apply, the six
        // entries past the checkpoint applied (the last backup among them).
        let store = RaftStore::open_existing(dir.path()).expect("reopens");
        let d = store.describe().expect("describe");
        assert_eq!((d.voters.as_slice(), d.commit_index, d.applied_index, d.last_index), (&[1][..], 263, 263, 263));
        assert_eq!(d.members.keys().copied().collect::<Vec<_>>(), vec![1]);
        store.with_state(|sm| {
            assert_eq!(sm.backups.values().filter(|b| b.cluster == "app-pg").count(), 2, "{:?}", sm.backups.keys());
            assert_eq!(sm.records["app-pg"].primary, "pg-b");
            assert_eq!(sm.generation, 1, "kept with the state");
        });
    }

    #[test]
    fn a_snapshot_of_a_newer_format_is_refused_loudly_at_start() {
        let dir = fixture();
        {
            let store = RaftStore::open_existing(dir.path()).expect("opens");
            let tx = store.db.begin_write().expect("tx");
            tx.open_table(META).expect("meta").insert("state_machine", br#"{"format": 3, "topology": {}}"#.as_slice()).expect("insert");
            tx.commit().expect("commit");
        }
        let e = RaftStore::open_existing(dir.path()).err().expect("refused").to_string();
        assert!(e.contains("written in format 3 by a newer drc release") && e.contains("upgrade this node"), "{e}");
    }
}
