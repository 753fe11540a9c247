//! What operators and their tools see of a running lab: health endpoints
//! and Prometheus metrics on every coordinator, agent and proxy, gRPC
//! health and reflection, JSON log lines that name the decision, drc's
//! alerting rules and Grafana dashboard against a real Prometheus.

use std::time::Duration;

use drc_tests::http::{get, sample, Asker};
use std::collections::BTreeSet;

use drc_tests::lab::prometheus::{query, unhealthy_rules, value};
use drc_tests::lab::{Lab, LabOptions, PG_CLUSTER, REDIS_CLUSTER};
use drc_tests::wait_for;
use drc_tls::Security;

const LONG: Duration = Duration::from_secs(60);

/// The drc metric and recording-rule names a PromQL expression uses.
fn metric_names(promql: &str) -> Vec<String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut rest = promql;
    while let Some(at) = rest.find("drc") {
        let before = rest[..at].chars().last();
        let tail = &rest[at..];
        let len = tail.find(|c: char| !word(c)).unwrap_or(tail.len());
        let token = &tail[..len];
        if before.is_none_or(|c| !word(c)) && (token.starts_with("drc_") || token.starts_with("drc:")) {
            names.push(token.to_string());
        }
        rest = &tail[len.max(1)..];
    }
    names
}

fn metrics(endpoint: &str, asker: &Asker) -> Option<String> {
    get(endpoint, "/metrics", asker).ok().filter(|(code, _)| *code == 200).map(|(_, body)| body)
}

#[test]
fn every_component_serves_health_and_metrics_and_a_failover_moves_the_counters() {
    let dir = tempfile::Builder::new().prefix("drc-observe-test-").tempdir().expect("tempdir");
    let lab = Lab::up_with(dir.path(), LabOptions { json_logs: true, prometheus: true, ..Default::default() }).expect("lab up");
    let prom = lab.info.prometheus.clone().expect("the lab's Prometheus");
    let tls = lab.info.tls.clone().expect("the lab has TLS");
    let viewer = Asker::As(&tls.viewer);
    let probe = Asker::Anonymous { ca: &tls.ca };
    let pg_a = lab.member("pg-a").expect("pg-a").clone();
    let agent_cert = pg_a.agent_tls.clone().expect("agent certificate");

    // Health answers a probe without a certificate; metrics need a role
    // that reads the state.
    for c in &lab.info.coordinators {
        assert_eq!(get(&c.http_endpoint, "/healthz", &probe).expect("healthz"), (200, "ok\n".into()));
        wait_for("every coordinator ready", LONG, || (get(&c.http_endpoint, "/readyz", &probe).ok()?.0 == 200).then_some(()))
            .expect("ready");
        let (code, body) = get(&c.http_endpoint, "/metrics", &probe).expect("metrics without a certificate");
        assert_eq!(code, 401, "{body}");
        let (code, body) = get(&c.http_endpoint, "/metrics", &Asker::As(&agent_cert)).expect("metrics as an agent");
        assert_eq!(code, 403, "{body}");
        let text = metrics(&c.http_endpoint, &viewer).expect("metrics as a viewer");
        assert!(sample(&text, "drc_raft_term", &[]).is_some_and(|t| t >= 1.0), "{text}");
        assert_eq!(sample(&text, "drc_cluster_primary", &[("cluster", PG_CLUSTER), ("member", "pg-a")]), Some(1.0), "{text}");
    }

    // The leader's view of every member, as drctl status shows it.
    let leader = wait_for("the leader to export every member healthy", LONG, || {
        lab.info.coordinators.iter().find_map(|c| {
            let text = metrics(&c.http_endpoint, &viewer)?;
            let healthy = ["pg-a", "pg-b", "pg-c", "redis-a", "redis-b", "redis-c"]
                .iter()
                .all(|m| sample(&text, "drc_member_healthy", &[("member", m)]) == Some(1.0));
            (sample(&text, "drc_raft_is_leader", &[]) == Some(1.0) && healthy).then(|| c.clone())
        })
    })
    .expect("leader metrics");
    let text = metrics(&leader.http_endpoint, &viewer).expect("leader metrics");
    assert_eq!(sample(&text, "drc_member_role", &[("member", "pg-a"), ("role", "primary")]), Some(1.0), "{text}");
    assert_eq!(sample(&text, "drc_member_role", &[("member", "pg-b"), ("role", "replica")]), Some(1.0), "{text}");
    assert!(sample(&text, "drc_member_lag_bytes", &[("member", "pg-c")]).is_some(), "{text}");
    assert_eq!(sample(&text, "drc_agent_streams", &[]), Some(6.0), "{text}");
    assert!(sample(&text, "drc_failover_waiting", &[("cluster", PG_CLUSTER)]).is_none(), "a healthy cluster waits for nothing: {text}");

    // An agent: ready once its stream is up, with what it sampled.
    let (code, _) = get(&pg_a.agent_http_endpoint, "/readyz", &probe).expect("agent readyz");
    assert_eq!(code, 200);
    let text = metrics(&pg_a.agent_http_endpoint, &viewer).expect("agent metrics");
    assert_eq!(sample(&text, "drc_agent_connected", &[]), Some(1.0), "{text}");
    assert_eq!(sample(&text, "drc_member_role", &[("member", "pg-a"), ("role", "primary")]), Some(1.0), "{text}");
    assert!(sample(&text, "drc_agent_samples_total", &[]).is_some_and(|n| n >= 1.0), "{text}");

    // The proxy: ready once it knows the primary.
    let proxy = lab.info.forwarders.iter().find(|f| f.cluster == PG_CLUSTER).expect("forwarder").clone();
    assert_eq!(get(&proxy.http_endpoint, "/readyz", &probe).expect("proxy readyz").0, 200);
    let text = metrics(&proxy.http_endpoint, &viewer).expect("proxy metrics");
    assert_eq!(sample(&text, "drc_proxy_primary", &[("member", "pg-a")]), Some(1.0), "{text}");

    // gRPC health and reflection with nothing but a certificate.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let security = Security::new(Some(tls.viewer.clone()), false).expect("viewer");
        let channel = security.connect(Security::endpoint(&leader.endpoint).expect("endpoint")).await.expect("connect");
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let r = health.check(tonic_health::pb::HealthCheckRequest { service: "drc.v1.AdminService".into() }).await.expect("health check");
        assert_eq!(r.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
        use tonic_reflection::pb::v1::{server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest};
        use tonic_reflection::pb::v1::{server_reflection_response::MessageResponse, ServerReflectionRequest};
        let ask = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
        let mut answers =
            ServerReflectionClient::new(channel).server_reflection_info(tokio_stream::iter([ask])).await.expect("reflection").into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) = answers.message().await.expect("answer").and_then(|a| a.message_response)
        else {
            panic!("no list of services")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for name in ["drc.v1.AdminService", "drc.v1.AgentService", "grpc.health.v1.Health"] {
            assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
        }
    });

    // A failover (an operator's, forced past the healthy primary) moves the
    // counters on every coordinator and the proxy.
    let out = lab.drctl_json(&["failover", "--cluster", PG_CLUSTER, "--to", "pg-b", "--force"]).expect("failover");
    let id = out["decision_id"].as_u64().expect("decision id");
    for c in &lab.info.coordinators {
        wait_for("every coordinator to count the failover as done", LONG, || {
            let text = metrics(&c.http_endpoint, &viewer)?;
            let done = sample(&text, "drc_decisions_total", &[("cluster", PG_CLUSTER), ("kind", "failover"), ("outcome", "done")]);
            let timed = sample(&text, "drc_failover_promoted_seconds_count", &[("kind", "failover")]);
            (done == Some(1.0) && timed == Some(1.0)).then_some(())
        })
        .unwrap_or_else(|e| {
            let text = metrics(&c.http_endpoint, &viewer).unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| l.contains("decisions") || l.contains("promoted_seconds_count")).collect();
            let history = lab.drctl_json(&["history", "--cluster", PG_CLUSTER]).map(|h| h.to_string()).unwrap_or_default();
            panic!("{e}: coordinator {}: {lines:#?}\n{history}", c.id)
        });
    }
    wait_for("the proxy to follow the new primary", LONG, || {
        let text = metrics(&proxy.http_endpoint, &viewer)?;
        (sample(&text, "drc_proxy_primary", &[("member", "pg-b")]) == Some(1.0)
            && sample(&text, "drc_proxy_switches_total", &[]).is_some_and(|n| n >= 2.0))
        .then_some(())
    })
    .expect("proxy switched");

    // Prometheus saw the counter move, and every rule of drc.rules.yml
    // evaluates against what the lab exports.
    let counted = r#"max(drc_decisions_total{cluster="app-pg",kind="failover",outcome="done"})"#;
    wait_for("Prometheus to see the failover counted", LONG, || (value(&prom, counted)? == 1.0).then_some(())).expect("scraped");
    wait_for("every rule to evaluate without error", LONG, || unhealthy_rules(&prom).ok().filter(|bad| bad.is_empty()))
        .unwrap_or_else(|e| panic!("{e}: {:?}", unhealthy_rules(&prom)));

    // A scheduled backup made to fail (every bucket refuses the agents'
    // credentials) fires DrcBackupFailed.
    let secrets: Vec<(std::path::PathBuf, Vec<u8>)> = lab
        .info
        .s3
        .iter()
        .map(|s| {
            let path = lab.info.dir.join(format!("s3-{}.secret", s.region));
            let good = std::fs::read(&path).expect("secret");
            std::fs::write(&path, "not-the-secret").expect("wrong secret");
            (path, good)
        })
        .collect();
    lab.drctl_json(&["schedule", "set", "--cluster", REDIS_CLUSTER, "--backup", "*/2 * * * * *"]).expect("schedule");
    wait_for("a scheduled backup to fail", LONG, || {
        let listed = lab.drctl_json(&["backup", "list", "--cluster", REDIS_CLUSTER]).ok()?;
        listed["backups"].as_array()?.iter().any(|b| b["state"] == "failed").then_some(())
    })
    .expect("failed backup");
    lab.drctl_json(&["schedule", "set", "--cluster", REDIS_CLUSTER, "--backup", "off"]).expect("schedule off");
    let firing = r#"max(ALERTS{alertname="DrcBackupFailed",cluster="app-redis",alertstate="firing"})"#;
    wait_for("DrcBackupFailed to fire", LONG, || (value(&prom, firing)? == 1.0).then_some(())).expect("alert");
    for (path, good) in secrets {
        std::fs::write(path, good).expect("restore secret");
    }

    // Every query of the Grafana dashboard runs, and names only metrics drc
    // exports (or drc's recording rules).
    let mut exported: BTreeSet<String> =
        drc_tests::lab::prometheus::RULES.lines().filter_map(|l| l.trim().strip_prefix("- record: ").map(str::to_string)).collect();
    let endpoints = lab
        .info
        .coordinators
        .iter()
        .map(|c| c.http_endpoint.clone())
        .chain(lab.info.members.iter().map(|m| m.agent_http_endpoint.clone()))
        .chain(lab.info.forwarders.iter().map(|f| f.http_endpoint.clone()));
    for e in endpoints {
        let text = metrics(&e, &viewer).expect("metrics");
        exported.extend(text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next().map(str::to_string)));
    }
    let dashboard: serde_json::Value = serde_json::from_str(include_str!("../../deploy/grafana/drc.json")).expect("dashboard JSON");
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(queries.len() >= 30, "{queries:?}");
    for q in &queries {
        let promql = q.replace("$__rate_interval", "1m").replace("$cluster", ".+");
        query(&prom, &promql).unwrap_or_else(|e| panic!("dashboard query {q}: {e}"));
        for name in metric_names(q) {
            let family = ["_total", "_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
            assert!(exported.contains(&name) || exported.contains(family), "dashboard query {q} names {name}, which drc does not export");
        }
    }

    // Every JSON log line about the decision names it, its cluster and the
    // member it promoted (whichever coordinator carried it out).
    let log: String = lab.info.coordinators.iter().map(|c| std::fs::read_to_string(&c.log).expect("log")).collect();
    let lines: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(!lines.is_empty(), "no JSON log line in {log}");
    let about: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with(&format!("decision {id}:")))).collect();
    assert!(about.len() >= 3, "the steps of decision {id} are logged: {log}");
    for l in about {
        assert_eq!(l["span"]["decision"].as_u64(), Some(id), "{l}");
        assert_eq!(l["span"]["cluster"], PG_CLUSTER, "{l}");
        assert_eq!(l["span"]["member"], "pg-b", "{l}");
    }
    lab.down().expect("lab down");
}
