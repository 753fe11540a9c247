//! How far a long command has got, in words: rate and time left.

use drc_proto::Progress;

/// Bytes per second and seconds left of a progress report (rate 0 and no
/// ETA until something moved; no ETA without a total).
pub fn rate_and_eta(p: &Progress) -> (u64, Option<u64>) {
    let rate = p.bytes_done.saturating_mul(1000).checked_div(p.elapsed_ms).unwrap_or(0);
    let eta = (rate > 0 && p.bytes_total > 0).then(|| p.bytes_total.saturating_sub(p.bytes_done).div_ceil(rate));
    (rate, eta)
}

/// "upload: 120 MiB of ~1024 MiB (11%), 40.0 MiB/s, ETA 23 s".
pub fn describe_progress(p: &Progress) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let (rate, eta) = rate_and_eta(p);
    let mut s = format!("{}: {:.1} MiB", p.phase, mib(p.bytes_done));
    if let Some(pct) = p.bytes_done.saturating_mul(100).checked_div(p.bytes_total) {
        let pct = pct.min(100);
        s += &format!(" of ~{:.1} MiB ({pct}%)", mib(p.bytes_total));
    }
    s += &format!(", {:.1} MiB/s", mib(rate));
    if let Some(eta) = eta {
        s += &format!(", ETA {eta} s");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_as_rate_and_eta() {
        let p = Progress { command_id: 1, phase: "upload".into(), bytes_done: 100 << 20, bytes_total: 400 << 20, elapsed_ms: 10_000 };
        assert_eq!(rate_and_eta(&p), (10_485_760, Some(30)));
        assert_eq!(describe_progress(&p), "upload: 100.0 MiB of ~400.0 MiB (25%), 10.0 MiB/s, ETA 30 s");
        let unknown = Progress { elapsed_ms: 0, bytes_total: 0, ..p };
        assert_eq!(rate_and_eta(&unknown), (0, None));
        assert_eq!(describe_progress(&unknown), "upload: 100.0 MiB, 0.0 MiB/s");
    }
}
