//! Probes of the local member and, from this agent's region, of its
//! cluster's current primary. A probe never fails: an unreachable member is a
//! reading that says so (with the error), which is exactly what the
//! coordinator needs to see.

pub mod postgres;
pub mod redis;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use drc_proto::Sample;

use crate::config::{AgentConfig, Kind};

/// What the local probe saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    pub reachable: bool,
    /// "primary", "replica" or "unknown".
    pub role: &'static str,
    /// Primary: current position; replica: replay position.
    pub position: u64,
    pub receive: u64,
    pub replay: u64,
    pub timeline: u32,
    pub dataset_id: String,
    /// Redis: the replication id before the last promotion (master_replid2).
    pub previous_dataset_id: String,
    pub replication_connected: bool,
    pub replication_state: String,
    /// Age of the last replayed transaction (PostgreSQL standby), if known.
    pub replay_age: Option<Duration>,
    /// A PostgreSQL primary's synchronous_standby_names.
    pub sync_standbys: String,
    pub error: String,
}

impl Reading {
    /// A member that did not answer, and why.
    pub fn unreachable(error: String) -> Self {
        Reading { reachable: false, role: "unknown", error, ..Default::default() }
    }
}

/// What the cross-probe of the primary saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrimaryReading {
    pub reachable: bool,
    pub position: u64,
    pub round_trip: Duration,
    /// What the primary says this member last acknowledged, and how long
    /// ago (Redis `slaveN:` lines): the lag of a member that cannot answer
    /// its own probe, e.g. a stopped process.
    pub acked: Option<(u64, Duration)>,
    /// When the primary answered (None: it did not).
    pub answered_at: Option<Instant>,
}

/// How far behind in time a replica is, from the history of the primary's
/// positions seen by the cross-probe: the replica holds what the primary had
/// at the moment the primary first moved past the replica's position. An
/// idle primary that the replica has caught up with gives 0, however old its
/// last write; a busy primary with a replica a few bytes behind gives the
/// few milliseconds that really separate them.
#[derive(Default)]
pub struct LagClock {
    /// (primary position, when it was first seen), increasing.
    history: VecDeque<(u64, Instant)>,
    caught_up_at: Option<Instant>,
}

const LAG_HISTORY: usize = 8192;

impl LagClock {
    pub fn observe_primary(&mut self, position: u64, now: Instant) {
        if self.history.back().is_none_or(|(p, _)| position > *p) {
            self.history.push_back((position, now));
            if self.history.len() > LAG_HISTORY {
                self.history.pop_front();
            }
        }
    }

    /// Lag of a replica at `replica` when the primary is at `primary`.
    pub fn lag(&mut self, replica: u64, primary: u64, now: Instant) -> Duration {
        if replica >= primary {
            self.caught_up_at = Some(now);
            while self.history.len() > 1 && self.history[1].0 <= replica {
                self.history.pop_front();
            }
            return Duration::ZERO;
        }
        let since = self.history.iter().find(|(p, _)| *p > replica).map(|(_, t)| *t);
        let since = match (since, self.caught_up_at) {
            (Some(t), _) => t,
            (None, Some(t)) => t,
            (None, None) => return Duration::ZERO,
        };
        now.saturating_duration_since(since)
    }

    /// Whether `lag` is exact for a replica at `replica`: this clock saw the
    /// primary at or before that position, so it knows when the primary first
    /// moved past it. Otherwise (history that starts after the divergence,
    /// e.g. since an agent restart) it is only a lower bound.
    pub fn covers(&self, replica: u64) -> bool {
        self.caught_up_at.is_some() || self.history.front().is_some_and(|(p, _)| *p <= replica)
    }
}

enum Inner {
    Postgres(Box<postgres::PgProber>),
    Redis(Box<redis::RedisProber>),
}

/// The connections of one member's probes: the local probe and the
/// cross-probe of the primary each own one, so that neither waits for the
/// other (a frozen primary makes the cross-probe wait its whole time-out).
pub struct Probe(Inner);

impl Probe {
    pub fn new(cfg: &AgentConfig) -> anyhow::Result<Self> {
        Ok(Probe(match cfg.kind {
            Kind::Postgres => Inner::Postgres(Box::new(postgres::PgProber::new(&cfg.connection, cfg.probe_timeout)?)),
            Kind::Redis => Inner::Redis(Box::new(redis::RedisProber::new(&cfg.connection, cfg.probe_timeout)?)),
        }))
    }

    pub async fn local(&mut self) -> Reading {
        match &mut self.0 {
            Inner::Postgres(p) => p.local().await,
            Inner::Redis(p) => p.local().await,
        }
    }

    /// Connects to the primary at `address` (host:port) and reads its position.
    pub async fn primary(&mut self, address: &str) -> PrimaryReading {
        let mut r = match &mut self.0 {
            Inner::Postgres(p) => p.primary(address).await,
            Inner::Redis(p) => p.primary(address).await,
        };
        r.answered_at = r.reachable.then(Instant::now);
        r
    }
}

/// Turns readings into samples: the lag of a replica, from the history of
/// the primary's positions its cross-probe saw.
#[derive(Default)]
pub struct Prober {
    clock: LagClock,
    /// The primary's newest position seen in `known_epoch`: a replica's lag
    /// outlives the primary (a new coordinator leader must still see it).
    known_primary: u64,
    known_epoch: u64,
    /// When the cross-probe last reached the primary.
    primary_seen_at: Option<Instant>,
}

impl Prober {
    /// Turns readings into a sample, computing the lag against the primary.
    pub fn sample(&mut self, member: &str, local: &Reading, primary: Option<&PrimaryReading>, epoch: u64, taken_at_ms: u64) -> Sample {
        let now = Instant::now();
        if epoch != self.known_epoch {
            self.known_epoch = epoch;
            self.known_primary = 0;
        }
        if let Some(p) = primary.filter(|p| p.reachable) {
            let at = p.answered_at.unwrap_or(now);
            self.clock.observe_primary(p.position, at);
            self.known_primary = self.known_primary.max(p.position);
            self.primary_seen_at = Some(at);
        }
        let acked = primary.filter(|p| p.reachable).and_then(|p| p.acked.map(|(at, ago)| (p.position.saturating_sub(at), ago)));
        let (lag_bytes, lag) = match local.role {
            "unknown" if acked.is_some() => acked.unwrap_or_default(),
            "replica" => match primary.filter(|p| p.reachable) {
                Some(p) => (p.position.saturating_sub(local.replay), self.clock.lag(local.replay, p.position, now)),
                // Without the primary: behind its newest position seen, or
                // what was received but not replayed, aged by the history of
                // the primary's positions or the last replayed transaction.
                None => {
                    let behind = local.receive.saturating_sub(local.replay).max(self.known_primary.saturating_sub(local.replay));
                    // Aged as of the primary's last sign of life: a dead
                    // primary writes nothing more, so what this replica
                    // misses does not get older (else the RPO time gate
                    // would never let a replica that missed one commit be
                    // promoted).
                    let at = self.primary_seen_at.unwrap_or(now);
                    let replay_age = local.replay_age.unwrap_or_default().saturating_sub(now.saturating_duration_since(at));
                    // The age of the last replayed transaction bounds it
                    // from above, and counts only when the clock cannot say:
                    // after an idle spell it would overstate the lag by the
                    // whole spell.
                    let clock = self.clock.lag(local.replay, self.known_primary, at);
                    let age = if self.clock.covers(local.replay) { clock } else { clock.max(replay_age) };
                    (behind, if behind == 0 { Duration::ZERO } else { age })
                }
            },
            _ => (0, Duration::ZERO),
        };
        let primary_reachable = match local.role {
            "primary" => local.reachable,
            _ => primary.is_some_and(|p| p.reachable),
        };
        Sample {
            member_id: member.to_string(),
            taken_at_ms,
            reachable: local.reachable,
            role: local.role.to_string(),
            position: local.position,
            lag_bytes,
            lag_ms: lag.as_millis() as u64,
            timeline: local.timeline,
            dataset_id: local.dataset_id.clone(),
            previous_dataset_id: local.previous_dataset_id.clone(),
            replication_connected: local.replication_connected,
            epoch,
            primary_reachable,
            error: local.error.clone(),
            receive_position: local.receive,
            replay_position: local.replay,
            primary_position: self.known_primary,
            replication_state: local.replication_state.clone(),
            primary_probe_us: primary.map(|p| p.round_trip.as_micros() as u64).unwrap_or(0),
            // Filled in by the caller, which holds the lease.
            lease_ms: 0,
            lease_fenced: false,
            server_gone: false,
            seq: 0,
            sync_standbys: local.sync_standbys.clone(),
            // The archiver's, added by the caller.
            archive: None,
        }
    }
}

/// Splits "host:port".
pub fn split_address(address: &str) -> Option<(String, u16)> {
    let (h, p) = address.rsplit_once(':')?;
    Some((h.to_string(), p.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_zero_when_caught_up_with_an_idle_primary() {
        let mut c = LagClock::default();
        let t0 = Instant::now();
        c.observe_primary(100, t0);
        assert_eq!(c.lag(100, 100, t0 + Duration::from_secs(60)), Duration::ZERO);
    }

    #[test]
    fn lag_counts_from_when_the_primary_moved_past_the_replica() {
        let mut c = LagClock::default();
        let t0 = Instant::now();
        c.observe_primary(100, t0);
        c.observe_primary(200, t0 + Duration::from_secs(1));
        c.observe_primary(300, t0 + Duration::from_secs(2));
        assert_eq!(c.lag(150, 300, t0 + Duration::from_secs(3)), Duration::from_secs(2));
        assert_eq!(c.lag(250, 300, t0 + Duration::from_secs(3)), Duration::from_secs(1));
        assert_eq!(c.lag(300, 300, t0 + Duration::from_secs(3)), Duration::ZERO);
    }

    #[test]
    fn a_clock_that_saw_the_replica_caught_up_is_exact_and_one_that_did_not_is_a_lower_bound() {
        let t0 = Instant::now();
        // Caught up, then the primary idles for a minute, writes once and
        // dies: the replica misses 2 s of writes, not a minute.
        let mut c = LagClock::default();
        c.observe_primary(100, t0);
        assert_eq!(c.lag(100, 100, t0), Duration::ZERO);
        c.observe_primary(200, t0 + Duration::from_secs(60));
        assert!(c.covers(100));
        assert_eq!(c.lag(100, 200, t0 + Duration::from_secs(62)), Duration::from_secs(2));
        // First look at the primary after the replica fell behind.
        let mut late = LagClock::default();
        late.observe_primary(200, t0);
        assert!(!late.covers(100));
        assert!(late.covers(200));
    }
}
