//! What a lab leaves behind for a reader: its logs kept on request, and on
//! a failure the status, the decision history and every process's warnings.

use std::fs;
use std::path::Path;

use super::Lab;

impl Lab {
    /// With `DRC_TEST_KEEP_LOGS=DIR`, copies every log of the lab into a
    /// new directory under DIR (each lab, passed or failed, on drop).
    pub fn keep_logs(&self) {
        let Ok(keep) = std::env::var("DRC_TEST_KEEP_LOGS") else { return };
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let to = Path::new(&keep).join(format!("lab-{stamp}-{}", std::process::id()));
        let copied = fs::create_dir_all(&to).and_then(|_| {
            for e in fs::read_dir(&self.info.dir)?.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    fs::copy(e.path(), to.join(e.file_name()))?;
                }
            }
            Ok(())
        });
        eprintln!("lab logs copied to {}: {copied:?}", to.display());
    }

    /// What a failed test leaves behind: the lab's status and history, and
    /// the warnings and errors of every drc process, to stderr.
    pub fn report_failure(&self) {
        let status = self.status().map(|v| v.to_string()).unwrap_or_else(|e| format!("(no status: {e:#})"));
        eprintln!("===== lab status at the failure =====\n{status}");
        match self.drctl_json(&["history"]) {
            Ok(h) => {
                for d in h["decisions"].as_array().into_iter().flatten() {
                    let steps: Vec<String> = d["steps"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|s| format!("{} {} {} {}", s["action"], s["member"], s["state"], s["error"]).replace('"', ""))
                        .collect();
                    eprintln!(
                        "decision {} {} {} {}->{} epoch {} decided_at {} finished_at {} outcome {}: {}\n  steps: {}",
                        d["id"],
                        d["cluster"],
                        d["kind"],
                        d["from"],
                        d["to"],
                        d["epoch"],
                        d["decided_at"],
                        d["finished_at"],
                        d["outcome"],
                        d["reason"],
                        steps.join("; ")
                    );
                }
            }
            Err(e) => eprintln!("(no history: {e:#})"),
        }
        let mut logs: Vec<(String, &Path)> =
            self.info.coordinators.iter().map(|c| (format!("coordinator {}", c.id), c.log.as_path())).collect();
        logs.extend(self.info.members.iter().map(|m| (format!("agent {}", m.id), m.agent_log.as_path())));
        logs.extend(self.info.forwarders.iter().map(|f| (format!("forwarder {}", f.cluster), f.log.as_path())));
        for (name, path) in logs {
            let text = fs::read_to_string(path).unwrap_or_default();
            let plain = strip_ansi(&text);
            let notable: Vec<&str> = plain.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
            let tail = &notable[notable.len().saturating_sub(12)..];
            eprintln!("===== {name}: last {} of {} warnings and errors =====\n{}", tail.len(), notable.len(), tail.join("\n"));
        }
    }
}

/// `text` without ANSI colour sequences.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
