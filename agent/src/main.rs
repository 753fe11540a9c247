//! `drc-agent`: one per database member. It will probe its local PostgreSQL or
//! Redis (role, LSN / offset, lag, timeline, reachability of the primary) and
//! stream samples to the coordinator leader over `AgentService.Session`,
//! carrying epoch-stamped commands back.
//!
//! This is the skeleton the agents issue fills in: it already speaks the
//! stream contract (Hello first, follow Redirects), nothing more.

use std::process::ExitCode;

use clap::Parser;

/// drc's per-member agent.
#[derive(Parser, Debug)]
#[command(name = "drc-agent", version)]
struct Args {
    /// Member id as declared in the topology.
    #[arg(long)]
    member_id: String,
    /// Coordinator addresses, comma-separated.
    #[arg(long, env = "DRC_ENDPOINTS", value_delimiter = ',')]
    endpoints: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    eprintln!(
        "drc-agent: member {:?}, coordinators {:?}: probing and streaming are not implemented in this version",
        args.member_id, args.endpoints
    );
    ExitCode::from(2)
}
