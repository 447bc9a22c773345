//! The object-storage sink (`--sink s3://BUCKET/PREFIX?endpoint=…`): chunks as objects.
//!
//! A [`ChunkSink`] (`chunk/mod.rs`: batches gathered into a chunk, rolled by size
//! `file_sink.chunk_max_bytes` and age `file_sink.chunk_max_age_ms`) over a [`Bucket`]: a sealed
//! chunk is uploaded as one object, in one PUT or, past [`MULTIPART_THRESHOLD`], as a multipart
//! upload of [`PART_BYTES`] parts; every batch in it is acked only once the upload completed.
//! S3 makes an object visible only when its PUT or its multipart completion succeeds, so a crash
//! never leaves a half-written object (a failed multipart upload is aborted; one cut short by a
//! crash leaves invisible parts, which a bucket lifecycle rule for incomplete uploads removes).
//!
//! Names sort by time and never collide across restarts:
//! `PREFIX/YYYY/MM/DD/HH/<first-seq>-<last-seq>.sdlc`, the hour (UTC) being when the chunk was
//! opened and the sequences the journal's (`sidelog-seq`), which are never reused. Mode `none`
//! has no sequences: its names are `<opened ms>-<nonce>-<counter>`.
//!
//! Duplicates: a crash between an upload and its ack leaves the object in the bucket and its
//! messages in the journal's backlog. Before the replay, [`Bucket::stored_seqs`] reads back the
//! objects whose names' ranges meet the backlog's (listing only the hours since its oldest
//! entry), and the replay acks the messages found there instead of uploading them again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore as _, ObjectStoreExt as _, PutPayload, RetryConfig};
use tracing::{info, warn};

use super::{ChunkFormat, ChunkInfo, ChunkSettings, ChunkSink, ChunkStore};
use crate::runtime::BoxFuture;
use crate::runtime::{Entropy, SharedClock};
use crate::sink::{SinkError, SinkSetupError};

/// Chunks larger than this are uploaded in parts.
pub const MULTIPART_THRESHOLD: usize = 16 << 20;
/// Bytes per part of a multipart upload (S3 wants at least 5 MiB but for the last).
pub const PART_BYTES: usize = 8 << 20;

/// Where and how to write, parsed from the sink URL. Holds no secret: credentials come from the
/// environment.
#[derive(Debug, Clone, PartialEq, Eq)]
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
        for (k, v) in crate::url_options::options(query)? {
            let v = v.as_str();
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
    pub fn client(&self, timeout: Duration) -> Result<AmazonS3, SinkSetupError> {
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
        builder.build().map_err(|e| {
            SinkSetupError::caused(format!("cannot make an S3 client for {}", self.bucket), e)
        })
    }
}

/// A bucket (and prefix) as a [`ChunkStore`].
#[derive(Debug, Clone)]
pub struct Bucket {
    store: Arc<AmazonS3>,
    prefix: String,
}

impl ChunkStore for Bucket {
    /// `PREFIX/YYYY/MM/DD/HH/<first-seq>-<last-seq>.<ext>`, or, without sequences (mode
    /// `none`), `…/<opened ms>-<nonce>-<counter>.<ext>`.
    fn name(&self, info: &ChunkInfo) -> String {
        let hour = chrono_hour(info.opened_at_ms);
        let ext = info.format.extension();
        let file = match info.seqs {
            Some((first, last)) => format!("{first:020}-{last:020}.{ext}"),
            None => format!(
                "{:013}-{:08x}-{:06}.{ext}",
                info.opened_at_ms, info.nonce, info.counter
            ),
        };
        if self.prefix.is_empty() {
            format!("{hour}/{file}")
        } else {
            format!("{}/{hour}/{file}", self.prefix)
        }
    }

    fn put(&self, name: String, body: Vec<u8>) -> BoxFuture<'static, Result<(), SinkError>> {
        let store = self.store.clone();
        Box::pin(async move {
            let path = ObjectPath::from(name);
            let size = body.len() as u64;
            match upload(&store, &path, body).await {
                Ok(()) => Ok(()),
                // The upload may have completed though its answer was lost (a timeout, a
                // dropped connection): then the object is there, whole, and retrying the
                // batches would store them twice.
                Err(e) => match store.head(&path).await {
                    Ok(meta) if meta.size == size => {
                        info!(object = %path, error = %e, "the upload's answer was lost but the object is stored");
                        Ok(())
                    }
                    _ => Err(e),
                },
            }
        })
    }

    fn can_read_back(&self) -> bool {
        true
    }

    /// Lists the hour directories from `since_ms` to now, reads back every object whose name's
    /// sequence range meets `[from, to]`, and collects the sequences it holds. An object is
    /// visible only whole, so what is found is durably stored.
    fn stored_seqs(
        &self,
        from: u64,
        to: u64,
        since_ms: i64,
        until_ms: i64,
    ) -> BoxFuture<'static, Result<Option<HashSet<u64>>, SinkError>> {
        let store = self.store.clone();
        let prefix = self.prefix.clone();
        Box::pin(async move {
            let err = |what: &str, e: object_store::Error| SinkError::retry(format!("{what}: {e}"));
            let mut found = HashSet::new();
            // An hour before the oldest entry: a chunk opened in an earlier hour than its
            // entries were journaled is not possible, but clocks step.
            let mut hour_ms = (since_ms.max(0) / 3_600_000 - 1).max(0) * 3_600_000;
            let mut hours = 0;
            while hour_ms <= until_ms.saturating_add(3_600_000) && hours < MAX_HOURS_SCANNED {
                let dir = if prefix.is_empty() {
                    chrono_hour(hour_ms)
                } else {
                    format!("{prefix}/{}", chrono_hour(hour_ms))
                };
                let metas: Vec<_> = store
                    .list(Some(&ObjectPath::from(dir)))
                    .collect::<Vec<_>>()
                    .await;
                for meta in metas {
                    let meta = meta.map_err(|e| err("cannot list the bucket", e))?;
                    let Some((first, last)) = seq_range(meta.location.filename().unwrap_or(""))
                    else {
                        continue;
                    };
                    if last < from || first > to {
                        continue;
                    }
                    let bytes = store
                        .get(&meta.location)
                        .await
                        .map_err(|e| err("cannot read back an object", e))?
                        .bytes()
                        .await
                        .map_err(|e| err("cannot read back an object", e))?;
                    let seqs: Vec<u64> = if meta.location.as_ref().ends_with(".parquet") {
                        crate::sink::parquet::ids_and_sequences(bytes.to_vec())
                            .map_err(|e| SinkError::retry(format!("{}: {e}", meta.location)))?
                            .into_iter()
                            .map(|(_, s)| s)
                            .collect()
                    } else {
                        crate::sink::parse_chunk(&bytes)
                            .map_err(|e| SinkError::retry(format!("{}: {e}", meta.location)))?
                            .iter()
                            .filter_map(crate::sink::sequence_of)
                            .collect()
                    };
                    found.extend(seqs.into_iter().filter(|s| (from..=to).contains(s)));
                }
                hour_ms += 3_600_000;
                hours += 1;
            }
            Ok(Some(found))
        })
    }
}

/// Hour directories [`Bucket::stored_seqs`] lists at most (a week).
const MAX_HOURS_SCANNED: usize = 7 * 24 + 2;

/// `(first, last)` of a chunk object's name `<first>-<last>.<ext>`.
fn seq_range(file: &str) -> Option<(u64, u64)> {
    let stem = file.rsplit_once('.')?.0;
    let (first, last) = stem.split_once('-')?;
    if first.len() != 20 || last.len() != 20 {
        return None;
    }
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// The object-storage sink: a [`ChunkSink`] over a [`Bucket`].
pub struct ObjectSink;

impl ObjectSink {
    /// Builds the S3 client and starts the sink; `settings.format` applies unless the URL set
    /// one.
    pub fn start(
        config: ObjectSinkConfig,
        settings: ChunkSettings,
        timeout: Duration,
        clock: SharedClock,
        entropy: &Entropy,
    ) -> Result<Arc<ChunkSink>, SinkSetupError> {
        let store = Arc::new(config.client(timeout)?);
        // Checked at once, not refused: a bucket that is missing, credentials that are wrong
        // or an endpoint that is down are said in the log now rather than at the first chunk,
        // and deliveries are retried until they are fixed.
        let (check, bucket, prefix) = (store.clone(), config.bucket.clone(), config.prefix.clone());
        let endpoint = config.endpoint.clone().unwrap_or_else(|| "AWS".into());
        crate::runtime::spawn(async move {
            let path = ObjectPath::from(prefix.as_str());
            let listed = check.list_with_delimiter(Some(&path)).await;
            let up = if listed.is_ok() { 1.0 } else { 0.0 };
            metrics::gauge!(crate::metrics::SINK_UP).set(up);
            match listed {
                Ok(_) => {
                    info!(%bucket, %prefix, %endpoint, "object sink ready: the bucket answers")
                }
                Err(e) => warn!(
                    %bucket,
                    %endpoint,
                    error = %brief(&e),
                    "cannot reach the bucket (missing bucket, credentials or endpoint down); \
                     uploads are retried until it answers"
                ),
            }
        });
        let settings = ChunkSettings {
            format: config.format.unwrap_or(settings.format),
            ..settings
        };
        let bucket = Bucket {
            store,
            prefix: config.prefix,
        };
        Ok(ChunkSink::start(Arc::new(bucket), settings, clock, entropy))
    }
}

/// Uploads `bytes` as the object `path`: one PUT, or a multipart upload past the threshold
/// (aborted if a part fails, so nothing partial is ever visible or kept).
async fn upload(store: &AmazonS3, path: &ObjectPath, bytes: Vec<u8>) -> Result<(), SinkError> {
    let err = |what: &str, e: object_store::Error| {
        SinkError::retry(format!("{what} {path}: {}", brief(&e)))
    };
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
    if result.is_err()
        && let Err(e) = upload.abort().await
    {
        warn!(object = %path, error = %e, "cannot abort a failed multipart upload; a lifecycle rule for incomplete uploads removes its parts");
    }
    result
}

/// `YYYY/MM/DD/HH` of a unix time in ms (UTC); times before 1970 count as 1970.
fn chrono_hour(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms.max(0))
        .unwrap_or_default()
        .format("%Y/%m/%d/%H")
        .to_string()
}

/// An S3 error in one line: what precedes the XML document the server answered, then its
/// `Code` and `Message` (the whole document, several lines, is no use in a log).
fn brief(e: &object_store::Error) -> String {
    let text = e.to_string();
    let Some(at) = text.find("<?xml") else {
        return text.lines().collect::<Vec<_>>().join(" ");
    };
    let element = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].to_owned())
    };
    let head = text[..at].trim_end().trim_end_matches(':');
    match (element("Code"), element("Message")) {
        (Some(code), Some(message)) => format!("{head}: {code}: {message}"),
        (Some(code), None) => format!("{head}: {code}"),
        _ => head.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_s3_error_is_one_line_with_its_code_and_message() {
        let e = object_store::Error::Generic {
            store: "S3",
            source: "Error performing GET http://x/b 404 Not Found: <?xml version=\"1.0\"?>\n<Error>\n  <Code>NoSuchBucket</Code>\n  <Message>The specified bucket does not exist</Message>\n</Error>".into(),
        };
        let b = brief(&e);
        assert!(!b.contains('\n') && !b.contains("<?xml"), "{b}");
        assert!(
            b.ends_with("404 Not Found: NoSuchBucket: The specified bucket does not exist"),
            "{b}"
        );
    }

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
    fn names_give_back_their_sequence_range() {
        assert_eq!(
            seq_range("00000000000000000007-00000000000000000042.sdlc"),
            Some((7, 42))
        );
        assert_eq!(
            seq_range("00000000000000000007-00000000000000000042.parquet"),
            Some((7, 42))
        );
        // Mode none's names carry no sequences.
        assert_eq!(seq_range("1795318924694-9f1364dc-000001.sdlc"), None);
        assert_eq!(seq_range("notes.txt"), None);
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
