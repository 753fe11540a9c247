//! HTTP/2 keepalive for every drc connection, server and client side.
//!
//! A frozen process or a link that drops packets keeps a TCP connection open
//! and silent (no FIN, no RST). Every connection therefore pings its peer and
//! drops the connection when the ping is not answered: a silent peer is gone
//! within `INTERVAL + TIMEOUT` (1.5 s), the default lease, so that a stream
//! from a frozen agent, a peer or a coordinator behind a blackholed link does
//! not outlive the lease of the primary it is about.

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

/// A server that pings its clients.
pub fn server() -> Server {
    Server::builder()
        .http2_keepalive_interval(Some(INTERVAL))
        .http2_keepalive_timeout(Some(TIMEOUT))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
}
