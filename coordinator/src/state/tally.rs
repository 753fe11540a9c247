//! Counts of what ended, kept in the replicated state: decisions by
//! outcome, how long failovers and their steps took, jobs by result. They
//! are the counters and histograms of `/metrics`, the same on every
//! coordinator, and unlike the history they never shrink: neither
//! retention, a restart nor a new leader resets them.
//!
//! Every count moves only when something ends for the first time, so a
//! command applied twice (a new leader's retry) counts once.

use std::collections::BTreeMap;

use drc_model::decision::{Decision, DecisionKind};
use drc_model::job::{JobKind, JobState};
use drc_model::step::{StepAction, StepState};
use drc_model::Millis;
use serde::{Deserialize, Serialize};

/// Upper bounds (seconds) of the buckets of a decision's time from the
/// failure seen (or the request) to the promotion.
pub const DECISION_BOUNDS: [f64; 12] = [0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];
/// Upper bounds (seconds) of the buckets of one step's time.
pub const STEP_BOUNDS: [f64; 11] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

/// A histogram's bucket counts (one more than its bounds, for +Inf) and sum.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    pub counts: Vec<u64>,
    pub sum_ms: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], ms: Millis) {
        self.counts.resize(bounds.len() + 1, 0);
        self.counts[drc_ops::scrape::bucket_of(bounds, ms as f64 / 1000.0)] += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
    }
}

/// How decisions of one kind ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    /// Every step done (or skipped).
    pub done: u64,
    /// A step failed.
    pub failed: u64,
    /// A newer decision replaced it before it settled.
    pub superseded: u64,
}

/// How jobs of one kind ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobsEnded {
    pub done: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// By cluster, then kind.
    pub decisions: BTreeMap<String, BTreeMap<DecisionKind, Ended>>,
    /// From the failure seen (a request: its decision) to the promotion, by kind.
    pub promoted_in: BTreeMap<DecisionKind, Histogram>,
    /// Each step's time from its start to its end, by action.
    pub steps: BTreeMap<StepAction, Histogram>,
    /// By cluster, then kind.
    pub jobs: BTreeMap<String, BTreeMap<JobKind, JobsEnded>>,
}

impl Tally {
    /// `d` ended (its `outcome` set); `superseded` when a newer decision ended it.
    pub fn decision_ended(&mut self, d: &Decision, superseded: bool) {
        let e = self.decisions.entry(d.cluster.clone()).or_default().entry(d.kind).or_default();
        if superseded {
            e.superseded += 1;
        } else if d.steps.iter().any(|s| s.state == StepState::Failed) {
            e.failed += 1;
        } else {
            e.done += 1;
        }
    }

    /// Step `index` of `d` left `Pending` now.
    pub fn step_ended(&mut self, d: &Decision, index: usize) {
        let Some(s) = d.steps.get(index) else { return };
        if s.finished >= s.started && s.started > 0 {
            self.steps.entry(s.action).or_default().observe(&STEP_BOUNDS, s.finished - s.started);
        }
        if s.action == StepAction::Promote && s.state == StepState::Done {
            let from = if d.detected_at > 0 { d.detected_at } else { d.decided_at };
            self.promoted_in.entry(d.kind).or_default().observe(&DECISION_BOUNDS, s.finished.saturating_sub(from));
        }
    }

    /// A job of `cluster` went from running (or nothing) to `now`.
    pub fn job_ended(&mut self, cluster: &str, kind: JobKind, was: Option<JobState>, now: JobState) {
        if was.is_some_and(|w| w != JobState::Running) || now == JobState::Running {
            return;
        }
        let e = self.jobs.entry(cluster.to_string()).or_default().entry(kind).or_default();
        match now {
            JobState::Done => e.done += 1,
            JobState::Failed => e.failed += 1,
            JobState::Running => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_counts_once_when_it_ends_and_never_again_on_a_repeated_update() {
        let mut t = Tally::default();
        t.job_ended("pg", JobKind::Backup, None, JobState::Running);
        t.job_ended("pg", JobKind::Backup, Some(JobState::Running), JobState::Done);
        t.job_ended("pg", JobKind::Backup, Some(JobState::Done), JobState::Done);
        t.job_ended("pg", JobKind::Backup, None, JobState::Failed);
        assert_eq!(t.jobs["pg"][&JobKind::Backup], JobsEnded { done: 1, failed: 1 });
    }

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let mut h = Histogram::default();
        h.observe(&[1.0, 2.0], 1000);
        h.observe(&[1.0, 2.0], 1500);
        h.observe(&[1.0, 2.0], 9000);
        assert_eq!(h, Histogram { counts: vec![1, 1, 1], sum_ms: 11_500 });
    }
}
