//! The chaos trial's writers, for PostgreSQL and Redis alike: one through
//! each cluster's stable endpoint (drc-proxy), recording the wall time of
//! every acknowledged write, and one inside every member's namespace
//! writing straight to it, recording the server's own clock for every write
//! the member acknowledged (a replica refuses them: only a writable member
//! appears).

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::lab::postgres::psql;
use crate::lab::redis::cli;
use crate::lab::{Lab, PG_CLUSTER, REDIS_CLUSTER};

/// The two kinds of store the lab runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Postgres,
    Redis,
}

impl Store {
    pub const ALL: [Store; 2] = [Store::Postgres, Store::Redis];

    pub fn cluster(self) -> &'static str {
        match self {
            Store::Postgres => PG_CLUSTER,
            Store::Redis => REDIS_CLUSTER,
        }
    }

    pub fn members(self) -> [String; 3] {
        let prefix = match self {
            Store::Postgres => "pg",
            Store::Redis => "redis",
        };
        ["a", "b", "c"].map(|r| format!("{prefix}-{r}"))
    }

    /// Creates what the writers write into, through the endpoint.
    pub fn prepare(self, port: u16) -> anyhow::Result<()> {
        match self {
            Store::Postgres => {
                psql(port, "CREATE TABLE acked (id bigint PRIMARY KEY); CREATE TABLE chaos (member text, n bigint)").map(drop)
            }
            Store::Redis => Ok(()),
        }
    }

    /// One write through the endpoint; whether it was acknowledged.
    fn write_through(self, port: u16, id: u64) -> bool {
        match self {
            Store::Postgres => psql(port, &format!("INSERT INTO acked VALUES ({id})")).is_ok(),
            // RPUSH answers the list's new length; an error is no number.
            Store::Redis => cli(port, &["RPUSH", "acked", &id.to_string()]).is_ok_and(|o| o.trim().parse::<u64>().is_ok()),
        }
    }

    /// Every id acknowledged through the endpoint that the cluster holds.
    pub fn read_back(self, port: u16) -> anyhow::Result<Vec<u64>> {
        let text = match self {
            Store::Postgres => psql(port, "SELECT id FROM acked")?,
            Store::Redis => cli(port, &["LRANGE", "acked", "0", "-1"])?,
        };
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// The command that writes write `n` straight to member `id` at
    /// host:port and prints the server's clock in ms; a write that hangs
    /// (on a frozen server) is given up after 3 s.
    fn direct(self, id: &str, host: &str, port: u16, n: u64) -> Command {
        let port = port.to_string();
        match self {
            Store::Postgres => {
                let sql =
                    format!("INSERT INTO chaos VALUES ('{id}', {n}) RETURNING (extract(epoch FROM clock_timestamp()) * 1000)::bigint");
                let mut c = Command::new("timeout");
                c.args(["3", "psql", "-h", host, "-p", &port, "-U", "postgres", "-qAt", "-v", "ON_ERROR_STOP=1", "-c", &sql]);
                c.env("PGCONNECT_TIMEOUT", "2");
                c
            }
            Store::Redis => {
                let script = "redis.call('RPUSH', KEYS[1], ARGV[1]); local t = redis.call('TIME'); \
                              return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)";
                let mut c = Command::new("timeout");
                c.args(["3", "redis-cli", "-h", host, "-p", &port, "EVAL", script, "1", &format!("chaos:{id}"), &n.to_string()]);
                c
            }
        }
    }
}

pub fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// (member, the server's time of the write in ms) for every write a member
/// acknowledged straight from inside its namespace.
pub type Direct = Arc<Mutex<Vec<(String, u64)>>>;
/// (id, wall ms when acknowledged) for every write through an endpoint.
pub type Through = Arc<Mutex<Vec<(u64, u64)>>>;

pub fn member_writer(store: Store, lab: &Lab, id: &str, stop: Arc<AtomicBool>, out: Direct) -> std::thread::JoinHandle<()> {
    let ns = lab.info.net.as_ref().and_then(|n| n.node(id).ok()).map(|n| n.namespace.clone()).unwrap_or_default();
    let m = lab.member(id).cloned();
    let id = id.to_string();
    std::thread::spawn(move || {
        let Ok(m) = m else { return };
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let inner = store.direct(&id, &m.host, m.port, n);
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns]).arg(inner.get_program()).args(inner.get_args());
            for (k, v) in inner.get_envs() {
                if let Some(v) = v {
                    c.env(k, v);
                }
            }
            let at = c
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().find_map(|l| l.trim().parse().ok()));
            match at {
                Some(at) => out.lock().unwrap_or_else(|p| p.into_inner()).push((id.clone(), at)),
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    })
}

pub fn endpoint_writer(store: Store, port: u16, stop: Arc<AtomicBool>, out: Through) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut id = 0u64;
        while !stop.load(Ordering::SeqCst) {
            id += 1;
            if store.write_through(port, id) {
                out.lock().unwrap_or_else(|p| p.into_inner()).push((id, wall_ms()));
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    })
}
