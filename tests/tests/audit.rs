//! The audit trail against real coordinators: every state-changing command
//! leaves one entry with its caller, the node it reached and its outcome;
//! every node writes the trail to its JSON-lines file; `watch` shows it.

use std::collections::BTreeMap;
use std::time::Duration;

use drc_model::audit::{AuditAction, AuditEntry, AuditOutcome};
use drc_proto::admin_service_client::AdminServiceClient;
use drc_proto::{PauseRequest, WatchRequest};
use drc_tests::{drctl, json_output, wait_for, Cluster, ClusterOpts};

use drc_tests::CACHE_TOPOLOGY as TOPOLOGY;

fn entries(v: &serde_json::Value) -> Vec<AuditEntry> {
    serde_json::from_value(v["entries"].clone()).expect("audit entries")
}

#[test]
fn every_state_changing_command_leaves_one_entry_with_its_caller_node_and_outcome() {
    let c = Cluster::start(ClusterOpts::default()).expect("cluster");
    let leader = c.wait_leader(Duration::from_secs(30)).expect("leader");
    let follower = *c.nodes.keys().find(|id| **id != leader).expect("a follower");
    let other = *c.nodes.keys().find(|id| **id != leader && **id != follower).expect("a third node");
    let at_follower = |args: &[&str]| drctl(&c.nodes[&follower].address, &c.creds, args);
    let bad = c.dir.path().join("bad.toml");
    std::fs::write(&bad, "[regions.a]\n[clusters.x]\nkind = 'oracle'\n").expect("write");
    let good = c.dir.path().join("topology.toml");
    std::fs::write(&good, TOPOLOGY).expect("write");
    let (good, bad) = (good.display().to_string(), bad.display().to_string());

    // Each command through a follower (so the leader runs it for the
    // caller), with whether it succeeds.
    let commands: Vec<(AuditAction, Vec<&str>, bool)> = vec![
        (AuditAction::ApplyTopology, vec!["apply", "-f", &bad], false),
        (AuditAction::ApplyTopology, vec!["apply", "-f", &good], true),
        (AuditAction::Pause, vec!["pause", "--cluster", "cache"], true),
        (AuditAction::Pause, vec!["resume", "--cluster", "cache"], true),
        (AuditAction::ClearBlock, vec!["clear-block", "--cluster", "nope"], false),
        (AuditAction::SetSchedule, vec!["schedule", "set", "--cluster", "cache", "--backup", "0 3 * * *"], true),
        (AuditAction::Failover, vec!["failover", "--cluster", "cache"], false),
        (AuditAction::Switchover, vec!["switchover", "--cluster", "cache"], false),
        (AuditAction::FailoverRegion, vec!["failover-region", "--from", "a"], false),
        (AuditAction::StartBackup, vec!["backup", "run", "--cluster", "cache", "--no-wait"], false),
        (AuditAction::StartRecoveryTest, vec!["recovery-test", "run", "--cluster", "cache", "--no-wait"], false),
        (AuditAction::StartRestore, vec!["restore", "--cluster", "cache", "--latest", "--on", "redis-a", "--dir", "/nonexistent/r"], false),
        (AuditAction::AddNode, vec!["members", "add", "--id", "9", "--address", "127.0.0.1:1"], true),
        (AuditAction::RemoveNode, vec!["members", "remove", "--id", "9"], true),
    ];
    for (action, args, ok) in &commands {
        let out = at_follower(args);
        assert_eq!(out.status.success(), *ok, "{action} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Leadership moves last: its outcome is recorded through the new leader.
    let out = at_follower(&["members", "lead", "--id", &other.to_string()]);
    assert!(out.status.success(), "lead: {}", String::from_utf8_lossy(&out.stderr));

    let trail = entries(&c.json(&["audit", "--limit", "0"]).expect("audit"));
    assert_eq!(trail.len(), commands.len() + 1, "one entry per command: {trail:#?}");
    let caller = format!("drc://{}/operator/tester", c.cluster_id);
    let mut seen: BTreeMap<AuditAction, usize> = BTreeMap::new();
    for (e, (action, args, ok)) in trail.iter().rev().zip(&commands) {
        assert_eq!((e.action, &e.caller, e.role.as_str()), (*action, &caller, "operator"), "{args:?}: {e:#?}");
        assert_eq!(e.via, follower, "{args:?}: the node the caller reached: {e:#?}");
        let refused_where_asked = *action == AuditAction::ApplyTopology && !ok;
        assert_eq!(e.ran_on, if refused_where_asked { follower } else { leader }, "{args:?}: {e:#?}");
        match (&e.outcome, ok) {
            (AuditOutcome::Done { .. }, true) | (AuditOutcome::Refused { .. }, false) => {}
            (outcome, _) => panic!("{args:?}: outcome {outcome:?}"),
        }
        *seen.entry(e.action).or_default() += 1;
    }
    let lead = &trail[0];
    assert_eq!((lead.action, lead.ran_on), (AuditAction::TransferLeadership, leader));
    assert!(matches!(&lead.outcome, AuditOutcome::Done { detail } if detail.contains(&format!("node {other} leads"))), "{lead:#?}");
    *seen.entry(lead.action).or_default() += 1;
    assert_eq!(seen.len(), AuditAction::ALL.len(), "every action was exercised: {seen:?}");
    let pause = trail.iter().find(|e| e.action == AuditAction::Pause).expect("pause");
    assert_eq!((pause.request["cluster"].as_str(), pause.cluster.as_str()), ("cache", "cache"));
    let apply = trail.iter().rev().nth(1).expect("apply");
    assert!(matches!(&apply.outcome, AuditOutcome::Done { detail } if detail.contains("members.redis-a")), "the diff: {apply:#?}");

    // Filters.
    let only = entries(&c.json(&["audit", "--cluster", "cache", "--limit", "2"]).expect("audit"));
    assert!(only.len() == 2 && only.iter().all(|e| e.cluster == "cache"), "{only:#?}");
    let future = entries(&c.json(&["audit", "--since", "2100-01-01T00:00:00Z"]).expect("audit"));
    assert!(future.is_empty());
    let text = String::from_utf8_lossy(&c.drctl(&["audit"]).stdout).to_string();
    assert!(text.contains("transfer_leadership") && text.contains(&caller), "{text}");
    // A reader that went away (`drctl audit | head`): a quiet end, no panic.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = std::process::Command::new(drc_tests::bin("drctl"))
        .args(["--endpoints", &c.endpoints(), "audit"])
        .args(c.creds.drctl_args())
        .env_remove("DRC_INSECURE")
        .stdout(writer)
        .output()
        .expect("drctl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // Every node writes the whole trail to its file, each entry once, in order.
    for node in c.nodes.values() {
        let ids = wait_for(&format!("node {}'s audit file", node.id), Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&node.audit_log).ok()?;
            let ids: Vec<u64> = text.lines().filter_map(|l| serde_json::from_str::<AuditEntry>(l).ok()).map(|e| e.id).collect();
            (ids.len() >= trail.len()).then_some(ids)
        })
        .expect("audit file");
        let expected: Vec<u64> = trail.iter().rev().map(|e| e.id).collect();
        assert_eq!(ids, expected, "node {}", node.id);
    }
}

#[test]
fn a_viewer_reads_the_trail_and_a_watch_shows_each_request_as_it_completes() {
    let c = Cluster::start(ClusterOpts::default()).expect("cluster");
    c.apply(TOPOLOGY).expect("apply");
    let pki = c.pki.as_ref().expect("pki");
    let viewer = drc_tests::Creds::Tls(pki.client(drc_tls::Role::Viewer, "grafana", "viewer").expect("viewer"));
    let trail = json_output(drctl(&c.endpoints(), &viewer, &["-o", "json", "audit"])).expect("a viewer may read the trail");
    assert_eq!(entries(&trail).len(), 1, "the apply");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let leader = c.wait_leader(Duration::from_secs(30)).expect("leader");
        let security = c.creds.security().expect("creds");
        let endpoint = drc_tls::Security::endpoint(&c.nodes[&leader].address).expect("endpoint");
        let mut admin = AdminServiceClient::new(security.connect(endpoint).await.expect("connect"));
        let mut events = admin.watch(WatchRequest {}).await.expect("watch").into_inner();
        let first = events.message().await.expect("stream").expect("event");
        assert_eq!(first.kind, "watching");
        admin.pause(PauseRequest { cluster: "cache".into(), paused: true }).await.expect("pause");
        let event = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let e = events.message().await.expect("stream").expect("event");
                if e.kind == "audit" {
                    return e;
                }
            }
        })
        .await
        .expect("an audit event");
        assert_eq!(event.cluster, "cache");
        assert!(event.message.contains("operator/tester pause") && event.message.contains("done"), "{}", event.message);
    });
}
