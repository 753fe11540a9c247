//! TLS between agents and their databases, with real servers: PostgreSQL
//! (the lab's `--db-tls`: verify-full, standbys over TLS with the
//! replication password from a passfile) and Redis (rediss, replication
//! over TLS).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use drc_tests::lab::{postgres::psql, spawn_detached, stop_pid, Lab, LabOptions};
use drc_tests::{free_port, wait_for, Cluster, ClusterOpts};
use drc_tls::Role;
use serde_json::Value;

/// (application_name, ssl) of the sessions of `backend_type` on a member.
fn sessions(port: u16, backend_type: &str) -> Vec<(String, bool)> {
    let sql = format!(
        "SELECT a.application_name, s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.backend_type = '{backend_type}' ORDER BY 1"
    );
    psql(port, &sql).unwrap_or_default().lines().filter_map(|l| l.split_once('|').map(|(a, s)| (a.to_string(), s == "t"))).collect()
}

fn member_health(status: &Value, id: &str) -> Value {
    status["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["members"].as_array().into_iter().flatten())
        .find(|m| m["id"] == id)
        .cloned()
        .unwrap_or_default()
}

#[test]
fn postgres_agents_and_standbys_speak_tls_checked_against_the_ca_and_standbys_read_the_password_from_a_passfile() {
    let dir = tempfile::Builder::new().prefix("drc-dbtls-").tempdir().expect("tempdir");
    let lab = Lab::up_with(dir.path(), LabOptions { db_tls: true, ..Default::default() }).expect("lab up");
    let tls = lab.info.db_tls.clone().expect("db tls");
    let pa = lab.member("pg-a").expect("pg-a").clone();

    // The agents' probes, the standbys' and the WAL archiver's streams are TLS.
    let ok = wait_for("agents, standbys and the archiver on TLS", Duration::from_secs(30), || {
        let clients = sessions(pa.port, "client backend");
        let streams = sessions(pa.port, "walsender");
        let agents = clients.iter().filter(|(a, _)| a == "drc-agent").count();
        let names: Vec<&str> = streams.iter().map(|(a, _)| a.as_str()).collect();
        (agents >= 3 && names == ["pg-b", "pg-c", "pg_receivewal"]).then_some((clients, streams))
    })
    .expect("sessions");
    assert!(ok.0.iter().filter(|(a, _)| a == "drc-agent").all(|(_, ssl)| *ssl), "every agent probe is TLS: {:?}", ok.0);
    assert!(ok.1.iter().all(|(_, ssl)| *ssl), "every standby and the archiver stream over TLS: {:?}", ok.1);

    // A switchover: the demoted primary streams again, over TLS, with the
    // password from the passfile (replication needs scram here).
    let d = lab.drctl_json(&["switchover", "--cluster", "app-pg", "--to", "pg-b"]).expect("switchover");
    println!("switchover: {d}");
    let pb = lab.member("pg-b").expect("pg-b").clone();
    // By name: the WAL archiver streams from the primary too.
    let streams = wait_for("pg-a and pg-c streaming from pg-b", Duration::from_secs(60), || {
        let s: Vec<_> = sessions(pb.port, "walsender").into_iter().filter(|(name, _)| name == "pg-a" || name == "pg-c").collect();
        (s.len() == 2).then_some(s)
    })
    .expect("streams");
    assert!(streams.iter().all(|(_, ssl)| *ssl), "{streams:?}");
    let auto = std::fs::read_to_string(pa.data_dir.join("postgresql.auto.conf")).expect("auto.conf");
    let conninfo = auto.lines().rfind(|l| l.starts_with("primary_conninfo")).expect("primary_conninfo").to_string();
    assert!(conninfo.contains("sslmode=verify-full") && conninfo.contains(&format!("passfile={}", tls.passfile.display())), "{conninfo}");
    assert!(!conninfo.contains("password="), "no password in primary_conninfo: {conninfo}");

    // Backups and recovery tests go through the same checks.
    let b = lab.drctl_json(&["backup", "run", "--cluster", "app-pg"]).expect("backup");
    assert_eq!(b["state"], "done", "{b}");
    let t = lab.drctl_json(&["recovery-test", "run", "--cluster", "app-pg"]).expect("recovery test");
    assert_eq!(t["state"], "done", "{t}");

    // An agent given another CA does not trust the server: it says so.
    let pc = lab.member("pg-c").expect("pg-c").clone();
    stop_pid(pc.agent_pid, Duration::from_secs(3));
    let stranger = lab.pki().expect("pki").stranger(&dir.path().join("stranger")).expect("another CA");
    let config = std::fs::read_to_string(&pc.agent_config)
        .expect("config")
        .replace(&tls.ca.display().to_string(), &stranger.ca.display().to_string());
    let wrong = dir.path().join("agent-pg-c-wrong-ca.toml");
    std::fs::write(&wrong, config).expect("write");
    let mut cmd = Command::new(drc_tests::bin("drc-agent"));
    cmd.arg("--config").arg(&wrong);
    let pid = spawn_detached(&mut cmd, &dir.path().join("agent-pg-c-wrong-ca.log")).expect("agent");
    let seen = wait_for("pg-c's agent to refuse the server", Duration::from_secs(30), || {
        let h = member_health(&lab.status().ok()?, "pg-c");
        let error = h["error"].as_str().unwrap_or_default().to_string();
        (h["healthy"] == false && error.contains("certificate")).then_some(error)
    });
    stop_pid(pid, Duration::from_secs(3));
    println!("wrong CA: {seen:?}");
    if let Err(e) = seen {
        panic!(
            "{e}\n{}\n{:?}",
            std::fs::read_to_string(dir.path().join("agent-pg-c-wrong-ca.log")).unwrap_or_default(),
            member_health(&lab.status().expect("status"), "pg-c")
        );
    }
}

/// A Redis server with TLS only, replicating over TLS when `of` is set.
fn redis_tls(dir: &Path, name: &str, port: u16, server: &drc_tls::TlsFiles, of: Option<u16>) -> u32 {
    let mut c = Command::new("redis-server");
    c.args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--tls-cert-file")
        .arg(&server.cert)
        .arg("--tls-key-file")
        .arg(&server.key)
        .arg("--tls-ca-cert-file")
        .arg(&server.ca)
        .args(["--tls-auth-clients", "no", "--tls-replication", "yes", "--repl-diskless-sync-delay", "0", "--protected-mode", "no"]);
    if let Some(p) = of {
        c.args(["--replicaof", "127.0.0.1", &p.to_string()]);
    }
    spawn_detached(&mut c, &dir.join(format!("{name}.log"))).expect("redis-server")
}

#[test]
fn redis_agents_speak_rediss_and_a_switchover_repoints_replication_over_tls() {
    let c = Cluster::start(ClusterOpts::default()).expect("cluster");
    let pki = c.pki.as_ref().expect("pki");
    let server = pki.server(&["127.0.0.1"], "redis-server").expect("server certificate");
    let (pa, pb) = (free_port(), free_port());
    c.apply(&format!(
        "[regions.a]\n[regions.b]\n[clusters.cache]\nkind = \"redis\"\n\
         [[members]]\nid = \"redis-a\"\ncluster = \"cache\"\nregion = \"a\"\naddress = \"127.0.0.1:{pa}\"\n\
         [[members]]\nid = \"redis-b\"\ncluster = \"cache\"\nregion = \"b\"\naddress = \"127.0.0.1:{pb}\"\n"
    ))
    .expect("apply");
    let dir = c.dir.path().to_path_buf();
    let endpoints = c.nodes.values().map(|n| format!("{:?}", n.address)).collect::<Vec<_>>().join(", ");
    let agent = |member: &str, region: &str, port: u16| -> anyhow::Result<u32> {
        let agent = pki.client(Role::Agent, member, member)?;
        let config = dir.join(format!("agent-{member}.toml"));
        std::fs::write(
            &config,
            format!(
                "member_id = {member:?}\ncluster = \"cache\"\nregion = {region:?}\nkind = \"redis\"\nendpoints = [{endpoints}]\n\
                 probe_interval = \"200ms\"\nstate_dir = {:?}\n[connection]\nhost = \"127.0.0.1\"\nport = {port}\n\
                 [connection.tls]\nca = {:?}\n{}",
                dir.display().to_string(),
                server.ca.display().to_string(),
                drc_tests::pki::config_section(&agent)
            ),
        )?;
        let mut cmd = Command::new(drc_tests::bin("drc-agent"));
        cmd.arg("--config").arg(&config);
        spawn_detached(&mut cmd, &dir.join(format!("agent-{member}.log")))
    };
    let mut pids = vec![redis_tls(&dir, "redis-a", pa, &server, None)];
    let healthy = |primary: &str| {
        let status = c.json(&["status"]).ok()?;
        let (a, b) = (member_health(&status, "redis-a"), member_health(&status, "redis-b"));
        let roles = (a["role"].as_str()?.to_string(), b["role"].as_str()?.to_string());
        let want = if primary == "redis-a" { ("primary", "replica") } else { ("replica", "primary") };
        // The replica's link to its primary is up: it replicates over TLS.
        let replica = if primary == "redis-a" { &b } else { &a };
        (a["healthy"] == true
            && b["healthy"] == true
            && roles == (want.0.to_string(), want.1.to_string())
            && replica["replication_connected"] == true)
            .then_some(())
    };
    let result = (|| -> anyhow::Result<()> {
        // redis-a is adopted before it has a replica: Redis gives it a new
        // replication id when redis-b first connects, which the coordinator
        // must learn rather than refuse both agents as foreign.
        pids.push(agent("redis-a", "a", pa)?);
        wait_for("redis-a adopted as the primary", Duration::from_secs(60), || {
            let status = c.json(&["status"]).ok()?;
            status["clusters"].as_array()?.iter().any(|c| c["name"] == "cache" && c["primary"] == "redis-a").then_some(())
        })?;
        pids.push(redis_tls(&dir, "redis-b", pb, &server, Some(pa)));
        pids.push(agent("redis-b", "b", pb)?);
        // No write yet: the primary ends its demotion at offset 0, which
        // the catch-up must take as reached, not as unknown.
        wait_for("both Redis members healthy over TLS", Duration::from_secs(60), || healthy("redis-a"))?;
        let d = c.json(&["switchover", "--cluster", "cache", "--to", "redis-b"])?;
        println!("switchover: {d}");
        wait_for("redis-a replicating from redis-b over TLS", Duration::from_secs(60), || healthy("redis-b"))?;
        Ok(())
    })();
    for pid in pids {
        stop_pid(pid, Duration::from_secs(3));
    }
    if let Err(e) = result {
        let logs: Vec<String> = ["agent-redis-a", "agent-redis-b", "redis-a", "redis-b"]
            .iter()
            .map(|n| format!("== {n}\n{}", std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default()))
            .collect();
        panic!("rediss end to end: {e}\n{}\n{}", logs.join("\n"), c.drctl(&["status"]).stdout.escape_ascii());
    }
}
