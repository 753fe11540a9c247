//! drc's own disaster: a majority of the coordinators lost for good. The
//! survivor still answers reads but takes no write; the runbook's commands
//! (`runbooks/coordinator-quorum-lost.md`, its `sh` blocks run verbatim)
//! make it a one-node cluster with its state, and a member is added back
//! with an empty data dir. The lost nodes, started again on their old data,
//! do not disturb the recovered group, and an agent that has seen it does
//! not follow them.

use std::time::Duration;

use drc_proto::agent_service_client::AgentServiceClient;
use drc_proto::{agent_message, coordinator_message, AgentHello, AgentMessage, ClusterView, CoordinatorMessage};
use drc_tests::{drctl, example_topology, holds_for, run_runbook_block, runbook_blocks, wait_for, Cluster, ClusterOpts, Creds};
use drc_tls::{Role, Security};

const LONG: Duration = Duration::from_secs(30);

fn run_block(c: &Cluster, block: &str, vars: &[(&str, String)]) -> String {
    run_runbook_block(block, &c.endpoints(), &c.creds, vars)
}

fn paused(c: &Cluster, id: u64) -> Option<bool> {
    let s = c.json_at(id, &["status"]).ok()?;
    s["clusters"].as_array()?.iter().find(|x| x["name"] == "n8n-pg")?["paused"].as_bool()
}

fn generation(c: &Cluster, id: u64) -> Option<u64> {
    c.json_at(id, &["status"]).ok()?["generation"].as_u64()
}

/// What the coordinator at `address` answers an agent of pg-a that has seen
/// generation `seen` of the group: its first view, or the refusal.
fn agent_session(c: &Cluster, address: &str, seen: u64) -> Result<ClusterView, tonic::Status> {
    let files = c.pki.as_ref().expect("a TLS cluster").client(Role::Agent, "pg-a", "agent-pg-a").expect("an agent certificate");
    let security = Creds::Tls(files).security().expect("certificate files");
    let hello = AgentHello {
        member_id: "pg-a".into(),
        cluster: "n8n-pg".into(),
        region: "a".into(),
        kind: "postgres".into(),
        command_protocol: drc_proto::COMMAND_PROTOCOL,
        generation: seen,
        ..Default::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let endpoint = Security::endpoint(address).expect("endpoint").timeout(LONG);
        let channel = security.connect(endpoint).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        // The sender stays open: a closed request stream ends the session.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(AgentMessage { body: Some(agent_message::Body::Hello(hello)) }).await.expect("queued");
        let mut inbound = AgentServiceClient::new(channel).session(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        match tokio::time::timeout(LONG, inbound.message()).await {
            Ok(Ok(Some(CoordinatorMessage { body: Some(coordinator_message::Body::View(v)) }))) => Ok(v),
            Ok(Ok(Some(other))) => Err(tonic::Status::aborted(format!("not a view: {other:?}"))),
            Ok(Ok(None)) => Err(tonic::Status::aborted("the session ended without a view")),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(tonic::Status::deadline_exceeded("no view")),
        }
    })
}

#[test]
fn a_cluster_that_lost_two_of_three_coordinators_is_back_with_its_state_by_the_runbooks_commands() {
    let mut c = Cluster::start(ClusterOpts::default()).expect("cluster");
    c.apply(&example_topology(7)).expect("apply");
    c.json(&["pause", "--cluster", "n8n-pg"]).expect("pause");
    let leader = c.wait_leader(LONG).expect("leader");
    // Two nodes are lost for good, the leader among them; one survives.
    let survivor = c.nodes.keys().copied().find(|id| *id != leader).expect("a follower");
    let lost: Vec<u64> = c.nodes.keys().copied().filter(|id| *id != survivor).collect();
    wait_for("the survivor to hold the pause", LONG, || paused(&c, survivor).filter(|p| *p)).expect("replicated");
    for id in &lost {
        c.kill(*id);
    }
    let address = c.nodes[&survivor].address.clone();
    let out = drctl(&address, &c.creds, &["resume", "--cluster", "n8n-pg"]);
    assert!(!out.status.success(), "a write without quorum succeeded");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no quorum"), "{}", String::from_utf8_lossy(&out.stderr));
    // Reads still answer from the survivor: its Raft status (no leader)
    // and the replicated topology and history.
    let status = c.json_at(survivor, &["status"]).expect("status without a leader");
    assert_eq!(status["leader_id"], 0, "{status}");
    assert_eq!(c.json_at(survivor, &["topology", "get"]).expect("topology")["topology"]["regions"]["a"]["priority"], 7);
    c.json_at(survivor, &["history"]).expect("history without a leader");

    let blocks = runbook_blocks("coordinator-quorum-lost.md", "sh");
    assert_eq!(blocks.len(), 3, "inspect, recover, add a member");
    let data_dir = c.nodes[&survivor].data_dir.display().to_string();
    c.terminate(survivor);
    let inspected = run_block(&c, &blocks[0], &[("DATA_DIR", data_dir.clone())]);
    assert!(inspected.contains("voters [1, 2, 3]"), "{inspected}");
    let recovered = run_block(&c, &blocks[1], &[("DATA_DIR", data_dir)]);
    assert!(recovered.contains("is now the only voter"), "{recovered}");
    c.spawn(survivor).expect("start the survivor");
    let lost_nodes: Vec<_> = lost.iter().map(|id| c.nodes.remove(id).expect("lost node")).collect();
    assert_eq!(c.wait_leader(LONG).expect("leader"), survivor);
    assert_eq!(paused(&c, survivor), Some(true), "the state survived");
    assert_eq!(generation(&c, survivor), Some(1), "a recovered group is the next generation");
    let view = agent_session(&c, &c.nodes[&survivor].address, 0).expect("an agent of the old generation is served");
    assert_eq!(view.generation, 1, "and learns the new one: {view:?}");
    let topology = c.json_at(survivor, &["topology", "get"]).expect("topology");
    assert_eq!(topology["topology"]["regions"]["a"]["priority"], 7, "{topology}");
    c.json(&["resume", "--cluster", "n8n-pg"]).expect("a write works again");
    assert_eq!(paused(&c, survivor), Some(false));

    // A member is added back with an empty data dir.
    let new_address = c.spawn_joiner(4).expect("joiner");
    let listed = run_block(&c, &blocks[2], &[("NEW_ID", "4".into()), ("NEW_ADDRESS", new_address)]);
    assert!(listed.contains('4'), "{listed}");
    let members = c.json(&["members", "list"]).expect("members");
    let voters: Vec<u64> = members["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["membership"] == "voter")
        .filter_map(|n| n["id"].as_u64())
        .collect();
    assert_eq!(voters, vec![survivor, 4], "{members}");
    wait_for("node 4 to hold the state", LONG, || (!paused(&c, 4)?).then_some(())).expect("caught up");

    // Both lost nodes started again on their old data (against the
    // runbook's advice): they elect each other, a majority of the old
    // group, and their leader's messages reach the survivor, which
    // ignores them rather than follow it.
    let term =
        |c: &Cluster| c.json_at(survivor, &["status"]).ok()?["nodes"].as_array()?.iter().find(|n| n["id"] == survivor)?["term"].as_u64();
    let before = term(&c).expect("term");
    for stale in lost_nodes {
        let id = stale.id;
        c.nodes.insert(id, stale);
        c.spawn(id).expect("the stale node starts");
    }
    let stale_leader = |c: &Cluster| {
        lost.iter().find_map(|id| {
            let s = c.json_at(*id, &["status"]).ok()?;
            s["nodes"].as_array()?.iter().find(|n| n["id"] == *id && n["role"] == "leader").map(|_| *id)
        })
    };
    wait_for("the stale nodes to elect each other", LONG, || stale_leader(&c)).expect("stale leader");
    holds_for("the recovered leader to keep its term", Duration::from_secs(3), || {
        Some(if term(&c)? == before { Ok(()) } else { Err("the stale group changed the survivor's term".into()) })
    })
    .expect("undisturbed");
    c.json_at(survivor, &["pause", "--cluster", "n8n-pg"]).expect("writes still work");
    // The stale group still serves what it knew, as generation 0: an agent
    // that has seen generation 1 is sent on (UNAVAILABLE, so it tries the
    // next coordinator), by its leader and by its follower alike.
    let stale = stale_leader(&c).expect("stale leader");
    assert_eq!(generation(&c, stale), Some(0));
    for id in &lost {
        let refused = agent_session(&c, &c.nodes[id].address, 1).expect_err("a node left out of the recovery");
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        assert!(refused.message().contains("left behind by `drc-coordinator recover`"), "{}", refused.message());
    }
    assert_eq!(agent_session(&c, &c.nodes[&survivor].address, 1).expect("the recovered group serves it").generation, 1);
}
