//! Reaching a coordinator, and what a failed call says.

use std::time::Duration;

use anyhow::anyhow;
use drc_proto::admin_service_client::AdminServiceClient;
use drc_tls::{root_cause, Security};
use tonic::transport::Channel;

/// Connects to the first reachable coordinator of `endpoints`.
pub async fn connect(endpoints: &[String], timeout: Duration, security: &Security) -> anyhow::Result<AdminServiceClient<Channel>> {
    let mut tried = Vec::new();
    for e in endpoints.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let url = e;
        let endpoint = match Security::endpoint(e) {
            Ok(ep) => drc_proto::keepalive::endpoint(ep.connect_timeout(Duration::from_secs(2)).timeout(timeout)),
            Err(err) => {
                tried.push(format!("{e}: invalid address ({err})"));
                continue;
            }
        };
        match security.connect(endpoint).await {
            Ok(ch) => return Ok(AdminServiceClient::new(ch)),
            Err(err) => tried.push(format!("{url}: {}", root_cause(&err))),
        }
    }
    if tried.is_empty() {
        return Err(anyhow!("no coordinator endpoints given (use --endpoints or DRC_ENDPOINTS)"));
    }
    Err(anyhow!("no coordinator reachable; tried {}", tried.join("; ")))
}

/// What a failed call says: the status message, and for a broken
/// connection its innermost cause (a TLS alert, say), which the message
/// ("transport error") hides.
pub(crate) fn status_err(s: tonic::Status) -> anyhow::Error {
    match std::error::Error::source(&s).map(root_cause) {
        Some(cause) if !cause.is_empty() && !s.message().contains(&cause) => anyhow!("{}: {cause}", s.message()),
        _ => anyhow!("{}", s.message()),
    }
}
