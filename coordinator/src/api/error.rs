//! The one mapping from coordinator errors to gRPC status codes.
//!
//! Clients (drctl, scripts) rely on the codes: `UNAVAILABLE` means "nothing
//! was done, try again or elsewhere", `INVALID_ARGUMENT` means "fix the
//! request", `FAILED_PRECONDITION` means "not now".

use tonic::Status;

use crate::raft::ProposeError;
use drc_model::topology::parse::InvalidTopology;

impl From<ProposeError> for Status {
    fn from(e: ProposeError) -> Status {
        match e {
            ProposeError::NotLeader { .. } | ProposeError::LeadershipLost | ProposeError::ShuttingDown => {
                Status::unavailable(e.to_string())
            }
            ProposeError::NoQuorum(_) => Status::unavailable(e.to_string()),
            ProposeError::ChangeInProgress => Status::failed_precondition(e.to_string()),
            ProposeError::Rejected(_) => Status::invalid_argument(e.to_string()),
            ProposeError::Storage(_) => Status::internal(e.to_string()),
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
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match e {
            ApiError::Propose(e) => e.into(),
            ApiError::InvalidTopology(e) => Status::invalid_argument(e.to_string()),
        }
    }
}
