//! Member and cluster health as `drctl status` shows it, the events its
//! changes raise, and the primary views published to agents and to
//! `WatchPrimary`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drc_model::topology::Topology;
use drc_model::{ClusterRecord, Role};
use drc_proto::{ClusterHealth, ClusterView, MemberHealth, Sample, WalArchiveHealth};
use tokio::sync::watch;

use super::board::{MemberSeen, SampleBoard};
use super::events::{EventBus, EventKind};
use crate::lock::lock;

#[derive(Default)]
struct Reported {
    /// Health and role last reported of each member, to report only changes.
    members: HashMap<String, (bool, Role)>,
    /// The primary last reported of each cluster.
    primaries: HashMap<String, String>,
}

pub struct HealthViews {
    reported: Mutex<Reported>,
    /// cluster -> its published view (see [`Self::view_of`]).
    views: Mutex<HashMap<String, watch::Sender<Option<ClusterView>>>>,
    board: Arc<SampleBoard>,
    events: Arc<EventBus>,
}

impl HealthViews {
    pub fn new(board: Arc<SampleBoard>, events: Arc<EventBus>) -> Self {
        HealthViews { reported: Mutex::default(), views: Mutex::default(), board, events }
    }

    /// Forgets what an earlier leadership reported and published: called
    /// when this node's role changes.
    pub fn reset(&self) {
        lock(&self.reported).primaries.clear();
        for view in lock(&self.views).values() {
            view.send_replace(None);
        }
    }

    /// Health of every declared cluster (or of `only`) as of `now`.
    pub fn clusters(
        &self,
        topology: &Topology,
        records: &BTreeMap<String, ClusterRecord>,
        only: Option<&str>,
        now: Instant,
    ) -> Vec<ClusterHealth> {
        let by_cluster = topology.by_cluster();
        self.board.read(now, |seen| {
            topology
                .clusters
                .iter()
                .filter(|(name, _)| only.is_none_or(|c| c == name.as_str()))
                .map(|(name, cluster)| {
                    let window = cluster.policy.detection_window;
                    let mut reach: BTreeMap<String, bool> = BTreeMap::new();
                    let mut members = Vec::new();
                    for (id, decl) in by_cluster.get(name).into_iter().flatten().filter_map(|id| topology.members.get_key_value(id)) {
                        let m = seen.get(id);
                        let fresh = m.age.is_some_and(|a| a <= window);
                        if let (Some(s), true) = (m.sample, fresh) {
                            *reach.entry(decl.region.clone()).or_insert(false) |= s.primary_reachable;
                        }
                        members.push(member_health(id, &decl.region, &m, fresh));
                    }
                    // The recorded primary once there is one; before, what the
                    // agents report.
                    let rec = records.get(name);
                    let primary = rec.map(|r| r.primary.clone()).filter(|p| !p.is_empty()).unwrap_or_else(|| primary_of(&members));
                    for m in &mut members {
                        m.primary_reachable_from = reach.iter().map(|(k, v)| (k.clone(), *v)).collect();
                    }
                    let wal_archive = wal_archive(&members, &primary, |id| seen.get(id).sample.and_then(|s| s.archive.as_ref()));
                    ClusterHealth {
                        name: name.clone(),
                        kind: cluster.kind.as_str().to_string(),
                        primary,
                        members,
                        epoch: rec.map(|r| r.epoch).unwrap_or(0),
                        failover_state: String::new(),
                        paused: cluster.policy.paused || rec.is_some_and(|r| r.paused),
                        blocked_until_ms: rec.map(|r| r.blocked_until).unwrap_or(0),
                        decision_in_progress: rec.and_then(|r| r.in_progress).unwrap_or(0),
                        wal_archive,
                    }
                })
                .collect()
        })
    }

    /// The primary of `cluster` as published to its agents and to
    /// `WatchPrimary`: changes only when the cluster's primary, its address
    /// or the epoch change, so one cluster's change wakes only its own
    /// agents' streams.
    pub fn view_of(&self, cluster: &str) -> watch::Receiver<Option<ClusterView>> {
        lock(&self.views).entry(cluster.to_string()).or_insert_with(|| watch::channel(None).0).subscribe()
    }

    /// Recomputes the clusters at `now`: publishes changed primaries to the
    /// agents and emits an event for every health, role or primary change.
    ///
    /// It runs several times a second over every member of the topology, so
    /// it allocates only for what changed: a member whose health and role
    /// are as last reported costs two map lookups and a few comparisons.
    pub fn refresh(&self, topology: &Topology, records: &BTreeMap<String, ClusterRecord>, now: Instant) {
        let mut events = Vec::new();
        // cluster -> the most advanced healthy member claiming the primary
        // role, (timeline, position, id): the primary before one is recorded.
        let mut claimed: HashMap<&str, (u32, u64, &str)> = HashMap::new();
        {
            let mut reported = lock(&self.reported);
            let Reported { members: last, primaries } = &mut *reported;
            self.board.read(now, |seen| {
                for (name, ids) in topology.by_cluster() {
                    let Some(cluster) = topology.clusters.get(name) else { continue };
                    let window = cluster.policy.detection_window;
                    for id in ids {
                        let m = seen.get(id);
                        let fresh = m.age.is_some_and(|a| a <= window);
                        let (healthy, role) = health_and_role(m.sample, m.connected, fresh);
                        if let (true, Role::Primary, Some(s)) = (healthy, role, m.sample) {
                            let e = claimed.entry(name.as_str()).or_insert((s.timeline, s.position, id.as_str()));
                            // Ties go to the later id, as in `primary_of`.
                            if (s.timeline, s.position) >= (e.0, e.1) {
                                *e = (s.timeline, s.position, id.as_str());
                            }
                        }
                        let prev = last.get(id.as_str()).copied();
                        if prev == Some((healthy, role)) {
                            continue;
                        }
                        last.insert(id.clone(), (healthy, role));
                        if prev.map(|p| p.0) != Some(healthy) {
                            let what = if healthy {
                                "healthy".to_string()
                            } else {
                                let region = topology.members.get(id).map(|m| m.region.as_str()).unwrap_or("");
                                format!("unhealthy{}", reason(&member_health(id, region, &m, fresh)))
                            };
                            events.push((EventKind::MemberHealth, name.clone(), id.clone(), format!("{id} is {what}")));
                        }
                        if prev.map(|p| p.1) != Some(role) {
                            events.push((EventKind::MemberRole, name.clone(), id.clone(), format!("{id} is {role}")));
                        }
                    }
                }
            });
            for name in topology.clusters.keys() {
                let recorded = records.get(name).map(|r| r.primary.as_str()).filter(|p| !p.is_empty());
                let primary = recorded.or_else(|| claimed.get(name.as_str()).map(|c| c.2)).unwrap_or("");
                if primaries.get(name).is_some_and(|p| p == primary) {
                    continue;
                }
                primaries.insert(name.clone(), primary.to_string());
                let msg = if primary.is_empty() { format!("{name} has no primary") } else { format!("{name} primary is {primary}") };
                events.push((EventKind::Primary, name.clone(), primary.to_string(), msg));
            }
        }
        for (kind, cluster, member, msg) in events {
            self.events.emit(kind, &cluster, &member, msg);
        }
        let mut views = lock(&self.views);
        for name in topology.clusters.keys() {
            let rec = records.get(name);
            let recorded = rec.map(|r| r.primary.as_str()).filter(|p| !p.is_empty());
            let primary = recorded.or_else(|| claimed.get(name.as_str()).map(|c| c.2)).unwrap_or("");
            let address = topology.members.get(primary).map(|m| m.address.as_str()).unwrap_or("");
            let epoch = rec.map(|r| r.epoch).unwrap_or(0);
            if !views.contains_key(name) {
                views.insert(name.clone(), watch::channel(None).0);
            }
            let Some(sender) = views.get(name) else { continue };
            sender.send_if_modified(|v| {
                if v.as_ref().is_some_and(|v| v.primary_member == primary && v.primary_address == address && v.epoch == epoch) {
                    return false;
                }
                *v = Some(ClusterView {
                    cluster: name.clone(),
                    primary_member: primary.to_string(),
                    primary_address: address.to_string(),
                    epoch,
                    // Stamped by the session that sends it (`api::agent`).
                    generation: 0,
                });
                true
            });
        }
    }
}

fn reason(m: &MemberHealth) -> String {
    if !m.has_sample {
        " (no sample yet)".into()
    } else if !m.agent_connected {
        " (agent disconnected)".into()
    } else if !m.error.is_empty() {
        format!(" ({})", m.error)
    } else {
        format!(" (last sample {} ms ago)", m.sample_age_ms)
    }
}

fn member_health(id: &str, region: &str, m: &MemberSeen<'_>, fresh: bool) -> MemberHealth {
    let (healthy, role) = health_and_role(m.sample, m.connected, fresh);
    let mut h = MemberHealth {
        id: id.to_string(),
        region: region.to_string(),
        role: role.to_string(),
        healthy,
        agent_connected: m.connected,
        ..Default::default()
    };
    if let Some(s) = m.sample {
        h.has_sample = true;
        h.lag_bytes = s.lag_bytes;
        h.lag_ms = s.lag_ms;
        h.timeline = s.timeline;
        h.dataset_id = s.dataset_id.clone();
        h.error = s.error.clone();
        h.position = s.position;
        h.replication_connected = s.replication_connected;
        h.replication_state = s.replication_state.clone();
        h.lease_ms = s.lease_ms;
        h.lease_fenced = s.lease_fenced;
        h.server_gone = s.server_gone;
        h.sync_standbys = s.sync_standbys.clone();
        h.sample_age_ms = m.age.map(|a: Duration| a.as_millis() as u64).unwrap_or(0);
    }
    h
}

/// Whether a member is healthy, and the role it is shown with: the one
/// definition behind `drctl status` and the refresh's events.
fn health_and_role(sample: Option<&Sample>, connected: bool, fresh: bool) -> (bool, Role) {
    match sample {
        Some(s) => {
            let role = if fresh && s.reachable { s.role.parse().unwrap_or_default() } else { Role::Unknown };
            (connected && fresh && s.reachable && s.error.is_empty(), role)
        }
        None => (false, Role::Unknown),
    }
}

/// The primary: the one healthy member reporting the primary role; with
/// several (split brain as seen by agents), the most advanced; none if none.
fn primary_of(members: &[MemberHealth]) -> String {
    members
        .iter()
        .filter(|m| m.healthy && m.role == Role::Primary.as_str())
        .max_by_key(|m| (m.timeline, m.position))
        .map(|m| m.id.clone())
        .unwrap_or_default()
}

/// The WAL archive of a cluster: the fresh member whose agent archives.
fn wal_archive<'a>(
    members: &[MemberHealth],
    primary: &str,
    archive_of: impl Fn(&str) -> Option<&'a drc_proto::ArchiveStatus>,
) -> Option<WalArchiveHealth> {
    let (archiver, s) = members.iter().filter(|m| m.healthy).find_map(|m| Some((m, archive_of(&m.id).filter(|s| s.running)?)))?;
    let primary_position = members.iter().find(|m| m.id == primary).map_or(0, |m| m.position);
    Some(WalArchiveHealth {
        archiver: archiver.id.clone(),
        destination: s.destination.clone(),
        key: s.prefix.clone(),
        timeline: s.timeline,
        end: s.end,
        end_lsn: drc_model::wal::Lsn(s.end).to_string(),
        lag_bytes: primary_position.saturating_sub(s.end),
        lag_ms: s.lag_ms,
        pending_bytes: s.pending_bytes,
        error: s.error.clone(),
        gaps: Vec::new(),
    })
}
