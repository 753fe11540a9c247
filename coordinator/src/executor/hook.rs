//! The publish step: the operator's hook learns the new endpoint after each
//! promotion, with the decision in `DRC_*` variables.

use std::time::{Duration, Instant};

use drc_model::topology::Topology;
use drc_model::{Decision, StepArgs};

/// The command run after each promotion (empty: none), and its time limit.
#[derive(Clone, Debug, Default)]
pub struct Hook {
    pub command: Vec<String>,
    pub timeout: Duration,
}

impl Hook {
    /// Runs the hook for decision `d`: what it reported (its duration and
    /// the end of its output), or why it failed.
    pub async fn run(&self, d: &Decision, t: &Topology) -> Result<StepArgs, String> {
        let Some((program, rest)) = self.command.split_first() else {
            return Ok(StepArgs::reported([("hook".to_string(), "none configured".to_string())]));
        };
        let decl = t.members.get(&d.to);
        let address = decl.map(|m| m.address.clone()).unwrap_or_default();
        let (host, port) = address.rsplit_once(':').map(|(h, p)| (h.to_string(), p.to_string())).unwrap_or_default();
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(rest)
            .env("DRC_CLUSTER", &d.cluster)
            .env("DRC_EPOCH", d.epoch.to_string())
            .env("DRC_PRIMARY", &d.to)
            .env("DRC_PRIMARY_ADDRESS", &address)
            .env("DRC_PRIMARY_HOST", host)
            .env("DRC_PRIMARY_PORT", port)
            .env("DRC_PRIMARY_REGION", decl.map(|m| m.region.clone()).unwrap_or_default())
            .env("DRC_OLD_PRIMARY", &d.from)
            .env("DRC_DECISION", d.id.to_string())
            .env("DRC_KIND", format!("{:?}", d.kind).to_lowercase())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let start = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, cmd.output()).await;
        let ms = start.elapsed().as_millis().to_string();
        match outcome {
            Ok(Ok(out)) if out.status.success() => {
                Ok(StepArgs::reported([("hook_ms".to_string(), ms), ("hook_output".to_string(), tail(&out.stdout))]))
            }
            Ok(Ok(out)) => Err(format!("hook {program} failed ({}) after {ms} ms: {}", out.status, tail(&out.stderr))),
            Ok(Err(e)) => Err(format!("hook {program} could not start: {e}")),
            Err(_) => Err(format!("hook {program} timed out after {} and was killed", humantime::format_duration(self.timeout))),
        }
    }
}

/// The last 500 bytes of a hook's output, trimmed.
fn tail(b: &[u8]) -> String {
    let text = String::from_utf8_lossy(b);
    let t = text.trim();
    let mut start = t.len().saturating_sub(500);
    while !t.is_char_boundary(start) {
        start += 1;
    }
    t[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn a_hooks_output_is_cut_to_its_last_500_bytes_on_a_character_boundary() {
        // 'é' is two bytes: with an odd prefix, byte 500 from the end falls
        // inside one.
        let text = format!("x{}", "é".repeat(400));
        let cut = tail(text.as_bytes());
        assert!(cut.len() <= 500 && cut.len() >= 498, "{}", cut.len());
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(tail(b"  short \n"), "short");
    }
}
