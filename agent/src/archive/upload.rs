//! Uploads what pg_receivewal has written: each pass sends the new bytes of
//! the segment being written as a chunk, every completed segment whole, and
//! history files. A pass that fails leaves everything in place for the next,
//! so an outage of the bucket delays archiving and loses nothing.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use aws_sdk_s3::primitives::ByteStream;

use super::layout::{segment_start, timeline_of, Layout, Local};
use super::seal::seal;
use crate::config::DestinationConfig;
use crate::s3::s3_error;

/// WAL page size: every written page starts with a non-zero header.
const PAGE: u64 = 8192;

/// How far the archive reaches on one timeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    pub timeline: u32,
    /// Where this archiver's unbroken run started, and its end (LSNs).
    pub begin: u64,
    pub end: u64,
}

pub struct Uploader {
    pub dest: DestinationConfig,
    pub client: aws_sdk_s3::Client,
    pub layout: Layout,
    pub recipients: Vec<String>,
    pub level: i32,
    /// Learnt from the first file: pg_receivewal writes whole segments,
    /// zeros first. 0 until then.
    pub segment_size: u64,
    /// The segment being written and how much of it is uploaded.
    live: Option<(String, u64)>,
    /// Completed segments and history files uploaded in this run.
    done: BTreeSet<String>,
    pub reach: Option<Reach>,
    /// Written to the directory and not yet uploaded.
    pub pending: u64,
}

impl Uploader {
    pub fn new(dest: DestinationConfig, client: aws_sdk_s3::Client, layout: Layout, recipients: Vec<String>, level: i32) -> Self {
        Uploader { dest, client, layout, recipients, level, segment_size: 0, live: None, done: BTreeSet::new(), reach: None, pending: 0 }
    }

    /// One pass over `dir`. `received`: the position pg_receivewal had
    /// told the primary it wrote, read before the pass began, so the pass
    /// finds every byte before it in the directory (zeros after the last
    /// non-zero byte included, which only it can tell).
    pub async fn pass(&mut self, dir: &Path, received: Option<u64>) -> Result<(), String> {
        let mut files: Vec<Local> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))? {
            let entry = entry.map_err(|e| e.to_string())?;
            if let Some(f) = Local::of(&entry.file_name().to_string_lossy()) {
                files.push(f);
            }
        }
        // By timeline, then name: a history file first, and the last
        // segment of an ended timeline before the next timeline's.
        files.sort_by_key(|f| {
            let name = match f {
                Local::Segment(n) | Local::Partial(n) | Local::History(n) => n.clone(),
            };
            (timeline_of(&name), name)
        });
        let newest_tl = files
            .iter()
            .filter_map(|f| match f {
                Local::Segment(n) | Local::Partial(n) => Some(timeline_of(n)),
                Local::History(_) => None,
            })
            .max()
            .unwrap_or(0);
        if self.segment_size == 0 {
            self.learn_segment_size(dir, &files).await?;
        }
        self.pending = 0;
        for f in &files {
            match f {
                Local::History(name) if !self.done.contains(name) => {
                    let bytes = std::fs::read(dir.join(name)).map_err(|e| format!("reading {name}: {e}"))?;
                    self.put(&self.layout.history(name), bytes).await?;
                    self.done.insert(name.clone());
                }
                Local::Segment(name) if !self.done.contains(name) => {
                    let bytes = std::fs::read(dir.join(name)).map_err(|e| format!("reading {name}: {e}"))?;
                    if bytes.len() as u64 != self.segment_size {
                        return Err(format!("{name}: {} bytes, not a whole segment of {}", bytes.len(), self.segment_size));
                    }
                    self.pending += self.segment_size.saturating_sub(self.uploaded_of(name));
                    self.put(&self.layout.segment(name), bytes).await?;
                    self.done.insert(name.clone());
                    self.advance(name, self.segment_size);
                    if self.live.as_ref().is_some_and(|(n, _)| n == name) {
                        self.live = None;
                    }
                    self.pending = 0;
                    self.drop_chunks(name).await;
                }
                // The last segment of a timeline that ended: kept whole.
                Local::Partial(name) if timeline_of(name) < newest_tl => {
                    let written = written_end(&dir.join(format!("{name}.partial")), 0)?;
                    let bytes = read_range(&dir.join(format!("{name}.partial")), 0, written)?;
                    self.put(&self.layout.partial(name), bytes).await?;
                    self.advance(name, written);
                    std::fs::remove_file(dir.join(format!("{name}.partial"))).map_err(|e| e.to_string())?;
                }
                Local::Partial(name) => {
                    self.chunk(dir, name).await?;
                    if let Some(w) = received {
                        self.advance_to(name, w);
                    }
                }
                _ => {}
            }
        }
        self.prune(dir, &files);
        Ok(())
    }

    /// The archive holds the segment being written, read in this pass and
    /// uploaded, up to `lsn` when `lsn` falls in it.
    fn advance_to(&mut self, name: &str, lsn: u64) {
        let Some(start) = self.segment_start(name) else { return };
        if (start..=start + self.segment_size).contains(&lsn) {
            self.advance(name, lsn - start);
        }
    }

    fn segment_start(&self, name: &str) -> Option<u64> {
        segment_start(name, self.segment_size)
    }

    /// The segment size, from the first segment file; recorded beside the
    /// WAL for restores.
    async fn learn_segment_size(&mut self, dir: &Path, files: &[Local]) -> Result<(), String> {
        let Some(file) = files.iter().find_map(|f| match f {
            Local::Segment(n) => Some(n.clone()),
            Local::Partial(n) => Some(format!("{n}.partial")),
            Local::History(_) => None,
        }) else {
            return Ok(());
        };
        let len = std::fs::metadata(dir.join(&file)).map_err(|e| format!("{file}: {e}"))?.len();
        let size = drc_model::wal::SegmentSize::new(len).map_err(|e| format!("{file}: {e}"))?;
        let meta = serde_json::json!({ "segment_size": size.bytes(), "key": self.layout.root() });
        self.put(&self.layout.meta(), meta.to_string().into_bytes()).await?;
        self.segment_size = size.bytes();
        Ok(())
    }

    /// Uploads the new bytes of the segment being written.
    async fn chunk(&mut self, dir: &Path, name: &str) -> Result<(), String> {
        let path = dir.join(format!("{name}.partial"));
        let uploaded = self.uploaded_of(name);
        // From the page the last chunk ended in: a page read while it was
        // being written is sent again, whole.
        let from = uploaded / PAGE * PAGE;
        let end = written_end(&path, from)?;
        if end <= uploaded {
            return Ok(());
        }
        self.pending = end - uploaded;
        let bytes = read_range(&path, from, end)?;
        self.put(&self.layout.chunk(name, from), bytes).await?;
        self.live = Some((name.to_string(), end));
        self.pending = 0;
        self.advance(name, end);
        Ok(())
    }

    fn uploaded_of(&self, name: &str) -> u64 {
        self.live.as_ref().filter(|(n, _)| n == name).map_or(0, |(_, at)| *at)
    }

    /// The archive now holds segment `name` up to `offset`.
    fn advance(&mut self, name: &str, offset: u64) {
        let Some(begin) = self.segment_start(name) else { return };
        let timeline = timeline_of(name);
        let end = begin + offset;
        self.reach = Some(match self.reach {
            Some(r) if r.timeline == timeline && r.end >= begin => Reach { end: r.end.max(end), ..r },
            // A new timeline continues where the old one forked; a jump on
            // one timeline is a gap the catalog records.
            _ => Reach { timeline, begin, end },
        });
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), String> {
        let sealed = seal(bytes, &self.recipients, self.level).await?;
        self.client
            .put_object()
            .bucket(&self.dest.bucket)
            .key(key)
            .body(ByteStream::from(sealed))
            .send()
            .await
            .map_err(|e| s3_error(&format!("uploading {key}"), &self.dest, e))?;
        Ok(())
    }

    /// A whole segment makes its chunks redundant; one left behind (a
    /// failed delete) costs space, not correctness.
    async fn drop_chunks(&self, name: &str) {
        let listed = self.client.list_objects_v2().bucket(&self.dest.bucket).prefix(self.layout.chunks(name)).send().await;
        for obj in listed.ok().map(|l| l.contents.unwrap_or_default()).unwrap_or_default() {
            if let Some(key) = obj.key() {
                let _ = self.client.delete_object().bucket(&self.dest.bucket).key(key).send().await;
            }
        }
    }

    /// Uploaded segments go, but the newest stays: it tells a restarted
    /// pg_receivewal where to go on from.
    fn prune(&mut self, dir: &Path, files: &[Local]) {
        let uploaded: Vec<&String> = files
            .iter()
            .filter_map(|f| match f {
                Local::Segment(n) if self.done.contains(n) => Some(n),
                _ => None,
            })
            .collect();
        for name in uploaded.iter().rev().skip(1) {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
}

/// Where the bytes written to a partial segment end, looking from `from`:
/// pg_receivewal fills a new segment with zeros first, and every page it
/// wrote starts with a non-zero header, so the data ends in the last such
/// page, at its last non-zero byte (zeros after it are restored as zeros).
pub fn written_end(path: &Path, from: u64) -> Result<u64, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let mut at = from / PAGE * PAGE;
    f.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
    let mut page = vec![0u8; PAGE as usize];
    let mut end = from.min(len);
    while at < len {
        let n = read_full(&mut f, &mut page)?;
        if n == 0 || page[..n.min(2)].iter().all(|b| *b == 0) {
            break;
        }
        end = at + page[..n].iter().rposition(|b| *b != 0).map_or(0, |i| i as u64 + 1);
        at += n as u64;
    }
    Ok(end)
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> Result<usize, String> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).map_err(|e| e.to_string())? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn read_range(path: &Path, from: u64, to: u64) -> Result<Vec<u8>, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    f.seek(SeekFrom::Start(from)).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; to.saturating_sub(from) as usize];
    let n = read_full(&mut f, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_end_of_a_zero_filled_segment_is_its_last_non_zero_byte() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("seg.partial");
        let mut seg = vec![0u8; 4 * PAGE as usize];
        // Two written pages, the second ending in zeros of its last record.
        seg[0] = 0x10;
        seg[100] = 7;
        seg[PAGE as usize] = 0x10;
        seg[PAGE as usize + 300] = 9;
        std::fs::write(&path, &seg).map_err(|e| e.to_string())?;
        assert_eq!(written_end(&path, 0)?, PAGE + 301);
        assert_eq!(written_end(&path, PAGE + 5)?, PAGE + 301, "looking from inside a page reads that page again");
        assert_eq!(written_end(&path, 3 * PAGE)?, 3 * PAGE, "nothing written past the start");
        std::fs::write(&path, vec![0u8; 2 * PAGE as usize]).map_err(|e| e.to_string())?;
        assert_eq!(written_end(&path, 0)?, 0);
        Ok(())
    }
}
