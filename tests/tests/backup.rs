//! Backups to another region's bucket and recovery tests, through the lab:
//! real PostgreSQL, Redis, s3s-fs servers, age, zstd and the drc binaries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use drc_tests::lab::{postgres::psql, redis::cli, signal, Lab, CHECK_TABLE};
use drc_tests::{holds_for, wait_for};
use serde_json::Value;

fn lab() -> (tempfile::TempDir, Lab) {
    let dir = tempfile::Builder::new().prefix("drc-backup-test-").tempdir().expect("tempdir");
    let lab = Lab::up(dir.path()).expect("lab up");
    (dir, lab)
}

/// Waits until every replica of `cluster` reports no lag.
fn caught_up(lab: &Lab, cluster: &str) {
    wait_for("replicas caught up", Duration::from_secs(60), || {
        let h = lab.members_health().ok()?;
        lab.info
            .members
            .iter()
            .filter(|m| m.cluster == cluster)
            .all(|m| h[&m.id]["healthy"] == true && h[&m.id]["lag_bytes"] == 0)
            .then_some(())
    })
    .expect("caught up");
}

/// Where s3s-fs keeps an object of a region's bucket.
fn object_path(lab: &Lab, region: &str, key: &str) -> PathBuf {
    let s3 = lab.info.s3.iter().find(|s| s.region == region).expect("s3 of region");
    s3.root.join(&s3.bucket).join(key)
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string()
}

fn scratch_is_empty(lab: &Lab) -> bool {
    std::fs::read_dir(lab.info.dir.join("scratch")).map(|d| d.count() == 0).unwrap_or(true)
}

/// A PostgreSQL backup object as an attacker with the (public) recipient
/// could write it: tar members `../escape-dotdot`, `/tmp/drc-escape-abs`,
/// a link `out` to `outside` and `out/escape-link`, and a `postmaster.pid`
/// naming `pid`; compressed and encrypted like a real one.
fn hostile_backup(lab: &Lab, outside: &Path, pid: u32) -> Vec<u8> {
    let script = r#"
import io, sys, tarfile
out, pid = sys.argv[1], sys.argv[2]
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as t:
    def add(name, data=b"x", kind=tarfile.REGTYPE, link=""):
        i = tarfile.TarInfo(name); i.type = kind; i.linkname = link; i.size = 0 if link else len(data)
        t.addfile(i, None if link else io.BytesIO(data))
    add("../escape-dotdot")
    add("/tmp/drc-escape-abs")
    add("out", kind=tarfile.SYMTYPE, link=out)
    add("out/escape-link")
    add("postmaster.pid", (pid + "
/nowhere
").encode())
sys.stdout.buffer.write(buf.getvalue())
"#;
    let recipient = lab.info.backup.recipient.clone();
    let shell = format!("python3 -c \"$0\" {} {pid} | zstd -q -c | age -r {recipient}", outside.display());
    let out = Command::new("sh").args(["-c", &shell, script]).output().expect("a hostile archive");
    assert!(out.status.success() && !out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn region_of(lab: &Lab, member: &str) -> String {
    lab.member(member).expect("member").region.clone()
}

#[test]
fn a_backup_lands_in_another_region_and_a_recovery_test_restores_it_with_the_right_counts() {
    let (_dir, lab) = lab();
    let pa = lab.member("pg-a").expect("pg-a").clone();
    psql(pa.port, &format!("INSERT INTO {CHECK_TABLE} (item) SELECT 'order ' || g FROM generate_series(1, 500) g")).expect("rows");
    caught_up(&lab, "app-pg");

    // PostgreSQL: from a standby, into a bucket of another region.
    let b = lab.drctl_json(&["backup", "run", "--cluster", "app-pg"]).expect("backup");
    println!("backup: {b}");
    assert_eq!(b["state"], "done", "{b}");
    let member = b["member"].as_str().expect("member");
    assert_ne!(member, "pg-a", "taken from a standby, not the primary: {b}");
    assert_ne!(b["destination_region"], b["member_region"], "stored outside the source's region: {b}");
    let dest_region = b["destination_region"].as_str().expect("region");
    let data = object_path(&lab, dest_region, b["data_key"].as_str().expect("key"));
    assert!(data.exists(), "{} in region {dest_region}'s bucket", data.display());
    assert_eq!(sha256(&data), b["sha256"], "the recorded SHA-256 is the object's");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(object_path(&lab, dest_region, b["manifest_key"].as_str().expect("key"))).expect("manifest"))
            .expect("manifest json");
    for field in [
        "cluster",
        "member",
        "region",
        "kind",
        "started_at_ms",
        "finished_at_ms",
        "lsn_start",
        "lsn_end",
        "raw_bytes",
        "stored_bytes",
        "tools",
        "recipients",
    ] {
        assert!(!manifest[field].is_null(), "manifest has {field}: {manifest}");
    }
    assert_eq!(manifest["objects"][0]["sha256"], b["sha256"]);
    assert_eq!(manifest["recipients"][0], lab.info.backup.recipient.as_str());
    assert!(manifest["raw_bytes"].as_u64().expect("raw") > manifest["stored_bytes"].as_u64().expect("stored"), "compressed: {manifest}");
    // Only ciphertext in the bucket.
    let head = std::fs::read(&data).expect("object");
    assert!(head.starts_with(b"age-encryption.org/v1"), "the object is age-encrypted");

    // Rows written after the backup reach the WAL archive.
    psql(pa.port, &format!("INSERT INTO {CHECK_TABLE} (item) SELECT 'late order ' || g FROM generate_series(1, 25) g")).expect("rows");
    let written: u64 = psql(pa.port, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").expect("lsn").parse().expect("lsn");
    wait_for("the WAL archive to hold the late rows", Duration::from_secs(60), || {
        let s = lab.status().ok()?;
        let pg = s["clusters"].as_array()?.iter().find(|c| c["name"] == "app-pg")?.clone();
        (pg["wal_archive"]["end"].as_u64()? >= written).then_some(())
    })
    .expect("archived");

    // The recovery test restores the backup elsewhere, replays the archived
    // WAL and counts the rows: the late ones too.
    let t = lab.drctl_json(&["recovery-test", "run", "--cluster", "app-pg"]).expect("recovery test");
    println!("recovery test: {t}");
    assert_eq!(t["state"], "done", "{t}");
    assert_eq!(t["backup_id"], b["id"]);
    assert_ne!(region_of(&lab, t["member"].as_str().expect("member")), "a", "restored outside the primary's region: {t}");
    let counts: Value = serde_json::from_str(t["checks"]["row_counts"].as_str().expect("row counts")).expect("json");
    assert_eq!(counts[CHECK_TABLE], 525, "the backup's rows and the archived ones: {t}");
    assert!(t["checks"]["wal_replayed"].as_str().is_some_and(|w| !w.starts_with("0 files")), "{t}");
    assert_eq!(t["checks"]["check:lab schema"], "ok", "the topology's own check ran: {t}");
    assert_eq!(t["checks"]["checksums"], "ok", "the lab's data carries checksums: every page was read back: {t}");
    assert!(t["rto_ms"].as_u64().expect("rto") > 0);
    assert!(t["rpo_ms"].as_u64().is_some());
    assert!(scratch_is_empty(&lab), "the scratch instance is removed");
    let listed = lab.drctl_json(&["backup", "list", "--cluster", "app-pg"]).expect("list");
    assert_eq!(listed["backups"].as_array().expect("backups").len(), 1);

    // Redis: the same pipeline, an RDB from a replica.
    let ra = lab.member("redis-a").expect("redis-a").clone();
    for i in 0..200 {
        cli(ra.port, &["SET", &format!("job:{i}"), "queued"]).expect("set");
    }
    caught_up(&lab, "app-redis");
    let keys: u64 = cli(ra.port, &["DBSIZE"]).expect("dbsize").parse().expect("number");
    let rb = lab.drctl_json(&["backup", "run", "--cluster", "app-redis"]).expect("redis backup");
    assert_eq!(rb["state"], "done", "{rb}");
    assert_ne!(rb["member"], "redis-a", "{rb}");
    let rt = lab.drctl_json(&["recovery-test", "run", "--cluster", "app-redis"]).expect("redis recovery test");
    assert_eq!(rt["state"], "done", "{rt}");
    assert_eq!(rt["checks"]["key_count"], keys.to_string(), "{rt}");
    assert_eq!(rt["checks"]["check:lab schema"], "ok", "the topology's Redis check ran: {rt}");

    // A corrupted object: the recovery test names it, and cleans up.
    let mut bytes = std::fs::read(&data).expect("object");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes).expect("corrupt");
    let bad = lab.drctl_json(&["recovery-test", "run", "--cluster", "app-pg"]).expect_err("corrupt backup");
    println!("corrupted object: {bad}");
    assert!(bad.to_string().contains("the object changed after the backup; nothing of that part was restored"), "{bad}");
    assert!(bad.to_string().contains(b["data_key"].as_str().expect("key")), "names the object: {bad}");
    assert!(scratch_is_empty(&lab), "cleaned up after a failure");

    // A hostile object in its place (a valid age file: the recipient is
    // public): members that climb out, an absolute path, a link out and a
    // postmaster.pid naming a live process. Refused before tar sees a byte.
    let outside = lab.info.dir.join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    let mut bystander = Command::new("sleep").arg("600").spawn().expect("a bystander process");
    let hostile = hostile_backup(&lab, &outside, bystander.id());
    std::fs::write(&data, &hostile).expect("plant");
    let bad = lab.drctl_json(&["recovery-test", "run", "--cluster", "app-pg"]).expect_err("hostile backup");
    println!("hostile object: {bad}");
    assert!(bad.to_string().contains("the backup recorded"), "{bad}");
    assert_eq!(std::fs::read_dir(&outside).expect("outside").count(), 0, "nothing was written outside the scratch directory");
    assert!(!lab.info.dir.join("escape-dotdot").exists() && !Path::new("/tmp/drc-escape-abs").exists());
    assert!(bystander.try_wait().expect("bystander").is_none(), "the process a planted postmaster.pid names was not signalled");
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert!(scratch_is_empty(&lab), "cleaned up after a failure");
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes).expect("repair");

    // A wrong age identity: a clear error.
    let identity = std::fs::read(&lab.info.backup.identity_file).expect("identity");
    let other = lab.info.dir.join("other.key");
    let made = Command::new("age-keygen").arg("-o").arg(&other).output().expect("age-keygen");
    assert!(made.status.success());
    std::fs::copy(&other, &lab.info.backup.identity_file).expect("swap identity");
    let wrong = lab.drctl_json(&["recovery-test", "run", "--cluster", "app-pg"]).expect_err("wrong identity");
    println!("wrong identity: {wrong}");
    assert!(wrong.to_string().contains("no identity matched"), "{wrong}");
    std::fs::write(&lab.info.backup.identity_file, identity).expect("restore identity");

    // The destination refuses the credentials (the agent reads its secret
    // file at each job): a clear failure; the earlier backup is intact.
    let secret = lab.info.dir.join(format!("s3-{dest_region}.secret"));
    let good = std::fs::read(&secret).expect("secret");
    std::fs::write(&secret, "not-the-secret").expect("wrong secret");
    let refused = lab.drctl_json(&["backup", "run", "--cluster", "app-pg", "--destination", &format!("s3-{dest_region}")]);
    println!("wrong credentials: {refused:?}");
    let refused = refused.expect_err("wrong credentials");
    assert!(refused.to_string().contains("refused the credentials"), "{refused}");
    std::fs::write(&secret, good).expect("restore secret");
    assert_eq!(sha256(&data), b["sha256"], "the earlier backup is intact");

    // The destination's S3 server down: a clear failure after bounded
    // retries; the earlier backup is intact and listed.
    let s3 = lab.info.s3.iter().find(|s| s.region == dest_region).expect("s3").clone();
    drc_tests::lab::signal(s3.pid, libc::SIGKILL);
    let down = lab.drctl_json(&["backup", "run", "--cluster", "app-pg", "--destination", &format!("s3-{dest_region}")]);
    println!("destination down: {down:?}");
    let down = down.expect_err("destination down");
    assert!(down.to_string().contains(&format!("destination s3-{dest_region}")), "{down}");
    assert_eq!(sha256(&data), b["sha256"], "the earlier backup is intact");
    let listed = lab.drctl_json(&["backup", "list", "--cluster", "app-pg"]).expect("list");
    let states: Vec<&str> = listed["backups"].as_array().expect("backups").iter().map(|b| b["state"].as_str().unwrap_or("")).collect();
    assert_eq!(states, ["failed", "failed", "done"], "{listed}");

    // Bad requests.
    let e = lab.drctl_json(&["backup", "run", "--cluster", "nope"]).expect_err("unknown cluster");
    assert!(e.to_string().contains("unknown cluster"), "{e}");
    let e = lab.drctl_json(&["recovery-test", "run", "--cluster", "app-pg", "--backup", "99"]).expect_err("unknown backup");
    assert!(e.to_string().contains("no backup 99"), "{e}");
}

/// The `sh` blocks of the restore-by-hand runbook, in order.
fn runbook_steps() -> String {
    drc_tests::runbook_blocks("restore-by-hand.md", "sh").concat()
}

#[test]
fn a_backup_is_restored_by_hand_with_standard_tools_following_the_runbook() {
    let (_dir, lab) = lab();
    let pa = lab.member("pg-a").expect("pg-a").clone();
    psql(pa.port, &format!("INSERT INTO {CHECK_TABLE} (item) SELECT 'order ' || g FROM generate_series(1, 321) g")).expect("rows");
    caught_up(&lab, "app-pg");
    let b = lab.drctl_json(&["backup", "run", "--cluster", "app-pg"]).expect("backup");
    assert_eq!(b["state"], "done", "{b}");
    let s3 = lab.info.s3.iter().find(|s| s.region == b["destination_region"]).expect("s3").clone();

    // drc is down: only the bucket, the identity file and standard tools.
    let restore = lab.info.dir.join("by-hand");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let script = format!("set -euo pipefail\n{}", runbook_steps());
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("ENDPOINT", &s3.endpoint)
        .env("BUCKET", &s3.bucket)
        .env("CLUSTER", "app-pg")
        .env("IDENTITY", &lab.info.backup.identity_file)
        .env("RESTORE", &restore)
        .env("PORT", port.to_string())
        .output()
        .expect("bash");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("runbook stdout:\n{stdout}\nrunbook stderr:\n{stderr}");
    let stop = || {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "-D"])
            .arg(restore.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    };
    if !out.status.success() {
        stop();
        panic!("the runbook's steps failed");
    }
    assert!(stdout.contains("restored and accepting connections"), "{stdout}");
    let count = psql(port, &format!("SELECT count(*) FROM {CHECK_TABLE}"));
    stop();
    assert_eq!(count.expect("count").trim(), "321");
}

type Seen = std::collections::BTreeMap<u64, (u64, String, String)>;

/// Adds every listed backup of app-redis to `seen`; returns how many are done.
fn observe(lab: &Lab, seen: &mut Seen) -> usize {
    if let Ok(l) = lab.drctl_json(&["backup", "list", "--cluster", "app-redis"]) {
        for b in l["backups"].as_array().into_iter().flatten() {
            let id = b["id"].as_u64().unwrap_or(0);
            let error = b["error"].as_str().unwrap_or("").to_string();
            seen.insert(id, (b["scheduled_at"].as_u64().unwrap_or(0), b["state"].as_str().unwrap_or("").to_string(), error));
        }
    }
    seen.values().filter(|(_, s, _)| s == "done").count()
}

#[test]
fn scheduled_backups_fire_once_per_occurrence_across_a_leader_kill_and_retention_keeps_the_newest() {
    let (_dir, lab) = lab();
    let set = lab.drctl_json(&["schedule", "set", "--cluster", "app-redis", "--backup", "*/3 * * * * *"]).expect("schedule");
    println!("{set}");
    let bad = lab.drctl_json(&["schedule", "set", "--cluster", "app-redis", "--backup", "61 * * * *"]).expect_err("bad cron");
    assert!(bad.to_string().contains("cron expression"), "{bad}");

    // Every backup ever listed, by id: (scheduled_at, state).
    let mut seen: Seen = Default::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while observe(&lab, &mut seen) < 2 {
        assert!(std::time::Instant::now() < deadline, "two scheduled backups: {seen:?}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // SIGKILL the leader: the next one fires the following occurrences,
    // none twice.
    let leader = lab.status().expect("status")["leader_id"].as_u64().expect("leader");
    let pid = lab.info.coordinators.iter().find(|c| c.id == leader).expect("leader").pid;
    drc_tests::lab::signal(pid, libc::SIGKILL);
    let before = seen.len();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !(observe(&lab, &mut seen) >= 3 && seen.len() >= before + 3) {
        assert!(std::time::Instant::now() < deadline, "three more scheduled backups under the new leader: {seen:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    for _ in 0..10 {
        observe(&lab, &mut seen);
        std::thread::sleep(Duration::from_millis(300));
    }
    println!("backups seen (id -> scheduled_at, state, error): {seen:?}");
    let mut occurrences: Vec<u64> = seen.values().map(|(at, _, _)| *at).filter(|at| *at != 0).collect();
    let n = occurrences.len();
    occurrences.sort();
    occurrences.dedup();
    assert_eq!(occurrences.len(), n, "no occurrence fired twice: {seen:?}");
    assert!(occurrences.iter().all(|at| at % 3_000 == 0), "every firing is an occurrence of the schedule: {occurrences:?}");

    // Retention (keep_last = 3 in the lab): the catalog keeps the newest
    // three completed backups, and the bucket holds exactly their objects.
    lab.drctl_json(&["schedule", "set", "--cluster", "app-redis", "--backup", "off"]).expect("off");
    // Retention runs after each completed backup: once none runs, at most
    // three completed ones are left.
    let l = wait_for("retention to leave the newest three", Duration::from_secs(60), || {
        let l = lab.drctl_json(&["backup", "list", "--cluster", "app-redis"]).ok()?;
        let list = l["backups"].as_array()?;
        let running = list.iter().any(|b| b["state"] == "running");
        let done = list.iter().filter(|b| b["state"] == "done").count();
        (!running && (1..=3).contains(&done)).then_some(l)
    })
    .expect("retention");
    let done: Vec<&Value> = l["backups"].as_array().expect("backups").iter().filter(|b| b["state"] == "done").collect();
    observe(&lab, &mut seen);
    let newest_ids: Vec<u64> = seen.iter().filter(|(_, (_, s, _))| s == "done").map(|(id, _)| *id).rev().take(done.len()).collect();
    let mut kept: Vec<u64> = done.iter().map(|b| b["id"].as_u64().unwrap_or(0)).collect();
    kept.sort_by(|a, b| b.cmp(a));
    assert_eq!(kept, newest_ids, "the newest are kept: {l}");
    for b in &done {
        let region = b["destination_region"].as_str().expect("region");
        assert!(object_path(&lab, region, b["data_key"].as_str().expect("key")).exists(), "kept backup's object exists: {b}");
    }
    let region = done[0]["destination_region"].as_str().expect("region");
    let s3 = lab.info.s3.iter().find(|s| s.region == region).expect("s3");
    // s3s-fs keeps the emptied folders of deleted objects: count the ones
    // that still hold objects.
    let holding = std::fs::read_dir(s3.root.join(&s3.bucket).join("drc/app-redis"))
        .expect("bucket dir")
        .filter_map(Result::ok)
        .filter(|d| std::fs::read_dir(d.path()).map(|mut f| f.next().is_some()).unwrap_or(false))
        .count();
    assert_eq!(holding, done.len(), "expired backups' objects are deleted from the bucket");
    let newest = seen.keys().max().copied().unwrap_or(0);
    holds_for("a removed schedule firing no more", Duration::from_secs(4), || {
        let l = lab.drctl_json(&["backup", "list", "--cluster", "app-redis"]).ok()?;
        let ids: Vec<u64> = l["backups"].as_array()?.iter().filter_map(|b| b["id"].as_u64()).collect();
        Some(if ids.iter().all(|id| *id <= newest) { Ok(()) } else { Err(format!("a backup after {newest}: {l}")) })
    })
    .expect("no more firings");
}

/// A tmpfs mounted over the lab's scratch directory, unmounted on drop
/// (also when the test fails).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, bytes: u64) -> SmallDisk {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={}k,mode=0755", bytes.div_ceil(1024)), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount");
        assert!(out.status.success(), "mount tmpfs on {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Runs `drctl ARGS --no-wait` for a job, then polls `show` until it ends;
/// returns the final record and every progress report seen on the way.
fn follow(lab: &Lab, run: &[&str], show: &str) -> (Value, Vec<Value>) {
    let job = lab.drctl_json(&[run, &["--no-wait"]].concat()).expect("job started");
    let id = job["id"].as_u64().expect("id").to_string();
    let mut seen = Vec::new();
    let end = wait_for("the job to end", Duration::from_secs(300), || {
        let j = lab.drctl_json(&[show, "show", &id]).ok()?;
        if !j["progress"].is_null() {
            seen.push(j["progress"].clone());
        }
        std::thread::sleep(Duration::from_millis(100));
        (j["state"] != "running").then_some(j)
    })
    .expect("job ended");
    (end, seen)
}

#[test]
fn long_jobs_report_progress_and_a_full_disk_fails_a_recovery_test_cleanly() {
    let (_dir, lab) = lab();
    let pa = lab.member("pg-a").expect("pg-a").clone();
    // About 45 MB that compresses poorly: long enough to report progress.
    psql(
        pa.port,
        "CREATE TABLE bulk AS SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) AS v FROM generate_series(1, 300000) g",
    )
    .expect("bulk rows");
    caught_up(&lab, "app-pg");
    let watch = Command::new(drc_tests::bin("drctl"))
        .args(["--endpoints", &lab.info.endpoints, "-o", "json", "watch"])
        .args(lab.creds().drctl_args())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("drctl watch");

    let (b, seen) = follow(&lab, &["backup", "run", "--cluster", "app-pg"], "backup");
    println!("backup: {b}\nprogress: {seen:?}");
    assert_eq!(b["state"], "done", "{b}");
    let up = seen.iter().find(|p| p["phase"] == "upload" && p["bytes_done"].as_u64() > Some(0)).expect("upload progress in show");
    assert!(up["bytes_total"].as_u64() > Some(40 << 20), "the estimate is the database's size: {up}");
    assert!(up["rate_bytes_per_s"].as_u64() > Some(0), "{up}");
    assert!(up["eta_s"].is_u64(), "an ETA: {up}");
    assert!(up["bytes_done"].as_u64() <= b["raw_bytes"].as_u64(), "{up}");

    let (t, seen) = follow(&lab, &["recovery-test", "run", "--cluster", "app-pg"], "recovery-test");
    println!("recovery test: {t}\nprogress: {seen:?}");
    assert_eq!(t["state"], "done", "{t}");
    assert_eq!(t["checks"]["check:lab schema"], "ok", "the topology's own check ran: {t}");
    let down = seen.iter().find(|p| p["phase"] == "download").expect("download progress");
    assert_eq!(down["bytes_total"], b["stored_bytes"], "{down}");

    signal(watch.id(), libc::SIGTERM);
    let events = watch.wait_with_output().expect("watch output");
    let events: Vec<Value> = String::from_utf8_lossy(&events.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(
        events.iter().any(|e| e["kind"] == "progress" && e["message"].as_str().unwrap_or("").contains("MiB/s")),
        "drctl watch shows progress: {events:?}"
    );

    // One backup per cluster at a time: with every bucket frozen, the first
    // stays running and a second is refused; a recovery test may still start.
    for s3 in &lab.info.s3 {
        signal(s3.pid, libc::SIGSTOP);
    }
    let first = lab.drctl_json(&["backup", "run", "--cluster", "app-pg", "--no-wait"]).expect("a backup starts");
    let second = lab.drctl_json(&["backup", "run", "--cluster", "app-pg", "--no-wait"]).expect_err("a second one at once");
    println!("second backup: {second}");
    assert!(second.to_string().contains(&format!("backup {} of app-pg is still running", first["id"])), "{second}");
    for s3 in &lab.info.s3 {
        signal(s3.pid, libc::SIGCONT);
    }
    wait_for("the first backup to end", Duration::from_secs(120), || {
        let j = lab.drctl_json(&["backup", "show", &first["id"].to_string()]).ok()?;
        (j["state"] != "running").then_some(())
    })
    .expect("ended");

    // A disk too small for the backup: refused before the download.
    let scratch = lab.info.dir.join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let raw = b["raw_bytes"].as_u64().expect("raw");
    {
        let _disk = SmallDisk::mount(&scratch, 1 << 20);
        let e = lab.drctl_json(&["recovery-test", "run", "--cluster", "app-pg"]).expect_err("no room");
        println!("tiny disk: {e}");
        assert!(e.to_string().contains("disk full") && e.to_string().contains("MiB free"), "{e}");
        assert!(scratch_is_empty(&lab), "nothing left behind");
    }
    // Room enough at the start; the disk fills up during the restore (the
    // test fills it once the download is under way): a clear failure, and
    // the partial restore is removed.
    {
        let _disk = SmallDisk::mount(&scratch, raw + (64 << 20));
        let job = lab.drctl_json(&["recovery-test", "run", "--cluster", "app-pg", "--no-wait"]).expect("started");
        let id = job["id"].as_u64().expect("id").to_string();
        wait_for("the download to start", Duration::from_secs(120), || {
            let j = lab.drctl_json(&["recovery-test", "show", &id]).ok()?;
            assert_eq!(j["state"], "running", "ended before the disk filled up: {j}");
            (j["progress"]["phase"] == "download").then_some(())
        })
        .expect("download");
        let filler = scratch.join("filler");
        let fill = Command::new("dd").args(["if=/dev/zero", "bs=1M"]).arg(format!("of={}", filler.display())).output().expect("dd");
        assert!(String::from_utf8_lossy(&fill.stderr).contains("No space left"), "the disk is full");
        let end = wait_for("the test to end", Duration::from_secs(300), || {
            let j = lab.drctl_json(&["recovery-test", "show", &id]).ok()?;
            (j["state"] != "running").then_some(j)
        })
        .expect("ended");
        println!("disk filled up: {end}");
        assert_eq!(end["state"], "failed", "{end}");
        assert!(end["error"].as_str().unwrap_or("").contains("disk full in the scratch directory"), "{end}");
        std::fs::remove_file(&filler).expect("remove filler");
        assert!(scratch_is_empty(&lab), "the partial restore is removed");
    }
    // The cluster is unharmed and the next test passes.
    let again = lab.drctl_json(&["recovery-test", "run", "--cluster", "app-pg"]).expect("recovery test with room");
    assert_eq!(again["state"], "done", "{again}");
    let listed = lab.drctl_json(&["recovery-test", "list", "--cluster", "app-pg"]).expect("list");
    let states: Vec<&str> = listed["recovery_tests"].as_array().expect("tests").iter().map(|t| t["state"].as_str().unwrap_or("")).collect();
    assert_eq!(states, ["done", "failed", "failed", "done"], "{listed}");
}
