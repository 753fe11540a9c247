//! `drctl backup`, `recovery-test` and `schedule`.

use std::time::Duration;

use drc_model::job::{BackupRecord, JobState, RecoveryTest};
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

/// A job as the coordinator lists it: its record and, while the leader
/// runs it, how far it has got.
#[derive(serde::Deserialize)]
struct Listed<T> {
    #[serde(flatten)]
    record: T,
    #[serde(default)]
    progress: Option<ListedProgress>,
}

#[derive(serde::Deserialize)]
struct ListedProgress {
    #[serde(default)]
    text: String,
}

/// Reads a listed job into its typed record, or says why it cannot.
fn read<T: serde::de::DeserializeOwned>(v: &serde_json::Value, what: &str) -> Result<Listed<T>, String> {
    serde_json::from_value(v.clone()).map_err(|e| format!("(a {what} record this drctl cannot read: {e})"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// The progress and error lines every job shows.
fn tail_lines(progress: Option<ListedProgress>, error: &str) -> String {
    let mut s = String::new();
    if let Some(p) = progress.filter(|p| !p.text.is_empty()) {
        s += &format!("\n  progress: {}", p.text);
    }
    if !error.is_empty() {
        s += &format!("\n  error: {error}");
    }
    s
}

pub(crate) fn backup_text(v: &serde_json::Value) -> String {
    let Listed { record: b, progress } = match read::<BackupRecord>(v, "backup") {
        Ok(l) => l,
        Err(e) => return e,
    };
    let mut s = format!(
        "backup {} of {} ({}): {}\n  from {} (region {}) to {} (region {})\n  objects under {}",
        b.id,
        b.cluster,
        b.kind,
        b.state.as_str(),
        b.member,
        b.member_region,
        b.destination,
        b.destination_region,
        b.prefix,
    );
    if b.state == JobState::Done {
        let took = b.finished_at.saturating_sub(b.started_at);
        s += &format!("\n  {} raw, {} stored, {:.1} s; sha256 {}", mib(b.raw_bytes), mib(b.stored_bytes), took as f64 / 1000.0, b.sha256);
        let lsn = |k: &str| b.manifest[k].as_str().unwrap_or_default().to_string();
        if !lsn("lsn_start").is_empty() {
            s += &format!("\n  WAL {} .. {}", lsn("lsn_start"), lsn("lsn_end"));
        }
    }
    s + &tail_lines(progress, &b.error)
}

pub(crate) fn backups_table(jobs: &[serde_json::Value]) -> String {
    let rows = jobs
        .iter()
        .map(|v| match read::<BackupRecord>(v, "backup") {
            Ok(Listed { record: b, .. }) => vec![
                b.id.to_string(),
                b.cluster,
                b.state.as_str().to_string(),
                b.member,
                b.destination,
                mib(b.raw_bytes),
                mib(b.stored_bytes),
                b.started_at.to_string(),
            ],
            Err(e) => vec![v["id"].to_string(), e],
        })
        .collect::<Vec<_>>();
    table::render(&["ID", "CLUSTER", "STATE", "FROM", "TO", "RAW", "STORED", "STARTED"], &rows)
}

pub(crate) fn test_text(v: &serde_json::Value) -> String {
    let Listed { record: t, progress } = match read::<RecoveryTest>(v, "recovery test") {
        Ok(l) => l,
        Err(e) => return e,
    };
    let mut s = format!(
        "recovery test {} of {}: {} (backup {}, restored on {} in region {})",
        t.id,
        t.cluster,
        t.state.as_str(),
        t.backup_id,
        t.member,
        t.member_region
    );
    if t.state == JobState::Done {
        s += &format!("\n  RTO {} ms, RPO {} ms", t.rto_ms, t.rpo_ms);
        for (k, v) in &t.checks {
            s += &format!("\n  {k}: {v}");
        }
    }
    s + &tail_lines(progress, &t.error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_backup_reads_with_its_sizes_wal_range_and_progress() {
        let done = serde_json::json!({"id": 3, "cluster": "app-pg", "kind": "postgres", "member": "pg-b", "member_region": "b",
            "destination": "s3-c", "destination_region": "c", "prefix": "drc/app-pg/1", "state": "done", "trigger": "operator",
            "started_at": 1000, "finished_at": 3500, "error": "", "data_key": "k", "manifest_key": "m", "sha256": "ab",
            "raw_bytes": 10485760, "stored_bytes": 1048576, "manifest": {"lsn_start": "0/2000028", "lsn_end": "0/2000100"}});
        let text = backup_text(&done);
        assert!(text.starts_with("backup 3 of app-pg (postgres): done\n  from pg-b (region b) to s3-c (region c)"), "{text}");
        assert!(text.contains("10.0 MiB raw, 1.0 MiB stored, 2.5 s; sha256 ab") && text.contains("WAL 0/2000028 .. 0/2000100"), "{text}");
        let mut running = done.clone();
        running["state"] = "running".into();
        running["progress"] = serde_json::json!({"text": "upload: 1.0 MiB"});
        assert!(backup_text(&running).ends_with("\n  progress: upload: 1.0 MiB"));
        assert!(backup_text(&serde_json::json!({"id": "x"})).contains("cannot read"), "an unreadable record is said so");
        assert!(backups_table(&[done]).contains("10.0 MiB"));
    }
}
