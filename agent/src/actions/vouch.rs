//! Who vouches for a primary whose lease has lapsed (fail-static): the
//! replicas it has a round trip with now. A replica vouches, and refuses a
//! promotion, for `lease_vouch_period` after its own last round trip with
//! the primary (its cross-probe, every probe interval); so a heartbeat counts
//! for `lease_vouch_period - probe_interval`, and a primary cut off from a
//! replica, in either direction, stops counting it before it may be
//! promoted. A stream's state alone would count a replica behind a
//! blackholed link until `wal_sender_timeout` (a minute by default), and its
//! replies alone one that hears nothing from the primary (a one-way
//! partition).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::redis::redis_cmd;
use super::{lock, Actor};
use crate::config::Kind;
use crate::probe::postgres::pg_err;
use crate::probe::redis::parse_info;

/// Why the local member's replication could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum Unread {
    /// It did not answer in time: worth no second wait.
    #[error("no answer within {} ms", .0.as_millis())]
    NoAnswer(Duration),
    /// The read failed (a closed connection, a server error).
    #[error("{0}")]
    Failed(String),
}

/// A primary starts writing heartbeats this long before its lease ends, so
/// that its replicas' answers to them are there when it does.
pub(super) const HEARTBEAT_AHEAD: Duration = Duration::from_millis(500);
/// At most one heartbeat this often.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);
/// How long a primary that has written no heartbeat lately waits for its
/// replicas to write a new one.
const HEARTBEAT_WAIT: Duration = Duration::from_millis(250);
/// Where each streaming replica has written to. The WAL archiver streams
/// too, on its own slot, but it is no replica: it could not be promoted,
/// so it vouches for nothing.
const WRITTEN: &str = "SELECT ARRAY(SELECT pg_wal_lsn_diff(write_lsn, '0/0')::bigint FROM pg_stat_replication \
     WHERE state = 'streaming' AND write_lsn IS NOT NULL \
     AND pid NOT IN (SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL))";

impl Actor {
    /// None if the local member is not a writable primary; otherwise how
    /// many replicas it has a round trip with now (each vouches that no
    /// newer epoch exists): PostgreSQL replicas that have written a
    /// heartbeat this primary wrote to its WAL recently, Redis replicas that
    /// acknowledge a heartbeat at once (`WAIT`).
    pub(super) async fn vouchers(&self) -> Result<Option<usize>, String> {
        match self.cfg.kind {
            // The reused connection may have been closed under it (a
            // restarted server, a dropped socket): one more try on a new
            // connection before the member counts as unreadable. A member
            // that did not answer in time gets no second wait.
            Kind::Postgres => match self.pg_vouchers().await {
                Err(Unread::Failed(first)) => {
                    *self.local_pg.lock().await = None;
                    self.pg_vouchers().await.map_err(|again| format!("{first}; on a new connection: {again}"))
                }
                read => read.map_err(|e| e.to_string()),
            },
            Kind::Redis => {
                if !self.writable().await? {
                    return Ok(None);
                }
                // The replicas that acknowledged a heartbeat sent within the
                // vouch period (sent from before the lease ended, so that
                // the answer is there when it does); one now if none was.
                let fresh = self.cfg.lease_vouch_period.saturating_sub(self.cfg.probe_interval);
                let acked = |h: &std::collections::VecDeque<(Instant, u64)>| {
                    h.iter().filter(|(at, _)| at.elapsed() <= fresh).map(|(_, n)| *n as usize).max()
                };
                if let Some(n) = acked(&lock(&self.heartbeats)) {
                    return Ok(Some(n));
                }
                self.redis_heartbeat(HEARTBEAT_WAIT).await?;
                Ok(Some(acked(&lock(&self.heartbeats)).unwrap_or(0)))
            }
        }
    }

    /// A Redis heartbeat: a `PUBLISH` into the replication stream, then as
    /// many replicas as acknowledge it within `wait` (`WAIT` asks them at
    /// once, and returns when every expected one has), recorded with when
    /// it was sent. A view naming another primary ends the wait (the
    /// connection is this call's own): nothing to vouch for then.
    async fn redis_heartbeat(&self, wait: Duration) -> Result<(), String> {
        let mut c = self.redis_local().await?;
        let expected = (*lock(&self.replicas)).max(1);
        let sent = Instant::now();
        redis_cmd(&mut c, ::redis::cmd("PUBLISH").arg("__drc:heartbeat").arg(&self.cfg.member_id)).await?;
        let superseded = async {
            while !self.superseded() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let mut wait_cmd = ::redis::cmd("WAIT");
        wait_cmd.arg(expected).arg(wait.as_millis().max(1) as u64);
        let acked = tokio::select! {
            acked = wait_cmd.query_async::<i64>(&mut c) => acked.map_err(|e| e.to_string())?.max(0) as u64,
            () = superseded => 0,
        };
        self.record_heartbeat(sent, acked);
        Ok(())
    }

    /// Keeps the heartbeats of the vouch period, newest last.
    fn record_heartbeat(&self, at: Instant, value: u64) {
        let keep = self.cfg.lease_vouch_period;
        let mut h = lock(&self.heartbeats);
        h.push_back((at, value));
        while h.front().is_some_and(|(at, _)| at.elapsed() > keep) {
            h.pop_front();
        }
    }

    /// Whether the local member takes writes (a PostgreSQL primary out of
    /// recovery, a Redis master), without the heartbeats' wait.
    pub(super) async fn writable(&self) -> Result<bool, String> {
        match self.cfg.kind {
            Kind::Postgres => {
                let c = self.pg_local().await?;
                let read = tokio::time::timeout(self.cfg.probe_timeout, c.query_one("SELECT pg_is_in_recovery()", &[]));
                let Ok(row) = read.await else {
                    *self.local_pg.lock().await = None;
                    return Err("no answer".into());
                };
                Ok(!row.map_err(pg_err)?.get::<_, bool>(0))
            }
            Kind::Redis => {
                let mut c = self.redis_local().await?;
                let info: String = ::redis::cmd("INFO").arg("replication").query_async(&mut c).await.map_err(|e| e.to_string())?;
                Ok(parse_info(&info).get("role") == Some(&"master"))
            }
        }
    }

    /// `vouchers` of a PostgreSQL member, on the reused local connection:
    /// the replicas whose written position has reached a heartbeat written
    /// within the vouch period. A standby reports its position as soon as it
    /// has written what it received, so that is a round trip.
    pub(super) async fn pg_vouchers(&self) -> Result<Option<usize>, Unread> {
        let c = self.pg_local().await.map_err(Unread::Failed)?;
        let query = c.query_one(
            "SELECT pg_is_in_recovery(), ARRAY(SELECT pg_wal_lsn_diff(write_lsn, '0/0')::bigint FROM pg_stat_replication \
             WHERE state = 'streaming' AND write_lsn IS NOT NULL \
             AND pid NOT IN (SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL))",
            &[&drc_proto::ARCHIVE_SLOT],
        );
        // A connection that hangs is as good as none, and is replaced.
        let Ok(row) = tokio::time::timeout(self.cfg.probe_timeout, query).await else {
            *self.local_pg.lock().await = None;
            return Err(Unread::NoAnswer(self.cfg.probe_timeout));
        };
        let row = row.map_err(|e| Unread::Failed(pg_err(e)))?;
        let (in_recovery, mut written): (bool, Vec<i64>) = (row.get(0), row.get(1));
        if in_recovery {
            return Ok(None);
        }
        let fresh = self.cfg.lease_vouch_period.saturating_sub(self.cfg.probe_interval);
        let oldest_fresh = |h: &std::collections::VecDeque<(Instant, u64)>| h.iter().map(|(at, _)| *at).find(|at| at.elapsed() <= fresh);
        if oldest_fresh(&lock(&self.heartbeats)).is_none() {
            // None written lately (this agent was stopped, or has just
            // started): one now.
            self.pg_heartbeat().await.map_err(Unread::Failed)?;
        }
        // Every fresh heartbeat written a moment ago (the agent woke, or
        // started): a short wait for the replicas to write it. One written
        // HEARTBEAT_WAIT ago has had its round trip: no wait then.
        let expected = *lock(&self.replicas);
        let deadline = oldest_fresh(&lock(&self.heartbeats)).map_or_else(Instant::now, |at| at + HEARTBEAT_WAIT);
        // A view naming another primary ends the wait: nothing to vouch for.
        while round_trips(&lock(&self.heartbeats), &written, fresh, Instant::now()) < expected
            && Instant::now() < deadline
            && !self.superseded()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let row = c.query_one(WRITTEN, &[&drc_proto::ARCHIVE_SLOT]).await.map_err(|e| Unread::Failed(pg_err(e)))?;
            written = row.get(0);
        }
        Ok(Some(round_trips(&lock(&self.heartbeats), &written, fresh, Instant::now())))
    }

    /// A heartbeat to the replicas, at most every HEARTBEAT_EVERY: for
    /// PostgreSQL written here, for Redis sent by a task of its own (see
    /// [`Self::redis_heartbeat`]).
    pub(super) async fn heartbeat(self: &Arc<Self>) -> Result<(), String> {
        if lock(&self.heartbeats).back().is_some_and(|(at, _)| at.elapsed() < HEARTBEAT_EVERY) {
            return Ok(());
        }
        if self.cfg.kind == Kind::Redis {
            // Its WAIT runs beside the lease check, which must never wait
            // on it: the check reads only what heartbeats have recorded.
            if let Ok(one) = Arc::clone(&self.redis_beating).try_lock_owned() {
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    let _one = one;
                    if let Err(e) = this.redis_heartbeat(HEARTBEAT_WAIT).await {
                        tracing::debug!(error = %e, "no heartbeat sent");
                    }
                });
            }
            return Ok(());
        }
        self.pg_heartbeat().await
    }

    /// Writes a heartbeat into a PostgreSQL primary's WAL (a logical
    /// decoding message, which any wal_level allows and no table holds). In
    /// a transaction of its own that is flushed at once (WAL senders send
    /// only flushed WAL) and waits for no standby (one that cannot answer
    /// would hold it).
    async fn pg_heartbeat(&self) -> Result<(), String> {
        let c = self.pg_local().await?;
        let write = c.simple_query(
            "BEGIN; SET LOCAL synchronous_commit = local; \
             SELECT pg_wal_lsn_diff(pg_logical_emit_message(true, 'drc-heartbeat', ''), '0/0')::bigint; COMMIT",
        );
        let Ok(out) = tokio::time::timeout(self.cfg.probe_timeout, write).await else {
            // Perhaps left inside the transaction: not reused.
            *self.local_pg.lock().await = None;
            return Err("no answer".into());
        };
        let out = out.map_err(pg_err)?;
        let lsn = out
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse::<u64>().ok()),
                _ => None,
            })
            .ok_or("the heartbeat returned no position")?;
        self.record_heartbeat(Instant::now(), lsn);
        Ok(())
    }
}

/// How many of the replicas' written positions have reached a heartbeat
/// written within `fresh` of `now` (none written yet: none).
fn round_trips(heartbeats: &std::collections::VecDeque<(Instant, u64)>, written: &[i64], fresh: Duration, now: Instant) -> usize {
    let Some(oldest) = heartbeats.iter().filter(|(at, _)| now.saturating_duration_since(*at) <= fresh).map(|(_, lsn)| *lsn).min() else {
        return 0;
    };
    written.iter().filter(|w| **w >= 0 && **w as u64 >= oldest).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_vouches_only_once_it_has_written_a_recent_heartbeat() {
        let now = Instant::now();
        let fresh = Duration::from_millis(1_250);
        let h: std::collections::VecDeque<(Instant, u64)> =
            [(now - Duration::from_secs(2), 100), (now - Duration::from_millis(900), 200), (now - Duration::from_millis(100), 300)].into();
        // 150: only the stale heartbeat; 200 and 300: a fresh one.
        assert_eq!(round_trips(&h, &[150, 200, 300], fresh, now), 2);
        assert_eq!(round_trips(&h, &[], fresh, now), 0);
        assert_eq!(round_trips(&std::collections::VecDeque::new(), &[500], fresh, now), 0, "no heartbeat written yet");
    }
}
