//! Raft messages between coordinators, over gRPC.
//!
//! Outbound, every peer has its own worker task and bounded queue: a slow or
//! dead peer never delays messages to the others, and when its queue is full
//! messages are dropped (raft retransmits). Failures are reported back to
//! raft-rs (`report_unreachable`, `report_snapshot`) so that it probes the peer
//! again instead of streaming into the void.
//!
//! Messages travel as opaque bytes in raft-rs's own encoding. Inbound, a
//! batch is taken only from the peer its certificate names, and only with
//! messages from that peer: raft-rs trusts what a message says about itself.
//! Peer addresses come from configuration and the replicated membership,
//! never from a message.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use drc_proto::raft_transport_client::RaftTransportClient;
use drc_proto::raft_transport_server::RaftTransport;
use drc_proto::{RaftAck, RaftBatch};
use drc_tls::Security;
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::input::NodeInput;
use crate::api::auth::{principal, Principal};
use crate::lock;
use crate::state::NodeAddress;

const PEER_QUEUE: usize = 1024;
const MAX_BATCH: usize = 256;
/// Upper bound of one gRPC message; a snapshot must fit.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

struct Peer {
    address: String,
    tx: mpsc::Sender<Message>,
    cancel: CancellationToken,
}

/// The sending half of the transport, shared by the node task.
pub struct Transport {
    cluster_id: String,
    self_id: u64,
    self_address: String,
    /// Where peers take Raft messages.
    addresses: RwLock<BTreeMap<u64, String>>,
    /// Where peers take client requests (redirects, forwarded admin calls).
    clients: RwLock<BTreeMap<u64, String>>,
    peers: Mutex<HashMap<u64, Peer>>,
    node: mpsc::Sender<NodeInput>,
    cancel: CancellationToken,
    security: Security,
}

impl Transport {
    pub fn new(
        cluster_id: String,
        self_id: u64,
        self_address: String,
        node: mpsc::Sender<NodeInput>,
        cancel: CancellationToken,
        security: Security,
    ) -> Arc<Self> {
        Arc::new(Transport {
            cluster_id,
            self_id,
            self_address,
            addresses: RwLock::new(BTreeMap::new()),
            clients: RwLock::new(BTreeMap::new()),
            peers: Mutex::new(HashMap::new()),
            node,
            cancel,
            security,
        })
    }

    /// How this node calls its peers.
    pub fn security(&self) -> &Security {
        &self.security
    }

    /// Adds or updates peer addresses (from the replicated membership or from
    /// configuration hints).
    pub fn merge_addresses(&self, nodes: &BTreeMap<u64, NodeAddress>) {
        let mut book = lock::write(&self.addresses);
        let mut clients = lock::write(&self.clients);
        for (id, addr) in nodes {
            if !addr.client.is_empty() {
                book.insert(*id, addr.raft().to_string());
                clients.insert(*id, addr.client.clone());
            }
        }
    }

    /// Where node `id` takes client requests.
    pub fn address_of(&self, id: u64) -> Option<String> {
        lock::read(&self.clients).get(&id).cloned()
    }

    fn raft_address_of(&self, id: u64) -> Option<String> {
        lock::read(&self.addresses).get(&id).cloned()
    }

    /// Queues messages for their peers; never blocks.
    pub fn send(self: &Arc<Self>, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            if to == self.self_id {
                continue;
            }
            let Some(address) = self.raft_address_of(to) else {
                tracing::debug!(to, "no address for raft peer; message dropped");
                continue;
            };
            let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            let mut peers = lock::lock(&self.peers);
            let replace = peers.get(&to).is_none_or(|p| p.address != address || p.tx.is_closed());
            if replace {
                if let Some(old) = peers.remove(&to) {
                    old.cancel.cancel();
                }
                peers.insert(to, self.spawn_peer(to, address));
            }
            if let Some(peer) = peers.get(&to) {
                if peer.tx.try_send(m).is_err() && is_snapshot {
                    let _ = self.node.try_send(NodeInput::SnapshotReport { to, ok: false });
                }
            }
        }
    }

    fn spawn_peer(self: &Arc<Self>, to: u64, address: String) -> Peer {
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let cancel = self.cancel.child_token();
        let this = Arc::clone(self);
        tokio::spawn(this.peer_worker(to, address.clone(), rx, cancel.clone()));
        Peer { address, tx, cancel }
    }

    async fn peer_worker(self: Arc<Self>, to: u64, address: String, mut rx: mpsc::Receiver<Message>, cancel: CancellationToken) {
        let endpoint = match Security::endpoint(&address) {
            Ok(e) => drc_proto::keepalive::endpoint(
                e.connect_timeout(Duration::from_millis(500)).timeout(Duration::from_secs(5)).tcp_nodelay(true),
            ),
            Err(e) => {
                tracing::warn!(to, %address, error = %e, "invalid raft peer address");
                return;
            }
        };
        let mut client = RaftTransportClient::new(self.security.connect_lazy(endpoint))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut failing = false;
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => return,
                m = rx.recv() => match m { Some(m) => m, None => return },
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let snapshots = batch.iter().filter(|m| m.get_msg_type() == MessageType::MsgSnapshot).count();
            let req = RaftBatch {
                cluster_id: self.cluster_id.clone(),
                from_id: self.self_id,
                from_address: self.self_address.clone(),
                messages: batch.iter().map(|m| m.write_to_bytes().unwrap_or_default()).collect(),
            };
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = client.send(req) => r,
            };
            match result {
                Ok(_) => {
                    if failing {
                        tracing::info!(to, %address, "raft peer reachable again");
                        failing = false;
                    }
                    for _ in 0..snapshots {
                        let _ = self.node.try_send(NodeInput::SnapshotReport { to, ok: true });
                    }
                }
                Err(status) => {
                    if !failing {
                        tracing::warn!(to, %address, error = %status.message(), "raft peer unreachable");
                        failing = true;
                    }
                    let _ = self.node.try_send(NodeInput::Unreachable(to));
                    for _ in 0..snapshots {
                        let _ = self.node.try_send(NodeInput::SnapshotReport { to, ok: false });
                    }
                    // Don't spin on a dead peer: raft will retry on its own schedule.
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    while rx.try_recv().is_ok() {}
                }
            }
        }
    }
}

/// The receiving half: the `RaftTransport` gRPC service.
pub struct RaftService {
    transport: Arc<Transport>,
}

impl RaftService {
    pub fn new(transport: Arc<Transport>) -> Self {
        RaftService { transport }
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn send(&self, request: tonic::Request<RaftBatch>) -> Result<tonic::Response<RaftAck>, tonic::Status> {
        let sender = match principal(&request) {
            Principal::Identity(id) => id.node_id(),
            Principal::Insecure => None,
        };
        let batch = request.into_inner();
        let t = &self.transport;
        if batch.cluster_id != t.cluster_id {
            // The right name is not echoed: it helps nobody but a prober.
            return Err(tonic::Status::permission_denied("raft batch for another drc cluster"));
        }
        if let Some(sender) = sender.filter(|s| *s != batch.from_id) {
            return Err(tonic::Status::permission_denied(format!(
                "raft batch says it is from node {}, but node {sender} sent it",
                batch.from_id
            )));
        }
        for bytes in batch.messages {
            let m =
                Message::parse_from_bytes(&bytes).map_err(|e| tonic::Status::invalid_argument(format!("undecodable raft message: {e}")))?;
            if let Some(sender) = sender.filter(|s| *s != m.from) {
                return Err(tonic::Status::permission_denied(format!(
                    "raft message says it is from node {}, but node {sender} sent it",
                    m.from
                )));
            }
            if m.to != t.self_id {
                return Err(tonic::Status::invalid_argument(format!("raft message for node {} delivered to node {}", m.to, t.self_id)));
            }
            // Full queue: drop; raft retransmits.
            let _ = t.node.try_send(NodeInput::Raft(Box::new(m)));
        }
        Ok(tonic::Response::new(RaftAck {}))
    }
}
