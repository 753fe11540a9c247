//! Durable Raft storage on redb.
//!
//! Why redb rather than raft-engine: the coordinator's log is small (admin
//! writes and decisions, not data), and what matters is that entries, hard
//! state, conf state, the applied index and the state machine move together.
//! redb gives exactly that — one ACID transaction, fsynced on commit — in a
//! pure-Rust crate with no C build, no background threads and a stable file
//! format. raft-engine is built for TiKV's write volume and brings its own
//! protobuf/lz4 build chain that we do not need.
//!
//! Layout (one redb file, `raft.redb`, in the data dir):
//! * `entries`: index → `eraftpb.Entry` (raft-rs encoding)
//! * `meta`: `identity`, `hard_state`, `conf_state`, `compacted` (index, term
//!   of the last entry removed by compaction), `applied` (index, term) and
//!   `state_machine` (the state as of `applied`).
//!
//! Crash safety: every Ready is persisted in one fsynced transaction; the
//! state machine is checkpointed (with its applied index, conf state and
//! commit index, in one transaction) every [`CHECKPOINT_ENTRIES`] entries, at
//! membership changes and at compaction. A crash at any point leaves an
//! earlier consistent state that raft-rs accepts on restart, and the entries
//! since the checkpoint are re-applied. The persisted commit index is never
//! below the persisted applied index.
//!
//! All of it is mirrored in memory (the log is bounded by compaction), so
//! reads from raft-rs never touch the disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::lock;
use crate::state::{NodeAddress, StateMachine};

mod inspect;
mod recover;
pub use inspect::Described;
pub use recover::Recovered;

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Index (and term) of the founding snapshot of a new cluster.
pub const BOOTSTRAP_INDEX: u64 = 1;

/// The state machine is written to disk at most once per this many applied
/// entries (and at every membership change and compaction): writing a large
/// topology on every entry would stall the Raft thread. Entries applied since
/// the last checkpoint are re-applied after a restart (apply is idempotent),
/// and the log is never compacted past the checkpoint.
pub const CHECKPOINT_ENTRIES: u64 = 64;

/// Errors of the storage layer. Any of them is fatal for the node: raft-rs
/// cannot continue safely on a log it failed to write.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("data dir {dir} belongs to drc cluster {found_cluster:?} node {found_node}, but this coordinator is configured as cluster {want_cluster:?} node {want_node}; refusing to start (use an empty data dir for a new node)")]
    ForeignDataDir { dir: PathBuf, found_cluster: String, found_node: u64, want_cluster: String, want_node: u64 },
    #[error("data dir {dir} is already in use by another coordinator process")]
    InUse { dir: PathBuf },
    #[error("storage at {dir}: {source}")]
    Db { dir: PathBuf, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("corrupt storage: {0}")]
    Corrupt(String),
    /// Written by a release this one cannot read (or not at all decodable).
    #[error("{0}")]
    Format(#[from] crate::state::format::FormatError),
}

impl StorageError {
    /// The data dir cannot be used as it is: restarting will not help.
    pub fn needs_operator(&self) -> bool {
        !matches!(self, StorageError::Db { .. })
    }
}

/// What the data dir belongs to; written once, checked at every start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    cluster_id: String,
    node_id: u64,
}

#[derive(Default)]
struct Core {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry removed by compaction (0, 0 if none).
    compacted: (u64, u64),
    /// `entries[i].index == compacted.0 + 1 + i`.
    entries: Vec<Entry>,
    applied: (u64, u64),
    /// The applied index whose state machine is on disk (a checkpoint).
    checkpointed: u64,
    sm: StateMachine,
}

impl Core {
    fn first_index(&self) -> u64 {
        self.compacted.0 + 1
    }

    fn last_index(&self) -> u64 {
        self.compacted.0 + self.entries.len() as u64
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.compacted.0 {
            return Ok(self.compacted.1);
        }
        if idx < self.compacted.0 {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if idx > self.last_index() {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first_index()) as usize].term)
    }
}

/// A batch of applied entries: the state after them, to be made durable in
/// one transaction by [`RaftStore::commit_apply`].
pub struct ApplyBatch {
    pub sm: StateMachine,
    pub conf_state: Option<ConfState>,
    pub applied: (u64, u64),
}

/// The node's durable Raft storage. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct RaftStore {
    db: Arc<Database>,
    dir: PathBuf,
    core: Arc<RwLock<Core>>,
    /// Size of the newest checkpoint of the state machine: what a snapshot
    /// sends a follower that fell behind.
    checkpoint_bytes: Arc<std::sync::atomic::AtomicU64>,
}

fn enc<M: protobuf::Message>(m: &M) -> Vec<u8> {
    m.write_to_bytes().unwrap_or_default()
}

fn dec<M: protobuf::Message>(bytes: &[u8], what: &str) -> Result<M, StorageError> {
    M::parse_from_bytes(bytes).map_err(|e| StorageError::Corrupt(format!("{what}: {e}")))
}

fn pair(bytes: &[u8]) -> Result<(u64, u64), StorageError> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt(format!("index pair: {e}")))
}

impl RaftStore {
    /// Opens (or creates) the storage in `dir`.
    ///
    /// A new, empty dir is stamped with `cluster_id`/`node_id`; `founders`
    /// (id → address) seeds the initial voters for a founding node, while a
    /// node that will be added later (`founders == None`) starts with no
    /// configuration and waits for the leader's snapshot. An existing dir
    /// must carry the same identity.
    pub fn open(dir: &Path, cluster_id: &str, node_id: u64, founders: Option<&BTreeMap<u64, NodeAddress>>) -> Result<Self, StorageError> {
        let store = RaftStore::open_db(dir)?;
        let want = Identity { cluster_id: cluster_id.to_string(), node_id };
        match store.stored_identity()? {
            Some(found) => {
                if found != want {
                    return Err(StorageError::ForeignDataDir {
                        dir: dir.to_path_buf(),
                        found_cluster: found.cluster_id,
                        found_node: found.node_id,
                        want_cluster: want.cluster_id,
                        want_node: want.node_id,
                    });
                }
            }
            None => store.initialise(&want, founders)?,
        }
        store.load()?;
        Ok(store)
    }

    /// Opens an existing data dir as the node it belongs to (the tools
    /// that work on a stopped node's data: `recover`, `inspect`).
    pub fn open_existing(dir: &Path) -> Result<Self, StorageError> {
        if !dir.join("raft.redb").exists() {
            return Err(StorageError::Corrupt(format!("{} holds no coordinator data (no raft.redb)", dir.display())));
        }
        let id = RaftStore::open_db(dir)?
            .stored_identity()?
            .ok_or_else(|| StorageError::Corrupt(format!("{} was never initialised", dir.display())))?;
        RaftStore::open(dir, &id.cluster_id, id.node_id, None)
    }

    /// The drc cluster and node this data dir belongs to.
    pub fn identity(&self) -> Result<(String, u64), StorageError> {
        let id = self.stored_identity()?.ok_or_else(|| StorageError::Corrupt("no identity".into()))?;
        Ok((id.cluster_id, id.node_id))
    }

    /// The identity stamped on the data dir; none on a new one.
    fn stored_identity(&self) -> Result<Option<Identity>, StorageError> {
        let Some(bytes) = self.read_meta("identity")? else { return Ok(None) };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| StorageError::Corrupt(format!("identity: {e}")))
    }

    fn db_err(&self, e: impl std::error::Error + Send + Sync + 'static) -> StorageError {
        StorageError::Db { dir: self.dir.clone(), source: Box::new(e) }
    }

    fn read_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.db_err(e)),
        };
        let v = table.get(key).map_err(|e| self.db_err(e))?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    /// The database in `dir`, created if missing, nothing loaded yet.
    fn open_db(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::Db { dir: dir.to_path_buf(), source: Box::new(e) })?;
        let db = match Database::create(dir.join("raft.redb")) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(StorageError::InUse { dir: dir.to_path_buf() }),
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(StorageError::InUse { dir: dir.to_path_buf() })
            }
            Err(e) => return Err(StorageError::Db { dir: dir.to_path_buf(), source: Box::new(e) }),
        };
        Ok(RaftStore {
            db: Arc::new(db),
            dir: dir.to_path_buf(),
            core: Arc::new(RwLock::new(Core::default())),
            checkpoint_bytes: Arc::default(),
        })
    }

    /// Stamps a new data dir. A founding node starts from a snapshot at
    /// [`BOOTSTRAP_INDEX`] holding the founding membership: because that state
    /// is not in the log, a node added later cannot rebuild it from entries
    /// and always receives a snapshot first (as TiKV does).
    fn initialise(&self, identity: &Identity, founders: Option<&BTreeMap<u64, NodeAddress>>) -> Result<(), StorageError> {
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.db_err(e))?;
            tx.open_table(ENTRIES).map_err(|e| self.db_err(e))?;
            let id = serde_json::to_vec(identity).unwrap_or_default();
            if let Some(f) = founders {
                let cs = ConfState { voters: f.keys().copied().collect(), ..Default::default() };
                let hs = HardState { term: BOOTSTRAP_INDEX, commit: BOOTSTRAP_INDEX, ..Default::default() };
                let at = serde_json::to_vec(&(BOOTSTRAP_INDEX, BOOTSTRAP_INDEX)).unwrap_or_default();
                meta.insert("conf_state", enc(&cs).as_slice()).map_err(|e| self.db_err(e))?;
                meta.insert("hard_state", enc(&hs).as_slice()).map_err(|e| self.db_err(e))?;
                meta.insert("compacted", at.as_slice()).map_err(|e| self.db_err(e))?;
                meta.insert("applied", at.as_slice()).map_err(|e| self.db_err(e))?;
                meta.insert("state_machine", StateMachine::bootstrap(f).encode().as_slice()).map_err(|e| self.db_err(e))?;
            }
            // Identity last in the batch: a dir without it is "new" and safe to re-initialise.
            meta.insert("identity", id.as_slice()).map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))
    }

    fn load(&self) -> Result<(), StorageError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let meta = tx.open_table(META).map_err(|e| self.db_err(e))?;
        let get =
            |k: &str| -> Result<Option<Vec<u8>>, StorageError> { Ok(meta.get(k).map_err(|e| self.db_err(e))?.map(|g| g.value().to_vec())) };
        let mut core = Core::default();
        if let Some(b) = get("hard_state")? {
            core.hard_state = dec(&b, "hard state")?;
        }
        if let Some(b) = get("conf_state")? {
            core.conf_state = dec(&b, "conf state")?;
        }
        if let Some(b) = get("compacted")? {
            core.compacted = pair(&b)?;
        }
        if let Some(b) = get("applied")? {
            core.applied = pair(&b)?;
        }
        if let Some(b) = get("state_machine")? {
            core.sm = StateMachine::decode(&b)?;
        }
        let entries = tx.open_table(ENTRIES).map_err(|e| self.db_err(e))?;
        let first = core.compacted.0 + 1;
        for (expect, row) in (first..).zip(entries.range(first..).map_err(|e| self.db_err(e))?) {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            if k.value() != expect {
                return Err(StorageError::Corrupt(format!("log gap: expected entry {expect}, found {}", k.value())));
            }
            core.entries.push(dec(v.value(), "entry")?);
        }
        core.checkpointed = core.applied.0;
        if core.applied.0 > core.hard_state.commit {
            return Err(StorageError::Corrupt(format!(
                "applied index {} is beyond commit index {}",
                core.applied.0, core.hard_state.commit
            )));
        }
        *lock::write(&self.core) = core;
        Ok(())
    }

    fn read(&self) -> RwLockReadGuard<'_, Core> {
        lock::read(&self.core)
    }

    /// Makes one Ready durable: an incoming snapshot, new entries (replacing
    /// any conflicting suffix) and the hard state, in one fsynced transaction.
    ///
    /// `sync` is raft-rs's `Ready::must_sync()`: false when only the commit
    /// index moved, which can be recovered from the log and need not wait for
    /// an fsync (etcd's rule). Such a write becomes durable, in order, with
    /// the next synced one.
    pub fn persist_ready(
        &self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hs: Option<&HardState>,
        sync: bool,
    ) -> Result<(), StorageError> {
        if snapshot.is_none() && entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        let sync = sync || snapshot.is_some() || !entries.is_empty();
        let mut core = lock::write(&self.core);
        let snap_sm = match snapshot {
            Some(s) => Some(StateMachine::decode(&s.data)?),
            None => None,
        };
        let mut tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        if !sync {
            tx.set_durability(redb::Durability::None);
        }
        {
            let mut meta = tx.open_table(META).map_err(|e| self.db_err(e))?;
            let mut table = tx.open_table(ENTRIES).map_err(|e| self.db_err(e))?;
            if let (Some(s), Some(sm)) = (snapshot, &snap_sm) {
                let m = s.get_metadata();
                remove_from(&mut table, 0).map_err(|e| self.db_err(e))?;
                let at = serde_json::to_vec(&(m.index, m.term)).unwrap_or_default();
                meta.insert("compacted", at.as_slice()).map_err(|e| self.db_err(e))?;
                meta.insert("applied", at.as_slice()).map_err(|e| self.db_err(e))?;
                meta.insert("conf_state", enc(m.get_conf_state()).as_slice()).map_err(|e| self.db_err(e))?;
                meta.insert("state_machine", sm.encode().as_slice()).map_err(|e| self.db_err(e))?;
            }
            if let Some(first) = entries.first() {
                remove_from(&mut table, first.index).map_err(|e| self.db_err(e))?;
                for e in entries {
                    table.insert(e.index, enc(e).as_slice()).map_err(|e| self.db_err(e))?;
                }
            }
            let mut new_hs = hs.cloned().unwrap_or_else(|| core.hard_state.clone());
            if let Some(s) = snapshot {
                new_hs.commit = new_hs.commit.max(s.get_metadata().index);
            }
            meta.insert("hard_state", enc(&new_hs).as_slice()).map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))?;

        if let (Some(s), Some(sm)) = (snapshot, snap_sm) {
            let m = s.get_metadata();
            core.entries.clear();
            core.compacted = (m.index, m.term);
            core.applied = (m.index, m.term);
            core.checkpointed = m.index;
            core.conf_state = m.get_conf_state().clone();
            core.sm = sm;
            core.hard_state.commit = core.hard_state.commit.max(m.index);
        }
        if let Some(first) = entries.first() {
            let keep = first.index.saturating_sub(core.first_index()) as usize;
            core.entries.truncate(keep);
            core.entries.extend_from_slice(entries);
        }
        if let Some(hs) = hs {
            let commit = core.hard_state.commit;
            core.hard_state = hs.clone();
            if snapshot.is_some() {
                core.hard_state.commit = core.hard_state.commit.max(commit);
            }
        }
        Ok(())
    }

    /// A copy of the current state machine, to apply the next batch onto.
    pub fn begin_apply(&self) -> ApplyBatch {
        let core = self.read();
        ApplyBatch { sm: core.sm.clone(), conf_state: None, applied: core.applied }
    }

    /// The index of the last applied entry.
    pub fn applied(&self) -> u64 {
        self.read().applied.0
    }

    /// Records a batch of applied entries. The state machine, applied index,
    /// conf state and commit index go to disk together as a checkpoint when
    /// the batch changed the membership or [`CHECKPOINT_ENTRIES`] entries were
    /// applied since the last one; otherwise only memory changes.
    pub fn commit_apply(&self, batch: ApplyBatch, commit: Option<u64>) -> Result<(), StorageError> {
        let mut core = lock::write(&self.core);
        core.hard_state.commit = core.hard_state.commit.max(commit.unwrap_or(0)).max(batch.applied.0);
        core.sm = batch.sm;
        core.applied = batch.applied;
        let membership = batch.conf_state.is_some();
        if let Some(cs) = batch.conf_state {
            core.conf_state = cs;
        }
        if membership || core.applied.0 >= core.checkpointed + CHECKPOINT_ENTRIES {
            let mut tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
            if !membership {
                // No fsync: everything in a checkpoint is re-derivable from
                // the durable log; redb makes it durable, in order, with the
                // next synced commit.
                tx.set_durability(redb::Durability::None);
            }
            self.write_checkpoint(&tx, &core)?;
            tx.commit().map_err(|e| self.db_err(e))?;
            core.checkpointed = core.applied.0;
        }
        Ok(())
    }

    /// Writes state machine, applied index, conf state and hard state, which
    /// must always be on disk as of the same applied index.
    fn write_checkpoint(&self, tx: &redb::WriteTransaction, core: &Core) -> Result<(), StorageError> {
        let mut meta = tx.open_table(META).map_err(|e| self.db_err(e))?;
        let state = core.sm.encode();
        self.checkpoint_bytes.store(state.len() as u64, std::sync::atomic::Ordering::Relaxed);
        meta.insert("state_machine", state.as_slice()).map_err(|e| self.db_err(e))?;
        meta.insert("applied", serde_json::to_vec(&core.applied).unwrap_or_default().as_slice()).map_err(|e| self.db_err(e))?;
        meta.insert("hard_state", enc(&core.hard_state).as_slice()).map_err(|e| self.db_err(e))?;
        meta.insert("conf_state", enc(&core.conf_state).as_slice()).map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Drops log entries up to the applied index once more than `threshold`
    /// entries have accumulated, checkpointing the state machine in the same
    /// transaction. A follower that needs them gets a snapshot. Returns the
    /// new compaction point if the log was compacted.
    pub fn compact_if_needed(&self, threshold: u64) -> Result<Option<u64>, StorageError> {
        let mut core = lock::write(&self.core);
        let (applied, applied_term) = core.applied;
        if applied <= core.compacted.0 || applied - core.compacted.0 < threshold || applied > core.last_index() {
            return Ok(None);
        }
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        self.write_checkpoint(&tx, &core)?;
        {
            let mut table = tx.open_table(ENTRIES).map_err(|e| self.db_err(e))?;
            let keys: Vec<u64> =
                table.range(..=applied).map_err(|e| self.db_err(e))?.filter_map(|r| r.ok().map(|(k, _)| k.value())).collect();
            for k in keys {
                table.remove(k).map_err(|e| self.db_err(e))?;
            }
            let mut meta = tx.open_table(META).map_err(|e| self.db_err(e))?;
            meta.insert("compacted", serde_json::to_vec(&(applied, applied_term)).unwrap_or_default().as_slice())
                .map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))?;
        core.checkpointed = applied;
        let drop = (applied - core.compacted.0) as usize;
        core.entries.drain(..drop);
        core.compacted = (applied, applied_term);
        Ok(Some(applied))
    }

    /// Runs `f` on the current (applied) state machine.
    pub fn with_state<R>(&self, f: impl FnOnce(&StateMachine) -> R) -> R {
        f(&self.read().sm)
    }

    /// Bytes of the newest checkpoint of the state machine written by this
    /// process (0 before the first).
    pub fn checkpoint_bytes(&self) -> u64 {
        self.checkpoint_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// (first index, last index, compaction point) of the log.
    pub fn log_bounds(&self) -> (u64, u64, u64) {
        let core = self.read();
        (core.first_index(), core.last_index(), core.compacted.0)
    }

    pub fn conf_state(&self) -> ConfState {
        self.read().conf_state.clone()
    }
}

fn remove_from(table: &mut redb::Table<u64, &[u8]>, from: u64) -> Result<(), redb::StorageError> {
    let keys: Vec<u64> = table.range(from..)?.filter_map(|r| r.ok().map(|(k, _)| k.value())).collect();
    for k in keys {
        table.remove(k)?;
    }
    Ok(())
}

impl raft::Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let core = self.read();
        Ok(RaftState { hard_state: core.hard_state.clone(), conf_state: core.conf_state.clone() })
    }

    fn entries(&self, low: u64, high: u64, max_size: impl Into<Option<u64>>, _ctx: GetEntriesContext) -> raft::Result<Vec<Entry>> {
        let core = self.read();
        if low < core.first_index() {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > core.last_index() + 1 {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let lo = (low - core.first_index()) as usize;
        let hi = (high - core.first_index()) as usize;
        let mut ents = core.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.read().term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.read().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.read().last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let core = self.read();
        if core.applied.0 < request_index {
            return Err(raft::Error::Store(RaftStorageError::SnapshotTemporarilyUnavailable));
        }
        let mut snap = Snapshot { data: core.sm.encode().into(), ..Default::default() };
        let meta = snap.mut_metadata();
        meta.index = core.applied.0;
        meta.term = core.applied.1;
        meta.set_conf_state(core.conf_state.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use raft::Storage as _;

    use super::*;
    use crate::state::Command;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, ..Default::default() }
    }

    fn founders() -> BTreeMap<u64, NodeAddress> {
        BTreeMap::from([(1, NodeAddress::shared("a:1")), (2, NodeAddress::shared("b:1")), (3, NodeAddress::shared("c:1"))])
    }

    #[test]
    fn refuses_a_data_dir_of_another_cluster() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(RaftStore::open(dir.path(), "alpha", 1, Some(&founders())).expect("open"));
        let err = RaftStore::open(dir.path(), "beta", 1, Some(&founders())).err().expect("must refuse");
        assert!(err.to_string().contains("belongs to drc cluster \"alpha\""), "{err}");
        let err = RaftStore::open(dir.path(), "alpha", 2, Some(&founders())).err().expect("must refuse");
        assert!(matches!(err, StorageError::ForeignDataDir { .. }));
    }

    #[test]
    fn survives_reopen_and_replaces_conflicting_suffix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = RaftStore::open(dir.path(), "c", 1, Some(&founders())).expect("open");
        let hs = HardState { term: 2, commit: 2, ..Default::default() };
        assert_eq!((s.first_index().expect("first"), s.last_index().expect("last")), (2, 1), "founders start from a snapshot");
        s.persist_ready(None, &[entry(2, 1), entry(3, 1), entry(4, 1)], Some(&hs), true).expect("persist");
        s.persist_ready(None, &[entry(4, 2), entry(5, 2)], None, true).expect("persist");
        drop(s);
        let s = RaftStore::open(dir.path(), "c", 1, None).expect("reopen");
        assert_eq!(s.last_index().expect("last"), 5);
        assert_eq!(s.term(4).expect("term"), 2);
        assert_eq!(s.initial_state().expect("state").hard_state.term, 2);
        assert_eq!(s.initial_state().expect("state").conf_state.voters, vec![1, 2, 3]);
    }

    #[test]
    fn crash_between_writes_never_leaves_applied_beyond_commit() {
        // A batch applied with commit unknown still raises the persisted commit.
        let dir = tempfile::tempdir().expect("tempdir");
        let s = RaftStore::open(dir.path(), "c", 1, Some(&founders())).expect("open");
        s.persist_ready(None, &[entry(2, 1), entry(3, 1)], None, true).expect("persist");
        let mut b = s.begin_apply();
        b.applied = (3, 1);
        s.commit_apply(b, None).expect("apply");
        // "Crash": drop without any further write, then reopen.
        drop(s);
        let s = RaftStore::open(dir.path(), "c", 1, None).expect("reopen");
        let st = s.initial_state().expect("state");
        assert!(st.hard_state.commit >= s.applied());
    }

    #[test]
    fn compaction_keeps_terms_and_serves_snapshots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = RaftStore::open(dir.path(), "c", 1, Some(&founders())).expect("open");
        let ents: Vec<Entry> = (2..=11).map(|i| entry(i, 1 + i / 5)).collect();
        s.persist_ready(None, &ents, None, true).expect("persist");
        let mut b = s.begin_apply();
        b.sm.apply(Command::ApplyTopology { topology: Default::default() });
        b.applied = (8, 2);
        s.commit_apply(b, Some(8)).expect("apply");
        assert_eq!(s.compact_if_needed(5).expect("compact"), Some(8));
        assert_eq!(s.first_index().expect("first"), 9);
        assert_eq!(s.term(8).expect("term at compaction point"), 2);
        assert!(matches!(s.term(7), Err(raft::Error::Store(RaftStorageError::Compacted))));
        let snap = s.snapshot(8, 2).expect("snapshot");
        assert_eq!(snap.get_metadata().index, 8);
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2, 3]);
        drop(s);
        let s = RaftStore::open(dir.path(), "c", 1, None).expect("reopen");
        assert_eq!((s.first_index().expect("f"), s.last_index().expect("l")), (9, 11));

        // A fresh node installs that snapshot.
        let dir2 = tempfile::tempdir().expect("tempdir");
        let joiner = RaftStore::open(dir2.path(), "c", 4, None).expect("open");
        joiner.persist_ready(Some(&snap), &[], None, true).expect("install");
        assert_eq!(joiner.applied(), 8);
        assert_eq!(joiner.initial_state().expect("s").hard_state.commit, 8);
        assert_eq!(joiner.with_state(|sm| sm.nodes.len()), 3);
    }
}
