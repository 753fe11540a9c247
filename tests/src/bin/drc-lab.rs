//! `drc-lab`: a local three-region drc lab from real components.
//!
//! * `drc-lab up --dir DIR` — starts it, returns once every member is
//!   healthy, and writes `DIR/lab.json`. Ctrl-C while starting stops what
//!   was started.
//! * `drc-lab env --dir DIR [--as viewer]` — shell exports for drctl: the
//!   endpoints and a client certificate of the lab's CA.
//! * `drc-lab down --dir DIR` — stops every process of the lab.
//! * `drc-lab run --dir DIR` — up, then wait for Ctrl-C, then down.
//! * `drc-lab up --netns ...` — every node in a network namespace of its
//!   own; then `drc-lab fault --dir DIR KIND ...` drops (or rejects)
//!   packets, and `drc-lab heal --dir DIR` removes every fault.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use drc_tests::lab::netns::Fault;
use drc_tests::lab::{Lab, LabOptions};

#[derive(Parser)]
#[command(name = "drc-lab", about = "A local three-region drc lab, on loopback or in network namespaces")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the lab and leave it running.
    Up {
        #[arg(long)]
        dir: PathBuf,
        /// How many replicas each PostgreSQL commit waits for (the cluster
        /// policy's `synchronous_replicas`; 0: asynchronous).
        #[arg(long, default_value_t = 0)]
        synchronous_replicas: u32,
        /// Every node in a network namespace of its own, on a bridge the
        /// lab creates (root only), so that `fault` can partition it.
        #[arg(long)]
        netns: bool,
        /// PostgreSQL over TLS: agents check the server's certificate
        /// (verify-full) and standbys stream over TLS, with the replication
        /// password in a passfile (`db_tls` in lab.json).
        #[arg(long)]
        db_tls: bool,
        /// drc's own connections in plaintext (insecure = true): no CA, no
        /// certificates; for measuring what TLS costs.
        #[arg(long, conflicts_with = "db_tls")]
        insecure: bool,
        /// Also start a real Prometheus (Debian's `prometheus`) scraping
        /// every component, with drc's alerting rules (`prometheus` in lab.json).
        #[arg(long)]
        prometheus: bool,
        /// Every agent starts and supervises its database (`[supervise]`):
        /// the lab makes the data, the agents start the servers.
        #[arg(long)]
        supervise: bool,
    },
    /// Apply a network fault to a lab started with --netns (on top of any
    /// other; `heal` removes them all).
    Fault {
        #[arg(long)]
        dir: PathBuf,
        #[command(subcommand)]
        kind: FaultKind,
        /// Flap: apply and heal the fault every this long...
        #[arg(long, global = true, value_parser = humantime::parse_duration)]
        flap_every: Option<std::time::Duration>,
        /// ...for this long, then heal (the command returns then).
        #[arg(long, global = true, value_parser = humantime::parse_duration, default_value = "60s")]
        flap_for: std::time::Duration,
    },
    /// Remove every network fault.
    Heal {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Stop every process of the lab in DIR.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print shell exports for drctl against the lab in DIR: DRC_ENDPOINTS
    /// and a client certificate (`eval "$(drc-lab env --dir DIR)"`).
    Env {
        #[arg(long)]
        dir: PathBuf,
        /// Whose certificate: an operator's (every command) or a viewer's
        /// (read-only).
        #[arg(long = "as", value_enum, default_value = "operator")]
        role: EnvRole,
    },
    /// Start coordinator ID of the lab in DIR again (after it was killed).
    RestartCoordinator {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: u64,
    },
    /// Start the lab, run until Ctrl-C, then stop it.
    Run {
        #[arg(long)]
        dir: PathBuf,
        /// As for `up`.
        #[arg(long, default_value_t = 0)]
        synchronous_replicas: u32,
        /// As for `up`.
        #[arg(long)]
        netns: bool,
        /// As for `up`.
        #[arg(long)]
        db_tls: bool,
        /// As for `up`.
        #[arg(long, conflicts_with = "db_tls")]
        insecure: bool,
        /// As for `up`.
        #[arg(long)]
        prometheus: bool,
        /// As for `up`.
        #[arg(long)]
        supervise: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum EnvRole {
    Operator,
    Viewer,
}

/// Single-quoted for a POSIX shell.
fn quoted(p: &std::path::Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

fn print_env(lab: &Lab, role: EnvRole) -> anyhow::Result<()> {
    let Some(tls) = lab.info.tls.as_ref() else {
        // A lab started with --insecure (or made before TLS).
        println!("export DRC_ENDPOINTS='{}'", lab.info.endpoints);
        println!("export DRC_INSECURE=true");
        return Ok(());
    };
    let files = match role {
        EnvRole::Operator => &tls.operator,
        EnvRole::Viewer => &tls.viewer,
    };
    println!("export DRC_ENDPOINTS='{}'", lab.info.endpoints);
    println!("export DRC_CA={}", quoted(&files.ca));
    println!("export DRC_CERT={}", quoted(&files.cert));
    println!("export DRC_KEY={}", quoted(&files.key));
    Ok(())
}

#[derive(Subcommand)]
enum FaultKind {
    /// Everything into and out of a region dropped, silently (no RST).
    Isolate {
        #[arg(long)]
        region: String,
        /// Reject TCP with a reset instead of dropping it.
        #[arg(long)]
        reject: bool,
    },
    /// Packets from one region to another dropped; the other way delivered.
    OneWay {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
    /// Replication cut between a primary member and its replicas (their
    /// agents' probes of it too); every agent still reaches the coordinators.
    Replication {
        #[arg(long)]
        primary: String,
    },
    /// One member's agent cut off the coordinators; everything else flows.
    AgentLink {
        #[arg(long)]
        member: String,
    },
    /// Every connection between a region and the rest of the lab delayed,
    /// through forwarders (no netem here). Runs in the foreground for
    /// `--for` (or until Ctrl-C), then removes the delay.
    Delay {
        #[arg(long)]
        region: String,
        /// One way: a round trip is delayed by twice this.
        #[arg(long, value_parser = humantime::parse_duration)]
        by: std::time::Duration,
        #[arg(long = "for", value_parser = humantime::parse_duration, default_value = "60s")]
        hold: std::time::Duration,
    },
}

fn fault(lab: &Lab, kind: FaultKind) -> anyhow::Result<Fault> {
    Ok(match kind {
        FaultKind::Delay { .. } => anyhow::bail!("a delay is no nftables fault"),
        FaultKind::Isolate { region, reject } => Fault::Isolate { region, reject },
        FaultKind::OneWay { from, to } => Fault::OneWay { from, to },
        FaultKind::Replication { primary } => Fault::Replication { port: lab.member(&primary)?.port, primary },
        FaultKind::AgentLink { member } => Fault::AgentLink { member, ports: lab.coordinator_ports() },
    })
}

fn interrupted() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// Runs `up`, stopping whatever was started if Ctrl-C comes first.
fn up_or_interrupt(dir: PathBuf, opts: LabOptions) -> anyhow::Result<Option<Lab>> {
    let rt = interrupted();
    rt.block_on(async move {
        let d = dir.clone();
        let up = tokio::task::spawn_blocking(move || Lab::up_with(&d, opts));
        tokio::select! {
            r = up => Ok(Some(r??)),
            _ = tokio::signal::ctrl_c() => {
                eprintln!("interrupted: stopping what was started");
                if let Ok(lab) = Lab::attach(&dir) {
                    lab.down()?;
                }
                Ok(None)
            }
        }
    })
}

fn print_summary(lab: &Lab) {
    let i = &lab.info;
    println!("lab is up in {}", i.dir.display());
    println!("  coordinators: {}", i.endpoints);
    for m in &i.members {
        println!(
            "  {:<9} {:<9} {:<8} region {}  {}:{}  (pid {}, agent pid {})",
            m.id, m.cluster, m.kind, m.region, m.host, m.port, m.pid, m.agent_pid
        );
    }
    for s in &i.s3 {
        println!("  s3 {:<6} {}  bucket {}  access key {}", s.region, s.endpoint, s.bucket, s.access_key);
    }
    println!("\nexplore:  eval \"$(drc-lab env --dir {})\"; {} status", i.dir.display(), i.drctl.display());
    if let Some(p) = &i.prometheus {
        println!("metrics:  {} (Prometheus; alerts at {}/alerts)", p.url, p.url);
    }
    println!("stop:     drc-lab down --dir {}", i.dir.display());
}

fn main() -> ExitCode {
    let result = match Args::parse().command {
        Cmd::Up { dir, synchronous_replicas, netns, db_tls, insecure, prometheus, supervise } => {
            up_or_interrupt(dir, LabOptions { synchronous_replicas, netns, db_tls, insecure, prometheus, supervise, ..Default::default() })
                .map(|lab| {
                    if let Some(lab) = lab {
                        print_summary(&lab);
                        lab.detach();
                    }
                })
        }
        Cmd::Env { dir, role } => Lab::attach(&dir).and_then(|lab| print_env(&lab, role)),
        Cmd::Down { dir } => Lab::attach(&dir).and_then(|lab| lab.down()).map(|()| println!("lab in {} stopped", dir.display())),
        Cmd::RestartCoordinator { dir, id } => {
            Lab::attach(&dir).and_then(|mut lab| lab.restart_coordinator(id)).map(|()| println!("coordinator {id} restarted"))
        }
        Cmd::Fault { dir, kind: FaultKind::Delay { region, by, hold }, .. } => Lab::attach(&dir).and_then(|lab| {
            let delay = lab.delay(&region, by)?;
            println!("region {region}'s links delayed by {by:?} each way for {hold:?} (Ctrl-C ends it)");
            interrupted().block_on(async {
                tokio::select! {
                    _ = tokio::time::sleep(hold) => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            });
            drop(delay);
            println!("delay removed");
            Ok(())
        }),
        Cmd::Fault { dir, kind, flap_every, flap_for } => Lab::attach(&dir).and_then(|lab| {
            let f = fault(&lab, kind)?;
            match flap_every {
                None => lab.fault(&f).map(|()| println!("applied {f:?}")),
                Some(every) => {
                    let flaps = lab.flap(&f, every, flap_for)?;
                    println!("{f:?} applied and healed {flaps} times, every {every:?} for {flap_for:?}; healed");
                    Ok(())
                }
            }
        }),
        Cmd::Heal { dir } => Lab::attach(&dir).and_then(|lab| lab.heal()).map(|()| println!("every fault removed")),
        Cmd::Run { dir, synchronous_replicas, netns, db_tls, insecure, prometheus, supervise } => {
            up_or_interrupt(dir, LabOptions { synchronous_replicas, netns, db_tls, insecure, prometheus, supervise, ..Default::default() })
                .and_then(|lab| {
                    let Some(lab) = lab else { return Ok(()) };
                    print_summary(&lab);
                    println!("\nrunning; Ctrl-C stops the lab");
                    interrupted().block_on(async {
                        let _ = tokio::signal::ctrl_c().await;
                    });
                    lab.down()
                })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drc-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}
