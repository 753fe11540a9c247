//! Writing metrics at scrape time: a process's [`Collector`]s read its
//! state when Prometheus asks, through [`Families`], and [`render`] turns a
//! registry into the OpenMetrics text `/metrics` serves.
//!
//! Label values come from the topology (clusters, members, regions) or from
//! closed sets (roles, outcomes, reasons), never from requests, so that the
//! number of series stays bounded.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

pub use prometheus_client::collector::Collector;

/// A metric's labels: (name, value) pairs.
pub type Labels<'a> = [(&'a str, &'a str)];

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bucket counts of a histogram kept outside prometheus-client (in the
/// replicated state, say): `counts[i]` observations were at most
/// `bounds[i]`, and not at most the bound before; `counts` has one more
/// entry than `bounds`, for +Inf.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets<'a> {
    pub bounds: &'a [f64],
    pub counts: &'a [u64],
    pub sum: f64,
}

/// The metric families a collector writes, each once with all its series.
pub struct Families<'a, 'b> {
    encoder: &'b mut DescriptorEncoder<'a>,
}

impl<'a, 'b> Families<'a, 'b> {
    pub fn new(encoder: &'b mut DescriptorEncoder<'a>) -> Self {
        Families { encoder }
    }

    /// A gauge family: one series per item of `series`.
    pub fn gauge<'l>(&mut self, name: &str, help: &str, series: impl IntoIterator<Item = (&'l Labels<'l>, f64)>) -> fmt::Result {
        let mut metric = self.encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in series {
            ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A gauge without labels.
    pub fn gauge1(&mut self, name: &str, help: &str, value: f64) -> fmt::Result {
        self.gauge(name, help, [(&[][..], value)])
    }

    /// A counter family (`name` gains `_total`).
    pub fn counter<'l>(&mut self, name: &str, help: &str, series: impl IntoIterator<Item = (&'l Labels<'l>, u64)>) -> fmt::Result {
        let mut metric = self.encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in series {
            ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A histogram family from bucket counts kept elsewhere.
    pub fn histogram<'l>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (&'l Labels<'l>, Buckets<'l>)>,
    ) -> fmt::Result {
        let mut metric = self.encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, b) in series {
            let bounds = b.bounds.iter().copied().chain([f64::MAX]);
            let buckets: Vec<(f64, u64)> = bounds.zip(b.counts.iter().copied().chain(std::iter::repeat(0))).collect();
            let count = b.counts.iter().sum();
            metric.encode_family(&labels)?.encode_histogram::<prometheus_client::encoding::NoLabelSet>(b.sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

/// What every drc process exports of itself: its wall clock (Prometheus
/// compares it with its own to find drift, which leases must stay within)
/// and when its TLS certificate expires.
struct Process {
    security: drc_tls::Security,
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("process metrics")
    }
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut f = Families::new(&mut encoder);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        f.gauge1("process_time_seconds", "This process's wall clock at the scrape", now)?;
        if let drc_tls::Security::Tls(tls) = &self.security {
            f.gauge1("tls_certificate_expiry_timestamp_seconds", "When this process's TLS certificate expires", tls.not_after() as f64)?;
        }
        Ok(())
    }
}

/// Registers what every process exports of itself (see [`Process`]).
pub fn register_process(registry: &mut Registry, security: &drc_tls::Security) {
    registry.register_collector(Box::new(Process { security: security.clone() }));
}

/// The registry as OpenMetrics text (its collectors run now).
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        // Only a collector's own formatting error gets here.
        tracing::warn!("metrics could not be written: {e}");
        text.clear();
        text.push_str("# EOF\n");
    }
    text
}

/// 1 for true, 0 for false.
pub fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// The index of the bucket `value` falls in, of `bounds` (upper bounds,
/// ascending), `bounds.len()` for +Inf.
pub fn bucket_of(bounds: &[f64], value: f64) -> usize {
    bounds.iter().position(|b| value <= *b).unwrap_or(bounds.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed;

    impl Collector for Fixed {
        fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
            let mut f = Families::new(&mut encoder);
            f.gauge("member_lag_bytes", "Lag.", [(&[("cluster", "pg"), ("member", "pg-b")][..], 42.0)])?;
            f.counter("decisions", "Decisions.", [(&[("kind", "failover")][..], 3)])?;
            f.histogram(
                "decision_seconds",
                "How long.",
                [(&[("kind", "failover")][..], Buckets { bounds: &[1.0, 2.0], counts: &[1, 2, 1], sum: 7.5 })],
            )
        }
    }

    #[test]
    fn collected_families_render_as_openmetrics_with_prefix_total_and_cumulative_buckets() {
        let mut registry = Registry::with_prefix("drc");
        registry.register_collector(Box::new(Fixed));
        let text = render(&registry);
        assert!(text.contains("drc_member_lag_bytes{cluster=\"pg\",member=\"pg-b\"} 42.0"), "{text}");
        assert!(text.contains("drc_decisions_total{kind=\"failover\"} 3"), "{text}");
        assert!(text.contains("drc_decision_seconds_bucket{le=\"2.0\",kind=\"failover\"} 3"), "{text}");
        assert!(text.contains("drc_decision_seconds_bucket{le=\"+Inf\",kind=\"failover\"} 4"), "{text}");
        assert!(text.contains("drc_decision_seconds_count{kind=\"failover\"} 4"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_value_falls_in_the_first_bucket_whose_bound_it_does_not_exceed() {
        let bounds = [0.5, 1.0, 5.0];
        assert_eq!(bucket_of(&bounds, 0.1), 0);
        assert_eq!(bucket_of(&bounds, 1.0), 1);
        assert_eq!(bucket_of(&bounds, 4.0), 2);
        assert_eq!(bucket_of(&bounds, 60.0), 3);
    }
}
