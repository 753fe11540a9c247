//! The live status page on the coordinator's HTTP listener: `/` is one
//! self-contained HTML page (no build step, no external assets) that polls
//! `/api/status`, a read-only JSON snapshot of what an on-call engineer
//! looks at first: the regions side by side with every member's role,
//! health, lag and lease; each cluster's primary and stable endpoint and
//! why it waits; the decisions with their evidence and step timings;
//! backups, recovery tests with RTO and RPO, and schedules.
//!
//! Any coordinator serves it: member health comes from the leader (asked
//! over gRPC when this node follows), the rest from the replicated state.

use std::sync::Arc;

use drc_model::job::JobState;
use drc_proto::ClusterHealth;
use serde_json::{json, Value};

use crate::api::admin::AdminApi;
use crate::raft::NodeHandle;
use crate::state::StateMachine;

/// The page itself.
pub const PAGE: &str = include_str!("page.html");

/// Decisions, backups and recovery tests the page shows, newest first.
const SHOWN: usize = 20;

/// What the page needs to build a snapshot.
pub struct StatusPage {
    pub api: Arc<AdminApi>,
    pub node: NodeHandle,
    pub cluster_id: String,
}

fn member(m: &drc_proto::MemberHealth) -> Value {
    json!({
        "id": m.id,
        "region": m.region,
        "role": m.role,
        "healthy": m.healthy,
        "agent_connected": m.agent_connected,
        "lag_bytes": m.lag_bytes,
        "lag_ms": m.lag_ms,
        "lease_ms": m.lease_ms,
        "fenced": m.lease_fenced,
        "sample_age_ms": m.sample_age_ms,
        "has_sample": m.has_sample,
        "timeline": m.timeline,
        "error": m.error,
    })
}

/// One cluster: the leader's health view, with the stable endpoint from
/// the replicated state (the member `WatchPrimary` publishes).
fn cluster(c: &ClusterHealth, sm: &StateMachine) -> Value {
    let (_, published) = sm.published_primary(&c.name).unwrap_or((0, None));
    let endpoint = published.as_ref().and_then(|m| sm.topology.members.get(m)).map(|m| m.address.clone());
    json!({
        "name": c.name,
        "kind": c.kind,
        "primary": c.primary,
        "epoch": c.epoch,
        "endpoint": endpoint,
        "failover_state": c.failover_state,
        "paused": c.paused || sm.global_paused,
        "blocked_until_ms": c.blocked_until_ms,
        "decision_in_progress": c.decision_in_progress,
        "members": c.members.iter().map(member).collect::<Vec<_>>(),
        "wal_archive": c.wal_archive.as_ref().map(|a| json!({
            "lag_ms": a.lag_ms, "lag_bytes": a.lag_bytes, "pending_bytes": a.pending_bytes, "error": a.error, "end_lsn": a.end_lsn,
        })),
    })
}

/// A record as JSON, without its bulky fields.
fn lean<T: serde::Serialize>(record: &T, drop: &[&str]) -> Value {
    let mut v = serde_json::to_value(record).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        for k in drop {
            o.remove(*k);
        }
    }
    v
}

/// The part of the snapshot every coordinator knows alike.
fn replicated(sm: &StateMachine, health: &[ClusterHealth]) -> Value {
    let mut regions: Vec<(&String, u32)> = sm.topology.regions.iter().map(|(name, r)| (name, r.priority)).collect();
    regions.sort_by_key(|(name, priority)| (*priority, (*name).clone()));
    let now = drc_model::time::wall_now_ms();
    let schedules: Vec<Value> = sm
        .schedules
        .values()
        .map(|s| {
            let next = crate::jobs::schedule::parse_cron(&s.cron).ok().and_then(|c| crate::jobs::schedule::next(&c, now));
            json!({"cluster": s.cluster, "kind": s.job.as_str(), "cron": s.cron, "last_fired_ms": s.last_fired, "next_ms": next})
        })
        .collect();
    json!({
        "regions": regions.iter().map(|(name, _)| name).collect::<Vec<_>>(),
        "clusters": health.iter().map(|c| cluster(c, sm)).collect::<Vec<_>>(),
        "decisions": sm.history.values().rev().take(SHOWN).collect::<Vec<_>>(),
        "backups": sm.backups.values().rev().take(SHOWN).map(|b| lean(b, &["manifest"])).collect::<Vec<_>>(),
        "recovery_tests": sm.recovery_tests.values().rev().take(SHOWN).map(|t| lean(t, &[])).collect::<Vec<_>>(),
        "running_jobs": sm.backups.values().filter(|b| b.state == JobState::Running).count()
            + sm.recovery_tests.values().filter(|t| t.state == JobState::Running).count(),
        "schedules": schedules,
    })
}

impl StatusPage {
    /// The snapshot `/api/status` serves.
    pub async fn snapshot(&self) -> Value {
        let health = self.api.leader_health().await;
        let status = self.node.status();
        let mut v = self.node.store().with_state(|sm| replicated(sm, &health));
        if let Some(o) = v.as_object_mut() {
            o.insert("drc_cluster".into(), json!(self.cluster_id));
            o.insert("answered_by".into(), json!(status.id));
            o.insert("leader_id".into(), json!(status.leader_id));
            o.insert("term".into(), json!(status.term));
            o.insert("now_ms".into(), json!(drc_model::time::wall_now_ms()));
            o.insert("health_known".into(), json!(!health.is_empty()));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_shows_regions_by_priority_the_stable_endpoint_and_lean_records() {
        let topology = drc_model::topology::parse::parse_topology(
            "[regions.b]\npriority = 1\n[regions.a]\npriority = 2\n[clusters.pg]\nkind = \"postgres\"\n\
             [[members]]\nid = \"pg-a\"\ncluster = \"pg\"\nregion = \"a\"\naddress = \"10.0.0.1:5432\"\n\
             [[members]]\nid = \"pg-b\"\ncluster = \"pg\"\nregion = \"b\"\naddress = \"10.0.0.2:5432\"\n",
        )
        .expect("topology");
        let mut sm = StateMachine { topology: Arc::new(topology), ..Default::default() };
        sm.records =
            Arc::new([("pg".to_string(), drc_model::ClusterRecord { epoch: 2, primary: "pg-b".into(), ..Default::default() })].into());
        let backup = drc_model::job::BackupRecord { id: 1, cluster: "pg".into(), manifest: json!({"big": true}), ..Default::default() };
        sm.backups.insert(1, backup);
        let health = [ClusterHealth { name: "pg".into(), primary: "pg-b".into(), epoch: 2, ..Default::default() }];
        let v = replicated(&sm, &health);
        assert_eq!(v["regions"], json!(["b", "a"]));
        assert_eq!(v["clusters"][0]["endpoint"], "10.0.0.2:5432");
        assert!(v["backups"][0].get("manifest").is_none(), "{v}");
        assert_eq!(v["backups"][0]["id"], 1);
    }
}
