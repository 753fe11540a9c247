//! The AgentService: one long-lived bidirectional stream per database agent.
//!
//! Contract: the first message is a Hello naming a member declared in the
//! topology. A follower answers with a Redirect to the leader and closes. The
//! leader keeps the stream: samples go into its sample board (soft state,
//! never Raft); the cluster's current primary goes down as a ClusterView so
//! that agents cross-probe it. A malformed message ends that one stream with
//! `INVALID_ARGUMENT`; nothing else is affected. A member whose dataset
//! (system identifier / replication id) differs from its cluster's is refused
//! with `FAILED_PRECONDITION`. An agent that has seen a newer generation of
//! the coordinator group than this node's is answered `UNAVAILABLE`: this
//! node was left out of a `drc-coordinator recover`, and the agent goes on
//! to another coordinator.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use drc_proto::agent_service_server::AgentService;
use drc_proto::{agent_message, coordinator_message, AgentHello, AgentMessage, ClusterView, CoordinatorMessage, Redirect, Sample};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::agents::Agents;
use crate::auth::{principal, Principal};
use crate::raft::transport::Transport;
use crate::raft::{NodeHandle, Role};
use drc_model::topology::Topology;

pub struct AgentApi {
    node: NodeHandle,
    transport: Arc<Transport>,
    agents: Arc<Agents>,
}

impl AgentApi {
    pub fn new(node: NodeHandle, transport: Arc<Transport>, agents: Arc<Agents>) -> Self {
        AgentApi { node, transport, agents }
    }

    fn redirect(&self) -> CoordinatorMessage {
        let s = self.node.status();
        let leader_address = self.transport.address_of(s.leader_id).unwrap_or_default();
        CoordinatorMessage { body: Some(coordinator_message::Body::Redirect(Redirect { leader_id: s.leader_id, leader_address })) }
    }
}

/// How long a new stream may take to send its Hello: a stream that sends
/// nothing holds a slot and a task for nothing.
const HELLO_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a Hello to a follower waits for an election to name a leader.
const ELECTION_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

type Outbound = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[allow(clippy::result_large_err)]
fn check_hello(h: &AgentHello, t: &Topology) -> Result<(), Status> {
    if h.command_protocol != drc_proto::COMMAND_PROTOCOL {
        return Err(Status::failed_precondition(format!(
            "the agent of {:?} (version {:?}) speaks command protocol {}, this coordinator {}: run agents and coordinators of one release",
            h.member_id,
            h.agent_version,
            h.command_protocol,
            drc_proto::COMMAND_PROTOCOL
        )));
    }
    let Some(m) = t.members.get(&h.member_id) else {
        return Err(Status::not_found(format!("member {:?} is not declared in the topology", h.member_id)));
    };
    if m.cluster != h.cluster {
        return Err(Status::failed_precondition(format!(
            "member {:?} belongs to cluster {:?}, not {:?}",
            h.member_id, m.cluster, h.cluster
        )));
    }
    let kind = t.clusters.get(&m.cluster).map(|c| c.kind.as_str()).unwrap_or_default();
    if kind != h.kind {
        return Err(Status::failed_precondition(format!(
            "cluster {:?} is {kind}, but the agent of {:?} probes {:?}",
            m.cluster, h.member_id, h.kind
        )));
    }
    if m.region != h.region {
        return Err(Status::failed_precondition(format!(
            "member {:?} is declared in region {:?}, but its agent says {:?}",
            h.member_id, m.region, h.region
        )));
    }
    Ok(())
}

/// An agent that has seen a newer generation of the coordinator group than
/// this node's was served by a group `drc-coordinator recover` made without
/// this node: this one is left behind, and must not lead it. UNAVAILABLE,
/// so that the agent goes on to another coordinator.
#[allow(clippy::result_large_err)]
fn check_generation(h: &AgentHello, own: u64) -> Result<(), Status> {
    if h.generation <= own {
        return Ok(());
    }
    tracing::error!(
        member = %h.member_id,
        seen = h.generation,
        own,
        "an agent has seen a newer generation of the coordinator group: this node was left out of a recovery; wipe its data dir (runbooks/coordinator-quorum-lost.md)"
    );
    Err(Status::unavailable(format!(
        "this coordinator belongs to generation {own} of the group, and the agent of {:?} has seen generation {}: this node was left behind by `drc-coordinator recover`",
        h.member_id, h.generation
    )))
}

/// An agent speaks only for the member its certificate names.
#[allow(clippy::result_large_err)]
fn check_caller(h: &AgentHello, caller: &Principal) -> Result<(), Status> {
    match caller.identity() {
        Some(id) if id.name != h.member_id => {
            Err(Status::permission_denied(format!("{id} may open a session only as member {:?}, not as {:?}", id.name, h.member_id)))
        }
        _ => Ok(()),
    }
}

#[allow(clippy::result_large_err)]
fn check_sample(s: &Sample, hello: &AgentHello) -> Result<(), Status> {
    if s.member_id != hello.member_id {
        return Err(Status::invalid_argument(format!("sample for member {:?} on the stream of member {:?}", s.member_id, hello.member_id)));
    }
    if let Err(e) = s.role.parse::<drc_model::Role>() {
        return Err(Status::invalid_argument(format!("sample.role: {e}")));
    }
    Ok(())
}

impl AgentApi {
    #[allow(clippy::result_large_err)]
    fn check_dataset(&self, cluster: &str, member: &str, dataset: &str, previous: &str) -> Result<(), Status> {
        if dataset.is_empty() {
            return Ok(());
        }
        let foreign = |theirs: &str, source: String| {
            Err(Status::failed_precondition(format!(
                "member {member:?} holds dataset {dataset} but cluster {cluster:?} holds {theirs} ({source}): this agent points at a member of another cluster"
            )))
        };
        // The recorded dataset and its lineage once there is one (a Redis
        // promotion starts a new replication id); before, the other members.
        let recorded = self.node.store().with_state(|sm| sm.records.get(cluster).filter(|r| !r.dataset.is_empty()).cloned());
        if let Some(rec) = recorded {
            // Or the id the recorded primary reports now, derived from the
            // recorded one, before the record has caught up with it.
            let primary_now = self.agents.board.dataset_reported(cluster, &rec.primary);
            let moved_on = primary_now.is_some_and(|(now, before)| now == dataset && !before.is_empty() && rec.holds(&before, ""));
            return if moved_on || rec.holds(dataset, previous) { Ok(()) } else { foreign(&rec.dataset, "as recorded".into()) };
        }
        match self.agents.board.dataset_of(cluster, member) {
            Some((other, (theirs, their_previous)))
                if theirs != dataset && their_previous != dataset && (previous.is_empty() || previous != theirs) =>
            {
                foreign(&theirs, format!("as member {other:?} reports"))
            }
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    type SessionStream = Outbound;

    async fn session(&self, req: Request<Streaming<AgentMessage>>) -> Result<Response<Self::SessionStream>, Status> {
        let caller = principal(&req);
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_WAIT, inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded(format!("no Hello within {HELLO_WAIT:?} of opening the stream")))?;
        let hello = match first {
            Some(Ok(AgentMessage { body: Some(agent_message::Body::Hello(h)) })) => h,
            Some(Ok(_)) => return Err(Status::invalid_argument("the first message on an agent stream must be a Hello")),
            Some(Err(e)) => return Err(e),
            None => return Err(Status::invalid_argument("agent stream closed before its Hello")),
        };
        if hello.member_id.is_empty() {
            return Err(Status::invalid_argument("hello.member_id: must not be empty"));
        }
        check_caller(&hello, &caller)?;
        check_generation(&hello, self.node.store().with_state(|sm| sm.generation))?;
        if self.node.status().role != Role::Leader {
            // During an election nobody knows the leader yet. An agent told
            // so would back off and retry, and arrive at the new leader up to
            // seconds after it was elected; instead the answer waits for the
            // election (bounded), and this node may turn out to be the leader.
            let mut status = self.node.watch_status();
            let _ = tokio::time::timeout(ELECTION_WAIT, status.wait_for(|s| s.leader_id != 0)).await;
            if self.node.status().role != Role::Leader {
                return Ok(Response::new(Box::pin(tokio_stream::once(Ok(self.redirect())))));
            }
        }
        self.node.store().with_state(|sm| check_hello(&hello, &sm.topology))?;
        self.check_dataset(&hello.cluster, &hello.member_id, &hello.dataset_id, &hello.previous_dataset_id)?;

        let (tx, rx) = mpsc::channel::<Result<CoordinatorMessage, Status>>(64);
        let session = self.agents.hub.connect(&hello.member_id, &hello.cluster, tx.clone());
        tracing::info!(member = %hello.member_id, cluster = %hello.cluster, region = %hello.region, session, "agent connected");
        let this = AgentApi { node: self.node.clone(), transport: Arc::clone(&self.transport), agents: Arc::clone(&self.agents) };
        tokio::spawn(async move {
            let reason = this.serve(&hello, session, &mut inbound, &tx).await;
            this.agents.hub.disconnect(&hello.member_id, &hello.cluster, session);
            match reason {
                Ok(why) => tracing::info!(member = %hello.member_id, session, "agent stream ended: {why}"),
                Err(status) => {
                    tracing::warn!(member = %hello.member_id, session, error = %status.message(), "agent stream refused");
                    let _ = tx.send(Err(status)).await;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

impl AgentApi {
    /// Serves one stream until it ends; `Err` ends it with that status.
    async fn serve(
        &self,
        hello: &AgentHello,
        session: u64,
        inbound: &mut Streaming<AgentMessage>,
        tx: &mpsc::Sender<Result<CoordinatorMessage, Status>>,
    ) -> Result<&'static str, Status> {
        let mut views = self.agents.health.view_of(&hello.cluster);
        let mut role = self.node.watch_role();
        // Looked at once at the start: leadership may have moved since the
        // Hello was accepted.
        role.mark_changed();
        let mut sent_view = None;
        let mut checked = (hello.dataset_id.clone(), hello.previous_dataset_id.clone());
        // Changed only by `drc-coordinator recover`, with this node stopped.
        let generation = self.node.store().with_state(|sm| sm.generation);
        loop {
            let view = views.borrow_and_update().clone();
            if view.is_some() && view != sent_view {
                let full = ClusterView { generation, ..view.clone().unwrap_or_default() };
                let msg = CoordinatorMessage { body: Some(coordinator_message::Body::View(full)) };
                if tx.send(Ok(msg)).await.is_err() {
                    return Ok("agent went away");
                }
                sent_view = view;
            }
            tokio::select! {
                msg = inbound.next() => match msg {
                    Some(Ok(AgentMessage { body: Some(agent_message::Body::Sample(s)) })) => {
                        check_sample(&s, hello)?;
                        // Checked when it changes, not on every sample.
                        if (&s.dataset_id, &s.previous_dataset_id) != (&checked.0, &checked.1) {
                            self.check_dataset(&hello.cluster, &hello.member_id, &s.dataset_id, &s.previous_dataset_id)?;
                            checked = (s.dataset_id.clone(), s.previous_dataset_id.clone());
                        }
                        if !self.agents.hub.is_current(&hello.member_id, session) {
                            return Ok("replaced by a newer stream of the same member");
                        }
                        self.agents.board.ingest(&hello.cluster, s, Instant::now());
                    }
                    Some(Ok(AgentMessage { body: Some(agent_message::Body::Result(r)) })) => {
                        self.agents.hub.complete(&hello.member_id, session, r);
                    }
                    Some(Ok(AgentMessage { body: Some(agent_message::Body::Progress(p)) })) => {
                        self.agents.hub.progress(&hello.cluster, &hello.member_id, session, p);
                    }
                    Some(Ok(AgentMessage { body: Some(agent_message::Body::Hello(_)) })) => {
                        return Err(Status::invalid_argument("a second Hello on an open stream"));
                    }
                    Some(Ok(AgentMessage { body: None })) => return Err(Status::invalid_argument("an empty message")),
                    Some(Err(e)) => return Err(Status::invalid_argument(format!("undecodable message: {}", e.message()))),
                    None => return Ok("agent closed the stream"),
                },
                _ = views.changed() => {}
                changed = role.changed() => {
                    if changed.is_err() {
                        return Ok("coordinator shutting down");
                    }
                    if *role.borrow_and_update() != Role::Leader {
                        let _ = tx.send(Ok(self.redirect())).await;
                        return Ok("this coordinator is no longer the leader");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use drc_model::topology::parse::parse_topology;
    use tonic::Code;

    use super::*;

    #[test]
    fn a_hello_must_name_its_member_truthfully_and_speak_this_releases_commands() {
        let t = parse_topology("[regions.a]\n[clusters.c]\nkind='redis'\n[[members]]\nid='m'\ncluster='c'\nregion='a'\naddress='h:1'\n")
            .expect("valid");
        let hello = AgentHello {
            member_id: "m".into(),
            cluster: "c".into(),
            region: "a".into(),
            kind: "redis".into(),
            command_protocol: drc_proto::COMMAND_PROTOCOL,
            ..Default::default()
        };
        assert!(check_hello(&hello, &t).is_ok());
        let older = check_hello(&AgentHello { command_protocol: 0, ..hello.clone() }, &t).expect_err("an older agent");
        assert_eq!(older.code(), Code::FailedPrecondition);
        assert!(older.message().contains("command protocol 0"), "{}", older.message());
        assert_eq!(check_hello(&AgentHello { member_id: "x".into(), ..hello.clone() }, &t).expect_err("undeclared").code(), Code::NotFound);
        assert_eq!(
            check_hello(&AgentHello { region: "b".into(), ..hello }, &t).expect_err("wrong region").code(),
            Code::FailedPrecondition
        );
    }

    #[test]
    fn an_agent_that_has_seen_a_newer_generation_is_sent_on_to_another_coordinator() {
        let hello = AgentHello { member_id: "m".into(), generation: 2, ..Default::default() };
        assert!(check_generation(&hello, 2).is_ok());
        assert!(check_generation(&hello, 3).is_ok(), "an agent that has not seen the newest yet");
        let left_behind = check_generation(&hello, 1).expect_err("a node left out of a recovery");
        assert_eq!(left_behind.code(), Code::Unavailable, "retryable elsewhere, not a refusal of the agent");
        assert!(left_behind.message().contains("generation 1") && left_behind.message().contains("recover"), "{}", left_behind.message());
    }
}
