//! `drctl failover`, `switchover`, `failover-region`, `pause`, `resume`,
//! `clear-block` and `history`.

use std::time::Duration;

use anyhow::Context as _;
use drc_model::{Decision, DecisionKind, Trigger};

use drc_proto::admin_service_client::AdminServiceClient;
use drc_proto::*;
use serde_json::json;
use tonic::transport::Channel;

use crate::args::Command;
use crate::connect::status_err;

/// Runs the commands of this group.
pub(crate) async fn run(client: &mut AdminServiceClient<Channel>, command: Command, json_out: bool) -> anyhow::Result<()> {
    match command {
        Command::Failover { cluster, to, force } => {
            let r = client.failover(FailoverRequest { cluster, to: to.unwrap_or_default(), force }).await.map_err(status_err)?.into_inner();
            decision_out(&r, json_out)?;
        }
        Command::FailoverRegion { from, to, force } => {
            let r = client
                .failover_region(FailoverRegionRequest { from, to: to.unwrap_or_default(), force })
                .await
                .map_err(status_err)?
                .into_inner();
            if json_out {
                let v = json!({"decisions": r.decisions.iter().map(decision_json).collect::<Vec<_>>(), "refused": r.refused});
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for d in &r.decisions {
                    println!("{}: decision {} (epoch {}): {} -> {}\n  {}", d.cluster, d.decision_id, d.epoch, d.from, d.to, d.reason);
                }
                for why in &r.refused {
                    println!("left in place: {why}");
                }
            }
            if r.decisions.is_empty() {
                anyhow::bail!("no primary was moved");
            }
        }
        Command::Switchover { cluster, to } => {
            let r = client.switchover(SwitchoverRequest { cluster, to: to.unwrap_or_default() }).await.map_err(status_err)?.into_inner();
            decision_out(&r, json_out)?;
        }
        Command::Pause { cluster } => {
            let r =
                client.pause(PauseRequest { cluster: cluster.unwrap_or_default(), paused: true }).await.map_err(status_err)?.into_inner();
            message_out(&r.message, json_out)?;
        }
        Command::Resume { cluster } => {
            let r =
                client.pause(PauseRequest { cluster: cluster.unwrap_or_default(), paused: false }).await.map_err(status_err)?.into_inner();
            message_out(&r.message, json_out)?;
        }
        Command::ClearBlock { cluster } => {
            let r = client.clear_block(ClearBlockRequest { cluster }).await.map_err(status_err)?.into_inner();
            message_out(&r.message, json_out)?;
        }
        Command::History { cluster } => {
            let r = client.history(HistoryRequest { cluster: cluster.unwrap_or_default() }).await.map_err(status_err)?.into_inner();
            let decisions: serde_json::Value = serde_json::from_str(&r.decisions_json)?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&json!({ "decisions": decisions }))?);
            } else {
                let decisions: Vec<Decision> = serde_json::from_value(decisions).context("the coordinator's history")?;
                print!("{}", history_text(&decisions));
            }
        }
        other => return Err(anyhow::anyhow!("{other:?} is not handled here")),
    }
    Ok(())
}

pub(crate) fn decision_json(r: &DecisionReply) -> serde_json::Value {
    json!({"decision_id": r.decision_id, "epoch": r.epoch, "from": r.from, "to": r.to, "reason": r.reason, "cluster": r.cluster})
}

pub(crate) fn decision_out(r: &DecisionReply, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(&decision_json(r))?);
    } else {
        println!("decision {} (epoch {}): {} -> {}\n{}", r.decision_id, r.epoch, r.from, r.to, r.reason);
        println!("follow it with: drctl history --cluster ... or drctl watch");
    }
    Ok(())
}

pub(crate) fn message_out(message: &str, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(&json!({ "message": message }))?);
    } else {
        println!("{message}");
    }
    Ok(())
}

pub(crate) fn history_text(decisions: &[Decision]) -> String {
    let at = |t: u64| humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(t)).to_string();
    let mut out = String::new();
    if decisions.is_empty() {
        out.push_str("no decisions yet\n");
    }
    for d in decisions {
        let kind = match d.kind {
            DecisionKind::Failover => "failover",
            DecisionKind::Switchover => "switchover",
        };
        let trigger = match &d.trigger {
            Trigger::Automatic => "automatic",
            Trigger::Operator { .. } => "operator",
            Trigger::Group { .. } => "group",
        };
        out.push_str(&format!(
            "decision {} {} {kind} epoch {}: {} -> {} ({trigger}) at {}\n  why: {}\n",
            d.id,
            d.cluster,
            d.epoch,
            d.from,
            d.to,
            at(d.decided_at),
            d.reason,
        ));
        for s in &d.steps {
            let took = s.finished.saturating_sub(s.started);
            let err = Some(&s.error).filter(|e| !e.is_empty()).map(|e| format!(" ({e})")).unwrap_or_default();
            let state = format!("{:?}", s.state).to_lowercase();
            out.push_str(&format!("  - {:<9} {:<12} {state:<8} {took} ms{err}\n", s.action.as_str(), s.member));
        }
        if !d.outcome.is_empty() {
            out.push_str(&format!("  outcome: {}\n", d.outcome));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_reads_as_one_line_per_decision_and_per_step() {
        let stored = r#"[{"id":1,"cluster":"app-pg","kind":"failover","trigger":{"by":"automatic"},"epoch":2,"from":"pg-a","to":"pg-b",
            "reason":"primary pg-a down","evidence":[],"detected_at":1000,"decided_at":1000,"finished_at":2000,"outcome":"done",
            "steps":[{"action":"fence","member":"pg-a","state":"skipped","started":1000,"finished":1650,"error":"unreachable; its lease has expired",
                      "args":{"lease_ends_at":"1650"}},
                     {"action":"promote","member":"pg-b","state":"done","started":1650,"finished":1700}]}]"#;
        let decisions: Vec<Decision> = serde_json::from_str(stored).expect("a stored history decodes");
        let text = history_text(&decisions);
        assert!(text.starts_with("decision 1 app-pg failover epoch 2: pg-a -> pg-b (automatic) at 1970-01-01T00:00:01.000Z\n"), "{text}");
        assert!(text.contains("  - fence     pg-a         skipped  650 ms (unreachable; its lease has expired)\n"), "{text}");
        assert!(text.contains("  - promote   pg-b         done     50 ms\n"), "{text}");
        assert!(text.ends_with("  outcome: done\n"), "{text}");
        assert_eq!(history_text(&[]), "no decisions yet\n");
    }
}
