//! The sink hop: the next tier that outputs are delivered to.
//!
//! [`Sink`] is the seam. `--sink http://host:port` is a gRPC `sidelog.v1.Sink` ([`GrpcSink`]);
//! `--sink file:DIR` is the built-in [`FileSink`], the default, which gathers messages into large
//! chunk files (the seeds: object storage wants 1 MB–1 GB files, not one per message).
//!
//! # Chunk format (stable; see the README)
//! ```text
//! chunk    = magic record*
//! magic    = "SLCHUNK" 0x01                      8 bytes: format name and version 1
//! record   = len:u32le crc:u32le body[len]
//! body     = protobuf sidelog.v1.Message         its headers carry "sidelog-seq"
//! crc      = CRC-32 (IEEE, as zlib's crc32) of body
//! ```
//! A chunk is written to `DIR/.tmp-<name>`, fsynced, renamed to `DIR/<name>` and the directory
//! fsynced; only then are the messages in it acked. So a visible chunk is always complete, and
//! a crash leaves at most a `.tmp-` file, which is removed on start (its messages were never
//! acked and are re-sent). Names are `chunk-<opened unix ms>-<process nonce>-<counter>.sdlc`:
//! they sort by time and never collide across restarts.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::clock::{Entropy, SharedClock};
use crate::handler::BoxFuture;
use crate::proto::sink_client::SinkClient;
use crate::proto::{DeliverRequest, Message};

/// The header every delivered message carries: its journal sequence.
pub const SEQ_HEADER: &str = "sidelog-seq";
/// The first bytes of every chunk file.
pub const CHUNK_MAGIC: &[u8; 8] = b"SLCHUNK\x01";

/// Why a delivery failed. Always retryable: the whole batch is sent again.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// The next tier.
pub trait Sink: Send + Sync + 'static {
    /// Delivers a batch: `Ok` means every message in it is acked by the next tier, an error
    /// means none is (the batch is retried). Work that fixes the batch's place in the sink's
    /// order happens before the future is returned, so calls made in order are taken in order.
    fn deliver(&self, batch: Arc<[Message]>) -> BoxFuture<'static, Result<(), SinkError>>;

    /// Batches one delivery lane may have awaiting their ack at once. 1 keeps per-key order
    /// strict; a sink that takes batches in call order can allow more.
    fn pipeline_depth(&self) -> usize {
        1
    }

    /// How long the sink may hold a batch before it acks it, beyond the delivery timeout.
    fn ack_delay_max(&self) -> Duration {
        Duration::ZERO
    }
}

/// A `sidelog.v1.Sink` served by the next tier.
#[derive(Debug, Clone)]
pub struct GrpcSink {
    client: SinkClient<Channel>,
}

impl GrpcSink {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| format!("invalid sink URL {url:?}: {e}"))?
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        Ok(GrpcSink {
            client: SinkClient::new(endpoint.connect_lazy()).max_encoding_message_size(usize::MAX),
        })
    }
}

impl Sink for GrpcSink {
    fn deliver(&self, batch: Arc<[Message]>) -> BoxFuture<'static, Result<(), SinkError>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            let request = DeliverRequest {
                messages: batch.to_vec(),
            };
            client
                .deliver(request)
                .await
                .map(|_| ())
                .map_err(|status| SinkError(format!("sink answered {status}")))
        })
    }
}

/// What a chunk (a file of the file sink, an object of the object sink) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ChunkFormat {
    /// sidelog's length-prefixed records (below), `.sdlc`: written as batches arrive.
    Chunk,
    /// Parquet, one row per message (`parquet_chunk.rs`), `.parquet`: encoded when sealed.
    Parquet,
}

impl ChunkFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ChunkFormat::Chunk => "sdlc",
            ChunkFormat::Parquet => "parquet",
        }
    }
}

/// Settings of the file sink.
#[derive(Debug, Clone)]
pub struct FileSinkConfig {
    pub dir: PathBuf,
    pub chunk_max_bytes: u64,
    pub chunk_max_age_ms: u64,
    pub format: ChunkFormat,
}

type Waiter = oneshot::Sender<Result<(), SinkError>>;
/// Resolves when the chunk holding a batch is sealed (or abandoned).
type SealAck = oneshot::Receiver<Result<(), SinkError>>;

struct OpenChunk {
    name: String,
    tmp_path: PathBuf,
    writer: BufWriter<File>,
    /// Held until the seal when the format is Parquet (columns are written at once).
    messages: Vec<Message>,
    bytes: u64,
    records: u64,
    opened_at: Instant,
    waiters: Vec<Waiter>,
}

struct FileSinkState {
    chunk: Option<OpenChunk>,
    counter: u64,
}

/// The built-in sink: chunk files in a directory.
pub struct FileSink {
    config: FileSinkConfig,
    state: Arc<Mutex<FileSinkState>>,
    clock: SharedClock,
    nonce: u32,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("config", &self.config)
            .finish()
    }
}

impl FileSink {
    /// Creates the directory, removes chunks a crash left half-written, and starts the task
    /// that seals chunks by age.
    pub fn start(
        config: FileSinkConfig,
        clock: SharedClock,
        entropy: &Entropy,
    ) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(&config.dir)?;
        for entry in std::fs::read_dir(&config.dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                info!(file = %entry.path().display(), "removing a chunk left unfinished by a crash; its messages are re-sent");
                std::fs::remove_file(entry.path())?;
            }
        }
        let sink = Arc::new(FileSink {
            config,
            state: Arc::new(Mutex::new(FileSinkState {
                chunk: None,
                counter: 0,
            })),
            clock,
            nonce: entropy.next_u64() as u32,
        });
        let weak = Arc::downgrade(&sink);
        let tick = Duration::from_millis((sink.config.chunk_max_age_ms / 4).clamp(1, 100));
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

    fn lock(&self) -> std::sync::MutexGuard<'_, FileSinkState> {
        self.state
            .lock()
            .expect("the file sink mutex is never held across a panic")
    }

    fn seal_if_old(&self) {
        let max_age = Duration::from_millis(self.config.chunk_max_age_ms);
        let chunk = {
            let mut state = self.lock();
            match &state.chunk {
                Some(c) if c.opened_at.elapsed() >= max_age => state.chunk.take(),
                _ => None,
            }
        };
        if let Some(chunk) = chunk {
            self.seal(chunk);
        }
    }

    /// Appends a batch to the open chunk, sealing it when the batch filled it. Returns the
    /// waiter for the chunk's seal.
    fn append(&self, batch: &[Message]) -> Result<SealAck, SinkError> {
        let mut state = self.lock();
        if state.chunk.is_none() {
            state.counter += 1;
            let name = format!(
                "chunk-{:013}-{:08x}-{:06}.{}",
                self.clock.now_ms(),
                self.nonce,
                state.counter,
                self.config.format.extension()
            );
            let tmp_path = self.config.dir.join(format!(".tmp-{name}"));
            let file = File::create(&tmp_path)
                .map_err(|e| SinkError(format!("cannot create {}: {e}", tmp_path.display())))?;
            let mut writer = BufWriter::with_capacity(256 * 1024, file);
            let mut bytes = 0;
            if self.config.format == ChunkFormat::Chunk {
                writer
                    .write_all(CHUNK_MAGIC)
                    .map_err(|e| SinkError(format!("cannot write {}: {e}", tmp_path.display())))?;
                bytes = CHUNK_MAGIC.len() as u64;
            }
            state.chunk = Some(OpenChunk {
                name,
                tmp_path,
                writer,
                messages: Vec::new(),
                bytes,
                records: 0,
                opened_at: Instant::now(),
                waiters: Vec::new(),
            });
        }
        let chunk = state.chunk.as_mut().expect("opened above");
        let mut buf = Vec::new();
        let mut result = Ok(());
        if self.config.format == ChunkFormat::Parquet {
            chunk.bytes += batch.iter().map(|m| m.encoded_len() as u64).sum::<u64>();
            chunk.records += batch.len() as u64;
            chunk.messages.extend(batch.iter().cloned());
        }
        for message in batch
            .iter()
            .filter(|_| self.config.format == ChunkFormat::Chunk)
        {
            buf.clear();
            encode_chunk_record(message, &mut buf)?;
            result = chunk.writer.write_all(&buf);
            if result.is_err() {
                break;
            }
            chunk.bytes += buf.len() as u64;
            chunk.records += 1;
        }
        if let Err(e) = result {
            // The chunk holds a partial batch: abandon it whole; every batch in it is retried.
            let chunk = state.chunk.take().expect("present");
            let err = SinkError(format!("cannot write {}: {e}", chunk.tmp_path.display()));
            abandon(chunk, &err);
            return Err(err);
        }
        let (tx, rx) = oneshot::channel();
        chunk.waiters.push(tx);
        if chunk.bytes >= self.config.chunk_max_bytes {
            let full = state.chunk.take().expect("present");
            drop(state);
            // Sealed now, not when some future is polled: a caller that stops waiting must not
            // leave the other batches in this chunk unacked.
            self.seal(full);
        }
        Ok(rx)
    }

    fn seal(&self, chunk: OpenChunk) {
        let dir = self.config.dir.clone();
        tokio::task::spawn_blocking(move || {
            let OpenChunk {
                name,
                tmp_path,
                mut writer,
                messages,
                bytes,
                records,
                waiters,
                ..
            } = chunk;
            let final_path = dir.join(&name);
            let result = (|| -> std::io::Result<()> {
                if !messages.is_empty() {
                    let columns = crate::parquet_chunk::encode(&messages).map_err(|e| {
                        std::io::Error::other(format!("cannot encode parquet: {e}"))
                    })?;
                    writer.write_all(&columns)?;
                }
                let file = writer.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                drop(file);
                std::fs::rename(&tmp_path, &final_path)?;
                File::open(&dir)?.sync_all()
            })();
            match result {
                Ok(()) => {
                    debug!(chunk = %name, bytes, records, "chunk sealed");
                    for w in waiters {
                        drop(w.send(Ok(())));
                    }
                }
                Err(e) => {
                    let err = SinkError(format!("cannot seal chunk {}: {e}", final_path.display()));
                    warn!(error = %err, "file sink failed; its messages will be re-sent");
                    drop(std::fs::remove_file(&tmp_path));
                    for w in waiters {
                        drop(w.send(Err(err.clone())));
                    }
                }
            }
        });
    }
}

/// Appends one chunk record (`len crc body`) for `message` to `out`.
pub fn encode_chunk_record(message: &Message, out: &mut Vec<u8>) -> Result<(), SinkError> {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    message
        .encode(out)
        .expect("encoding into a Vec cannot run out of space");
    let body = &out[start + 8..];
    let len = u32::try_from(body.len()).map_err(|_| SinkError("message over 4 GiB".into()))?;
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn abandon(chunk: OpenChunk, err: &SinkError) {
    warn!(error = %err, "abandoning a chunk; its messages will be re-sent");
    drop(std::fs::remove_file(&chunk.tmp_path));
    for w in chunk.waiters {
        drop(w.send(Err(err.clone())));
    }
}

impl Sink for Arc<FileSink> {
    fn deliver(&self, batch: Arc<[Message]>) -> BoxFuture<'static, Result<(), SinkError>> {
        // Appending now, not when the future is first polled, fixes the batch's place.
        let appended = self.append(&batch);
        Box::pin(async move {
            appended?
                .await
                .unwrap_or_else(|_| Err(SinkError("the file sink stopped".into())))
        })
    }

    fn pipeline_depth(&self) -> usize {
        // Batches are appended in call order, so many may await the seal together.
        1024
    }

    fn ack_delay_max(&self) -> Duration {
        Duration::from_millis(self.config.chunk_max_age_ms)
    }
}

/// Errors reading a chunk file.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a sidelog chunk (bad magic)")]
    BadMagic,
    #[error("record {index} at byte {offset}: {reason}")]
    BadRecord {
        index: usize,
        offset: usize,
        reason: String,
    },
}

/// Reads every message of a chunk file, checking each record's CRC.
pub fn read_chunk(path: &Path) -> Result<Vec<Message>, ChunkError> {
    parse_chunk(&std::fs::read(path)?)
}

/// Every message of a chunk's bytes (a file, an object), checking each record's CRC.
pub fn parse_chunk(bytes: &[u8]) -> Result<Vec<Message>, ChunkError> {
    let body = bytes
        .strip_prefix(CHUNK_MAGIC.as_slice())
        .ok_or(ChunkError::BadMagic)?;
    let mut messages = Vec::new();
    let mut rest = body;
    let mut offset = CHUNK_MAGIC.len();
    while !rest.is_empty() {
        let bad = |reason: &str| ChunkError::BadRecord {
            index: messages.len(),
            offset,
            reason: reason.to_owned(),
        };
        if rest.len() < 8 {
            return Err(bad("truncated record header"));
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let record = rest
            .get(8..8 + len)
            .ok_or_else(|| bad("truncated record body"))?;
        if crc32fast::hash(record) != crc {
            return Err(bad("CRC mismatch"));
        }
        messages.push(Message::decode(record).map_err(|e| bad(&e.to_string()))?);
        rest = &rest[8 + len..];
        offset += 8 + len;
    }
    Ok(messages)
}

/// The sealed chunk files in `dir`, in name (time) order.
pub fn list_chunks(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut chunks: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("chunk-") && (n.ends_with(".sdlc") || n.ends_with(".parquet"))
            })
        })
        .collect();
    chunks.sort();
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    fn msg(i: u32) -> Message {
        Message {
            id: format!("m{i}"),
            payload: vec![i as u8; 100].into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn chunks_are_acked_only_once_sealed_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileSinkConfig {
            dir: dir.path().to_owned(),
            chunk_max_bytes: 1000,
            chunk_max_age_ms: 60_000,
            format: ChunkFormat::Chunk,
        };
        let sink = FileSink::start(config, Arc::new(SystemClock), &Entropy::from_seed(1)).unwrap();
        // 5 messages of ~110 bytes: under the size limit, so nothing is sealed or acked yet.
        let first = sink.deliver((0..5).map(msg).collect::<Vec<_>>().into());
        let pending = tokio::time::timeout(Duration::from_millis(200), first).await;
        assert!(
            pending.is_err(),
            "a batch in an unsealed chunk must not be acked"
        );
        assert!(list_chunks(dir.path()).unwrap().is_empty());
        // 5 more fill the chunk: it is sealed, and both batches are acked, the first even
        // though its waiter was dropped above.
        sink.deliver((5..10).map(msg).collect::<Vec<_>>().into())
            .await
            .unwrap();
        let chunks = list_chunks(dir.path()).unwrap();
        assert_eq!(chunks.len(), 1);
        let read: Vec<_> = read_chunk(&chunks[0]).unwrap();
        assert_eq!(read.len(), 10);
        assert_eq!(read[9], msg(9));
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunk_is_sealed_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileSinkConfig {
            dir: dir.path().to_owned(),
            chunk_max_bytes: 1 << 30,
            chunk_max_age_ms: 50,
            format: ChunkFormat::Chunk,
        };
        let sink = FileSink::start(config, Arc::new(SystemClock), &Entropy::from_seed(1)).unwrap();
        sink.deliver(vec![msg(1)].into()).await.unwrap();
        assert_eq!(list_chunks(dir.path()).unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parquet_chunks_are_acked_once_sealed_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileSinkConfig {
            dir: dir.path().to_owned(),
            chunk_max_bytes: 1 << 30,
            chunk_max_age_ms: 50,
            format: ChunkFormat::Parquet,
        };
        let sink = FileSink::start(config, Arc::new(SystemClock), &Entropy::from_seed(1)).unwrap();
        let first = sink.deliver((0..10).map(msg).collect::<Vec<_>>().into());
        let second = sink.deliver((10..15).map(msg).collect::<Vec<_>>().into());
        first.await.unwrap();
        second.await.unwrap();
        let chunks = list_chunks(dir.path()).unwrap();
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].to_string_lossy().ends_with(".parquet"));
        let rows =
            crate::parquet_chunk::ids_and_sequences(std::fs::read(&chunks[0]).unwrap()).unwrap();
        let ids: Vec<String> = rows.into_iter().map(|(id, _)| id).collect();
        let want: Vec<String> = (0..15).map(|i| msg(i).id).collect();
        assert_eq!(ids, want);
    }

    #[test]
    fn a_damaged_chunk_is_reported_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chunk-x.sdlc");
        let body = msg(1).encode_to_vec();
        let mut bytes = CHUNK_MAGIC.to_vec();
        bytes.extend((body.len() as u32).to_le_bytes());
        bytes.extend((crc32fast::hash(&body) ^ 1).to_le_bytes());
        bytes.extend(&body);
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read_chunk(&path),
            Err(ChunkError::BadRecord { .. })
        ));
        std::fs::write(&path, b"nope").unwrap();
        assert!(matches!(read_chunk(&path), Err(ChunkError::BadMagic)));
    }
}
