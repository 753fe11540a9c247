//! The coordinator's HTTP site: `/readyz` and `/metrics`.
//!
//! What the replicated state holds (clusters, decisions, jobs, schedules,
//! the archive catalog) every coordinator exports alike, read at scrape
//! time; aggregate it with `max without (instance)`. What only the leader
//! sees (members' samples, why a cluster waits) only the leader exports.
//! Counters of this node's own work (Raft, agent commands) come from
//! prometheus-client's atomics. A job's kind is the label `kind`: `job` is
//! the label Prometheus gives every target.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use drc_model::decision::DecisionKind;
use drc_model::job::{JobKind, JobState};
use drc_ops::scrape::{flag, render, Buckets, Collector, Families};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::agents::Agents;
use crate::executor::Executor;
use crate::raft::{NodeHandle, Role};
use crate::state::tally::{DECISION_BOUNDS, STEP_BOUNDS};
use crate::state::StateMachine;

/// Seconds since the Unix epoch of a time in milliseconds.
fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Reads the node, the state and the leader's views at every scrape.
struct Scraped {
    node: NodeHandle,
    agents: Arc<Agents>,
    executor: Arc<Executor>,
}

impl fmt::Debug for Scraped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("coordinator metrics")
    }
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut f = Families::new(&mut encoder);
        self.raft(&mut f)?;
        let leader = self.node.status().role == Role::Leader;
        let (topology, records) = self.node.store().with_state(|sm| -> Result<_, fmt::Error> {
            clusters(&mut f, sm)?;
            decisions(&mut f, sm)?;
            jobs(&mut f, sm)?;
            schedules(&mut f, sm)?;
            Ok((Arc::clone(&sm.topology), Arc::clone(&sm.records)))
        })?;
        // Outside the state's lock: the board has its own.
        if leader {
            self.members(&mut f, &topology, &records)?;
            self.waits(&mut f)?;
        }
        Ok(())
    }
}

impl Scraped {
    fn raft(&self, f: &mut Families) -> fmt::Result {
        let s = self.node.status();
        f.gauge1("raft_term", "The Raft term this node is in", s.term as f64)?;
        f.gauge1("raft_leader_id", "The leader this node knows (0: none)", s.leader_id as f64)?;
        f.gauge1("raft_is_leader", "1 on the leader", flag(s.role == Role::Leader))?;
        f.gauge1("raft_commit_index", "The highest log index this node knows committed", s.commit_index as f64)?;
        f.gauge1("raft_applied_index", "The highest log index this node applied", s.applied_index as f64)?;
        f.gauge1(
            "raft_log_entries",
            "Entries in this node's log since its last compaction",
            s.last_index.saturating_sub(s.first_index) as f64,
        )?;
        f.gauge1("raft_voters", "Voters in the Raft configuration", s.voters.len() as f64)?;
        f.gauge1(
            "raft_renews_leases",
            "1: this node leads and a quorum confirmed it recently enough to renew leases",
            flag(self.node.may_renew()),
        )?;
        f.gauge1(
            "raft_snapshot_bytes",
            "Size of this node's newest checkpoint of the state (what a snapshot sends)",
            self.node.store().checkpoint_bytes() as f64,
        )
    }

    /// The leader's view of every member: health, role, lag, leases.
    fn members(
        &self,
        f: &mut Families,
        topology: &drc_model::topology::Topology,
        records: &std::collections::BTreeMap<String, drc_model::ClusterRecord>,
    ) -> fmt::Result {
        let clusters = self.agents.health.clusters(topology, records, None, Instant::now());
        let rows: Vec<(Vec<(&str, &str)>, &drc_proto::MemberHealth)> = clusters
            .iter()
            .flat_map(|c| {
                c.members
                    .iter()
                    .map(move |m| (vec![("cluster", c.name.as_str()), ("member", m.id.as_str()), ("region", m.region.as_str())], m))
            })
            .collect();
        let each = |value: fn(&drc_proto::MemberHealth) -> f64| rows.iter().map(move |(l, m)| (&l[..], value(m)));
        f.gauge("member_healthy", "1: its agent is connected, its sample fresh and the member reachable", each(|m| flag(m.healthy)))?;
        f.gauge("member_agent_connected", "1: the member's agent has its stream to the leader open", each(|m| flag(m.agent_connected)))?;
        f.gauge("member_lag_bytes", "How far the member's replica is behind its primary, in bytes", each(|m| m.lag_bytes as f64))?;
        f.gauge("member_lag_seconds", "How far the member's replica is behind its primary, in time", each(|m| secs(m.lag_ms)))?;
        f.gauge(
            "member_sample_age_seconds",
            "Age of the member's newest sample on the leader's clock (-1: none yet)",
            each(|m| if m.has_sample { secs(m.sample_age_ms) } else { -1.0 }),
        )?;
        f.gauge("member_lease_remaining_seconds", "A primary's lease left when its agent sampled it", each(|m| secs(m.lease_ms)))?;
        f.gauge("member_fenced", "1: the member's agent fenced it because its lease lapsed", each(|m| flag(m.lease_fenced)))?;
        f.gauge("member_timeline", "The member's PostgreSQL timeline", each(|m| f64::from(m.timeline)))?;
        f.gauge("member_position", "The member's WAL position (PostgreSQL) or replication offset (Redis)", each(|m| m.position as f64))?;
        f.gauge("member_replication_connected", "1: the replica's link to its primary is up", each(|m| flag(m.replication_connected)))?;
        f.gauge("member_server_gone", "1: unreachable, and its agent found its server process gone", each(|m| flag(m.server_gone)))?;
        // The same for every member of a cluster: once per cluster.
        let reach: Vec<([(&str, &str); 2], bool)> = clusters
            .iter()
            .filter_map(|c| c.members.first().map(|m| (c.name.as_str(), m)))
            .flat_map(|(c, m)| m.primary_reachable_from.iter().map(move |(from, ok)| ([("cluster", c), ("from", from.as_str())], *ok)))
            .collect();
        f.gauge(
            "cluster_primary_reachable_from",
            "1: agents in region `from` reach the cluster's primary (leader only)",
            reach.iter().map(|(l, ok)| (&l[..], flag(*ok))),
        )?;
        let roles: Vec<Vec<(&str, &str)>> = rows
            .iter()
            .map(|(l, m)| {
                let mut l = l.clone();
                l.push(("role", m.role.as_str()));
                l
            })
            .collect();
        f.gauge("member_role", "1 for the role the member reports (primary, replica, unknown)", roles.iter().map(|l| (&l[..], 1.0)))?;
        let archives: Vec<(&str, &drc_proto::WalArchiveHealth)> =
            clusters.iter().filter_map(|c| c.wal_archive.as_ref().map(|a| (c.name.as_str(), a))).collect();
        let labels: Vec<[(&str, &str); 2]> =
            archives.iter().map(|(c, a)| [("cluster", *c), ("destination", a.destination.as_str())]).collect();
        let arch = |value: fn(&drc_proto::WalArchiveHealth) -> f64| labels.iter().zip(&archives).map(move |(l, (_, a))| (&l[..], value(a)));
        f.gauge("wal_archive_lag_bytes", "WAL the primary wrote that is not in the archive yet", arch(|a| a.lag_bytes as f64))?;
        f.gauge("wal_archive_lag_seconds", "Age of the oldest WAL not in the archive yet", arch(|a| secs(a.lag_ms)))?;
        f.gauge("wal_archive_pending_bytes", "WAL the archiver received and has not uploaded", arch(|a| a.pending_bytes as f64))?;
        f.gauge("wal_archive_failing", "1: the archiver reports an error", arch(|a| flag(!a.error.is_empty())))?;
        f.gauge("wal_archive_end_lsn", "Everything before this WAL position is in the archive", arch(|a| a.end as f64))?;
        f.gauge("wal_archive_gaps", "Ranges of WAL missing from the archive's catalog", arch(|a| a.gaps.len() as f64))?;
        f.gauge(
            "agent_streams",
            "Agent streams open to this node",
            [(&[][..], rows.iter().filter(|(_, m)| m.agent_connected).count() as f64)],
        )
    }

    /// Why each cluster waits, as the leader's decision core last said.
    fn waits(&self, f: &mut Families) -> fmt::Result {
        let waits = self.executor.waits();
        let labels: Vec<[(&str, &str); 2]> = waits.iter().map(|(c, k)| [("cluster", c.as_str()), ("reason", k.as_str())]).collect();
        f.gauge(
            "failover_waiting",
            "1 for the reason nothing happens to a cluster now (leader only)",
            labels.iter().map(|l| (&l[..], 1.0)),
        )?;
        let blocked: Vec<[(&str, &str); 1]> = waits.keys().map(|c| [("cluster", c.as_str())]).collect();
        f.gauge(
            "failover_blocked",
            "1: the cluster's primary is down and nothing will replace it until someone acts or a block ends",
            blocked.iter().zip(waits.values()).map(|(l, k)| (&l[..], flag(k.blocks_failover()))),
        )
    }
}

fn clusters(f: &mut Families, sm: &StateMachine) -> fmt::Result {
    let names: Vec<[(&str, &str); 1]> = sm.topology.clusters.keys().map(|c| [("cluster", c.as_str())]).collect();
    let rec = |c: &str| sm.records.get(c).cloned().unwrap_or_default();
    let each = |value: fn(&drc_model::ClusterRecord) -> f64| names.iter().map(move |l| (&l[..], value(&rec(l[0].1))));
    f.gauge("cluster_epoch", "The cluster's epoch: it moves with every change of primary", each(|r| r.epoch as f64))?;
    f.gauge("cluster_paused", "1: automatic failover of the cluster is paused", each(|r| flag(r.paused)))?;
    f.gauge("cluster_decision_in_progress", "The decision being carried out (0: none)", each(|r| r.in_progress.unwrap_or(0) as f64))?;
    f.gauge(
        "cluster_blocked_until_timestamp_seconds",
        "Automatic failover blocked until then (anti-flap; 0: not)",
        each(|r| secs(r.blocked_until)),
    )?;
    f.gauge(
        "cluster_primary_since_timestamp_seconds",
        "When the current primary was promoted (0: adopted)",
        each(|r| secs(r.promoted_at)),
    )?;
    f.gauge1("failover_paused_all", "1: automatic failover of every cluster is paused", flag(sm.global_paused))?;
    let policy = |value: fn(&drc_model::topology::Policy) -> f64| {
        sm.topology.clusters.values().zip(&names).map(move |(c, l)| (&l[..], value(&c.policy)))
    };
    f.gauge(
        "cluster_rpo_max_lag_bytes",
        "The cluster's RPO budget: a replica further behind is not promoted",
        policy(|p| p.rpo_max_lag_bytes as f64),
    )?;
    f.gauge(
        "cluster_rpo_max_lag_seconds",
        "The cluster's RPO budget in time: a replica further behind is not promoted",
        policy(|p| p.rpo_max_lag_time.as_secs_f64()),
    )?;
    let primaries: Vec<[(&str, &str); 2]> = sm
        .topology
        .clusters
        .keys()
        .filter_map(|c| {
            sm.records.get(c).filter(|r| !r.primary.is_empty()).map(|r| [("cluster", c.as_str()), ("member", r.primary.as_str())])
        })
        .collect();
    f.gauge("cluster_primary", "1 for the cluster's recorded primary", primaries.iter().map(|l| (&l[..], 1.0)))
}

fn decisions(f: &mut Families, sm: &StateMachine) -> fmt::Result {
    let mut rows: Vec<([(&str, &str); 3], u64)> = Vec::new();
    for (cluster, kinds) in &sm.tally.decisions {
        for (kind, e) in kinds {
            for (outcome, n) in [("done", e.done), ("failed", e.failed), ("superseded", e.superseded)] {
                rows.push(([("cluster", cluster.as_str()), ("kind", kind.as_str()), ("outcome", outcome)], n));
            }
        }
    }
    f.counter("decisions", "Failovers and switchovers that ended, by outcome", rows.iter().map(|(l, n)| (&l[..], *n)))?;
    let kinds: Vec<([(&str, &str); 1], DecisionKind)> = DecisionKind::ALL.iter().map(|k| ([("kind", k.as_str())], *k)).collect();
    f.histogram(
        "failover_promoted_seconds",
        "From the failure seen (a request: its decision) to the new primary promoted",
        kinds.iter().filter_map(|(l, k)| sm.tally.promoted_in.get(k).map(|h| (&l[..], buckets(&DECISION_BOUNDS, h)))),
    )?;
    let actions: Vec<[(&str, &str); 1]> = sm.tally.steps.keys().map(|a| [("action", a.as_str())]).collect();
    f.histogram(
        "step_seconds",
        "How long each step of a decision took, by action",
        actions.iter().zip(sm.tally.steps.values()).map(|(l, h)| (&l[..], buckets(&STEP_BOUNDS, h))),
    )
}

fn buckets<'a>(bounds: &'a [f64], h: &'a crate::state::tally::Histogram) -> Buckets<'a> {
    Buckets { bounds, counts: &h.counts, sum: secs(h.sum_ms) }
}

/// Job counts by result, and each cluster's newest backup and recovery test.
fn jobs(f: &mut Families, sm: &StateMachine) -> fmt::Result {
    let mut rows: Vec<([(&str, &str); 3], u64)> = Vec::new();
    for (cluster, kinds) in &sm.tally.jobs {
        for (kind, e) in kinds {
            for (result, n) in [("done", e.done), ("failed", e.failed)] {
                rows.push(([("cluster", cluster.as_str()), ("kind", kind.as_str()), ("result", result)], n));
            }
        }
    }
    f.counter("jobs", "Backups, recovery tests and restores that ended, by result", rows.iter().map(|(l, n)| (&l[..], *n)))?;

    let ended = |s: JobState| s != JobState::Running;
    let newest_backup = |c: &str| sm.backups.values().rev().find(|b| b.cluster == c && ended(b.state));
    let good_backup = |c: &str| sm.backups.values().rev().find(|b| b.cluster == c && b.state == JobState::Done);
    let names: Vec<[(&str, &str); 1]> = sm.topology.clusters.keys().map(|c| [("cluster", c.as_str())]).collect();
    let with = |get: &dyn Fn(&str) -> Option<f64>| -> Vec<(&[(&str, &str)], f64)> {
        names.iter().filter_map(|l| get(l[0].1).map(|v| (&l[..], v))).collect()
    };
    f.gauge(
        "backup_last_success_timestamp_seconds",
        "When the cluster's newest completed backup finished",
        with(&|c| good_backup(c).map(|b| secs(b.finished_at))),
    )?;
    f.gauge(
        "backup_last_failed",
        "1: the cluster's newest ended backup failed",
        with(&|c| newest_backup(c).map(|b| flag(b.state == JobState::Failed))),
    )?;
    f.gauge(
        "backup_last_duration_seconds",
        "How long the cluster's newest completed backup took",
        with(&|c| good_backup(c).map(|b| secs(b.finished_at.saturating_sub(b.started_at)))),
    )?;
    f.gauge(
        "backup_last_bytes",
        "Bytes the cluster's newest completed backup stored",
        with(&|c| good_backup(c).map(|b| b.stored_bytes as f64)),
    )?;
    f.gauge(
        "backup_last_raw_bytes",
        "Bytes the cluster's newest completed backup read",
        with(&|c| good_backup(c).map(|b| b.raw_bytes as f64)),
    )?;

    let newest_test = |c: &str| sm.recovery_tests.values().rev().find(|t| t.cluster == c && ended(t.state));
    let good_test = |c: &str| sm.recovery_tests.values().rev().find(|t| t.cluster == c && t.state == JobState::Done);
    f.gauge(
        "recovery_test_last_success_timestamp_seconds",
        "When the cluster's newest passed recovery test finished",
        with(&|c| good_test(c).map(|t| secs(t.finished_at))),
    )?;
    f.gauge(
        "recovery_test_last_failed",
        "1: the cluster's newest ended recovery test failed",
        with(&|c| newest_test(c).map(|t| flag(t.state == JobState::Failed))),
    )?;
    f.gauge(
        "recovery_test_last_rto_seconds",
        "The newest passed recovery test: from its start to a verified instance",
        with(&|c| good_test(c).map(|t| secs(t.rto_ms))),
    )?;
    f.gauge(
        "recovery_test_last_rpo_seconds",
        "The newest passed recovery test: its start minus the time of the newest data restored",
        with(&|c| good_test(c).map(|t| secs(t.rpo_ms))),
    )?;
    let running: Vec<([(&str, &str); 1], f64)> = JobKind::ALL
        .iter()
        .map(|k| {
            let n = match k {
                JobKind::Backup => sm.backups.values().filter(|b| b.state == JobState::Running).count(),
                JobKind::RecoveryTest => sm.recovery_tests.values().filter(|t| t.state == JobState::Running).count(),
                JobKind::Restore => sm.restores.values().filter(|t| t.state == JobState::Running).count(),
            };
            ([("kind", k.as_str())], n as f64)
        })
        .collect();
    f.gauge("jobs_running", "Jobs recorded as running", running.iter().map(|(l, v)| (&l[..], *v)))
}

/// Each schedule's last and next firing, and the time between two.
fn schedules(f: &mut Families, sm: &StateMachine) -> fmt::Result {
    let now = drc_model::time::wall_now_ms();
    // (labels, schedule, (next firing, interval)).
    type Row<'a> = ([(&'a str, &'a str); 2], &'a drc_model::job::Schedule, Option<(u64, u64)>);
    let rows: Vec<Row> = sm
        .schedules
        .values()
        .map(|s| {
            let next = crate::jobs::schedule::parse_cron(&s.cron).ok().and_then(|cron| {
                let first = crate::jobs::schedule::next(&cron, now)?;
                let second = crate::jobs::schedule::next(&cron, first)?;
                Some((first, second.saturating_sub(first)))
            });
            ([("cluster", s.cluster.as_str()), ("kind", s.job.as_str())], s, next)
        })
        .collect();
    f.gauge(
        "schedule_last_fired_timestamp_seconds",
        "When the schedule last fired (0: never)",
        rows.iter().map(|(l, s, _)| (&l[..], secs(s.last_fired))),
    )?;
    f.gauge(
        "schedule_next_timestamp_seconds",
        "When the schedule fires next",
        rows.iter().filter_map(|(l, _, n)| n.map(|(next, _)| (&l[..], secs(next)))),
    )?;
    f.gauge(
        "schedule_interval_seconds",
        "The time between the schedule's next two firings",
        rows.iter().filter_map(|(l, _, n)| n.map(|(_, every)| (&l[..], secs(every)))),
    )
}

/// What the coordinator's HTTP listener serves.
pub struct CoordinatorSite {
    registry: Registry,
    node: NodeHandle,
    page: crate::status_page::StatusPage,
}

impl CoordinatorSite {
    pub fn new(
        node: NodeHandle,
        agents: Arc<Agents>,
        executor: Arc<Executor>,
        security: &drc_tls::Security,
        page: crate::status_page::StatusPage,
    ) -> Self {
        let mut registry = Registry::with_prefix("drc");
        drc_ops::scrape::register_process(&mut registry, security);
        node.stats().register(&mut registry);
        agents.hub.stats.register(&mut registry);
        registry.register(
            "failover_requests_refused",
            "Operators' failovers and switchovers this node refused, by reason (not_now, invalid, unknown_cluster, stale, no_quorum, ...)",
            executor.refusals(),
        );
        registry.register_collector(Box::new(Scraped { node: node.clone(), agents, executor }));
        CoordinatorSite { registry, node, page }
    }
}

/// Whether a coordinator is ready: it knows a leader and has applied
/// everything it knows committed, so its answers are current.
pub fn readiness(s: &crate::raft::NodeStatus) -> Result<(), String> {
    if s.leader_id == 0 {
        return Err(format!("node {} knows no leader (term {})", s.id, s.term));
    }
    if s.applied_index < s.commit_index {
        return Err(format!("node {} has applied {} of {} committed entries", s.id, s.applied_index, s.commit_index));
    }
    Ok(())
}

impl drc_ops::http::Site for CoordinatorSite {
    fn ready(&self) -> Result<(), String> {
        readiness(&self.node.status())
    }

    fn metrics(&self) -> String {
        render(&self.registry)
    }

    /// The status page and its data.
    fn page(&self, path: &str) -> Option<futures::future::BoxFuture<'_, hyper::Response<drc_ops::http::Body>>> {
        use drc_ops::http::respond;
        use hyper::StatusCode;
        match path {
            "/" | "/index.html" => Some(Box::pin(async { respond(StatusCode::OK, "text/html; charset=utf-8", crate::status_page::PAGE) })),
            "/api/status" => Some(Box::pin(async {
                let body = serde_json::to_vec(&self.page.snapshot().await).unwrap_or_default();
                respond(StatusCode::OK, "application/json", body)
            })),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The families every coordinator exports from `sm`, rendered.
    fn rendered(sm: StateMachine) -> String {
        #[derive(Debug)]
        struct Of(StateMachine);
        impl Collector for Of {
            fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
                let mut f = Families::new(&mut encoder);
                clusters(&mut f, &self.0)?;
                decisions(&mut f, &self.0)?;
                jobs(&mut f, &self.0)?;
                schedules(&mut f, &self.0)
            }
        }
        let mut registry = Registry::with_prefix("drc");
        registry.register_collector(Box::new(Of(sm)));
        render(&registry)
    }

    #[test]
    fn the_replicated_state_renders_as_counters_by_outcome_and_per_cluster_gauges() {
        let topology = drc_model::topology::parse::parse_topology(
            "[regions.a]\n[regions.b]\n[clusters.pg]\nkind = \"postgres\"\n\
             [[members]]\nid = \"pg-a\"\ncluster = \"pg\"\nregion = \"a\"\naddress = \"10.0.0.1:5432\"\n\
             [[members]]\nid = \"pg-b\"\ncluster = \"pg\"\nregion = \"b\"\naddress = \"10.0.0.2:5432\"\n",
        )
        .expect("topology");
        let mut sm = StateMachine { topology: Arc::new(topology), ..Default::default() };
        sm.tally.job_ended("pg", JobKind::Backup, None, JobState::Failed);
        let mut rec = drc_model::ClusterRecord { epoch: 3, primary: "pg-b".into(), ..Default::default() };
        rec.paused = true;
        sm.records = Arc::new([("pg".to_string(), rec)].into());
        let text = rendered(sm);
        assert!(text.contains("drc_cluster_primary{cluster=\"pg\",member=\"pg-b\"} 1"), "{text}");
        assert!(text.contains("drc_cluster_epoch{cluster=\"pg\"} 3"), "{text}");
        assert!(text.contains("drc_cluster_paused{cluster=\"pg\"} 1"), "{text}");
        assert!(text.contains("drc_cluster_rpo_max_lag_bytes{cluster=\"pg\"} 16777216"), "{text}");
        assert!(text.contains("drc_jobs_total{cluster=\"pg\",kind=\"backup\",result=\"failed\"} 1"), "{text}");
        assert!(text.contains("# TYPE drc_failover_promoted_seconds histogram"), "declared before any failover: {text}");
    }

    #[test]
    fn a_coordinator_is_ready_with_a_leader_and_everything_it_knows_committed_applied() {
        let status = |leader_id, commit_index, applied_index| crate::raft::NodeStatus {
            id: 2,
            role: Role::Follower,
            term: 4,
            leader_id,
            commit_index,
            applied_index,
            first_index: 1,
            last_index: commit_index,
            voters: vec![1, 2, 3],
            learners: vec![],
        };
        assert!(readiness(&status(1, 10, 10)).is_ok());
        assert!(readiness(&status(0, 10, 10)).expect_err("no leader").contains("no leader"));
        assert!(readiness(&status(1, 10, 7)).expect_err("behind").contains("applied 7 of 10"));
    }
}
