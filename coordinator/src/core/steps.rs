//! The rules of a decision's steps: the one place that says in which order
//! they run, what the answer to an attempt means (done, failed, skipped or
//! try again), how long a step is tried, and what a recorded outcome does to
//! the decision and its cluster. The executor carries out the attempts and
//! the simulation drives these same functions.
//!
//! Order: the main line (fence or demote, catch-up, promote) runs strictly
//! in order; background steps (publish, repoint, rejoin, and a fence decided
//! after the old primary's lease ran out) run once the main line is done,
//! each on its own, retried until their member answers.

use drc_model::{ClusterRecord, Decision, Millis, StepAction, StepArgs, StepState};

use super::LeaseConfig;

/// How long promote and catch-up are retried before the decision fails.
pub const STEP_DEADLINE: Millis = 30_000;
/// How long a demotion is retried before the switchover fails: its agent
/// may be reconnecting to a new leader, and the old primary serves on
/// meanwhile.
pub const DEMOTE_PATIENCE: Millis = 3_000;
/// How long one agent command may take (pg_rewind takes a few seconds).
pub const COMMAND_TIMEOUT: Millis = 60_000;
/// Pause before the next attempt at a main-line step.
pub const MAIN_RETRY: Millis = 500;
/// Pause before the next attempt at a background step.
pub const BACKGROUND_RETRY: Millis = 2_000;

/// Whether step `i` of `d` does not hold up the promotion. A fence decided
/// only after the old primary's lease ran out is one: by then its agent has
/// fenced it, or every other member vouches for it and the candidate refuses
/// the promotion; the fence is then a second line, not the first.
pub fn is_background(d: &Decision, i: usize) -> bool {
    let s = &d.steps[i];
    match s.action {
        StepAction::Repoint | StepAction::Rejoin | StepAction::Publish => true,
        StepAction::Fence => s.args.lease_expired_at.is_some(),
        StepAction::Demote | StepAction::CatchUp | StepAction::Promote => false,
    }
}

/// Until when the old primary of `d` may still hold a lease (drift margin
/// included), as its fence step records it; decisions recorded before that
/// was written fall back on `decided_at + lease + margin`.
pub fn lease_end(d: &Decision, i: usize, lease: &LeaseConfig) -> Millis {
    let a = &d.steps[i].args;
    a.lease_expired_at.or(a.lease_ends_at).unwrap_or(d.decided_at + lease.lease + lease.drift_margin)
}

/// The steps to attempt now: the first pending main-line step, or, once
/// the main line is done, every pending background step.
pub fn runnable(d: &Decision) -> Vec<usize> {
    let pending = |i: &usize| d.steps[*i].state == StepState::Pending;
    let main = (0..d.steps.len()).filter(pending).find(|&i| !is_background(d, i));
    match main {
        Some(i) => vec![i],
        None => (0..d.steps.len()).filter(pending).collect(),
    }
}

/// Whether the promotion of `d` is done.
pub fn promoted(d: &Decision) -> bool {
    d.steps.iter().any(|s| s.action == StepAction::Promote && s.state == StepState::Done)
}

/// Why step `i` cannot be attempted yet, if it cannot.
pub fn not_ready(d: &Decision, i: usize) -> Option<&'static str> {
    (d.steps[i].action == StepAction::Publish && !promoted(d)).then_some("not promoted yet")
}

/// How long to wait before attempting step `i` again.
pub fn retry_after(d: &Decision, i: usize) -> Millis {
    if is_background(d, i) {
        BACKGROUND_RETRY
    } else {
        MAIN_RETRY
    }
}

/// How long one attempt at step `i` may wait for its answer, from `now`
/// (wall time), the step having been tried for `waited`: a fence no longer
/// than the old primary's lease (after it, the fence is skipped), promote
/// and catch-up no longer than what is left of their deadline, never more
/// than one command's time-out. At least `MAIN_RETRY`, so that an attempt
/// made at the very end still hears a quick answer.
pub fn attempt_bound(d: &Decision, i: usize, now: Millis, waited: Millis, lease: &LeaseConfig) -> Millis {
    let bound = match d.steps[i].action {
        StepAction::Fence if !is_background(d, i) => lease_end(d, i, lease).saturating_sub(now),
        StepAction::CatchUp | StepAction::Promote | StepAction::Demote => STEP_DEADLINE.saturating_sub(waited),
        _ => COMMAND_TIMEOUT,
    };
    bound.clamp(MAIN_RETRY, COMMAND_TIMEOUT)
}

/// What became of one attempt at step `i`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Record this outcome in Raft.
    Record { state: StepState, error: String, output: StepArgs },
    /// Try again after `after` ms.
    Retry { why: String, after: Millis },
}

/// Judges the answer to an attempt at step `i` of `d`: `Ok` with what the
/// agent (or hook) reported, `Err` with why not (an agent's refusal, no
/// answer, a time-out). `now` is wall time (the lease end is replicated);
/// `waited` how long this step has been tried.
pub fn judge(d: &Decision, i: usize, answer: Result<StepArgs, String>, now: Millis, waited: Millis, lease: &LeaseConfig) -> Verdict {
    let error = match answer {
        Ok(output) => return Verdict::Record { state: StepState::Done, error: String::new(), output },
        Err(e) => e,
    };
    let record = |state, error| Verdict::Record { state, error, output: StepArgs::default() };
    let after = retry_after(d, i);
    match d.steps[i].action {
        // An old primary that cannot be fenced through its agent fences
        // itself when its lease runs out; only then may anyone be promoted.
        StepAction::Fence if now >= lease_end(d, i, lease) => {
            record(StepState::Skipped, format!("fence failed ({error}); its lease has expired"))
        }
        // Tried again at the latest when the lease ends, to skip it then.
        StepAction::Fence => Verdict::Retry { why: error, after: after.min(lease_end(d, i, lease) - now) },
        // A demotion that fails leaves the old primary serving; it is tried
        // again for a moment (an agent reconnecting to a new leader), then
        // the switchover fails.
        StepAction::Demote if waited > DEMOTE_PATIENCE => record(StepState::Failed, error),
        StepAction::Demote => Verdict::Retry { why: error, after },
        // The hook ran and failed: the operator reads why in the history.
        StepAction::Publish => record(StepState::Failed, error),
        // Members that are away are repointed when they come back.
        StepAction::Repoint | StepAction::Rejoin => Verdict::Retry { why: error, after },
        StepAction::CatchUp | StepAction::Promote if waited > STEP_DEADLINE => record(StepState::Failed, error),
        StepAction::CatchUp | StepAction::Promote => Verdict::Retry { why: error, after },
    }
}

/// Records the outcome of step `index` of `d` in the decision and in its
/// cluster's record (`None`: the cluster is gone from the records). Applied
/// by the state machine, so it must be deterministic.
///
/// - A demoted primary's final position is remembered: if nobody is
///   promoted after all, a later failover measures lag against it.
/// - A promotion starts a new history of positions, from the candidate's
///   position when it was chosen, and the lease it grants.
/// - The cluster is free for new decisions once the new primary serves and
///   the replicas follow it (background steps may wait for their members).
/// - A main-line failure before the promotion hands the primary back (in
///   the new epoch, so that older commands stay refused) and lifts the
///   anti-flap block this decision set: nothing flapped.
#[allow(clippy::too_many_arguments)]
pub fn record_outcome(
    d: &mut Decision,
    rec: Option<&mut ClusterRecord>,
    index: usize,
    state: StepState,
    started: Millis,
    finished: Millis,
    error: String,
    output: StepArgs,
) {
    let action = d.steps[index].action;
    let mut rec = rec;
    if let Some(rec) = rec.as_deref_mut() {
        match (action, state) {
            (StepAction::Demote, StepState::Done) => {
                if let Some(pos) = output.position {
                    rec.known_position = rec.known_position.max(pos);
                }
            }
            (StepAction::Promote, StepState::Done) => {
                // A new primary starts a new history of positions, from what
                // it held when it was chosen: if it dies before the leader
                // hears of it as a primary, a later failover still measures
                // lag against at least that.
                rec.known_position = d.evidence.iter().find(|e| e.id == d.to).map_or(0, |e| e.position);
                rec.promoted_at = finished;
                if let Some(id) = &output.dataset_id {
                    rec.advance_dataset(id);
                }
            }
            _ => {}
        }
    }
    let step = &mut d.steps[index];
    step.state = state;
    step.args.merge(output);
    step.started = started;
    step.finished = finished;
    step.error = error;
    let settled = (0..d.steps.len()).all(|i| d.steps[i].state != StepState::Pending || is_background(d, i));
    let failed = (0..d.steps.len()).any(|i| d.steps[i].state == StepState::Failed && !is_background(d, i));
    if settled || failed {
        if let Some(rec) = rec.filter(|r| r.in_progress == Some(d.id)) {
            rec.in_progress = None;
            if failed && !promoted(d) {
                rec.primary = d.from.clone();
                rec.blocked_until = rec.blocked_before;
            }
        }
    }
    if failed || d.steps.iter().all(|s| s.state != StepState::Pending) {
        d.finished_at.get_or_insert(finished);
        if d.outcome.is_empty() {
            d.outcome = if failed { format!("failed at {action}") } else { "done".into() };
        }
    }
}

#[cfg(test)]
mod tests {
    use drc_model::{DecisionKind, Step, Trigger};

    use super::*;

    fn decision(kind: DecisionKind) -> Decision {
        let main = match kind {
            DecisionKind::Failover => vec![Step::pending(StepAction::Fence, "a")],
            DecisionKind::Switchover => vec![Step::pending(StepAction::Demote, "a"), Step::pending(StepAction::CatchUp, "b")],
        };
        let rest = [(StepAction::Promote, "b"), (StepAction::Publish, "b"), (StepAction::Repoint, "c"), (StepAction::Rejoin, "a")];
        Decision {
            id: 1,
            cluster: "pg".into(),
            kind,
            trigger: Trigger::Automatic,
            epoch: 2,
            from: "a".into(),
            to: "b".into(),
            reason: String::new(),
            evidence: Vec::new(),
            detected_at: 1_000,
            decided_at: 1_000,
            steps: main.into_iter().chain(rest.into_iter().map(|(a, m)| Step::pending(a, m))).collect(),
            finished_at: None,
            outcome: String::new(),
            known_position: 0,
        }
    }

    const LEASE: LeaseConfig = LeaseConfig { lease: 1_500, drift_margin: 150, handover: 0 };

    #[test]
    fn the_main_line_runs_in_order_and_background_steps_together_after_it() {
        let mut d = decision(DecisionKind::Failover);
        assert_eq!(runnable(&d), vec![0], "the fence first");
        d.steps[0].state = StepState::Done;
        assert_eq!(runnable(&d), vec![1], "then the promotion, alone");
        assert_eq!(not_ready(&d, 2), Some("not promoted yet"));
        d.steps[1].state = StepState::Done;
        assert_eq!(runnable(&d), vec![2, 3, 4], "then publish, repoint and rejoin at once");
        assert_eq!(not_ready(&d, 2), None);

        // A fence decided after the lease ran out does not hold the promotion up.
        let mut d = decision(DecisionKind::Failover);
        d.steps[0].args.lease_expired_at = Some(2_650);
        assert_eq!(runnable(&d), vec![1]);
    }

    #[test]
    fn an_unanswered_fence_is_retried_until_the_lease_ends_then_skipped() {
        let mut d = decision(DecisionKind::Failover);
        d.steps[0].args.lease_ends_at = Some(5_000);
        let no = || Err("agent not connected".to_string());
        assert!(matches!(judge(&d, 0, no(), 4_000, 3_000, &LEASE), Verdict::Retry { after: MAIN_RETRY, .. }));
        assert!(matches!(judge(&d, 0, no(), 4_999, 3_999, &LEASE), Verdict::Retry { after: 1, .. }));
        match judge(&d, 0, no(), 5_000, 4_000, &LEASE) {
            Verdict::Record { state: StepState::Skipped, error, .. } => assert!(error.contains("lease has expired"), "{error}"),
            other => panic!("expected skipped, got {other:?}"),
        }
        // Without a recorded lease end: decided_at + lease + margin.
        d.steps[0].args.lease_ends_at = None;
        assert!(matches!(judge(&d, 0, no(), 2_649, 0, &LEASE), Verdict::Retry { .. }));
        assert!(matches!(judge(&d, 0, no(), 2_650, 0, &LEASE), Verdict::Record { state: StepState::Skipped, .. }));
    }

    #[test]
    fn no_attempt_waits_past_the_old_primarys_lease_or_its_steps_deadline() {
        let mut d = decision(DecisionKind::Failover);
        d.steps[0].args.lease_ends_at = Some(5_000);
        assert_eq!(attempt_bound(&d, 0, 3_500, 0, &LEASE), 1_500, "a fence until the lease ends");
        assert_eq!(attempt_bound(&d, 0, 4_900, 0, &LEASE), MAIN_RETRY, "at least one short wait");
        assert!(matches!(judge(&d, 0, Err("silent".into()), 4_800, 0, &LEASE), Verdict::Retry { after: 200, .. }), "retried when it ends");
        assert_eq!(attempt_bound(&d, 1, 0, 0, &LEASE), STEP_DEADLINE, "a promotion within its deadline");
        assert_eq!(attempt_bound(&d, 1, 0, STEP_DEADLINE - 1_000, &LEASE), 1_000);
        assert_eq!(attempt_bound(&d, 4, 0, 0, &LEASE), COMMAND_TIMEOUT, "a rejoin (pg_rewind) may take long");
        // A fence decided after the lease ran out is a background step.
        d.steps[0].args.lease_expired_at = Some(2_000);
        assert_eq!(attempt_bound(&d, 0, 3_500, 0, &LEASE), COMMAND_TIMEOUT);
    }

    #[test]
    fn promote_and_catch_up_fail_after_their_deadline_demote_after_a_moment_publish_at_once_and_repoints_never() {
        let d = decision(DecisionKind::Switchover);
        let no = || Err("refused".to_string());
        assert!(matches!(judge(&d, 0, no(), 0, DEMOTE_PATIENCE, &LEASE), Verdict::Retry { .. }), "demote");
        assert!(matches!(judge(&d, 0, no(), 0, DEMOTE_PATIENCE + 1, &LEASE), Verdict::Record { state: StepState::Failed, .. }));
        for i in [1, 2] {
            assert!(matches!(judge(&d, i, no(), 0, STEP_DEADLINE, &LEASE), Verdict::Retry { .. }));
            assert!(matches!(judge(&d, i, no(), 0, STEP_DEADLINE + 1, &LEASE), Verdict::Record { state: StepState::Failed, .. }));
        }
        assert!(matches!(judge(&d, 3, no(), 0, 0, &LEASE), Verdict::Record { state: StepState::Failed, .. }), "publish");
        for i in [4, 5] {
            assert_eq!(
                judge(&d, i, no(), u64::MAX / 2, u64::MAX / 2, &LEASE),
                Verdict::Retry { why: "refused".into(), after: BACKGROUND_RETRY }
            );
        }
        let done = judge(&d, 2, Ok(StepArgs { position: Some(7), ..Default::default() }), 0, 0, &LEASE);
        assert!(matches!(done, Verdict::Record { state: StepState::Done, output, .. } if output.position == Some(7)));
    }

    fn rec() -> ClusterRecord {
        ClusterRecord {
            epoch: 2,
            primary: "b".into(),
            in_progress: Some(1),
            blocked_until: 61_000,
            blocked_before: 5,
            dataset: "X".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_failure_before_the_promotion_hands_the_primary_back_and_lifts_the_block() {
        let mut d = decision(DecisionKind::Switchover);
        let mut r = rec();
        let demoted = StepArgs { position: Some(730), ..Default::default() };
        record_outcome(&mut d, Some(&mut r), 0, StepState::Done, 1, 2, String::new(), demoted);
        assert_eq!((r.known_position, r.in_progress), (730, Some(1)));
        record_outcome(&mut d, Some(&mut r), 1, StepState::Failed, 3, 4, "behind".into(), StepArgs::default());
        assert_eq!((r.primary.as_str(), r.blocked_until, r.in_progress), ("a", 5, None));
        assert_eq!((d.finished_at, d.outcome.as_str()), (Some(4), "failed at catch_up"));
    }

    #[test]
    fn a_promotion_starts_a_new_history_from_the_candidates_position_and_frees_the_cluster_once_the_main_line_is_done() {
        let mut d = decision(DecisionKind::Failover);
        let mut r = rec();
        r.known_position = 99;
        record_outcome(&mut d, Some(&mut r), 0, StepState::Skipped, 1, 2, "gone".into(), StepArgs::default());
        d.evidence.push(drc_model::MemberEvidence { id: "b".into(), position: 700, ..Default::default() });
        let out = StepArgs { dataset_id: Some("X2".into()), ..Default::default() };
        record_outcome(&mut d, Some(&mut r), 1, StepState::Done, 3, 4, String::new(), out);
        assert_eq!(
            (r.known_position, r.promoted_at, r.dataset.as_str(), r.in_progress),
            (700, 4, "X2", None),
            "the new primary's history starts at what it held when chosen"
        );
        assert_eq!(d.finished_at, None, "background steps still wait");
        record_outcome(&mut d, Some(&mut r), 4, StepState::Failed, 5, 6, "away".into(), StepArgs::default());
        assert_eq!((r.primary.as_str(), r.blocked_until), ("b", 61_000), "a failed repoint keeps the new primary");
    }
}
