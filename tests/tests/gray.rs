//! Gray failures through the lab: a hung node keeps every connection open
//! and silent (SIGSTOP: no FIN, no RST). drc must replace it as it replaces
//! a dead one, and the node, once it runs again, must not take writes.
//! Times are printed, never asserted.

use std::time::{Duration, Instant};

use drc_tests::lab::writer::{stop_writer, writer, writes_beyond, Written};
use drc_tests::lab::{postgres::postmaster_pid, postgres::psql, redis::cli, signal, signal_tree, Lab};
use drc_tests::{holds_for, port_of, wait_for};

const LONG: Duration = Duration::from_secs(90);

/// A lab whose clusters have both adopted their primaries.
fn lab() -> (tempfile::TempDir, Lab) {
    let dir = tempfile::Builder::new().prefix("drc-gray-test-").tempdir().expect("tempdir");
    let lab = Lab::up(dir.path()).expect("lab up");
    wait_for("both clusters adopted", LONG, || (lab.epoch("app-pg")? >= 1 && lab.epoch("app-redis")? >= 1).then_some(())).expect("adopted");
    (dir, lab)
}

/// A writer through the PostgreSQL endpoint, once it makes progress on pg-a.
fn writing(lab: &Lab) -> (std::sync::Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<(Vec<u32>, Duration)>) {
    let endpoint = port_of(&lab.forwarder("app-pg").expect("forwarder"));
    psql(endpoint, "CREATE TABLE acked (id int PRIMARY KEY)").expect("table");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = writer(endpoint, std::sync::Arc::clone(&stop));
    writes_beyond(lab.member("pg-a").expect("pg-a").port, 20);
    (stop, w)
}

/// Processes stopped by a test, woken when it ends however it ends.
struct Frozen(Vec<u32>);

impl Frozen {
    fn wake(&mut self) {
        for pid in self.0.drain(..) {
            signal(pid, libc::SIGCONT);
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.wake();
    }
}

#[test]
fn a_frozen_postgres_node_is_replaced_and_once_woken_takes_no_write_and_rejoins() {
    let (_dir, lab) = lab();
    let (stop, w) = writing(&lab);
    let pa = lab.member("pg-a").expect("pg-a").clone();

    // A hung machine: the agent, the postmaster and every server process.
    signal(pa.agent_pid, libc::SIGSTOP);
    let mut frozen = Frozen(vec![pa.agent_pid]);
    frozen.0.extend(signal_tree(postmaster_pid(&pa.data_dir).expect("postmaster"), libc::SIGSTOP));
    let at = Instant::now();
    let c = wait_for("a failover away from the frozen pg-a", LONG, || lab.cluster("app-pg").filter(|c| c["epoch"].as_u64() >= Some(2)))
        .expect("failover");
    let new = c["primary"].as_str().expect("primary").to_string();
    assert_ne!(new, "pg-a");
    let port = lab.member(&new).expect("new primary").port;
    let before = psql(port, "SELECT count(*) FROM acked").expect("count").parse::<u64>().expect("number");
    writes_beyond(port, before);
    println!("frozen pg-a node -> writes accepted through the endpoint on {new} after {:.2} s", at.elapsed().as_secs_f64());

    // Woken, the old primary has lost its lease and no replica vouches for
    // it any longer: its agent fences it at its first lease check (every
    // 50 ms), and it comes back as a replica. What it takes before that
    // is discarded by the rewind.
    frozen.wake();
    let woken = Instant::now();
    let mut taken = 0;
    wait_for("pg-a to refuse writes", LONG, || {
        let refused = psql(pa.port, &format!("INSERT INTO acked VALUES (-{})", taken + 1)).is_err();
        taken += u32::from(!refused);
        refused.then_some(())
    })
    .expect("fenced");
    println!("woken pg-a refused writes after {:.2} s, having taken {taken}", woken.elapsed().as_secs_f64());
    wait_for("pg-a to rejoin as a replica", LONG, || (psql(pa.port, "SELECT pg_is_in_recovery()").ok()? == "t").then_some(()))
        .expect("rejoined");
    let Written { acked, lost, .. } = stop_writer(&stop, w, port);
    // Asynchronous replication: a write acknowledged just as the node
    // froze may not have reached the new primary (the RPO budget).
    assert!(lost.len() <= 3, "{} of {} acknowledged writes lost: {lost:?}", lost.len(), acked.len());
    assert_eq!(psql(port, "SELECT count(*) FROM acked WHERE id < 0").expect("count"), "0", "the woken pg-a's writes reached the cluster");
    let held = psql(port, "SELECT count(*) FROM acked").expect("count");
    wait_for("pg-a to replay every row of the new primary", LONG, || {
        (psql(pa.port, "SELECT count(*) FROM acked").ok()? == held).then_some(())
    })
    .expect("pg-a follows");
}

#[test]
fn a_frozen_redis_node_is_replaced_and_once_woken_takes_no_write() {
    let (_dir, lab) = lab();
    let endpoint = port_of(&lab.forwarder("app-redis").expect("forwarder"));
    cli(endpoint, &["SET", "before", "1"]).expect("write");
    let ra = lab.member("redis-a").expect("redis-a").clone();
    let mut frozen = Frozen(vec![ra.agent_pid, ra.pid]);
    for pid in &frozen.0 {
        signal(*pid, libc::SIGSTOP);
    }
    let at = Instant::now();
    let c =
        wait_for("a failover away from the frozen redis-a", LONG, || lab.cluster("app-redis").filter(|c| c["epoch"].as_u64() >= Some(2)))
            .expect("failover");
    let new = c["primary"].as_str().expect("primary").to_string();
    assert_ne!(new, "redis-a");
    wait_for("a write accepted through the endpoint", LONG, || cli(endpoint, &["SET", "after", "1"]).ok().filter(|o| o.contains("OK")))
        .expect("write");
    println!("frozen redis-a node -> writes accepted through the endpoint on {new} after {:.2} s", at.elapsed().as_secs_f64());

    // Woken, redis-a is fenced (writes paused) and then follows the new
    // primary: a write straight to it is never acknowledged.
    frozen.wake();
    wait_for("redis-a to follow the new primary", LONG, || {
        cli(ra.port, &["INFO", "replication"]).ok().filter(|i| i.contains("role:slave") && i.contains("master_link_status:up"))
    })
    .expect("redis-a rejoined");
    let direct = cli(ra.port, &["SET", "direct", "1"]).unwrap_or_default();
    assert!(!direct.contains("OK"), "redis-a acknowledged a write: {direct}");
    let new_port = lab.member(&new).expect("new primary").port;
    assert_eq!(cli(new_port, &["EXISTS", "direct"]).expect("exists").trim(), "0");
}

#[test]
fn a_primary_whose_agent_alone_freezes_keeps_serving_and_nothing_fails_over() {
    let (_dir, lab) = lab();
    let (stop, w) = writing(&lab);
    let pa = lab.member("pg-a").expect("pg-a").clone();
    // Longer than the lease (1.5 s) and the detection window (1 s): the
    // other regions still reach pg-a, so nothing replaces it, and its
    // replicas vouch for it when its agent finds the lease lapsed on waking.
    let mut frozen = Frozen(vec![pa.agent_pid]);
    signal(pa.agent_pid, libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(3));
    frozen.wake();
    holds_for("pg-a to stay the primary of epoch 1", Duration::from_secs(5), || {
        let c = lab.cluster("app-pg")?;
        Some(match (c["epoch"].as_u64(), c["primary"].as_str()) {
            (Some(1), Some("pg-a")) => Ok(()),
            _ => Err(format!("the cluster moved: {c}")),
        })
    })
    .expect("no failover");
    let Written { acked, lost, gap, .. } = stop_writer(&stop, w, pa.port);
    assert!(lost.is_empty(), "{lost:?}");
    println!("pg-a's agent frozen 3 s: {} writes acknowledged, longest gap {:.2} s", acked.len(), gap.as_secs_f64());
    let fenced = std::fs::read_to_string(&pa.agent_log).unwrap_or_default().contains("not every other member vouches: fencing");
    assert!(!fenced, "pg-a's agent fenced its healthy primary");
}
