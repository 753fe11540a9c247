//! `drctl status` and `drctl watch`: coordinators, members, events.

use std::time::Duration;

use drc_proto::admin_service_client::AdminServiceClient;
use drc_proto::*;
use serde_json::json;
use tonic::transport::Channel;

use crate::args::Command;
use crate::connect::status_err;
use crate::table;

/// Runs the commands of this group.
pub(crate) async fn run(
    client: &mut AdminServiceClient<Channel>,
    command: Command,
    json_out: bool,
    endpoints: &[String],
    timeout: Duration,
    security: &drc_tls::Security,
) -> anyhow::Result<()> {
    match command {
        Command::Status { watch, every } => loop {
            if watch && !json_out {
                // Clear the screen and go home, as watch(1) does.
                print!("\x1b[H\x1b[2J");
                println!(
                    "every {}: drctl status        {}\n",
                    humantime::format_duration(every),
                    table::utc(drc_model::time::wall_now_ms()).unwrap_or_default()
                );
            }
            match status_once(client, json_out, endpoints, timeout, security).await {
                Err(e) if watch => println!("error: {e:#}"),
                other => other?,
            }
            if !watch {
                return Ok(());
            }
            tokio::time::sleep(every).await;
        },
        Command::Watch => {
            let mut stream = client.watch(WatchRequest {}).await.map_err(status_err)?.into_inner();
            while let Some(e) = stream.message().await.map_err(status_err)? {
                if json_out {
                    let v = json!({"at_ms": e.at_ms, "kind": e.kind, "cluster": e.cluster, "member": e.member, "message": e.message});
                    println!("{v}");
                } else {
                    let at = humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(e.at_ms));
                    println!("{at}  {:<13} {}", e.kind, e.message);
                }
            }
        }
        other => return Err(anyhow::anyhow!("{other:?} is not handled here")),
    }
    Ok(())
}

/// One `drctl status`, printed.
async fn status_once(
    client: &mut AdminServiceClient<Channel>,
    json_out: bool,
    endpoints: &[String],
    timeout: Duration,
    security: &drc_tls::Security,
) -> anyhow::Result<()> {
    let mut s = client.status(StatusRequest {}).await.map_err(status_err)?.into_inner();
    // A coordinator cut off from the leader knows no member's
    // health: another that reaches the leader answers instead.
    if s.clusters.is_empty() && s.topology.as_ref().is_some_and(|t| t.clusters > 0) {
        for e in endpoints {
            let Ok(mut other) = crate::connect::connect(std::slice::from_ref(e), timeout, security).await else { continue };
            match other.status(StatusRequest {}).await {
                Ok(r) if !r.get_ref().clusters.is_empty() => {
                    s = r.into_inner();
                    break;
                }
                _ => {}
            }
        }
    }
    let t = s.topology.unwrap_or_default();
    if json_out {
        let v = json!({
            "leader_id": s.leader_id,
            "answered_by": s.answered_by,
            "generation": s.generation,
            "nodes": s.nodes.iter().map(node_json).collect::<Vec<_>>(),
            "clusters": s.clusters.iter().map(cluster_json).collect::<Vec<_>>(),
            "topology": {
                "version": t.version,
                "regions": t.regions,
                "clusters": t.clusters,
                "members": t.members,
                "failover_groups": t.failover_groups,
            },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let leader = if s.leader_id == 0 { "none (no quorum?)".to_string() } else { s.leader_id.to_string() };
        let generation = if s.generation > 0 { format!(", generation {} (recovered)", s.generation) } else { String::new() };
        println!("coordinators (leader: {leader}, answered by node {}{generation})", s.answered_by);
        print!("{}", nodes_table(&s.nodes, s.leader_id));
        let insecure: Vec<String> = s.nodes.iter().filter(|n| n.reachable && n.insecure).map(|n| n.id.to_string()).collect();
        if !insecure.is_empty() {
            println!(
                "WARNING: node(s) {} run with insecure = true: plaintext, and anyone who reaches them can act as any role",
                insecure.join(", ")
            );
        }
        print!("{}", clusters_text(&s.clusters));
        println!(
            "\ntopology v{}: {} regions, {} clusters, {} members, {} failover groups",
            t.version, t.regions, t.clusters, t.members, t.failover_groups
        );
    }
    Ok(())
}

pub(crate) fn node_json(n: &NodeStatus) -> serde_json::Value {
    json!({
        "id": n.id,
        "address": n.address,
        "role": n.role,
        "term": n.term,
        "commit_index": n.commit_index,
        "applied_index": n.applied_index,
        "leader_id": n.leader_id,
        "reachable": n.reachable,
        "error": n.error,
        "first_index": n.first_index,
        "last_index": n.last_index,
        "membership": n.membership,
        "renews_leases": n.renews_leases,
        "insecure": n.insecure,
    })
}

pub(crate) fn member_json(m: &MemberHealth) -> serde_json::Value {
    json!({
        "id": m.id,
        "region": m.region,
        "role": m.role,
        "healthy": m.healthy,
        "lag_bytes": m.lag_bytes,
        "lag_ms": m.lag_ms,
        "timeline": m.timeline,
        "dataset_id": m.dataset_id,
        "sample_age_ms": m.sample_age_ms,
        "has_sample": m.has_sample,
        "agent_connected": m.agent_connected,
        "position": m.position,
        "replication_connected": m.replication_connected,
        "replication_state": m.replication_state,
        "lease_ms": m.lease_ms,
        "lease_fenced": m.lease_fenced,
        "server_gone": m.server_gone,
        "sync_standbys": m.sync_standbys,
        "primary_reachable_from": m.primary_reachable_from.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "error": m.error,
    })
}

pub(crate) fn cluster_json(c: &ClusterHealth) -> serde_json::Value {
    json!({
        "name": c.name,
        "kind": c.kind,
        "primary": c.primary,
        "epoch": c.epoch,
        "failover_state": c.failover_state,
        "paused": c.paused,
        "blocked_until_ms": c.blocked_until_ms,
        "decision_in_progress": c.decision_in_progress,
        "members": c.members.iter().map(member_json).collect::<Vec<_>>(),
        "wal_archive": c.wal_archive.as_ref().map(|a| json!({
            "archiver": a.archiver,
            "destination": a.destination,
            "key": a.key,
            "timeline": a.timeline,
            "end": a.end,
            "end_lsn": a.end_lsn,
            "lag_bytes": a.lag_bytes,
            "lag_ms": a.lag_ms,
            "pending_bytes": a.pending_bytes,
            "error": a.error,
            "gaps": a.gaps,
        })),
    })
}

/// The WAL archive line of a cluster, and its gaps and error.
fn wal_archive_text(a: &WalArchiveHealth) -> String {
    let state = if a.error.is_empty() { "streaming" } else { "STUCK" };
    let reach = if a.timeline == 0 {
        format!("{state}, nothing uploaded yet")
    } else {
        format!("{state} up to {} (timeline {}), lag {:.1} s / {} bytes", a.end_lsn, a.timeline, a.lag_ms as f64 / 1000.0, a.lag_bytes)
    };
    let mut s = format!("  WAL archive: {reach}, by {} into {} ({})\n", a.archiver, a.destination, a.key);
    if !a.error.is_empty() {
        s += &format!("    error: {}\n", a.error);
    }
    for g in &a.gaps {
        s += &format!("    GAP: {g}\n");
    }
    s
}

pub(crate) fn clusters_text(clusters: &[ClusterHealth]) -> String {
    let mut out = String::new();
    for c in clusters {
        let primary = if c.primary.is_empty() { "none" } else { c.primary.as_str() };
        out.push_str(&format!("\ncluster {} ({}), primary: {primary}, epoch {}\n", c.name, c.kind, c.epoch));
        if c.paused {
            out.push_str("  automatic failover: PAUSED\n");
        }
        if !c.failover_state.is_empty() {
            out.push_str(&format!("  failover: {}\n", c.failover_state));
        }
        if let Some(p) = c.members.iter().find(|m| m.id == c.primary && m.has_sample && !m.sync_standbys.is_empty()) {
            out.push_str(&format!("  commits wait for: {}\n", p.sync_standbys));
        }
        if let Some(a) = &c.wal_archive {
            out.push_str(&wal_archive_text(a));
        }
        let rows: Vec<Vec<String>> = c
            .members
            .iter()
            .map(|m| {
                let health = if m.healthy {
                    "healthy".to_string()
                } else if !m.agent_connected {
                    "UNHEALTHY (no agent)".to_string()
                } else if !m.error.is_empty() {
                    format!("UNHEALTHY ({})", m.error)
                } else {
                    "UNHEALTHY".to_string()
                };
                let sees: Vec<String> = {
                    let mut v: Vec<_> = m.primary_reachable_from.iter().collect();
                    v.sort();
                    v.into_iter().map(|(r, ok)| format!("{r}:{}", if *ok { "ok" } else { "NO" })).collect()
                };
                let age = if m.has_sample { format!("{}ms", m.sample_age_ms) } else { "-".into() };
                vec![
                    m.id.clone(),
                    m.region.clone(),
                    m.role.clone(),
                    health,
                    m.lag_bytes.to_string(),
                    format!("{:.1}", m.lag_ms as f64 / 1000.0),
                    if c.kind == "postgres" { m.timeline.to_string() } else { short(&m.dataset_id) },
                    age,
                    sees.join(" "),
                ]
            })
            .collect();
        let id_col = if c.kind == "postgres" { "TIMELINE" } else { "REPLID" };
        out.push_str(&table::render(
            &["MEMBER", "REGION", "ROLE", "HEALTH", "LAG_BYTES", "LAG_S", id_col, "SAMPLE_AGE", "PRIMARY_REACHABLE_FROM"],
            &rows,
        ));
    }
    out
}

pub(crate) fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

pub(crate) fn nodes_table(nodes: &[NodeStatus], leader: u64) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let id = if n.id == leader { format!("{}*", n.id) } else { n.id.to_string() };
            if n.reachable {
                // Only the abnormal case is spelled out.
                let role = if n.role == "leader" && !n.renews_leases {
                    "leader (not renewing leases: no quorum confirmed it)".to_string()
                } else {
                    n.role.clone()
                };
                vec![id, n.address.clone(), role, n.term.to_string(), n.commit_index.to_string(), n.applied_index.to_string(), "yes".into()]
            } else {
                vec![id, n.address.clone(), "-".into(), "-".into(), "-".into(), "-".into(), format!("no ({})", n.error)]
            }
        })
        .collect();
    table::render(&["ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "REACHABLE"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_reads_with_its_primary_why_it_waits_and_each_members_health() {
        let member = |id: &str, healthy: bool, connected: bool| MemberHealth {
            id: id.into(),
            region: "a".into(),
            role: if id == "pg-a" { "primary" } else { "replica" }.into(),
            healthy,
            agent_connected: connected,
            has_sample: true,
            ..Default::default()
        };
        let c = ClusterHealth {
            name: "app-pg".into(),
            kind: "postgres".into(),
            primary: "pg-a".into(),
            epoch: 3,
            paused: true,
            failover_state: "decision 4 is being carried out".into(),
            members: vec![member("pg-a", true, true), member("pg-b", false, false)],
            ..Default::default()
        };
        let text = clusters_text(&[c]);
        assert!(text.contains("cluster app-pg (postgres), primary: pg-a, epoch 3\n"), "{text}");
        assert!(
            text.contains("  automatic failover: PAUSED\n") && text.contains("  failover: decision 4 is being carried out\n"),
            "{text}"
        );
        assert!(text.contains("UNHEALTHY (no agent)"), "{text}");
        let none = ClusterHealth { name: "x".into(), kind: "redis".into(), ..Default::default() };
        assert!(clusters_text(&[none]).contains("primary: none"));
    }

    #[test]
    fn the_wal_archive_line_says_how_far_it_reaches_or_that_nothing_is_uploaded_yet_and_every_gap() {
        let mut a = WalArchiveHealth {
            archiver: "pg-b".into(),
            destination: "s3-b".into(),
            key: "drc-wal/app-pg/7312".into(),
            lag_bytes: 67299792,
            ..Default::default()
        };
        assert_eq!(wal_archive_text(&a), "  WAL archive: streaming, nothing uploaded yet, by pg-b into s3-b (drc-wal/app-pg/7312)\n");
        (a.timeline, a.end_lsn, a.lag_ms, a.lag_bytes) = (2, "0/46BC201".into(), 400, 1024);
        a.error = "uploading x: timed out".into();
        a.gaps = vec!["timeline 1: 0/5000000 to 0/6000000".into()];
        let text = wal_archive_text(&a);
        assert!(text.starts_with("  WAL archive: STUCK up to 0/46BC201 (timeline 2), lag 0.4 s / 1024 bytes, by pg-b"), "{text}");
        assert!(
            text.contains("    error: uploading x: timed out\n") && text.ends_with("    GAP: timeline 1: 0/5000000 to 0/6000000\n"),
            "{text}"
        );
    }
}
