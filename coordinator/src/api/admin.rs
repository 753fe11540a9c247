//! The AdminService: what on-call engineers and scripts use through drctl.
//!
//! Reads are served from the node asked (its applied state); writes are
//! routed to the leader (see [`crate::forward`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use drc_proto::admin_service_server::AdminService;
use drc_proto::{
    AddNodeRequest, ApplyTopologyRequest, ApplyTopologyResponse, GetTopologyRequest, GetTopologyResponse, ListNodesRequest,
    ListNodesResponse, MembershipResponse, NodeStatus as NodeStatusProto, NodeStatusRequest, RemoveNodeRequest, StatusRequest,
    StatusResponse, TopologySummary,
};
use std::time::Instant;

use drc_proto::{AuditReply, AuditRequest, RecordAuditReply, RecordAuditRequest};
use drc_proto::{
    BackupsReply, JobReply, ListJobsRequest, RecoveryTestsReply, RestoresReply, SchedulesReply, SetScheduleRequest, StartBackupRequest,
    StartRecoveryTestRequest, StartRestoreRequest,
};
use drc_proto::{
    ClearBlockRequest, ClusterHealth, DecisionReply, FailoverRegionReply, FailoverRegionRequest, FailoverRequest, HealthRequest,
    HealthResponse, HistoryReply, HistoryRequest, PauseReply, PauseRequest, SwitchoverRequest, WatchPrimaryRequest, WatchRequest,
};
use drc_proto::{TransferLeadershipReply, TransferLeadershipRequest};

use crate::core::Request as FailoverAsk;
use crate::executor::Executor;
use tonic::{Request, Response, Status};

use crate::agents::Agents;
use crate::audit::Auditor;

use super::error::ApiError;
use super::watch::{WatchPrimaryStream, WatchStream, Watches};
use crate::forward::{admin_client, forwarded_copy, mark_forwarded, on_leader, route, Route};
use crate::raft::transport::Transport;
use crate::raft::{MembershipChange, NodeHandle, NodeStatus, ProposeError, Role};
use crate::state::{Command, NodeAddress, Outcome};
use drc_model::topology::{diff::diff, parse::parse_topology, parse::valid_address, render::to_toml};

/// How long `Status` waits for each other node.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(800);

pub struct AdminApi {
    pub(super) node: NodeHandle,
    pub(super) transport: Arc<Transport>,
    pub(super) agents: Arc<Agents>,
    pub(super) write_timeout: Duration,
    pub(super) executor: Arc<Executor>,
    pub(super) jobs: Arc<crate::jobs::Jobs>,
    watches: Watches,
    pub(super) audit: Arc<Auditor>,
}

impl AdminApi {
    pub fn new(
        node: NodeHandle,
        transport: Arc<Transport>,
        agents: Arc<Agents>,
        write_timeout: Duration,
        executor: Arc<Executor>,
        jobs: Arc<crate::jobs::Jobs>,
    ) -> Self {
        let audit = Arc::new(Auditor::new(node.clone(), Arc::clone(&transport), write_timeout));
        let watches = Watches::new(node.clone(), Arc::clone(&transport), Arc::clone(&agents.events), write_timeout);
        AdminApi { node, transport, agents, write_timeout, executor, jobs, watches, audit }
    }

    /// The auditor, which the trail follower shares.
    pub fn auditor(&self) -> Arc<Auditor> {
        Arc::clone(&self.audit)
    }

    /// Health of the clusters, with why each is (not) failing over.
    fn local_clusters(
        &self,
        topology: &drc_model::topology::Topology,
        records: &std::collections::BTreeMap<String, drc_model::ClusterRecord>,
        only: Option<&str>,
    ) -> Vec<ClusterHealth> {
        let mut clusters = self.agents.health.clusters(topology, records, only, Instant::now());
        for c in &mut clusters {
            c.failover_state = self.executor.wait_reason(&c.name);
            if let Some(a) = c.wal_archive.as_mut() {
                a.gaps = self.node.store().with_state(|sm| {
                    sm.wal_archives.get(&drc_model::archive::WalArchive::catalog_key(&a.destination, &a.key)).map(gaps).unwrap_or_default()
                });
            }
        }
        clusters
    }

    async fn decide(&self, ask: FailoverAsk) -> Result<Response<DecisionReply>, Status> {
        match self.executor.request(ask).await {
            Ok(d) => Ok(Response::new(reply_of(d))),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves every primary out of a region (`FailoverRegion` on the leader).
    async fn move_region(&self, r: FailoverRegionRequest) -> Result<Response<FailoverRegionReply>, Status> {
        let (topology, records) = self.node.store().with_state(|sm| (sm.topology.clone(), sm.records.clone()));
        check_region_move(&topology, &r)?;
        let region_of = |m: &str| topology.members.get(m).map(|m| m.region.clone()).unwrap_or_default();
        let mut reply = FailoverRegionReply::default();
        // Clusters of one failover group follow the first one's region.
        let mut landed: BTreeMap<String, String> = BTreeMap::new();
        for (name, rec) in records.iter() {
            if region_of(&rec.primary) != r.from {
                continue;
            }
            let group = topology.failover_groups.iter().find(|(_, g)| g.clusters.contains(name)).map(|(g, _)| g.clone());
            let prefer = group.as_ref().and_then(|g| landed.get(g).cloned());
            let ask = FailoverAsk::Evacuate {
                cluster: name.clone(),
                from: r.from.clone(),
                to: (!r.to.is_empty()).then(|| r.to.clone()),
                prefer,
                force: r.force,
            };
            match self.executor.request(ask).await {
                Ok(d) => {
                    if let Some(g) = group {
                        landed.entry(g).or_insert_with(|| region_of(&d.to));
                    }
                    reply.decisions.push(reply_of(d));
                }
                Err(e) => reply.refused.push(format!("{name}: {e}")),
            }
        }
        if reply.decisions.is_empty() && reply.refused.is_empty() {
            return Err(Status::failed_precondition(format!("no cluster has its primary in region {:?}", r.from)));
        }
        Ok(Response::new(reply))
    }

    /// Applies a parsed topology (`ApplyTopology` on the leader).
    async fn apply(&self, topology: drc_model::topology::Topology, dry_run: bool) -> Result<Response<ApplyTopologyResponse>, Status> {
        let current = self.node.store().with_state(|sm| sm.topology.clone());
        let changes = diff(&current, &topology);
        let version = self.node.store().with_state(|sm| sm.topology_version);
        if dry_run || changes.is_empty() {
            return Ok(Response::new(ApplyTopologyResponse { applied: false, diff: changes, version, raft_index: 0 }));
        }
        match self.propose(Command::ApplyTopology { topology }).await? {
            Outcome::Topology { version } => {
                tracing::info!(version, changes = changes.len(), "topology applied");
                let raft_index = self.node.status().applied_index;
                Ok(Response::new(ApplyTopologyResponse { applied: true, diff: changes, version, raft_index }))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// Hands leadership to node `to` and waits until it leads.
    async fn transfer(&self, to: u64) -> Result<Response<TransferLeadershipReply>, Status> {
        let me = self.node.status();
        if to != me.id {
            self.node.transfer_leader(to).await;
        }
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        let mut watch = self.node.watch_status();
        loop {
            let s = watch.borrow_and_update().clone();
            if s.leader_id == to {
                return Ok(Response::new(TransferLeadershipReply { leader_id: to, term: s.term }));
            }
            if tokio::time::timeout_at(deadline, watch.changed()).await.is_err() {
                return Err(Status::unavailable(format!(
                    "leadership did not move to node {to} within {}; node {} leads (a node that is behind or unreachable cannot take over)",
                    humantime::format_duration(self.write_timeout),
                    s.leader_id
                )));
            }
        }
    }

    pub(super) async fn propose_command(&self, cmd: Command, done: String) -> Result<Response<PauseReply>, Status> {
        match self.propose(cmd).await? {
            Outcome::Refused { reason } => Err(Status::not_found(reason)),
            _ => Ok(Response::new(PauseReply { message: done })),
        }
    }

    /// Member health from the leader: locally when leading, else asked of
    /// the leader with a short timeout; empty when there is no leader.
    pub async fn leader_health(&self) -> Vec<ClusterHealth> {
        let s = self.node.status();
        if s.role == Role::Leader {
            let (topology, records) = self.node.store().with_state(|sm| (sm.topology.clone(), sm.records.clone()));
            return self.local_clusters(&topology, &records, None);
        }
        let Some(address) = self.transport.address_of(s.leader_id).filter(|_| s.leader_id != 0) else { return Vec::new() };
        let Ok(mut client) = admin_client(self.transport.security(), &address, PEER_STATUS_TIMEOUT) else { return Vec::new() };
        match tokio::time::timeout(PEER_STATUS_TIMEOUT, client.health(mark_forwarded(Request::new(HealthRequest::default())))).await {
            Ok(Ok(r)) => r.into_inner().clusters,
            _ => Vec::new(),
        }
    }

    fn local_status(&self) -> NodeStatusProto {
        let s = self.node.status();
        let address = self.transport.address_of(s.id).unwrap_or_default();
        NodeStatusProto { renews_leases: self.node.may_renew(), insecure: self.transport.security().is_insecure(), ..to_proto(&s, address) }
    }

    /// Every node of the membership, each asked directly and concurrently.
    async fn all_statuses(&self) -> Vec<NodeStatusProto> {
        let me = self.node.status();
        let mut ids: Vec<u64> = me.voters.iter().chain(me.learners.iter()).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        if !ids.contains(&me.id) {
            ids.push(me.id);
        }
        let asks = ids.into_iter().map(|id| async move {
            if id == me.id {
                return self.local_status();
            }
            let address = self.transport.address_of(id).unwrap_or_default();
            let unreachable = |error: String| NodeStatusProto {
                id,
                address: address.clone(),
                role: "unknown".into(),
                reachable: false,
                error,
                ..Default::default()
            };
            let mut client = match admin_client(self.transport.security(), &address, PEER_STATUS_TIMEOUT) {
                Ok(c) => c,
                Err(e) => return unreachable(e.message().to_string()),
            };
            match tokio::time::timeout(PEER_STATUS_TIMEOUT, client.node_status(NodeStatusRequest {})).await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(e)) => unreachable(e.message().to_string()),
                Err(_) => unreachable(format!("no answer within {}", humantime::format_duration(PEER_STATUS_TIMEOUT))),
            }
        });
        futures::future::join_all(asks).await
    }

    async fn propose(&self, cmd: Command) -> Result<Outcome, Status> {
        let r = self.node.propose(cmd, self.write_timeout).await;
        r.map_err(|e| self.explain(e))
    }

    /// Turns a lost leadership into "no quorum" when no new leader exists.
    fn explain(&self, e: ProposeError) -> Status {
        match e {
            ProposeError::LeadershipLost if self.node.status().leader_id == 0 => Status::unavailable(
                "no quorum: this coordinator lost its leadership before the write committed (a majority of coordinators is unreachable); the write was not acknowledged",
            ),
            e => e.into(),
        }
    }
}

fn to_proto(s: &NodeStatus, address: String) -> NodeStatusProto {
    NodeStatusProto {
        id: s.id,
        address,
        role: s.role.as_str().to_string(),
        term: s.term,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        leader_id: s.leader_id,
        reachable: true,
        error: String::new(),
        first_index: s.first_index,
        last_index: s.last_index,
        membership: if s.learners.contains(&s.id) { "learner" } else { "voter" }.to_string(),
        renews_leases: false,
        insecure: false,
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn failover(&self, req: Request<FailoverRequest>) -> Result<Response<DecisionReply>, Status> {
        if let Some(answer) =
            on_leader(&self.node, &self.transport, &req, self.write_timeout, |mut c, r| async move { c.failover(r).await }).await?
        {
            return Ok(answer);
        }
        let ticket = self.audit.begin(&req).await?;
        let r = req.into_inner();
        let to = (!r.to.is_empty()).then_some(r.to);
        ticket.finish(self.decide(FailoverAsk::Failover { cluster: r.cluster, to, force: r.force }).await, decided).await
    }

    async fn switchover(&self, req: Request<SwitchoverRequest>) -> Result<Response<DecisionReply>, Status> {
        if let Some(answer) =
            on_leader(&self.node, &self.transport, &req, self.write_timeout, |mut c, r| async move { c.switchover(r).await }).await?
        {
            return Ok(answer);
        }
        let ticket = self.audit.begin(&req).await?;
        let r = req.into_inner();
        let to = (!r.to.is_empty()).then_some(r.to);
        ticket.finish(self.decide(FailoverAsk::Switchover { cluster: r.cluster, to }).await, decided).await
    }

    async fn failover_region(&self, req: Request<FailoverRegionRequest>) -> Result<Response<FailoverRegionReply>, Status> {
        if let Some(answer) =
            on_leader(&self.node, &self.transport, &req, self.write_timeout, |mut c, r| async move { c.failover_region(r).await }).await?
        {
            return Ok(answer);
        }
        let ticket = self.audit.begin(&req).await?;
        let moved = self.move_region(req.into_inner()).await;
        ticket
            .finish(moved, |r| {
                let r = r.get_ref();
                let ids: Vec<String> = r.decisions.iter().map(|d| format!("{}: decision {}", d.cluster, d.decision_id)).collect();
                format!("decided [{}]; refused [{}]", ids.join(", "), r.refused.join("; "))
            })
            .await
    }

    async fn pause(&self, req: Request<PauseRequest>) -> Result<Response<PauseReply>, Status> {
        if let Some(answer) =
            on_leader(&self.node, &self.transport, &req, self.write_timeout, |mut c, r| async move { c.pause(r).await }).await?
        {
            return Ok(answer);
        }
        let ticket = self.audit.begin(&req).await?;
        let r = req.into_inner();
        let what = if r.paused { "paused" } else { "resumed" };
        let (cluster, done) = if r.cluster.is_empty() {
            (None, format!("automatic failover {what} for every cluster"))
        } else {
            (Some(r.cluster.clone()), format!("automatic failover {what} for {}", r.cluster))
        };
        ticket.finish(self.propose_command(Command::Pause { cluster, paused: r.paused }, done).await, said).await
    }

    async fn clear_block(&self, req: Request<ClearBlockRequest>) -> Result<Response<PauseReply>, Status> {
        if let Some(answer) =
            on_leader(&self.node, &self.transport, &req, self.write_timeout, |mut c, r| async move { c.clear_block(r).await }).await?
        {
            return Ok(answer);
        }
        let ticket = self.audit.begin(&req).await?;
        let cluster = req.into_inner().cluster;
        let done = format!("anti-flap block of {cluster} cleared");
        ticket.finish(self.propose_command(Command::ClearBlock { cluster }, done).await, said).await
    }

    async fn start_backup(&self, req: Request<StartBackupRequest>) -> Result<Response<JobReply>, Status> {
        self.run_backup(req).await
    }

    async fn list_backups(&self, req: Request<ListJobsRequest>) -> Result<Response<BackupsReply>, Status> {
        self.backups(req).await
    }

    async fn start_recovery_test(&self, req: Request<StartRecoveryTestRequest>) -> Result<Response<JobReply>, Status> {
        self.run_recovery_test(req).await
    }

    async fn list_recovery_tests(&self, req: Request<ListJobsRequest>) -> Result<Response<RecoveryTestsReply>, Status> {
        self.recovery_tests(req).await
    }

    async fn start_restore(&self, req: Request<StartRestoreRequest>) -> Result<Response<JobReply>, Status> {
        self.run_restore(req).await
    }

    async fn list_restores(&self, req: Request<ListJobsRequest>) -> Result<Response<RestoresReply>, Status> {
        self.restores(req).await
    }

    async fn set_schedule(&self, req: Request<SetScheduleRequest>) -> Result<Response<PauseReply>, Status> {
        self.schedule(req).await
    }

    async fn list_schedules(&self, req: Request<ListJobsRequest>) -> Result<Response<SchedulesReply>, Status> {
        self.schedules(req).await
    }

    async fn history(&self, req: Request<HistoryRequest>) -> Result<Response<HistoryReply>, Status> {
        let only = req.into_inner().cluster;
        let decisions = self.node.store().with_state(|sm| {
            if !only.is_empty() && !sm.topology.clusters.contains_key(&only) {
                return Err(Status::not_found(format!("unknown cluster {only:?}")));
            }
            Ok(sm.history.values().rev().filter(|d| only.is_empty() || d.cluster == only).cloned().collect::<Vec<_>>())
        })?;
        let decisions_json = serde_json::to_string(&decisions).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(HistoryReply { decisions_json }))
    }

    async fn audit(&self, req: Request<AuditRequest>) -> Result<Response<AuditReply>, Status> {
        let r = req.into_inner();
        let limit = if r.limit == 0 { usize::MAX } else { r.limit as usize };
        let entries = self.node.store().with_state(|sm| {
            let wanted = |e: &&drc_model::audit::AuditEntry| e.at >= r.since_ms && (r.cluster.is_empty() || e.cluster == r.cluster);
            sm.audit.values().rev().filter(wanted).take(limit).cloned().collect::<Vec<_>>()
        });
        let entries_json = serde_json::to_string(&entries).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(AuditReply { entries_json }))
    }

    async fn record_audit(&self, req: Request<RecordAuditRequest>) -> Result<Response<RecordAuditReply>, Status> {
        if let Some(answer) =
            on_leader(&self.node, &self.transport, &req, self.write_timeout, |mut c, r| async move { c.record_audit(r).await }).await?
        {
            return Ok(answer);
        }
        let id = self.audit.record_for_peer(&req.get_ref().command_json).await?;
        Ok(Response::new(RecordAuditReply { id }))
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let nodes = self.all_statuses().await;
        let me = self.node.status();
        // Prefer the view of a node that knows a leader.
        let leader_id = if me.leader_id != 0 {
            me.leader_id
        } else {
            nodes.iter().filter(|n| n.reachable).map(|n| n.leader_id).find(|l| *l != 0).unwrap_or(0)
        };
        let (topology, generation) = self.node.store().with_state(|sm| {
            let summary = TopologySummary {
                version: sm.topology_version,
                regions: sm.topology.regions.len() as u32,
                clusters: sm.topology.clusters.len() as u32,
                members: sm.topology.members.len() as u32,
                failover_groups: sm.topology.failover_groups.len() as u32,
            };
            (summary, sm.generation)
        });
        let clusters = self.leader_health().await;
        Ok(Response::new(StatusResponse { leader_id, nodes, topology: Some(topology), answered_by: me.id, clusters, generation }))
    }

    async fn node_status(&self, _req: Request<NodeStatusRequest>) -> Result<Response<NodeStatusProto>, Status> {
        Ok(Response::new(self.local_status()))
    }

    async fn apply_topology(&self, req: Request<ApplyTopologyRequest>) -> Result<Response<ApplyTopologyResponse>, Status> {
        // Validate before anything else: a bad document is refused by any node.
        let topology = match parse_topology(&req.get_ref().topology_toml) {
            Ok(t) => t,
            Err(e) => return Err(self.audit.refused(&req, ApiError::from(e).into()).await),
        };
        if let Some(answer) =
            on_leader(&self.node, &self.transport, &req, self.write_timeout, |mut c, r| async move { c.apply_topology(r).await }).await?
        {
            return Ok(answer);
        }
        let ticket = self.audit.begin(&req).await?;
        let applied = self.apply(topology, req.get_ref().dry_run).await;
        ticket
            .finish(applied, |r| {
                let r = r.get_ref();
                let what = if r.applied { format!("version {}", r.version) } else { "nothing applied".to_string() };
                format!("{what}; {} change(s): {}", r.diff.len(), changed_keys(&r.diff))
            })
            .await
    }

    async fn get_topology(&self, _req: Request<GetTopologyRequest>) -> Result<Response<GetTopologyResponse>, Status> {
        let (topology, version) = self.node.store().with_state(|sm| (sm.topology.clone(), sm.topology_version));
        let topology_json = serde_json::to_string(topology.as_ref()).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(GetTopologyResponse {
            version,
            topology_json,
            topology_toml: to_toml(&topology),
            applied_index: self.node.status().applied_index,
        }))
    }

    async fn health(&self, req: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        if let Some(answer) =
            on_leader(&self.node, &self.transport, &req, self.write_timeout, |mut c, r| async move { c.health(r).await }).await?
        {
            return Ok(answer);
        }
        // Both shared, not copied: this may be asked many times a second.
        let only = req.get_ref().cluster.as_str();
        let (topology, records) = self.node.store().with_state(|sm| (Arc::clone(&sm.topology), Arc::clone(&sm.records)));
        if !only.is_empty() && !topology.clusters.contains_key(only) {
            return Err(Status::not_found(format!("unknown cluster {only:?}")));
        }
        let only = (!only.is_empty()).then_some(only);
        Ok(Response::new(HealthResponse { clusters: self.local_clusters(&topology, &records, only), leader_id: self.node.status().id }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        self.watches.watch_events(req).await
    }

    type WatchPrimaryStream = WatchPrimaryStream;

    async fn watch_primary(&self, req: Request<WatchPrimaryRequest>) -> Result<Response<Self::WatchPrimaryStream>, Status> {
        self.watches.watch_primary_endpoint(req).await
    }

    async fn list_nodes(&self, _req: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        Ok(Response::new(ListNodesResponse { nodes: self.all_statuses().await }))
    }

    async fn add_node(&self, req: Request<AddNodeRequest>) -> Result<Response<MembershipResponse>, Status> {
        if let Err(e) = check_add_node(req.get_ref()) {
            return Err(self.audit.refused(&req, e).await);
        }
        if let Some(answer) =
            on_leader(&self.node, &self.transport, &req, self.write_timeout, |mut c, r| async move { c.add_node(r).await }).await?
        {
            return Ok(answer);
        }
        let ticket = self.audit.begin(&req).await?;
        let r = req.into_inner();
        let address = NodeAddress { client: r.address, raft: Some(r.raft_address).filter(|a| !a.is_empty()) };
        let outcome = self.node.change_membership(MembershipChange::Add { id: r.id, address }, self.write_timeout).await;
        let answer = outcome.map_err(|e| self.explain(e)).and_then(|o| membership_response(o, self.node.status().applied_index));
        ticket.finish(answer, |r| format!("voters {:?}", r.get_ref().voters)).await
    }

    async fn transfer_leadership(&self, req: Request<TransferLeadershipRequest>) -> Result<Response<TransferLeadershipReply>, Status> {
        let to = req.get_ref().id;
        let voters = self.node.status().voters;
        if !voters.contains(&to) {
            let e = Status::invalid_argument(format!("id: node {to} is not a voter (voters: {voters:?})"));
            return Err(self.audit.refused(&req, e).await);
        }
        if let Some(answer) =
            on_leader(&self.node, &self.transport, &req, self.write_timeout, |mut c, r| async move { c.transfer_leadership(r).await })
                .await?
        {
            return Ok(answer);
        }
        let ticket = self.audit.begin(&req).await?;
        let moved = self.transfer(to).await;
        ticket.finish(moved, |r| format!("node {} leads (term {})", r.get_ref().leader_id, r.get_ref().term)).await
    }

    async fn remove_node(&self, req: Request<RemoveNodeRequest>) -> Result<Response<MembershipResponse>, Status> {
        let id = req.get_ref().id;
        if let Some(answer) =
            on_leader(&self.node, &self.transport, &req, self.write_timeout, |mut c, r| async move { c.remove_node(r).await }).await?
        {
            return Ok(answer);
        }
        let me = self.node.status();
        if id == me.id {
            // A leader does not remove itself: hand leadership to the most
            // up-to-date other voter first, then let the new leader do it.
            let Some(&to) = me.voters.iter().find(|v| **v != me.id) else {
                return Err(Status::invalid_argument("cannot remove the last voter"));
            };
            self.node.transfer_leader(to).await;
            let deadline = tokio::time::Instant::now() + self.write_timeout;
            let mut watch = self.node.watch_status();
            while watch.borrow_and_update().role == Role::Leader {
                if tokio::time::timeout_at(deadline, watch.changed()).await.is_err() {
                    return Err(Status::unavailable("could not hand over leadership before removing this node; retry"));
                }
            }
            match route(&self.node, &self.transport, false, self.write_timeout).await? {
                Route::Leader(mut client) => return client.remove_node(forwarded_copy(&req, me.id)).await,
                Route::Local => return Err(Status::unavailable("leadership came back to the node being removed; retry")),
            }
        }
        // (Removing itself, the leader hands over first; the new leader
        // records the request, as forwarded by this node.)
        let ticket = self.audit.begin(&req).await?;
        let outcome = self.node.change_membership(MembershipChange::Remove { id }, self.write_timeout).await;
        let answer = outcome.map_err(|e| self.explain(e)).and_then(|o| membership_response(o, self.node.status().applied_index));
        ticket.finish(answer, |r| format!("voters {:?}", r.get_ref().voters)).await
    }
}

fn membership_response(outcome: Outcome, raft_index: u64) -> Result<Response<MembershipResponse>, Status> {
    match outcome {
        Outcome::Membership { voters } => Ok(Response::new(MembershipResponse { voters, raft_index })),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// A topology diff for the audit trail: what changed, without the added
/// entities' full declarations, and at most 20 lines.
fn changed_keys(diff: &[String]) -> String {
    let mut lines: Vec<String> = diff
        .iter()
        .take(20)
        .map(|l| if l.starts_with("+ ") { l.splitn(3, ' ').take(2).collect::<Vec<_>>().join(" ") } else { l.clone() })
        .collect();
    if diff.len() > 20 {
        lines.push(format!("and {} more", diff.len() - 20));
    }
    lines.join("; ")
}

/// The audit detail of a decision.
fn decided(r: &Response<DecisionReply>) -> String {
    let d = r.get_ref();
    format!("decision {} (epoch {}): {} -> {}", d.decision_id, d.epoch, d.from, d.to)
}

/// The audit detail of an answer that is a sentence.
pub(super) fn said(r: &Response<PauseReply>) -> String {
    r.get_ref().message.clone()
}

fn reply_of(d: drc_model::Decision) -> DecisionReply {
    DecisionReply { decision_id: d.id, epoch: d.epoch, from: d.from, to: d.to, reason: d.reason, cluster: d.cluster }
}

/// A node to add names itself and where it listens.
#[allow(clippy::result_large_err)]
fn check_add_node(r: &AddNodeRequest) -> Result<(), Status> {
    if r.id == 0 {
        return Err(Status::invalid_argument("id: must be greater than 0"));
    }
    if !valid_address(&r.address) {
        return Err(Status::invalid_argument(format!("address: invalid address {:?}, expected host:port", r.address)));
    }
    if !r.raft_address.is_empty() && !valid_address(&r.raft_address) {
        return Err(Status::invalid_argument(format!("raft_address: invalid address {:?}, expected host:port", r.raft_address)));
    }
    Ok(())
}

/// Moving every primary out of a region names declared regions, two
/// different ones when it names where to.
#[allow(clippy::result_large_err)]
fn check_region_move(t: &drc_model::topology::Topology, r: &FailoverRegionRequest) -> Result<(), Status> {
    if !t.regions.contains_key(&r.from) {
        return Err(Status::not_found(format!("unknown region {:?}", r.from)));
    }
    if !r.to.is_empty() && !t.regions.contains_key(&r.to) {
        return Err(Status::not_found(format!("unknown region {:?}", r.to)));
    }
    if r.to == r.from {
        return Err(Status::invalid_argument("--to must differ from --from"));
    }
    Ok(())
}

/// The holes of an archive, as `drctl status` shows them.
fn gaps(a: &drc_model::archive::WalArchive) -> Vec<String> {
    a.gaps().iter().map(|g| format!("timeline {}: {} to {}", g.timeline, g.from, g.to)).collect()
}

#[cfg(test)]
mod tests {
    use drc_model::topology::parse::parse_topology;
    use tonic::Code;

    use super::*;

    #[test]
    fn a_node_to_add_needs_an_id_and_addresses_of_host_and_port() {
        let ok = AddNodeRequest { id: 4, address: "10.0.0.4:7400".into(), raft_address: String::new() };
        assert!(check_add_node(&ok).is_ok());
        for bad in [
            AddNodeRequest { id: 0, ..ok.clone() },
            AddNodeRequest { address: "10.0.0.4".into(), ..ok.clone() },
            AddNodeRequest { raft_address: "nowhere:".into(), ..ok.clone() },
        ] {
            let e = check_add_node(&bad).expect_err("refused");
            assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn a_region_move_names_declared_and_different_regions() {
        let t = parse_topology("[regions.a]\n[regions.b]\n[clusters.c]\nkind='redis'\n").expect("valid");
        let ask = |from: &str, to: &str| FailoverRegionRequest { from: from.into(), to: to.into(), force: false };
        assert!(check_region_move(&t, &ask("a", "")).is_ok());
        assert!(check_region_move(&t, &ask("a", "b")).is_ok());
        assert_eq!(check_region_move(&t, &ask("z", "")).expect_err("unknown").code(), Code::NotFound);
        assert_eq!(check_region_move(&t, &ask("a", "z")).expect_err("unknown").code(), Code::NotFound);
        assert_eq!(check_region_move(&t, &ask("a", "a")).expect_err("same").code(), Code::InvalidArgument);
    }
}
