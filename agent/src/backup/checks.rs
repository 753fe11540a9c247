//! What a recovery test checks on the restored copy: row counts, the
//! operator's own checks, and every page (pg_checksums or pg_amcheck).

use std::path::Path;
use std::time::{Duration, Instant};

use drc_proto::RestoreCheck;

use super::*;

/// A table name safe to put in SQL: `schema.table` of plain identifiers.
pub(super) fn table_ident(t: &str) -> Option<String> {
    let ok = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let parts: Vec<&str> = t.split('.').collect();
    (parts.len() <= 2 && parts.iter().all(|p| ok(p))).then(|| parts.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join("."))
}

pub(super) fn judge(out: &mut Output, c: &RestoreCheck, got: Result<String, String>) -> Result<(), String> {
    match got {
        Ok(got) if got == c.expect => {
            out.insert(format!("check:{}", c.name), "ok".into());
            Ok(())
        }
        Ok(got) => Err(format!("check {:?} failed: {:?} answered {got:?}, expected {:?}", c.name, c.query, c.expect)),
        Err(e) => Err(format!("check {:?} failed: {:?}: {e}", c.name, c.query)),
    }
}

/// What the checks of a restored copy found, when it was ready (the RTO),
/// and the time of the newest commit it holds, when WAL was replayed.
pub(super) struct Checked {
    pub found: Output,
    pub rto: Duration,
    pub newest_commit_ms: Option<u64>,
    /// The last WAL position replayed, when WAL was replayed.
    pub reached_lsn: Option<u64>,
}

/// Waits until the copy has replayed the archived WAL and promoted itself;
/// the time of the last commit it replayed, and the last position.
async fn replayed(client: &tokio_postgres::Client, log: &Path) -> Result<(Option<u64>, Option<u64>), String> {
    const REPLAY_LIMIT: Duration = Duration::from_secs(3600);
    let deadline = Instant::now() + REPLAY_LIMIT;
    loop {
        let row = client.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(|e| format!("the copy replaying WAL: {e}"))?;
        if !row.get::<_, bool>(0) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the copy was still replaying WAL after {} s; log: {}", REPLAY_LIMIT.as_secs(), tail_file(log)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let row = client
        .query_one(
            "SELECT (extract(epoch FROM pg_last_xact_replay_timestamp()) * 1000)::bigint, \
             pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint",
            &[],
        )
        .await
        .map_err(|e| format!("reading the last replayed commit: {e}"))?;
    let at_least_0 = |v: Option<i64>| v.map(|n| n.max(0) as u64);
    Ok((at_least_0(row.get(0)), at_least_0(row.get(1))))
}

/// A connection to a restored server on this host's loopback `port`, as the
/// agent's own user.
pub(super) async fn connect_restored(cfg: &AgentConfig, port: u16) -> Result<tokio_postgres::Client, String> {
    let user = cfg.connection.user.clone().unwrap_or_else(|| "postgres".into());
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1").port(port).user(&user).dbname(cfg.connection.dbname.as_deref().unwrap_or("postgres"));
    if let Some(p) = cfg.connection.password().map_err(|e| e.to_string())? {
        c.password(p);
    }
    c.connect_timeout(Duration::from_secs(10));
    let (client, connection) = c.connect(tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(client)
}

pub(super) async fn check_postgres(
    cfg: &AgentConfig,
    check_tables: &[String],
    scratch: &Path,
    port: u16,
    user_checks: &[RestoreCheck],
    started: Instant,
    replay: bool,
) -> Result<Checked, String> {
    let pg = cfg.postgres.as_ref().ok_or("recovery test: this agent has no [postgres] section")?;
    let data = scratch.join("data");
    let sock = scratch.join("sock");
    std::fs::create_dir_all(&sock).map_err(|e| e.to_string())?;
    // A copy of a standby must start as a primary of its own, after the
    // archived WAL when it replays some.
    let signals: &[&str] =
        if replay { &["standby.signal", "postmaster.pid"] } else { &["standby.signal", "recovery.signal", "postmaster.pid"] };
    for f in signals {
        let _ = std::fs::remove_file(data.join(f));
    }
    if !pg.run_as.is_empty() {
        let owner = Command::new("chown").arg("-R").arg(&pg.run_as).arg(scratch).status().await.map_err(|e| e.to_string())?;
        if !owner.success() {
            return Err(format!("chown -R {} {}: failed", pg.run_as, scratch.display()));
        }
    }
    let _ = Command::new("chmod").arg("700").arg(&data).status().await;
    let (d, log) = (data.to_string_lossy().to_string(), scratch.join("postgres.log").to_string_lossy().to_string());
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c archive_mode=off -c hot_standby=on -c shared_buffers=32MB",
        sock.display()
    );
    crate::process::run_as(&pg.run_as, &pg.bin_dir.join("pg_ctl"), &["-D", &d, "-o", &opts, "-l", &log, "-w", "-t", "300", "start"])
        .await
        .map_err(|e| format!("the scratch PostgreSQL did not start: {e}; log: {}", tail_file(&scratch.join("postgres.log"))))?;
    let client = connect_restored(cfg, port).await.map_err(|e| format!("connecting to the scratch PostgreSQL: {e}"))?;
    let mut out = Output::new();
    client.simple_query("SELECT 1").await.map_err(|e| format!("SELECT 1 on the scratch PostgreSQL: {e}"))?;
    let (newest_commit_ms, reached_lsn) = if replay { replayed(&client, &scratch.join("postgres.log")).await? } else { (None, None) };
    let mut counts = serde_json::Map::new();
    for t in check_tables.iter().filter(|t| !t.is_empty()) {
        let ident = table_ident(t).ok_or_else(|| format!("check table {t:?}: expected schema.table of plain identifiers"))?;
        let row =
            client.query_one(&format!("SELECT count(*) FROM {ident}"), &[]).await.map_err(|e| format!("counting rows of {t}: {e}"))?;
        counts.insert(t.to_string(), serde_json::json!(row.get::<_, i64>(0)));
    }
    out.insert("row_counts".into(), serde_json::Value::Object(counts).to_string());
    for c in user_checks {
        let got = client.simple_query(&c.query).await.map_err(|e| e.to_string()).map(|msgs| {
            msgs.iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
                    _ => None,
                })
                .unwrap_or_else(|| "(no rows)".into())
        });
        judge(&mut out, c, got)?;
    }
    let rto = started.elapsed();
    // Every page, after the RTO point. Where the data carries checksums, a
    // clean stop writes out every page recovery repaired (a base backup
    // copies pages mid-write; the WAL's full-page images mend them), and
    // `pg_checksums --check` then reads all of them: seconds per GiB.
    // Without checksums, pg_amcheck checks heap and B-tree indexes through
    // the server: tens of seconds per GiB.
    let checksums = client.query_one("SHOW data_checksums", &[]).await.is_ok_and(|r| r.get::<_, String>(0) == "on");
    let pg_checksums = pg.bin_dir.join("pg_checksums");
    let amcheck = pg.bin_dir.join("pg_amcheck");
    if checksums && pg_checksums.exists() {
        drop(client);
        let t = Instant::now();
        crate::process::run_as(&pg.run_as, &pg.bin_dir.join("pg_ctl"), &["-D", &d, "stop", "-m", "fast", "-w", "-t", "300"])
            .await
            .map_err(|e| format!("stopping the scratch PostgreSQL to verify its checksums: {e}"))?;
        match crate::process::run_as(&pg.run_as, &pg_checksums, &["--check", "-D", &d]).await {
            Ok(_) => {
                out.insert("checksums".into(), "ok".into());
                out.insert("checksums_ms".into(), t.elapsed().as_millis().to_string());
            }
            Err(e) => return Err(format!("pg_checksums found damaged pages: {e}")),
        }
    } else if amcheck.exists() {
        let p = port.to_string();
        let user = cfg.connection.user.clone().unwrap_or_else(|| "postgres".into());
        let t = Instant::now();
        match crate::process::run_as(
            &pg.run_as,
            &amcheck,
            &["-h", "127.0.0.1", "-p", &p, "-U", &user, "--install-missing", "--all", "--no-password", "--jobs", "2"],
        )
        .await
        {
            Ok(_) => {
                out.insert("amcheck".into(), "ok".into());
                out.insert("amcheck_ms".into(), t.elapsed().as_millis().to_string());
            }
            Err(e) => return Err(format!("pg_amcheck found problems: {e}")),
        }
    } else {
        out.insert("amcheck".into(), "not available".into());
    }
    Ok(Checked { found: out, rto, newest_commit_ms, reached_lsn })
}

pub(super) fn tail_file(p: &Path) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" / "))
        .unwrap_or_default()
}

/// A Redis reply as redis-cli would print it, roughly.
pub(super) fn reply_text(v: redis::Value) -> String {
    match v {
        redis::Value::Nil => "(nil)".into(),
        redis::Value::Int(i) => i.to_string(),
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::SimpleString(s) => s,
        redis::Value::Okay => "OK".into(),
        redis::Value::Array(items) => items.into_iter().map(reply_text).collect::<Vec<_>>().join("\n"),
        other => format!("{other:?}"),
    }
}

pub(super) async fn check_redis(scratch: &Path, port: u16, user_checks: &[RestoreCheck]) -> Result<Output, String> {
    let data = scratch.join("data");
    let pidfile = scratch.join("redis.pid");
    let mut server = spawn(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dbfilename", "dump.rdb"])
            .arg("--dir")
            .arg(&data)
            .arg("--pidfile")
            .arg(&pidfile)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "redis-server",
    )?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(|e| e.to_string())?;
    let keys: i64 = loop {
        if let Ok(Some(s)) = server.try_wait() {
            return Err(format!("the scratch redis-server exited ({s}) while loading the snapshot"));
        }
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            // LOADING errors until the snapshot is in memory.
            if let Ok(n) = redis::cmd("DBSIZE").query_async::<i64>(&mut c).await {
                break n;
            }
        }
        if Instant::now() > deadline {
            return Err("the scratch redis-server did not load the snapshot within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut out = HashMap::from([("key_count".to_string(), keys.to_string())]);
    let checked = async {
        let mut conn = client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
        for c in user_checks {
            let mut words = c.query.split_whitespace();
            let mut cmd = redis::cmd(words.next().unwrap_or("PING"));
            for w in words {
                cmd.arg(w);
            }
            let got = cmd.query_async::<redis::Value>(&mut conn).await.map(reply_text).map_err(|e| e.to_string());
            judge(&mut out, c, got)?;
        }
        Ok::<(), String>(())
    }
    .await;
    let _ = server.kill().await;
    checked.map(|()| out)
}

#[cfg(test)]
mod tests {
    use super::super::pipeline::wal_point;
    use super::*;

    #[test]
    fn a_check_passes_only_on_the_expected_answer() {
        let c = RestoreCheck { name: "orders".into(), query: "SELECT count(*) FROM t".into(), expect: "3".into() };
        let mut out = Output::new();
        judge(&mut out, &c, Ok("3".into())).expect("pass");
        assert_eq!(out["check:orders"], "ok");
        let e = judge(&mut out, &c, Ok("2".into())).expect_err("wrong answer");
        assert_eq!(e, r#"check "orders" failed: "SELECT count(*) FROM t" answered "2", expected "3""#);
        let e = judge(&mut out, &c, Err("relation \"t\" does not exist".into())).expect_err("error");
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn wal_points_and_table_names() {
        let log = "pg_basebackup: initiating base backup, waiting for checkpoint to complete / pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1 / pg_basebackup: write-ahead log end point: 0/2000100";
        assert_eq!(wal_point(log, "start point"), "0/2000028");
        assert_eq!(wal_point(log, "end point"), "0/2000100");
        assert_eq!(table_ident("public.orders"), Some("\"public\".\"orders\"".into()));
        assert_eq!(table_ident("orders"), Some("\"orders\"".into()));
        assert_eq!(table_ident("x; DROP TABLE y"), None);
        assert_eq!(table_ident("a.b.c"), None);
    }
}
