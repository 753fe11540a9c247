//! A writer through a stable endpoint, as an application is: what it got
//! acknowledged, and which of that a member still holds.

use std::time::{Duration, Instant};

use super::postgres::{psql, psql_at};
use crate::wait_for;

/// How long a writer waits for progress.
const LONG: Duration = Duration::from_secs(90);

/// Inserts increasing ids into table `acked` through `forwarder_port` until
/// `stop`; the ids acknowledged and the longest gap between two.
pub fn writer(forwarder_port: u16, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<(Vec<u32>, Duration)> {
    std::thread::spawn(move || {
        let (mut acked, mut gap, mut last) = (Vec::new(), Duration::ZERO, Instant::now());
        let mut id = 0u32;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            id += 1;
            if psql(forwarder_port, &format!("INSERT INTO acked VALUES ({id})")).is_ok() {
                acked.push(id);
                gap = gap.max(last.elapsed());
                last = Instant::now();
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        (acked, gap)
    })
}

/// Waits until table `acked` on `port` holds more than `n` rows (the
/// writer is making progress there) and returns how many it holds.
pub fn writes_beyond(port: u16, n: u64) -> u64 {
    writes_beyond_at("127.0.0.1", port, n)
}

/// [`writes_beyond`] on a member at `host`.
pub fn writes_beyond_at(host: &str, port: u16, n: u64) -> u64 {
    wait_for(&format!("more than {n} writes on {host}:{port}"), LONG, || {
        psql_at(host, port, "SELECT count(*) FROM acked").ok()?.parse::<u64>().ok().filter(|c| *c > n)
    })
    .expect("the writer makes progress")
}

/// What a writer got acknowledged, and which of it `port` still holds.
pub struct Written {
    pub acked: Vec<u32>,
    /// The longest gap between two acknowledgements.
    pub gap: Duration,
    pub present: std::collections::BTreeSet<u32>,
    pub lost: Vec<u32>,
}

/// Stops the writer and reads back what it wrote from `port`.
pub fn stop_writer(stop: &std::sync::atomic::AtomicBool, w: std::thread::JoinHandle<(Vec<u32>, Duration)>, port: u16) -> Written {
    stop_writer_at(stop, w, "127.0.0.1", port)
}

/// [`stop_writer`], reading back from a member at `host`.
pub fn stop_writer_at(
    stop: &std::sync::atomic::AtomicBool,
    w: std::thread::JoinHandle<(Vec<u32>, Duration)>,
    host: &str,
    port: u16,
) -> Written {
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (acked, gap) = w.join().expect("writer");
    let present: std::collections::BTreeSet<u32> =
        psql_at(host, port, "SELECT id FROM acked").expect("ids").lines().filter_map(|l| l.parse().ok()).collect();
    let lost = acked.iter().copied().filter(|id| !present.contains(id)).collect();
    Written { acked, gap, present, lost }
}
