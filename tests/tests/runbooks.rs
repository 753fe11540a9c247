//! The runbooks' commands, run exactly as written (their `sh` blocks)
//! against the lab: an agent's configuration checked, a replica rebuilt
//! from the primary after its rewind "failed", and a failed backup and
//! recovery test looked into. The index lists exactly the runbooks there are.

use std::collections::BTreeSet;
use std::time::Duration;

use drc_tests::lab::{postgres, stop_pid, Lab};
use drc_tests::{run_runbook_block, runbook_blocks, wait_for};

const LONG: Duration = Duration::from_secs(90);

fn runbooks_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../runbooks")
}

#[test]
fn the_index_lists_exactly_the_runbooks_there_are_and_each_names_a_test_that_exists() {
    let dir = runbooks_dir();
    let index = std::fs::read_to_string(dir.join("README.md")).expect("index");
    let listed: BTreeSet<String> = index.split("](").skip(1).filter_map(|rest| rest.split(')').next()).map(str::to_string).collect();
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("runbooks")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".md") && n != "README.md")
        .collect();
    assert_eq!(listed, present, "runbooks/README.md lists exactly the runbooks");
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    for file in &present {
        let text = std::fs::read_to_string(dir.join(file)).expect("runbook");
        for named in text.split("tests/tests/").skip(1).filter_map(|rest| rest.split('`').next()).filter(|n| n.ends_with(".rs")) {
            let test = std::fs::read_to_string(tests.join(named)).unwrap_or_else(|e| panic!("{file} names tests/tests/{named}: {e}"));
            if !runbook_blocks(file, "sh").is_empty() {
                assert!(test.contains(file), "{file} says tests/tests/{named} runs its blocks, but that test never reads it");
            }
        }
    }
}

#[test]
fn the_agent_rebuild_backup_and_recovery_test_runbooks_work_on_the_lab() {
    let dir = tempfile::Builder::new().prefix("drc-runbooks-test-").tempdir().expect("tempdir");
    let mut lab = Lab::up(dir.path()).expect("lab up");
    let (endpoints, creds) = (lab.info.endpoints.clone(), lab.creds());
    let run =
        |file: &str, block: usize, vars: &[(&str, String)]| run_runbook_block(&runbook_blocks(file, "sh")[block], &endpoints, &creds, vars);
    let good = lab.drctl_json(&["backup", "run", "--cluster", "app-pg"]).expect("a good backup");
    assert_eq!(good["state"], "done", "{good}");

    // An agent's configuration, checked where it runs.
    let pb = lab.member("pg-b").expect("pg-b").clone();
    let checked = run("agent-cannot-connect.md", 0, &[("CONFIG", pb.agent_config.display().to_string())]);
    assert!(checked.contains("valid"), "{checked}");

    // pg-c's rewind "failed": its agent and server are stopped, and it is
    // rebuilt from the primary, then handed back to its agent, which
    // starts it (a standby: the copy holds standby.signal).
    let pa = lab.member("pg-a").expect("pg-a").clone();
    let pc = lab.member("pg-c").expect("pg-c").clone();
    stop_pid(pc.agent_pid, Duration::from_secs(5));
    postgres::stop(&pc).expect("stop pg-c");
    let vars = [
        ("PGDATA", pc.data_dir.display().to_string()),
        ("PRIMARY_HOST", pa.host.clone()),
        ("PRIMARY_PORT", pa.port.to_string()),
        ("REPLICATION_USER", "postgres".to_string()),
        ("SLOT", "drc_pg_c".to_string()),
    ];
    run("rebuild-replica.md", 0, &vars);
    assert!(pc.data_dir.join("standby.signal").exists(), "pg_basebackup -R made it a standby");
    assert!(pc
        .data_dir
        .with_file_name(format!("{}.before-rebuild", pc.data_dir.file_name().and_then(|n| n.to_str()).expect("name")))
        .exists());
    lab.supervise("pg-c").expect("its agent starts it");
    wait_for("the rebuilt pg-c to stream from the primary", LONG, || (run("rebuild-replica.md", 1, &vars).trim() == "t").then_some(()))
        .expect("streams");
    wait_for("pg-c healthy again", LONG, || {
        lab.members_health().ok()?.get("pg-c").filter(|m| m["healthy"] == true && m["role"] == "replica").map(|_| ())
    })
    .expect("healthy");
    assert_eq!(postgres::psql(pc.port, "SELECT pg_is_in_recovery()").expect("psql"), "t");

    // Every bucket out of reach: a backup and a recovery test fail, and the
    // runbooks' commands show which and why.
    for s in &lab.info.s3 {
        stop_pid(s.pid, Duration::from_secs(5));
    }
    let out = lab.drctl_json(&["backup", "run", "--cluster", "app-pg"]);
    assert!(out.as_ref().map_or(true, |b| b["state"] == "failed"), "{out:?}");
    let cluster = [("CLUSTER", "app-pg".to_string())];
    let listed = run("backup-failed.md", 0, &cluster);
    println!("backup-failed.md:\n{listed}");
    assert!(listed.lines().filter(|l| l.contains("failed")).count() >= 2, "the table and the python line show the failure:\n{listed}");
    let drill = lab.drctl_json(&["recovery-test", "run", "--cluster", "app-pg", "--backup", &good["id"].to_string()]);
    assert!(drill.as_ref().map_or(true, |t| t["state"] == "failed"), "{drill:?}");
    let drills = run("recovery-test-failed.md", 0, &cluster);
    println!("recovery-test-failed.md:\n{drills}");
    assert!(drills.contains("failed"), "{drills}");
}
