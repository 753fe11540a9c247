//! The AgentService: one long-lived bidirectional stream per database agent.
//!
//! The stream contract is fixed now (first message a Hello; followers answer
//! with a Redirect to the leader). Sample handling — the leader's soft state of
//! member health and lag — arrives with the agents feature; until then the
//! leader refuses the stream with `UNIMPLEMENTED` and a message saying so,
//! rather than silently swallowing samples.

use std::pin::Pin;
use std::sync::Arc;

use drc_proto::agent_service_server::AgentService;
use drc_proto::{coordinator_message, AgentMessage, CoordinatorMessage, Redirect};
use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::raft::transport::Transport;
use crate::raft::{NodeHandle, Role};

pub struct AgentApi {
    node: NodeHandle,
    transport: Arc<Transport>,
}

impl AgentApi {
    pub fn new(node: NodeHandle, transport: Arc<Transport>) -> Self {
        AgentApi { node, transport }
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    type SessionStream = Outbound;

    async fn session(&self, req: Request<Streaming<AgentMessage>>) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = req.into_inner();
        let hello = match inbound.next().await {
            Some(Ok(AgentMessage { body: Some(drc_proto::agent_message::Body::Hello(h)) })) => h,
            Some(Ok(_)) => return Err(Status::invalid_argument("the first message on an agent stream must be a Hello")),
            Some(Err(e)) => return Err(e),
            None => return Err(Status::invalid_argument("agent stream closed before its Hello")),
        };
        if hello.member_id.is_empty() {
            return Err(Status::invalid_argument("hello.member_id: must not be empty"));
        }
        let s = self.node.status();
        if s.role != Role::Leader {
            let redirect = Redirect { leader_id: s.leader_id, leader_address: self.transport.address_of(s.leader_id).unwrap_or_default() };
            let msg = CoordinatorMessage { body: Some(coordinator_message::Body::Redirect(redirect)) };
            return Ok(Response::new(Box::pin(tokio_stream::once(Ok(msg)))));
        }
        Err(Status::unimplemented(format!("agent streams are not served by this coordinator version yet (member {})", hello.member_id)))
    }
}
