//! What the kernel does about a silent link, on every drc connection:
//! how a connection is set up ([`connect`]) and how it is kept ([`tune`]).
//!
//! Data that TCP cannot get acknowledged for `UNACKED_LIMIT` (a blackholed
//! link, one direction cut, a host that froze or vanished) ends the
//! connection, without a packet of drc's own: agents send a sample every
//! probe interval, so their connections always have data in flight. Only a
//! hung *process*, whose kernel still acknowledges, needs HTTP/2 pings
//! (`drc_proto::keepalive`).
//!
//! drc's streams are thin (a sample, a lease, a Raft heartbeat: a packet or
//! two in flight), so a lost packet is found by the retransmission timer
//! alone, which doubles at every loss. On a link that drops everything for
//! 200 ms every 500 ms, the retransmissions of one unlucky segment then all
//! fall into down phases (at ~0.2, 0.6, 1.4 s) and `UNACKED_LIMIT` ends a
//! connection the link would have carried. `TCP_THIN_LINEAR_TIMEOUTS`
//! keeps the first six retransmissions of a thin stream one RTO apart,
//! as Linux does for interactive traffic that asks for it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpStream, ToSocketAddrs};

/// How long sent data may stay unacknowledged: the 1.5 s lease, the same
/// bound the pings give.
pub const UNACKED_LIMIT: Duration = Duration::from_millis(1500);

/// While no attempt has connected, a new one starts this often (RFC 8305's
/// connection attempt delay): Linux resends a lost SYN only after 1 s, so a
/// link that drops packets for a moment would cost a whole second, or a
/// stream's whole set-up time, per connection.
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);
/// At most this many attempts race (then the kernel's own SYN retries).
const MAX_ATTEMPTS: usize = 4;

/// A TCP connection to `addr`: the first of staggered attempts, to each of
/// its addresses in turn. An attempt that fails (a reset, no route) is an
/// answer, not silence: the next address not yet tried is tried at once,
/// and once every address has been tried and every attempt has failed, so
/// has the connection. Not tuned: drc's own connections add [`tune`].
pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
    let Some(&first) = addrs.first() else {
        return Err(io::Error::new(io::ErrorKind::NotFound, "the name has no address"));
    };
    let limit = MAX_ATTEMPTS.max(addrs.len());
    let mut attempts = tokio::task::JoinSet::new();
    attempts.spawn(TcpStream::connect(first));
    let mut started = 1;
    loop {
        tokio::select! {
            Some(done) = attempts.join_next() => match done.map_err(io::Error::other)? {
                Ok(tcp) => return Ok(tcp),
                Err(_) if started < addrs.len() => {
                    attempts.spawn(TcpStream::connect(addrs[started]));
                    started += 1;
                }
                Err(e) if attempts.is_empty() => return Err(e),
                // Another attempt may still connect.
                Err(_) => {}
            },
            _ = tokio::time::sleep(ATTEMPT_DELAY), if started < limit => {
                attempts.spawn(TcpStream::connect(addrs[started % addrs.len()]));
                started += 1;
            }
            else => return Err(io::Error::other("no connection attempt left")),
        }
    }
}

/// No Nagle delay, [`UNACKED_LIMIT`] and linear retransmission timeouts
/// for thin streams. Best effort: a socket that refuses an option still
/// works, with the pings as its only bound.
pub fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let sock = socket2::SockRef::from(tcp);
    if let Err(e) = sock.set_tcp_user_timeout(Some(UNACKED_LIMIT)) {
        tracing::debug!("TCP_USER_TIMEOUT not set: {e}");
    }
    if let Err(e) = sock.set_tcp_thin_linear_timeouts(true) {
        tracing::debug!("TCP_THIN_LINEAR_TIMEOUTS not set: {e}");
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
        assert!(sock.tcp_thin_linear_timeouts().expect("read"));
    }

    #[tokio::test]
    async fn connect_reaches_a_listener_and_reports_a_refusal_as_it_comes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tcp = super::connect(addr).await.expect("connect");
        assert_eq!(tcp.peer_addr().expect("peer"), addr);
        drop(listener);
        let e = super::connect(addr).await.expect_err("nothing listens");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn an_address_that_refuses_is_followed_at_once_by_the_next_one() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let open = listener.local_addr().expect("addr");
        let tcp = super::connect(&[closed, open][..]).await.expect("the second address answers");
        assert_eq!(tcp.peer_addr().expect("peer"), open);
    }
}
