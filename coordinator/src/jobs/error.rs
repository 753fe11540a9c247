//! Why a backup, recovery test or restore could not start.

use drc_model::job::JobState;

use crate::raft::ProposeError;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("unknown cluster {0:?}")]
    UnknownCluster(String),
    #[error("unknown destination {0:?}")]
    UnknownDestination(String),
    #[error("no backup {0}")]
    UnknownBackup(u64),
    #[error("cluster {0} has no backup destinations ([clusters.{0}.backup] destinations = [...])")]
    NoDestinations(String),
    #[error("cluster {0} has no completed backup yet")]
    NoBackupYet(String),
    #[error("backup {id} belongs to cluster {owner}, not {cluster}")]
    OtherCluster { id: u64, owner: String, cluster: String },
    #[error("backup {id} is {}, not done", state.as_str())]
    NotDone { id: u64, state: JobState },
    #[error("cannot back up {cluster}: {why}")]
    NoSource { cluster: String, why: String },
    #[error("no agent of {cluster} outside the primary's region ({region}) is connected")]
    NoRestorer { cluster: String, region: String },
    #[error("{what} {id} of {cluster} is still running: one at a time per cluster (drctl {command} show {id})")]
    Busy { what: &'static str, command: &'static str, id: u64, cluster: String },
    #[error("unknown member {0:?}")]
    UnknownMember(String),
    #[error("the agent of {0} is not connected")]
    AgentDown(String),
    #[error("{0}")]
    BadRestore(String),
    #[error("cluster {cluster} has no completed backup consistent before {point}")]
    NoBaseBefore { cluster: String, point: String },
    #[error("cluster {cluster} has no WAL archive for this: a restore to a point, or of a backup that left its WAL to the archive (wal = \"archive\"), needs it")]
    NoArchive { cluster: String },
    #[error("{point} lies beyond the WAL archived so far ({reach})")]
    BeyondArchive { point: String, reach: String },
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// The state machine refused the record.
    #[error("{0}")]
    Refused(String),
}
