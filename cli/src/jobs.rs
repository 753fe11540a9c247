//! `drctl backup`, `recovery-test` and `schedule`.

use std::time::Duration;

use drc_proto::admin_service_client::AdminServiceClient;
use drc_proto::*;
use serde_json::json;
use tonic::transport::Channel;

use crate::args::Command;
use crate::args::*;
use crate::connect::status_err;
use crate::failover::message_out;
use crate::table;

/// Runs the commands of this group.
pub(crate) async fn run(client: &mut AdminServiceClient<Channel>, command: Command, json_out: bool) -> anyhow::Result<()> {
    match command {
        Command::Backup { command } => match command {
            BackupCommand::Run { cluster, destination, no_wait } => {
                let r = client
                    .start_backup(StartBackupRequest { cluster, destination: destination.unwrap_or_default() })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                let job: serde_json::Value = serde_json::from_str(&r.job_json)?;
                let id = job["id"].as_u64().unwrap_or(0);
                if !json_out {
                    println!("backup {id} started: {} -> {} ({})", job["member"], job["destination"], job["prefix"]);
                }
                let job = if no_wait { job } else { wait_job(client, Job::Backup, id, !json_out).await? };
                job_out(&job, json_out, backup_text, true)?;
            }
            BackupCommand::List { cluster } => {
                let jobs = list_jobs(client, Job::Backup, cluster.unwrap_or_default()).await?;
                if json_out {
                    println!("{}", serde_json::to_string_pretty(&json!({ "backups": jobs }))?);
                } else {
                    print!("{}", backups_table(&jobs));
                }
            }
            BackupCommand::Show { id } => {
                let job = find_job(client, Job::Backup, id).await?;
                job_out(&job, json_out, backup_text, false)?;
            }
        },
        Command::RecoveryTest { command } => match command {
            RecoveryTestCommand::Run { cluster, backup, no_wait } => {
                let r = client
                    .start_recovery_test(StartRecoveryTestRequest { cluster, backup_id: backup.unwrap_or(0) })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                let job: serde_json::Value = serde_json::from_str(&r.job_json)?;
                let id = job["id"].as_u64().unwrap_or(0);
                if !json_out {
                    println!(
                        "recovery test {id} started: backup {} on {} (region {})",
                        job["backup_id"], job["member"], job["member_region"]
                    );
                }
                let job = if no_wait { job } else { wait_job(client, Job::RecoveryTest, id, !json_out).await? };
                job_out(&job, json_out, test_text, true)?;
            }
            RecoveryTestCommand::List { cluster } => {
                let jobs = list_jobs(client, Job::RecoveryTest, cluster.unwrap_or_default()).await?;
                if json_out {
                    println!("{}", serde_json::to_string_pretty(&json!({ "recovery_tests": jobs }))?);
                } else {
                    for t in &jobs {
                        println!("{}", test_text(t));
                    }
                }
            }
            RecoveryTestCommand::Show { id } => {
                let job = find_job(client, Job::RecoveryTest, id).await?;
                job_out(&job, json_out, test_text, false)?;
            }
        },
        Command::Schedule { command } => match command {
            ScheduleCommand::List { cluster } => {
                let r =
                    client.list_schedules(ListJobsRequest { cluster: cluster.unwrap_or_default() }).await.map_err(status_err)?.into_inner();
                let items: Vec<serde_json::Value> = serde_json::from_str(&r.jobs_json)?;
                if json_out {
                    println!("{}", serde_json::to_string_pretty(&json!({ "schedules": items }))?);
                } else {
                    let rows: Vec<Vec<String>> = items
                        .iter()
                        .map(|s| {
                            vec![
                                s["cluster"].as_str().unwrap_or("").to_string(),
                                s["job"].as_str().unwrap_or("").to_string(),
                                s["cron"].as_str().unwrap_or("").to_string(),
                                s["last_fired"].to_string(),
                                s["next_at"].to_string(),
                            ]
                        })
                        .collect();
                    print!("{}", table::render(&["CLUSTER", "JOB", "CRON (UTC)", "LAST FIRED (ms)", "NEXT (ms)"], &rows));
                }
            }
            ScheduleCommand::Set { cluster, backup, recovery_test } => {
                if backup.is_none() && recovery_test.is_none() {
                    anyhow::bail!("nothing to set: give --backup and/or --recovery-test (\"off\" removes one)");
                }
                for (job, cron) in [("backup", backup), ("recovery-test", recovery_test)] {
                    let Some(cron) = cron else { continue };
                    let cron = if cron == "off" { String::new() } else { cron };
                    let r = client
                        .set_schedule(SetScheduleRequest { cluster: cluster.clone(), job: job.into(), cron })
                        .await
                        .map_err(status_err)?
                        .into_inner();
                    message_out(&r.message, json_out)?;
                }
            }
        },
        other => return Err(anyhow::anyhow!("{other:?} is not handled here")),
    }
    Ok(())
}

#[derive(Clone, Copy)]
pub(crate) enum Job {
    Backup,
    RecoveryTest,
}

pub(crate) async fn list_jobs(
    client: &mut AdminServiceClient<Channel>,
    job: Job,
    cluster: String,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let request = ListJobsRequest { cluster };
    let r = match job {
        Job::Backup => client.list_backups(request).await,
        Job::RecoveryTest => client.list_recovery_tests(request).await,
    }
    .map_err(status_err)?
    .into_inner();
    Ok(serde_json::from_str(&r.jobs_json)?)
}

pub(crate) async fn find_job(client: &mut AdminServiceClient<Channel>, job: Job, id: u64) -> anyhow::Result<serde_json::Value> {
    let what = match job {
        Job::Backup => "backup",
        Job::RecoveryTest => "recovery test",
    };
    list_jobs(client, job, String::new()).await?.into_iter().find(|j| j["id"] == id).ok_or_else(|| anyhow::anyhow!("no {what} {id}"))
}

/// Polls until the job is no longer running; with `show`, prints its
/// progress (to stderr) every few seconds.
pub(crate) async fn wait_job(client: &mut AdminServiceClient<Channel>, job: Job, id: u64, show: bool) -> anyhow::Result<serde_json::Value> {
    let mut shown = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        // A leader change in between is not the job's failure: ask again.
        let Ok(j) = find_job(client, job, id).await else { continue };
        if j["state"] != "running" {
            return Ok(j);
        }
        if let Some(p) = j["progress"]["text"].as_str().filter(|_| show && shown.elapsed() >= Duration::from_secs(2)) {
            eprintln!("  {p}");
            shown = tokio::time::Instant::now();
        }
    }
}

/// Prints a job; `run` (not `show`) fails when the job failed.
pub(crate) fn job_out(job: &serde_json::Value, json_out: bool, text: fn(&serde_json::Value) -> String, run: bool) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(job)?);
    } else {
        println!("{}", text(job));
    }
    if run && job["state"] == "failed" {
        anyhow::bail!("{}", job["error"].as_str().unwrap_or("failed"));
    }
    Ok(())
}

pub(crate) fn mib(v: &serde_json::Value) -> String {
    format!("{:.1} MiB", v.as_u64().unwrap_or(0) as f64 / 1048576.0)
}

pub(crate) fn backup_text(b: &serde_json::Value) -> String {
    let took = b["finished_at"].as_u64().unwrap_or(0).saturating_sub(b["started_at"].as_u64().unwrap_or(0));
    let mut s = format!(
        "backup {} of {} ({}): {}\n  from {} (region {}) to {} (region {})\n  objects under {}",
        b["id"],
        b["cluster"].as_str().unwrap_or(""),
        b["kind"].as_str().unwrap_or(""),
        b["state"].as_str().unwrap_or(""),
        b["member"].as_str().unwrap_or(""),
        b["member_region"].as_str().unwrap_or(""),
        b["destination"].as_str().unwrap_or(""),
        b["destination_region"].as_str().unwrap_or(""),
        b["prefix"].as_str().unwrap_or(""),
    );
    if b["state"] == "done" {
        s += &format!(
            "\n  {} raw, {} stored, {:.1} s; sha256 {}",
            mib(&b["raw_bytes"]),
            mib(&b["stored_bytes"]),
            took as f64 / 1000.0,
            b["sha256"].as_str().unwrap_or("")
        );
        let m = &b["manifest"];
        if m["lsn_start"].as_str().is_some_and(|l| !l.is_empty()) {
            s += &format!("\n  WAL {} .. {}", m["lsn_start"].as_str().unwrap_or(""), m["lsn_end"].as_str().unwrap_or(""));
        }
    }
    if let Some(p) = b["progress"]["text"].as_str() {
        s += &format!("\n  progress: {p}");
    }
    if !b["error"].as_str().unwrap_or("").is_empty() {
        s += &format!("\n  error: {}", b["error"].as_str().unwrap_or(""));
    }
    s
}

pub(crate) fn backups_table(jobs: &[serde_json::Value]) -> String {
    let mut rows = Vec::new();
    for b in jobs {
        rows.push(vec![
            b["id"].to_string(),
            b["cluster"].as_str().unwrap_or("").to_string(),
            b["state"].as_str().unwrap_or("").to_string(),
            b["member"].as_str().unwrap_or("").to_string(),
            b["destination"].as_str().unwrap_or("").to_string(),
            mib(&b["raw_bytes"]),
            mib(&b["stored_bytes"]),
            b["started_at"].to_string(),
        ]);
    }
    table::render(&["ID", "CLUSTER", "STATE", "FROM", "TO", "RAW", "STORED", "STARTED"], &rows)
}

pub(crate) fn test_text(t: &serde_json::Value) -> String {
    let mut s = format!(
        "recovery test {} of {}: {} (backup {}, restored on {} in region {})",
        t["id"],
        t["cluster"].as_str().unwrap_or(""),
        t["state"].as_str().unwrap_or(""),
        t["backup_id"],
        t["member"].as_str().unwrap_or(""),
        t["member_region"].as_str().unwrap_or("")
    );
    if t["state"] == "done" {
        s += &format!("\n  RTO {} ms, RPO {} ms", t["rto_ms"], t["rpo_ms"]);
        if let Some(checks) = t["checks"].as_object() {
            for (k, v) in checks {
                s += &format!("\n  {k}: {}", v.as_str().unwrap_or(""));
            }
        }
    }
    if let Some(p) = t["progress"]["text"].as_str() {
        s += &format!("\n  progress: {p}");
    }
    if !t["error"].as_str().unwrap_or("").is_empty() {
        s += &format!("\n  error: {}", t["error"].as_str().unwrap_or(""));
    }
    s
}
