//! Point-in-time recovery from the continuous WAL archive, through the lab:
//! a steady writer records each acknowledged commit with its WAL position
//! and commit time; the primary's region is killed; `drctl restore` brings
//! back a base backup and the archive in another region's bucket on an
//! agent of a surviving region. The runbook's restore by hand uses
//! PostgreSQL's own recovery with standard tools alone.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use drc_tests::lab::postgres::psql;
use drc_tests::lab::{kill_tree, signal, Lab};
use drc_tests::wait_for;
use serde_json::Value;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// One acknowledged commit: its id, the WAL position after it, its commit
/// time (µs since the epoch, the primary's clock).
#[derive(Clone, Copy, Debug)]
struct Acked {
    id: u64,
    lsn: u64,
    committed_us: i64,
}

/// Inserts ids into `pitr` on `port` until `stop`, each in its own
/// transaction, then reads the position and commit time it got.
fn writer(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Acked>> {
    std::thread::spawn(move || {
        let mut acked = Vec::new();
        let mut id = 0;
        while !stop.load(Ordering::SeqCst) {
            id += 1;
            let out = Command::new("psql")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-At"])
                .args(["-c", &format!("INSERT INTO pitr VALUES ({id})")])
                .args([
                    "-c",
                    &format!(
                        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, \
                     (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000000)::bigint FROM pitr WHERE id = {id}"
                    ),
                ])
                .env("PGCONNECT_TIMEOUT", "2")
                .output();
            let Some(out) = out.ok().filter(|o| o.status.success()) else { break };
            let text = String::from_utf8_lossy(&out.stdout);
            let row = text.lines().find(|l| l.contains('|')).unwrap_or("");
            let mut cols = row.split('|').map(|c| c.trim().parse::<i64>().unwrap_or(0));
            let (lsn, committed_us) = (cols.next().unwrap_or(0), cols.next().unwrap_or(0));
            acked.push(Acked { id, lsn: lsn as u64, committed_us });
        }
        acked
    })
}

fn archive(lab: &Lab) -> Option<Value> {
    let s = lab.status().ok()?;
    let c = s["clusters"].as_array()?.iter().find(|c| c["name"] == "app-pg")?.clone();
    Some(c["wal_archive"].clone()).filter(|a| !a.is_null())
}

fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", &format!("{PG_BIN}/{program}")]);
    c
}

/// A server `drctl restore` left running, stopped when dropped (also when
/// the test fails).
struct Restored {
    dir: std::path::PathBuf,
    record: Value,
    port: u16,
}

impl Drop for Restored {
    fn drop(&mut self) {
        let mut c = as_postgres("pg_ctl");
        c.arg("-D").arg(&self.dir).args(["-m", "immediate", "-w", "stop"]);
        let _ = c.output();
    }
}

/// `drctl restore` of app-pg on pg-c's host into `dir`, to `point`.
fn drctl_restore(lab: &Lab, dir: &Path, point: &[&str]) -> Restored {
    let d = dir.display().to_string();
    let mut args = vec!["restore", "--cluster", "app-pg", "--on", "pg-c", "--dir", &d];
    args.extend_from_slice(point);
    let record = lab.drctl_json(&args).unwrap_or_else(|e| panic!("drctl restore {point:?}: {e}"));
    println!("restore {point:?}: {record}");
    assert_eq!(record["state"], "done", "{record}");
    let port = record["port"].as_u64().and_then(|p| u16::try_from(p).ok()).expect("the port it runs on");
    Restored { dir: dir.to_path_buf(), record, port }
}

fn stop(dir: &Path) {
    let mut c = as_postgres("pg_ctl");
    c.arg("-D").arg(dir.join("data")).args(["-m", "immediate", "stop"]);
    let _ = c.output();
}

fn restored_ids(port: u16) -> std::collections::BTreeSet<u64> {
    psql(port, "SELECT id FROM pitr ORDER BY id").expect("ids").lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[test]
fn a_restore_from_the_archive_after_the_primary_region_is_lost_holds_every_archived_commit_and_a_restore_to_a_time_exactly_those_before_it()
{
    let dir = tempfile::Builder::new().prefix("drc-pitr-test-").tempdir().expect("tempdir");
    let lab = Lab::up(dir.path()).expect("lab up");
    let pa = lab.member("pg-a").expect("pg-a").clone();
    psql(pa.port, "CREATE TABLE pitr (id bigint PRIMARY KEY)").expect("table");
    let first = wait_for("the archiver to stream", Duration::from_secs(60), || {
        archive(&lab).filter(|a| a["error"] == "" && a["end"].as_u64().unwrap_or(0) > 0)
    })
    .expect("archiving");
    println!("archive: {first}");
    let archive_dest = first["destination"].as_str().expect("dest").to_string();
    assert_ne!(archive_dest, "s3-a", "the archive lives outside the primary's region");

    // A base backup, in a bucket outside region a, then a steady writer.
    let backup = lab.drctl_json(&["backup", "run", "--cluster", "app-pg", "--destination", "s3-c"]).expect("backup");
    assert_eq!(backup["state"], "done", "{backup}");
    let stop_writing = Arc::new(AtomicBool::new(false));
    let w = writer(pa.port, Arc::clone(&stop_writing));
    wait_for("a few hundred commits", Duration::from_secs(60), || {
        psql(pa.port, "SELECT count(*) FROM pitr").ok()?.parse::<u64>().ok().filter(|n| *n >= 300)
    })
    .expect("writes");

    // Region a dies whole: its database, agents, coordinator and bucket.
    let before = archive(&lab).expect("archive before the fault");
    let coordinator = lab.info.coordinators.iter().find(|c| c.region == "a").expect("coordinator a").pid;
    let s3a = lab.info.s3.iter().find(|s| s.region == "a").expect("s3 a").pid;
    for m in lab.info.members.iter().filter(|m| m.region == "a") {
        signal(m.agent_pid, libc::SIGKILL);
        kill_tree(m.pid);
    }
    signal(coordinator, libc::SIGKILL);
    signal(s3a, libc::SIGKILL);
    stop_writing.store(true, Ordering::SeqCst);
    let acked = w.join().expect("writer");
    assert!(acked.len() >= 300, "{} commits acknowledged", acked.len());
    println!(
        "{} commits acknowledged; the archive reported {} with lag {} ms just before the fault",
        acked.len(),
        before["end_lsn"],
        before["lag_ms"]
    );

    let end = before["end"].as_u64().expect("end");

    // 1. To the end of the lost primary's timeline: every commit the
    // archive had reached before the fault is there, and the restore says
    // where it stopped.
    let latest = drctl_restore(&lab, &lab.info.dir.join("pitr-latest"), &["--latest", "--timeline", "current"]);
    let ids = restored_ids(latest.port);
    let missing: Vec<&Acked> = acked.iter().filter(|a| !ids.contains(&a.id)).collect();
    let covered_but_missing: Vec<&Acked> = missing.iter().copied().filter(|a| a.lsn <= end).collect();
    assert!(covered_but_missing.is_empty(), "commits inside the archive ({}) missing from the restore: {covered_but_missing:?}", end);
    let newest = acked.iter().rfind(|a| ids.contains(&a.id)).expect("some commits restored");
    assert!(latest.record["reached_lsn"].as_u64().unwrap_or(0) >= newest.lsn.min(end), "{}", latest.record);
    assert!(latest.record["reached_commit_us"].as_i64().unwrap_or(0) >= newest.committed_us, "{}", latest.record);
    assert_eq!(latest.record["point"]["kind"], "latest");
    let last_ack = acked.last().map_or(0, |a| a.committed_us);
    let lost_window_ms = missing.first().map_or(0, |a| (last_ack - a.committed_us) / 1000);
    println!(
        "restore to latest: {} of {} acknowledged commits, {} lost (committed in the last {lost_window_ms} ms before the fault)",
        ids.len(),
        acked.len(),
        missing.len()
    );
    assert!(
        ids.iter().all(|id| acked.iter().any(|a| a.id == *id) || *id == acked.len() as u64 + 1),
        "nothing restored that was not written"
    );
    drop(latest);

    // A time after the last archived commit: the end of the archive, said so.
    let future = chrono_free_timestamp(last_ack + 3_600_000_000);
    let past = drctl_restore(&lab, &lab.info.dir.join("pitr-future"), &["--to-time", &future, "--timeline", "current"]);
    assert_eq!(restored_ids(past.port), ids, "a point past the archive's end restores all of it");
    assert_eq!(past.record["stopped_at_end"], true, "{}", past.record);
    drop(past);

    // 2. To a time in the middle, as PostgreSQL prints times: exactly the
    // commits at or before it, and no commit after it replayed.
    let middle = acked[acked.len() / 2];
    let at = chrono_free_timestamp(middle.committed_us);
    let expected: Vec<u64> = acked.iter().filter(|a| a.committed_us <= middle.committed_us).map(|a| a.id).collect();
    let to_time = drctl_restore(&lab, &lab.info.dir.join("pitr-time"), &["--to-time", &at]);
    let ids = restored_ids(to_time.port);
    assert_eq!(ids.iter().copied().collect::<Vec<_>>(), expected, "a restore to {at} holds exactly the commits at or before it");
    let reached = to_time.record["reached_commit_us"].as_i64().unwrap_or(0);
    let before_middle = acked[acked.len() / 2 - 1].committed_us;
    assert!(before_middle <= reached && reached <= middle.committed_us, "last commit replayed {reached}: {}", to_time.record);
    println!("restore to {at}: {} commits, as acknowledged at or before it", ids.len());
    drop(to_time);

    // Refused before anything is done: a position beyond the archive, an
    // unknown member. A directory that holds anything is never written.
    let beyond = format!("{:X}/0", (end >> 32) + 16);
    let e = lab.drctl_json(&["restore", "--cluster", "app-pg", "--to-lsn", &beyond, "--on", "pg-c", "--dir", "/nonexistent/r"]);
    assert!(e.as_ref().is_err_and(|e| e.to_string().contains("beyond the WAL archived")), "{e:?}");
    let e = lab.drctl_json(&["restore", "--cluster", "app-pg", "--latest", "--on", "pg-z", "--dir", "/nonexistent/r"]);
    assert!(e.as_ref().is_err_and(|e| e.to_string().contains("unknown member")), "{e:?}");
    let occupied = lab.info.dir.join("pitr-occupied");
    std::fs::create_dir_all(&occupied).expect("dir");
    std::fs::write(occupied.join("keep"), "precious").expect("file");
    let d = occupied.display().to_string();
    let e = lab.drctl_json(&["restore", "--cluster", "app-pg", "--latest", "--on", "pg-c", "--dir", &d]);
    assert!(e.as_ref().is_err_and(|e| e.to_string().contains("is not empty")), "{e:?}");
    assert_eq!(std::fs::read_to_string(occupied.join("keep")).ok().as_deref(), Some("precious"));

    // 3. Archiving goes on after the failover, on the new timeline: a
    // commit on the new primary is restored by following the timelines.
    let c = wait_for("a new primary", Duration::from_secs(60), || {
        let s = lab.status().ok()?;
        let c = s["clusters"].as_array()?.iter().find(|c| c["name"] == "app-pg")?.clone();
        (c["epoch"].as_u64()? >= 2 && c["decision_in_progress"] == 0).then_some(c)
    })
    .expect("failover");
    let primary = lab.member(c["primary"].as_str().expect("primary")).expect("member").clone();
    psql(primary.port, "INSERT INTO pitr VALUES (1000000)").expect("a write on the new primary");
    let after: u64 = psql(primary.port, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").expect("lsn").parse().expect("lsn");
    let moved = wait_for("the archive to hold the new primary's write", Duration::from_secs(60), || {
        archive(&lab).filter(|a| a["timeline"].as_u64().unwrap_or(0) >= 2 && a["end"].as_u64().unwrap_or(0) >= after)
    })
    .expect("archiving on the new timeline");
    println!("after the failover: {moved}");
    let newest = drctl_restore(&lab, &lab.info.dir.join("pitr-newest"), &["--latest"]);
    let ids = restored_ids(newest.port);
    assert!(ids.contains(&1_000_000), "the new timeline's write is not restored: {}", newest.record);
    assert!(newest.record["reached_timeline"].as_u64().unwrap_or(0) > moved["timeline"].as_u64().unwrap_or(0), "{}", newest.record);
    let listed = lab.drctl_json(&["restore", "list", "--cluster", "app-pg"]).expect("restore list");
    let states: Vec<&str> = listed["restores"].as_array().expect("restores").iter().filter_map(|r| r["state"].as_str()).collect();
    assert_eq!(states, ["done", "failed", "done", "done", "done"], "newest first: {listed}");
    drop(newest);
    let _ = lab.down();
}

/// `YYYY-MM-DD HH:MM:SS.ffffff+00` for µs since the epoch, via date(1).
fn chrono_free_timestamp(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let frac = us.rem_euclid(1_000_000);
    let out = Command::new("date").args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%d %H:%M:%S"]).output().expect("date");
    format!("{}.{frac:06}+00", String::from_utf8_lossy(&out.stdout).trim())
}

/// A lab whose WAL archiver streams, and where: the primary, the archive's
/// key, its destination and that destination's bucket.
struct Archiving {
    primary: drc_tests::lab::MemberInfo,
    key: String,
    destination: String,
    bucket: drc_tests::lab::S3Info,
}

fn archiving_lab(prefix: &str) -> (tempfile::TempDir, Lab, Archiving) {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("tempdir");
    let lab = Lab::up(dir.path()).expect("lab up");
    let primary = lab.member("pg-a").expect("pg-a").clone();
    let first = wait_for("the archiver to stream", Duration::from_secs(60), || {
        archive(&lab).filter(|a| a["error"] == "" && a["end"].as_u64().unwrap_or(0) > 0)
    })
    .expect("archiving");
    let (key, destination) = (first["key"].as_str().expect("key").to_string(), first["destination"].as_str().expect("dest").to_string());
    let bucket = lab.info.s3.iter().find(|s| format!("s3-{}", s.region) == destination).expect("the archive's bucket").clone();
    (dir, lab, Archiving { primary, key, destination, bucket })
}

#[test]
fn a_hung_bucket_delays_archiving_without_loss_and_a_corrupt_or_missing_wal_object_is_named() {
    let (dir, lab, a) = archiving_lab("drc-pitr-outage-");
    let (pa, key, dest, s3) = (a.primary, a.key, a.destination, a.bucket);
    let backup = lab.drctl_json(&["backup", "run", "--cluster", "app-pg"]).expect("backup");
    assert_eq!(backup["state"], "done", "{backup}");

    // The archive's bucket hangs: commits go on, the archive says it is stuck
    // and claims nothing it does not hold.
    signal(s3.pid, libc::SIGSTOP);
    for i in 0..20 {
        psql(
            pa.port,
            &format!(
                "INSERT INTO {} (item) SELECT 'during the outage {i}.' || g FROM generate_series(1, 10) g",
                drc_tests::lab::CHECK_TABLE
            ),
        )
        .expect("a commit while the bucket hangs");
    }
    let written: u64 = psql(pa.port, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").expect("lsn").parse().expect("lsn");
    let stuck = wait_for("the archive to say it is stuck", Duration::from_secs(60), || archive(&lab).filter(|a| a["error"] != ""));
    signal(s3.pid, libc::SIGCONT);
    let stuck = stuck.expect("an error while the bucket hangs");
    println!("while the bucket hung: {stuck}");
    assert!(stuck["end"].as_u64().unwrap_or(0) < written, "the archive claims no WAL it could not upload: {stuck}");

    // It catches up, and a recovery test that replays it holds every row.
    let caught = wait_for("the archive to catch up", Duration::from_secs(60), || {
        archive(&lab).filter(|a| a["error"] == "" && a["end"].as_u64().unwrap_or(0) >= written)
    })
    .expect("caught up");
    println!("after the bucket came back: {caught}");
    let t = lab.drctl_json(&["recovery-test", "run", "--cluster", "app-pg"]).expect("recovery test");
    assert_eq!(t["state"], "done", "{t}");
    let counts: Value = serde_json::from_str(t["checks"]["row_counts"].as_str().expect("row counts")).expect("json");
    assert_eq!(counts[drc_tests::lab::CHECK_TABLE], 200, "every commit made while the bucket hung is restored: {t}");

    // A corrupt object and a missing one: wal-fetch names them.
    // The oldest segment of timeline 1, whole or in chunks (a backup from a
    // standby switches no segment, so a quiet lab may have none whole).
    let tl1 = s3.root.join(&s3.bucket).join(&key).join("00000001");
    let mut objects: Vec<String> = std::fs::read_dir(&tl1)
        .expect("timeline 1 in the bucket")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    objects.sort();
    let first = objects.first().expect("an object of timeline 1").clone();
    let segment = first.trim_end_matches(".chunks").to_string();
    let object = if first.ends_with(".chunks") {
        std::fs::read_dir(tl1.join(&first)).expect("chunks").filter_map(|e| e.ok()).map(|e| e.path()).min().expect("a chunk")
    } else {
        tl1.join(&first)
    };
    let object_key = object.strip_prefix(s3.root.join(&s3.bucket)).expect("a key").display().to_string();
    let fetch = |name: &str| {
        let out = Command::new(drc_tests::bin("drc-agent"))
            .arg("--config")
            .arg(lab.info.dir.join("agent-pg-c.toml"))
            .args(["wal-fetch", "--destination", &dest, "--archive", &key, name])
            .arg(dir.path().join("fetched"))
            .output()
            .expect("wal-fetch");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(fetch(&segment).0, Some(0), "the intact segment");
    std::fs::write(&object, b"not what was archived").expect("corrupt the object");
    let (code, said) = fetch(&segment);
    assert_eq!(code, Some(126), "recovery must stop on a corrupt object: {said}");
    assert!(said.contains(&object_key), "the message names the object {object_key}: {said}");
    let (code, said) = fetch("0000000100000000000000FF");
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("0000000100000000000000FF") && said.contains("not in the archive"), "{said}");
    let _ = lab.down();
}

/// The segment number of an object name in the bucket (`<segment>`,
/// `<segment>.chunks`, `<segment>.partial`), 16 MiB segments.
fn segment_of(name: &str) -> Option<u64> {
    let seg = name.split('.').next()?;
    (seg.len() == 24).then(|| Some(u64::from_str_radix(&seg[8..16], 16).ok()? * 256 + u64::from_str_radix(&seg[16..24], 16).ok()?))?
}

#[test]
fn retention_deletes_the_archived_wal_no_kept_backup_needs_and_the_oldest_kept_one_still_replays() {
    let (_dir, lab, a) = archiving_lab("drc-pitr-retention-");
    let (pa, key, s3) = (a.primary, a.key, a.bucket);

    // The segments of timeline 1 in the bucket; a chunks folder the store
    // left empty holds nothing.
    let tl1 = s3.root.join(&s3.bucket).join(&key).join("00000001");
    let segments = || -> Vec<u64> {
        let holds = |p: &Path| !p.is_dir() || std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some());
        let mut v: Vec<u64> = std::fs::read_dir(&tl1)
            .map(|d| {
                d.filter_map(|e| e.ok()).filter(|e| holds(&e.path())).filter_map(|e| segment_of(&e.file_name().to_string_lossy())).collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };

    // Four rounds of rows, a checkpoint (a backup from a standby starts at
    // the newest one it replayed), a new segment and a backup; the lab
    // keeps 3 backups.
    let mut backups = Vec::new();
    let mut first_segment = None;
    for round in 0..4 {
        let rows = format!("INSERT INTO {} (item) SELECT 'round {round} ' || g FROM generate_series(1, 50) g", drc_tests::lab::CHECK_TABLE);
        psql(pa.port, &rows).expect("rows");
        psql(pa.port, "CHECKPOINT").expect("checkpoint");
        psql(pa.port, "SELECT pg_switch_wal()").expect("switch");
        let written: u64 = psql(pa.port, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").expect("lsn").parse().expect("lsn");
        wait_for("the archive to hold the round", Duration::from_secs(60), || {
            archive(&lab).filter(|a| a["end"].as_u64().unwrap_or(0) >= written)
        })
        .expect("archived");
        first_segment = first_segment.or_else(|| segments().first().copied());
        let b = lab.drctl_json(&["backup", "run", "--cluster", "app-pg", "--destination", "s3-c"]).expect("backup");
        assert_eq!(b["state"], "done", "{b}");
        backups.push(b);
    }
    let listed = wait_for("retention to drop the oldest backup", Duration::from_secs(60), || {
        let l = lab.drctl_json(&["backup", "list", "--cluster", "app-pg"]).ok()?;
        (l["backups"].as_array()?.len() == 3).then_some(l)
    })
    .expect("three backups kept");
    let oldest = listed["backups"].as_array().expect("backups").last().expect("oldest").clone();
    assert_eq!(oldest["id"], backups[1]["id"], "the second backup is the oldest kept");
    let start = oldest["manifest"]["lsn_start"].as_str().expect("lsn_start");
    let horizon = start.parse::<drc_model::wal::Lsn>().expect("an LSN").0;
    let horizon_segment = horizon >> 24;

    // The bucket keeps the segments from the oldest kept backup's on.
    let kept = wait_for("the WAL before the oldest kept backup to go", Duration::from_secs(60), || {
        let s = segments();
        (s.first().is_some_and(|first| *first >= horizon_segment)).then_some(s)
    })
    .unwrap_or_else(|e| panic!("{e}: segments {:?}, horizon segment {horizon_segment}", segments()));
    println!(
        "segments kept: {kept:?}; the oldest kept backup starts in segment {horizon_segment}; the first archived was {first_segment:?}"
    );
    assert!(first_segment.is_some_and(|f| f < horizon_segment), "retention had WAL to delete: {first_segment:?}, {horizon_segment}");
    assert!(kept.contains(&horizon_segment), "the segment the oldest kept backup starts in stays: {kept:?}");

    // That backup still restores, with every row written after it.
    let t = lab.drctl_json(&["recovery-test", "run", "--cluster", "app-pg", "--backup", &oldest["id"].to_string()]).expect("recovery test");
    assert_eq!(t["state"], "done", "{t}");
    let counts: Value = serde_json::from_str(t["checks"]["row_counts"].as_str().expect("row counts")).expect("json");
    assert_eq!(counts[drc_tests::lab::CHECK_TABLE], 200, "the oldest kept backup and the WAL after it: {t}");

    // On request, to a random position in the window: from the newest backup
    // ending before it, replayed at least to it.
    let t = lab.drctl_json(&["recovery-test", "run", "--cluster", "app-pg", "--random-point"]).expect("recovery test to a random point");
    assert_eq!(t["state"], "done", "{t}");
    assert_eq!(t["point"]["kind"], "lsn", "{t}");
    let target = t["point"]["lsn"].as_u64().expect("lsn");
    let lsn = |s: &str| s.parse::<drc_model::wal::Lsn>().expect("an LSN").0;
    let reached = lsn(t["checks"]["reached_lsn"].as_str().expect("reached_lsn"));
    assert!(reached >= target, "replayed to {reached}, short of {target}: {t}");
    let base = listed["backups"].as_array().expect("backups").iter().find(|b| b["id"] == t["backup_id"]).expect("a kept backup").clone();
    assert!(lsn(base["manifest"]["lsn_end"].as_str().expect("lsn_end")) <= target, "the base ends before the point: {base}");
    println!("random point {target}: replayed to {reached} from backup {}", base["id"]);

    // A backup may leave its WAL to the archive: done once the archive holds
    // it, without it in its object, and restored from the archive.
    let doc = lab.topology().replacen("keep_last = 3\n", "keep_last = 3\nwal = \"archive\"\n", 1);
    let file = lab.info.dir.join("topology-wal-archive.toml");
    std::fs::write(&file, doc).expect("topology");
    lab.drctl_json(&["apply", "-f", &file.display().to_string()]).expect("apply");
    psql(pa.port, &format!("INSERT INTO {} (item) SELECT 'round 4 ' || g FROM generate_series(1, 25) g", drc_tests::lab::CHECK_TABLE))
        .expect("rows");
    let b = lab.drctl_json(&["backup", "run", "--cluster", "app-pg", "--destination", "s3-c"]).expect("backup");
    assert_eq!(b["state"], "done", "{b}");
    assert_eq!(b["manifest"]["wal"], "archive", "{b}");
    println!("backup without its WAL: {}", b["manifest"]);
    assert!(b["manifest"]["pipeline"].as_str().is_some_and(|p| p.contains("-X none")), "{b}");
    let t = lab.drctl_json(&["recovery-test", "run", "--cluster", "app-pg", "--backup", &b["id"].to_string()]).expect("recovery test");
    assert_eq!(t["state"], "done", "{t}");
    let counts: Value = serde_json::from_str(t["checks"]["row_counts"].as_str().expect("row counts")).expect("json");
    assert_eq!(counts[drc_tests::lab::CHECK_TABLE], 225, "a backup without its WAL, restored with the archive's: {t}");
    let _ = lab.down();
}

#[test]
fn a_restore_to_a_time_by_hand_with_standard_tools_follows_the_runbook() {
    let (dir, lab, a) = archiving_lab("drc-pitr-by-hand-");
    let pa = a.primary.clone();
    let backup = lab.drctl_json(&["backup", "run", "--cluster", "app-pg", "--destination", "s3-c"]).expect("backup");
    assert_eq!(backup["state"], "done", "{backup}");
    let table = drc_tests::lab::CHECK_TABLE;
    psql(pa.port, &format!("INSERT INTO {table} (item) SELECT 'before ' || g FROM generate_series(1, 30) g")).expect("rows before");
    let target = psql(pa.port, "SELECT clock_timestamp()").expect("a time between the two");
    psql(pa.port, &format!("INSERT INTO {table} (item) SELECT 'after ' || g FROM generate_series(1, 20) g")).expect("rows after");
    let written: u64 = psql(pa.port, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").expect("lsn").parse().expect("lsn");
    wait_for("the archive to hold every row", Duration::from_secs(60), || {
        archive(&lab).filter(|s| s["end"].as_u64().unwrap_or(0) >= written)
    })
    .expect("archived");

    // drc is down: the buckets, the identity file and standard tools.
    let backups = lab.info.s3.iter().find(|s| s.region == "c").expect("s3 c");
    let restore = dir.path().join("by-hand");
    let port = drc_tests::free_port();
    let steps = drc_tests::runbook_blocks("restore-by-hand.md", "sh");
    let script =
        format!("set -euo pipefail\n{}{}", steps[..3].concat(), drc_tests::runbook_blocks("restore-by-hand.md", "sh pitr").concat());
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("AWS_ACCESS_KEY_ID", &backups.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &backups.secret_key)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("ENDPOINT", &backups.endpoint)
        .env("BUCKET", &backups.bucket)
        .env("CLUSTER", "app-pg")
        .env("IDENTITY", &lab.info.backup.identity_file)
        .env("RESTORE", &restore)
        .env("PORT", port.to_string())
        .env("WAL_ENDPOINT", &a.bucket.endpoint)
        .env("WAL_BUCKET", &a.bucket.bucket)
        .env("WAL_ACCESS_KEY", &a.bucket.access_key)
        .env("WAL_SECRET_KEY", &a.bucket.secret_key)
        .env("ARCHIVE", &a.key)
        .env("TARGET_TIME", &target)
        .output()
        .expect("bash");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("runbook stdout:\n{stdout}\nrunbook stderr:\n{stderr}");
    let count = psql(port, &format!("SELECT count(*) FROM {table}"));
    stop(&restore);
    assert!(
        out.status.success(),
        "the runbook's steps failed: {}",
        std::fs::read_to_string(restore.join("postgres.log")).unwrap_or_default()
    );
    assert!(stdout.contains("recovered to "), "{stdout}");
    assert_eq!(count.expect("count"), "30", "the rows committed before {target}, and none after");
    let _ = lab.down();
}
