//! Wall-clock time as drc replicates and shows it.
//!
//! Deadlines kept only in one process's memory use `std::time::Instant`
//! (monotonic); wall time is for what is replicated through Raft, sent to
//! another process, or shown to a human.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// Now on this machine's wall clock (0 before 1970, which no real clock shows).
pub fn wall_now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
