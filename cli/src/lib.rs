//! drctl: the on-call CLI, a thin client of the AdminService.
//!
//! Output is a human table by default and JSON with `-o json`. JSON field
//! names are a contract for scripts: fields are added, never renamed or
//! removed. Every failure prints `error: …` on stderr and exits non-zero.

mod args;
mod audit;
mod connect;
mod failover;
mod jobs;
mod members;
mod restore;
mod status;
pub mod table;
mod topology;

pub use args::*;
pub use connect::connect;

/// Runs one drctl command, printing its result on stdout.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let security = cli.security()?;
    let mut client = connect(&cli.endpoints, cli.timeout, &security).await?;
    let json_out = cli.output == Output::Json;
    let c = &mut client;
    let result = match cli.command {
        command @ (Command::Status { .. } | Command::Watch) => {
            status::run(c, command, json_out, &cli.endpoints, cli.timeout, &security).await
        }
        command @ (Command::Apply { .. } | Command::Topology { .. }) => topology::run(c, command, json_out).await,
        command @ Command::Members { .. } => members::run(c, command, json_out).await,
        Command::Restore { command, run } => restore::run(c, command, run, json_out).await,
        Command::Audit { cluster, since, limit } => audit::run(c, cluster, since, limit, json_out).await,
        command @ (Command::Backup { .. } | Command::RecoveryTest { .. } | Command::Schedule { .. }) => {
            jobs::run(c, command, json_out).await
        }
        command => failover::run(c, command, json_out).await,
    };
    result.map_err(|e| explain_broken(e, &security))
}

/// A connection the coordinator drops at once reads as "transport error" or
/// "connection closed"; say what usually causes it.
fn explain_broken(e: anyhow::Error, security: &drc_tls::Security) -> anyhow::Error {
    let text = format!("{e:#}");
    if !["transport error", "connection closed", "h2 protocol error"].iter().any(|t| text.contains(t)) {
        return e;
    }
    if security.is_insecure() {
        e.context("the connection broke at once: drctl --insecure speaks plaintext, and a coordinator that serves TLS drops it")
    } else {
        e.context(
            "the coordinator dropped the connection: check that --cert is signed by the cluster's CA, is unexpired and names drc://CLUSTER/ROLE/NAME (the coordinator's log says why)",
        )
    }
}
