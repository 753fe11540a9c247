//! `drctl backup`, `recovery-test` and `schedule`.

use std::time::Duration;

use drc_model::job::{BackupRecord, JobKind, JobState, RecoveryTest, RestorePoint, Schedule};
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
                let Some(job_reply::Job::Backup(b)) = r.job else {
                    anyhow::bail!("the coordinator answered without the backup it started")
                };
                let b = BackupRecord::try_from(b)?;
                if !json_out {
                    println!("backup {} started: {} -> {} ({})", b.id, b.member, b.destination, b.prefix);
                }
                let job = if no_wait { Listed { record: b, progress: None } } else { wait_job(client, b.id, !json_out).await? };
                job_out(&job, json_out, true)?;
            }
            BackupCommand::List { cluster } => {
                let jobs = BackupRecord::list(client, cluster.unwrap_or_default()).await?;
                if json_out {
                    let jobs: Vec<_> = jobs.iter().map(Listed::json).collect::<Result<_, _>>()?;
                    println!("{}", serde_json::to_string_pretty(&json!({ "backups": jobs }))?);
                } else {
                    print!("{}", backups_table(&jobs));
                }
            }
            BackupCommand::Show { id } => {
                let job = find_job::<BackupRecord>(client, id).await?;
                job_out(&job, json_out, false)?;
            }
        },
        Command::RecoveryTest { command } => match command {
            RecoveryTestCommand::Run { cluster, backup, random_point, no_wait } => {
                let r = client
                    .start_recovery_test(StartRecoveryTestRequest { cluster, backup_id: backup.unwrap_or(0), random_point })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                let Some(job_reply::Job::RecoveryTest(t)) = r.job else {
                    anyhow::bail!("the coordinator answered without the recovery test it started")
                };
                let t = RecoveryTest::try_from(t)?;
                if !json_out {
                    println!(
                        "recovery test {} started: backup {} on {} (region {}), to {}",
                        t.id, t.backup_id, t.member, t.member_region, t.point
                    );
                }
                let job = if no_wait { Listed { record: t, progress: None } } else { wait_job(client, t.id, !json_out).await? };
                job_out(&job, json_out, true)?;
            }
            RecoveryTestCommand::List { cluster } => {
                let jobs = RecoveryTest::list(client, cluster.unwrap_or_default()).await?;
                if json_out {
                    let jobs: Vec<_> = jobs.iter().map(Listed::json).collect::<Result<_, _>>()?;
                    println!("{}", serde_json::to_string_pretty(&json!({ "recovery_tests": jobs }))?);
                } else {
                    for t in &jobs {
                        println!("{}", t.text());
                    }
                }
            }
            RecoveryTestCommand::Show { id } => {
                let job = find_job::<RecoveryTest>(client, id).await?;
                job_out(&job, json_out, false)?;
            }
        },
        Command::Schedule { command } => match command {
            ScheduleCommand::List { cluster } => {
                let r =
                    client.list_schedules(ListJobsRequest { cluster: cluster.unwrap_or_default() }).await.map_err(status_err)?.into_inner();
                let mut items = Vec::new();
                for entry in r.schedules {
                    let next_at = entry.next_at;
                    items.push((Schedule::try_from(entry)?, next_at));
                }
                if json_out {
                    let mut out = Vec::new();
                    for (s, next_at) in &items {
                        let mut v = serde_json::to_value(s)?;
                        v["next_at"] = json!(next_at);
                        out.push(v);
                    }
                    println!("{}", serde_json::to_string_pretty(&json!({ "schedules": out }))?);
                } else {
                    let now = drc_model::time::wall_now_ms();
                    let rows: Vec<Vec<String>> = items
                        .iter()
                        .map(|(s, next_at)| {
                            let (last, next) = (table::when(s.last_fired, now), table::when(next_at.unwrap_or(0), now));
                            vec![s.cluster.clone(), s.job.to_string(), s.cron.clone(), last, next]
                        })
                        .collect();
                    print!("{}", table::render(&["CLUSTER", "JOB", "CRON (UTC)", "LAST FIRED", "NEXT"], &rows));
                }
            }
            ScheduleCommand::Set { cluster, backup, recovery_test } => {
                if backup.is_none() && recovery_test.is_none() {
                    anyhow::bail!("nothing to set: give --backup and/or --recovery-test (\"off\" removes one)");
                }
                for (job, cron) in [(JobKind::Backup, backup), (JobKind::RecoveryTest, recovery_test)] {
                    let Some(cron) = cron else { continue };
                    let cron = if cron == "off" { String::new() } else { cron };
                    let r = client
                        .set_schedule(SetScheduleRequest { cluster: cluster.clone(), job: job.as_str().into(), cron })
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

/// A job as the coordinator lists it: its record and, while the leader
/// runs it, how far it has got.
pub(crate) struct Listed<T> {
    pub record: T,
    pub progress: Option<JobProgress>,
}

/// What drctl does alike with backups and recovery tests.
pub(crate) trait JobRecord: serde::Serialize + Sized {
    const WHAT: &'static str;
    fn id(&self) -> u64;
    fn state(&self) -> JobState;
    fn error(&self) -> &str;
    /// Its lines in `show` and `run`; `progress` while it runs.
    fn text(&self, progress: Option<&JobProgress>) -> String;
    /// The catalog, newest first, of one cluster or (empty) all.
    fn list(
        client: &mut AdminServiceClient<Channel>,
        cluster: String,
    ) -> impl std::future::Future<Output = anyhow::Result<Vec<Listed<Self>>>> + Send;
}

impl<T: JobRecord> Listed<T> {
    /// As `-o json` prints it: the record's fields, and `progress` while the
    /// job runs.
    pub(crate) fn json(&self) -> serde_json::Result<serde_json::Value> {
        let mut v = serde_json::to_value(&self.record)?;
        if let Some(p) = &self.progress {
            v["progress"] = json!({
                "phase": p.phase,
                "bytes_done": p.bytes_done,
                "bytes_total": p.bytes_total,
                "rate_bytes_per_s": p.rate_bytes_per_s,
                "eta_s": p.eta_s,
                "elapsed_ms": p.elapsed_ms,
                "text": p.text,
            });
        }
        Ok(v)
    }

    pub(crate) fn text(&self) -> String {
        self.record.text(self.progress.as_ref())
    }
}

/// Reads listed entries into their records and progress.
pub(crate) fn listed<E, T>(entries: Vec<E>, progress: impl Fn(&mut E) -> Option<JobProgress>) -> anyhow::Result<Vec<Listed<T>>>
where
    T: TryFrom<E, Error = drc_proto::jobs::JobError>,
{
    let mut out = Vec::with_capacity(entries.len());
    for mut e in entries {
        let progress = progress(&mut e);
        out.push(Listed { record: T::try_from(e)?, progress });
    }
    Ok(out)
}

/// A catalog record drctl lists and follows: its label, its text, and the
/// listing RPC and reply field that carry it.
macro_rules! job_record {
    ($ty:ty, $what:literal, $text:path, $list:ident, $field:ident) => {
        impl $crate::jobs::JobRecord for $ty {
            const WHAT: &'static str = $what;
            fn id(&self) -> u64 {
                self.id
            }
            fn state(&self) -> drc_model::job::JobState {
                self.state
            }
            fn error(&self) -> &str {
                &self.error
            }
            fn text(&self, progress: Option<&drc_proto::JobProgress>) -> String {
                $text(self, progress)
            }
            async fn list(
                client: &mut drc_proto::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
                cluster: String,
            ) -> anyhow::Result<Vec<$crate::jobs::Listed<Self>>> {
                let r = client.$list(drc_proto::ListJobsRequest { cluster }).await.map_err($crate::connect::status_err)?.into_inner();
                $crate::jobs::listed(r.$field, |e| e.progress.take())
            }
        }
    };
}
pub(crate) use job_record;

job_record!(BackupRecord, "backup", backup_text, list_backups, backups);
job_record!(RecoveryTest, "recovery test", test_text, list_recovery_tests, recovery_tests);

pub(crate) async fn find_job<T: JobRecord>(client: &mut AdminServiceClient<Channel>, id: u64) -> anyhow::Result<Listed<T>> {
    T::list(client, String::new()).await?.into_iter().find(|j| j.record.id() == id).ok_or_else(|| anyhow::anyhow!("no {} {id}", T::WHAT))
}

/// Polls until the job is no longer running; with `show`, prints its
/// progress (to stderr) every few seconds.
pub(crate) async fn wait_job<T: JobRecord>(client: &mut AdminServiceClient<Channel>, id: u64, show: bool) -> anyhow::Result<Listed<T>> {
    let mut shown = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        // A leader change in between is not the job's failure: ask again.
        let Ok(j) = find_job::<T>(client, id).await else { continue };
        if j.record.state() != JobState::Running {
            return Ok(j);
        }
        if let Some(p) = j.progress.as_ref().filter(|_| show && shown.elapsed() >= Duration::from_secs(2)) {
            eprintln!("  {}", p.text);
            shown = tokio::time::Instant::now();
        }
    }
}

/// Prints a job; `run` (not `show`) fails when the job failed.
pub(crate) fn job_out<T: JobRecord>(job: &Listed<T>, json_out: bool, run: bool) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(&job.json()?)?);
    } else {
        println!("{}", job.text());
    }
    if run && job.record.state() == JobState::Failed {
        anyhow::bail!("{}", if job.record.error().is_empty() { "failed" } else { job.record.error() });
    }
    Ok(())
}

pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// The progress and error lines every job shows.
pub(crate) fn tail_lines(progress: Option<&JobProgress>, error: &str) -> String {
    let mut s = String::new();
    if let Some(p) = progress.filter(|p| !p.text.is_empty()) {
        s += &format!("\n  progress: {}", p.text);
    }
    if !error.is_empty() {
        s += &format!("\n  error: {error}");
    }
    s
}

fn backup_text(b: &BackupRecord, progress: Option<&JobProgress>) -> String {
    let mut s = format!(
        "backup {} of {} ({}): {}\n  from {} (region {}) to {} (region {})\n  objects under {}\n  started {}",
        b.id,
        b.cluster,
        b.kind,
        b.state.as_str(),
        b.member,
        b.member_region,
        b.destination,
        b.destination_region,
        b.prefix,
        table::when(b.started_at, drc_model::time::wall_now_ms()),
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

fn backups_table(jobs: &[Listed<BackupRecord>]) -> String {
    let now = drc_model::time::wall_now_ms();
    let rows = jobs
        .iter()
        .map(|Listed { record: b, .. }| {
            vec![
                b.id.to_string(),
                b.cluster.clone(),
                b.state.as_str().to_string(),
                b.member.clone(),
                b.destination.clone(),
                mib(b.raw_bytes),
                mib(b.stored_bytes),
                table::when(b.started_at, now),
            ]
        })
        .collect::<Vec<_>>();
    table::render(&["ID", "CLUSTER", "STATE", "FROM", "TO", "RAW", "STORED", "STARTED"], &rows)
}

fn test_text(t: &RecoveryTest, progress: Option<&JobProgress>) -> String {
    let mut s = format!(
        "recovery test {} of {}: {} (backup {}, restored on {} in region {})",
        t.id,
        t.cluster,
        t.state.as_str(),
        t.backup_id,
        t.member,
        t.member_region
    );
    s += &format!("\n  started {}", table::when(t.started_at, drc_model::time::wall_now_ms()));
    if t.point != RestorePoint::Latest {
        s += &format!("\n  to {}", t.point);
    }
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

    fn done_backup() -> BackupRecord {
        BackupRecord {
            id: 3,
            cluster: "app-pg".into(),
            kind: "postgres".into(),
            member: "pg-b".into(),
            member_region: "b".into(),
            destination: "s3-c".into(),
            destination_region: "c".into(),
            prefix: "drc/app-pg/1".into(),
            state: JobState::Done,
            trigger: "operator".into(),
            started_at: 1000,
            finished_at: 3500,
            sha256: "ab".into(),
            raw_bytes: 10485760,
            stored_bytes: 1048576,
            manifest: json!({"lsn_start": "0/2000028", "lsn_end": "0/2000100"}),
            ..Default::default()
        }
    }

    #[test]
    fn a_listed_backup_reads_with_its_sizes_wal_range_and_progress() {
        let done = Listed { record: done_backup(), progress: None };
        let text = done.text();
        assert!(text.starts_with("backup 3 of app-pg (postgres): done\n  from pg-b (region b) to s3-c (region c)"), "{text}");
        assert!(text.contains("10.0 MiB raw, 1.0 MiB stored, 2.5 s; sha256 ab") && text.contains("WAL 0/2000028 .. 0/2000100"), "{text}");
        let progress = JobProgress { phase: "upload".into(), text: "upload: 1.0 MiB".into(), ..Default::default() };
        let running = Listed { record: BackupRecord { state: JobState::Running, ..done_backup() }, progress: Some(progress) };
        assert!(running.text().ends_with("\n  progress: upload: 1.0 MiB"));
        assert!(backups_table(&[done]).contains("10.0 MiB"));
    }

    #[test]
    fn the_json_of_a_job_has_the_records_fields_and_progress_only_while_it_runs() -> anyhow::Result<()> {
        let done = Listed { record: done_backup(), progress: None }.json()?;
        assert_eq!(done["state"], "done");
        assert_eq!(done["manifest"]["lsn_start"], "0/2000028");
        assert_eq!(done["member_region"], "b");
        assert!(done.get("progress").is_none());
        let progress = JobProgress { phase: "download".into(), bytes_done: 5, eta_s: None, ..Default::default() };
        let running = Listed { record: BackupRecord { state: JobState::Running, ..done_backup() }, progress: Some(progress) }.json()?;
        assert_eq!(running["progress"]["phase"], "download");
        assert_eq!(running["progress"]["bytes_done"], 5);
        assert!(running["progress"]["eta_s"].is_null());
        Ok(())
    }
}
