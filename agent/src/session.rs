//! The agent's one long-lived stream to the coordinator leader.
//!
//! Samples go up from a bounded buffer (oldest dropped first while
//! disconnected, so memory stays bounded whatever the outage); ClusterViews
//! and commands come down. The agent reconnects with jittered exponential
//! backoff (`backon`) to any coordinator and follows Redirects to the leader.
//! A refusal (unknown member, another cluster's dataset) is fatal: retrying
//! cannot fix a wrong configuration, so the agent stops and says why.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::BackoffBuilder as _;
use drc_proto::agent_service_client::AgentServiceClient;
use drc_proto::{agent_message, coordinator_message, AgentHello, AgentMessage, ClusterView, Sample};
use drc_tls::Security;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::config::AgentConfig;

/// Samples waiting to be sent; bounded, oldest dropped first.
pub struct SampleBuffer {
    queue: Mutex<VecDeque<Sample>>,
    capacity: usize,
    notify: Notify,
    dropped: std::sync::atomic::AtomicU64,
}

impl SampleBuffer {
    pub fn new(capacity: usize) -> Self {
        SampleBuffer { queue: Mutex::new(VecDeque::with_capacity(capacity)), capacity, notify: Notify::new(), dropped: Default::default() }
    }

    pub fn push(&self, s: Sample) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= self.capacity {
            q.pop_front();
            self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        q.push_back(s);
        drop(q);
        self.notify.notify_one();
    }

    /// Puts back a sample that could not be sent, unless newer ones fill the buffer.
    pub fn unpop(&self, s: Sample) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() < self.capacity {
            q.push_front(s);
        }
    }

    pub async fn pop(&self) -> Sample {
        loop {
            let notified = self.notify.notified();
            if let Some(s) = self.queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front() {
                return s;
            }
            notified.await;
        }
    }

    pub fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Why a coordinator refused this agent (its configuration, not the network).
#[derive(Debug, thiserror::Error)]
#[error("the coordinator refused this agent: {0}")]
pub struct Refused(pub String);

/// The first pause after a refusal, and the longest.
const REFUSED_PAUSE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

enum End {
    Redirect(String),
    Closed(&'static str),
    Retry(String),
}

/// Runs the stream until `cancel` fires.
pub async fn run(
    cfg: Arc<AgentConfig>,
    security: Security,
    actor: Arc<crate::actions::Actor>,
    buffer: Arc<SampleBuffer>,
    views: watch::Sender<Option<ClusterView>>,
    dataset: watch::Receiver<(String, String)>,
    cancel: CancellationToken,
) {
    // Short pauses: while the coordinators elect a new leader, this agent's
    // primary serves on a lease that only the new leader can renew, and the
    // agent must find that leader within about a second (a primary that
    // loses its lease while not every replica vouches for it fences
    // itself). One stream per agent and jitter keep thousands of agents
    // from hammering the coordinators in step.
    let builder = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_millis(500))
        .with_jitter()
        .without_max_times();
    let mut delays = builder.build();
    let refusals_builder = backon::ExponentialBuilder::default()
        .with_min_delay(REFUSED_PAUSE.0)
        .with_max_delay(REFUSED_PAUSE.1)
        .with_jitter()
        .without_max_times();
    let mut refusals = refusals_builder.build();
    let mut next = 0usize;
    let mut redirect: Option<String> = None;
    // The coordinator that just failed us, and when: a follower that has not
    // yet noticed its leader died keeps redirecting there until its election
    // timeout (400-800 ms); it is asked again instead, and then holds the
    // Hello until the election names a new leader.
    let mut failed: Option<(String, std::time::Instant)> = None;
    // A stream that worked and broke (a reset by a middlebox, a restarted
    // proxy, or a coordinator gone) is opened again at once on the same
    // coordinator, but must be set up within QUICK_SETUP: one that is gone
    // fails that fast and is then treated as failed.
    let mut quick = false;
    loop {
        let address = redirect.take().unwrap_or_else(|| {
            let a = cfg.endpoints[next % cfg.endpoints.len()].clone();
            next += 1;
            a
        });
        let hello = AgentHello {
            member_id: cfg.member_id.clone(),
            cluster: cfg.cluster.clone(),
            region: cfg.region.clone(),
            kind: cfg.kind.as_str().into(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            dataset_id: dataset.borrow().0.clone(),
            previous_dataset_id: dataset.borrow().1.clone(),
            command_protocol: drc_proto::COMMAND_PROTOCOL,
            generation: actor.generation(),
        };
        let mut established = false;
        let end = tokio::select! {
            _ = cancel.cancelled() => return,
            end = session(Dial { security: &security, address: &address }, hello, &buffer, &views, &actor, &mut established, std::mem::take(&mut quick)) => end,
        };
        actor.stats.stream(false);
        if established {
            // A stream that worked starts the pauses afresh.
            delays = builder.build();
            refusals = refusals_builder.build();
        }
        let end = match end {
            Ok(end) => end,
            Err(Refused(why)) => {
                let d = refusals.next().unwrap_or(REFUSED_PAUSE.1);
                tracing::error!(coordinator = %address, retry_in = ?d, "the coordinator refused this agent: {why}");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(d) => {}
                }
                continue;
            }
        };
        let gone = |leader: &str| failed.as_ref().is_some_and(|(a, at)| a == leader && at.elapsed() < Duration::from_secs(2));
        let pause = match end {
            End::Redirect(leader) if gone(&leader) => {
                tracing::debug!(from = %address, to = %leader, "the coordinator leader named just failed; asking again");
                redirect = Some(address.clone());
                Duration::from_millis(100)
            }
            End::Redirect(leader) if !leader.is_empty() && leader != address => {
                tracing::info!(from = %address, to = %leader, "following the coordinator leader");
                redirect = Some(leader);
                Duration::ZERO
            }
            End::Redirect(_) => delays.next().unwrap_or(Duration::from_secs(1)),
            End::Closed(why) => {
                tracing::info!(coordinator = %address, "stream closed: {why}");
                delays = builder.build();
                Duration::from_millis(50)
            }
            End::Retry(e) if established => {
                tracing::info!(coordinator = %address, error = %e, "stream broke; opening it again");
                redirect = Some(address.clone());
                quick = true;
                Duration::ZERO
            }
            End::Retry(e) => {
                failed = Some((address.clone(), std::time::Instant::now()));
                let d = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(coordinator = %address, error = %e, retry_in = ?d, buffered = buffer.len(), dropped = buffer.dropped(), "coordinator unreachable");
                d
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// How long a stream opened again after it broke may take to be set up:
/// a few round trips of a slow link (TCP, TLS, the request), well under a
/// lease.
const QUICK_SETUP: Duration = Duration::from_millis(750);

/// Which coordinator a stream goes to, and how.
struct Dial<'a> {
    security: &'a Security,
    address: &'a str,
}

/// One stream; `established` is set once the coordinator answered with a
/// view. A `quick` one must be set up within [`QUICK_SETUP`].
async fn session(
    dial: Dial<'_>,
    hello: AgentHello,
    buffer: &SampleBuffer,
    views: &watch::Sender<Option<ClusterView>>,
    actor: &Arc<crate::actions::Actor>,
    established: &mut bool,
    quick: bool,
) -> Result<End, Refused> {
    let connect_timeout = if quick { QUICK_SETUP } else { Duration::from_secs(1) };
    let Dial { security, address } = dial;
    let endpoint = match Security::endpoint(address) {
        Ok(e) => drc_proto::keepalive::agent_endpoint(e.connect_timeout(connect_timeout).tcp_nodelay(true)),
        Err(e) => return Ok(End::Retry(format!("bad address: {e}"))),
    };
    let (tx, rx) = mpsc::channel::<AgentMessage>(64);
    let _ = tx.send(AgentMessage { body: Some(agent_message::Body::Hello(hello)) }).await;
    // Err: how the attempt ends (a retry, or a refusal for good).
    let setup = async {
        let channel = security.connect(endpoint).await.map_err(|e| Ok(End::Retry(drc_tls::root_cause(&e))))?;
        let mut client = AgentServiceClient::new(channel);
        client.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.map_err(classify)
    };
    let setup = match quick {
        true => tokio::time::timeout(QUICK_SETUP, setup)
            .await
            .unwrap_or_else(|_| Err(Ok(End::Retry(format!("not set up within {QUICK_SETUP:?}"))))),
        false => setup.await,
    };
    let mut inbound = match setup {
        Ok(r) => r.into_inner(),
        Err(end) => return end,
    };
    loop {
        tokio::select! {
            s = buffer.pop() => {
                if let Err(mpsc::error::SendError(unsent)) = tx.send(AgentMessage { body: Some(agent_message::Body::Sample(s)) }).await {
                    // The coordinator ended the stream; the sample goes to the
                    // next one, and the coordinator's last word (a redirect to
                    // the leader) may still be waiting to be read.
                    if let Some(agent_message::Body::Sample(s)) = unsent.body {
                        buffer.unpop(s);
                    }
                    return match tokio::time::timeout(Duration::from_millis(200), inbound.message()).await {
                        Ok(Ok(Some(drc_proto::CoordinatorMessage { body: Some(coordinator_message::Body::Redirect(r)) }))) => Ok(End::Redirect(r.leader_address)),
                        _ => Ok(End::Retry("stream closed".into())),
                    };
                }
            }
            m = inbound.message() => match m {
                Ok(Some(msg)) => match msg.body {
                    Some(coordinator_message::Body::Redirect(r)) => return Ok(End::Redirect(r.leader_address)),
                    Some(coordinator_message::Body::View(v)) => {
                        if let Err(why) = actor.see_generation(v.generation) {
                            tracing::error!(coordinator = %address, "{why}");
                            return Ok(End::Retry(why));
                        }
                        *established = true;
                        actor.stats.stream(true);
                        tracing::info!(primary = %v.primary_member, address = %v.primary_address, epoch = v.epoch, "cluster view");
                        actor.view(v.epoch, &v.primary_member, &v.primary_address);
                        views.send_replace(Some(v));
                    }
                    Some(coordinator_message::Body::Command(c)) => {
                        // Commands run beside the stream; leases answer nothing.
                        let (actor, tx) = (Arc::clone(actor), tx.clone());
                        tokio::spawn(async move {
                            let lease = matches!(c.body, Some(drc_proto::command::Body::Lease(_)));
                            let meter = crate::backup::Meter::default();
                            let every = actor.progress_interval();
                            let progress = tokio::spawn(report_progress(meter.clone(), c.command_id, every, tx.clone()));
                            let result = actor.handle(c, &meter).await;
                            progress.abort();
                            if !lease {
                                let _ = tx.send(AgentMessage { body: Some(agent_message::Body::Result(result)) }).await;
                            }
                        });
                    }
                    None => {}
                },
                Ok(None) => return Ok(End::Closed("the coordinator ended the stream")),
                Err(s) => return classify(s),
            }
        }
    }
}

/// Sends how far a long command has got, every `period`, until aborted.
async fn report_progress(meter: crate::backup::Meter, command_id: u64, period: Duration, tx: mpsc::Sender<AgentMessage>) {
    let mut every = tokio::time::interval(period);
    every.tick().await;
    loop {
        every.tick().await;
        if let Some(p) = meter.report(command_id) {
            if tx.send(AgentMessage { body: Some(agent_message::Body::Progress(p)) }).await.is_err() {
                return;
            }
        }
    }
}

fn classify(s: tonic::Status) -> Result<End, Refused> {
    match s.code() {
        Code::NotFound | Code::FailedPrecondition | Code::InvalidArgument | Code::PermissionDenied | Code::Unauthenticated => {
            Err(Refused(s.message().to_string()))
        }
        _ => Ok(End::Retry(format!("{:?}: {}", s.code(), s.message()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_buffer_drops_the_oldest_samples_first() {
        let b = SampleBuffer::new(3);
        for i in 0..5u64 {
            b.push(Sample { taken_at_ms: i, ..Default::default() });
        }
        assert_eq!(b.len(), 3);
        assert_eq!(b.dropped(), 2);
        assert_eq!(b.pop().await.taken_at_ms, 2);
        assert_eq!(b.pop().await.taken_at_ms, 3);
    }
}
