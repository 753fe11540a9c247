//! Random input against real coordinators, through every gRPC service:
//! admin requests with random fields, agent sessions with random messages,
//! Raft batches of random bytes and random pieces. Each call gets an answer
//! (a reply or an error status), never a panic: afterwards every node still
//! answers, none logged a panic, and the group still has a leader.
//!
//! The seed is fixed, so that a run is repeatable; `PROPTEST_CASES` runs
//! more cases.

use std::time::Duration;

use drc_proto::admin_service_client::AdminServiceClient;
use drc_proto::agent_service_client::AgentServiceClient;
use drc_proto::command_result::Found;
use drc_proto::raft_transport_client::RaftTransportClient;
use drc_proto::*;
use drc_tests::{Cluster, ClusterOpts, Creds};
use drc_tls::{Role, Security};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tonic::transport::Channel;

use drc_tests::CACHE_TOPOLOGY as TOPOLOGY;

/// A string: one a coordinator knows, or random characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("cache".to_string()),
        Just("redis-a".to_string()),
        Just("a".to_string()),
        Just("redis".to_string()),
        Just("primary".to_string()),
        Just("backup".to_string()),
        Just("0 3 * * *".to_string()),
        proptest::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter),
    ]
}

fn number() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..4, any::<u64>()]
}

#[derive(Debug, Clone)]
enum Admin {
    Apply(ApplyTopologyRequest),
    Failover(FailoverRequest),
    Switchover(SwitchoverRequest),
    Region(FailoverRegionRequest),
    Pause(PauseRequest),
    ClearBlock(ClearBlockRequest),
    Backup(StartBackupRequest),
    Test(StartRecoveryTestRequest),
    Schedule(SetScheduleRequest),
    Restore(StartRestoreRequest),
    Lists(ListJobsRequest),
    History(HistoryRequest),
    Health(HealthRequest),
    Audit(AuditRequest),
    Transfer(TransferLeadershipRequest),
    Remove(RemoveNodeRequest),
    Add(AddNodeRequest),
}

/// Any point, or none; any timeline text.
fn restore_point() -> impl Strategy<Value = Option<RestorePoint>> {
    let point = prop_oneof![
        any::<bool>().prop_map(restore_point::Point::Latest),
        any::<i64>().prop_map(restore_point::Point::TimeUs),
        any::<u64>().prop_map(restore_point::Point::Lsn),
    ];
    proptest::option::of((proptest::option::of(point), text()).prop_map(|(point, timeline)| RestorePoint { point, timeline }))
}

fn admin() -> impl Strategy<Value = Admin> {
    prop_oneof![
        // A dry run: a document that parses (the empty one does) changes nothing.
        text().prop_map(|topology_toml| Admin::Apply(ApplyTopologyRequest { topology_toml, dry_run: true })),
        (text(), text(), any::<bool>()).prop_map(|(cluster, to, force)| Admin::Failover(FailoverRequest { cluster, to, force })),
        (text(), text()).prop_map(|(cluster, to)| Admin::Switchover(SwitchoverRequest { cluster, to })),
        (text(), text(), any::<bool>()).prop_map(|(from, to, force)| Admin::Region(FailoverRegionRequest { from, to, force })),
        (text(), any::<bool>()).prop_map(|(cluster, paused)| Admin::Pause(PauseRequest { cluster, paused })),
        text().prop_map(|cluster| Admin::ClearBlock(ClearBlockRequest { cluster })),
        (text(), text()).prop_map(|(cluster, destination)| Admin::Backup(StartBackupRequest { cluster, destination })),
        (text(), number(), any::<bool>()).prop_map(|(cluster, backup_id, random_point)| Admin::Test(StartRecoveryTestRequest {
            cluster,
            backup_id,
            random_point
        })),
        (text(), restore_point(), text(), text(), any::<u32>())
            .prop_map(|(cluster, point, on, dir, port)| Admin::Restore(StartRestoreRequest { cluster, point, on, dir, port })),
        (text(), text(), text()).prop_map(|(cluster, job, cron)| Admin::Schedule(SetScheduleRequest { cluster, job, cron })),
        text().prop_map(|cluster| Admin::Lists(ListJobsRequest { cluster })),
        text().prop_map(|cluster| Admin::History(HistoryRequest { cluster })),
        text().prop_map(|cluster| Admin::Health(HealthRequest { cluster })),
        (text(), number(), any::<u32>()).prop_map(|(cluster, since_ms, limit)| Admin::Audit(AuditRequest { cluster, since_ms, limit })),
        // Ids no node has: leadership and membership stay as they are.
        (100u64..).prop_map(|id| Admin::Transfer(TransferLeadershipRequest { id })),
        (100u64..).prop_map(|id| Admin::Remove(RemoveNodeRequest { id })),
        (number(), text(), text()).prop_map(|(id, address, raft_address)| Admin::Add(AddNodeRequest { id, address, raft_address })),
    ]
}

async fn call_admin(c: &mut AdminServiceClient<Channel>, a: Admin) -> Result<(), tonic::Status> {
    match a {
        Admin::Apply(r) => c.apply_topology(r).await.map(drop),
        Admin::Failover(r) => c.failover(r).await.map(drop),
        Admin::Switchover(r) => c.switchover(r).await.map(drop),
        Admin::Region(r) => c.failover_region(r).await.map(drop),
        Admin::Pause(r) => c.pause(r).await.map(drop),
        Admin::ClearBlock(r) => c.clear_block(r).await.map(drop),
        Admin::Backup(r) => c.start_backup(r).await.map(drop),
        Admin::Test(r) => c.start_recovery_test(r).await.map(drop),
        Admin::Restore(r) => c.start_restore(r).await.map(drop),
        Admin::Schedule(r) => c.set_schedule(r).await.map(drop),
        Admin::Lists(r) => {
            c.list_backups(r.clone()).await?;
            c.list_recovery_tests(r.clone()).await?;
            c.list_restores(r.clone()).await?;
            c.list_schedules(r).await.map(drop)
        }
        Admin::History(r) => c.history(r).await.map(drop),
        Admin::Health(r) => c.health(r).await.map(drop),
        Admin::Audit(r) => c.audit(r).await.map(drop),
        Admin::Transfer(r) => c.transfer_leadership(r).await.map(drop),
        Admin::Remove(r) => c.remove_node(r).await.map(drop),
        Admin::Add(r) => c.add_node(r).await.map(drop),
    }
}

fn agent_message() -> impl Strategy<Value = AgentMessage> {
    let hello = (text(), text(), text(), text(), text(), any::<u32>()).prop_map(|(member_id, cluster, region, kind, dataset_id, p)| {
        agent_message::Body::Hello(AgentHello {
            member_id,
            cluster,
            region,
            kind,
            dataset_id,
            command_protocol: p % 4,
            ..Default::default()
        })
    });
    let sample = (text(), number(), any::<bool>(), text(), number(), number(), number(), any::<u32>(), text(), number()).prop_map(
        |(member_id, taken_at_ms, reachable, role, position, lag_bytes, lag_ms, timeline, dataset_id, epoch)| {
            agent_message::Body::Sample(Sample {
                member_id,
                taken_at_ms,
                reachable,
                role,
                position,
                lag_bytes,
                lag_ms,
                timeline,
                dataset_id,
                epoch,
                ..Default::default()
            })
        },
    );
    let result = (number(), any::<bool>(), text(), text(), proptest::option::of(number())).prop_map(|(command_id, ok, error, k, n)| {
        let found = match command_id % 5 {
            0 => None,
            1 => Some(Found::Step(StepFound { position: n, dataset_id: k, ..Default::default() })),
            2 => Some(Found::Backup(BackupMade { manifest_json: k, raw_bytes: n.unwrap_or(0), ..Default::default() })),
            3 => Some(Found::Restore(RestoreFound {
                port: n.unwrap_or(0) as u32,
                reached_lsn: n.unwrap_or(0),
                reached_commit_us: n.map(|n| n as i64),
                ..Default::default()
            })),
            _ => Some(Found::RecoveryTest(RecoveryTestFound { rpo_ms: n, checks: [(k, error.clone())].into(), ..Default::default() })),
        };
        agent_message::Body::Result(CommandResult { command_id, ok, error, found, ..Default::default() })
    });
    let progress = (number(), text(), number(), number()).prop_map(|(command_id, phase, bytes_done, bytes_total)| {
        agent_message::Body::Progress(Progress { command_id, phase, bytes_done, bytes_total, elapsed_ms: 0 })
    });
    prop_oneof![hello, sample, result, progress].prop_map(|body| AgentMessage { body: Some(body) })
}

/// A Raft batch from node 2: random bytes as messages, or a random piece.
fn raft_batch(cluster_id: String) -> impl Strategy<Value = RaftBatch> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..64);
    let piece = (number(), number(), prop_oneof![0u64..256, any::<u64>()], bytes.clone())
        .prop_map(|(id, offset, total, data)| Some(MessagePiece { id, offset, total, data }));
    (proptest::collection::vec(bytes, 0..3), prop_oneof![Just(None), piece]).prop_map(move |(messages, piece)| RaftBatch {
        cluster_id: cluster_id.clone(),
        from_id: 2,
        from_address: String::new(),
        messages,
        piece,
    })
}

fn runner(cases: u32) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(cases);
    TestRunner::new_with_rng(
        Config { cases, max_shrink_iters: 200, ..Config::default() },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[11; 32]),
    )
}

async fn connect(security: &Security, address: &str) -> Channel {
    let endpoint = Security::endpoint(address).expect("endpoint").timeout(Duration::from_secs(10));
    security.connect(endpoint).await.expect("connect")
}

#[test]
fn random_requests_on_every_service_get_an_answer_and_every_coordinator_survives() {
    let c = Cluster::start(ClusterOpts::default()).expect("cluster");
    c.apply(TOPOLOGY).expect("apply");
    let pki = c.pki.as_ref().expect("pki");
    let leader = c.wait_leader(Duration::from_secs(30)).expect("leader");
    let follower = *c.nodes.keys().find(|id| **id != leader && **id != 2).expect("a follower other than node 2");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let operator = c.creds.security().expect("operator");
    let agent = Creds::Tls(pki.client(Role::Agent, "redis-a", "agent").expect("agent")).security().expect("agent");
    let peer = Creds::Tls(pki.client(Role::Peer, "2", "peer").expect("peer")).security().expect("peer");
    let (admin_ch, agent_ch, raft_ch) = rt.block_on(async {
        let follower = &c.nodes[&follower];
        (
            connect(&operator, &follower.address).await,
            connect(&agent, &c.nodes[&leader].address).await,
            connect(&peer, follower.raft_address.as_deref().expect("raft listener")).await,
        )
    });

    // Through a follower, so that forwarding sees them too.
    runner(300)
        .run(&admin(), |a| {
            let mut client = AdminServiceClient::new(admin_ch.clone());
            let r = rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), call_admin(&mut client, a.clone())).await });
            prop_assert!(r.is_ok(), "no answer within 20 s to {a:?}");
            Ok(())
        })
        .expect("admin requests");

    runner(100)
        .run(&proptest::collection::vec(agent_message(), 1..6), |msgs| {
            let mut client = AgentServiceClient::new(agent_ch.clone());
            let answered = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(20), async {
                    // A refusal is an answer; so is a stream, read until the
                    // coordinator ends it or waits for more.
                    if let Ok(r) = client.session(tokio_stream::iter(msgs.clone())).await {
                        let mut s = r.into_inner();
                        while let Ok(Ok(Some(_))) = tokio::time::timeout(Duration::from_millis(200), s.message()).await {}
                    }
                })
                .await
            });
            prop_assert!(answered.is_ok(), "no answer within 20 s to {msgs:?}");
            Ok(())
        })
        .expect("agent sessions");

    runner(300)
        .run(&raft_batch(c.cluster_id.clone()), |b| {
            let mut client = RaftTransportClient::new(raft_ch.clone());
            let r = rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), client.send(b.clone())).await });
            prop_assert!(r.is_ok(), "no answer within 20 s to {b:?}");
            Ok(())
        })
        .expect("raft batches");

    // Every node alive and answering, no handler panicked, and a leader.
    for node in c.nodes.values() {
        c.json_at(node.id, &["status"]).unwrap_or_else(|e| panic!("node {} does not answer: {e}\n{}", node.id, node.log_text()));
        let log = node.log_text();
        assert!(!log.contains("panicked"), "node {} panicked:\n{log}", node.id);
    }
    c.wait_leader(Duration::from_secs(30)).expect("a leader");
}
