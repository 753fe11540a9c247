//! The watch event bus: what `drctl watch` streams. Events are best
//! effort: a watcher that falls behind is told how many it missed.

use drc_model::time::wall_now_ms;
use drc_proto::WatchEvent;
use tokio::sync::broadcast;

/// What an event is about; its name is the `kind` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// An agent stream opened or closed.
    Agent,
    /// A member turned healthy or unhealthy.
    MemberHealth,
    /// A member's role changed.
    MemberRole,
    /// A cluster's primary changed.
    Primary,
    /// Decisions, their steps and why a cluster waits.
    Failover,
    /// What a PostgreSQL primary's commits wait for.
    Replication,
    /// Coordinator leadership.
    Leader,
    Backup,
    RecoveryTest,
    Restore,
    /// How far a long command (a backup, a restore) has got.
    Progress,
    /// The first event of every watch: from here on, nothing is missed.
    Watching,
    /// This watcher fell behind and missed events.
    Lagged,
    /// A state-changing request and its outcome (the audit trail).
    Audit,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Agent => "agent",
            EventKind::MemberHealth => "member_health",
            EventKind::MemberRole => "member_role",
            EventKind::Primary => "primary",
            EventKind::Failover => "failover",
            EventKind::Replication => "replication",
            EventKind::Leader => "leader",
            EventKind::Backup => "backup",
            EventKind::RecoveryTest => "recovery_test",
            EventKind::Restore => "restore",
            EventKind::Progress => "progress",
            EventKind::Watching => "watching",
            EventKind::Lagged => "lagged",
            EventKind::Audit => "audit",
        }
    }
}

pub struct EventBus {
    tx: broadcast::Sender<WatchEvent>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus { tx: broadcast::channel(1024).0 }
    }
}

impl EventBus {
    pub fn subscribe(&self) -> broadcast::Receiver<WatchEvent> {
        self.tx.subscribe()
    }

    /// Sends an event to every watcher (none: dropped).
    pub fn emit(&self, kind: EventKind, cluster: &str, member: &str, message: String) {
        let _ = self.tx.send(WatchEvent {
            at_ms: wall_now_ms(),
            kind: kind.as_str().into(),
            cluster: cluster.into(),
            member: member.into(),
            message,
        });
    }
}
