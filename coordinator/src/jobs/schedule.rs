//! Cron schedules of backups and recovery tests, fired once per occurrence.

use std::collections::HashSet;
use std::sync::Arc;

use drc_model::job::{BackupRecord, JobKind, JobState};
use drc_model::time::wall_now_ms;
use drc_model::Millis;

use crate::state::{Command, Outcome};

use super::{event_kind, JobError, Jobs};

/// Parses a cron expression (5 fields, or 6 with seconds first).
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| format!("cron expression {expr:?}: {e}"))
}

fn at(ms: Millis) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms as i64).unwrap_or_default()
}

/// The newest occurrence of `cron` in (after, now], if any: occurrences
/// missed while no leader ran collapse into this one.
pub fn due(cron: &croner::Cron, after: Millis, now: Millis) -> Option<Millis> {
    // Occurrences are whole seconds; croner keeps the input's milliseconds.
    let prev = cron.find_previous_occurrence(&at(now), true).ok()?.timestamp_millis() as u64 / 1000 * 1000;
    (prev > after).then_some(prev)
}

/// The next occurrence after `now`, for display.
pub fn next(cron: &croner::Cron, now: Millis) -> Option<Millis> {
    cron.find_next_occurrence(&at(now), false).ok().map(|t| t.timestamp_millis() as u64 / 1000 * 1000)
}

impl Jobs {
    /// Starts every scheduled job that is due, once per occurrence: the
    /// occurrence is committed (compare-and-set on the last one fired) before
    /// the job starts, so a new leader never starts it again.
    pub(super) async fn fire_schedules(self: &Arc<Self>) {
        let (schedules, busy) = self.node.store().with_state(|sm| {
            let busy: HashSet<(String, JobKind)> = sm
                .backups
                .values()
                .filter(|b| b.state == JobState::Running)
                .map(|b| (b.cluster.clone(), JobKind::Backup))
                .chain(
                    sm.recovery_tests.values().filter(|t| t.state == JobState::Running).map(|t| (t.cluster.clone(), JobKind::RecoveryTest)),
                )
                .collect();
            (sm.schedules.values().cloned().collect::<Vec<_>>(), busy)
        });
        let now = wall_now_ms();
        for s in schedules {
            let Ok(cron) = parse_cron(&s.cron) else { continue };
            let Some(occurrence) = due(&cron, s.last_fired.max(s.since), now) else { continue };
            let fire = Command::Fire { cluster: s.cluster.clone(), job: s.job, at: occurrence };
            match self.node.propose(fire, self.write_timeout).await {
                Ok(Outcome::Done) => {}
                Ok(other) => {
                    tracing::debug!(?other, "schedule not fired");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "schedule: cannot record the firing");
                    continue;
                }
            }
            if busy.contains(&(s.cluster.clone(), s.job)) {
                // One at a time: an occurrence that finds the previous job
                // still running is skipped, and says so.
                self.agents.events.emit(
                    event_kind(s.job),
                    &s.cluster,
                    "",
                    format!("scheduled {} at {occurrence} skipped: the previous one is still running", s.job),
                );
                continue;
            }
            let started = match s.job {
                JobKind::Backup => self.start_backup(&s.cluster, None, occurrence).await.map(|b| b.id),
                JobKind::RecoveryTest => self.start_recovery_test(&s.cluster, super::TestOf::Newest, "schedule").await.map(|t| t.id),
                JobKind::Restore => Err(JobError::BadRestore("restores are never scheduled".into())),
            };
            match started {
                Ok(id) => tracing::info!(cluster = %s.cluster, job = %s.job, id, occurrence, "scheduled job started"),
                Err(e) => {
                    // Recorded, so that a schedule that cannot run is seen.
                    tracing::warn!(cluster = %s.cluster, job = %s.job, error = %e, "scheduled job could not start");
                    self.agents.events.emit(event_kind(s.job), &s.cluster, "", format!("scheduled {} could not start: {e}", s.job));
                    if s.job == JobKind::Backup {
                        let failed = BackupRecord {
                            cluster: s.cluster.clone(),
                            state: JobState::Failed,
                            trigger: "schedule".into(),
                            started_at: now,
                            finished_at: now,
                            scheduled_at: occurrence,
                            error: e.to_string(),
                            ..Default::default()
                        };
                        let _ = self.record(Command::Backup { record: Box::new(failed) }).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missed_occurrence_fires_once_and_not_before_the_schedule_existed() {
        let every_10s = parse_cron("*/10 * * * * *").expect("cron");
        // Last fired at 20 s; now 47 s: 30 s and 40 s were missed, 40 s fires.
        assert_eq!(due(&every_10s, 20_000, 47_000), Some(40_000));
        assert_eq!(due(&every_10s, 40_000, 47_000), None, "fired already");
        assert_eq!(next(&every_10s, 47_000), Some(50_000));
        assert!(parse_cron("0 3 * * *").is_ok(), "five fields");
        assert!(parse_cron("61 * * * *").is_err());
        assert!(parse_cron("nonsense").is_err());
    }
}
