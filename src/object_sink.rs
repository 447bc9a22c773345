//! The object-storage sink (`--sink s3://BUCKET/PREFIX?endpoint=…`): chunks as objects.
//!
//! Batches are gathered in memory into one chunk in the file sink's format (`sink.rs`), rolled
//! by size (`file_sink.chunk_max_bytes`) and age (`file_sink.chunk_max_age_ms`). A sealed
//! chunk is uploaded as one object, in one PUT or, past [`MULTIPART_THRESHOLD`], as a multipart
//! upload of [`PART_BYTES`] parts; every batch in it is acked only once the upload completed.
//! S3 makes an object visible only when its PUT or its multipart completion succeeds, so a crash
//! never leaves a half-written object (a failed multipart upload is aborted; one cut short by a
//! crash leaves invisible parts, which a bucket lifecycle rule for incomplete uploads removes).
//!
//! Names sort by time and never collide across restarts:
//! `PREFIX/YYYY/MM/DD/HH/<first-seq>-<last-seq>.sdlc`, the hour being the first message's event
//! time (the chunk's opening time when it has none) and the sequences the journal's
//! (`sidelog-seq`), which are never reused. A chunk re-sent after a crash with the same messages
//! gets the same name and replaces the first copy; re-sent in other company it lands in another
//! object, and a reader drops the duplicate by `sidelog-seq` (or message id). Mode `none` has no
//! sequences: its names are `<opened ms>-<nonce>-<counter>`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt as _, PutPayload, RetryConfig};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::clock::{Entropy, SharedClock};
use crate::handler::BoxFuture;
use crate::proto::Message;
use crate::sink::{CHUNK_MAGIC, ChunkFormat, SEQ_HEADER, Sink, SinkError, encode_chunk_record};

/// Chunks larger than this are uploaded in parts.
pub const MULTIPART_THRESHOLD: usize = 16 << 20;
/// Bytes per part of a multipart upload (S3 wants at least 5 MiB but for the last).
pub const PART_BYTES: usize = 8 << 20;

/// Where and how to write, parsed from the sink URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ObjectSinkConfig {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// An S3-compatible endpoint (`http://127.0.0.1:5000`); none: AWS.
    pub endpoint: Option<String>,
    pub region: String,
    /// `format=` of the URL; none: `file_sink.format`.
    pub format: Option<ChunkFormat>,
}

impl std::fmt::Debug for ObjectSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials come from the environment and are never part of this.
        f.debug_struct("ObjectSinkConfig")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("format", &self.format)
            .finish()
    }
}

impl ObjectSinkConfig {
    /// `s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME&format=chunk|parquet]`. Credentials are not taken from the
    /// URL: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and the other `AWS_*` variables).
    pub fn parse(url: &str) -> Result<ObjectSinkConfig, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| "expected s3://BUCKET/PREFIX[?endpoint=URL&region=NAME]".to_owned())?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        if bucket.is_empty()
            || !bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return Err(format!(
                "bucket {bucket:?}: expected lower-case letters, digits, '-' and '.'"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(format!("prefix {prefix:?} has a '.' or '..' segment"));
        }
        let mut c = ObjectSinkConfig {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            endpoint: None,
            region: "us-east-1".into(),
            format: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("option {pair:?} has no value"))?;
            if v.is_empty() {
                return Err(format!("option {k} is empty"));
            }
            match k {
                "endpoint" => {
                    if !(v.starts_with("http://") || v.starts_with("https://")) {
                        return Err(format!("endpoint={v:?}: expected http:// or https://"));
                    }
                    c.endpoint = Some(v.trim_end_matches('/').to_owned());
                }
                "region" => c.region = v.to_owned(),
                "format" => {
                    c.format = Some(match v {
                        "chunk" => ChunkFormat::Chunk,
                        "parquet" => ChunkFormat::Parquet,
                        _ => return Err(format!("format={v:?}: expected chunk or parquet")),
                    })
                }
                _ => return Err(format!("unknown option {k:?} (endpoint, region, format)")),
            }
        }
        Ok(c)
    }

    /// The S3 client for this configuration.
    pub fn client(&self, timeout: Duration) -> Result<AmazonS3, String> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            // A failed upload is the delivery engine's to retry, with its own backoff and dead
            // letters; the client retries only brief hiccups.
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: timeout,
                ..RetryConfig::default()
            })
            .with_client_options(object_store::ClientOptions::new().with_timeout(timeout));
        if let Some(endpoint) = &self.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        builder.build().map_err(|e| e.to_string())
    }
}

type Waiter = oneshot::Sender<Result<(), SinkError>>;

struct OpenChunk {
    /// The chunk format's bytes so far (format `chunk`).
    bytes: Vec<u8>,
    /// The messages so far (format `parquet`, encoded when sealed).
    messages: Vec<Message>,
    size: u64,
    records: u64,
    seqs: Option<(u64, u64)>,
    /// The first message's event time, or the opening time (unix ms): the name's hour.
    time_ms: i64,
    opened_at_ms: i64,
    opened_at: Instant,
    counter: u64,
    waiters: Vec<Waiter>,
}

/// The object-storage sink.
pub struct ObjectSink {
    store: Arc<AmazonS3>,
    config: ObjectSinkConfig,
    format: ChunkFormat,
    chunk_max_bytes: u64,
    chunk_max_age: Duration,
    state: Mutex<(Option<OpenChunk>, u64)>,
    clock: SharedClock,
    nonce: u32,
}

impl std::fmt::Debug for ObjectSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectSink")
            .field("config", &self.config)
            .finish()
    }
}

impl ObjectSink {
    /// Builds the client and starts the task that seals chunks by age.
    pub fn start(
        config: ObjectSinkConfig,
        default_format: ChunkFormat,
        chunk_max_bytes: u64,
        chunk_max_age_ms: u64,
        timeout: Duration,
        clock: SharedClock,
        entropy: &Entropy,
    ) -> Result<Arc<ObjectSink>, String> {
        let store = Arc::new(config.client(timeout)?);
        info!(
            bucket = %config.bucket,
            prefix = %config.prefix,
            endpoint = config.endpoint.as_deref().unwrap_or("AWS"),
            "object sink ready"
        );
        let sink = Arc::new(ObjectSink {
            store,
            format: config.format.unwrap_or(default_format),
            config,
            chunk_max_bytes,
            chunk_max_age: Duration::from_millis(chunk_max_age_ms),
            state: Mutex::new((None, 0)),
            clock,
            nonce: entropy.next_u64() as u32,
        });
        let weak = Arc::downgrade(&sink);
        let tick =
            (sink.chunk_max_age / 4).clamp(Duration::from_millis(1), Duration::from_millis(100));
        crate::spawn::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            loop {
                interval.tick().await;
                let Some(sink) = weak.upgrade() else { break };
                sink.seal_if_old();
            }
        });
        Ok(sink)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<OpenChunk>, u64)> {
        self.state
            .lock()
            .expect("the object sink mutex is never held across a panic")
    }

    fn seal_if_old(&self) {
        let chunk = {
            let mut state = self.lock();
            match &state.0 {
                Some(c) if c.opened_at.elapsed() >= self.chunk_max_age => state.0.take(),
                _ => None,
            }
        };
        if let Some(chunk) = chunk {
            self.seal(chunk);
        }
    }

    /// Adds a batch to the open chunk (sealing it when full); the receiver resolves when the
    /// chunk's upload completed or failed.
    fn append(
        &self,
        batch: &[Message],
    ) -> Result<oneshot::Receiver<Result<(), SinkError>>, SinkError> {
        let mut encoded = Vec::new();
        if self.format == ChunkFormat::Chunk {
            for message in batch {
                encode_chunk_record(message, &mut encoded)?;
            }
        }
        let mut state = self.lock();
        if state.0.is_none() {
            state.1 += 1;
            let now = self.clock.now_ms();
            let first_event = batch.first().map_or(0, |m| m.event_time_ms);
            let mut bytes = Vec::new();
            if self.format == ChunkFormat::Chunk {
                bytes.reserve((self.chunk_max_bytes as usize).min(8 << 20));
                bytes.extend_from_slice(CHUNK_MAGIC);
            }
            state.0 = Some(OpenChunk {
                size: bytes.len() as u64,
                bytes,
                messages: Vec::new(),
                records: 0,
                seqs: None,
                time_ms: if first_event > 0 { first_event } else { now },
                opened_at_ms: now,
                opened_at: Instant::now(),
                counter: state.1,
                waiters: Vec::new(),
            });
        }
        let chunk = state.0.as_mut().expect("opened above");
        match self.format {
            ChunkFormat::Chunk => {
                chunk.bytes.extend_from_slice(&encoded);
                chunk.size += encoded.len() as u64;
            }
            ChunkFormat::Parquet => {
                use prost::Message as _;
                chunk.size += batch.iter().map(|m| m.encoded_len() as u64).sum::<u64>();
                chunk.messages.extend(batch.iter().cloned());
            }
        }
        chunk.records += batch.len() as u64;
        for seq in batch
            .iter()
            .filter_map(|m| m.headers.get(SEQ_HEADER)?.parse::<u64>().ok())
        {
            chunk.seqs = Some(match chunk.seqs {
                Some((lo, hi)) => (lo.min(seq), hi.max(seq)),
                None => (seq, seq),
            });
        }
        let (tx, rx) = oneshot::channel();
        chunk.waiters.push(tx);
        if chunk.size >= self.chunk_max_bytes {
            let full = state.0.take().expect("present");
            drop(state);
            self.seal(full);
        }
        Ok(rx)
    }

    /// The object name of a chunk.
    fn name(&self, chunk: &OpenChunk) -> ObjectPath {
        let hour = chrono_hour(chunk.time_ms);
        let ext = self.format.extension();
        let file = match chunk.seqs {
            Some((first, last)) => format!("{first:020}-{last:020}.{ext}"),
            None => format!(
                "{:013}-{:08x}-{:06}.{ext}",
                chunk.opened_at_ms, self.nonce, chunk.counter
            ),
        };
        let name = if self.config.prefix.is_empty() {
            format!("{hour}/{file}")
        } else {
            format!("{}/{hour}/{file}", self.config.prefix)
        };
        ObjectPath::from(name)
    }

    fn seal(&self, chunk: OpenChunk) {
        let store = self.store.clone();
        let path = self.name(&chunk);
        crate::spawn::spawn(async move {
            let OpenChunk {
                bytes,
                messages,
                records,
                waiters,
                ..
            } = chunk;
            let body = if messages.is_empty() {
                Ok(bytes)
            } else {
                // Columnar encoding is CPU work: off the runtime's workers.
                tokio::task::spawn_blocking(move || crate::parquet_chunk::encode(&messages))
                    .await
                    .map_err(|e| SinkError(format!("parquet encoding task failed: {e}")))
                    .and_then(|r| r.map_err(|e| SinkError(format!("cannot encode parquet: {e}"))))
            };
            let size = body.as_ref().map_or(0, Vec::len);
            let result = match body {
                Ok(body) => upload(&store, &path, body).await,
                Err(e) => Err(e),
            };
            match &result {
                Ok(()) => debug!(object = %path, bytes = size, records, "chunk uploaded"),
                Err(e) => {
                    warn!(object = %path, error = %e, "chunk upload failed; its messages will be re-sent")
                }
            }
            for w in waiters {
                drop(w.send(result.clone()));
            }
        });
    }
}

/// Uploads `bytes` as the object `path`: one PUT, or a multipart upload past the threshold
/// (aborted if a part fails, so nothing partial is ever visible or kept).
async fn upload(store: &AmazonS3, path: &ObjectPath, bytes: Vec<u8>) -> Result<(), SinkError> {
    let err = |what: &str, e: object_store::Error| SinkError(format!("{what} {path}: {e}"));
    let bytes = bytes::Bytes::from(bytes);
    if bytes.len() <= MULTIPART_THRESHOLD {
        store
            .put(path, PutPayload::from(bytes))
            .await
            .map_err(|e| err("cannot upload", e))?;
        return Ok(());
    }
    let mut upload = store
        .put_multipart(path)
        .await
        .map_err(|e| err("cannot start a multipart upload of", e))?;
    let parts: Vec<_> = (0..bytes.len())
        .step_by(PART_BYTES)
        .map(|start| {
            let end = (start + PART_BYTES).min(bytes.len());
            upload.put_part(PutPayload::from(bytes.slice(start..end)))
        })
        .collect();
    let mut failed = None;
    for part in futures_util::future::join_all(parts).await {
        if let Err(e) = part {
            failed = Some(e);
        }
    }
    let result = match failed {
        Some(e) => Err(err("cannot upload a part of", e)),
        None => upload
            .complete()
            .await
            .map(drop)
            .map_err(|e| err("cannot complete the upload of", e)),
    };
    if result.is_err() {
        if let Err(e) = upload.abort().await {
            warn!(object = %path, error = %e, "cannot abort a failed multipart upload; a lifecycle rule for incomplete uploads removes its parts");
        }
    }
    result
}

/// `YYYY/MM/DD/HH` of a unix time in ms (UTC).
fn chrono_hour(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm), proleptic Gregorian, UTC.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}/{month:02}/{day:02}/{:02}", rem / 3600)
}

impl Sink for Arc<ObjectSink> {
    fn deliver(&self, batch: Arc<[Message]>) -> BoxFuture<'static, Result<(), SinkError>> {
        let appended = self.append(&batch);
        Box::pin(async move {
            appended?
                .await
                .unwrap_or_else(|_| Err(SinkError("the object sink stopped".into())))
        })
    }

    fn pipeline_depth(&self) -> usize {
        1024
    }

    fn ack_delay_max(&self) -> Duration {
        self.chunk_max_age
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_ones_say_why() {
        let c = ObjectSinkConfig::parse(
            "s3://logs/ingest/raw/?endpoint=http://127.0.0.1:5000/&region=eu-west-1",
        )
        .unwrap();
        assert_eq!(c.bucket, "logs");
        assert_eq!(c.prefix, "ingest/raw");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(c.region, "eu-west-1");
        assert_eq!(c.format, None);
        assert_eq!(
            ObjectSinkConfig::parse("s3://b?format=parquet")
                .unwrap()
                .format,
            Some(ChunkFormat::Parquet)
        );
        assert_eq!(ObjectSinkConfig::parse("s3://b").unwrap().prefix, "");
        for (bad, why) in [
            ("s3://", "bucket"),
            ("s3://Bad_Bucket/x", "bucket"),
            ("s3://b/../x", "'..'"),
            ("s3://b?endpoint=ftp://x", "http://"),
            ("s3://b?colour=red", "unknown option"),
            ("s3://b?format=csv", "chunk or parquet"),
            ("s3://b?region=", "empty"),
        ] {
            let e = ObjectSinkConfig::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn hours_are_utc_calendar_hours() {
        assert_eq!(chrono_hour(0), "1970/01/01/00");
        // 2026-11-22T03:59:59.999Z
        assert_eq!(chrono_hour(1_795_319_999_999), "2026/11/22/03");
        // 2024-02-29T23:00:00Z (a leap day)
        assert_eq!(chrono_hour(1_709_247_600_000), "2024/02/29/23");
        assert_eq!(chrono_hour(-5), "1970/01/01/00");
    }
}
