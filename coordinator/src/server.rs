//! Wiring of one coordinator process: storage, the Raft node task, the
//! transport and the gRPC server, and their shutdown in a fixed order.

use std::sync::Arc;

use anyhow::Context as _;
use drc_proto::admin_service_server::AdminServiceServer;
use drc_proto::agent_service_server::AgentServiceServer;
use drc_proto::raft_transport_server::RaftTransportServer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

use crate::agents::{run_monitor, Agents};
use crate::api::admin::AdminApi;
use crate::api::agent::AgentApi;
use crate::api::auth::authenticate;
use crate::config::CoordinatorConfig;
use crate::core::LeaseConfig;
use crate::executor::{Executor, Hook, Waits};
use crate::raft::node::{Node, NodeConfig, INPUT_CAPACITY};
use crate::raft::transport::{RaftService, Transport, MAX_MESSAGE_BYTES};
use crate::raft::RaftStore;

/// Runs the Raft node on a dedicated OS thread with its own single-threaded
/// runtime, isolated from the API load on the main runtime. Its outbound
/// transport workers run there too, and so does the inbound Raft server when
/// it has a listener of its own (`raft_listen`): then no agent or admin
/// connection shares a socket or a scheduler with heartbeats.
fn spawn_node_thread(
    node: Node,
    raft_server: Option<(std::net::TcpListener, Arc<Transport>)>,
    cancel: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), crate::raft::StorageError>>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("building the raft runtime")?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("raft-node".into())
        .spawn(move || {
            let result = runtime.block_on(async move {
                if let Some((listener, transport)) = raft_server {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let server_cancel = cancel.clone();
                            let server = drc_proto::keepalive::server()
                                .add_service(raft_service(transport))
                                .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async move {
                                    server_cancel.cancelled().await
                                });
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
    Ok(tokio::spawn(async move { done_rx.await.unwrap_or(Ok(())) }))
}

type RaftServer = InterceptedService<RaftTransportServer<RaftService>, fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>>;

fn raft_service(transport: Arc<Transport>) -> RaftServer {
    InterceptedService::new(
        RaftTransportServer::new(RaftService::new(transport))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        authenticate,
    )
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
    let transport = Transport::new(cfg.cluster_id.clone(), cfg.node_id, own.raft().to_string(), node_tx.clone(), cancel.child_token());
    transport.merge_addresses(&cfg.peer_addresses());
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
    let node_task = spawn_node_thread(node, raft_listener.map(|l| (l, Arc::clone(&transport))), node_cancel.clone())?;

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
    let admin_api =
        AdminApi::new(handle.clone(), Arc::clone(&transport), Arc::clone(&agents), cfg.raft.write_timeout, Arc::clone(&executor), jobs);
    let admin = AdminServiceServer::with_interceptor(admin_api, authenticate);
    let agent = AgentServiceServer::with_interceptor(AgentApi::new(handle.clone(), Arc::clone(&transport), agents), authenticate);
    // Raft also stays on the shared listener when it has its own, so that a
    // peer configured with only the client address still reaches it.
    let raft = raft_service(Arc::clone(&transport));

    let server_cancel = cancel.clone();
    let server = drc_proto::keepalive::server().add_service(raft).add_service(agent).add_service(admin).serve_with_incoming_shutdown(
        // Nagle off: gRPC writes headers, data and trailers separately.
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        async move { server_cancel.cancelled().await },
    );
    let mut server = tokio::spawn(server);

    // The node task ends on its own only on a fatal storage error.
    let mut node_task = node_task;
    let outcome = tokio::select! {
        r = &mut node_task => {
            cancel.cancel();
            match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(anyhow::Error::new(e).context("raft storage failed; stopping this node")),
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
