//! The chaos trial's checker: what one cluster's writers saw, against the
//! decisions its history records and the faults the schedule ran.

use std::collections::BTreeSet;

use super::Span;

/// The lab's `rpo_max_lag_time`.
const RPO_TIME_MS: u64 = 10_000;
/// How long after waking from a freeze a member may still take a write, as
/// the design bounds it: a frozen server cannot be fenced from outside, and
/// once it runs again its agent's first lease check (every 50 ms) waits up
/// to 250 ms for its replicas to answer a heartbeat before it fences.
const WAKE_ALLOWANCE_MS: u64 = 400;
/// How long after a harmful fault ends a promotion may still be its doing
/// (a decision waits out detection, the RPO gate and a step's retries).
const AFTERMATH_MS: u64 = 10_000;

/// Everything recorded for one cluster in one trial.
pub struct Record<'a> {
    pub cluster: &'a str,
    /// (start of a promotion that succeeded, the new primary).
    pub promotions: Vec<(u64, String)>,
    /// (member, server ms) of every write a member acknowledged directly.
    pub direct: Vec<(String, u64)>,
    /// (id, wall ms) of every write acknowledged through the endpoint.
    pub through: Vec<(u64, u64)>,
    /// The ids read back through the endpoint after the trial.
    pub present: BTreeSet<u64>,
    /// (member, wall ms) of every wake from a freeze.
    pub wakes: Vec<(String, u64)>,
}

/// (problems, notes) for one cluster.
pub fn check(r: &Record, spans: &[Span]) -> (Vec<String>, Vec<String>) {
    let (mut problems, mut notes) = (Vec::new(), Vec::new());
    let c = r.cluster;

    // Two writers: a write by a member after another's promotion began.
    let (mut after_wake, mut latest_after_wake) = (0, 0);
    for (member, at) in &r.direct {
        let Some((started, to)) = r.promotions.iter().rev().find(|(s, _)| s <= at) else { continue };
        if to == member {
            continue;
        }
        let woke = r.wakes.iter().filter(|(m, w)| m == member && w <= at).map(|(_, w)| *w).max();
        match woke.filter(|w| *at <= w + WAKE_ALLOWANCE_MS) {
            Some(w) => {
                after_wake += 1;
                latest_after_wake = latest_after_wake.max(at - w);
            }
            None => problems.push(format!(
                "{c}: {member} acknowledged a write {} ms after {to}'s promotion began{}",
                at - started,
                woke.map(|w| format!(", {} ms after it woke from a freeze", at - w)).unwrap_or_default()
            )),
        }
    }
    if after_wake > 0 {
        notes.push(format!(
            "{c}: {after_wake} write(s) taken by a member after it woke from a freeze, the last {latest_after_wake} ms after (bound {WAKE_ALLOWANCE_MS} ms)"
        ));
    }

    // Lost writes: asynchronous replication may give up, at a promotion,
    // what its candidate had not received, within the RPO budget in time.
    let mut within_budget = 0;
    for (id, at) in r.through.iter().filter(|(id, _)| !r.present.contains(id)) {
        if r.promotions.iter().any(|(started, _)| *at <= *started && *started <= at + RPO_TIME_MS) {
            within_budget += 1;
        } else {
            problems.push(format!(
                "{c}: write {id} acknowledged through the endpoint at {at} was lost, and no promotion followed within the RPO budget"
            ));
        }
    }
    notes.push(format!("{c}: {} writes through the endpoint, {within_budget} lost within the RPO budget", r.through.len()));
    let mut by_member = std::collections::BTreeMap::<&str, usize>::new();
    for (m, _) in &r.direct {
        *by_member.entry(m).or_default() += 1;
    }
    notes.push(format!("{c}: writes acknowledged straight by a member: {by_member:?}"));

    // No failover caused by a fault that must not cause one.
    for (started, to) in &r.promotions {
        let Some(i) = spans.iter().position(|s| s.start <= *started && *started < s.next) else { continue };
        let harmful_before = spans[..=i].iter().rev().find(|s| s.step.may_fail_over());
        let explained = harmful_before.is_some_and(|h| *started <= h.end + AFTERMATH_MS);
        if !spans[i].step.may_fail_over() && !explained {
            problems.push(format!("{c}: {to} promoted during {:?}, which must not cause a failover", spans[i].step));
        }
    }

    // The time to recover: the longest gap between writes acknowledged
    // through the endpoint while each fault lasted and until the next.
    let mut acked: Vec<u64> = r.through.iter().map(|(_, at)| *at).collect();
    acked.sort_unstable();
    for s in spans {
        let before = acked.iter().rev().find(|a| **a < s.start).copied().unwrap_or(s.start);
        let inside: Vec<u64> = acked.iter().copied().filter(|a| *a >= s.start && *a < s.next).collect();
        let mut gap = 0;
        let mut last = before;
        for a in &inside {
            gap = gap.max(a - last);
            last = *a;
        }
        if inside.is_empty() {
            gap = s.next.saturating_sub(before);
        }
        notes.push(format!("{c}: {:?}: longest gap between acknowledged writes {:.2} s", s.step, gap as f64 / 1000.0));
    }
    (problems, notes)
}
