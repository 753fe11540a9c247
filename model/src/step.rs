//! One step of a decision: what it does, to which member, what it knows and
//! how it ended. What a step's outcome *means* (done, failed, try again, and
//! for how long) is decided by the coordinator's core (`core::steps`).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::time::Millis;

/// What a step does. Stored as its snake_case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepAction {
    /// Failover: make the old primary refuse writes (its agent stops it).
    Fence,
    /// Switchover: the old primary stops taking writes and reports its final position.
    Demote,
    /// Switchover: the candidate replays up to the demoted primary's final position.
    CatchUp,
    /// The candidate becomes the primary of the decision's epoch.
    Promote,
    /// The configured hook learns the new endpoint.
    Publish,
    /// Another replica follows the new primary.
    Repoint,
    /// The old primary follows the new one (after a rewind if needed).
    Rejoin,
}

impl StepAction {
    pub const ALL: [StepAction; 7] = [
        StepAction::Fence,
        StepAction::Demote,
        StepAction::CatchUp,
        StepAction::Promote,
        StepAction::Publish,
        StepAction::Repoint,
        StepAction::Rejoin,
    ];

    /// The name on the wire and in the history.
    pub fn as_str(self) -> &'static str {
        match self {
            StepAction::Fence => "fence",
            StepAction::Demote => "demote",
            StepAction::CatchUp => "catch_up",
            StepAction::Promote => "promote",
            StepAction::Publish => "publish",
            StepAction::Repoint => "repoint",
            StepAction::Rejoin => "rejoin",
        }
    }
}

impl fmt::Display for StepAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StepAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        StepAction::ALL.into_iter().find(|a| a.as_str() == s).ok_or_else(|| format!("unknown step action {s:?}"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Done,
    Failed,
    /// Not needed or not possible (e.g. fencing an unreachable old primary
    /// whose lease has expired); the reason is in `error`.
    Skipped,
}

/// What a step knows besides its action: set when it is decided (the old
/// primary's lease) and reported when it is carried out (by the agent or the
/// hook). Stored as a map of strings, as earlier releases wrote it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepArgs {
    /// Fence or demote: until when the old primary may still hold a lease
    /// (drift margin included).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "decimal")]
    pub lease_ends_at: Option<Millis>,
    /// Fence: the decision was taken only after that lease had run out, at
    /// this instant; the fence then no longer holds up the promotion.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "decimal")]
    pub lease_expired_at: Option<Millis>,
    /// Reported by demote (the old primary's final position) and catch-up.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "decimal")]
    pub position: Option<u64>,
    /// Reported by promote: the dataset id the new primary serves (Redis
    /// starts a new replication id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_id: Option<String>,
    /// Everything else reported (the hook's duration and output, an agent's note).
    #[serde(flatten)]
    pub other: BTreeMap<String, String>,
}

impl StepArgs {
    /// What an agent or a hook reported, as a map of strings. A value that
    /// does not parse stays in `other` under its key: nothing is dropped.
    pub fn reported(map: impl IntoIterator<Item = (String, String)>) -> StepArgs {
        let mut a = StepArgs::default();
        for (k, v) in map {
            match k.as_str() {
                "lease_ends_at" | "lease_expired_at" | "position" => match v.parse::<u64>() {
                    Ok(n) if k == "lease_ends_at" => a.lease_ends_at = Some(n),
                    Ok(n) if k == "lease_expired_at" => a.lease_expired_at = Some(n),
                    Ok(n) => a.position = Some(n),
                    Err(_) => {
                        a.other.insert(k, v);
                    }
                },
                "dataset_id" => a.dataset_id = Some(v),
                _ => {
                    a.other.insert(k, v);
                }
            }
        }
        a
    }

    /// Takes what `newer` knows, keeping what it does not say.
    pub fn merge(&mut self, newer: StepArgs) {
        self.lease_ends_at = newer.lease_ends_at.or(self.lease_ends_at);
        self.lease_expired_at = newer.lease_expired_at.or(self.lease_expired_at);
        self.position = newer.position.or(self.position);
        self.dataset_id = newer.dataset_id.or(self.dataset_id.take());
        self.other.extend(newer.other);
    }

    pub fn is_empty(&self) -> bool {
        *self == StepArgs::default()
    }
}

/// Integers stored as decimal strings (the form earlier releases wrote);
/// plain JSON numbers are read too.
mod decimal {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_str(&n.to_string()),
            None => s.serialize_none(),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Number(u64),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<Repr>::deserialize(d)? {
            None => Ok(None),
            Some(Repr::Number(n)) => Ok(Some(n)),
            Some(Repr::Text(t)) => t.parse().map(Some).map_err(|e| serde::de::Error::custom(format!("{t:?}: {e}"))),
        }
    }
}

/// One command of a decision, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub action: StepAction,
    pub member: String,
    pub state: StepState,
    #[serde(default)]
    pub started: Millis,
    #[serde(default)]
    pub finished: Millis,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub args: StepArgs,
}

impl Step {
    /// A step not started yet.
    pub fn pending(action: StepAction, member: &str) -> Step {
        Step {
            action,
            member: member.into(),
            state: StepState::Pending,
            started: 0,
            finished: 0,
            error: String::new(),
            args: StepArgs::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_arguments_keep_the_stored_form_of_strings_and_lose_nothing_reported() {
        let stored = r#"{"lease_ends_at":"1700000003650","position":"1300","dataset_id":"ab","hook_ms":"12"}"#;
        let a: StepArgs = serde_json::from_str(stored).expect("decodes");
        assert_eq!((a.lease_ends_at, a.position, a.dataset_id.as_deref()), (Some(1_700_000_003_650), Some(1_300), Some("ab")));
        assert_eq!(a.other.get("hook_ms").map(String::as_str), Some("12"));
        let back: serde_json::Value = serde_json::to_value(&a).expect("encodes");
        assert_eq!(back, serde_json::from_str::<serde_json::Value>(stored).expect("json"));

        let reported = StepArgs::reported([("position".to_string(), "not a number".to_string())]);
        assert_eq!(reported.position, None);
        assert_eq!(reported.other.get("position").map(String::as_str), Some("not a number"), "kept, not dropped");
        assert!(serde_json::from_str::<StepArgs>(r#"{"position":"x"}"#).is_err(), "a corrupt record is an error, not a zero");
    }

    #[test]
    fn every_step_action_round_trips_through_its_name() {
        for a in StepAction::ALL {
            assert_eq!(a.as_str().parse::<StepAction>(), Ok(a));
            assert_eq!(serde_json::to_string(&a).expect("encodes"), format!("\"{a}\""));
        }
        assert!("restore_test".parse::<StepAction>().is_err());
    }
}
