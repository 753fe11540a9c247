//! What operators and their tools see of every drc process (coordinator,
//! agent, proxy): its log lines ([`log`]), and an HTTP listener ([`http`])
//! with `/healthz`, `/readyz` and Prometheus `/metrics` ([`scrape`]).

pub mod http;
pub mod log;
pub mod scrape;
