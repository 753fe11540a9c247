//! Property tests of the topology parser: any document, however broken,
//! gets an answer (a topology or every problem found), never a panic; and
//! any topology it accepts renders to a document that parses back to it.
//!
//! The seed is fixed, so that a run is repeatable; set `PROPTEST_CASES` to
//! run more cases.

use drc_model::topology::{diff::diff, parse::parse_topology, render::to_toml};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Values of every TOML type, a few of them meaningful here.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("'redis'".to_string()),
        Just("'postgres'".to_string()),
        Just("'a'".to_string()),
        Just("'b'".to_string()),
        Just("'c'".to_string()),
        Just("'2s'".to_string()),
        Just("'0s'".to_string()),
        Just("'-1s'".to_string()),
        Just("'7days'".to_string()),
        Just("'h:1'".to_string()),
        Just("'[::1]:5432'".to_string()),
        Just("['c', 'a']".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("true".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (0u32..5).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        proptest::collection::vec(any::<char>(), 0..12).prop_map(|c| format!("{:?}", String::from_iter(c))),
    ]
}

/// Lines of a topology document: headers and keys it knows, and others.
fn line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("kind"),
        Just("priority"),
        Just("region"),
        Just("cluster"),
        Just("address"),
        Just("id"),
        Just("clusters"),
        Just("detection_window"),
        Just("anti_flap_window"),
        Just("synchronous_replicas"),
        Just("destinations"),
        Just("recipients"),
        Just("keep_last"),
        Just("max_age"),
        Just("audit"),
        Just("decisions"),
        Just("query"),
        Just("bogus"),
    ];
    prop_oneof![
        Just("[regions.a]".to_string()),
        Just("[regions.b]".to_string()),
        Just("[clusters.c]".to_string()),
        Just("[clusters.c.policy]".to_string()),
        Just("[clusters.c.backup]".to_string()),
        Just("[[clusters.c.backup.checks]]".to_string()),
        Just("[destinations.s3]".to_string()),
        Just("[[members]]".to_string()),
        Just("[failover_groups.g]".to_string()),
        Just("[retention]".to_string()),
        Just("[nonsense]".to_string()),
        (key, value()).prop_map(|(k, v)| format!("{k} = {v}")),
        proptest::collection::vec(any::<char>(), 0..30).prop_map(String::from_iter),
    ]
}

fn runner(cases: u32) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(cases);
    TestRunner::new_with_rng(Config { cases, ..Config::default() }, TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]))
}

#[test]
fn any_text_gets_an_answer_never_a_panic() {
    runner(2000)
        .run(&proptest::collection::vec(any::<char>(), 0..400).prop_map(String::from_iter), |text| {
            let _ = parse_topology(&text);
            Ok(())
        })
        .expect("no panic");
}

#[test]
fn documents_of_known_and_unknown_parts_parse_or_name_their_problems_and_what_parses_round_trips() {
    let accepted = std::cell::Cell::new(0);
    runner(3000)
        .run(&proptest::collection::vec(line(), 0..40), |lines| {
            match parse_topology(&lines.join("\n")) {
                Ok(t) => {
                    let again =
                        parse_topology(&to_toml(&t)).map_err(|e| TestCaseError::fail(format!("the rendered form is refused: {e}")))?;
                    prop_assert_eq!(&again, &t);
                    prop_assert!(diff(&t, &again).is_empty());
                    accepted.set(accepted.get() + 1);
                }
                Err(e) => prop_assert!(!e.problems.is_empty(), "refused without a problem named"),
            }
            Ok(())
        })
        .expect("every document gets an answer");
    assert!(accepted.get() > 10, "too few valid documents to test the round trip: {}", accepted.get());
}
