//! Retention of the WAL archive: deletes every segment (whole, in chunks,
//! or an ended timeline's last partial one) that ends at or before the
//! oldest retained backup's start. History files and the archive's
//! `wal.json` stay: they are small, and a restore of any timeline needs them.

use drc_proto::{PruneWal, WalPruned};

use super::fetch::Fetch;
use super::layout::{timeline_of, Local};
use crate::config::AgentConfig;
use crate::s3::s3_error;

pub async fn prune(cfg: &AgentConfig, job: &PruneWal) -> Result<WalPruned, String> {
    let dest = crate::s3::destination(cfg, &job.destination)?;
    let client = crate::s3::client(dest)?;
    let destinations = [job.destination.clone()];
    let size = Fetch { cfg, destinations: &destinations, root: &job.archive }.segment_size().await.map_err(|e| e.to_string())?;
    let kept_from = job.before / size * size;
    let prefix = format!("{}/", job.archive.trim_end_matches('/'));
    let doomed: Vec<String> = crate::s3::list_keys(&client, dest, &prefix)
        .await?
        .into_iter()
        .filter(|key| start_of_key(&key[prefix.len()..], size).is_some_and(|start| start + size <= kept_from))
        .collect();
    for key in &doomed {
        client.delete_object().bucket(&dest.bucket).key(key).send().await.map_err(|e| s3_error(&format!("deleting {key}"), dest, e))?;
    }
    tracing::info!(archive = %job.archive, destination = %job.destination, deleted = doomed.len(), kept_from, "WAL archive pruned");
    Ok(WalPruned { kept_from, objects_deleted: doomed.len() as u32 })
}

/// Where the segment an object below the archive's root holds begins:
/// `<TL>/<segment>`, `<TL>/<segment>.partial`, `<TL>/<segment>.chunks/<offset>`.
fn start_of_key(rest: &str, size: u64) -> Option<u64> {
    let (tl, file) = rest.split_once('/')?;
    let name = file.split('/').next()?;
    let name = name.strip_suffix(".chunks").or_else(|| name.strip_suffix(".partial")).unwrap_or(name);
    match Local::of(name) {
        Some(Local::Segment(seg)) if format!("{:08X}", timeline_of(&seg)) == tl => super::layout::segment_start(&seg, size),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_whole_chunked_and_partial_are_found_and_history_files_are_not() {
        let mb16 = 16 << 20;
        assert_eq!(start_of_key("00000001/000000010000000000000003", mb16), Some(3 * mb16));
        assert_eq!(start_of_key("00000002/000000020000000000000004.chunks/0002e000", mb16), Some(4 * mb16));
        assert_eq!(start_of_key("00000001/000000010000000000000004.partial", mb16), Some(4 * mb16));
        assert_eq!(start_of_key("00000001/000000010000000100000000", mb16), Some(256 * mb16));
        assert_eq!(start_of_key("00000002.history", mb16), None);
        assert_eq!(start_of_key("wal.json", mb16), None);
        assert_eq!(start_of_key("00000002/000000010000000000000003", mb16), None, "a segment in another timeline's folder");
    }
}
