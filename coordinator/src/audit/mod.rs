//! The audit trail: every state-changing request is recorded in Raft before
//! it runs (who, when, through which node, the request with secrets
//! redacted), and its outcome after. A request that cannot be recorded does
//! not run: no audit, no action.
//!
//! Entries are proposed by the leader, which runs the requests; a node that
//! is not (or no longer) the leader records through the leader's
//! `RecordAudit`, which only coordinators may call. An entry whose runner
//! died before recording the outcome is closed as `unknown` by the next
//! leader ([`trail`]), which also writes the trail to a JSON-lines file for a
//! SIEM and to `drctl watch`.

mod requests;
pub mod trail;

use std::sync::Arc;
use std::time::Duration;

use drc_model::audit::{redact, AuditEntry, AuditOutcome};
use drc_model::time::wall_now_ms;
use drc_proto::RecordAuditRequest;
use tonic::{Request, Status};

use crate::auth::{principal, ForwardedBy, Principal};
use crate::forward::on_leader;
use crate::raft::transport::Transport;
use crate::raft::{NodeHandle, Role};
use crate::state::{Command, Outcome};
pub use requests::Audited;

/// Records requests and their outcomes.
pub struct Auditor {
    node: NodeHandle,
    transport: Arc<Transport>,
    write_timeout: Duration,
}

/// A request recorded as pending; [`Ticket::finish`] records its outcome.
#[must_use = "a recorded request needs its outcome"]
pub struct Ticket<'a> {
    auditor: &'a Auditor,
    id: u64,
}

impl Auditor {
    pub fn new(node: NodeHandle, transport: Arc<Transport>, write_timeout: Duration) -> Self {
        Auditor { node, transport, write_timeout }
    }

    /// Records `req` as about to run on this node. An error means it could
    /// not be recorded, and so must not run.
    pub async fn begin<T: Audited>(&self, req: &Request<T>) -> Result<Ticket<'_>, Status> {
        let entry = self.entry(req, AuditOutcome::Pending);
        match self.record(Command::Audit { entry: Box::new(entry) }).await {
            Ok(Outcome::Recorded { id }) => Ok(Ticket { auditor: self, id }),
            Ok(other) => Err(Status::internal(format!("recording the request in the audit trail: unexpected outcome {other:?}"))),
            Err(e) => {
                Err(Status::new(e.code(), format!("the request was not run: it could not be recorded in the audit trail: {}", e.message())))
            }
        }
    }

    /// Records `req` as refused before it could run (a malformed request
    /// refused by the node it reached); best effort, as nothing changed.
    pub async fn refused<T: Audited>(&self, req: &Request<T>, status: Status) -> Status {
        let entry = self.entry(req, refusal(&status));
        if let Err(e) = self.record(Command::Audit { entry: Box::new(entry) }).await {
            tracing::warn!(action = %T::ACTION, error = %e.message(), "a refused request could not be recorded in the audit trail");
        }
        status
    }

    fn entry<T: Audited>(&self, req: &Request<T>, outcome: AuditOutcome) -> AuditEntry {
        let me = self.node.status().id;
        let (caller, role) = match principal(req) {
            Principal::Identity(id) => (id.uri(), id.role.as_str().to_string()),
            Principal::Insecure => ("insecure".to_string(), String::new()),
        };
        let r = req.get_ref();
        let now = wall_now_ms();
        AuditEntry {
            id: 0,
            at: now,
            finished_at: if outcome.is_pending() { 0 } else { now },
            caller,
            role,
            via: req.extensions().get::<ForwardedBy>().map(|f| f.0).unwrap_or(me),
            ran_on: me,
            action: T::ACTION,
            cluster: r.cluster().to_string(),
            request: redact(r.fields().into_iter().map(|(k, v)| (k.to_string(), v))),
            outcome,
        }
    }

    /// Proposes an audit command here when leading, else through the leader.
    async fn record(&self, cmd: Command) -> Result<Outcome, Status> {
        if self.node.status().role == Role::Leader {
            match self.node.propose(cmd.clone(), self.write_timeout).await {
                Ok(outcome) => return Ok(outcome),
                // Leadership moved meanwhile: the new leader records it.
                Err(crate::raft::ProposeError::NotLeader { .. } | crate::raft::ProposeError::LeadershipLost) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let command_json = serde_json::to_string(&cmd).map_err(|e| Status::internal(e.to_string()))?;
        let req = Request::new(RecordAuditRequest { command_json });
        let answer = on_leader(&self.node, &self.transport, &req, self.write_timeout, |mut c, r| async move { c.record_audit(r).await })
            .await?
            .ok_or_else(|| Status::unavailable("this node became the leader while recording; retry"))?;
        Ok(Outcome::Recorded { id: answer.into_inner().id })
    }

    /// `RecordAudit` on the leader: only audit commands are accepted.
    pub async fn record_for_peer(&self, command_json: &str) -> Result<u64, Status> {
        let cmd: Command =
            serde_json::from_str(command_json).map_err(|e| Status::invalid_argument(format!("command_json: not a command: {e}")))?;
        let id = match &cmd {
            Command::Audit { .. } => 0,
            Command::AuditOutcome { id, .. } => *id,
            _ => return Err(Status::invalid_argument("command_json: only audit and audit_outcome commands are recorded here")),
        };
        match self.node.propose(cmd, self.write_timeout).await? {
            Outcome::Recorded { id } => Ok(id),
            Outcome::Done => Ok(id),
            Outcome::Refused { reason } => Err(Status::failed_precondition(reason)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// Closes an entry whose runner is gone (see [`trail`]).
    pub(crate) async fn close(&self, id: u64, outcome: AuditOutcome) -> Result<(), Status> {
        self.record(Command::AuditOutcome { id, outcome, at: wall_now_ms() }).await.map(|_| ())
    }
}

impl Ticket<'_> {
    /// Records what came of the request, and hands its result back. Best
    /// effort: an outcome that cannot be recorded leaves the entry pending
    /// until the next leader closes it as unknown.
    pub async fn finish<R>(self, result: Result<R, Status>, detail: impl FnOnce(&R) -> String) -> Result<R, Status> {
        let outcome = match &result {
            Ok(r) => AuditOutcome::Done { detail: detail(r) },
            Err(status) => refusal(status),
        };
        if let Err(e) = self.auditor.close(self.id, outcome).await {
            tracing::warn!(audit = self.id, error = %e.message(), "the outcome of a request could not be recorded in the audit trail");
        }
        result
    }
}

fn refusal(status: &Status) -> AuditOutcome {
    AuditOutcome::Refused { code: format!("{:?}", status.code()), reason: status.message().to_string() }
}
