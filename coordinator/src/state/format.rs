//! The format of what drc writes into its Raft log (commands) and its
//! snapshots (the state machine): JSON objects stamped with `"format": N`.
//! A node refuses, loudly, an entry or a snapshot of a format newer than
//! it reads: applying part of it, or skipping it, would make its state
//! differ from the nodes that read it. Format 1 is every release before the
//! stamp (no `format` field); fields and variants are only ever added
//! within a format, so a release reads every older one.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The format this release writes, and the newest it reads.
pub const FORMAT: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "{what} was written in format {found} by a newer drc release; this release ({}) reads formats up to {FORMAT}: upgrade this node to a release that reads it (it stops rather than diverge from the nodes that did)",
        env!("CARGO_PKG_VERSION")
    )]
    Newer { what: String, found: u32 },
    #[error("{what} cannot be decoded by this release: {source}")]
    Malformed { what: String, source: serde_json::Error },
}

#[derive(Serialize)]
struct Stamped<'a, T> {
    format: u32,
    #[serde(flatten)]
    body: &'a T,
}

/// Only the stamp, whatever else the object holds.
#[derive(Deserialize)]
struct Stamp {
    #[serde(default = "unstamped")]
    format: u32,
}

fn unstamped() -> u32 {
    1
}

/// `body` as a JSON object stamped with [`FORMAT`].
pub fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&Stamped { format: FORMAT, body })
}

/// Reads what [`encode`] (or a release before the stamp) wrote; `what`
/// names it in the error ("committed entry 7", "the snapshot").
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, FormatError> {
    let malformed = |source| FormatError::Malformed { what: what.to_string(), source };
    let stamp: Stamp = serde_json::from_slice(bytes).map_err(malformed)?;
    if stamp.format > FORMAT {
        return Err(FormatError::Newer { what: what.to_string(), found: stamp.format });
    }
    serde_json::from_slice(bytes).map_err(malformed)
}

/// The format `bytes` were written in, if they are a stamped object.
pub fn format_of(bytes: &[u8]) -> Option<u32> {
    serde_json::from_slice::<Stamp>(bytes).ok().map(|s| s.format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    #[test]
    fn a_command_round_trips_with_its_stamp_and_an_unstamped_one_is_format_1() {
        let cmd = Command::Pause { cluster: Some("pg".into()), paused: true };
        let bytes = encode(&cmd).expect("encode");
        assert_eq!(format_of(&bytes), Some(FORMAT));
        assert_eq!(decode::<Command>(&bytes, "entry").expect("decode"), cmd);
        let old = serde_json::to_vec(&cmd).expect("unstamped");
        assert_eq!(format_of(&old), Some(1));
        assert_eq!(decode::<Command>(&old, "entry").expect("decode"), cmd);
    }

    #[test]
    fn a_newer_format_is_refused_loudly_even_when_it_would_parse() {
        let newer = br#"{"format": 3, "type": "pause", "cluster": null, "paused": true}"#;
        let e = decode::<Command>(newer, "committed entry 9").expect_err("newer");
        assert!(matches!(e, FormatError::Newer { found: 3, .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("committed entry 9") && text.contains("format 3") && text.contains("upgrade this node"), "{text}");
        let e = decode::<Command>(b"[1, 2]", "the snapshot").expect_err("malformed");
        assert!(matches!(e, FormatError::Malformed { .. }), "{e}");
    }
}
