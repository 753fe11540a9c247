//! drctl: the on-call CLI, a thin client of the AdminService.
//!
//! Output is a human table by default and JSON with `-o json`. JSON field
//! names are a contract for scripts: fields are added, never renamed or
//! removed. Every failure prints `error: …` on stderr and exits non-zero.

mod args;
mod connect;
mod failover;
mod jobs;
mod members;
mod status;
pub mod table;
mod topology;

pub use args::*;
pub use connect::connect;

/// Runs one drctl command, printing its result on stdout.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut client = connect(&cli.endpoints, cli.timeout).await?;
    let json_out = cli.output == Output::Json;
    let c = &mut client;
    match cli.command {
        command @ (Command::Status | Command::Watch) => status::run(c, command, json_out, &cli.endpoints, cli.timeout).await,
        command @ (Command::Apply { .. } | Command::Topology { .. }) => topology::run(c, command, json_out).await,
        command @ Command::Members { .. } => members::run(c, command, json_out).await,
        command @ (Command::Backup { .. } | Command::RecoveryTest { .. } | Command::Schedule { .. }) => {
            jobs::run(c, command, json_out).await
        }
        command => failover::run(c, command, json_out).await,
    }
}
