//! Mutual TLS, identities and roles against real coordinators: who may
//! connect, who may call what, and what a forged Raft message achieves.

use std::time::Duration;

use drc_coordinator::auth::{Permission, RPCS};
use drc_proto::admin_service_client::AdminServiceClient;
use drc_proto::agent_service_client::AgentServiceClient;
use drc_proto::raft_transport_client::RaftTransportClient;
use drc_proto::*;
use drc_tests::{Cluster, ClusterOpts, Creds};
use drc_tls::{Identity, Role, Security, TlsFiles};
use tonic::transport::Channel;
use tonic::Code;

use drc_tests::CACHE_TOPOLOGY as TOPOLOGY;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

async fn channel(security: &Security, address: &str) -> Channel {
    security.connect(Security::endpoint(address).expect("endpoint").timeout(Duration::from_secs(10))).await.expect("connect")
}

/// The Hello of an agent of `member` of the test topology's Redis cluster.
fn hello(member: &str, region: &str) -> AgentMessage {
    let hello = AgentHello {
        member_id: member.into(),
        cluster: "cache".into(),
        region: region.into(),
        kind: "redis".into(),
        command_protocol: drc_proto::COMMAND_PROTOCOL,
        ..Default::default()
    };
    AgentMessage { body: Some(agent_message::Body::Hello(hello)) }
}

fn tls(files: &TlsFiles) -> Security {
    Creds::Tls(files.clone()).security().expect("certificate files")
}

/// Calls `path` with a plain request as `security`; the status, or OK.
async fn call(security: &Security, cluster: &Cluster, path: &str) -> tonic::Status {
    let leader = cluster.wait_leader(Duration::from_secs(30)).expect("leader");
    let address = cluster.nodes[&leader].address.clone();
    let ch = channel(security, &address).await;
    let mut admin = AdminServiceClient::new(ch.clone());
    fn ok<T>(_: T) -> tonic::Status {
        tonic::Status::ok("")
    }
    let name = path.rsplit('/').next().expect("method");
    let outcome: Result<tonic::Status, tonic::Status> = match name {
        "Send" => {
            // A well-formed empty batch from the node the certificate names.
            let from_id = security.identity().and_then(|i| i.node_id()).unwrap_or(0);
            let batch = RaftBatch { cluster_id: cluster.cluster_id.clone(), from_id, ..Default::default() };
            RaftTransportClient::new(ch).send(batch).await.map(ok)
        }
        "Session" => {
            let member = security.identity().map(|i| i.name).unwrap_or_default();
            AgentServiceClient::new(ch).session(tokio_stream::iter(vec![hello(&member, "a")])).await.map(ok)
        }
        "Status" => admin.status(StatusRequest {}).await.map(ok),
        "NodeStatus" => admin.node_status(NodeStatusRequest {}).await.map(ok),
        "ApplyTopology" => admin.apply_topology(ApplyTopologyRequest { topology_toml: TOPOLOGY.into(), dry_run: true }).await.map(ok),
        "GetTopology" => admin.get_topology(GetTopologyRequest {}).await.map(ok),
        "Health" => admin.health(HealthRequest::default()).await.map(ok),
        "Watch" => admin.watch(WatchRequest {}).await.map(ok),
        "ListNodes" => admin.list_nodes(ListNodesRequest {}).await.map(ok),
        "AddNode" => admin.add_node(AddNodeRequest::default()).await.map(ok),
        "RemoveNode" => admin.remove_node(RemoveNodeRequest { id: 99 }).await.map(ok),
        "TransferLeadership" => admin.transfer_leadership(TransferLeadershipRequest { id: 99 }).await.map(ok),
        "Failover" => admin.failover(FailoverRequest { cluster: "nope".into(), ..Default::default() }).await.map(ok),
        "Switchover" => admin.switchover(SwitchoverRequest { cluster: "nope".into(), ..Default::default() }).await.map(ok),
        "FailoverRegion" => admin.failover_region(FailoverRegionRequest { from: "nope".into(), ..Default::default() }).await.map(ok),
        "Pause" => admin.pause(PauseRequest { cluster: "nope".into(), paused: true }).await.map(ok),
        "ClearBlock" => admin.clear_block(ClearBlockRequest { cluster: "nope".into() }).await.map(ok),
        "History" => admin.history(HistoryRequest::default()).await.map(ok),
        "WatchPrimary" => admin.watch_primary(WatchPrimaryRequest { cluster: "cache".into() }).await.map(ok),
        "StartBackup" => admin.start_backup(StartBackupRequest { cluster: "nope".into(), ..Default::default() }).await.map(ok),
        "ListBackups" => admin.list_backups(ListJobsRequest::default()).await.map(ok),
        "StartRecoveryTest" => {
            admin.start_recovery_test(StartRecoveryTestRequest { cluster: "nope".into(), ..Default::default() }).await.map(ok)
        }
        "ListRecoveryTests" => admin.list_recovery_tests(ListJobsRequest::default()).await.map(ok),
        "StartRestore" => admin.start_restore(StartRestoreRequest { cluster: "nope".into(), ..Default::default() }).await.map(ok),
        "ListRestores" => admin.list_restores(ListJobsRequest::default()).await.map(ok),
        "SetSchedule" => admin.set_schedule(SetScheduleRequest { cluster: "nope".into(), ..Default::default() }).await.map(ok),
        "ListSchedules" => admin.list_schedules(ListJobsRequest::default()).await.map(ok),
        "Audit" => admin.audit(AuditRequest::default()).await.map(ok),
        "RecordAudit" => admin.record_audit(RecordAuditRequest::default()).await.map(ok),
        other => panic!("{other}: an RPC this test does not call yet; add it"),
    };
    outcome.unwrap_or_else(|status| status)
}

/// Refused by the authorisation layer (not by the handler).
fn refused_by_role(s: &tonic::Status) -> bool {
    s.code() == Code::PermissionDenied && s.message().contains("may not call")
}

#[test]
fn each_role_reaches_exactly_the_rpcs_the_table_grants_it_on_every_rpc() {
    let c = Cluster::start(ClusterOpts::default()).expect("cluster");
    c.apply(TOPOLOGY).expect("apply");
    let pki = c.pki.as_ref().expect("pki");
    let callers = [
        (Role::Peer, pki.client(Role::Peer, "2", "peer").expect("peer")),
        (Role::Agent, pki.client(Role::Agent, "redis-a", "agent").expect("agent")),
        (Role::Operator, pki.client(Role::Operator, "alice", "operator").expect("operator")),
        (Role::Viewer, pki.client(Role::Viewer, "grafana", "viewer").expect("viewer")),
    ];
    let rt = runtime();
    let mut checked = 0;
    for (role, files) in &callers {
        let security = tls(files);
        for (path, permission) in RPCS {
            let status = rt.block_on(call(&security, &c, path));
            if permission.granted_to(*role) {
                assert!(!refused_by_role(&status) && status.code() != Code::Unauthenticated, "{role} was refused {path}: {status:?}");
            } else {
                assert!(refused_by_role(&status), "{role} reached {path}: {status:?}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 4 * RPCS.len());
    assert!(RPCS.iter().filter(|(_, p)| *p == Permission::Operate).count() >= 12, "every state-changing RPC is walked");
    // The CLI says so too.
    let out = drc_tests::drctl(&c.endpoints(), &Creds::Tls(callers[3].1.clone()), &["pause", "--cluster", "cache"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("drc://") && err.contains("viewer") && err.contains("operator"), "{err}");
}

#[test]
fn no_certificate_another_cas_certificate_or_another_clusters_certificate_is_refused() {
    let c = Cluster::start(ClusterOpts::default()).expect("cluster");
    let pki = c.pki.as_ref().expect("pki");
    let rt = runtime();
    let status = |creds: &Creds| {
        let out = drc_tests::drctl(&c.endpoints(), creds, &["status"]);
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    // Plaintext against a TLS listener.
    let (ok, err) = status(&Creds::Insecure);
    assert!(!ok, "plaintext was answered");
    assert!(err.contains("--insecure"), "{err}");
    // A certificate of another CA, presented with the right CA bundle.
    let stranger = pki.stranger(&c.dir.path().join("stranger")).expect("stranger");
    let (ok, err) = status(&Creds::Tls(TlsFiles { ca: pki.ca(), ..stranger.clone() }));
    assert!(!ok, "another CA's certificate was answered");
    assert!(err.contains("signed by the cluster's CA"), "{err}");
    let logs: String = c.nodes.values().map(|n| n.log_text()).collect();
    assert!(logs.contains("invalid peer certificate"), "no coordinator logged why it refused the certificate");
    // drctl itself refuses a coordinator that another CA vouches for.
    let (ok, _) = status(&Creds::Tls(stranger));
    assert!(!ok);
    // The right CA, but an identity of another drc cluster: the client
    // already refuses to talk to this cluster's coordinators (the
    // coordinators refuse such a caller too: api::auth's unit tests).
    let other = Identity::new("elsewhere", Role::Operator, "eve").expect("identity");
    let foreign = pki.issue_for(&other, &[], "foreign").expect("foreign");
    let (ok, err) = status(&Creds::Tls(foreign));
    assert!(!ok && err.contains("not of a coordinator of drc cluster \"elsewhere\""), "{err}");
    // No certificate at all: the handshake completes on the client side
    // (TLS 1.3), and the server answers the first bytes with an alert.
    let address = c.nodes[&1].address.clone();
    let answered = rt.block_on(async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(pki.ca()).expect("ca");
        use rustls::pki_types::pem::PemObject as _;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert.expect("pem")).expect("root");
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(&address).await.expect("tcp");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let Ok(mut tls) = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await else {
            return false;
        };
        let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let mut buf = [0u8; 64];
        matches!(tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
    });
    assert!(!answered, "a client without a certificate got an HTTP/2 answer");
    // Nothing of the above disturbed the cluster.
    c.json(&["status"]).expect("the operator still gets an answer");
}

#[test]
fn an_agent_speaks_only_as_its_own_member_and_a_peer_only_as_its_own_node() {
    let c = Cluster::start(ClusterOpts::default()).expect("cluster");
    c.apply(TOPOLOGY).expect("apply");
    let pki = c.pki.as_ref().expect("pki");
    let rt = runtime();
    let leader = c.wait_leader(Duration::from_secs(30)).expect("leader");
    let address = c.nodes[&leader].address.clone();

    // redis-a's certificate, opening a session as redis-b.
    let agent = tls(&pki.client(Role::Agent, "redis-a", "agent").expect("agent"));
    let refused = rt.block_on(async {
        let mut client = AgentServiceClient::new(channel(&agent, &address).await);
        match client.session(tokio_stream::iter(vec![hello("redis-b", "b")])).await {
            Err(s) => s,
            Ok(r) => r.into_inner().message().await.expect_err("the stream must end with an error"),
        }
    });
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("redis-a"), "{refused:?}");

    // Node 2's certificate, sending messages that say they are from node 3
    // (the forged heartbeat that once crashed a coordinator), and a batch
    // for another cluster.
    let node_one = c.nodes[&1].raft_address.clone().expect("raft listener");
    let term_before = c.json_at(1, &["status"]).expect("status")["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["id"] == 1).and_then(|n| n["term"].as_u64()))
        .expect("term");
    let peer = tls(&pki.client(Role::Peer, "2", "peer").expect("peer"));
    let forged = |from: u64| {
        use protobuf::Message as _;
        let mut m = raft::prelude::Message::default();
        m.set_msg_type(raft::prelude::MessageType::MsgHeartbeat);
        (m.from, m.to, m.term, m.commit) = (from, 1, 1000, 999_999);
        m.write_to_bytes().expect("encode")
    };
    let send = |batch: RaftBatch| rt.block_on(async { RaftTransportClient::new(channel(&peer, &node_one).await).send(batch).await });
    let batch = |from_id: u64, from: u64, cluster: &str| RaftBatch {
        cluster_id: cluster.into(),
        from_id,
        messages: vec![forged(from)],
        ..Default::default()
    };
    for (what, b) in [("a batch from node 3", batch(3, 3, &c.cluster_id)), ("a message from node 3", batch(2, 3, &c.cluster_id))] {
        let e = send(b).expect_err(what);
        assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
        assert!(e.message().contains("node 2 sent it"), "{what}: {e:?}");
    }
    // A peer certificate of a node that is no member (node 7).
    let stranger = tls(&pki.client(Role::Peer, "7", "peer7").expect("peer 7"));
    let e = rt
        .block_on(async { RaftTransportClient::new(channel(&stranger, &node_one).await).send(batch(7, 7, &c.cluster_id)).await })
        .expect_err("a node that is no member");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("neither a configured peer nor a member"), "{e:?}");
    let e = send(batch(2, 2, "another")).expect_err("another cluster");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(!e.message().contains(&c.cluster_id), "the cluster id was echoed: {e:?}");
    // An operator cannot send Raft messages at all.
    let operator = c.creds.security().expect("operator");
    let e = rt
        .block_on(async { RaftTransportClient::new(channel(&operator, &node_one).await).send(batch(2, 2, &c.cluster_id)).await })
        .expect_err("an operator's raft batch");
    assert!(refused_by_role(&e), "{e:?}");
    // The leader's own certificate, with a heartbeat that commits far
    // beyond a follower's log (raft-rs panics on it): dropped.
    let leader = c.wait_leader(Duration::from_secs(30)).expect("leader");
    let follower = *c.nodes.keys().find(|id| **id != leader).expect("a follower");
    let term = c.json_at(follower, &["status"]).expect("status")["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["id"] == follower).and_then(|n| n["term"].as_u64()))
        .expect("term");
    let as_leader = tls(&pki.client(Role::Peer, &leader.to_string(), "leader").expect("leader's certificate"));
    let heartbeat = {
        use protobuf::Message as _;
        let mut m = raft::prelude::Message::default();
        m.set_msg_type(raft::prelude::MessageType::MsgHeartbeat);
        (m.from, m.to, m.term, m.commit) = (leader, follower, term, 999_999);
        m.write_to_bytes().expect("encode")
    };
    let target = c.nodes[&follower].raft_address.clone().expect("raft listener");
    let b = RaftBatch { cluster_id: c.cluster_id.clone(), from_id: leader, messages: vec![heartbeat], ..Default::default() };
    rt.block_on(async { RaftTransportClient::new(channel(&as_leader, &target).await).send(b).await }).expect("taken for the node");
    let log = c.nodes[&follower].log.clone();
    drc_tests::wait_for("the follower to drop the heartbeat", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).ok().filter(|l| l.contains("dropped a raft message")).map(|_| ())
    })
    .expect("dropped, and said so");
    c.json_at(follower, &["status"]).expect("the follower still answers");
    // Node 1 took none of it: alive, in its own term.
    let status = c.json_at(1, &["status"]).expect("node 1 answers");
    let term = status["nodes"].as_array().and_then(|n| n.iter().find(|n| n["id"] == 1).and_then(|n| n["term"].as_u64()));
    assert!(term.is_some_and(|t| t < 1000 && t >= term_before), "node 1's term moved to {term:?}");
}

/// The certificate the server at `address` presents to a new connection
/// made with `client`'s certificate.
fn served_certificate(rt: &tokio::runtime::Runtime, address: &str, client: &TlsFiles) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&client.ca).expect("ca") {
        roots.add(cert.expect("pem")).expect("root");
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(&client.cert).expect("cert").map(|c| c.expect("pem")).collect();
    let key = PrivateKeyDer::from_pem_file(&client.key).expect("key");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client certificate");
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(address).await.expect("tcp");
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.expect("handshake");
        tls.get_ref().1.peer_certificates().and_then(|c| c.first()).expect("a server certificate").to_vec()
    })
}

fn leaf_der(path: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_file_iter(path).expect("pem").next().expect("one certificate").expect("pem").to_vec()
}

#[test]
fn a_rotated_certificate_serves_new_connections_without_a_restart_and_a_broken_one_is_not_taken() {
    let c = Cluster::start(ClusterOpts::default()).expect("cluster");
    let pki = c.pki.as_ref().expect("pki");
    let rt = runtime();
    let Creds::Tls(operator) = c.creds.clone() else { panic!("a TLS cluster") };
    let address = c.nodes[&1].address.clone();
    let before = served_certificate(&rt, &address, &operator);
    // A connection made before the rotation, used after it.
    let operator_security = c.creds.security().expect("operator");
    let mut old = rt.block_on(async { AdminServiceClient::new(channel(&operator_security, &address).await) });
    rt.block_on(old.node_status(NodeStatusRequest {})).expect("a call on the old connection");

    // Same identity, new key, written over the files node 1 was started with.
    let rotated = pki.issue(Role::Peer, "1", &["127.0.0.1"]).expect("rotate");
    let new = leaf_der(&rotated.cert);
    assert_ne!(before, new);
    let pid = c.nodes[&1].pid();
    assert_eq!(served_certificate(&rt, &address, &operator), new, "a new connection still got the old certificate");
    rt.block_on(old.node_status(NodeStatusRequest {})).expect("the old connection carries on");
    assert_eq!(c.nodes[&1].pid(), pid, "node 1 restarted");
    // The peers reach node 1 with its new certificate: it still takes part.
    c.json_at(1, &["status"]).expect("node 1 answers");

    // A certificate that cannot be used (garbage, or another identity)
    // leaves the previous one in service, and says so.
    std::fs::write(&rotated.cert, "not a certificate").expect("break it");
    assert_eq!(served_certificate(&rt, &address, &operator), new, "a broken file replaced the certificate");
    let other = pki.issue(Role::Peer, "7", &["127.0.0.1"]).expect("another identity");
    std::fs::copy(&other.key, &rotated.key).expect("key");
    std::fs::copy(&other.cert, &rotated.cert).expect("cert");
    assert_eq!(served_certificate(&rt, &address, &operator), new, "another identity's certificate was taken");
    let log = c.nodes[&1].log_text();
    assert!(log.contains("cannot be used") && log.contains("a new identity needs a restart"), "{log}");
}

#[test]
fn a_coordinator_serves_a_bounded_number_of_watches_and_a_client_that_leaves_frees_its_slot() {
    use drc_coordinator::api::watch::MAX_WATCHES;
    let c = Cluster::start(ClusterOpts::default()).expect("cluster");
    c.apply(TOPOLOGY).expect("apply");
    let rt = runtime();
    let viewer = tls(&c.pki.as_ref().expect("pki").client(Role::Viewer, "watcher", "watcher").expect("viewer"));
    let address = c.nodes[&1].address.clone();
    // Spread over connections: one connection carries at most 1024 streams.
    let clients: Vec<AdminServiceClient<Channel>> =
        (0..4).map(|_| rt.block_on(async { AdminServiceClient::new(channel(&viewer, &address).await) })).collect();
    let ask = |mut client: AdminServiceClient<Channel>| {
        rt.block_on(async move { client.watch_primary(WatchPrimaryRequest { cluster: "cache".into() }).await })
    };
    let mut open = Vec::new();
    for i in 0..MAX_WATCHES {
        open.push(ask(clients[i % clients.len()].clone()).expect("a watch within the limit").into_inner());
    }
    let refused = ask(clients[0].clone()).expect_err("one watch too many");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // A client that goes away gives its slot back.
    open.pop();
    drc_tests::wait_for("the freed slot to serve a new watch", Duration::from_secs(10), || match ask(clients[1].clone()) {
        Ok(_) => Some(Ok(())),
        Err(e) if e.code() == Code::ResourceExhausted => None,
        Err(e) => Some(Err(e)),
    })
    .expect("the slot was given back")
    .expect("no other error");
    c.json(&["status"]).expect("the coordinator still answers");
}
