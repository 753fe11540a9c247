//! The agent's HTTP site: `/readyz` (its stream to the coordinator leader
//! is up) and `/metrics` (what it last sampled of its member, its stream,
//! the commands it ran).

use std::fmt;
use std::sync::{Arc, Mutex};

use drc_ops::scrape::{flag, render, Collector, Families};
use drc_proto::Sample;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::session::SampleBuffer;

/// What the agent counts; shared by the sampler, the session and the actor.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub connected: Gauge,
    pub streams_opened: Counter,
    pub samples: Counter,
    /// Commands by action and outcome (`ok`, `failed`).
    pub commands: Family<[(&'static str, &'static str); 2], Counter>,
    newest: Mutex<Option<Sample>>,
}

impl AgentStats {
    /// A sample was taken.
    pub fn sampled(&self, s: &Sample) {
        self.samples.inc();
        *self.newest.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
    }

    /// A command ran.
    pub fn ran(&self, action: &'static str, ok: bool) {
        self.commands.get_or_create(&[("action", action), ("outcome", if ok { "ok" } else { "failed" })]).inc();
    }

    /// The stream to the leader is up (a cluster view arrived) or down.
    pub fn stream(&self, up: bool) {
        if up && self.connected.get() == 0 {
            self.streams_opened.inc();
        }
        self.connected.set(i64::from(up));
    }

    fn newest(&self) -> Option<Sample> {
        self.newest.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

struct Newest {
    stats: Arc<AgentStats>,
    buffer: Arc<SampleBuffer>,
    labels: [(&'static str, String); 3],
}

impl fmt::Debug for Newest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("agent metrics")
    }
}

impl Collector for Newest {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut f = Families::new(&mut encoder);
        let labels = self.labels.each_ref().map(|(k, v)| (*k, v.as_str()));
        let l = &labels[..];
        f.gauge1("agent_buffered_samples", "Samples waiting for the stream", self.buffer.len() as f64)?;
        f.counter("agent_dropped_samples", "Samples dropped because the buffer was full", [(&[][..], self.buffer.dropped())])?;
        let Some(s) = self.stats.newest() else { return Ok(()) };
        let secs = |ms: u64| ms as f64 / 1000.0;
        f.gauge("member_reachable", "1: the agent reached its member at the newest sample", [(l, flag(s.reachable))])?;
        let mut role = labels.to_vec();
        role.push(("role", s.role.as_str()));
        f.gauge("member_role", "1 for the role the member reported", [(&role[..], 1.0)])?;
        f.gauge("member_lag_bytes", "How far the member's replica is behind its primary, in bytes", [(l, s.lag_bytes as f64)])?;
        f.gauge("member_lag_seconds", "How far the member's replica is behind its primary, in time", [(l, secs(s.lag_ms))])?;
        f.gauge("member_position", "The member's WAL position (PostgreSQL) or replication offset (Redis)", [(l, s.position as f64)])?;
        f.gauge("member_timeline", "The member's PostgreSQL timeline", [(l, f64::from(s.timeline))])?;
        f.gauge("member_epoch", "The newest epoch the agent knows", [(l, s.epoch as f64)])?;
        f.gauge("member_lease_remaining_seconds", "The primary lease the agent holds, left at the newest sample", [(l, secs(s.lease_ms))])?;
        f.gauge("member_fenced", "1: the agent fenced its member because its lease lapsed", [(l, flag(s.lease_fenced))])?;
        f.gauge("member_primary_reachable", "1: the agent reached the cluster's primary", [(l, flag(s.primary_reachable))])?;
        f.gauge("member_sample_timestamp_seconds", "When the newest sample was taken", [(l, secs(s.taken_at_ms))])?;
        if let Some(a) = &s.archive {
            f.gauge("wal_archive_end_lsn", "Everything before this WAL position is in the archive", [(l, a.end as f64)])?;
            f.gauge("wal_archive_lag_seconds", "Age of the oldest WAL not in the archive yet", [(l, secs(a.lag_ms))])?;
            f.gauge("wal_archive_pending_bytes", "WAL received and not uploaded yet", [(l, a.pending_bytes as f64)])?;
            f.gauge("wal_archive_failing", "1: archiving reports an error", [(l, flag(!a.error.is_empty()))])?;
        }
        Ok(())
    }
}

/// What the agent's HTTP listener serves.
pub struct AgentSite {
    registry: Registry,
    stats: Arc<AgentStats>,
}

impl AgentSite {
    pub fn new(stats: Arc<AgentStats>, buffer: Arc<SampleBuffer>, cfg: &crate::config::AgentConfig, security: &drc_tls::Security) -> Self {
        let mut registry = Registry::with_prefix("drc");
        drc_ops::scrape::register_process(&mut registry, security);
        registry.register("agent_connected", "1: the agent's stream to the coordinator leader is up", stats.connected.clone());
        registry.register("agent_streams_opened", "Streams to a coordinator leader that came up", stats.streams_opened.clone());
        registry.register("agent_samples", "Samples the agent took of its member", stats.samples.clone());
        registry.register("agent_commands", "Commands the agent ran, by action and outcome", stats.commands.clone());
        let labels = [("cluster", cfg.cluster.clone()), ("member", cfg.member_id.clone()), ("region", cfg.region.clone())];
        registry.register_collector(Box::new(Newest { stats: Arc::clone(&stats), buffer, labels }));
        AgentSite { registry, stats }
    }
}

impl drc_ops::http::Site for AgentSite {
    fn ready(&self) -> Result<(), String> {
        if self.stats.connected.get() == 1 {
            Ok(())
        } else {
            Err("no stream to the coordinator leader".into())
        }
    }

    fn metrics(&self) -> String {
        render(&self.registry)
    }
}
