//! `drc-bench chaos`: random schedules of gray and clean faults against a
//! lab in network namespaces, with a checker in the spirit of Jepsen.
//!
//! Each trial draws, from its seed, a few faults one after another: a region
//! blackholed (dropped or rejected), one direction of a link cut, a flapping
//! link, a region's links slowed by 50-200 ms each way, a frozen PostgreSQL or Redis node (server and agent), an agent
//! alone frozen or killed, a frozen or killed coordinator, a killed primary.
//! Writers run all along for both clusters ([`writers`]). After the
//! schedule everything is healed and woken, and [`check`] reads each
//! cluster's decision history:
//!
//! * no member acknowledges a write after another member's promotion
//!   started, except within the design's bound after the member woke from
//!   a freeze (400 ms: its agent's first lease checks fence it), which is
//!   reported apart;
//! * no write acknowledged through the endpoint is lost but within the RPO
//!   budget of a promotion that followed (asynchronous replication);
//! * no failover starts during a fault that must not cause one (a flapping
//!   or slow link, an agent or a coordinator lost) unless a harmful fault
//!   just before explains it;
//! * the cluster takes writes through the endpoint again after the last
//!   fault; the longest gap while each fault lasted is reported.
//!
//! A failing trial prints its seed, the command that replays it, and keeps
//! the lab's logs.

mod check;
mod writers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;

use crate::lab::netns::Fault;
use crate::lab::postgres::postmaster_pid;
use crate::lab::{signal, signal_tree, Lab, LabOptions};
use crate::wait_for;
use writers::{wall_ms, Direct, Store, Through};

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

/// One fault of a schedule.
#[derive(Clone, Debug)]
pub enum Step {
    Network(Fault),
    Flap(Fault),
    /// Every link of a region slow by this many ms each way (a reset of
    /// its open connections first, see `lab::delay`).
    Delay {
        region: String,
        ms: u64,
    },
    /// A member's server and agent frozen: a hung machine.
    FreezeNode(String),
    /// A member's agent alone frozen: its database keeps running.
    FreezeAgent(String),
    /// A member's agent SIGKILLed, started again when the fault ends.
    KillAgent(String),
    FreezeCoordinator(String),
    KillPrimary(Store),
    KillCoordinator(String),
}

impl Step {
    /// Whether this fault may rightly cause a failover. A link slower than
    /// 100 ms each way may: a leader whose round trips to its followers
    /// outlast an election timeout (400 ms in the lab) can confirm its
    /// leadership to no one, so renews no lease.
    fn may_fail_over(&self) -> bool {
        match self {
            Step::Network(_) | Step::FreezeNode(_) | Step::KillPrimary(_) => true,
            Step::Delay { ms, .. } => *ms > 100,
            _ => false,
        }
    }
}

/// The fault one step ran, from `start` until it was healed at `end`, and
/// when the next one began (or the trial ended): all wall ms.
pub struct Span {
    pub step: Step,
    pub start: u64,
    pub end: u64,
    pub next: u64,
}

fn draw(rng: &mut Rng) -> Step {
    let i = rng.below(3) as usize;
    let region = REGIONS[i].to_string();
    let other = REGIONS[(i + 1 + rng.below(2) as usize) % 3].to_string();
    let member = format!("{}-{region}", ["pg", "redis"][rng.below(2) as usize]);
    match rng.below(12) {
        0 => Step::Network(Fault::Isolate { region, reject: false }),
        1 => Step::Network(Fault::Isolate { region, reject: true }),
        2 => Step::Network(Fault::OneWay { from: region, to: other }),
        3 => Step::Flap(Fault::Isolate { region, reject: false }),
        4 => Step::FreezeNode(member),
        5 => Step::FreezeAgent(member),
        6 => Step::KillAgent(member),
        7 => Step::FreezeCoordinator(region),
        8 => Step::KillPrimary(Store::ALL[rng.below(2) as usize]),
        9 => Step::KillCoordinator(region),
        10 => Step::Delay { region, ms: 50 + rng.below(151) },
        _ => Step::FreezeNode(format!("pg-{region}")),
    }
}

fn forwarder_port(lab: &Lab, store: Store) -> anyhow::Result<u16> {
    lab.forwarder(store.cluster())?.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).ok_or_else(|| anyhow!("forwarder port"))
}

/// The pids of a member's server tree.
fn server_pids(lab: &Lab, id: &str) -> Vec<u32> {
    let Ok(m) = lab.member(id) else { return Vec::new() };
    if m.kind == "postgres" {
        postmaster_pid(&m.data_dir).map(|p| vec![p]).unwrap_or_default()
    } else {
        vec![m.pid]
    }
}

/// Runs one step and heals or wakes what it broke.
fn run_step(lab: &mut Lab, step: &Step, hold: Duration, wakes: &mut Vec<(String, u64)>) -> anyhow::Result<()> {
    match step {
        Step::Network(f) => {
            lab.fault(f)?;
            std::thread::sleep(hold);
            lab.heal()?;
        }
        Step::Flap(f) => {
            lab.flap(f, Duration::from_millis(200), hold)?;
        }
        Step::Delay { region, ms } => {
            let delay = lab.delay(region, Duration::from_millis(*ms))?;
            std::thread::sleep(hold);
            drop(delay);
        }
        Step::FreezeNode(id) => {
            let m = lab.member(id)?.clone();
            let mut frozen = vec![m.agent_pid];
            signal(m.agent_pid, libc::SIGSTOP);
            for pid in server_pids(lab, id) {
                frozen.extend(signal_tree(pid, libc::SIGSTOP));
            }
            std::thread::sleep(hold);
            // Stamped before the first SIGCONT: the server may take a write
            // the moment it runs, before the last signal is sent.
            wakes.push((id.clone(), wall_ms()));
            for p in frozen {
                signal(p, libc::SIGCONT);
            }
        }
        Step::FreezeAgent(id) => {
            let pid = lab.member(id)?.agent_pid;
            signal(pid, libc::SIGSTOP);
            std::thread::sleep(hold);
            signal(pid, libc::SIGCONT);
        }
        Step::KillAgent(id) => {
            let index = lab.info.members.iter().position(|m| &m.id == id).ok_or_else(|| anyhow!("no member {id}"))?;
            signal(lab.info.members[index].agent_pid, libc::SIGKILL);
            std::thread::sleep(hold);
            lab.start_agent(index)?;
            lab.write_info()?;
        }
        Step::FreezeCoordinator(region) => {
            let c = lab.info.coordinators.iter().find(|c| &c.region == region).ok_or_else(|| anyhow!("no coordinator"))?;
            signal(c.pid, libc::SIGSTOP);
            std::thread::sleep(hold);
            signal(c.pid, libc::SIGCONT);
        }
        Step::KillPrimary(store) => {
            let status = lab.status()?;
            let primary = status["clusters"]
                .as_array()
                .and_then(|a| a.iter().find(|c| c["name"] == store.cluster()))
                .and_then(|c| c["primary"].as_str())
                .unwrap_or("")
                .to_string();
            for pid in server_pids(lab, &primary) {
                signal_tree(pid, libc::SIGKILL);
            }
            std::thread::sleep(hold);
        }
        Step::KillCoordinator(region) => {
            let c = lab.info.coordinators.iter().find(|c| &c.region == region).ok_or_else(|| anyhow!("no coordinator"))?;
            let (id, pid) = (c.id, c.pid);
            signal(pid, libc::SIGKILL);
            std::thread::sleep(hold);
            lab.restart_coordinator(id)?;
        }
    }
    Ok(())
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
    for store in Store::ALL {
        wait_for(&format!("{} adopted", store.cluster()), Duration::from_secs(60), || {
            lab.status().ok()?["clusters"].as_array()?.iter().find(|c| c["name"] == store.cluster())?["epoch"].as_u64().filter(|e| *e >= 1)
        })?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    let mut recorded: Vec<(Store, u16, Direct, Through)> = Vec::new();
    for store in Store::ALL {
        let port = forwarder_port(&lab, store)?;
        store.prepare(port)?;
        let (direct, through): (Direct, Through) = Default::default();
        for m in store.members() {
            writers.push(writers::member_writer(store, &lab, &m, Arc::clone(&stop), Arc::clone(&direct)));
        }
        writers.push(writers::endpoint_writer(store, port, Arc::clone(&stop), Arc::clone(&through)));
        recorded.push((store, port, direct, through));
    }
    std::thread::sleep(Duration::from_secs(2));

    let mut notes = Vec::new();
    let mut wakes: Vec<(String, u64)> = Vec::new();
    let mut spans: Vec<Span> = Vec::new();
    for _ in 0..faults {
        let step = draw(&mut rng);
        let hold = Duration::from_millis(3_000 + rng.below(5_000));
        println!("  seed {seed}: {step:?} for {:.1} s", hold.as_secs_f64());
        let start = wall_ms();
        if let Some(prev) = spans.last_mut() {
            prev.next = start;
        }
        run_step(&mut lab, &step, hold, &mut wakes)?;
        let end = wall_ms();
        spans.push(Span { step, start, end, next: end });
    }
    lab.heal()?;
    // A primary lost soon after a failover stays down while the anti-flap
    // window (5 minutes in the lab) lasts: by design, until an operator
    // lifts the block, as one does here.
    for store in Store::ALL {
        let blocked = lab.status().ok().and_then(|s| {
            s["clusters"].as_array()?.iter().find(|c| c["name"] == store.cluster())?["blocked_until_ms"].as_u64().filter(|b| *b > wall_ms())
        });
        if blocked.is_some() {
            lab.drctl_json(&["clear-block", "--cluster", store.cluster()])?;
            notes.push(format!("an operator lifted {}'s anti-flap block", store.cluster()));
        }
    }
    // Recovery: writes through every endpoint again.
    let healed = wall_ms();
    let mut problems = Vec::new();
    for (store, _, _, through) in &recorded {
        let what = format!("a write through {}'s endpoint after the last fault", store.cluster());
        let recovered = wait_for(&what, Duration::from_secs(120), || {
            through.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(_, at)| *at > healed).map(|(_, at)| *at)
        });
        match recovered {
            Ok(at) => {
                notes.push(format!("{}: writes through the endpoint {} ms after the last heal", store.cluster(), at.saturating_sub(healed)))
            }
            Err(e) => problems.push(format!("{}: no write through the endpoint after the last fault: {e:#}", store.cluster())),
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        let _ = w.join();
    }
    if let Some(last) = spans.last_mut() {
        last.next = wall_ms();
    }

    let mut failovers = 0;
    for (store, port, direct, through) in recorded {
        let history = lab.drctl_json(&["history", "--cluster", store.cluster()])?;
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
        failovers += promotions.len();
        let through = through.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // Read through the endpoint, which may still be switching.
        let present = match wait_for("the acknowledged ids read back", Duration::from_secs(30), || store.read_back(port).ok()) {
            Ok(ids) => ids.into_iter().collect(),
            Err(e) => {
                problems.push(format!("{}: cannot read back through the endpoint: {e:#}", store.cluster()));
                through.iter().map(|(id, _)| *id).collect()
            }
        };
        let record = check::Record {
            cluster: store.cluster(),
            promotions,
            direct: direct.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            through,
            present,
            wakes: wakes.iter().filter(|(m, _)| store.members().contains(m)).cloned().collect(),
        };
        let (p, n) = check::check(&record, &spans);
        problems.extend(p);
        notes.extend(n);
    }
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
