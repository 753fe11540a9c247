//! End-to-end tests of the Raft-replicated coordinator: real
//! `drc-coordinator` processes on loopback, driven by the real `drctl`.

use std::fs;
use std::time::{Duration, Instant};

use drc_tests::{bin, drctl, example_topology, free_port, json_output, wait_for, Cluster, ClusterOpts};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(30);

fn topology_at(c: &Cluster, id: u64) -> Option<Value> {
    c.json_at(id, &["topology", "get"]).ok().map(|v| v["topology"].clone())
}

fn leader_and_followers(c: &Cluster) -> (u64, Vec<u64>) {
    let leader = c.wait_leader(LONG).expect("leader");
    let followers = c.nodes.keys().copied().filter(|id| *id != leader).collect();
    (leader, followers)
}

#[test]
fn three_nodes_elect_a_leader_and_replicate_the_topology() {
    let c = Cluster::start(ClusterOpts::default()).expect("cluster");
    let status = c.json(&["status"]).expect("status");
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(3), "{status}");
    for n in status["nodes"].as_array().into_iter().flatten() {
        for field in ["id", "role", "term", "applied_index"] {
            assert!(!n[field].is_null(), "status node lacks {field}: {n}");
        }
    }
    let r = c.apply(&example_topology(1)).expect("apply");
    assert_eq!(r["applied"], true);
    let expected = topology_at(&c, c.wait_leader(LONG).expect("leader")).expect("topology");
    assert_eq!(expected["members"].as_object().map(|m| m.len()), Some(5));
    for id in 1..=3 {
        wait_for(&format!("node {id} to hold the topology"), LONG, || (topology_at(&c, id)? == expected).then_some(()))
            .expect("replicated");
    }
    // Applying the same document again changes nothing.
    let again = c.apply(&example_topology(1)).expect("apply");
    assert_eq!(again["applied"], false);
    assert_eq!(again["diff"].as_array().map(Vec::len), Some(0));
    // A dry run shows the diff and changes nothing.
    let path = c.dir.path().join("dry.toml");
    fs::write(&path, example_topology(9)).expect("write");
    let dry = c.json(&["apply", "--dry-run", "-f", path.to_str().expect("path")]).expect("dry run");
    assert_eq!(dry["applied"], false);
    assert_eq!(dry["diff"], serde_json::json!(["~ regions.a.priority: 1 -> 9"]));
    assert_eq!(topology_at(&c, 1).expect("topology"), expected);
    // Human output works too.
    let out = c.drctl(&["status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("leader") && text.contains("topology v1"), "{text}");
    // Only the leader renews primaries' leases, once a quorum confirmed it.
    let (leader, followers) = leader_and_followers(&c);
    wait_for("the leader to renew leases", LONG, || {
        let s = c.json(&["status"]).ok()?;
        let nodes = s["nodes"].as_array()?.clone();
        let renews = |id: u64| nodes.iter().find(|n| n["id"].as_u64() == Some(id)).map(|n| n["renews_leases"] == true);
        (renews(leader)? && followers.iter().all(|f| renews(*f) == Some(false))).then_some(())
    })
    .expect("renewing");
    // Leadership moves on request, and answers once it has moved.
    let to = followers[0];
    let moved = c.json(&["members", "lead", "--id", &to.to_string()]).expect("members lead");
    assert_eq!(moved["leader_id"].as_u64(), Some(to), "{moved}");
    assert_ne!(to, leader);
    assert_eq!(c.json_at(to, &["status"]).expect("status")["leader_id"].as_u64(), Some(to));
    c.apply(&example_topology(2)).expect("a write through the new leader");
    let out = c.drctl(&["members", "lead", "--id", "9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("node 9 is not a voter"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_killed_leader_is_replaced_and_catches_up_from_a_snapshot_sent_in_pieces() {
    // Small pieces, so that the snapshot cannot go in one message.
    let mut c = Cluster::start(ClusterOpts { snapshot_entries: 20, piece_bytes: 1024, ..Default::default() }).expect("cluster");
    c.apply(&example_topology(1)).expect("apply");
    let (old_leader, _) = leader_and_followers(&c);
    c.kill(old_leader);

    let new_leader =
        wait_for("a new leader", LONG, || c.wait_leader(Duration::from_secs(2)).ok().filter(|l| *l != old_leader)).expect("new leader");
    assert_ne!(new_leader, old_leader);
    let r = c.apply(&example_topology(2)).expect("write after failover");
    assert_eq!(r["applied"], true);

    // Enough writes for the survivors to compact their logs past what the
    // dead node has, so that it can only catch up by installing a snapshot.
    for v in 3..=45 {
        c.apply(&example_topology(v)).expect("write");
    }
    let s = c.json_at(new_leader, &["status"]).expect("status");
    let me = s["nodes"].as_array().expect("nodes").iter().find(|n| n["id"].as_u64() == Some(new_leader)).expect("self").clone();
    let target = me["applied_index"].as_u64().expect("applied");
    assert!(me["first_index"].as_u64().expect("first") > 20, "leader log was not compacted: {me}");

    c.spawn(old_leader).expect("restart");
    c.wait_applied(old_leader, target, LONG).expect("caught up");
    let want = topology_at(&c, new_leader).expect("topology");
    assert_eq!(topology_at(&c, old_leader), Some(want));
    assert!(
        c.nodes[&old_leader].log_text().contains("installed snapshot from the leader"),
        "the restarted node did not install a snapshot"
    );
    assert!(c.nodes[&new_leader].log_text().contains("sending a raft message in pieces"), "the snapshot went in pieces");
}

#[test]
fn all_nodes_killed_and_restarted_keep_their_state() {
    let mut c = Cluster::start(ClusterOpts::default()).expect("cluster");
    for v in 1..=5 {
        c.apply(&example_topology(v)).expect("apply");
    }
    // The reference is the leader's: it applied all five before answering,
    // while a follower may not have heard of the last commit yet (and is
    // killed in that state on purpose).
    let leader = c.wait_leader(LONG).expect("leader");
    let before = topology_at(&c, leader).expect("topology");
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.spawn(id).expect("restart");
    }
    c.wait_leader(LONG).expect("leader after full restart");
    for id in 1..=3 {
        wait_for(&format!("node {id} state"), LONG, || (topology_at(&c, id)? == before).then_some(())).expect("state intact");
    }
    let v = c.json(&["topology", "get"]).expect("get");
    assert_eq!(v["version"], 5);
    c.apply(&example_topology(6)).expect("write after restart");
}

#[test]
fn without_a_quorum_a_write_fails_with_a_clear_error_in_bounded_time() {
    let mut c = Cluster::start(ClusterOpts { write_timeout: "3s", ..Default::default() }).expect("cluster");
    c.apply(&example_topology(1)).expect("apply");
    let (leader, followers) = leader_and_followers(&c);
    // Take down two of three, including the leader, then one more case
    // where the survivor was the leader.
    c.kill(followers[0]);
    c.kill(leader);
    let survivor = followers[1];
    let path = c.dir.path().join("t.toml");
    fs::write(&path, example_topology(2)).expect("write");
    let addr = c.nodes[&survivor].address.clone();
    let start = Instant::now();
    let out = drctl(&addr, &c.creds, &["apply", "-f", path.to_str().expect("path")]);
    let took = start.elapsed();
    assert!(!out.status.success(), "a write without quorum succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no quorum"), "unclear error: {err}");
    // Bounded: the write timeout is 3 s; allow a wide margin for a loaded machine.
    assert!(took < Duration::from_secs(20), "no-quorum write took {took:?}");

    // Now the survivor is the old leader.
    c.spawn(leader).expect("restart");
    c.spawn(followers[0]).expect("restart");
    let leader = c.wait_leader(LONG).expect("leader");
    for id in c.nodes.keys().copied().filter(|id| *id != leader).collect::<Vec<_>>() {
        c.kill(id);
    }
    let addr = c.nodes[&leader].address.clone();
    let out = drctl(&addr, &c.creds, &["apply", "-f", path.to_str().expect("path")]);
    assert!(!out.status.success(), "a write without quorum succeeded on the old leader");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no quorum"), "unclear error: {err}");
}

#[test]
fn a_fourth_node_is_added_then_a_node_removed_and_writes_keep_working() {
    let mut c = Cluster::start(ClusterOpts { snapshot_entries: 5, ..Default::default() }).expect("cluster");
    for v in 1..=12 {
        c.apply(&example_topology(v)).expect("apply");
    }
    let address = c.spawn_joiner(4).expect("joiner");
    let r = c.json(&["members", "add", "--id", "4", "--address", &address]).expect("members add");
    assert_eq!(r["voters"], serde_json::json!([1, 2, 3, 4]));
    let leader = c.wait_leader(LONG).expect("leader");
    let s = c.json_at(leader, &["status"]).expect("status");
    let applied = s["nodes"].as_array().expect("nodes").iter().find(|n| n["id"].as_u64() == Some(leader)).expect("leader")["applied_index"]
        .as_u64()
        .expect("idx");
    c.wait_applied(4, applied, LONG).expect("node 4 caught up");
    assert_eq!(topology_at(&c, 4), topology_at(&c, leader));

    c.apply(&example_topology(100)).expect("write with four nodes");
    // Remove the leader itself: leadership moves first.
    let r = c.json(&["members", "remove", "--id", &leader.to_string()]).expect("members remove");
    let voters: Vec<u64> = r["voters"].as_array().expect("voters").iter().filter_map(Value::as_u64).collect();
    assert_eq!(voters.len(), 3);
    assert!(!voters.contains(&leader));
    c.kill(leader);
    c.nodes.remove(&leader);
    let new_leader = c.wait_leader(LONG).expect("leader");
    assert_ne!(new_leader, leader);
    c.apply(&example_topology(101)).expect("write after removal");
    let list = c.json(&["members", "list"]).expect("list");
    assert_eq!(list["nodes"].as_array().map(Vec::len), Some(3), "{list}");
    // Adding an existing voter is refused.
    let out = c.drctl(&["members", "add", "--id", &new_leader.to_string(), "--address", "127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already a voter"));
}

#[test]
fn bad_topologies_are_refused_with_every_problem_named_and_nothing_applied() {
    let c = Cluster::start(ClusterOpts::default()).expect("cluster");
    c.apply(&example_topology(1)).expect("apply");
    // Read on the leader, which applied the document before answering: a
    // follower may not have yet (`topology get` answers from the node asked).
    let leader = c.wait_leader(LONG).expect("leader");
    let before = c.json_at(leader, &["topology", "get"]).expect("get");
    assert_eq!(before["version"], 1, "{before}");
    let cases: &[(&str, &[&str])] = &[
        ("[regions.a\npriority = 1", &["malformed TOML"]),
        ("[regions.a]\ncolour = 'red'\n", &["regions.a.colour: unknown key"]),
        (
            "[regions.a]\n[clusters.c]\nkind='redis'\n[[members]]\nid='m'\ncluster='c'\nregion='a'\naddress='h:1'\n[[members]]\nid='m'\ncluster='c'\nregion='a'\naddress='h:2'\n",
            &["members[1].id: duplicate member id \"m\""],
        ),
        ("[regions.a]\n[clusters.c]\nkind='redis'\n[[members]]\nid='m'\ncluster='c'\nregion='mars'\naddress='h:1'\n", &["members[0].region: undeclared region \"mars\""]),
        (
            "[regions.a]\n[clusters.c]\nkind='redis'\n[clusters.c.policy]\ndetection_window='0s'\nanti_flap_window='-3s'\n",
            &["clusters.c.policy.detection_window", "greater than zero", "clusters.c.policy.anti_flap_window"],
        ),
    ];
    for (doc, wants) in cases {
        let path = c.dir.path().join("bad.toml");
        fs::write(&path, doc).expect("write");
        let out = c.drctl(&["apply", "-f", path.to_str().expect("path")]);
        assert!(!out.status.success(), "accepted: {doc}");
        let err = String::from_utf8_lossy(&out.stderr);
        for want in *wants {
            assert!(err.contains(want), "error for {doc:?} lacks {want:?}: {err}");
        }
    }
    // (The refusals are in the audit trail, so the applied index moved.)
    let after = c.json_at(leader, &["topology", "get"]).expect("get");
    assert_eq!((&after["topology"], &after["version"]), (&before["topology"], &before["version"]), "a bad document changed the topology");
}

#[test]
fn bad_endpoints_configs_and_data_dirs_are_refused_clearly() {
    // drctl against a dead address.
    let dead = format!("127.0.0.1:{}", free_port());
    let out = drctl(&dead, &drc_tests::Creds::Insecure, &["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no coordinator reachable") && err.contains(&dead), "{err}");
    assert!(json_output(drctl(&dead, &drc_tests::Creds::Insecure, &["-o", "json", "status"])).is_err());

    let mut c = Cluster::start(ClusterOpts::default()).expect("cluster");
    // Another cluster's data dir.
    let stopped = c.terminate(1).expect("stops on SIGTERM");
    assert!(stopped.success(), "SIGTERM did not stop the coordinator cleanly: {stopped}");
    let cfg = fs::read_to_string(&c.nodes[&1].config).expect("config");
    let foreign = c.dir.path().join("foreign.toml");
    let renamed = cfg.replace(&format!("cluster_id = {:?}", c.cluster_id), "cluster_id = \"someone-else\"");
    // With its own certificate, it is refused for its certificate first.
    fs::write(&foreign, &renamed).expect("write");
    let out = std::process::Command::new(bin("drc-coordinator")).arg("--config").arg(&foreign).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "a configuration error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls.cert names") && err.contains("drc://someone-else/peer/1"), "{err}");
    // With a certificate of that cluster, for its data dir.
    let pki = c.pki.as_ref().expect("pki");
    let id = drc_tls::Identity::peer("someone-else", 1).expect("identity");
    let other = pki.issue_for(&id, &["127.0.0.1"], "someone-else-1").expect("certificate");
    let own = pki.issue(drc_tls::Role::Peer, "1", &["127.0.0.1"]).expect("node 1's certificate, unchanged");
    let renamed = renamed
        .replace(&own.cert.display().to_string(), &other.cert.display().to_string())
        .replace(&own.key.display().to_string(), &other.key.display().to_string());
    fs::write(&foreign, renamed).expect("write");
    let out = std::process::Command::new(bin("drc-coordinator")).arg("--config").arg(&foreign).output().expect("run");
    assert_eq!(out.status.code(), Some(3), "a data dir that needs a human");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to drc cluster"), "{err}");

    // A port in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let out = std::process::Command::new(bin("drc-coordinator"))
        .args([
            "--config",
            c.nodes[&1].config.to_str().expect("path"),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--advertise",
            &c.nodes[&1].address,
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "a port in use may be free on the next try");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in use"), "{}", String::from_utf8_lossy(&out.stderr));

    // A malformed config file.
    let bad = c.dir.path().join("bad.toml");
    fs::write(&bad, "cluster_id = 'x'\nnode_id = 'one'\n").expect("write");
    let out = std::process::Command::new(bin("drc-coordinator")).arg("--config").arg(&bad).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("node_id"), "{}", String::from_utf8_lossy(&out.stderr));

    // The stopped node comes back with its own config.
    c.spawn(1).expect("restart");
    c.wait_leader(LONG).expect("leader");
}

#[test]
fn crashes_in_the_middle_of_writes_never_break_restart() {
    let mut c = Cluster::start(ClusterOpts { snapshot_entries: 10, ..Default::default() }).expect("cluster");
    let mut v = 1;
    // Every write is a different topology, so each one applied bumps the
    // version by one: a write acknowledged and then lost would leave the
    // version short of the writes acknowledged.
    let (mut acknowledged, mut attempted) = (0u64, 0u64);
    for round in 0..4u64 {
        let victim = 1 + round % 3;
        // Kill the victim while writes are in flight through the others.
        let endpoints: String = c.nodes.values().filter(|n| n.id != victim).map(|n| n.address.clone()).collect::<Vec<_>>().join(",");
        let mut writers = Vec::new();
        for _ in 0..3 {
            let path = c.dir.path().join(format!("w{v}.toml"));
            fs::write(&path, example_topology(v)).expect("write");
            v += 1;
            let child = std::process::Command::new(bin("drctl"))
                .args(["--endpoints", &endpoints, "apply", "-f", path.to_str().expect("path")])
                .args(c.creds.drctl_args())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("drctl");
            writers.push(child);
        }
        // A crash at a different moment of the writes each round.
        std::thread::sleep(Duration::from_millis(37 * (round + 1)));
        c.kill(victim);
        for mut w in writers {
            attempted += 1;
            if w.wait().is_ok_and(|status| status.success()) {
                acknowledged += 1;
            }
        }
        c.spawn(victim).expect("restart after crash");
        c.wait_leader(LONG).expect("leader");
        c.apply(&example_topology(v)).expect("write after crash");
        (acknowledged, attempted) = (acknowledged + 1, attempted + 1);
        v += 1;
    }
    let leader = c.wait_leader(LONG).expect("leader");
    let want = topology_at(&c, leader).expect("topology");
    let version = c.json_at(leader, &["topology", "get"]).expect("get")["version"].as_u64().expect("version");
    println!("{acknowledged} of {attempted} writes acknowledged; topology version {version}");
    assert!(
        (acknowledged..=attempted).contains(&version),
        "version {version}: {acknowledged} writes were acknowledged and {attempted} attempted"
    );
    for id in 1..=3 {
        wait_for(&format!("node {id} to converge"), LONG, || (topology_at(&c, id)? == want).then_some(())).expect("converged");
    }
}
