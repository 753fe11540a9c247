//! End-to-end tests of agents and member health through the lab: real
//! PostgreSQL 15, real Redis, real agents and coordinators on loopback.

use std::time::Duration;

use drc_tests::lab::{alive, postgres::psql, redis::cli, signal, stop_pid, Lab};
use drc_tests::{bin, holds_for, wait_for};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(40);

fn lab() -> (tempfile::TempDir, Lab) {
    let dir = tempfile::Builder::new().prefix("drc-lab-test-").tempdir().expect("tempdir");
    let lab = Lab::up(dir.path()).expect("lab up");
    (dir, lab)
}

fn member(lab: &Lab, id: &str) -> Option<Value> {
    lab.members_health().ok()?.remove(id)
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

#[test]
fn members_report_roles_health_and_lag_that_returns_to_zero() {
    let (_dir, lab) = lab();
    // Once the agents have their cluster views, every region reaches both primaries.
    let everywhere = serde_json::json!({"a": true, "b": true, "c": true});
    let status = wait_for("every region to reach the primaries", LONG, || {
        let s = lab.status().ok()?;
        let all = s["clusters"]
            .as_array()?
            .iter()
            .flat_map(|c| c["members"].as_array().cloned().unwrap_or_default())
            .all(|m| m["primary_reachable_from"] == everywhere);
        all.then_some(s)
    })
    .expect("cross-probes");
    for c in status["clusters"].as_array().expect("clusters") {
        assert_eq!(c["primary"], if c["kind"] == "postgres" { "pg-a" } else { "redis-a" }, "{c}");
        for m in c["members"].as_array().expect("members") {
            assert!(!m["dataset_id"].as_str().unwrap_or_default().is_empty(), "{m}");
        }
    }

    // PostgreSQL: pause replay on pg-b, write a burst, see the lag in bytes
    // and seconds, resume, see it return to zero.
    let pa = lab.member("pg-a").expect("pg-a").port;
    let pb = lab.member("pg-b").expect("pg-b").port;
    psql(pb, "SELECT pg_wal_replay_pause()").expect("pause");
    psql(pa, "CREATE TABLE burst AS SELECT g, md5(g::text) FROM generate_series(1, 20000) g").expect("burst");
    // One reading of both: pg-c replays the burst, pg-b cannot.
    let (lagging, pc) = wait_for("pg-b to show lag in bytes and seconds while pg-c keeps up", LONG, || {
        let mut h = lab.members_health().ok()?;
        let (b, c) = (h.remove("pg-b")?, h.remove("pg-c")?);
        (u(&b, "lag_bytes") > 0 && u(&b, "lag_ms") > 0 && u(&c, "lag_bytes") == 0).then_some((b, c))
    })
    .expect("lag visible");
    assert_eq!(lagging["role"], "replica");
    assert_eq!(pc["role"], "replica", "{pc}");
    psql(pb, "SELECT pg_wal_replay_resume()").expect("resume");
    wait_for("pg-b lag back to zero", LONG, || {
        let m = member(&lab, "pg-b")?;
        (u(&m, "lag_bytes") == 0 && u(&m, "lag_ms") == 0).then_some(())
    })
    .expect("lag cleared");
    // An idle primary does not look like a growing lag.
    holds_for("pg-b showing no lag behind an idle primary", Duration::from_secs(2), || {
        let m = member(&lab, "pg-b")?;
        Some(if (u(&m, "lag_bytes"), u(&m, "lag_ms")) == (0, 0) { Ok(()) } else { Err(format!("{m}")) })
    })
    .expect("no lag");

    // Asynchronous replication (the lab's default): a synchronous standby
    // setting of drc's shape is cleared, an operator's own is left alone.
    let set = |value: &str| {
        psql(pa, &format!("ALTER SYSTEM SET synchronous_standby_names = '{}'", value.replace('\'', "''"))).expect("alter");
        psql(pa, "SELECT pg_reload_conf()").expect("reload");
    };
    set(r#"ANY 1 ("pg-b", "pg-c")"#);
    wait_for("drc's own setting to be cleared", LONG, || psql(pa, "SHOW synchronous_standby_names").ok()?.is_empty().then_some(()))
        .expect("cleared");
    set("*");
    wait_for("pg-a's agent to sample the operator's setting", LONG, || {
        (member(&lab, "pg-a")?["sync_standbys"].as_str()? == "*").then_some(())
    })
    .expect("sampled");
    // The agent looks at a changed setting on the next renewal (within a
    // few hundred milliseconds): it stays.
    holds_for("an operator's synchronous_standby_names staying", Duration::from_secs(1), || {
        let v = psql(pa, "SHOW synchronous_standby_names").ok()?;
        Some(if v == "*" { Ok(()) } else { Err(v) })
    })
    .expect("an operator's setting stays");
    psql(pa, "ALTER SYSTEM RESET synchronous_standby_names").expect("reset");
    psql(pa, "SELECT pg_reload_conf()").expect("reload");

    // Redis: a SIGSTOPped replica shows a growing lag.
    let ra = lab.member("redis-a").expect("redis-a").port;
    let rb = lab.member("redis-b").expect("redis-b");
    signal(rb.pid, libc::SIGSTOP);
    let mut seen = Vec::new();
    let grown = wait_for("redis-b lag to grow", LONG, || {
        cli(ra, &["SET", &format!("k{}", seen.len()), "x".repeat(512).as_str()]).ok()?;
        let m = member(&lab, "redis-b")?;
        seen.push((u(&m, "lag_bytes"), u(&m, "lag_ms")));
        let n = seen.len();
        // Unhealthy too once its agent's probe has waited long enough.
        (n >= 2 && seen[n - 1].0 > seen[n - 2].0 && seen[n - 2].0 > 0 && seen[n - 1].1 > 0 && m["healthy"] == false).then_some(m)
    });
    signal(rb.pid, libc::SIGCONT);
    let grown = grown.expect("growing lag");
    assert_eq!(grown["healthy"], false, "a stopped replica cannot be healthy: {grown}");
    wait_for("redis-b healthy again", LONG, || {
        let m = member(&lab, "redis-b")?;
        (m["healthy"] == true && u(&m, "lag_bytes") == 0).then_some(())
    })
    .expect("redis-b recovered");

    // A stopped standby turns unhealthy within the detection window, and
    // `drctl watch` reports it as it happens.
    let mut watch = std::process::Command::new(bin("drctl"))
        .args(["--endpoints", &lab.info.endpoints, "-o", "json", "watch"])
        .args(lab.creds().drctl_args())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("drctl watch");
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let reader = {
        let events = std::sync::Arc::clone(&events);
        let out = watch.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    events.lock().expect("events").push(v);
                }
            }
        })
    };
    let seen = |pred: &dyn Fn(&Value) -> bool| events.lock().expect("events").iter().any(pred);
    // Every event after the watch's first one reaches it.
    wait_for("the watch to start", LONG, || seen(&|e| e["kind"] == "watching").then_some(())).expect("watching");
    let pgc = lab.member("pg-c").expect("pg-c").clone();
    drc_tests::lab::postgres::stop(&pgc).expect("stop pg-c");
    let m = wait_for("pg-c unhealthy", LONG, || member(&lab, "pg-c").filter(|m| m["healthy"] == false)).expect("unhealthy");
    assert!(!m["error"].as_str().unwrap_or_default().is_empty(), "no reason given: {m}");
    let reported = wait_for("drctl watch to report pg-c turning unhealthy", LONG, || {
        seen(&|e| e["kind"] == "member_health" && e["member"] == "pg-c" && e["message"].as_str().unwrap_or_default().contains("unhealthy"))
            .then_some(())
    });
    signal(watch.id(), libc::SIGTERM);
    let _ = watch.wait();
    let _ = reader.join();
    reported.unwrap_or_else(|e| panic!("{e:#}: {:?}", events.lock().expect("events")));
    // The human view shows it too.
    let out = drc_tests::drctl(&lab.info.endpoints, &lab.creds(), &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cluster app-pg (postgres), primary: pg-a") && text.contains("UNHEALTHY"), "{text}");
}

#[test]
fn agents_follow_a_new_leader_and_bad_agents_or_messages_are_refused() {
    let (dir, mut lab) = lab();
    // Leader placement: moved into region a, which holds both primaries, the
    // leadership leaves it again by itself once every member is healthy, and
    // nothing fails over.
    assert_ne!(lab.leader_region().as_deref(), Some("a"), "the lab starts with the leader outside region a");
    let rc = lab.info.members.iter().position(|m| m.id == "redis-c").expect("redis-c");
    signal(lab.info.members[rc].agent_pid, libc::SIGKILL);
    wait_for("redis-c unhealthy", LONG, || member(&lab, "redis-c").filter(|m| m["healthy"] == false)).expect("unhealthy");
    let a = lab.info.coordinators.iter().find(|c| c.region == "a").expect("coordinator a");
    lab.drctl_json(&["members", "lead", "--id", &a.id.to_string()]).expect("members lead");
    // Placement waits 3 s after a leader takes over; with a member down it
    // does not move at all.
    holds_for("the leadership staying in region a while redis-c's agent is down", Duration::from_secs(5), || {
        let region = lab.leader_region()?;
        Some(if region == "a" { Ok(()) } else { Err(format!("moved to {region}")) })
    })
    .expect("placement waits for a whole system");
    lab.start_agent(rc).expect("restart redis-c's agent");
    lab.wait_leader_outside("a", LONG).expect("the leadership left region a");
    let history = lab.drctl_json(&["history"]).expect("history");
    assert_eq!(history["decisions"].as_array().map(Vec::len), Some(0), "{history}");
    lab.wait_healthy(LONG).expect("every member healthy after the moves");

    // SIGKILL the coordinator leader: the agents reconnect to the new one.
    let s = lab.status().expect("status");
    let leader = s["leader_id"].as_u64().expect("leader");
    let coord = lab.info.coordinators.iter().find(|c| c.id == leader).expect("leader info");
    signal(coord.pid, libc::SIGKILL);
    wait_for("a new leader", LONG, || {
        let s = lab.status().ok()?;
        let l = s["leader_id"].as_u64()?;
        (l != 0 && l != leader).then_some(())
    })
    .expect("new leader");
    lab.wait_healthy(LONG).expect("every member healthy again on the new leader");
    for m in &lab.info.members {
        assert!(alive(m.agent_pid), "agent of {} died", m.id);
    }

    // An agent pointed at a member of another cluster (a Redis with its own
    // replication id) is refused with a clear error, and tries again later
    // (the topology may be fixed meanwhile) instead of exiting.
    let foreign_port = drc_tests::free_port();
    let foreign_dir = dir.path().join("foreign");
    std::fs::create_dir_all(&foreign_dir).expect("dir");
    let mut foreign = std::process::Command::new("redis-server")
        .args(["--port", &foreign_port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"])
        .arg(&foreign_dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("foreign redis");
    wait_for("foreign redis", LONG, || cli(foreign_port, &["PING"]).ok().filter(|p| p == "PONG")).expect("ping");
    let rc = lab.member("redis-c").expect("redis-c");
    // Beside the real agent: without its HTTP listener.
    let cfg: String = std::fs::read_to_string(&rc.agent_config)
        .expect("config")
        .replace(&format!("port = {}", rc.port), &format!("port = {foreign_port}"))
        .lines()
        .filter(|l| !l.starts_with("http_listen"))
        .map(|l| format!("{l}\n"))
        .collect();
    let path = dir.path().join("foreign-agent.toml");
    std::fs::write(&path, cfg).expect("write");
    let log = dir.path().join("foreign-agent.log");
    let mut agent = std::process::Command::new(bin("drc-agent"))
        .arg("--config")
        .arg(&path)
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("agent");
    let refused = wait_for("the foreign agent to be refused twice", LONG, || {
        let text = std::fs::read_to_string(&log).ok()?;
        (text.matches("another cluster").count() >= 2).then_some(text)
    });
    let running = agent.try_wait().ok().flatten().is_none();
    let _ = agent.kill();
    let _ = agent.wait();
    stop_pid(foreign.id(), Duration::from_secs(2));
    let _ = foreign.wait();
    let text = refused.unwrap_or_else(|e| panic!("{e}: {}", std::fs::read_to_string(&log).unwrap_or_default()));
    assert!(running, "the refused agent exited: {text}");
    assert!(text.contains("refused this agent") && text.contains("retry_in"), "unclear refusal: {text}");
    assert_eq!(member(&lab, "redis-c").expect("redis-c")["healthy"], true, "the real redis-c agent was disturbed");

    // A malformed message ends only that stream.
    let endpoint = format!("http://{}", lab.info.endpoints.split(',').find(|e| !e.ends_with(&coord.endpoint)).unwrap_or_default());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let agent = drc_tests::Creds::Tls(rc.agent_tls.clone().expect("redis-c's certificate")).security().expect("tls");
    let code = rt.block_on(malformed_stream(&agent, endpoint.clone(), rc.region.clone(), drc_proto::COMMAND_PROTOCOL));
    assert_eq!(code, tonic::Code::InvalidArgument);
    // An agent of a release that speaks another command protocol is refused
    // at its Hello, before any command could be misread.
    let code = rt.block_on(malformed_stream(&agent, endpoint, rc.region.clone(), 1));
    assert_eq!(code, tonic::Code::FailedPrecondition);
    lab.wait_healthy(LONG).expect("everything else still healthy");
}

/// Opens an agent stream to any coordinator (following a redirect), sends a
/// Hello (valid but for `protocol`) and then a sample for another member;
/// returns the stream's end.
async fn malformed_stream(security: &drc_tls::Security, mut endpoint: String, region: String, protocol: u32) -> tonic::Code {
    use drc_proto::agent_service_client::AgentServiceClient;
    use drc_proto::{agent_message::Body, coordinator_message, AgentHello, AgentMessage, Sample};
    for _ in 0..5 {
        let channel = security.connect(drc_tls::Security::endpoint(&endpoint).expect("endpoint")).await.expect("connect");
        let mut client = AgentServiceClient::new(channel);
        let hello = AgentHello {
            member_id: "redis-c".into(),
            cluster: "app-redis".into(),
            region: region.clone(),
            kind: "redis".into(),
            command_protocol: protocol,
            ..Default::default()
        };
        let bad = Sample { member_id: "pg-a".into(), role: "primary".into(), ..Default::default() };
        let msgs = vec![AgentMessage { body: Some(Body::Hello(hello)) }, AgentMessage { body: Some(Body::Sample(bad)) }];
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        for m in msgs {
            tx.send(m).await.expect("queue");
        }
        let mut inbound = match client.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return s.code(),
        };
        loop {
            match inbound.message().await {
                Ok(Some(m)) => {
                    if let Some(coordinator_message::Body::Redirect(r)) = m.body {
                        endpoint = format!("http://{}", r.leader_address);
                        break;
                    }
                }
                Ok(None) => return tonic::Code::Ok,
                Err(s) => return s.code(),
            }
        }
    }
    tonic::Code::Unknown
}

#[test]
fn lab_down_after_a_failed_test_leaves_no_process_behind() {
    let dir = tempfile::Builder::new().prefix("drc-lab-test-").tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let pids = std::panic::catch_unwind(move || {
        let lab = Lab::up(&path).expect("lab up");
        let pids = lab.pids();
        std::panic::panic_any(pids);
    })
    .expect_err("the test body panicked");
    let pids = pids.downcast::<Vec<u32>>().expect("pids");
    assert!(pids.len() >= 3 + 6 + 6 + 3, "{pids:?}");
    // The owned Lab was dropped while unwinding: everything is stopped.
    let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "still running after the panic: {left:?}");

    // And `drc-lab up` / `down` as commands.
    let dir2 = tempfile::Builder::new().prefix("drc-lab-cli-").tempdir().expect("tempdir");
    let up = std::process::Command::new(bin("drc-lab")).args(["up", "--dir"]).arg(dir2.path()).output().expect("drc-lab up");
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let lab = Lab::attach(dir2.path()).expect("lab.json");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(dir2.path().join("lab.json")).expect("read")).expect("json");
    for key in ["coordinators", "members", "s3", "drctl"] {
        assert!(!json[key].is_null(), "lab.json lacks {key}");
    }
    let pids = lab.pids();
    assert!(pids.iter().all(|p| alive(*p)));
    // Each region's S3 server takes its own credentials and refuses others.
    assert_eq!(lab.info.s3.len(), 3);
    for (i, s3) in lab.info.s3.iter().enumerate() {
        let put = |ak: &str, sk: &str| {
            let out = std::process::Command::new("curl")
                // sha256("hello"): S3 SigV4 wants the payload hash as a header.
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "--data-binary", "hello"])
                .args(["-H", "x-amz-content-sha256: 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"])
                .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", &format!("{ak}:{sk}")])
                .arg(format!("{}/{}/probe-{i}", s3.endpoint, s3.bucket))
                .output()
                .expect("curl");
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        assert_eq!(put(&s3.access_key, &s3.secret_key), "200", "{s3:?}");
        let other = &lab.info.s3[(i + 1) % 3];
        assert_eq!(put(&s3.access_key, &other.secret_key), "403", "a wrong secret was accepted by {}", s3.endpoint);
        assert!(s3.root.join(&s3.bucket).join(format!("probe-{i}")).exists());
    }
    let down = std::process::Command::new(bin("drc-lab")).args(["down", "--dir"]).arg(dir2.path()).output().expect("drc-lab down");
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert!(pids.iter().all(|p| !alive(*p)));
}
