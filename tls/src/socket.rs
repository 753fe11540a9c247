//! What the kernel does about a silent link, on every drc connection.
//!
//! Data that TCP cannot get acknowledged for `UNACKED_LIMIT` (a blackholed
//! link, one direction cut, a host that froze or vanished) ends the
//! connection, without a packet of drc's own: agents send a sample every
//! probe interval, so their connections always have data in flight. Only a
//! hung *process*, whose kernel still acknowledges, needs HTTP/2 pings
//! (`drc_proto::keepalive`).

use std::time::Duration;

use tokio::net::TcpStream;

/// How long sent data may stay unacknowledged: the 1.5 s lease, the same
/// bound the pings give.
pub const UNACKED_LIMIT: Duration = Duration::from_millis(1500);

/// No Nagle delay, and [`UNACKED_LIMIT`]. Best effort: a socket that refuses
/// an option still works, with the pings as its only bound.
pub fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(UNACKED_LIMIT)) {
        tracing::debug!("TCP_USER_TIMEOUT not set: {e}");
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_tuned_socket_carries_the_unacknowledged_data_limit() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        super::tune(&tcp);
        let sock = socket2::SockRef::from(&tcp);
        assert_eq!(sock.tcp_user_timeout().expect("read"), Some(super::UNACKED_LIMIT));
        assert!(sock.tcp_nodelay().expect("read"));
    }
}
