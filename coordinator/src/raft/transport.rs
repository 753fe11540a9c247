//! Raft messages between coordinators, over gRPC.
//!
//! Outbound, every peer has its own worker task and bounded queue: a slow or
//! dead peer never delays messages to the others, and when its queue is full
//! messages are dropped (raft retransmits). Failures are reported back to
//! raft-rs (`report_unreachable`, `report_snapshot`) so that it probes the peer
//! again instead of streaming into the void.
//!
//! Messages travel as opaque bytes in raft-rs's own encoding, in batches of
//! bounded size; a message too large for one gRPC message (a snapshot) goes
//! in pieces ([`super::pieces`]). Inbound, a
//! batch is taken only from the peer its certificate names, and only with
//! messages from that peer: raft-rs trusts what a message says about itself.
//! Peer addresses come from configuration and the replicated membership,
//! never from a message.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
use super::pieces::{split, Assembler, BATCH_BYTES, DEFAULT_PIECE_BYTES, MAX_MESSAGE_BYTES};
use crate::auth::{principal, Principal};
use crate::lock;
use crate::state::NodeAddress;

const PEER_QUEUE: usize = 1024;
const MAX_BATCH: usize = 256;

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
    /// Whose messages are taken: the peers in this node's configuration,
    /// and the replicated membership as this node last applied it.
    configured: RwLock<BTreeSet<u64>>,
    members: RwLock<BTreeSet<u64>>,
    peers: Mutex<HashMap<u64, Peer>>,
    node: mpsc::Sender<NodeInput>,
    cancel: CancellationToken,
    security: Security,
    /// The size of a piece of a message sent in pieces.
    piece_bytes: AtomicUsize,
    /// Numbers the messages sent in pieces.
    next_piece_id: AtomicU64,
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
            configured: RwLock::new(BTreeSet::new()),
            members: RwLock::new(BTreeSet::new()),
            peers: Mutex::new(HashMap::new()),
            node,
            cancel,
            security,
            piece_bytes: AtomicUsize::new(DEFAULT_PIECE_BYTES),
            next_piece_id: AtomicU64::new(1),
        })
    }

    /// Sets the size of the pieces large messages are sent in
    /// (`raft.piece_bytes`, checked by the configuration).
    pub fn set_piece_bytes(&self, bytes: usize) {
        self.piece_bytes.store(bytes, Ordering::Relaxed);
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

    /// The peers of this node's configuration file: their messages are
    /// taken even before this node applied a membership naming them.
    pub fn set_configured(&self, nodes: &BTreeMap<u64, NodeAddress>) {
        self.merge_addresses(nodes);
        *lock::write(&self.configured) = nodes.keys().copied().collect();
    }

    /// The replicated membership, as this node applied it: messages from
    /// a node removed from it are refused.
    pub fn set_members(&self, nodes: &BTreeMap<u64, NodeAddress>) {
        self.merge_addresses(nodes);
        *lock::write(&self.members) = nodes.keys().copied().collect();
    }

    /// Whether node `id`'s messages are taken. A node just added that
    /// speaks before this node applied its addition is refused once; Raft
    /// sends again.
    fn admits(&self, id: u64) -> bool {
        lock::read(&self.members).contains(&id) || lock::read(&self.configured).contains(&id)
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
        // A message that did not fit the batch before it.
        let mut carried: Option<Message> = None;
        loop {
            let first = match carried.take() {
                Some(m) => m,
                None => tokio::select! {
                    _ = cancel.cancelled() => return,
                    m = rx.recv() => match m { Some(m) => m, None => return },
                },
            };
            let mut batch = vec![first];
            let mut encoded = vec![batch[0].write_to_bytes().unwrap_or_default()];
            let piece = self.piece_bytes.load(Ordering::Relaxed);
            let result = if encoded[0].len() > piece {
                self.send_in_pieces(&mut client, &encoded[0], piece, &cancel).await
            } else {
                let mut bytes = encoded[0].len();
                while batch.len() < MAX_BATCH && bytes < BATCH_BYTES {
                    let Ok(m) = rx.try_recv() else { break };
                    let e = m.write_to_bytes().unwrap_or_default();
                    if e.len() > piece || bytes + e.len() > BATCH_BYTES {
                        carried = Some(m);
                        break;
                    }
                    bytes += e.len();
                    batch.push(m);
                    encoded.push(e);
                }
                let req = RaftBatch {
                    cluster_id: self.cluster_id.clone(),
                    from_id: self.self_id,
                    from_address: self.self_address.clone(),
                    messages: encoded,
                    piece: None,
                };
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = client.send(req) => r.map(|_| ()),
                }
            };
            let snapshots = batch.iter().filter(|m| m.get_msg_type() == MessageType::MsgSnapshot).count();
            match result {
                Ok(()) => {
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
                    carried = None;
                    while rx.try_recv().is_ok() {}
                }
            }
        }
    }

    /// Sends one encoded message in pieces, each a call of its own.
    async fn send_in_pieces(
        &self,
        client: &mut RaftTransportClient<tonic::transport::Channel>,
        bytes: &[u8],
        piece: usize,
        cancel: &CancellationToken,
    ) -> Result<(), tonic::Status> {
        let id = self.next_piece_id.fetch_add(1, Ordering::Relaxed);
        let pieces = split(id, bytes, piece);
        tracing::info!(bytes = bytes.len(), pieces = pieces.len(), "sending a raft message in pieces");
        for p in pieces {
            let req = RaftBatch {
                cluster_id: self.cluster_id.clone(),
                from_id: self.self_id,
                from_address: self.self_address.clone(),
                messages: Vec::new(),
                piece: Some(p),
            };
            tokio::select! {
                _ = cancel.cancelled() => return Err(tonic::Status::cancelled("shutting down")),
                r = client.send(req) => { r?; }
            }
        }
        Ok(())
    }
}

/// The receiving half: the `RaftTransport` gRPC service.
pub struct RaftService {
    transport: Arc<Transport>,
    pieces: Mutex<Assembler>,
}

impl RaftService {
    pub fn new(transport: Arc<Transport>) -> Self {
        RaftService { transport, pieces: Mutex::new(Assembler::default()) }
    }

    /// Checks one message against its sender and hands it to the node.
    #[allow(clippy::result_large_err)]
    fn deliver(&self, sender: Option<u64>, bytes: &[u8]) -> Result<(), tonic::Status> {
        let t = &self.transport;
        let m = Message::parse_from_bytes(bytes).map_err(|e| tonic::Status::invalid_argument(format!("undecodable raft message: {e}")))?;
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
        Ok(())
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
        if !t.admits(batch.from_id) {
            return Err(tonic::Status::permission_denied(format!(
                "node {} is neither a configured peer nor a member of this coordinator group",
                batch.from_id
            )));
        }
        if let Some(piece) = batch.piece {
            let whole = lock::lock(&self.pieces)
                .add(batch.from_id, piece)
                .map_err(|e| tonic::Status::invalid_argument(format!("raft message piece refused: {e}")))?;
            if let Some(bytes) = whole {
                self.deliver(sender, &bytes)?;
            }
        }
        for bytes in batch.messages {
            self.deliver(sender, &bytes)?;
        }
        Ok(tonic::Response::new(RaftAck {}))
    }
}
