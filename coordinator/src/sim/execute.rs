//! The leader's side: committing decisions, carrying out their steps by
//! the production rules, and leader placement.

use std::collections::BTreeMap;

use drc_model::{Decision, StepAction, StepArgs, StepState, Trigger};

use super::*;
use crate::core::steps::{self, Verdict};
use crate::core::{placement_targets, Coordinators, PLACEMENT_CALM};

impl Sim {
    pub(super) fn commit(&mut self, d: Decision) {
        let summary = format!("decide {} epoch {}: {} -> {} ({:?}, {})", d.cluster, d.epoch, d.from, d.to, d.trigger, d.reason);
        if d.trigger == Trigger::Automatic {
            self.check_no_failover_of_reachable_primary(&d);
            self.check_synchronous(&d);
        }
        match self.sm.apply(Command::Decide { decision: Box::new(d) }) {
            Outcome::Decided { id } => self.say(format!("{summary} => decision {id}")),
            other => self.say(format!("{summary} => {other:?}")),
        }
    }

    /// Carries out the steps of every decision in progress as the executor
    /// does: the steps `core::steps` says may run, each answered by the
    /// model of its agent, and the answer judged by `core::steps` too.
    pub(super) fn execute(&mut self) {
        if self.leader.is_none() {
            return;
        }
        let running: Vec<Decision> = self.sm.history.values().filter(|d| d.finished_at.is_none()).cloned().collect();
        for d in running {
            for i in steps::runnable(&d) {
                let key = (d.id, i);
                if self.next_try.get(&key).is_some_and(|at| self.now < *at) {
                    continue;
                }
                if let Some(why) = steps::not_ready(&d, i) {
                    self.next_try.insert(key, self.now + steps::retry_after(&d, i));
                    self.say(format!("decision {} step {i} {}: {why}", d.id, d.steps[i].action));
                    continue;
                }
                let since = *self.first_attempt.entry(key).or_insert(self.now);
                let answer = self.answer(&d, i);
                match steps::judge(&d, i, answer, self.now, self.now - since, &LEASE) {
                    Verdict::Record { state, error, output } => self.finish_step(&d, i, state, error, output),
                    Verdict::Retry { why, after } => {
                        self.next_try.insert(key, self.now + after);
                        if since == self.now {
                            self.say(format!("decision {} step {i} {} {}: retry ({why})", d.id, d.steps[i].action, d.steps[i].member));
                        }
                    }
                }
            }
        }
    }

    /// What the agent of step `i`'s member answers (and does), as the real
    /// agent would: `Err` when it cannot be reached or cannot do it.
    pub(super) fn answer(&mut self, d: &Decision, i: usize) -> Result<StepArgs, String> {
        let step = d.steps[i].clone();
        if step.action == StepAction::Publish {
            return Ok(StepArgs::default());
        }
        let Some(m) = self.members.get(&step.member).cloned() else { return Err(format!("no member {}", step.member)) };
        let reach = self.agent_connected(&m) && self.region_up[m.region];
        if !reach {
            return Err(format!("the agent of {} is not connected", m.id));
        }
        // A fence or demotion counts for the promotion: the candidate's
        // agent does not refuse it on its evidence of the old primary.
        let fenced = d.steps.iter().any(|s| matches!(s.action, StepAction::Fence | StepAction::Demote) && s.state == StepState::Done);
        if d.epoch < m.epoch {
            return Err(format!("agent refused: epoch {} < {}", d.epoch, m.epoch));
        }
        match step.action {
            StepAction::Fence | StepAction::Demote => {
                let mut output = StepArgs::default();
                if step.action == StepAction::Demote {
                    // As the agent: the demoted primary's final position.
                    output.position = Some(m.position);
                    let k = self.known_position.entry(d.cluster.clone()).or_default();
                    *k = (*k).max(m.position);
                    // A clean stop (PostgreSQL) or a write pause (Redis)
                    // sends what is left to the replicas streaming from it.
                    let streaming: Vec<String> = self
                        .members
                        .values()
                        .filter(|r| r.cluster == m.cluster && r.up && !r.primary && !r.lagging && r.upstream == m.id)
                        .filter(|r| self.talk(r.region, m.region))
                        .map(|r| r.id.clone())
                        .collect();
                    for r in streaming {
                        self.set(&r, |x| {
                            x.position = m.position;
                            x.written_at = m.written_at;
                        });
                    }
                }
                // SIGKILL stops a frozen server too.
                self.set(&m.id, |x| {
                    x.writable = false;
                    x.up = false;
                    x.server_frozen = false;
                    x.learn(d.epoch, &d.to);
                });
                Ok(output)
            }
            StepAction::CatchUp => {
                let target = d.steps.iter().find(|s| s.action == StepAction::Demote).and_then(|s| s.args.position).unwrap_or(0);
                if m.position >= target {
                    Ok(StepArgs { position: Some(m.position), ..Default::default() })
                } else {
                    Err(format!("replayed {} of {target}", m.position))
                }
            }
            StepAction::Promote if !Self::answers(&m) => Err(format!("{} does not answer", m.id)),
            StepAction::Promote if !fenced && self.now < m.refuse_promotion_until => {
                Err("this replica saw the old primary within the lease; it vouches for it".into())
            }
            StepAction::Promote => {
                self.check_promotion(d, &m);
                self.known_position.insert(d.cluster.clone(), m.position);
                let now = self.now;
                self.set(&m.id, |x| {
                    x.primary = true;
                    x.writable = true;
                    x.lease_fenced = false;
                    x.upstream.clear();
                    x.learn(d.epoch, &d.to);
                    // A promoted standby starts asynchronous.
                    x.sync_count = 0;
                    x.lease_until = Some(now + LEASE.promote_ttl());
                });
                self.sync_acked.remove(&d.cluster);
                Ok(StepArgs::default())
            }
            StepAction::Repoint | StepAction::Rejoin if !Self::answers(&m) => Err(format!("{} does not answer", m.id)),
            StepAction::Repoint | StepAction::Rejoin => {
                let to = d.to.clone();
                self.set(&m.id, |x| {
                    x.primary = false;
                    x.writable = false;
                    x.upstream = to.clone();
                    x.learn(d.epoch, &to);
                });
                Ok(StepArgs::default())
            }
            StepAction::Publish => Ok(StepArgs::default()),
        }
    }

    /// Leader placement by the production rule (`core::placement`), at most
    /// every PLACEMENT_CALM: the leadership moves to a coordinator that can
    /// talk to a majority, which starts a fresh core as a new leader does.
    pub(super) fn place_leader(&mut self, obs: &BTreeMap<String, Observation>) {
        let Some(l) = self.leader else { return };
        if !self.placement || !self.now.is_multiple_of(PLACEMENT_CALM) {
            return;
        }
        let regions: BTreeMap<u64, String> = (0..3).map(|r| (r as u64 + 1, REGIONS[r].to_string())).collect();
        let voters = [1, 2, 3];
        let world = situation(self.now, &self.topology, &self.sm, obs);
        let targets =
            placement_targets(&world, &self.sm.history, false, &Coordinators { me: l as u64 + 1, voters: &voters, regions: &regions });
        let to = targets.into_iter().map(|id| id as usize - 1).find(|&r| self.region_up[r] && self.talk(l, r));
        if let Some(r) = to {
            self.leader = Some(r);
            self.core = Some(Core::new(LEASE, self.now));
            self.say(format!("leader placement hands the leadership from region {} to region {}", REGIONS[l], REGIONS[r]));
        }
    }

    pub(super) fn finish_step(&mut self, d: &Decision, i: usize, state: StepState, error: String, output: StepArgs) {
        self.say(format!("decision {} step {} {} {}: {state:?} {error}", d.id, i, d.steps[i].action, d.steps[i].member));
        self.sm.apply(Command::Step { decision: d.id, index: i, state, started: self.now, finished: self.now, error, output });
    }
}
