//! End-to-end failover through the lab: real PostgreSQL 15 and Redis, real
//! agents and coordinators. Times are printed, never asserted.

use std::time::{Duration, Instant};

use drc_tests::lab::{postgres::psql, redis::cli, signal, Lab};
use drc_tests::wait_for;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(90);

fn lab() -> (tempfile::TempDir, Lab) {
    let dir = tempfile::Builder::new().prefix("drc-failover-test-").tempdir().expect("tempdir");
    let lab = Lab::up(dir.path()).expect("lab up");
    (dir, lab)
}

fn cluster(lab: &Lab, name: &str) -> Option<Value> {
    lab.status().ok()?["clusters"].as_array()?.iter().find(|c| c["name"] == name).cloned()
}

/// Waits until the cluster's recorded primary is `primary` at `epoch`.
fn recorded(lab: &Lab, name: &str, epoch: u64) -> Value {
    wait_for(&format!("{name} at epoch {epoch}"), LONG, || cluster(lab, name).filter(|c| c["epoch"].as_u64() == Some(epoch)))
        .expect("epoch")
}

/// Prints the end of a member's server and agent logs.
fn dump(lab: &Lab, id: &str) {
    let m = lab.member(id).expect("member");
    for path in [&m.log, &m.agent_log] {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(25).collect();
        eprintln!("----- {} -----\n{}", path.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
}

/// The pids of a postmaster's WAL senders.
fn walsenders(postmaster: u32) -> Vec<u32> {
    let out = std::process::Command::new("pgrep").args(["-P", &postmaster.to_string(), "-f", "walsender"]).output().expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Runs SQL through the cluster's forwarder.
fn via_forwarder(lab: &Lab, sql: &str) -> anyhow::Result<String> {
    let port = lab.forwarder("app-pg")?.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(0);
    psql(port, sql)
}

#[test]
fn a_killed_postgres_primary_is_replaced_redis_follows_and_the_old_primary_rejoins_without_its_diverged_rows() {
    let (_dir, lab) = lab();
    let c = recorded(&lab, "app-pg", 1);
    assert_eq!(c["primary"], "pg-a", "{c}");
    recorded(&lab, "app-redis", 1);
    let pa = lab.member("pg-a").expect("pg-a").clone();
    via_forwarder(&lab, "CREATE TABLE acked (id int PRIMARY KEY); INSERT INTO acked SELECT generate_series(1, 100)").expect("rows");
    for standby in ["pg-b", "pg-c"] {
        let port = lab.member(standby).expect("standby").port;
        wait_for(&format!("{standby} to replay the rows"), LONG, || {
            (psql(port, "SELECT count(*) FROM acked").ok()? == "100").then_some(())
        })
        .expect("replicated");
    }
    // Rows that only the old primary will ever have: its WAL senders are
    // frozen before they are written, then the whole server dies.
    let senders = walsenders(pa.pid);
    assert_eq!(senders.len(), 2, "two standbys stream from pg-a");
    for p in &senders {
        signal(*p, libc::SIGSTOP);
    }
    psql(pa.port, "CREATE TABLE diverged (id int); INSERT INTO diverged VALUES (1)").expect("diverged rows");

    let killed = Instant::now();
    signal(pa.pid, libc::SIGKILL);
    for p in &senders {
        signal(*p, libc::SIGKILL);
    }
    let c = recorded(&lab, "app-pg", 2);
    let new = c["primary"].as_str().expect("primary").to_string();
    assert_ne!(new, "pg-a");
    wait_for("a write accepted through the forwarder", LONG, || via_forwarder(&lab, "INSERT INTO acked VALUES (101)").ok()).expect("write");
    println!(
        "failover: SIGKILL of pg-a's postmaster -> first write accepted through the forwarder (on {new}): {:.2} s",
        killed.elapsed().as_secs_f64()
    );
    let port = lab.member(&new).expect("new primary").port;
    assert_eq!(psql(port, "SELECT count(*) FROM acked").expect("count"), "101", "no acknowledged row lost");

    // The other standby follows the new primary.
    let other = if new == "pg-b" { "pg-c" } else { "pg-b" };
    let oport = lab.member(other).expect("other").port;
    if wait_for(&format!("{other} to follow {new}"), LONG, || (psql(oport, "SELECT count(*) FROM acked").ok()? == "101").then_some(()))
        .is_err()
    {
        dump(&lab, other);
        dump(&lab, &new);
        panic!("{other} does not follow {new}: {}", lab.drctl_json(&["history"]).map(|v| v.to_string()).unwrap_or_default());
    }

    // The decision is in the history with its evidence and steps.
    let history = lab.drctl_json(&["history", "--cluster", "app-pg"]).expect("history");
    let d = &history["decisions"][0];
    assert_eq!(d["trigger"]["by"], "automatic", "{d}");
    assert_eq!(d["from"], "pg-a");
    assert_eq!(d["to"], new.as_str());
    assert!(d["evidence"].as_array().is_some_and(|e| e.len() == 3), "{d}");

    // Redis follows PostgreSQL to the same region (failover group).
    let region = lab.member(&new).expect("new").region.clone();
    let r = wait_for("redis to follow to the same region", LONG, || {
        let c = cluster(&lab, "app-redis")?;
        (c["primary"].as_str()? == format!("redis-{region}")).then_some(c)
    })
    .expect("group follows");
    let rport = lab.member(r["primary"].as_str().expect("primary")).expect("redis primary").port;
    wait_for("the new redis primary to accept writes", LONG, || cli(rport, &["SET", "after", "1"]).ok().filter(|o| o.contains("OK")))
        .expect("redis write");

    // The old primary comes back as a replica of the new one through
    // pg_rewind: its diverged table is gone and it replays new writes.
    let rejoined =
        wait_for("pg-a to rejoin as a replica", LONG, || (psql(pa.port, "SELECT pg_is_in_recovery()").ok()? == "t").then_some(()));
    if rejoined.is_err() {
        dump(&lab, "pg-a");
        panic!("pg-a did not rejoin: {}", lab.drctl_json(&["history"]).map(|v| v.to_string()).unwrap_or_default());
    }
    psql(port, "INSERT INTO acked VALUES (102)").expect("write after rejoin");
    wait_for("pg-a to replay the new primary's writes", LONG, || {
        (psql(pa.port, "SELECT count(*) FROM acked").ok()? == "102").then_some(())
    })
    .expect("pg-a follows");
    assert_eq!(psql(pa.port, "SELECT to_regclass('diverged') IS NULL").expect("diverged"), "t", "the diverged table is gone");
}

#[test]
fn pause_stops_automatic_failover_and_resume_lets_it_happen() {
    let (_dir, lab) = lab();
    recorded(&lab, "app-pg", 1);
    lab.drctl_json(&["pause", "--cluster", "app-pg"]).expect("pause");
    let pa = lab.member("pg-a").expect("pg-a").clone();
    signal(pa.pid, libc::SIGKILL);
    let waiting = wait_for("pg to say it is paused", LONG, || {
        let c = cluster(&lab, "app-pg")?;
        c["failover_state"].as_str()?.contains("paused").then_some(c)
    })
    .expect("paused");
    assert_eq!(waiting["epoch"], 1, "{waiting}");
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(5) {
        if let Some(c) = cluster(&lab, "app-pg") {
            assert_eq!(c["epoch"], 1, "no failover while paused: {c}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    lab.drctl_json(&["resume", "--cluster", "app-pg"]).expect("resume");
    let c = recorded(&lab, "app-pg", 2);
    assert_ne!(c["primary"], "pg-a");
}
