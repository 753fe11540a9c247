//! `drctl members`: the coordinator nodes (Raft membership).

use drc_proto::admin_service_client::AdminServiceClient;
use drc_proto::*;
use serde_json::json;
use tonic::transport::Channel;

use crate::args::Command;
use crate::args::*;
use crate::connect::status_err;
use crate::status::{node_json, nodes_table};

/// Runs the commands of this group.
pub(crate) async fn run(client: &mut AdminServiceClient<Channel>, command: Command, json_out: bool) -> anyhow::Result<()> {
    match command {
        Command::Members { command } => match command {
            MembersCommand::List => {
                let r = client.list_nodes(ListNodesRequest {}).await.map_err(status_err)?.into_inner();
                let leader = r.nodes.iter().find(|n| n.role == "leader").map(|n| n.id).unwrap_or(0);
                if json_out {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &json!({"leader_id": leader, "nodes": r.nodes.iter().map(node_json).collect::<Vec<_>>()})
                        )?
                    );
                } else {
                    print!("{}", nodes_table(&r.nodes, leader));
                }
            }
            MembersCommand::Add { id, address, raft_address } => {
                let request = AddNodeRequest { id, address: address.clone(), raft_address: raft_address.unwrap_or_default() };
                let r = client.add_node(request).await.map_err(status_err)?.into_inner();
                if json_out {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &json!({"added": id, "address": address, "voters": r.voters, "raft_index": r.raft_index})
                        )?
                    );
                } else {
                    println!("added node {id} ({address}); voters now {:?}", r.voters);
                }
            }
            MembersCommand::Lead { id } => {
                let r = client.transfer_leadership(TransferLeadershipRequest { id }).await.map_err(status_err)?.into_inner();
                if json_out {
                    println!("{}", serde_json::to_string_pretty(&json!({"leader_id": r.leader_id, "term": r.term}))?);
                } else {
                    println!("node {} leads (term {})", r.leader_id, r.term);
                }
            }
            MembersCommand::Remove { id } => {
                let r = client.remove_node(RemoveNodeRequest { id }).await.map_err(status_err)?.into_inner();
                if json_out {
                    println!("{}", serde_json::to_string_pretty(&json!({"removed": id, "voters": r.voters, "raft_index": r.raft_index}))?);
                } else {
                    println!("removed node {id}; voters now {:?}", r.voters);
                }
            }
        },
        other => return Err(anyhow::anyhow!("{other:?} is not handled here")),
    }
    Ok(())
}
