//! Redis probe (`INFO replication`).
//!
//! Redis reports no replication delay in time, so the agent measures it: a
//! replica's lag is the time since it was last fully caught up with the
//! primary's offset.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use super::{split_address, PrimaryReading, Reading};
use crate::config::Connection;

pub struct RedisProber {
    url: String,
    local_port: u16,
    password: Option<String>,
    user: Option<String>,
    tls: Option<crate::dbtls::DbTls>,
    timeout: Duration,
    local: Option<MultiplexedConnection>,
    primary: Option<(String, MultiplexedConnection)>,
    lineage: Lineage,
}

/// Redis gives a primary without a replication backlog a new replication id
/// when its first replica connects, and keeps nothing of the old one (its
/// `master_replid2` stays zero). The probe saw the old id and keeps it as the
/// new one's predecessor, as Redis itself keeps the old id after a promotion,
/// so that the coordinator knows the dataset moved on, not away.
#[derive(Default)]
struct Lineage {
    /// The id of the primary's last reading, and whether it had a backlog.
    last: Option<(String, bool)>,
    /// (new id, the id it replaced) of the last such change seen.
    derived: Option<(String, String)>,
}

impl Lineage {
    /// The predecessor of `replid`, the primary's id now ("" if none known).
    fn primary(&mut self, replid: &str, replid2: &str, backlog: bool) -> String {
        if let Some((old, false)) = &self.last {
            if backlog && old != replid && replid2.is_empty() {
                self.derived = Some((replid.to_string(), old.clone()));
            }
        }
        self.last = Some((replid.to_string(), backlog));
        match &self.derived {
            _ if !replid2.is_empty() => replid2.to_string(),
            Some((new, old)) if new == replid => old.clone(),
            _ => String::new(),
        }
    }

    fn replica(&mut self) {
        self.last = None;
    }
}

/// Parses the `key:value` lines of an INFO section.
pub fn parse_info(text: &str) -> HashMap<&str, &str> {
    text.lines().filter_map(|l| l.trim_end().split_once(':')).collect()
}

impl RedisProber {
    pub fn new(conn: &Connection, timeout: Duration) -> anyhow::Result<Self> {
        Ok(RedisProber {
            url: url(&conn.host, conn.port, conn.tls.is_some()),
            tls: conn.tls.clone(),
            local_port: conn.port,
            password: conn.password()?,
            user: conn.user.clone(),
            timeout,
            local: None,
            primary: None,
            lineage: Lineage::default(),
        })
    }

    async fn connect(&self, url: &str) -> Result<MultiplexedConnection, String> {
        let info: redis::ConnectionInfo = url.parse().map_err(|e: redis::RedisError| e.to_string())?;
        let client = client(with_credentials(info, self.user.as_deref(), self.password.as_deref()), self.tls.as_ref())?;
        tokio::time::timeout(self.timeout, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())
    }

    async fn info(&self, con: &mut MultiplexedConnection) -> Result<String, String> {
        tokio::time::timeout(self.timeout, redis::cmd("INFO").arg("replication").query_async::<String>(con))
            .await
            .map_err(|_| "INFO timed out".to_string())?
            .map_err(|e| e.to_string())
    }

    pub async fn local(&mut self) -> Reading {
        match self.try_local().await {
            Ok(r) => r,
            Err(e) => {
                self.local = None;
                Reading::unreachable(e)
            }
        }
    }

    async fn try_local(&mut self) -> Result<Reading, String> {
        let mut con = match self.local.take() {
            Some(c) => c,
            None => self.connect(&self.url.clone()).await?,
        };
        let text = self.info(&mut con).await?;
        self.local = Some(con);
        let info = parse_info(&text);
        let num = |k: &str| info.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let dataset_id = info.get("master_replid").copied().unwrap_or_default().to_string();
        // A promotion gives the member a new replication id and keeps the
        // old one as master_replid2: the same dataset, one step on.
        let previous = info.get("master_replid2").copied().filter(|r| !r.is_empty() && r.bytes().any(|b| b != b'0')).unwrap_or_default();
        let mut previous_dataset_id = previous.to_string();
        match info.get("role").copied() {
            Some("master") => {
                let backlog = info.get("repl_backlog_active").is_none_or(|v| *v != "0");
                previous_dataset_id = self.lineage.primary(&dataset_id, &previous_dataset_id, backlog);
                let pos = num("master_repl_offset");
                Ok(Reading {
                    reachable: true,
                    role: "primary",
                    position: pos,
                    dataset_id,
                    previous_dataset_id,
                    replication_connected: true,
                    ..Default::default()
                })
            }
            Some("slave") => {
                self.lineage.replica();
                let link = info.get("master_link_status").copied().unwrap_or("down").to_string();
                let pos = num("slave_repl_offset");
                // Until its first sync a replica carries a replication id of
                // its own, which says nothing about the dataset it will hold.
                let (dataset_id, previous_dataset_id) =
                    if link == "up" { (dataset_id, previous_dataset_id) } else { (String::new(), String::new()) };
                Ok(Reading {
                    reachable: true,
                    role: "replica",
                    position: pos,
                    receive: pos,
                    replay: pos,
                    dataset_id,
                    previous_dataset_id,
                    replication_connected: link == "up",
                    replication_state: link,
                    ..Default::default()
                })
            }
            other => Err(format!("unexpected role {other:?} in INFO replication")),
        }
    }

    pub async fn primary(&mut self, address: &str) -> PrimaryReading {
        let start = Instant::now();
        match self.try_primary(address).await {
            Ok((position, acked)) => PrimaryReading { reachable: true, position, round_trip: start.elapsed(), acked, answered_at: None },
            Err(e) => {
                tracing::debug!(%address, error = %e, "primary not reachable");
                self.primary = None;
                PrimaryReading { reachable: false, position: 0, round_trip: start.elapsed(), acked: None, answered_at: None }
            }
        }
    }

    async fn try_primary(&mut self, address: &str) -> Result<(u64, Option<(u64, Duration)>), String> {
        let mut con = match self.primary.take() {
            Some((a, c)) if a == address => c,
            _ => {
                let (host, port) = split_address(address).ok_or_else(|| format!("bad primary address {address:?}"))?;
                self.connect(&url(&host, port, self.tls.is_some())).await?
            }
        };
        let text = self.info(&mut con).await?;
        self.primary = Some((address.to_string(), con));
        let info = parse_info(&text);
        let position = info.get("master_repl_offset").and_then(|v| v.parse().ok()).ok_or_else(|| "no master_repl_offset".to_string())?;
        Ok((position, acked_by(&info, self.local_port)))
    }
}

/// The offset a replica listening on `port` last acknowledged, and how long
/// ago, from the primary's `slaveN:ip=..,port=..,offset=..,lag=..` lines.
pub fn acked_by(info: &HashMap<&str, &str>, port: u16) -> Option<(u64, Duration)> {
    info.iter().filter(|(k, _)| k.starts_with("slave") && k[5..].chars().all(|c| c.is_ascii_digit())).find_map(|(_, v)| {
        let fields: HashMap<&str, &str> = v.split(',').filter_map(|f| f.split_once('=')).collect();
        if fields.get("port")?.parse::<u16>().ok()? != port {
            return None;
        }
        let offset = fields.get("offset")?.parse().ok()?;
        let lag = fields.get("lag")?.parse::<u64>().ok()?;
        Some((offset, Duration::from_secs(lag)))
    })
}

/// `info` with a user and password set as fields, never pasted into a URL
/// (where a password with `@`, `/` or `%` would change its meaning).
pub(crate) fn with_credentials(info: redis::ConnectionInfo, user: Option<&str>, password: Option<&str>) -> redis::ConnectionInfo {
    let mut settings = info.redis_settings().clone();
    if let Some(p) = password {
        settings = settings.set_password(p);
    }
    if let Some(u) = user {
        settings = settings.set_username(u);
    }
    info.set_redis_settings(settings)
}

/// `rediss://` (TLS, the server's certificate checked against the CA and
/// the host) when `tls`.
fn url(host: &str, port: u16, tls: bool) -> String {
    let scheme = if tls { "rediss" } else { "redis" };
    format!("{scheme}://{host}:{port}/")
}

/// A client of the server `info` names, over TLS when configured.
pub(crate) fn client(info: redis::ConnectionInfo, tls: Option<&crate::dbtls::DbTls>) -> Result<redis::Client, String> {
    match tls {
        Some(t) => redis::Client::build_with_tls(info, t.redis()?).map_err(|e| e.to_string()),
        None => redis::Client::open(info).map_err(|e| e.to_string()),
    }
}

/// The connection info of `host:port`, with the agent's credentials and its
/// TLS choice.
pub(crate) fn connection_info(host: &str, port: u16, conn: &crate::config::Connection) -> Result<redis::ConnectionInfo, String> {
    let info: redis::ConnectionInfo = url(host, port, conn.tls.is_some()).parse().map_err(|e: redis::RedisError| e.to_string())?;
    let password = conn.password().map_err(|e| e.to_string())?;
    Ok(with_credentials(info, conn.user.as_deref(), password.as_deref()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_password_with_url_characters_reaches_redis_as_it_is() {
        use redis::IntoConnectionInfo as _;
        let password = "p@ss/w:rd%40#?";
        let info = ("10.0.0.7", 6380).into_connection_info().expect("info");
        let info = super::with_credentials(info, Some("drc"), Some(password));
        assert_eq!(info.redis_settings().password(), Some(password));
        assert_eq!(info.redis_settings().username(), Some("drc"));
        assert_eq!(info.addr().to_string(), "10.0.0.7:6380");
        // What pasting it into a URL did: another host, or no parse at all.
        let pasted = format!("redis://drc:{password}@10.0.0.7:6380/");
        let parsed = redis::Client::open(pasted.as_str()).map(|c| c.get_connection_info().redis_settings().password().map(str::to_string));
        assert!(!matches!(parsed, Ok(Some(ref p)) if p == password), "{parsed:?}");
    }

    #[test]
    fn parses_info_replication() {
        let text = "# Replication\r\nrole:slave\r\nmaster_link_status:up\r\nslave_repl_offset:1234\r\nmaster_replid:abc\r\n";
        let info = super::parse_info(text);
        assert_eq!(info["role"], "slave");
        assert_eq!(info["slave_repl_offset"], "1234");
        assert_eq!(info["master_replid"], "abc");
        let primary = "role:master\r\nslave0:ip=127.0.0.1,port=7001,state=online,offset=90,lag=3\r\nmaster_repl_offset:100\r\n";
        let info = super::parse_info(primary);
        assert_eq!(super::acked_by(&info, 7001), Some((90, std::time::Duration::from_secs(3))));
        assert_eq!(super::acked_by(&info, 7002), None);
    }

    #[test]
    fn a_primary_that_takes_a_new_id_for_its_first_replica_names_the_old_one_as_its_predecessor() {
        let mut l = super::Lineage::default();
        assert_eq!(l.primary("A", "", false), "", "a fresh primary: no predecessor");
        assert_eq!(l.primary("A", "", false), "");
        assert_eq!(l.primary("B", "", true), "A", "its first replica connected: new id, backlog created");
        assert_eq!(l.primary("B", "", true), "A", "remembered");
        assert_eq!(l.primary("C", "B", true), "B", "a promotion: Redis names the predecessor itself");
        // A restart without a backlog, then a replica: the same rule.
        assert_eq!(l.primary("D", "", false), "");
        assert_eq!(l.primary("E", "", true), "D");
        // Once a replica, the memory of the primary's last id is gone.
        l.replica();
        assert_eq!(l.primary("F", "", true), "", "nothing seen before it as a primary");
    }
}
