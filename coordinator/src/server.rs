//! Wiring of one coordinator process: storage, the Raft node task, the
//! transport and the gRPC server, and their shutdown in a fixed order.

use std::sync::Arc;

use anyhow::Context as _;
use drc_proto::admin_service_server::AdminServiceServer;
use drc_proto::agent_service_server::AgentServiceServer;
use drc_proto::raft_transport_server::RaftTransportServer;
use drc_tls::Security;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agents::{run_monitor, Agents};
use crate::api::admin::AdminApi;
use crate::api::agent::AgentApi;
use crate::audit::trail::AuditFile;
use crate::auth::Authorize;
use crate::config::CoordinatorConfig;
use crate::core::LeaseConfig;
use crate::executor::{Executor, Hook, Waits};
use crate::raft::node::{Node, NodeConfig, INPUT_CAPACITY};
use crate::raft::pieces::MAX_MESSAGE_BYTES;
use crate::raft::transport::{RaftService, Transport};
use crate::raft::RaftStore;

/// Runs the Raft node on a dedicated OS thread with its own single-threaded
/// runtime, isolated from the API load on the main runtime. Its outbound
/// transport workers run there too, and so does the inbound Raft server when
/// it has a listener of its own (`raft_listen`): then no agent or admin
/// connection shares a socket or a scheduler with heartbeats.
fn spawn_node_thread(
    node: Node,
    raft_server: Option<(std::net::TcpListener, Arc<Transport>)>,
    cluster: &str,
    cancel: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("building the raft runtime")?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let authorize = Authorize::new(cluster);
    std::thread::Builder::new()
        .name("raft-node".into())
        .spawn(move || {
            let result = runtime.block_on(async move {
                if let Some((listener, transport)) = raft_server {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let server_cancel = cancel.clone();
                            let incoming = drc_tls::incoming(listener, transport.security().clone());
                            let server = drc_proto::keepalive::server()
                                .layer(authorize)
                                .add_service(raft_service(transport))
                                .serve_with_incoming_shutdown(incoming, async move { server_cancel.cancelled().await });
                            tokio::spawn(async move {
                                if let Err(e) = server.await {
                                    tracing::error!("raft listener failed: {e}");
                                }
                            });
                        }
                        Err(e) => tracing::error!("raft listener unusable: {e}"),
                    }
                }
                node.run(cancel).await
            });
            let _ = done_tx.send(result);
        })
        .context("starting the raft thread")?;
    Ok(tokio::spawn(async move { node_outcome(done_rx.await) }))
}

/// How the Raft thread ended: its own result, or a panic (it dropped its
/// sender without a word), which must stop the process with an error so
/// that a supervisor restarts it.
fn node_outcome(done: Result<Result<(), crate::raft::StorageError>, tokio::sync::oneshot::error::RecvError>) -> anyhow::Result<()> {
    match done {
        Ok(result) => result.map_err(|e| anyhow::Error::new(e).context("raft storage failed; stopping this node")),
        Err(_) => Err(anyhow::anyhow!("the raft thread panicked (see the log above); stopping this node")),
    }
}

fn raft_service(transport: Arc<Transport>) -> RaftTransportServer<RaftService> {
    RaftTransportServer::new(RaftService::new(transport))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// How this node secures its connections: its certificate must name it.
/// The node's TLS material, checked against its configuration: the
/// certificate must name this node of this cluster.
pub fn security(cfg: &CoordinatorConfig) -> anyhow::Result<Security> {
    let security = Security::new(cfg.tls.clone(), cfg.insecure).context("tls")?;
    match security.identity() {
        None => tracing::warn!(node = cfg.node_id, "{}", drc_tls::INSECURE_WARNING),
        Some(id) => {
            let expected = drc_tls::Identity::peer(&cfg.cluster_id, cfg.node_id).context("cluster_id")?;
            if id != expected {
                anyhow::bail!(
                    "tls.cert names {id}, but this is node {} of drc cluster {:?}: it must name {expected}",
                    cfg.node_id,
                    cfg.cluster_id
                );
            }
        }
    }
    Ok(security)
}

fn bind_error(address: &str, e: std::io::Error) -> anyhow::Error {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            anyhow::anyhow!("cannot listen on {address}: the address is already in use (is another coordinator running?)")
        }
        _ => anyhow::anyhow!("cannot listen on {address}: {e}"),
    }
}

/// How often the leader re-evaluates member health when no sample arrives.
const HEALTH_REFRESH: std::time::Duration = std::time::Duration::from_millis(200);

/// Runs a coordinator until `cancel` fires. Returns an error, before serving
/// anything, if the configuration is invalid, the port is taken or the data
/// dir belongs to another node or cluster.
pub async fn run(cfg: CoordinatorConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    cfg.validate()?;
    let security = security(&cfg)?;
    let listener = TcpListener::bind(&cfg.listen).await.map_err(|e| bind_error(&cfg.listen, e))?;
    let raft_listener = match &cfg.raft_listen {
        Some(address) => {
            let l = std::net::TcpListener::bind(address).map_err(|e| bind_error(address, e))?;
            l.set_nonblocking(true).context("raft listener")?;
            Some(l)
        }
        None => None,
    };
    let founders = cfg.founders();
    let store = RaftStore::open(&cfg.data_dir, &cfg.cluster_id, cfg.node_id, founders.as_ref())?;

    let (node_tx, node_rx) = mpsc::channel(INPUT_CAPACITY);
    let own = cfg.own_address();
    let transport = Transport::new(
        cfg.cluster_id.clone(),
        cfg.node_id,
        own.raft().to_string(),
        node_tx.clone(),
        cancel.child_token(),
        security.clone(),
    );
    transport.set_piece_bytes(cfg.raft.piece_bytes);
    transport.set_configured(&cfg.peer_addresses());
    let node_cfg = NodeConfig {
        id: cfg.node_id,
        tick_interval: cfg.raft.tick_interval,
        election_ticks: cfg.raft.election_ticks,
        heartbeat_ticks: cfg.raft.heartbeat_ticks,
        snapshot_entries: cfg.raft.snapshot_entries,
    };
    let (node, handle) = Node::new(node_cfg, store, Arc::clone(&transport), node_rx, node_tx).context("starting the raft node")?;
    let status = handle.status();
    tracing::info!(
        node = cfg.node_id,
        cluster = %cfg.cluster_id,
        listen = %cfg.listen,
        term = status.term,
        applied = status.applied_index,
        voters = ?status.voters,
        "coordinator starting"
    );

    let node_cancel = cancel.child_token();
    let node_task = spawn_node_thread(node, raft_listener.map(|l| (l, Arc::clone(&transport))), &cfg.cluster_id, node_cancel.clone())?;

    let agents = Arc::new(Agents::new(cfg.failover.lease));
    tokio::spawn(run_monitor(Arc::clone(&agents), handle.clone(), HEALTH_REFRESH, cancel.child_token()));
    let lease = LeaseConfig {
        lease: cfg.failover.lease.as_millis() as u64,
        drift_margin: cfg.failover.drift_margin.as_millis() as u64,
        // Leases are renewed only within the window a quorum confirmed
        // (`NodeHandle::may_renew`): a successor never overlaps them.
        handover: 0,
    };
    let waits: Waits = Default::default();
    let hook = Hook { command: cfg.failover.hook.clone(), timeout: cfg.failover.hook_timeout };
    let placement = if cfg.failover.leader_placement {
        cfg.peers.iter().filter_map(|p| p.region.clone().map(|r| (p.id, r))).collect()
    } else {
        Default::default()
    };
    let executor = Executor::new(handle.clone(), Arc::clone(&agents), lease, hook, cfg.raft.write_timeout, Arc::clone(&waits), placement);
    tokio::spawn(Arc::clone(&executor).run(cancel.child_token()));
    let jobs = crate::jobs::Jobs::new(handle.clone(), Arc::clone(&agents), cfg.raft.write_timeout);
    tokio::spawn(Arc::clone(&jobs).run(cancel.child_token()));
    tokio::spawn(Arc::clone(&jobs).drive_archivers(cancel.child_token()));
    let admin_api =
        AdminApi::new(handle.clone(), Arc::clone(&transport), Arc::clone(&agents), cfg.raft.write_timeout, Arc::clone(&executor), jobs);
    let audit_file = match &cfg.audit_log {
        Some(path) => Some(AuditFile::open(path.clone()).with_context(|| format!("opening the audit log {}", path.display()))?),
        None => None,
    };
    tokio::spawn(crate::audit::trail::run(
        handle.clone(),
        admin_api.auditor(),
        Arc::clone(&agents.events),
        audit_file,
        cancel.child_token(),
    ));
    let admin_api = Arc::new(admin_api);
    let admin = AdminServiceServer::from_arc(Arc::clone(&admin_api));
    if let Some(address) = &cfg.http_listen {
        let page = crate::status_page::StatusPage { api: admin_api, node: handle.clone(), cluster_id: cfg.cluster_id.clone() };
        let site = crate::metrics::CoordinatorSite::new(handle.clone(), Arc::clone(&agents), Arc::clone(&executor), &security, page);
        drc_ops::http::listen(address, security.clone(), Arc::new(site), cancel.child_token()).await.map_err(anyhow::Error::msg)?;
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(health, handle.clone(), cancel.child_token()));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(drc_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("gRPC reflection")?;
    let agent = AgentServiceServer::new(AgentApi::new(handle.clone(), Arc::clone(&transport), agents));
    // Raft also stays on the shared listener when it has its own, so that a
    // peer configured with only the client address still reaches it.
    let raft = raft_service(Arc::clone(&transport));

    let server_cancel = cancel.clone();
    // Every service sits behind the one authorisation layer (crate::auth).
    let server = drc_proto::keepalive::server()
        .layer(Authorize::new(&cfg.cluster_id))
        .add_service(raft)
        .add_service(agent)
        .add_service(admin)
        .add_service(health_service)
        .add_service(reflection)
        .serve_with_incoming_shutdown(drc_tls::incoming(listener, security), async move { server_cancel.cancelled().await });
    let mut server = tokio::spawn(server);

    // The node task ends on its own only on a fatal storage error.
    let mut node_task = node_task;
    let outcome = tokio::select! {
        r = &mut node_task => {
            cancel.cancel();
            match r {
                Ok(outcome) => outcome,
                Err(e) => Err(anyhow::anyhow!("raft node task failed: {e}")),
            }
        }
        r = &mut server => {
            cancel.cancel();
            let _ = (&mut node_task).await;
            match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(anyhow::anyhow!("gRPC server failed: {e}")),
                Err(e) => Err(anyhow::anyhow!("gRPC server task failed: {e}")),
            }
        }
        _ = cancel.cancelled() => {
            // Shutdown order: stop taking requests, then stop the node (which
            // fails pending proposals), then release storage.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut server).await;
            node_cancel.cancel();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut node_task).await;
            Ok(())
        }
    };
    tracing::info!(node = cfg.node_id, "coordinator stopped");
    outcome
}

/// `grpc.health.v1`: the whole server, and the admin service, serve while
/// this node is ready (the rule of `/readyz`, [`crate::metrics::readiness`]).
async fn report_health(health: tonic_health::server::HealthReporter, node: crate::raft::NodeHandle, cancel: CancellationToken) {
    let mut status = node.watch_status();
    let mut last = None;
    loop {
        let ready = crate::metrics::readiness(&status.borrow_and_update()).is_ok();
        if last != Some(ready) {
            let state = if ready { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
            health.set_service_status("", state).await;
            health.set_service_status("drc.v1.AdminService", state).await;
            last = Some(ready);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = status.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::node_outcome;

    #[test]
    fn a_raft_thread_that_panicked_stops_the_coordinator_with_an_error() {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), crate::raft::StorageError>>();
        drop(tx);
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let e = node_outcome(rt.block_on(rx)).expect_err("a panic is an error");
        assert!(e.to_string().contains("panicked"), "{e}");
        assert!(node_outcome(Ok(Ok(()))).is_ok());
    }
}
