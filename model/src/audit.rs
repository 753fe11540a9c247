//! The audit trail: who asked a coordinator to change what, through which
//! node, and what came of it. Entries are replicated (Raft) like decisions,
//! so every coordinator can show the whole trail.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Millis;

/// A state-changing request, one per AdminService RPC that changes state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    ApplyTopology,
    Failover,
    Switchover,
    FailoverRegion,
    Pause,
    ClearBlock,
    AddNode,
    RemoveNode,
    TransferLeadership,
    StartBackup,
    StartRecoveryTest,
    SetSchedule,
    StartRestore,
}

impl AuditAction {
    pub const ALL: [AuditAction; 13] = [
        AuditAction::ApplyTopology,
        AuditAction::Failover,
        AuditAction::Switchover,
        AuditAction::FailoverRegion,
        AuditAction::Pause,
        AuditAction::ClearBlock,
        AuditAction::AddNode,
        AuditAction::RemoveNode,
        AuditAction::TransferLeadership,
        AuditAction::StartBackup,
        AuditAction::StartRecoveryTest,
        AuditAction::SetSchedule,
        AuditAction::StartRestore,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::ApplyTopology => "apply_topology",
            AuditAction::Failover => "failover",
            AuditAction::Switchover => "switchover",
            AuditAction::FailoverRegion => "failover_region",
            AuditAction::Pause => "pause",
            AuditAction::ClearBlock => "clear_block",
            AuditAction::AddNode => "add_node",
            AuditAction::RemoveNode => "remove_node",
            AuditAction::TransferLeadership => "transfer_leadership",
            AuditAction::StartBackup => "start_backup",
            AuditAction::StartRecoveryTest => "start_recovery_test",
            AuditAction::SetSchedule => "set_schedule",
            AuditAction::StartRestore => "start_restore",
        }
    }
}

impl std::fmt::Display for AuditAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What came of a request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AuditOutcome {
    /// Recorded before the request runs; its outcome follows.
    #[default]
    Pending,
    /// Done; `detail` says what changed (a decision id, a diff, a job id).
    Done { detail: String },
    /// Not done, and why; `code` is the gRPC status code's name.
    Refused { code: String, reason: String },
    /// The coordinator that ran it stopped leading or died before it
    /// recorded the outcome: look at the history and the jobs.
    Unknown { reason: String },
}

impl AuditOutcome {
    pub fn is_pending(&self) -> bool {
        matches!(self, AuditOutcome::Pending)
    }
}

/// One line, as `drctl audit` and `drctl watch` show it.
impl std::fmt::Display for AuditOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuditOutcome::Pending => f.write_str("pending"),
            AuditOutcome::Done { detail } => write!(f, "done: {detail}"),
            AuditOutcome::Refused { code, reason } => write!(f, "refused ({code}): {reason}"),
            AuditOutcome::Unknown { reason } => write!(f, "unknown: {reason}"),
        }
    }
}

/// One audited request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 1, 2, ... in the order the requests were recorded.
    pub id: u64,
    /// When the coordinator that ran it received it (its wall clock).
    pub at: Millis,
    /// When the outcome was recorded (0 while pending).
    #[serde(default)]
    pub finished_at: Millis,
    /// The caller's drc identity (`drc://CLUSTER/ROLE/NAME`), or
    /// `insecure` when the coordinator runs without TLS.
    pub caller: String,
    /// The caller's role (`operator`, ...), empty when insecure.
    #[serde(default)]
    pub role: String,
    /// The coordinator the caller reached (it forwarded the request to the
    /// leader when they differ), and the one that ran it.
    pub via: u64,
    pub ran_on: u64,
    pub action: AuditAction,
    /// The cluster it concerns, if one.
    #[serde(default)]
    pub cluster: String,
    /// The request's fields, secrets redacted (see [`redact`]).
    #[serde(default)]
    pub request: BTreeMap<String, String>,
    #[serde(default)]
    pub outcome: AuditOutcome,
}

/// Field names whose values never enter the trail.
const SECRET_WORDS: [&str; 5] = ["password", "secret", "token", "key", "credential"];

/// The request's fields as recorded: a field whose name suggests a secret
/// keeps only whether it was set.
pub fn redact(fields: impl IntoIterator<Item = (String, String)>) -> BTreeMap<String, String> {
    fields
        .into_iter()
        .map(|(k, v)| {
            let lower = k.to_ascii_lowercase();
            if SECRET_WORDS.iter().any(|w| lower.contains(w)) && !v.is_empty() {
                (k, "[redacted]".to_string())
            } else {
                (k, v)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_everything_else_kept() {
        let r = redact([
            ("cluster".to_string(), "pg".to_string()),
            ("password".to_string(), "hunter2".to_string()),
            ("api_token".to_string(), "t".to_string()),
            ("secret_key".to_string(), String::new()),
        ]);
        assert_eq!(r["cluster"], "pg");
        assert_eq!(r["password"], "[redacted]");
        assert_eq!(r["api_token"], "[redacted]");
        assert_eq!(r["secret_key"], "", "an empty value tells nothing");
    }

    #[test]
    fn entries_round_trip_through_json() {
        let e = AuditEntry {
            id: 3,
            at: 1_000,
            finished_at: 1_010,
            caller: "drc://lab/operator/alice".into(),
            role: "operator".into(),
            via: 2,
            ran_on: 1,
            action: AuditAction::Failover,
            cluster: "pg".into(),
            request: BTreeMap::from([("cluster".to_string(), "pg".to_string())]),
            outcome: AuditOutcome::Refused { code: "not_found".into(), reason: "unknown cluster".into() },
        };
        let json = serde_json::to_string(&e).expect("encodes");
        assert!(json.contains(r#""action":"failover""#) && json.contains(r#""state":"refused""#), "{json}");
        assert_eq!(serde_json::from_str::<AuditEntry>(&json).expect("decodes"), e);
    }
}
