//! The S3 side of backups and restores: clients for the configured
//! destinations, ranged downloads, and errors that name the bucket.

use std::time::Duration;

use aws_sdk_s3::types::CompletedPart;

use crate::config::{AgentConfig, DestinationConfig};

/// The destination's secret key, from the environment or a file.
fn secret(d: &DestinationConfig) -> Result<String, String> {
    if let Some(var) = &d.secret_key_env {
        return std::env::var(var).map_err(|_| format!("destination {}: environment variable {var} is not set", d.name));
    }
    if let Some(path) = &d.secret_key_file {
        return std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| format!("destination {}: secret_key_file {}: {e}", d.name, path.display()));
    }
    Err(format!("destination {}: set secret_key_env or secret_key_file", d.name))
}

/// A client of the destination: bounded retries and time-outs, so that a
/// destination that is down fails the job with the reason.
pub(crate) fn client(d: &DestinationConfig) -> Result<aws_sdk_s3::Client, String> {
    client_with(d, Duration::from_secs(120), 3)
}

/// A client that gives up on a request after `attempts` of at most
/// `attempt` each.
pub(crate) fn client_with(d: &DestinationConfig, attempt: Duration, attempts: u32) -> Result<aws_sdk_s3::Client, String> {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    let creds = Credentials::new(&d.access_key, secret(d)?, None, None, "drc-agent");
    let http = aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).build_https();
    let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(attempt)
        .build();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(d.s3_region.clone()))
        .endpoint_url(&d.endpoint)
        .credentials_provider(creds)
        .force_path_style(true)
        .http_client(http)
        // Bounded: a destination that is down fails the request, with the
        // reason, after a few attempts.
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(attempts.max(1)))
        .timeout_config(timeouts)
        .build();
    Ok(aws_sdk_s3::Client::from_conf(conf))
}

pub(crate) fn s3_error<E, R>(what: &str, d: &DestinationConfig, e: aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use std::error::Error;
    // The SDK's Display is terse ("service error"); the source says why.
    let mut why = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        why = format!("{why}: {s}");
        src = s.source();
    }
    if ["SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied"].iter().any(|c| why.contains(c)) {
        why = format!("the destination refused the credentials ({why}); check access_key and the secret");
    }
    format!("{what} at destination {} ({}/{}): {why}", d.name, d.endpoint, d.bucket)
}

pub(super) type PartUpload = (
    i32,
    Result<
        aws_sdk_s3::operation::upload_part::UploadPartOutput,
        aws_sdk_s3::error::SdkError<aws_sdk_s3::operation::upload_part::UploadPartError, aws_sdk_s3::config::http::HttpResponse>,
    >,
);

/// The completed part of a finished part upload.
pub(super) fn joined(done: Option<Result<PartUpload, tokio::task::JoinError>>, dest: &DestinationConfig) -> Result<CompletedPart, String> {
    match done {
        Some(Ok((number, Ok(part)))) => Ok(CompletedPart::builder().e_tag(part.e_tag().unwrap_or_default()).part_number(number).build()),
        Some(Ok((number, Err(e)))) => Err(s3_error(&format!("uploading part {number}"), dest, e)),
        Some(Err(e)) => Err(format!("a part upload task failed: {e}")),
        None => Err("no part upload in flight".into()),
    }
}

pub(super) async fn abort(client: &aws_sdk_s3::Client, dest: &DestinationConfig, key: &str, upload_id: &str, why: String) -> String {
    let _ = client.abort_multipart_upload().bucket(&dest.bucket).key(key).upload_id(upload_id).send().await;
    why
}

/// An object read in order as `part`-sized ranges, with up to `concurrency`
/// range requests in flight: one S3 stream is bound by request latency, so
/// S3 clients fetch large objects this way (the aws CLI does). Memory stays
/// bounded at `concurrency` parts.
pub(super) struct Ranged {
    client: aws_sdk_s3::Client,
    dest: DestinationConfig,
    key: String,
    size: u64,
    part: u64,
    concurrency: usize,
    next_start: u64,
    pending: std::collections::VecDeque<tokio::task::JoinHandle<Result<bytes::Bytes, String>>>,
}

impl Ranged {
    pub(super) fn new(client: aws_sdk_s3::Client, dest: &DestinationConfig, key: &str, size: u64, part: usize, concurrency: usize) -> Self {
        let (dest, key) = (dest.clone(), key.to_string());
        Ranged { client, dest, key, size, part: part as u64, concurrency, next_start: 0, pending: Default::default() }
    }

    /// The next part in order; `Ok(None)` at the end.
    pub(super) async fn next(&mut self) -> Result<Option<bytes::Bytes>, String> {
        while self.pending.len() < self.concurrency && self.next_start < self.size {
            let (start, end) = (self.next_start, (self.next_start + self.part).min(self.size) - 1);
            self.next_start = end + 1;
            let (client, dest, key) = (self.client.clone(), self.dest.clone(), self.key.clone());
            self.pending.push_back(tokio::spawn(async move {
                let what = format!("reading {key} (bytes {start}-{end})");
                let got = client
                    .get_object()
                    .bucket(&dest.bucket)
                    .key(&key)
                    .range(format!("bytes={start}-{end}"))
                    .send()
                    .await
                    .map_err(|e| s3_error(&what, &dest, e))?;
                let body = got.body.collect().await.map_err(|e| s3_error_plain(&what, &dest, e))?;
                Ok(body.into_bytes())
            }));
        }
        match self.pending.pop_front() {
            Some(h) => h.await.map_err(|e| format!("reading {}: {e}", self.key))?.map(Some),
            None => Ok(None),
        }
    }
}

impl Drop for Ranged {
    fn drop(&mut self) {
        for h in &self.pending {
            h.abort();
        }
    }
}

pub(super) fn s3_error_plain(what: &str, d: &DestinationConfig, e: impl std::fmt::Display) -> String {
    format!("{what} at destination {} ({}/{}): {e}", d.name, d.endpoint, d.bucket)
}

pub(crate) fn destination<'a>(cfg: &'a AgentConfig, name: &str) -> Result<&'a DestinationConfig, String> {
    cfg.destinations
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| format!("destination {name:?} is not configured on agent {} (add [[destinations]] name = {name:?})", cfg.member_id))
}

/// Every key under `prefix` at the destination, through all pages of the
/// listing.
pub(crate) async fn list_keys(client: &aws_sdk_s3::Client, d: &DestinationConfig, prefix: &str) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(&d.bucket)
            .prefix(prefix)
            .set_continuation_token(token.take())
            .send()
            .await
            .map_err(|e| s3_error(&format!("listing {prefix}"), d, e))?;
        keys.extend(page.contents().iter().filter_map(|o| o.key()).map(str::to_string));
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => return Ok(keys),
        }
    }
}
