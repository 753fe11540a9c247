//! A real Prometheus (Debian's) that scrapes every coordinator, agent and
//! proxy of the lab over TLS, with drc's recording and alerting rules
//! (`deploy/prometheus/drc.rules.yml`), once a second.

use std::fs;
use std::process::Command;
use std::time::Duration;

use anyhow::anyhow;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::process::spawn_detached;
use super::LabInfo;
use crate::{free_port, wait_for};

/// drc's rules, as shipped.
pub const RULES: &str = include_str!("../../../deploy/prometheus/drc.rules.yml");

/// The lab's Prometheus in `lab.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrometheusInfo {
    /// Base URL of its web UI and HTTP API, e.g. `http://127.0.0.1:9090`.
    pub url: String,
    pub pid: u32,
    pub config: std::path::PathBuf,
    pub log: std::path::PathBuf,
}

/// Debian's package name and binary, checked before the lab starts it.
pub fn check_installed() -> anyhow::Result<()> {
    Command::new("prometheus")
        .arg("--version")
        .output()
        .map_err(|e| anyhow!("prometheus not found ({e}); install Debian's `prometheus` package (scripts/lib/install.sh does)"))?;
    Ok(())
}

/// One scrape job: its name and targets (host:port).
fn job(name: &str, targets: &[String], info: &LabInfo) -> String {
    let targets = targets.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
    let tls = match &info.tls {
        Some(t) => format!(
            "    scheme: https\n    tls_config:\n      ca_file: {:?}\n      cert_file: {:?}\n      key_file: {:?}\n",
            t.viewer.ca.display().to_string(),
            t.viewer.cert.display().to_string(),
            t.viewer.key.display().to_string()
        ),
        None => String::new(),
    };
    format!("  - job_name: {name}\n{tls}    static_configs:\n      - targets: [{targets}]\n")
}

/// Writes the configuration and rules and starts Prometheus; returns once
/// it has scraped every target.
pub fn start(info: &LabInfo) -> anyhow::Result<PrometheusInfo> {
    check_installed()?;
    let dir = info.dir.join("prometheus");
    fs::create_dir_all(&dir)?;
    let rules = dir.join("drc.rules.yml");
    fs::write(&rules, RULES)?;
    let coordinators: Vec<String> = info.coordinators.iter().map(|c| c.http_endpoint.clone()).collect();
    let agents: Vec<String> = info.members.iter().map(|m| m.agent_http_endpoint.clone()).collect();
    let proxies: Vec<String> = info.forwarders.iter().map(|f| f.http_endpoint.clone()).collect();
    let config = dir.join("prometheus.yml");
    let text = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {:?}\nscrape_configs:\n{}{}{}",
        rules.display().to_string(),
        job("drc-coordinator", &coordinators, info),
        job("drc-agent", &agents, info),
        job("drc-proxy", &proxies, info)
    );
    fs::write(&config, text)?;
    let port = free_port();
    let log = info.dir.join("prometheus.log");
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--storage.tsdb.retention.time=1d");
    let pid = spawn_detached(&mut cmd, &log)?;
    let p = PrometheusInfo { url: format!("http://127.0.0.1:{port}"), pid, config, log };
    let targets = coordinators.len() + agents.len() + proxies.len();
    wait_for("Prometheus to scrape every target", Duration::from_secs(30), || {
        let up = query(&p, "up == 1").ok()?;
        (up.as_array()?.len() == targets).then_some(())
    })
    .map_err(|e| anyhow!("{e}; see {}", p.log.display()))?;
    Ok(p)
}

/// Runs an instant query through Prometheus's HTTP API: the result vector.
pub fn query(p: &PrometheusInfo, promql: &str) -> anyhow::Result<Value> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--get", "--data-urlencode"])
        .arg(format!("query={promql}"))
        .arg(format!("{}/api/v1/query", p.url))
        .output()?;
    anyhow::ensure!(out.status.success(), "query {promql}: {}", String::from_utf8_lossy(&out.stderr).trim());
    let v: Value = serde_json::from_slice(&out.stdout)?;
    if v["status"] != "success" {
        anyhow::bail!("query {promql}: {}", v["error"]);
    }
    Ok(v["data"]["result"].clone())
}

/// The value of the first series an instant query returns.
pub fn value(p: &PrometheusInfo, promql: &str) -> Option<f64> {
    query(p, promql).ok()?.as_array()?.first()?["value"][1].as_str()?.parse().ok()
}

/// Every rule Prometheus loaded that has not evaluated cleanly: its name
/// and error (empty once every rule ran without error).
pub fn unhealthy_rules(p: &PrometheusInfo) -> anyhow::Result<Vec<String>> {
    let out = Command::new("curl").args(["-sS", "--max-time", "10"]).arg(format!("{}/api/v1/rules", p.url)).output()?;
    anyhow::ensure!(out.status.success(), "rules: {}", String::from_utf8_lossy(&out.stderr).trim());
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let groups = v["data"]["groups"].as_array().ok_or_else(|| anyhow!("no rule groups: {v}"))?;
    let rules: Vec<&Value> = groups.iter().flat_map(|g| g["rules"].as_array().into_iter().flatten()).collect();
    anyhow::ensure!(!rules.is_empty(), "Prometheus loaded no rule");
    Ok(rules.iter().filter(|r| r["health"] != "ok").map(|r| format!("{} ({}): {}", r["name"], r["health"], r["lastError"])).collect())
}
