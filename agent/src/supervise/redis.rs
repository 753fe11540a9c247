//! A supervised Redis server starts on no TCP port, only on a socket in a
//! directory of its own that the agent talks through: Redis starts as a
//! master whatever it was, with a new replication id. Its port opens once
//! its role is settled: as a replica of the cluster's primary, or as the
//! primary under a new lease. Held, it is down to every client, as a held
//! PostgreSQL is.

use std::path::Path;
use std::time::Duration;

use redis::IntoConnectionInfo as _;

use crate::config::Connection;

/// The arguments that keep a starting server off the network.
pub fn closed_args(conn: &Connection) -> Vec<String> {
    let mut a = vec!["--port".to_string(), "0".to_string()];
    if conn.tls.is_some() {
        a.extend(["--tls-port".to_string(), "0".to_string()]);
    }
    a
}

pub async fn connect(socket: &Path, conn: &Connection) -> Result<redis::aio::MultiplexedConnection, String> {
    let info = redis::ConnectionAddr::Unix(socket.to_path_buf()).into_connection_info().map_err(|e| e.to_string())?;
    let password = conn.password().map_err(|e| e.to_string())?;
    let info = crate::probe::redis::with_credentials(info, conn.user.as_deref(), password.as_deref());
    let client = redis::Client::open(info).map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(3), client.get_multiplexed_async_connection())
        .await
        .map_err(|_| format!("connecting to {} timed out", socket.display()))?
        .map_err(|e| format!("{}: {e}", socket.display()))
}

/// Whether the server answers PING over its socket (not while it loads).
pub async fn answers(socket: &Path, conn: &Connection) -> bool {
    let Ok(mut c) = connect(socket, conn).await else { return false };
    matches!(redis::cmd("PING").query_async::<String>(&mut c).await.as_deref(), Ok("PONG"))
}

/// Whether the server holds any key (loaded from its persistence).
pub async fn holds_data(c: &mut redis::aio::MultiplexedConnection) -> Result<bool, String> {
    let text: String = redis::cmd("INFO").arg("keyspace").query_async(c).await.map_err(|e| e.to_string())?;
    Ok(text.lines().any(|l| l.starts_with("db") && l.contains("keys=")))
}

/// Opens the port the agent's connection names (TLS or not).
pub(super) async fn open_port(c: &mut redis::aio::MultiplexedConnection, conn: &Connection) -> Result<(), String> {
    let key = if conn.tls.is_some() { "tls-port" } else { "port" };
    redis::cmd("CONFIG")
        .arg("SET")
        .arg(key)
        .arg(conn.port)
        .query_async::<redis::Value>(c)
        .await
        .map(|_| ())
        .map_err(|e| format!("CONFIG SET {key} {}: {e}", conn.port))
}
