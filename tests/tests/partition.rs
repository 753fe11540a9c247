//! Real partitions: the lab with every node in a network namespace of its
//! own (`drc-lab up --netns`, root only), and packets dropped silently by
//! nftables — no FIN, no RST, every connection left open. Times are
//! printed, never asserted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drc_tests::lab::netns::Fault;
use drc_tests::lab::postgres::{psql, psql_at};
use drc_tests::lab::writer::{stop_writer_at, writer, writes_beyond_at, Written};
use drc_tests::lab::{Lab, LabOptions};
use drc_tests::{holds_for, wait_for};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(90);

fn lab() -> (tempfile::TempDir, Lab) {
    let dir = tempfile::Builder::new().prefix("drc-partition-test-").tempdir().expect("tempdir");
    let lab = Lab::up_with(dir.path(), LabOptions { netns: true, ..Default::default() }).expect("lab up in network namespaces");
    (dir, lab)
}

fn cluster(lab: &Lab, name: &str) -> Option<Value> {
    lab.status().ok()?["clusters"].as_array()?.iter().find(|c| c["name"] == name).cloned()
}

fn adopted(lab: &Lab) {
    wait_for("both clusters adopted", LONG, || {
        let epoch = |n| cluster(lab, n)?["epoch"].as_u64();
        (epoch("app-pg")? >= 1 && epoch("app-redis")? >= 1).then_some(())
    })
    .expect("adopted");
}

/// Asserts for `period` that neither cluster fails over (both stay at
/// epoch 1) while `what` goes on.
fn keep_their_primaries(lab: &Lab, what: &str, period: Duration) {
    holds_for(&format!("both clusters to keep their primaries while {what}"), period, || {
        let c = cluster(lab, "app-pg")?;
        let r = cluster(lab, "app-redis")?;
        Some(match (c["epoch"].as_u64(), r["epoch"].as_u64()) {
            (Some(1), Some(1)) => Ok(()),
            _ => Err(format!("a failover: {c}\n{r}")),
        })
    })
    .expect("no failover");
}

fn forwarder_port(lab: &Lab) -> u16 {
    lab.forwarder("app-pg").ok().and_then(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse().ok())).expect("the forwarder's port")
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A client in `node`'s namespace writing straight to member `pg` (an
/// application in the primary's region): for every write the member
/// acknowledged, the wall time at which the server wrote it (its own clock,
/// the machine's: a client process slow to exit adds nothing).
fn inside_writer(lab: &Lab, node: &str, pg: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<u64>> {
    let net = lab.info.net.clone().expect("netns lab");
    let ns = net.node(node).expect("node").namespace.clone();
    let m = lab.member(pg).expect("member").clone();
    std::thread::spawn(move || {
        let mut acked = Vec::new();
        let mut id = 1_000_000;
        while !stop.load(Ordering::SeqCst) {
            id += 1;
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &ns, "psql", "-h", &m.host, "-p", &m.port.to_string(), "-U", "postgres", "-qAt", "-v"])
                .args(["ON_ERROR_STOP=1", "-c"])
                .arg(format!("INSERT INTO acked VALUES ({id}) RETURNING (extract(epoch FROM clock_timestamp()) * 1000)::bigint"))
                .env("PGCONNECT_TIMEOUT", "2")
                .output();
            let written = out
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().find_map(|l| l.trim().parse::<u64>().ok()));
            if let Some(at) = written {
                acked.push(at);
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        acked
    })
}

/// A writer through the PostgreSQL endpoint, once it makes progress on pg-a.
fn writing(lab: &Lab) -> (Arc<AtomicBool>, std::thread::JoinHandle<(Vec<u32>, Duration)>) {
    let endpoint = forwarder_port(lab);
    psql(endpoint, "CREATE TABLE acked (id int PRIMARY KEY)").expect("table");
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(endpoint, Arc::clone(&stop));
    let pa = lab.member("pg-a").expect("pg-a");
    writes_beyond_at(&pa.host, pa.port, 20);
    (stop, w)
}

/// When the decision that replaced `from` started its promotion (wall ms).
fn promotion_started(lab: &Lab, from: &str) -> (String, u64) {
    let h = lab.drctl_json(&["history", "--cluster", "app-pg"]).expect("history");
    let d = h["decisions"].as_array().into_iter().flatten().find(|d| d["from"] == from).cloned().expect("a decision");
    let promote = d["steps"].as_array().into_iter().flatten().find(|s| s["action"] == "promote").cloned().expect("a promotion");
    (d["to"].as_str().expect("to").to_string(), promote["started"].as_u64().expect("started"))
}

/// The primary's region blackholed, with an application inside it that
/// writes straight to the primary: the primary stops taking its writes
/// before anyone else is promoted, and the others take over.
fn blackholed_primary_region(leader_inside: bool) {
    let (_dir, lab) = lab();
    adopted(&lab);
    if leader_inside {
        let a = lab.info.coordinators.iter().find(|c| c.region == "a").expect("coordinator a");
        lab.drctl_json(&["members", "lead", "--id", &a.id.to_string()]).expect("leadership moved");
        wait_for("the coordinator leader in region a", LONG, || (lab.leader_region()? == "a").then_some(())).expect("leader in a");
    }
    let endpoint = forwarder_port(&lab);
    psql(endpoint, "CREATE TABLE acked (id int PRIMARY KEY)").expect("table");
    let stop = Arc::new(AtomicBool::new(false));
    let outside = writer(endpoint, Arc::clone(&stop));
    let inside = inside_writer(&lab, "pg-a", "pg-a", Arc::clone(&stop));
    let pa = lab.member("pg-a").expect("pg-a").clone();
    let count = |port: u16, host: &str| psql_at(host, port, "SELECT count(*) FROM acked").ok()?.parse::<u64>().ok();
    wait_for("both writers to make progress", LONG, || (count(pa.port, &pa.host)? > 40).then_some(())).expect("progress");

    let (at, at_ms) = (Instant::now(), wall_ms());
    lab.fault(&Fault::Isolate { region: "a".into(), reject: false }).expect("blackhole region a");
    let c = wait_for("a failover away from region a", LONG, || cluster(&lab, "app-pg").filter(|c| c["epoch"].as_u64() >= Some(2)))
        .expect("failover");
    let new = c["primary"].as_str().expect("primary").to_string();
    let m = lab.member(&new).expect("new primary").clone();
    let before = count(m.port, &m.host).expect("count");
    wait_for("writes through the endpoint on the new primary", LONG, || (count(m.port, &m.host)? > before).then_some(()))
        .expect("writes resume");
    println!(
        "region a blackholed{} -> writes accepted through the endpoint on {new} after {:.2} s",
        if leader_inside { " with the coordinator leader" } else { "" },
        at.elapsed().as_secs_f64()
    );
    stop.store(true, Ordering::SeqCst);
    let inside = inside.join().expect("inside writer");
    let Written { acked, lost, .. } = stop_writer_at(&stop, outside, &m.host, m.port);
    let (to, promoted) = promotion_started(&lab, "pg-a");
    assert_eq!(to, new);
    let last_inside = inside.last().copied().unwrap_or(0);
    println!(
        "  the old primary took its last write {} ms after the fault; the promotion started {} ms after it",
        last_inside.saturating_sub(at_ms),
        promoted.saturating_sub(at_ms)
    );
    assert!(last_inside < promoted, "pg-a acknowledged a write at {last_inside}, after {new}'s promotion started at {promoted}");
    // Asynchronous replication: only writes in flight at the fault may be lost.
    assert!(lost.len() <= 3, "{} of {} acknowledged writes lost: {lost:?}", lost.len(), acked.len());
    lab.heal().expect("heal");
    wait_for("pg-a to rejoin as a replica", LONG, || (psql_at(&pa.host, pa.port, "SELECT pg_is_in_recovery()").ok()? == "t").then_some(()))
        .expect("pg-a rejoins after the partition heals");
}

#[test]
fn a_blackholed_primary_region_stops_taking_writes_within_its_lease_and_the_others_take_over() {
    blackholed_primary_region(false);
}

#[test]
fn a_blackholed_region_holding_the_primary_and_the_coordinator_leader_is_replaced_the_same_way() {
    blackholed_primary_region(true);
}

#[test]
fn a_link_flapping_for_a_minute_causes_no_failover() {
    let (_dir, lab) = lab();
    adopted(&lab);
    let (stop, w) = writing(&lab);
    let pa = lab.member("pg-a").expect("pg-a").clone();
    // The primary's region drops everything for 200 ms, every 400 ms.
    let flapping = Arc::new(Mutex::new(None));
    let flapper = {
        let (dir, flapping) = (lab.info.dir.clone(), Arc::clone(&flapping));
        std::thread::spawn(move || {
            let lab = Lab::attach(&dir).expect("attach");
            let r = lab.flap(&Fault::Isolate { region: "a".into(), reject: false }, Duration::from_millis(200), Duration::from_secs(60));
            *flapping.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.map_err(|e| e.to_string()));
        })
    };
    keep_their_primaries(&lab, "the link flaps", Duration::from_secs(60));
    flapper.join().expect("flapper");
    let flaps = flapping.lock().unwrap_or_else(|p| p.into_inner()).clone().expect("flapped").expect("faults applied");
    let Written { acked, lost, gap, .. } = stop_writer_at(&stop, w, &pa.host, pa.port);
    assert!(lost.is_empty(), "{lost:?}");
    println!("{flaps} flaps in 60 s: {} writes acknowledged, longest gap {:.2} s, no failover", acked.len(), gap.as_secs_f64());
}

#[test]
fn a_one_way_partition_never_leaves_two_writable_primaries_and_writes_go_on() {
    let (_dir, lab) = lab();
    adopted(&lab);
    let (stop, w) = writing(&lab);
    // Region a's packets to region b are lost; b's to a arrive.
    let leader = lab.leader_region().expect("a leader");
    lab.fault(&Fault::OneWay { from: "a".into(), to: "b".into() }).expect("one-way partition");
    let writable = |id: &str| {
        let m = lab.member(id).ok()?;
        Some(psql_at(&m.host, m.port, "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'").ok()? == "t")
    };
    holds_for("at most one writable PostgreSQL member", Duration::from_secs(20), || {
        let n = ["pg-a", "pg-b", "pg-c"].iter().filter(|m| writable(m) == Some(true)).count();
        Some(if n <= 1 { Ok(()) } else { Err(format!("{n} writable members")) })
    })
    .expect("one writable member");
    let c = cluster(&lab, "app-pg").expect("status");
    let primary = c["primary"].as_str().expect("primary").to_string();
    let m = lab.member(&primary).expect("primary member").clone();
    let before = psql_at(&m.host, m.port, "SELECT count(*) FROM acked").expect("count").parse::<u64>().expect("n");
    wait_for("writes through the endpoint", LONG, || {
        (psql_at(&m.host, m.port, "SELECT count(*) FROM acked").ok()?.parse::<u64>().ok()? > before).then_some(())
    })
    .expect("writes go on");
    lab.heal().expect("heal");
    let Written { acked, lost, gap, .. } = stop_writer_at(&stop, w, &m.host, m.port);
    assert!(lost.len() <= 3, "{lost:?}");
    println!(
        "one-way a -> b (leader in region {leader}): primary {primary} at epoch {}, {} writes acknowledged, longest gap {:.2} s",
        c["epoch"],
        acked.len(),
        gap.as_secs_f64()
    );
}

#[test]
fn a_region_whose_links_are_slow_by_100_ms_each_way_causes_no_failover() {
    let (_dir, lab) = lab();
    adopted(&lab);
    let (stop, w) = writing(&lab);
    let pa = lab.member("pg-a").expect("pg-a").clone();
    let delay = lab.delay("a", Duration::from_millis(100)).expect("region a delayed");
    // The delay is real: a query from region b to pg-a takes several
    // round trips of at least 200 ms each.
    let ns = lab.info.net.as_ref().and_then(|n| n.node("pg-b").ok()).map(|n| n.namespace.clone()).expect("pg-b's namespace");
    wait_for("a query from region b to pg-a through the slow link", LONG, || {
        let started = Instant::now();
        let ok = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "psql", "-h", &pa.host, "-p", &pa.port.to_string(), "-U", "postgres", "-Atc", "SELECT 1"])
            .output()
            .is_ok_and(|o| o.status.success());
        (ok && started.elapsed() >= Duration::from_millis(200)).then_some(())
    })
    .expect("the link is slow");
    keep_their_primaries(&lab, "region a is slow", Duration::from_secs(20));
    drop(delay);
    let Written { acked, lost, gap, .. } = stop_writer_at(&stop, w, &pa.host, pa.port);
    assert!(lost.is_empty(), "{lost:?}");
    println!("20 s with region a 100 ms away: {} writes acknowledged, longest gap {:.2} s, no failover", acked.len(), gap.as_secs_f64());
}
