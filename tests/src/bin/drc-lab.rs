//! `drc-lab`: a local three-region drc lab from real components.
//!
//! * `drc-lab up --dir DIR` — starts it, returns once every member is
//!   healthy, and writes `DIR/lab.json`. Ctrl-C while starting stops what
//!   was started.
//! * `drc-lab down --dir DIR` — stops every process of the lab.
//! * `drc-lab run --dir DIR` — up, then wait for Ctrl-C, then down.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use drc_tests::lab::{Lab, LabOptions};

#[derive(Parser)]
#[command(name = "drc-lab", about = "A local three-region drc lab on loopback")]
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
    },
    /// Stop every process of the lab in DIR.
    Down {
        #[arg(long)]
        dir: PathBuf,
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
    },
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
    println!("\nexplore:  DRC_ENDPOINTS={} {} status", i.endpoints, i.drctl.display());
    println!("stop:     drc-lab down --dir {}", i.dir.display());
}

fn main() -> ExitCode {
    let result = match Args::parse().command {
        Cmd::Up { dir, synchronous_replicas } => {
            up_or_interrupt(dir, LabOptions { synchronous_replicas, ..Default::default() }).map(|lab| {
                if let Some(lab) = lab {
                    print_summary(&lab);
                    lab.detach();
                }
            })
        }
        Cmd::Down { dir } => Lab::attach(&dir).and_then(|lab| lab.down()).map(|()| println!("lab in {} stopped", dir.display())),
        Cmd::RestartCoordinator { dir, id } => {
            Lab::attach(&dir).and_then(|mut lab| lab.restart_coordinator(id)).map(|()| println!("coordinator {id} restarted"))
        }
        Cmd::Run { dir, synchronous_replicas } => {
            up_or_interrupt(dir, LabOptions { synchronous_replicas, ..Default::default() }).and_then(|lab| {
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
