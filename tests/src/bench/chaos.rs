//! `drc-bench chaos`: random schedules of gray and clean faults against a
//! lab in network namespaces, with a checker in the spirit of Jepsen.
//!
//! Each trial draws, from its seed, a few faults one after another: a region
//! blackholed (dropped or rejected), one direction of a link cut, a flapping
//! link, a frozen PostgreSQL node (server and agent), a frozen or killed
//! coordinator, a killed primary. Writers run all along: one through the
//! stable endpoint (drc-proxy), and one inside every PostgreSQL member's
//! namespace writing straight to it, which records the server's own clock
//! for every write the member acknowledged. After the schedule everything
//! is healed and woken, and the checker reads the decision history:
//!
//! * no member acknowledges a write after another member's promotion
//!   started (a write within 200 ms of the member waking from a freeze is
//!   reported apart: its agent's first lease check fences it);
//! * no write acknowledged through the endpoint is lost but within the RPO
//!   budget of a promotion that followed (asynchronous replication);
//! * a schedule of flapping links only causes no failover;
//! * the cluster takes writes through the endpoint again after the last
//!   fault, and the longest gap is reported.
//!
//! A failing trial prints its seed, the command that replays it, and keeps
//! the lab's logs.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};

use crate::lab::netns::Fault;
use crate::lab::postgres::{postmaster_pid, psql};
use crate::lab::{signal, signal_tree, Lab, LabOptions, PG_CLUSTER};
use crate::wait_for;

/// splitmix64, as the simulation's.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const REGIONS: [&str; 3] = ["a", "b", "c"];
/// The lab's `rpo_max_lag_time`.
const RPO_TIME_MS: u64 = 10_000;

/// One fault of a schedule.
#[derive(Clone, Debug)]
enum Step {
    Network(Fault),
    Flap(Fault),
    FreezeNode(String),
    FreezeCoordinator(String),
    KillPrimary,
    KillCoordinator(String),
}

fn draw(rng: &mut Rng) -> Step {
    let region = REGIONS[rng.below(3) as usize].to_string();
    let other = REGIONS[((REGIONS.iter().position(|r| *r == region).unwrap_or(0)) + 1 + rng.below(2) as usize) % 3].to_string();
    match rng.below(8) {
        0 => Step::Network(Fault::Isolate { region, reject: false }),
        1 => Step::Network(Fault::Isolate { region, reject: true }),
        2 => Step::Network(Fault::OneWay { from: region, to: other }),
        3 => Step::Flap(Fault::Isolate { region, reject: false }),
        4 => Step::FreezeNode(format!("pg-{region}")),
        5 => Step::FreezeCoordinator(region),
        6 => Step::KillPrimary,
        _ => Step::KillCoordinator(region),
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Writes straight to one member from inside its namespace; (member, the
/// server's time of the write in ms) for every acknowledged one.
fn member_writer(lab: &Lab, id: &str, stop: Arc<AtomicBool>, out: Arc<Mutex<Vec<(String, u64)>>>) -> std::thread::JoinHandle<()> {
    let ns = lab.info.net.as_ref().and_then(|n| n.node(id).ok()).map(|n| n.namespace.clone()).unwrap_or_default();
    let m = lab.member(id).cloned();
    let id = id.to_string();
    std::thread::spawn(move || {
        let Ok(m) = m else { return };
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let sql = format!("INSERT INTO chaos VALUES ('{id}', {n}) RETURNING (extract(epoch FROM clock_timestamp()) * 1000)::bigint");
            let o = Command::new("ip")
                .args(["netns", "exec", &ns, "psql", "-h", &m.host, "-p", &m.port.to_string(), "-U", "postgres", "-qAt", "-v"])
                .args(["ON_ERROR_STOP=1", "-c", &sql])
                .env("PGCONNECT_TIMEOUT", "2")
                .output();
            let at = o
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().find_map(|l| l.trim().parse().ok()));
            match at {
                Some(at) => out.lock().unwrap_or_else(|p| p.into_inner()).push((id.clone(), at)),
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    })
}

/// Writes through the stable endpoint: (id, wall ms when acknowledged).
fn endpoint_writer(port: u16, stop: Arc<AtomicBool>, out: Arc<Mutex<Vec<(u64, u64)>>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut id = 0u64;
        while !stop.load(Ordering::SeqCst) {
            id += 1;
            if psql(port, &format!("INSERT INTO acked VALUES ({id})")).is_ok() {
                out.lock().unwrap_or_else(|p| p.into_inner()).push((id, wall_ms()));
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    })
}

/// What one trial found.
struct Found {
    problems: Vec<String>,
    notes: Vec<String>,
    failovers: usize,
}

fn trial(seed: u64, faults: u32) -> anyhow::Result<Found> {
    let mut rng = Rng(seed);
    let dir = tempfile::Builder::new().prefix("drc-bench-chaos-").tempdir()?;
    let mut lab = Lab::up_with(dir.path(), LabOptions { netns: true, ..Default::default() })?;
    wait_for("the PostgreSQL cluster adopted", Duration::from_secs(60), || {
        lab.status().ok()?["clusters"].as_array()?.iter().find(|c| c["name"] == PG_CLUSTER)?["epoch"].as_u64().filter(|e| *e >= 1)
    })?;
    let port: u16 = lab.forwarder(PG_CLUSTER)?.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).ok_or_else(|| anyhow!("port"))?;
    psql(port, "CREATE TABLE acked (id bigint PRIMARY KEY); CREATE TABLE chaos (member text, n bigint)").context("tables")?;
    let stop = Arc::new(AtomicBool::new(false));
    let direct: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let through: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let mut writers: Vec<_> =
        ["pg-a", "pg-b", "pg-c"].iter().map(|m| member_writer(&lab, m, Arc::clone(&stop), Arc::clone(&direct))).collect();
    writers.push(endpoint_writer(port, Arc::clone(&stop), Arc::clone(&through)));
    std::thread::sleep(Duration::from_secs(2));

    let mut notes = Vec::new();
    // (member, wall ms) of every wake from a freeze.
    let mut wakes: Vec<(String, u64)> = Vec::new();
    let mut only_flaps = true;
    for _ in 0..faults {
        let step = draw(&mut rng);
        let hold = Duration::from_millis(3_000 + rng.below(5_000));
        only_flaps &= matches!(step, Step::Flap(_));
        notes.push(format!("{step:?} for {:.1} s", hold.as_secs_f64()));
        println!("  seed {seed}: {step:?} for {:.1} s", hold.as_secs_f64());
        match &step {
            Step::Network(f) => {
                lab.fault(f)?;
                std::thread::sleep(hold);
                lab.heal()?;
            }
            Step::Flap(f) => {
                lab.flap(f, Duration::from_millis(200), hold)?;
            }
            Step::FreezeNode(id) => {
                let m = lab.member(id)?.clone();
                let mut frozen = vec![m.agent_pid];
                signal(m.agent_pid, libc::SIGSTOP);
                if let Ok(pid) = postmaster_pid(&m.data_dir) {
                    frozen.extend(signal_tree(pid, libc::SIGSTOP));
                }
                std::thread::sleep(hold);
                for p in frozen {
                    signal(p, libc::SIGCONT);
                }
                wakes.push((id.clone(), wall_ms()));
            }
            Step::FreezeCoordinator(region) => {
                let c = lab.info.coordinators.iter().find(|c| &c.region == region).ok_or_else(|| anyhow!("no coordinator"))?;
                signal(c.pid, libc::SIGSTOP);
                std::thread::sleep(hold);
                signal(c.pid, libc::SIGCONT);
            }
            Step::KillPrimary => {
                let status = lab.status()?;
                let primary = status["clusters"]
                    .as_array()
                    .and_then(|a| a.iter().find(|c| c["name"] == PG_CLUSTER))
                    .and_then(|c| c["primary"].as_str())
                    .unwrap_or("")
                    .to_string();
                if let Ok(m) = lab.member(&primary) {
                    if let Ok(pid) = postmaster_pid(&m.data_dir) {
                        signal_tree(pid, libc::SIGKILL);
                    }
                }
                std::thread::sleep(hold);
            }
            Step::KillCoordinator(region) => {
                let id =
                    lab.info.coordinators.iter().find(|c| &c.region == region).map(|c| c.id).ok_or_else(|| anyhow!("no coordinator"))?;
                let pid = lab.info.coordinators.iter().find(|c| c.id == id).map(|c| c.pid).unwrap_or(0);
                signal(pid, libc::SIGKILL);
                std::thread::sleep(hold);
                lab.restart_coordinator(id)?;
            }
        }
    }
    lab.heal()?;
    // A primary lost soon after a failover stays down while the anti-flap
    // window (5 minutes in the lab) lasts: by design, until an operator
    // lifts the block, as one does here.
    for cluster in [PG_CLUSTER, crate::lab::REDIS_CLUSTER] {
        let blocked = lab.status().ok().and_then(|s| {
            s["clusters"].as_array()?.iter().find(|c| c["name"] == cluster)?["blocked_until_ms"].as_u64().filter(|b| *b > wall_ms())
        });
        if blocked.is_some() {
            lab.drctl_json(&["clear-block", "--cluster", cluster])?;
            notes.push(format!("an operator lifted {cluster}'s anti-flap block"));
        }
    }
    // Recovery: writes through the endpoint again.
    let healed = wall_ms();
    let recovered = wait_for("a write through the endpoint after the last fault", Duration::from_secs(120), || {
        through.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(_, at)| *at > healed).map(|(_, at)| *at)
    });
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        let _ = w.join();
    }
    let mut problems = Vec::new();
    match recovered {
        Ok(at) => notes.push(format!("writes through the endpoint {} ms after the last heal", at.saturating_sub(healed))),
        Err(e) => problems.push(format!("no write through the endpoint after the last fault: {e:#}")),
    }

    // Promotions, from the history: (start of the promotion, new primary).
    let history = lab.drctl_json(&["history", "--cluster", PG_CLUSTER])?;
    let mut promotions: Vec<(u64, String)> = history["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| {
            let p = d["steps"].as_array()?.iter().find(|s| s["action"] == "promote" && s["state"] == "done")?;
            Some((p["started"].as_u64()?, d["to"].as_str()?.to_string()))
        })
        .collect();
    promotions.sort();
    let failovers = promotions.len();
    if only_flaps && failovers > 0 {
        problems.push(format!("{failovers} failover(s) while only links flapped"));
    }
    // Two writers: a write by a member after another member's promotion began.
    let mut stale_after_wake = 0;
    for (member, at) in direct.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let Some((started, to)) = promotions.iter().rev().find(|(s, _)| s <= at) else { continue };
        if to == member {
            continue;
        }
        // Promoted again later than that? Its own promotion makes it rightful.
        let woke = wakes.iter().any(|(m, w)| m == member && *at >= *w && *at <= w + 200);
        if woke {
            stale_after_wake += 1;
        } else {
            problems.push(format!("{member} acknowledged a write {} ms after {to}'s promotion began", at - started));
        }
    }
    if stale_after_wake > 0 {
        notes.push(format!(
            "{stale_after_wake} write(s) taken by a member within 200 ms of waking from a freeze (before its agent's first lease check)"
        ));
    }
    // Lost writes through the endpoint.
    let acked = through.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // Read through the endpoint, which may still be switching.
    let present: std::collections::BTreeSet<u64> =
        match wait_for("the acknowledged ids read back", Duration::from_secs(30), || psql(port, "SELECT id FROM acked").ok()) {
            Ok(text) => text.lines().filter_map(|l| l.trim().parse().ok()).collect(),
            Err(e) => {
                problems.push(format!("cannot read back through the endpoint: {e:#}"));
                acked.iter().map(|(id, _)| *id).collect()
            }
        };
    let lost: Vec<&(u64, u64)> = acked.iter().filter(|(id, _)| !present.contains(id)).collect();
    let mut within_budget = 0;
    for (id, at) in &lost {
        // Asynchronous replication: a promotion may give up what its
        // candidate had not received, within the RPO budget in time (the
        // lab's 10 s), so a write acknowledged that long before one.
        if promotions.iter().any(|(started, _)| *at <= *started && *started <= at + RPO_TIME_MS) {
            within_budget += 1;
        } else {
            problems.push(format!(
                "write {id} acknowledged through the endpoint at {at} was lost, and no promotion followed within the RPO budget"
            ));
        }
    }
    notes.push(format!("{} writes through the endpoint, {} lost within the RPO budget", acked.len(), within_budget));
    if !problems.is_empty() {
        lab.keep_logs();
        let keep = dir.keep();
        notes.push(format!("lab kept in {}", keep.display()));
        let _ = lab.down();
    }
    Ok(Found { problems, notes, failovers })
}

pub fn run(trials: u32, seed: u64, faults: u32) -> anyhow::Result<()> {
    println!("chaos: {trials} trials from seed {seed}, {faults} faults each, a lab in network namespaces per trial");
    let (mut failed, mut failovers) = (0, 0);
    for t in 0..u64::from(trials) {
        let s = seed + t;
        let started = Instant::now();
        match trial(s, faults) {
            Ok(f) => {
                failovers += f.failovers;
                let verdict = if f.problems.is_empty() { "ok" } else { "FAILED" };
                println!("trial seed {s}: {verdict} in {:.0} s, {} failover(s)", started.elapsed().as_secs_f64(), f.failovers);
                for n in &f.notes {
                    println!("  {n}");
                }
                if !f.problems.is_empty() {
                    failed += 1;
                    for p in &f.problems {
                        println!("  PROBLEM: {p}");
                    }
                    println!("  replay: drc-bench chaos --trials 1 --seed {s} --faults {faults}");
                }
            }
            Err(e) => {
                failed += 1;
                println!("trial seed {s}: could not run: {e:#}\n  replay: drc-bench chaos --trials 1 --seed {s} --faults {faults}");
            }
        }
    }
    println!("chaos: {trials} trials, {failed} failed, {failovers} failovers in all");
    if failed > 0 {
        anyhow::bail!("{failed} of {trials} trials failed");
    }
    Ok(())
}
