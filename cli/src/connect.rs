//! Reaching a coordinator, and what a failed call says.

use std::time::Duration;

use anyhow::anyhow;
use drc_proto::admin_service_client::AdminServiceClient;
use tonic::transport::{Channel, Endpoint};

pub(crate) fn endpoint_url(e: &str) -> String {
    if e.starts_with("http://") || e.starts_with("https://") {
        e.to_string()
    } else {
        format!("http://{e}")
    }
}

/// Connects to the first reachable coordinator of `endpoints`.
pub async fn connect(endpoints: &[String], timeout: Duration) -> anyhow::Result<AdminServiceClient<Channel>> {
    let mut tried = Vec::new();
    for e in endpoints.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let url = endpoint_url(e);
        let endpoint = match Endpoint::from_shared(url.clone()) {
            Ok(ep) => drc_proto::keepalive::endpoint(ep.connect_timeout(Duration::from_secs(2)).timeout(timeout)),
            Err(err) => {
                tried.push(format!("{e}: invalid address ({err})"));
                continue;
            }
        };
        match endpoint.connect().await {
            Ok(ch) => return Ok(AdminServiceClient::new(ch)),
            Err(err) => tried.push(format!("{url}: {}", root_cause(&err))),
        }
    }
    if tried.is_empty() {
        return Err(anyhow!("no coordinator endpoints given (use --endpoints or DRC_ENDPOINTS)"));
    }
    Err(anyhow!("no coordinator reachable; tried {}", tried.join("; ")))
}

pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

pub(crate) fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow!("{}", s.message())
}
