//! HTTP/2 keepalive for every drc connection, server and client side.
//!
//! A frozen process or a link that drops packets keeps a TCP connection open
//! and silent (no FIN, no RST). Data TCP cannot get acknowledged ends a
//! connection within 1.5 s, the default lease (`drc_tls::socket`): that
//! covers a blackholed link, a cut direction and a frozen host for every
//! connection with data in flight. Pings cover the rest: an idle connection,
//! and a hung process whose kernel still acknowledges. Clients ping their
//! server after `INTERVAL` without a read and drop it when the ping is not
//! answered within `TIMEOUT`.
//!
//! Agents ping less ([`agent_endpoint`]): they send a sample every probe
//! interval, so TCP bounds their links, and at 10,000 agents pings were most
//! of the leader's work. Servers ping only to reclaim connections nobody
//! answers on, slowly: a coordinator counts an agent as gone once its newest
//! sample is older than the lease, whatever its stream says, and a
//! reconnecting agent's new session replaces the old one.

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

/// How long an agent waits without a read before it pings: a hung
/// coordinator process is left within `AGENT_INTERVAL + TIMEOUT` (3 s).
pub const AGENT_INTERVAL: Duration = Duration::from_secs(2);

/// An agent's endpoint (see the module doc).
pub fn agent_endpoint(e: Endpoint) -> Endpoint {
    e.http2_keep_alive_interval(AGENT_INTERVAL).keep_alive_timeout(TIMEOUT).keep_alive_while_idle(true)
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
