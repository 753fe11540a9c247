//! HTTP/2 keepalive for every drc connection, server and client side.
//!
//! A frozen process or a link that drops packets keeps a TCP connection open
//! and silent (no FIN, no RST). Every client therefore pings its server and
//! drops the connection when the ping is not answered: a silent server is
//! gone within `INTERVAL + TIMEOUT` (1.5 s), the default lease, so that an
//! agent, a peer or drctl behind a blackholed link or talking to a frozen
//! coordinator moves on in time.
//!
//! Servers ping only to reclaim connections nobody answers on, slowly: a
//! client's silence is already bounded by what it sends (a coordinator counts
//! an agent as gone once its newest sample is older than the lease, whatever
//! its stream says, and a reconnecting agent's new session replaces the old
//! one). At 10,000 agents, pings from both ends were most of the leader's work.

use std::time::Duration;

use tonic::transport::{Endpoint, Server};

/// How often an idle connection is pinged.
pub const INTERVAL: Duration = Duration::from_millis(500);
/// How long a ping may go unanswered before the connection is dropped.
pub const TIMEOUT: Duration = Duration::from_millis(1000);

/// A client endpoint that pings its server, also while idle.
pub fn endpoint(e: Endpoint) -> Endpoint {
    e.http2_keep_alive_interval(INTERVAL).keep_alive_timeout(TIMEOUT).keep_alive_while_idle(true)
}

/// Streams one client connection may have open at once: many agents may
/// share a connection through a proxy, but one client cannot open streams
/// without bound.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// How long a server waits on a connection it has read nothing from before
/// it pings, and then for the answer, before it drops the connection.
pub const SERVER_INTERVAL: Duration = Duration::from_secs(5);
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(5);

/// A server that reclaims connections whose client went silent.
pub fn server() -> Server {
    Server::builder()
        .http2_keepalive_interval(Some(SERVER_INTERVAL))
        .http2_keepalive_timeout(Some(SERVER_TIMEOUT))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
}
