//! The agents' stream hub: which agent streams are open, the commands sent
//! on them and their answers, and lease renewals.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drc_proto::{command, coordinator_message, CommandResult, CoordinatorMessage, LeaseGrant, Progress};
use tokio::sync::{mpsc, oneshot};

use super::board::SampleBoard;
use super::events::{EventBus, EventKind};
use super::progress::describe_progress;
use crate::lock::lock;

/// Where the messages for one agent stream go.
pub type AgentSender = mpsc::Sender<Result<CoordinatorMessage, tonic::Status>>;

struct Stream {
    session: u64,
    sender: AgentSender,
}

#[derive(Default)]
struct State {
    streams: HashMap<String, Stream>,
    /// Session and command numbers only go up: an old stream or answer can
    /// never pass for a new one.
    next_session: u64,
    next_command: u64,
    /// Commands sent and not yet answered, by command id.
    pending: HashMap<u64, Pending>,
    /// The newest progress report of each pending long command.
    progress: HashMap<u64, Progress>,
}

/// A command waiting for its answer, which only the stream it was sent on
/// may give.
struct Pending {
    member: String,
    session: u64,
    tx: oneshot::Sender<CommandResult>,
}

pub struct AgentHub {
    state: Mutex<State>,
    board: Arc<SampleBoard>,
    events: Arc<EventBus>,
    /// An agent whose newest sample is older than this counts as gone,
    /// whatever its stream's TCP state says: a frozen agent or a link that
    /// drops packets keeps the stream open and silent.
    silent_after: Duration,
    pub stats: CommandStats,
}

/// How often a command's wait checks that its agent still samples.
const SILENCE_CHECK: Duration = Duration::from_millis(50);

/// Why a command got no result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("the agent of {0} is not connected")]
    NotConnected(String),
    #[error("the stream of {0}'s agent is full or closed")]
    StreamFull(String),
    #[error("the agent of {0} went away")]
    WentAway(String),
    #[error("no answer from the agent of {member} within {timeout:?}")]
    NoAnswer { member: String, timeout: Duration },
    #[error("the agent of {member} has sent no sample for {silent:?}: it counts as gone")]
    Silent { member: String, silent: Duration },
}

impl CommandError {
    /// The bounded name of what happened, a label of `/metrics`.
    pub fn label(&self) -> &'static str {
        match self {
            CommandError::NotConnected(_) => "not_connected",
            CommandError::StreamFull(_) => "stream_full",
            CommandError::WentAway(_) => "went_away",
            CommandError::NoAnswer { .. } => "no_answer",
            CommandError::Silent { .. } => "silent",
        }
    }
}

/// What the hub counts of its commands (lease renewals are not commands).
#[derive(Clone, Debug, Default)]
pub struct CommandStats {
    pub sent: prometheus_client::metrics::counter::Counter,
    /// By outcome: `ok`, `failed` (the agent answered with an error) or a
    /// [`CommandError::label`].
    pub ended: prometheus_client::metrics::family::Family<[(&'static str, &'static str); 1], prometheus_client::metrics::counter::Counter>,
}

impl CommandStats {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register("agent_commands_sent", "Commands this node sent to agents (fence, promote, backup, ...)", self.sent.clone());
        registry.register("agent_commands_ended", "Commands this node sent to agents, by how they ended", self.ended.clone());
    }

    fn end(&self, outcome: &Result<CommandResult, CommandError>) {
        let label = match outcome {
            Ok(r) if r.ok => "ok",
            Ok(_) => "failed",
            Err(e) => e.label(),
        };
        self.ended.get_or_create(&[("outcome", label)]).inc();
    }
}

fn command_message(cmd: drc_proto::Command) -> Result<CoordinatorMessage, tonic::Status> {
    Ok(CoordinatorMessage { body: Some(coordinator_message::Body::Command(cmd)) })
}

impl AgentHub {
    pub fn new(board: Arc<SampleBoard>, events: Arc<EventBus>, silent_after: Duration) -> Self {
        AgentHub { state: Mutex::default(), board, events, silent_after, stats: CommandStats::default() }
    }

    /// How long the member's agent has been silent, if longer than
    /// `silent_after` (a stream that has not sent its first sample yet
    /// counts from when it opened).
    fn silence(&self, member: &str) -> Option<Duration> {
        let age = self.board.silence(member, Instant::now())?;
        (age > self.silent_after).then_some(age)
    }

    /// Registers a new agent stream for `member`, replacing any older one;
    /// commands for the member go to `sender`.
    pub fn connect(&self, member: &str, cluster: &str, sender: AgentSender) -> u64 {
        let session = {
            let mut s = lock(&self.state);
            s.next_session += 1;
            let session = s.next_session;
            s.streams.insert(member.to_string(), Stream { session, sender });
            session
        };
        self.board.stream_opened(member);
        self.events.emit(EventKind::Agent, cluster, member, format!("agent of {member} connected"));
        session
    }

    /// Ends a stream; a newer stream of the same member is left alone.
    pub fn disconnect(&self, member: &str, cluster: &str, session: u64) {
        let gone = {
            let mut s = lock(&self.state);
            let current = s.streams.get(member).is_some_and(|st| st.session == session);
            if current {
                s.streams.remove(member);
            }
            current
        };
        if gone {
            self.board.stream_closed(member);
            self.events.emit(EventKind::Agent, cluster, member, format!("agent of {member} disconnected"));
        }
    }

    /// Whether `session` is still the member's current stream.
    pub fn is_current(&self, member: &str, session: u64) -> bool {
        lock(&self.state).streams.get(member).is_some_and(|s| s.session == session)
    }

    fn sender(&self, member: &str) -> Option<AgentSender> {
        lock(&self.state).streams.get(member).map(|s| s.sender.clone())
    }

    /// A command id for [`Self::command`], to follow the command's progress
    /// while it runs.
    pub fn command_id(&self) -> u64 {
        let mut s = lock(&self.state);
        s.next_command += 1;
        s.next_command
    }

    /// Sends a command to a member's agent and waits for its result, at most
    /// `timeout`, and only while the agent keeps sending samples: a command
    /// to an agent that falls silent fails at once. `cmd.command_id` 0 takes
    /// a fresh id.
    pub async fn command(&self, member: &str, mut cmd: drc_proto::Command, timeout: Duration) -> Result<CommandResult, CommandError> {
        if let Some(silent) = self.silence(member) {
            return Err(CommandError::Silent { member: member.into(), silent });
        }
        let (tx, mut rx) = oneshot::channel();
        let sender = {
            let mut s = lock(&self.state);
            if cmd.command_id == 0 {
                s.next_command += 1;
                cmd.command_id = s.next_command;
            }
            let (sender, session) =
                s.streams.get(member).map(|st| (st.sender.clone(), st.session)).ok_or_else(|| CommandError::NotConnected(member.into()))?;
            s.pending.insert(cmd.command_id, Pending { member: member.to_string(), session, tx });
            sender
        };
        let id = cmd.command_id;
        if sender.try_send(command_message(cmd)).is_err() {
            lock(&self.state).pending.remove(&id);
            let full = Err(CommandError::StreamFull(member.into()));
            self.stats.end(&full);
            return full;
        }
        self.stats.sent.inc();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut check = tokio::time::interval(SILENCE_CHECK);
        let out = loop {
            tokio::select! {
                r = &mut rx => break r.map_err(|_| CommandError::WentAway(member.into())),
                _ = tokio::time::sleep_until(deadline) => break Err(CommandError::NoAnswer { member: member.into(), timeout }),
                _ = check.tick() => {
                    if let Some(silent) = self.silence(member) {
                        break Err(CommandError::Silent { member: member.into(), silent });
                    }
                }
            }
        };
        let mut s = lock(&self.state);
        s.pending.remove(&id);
        s.progress.remove(&id);
        drop(s);
        self.stats.end(&out);
        out
    }

    /// Sends a message to a member's agent without waiting; false if it is
    /// not connected or its stream is full.
    pub fn notify(&self, member: &str, cmd: drc_proto::Command) -> bool {
        self.sender(member).is_some_and(|s| s.try_send(command_message(cmd)).is_ok())
    }

    /// Sends a lease renewal that ends at `until` on this clock. It names the
    /// newest sample received from the member and how long after *its
    /// receipt* `until` is: the agent counts from when it took that sample,
    /// which was earlier, so its lease never outlasts `until`, however late
    /// the renewal arrives. False if the agent is not connected or its
    /// stream is full.
    pub fn renew(&self, member: &str, cluster: &str, epoch: u64, mut grant: LeaseGrant, until: Instant) -> bool {
        if let Some((seq, received)) = self.board.basis(member).filter(|(seq, _)| *seq > 0) {
            grant.basis_seq = seq;
            grant.basis_ttl_ms = until.saturating_duration_since(received).as_millis() as u64;
        }
        let cmd = drc_proto::Command { command_id: 0, cluster: cluster.into(), epoch, body: Some(command::Body::Lease(grant)) };
        self.notify(member, cmd)
    }

    /// An agent's answer to a command, from `member`'s stream `session`;
    /// an answer to a command sent elsewhere is dropped.
    pub fn complete(&self, member: &str, session: u64, result: CommandResult) {
        // The answer to a notification (sent without an id): only a refusal
        // is news.
        if result.command_id == 0 {
            if !result.ok {
                tracing::warn!(member, error = %result.error, "an agent refused a notification");
            }
            return;
        }
        let mut s = lock(&self.state);
        if !s.pending.get(&result.command_id).is_some_and(|p| p.member == member && p.session == session) {
            tracing::warn!(member, command = result.command_id, "dropped an answer to a command not sent on this stream");
            return;
        }
        if let Some(p) = s.pending.remove(&result.command_id) {
            let _ = p.tx.send(result);
        }
    }

    /// How far a pending command has got, from its agent; reported in
    /// `drctl watch` too. Reports of unknown commands, or of commands sent
    /// on another stream, are dropped.
    pub fn progress(&self, cluster: &str, member: &str, session: u64, p: Progress) {
        let mut s = lock(&self.state);
        if !s.pending.get(&p.command_id).is_some_and(|c| c.member == member && c.session == session) {
            return;
        }
        s.progress.insert(p.command_id, p.clone());
        drop(s);
        self.events.emit(EventKind::Progress, cluster, member, describe_progress(&p));
    }

    pub fn progress_of(&self, command_id: u64) -> Option<Progress> {
        lock(&self.state).progress.get(&command_id).cloned()
    }
}
