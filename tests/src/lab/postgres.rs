//! PostgreSQL 15 members of the lab. Servers run as the `postgres` OS user
//! (initdb and postgres refuse root); ports and socket dirs are passed on the
//! command line, never in postgresql.conf, because pg_basebackup copies it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};

use super::info::DbTlsInfo;
use super::netns::NetInfo;
use super::{MemberInfo, REGIONS};
use crate::{free_port, wait_for};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

pub fn check_installed() -> anyhow::Result<()> {
    if !Path::new(PG_BIN).join("pg_ctl").exists() {
        bail!("PostgreSQL 15 is not installed ({PG_BIN}/pg_ctl missing); run scripts/test or `apt-get install postgresql-15`");
    }
    if Command::new("id").arg("postgres").output().map(|o| !o.status.success()).unwrap_or(true) {
        bail!("the `postgres` OS user does not exist; run scripts/test or create it");
    }
    Ok(())
}

fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", &format!("{PG_BIN}/{program}")]);
    c
}

fn run(mut cmd: Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn chown_postgres(path: &Path) -> anyhow::Result<()> {
    run(
        {
            let mut c = Command::new("chown");
            c.args(["-R", "postgres:postgres"]).arg(path);
            c
        },
        "chown",
    )?;
    Ok(())
}

/// Runs SQL on the member as the postgres superuser; returns psql's unaligned output.
pub fn psql(port: u16, sql: &str) -> anyhow::Result<String> {
    psql_at("127.0.0.1", port, sql)
}

/// [`psql`] on a member at `host`.
pub fn psql_at(host: &str, port: u16, sql: &str) -> anyhow::Result<String> {
    let mut c = Command::new("psql");
    c.args(["-h", host, "-p", &port.to_string(), "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql]);
    // A member behind a dropped link must not hold the caller for minutes.
    c.env("PGCONNECT_TIMEOUT", "5");
    Ok(run(c, &format!("psql -h {host} -p {port}"))?.trim().to_string())
}

fn start(data: &Path, port: u16, sock: &Path, log: &Path, on: impl Fn(Command) -> anyhow::Result<Command>) -> anyhow::Result<u32> {
    let mut c = as_postgres("pg_ctl");
    c.arg("-D").arg(data).arg("-l").arg(log).args(["-w", "-t", "60", "-o"]).arg(format!("-p {port} -k {}", sock.display())).arg("start");
    run(on(c)?, "pg_ctl start")?;
    postmaster_pid(data)
}

/// The postmaster's pid, from `postmaster.pid`.
pub fn postmaster_pid(data: &Path) -> anyhow::Result<u32> {
    let text = fs::read_to_string(data.join("postmaster.pid")).context("reading postmaster.pid")?;
    text.lines().next().and_then(|l| l.trim().parse().ok()).ok_or_else(|| anyhow!("bad postmaster.pid"))
}

/// Creates the primary in region a and streaming standbys in b and c, each
/// in its node's namespace when `net` is given.
pub fn start_cluster(dir: &Path, cluster: &str, net: Option<&NetInfo>, tls: Option<&DbTlsInfo>) -> anyhow::Result<Vec<MemberInfo>> {
    // With TLS, replication connections need the password (from the
    // passfile) and every libpq connection the lab makes checks the server.
    let libpq_tls = |c: &mut Command| {
        if let Some(t) = tls {
            c.env("PGPASSFILE", &t.passfile).env("PGSSLMODE", "verify-full").env("PGSSLROOTCERT", &t.ca);
        }
    };
    let conninfo_tls =
        tls.map_or_else(String::new, |t| format!(" sslmode=verify-full sslrootcert={} passfile={}", t.ca.display(), t.passfile.display()));
    let replication_auth = if tls.is_some() { "scram-sha-256" } else { "trust" };
    let mut members = Vec::new();
    let (mut primary_port, mut primary_host) = (0, String::new());
    for region in REGIONS {
        let id = format!("pg-{region}");
        let host = net.and_then(|n| n.node(&id).ok()).map_or_else(|| "127.0.0.1".to_string(), |n| n.address.clone());
        let on = |c: Command| match net {
            Some(n) => n.command(&format!("pg-{region}"), &c),
            None => Ok(c),
        };
        let data = dir.join(format!("{id}.data"));
        let sock = dir.join(format!("{id}.sock"));
        let log = dir.join(format!("{id}.log"));
        fs::create_dir_all(&sock)?;
        chown_postgres(&sock)?;
        // The log file must be writable by postgres.
        fs::write(&log, "")?;
        chown_postgres(&log)?;
        let port = free_port();
        if region == "a" {
            let mut c = as_postgres("initdb");
            c.arg("-D").arg(&data).args(["-U", "postgres", "-A", "trust", "--data-checksums", "--no-sync", "-E", "UTF8", "--locale", "C"]);
            fs::create_dir_all(&data)?;
            chown_postgres(&data)?;
            run(c, "initdb")?;
            let mut conf = fs::OpenOptions::new().append(true).open(data.join("postgresql.conf"))?;
            use std::io::Write as _;
            if let Some(t) = tls {
                writeln!(conf, "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'", t.server_cert.display(), t.server_key.display())?;
            }
            writeln!(
                conf,
                "listen_addresses = '{}'\nwal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\nhot_standby = on\nwal_log_hints = on\nfsync = off\nsynchronous_commit = on\nfull_page_writes = on\nwal_keep_size = '64MB'\nmax_slot_wal_keep_size = '1GB'\ntrack_commit_timestamp = on\nshared_buffers = '32MB'\nhot_standby_feedback = on\nwal_receiver_status_interval = '1s'",
                // In its own namespace a node has its own address only.
                if net.is_some() { "*" } else { "127.0.0.1" }
            )?;
            fs::write(
                data.join("pg_hba.conf"),
                format!(
                    "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 {replication_auth}\n\
                     host all all 198.18.0.0/15 trust\nhost replication all 198.18.0.0/15 {replication_auth}\n"
                ),
            )?;
            chown_postgres(&data)?;
            primary_port = port;
            primary_host = host.clone();
        } else {
            fs::create_dir_all(&data)?;
            chown_postgres(&data)?;
            {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&data, fs::Permissions::from_mode(0o700))?;
            }
            // The slot name the coordinator uses when it repoints standbys.
            let slot = format!("drc_pg_{region}");
            let mut c = as_postgres("pg_basebackup");
            c.args(["-h", &primary_host, "-p", &primary_port.to_string(), "-U", "postgres", "-D"]).arg(&data).args([
                "-R",
                "-X",
                "stream",
                "-C",
                "-S",
                &slot,
                "--no-sync",
            ]);
            libpq_tls(&mut c);
            run(c, "pg_basebackup")?;
            // Streams under its member id, as drc's repoint does: the name
            // a synchronous primary waits for (the later line wins).
            let mut auto = fs::OpenOptions::new().append(true).open(data.join("postgresql.auto.conf"))?;
            use std::io::Write as _;
            writeln!(
                auto,
                "primary_conninfo = 'host={primary_host} port={primary_port} user=postgres application_name={id}{conninfo_tls}'"
            )?;
        }
        let pid = start(&data, port, &sock, &log, on)?;
        members.push(MemberInfo {
            id,
            cluster: cluster.to_string(),
            kind: "postgres".into(),
            region: region.to_string(),
            host: host.clone(),
            port,
            pid,
            data_dir: data,
            log,
            agent_pid: 0,
            agent_config: PathBuf::new(),
            agent_log: PathBuf::new(),
            agent_tls: None,
            agent_http_endpoint: String::new(),
            supervised: false,
        });
        wait_for(&format!("pg-{region} to accept connections"), Duration::from_secs(30), || psql_at(&host, port, "SELECT 1").ok())?;
        if let (Some(t), "a") = (tls, region) {
            // The replication password, as the passfile holds it.
            let text = fs::read_to_string(&t.passfile)?;
            let password = text.trim().rsplit(':').next().unwrap_or_default().to_string();
            psql_at(&host, port, &format!("ALTER ROLE postgres PASSWORD '{password}'"))?;
        }
    }
    Ok(members)
}

/// Stops a member cleanly (`pg_ctl stop -m fast`: a shutdown checkpoint, so
/// that it starts again without crash recovery).
pub fn stop_clean(m: &MemberInfo) -> anyhow::Result<()> {
    let mut c = as_postgres("pg_ctl");
    c.arg("-D").arg(&m.data_dir).args(["-m", "fast", "-w", "-t", "20", "stop"]);
    run(c, "pg_ctl stop -m fast")?;
    Ok(())
}

/// Stops a member at once (`pg_ctl stop -m immediate`); falls back to SIGKILL.
pub fn stop(m: &MemberInfo) -> anyhow::Result<()> {
    if m.data_dir.join("postmaster.pid").exists() {
        let mut c = as_postgres("pg_ctl");
        c.arg("-D").arg(&m.data_dir).args(["-m", "immediate", "-w", "-t", "20", "stop"]);
        if run(c, "pg_ctl stop").is_err() {
            super::stop_pid(m.pid, Duration::from_millis(100));
        }
    }
    super::stop_pid(m.pid, Duration::from_secs(2));
    Ok(())
}
