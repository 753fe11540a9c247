//! The agent as its database's supervisor (`[supervise]`): the server is
//! the agent's child and starts only in the role the agent's epoch and
//! lease allow, so that a restart of the agent, its container or its
//! machine cannot undo a fence. Each test hands region a's primary to its
//! agent, freezes that node (agent and server) until the cluster fails
//! over, kills everything on it as a machine loss does, starts the agent
//! again, and proves that the old primary takes no write before it follows
//! the new one. Times are printed, never asserted.

use std::time::{Duration, Instant};

use drc_tests::lab::writer::{stop_writer, writer, writes_beyond, Written};
use drc_tests::lab::{kill_tree, postgres::psql, redis::cli, signal, signal_tree, Lab, LabOptions};
use drc_tests::{port_of, wait_for};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(90);

fn lab() -> (tempfile::TempDir, Lab) {
    let dir = tempfile::Builder::new().prefix("drc-supervise-test-").tempdir().expect("tempdir");
    let lab = Lab::up(dir.path()).expect("lab up");
    wait_for("both clusters adopted", LONG, || (lab.epoch("app-pg")? >= 1 && lab.epoch("app-redis")? >= 1).then_some(())).expect("adopted");
    (dir, lab)
}

/// Writes straight to a member, back to back, from the moment its node
/// restarts: any write it acknowledges is counted, however brief the
/// window in which it is writable.
struct Hammer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u32, u32)>,
}

impl Hammer {
    fn start(write: impl Fn(u32) -> bool + Send + 'static) -> Hammer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut tried, mut taken) = (0, 0);
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                tried += 1;
                taken += u32::from(write(tried));
            }
            (tried, taken)
        });
        Hammer { stop, thread }
    }

    /// (writes tried, writes acknowledged).
    fn stop(self) -> (u32, u32) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().expect("hammer")
    }
}

fn cluster_of(lab: &Lab, name: &str) -> Value {
    lab.cluster(name).unwrap_or_else(|| panic!("no cluster {name}"))
}

/// Hands `member` (its cluster's primary) to its agent with failover
/// paused, so that the restart is not raced by a failover, and waits until
/// `writable` says the primary takes writes again: it starts held, and the
/// coordinator's next lease brings it back.
fn supervise_primary(lab: &mut Lab, cluster: &str, member: &str, writable: impl Fn() -> bool) {
    lab.drctl_json(&["pause", "--cluster", cluster]).expect("pause");
    let at = Instant::now();
    lab.supervise(member).expect("supervise");
    wait_for(&format!("{member} to take writes under its supervising agent"), LONG, || writable().then_some(())).expect("back");
    println!("{member} restarted under its agent and took writes again after {:.2} s", at.elapsed().as_secs_f64());
    // A crash of the server alone: its agent starts it again by the same rule.
    let server = lab.server_pid(member).expect("the supervised server runs");
    let at = Instant::now();
    kill_tree(server);
    wait_for(&format!("{member} to take writes after its server crashed"), LONG, || {
        (lab.server_pid(member).is_some_and(|p| p != server) && writable()).then_some(())
    })
    .expect("restarted after the crash");
    println!("{member}'s server, killed, was started again by its agent and took writes after {:.2} s", at.elapsed().as_secs_f64());
    // The coordinators take it for the same dataset (a restarted Redis has
    // a new replication id), and its agent stays connected.
    let dataset = |lab: &Lab| lab.members_health().ok()?.get(member).cloned();
    let seen = wait_for(&format!("the leader to see {member} serve again"), LONG, || {
        dataset(lab).filter(|m| m["healthy"] == true && m["role"] == "primary" && m["agent_connected"] == true)
    })
    .expect("healthy");
    drc_tests::holds_for(&format!("{member}'s agent to stay connected"), Duration::from_secs(2), || {
        let m = dataset(lab)?;
        Some(if m["agent_connected"] == true && m["dataset_id"] == seen["dataset_id"] { Ok(()) } else { Err(m.to_string()) })
    })
    .expect("still connected");
    lab.drctl_json(&["resume", "--cluster", cluster]).expect("resume");
}

/// Freezes the node of `member` (its agent and its server's process tree)
/// until the cluster has another primary, then kills all of it, as the loss
/// of the machine does, and returns the new primary.
fn freeze_until_replaced_then_kill(lab: &Lab, cluster_name: &str, member: &str) -> String {
    let m = lab.member(member).expect("member").clone();
    let server = lab.server_pid(member).expect("the supervised server runs");
    let before = lab.epoch(cluster_name).expect("epoch");
    signal(m.agent_pid, libc::SIGSTOP);
    let mut frozen = vec![m.agent_pid];
    frozen.extend(signal_tree(server, libc::SIGSTOP));
    let at = Instant::now();
    let c = wait_for(&format!("a failover away from the frozen {member}"), LONG, || {
        lab.cluster(cluster_name).filter(|c| c["epoch"].as_u64() > Some(before))
    });
    // However the wait ended, nothing stays frozen behind the test.
    kill_tree(m.agent_pid);
    for pid in frozen {
        signal(pid, libc::SIGKILL);
    }
    let new = c.expect("failover")["primary"].as_str().expect("primary").to_string();
    assert_ne!(new, member);
    println!("frozen {member} node replaced by {new} after {:.2} s; the node is killed", at.elapsed().as_secs_f64());
    new
}

#[test]
fn a_supervised_postgres_primary_restarted_after_its_replacement_takes_no_write_and_rejoins() {
    let (_dir, mut lab) = lab();
    let pa = lab.member("pg-a").expect("pg-a").clone();
    psql(pa.port, "CREATE TABLE acked (id int PRIMARY KEY)").expect("table");
    supervise_primary(&mut lab, "app-pg", "pg-a", || psql(pa.port, "INSERT INTO acked VALUES (0) ON CONFLICT DO NOTHING").is_ok());

    let endpoint = port_of(&lab.forwarder("app-pg").expect("forwarder"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = writer(endpoint, std::sync::Arc::clone(&stop));
    // The standbys stream from the restarted pg-a again (a reconnection
    // can wait 5 s): what the failover may lose is then the lag alone.
    for m in ["pg-a", "pg-b", "pg-c"] {
        writes_beyond(lab.member(m).expect("member").port, 20);
    }
    let new = freeze_until_replaced_then_kill(&lab, "app-pg", "pg-a");
    let port = lab.member(&new).expect("new primary").port;

    // The machine comes back: the agent starts, and with it the server,
    // in the role the agent's record allows. Its record still names pg-a
    // the primary (the agent was frozen through the failover): it holds
    // the server down until the coordinator rewinds it into a standby.
    let index = lab.info.members.iter().position(|m| m.id == "pg-a").expect("index");
    let at = Instant::now();
    lab.start_agent(index).expect("agent restarted");
    let direct = Hammer::start(move |n| psql(pa.port, &format!("INSERT INTO acked VALUES (-{n})")).is_ok());
    wait_for("pg-a to come back as a standby of the new primary", LONG, || {
        (psql(pa.port, "SELECT pg_is_in_recovery()").ok()? == "t").then_some(())
    })
    .expect("rejoined");
    let (tried, taken) = direct.stop();
    println!("restarted pg-a came back as a standby after {:.2} s; {tried} writes tried on it", at.elapsed().as_secs_f64());
    assert_eq!(taken, 0, "the restarted old primary took {taken} of {tried} writes");

    let Written { acked, lost, .. } = stop_writer(&stop, w, port);
    assert!(lost.len() <= 3, "{} of {} acknowledged writes lost: {lost:?}", lost.len(), acked.len());
    let held = psql(port, "SELECT count(*) FROM acked").expect("count");
    wait_for("pg-a to replay every row of the new primary", LONG, || {
        (psql(pa.port, "SELECT count(*) FROM acked").ok()? == held).then_some(())
    })
    .expect("pg-a follows");
    assert!(lab.server_pid("pg-a").is_some(), "the server runs, as the agent's child");
}

#[test]
fn a_supervised_redis_primary_restarted_after_its_replacement_takes_no_write_and_follows() {
    let (_dir, mut lab) = lab();
    let ra = lab.member("redis-a").expect("redis-a").clone();
    supervise_primary(&mut lab, "app-redis", "redis-a", || cli(ra.port, &["SET", "supervised", "1"]).is_ok_and(|o| o.contains("OK")));

    let endpoint = port_of(&lab.forwarder("app-redis").expect("forwarder"));
    let new = freeze_until_replaced_then_kill(&lab, "app-redis", "redis-a");
    wait_for("a write accepted through the endpoint", LONG, || cli(endpoint, &["SET", "after", "1"]).ok().filter(|o| o.contains("OK")))
        .expect("write");

    let index = lab.info.members.iter().position(|m| m.id == "redis-a").expect("index");
    let at = Instant::now();
    lab.start_agent(index).expect("agent restarted");
    let direct = Hammer::start(move |_| cli(ra.port, &["SET", "direct", "1"]).is_ok_and(|o| o.contains("OK")));
    wait_for("redis-a to follow the new primary", LONG, || {
        cli(ra.port, &["INFO", "replication"]).ok().filter(|i| i.contains("role:slave") && i.contains("master_link_status:up"))
    })
    .expect("redis-a follows");
    let (tried, taken) = direct.stop();
    println!("restarted redis-a follows {new} after {:.2} s; {tried} writes tried on it", at.elapsed().as_secs_f64());
    assert_eq!(taken, 0, "the restarted old primary acknowledged {taken} of {tried} writes");
    let new_port = lab.member(&new).expect("new primary").port;
    assert_eq!(cli(new_port, &["EXISTS", "direct"]).expect("exists").trim(), "0");
    assert_eq!(cli(ra.port, &["GET", "after"]).expect("get").trim(), "1", "redis-a holds the new primary's data");
}

#[test]
fn a_lab_whose_every_agent_supervises_its_database_comes_up_from_cold_with_one_primary_each() {
    // The lab makes the data and stops every server; the agents start
    // them, with nothing recorded: the first primaries start and are
    // adopted, the other members follow them.
    let dir = tempfile::Builder::new().prefix("drc-supervise-test-").tempdir().expect("tempdir");
    let at = Instant::now();
    let lab =
        Lab::up_with(dir.path(), LabOptions { supervise: true, ..Default::default() }).expect("lab up, every member healthy in its role");
    wait_for("both clusters adopted", LONG, || (lab.epoch("app-pg")? >= 1 && lab.epoch("app-redis")? >= 1).then_some(())).expect("adopted");
    println!("a supervised lab came up from cold in {:.2} s", at.elapsed().as_secs_f64());
    for (cluster, primary) in [("app-pg", "pg-a"), ("app-redis", "redis-a")] {
        assert_eq!(cluster_of(&lab, cluster)["primary"], primary);
    }
    for m in &lab.info.members {
        assert!(m.supervised && lab.server_pid(&m.id).is_some(), "{} runs as its agent's child", m.id);
    }
    let endpoint = port_of(&lab.forwarder("app-redis").expect("forwarder"));
    wait_for("a write through the Redis endpoint", LONG, || cli(endpoint, &["SET", "cold", "1"]).ok().filter(|o| o.contains("OK")))
        .expect("write");
    let rc = lab.member("redis-c").expect("redis-c").port;
    wait_for("redis-c to hold it", LONG, || cli(rc, &["GET", "cold"]).ok().filter(|v| v == "1")).expect("replicated");
    let pg = port_of(&lab.forwarder("app-pg").expect("forwarder"));
    psql(pg, "CREATE TABLE cold (id int)").expect("a write through the PostgreSQL endpoint");
}
