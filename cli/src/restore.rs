//! `drctl restore`: a PostgreSQL cluster restored to a point in time on an
//! agent's host, and the restores done.

use drc_model::job::{JobState, Restore, RestorePoint};
use drc_proto::admin_service_client::AdminServiceClient;
use drc_proto::*;
use serde_json::json;
use tonic::transport::Channel;

use crate::args::{RestoreCommand, RestoreRun};
use crate::connect::status_err;
use crate::jobs::{find_job, job_out, job_record, mib, tail_lines, wait_job, JobRecord, Listed};
use crate::table;

pub(crate) async fn run(
    client: &mut AdminServiceClient<Channel>,
    command: Option<RestoreCommand>,
    ask: RestoreRun,
    json_out: bool,
) -> anyhow::Result<()> {
    match command {
        Some(RestoreCommand::List { cluster }) => {
            let jobs = Restore::list(client, cluster.unwrap_or_default()).await?;
            if json_out {
                let jobs: Vec<_> = jobs.iter().map(Listed::json).collect::<Result<_, _>>()?;
                println!("{}", serde_json::to_string_pretty(&json!({ "restores": jobs }))?);
            } else {
                print!("{}", restores_table(&jobs));
            }
            Ok(())
        }
        Some(RestoreCommand::Show { id }) => job_out(&find_job::<Restore>(client, id).await?, json_out, false),
        None => start(client, ask, json_out).await,
    }
}

async fn start(client: &mut AdminServiceClient<Channel>, ask: RestoreRun, json_out: bool) -> anyhow::Result<()> {
    let need =
        |v: Option<String>, flag: &str| v.ok_or_else(|| anyhow::anyhow!("drctl restore needs {flag} (or: restore list, restore show ID)"));
    let point = match (ask.latest, ask.to_time, ask.to_lsn) {
        (true, _, _) => RestorePoint::Latest,
        (_, Some(time_us), _) => RestorePoint::Time { time_us },
        (_, _, Some(lsn)) => RestorePoint::Lsn { lsn },
        _ => anyhow::bail!("drctl restore needs a point: --latest, --to-time T or --to-lsn L"),
    };
    let req = StartRestoreRequest {
        cluster: need(ask.cluster, "--cluster")?,
        point: Some(drc_proto::jobs::point_out(point, ask.timeline)),
        on: need(ask.on, "--on MEMBER")?,
        dir: need(ask.dir, "--dir DIR")?,
        port: u32::from(ask.port.unwrap_or(0)),
    };
    let r = client.start_restore(req).await.map_err(status_err)?.into_inner();
    let Some(job_reply::Job::Restore(entry)) = r.job else { anyhow::bail!("the coordinator answered without the restore it started") };
    let started = Restore::try_from(entry)?;
    if !json_out {
        println!(
            "restore {} started: backup {} to {} on {} (region {}), into {}",
            started.id, started.backup_id, started.point, started.member, started.member_region, started.dir
        );
    }
    let job = if ask.no_wait { Listed { record: started, progress: None } } else { wait_job(client, started.id, !json_out).await? };
    job_out(&job, json_out, true)
}

job_record!(Restore, "restore", restore_text, list_restores, restores);

fn restore_text(r: &Restore, progress: Option<&JobProgress>) -> String {
    let mut s = format!(
        "restore {} of {}: {} (backup {}, on {} in region {})\n  started {}\n  to {} on timeline {}, into {}",
        r.id,
        r.cluster,
        r.state.as_str(),
        r.backup_id,
        r.member,
        r.member_region,
        table::when(r.started_at, drc_model::time::wall_now_ms()),
        r.point,
        r.timeline,
        r.dir
    );
    if r.state == JobState::Done {
        let commit = match r.reached_commit_us {
            0 => "no commit replayed".to_string(),
            us => format!("last commit {}", drc_model::job::time_text(us)),
        };
        s += &format!(
            "\n  reached LSN {} ({commit}), now timeline {}; {} WAL files ({}) replayed\n  running on 127.0.0.1:{}; stop it with pg_ctl -D {} stop",
            r.reached_lsn,
            r.reached_timeline,
            r.wal_files,
            mib(r.wal_bytes),
            r.port,
            r.dir
        );
    }
    if r.stopped_at_end {
        s += "\n  the archive holds no commit after the point: restored to its end";
    }
    s + &tail_lines(progress, &r.error)
}

fn restores_table(jobs: &[Listed<Restore>]) -> String {
    let rows = jobs
        .iter()
        .map(|Listed { record: r, .. }| {
            let reached = if r.state == JobState::Done { r.reached_lsn.to_string() } else { "-".into() };
            vec![
                r.id.to_string(),
                r.cluster.clone(),
                r.state.as_str().to_string(),
                r.point.to_string(),
                r.member.clone(),
                r.dir.clone(),
                reached,
                if r.port == 0 { "-".into() } else { r.port.to_string() },
            ]
        })
        .collect::<Vec<_>>();
    table::render(&["ID", "CLUSTER", "STATE", "TO", "ON", "DIR", "REACHED", "PORT"], &rows)
}
