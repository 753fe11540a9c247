//! `drctl apply` and `drctl topology get`.

use anyhow::Context as _;

use drc_proto::admin_service_client::AdminServiceClient;
use drc_proto::*;
use serde_json::json;
use tonic::transport::Channel;

use crate::args::Command;
use crate::args::*;
use crate::connect::status_err;

/// Runs the commands of this group.
pub(crate) async fn run(client: &mut AdminServiceClient<Channel>, command: Command, json_out: bool) -> anyhow::Result<()> {
    match command {
        Command::Apply { file, dry_run } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let r = client.apply_topology(ApplyTopologyRequest { topology_toml: text, dry_run }).await.map_err(status_err)?.into_inner();
            if json_out {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"applied": r.applied, "dry_run": dry_run, "diff": r.diff, "version": r.version, "raft_index": r.raft_index})
                    )?
                );
            } else {
                for line in &r.diff {
                    println!("{line}");
                }
                if r.diff.is_empty() {
                    println!("no changes (topology v{})", r.version);
                } else if dry_run {
                    println!("dry run: {} change(s) not applied", r.diff.len());
                } else {
                    println!("applied {} change(s): topology v{} at raft index {}", r.diff.len(), r.version, r.raft_index);
                }
            }
        }
        Command::Topology { command: TopologyCommand::Get } => {
            let r = client.get_topology(GetTopologyRequest {}).await.map_err(status_err)?.into_inner();
            if json_out {
                let topology: serde_json::Value = serde_json::from_str(&r.topology_json)?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"version": r.version, "applied_index": r.applied_index, "topology": topology}))?
                );
            } else {
                println!("# topology v{} (raft index {})\n", r.version, r.applied_index);
                print!("{}", r.topology_toml);
            }
        }
        other => return Err(anyhow::anyhow!("{other:?} is not handled here")),
    }
    Ok(())
}
