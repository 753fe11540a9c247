//! The archived WAL a restore replays, fetched ahead into a directory that
//! PostgreSQL's `restore_command` copies from (`cp DIR/%f %p`): the server
//! restoring never needs the archive's keys or the bucket's credentials.

use std::collections::BTreeSet;
use std::path::Path;

use super::fetch::{Fetch, FetchError};
use super::layout::{segment_start, timeline_of, Local};
use crate::config::AgentConfig;

/// What was fetched.
#[derive(Debug, Default)]
pub struct Fetched {
    pub files: usize,
    pub bytes: u64,
}

/// Every history file of the archive `root`, and every segment of every
/// timeline from the one holding `start` on, into `dir`; `fetched_one` hears
/// the size of each file as it lands.
pub async fn prefetch(
    cfg: &AgentConfig,
    destinations: &[String],
    root: &str,
    start: u64,
    dir: &Path,
    fetched_one: impl Fn(u64),
) -> Result<Fetched, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut names = BTreeSet::new();
    for name in destinations {
        names.extend(listed(cfg, name, root).await?);
    }
    let fetch = Fetch { cfg, destinations, root };
    let mut fetched = Fetched::default();
    let mut segment_size = 0;
    for name in &names {
        let wanted = match Local::of(name) {
            Some(Local::History(_)) => true,
            Some(Local::Segment(seg)) => {
                if segment_size == 0 {
                    segment_size = fetch.segment_size().await.map_err(|e| e.to_string())?;
                }
                segment_start(&seg, segment_size).is_some_and(|s| s + segment_size > start)
            }
            _ => false,
        };
        if !wanted {
            continue;
        }
        let to = dir.join(name);
        match fetch.fetch(name, &to).await {
            Ok(()) => {
                let size = std::fs::metadata(&to).map(|m| m.len()).unwrap_or(0);
                fetched.files += 1;
                fetched.bytes += size;
                fetched_one(size);
            }
            Err(FetchError::Missing(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(fetched)
}

/// The file names (`<segment>`, `<TL>.history`) the archive has at one
/// destination, whole or in chunks.
async fn listed(cfg: &AgentConfig, destination: &str, root: &str) -> Result<BTreeSet<String>, String> {
    let dest = crate::s3::destination(cfg, destination)?;
    let client = crate::s3::client(dest)?;
    let prefix = format!("{}/", root.trim_end_matches('/'));
    Ok(crate::s3::list_keys(&client, dest, &prefix).await?.iter().filter_map(|key| file_of(&key[prefix.len()..])).collect())
}

/// The file a key (below the archive's root) holds, or is a chunk of.
fn file_of(rest: &str) -> Option<String> {
    let mut parts = rest.split('/');
    let first = parts.next()?;
    if let (Some(Local::History(h)), None) = (Local::of(first), parts.clone().next()) {
        return Some(h);
    }
    let second = parts.next()?;
    let name = second.strip_suffix(".chunks").unwrap_or(second);
    match Local::of(name) {
        Some(Local::Segment(seg)) if timeline_of(&seg) == timeline_of(first) => Some(seg),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_files_a_restore_asks_for() {
        assert_eq!(file_of("00000002.history"), Some("00000002.history".into()));
        assert_eq!(file_of("00000001/000000010000000000000004"), Some("000000010000000000000004".into()));
        assert_eq!(file_of("00000001/000000010000000000000004.chunks/00002000"), Some("000000010000000000000004".into()));
        assert_eq!(file_of("00000001/000000010000000000000004.partial"), None, "a timeline's last partial segment is never asked for");
        assert_eq!(file_of("wal.json"), None);
        assert_eq!(file_of("00000002/000000010000000000000004"), None, "a segment under another timeline's folder");
    }
}
