//! A slow region for the lab (netns mode): every TCP connection between a
//! region's nodes and the rest of the lab is carried by a forwarder that
//! holds each chunk of bytes for a fixed time, in each direction.
//!
//! The kernel of these machines has neither netem (tc's delay) nor
//! nfqueue, so the delay is made in user space: a DNAT rule in every
//! namespace sends a connection that crosses the region's border to a
//! forwarder listening on the lab's bridge address, which connects on to
//! the real service. Connections already open across the border are
//! aborted when the delay starts (`ss -K`, which resets them), so that
//! they come back through the forwarders; when it ends, the forwarders'
//! connections are cut and come back direct. Clients in the root namespace
//! (drctl, drc-proxy, the tests) are not delayed.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};

use super::netns::{nft, NetInfo};

/// A listening service of the lab: the region it is in and its address.
pub struct Service {
    pub region: String,
    pub address: SocketAddr,
}

/// A delay in force; dropping it removes the rules first, then cuts every
/// forwarded connection (they come back direct).
pub struct Delay {
    net: NetInfo,
    stop: Arc<AtomicBool>,
    listeners: Vec<SocketAddr>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

const TABLE: &str = "drcdelay";

impl Delay {
    /// Delays every connection between `region` and the rest of `services`
    /// by `one_way` in each direction (a round trip by twice that).
    pub fn start(net: &NetInfo, services: &[Service], region: &str, one_way: Duration) -> anyhow::Result<Delay> {
        let gateway: std::net::IpAddr = net.gateway.parse().with_context(|| format!("the lab's gateway {:?}", net.gateway))?;
        let mut delay = Delay { net: net.clone(), stop: Arc::default(), listeners: Vec::new(), open: Arc::default() };
        // (service, the forwarder standing in for it)
        let mut forwarded = Vec::new();
        for s in services {
            let listener = TcpListener::bind((gateway, 0)).context("a delay forwarder on the lab's bridge")?;
            let local = listener.local_addr()?;
            delay.listeners.push(local);
            let (stop, open, target) = (Arc::clone(&delay.stop), Arc::clone(&delay.open), s.address);
            thread::spawn(move || accept(listener, target, one_way, stop, open));
            forwarded.push((s, local));
        }
        // Reset what is open across the border, so that it reconnects
        // through the forwarders. Only the connections open before the rules
        // (by their local ports): `ss -K` on the addresses alone would also
        // reset the first ones made through the forwarders.
        let outside: Vec<&str> = net.nodes.iter().filter(|n| n.region != region).map(|n| n.address.as_str()).collect();
        let to_dst = any_of(&["dst"], &outside);
        let inside: Vec<&super::netns::NodeNet> = net.nodes.iter().filter(|n| n.region == region).collect();
        let mut open_before = Vec::new();
        for node in &inside {
            let listed = ss(&node.namespace, &[&["-Htn".to_string()], to_dst.as_slice()].concat())?;
            let ports: std::collections::BTreeSet<&str> =
                listed.lines().filter_map(|l| l.split_whitespace().nth(3)?.rsplit_once(':').map(|(_, p)| p)).collect();
            open_before.push(ports.into_iter().map(str::to_string).collect::<Vec<_>>());
        }
        for node in &net.nodes {
            let inside = node.region == region;
            let rules: Vec<String> = forwarded
                .iter()
                .filter(|(s, _)| (s.region == region) != inside)
                .map(|(s, local)| format!("    ip daddr {} tcp dport {} dnat to {local}\n", s.address.ip(), s.address.port()))
                .collect();
            let script = format!(
                "table ip {TABLE} {{\n  chain output {{ type nat hook output priority -100; policy accept;\n{}  }}\n}}\n",
                rules.concat()
            );
            nft(&node.namespace, &script)?;
        }
        for (node, ports) in inside.iter().zip(open_before) {
            if ports.is_empty() {
                continue;
            }
            let ports: Vec<String> = ports.iter().map(|p| format!(":{p}")).collect();
            let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
            let filter = [vec!["-K".to_string()], to_dst.clone(), vec!["and".to_string()], any_of(&["sport", "="], &ports)].concat();
            ss(&node.namespace, &filter)?;
        }
        Ok(delay)
    }
}

impl Drop for Delay {
    fn drop(&mut self) {
        for node in &self.net.nodes {
            let _ = nft(&node.namespace, &format!("delete table ip {TABLE}\n"));
        }
        self.stop.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wakes every accept loop so that it sees `stop`.
        for l in &self.listeners {
            let _ = TcpStream::connect_timeout(l, Duration::from_millis(200));
        }
    }
}

fn accept(listener: TcpListener, target: SocketAddr, one_way: Duration, stop: Arc<AtomicBool>, open: Arc<Mutex<Vec<TcpStream>>>) {
    for client in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        for s in [&client, &upstream] {
            let _ = s.set_nodelay(true);
            if let Ok(c) = s.try_clone() {
                open.lock().unwrap_or_else(|p| p.into_inner()).push(c);
            }
        }
        if let (Ok(c), Ok(u)) = (client.try_clone(), upstream.try_clone()) {
            relay(c, u, one_way);
            relay(upstream, client, one_way);
        }
    }
}

/// Carries `from`'s bytes to `to`, each chunk `delay` after it was read:
/// a reader and a writer thread, so that the link keeps its throughput.
fn relay(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = from.shutdown(Shutdown::Read);
    });
    thread::spawn(move || {
        for (due, bytes) in rx {
            thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&bytes).is_err() {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// An `ss` filter: `( KEY v1 or KEY v2 ... )`.
fn any_of(key: &[&str], values: &[&str]) -> Vec<String> {
    let mut f = vec!["(".to_string()];
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            f.push("or".into());
        }
        f.extend(key.iter().map(|k| k.to_string()));
        f.push(v.to_string());
    }
    f.push(")".into());
    f
}

/// Runs `ss` in `namespace`; its output.
fn ss(namespace: &str, args: &[String]) -> anyhow::Result<String> {
    let out =
        std::process::Command::new("ip").args(["netns", "exec", namespace, "ss"]).args(args).output().context("running ss (iproute2)")?;
    if !out.status.success() {
        return Err(anyhow!("ss in {namespace}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
