//! The sample board: the newest sample of every member and whether its
//! agent's stream is open — what the decision core observes.
//!
//! Samples never go through Raft (DESIGN.md: heartbeats would make
//! consensus the bottleneck). A new leader decides only on samples it
//! received itself. Time is passed in (`now`), so the board is
//! deterministic under test.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use drc_model::topology::Topology;
use drc_proto::Sample;
use tokio::sync::Notify;

use crate::core::Observation;
use crate::lock::lock;

#[derive(Default)]
struct Seen {
    sample: Option<Sample>,
    received: Option<Instant>,
    /// An agent stream of this member is open.
    connected: bool,
    /// The open stream has not sent a sample yet.
    awaiting_first: bool,
    /// When the current stream opened.
    opened: Option<Instant>,
}

#[derive(Default)]
struct State {
    members: HashMap<String, Seen>,
    /// cluster -> member -> (dataset id, previous dataset id), from the newest samples.
    datasets: HashMap<String, HashMap<String, (String, String)>>,
}

#[derive(Default)]
pub struct SampleBoard {
    state: Mutex<State>,
    /// Signalled by the first sample of a new agent stream: a new leader
    /// renews the lease of a primary whose agent just found it at once,
    /// rather than on its next tick.
    pub first_sample: Notify,
}

/// What the board holds of one member, for a reader holding the board.
pub struct MemberSeen<'a> {
    pub sample: Option<&'a Sample>,
    /// How long ago the newest sample was received.
    pub age: Option<Duration>,
    pub connected: bool,
}

/// The board, locked for one pass over many members.
pub struct Members<'a> {
    state: &'a State,
    now: Instant,
}

impl Members<'_> {
    pub fn get(&self, member: &str) -> MemberSeen<'_> {
        let seen = self.state.members.get(member);
        MemberSeen {
            sample: seen.and_then(|s| s.sample.as_ref()),
            age: seen.and_then(|s| s.received).map(|r| self.now.saturating_duration_since(r)),
            connected: seen.is_some_and(|s| s.connected),
        }
    }
}

impl SampleBoard {
    /// An agent stream of `member` opened (or replaced an older one).
    pub fn stream_opened(&self, member: &str) {
        let mut s = lock(&self.state);
        let m = s.members.entry(member.to_string()).or_default();
        m.connected = true;
        m.awaiting_first = true;
        m.opened = Some(Instant::now());
    }

    /// The member's current stream closed.
    pub fn stream_closed(&self, member: &str) {
        if let Some(m) = lock(&self.state).members.get_mut(member) {
            m.connected = false;
        }
    }

    /// Forgets members whose stream is closed: called when this node's role
    /// changes. Streams still open were accepted by this leadership (a
    /// follower accepts none).
    pub fn reset(&self) {
        let mut guard = lock(&self.state);
        let State { members, datasets } = &mut *guard;
        members.retain(|_, m| m.connected);
        for ds in datasets.values_mut() {
            ds.retain(|member, _| members.contains_key(member));
        }
    }

    /// Records a sample of a member of `cluster`, received at `now`.
    pub fn ingest(&self, cluster: &str, sample: Sample, now: Instant) {
        let mut guard = lock(&self.state);
        let b = &mut *guard;
        // Thousands of samples a second: no allocation unless something new.
        if !sample.dataset_id.is_empty() {
            if !b.datasets.contains_key(cluster) {
                b.datasets.insert(cluster.to_string(), HashMap::new());
            }
            if let Some(ds) = b.datasets.get_mut(cluster) {
                let same = ds.get(&sample.member_id).is_some_and(|(d, p)| *d == sample.dataset_id && *p == sample.previous_dataset_id);
                if !same {
                    ds.insert(sample.member_id.clone(), (sample.dataset_id.clone(), sample.previous_dataset_id.clone()));
                }
            }
        }
        if !b.members.contains_key(&sample.member_id) {
            b.members.insert(sample.member_id.clone(), Seen::default());
        }
        if let Some(m) = b.members.get_mut(&sample.member_id) {
            m.sample = Some(sample);
            m.received = Some(now);
            if std::mem::take(&mut m.awaiting_first) {
                self.first_sample.notify_one();
            }
        }
    }

    /// How long ago the member's newest sample arrived (None: the member
    /// was never seen); for a stream that has not sent its first sample
    /// yet, since the stream opened.
    pub fn silence(&self, member: &str, now: Instant) -> Option<Duration> {
        let s = lock(&self.state);
        let m = s.members.get(member)?;
        let since = if m.awaiting_first { m.opened.or(m.received) } else { m.received.or(m.opened) };
        since.map(|t| now.saturating_duration_since(t))
    }

    /// The sequence number of the member's newest sample and when it was
    /// received: what a lease renewal counts from.
    pub fn basis(&self, member: &str) -> Option<(u64, Instant)> {
        let s = lock(&self.state);
        let m = s.members.get(member)?;
        Some((m.sample.as_ref()?.seq, m.received?))
    }

    /// Reads many members under one lock, as of `now`.
    pub fn read<R>(&self, now: Instant, f: impl FnOnce(&Members<'_>) -> R) -> R {
        let s = lock(&self.state);
        f(&Members { state: &s, now })
    }

    /// Every member as the decision core sees it at `now`: fresh only while
    /// its stream is open and its newest sample is within the detection
    /// window.
    pub fn observations(&self, topology: &Topology, now: Instant) -> BTreeMap<String, Observation> {
        self.observations_of(topology, topology.members.keys(), now)
    }

    /// [`Self::observations`] of the members `ids` only (one cluster's, say:
    /// a per-cluster pass over every member would cost clusters × members).
    pub fn observations_of<'a>(
        &self,
        topology: &Topology,
        ids: impl Iterator<Item = &'a String>,
        now: Instant,
    ) -> BTreeMap<String, Observation> {
        let b = lock(&self.state);
        let mut out = Vec::with_capacity(ids.size_hint().0);
        let mut windows: HashMap<&str, Duration> = HashMap::new();
        // In id order, so that collecting into the map needs no sorting.
        for (id, decl) in ids.filter_map(|id| topology.members.get_key_value(id)) {
            let Some(state) = b.members.get(id) else { continue };
            let Some(s) = &state.sample else { continue };
            let window = *windows
                .entry(decl.cluster.as_str())
                .or_insert_with(|| topology.clusters.get(&decl.cluster).map(|c| c.policy.detection_window).unwrap_or_default());
            let fresh = state.connected && state.received.is_some_and(|r| now.saturating_duration_since(r) <= window);
            out.push((
                id.clone(),
                Observation {
                    fresh,
                    reachable: s.reachable,
                    role: s.role.parse().unwrap_or_default(),
                    dataset: s.dataset_id.clone(),
                    previous_dataset: s.previous_dataset_id.clone(),
                    position: s.position,
                    lag_bytes: s.lag_bytes,
                    lag_ms: s.lag_ms,
                    primary_reachable: s.primary_reachable,
                    primary_position: s.primary_position,
                    epoch: s.epoch,
                    lease_fenced: s.lease_fenced,
                    server_gone: s.server_gone,
                    age: state.received.map_or(0, |r| now.saturating_duration_since(r).as_millis() as u64),
                    received: s.receive_position,
                    streaming: s.replication_connected,
                },
            ));
        }
        out.into_iter().collect()
    }

    /// The dataset (system identifier / replication id) that a member of
    /// `cluster` other than `except` reports, if any does.
    pub fn dataset_of(&self, cluster: &str, except: &str) -> Option<(String, (String, String))> {
        let b = lock(&self.state);
        b.datasets.get(cluster)?.iter().filter(|(m, _)| m.as_str() != except).min().map(|(m, d)| (m.clone(), d.clone()))
    }

    /// The (dataset, previous) `member` of `cluster` reported last.
    pub fn dataset_reported(&self, cluster: &str, member: &str) -> Option<(String, String)> {
        lock(&self.state).datasets.get(cluster)?.get(member).cloned()
    }
}
