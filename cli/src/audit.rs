//! `drctl audit`: who asked for what, through which coordinator, and what
//! came of it.

use std::time::Duration;

use anyhow::Context as _;
use drc_model::audit::AuditEntry;
use drc_proto::admin_service_client::AdminServiceClient;
use drc_proto::AuditRequest;
use serde_json::json;
use tonic::transport::Channel;

use crate::connect::status_err;

pub(crate) async fn run(
    client: &mut AdminServiceClient<Channel>,
    cluster: Option<String>,
    since: Option<u64>,
    limit: u32,
    json_out: bool,
) -> anyhow::Result<()> {
    let ask = AuditRequest { cluster: cluster.unwrap_or_default(), since_ms: since.unwrap_or(0), limit };
    let r = client.audit(ask).await.map_err(status_err)?.into_inner();
    let entries: serde_json::Value = serde_json::from_str(&r.entries_json).context("the coordinator's audit trail")?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&json!({ "entries": entries }))?);
    } else {
        let entries: Vec<AuditEntry> = serde_json::from_value(entries).context("the coordinator's audit trail")?;
        print!("{}", audit_text(&entries));
    }
    Ok(())
}

fn audit_text(entries: &[AuditEntry]) -> String {
    if entries.is_empty() {
        return "no audited requests\n".to_string();
    }
    let at = |t: u64| humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(t)).to_string();
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let request = e
                .request
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| if k == "sha256" { format!("{k}={}", short(v, 12)) } else { format!("{k}={v}") })
                .collect::<Vec<_>>()
                .join(" ");
            let outcome = e.outcome.to_string();
            let via = if e.via == e.ran_on { e.ran_on.to_string() } else { format!("{} -> {}", e.via, e.ran_on) };
            vec![e.id.to_string(), at(e.at), e.caller.clone(), via, e.action.to_string(), request, short(&outcome, 120)]
        })
        .collect();
    crate::table::render(&["ID", "AT", "CALLER", "NODE", "ACTION", "REQUEST", "OUTCOME"], &rows)
}

/// At most `n` characters of `s` (the whole entry is in `-o json`).
fn short(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
