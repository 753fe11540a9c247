//! The failover steps on Redis: every member but the new primary becomes
//! its replica; demotion pauses writes and reports the final offset.

use std::time::{Duration, Instant};

use drc_proto::{FailoverAction, FailoverStep, StepFound};

use super::{catch_up_target, lock, primary_address, Actor};
use crate::probe::redis::parse_info;

impl Actor {
    pub(super) async fn redis(&self, action: FailoverAction, s: &FailoverStep) -> Result<StepFound, String> {
        let mut c = self.redis_local().await?;
        match action {
            // Fencing, repointing and rejoining a Redis member all make it a
            // replica of the new primary (its diverged writes are dropped).
            FailoverAction::Fence | FailoverAction::Repoint | FailoverAction::Rejoin => {
                let (host, port) = primary_address(s)?;
                redis_cmd(&mut c, ::redis::cmd("REPLICAOF").arg(host).arg(port)).await?;
                let _ = redis_cmd(&mut c, ::redis::cmd("CLIENT").arg("UNPAUSE")).await;
                // A supervised server held off the network serves again, as a replica.
                if let Some(s) = &self.supervisor {
                    s.open_port(&mut c).await?;
                }
                *lock(&self.fenced) = false;
                Ok(StepFound::default())
            }
            FailoverAction::Demote => {
                redis_cmd(&mut c, ::redis::cmd("CLIENT").arg("PAUSE").arg(60_000).arg("WRITE")).await?;
                let info: String = ::redis::cmd("INFO").arg("replication").query_async(&mut c).await.map_err(|e| e.to_string())?;
                let offset = parse_info(&info)
                    .get("master_repl_offset")
                    .and_then(|o| o.parse::<u64>().ok())
                    .ok_or("demote: INFO replication has no master_repl_offset")?;
                Ok(StepFound { position: Some(offset), ..Default::default() })
            }
            FailoverAction::CatchUp => {
                let target = catch_up_target(s)?;
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let info: String = ::redis::cmd("INFO").arg("replication").query_async(&mut c).await.map_err(|e| e.to_string())?;
                    let pos: u64 = parse_info(&info).get("slave_repl_offset").and_then(|p| p.parse().ok()).unwrap_or(0);
                    if pos >= target {
                        return Ok(StepFound { position: Some(pos), ..Default::default() });
                    }
                    if Instant::now() > deadline {
                        return Err(format!("replicated up to {pos}, the old primary ended at {target}"));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            FailoverAction::Promote | FailoverAction::Unspecified => Err(format!("{} is not a Redis step", action.as_str_name())),
        }
    }

    pub(super) async fn redis_local(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        let conn = &self.cfg.connection;
        if let Some(s) = &self.supervisor {
            return crate::supervise::redis::connect(&s.redis_socket(), conn).await;
        }
        let info = crate::probe::redis::connection_info(&conn.host, conn.port, conn)?;
        let client = crate::probe::redis::client(info, conn.tls.as_ref())?;
        tokio::time::timeout(Duration::from_secs(3), client.get_multiplexed_async_connection())
            .await
            .map_err(|_| "connecting to redis timed out".to_string())?
            .map_err(|e| e.to_string())
    }
}

pub(super) async fn redis_cmd(c: &mut redis::aio::MultiplexedConnection, cmd: &mut redis::Cmd) -> Result<(), String> {
    cmd.query_async::<redis::Value>(c).await.map(|_| ()).map_err(|e| e.to_string())
}
