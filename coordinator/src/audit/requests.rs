//! What each state-changing request records of itself: its action, the
//! cluster it concerns and its fields (the audit trail's `request`).

use drc_model::audit::AuditAction;
use drc_proto::{
    AddNodeRequest, ApplyTopologyRequest, ClearBlockRequest, FailoverRegionRequest, FailoverRequest, PauseRequest, RemoveNodeRequest,
    SetScheduleRequest, StartBackupRequest, StartRecoveryTestRequest, StartRestoreRequest, SwitchoverRequest, TransferLeadershipRequest,
};
use sha2::{Digest, Sha256};

/// A request the audit trail records.
pub trait Audited {
    const ACTION: AuditAction;
    /// The cluster it concerns ("" for none).
    fn cluster(&self) -> &str;
    /// Its fields, by name, before redaction.
    fn fields(&self) -> Vec<(&'static str, String)>;
}

macro_rules! audited {
    ($ty:ty, $action:ident, |$r:ident| $cluster:expr, [$($name:literal => $value:expr),* $(,)?]) => {
        impl Audited for $ty {
            const ACTION: AuditAction = AuditAction::$action;
            #[allow(unused_variables)]
            fn cluster(&self) -> &str {
                let $r = self;
                $cluster
            }
            fn fields(&self) -> Vec<(&'static str, String)> {
                let $r = self;
                vec![$(($name, $value.to_string())),*]
            }
        }
    };
}

audited!(FailoverRequest, Failover, |r| &r.cluster, ["cluster" => r.cluster, "to" => r.to, "force" => r.force]);
audited!(SwitchoverRequest, Switchover, |r| &r.cluster, ["cluster" => r.cluster, "to" => r.to]);
audited!(FailoverRegionRequest, FailoverRegion, |r| "", ["from" => r.from, "to" => r.to, "force" => r.force]);
audited!(PauseRequest, Pause, |r| &r.cluster, ["cluster" => r.cluster, "paused" => r.paused]);
audited!(ClearBlockRequest, ClearBlock, |r| &r.cluster, ["cluster" => r.cluster]);
audited!(AddNodeRequest, AddNode, |r| "", ["id" => r.id, "address" => r.address, "raft_address" => r.raft_address]);
audited!(RemoveNodeRequest, RemoveNode, |r| "", ["id" => r.id]);
audited!(TransferLeadershipRequest, TransferLeadership, |r| "", ["id" => r.id]);
audited!(StartBackupRequest, StartBackup, |r| &r.cluster, ["cluster" => r.cluster, "destination" => r.destination]);
audited!(StartRecoveryTestRequest, StartRecoveryTest, |r| &r.cluster, ["cluster" => r.cluster, "backup_id" => r.backup_id]);
audited!(StartRestoreRequest, StartRestore, |r| &r.cluster, [
    "cluster" => r.cluster,
    "point" => r.point.as_ref().and_then(|p| drc_proto::jobs::point_in(Some(p)).ok()).map(|(p, _)| p.to_string()).unwrap_or_default(),
    "timeline" => r.point.as_ref().map(|p| p.timeline.clone()).unwrap_or_default(),
    "on" => r.on,
    "dir" => r.dir,
    "port" => r.port,
]);
audited!(SetScheduleRequest, SetSchedule, |r| &r.cluster, ["cluster" => r.cluster, "job" => r.job, "cron" => r.cron]);
// The document itself can be large: its digest and size identify it, and
// the outcome holds the diff it made.
audited!(ApplyTopologyRequest, ApplyTopology, |r| "", [
    "sha256" => hex(&Sha256::digest(r.topology_toml.as_bytes())),
    "bytes" => r.topology_toml.len(),
    "dry_run" => r.dry_run,
]);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
