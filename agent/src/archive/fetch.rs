//! `drc-agent wal-fetch`: PostgreSQL's `restore_command`. It writes the
//! file PostgreSQL asks for from the archive: a history file, a whole
//! segment, or a segment still being written, put together from its chunks
//! and padded with zeros (where recovery then finds the end of the WAL).
//!
//! Exit codes, as PostgreSQL reads them: 0 the file is there; 1 the archive
//! does not have it (the end of the archive, or a gap); 126 the archive
//! cannot be read (a corrupt object, a bucket out of reach): recovery stops
//! with the message rather than end early at a point the operator did not
//! ask for.

use std::path::{Path, PathBuf};

use super::layout::{chunk_offset, Layout, Local};
use super::seal::open;
use crate::config::{AgentConfig, DestinationConfig};
use crate::s3::s3_error;

/// Why a fetch found nothing, or failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0} is not in the archive")]
    Missing(String),
    #[error("{0}")]
    Unreadable(String),
}

impl FetchError {
    pub fn exit_code(&self) -> u8 {
        match self {
            FetchError::Missing(_) => 1,
            FetchError::Unreadable(_) => 126,
        }
    }
}

pub struct Fetch<'a> {
    pub cfg: &'a AgentConfig,
    /// Where to look, in order: an archive moves to another bucket when a
    /// failover moves the primary into its region.
    pub destinations: &'a [String],
    /// `<prefix>/<system id>`, as `drctl status` and the catalog show it.
    pub root: &'a str,
}

impl Fetch<'_> {
    /// Writes `file` (a name PostgreSQL asks for) to `to`: a history file
    /// or whole segment from the first destination that has it; otherwise a
    /// segment from the chunks of every destination together (an archiver
    /// that moved left the start of a segment in one bucket and its end in
    /// another). A destination that cannot be read is passed over, but if
    /// the file is found nowhere, its error is the answer.
    pub async fn fetch(&self, file: &str, to: &Path) -> Result<(), FetchError> {
        let (sources, mut unreadable) = self.sources()?;
        let whole = match Local::of(file) {
            Some(Local::History(name)) => Some(name),
            Some(Local::Segment(name)) => Some(name),
            _ => None,
        };
        let Some(name) = whole else { return Err(FetchError::Missing(file.to_string())) };
        for source in &sources {
            let key = if name.ends_with(".history") { source.layout.history(&name) } else { source.layout.segment(&name) };
            match source.object(&key).await {
                Ok(bytes) => return write(to, &bytes),
                Err(FetchError::Missing(_)) => {}
                Err(e) => unreadable = unreadable.or(Some(e)),
            }
        }
        if !name.ends_with(".history") {
            match assemble(&sources, &name).await {
                Ok(bytes) => return write(to, &bytes),
                Err(FetchError::Missing(_)) => {}
                Err(e) => unreadable = unreadable.or(Some(e)),
            }
        }
        Err(unreadable.unwrap_or_else(|| FetchError::Missing(format!("{file} (under {})", self.root))))
    }
}

impl<'a> Fetch<'a> {
    /// A source per destination that is configured; the error of one that
    /// is not.
    fn sources(&self) -> Result<(Vec<Source<'a>>, Option<FetchError>), FetchError> {
        let identity = self
            .cfg
            .backup
            .identity_file
            .clone()
            .ok_or_else(|| FetchError::Unreadable("[backup] identity_file is not set: this agent cannot decrypt the archive".into()))?;
        let mut sources = Vec::new();
        let mut unreadable = None;
        for name in self.destinations {
            match crate::s3::destination(self.cfg, name).and_then(|d| Ok((d, crate::s3::client(d)?))) {
                Ok((dest, client)) => sources.push(Source { client, dest, identity: identity.clone(), layout: Layout::at(self.root) }),
                Err(e) => unreadable = unreadable.or(Some(FetchError::Unreadable(e))),
            }
        }
        Ok((sources, unreadable))
    }

    /// The archive's segment size, from the first destination that says.
    pub async fn segment_size(&self) -> Result<u64, FetchError> {
        let (sources, mut failed) = self.sources()?;
        for source in &sources {
            match source.segment_size().await {
                Ok(size) => return Ok(size),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        Err(failed.unwrap_or_else(|| FetchError::Missing(format!("{}/wal.json", self.root))))
    }
}

fn write(to: &Path, bytes: &[u8]) -> Result<(), FetchError> {
    write_atomically(to, bytes).map_err(|e| FetchError::Unreadable(format!("writing {}: {e}", to.display())))
}

/// A segment still being written: the chunks of every source, in order of
/// offset (the longer last where two start alike), over a segment of zeros.
/// Chunks that overlap hold the same bytes where they do.
async fn assemble(sources: &[Source<'_>], name: &str) -> Result<Vec<u8>, FetchError> {
    let mut chunks = Vec::new();
    let mut size = None;
    for source in sources {
        let listed = source.chunks(name).await?;
        if !listed.is_empty() && size.is_none() {
            size = Some(source.segment_size().await?);
        }
        chunks.extend(listed.into_iter().map(|(offset, key)| (offset, key, source)));
    }
    let Some(size) = size else { return Err(FetchError::Missing(name.to_string())) };
    let mut opened = Vec::new();
    for (offset, key, source) in chunks {
        let bytes = source.object(&key).await?;
        if offset as usize + bytes.len() > size as usize {
            return Err(FetchError::Unreadable(format!("{key}: {} bytes at offset {offset} overrun a {size}-byte segment", bytes.len())));
        }
        opened.push((offset, bytes));
    }
    opened.sort_by_key(|(offset, bytes)| (*offset, bytes.len()));
    let mut segment = vec![0u8; size as usize];
    for (offset, bytes) in opened {
        segment[offset as usize..offset as usize + bytes.len()].copy_from_slice(&bytes);
    }
    Ok(segment)
}

struct Source<'a> {
    client: aws_sdk_s3::Client,
    dest: &'a DestinationConfig,
    identity: PathBuf,
    layout: Layout,
}

impl Source<'_> {
    /// One object, opened.
    async fn object(&self, key: &str) -> Result<Vec<u8>, FetchError> {
        let got = self.client.get_object().bucket(&self.dest.bucket).key(key).send().await;
        let body = match got {
            Ok(o) => o.body.collect().await.map_err(|e| FetchError::Unreadable(format!("reading {key}: {e}")))?.into_bytes().to_vec(),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Err(FetchError::Missing(key.to_string())),
            Err(e) => return Err(FetchError::Unreadable(s3_error(&format!("fetching {key}"), self.dest, e))),
        };
        open(body, &self.identity)
            .await
            .map_err(|e| FetchError::Unreadable(format!("{key} cannot be opened (corrupt, or not for this key): {e}")))
    }

    /// The chunks of segment `name` here: (offset, key).
    async fn chunks(&self, name: &str) -> Result<Vec<(u64, String)>, FetchError> {
        let prefix = self.layout.chunks(name);
        let listed = self
            .client
            .list_objects_v2()
            .bucket(&self.dest.bucket)
            .prefix(&prefix)
            .send()
            .await
            .map_err(|e| FetchError::Unreadable(s3_error(&format!("listing {prefix}"), self.dest, e)))?;
        Ok(listed.contents().iter().filter_map(|o| o.key()).filter_map(|k| Some((chunk_offset(k)?, k.to_string()))).collect())
    }

    async fn segment_size(&self) -> Result<u64, FetchError> {
        let meta = self.object(&self.layout.meta()).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&meta).map_err(|e| FetchError::Unreadable(format!("{}: not JSON: {e}", self.layout.meta())))?;
        let size = v["segment_size"].as_u64().unwrap_or(0);
        drc_model::wal::SegmentSize::new(size)
            .map(|s| s.bytes())
            .map_err(|e| FetchError::Unreadable(format!("{}: {e}", self.layout.meta())))
    }
}

fn write_atomically(to: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = to.with_extension("drc-fetch");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, to)
}
