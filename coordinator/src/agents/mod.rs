//! The leader's view of its agents, split by the question each part
//! answers:
//!
//! * [`hub`] — which agent streams are open; commands sent on them and
//!   their answers; lease renewals.
//! * [`board`] — the newest sample of every member: what the decision core
//!   observes.
//! * [`health`] — member and cluster health for `drctl status`, the events
//!   its changes raise, and the primary views published to agents.
//! * [`events`] — the watch event bus.
//!
//! None of it is replicated: a new leader starts from what it receives.

pub mod board;
pub mod events;
pub mod health;
pub mod hub;
pub mod progress;

use std::sync::Arc;
use std::time::{Duration, Instant};

use drc_model::topology::Topology;

pub use board::SampleBoard;
pub use events::{EventBus, EventKind};
pub use health::HealthViews;
pub use hub::{AgentHub, AgentSender, CommandError};

/// The parts, wired together once per coordinator.
pub struct Agents {
    pub hub: AgentHub,
    pub board: Arc<SampleBoard>,
    pub health: HealthViews,
    pub events: Arc<EventBus>,
}

impl Default for Agents {
    fn default() -> Self {
        Agents::new(Duration::from_millis(crate::core::LeaseConfig::default().lease))
    }
}

impl Agents {
    /// `silent_after`: how long an agent may go without a sample before a
    /// command to it fails (the lease: a primary's agent silent that long
    /// has fenced it or been vouched for).
    pub fn new(silent_after: Duration) -> Self {
        let board = Arc::new(SampleBoard::default());
        let events = Arc::new(EventBus::default());
        Agents {
            hub: AgentHub::new(Arc::clone(&board), Arc::clone(&events), silent_after),
            health: HealthViews::new(Arc::clone(&board), Arc::clone(&events)),
            board,
            events,
        }
    }
}

/// Keeps the views in step with leadership and time: cleared whenever this
/// node gains or loses leadership, refreshed every `interval` while leading
/// (so that staleness turns members unhealthy even when nothing arrives).
pub async fn run_monitor(
    agents: Arc<Agents>,
    node: crate::raft::NodeHandle,
    interval: Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut status = node.watch_status();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_leader = false;
    let mut topology: Option<(u64, Arc<Topology>)> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
            r = status.changed() => if r.is_err() { return },
        }
        let s = status.borrow_and_update().clone();
        let leader = s.role == crate::raft::Role::Leader;
        if leader != was_leader {
            agents.board.reset();
            agents.health.reset();
            if leader {
                let text = format!("node {} leads (term {}); waiting for fresh samples", s.id, s.term);
                agents.events.emit(EventKind::Leader, "", "", text);
            }
            was_leader = leader;
        }
        if leader {
            // Clone the topology only when it changed: it can hold thousands of members.
            let version = node.store().with_state(|sm| sm.topology_version);
            if topology.as_ref().is_none_or(|(v, _)| *v != version) {
                topology = Some((version, node.store().with_state(|sm| sm.topology.clone())));
            }
            if let Some((_, t)) = &topology {
                let records = node.store().with_state(|sm| sm.records.clone());
                agents.health.refresh(t, &records, Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use drc_model::topology::parse::parse_topology;
    use drc_proto::Sample;
    use tokio::sync::mpsc;

    use super::*;

    fn topo() -> Topology {
        parse_topology(
            "[regions.a]\n[regions.b]\n[clusters.pg]\nkind='postgres'\n[clusters.pg.policy]\ndetection_window='1s'\n\
             [[members]]\nid='p'\ncluster='pg'\nregion='a'\naddress='h:1'\n[[members]]\nid='r'\ncluster='pg'\nregion='b'\naddress='h:2'\n",
        )
        .expect("valid")
    }

    fn sample(member: &str, role: &str) -> Sample {
        Sample {
            member_id: member.into(),
            reachable: true,
            role: role.into(),
            dataset_id: "42".into(),
            primary_reachable: true,
            ..Default::default()
        }
    }

    #[test]
    fn fresh_connected_members_are_healthy_and_stale_ones_are_not() {
        let a = Agents::default();
        let t = topo();
        let t0 = Instant::now();
        a.hub.connect("p", "pg", mpsc::channel(1).0);
        a.hub.connect("r", "pg", mpsc::channel(1).0);
        a.board.ingest("pg", sample("p", "primary"), t0);
        a.board.ingest("pg", drc_proto::Sample { lag_bytes: 10, ..sample("r", "replica") }, t0);
        let c = &a.health.clusters(&t, &BTreeMap::new(), None, t0 + Duration::from_millis(500))[0];
        assert_eq!(c.primary, "p");
        assert!(c.members.iter().all(|m| m.healthy));
        assert_eq!(c.members[1].lag_bytes, 10);
        assert_eq!(c.members[1].primary_reachable_from.get("a"), Some(&true));
        let c = &a.health.clusters(&t, &BTreeMap::new(), None, t0 + Duration::from_secs(2))[0];
        assert!(c.members.iter().all(|m| !m.healthy), "stale samples beyond the detection window");
        assert_eq!(c.primary, "");
    }

    #[test]
    fn refresh_reports_changes_once_and_publishes_the_primary() {
        let a = Agents::default();
        let mut events = a.events.subscribe();
        let views = a.health.view_of("pg");
        let t = topo();
        let t0 = Instant::now();
        let s = a.hub.connect("p", "pg", mpsc::channel(1).0);
        a.board.ingest("pg", sample("p", "primary"), t0);
        a.health.refresh(&t, &BTreeMap::new(), t0);
        a.health.refresh(&t, &BTreeMap::new(), t0);
        assert_eq!(views.borrow().as_ref().map(|v| v.primary_address.clone()).as_deref(), Some("h:1"));
        let mut kinds = Vec::new();
        while let Ok(e) = events.try_recv() {
            kinds.push(e.kind);
        }
        assert_eq!(kinds.iter().filter(|k| *k == "primary").count(), 1, "{kinds:?}");
        assert_eq!(kinds.iter().filter(|k| *k == "member_health").count(), 2, "p unknown, then healthy: {kinds:?}");
        a.hub.disconnect("p", "pg", s);
        a.health.refresh(&t, &BTreeMap::new(), t0);
        assert_eq!(views.borrow().as_ref().map(|v| v.primary_member.clone()).as_deref(), Some(""));
        assert!(!a.board.observations(&t, t0)["p"].fresh, "a closed stream is not fresh evidence");
    }

    #[test]
    fn a_primary_change_wakes_only_its_own_clusters_streams() {
        let t = parse_topology(
            "[regions.a]\n[clusters.x]\nkind='redis'\n[clusters.y]\nkind='redis'\n\
             [[members]]\nid='x1'\ncluster='x'\nregion='a'\naddress='h:1'\n[[members]]\nid='y1'\ncluster='y'\nregion='a'\naddress='h:2'\n",
        )
        .expect("valid");
        let a = Agents::default();
        let t0 = Instant::now();
        a.health.refresh(&t, &BTreeMap::new(), t0);
        let mut x = a.health.view_of("x");
        let mut y = a.health.view_of("y");
        x.borrow_and_update();
        y.borrow_and_update();
        a.hub.connect("x1", "x", mpsc::channel(1).0);
        a.board.ingest("x", sample("x1", "primary"), t0);
        a.health.refresh(&t, &BTreeMap::new(), t0);
        assert!(x.has_changed().expect("open"), "x has a primary now");
        assert_eq!(x.borrow_and_update().as_ref().map(|v| v.primary_address.clone()).as_deref(), Some("h:1"));
        assert!(!y.has_changed().expect("open"), "y's streams stay asleep");
        a.health.refresh(&t, &BTreeMap::new(), t0);
        assert!(!x.has_changed().expect("open"), "an unchanged view is not sent again");
    }

    #[test]
    fn a_leadership_change_forgets_ended_streams_but_keeps_live_ones() {
        let a = Agents::default();
        let t = topo();
        let t0 = Instant::now();
        // "r" streamed to an earlier leadership; "p" was accepted by this
        // one just before the monitor saw the role change.
        let old = a.hub.connect("r", "pg", mpsc::channel(1).0);
        a.board.ingest("pg", sample("r", "replica"), t0);
        a.hub.disconnect("r", "pg", old);
        let live = a.hub.connect("p", "pg", mpsc::channel(1).0);
        a.board.ingest("pg", sample("p", "primary"), t0);
        a.board.reset();
        a.health.reset();
        assert!(a.hub.is_current("p", live), "a live stream survives");
        let obs = a.board.observations(&t, t0);
        assert!(obs.get("p").is_some_and(|o| o.fresh), "{obs:?}");
        assert!(obs.get("r").is_none_or(|o| !o.fresh), "{obs:?}");
        assert_eq!(a.board.dataset_of("pg", "").map(|(m, _)| m), Some("p".to_string()));
        // Session numbers go on: the old stream cannot pass for a new one.
        let next = a.hub.connect("r", "pg", mpsc::channel(1).0);
        assert!(next > live && next != old);
    }

    #[test]
    fn a_newer_stream_replaces_an_older_one_and_the_older_ones_end_changes_nothing() {
        let a = Agents::default();
        let t = topo();
        let old = a.hub.connect("p", "pg", mpsc::channel(1).0);
        let new = a.hub.connect("p", "pg", mpsc::channel(1).0);
        a.board.ingest("pg", sample("p", "primary"), Instant::now());
        a.hub.disconnect("p", "pg", old);
        assert!(a.hub.is_current("p", new));
        assert!(!a.hub.is_current("p", old));
        assert!(a.board.observations(&t, Instant::now())["p"].fresh, "the newer stream still counts");
    }

    #[tokio::test]
    async fn a_command_gets_its_own_answer_only_from_its_own_stream_and_a_missing_agent_is_named() {
        let a = Arc::new(Agents::default());
        let (tx, mut rx) = mpsc::channel(4);
        let other = a.hub.connect("q", "pg", mpsc::channel(4).0);
        let session = a.hub.connect("p", "pg", tx);
        let err = a.hub.command("r", drc_proto::Command::default(), Duration::from_secs(1)).await.expect_err("no agent");
        assert_eq!(err, CommandError::NotConnected("r".into()));
        let hub = Arc::clone(&a);
        let answer = tokio::spawn(async move { hub.hub.command("p", drc_proto::Command::default(), Duration::from_secs(5)).await });
        let sent = rx.recv().await.expect("sent").expect("ok");
        let Some(drc_proto::coordinator_message::Body::Command(cmd)) = sent.body else { panic!("a command") };
        // An answer to another command is not this one's, and another
        // member's stream, or an older stream of this one, cannot answer it.
        let forged = drc_proto::CommandResult { command_id: cmd.command_id, ok: false, ..Default::default() };
        a.hub.complete("p", session, drc_proto::CommandResult { command_id: cmd.command_id + 100, ..forged.clone() });
        a.hub.complete("q", other, forged.clone());
        a.hub.complete("p", session - 1, forged);
        a.hub.complete("p", session, drc_proto::CommandResult { command_id: cmd.command_id, ok: true, ..Default::default() });
        let r = answer.await.expect("joined").expect("answered");
        assert!(r.ok);
        assert_eq!(r.command_id, cmd.command_id);
    }

    #[tokio::test]
    async fn a_command_to_an_agent_that_stops_sampling_fails_when_the_silence_exceeds_the_bound_not_at_its_timeout() {
        let a = Arc::new(Agents::new(Duration::from_millis(300)));
        let (tx, mut rx) = mpsc::channel(4);
        a.hub.connect("p", "pg", tx);
        a.board.ingest("pg", sample("p", "primary"), Instant::now());
        let hub = Arc::clone(&a);
        let started = Instant::now();
        let answer = tokio::spawn(async move { hub.hub.command("p", drc_proto::Command::default(), Duration::from_secs(60)).await });
        rx.recv().await.expect("sent").expect("ok");
        // The stream stays open; no sample and no answer arrive.
        let err = answer.await.expect("joined").expect_err("silent");
        assert!(matches!(err, CommandError::Silent { .. }), "{err}");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(30), "{waited:?}");
        // A new command to it is refused at once.
        let err = a.hub.command("p", drc_proto::Command::default(), Duration::from_secs(60)).await.expect_err("silent");
        assert!(err.to_string().contains("has sent no sample"), "{err}");
    }
}
