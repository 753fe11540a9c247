//! The proxy's HTTP site: `/readyz` (it knows a writable primary) and
//! `/metrics` (the current primary, connections, switches).

use std::fmt;
use std::sync::Arc;

use drc_ops::scrape::{flag, render, Collector, Families};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::Target;

/// What the proxy counts.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub accepted: Counter,
    pub open: Gauge,
    /// Connections not carried, by reason: `no_primary`, `unreachable`.
    pub refused: Family<[(&'static str, &'static str); 1], Counter>,
    /// Connections closed because the primary changed under them.
    pub cut: Counter,
    /// Changes of the target (a new primary, or none during a change).
    pub switches: Counter,
}

impl ProxyStats {
    pub fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&[("reason", reason)]).inc();
    }
}

struct Current {
    target: watch::Receiver<Option<Target>>,
    cluster: String,
}

impl fmt::Debug for Current {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("proxy target")
    }
}

impl Collector for Current {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut f = Families::new(&mut encoder);
        let target = self.target.borrow().clone();
        let cluster = [("cluster", self.cluster.as_str())];
        f.gauge("proxy_has_primary", "1: new connections go to a writable primary", [(&cluster[..], flag(target.is_some()))])?;
        let Some(t) = target else { return Ok(()) };
        f.gauge("proxy_epoch", "The epoch of the primary connections go to", [(&cluster[..], t.epoch as f64)])?;
        let labels = [("cluster", self.cluster.as_str()), ("member", t.member.as_str())];
        f.gauge("proxy_primary", "1 for the member connections go to", [(&labels[..], 1.0)])
    }
}

/// What the proxy's HTTP listener serves.
pub struct ProxySite {
    registry: Registry,
    target: watch::Receiver<Option<Target>>,
}

impl ProxySite {
    pub fn new(stats: &ProxyStats, target: watch::Receiver<Option<Target>>, cluster: &str, security: &drc_tls::Security) -> Self {
        let mut registry = Registry::with_prefix("drc");
        drc_ops::scrape::register_process(&mut registry, security);
        registry.register("proxy_connections_accepted", "Client connections accepted", stats.accepted.clone());
        registry.register("proxy_connections_open", "Client connections being carried", stats.open.clone());
        registry.register("proxy_connections_refused", "Client connections not carried, by reason", stats.refused.clone());
        registry.register("proxy_connections_cut", "Connections closed because the primary changed under them", stats.cut.clone());
        registry.register("proxy_switches", "Changes of where connections go", stats.switches.clone());
        registry.register_collector(Box::new(Current { target: target.clone(), cluster: cluster.to_string() }));
        ProxySite { registry, target }
    }
}

impl drc_ops::http::Site for ProxySite {
    fn ready(&self) -> Result<(), String> {
        match &*self.target.borrow() {
            Some(_) => Ok(()),
            None => Err("no writable primary known: connections are refused".into()),
        }
    }

    fn metrics(&self) -> String {
        render(&self.registry)
    }
}

/// Keeps `open` right however a carried connection ends.
pub struct Carrying(pub Arc<ProxyStats>);

impl Carrying {
    pub fn new(stats: Arc<ProxyStats>) -> Self {
        stats.open.inc();
        Carrying(stats)
    }
}

impl Drop for Carrying {
    fn drop(&mut self) {
        self.0.open.dec();
    }
}
