//! The one mapping from coordinator errors to gRPC status codes: every
//! error type a request can end with converts to a `Status` here.
//!
//! Clients (drctl, scripts) rely on the codes: `UNAVAILABLE` means "nothing
//! was done, try again or elsewhere", `DEADLINE_EXCEEDED` "not committed in
//! time, may still be", `NOT_FOUND` "no such thing", `INVALID_ARGUMENT`
//! "fix the request", `FAILED_PRECONDITION` "not now".

use tonic::Status;

use crate::core::Refusal;
use crate::executor::RequestError;
use crate::jobs::JobError;
use crate::raft::ProposeError;
use drc_model::topology::parse::InvalidTopology;

impl From<ProposeError> for Status {
    fn from(e: ProposeError) -> Status {
        match e {
            ProposeError::NotLeader { .. } | ProposeError::LeadershipLost | ProposeError::ShuttingDown => {
                Status::unavailable(e.to_string())
            }
            // The write may still commit if the coordinators come back: not
            // "nothing was done", so not UNAVAILABLE.
            ProposeError::NoQuorum(_) => Status::deadline_exceeded(e.to_string()),
            ProposeError::ChangeInProgress => Status::failed_precondition(e.to_string()),
            ProposeError::Rejected(_) => Status::invalid_argument(e.to_string()),
            ProposeError::Storage(_) => Status::internal(e.to_string()),
        }
    }
}

impl From<JobError> for Status {
    fn from(e: JobError) -> Status {
        match e {
            JobError::UnknownCluster(_) | JobError::UnknownDestination(_) | JobError::UnknownBackup(_) | JobError::UnknownMember(_) => {
                Status::not_found(e.to_string())
            }
            JobError::OtherCluster { .. } | JobError::BadRestore(_) => Status::invalid_argument(e.to_string()),
            JobError::NoDestinations(_)
            | JobError::NoBackupYet(_)
            | JobError::NotDone { .. }
            | JobError::NoSource { .. }
            | JobError::NoRestorer { .. }
            | JobError::Busy { .. }
            | JobError::AgentDown(_)
            | JobError::NoBaseBefore { .. }
            | JobError::NoArchive { .. }
            | JobError::BeyondArchive { .. }
            | JobError::Refused(_) => Status::failed_precondition(e.to_string()),
            JobError::Propose(e) => e.into(),
        }
    }
}

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Status {
        match e {
            RequestError::NotLeader | RequestError::ShuttingDown => Status::unavailable(e.to_string()),
            RequestError::Refused(Refusal::UnknownCluster(_)) => Status::not_found(e.to_string()),
            RequestError::Refused(Refusal::Invalid(_)) => Status::invalid_argument(e.to_string()),
            RequestError::Refused(Refusal::NotNow(_)) | RequestError::Stale(_) => Status::failed_precondition(e.to_string()),
            RequestError::Propose(e) => e.into(),
        }
    }
}

/// What an AdminService request can fail with, before it becomes a status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Propose(#[from] ProposeError),
    #[error(transparent)]
    InvalidTopology(#[from] InvalidTopology),
    #[error(transparent)]
    Job(#[from] JobError),
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match e {
            ApiError::Propose(e) => e.into(),
            ApiError::InvalidTopology(e) => Status::invalid_argument(e.to_string()),
            ApiError::Job(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn every_error_maps_to_the_code_its_caller_acts_on() {
        let code = |s: Status| s.code();
        assert_eq!(code(RequestError::NotLeader.into()), Code::Unavailable, "not the leader: try elsewhere");
        assert_eq!(code(RequestError::ShuttingDown.into()), Code::Unavailable);
        assert_eq!(code(RequestError::Refused(Refusal::UnknownCluster("x".into())).into()), Code::NotFound);
        assert_eq!(code(RequestError::Refused(Refusal::Invalid("x".into())).into()), Code::InvalidArgument);
        assert_eq!(code(RequestError::Refused(Refusal::NotNow("x".into())).into()), Code::FailedPrecondition);
        assert_eq!(code(RequestError::Propose(ProposeError::NoQuorum("x".into())).into()), Code::DeadlineExceeded, "may commit later");
        assert_eq!(code(JobError::UnknownBackup(3).into()), Code::NotFound);
        assert_eq!(code(JobError::NoSource { cluster: "c".into(), why: "none".into() }.into()), Code::FailedPrecondition);
        assert_eq!(code(JobError::Propose(ProposeError::NotLeader { leader: None }).into()), Code::Unavailable);
    }
}
