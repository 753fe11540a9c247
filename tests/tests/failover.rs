//! End-to-end failover through the lab: real PostgreSQL 15 and Redis, real
//! agents and coordinators. Times are printed, never asserted.

use std::time::{Duration, Instant};

use drc_tests::lab::writer::{stop_writer, writer, writes_beyond, Written};
use drc_tests::lab::{kill_tree, netcut::CuttableLink, postgres::psql, redis::cli, signal, Lab, LabOptions};
use drc_tests::{holds_for, wait_for};
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
        .unwrap_or_else(|e| {
            let c = cluster(lab, name).map(|v| v.to_string()).unwrap_or_default();
            let h = lab.drctl_json(&["history"]).map(|v| v.to_string()).unwrap_or_default();
            panic!("{e:#}\nstatus: {c}\nhistory: {h}")
        })
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

/// "action member state +start..+end s" for each step of a decision,
/// relative to the moment it was decided.
fn steps_timeline(d: &Value) -> String {
    let at = d["decided_at"].as_u64().unwrap_or(0);
    let secs = |v: &Value| v.as_u64().filter(|t| *t > 0).map(|t| format!("{:.1}", t.saturating_sub(at) as f64 / 1000.0));
    d["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|s| {
                    let (a, b) = (secs(&s["started"]).unwrap_or_default(), secs(&s["finished"]).unwrap_or_default());
                    format!("{} {} {} +{a}..+{b}s {}", s["action"], s["member"], s["state"], s["error"]).replace('"', "")
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

/// The pids of a postmaster's WAL senders.
fn walsenders(postmaster: u32) -> Vec<u32> {
    let out = std::process::Command::new("pgrep").args(["-P", &postmaster.to_string(), "-f", "walsender"]).output().expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The port of the PostgreSQL cluster's forwarder.
fn forwarder_port(lab: &Lab) -> u16 {
    lab.forwarder("app-pg").ok().and_then(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse().ok())).expect("the forwarder's port")
}

/// Runs SQL through the cluster's forwarder.
fn via_forwarder(lab: &Lab, sql: &str) -> anyhow::Result<String> {
    psql(forwarder_port(lab), sql)
}

/// SIGKILLs a postmaster and the WAL senders given (first, so that nothing
/// more leaves it), then waits for the failover: the new primary.
fn crash_primary(lab: &Lab, postmaster: u32, senders: &[u32]) -> String {
    signal(postmaster, libc::SIGKILL);
    for p in senders {
        signal(*p, libc::SIGKILL);
    }
    let c = recorded(lab, "app-pg", 2);
    c["primary"].as_str().expect("primary").to_string()
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
    // Every WAL sender, the WAL archiver's too: it must not get them either.
    let senders = walsenders(pa.pid);
    let standbys = psql(pa.port, "SELECT count(*) FROM pg_stat_replication WHERE application_name IN ('pg-b', 'pg-c')").expect("standbys");
    assert_eq!(standbys, "2", "two standbys stream from pg-a");
    assert!(senders.len() >= 2, "their WAL senders: {senders:?}");
    for p in &senders {
        signal(*p, libc::SIGSTOP);
    }
    psql(pa.port, "CREATE TABLE diverged (id int); INSERT INTO diverged VALUES (1)").expect("diverged rows");

    let killed = Instant::now();
    let new = crash_primary(&lab, pa.pid, &senders);
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
    // The endpoint hook ran with the new primary in its environment.
    let address = format!("127.0.0.1:{port}");
    let hooks = wait_for("the hook to run", LONG, || {
        std::fs::read_to_string(lab.info.dir.join("hooks.log")).ok().filter(|t| t.contains(&format!("app-pg 2 {new} {address} failover")))
    });
    assert!(hooks.is_ok(), "hooks.log: {:?}\n{d}", std::fs::read_to_string(lab.info.dir.join("hooks.log")));

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
    holds_for("no failover while paused", Duration::from_secs(5), || {
        let c = cluster(&lab, "app-pg")?;
        Some(if c["epoch"] == 1 { Ok(()) } else { Err(format!("{c}")) })
    })
    .expect("paused");
    lab.drctl_json(&["resume", "--cluster", "app-pg"]).expect("resume");
    let c = recorded(&lab, "app-pg", 2);
    assert_ne!(c["primary"], "pg-a");

    // Then an operator moves every primary out of that region at once.
    let region = lab.member(c["primary"].as_str().expect("primary")).expect("member").region.clone();
    wait_for("redis to follow and both clusters to settle", LONG, || {
        let (pg, rd) = (cluster(&lab, "app-pg")?, cluster(&lab, "app-redis")?);
        (rd["primary"].as_str()? == format!("redis-{region}") && pg["decision_in_progress"] == 0 && rd["decision_in_progress"] == 0)
            .then_some(())
    })
    .expect("settled");
    let out = lab.drctl_json(&["failover-region", "--from", &region]).expect("failover-region");
    println!("drctl failover-region --from {region}: {out}");
    let decisions = out["decisions"].as_array().expect("decisions");
    assert_eq!(decisions.len(), 2, "{out}");
    let regions: std::collections::BTreeSet<String> =
        decisions.iter().map(|d| lab.member(d["to"].as_str().expect("to")).expect("member").region.clone()).collect();
    assert_eq!(regions.len(), 1, "the failover group lands in one region: {out}");
    assert!(!regions.contains(&region), "{out}");
    let pg = recorded(&lab, "app-pg", 3);
    let port = lab.member(pg["primary"].as_str().expect("primary")).expect("member").port;
    wait_for("the moved primary to accept writes", LONG, || psql(port, "CREATE TABLE moved (id int)").ok()).expect("write");
    let bad = lab.drctl_json(&["failover-region", "--from", "nowhere"]).expect_err("unknown region");
    assert!(bad.to_string().contains("unknown region"), "{bad}");

    // A standby down, then every coordinator frozen for longer than a lease:
    // not every other member can vouch for the primary, so its agent fences
    // it. Once the coordinators are back, a new lease in the same epoch
    // brings it back: no failover, and no minutes without a primary.
    let primary = pg["primary"].as_str().expect("primary").to_string();
    wait_for("the region failover to settle", LONG, || (cluster(&lab, "app-pg")?["decision_in_progress"] == 0).then_some(()))
        .expect("settled");
    let standby = wait_for("a running standby", LONG, || {
        ["pg-a", "pg-b", "pg-c"].into_iter().filter(|m| *m != primary).find_map(|m| {
            let m = lab.member(m).expect("member");
            (psql(m.port, "SELECT pg_is_in_recovery()").ok()? == "t")
                .then(|| drc_tests::lab::postgres::postmaster_pid(&m.data_dir).ok())
                .flatten()
        })
    })
    .expect("a running standby");
    kill_tree(standby);
    for c in &lab.info.coordinators {
        signal(c.pid, libc::SIGSTOP);
    }
    let fenced = wait_for("the primary's agent to fence it", Duration::from_secs(30), || psql(port, "SELECT 1").is_err().then_some(()));
    for c in &lab.info.coordinators {
        signal(c.pid, libc::SIGCONT);
    }
    fenced.expect("fenced when its lease lapsed");
    let back = Instant::now();
    wait_for("the fenced primary to take writes again", LONG, || psql(port, "INSERT INTO moved VALUES (1)").ok()).expect("back");
    println!("the fenced primary took writes again {:.2} s after the coordinators resumed", back.elapsed().as_secs_f64());
    let c = cluster(&lab, "app-pg").expect("cluster");
    assert_eq!((c["epoch"].as_u64(), c["primary"].as_str()), (Some(3), Some(primary.as_str())), "no failover: {c}");
    // The agent logs it once the restarted server is up, which is also when
    // the write above can succeed: give the line a moment.
    let agent_log = lab.member(&primary).expect("primary").agent_log.clone();
    wait_for("the agent to say it brought the primary back", Duration::from_secs(10), || {
        std::fs::read_to_string(&agent_log).ok()?.contains("serves again under its new lease").then_some(())
    })
    .expect("the agent brought it back");
}

/// The coordinator leader's id, if there is one.
fn leader_of(lab: &Lab) -> Option<u64> {
    lab.status().ok()?["leader_id"].as_u64().filter(|id| *id != 0)
}

/// Asserts for `quiet` that `cluster` stays at `epoch` with `primary`.
fn stays(lab: &Lab, name: &str, epoch: u64, primary: &str, quiet: Duration) {
    let held = holds_for(&format!("{name} staying at epoch {epoch} with {primary}"), quiet, || {
        let c = cluster(lab, name)?;
        Some(if c["epoch"] == epoch && c["primary"] == primary { Ok(()) } else { Err(format!("{c}")) })
    });
    if let Err(e) = held {
        dump(lab, primary);
        panic!("no failover expected: {e:#}\nhistory: {}", lab.drctl_json(&["history"]).map(|v| v.to_string()).unwrap_or_default());
    }
}

#[test]
fn a_cut_agent_link_causes_no_failover_but_a_dead_region_moves_both_clusters_to_one_surviving_region() {
    let (_dir, mut lab) = lab();
    recorded(&lab, "app-pg", 1);
    recorded(&lab, "app-redis", 1);
    let pa = lab.member("pg-a").expect("pg-a").clone();
    let link = CuttableLink::new(&format!("127.0.0.1:{}", pa.port)).expect("link");
    lab.restart_agent_via("pg-a", &link.address).expect("agent through the link");
    let restarted = Instant::now();
    // A restarted agent treats its lease as lapsed until the coordinator
    // renews it; cutting the link before then would rightly fence pg-a.
    // Only a sample the coordinator received after the old agent died
    // speaks for the new one: the last sample of the old agent still says
    // "healthy, holding a lease" for a while.
    wait_for("pg-a's new agent back through the link, holding a lease", LONG, || {
        let asked = Instant::now();
        let h = lab.members_health().ok()?;
        let m = &h["pg-a"];
        let received = asked.checked_sub(Duration::from_millis(m["sample_age_ms"].as_u64()?))?;
        (received > restarted && m["healthy"] == true && m["agent_connected"] == true && m["lease_ms"].as_u64()? > 0).then_some(())
    })
    .expect("healthy");

    // Only the agent loses its database: every other region still reaches
    // the primary, so nothing moves and the primary keeps taking writes.
    link.cut();
    wait_for("pg-a's agent to report its database unreachable", LONG, || {
        (lab.members_health().ok()?["pg-a"]["healthy"] == false).then_some(())
    })
    .expect("unhealthy from its own agent");
    stays(&lab, "app-pg", 1, "pg-a", Duration::from_secs(8));
    psql(pa.port, "CREATE TABLE still_primary (id int)").expect("pg-a still takes writes");
    let c = cluster(&lab, "app-pg").expect("cluster");
    println!("with the agent link cut, app-pg says: {}", c["failover_state"]);

    // Now the whole region dies: its coordinator, agents and databases.
    let coordinator = lab.info.coordinators.iter().find(|c| c.region == "a").expect("coordinator a").pid;
    let ra = lab.member("redis-a").expect("redis-a").clone();
    let killed = Instant::now();
    for pid in [coordinator, pa.agent_pid, ra.agent_pid, lab.member("pg-a").expect("pg-a").agent_pid, ra.pid] {
        signal(pid, libc::SIGKILL);
    }
    kill_tree(pa.pid);
    drop(link);
    let pg = recorded(&lab, "app-pg", 2);
    let region = lab.member(pg["primary"].as_str().expect("primary")).expect("member").region.clone();
    assert_ne!(region, "a");
    wait_for("a write accepted through the forwarder", LONG, || via_forwarder(&lab, "CREATE TABLE after_region_loss (id int)").ok())
        .expect("write");
    println!("region a killed -> first write accepted through the forwarder: {:.2} s", killed.elapsed().as_secs_f64());
    let rd = wait_for("redis to move to the same region", LONG, || {
        let c = cluster(&lab, "app-redis")?;
        (c["epoch"].as_u64()? >= 2 && c["primary"].as_str()? == format!("redis-{region}")).then_some(c)
    });
    if rd.is_err() {
        panic!("redis did not follow to region {region}: {}", lab.drctl_json(&["history"]).map(|v| v.to_string()).unwrap_or_default());
    }
}

#[test]
fn a_standby_beyond_the_rpo_budget_is_never_promoted_automatically_but_force_promotes_it_and_says_so() {
    let (_dir, lab) = lab();
    recorded(&lab, "app-pg", 1);
    let pa = lab.member("pg-a").expect("pg-a").clone();
    for standby in ["pg-b", "pg-c"] {
        psql(lab.member(standby).expect("standby").port, "SELECT pg_wal_replay_pause()").expect("pause replay");
    }
    // ~40 MB of WAL, beyond the lab's 16 MiB budget.
    via_forwarder(
        &lab,
        "CREATE TABLE big (id int, pad text); INSERT INTO big SELECT g, repeat('x', 1000) FROM generate_series(1, 40000) g",
    )
    .expect("write burst");
    wait_for("both standbys to lag beyond the budget", LONG, || {
        let h = lab.members_health().ok()?;
        ["pg-b", "pg-c"].iter().all(|m| h[*m]["lag_bytes"].as_u64().is_some_and(|l| l > 16 << 20)).then_some(())
    })
    .expect("lag");

    kill_tree(pa.pid);
    let waiting = wait_for("the cluster to say why it waits", LONG, || {
        let c = cluster(&lab, "app-pg")?;
        c["failover_state"].as_str()?.contains("no member can be promoted").then_some(c)
    })
    .expect("waiting on the RPO gate");
    println!("app-pg says: {}", waiting["failover_state"]);
    stays(&lab, "app-pg", 1, "pg-a", Duration::from_secs(5));

    let out = lab.drctl_json(&["failover", "--cluster", "app-pg", "--to", "pg-b", "--force"]).expect("forced failover");
    println!("drctl failover --force: {out}");
    let c = recorded(&lab, "app-pg", 2);
    assert_eq!(c["primary"], "pg-b", "{c}");
    let pb = lab.member("pg-b").expect("pg-b").port;
    wait_for("pg-b to accept writes", LONG, || psql(pb, "CREATE TABLE after_force (id int)").ok()).expect("write");
    let history = lab.drctl_json(&["history", "--cluster", "app-pg"]).expect("history");
    let d = &history["decisions"][0];
    assert_eq!(d["trigger"]["by"], "operator", "{d}");
    assert_eq!(d["trigger"]["force"], true, "{d}");
    assert!(d["reason"].as_str().is_some_and(|r| r.contains("force")), "the reason names the override: {d}");
}

/// Inserts ids through the forwarder until `stop`; returns the acknowledged
/// ids and the longest gap between two acknowledgements.
#[test]
fn a_switchover_loses_no_acknowledged_write_and_a_leader_killed_mid_failover_promotes_exactly_once() {
    let (_dir, lab) = lab();
    recorded(&lab, "app-pg", 1);
    via_forwarder(&lab, "CREATE TABLE acked (id int PRIMARY KEY)").expect("table");
    let port = forwarder_port(&lab);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = writer(port, std::sync::Arc::clone(&stop));
    writes_beyond(port, 20);

    let out = lab.drctl_json(&["switchover", "--cluster", "app-pg", "--to", "pg-b"]).expect("switchover");
    println!("drctl switchover: {out}");
    let c = recorded(&lab, "app-pg", 2);
    assert_eq!(c["primary"], "pg-b");
    let pb = lab.member("pg-b").expect("pg-b").port;
    wait_for("writes through the forwarder on pg-b", LONG, || {
        (psql(pb, "SELECT count(*) > 0 FROM acked WHERE id > 0").ok()? == "t" && cluster(&lab, "app-pg")?["decision_in_progress"] == 0)
            .then_some(())
    })
    .expect("writes resume");
    let resumed = writes_beyond(pb, 0);
    writes_beyond(pb, resumed + 20);
    let Written { acked, gap, present, lost } = stop_writer(&stop, w, pb);
    println!("switchover: {} writes acknowledged, longest gap between two {:.2} s", acked.len(), gap.as_secs_f64());
    println!(
        "history after the switchover: {}",
        lab.drctl_json(&["history", "--cluster", "app-pg"]).map(|v| v.to_string()).unwrap_or_default()
    );
    assert!(lost.is_empty(), "acknowledged writes lost in the switchover: {lost:?}");
    // The old primary follows the new one.
    let pa = lab.member("pg-a").expect("pg-a").port;
    wait_for("pg-a to replay pg-b's writes", LONG, || {
        (psql(pa, "SELECT count(*) FROM acked").ok()? == present.len().to_string()).then_some(())
    })
    .expect("pg-a follows");

    // Now pg-b dies and the coordinator leader is killed as soon as the
    // failover decision is recorded: the new leader finishes it, once.
    let pb_pid = drc_tests::lab::postgres::postmaster_pid(&lab.member("pg-b").expect("pg-b").data_dir).expect("pid");
    kill_tree(pb_pid);
    let c = recorded(&lab, "app-pg", 3);
    let leader_id = lab.status().expect("status")["leader_id"].as_u64().expect("leader");
    let leader = lab.info.coordinators.iter().find(|c| c.id == leader_id).expect("leader").pid;
    signal(leader, libc::SIGKILL);
    println!("killed coordinator {leader_id} with decision {} at step state {}", c["decision_in_progress"], c["failover_state"]);
    let done = wait_for("the decision to finish under the new leader", LONG, || {
        let h = lab.drctl_json(&["history", "--cluster", "app-pg"]).ok()?;
        let d = h["decisions"].as_array()?.iter().find(|d| d["epoch"] == 3)?.clone();
        d["finished_at"].as_u64().map(|_| d)
    })
    .unwrap_or_else(|e| {
        eprintln!("history: {}", lab.drctl_json(&["history", "--cluster", "app-pg"]).map(|v| v.to_string()).unwrap_or_default());
        eprintln!("status: {}", cluster(&lab, "app-pg").map(|v| v.to_string()).unwrap_or_default());
        for m in ["pg-a", "pg-b", "pg-c"] {
            dump(&lab, m);
        }
        panic!("{e:#}")
    });
    let to = done["to"].as_str().expect("to").to_string();
    println!("decision {} under the new leader: {}", done["id"], steps_timeline(&done));
    stays(&lab, "app-pg", 3, &to, Duration::from_secs(3));
    let writable: Vec<&str> = ["pg-a", "pg-c"]
        .into_iter()
        .filter(|m| psql(lab.member(m).expect("member").port, "SELECT pg_is_in_recovery()").ok().as_deref() == Some("f"))
        .collect();
    assert_eq!(writable, vec![to.as_str()], "exactly one member was promoted");
    let promotes = done["steps"].as_array().expect("steps").iter().filter(|s| s["action"] == "promote").count();
    assert_eq!(promotes, 1, "{done}");
}

#[test]
fn losing_a_region_with_only_replicas_and_the_coordinator_leader_takes_no_primary_down() {
    let (_dir, mut lab) = lab();
    recorded(&lab, "app-pg", 1);
    recorded(&lab, "app-redis", 1);
    let region_of_node = |lab: &Lab, id: u64| lab.info.coordinators.iter().find(|c| c.id == id).map(|c| c.region.clone());
    // The coordinator leader must not be in region a, the primaries'.
    let mut leader = wait_for("a coordinator leader", LONG, || leader_of(&lab)).expect("leader");
    if region_of_node(&lab, leader).as_deref() == Some("a") {
        let pid = lab.info.coordinators.iter().find(|c| c.id == leader).expect("node").pid;
        signal(pid, libc::SIGKILL);
        let old = leader;
        leader = wait_for("a leader outside region a", LONG, || leader_of(&lab).filter(|l| *l != old)).expect("new leader");
        lab.restart_coordinator(old).expect("restart");
        lab.wait_healthy(LONG).expect("healthy again");
    }
    let region = region_of_node(&lab, leader).expect("region");
    let (pa, ra) = (lab.member("pg-a").expect("pg-a").port, lab.member("redis-a").expect("redis-a").port);
    psql(pa, "CREATE TABLE w (id int)").expect("table");
    for m in ["pg-b", "pg-c"] {
        let port = lab.member(m).expect("replica").port;
        wait_for("the table on every replica", LONG, || (psql(port, "SELECT to_regclass('w') IS NOT NULL").ok()? == "t").then_some(()))
            .expect("replicated");
    }

    // The leader's region dies with its replicas: every primary has lost a
    // replica that could vouch for it, and its lease must now come from a
    // new leader, in time.
    for pid in lab.info.coordinators.iter().filter(|c| c.region == region).map(|c| c.pid) {
        signal(pid, libc::SIGKILL);
    }
    for m in lab.info.members.iter().filter(|m| m.region == region) {
        signal(m.agent_pid, libc::SIGKILL);
        kill_tree(m.pid);
    }
    let start = Instant::now();
    let (mut writes, mut failed, mut gap, mut last) = (0u32, Vec::new(), Duration::ZERO, Instant::now());
    while start.elapsed() < Duration::from_secs(8) {
        writes += 1;
        let pg = psql(pa, &format!("INSERT INTO w VALUES ({writes})"));
        let rd = cli(ra, &["SET", "w", &writes.to_string()]);
        match (pg, rd) {
            (Ok(_), Ok(_)) => {
                gap = gap.max(last.elapsed());
                last = Instant::now();
            }
            (pg, rd) => failed.push(format!("{:.2} s: {:?} {:?}", start.elapsed().as_secs_f64(), pg.err(), rd.err())),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "region {region} (coordinator leader {leader}) killed: {writes} writes to pg-a and redis-a, {} failed, longest gap {:.2} s",
        failed.len(),
        gap.as_secs_f64()
    );
    // No failover: the primaries stay where they are, in epoch 1.
    for name in ["app-pg", "app-redis"] {
        let c = recorded(&lab, name, 1);
        assert_eq!(c["primary"].as_str().map(|p| p.ends_with("-a")), Some(true), "no failover: {c}");
    }
    // And no outage. The lease outlasts the election and the agents'
    // reconnection by a few hundred milliseconds here (1.5 s against
    // 0.4-0.8 s plus reconnection), so on a machine slowed far enough a
    // primary may be fenced briefly before the new leader's lease brings it
    // back. That is printed, not failed: how much slack is left depends on
    // the machine, and tests assert no timings.
    let fenced: Vec<&str> = ["pg-a", "redis-a"]
        .into_iter()
        .filter(|id| std::fs::read_to_string(&lab.member(id).expect("member").agent_log).unwrap_or_default().contains("fencing"))
        .collect();
    if !failed.is_empty() || !fenced.is_empty() {
        println!("WARNING: fenced for a moment by their agents: {fenced:?}; failed writes: {failed:?}");
    }
    assert!(psql(pa, "INSERT INTO w VALUES (0)").is_ok() && cli(ra, &["SET", "w", "0"]).is_ok(), "the primaries take writes");
}

#[test]
fn with_synchronous_replication_a_commit_waits_for_a_standby_none_is_lost_in_a_failover_and_writes_go_on_without_standbys() {
    let dir = tempfile::Builder::new().prefix("drc-failover-test-").tempdir().expect("tempdir");
    let lab = Lab::up_with(dir.path(), LabOptions { synchronous_replicas: 1, ..Default::default() }).expect("lab up");
    recorded(&lab, "app-pg", 1);
    let pa = lab.member("pg-a").expect("pg-a").clone();
    let sync_of = |member: &str| lab.members_health().ok()?.get(member)?["sync_standbys"].as_str().map(String::from);
    let both = r#"ANY 1 ("pg-b", "pg-c")"#;
    wait_for("pg-a's commits to wait for a standby", LONG, || (sync_of("pg-a")? == both).then_some(())).unwrap_or_else(|e| {
        dump(&lab, "pg-a");
        panic!("{e:#}")
    });
    // What the agent reported is what PostgreSQL applies: the agent's probe
    // reads it from a live session, which sees a reloaded value only once
    // the postmaster has it, as every new session then does.
    wait_for("pg-a's server to apply it", LONG, || (psql(pa.port, "SHOW synchronous_standby_names").ok()? == both).then_some(()))
        .expect("applied");
    // A leader change does not make commits asynchronous, not even while
    // the new leader has no sample of the standbys yet.
    let leader = wait_for("a coordinator leader", LONG, || leader_of(&lab)).expect("leader");
    let other = lab.info.coordinators.iter().find(|c| c.id != leader && c.region != "a").expect("another coordinator").id;
    lab.drctl_json(&["members", "lead", "--id", &other.to_string()]).expect("members lead");
    wait_for("the new leader", LONG, || (leader_of(&lab)? == other).then_some(())).expect("leadership moved");
    holds_for("pg-a's commits waiting for a standby across the leader change", Duration::from_secs(3), || {
        let v = psql(pa.port, "SHOW synchronous_standby_names").ok()?;
        Some(if v == both { Ok(()) } else { Err(format!("synchronous_standby_names = {v:?}")) })
    })
    .expect("still synchronous");
    via_forwarder(&lab, "CREATE TABLE acked (id int PRIMARY KEY)").expect("table");

    // A commit that no standby has flushed is not acknowledged: with both
    // WAL senders frozen it waits, and it returns once they go on.
    let senders = walsenders(pa.pid);
    let standbys = psql(pa.port, "SELECT count(*) FROM pg_stat_replication WHERE application_name IN ('pg-b', 'pg-c')").expect("standbys");
    assert_eq!(standbys, "2", "two standbys stream from pg-a");
    assert!(senders.len() >= 2, "their WAL senders: {senders:?}");
    for p in &senders {
        signal(*p, libc::SIGSTOP);
    }
    let port = pa.port;
    let waiting = std::thread::spawn(move || psql(port, "INSERT INTO acked VALUES (0)"));
    std::thread::sleep(Duration::from_secs(2));
    let held = !waiting.is_finished();
    for p in &senders {
        signal(*p, libc::SIGCONT);
    }
    assert!(held, "a commit was acknowledged while no standby could receive it: {:?}", waiting.join());
    waiting.join().expect("thread").expect("the commit is acknowledged once a standby has it");

    // A continuous writer, then the primary's server dies: every
    // acknowledged write is on the new primary.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = writer(forwarder_port(&lab), std::sync::Arc::clone(&stop));
    writes_beyond(pa.port, 20);
    let killed = Instant::now();
    let new = crash_primary(&lab, pa.pid, &senders);
    let nport = lab.member(&new).expect("new primary").port;
    wait_for("writes on the new primary", LONG, || (psql(nport, "SELECT count(*) > 1 FROM acked").ok()? == "t").then_some(()))
        .expect("writes resume");
    println!("synchronous failover: SIGKILL of pg-a -> writes on {new} within {:.2} s", killed.elapsed().as_secs_f64());
    let resumed = writes_beyond(nport, 0);
    writes_beyond(nport, resumed + 20);
    let Written { acked, gap, lost, .. } = stop_writer(&stop, w, nport);
    println!("synchronous failover: {} writes acknowledged, longest gap {:.2} s, {} lost", acked.len(), gap.as_secs_f64(), lost.len());
    let history = lab.drctl_json(&["history", "--cluster", "app-pg"]).map(|v| v.to_string()).unwrap_or_default();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}\n{history}");

    // The new primary waits for its own standbys once they stream again.
    let others: Vec<String> = ["pg-a", "pg-b", "pg-c"].iter().filter(|m| **m != new).map(|m| m.to_string()).collect();
    let theirs = format!("ANY 1 (\"{}\", \"{}\")", others[0], others[1]);
    wait_for(&format!("{new}'s commits to wait for {theirs}"), LONG, || (sync_of(&new)? == theirs).then_some(())).unwrap_or_else(|e| {
        dump(&lab, &new);
        panic!("{e:#}: {:?}", sync_of(&new))
    });

    // With no standby left, commits stop waiting instead of hanging. Both
    // stream first (the old primary's rejoin restarts it; killed before
    // that, it would come back afterwards).
    wait_for("both standbys to stream from the new primary", LONG, || {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND application_name IN ('{}', '{}')",
            others[0], others[1]
        );
        (psql(nport, &sql).ok()? == "2").then_some(())
    })
    .expect("both stream");
    for m in &others {
        let data = &lab.member(m).expect("standby").data_dir;
        if let Ok(pid) = drc_tests::lab::postgres::postmaster_pid(data) {
            kill_tree(pid);
        }
    }
    let degraded = Instant::now();
    wait_for(&format!("{new}'s commits to wait for no standby"), LONG, || (sync_of(&new)?.is_empty()).then_some(())).unwrap_or_else(|e| {
        dump(&lab, &new);
        panic!("{e:#}: {:?}", sync_of(&new))
    });
    let port = nport;
    let write = std::thread::spawn(move || psql(port, "INSERT INTO acked VALUES (-1)"));
    wait_for("a write without standbys", LONG, || write.is_finished().then_some(())).expect("the write is acknowledged");
    println!("without standbys: writes acknowledged again {:.2} s after they died", degraded.elapsed().as_secs_f64());
    assert_eq!(psql(nport, "SELECT count(*) FROM acked WHERE id = -1").expect("count"), "1");
    let c = cluster(&lab, "app-pg").expect("cluster");
    assert_eq!(c["epoch"], 2, "losing the standbys moved nothing: {c}");
}

#[test]
fn a_standby_that_crashed_before_its_primary_is_started_by_its_agent_to_follow_the_new_primary() {
    let (_dir, lab) = lab();
    recorded(&lab, "app-pg", 1);
    via_forwarder(&lab, "CREATE TABLE acked (id int PRIMARY KEY); INSERT INTO acked VALUES (1)").expect("rows");
    let pc = lab.member("pg-c").expect("pg-c").clone();
    wait_for("pg-c to replay the row", LONG, || (psql(pc.port, "SELECT count(*) FROM acked").ok()? == "1").then_some(()))
        .expect("replicated");
    // pg-c's server crashes (its agent stays); then pg-a's.
    kill_tree(drc_tests::lab::postgres::postmaster_pid(&pc.data_dir).expect("pid"));
    wait_for("pg-c to look unhealthy", LONG, || (lab.members_health().ok()?.get("pg-c")?["healthy"] == false).then_some(()))
        .expect("pg-c down");
    let pa = lab.member("pg-a").expect("pg-a").clone();
    kill_tree(drc_tests::lab::postgres::postmaster_pid(&pa.data_dir).expect("pid"));
    let c = recorded(&lab, "app-pg", 2);
    assert_eq!(c["primary"], "pg-b", "the only healthy standby: {c}");
    wait_for("a write through the forwarder", LONG, || via_forwarder(&lab, "INSERT INTO acked VALUES (2)").ok()).expect("write");
    // The decision's repoint of pg-c brings it up as a standby of pg-b.
    let follows = wait_for("pg-c to be started and follow pg-b", LONG, || {
        (psql(pc.port, "SELECT pg_is_in_recovery() AND (SELECT count(*) FROM acked) = 2").ok()? == "t").then_some(())
    });
    if follows.is_err() {
        dump(&lab, "pg-c");
        panic!("pg-c was not brought back: {}", lab.drctl_json(&["history"]).map(|v| v.to_string()).unwrap_or_default());
    }
    let history = lab.drctl_json(&["history", "--cluster", "app-pg"]).expect("history");
    let d = &history["decisions"][0];
    println!("decision: {}", steps_timeline(d));
    let repoint = d["steps"].as_array().expect("steps").iter().find(|s| s["action"] == "repoint" && s["member"] == "pg-c").cloned();
    assert!(repoint.is_some(), "{d}");
}
