//! The seeded schedules and the scenarios.

use drc_model::{DecisionKind, Role, Trigger};

use super::*;
use crate::core::{Refusal, Request, Situation};

#[test]
fn seeded_fault_schedules_keep_every_safety_rule() {
    if let Some(seed) = std::env::var("DRC_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        run(seed, true);
        return;
    }
    let seeds: u64 = std::env::var("DRC_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000);
    let base: u64 = std::env::var("DRC_SIM_BASE").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    for seed in base..base + seeds {
        if let Err(e) = std::panic::catch_unwind(|| run(seed, false)) {
            let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
            panic!("seed {seed} failed: {msg}\nreplay: {}", replay_line(seed));
        }
    }
}

#[test]
fn a_crashed_primary_is_replaced_within_the_bound() {
    let mut sim = Sim::settled(1);
    assert_eq!(sim.sm.records["pg"].primary, "pg-a");
    sim.set("pg-a", |m| {
        m.up = false;
        m.writable = false;
    });
    for _ in 0..80 {
        sim.step();
    }
    let rec = &sim.sm.records["pg"];
    assert_eq!(rec.epoch, 2, "{:?}", sim.log);
    assert_eq!(rec.primary, "pg-b", "region b has the better priority");
    // The group follows: Redis moved to region b too.
    assert_eq!(sim.sm.records["rd"].primary, "rd-b", "{:#?}", sim.log);
}

#[test]
fn a_waiting_failover_names_the_instant_it_may_go_ahead() {
    let mut sim = Sim::settled(1);
    sim.set("pg-a", |m| {
        m.up = false;
        m.writable = false;
    });
    let mut gates = 0;
    for _ in 0..80 {
        sim.step();
        if sim.sm.records["pg"].epoch > 1 {
            break;
        }
        let obs = sim.observations();
        let Some(core) = sim.core.as_mut() else { continue };
        let Some(wake) = core.wake() else { continue };
        assert!(wake > sim.now, "a wake-up in the past");
        let world =
            |now| Situation { now, mono: now, topology: &sim.topology, records: &sim.sm.records, global_paused: false, observations: &obs };
        let decides = |actions: &[Action]| actions.iter().any(|a| matches!(a, Action::Decide(d) if d.cluster == "pg"));
        // Just before it nothing may happen, and the core still names it;
        // at it, the gate is open: a decision, or a later gate.
        assert!(!decides(&core.tick(&world(wake - 1))), "decided before its wake-up");
        assert_eq!(core.wake(), Some(wake));
        let at = core.tick(&world(wake));
        assert!(decides(&at) || core.wake().is_some_and(|w| w > wake), "nothing opened at {wake}: {at:?}");
        gates += 1;
    }
    assert!(gates > 0, "the failover never waited on a timed gate");
    assert_eq!(sim.sm.records["pg"].epoch, 2, "{:#?}", sim.log);
}

#[test]
fn an_operator_failover_of_a_serving_primary_waits_for_its_final_writes_unless_forced() {
    let mut sim = Sim::settled(9);
    assert_eq!(sim.sm.records["pg"].primary, "pg-a");
    sim.operator(Request::Failover { cluster: "pg".into(), to: Some("pg-b".into()), force: false });
    let d = sim.sm.history.values().last().expect("a decision").clone();
    let actions: Vec<&str> = d.steps.iter().map(|s| s.action.as_str()).collect();
    assert_eq!(d.kind, DecisionKind::Switchover, "{:#?}", sim.log);
    assert!(actions.starts_with(&["demote", "catch_up"]), "{actions:?}");
    assert!(d.reason.contains("carried out as a switchover"), "{}", d.reason);
    for _ in 0..80 {
        sim.step();
    }
    assert_eq!(sim.sm.records["pg"].primary, "pg-b", "{:#?}", sim.log);
    // Forced, the serving primary is fenced at once.
    sim.operator(Request::Failover { cluster: "pg".into(), to: Some("pg-c".into()), force: true });
    let d = sim.sm.history.values().last().expect("a decision").clone();
    assert_eq!(d.kind, DecisionKind::Failover, "{:#?}", sim.log);
    assert_eq!(d.steps.first().map(|s| s.action.as_str()), Some("fence"));
}

#[test]
fn an_agent_link_loss_alone_causes_no_failover() {
    let mut sim = Sim::settled(2);
    sim.set("pg-a", |m| m.link = false);
    for _ in 0..100 {
        sim.step();
    }
    assert_eq!(sim.sm.records["pg"].epoch, 1, "{:#?}", sim.log);
    assert!(sim.members["pg-a"].writable, "fail-static: every other member vouched for it");
}

#[test]
fn a_lagging_replica_is_not_promoted_but_force_does() {
    let mut sim = Sim::new(3, false);
    sim.set("pg-b", |m| m.lagging = true);
    sim.set("pg-c", |m| m.lagging = true);
    for _ in 0..100 {
        sim.step();
    }
    sim.set("pg-a", |m| {
        m.up = false;
        m.writable = false;
    });
    for _ in 0..80 {
        sim.step();
    }
    assert_eq!(sim.sm.records["pg"].epoch, 1, "no automatic promotion beyond the RPO budget");
    sim.operator(Request::Failover { cluster: "pg".into(), to: Some("pg-c".into()), force: true });
    for _ in 0..10 {
        sim.step();
    }
    let d = sim.sm.history.values().find(|d| d.cluster == "pg").expect("a decision");
    assert_eq!(d.trigger, Trigger::Operator { force: true });
    assert!(sim.members["pg-c"].writable);
}

#[test]
fn a_primary_fenced_while_the_coordinators_were_away_comes_back_without_a_failover() {
    let mut sim = Sim::settled(4);
    // One replica down: the primary can no longer be vouched for by every
    // other member, so losing the coordinators for longer than a lease
    // makes its agent fence it.
    sim.set("pg-c", |m| {
        m.up = false;
        m.writable = false;
    });
    for _ in 0..10 {
        sim.step();
    }
    sim.leader = None;
    sim.core = None;
    sim.election_until = sim.now + 3 * LEASE.lease;
    for _ in 0..25 {
        sim.step();
    }
    assert!(sim.members["pg-a"].lease_fenced && !sim.members["pg-a"].writable, "{:#?}", sim.log);
    for _ in 0..20 {
        sim.step();
    }
    assert!(sim.leader.is_some());
    assert!(sim.members["pg-a"].writable, "a new lease brought it back: {:#?}", sim.log);
    assert_eq!(sim.sm.records["pg"].epoch, 1, "and nobody was promoted: {:#?}", sim.log);
}

#[test]
fn a_region_loss_moves_the_group_to_one_region_even_when_one_candidate_is_silent() {
    let mut sim = Sim::settled(5);
    // pg-b cannot be promoted (its agent is cut off), so PostgreSQL can only
    // go to region c; Redis, deciding in the same tick, must follow it there
    // rather than to region b, which it would prefer by priority.
    sim.set("pg-b", |m| m.link = false);
    sim.region_up[0] = false;
    for m in sim.members.values_mut().filter(|m| m.region == 0) {
        m.up = false;
        m.writable = false;
    }
    for _ in 0..80 {
        sim.step();
    }
    assert_eq!(sim.sm.records["pg"].primary, "pg-c", "{:#?}", sim.log);
    assert_eq!(sim.sm.records["rd"].primary, "rd-c", "{:#?}", sim.log);
}

#[test]
fn an_evacuation_keeps_the_group_together_over_a_more_advanced_member_elsewhere() {
    let mut sim = Sim::settled(6);
    // rd-b falls a little behind (well within the RPO budget), so rd-c is
    // the most advanced replica; PostgreSQL has already gone to region b.
    sim.set("rd-b", |m| m.lagging = true);
    while sim.members["rd-b"].position == sim.members["rd-c"].position {
        sim.step();
    }
    sim.set("rd-b", |m| m.lagging = false);
    let (b, c) = (sim.members["rd-b"].position, sim.members["rd-c"].position);
    assert!(b < c && c - b < RPO_BYTES, "rd-b {b}, rd-c {c}");
    sim.operator(Request::Evacuate { cluster: "rd".into(), from: "a".into(), to: None, prefer: Some("b".into()), force: false });
    let d = sim.sm.history.values().find(|d| d.cluster == "rd").expect("a decision");
    assert_eq!(d.to, "rd-b", "{:#?}", sim.log);
}

#[test]
fn a_request_right_after_a_promotion_waits_until_the_new_primary_reports_as_one() {
    let mut sim = Sim::settled(8);
    sim.operator(Request::Switchover { cluster: "rd".into(), to: Some("rd-b".into()) });
    for _ in 0..50 {
        if sim.sm.records["rd"].in_progress.is_none() {
            break;
        }
        sim.step();
    }
    let rec = sim.sm.records["rd"].clone();
    assert_eq!((rec.primary.as_str(), rec.in_progress), ("rd-b", None), "{:#?}", sim.log);
    assert!(sim.now - rec.promoted_at < LEASE.promote_ttl());
    // The agent's newest sample was taken just before the promotion.
    let mut obs = sim.observations();
    obs.get_mut("rd-b").expect("rd-b").role = Role::Replica;
    let evacuate = Request::Evacuate { cluster: "rd".into(), from: "b".into(), to: None, prefer: None, force: false };
    let core = sim.core.as_mut().expect("a leader");
    let world = Situation {
        now: sim.now,
        mono: sim.now,
        topology: &sim.topology,
        records: &sim.sm.records,
        global_paused: false,
        observations: &obs,
    };
    let refused = core.request(&world, &evacuate).expect_err("the new primary has not reported yet");
    assert!(matches!(refused, Refusal::NotNow(_)), "a refusal to retry: {refused:?}");
    let refused = refused.to_string();
    assert!(refused.contains("rd-b was promoted") && refused.contains("not reported as the primary yet"), "{refused}");
    assert!(core.settling(&world, "rd").is_some());
    // Once it reports, and rd-c streams from it, the same request is a
    // planned move, not a failover.
    obs.get_mut("rd-b").expect("rd-b").role = Role::Primary;
    obs.get_mut("rd-c").expect("rd-c").streaming = true;
    let world = Situation {
        now: sim.now,
        mono: sim.now,
        topology: &sim.topology,
        records: &sim.sm.records,
        global_paused: false,
        observations: &obs,
    };
    assert!(core.settling(&world, "rd").is_none());
    let d = core.request(&world, &evacuate).expect("accepted");
    assert_eq!(d.kind, DecisionKind::Switchover, "{d:?}");
}
