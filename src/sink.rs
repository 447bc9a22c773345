//! The sink hop: the next tier that outputs are delivered to.
//!
//! [`Sink`] is the seam. `--sink http://host:port` is a gRPC `sidelog.v1.Sink` ([`GrpcSink`]);
//! `--sink file:DIR` is the built-in [`FileSink`], the default: a [`ChunkSink`] that gathers
//! messages into large chunk files (the seeds: object storage wants 1 MB–1 GB files, not one per
//! message) in a [`ChunkDir`]. The object-storage sink is the same [`ChunkSink`] over a bucket.
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

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
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
/// The journal sequence a delivered message carries in [`SEQ_HEADER`], if any.
pub fn sequence_of(message: &Message) -> Option<u64> {
    message.headers.get(SEQ_HEADER)?.parse().ok()
}

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

/// When a chunk is sealed, and what it holds.
#[derive(Debug, Clone, Copy)]
pub struct ChunkSettings {
    pub max_bytes: u64,
    pub max_age: Duration,
    pub format: ChunkFormat,
}

/// What names a sealed chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    /// When the chunk was opened, unix ms.
    pub opened_at_ms: i64,
    /// This process's random nonce, and the chunk's number in it.
    pub nonce: u32,
    pub counter: u64,
    /// The lowest and highest `sidelog-seq` in the chunk (none in mode `none`).
    pub seqs: Option<(u64, u64)>,
    pub format: ChunkFormat,
    pub records: u64,
}

/// Where sealed chunks go: a directory, a bucket.
pub trait ChunkStore: Send + Sync + 'static {
    /// The chunk's name in the store.
    fn name(&self, info: &ChunkInfo) -> String;
    /// Stores a whole chunk under `name`. `Ok` only once it is durable there and visible whole;
    /// a failure leaves nothing visible (the chunk's batches are retried).
    fn put(&self, name: String, body: Vec<u8>) -> BoxFuture<'static, Result<(), SinkError>>;

    /// The sequences in `[from, to]` that chunks stored between `since_ms` and `until_ms`
    /// (unix ms) already hold, read back from the store: what a crash between a chunk's upload
    /// and its ack left there. `None`: this store cannot tell (every replayed message is sent
    /// again).
    fn stored_seqs(
        &self,
        _from: u64,
        _to: u64,
        _since_ms: i64,
        _until_ms: i64,
    ) -> BoxFuture<'static, Result<Option<HashSet<u64>>, SinkError>> {
        Box::pin(async { Ok(None) })
    }
}

type Waiter = oneshot::Sender<Result<(), SinkError>>;
/// Resolves when the chunk holding a batch is stored (or failed).
type SealAck = oneshot::Receiver<Result<(), SinkError>>;

struct OpenChunk {
    info: ChunkInfo,
    /// The record format's bytes so far (format `chunk`).
    bytes: Vec<u8>,
    /// The messages so far (format `parquet`, encoded at the seal).
    messages: Vec<Message>,
    size: u64,
    opened_at: Instant,
    waiters: Vec<Waiter>,
}

/// A sink that gathers batches into chunks (the seeds: the next tier wants 1 MB–1 GB files, not
/// one per message) and acks each batch once its chunk is in the [`ChunkStore`]. Chunks are
/// sealed by size and by age; batches join the open chunk in call order, so many may await
/// the same seal.
pub struct ChunkSink {
    store: Arc<dyn ChunkStore>,
    settings: ChunkSettings,
    /// Sequences found already stored at start ([`ChunkSink::absorb_stored`]): a replayed
    /// message among them is acked without being stored again.
    stored: Mutex<HashSet<u64>>,
    state: Mutex<(Option<OpenChunk>, u64)>,
    clock: SharedClock,
    nonce: u32,
}

impl std::fmt::Debug for ChunkSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkSink")
            .field("settings", &self.settings)
            .finish()
    }
}

impl ChunkSink {
    /// Starts the sink and the task that seals chunks by age.
    pub fn start(
        store: Arc<dyn ChunkStore>,
        settings: ChunkSettings,
        clock: SharedClock,
        entropy: &Entropy,
    ) -> Arc<ChunkSink> {
        let sink = Arc::new(ChunkSink {
            store,
            settings,
            stored: Mutex::new(HashSet::new()),
            state: Mutex::new((None, 0)),
            clock,
            nonce: entropy.next_u64() as u32,
        });
        let weak = Arc::downgrade(&sink);
        let tick =
            (settings.max_age / 4).clamp(Duration::from_millis(1), Duration::from_millis(100));
        crate::spawn::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            loop {
                interval.tick().await;
                let Some(sink) = weak.upgrade() else { break };
                sink.seal_if_old();
            }
        });
        sink
    }

    /// Before a replay: learns which of the backlog's sequences `[from, to]`, written since
    /// `since_ms`, the store holds already (a crash came between their upload and their ack),
    /// so that the replay acks those instead of storing them twice. Returns how many.
    pub async fn absorb_stored(
        &self,
        from: u64,
        to: u64,
        since_ms: i64,
    ) -> Result<usize, SinkError> {
        let now = self.clock.now_ms();
        let Some(found) = self.store.stored_seqs(from, to, since_ms, now).await? else {
            return Ok(0);
        };
        let n = found.len();
        if n > 0 {
            info!(
                messages = n,
                "found replayed messages already stored; they are acked, not stored again"
            );
        }
        *self
            .stored
            .lock()
            .expect("the stored-sequence set is never held across a panic") = found;
        Ok(n)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<OpenChunk>, u64)> {
        self.state
            .lock()
            .expect("the chunk sink mutex is never held across a panic")
    }

    fn seal_if_old(&self) {
        let chunk = {
            let mut state = self.lock();
            match &state.0 {
                Some(c) if c.opened_at.elapsed() >= self.settings.max_age => state.0.take(),
                _ => None,
            }
        };
        if let Some(chunk) = chunk {
            self.seal(chunk);
        }
    }

    /// Adds a batch to the open chunk (sealing it when full); the receiver resolves when the
    /// chunk is stored or failed.
    fn append(&self, batch: &[Message]) -> Result<SealAck, SinkError> {
        let format = self.settings.format;
        let fresh: Vec<Message>;
        let batch = {
            let stored = self
                .stored
                .lock()
                .expect("the stored-sequence set is never held across a panic");
            if stored.is_empty() {
                batch
            } else {
                fresh = batch
                    .iter()
                    .filter(|m| !sequence_of(m).is_some_and(|s| stored.contains(&s)))
                    .cloned()
                    .collect();
                &fresh[..]
            }
        };
        if batch.is_empty() {
            // Everything in it is stored already.
            let (tx, rx) = oneshot::channel();
            drop(tx.send(Ok(())));
            return Ok(rx);
        }
        let mut encoded = Vec::new();
        if format == ChunkFormat::Chunk {
            for message in batch {
                encode_chunk_record(message, &mut encoded)?;
            }
        }
        let mut state = self.lock();
        if state.0.is_none() {
            state.1 += 1;
            let now = self.clock.now_ms();
            let mut bytes = Vec::new();
            if format == ChunkFormat::Chunk {
                bytes.reserve((self.settings.max_bytes as usize).min(8 << 20));
                bytes.extend_from_slice(CHUNK_MAGIC);
            }
            state.0 = Some(OpenChunk {
                info: ChunkInfo {
                    opened_at_ms: now,
                    nonce: self.nonce,
                    counter: state.1,
                    seqs: None,
                    format,
                    records: 0,
                },
                size: bytes.len() as u64,
                bytes,
                messages: Vec::new(),
                opened_at: Instant::now(),
                waiters: Vec::new(),
            });
        }
        let chunk = state.0.as_mut().expect("opened above");
        match format {
            ChunkFormat::Chunk => {
                chunk.bytes.extend_from_slice(&encoded);
                chunk.size += encoded.len() as u64;
            }
            ChunkFormat::Parquet => {
                chunk.size += batch.iter().map(|m| m.encoded_len() as u64).sum::<u64>();
                chunk.messages.extend(batch.iter().cloned());
            }
        }
        chunk.info.records += batch.len() as u64;
        for seq in batch.iter().filter_map(sequence_of) {
            chunk.info.seqs = Some(match chunk.info.seqs {
                Some((lo, hi)) => (lo.min(seq), hi.max(seq)),
                None => (seq, seq),
            });
        }
        let (tx, rx) = oneshot::channel();
        chunk.waiters.push(tx);
        if chunk.size >= self.settings.max_bytes {
            let full = state.0.take().expect("present");
            drop(state);
            // Sealed now, not when some future is polled: a caller that stops waiting must not
            // leave the other batches in this chunk unacked.
            self.seal(full);
        }
        Ok(rx)
    }

    fn seal(&self, chunk: OpenChunk) {
        let store = self.store.clone();
        crate::spawn::spawn(async move {
            let OpenChunk {
                info,
                bytes,
                messages,
                waiters,
                ..
            } = chunk;
            let name = store.name(&info);
            let body = match info.format {
                ChunkFormat::Chunk => Ok(bytes),
                // Columnar encoding is CPU work: off the runtime's workers.
                ChunkFormat::Parquet => {
                    tokio::task::spawn_blocking(move || crate::parquet_chunk::encode(&messages))
                        .await
                        .map_err(|e| SinkError(format!("parquet encoding task failed: {e}")))
                        .and_then(|r| {
                            r.map_err(|e| SinkError(format!("cannot encode parquet: {e}")))
                        })
                }
            };
            let size = body.as_ref().map_or(0, Vec::len);
            let result = match body {
                Ok(body) => store.put(name.clone(), body).await,
                Err(e) => Err(e),
            };
            match &result {
                Ok(()) => {
                    debug!(chunk = %name, bytes = size, records = info.records, "chunk stored")
                }
                Err(e) => {
                    warn!(chunk = %name, error = %e, "cannot store a chunk; its messages will be re-sent")
                }
            }
            for w in waiters {
                drop(w.send(result.clone()));
            }
        });
    }
}

impl Sink for Arc<ChunkSink> {
    fn deliver(&self, batch: Arc<[Message]>) -> BoxFuture<'static, Result<(), SinkError>> {
        // Appending now, not when the future is first polled, fixes the batch's place.
        let appended = self.append(&batch);
        Box::pin(async move {
            appended?
                .await
                .unwrap_or_else(|_| Err(SinkError("the chunk sink stopped".into())))
        })
    }

    fn pipeline_depth(&self) -> usize {
        // Batches join the open chunk in call order, so many may await the seal together.
        1024
    }

    fn ack_delay_max(&self) -> Duration {
        self.settings.max_age
    }
}

/// The built-in sink's store: chunk files in a directory. A chunk is written to
/// `DIR/.tmp-<name>`, fsynced, renamed to `DIR/<name>`, and the directory fsynced.
#[derive(Debug, Clone)]
pub struct ChunkDir {
    dir: PathBuf,
}

impl ChunkDir {
    /// Creates the directory and removes chunks a crash left half-written (their messages were
    /// never acked and are re-sent).
    pub fn open(dir: &Path) -> std::io::Result<ChunkDir> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                info!(file = %entry.path().display(), "removing a chunk left unfinished by a crash; its messages are re-sent");
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(ChunkDir {
            dir: dir.to_owned(),
        })
    }
}

impl ChunkStore for ChunkDir {
    fn name(&self, info: &ChunkInfo) -> String {
        format!(
            "chunk-{:013}-{:08x}-{:06}.{}",
            info.opened_at_ms,
            info.nonce,
            info.counter,
            info.format.extension()
        )
    }

    fn put(&self, name: String, body: Vec<u8>) -> BoxFuture<'static, Result<(), SinkError>> {
        let dir = self.dir.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let tmp_path = dir.join(format!(".tmp-{name}"));
                let final_path = dir.join(&name);
                let result = (|| -> std::io::Result<()> {
                    let mut file = File::create(&tmp_path)?;
                    file.write_all(&body)?;
                    file.sync_all()?;
                    drop(file);
                    std::fs::rename(&tmp_path, &final_path)?;
                    File::open(&dir)?.sync_all()
                })();
                result.map_err(|e| {
                    drop(std::fs::remove_file(&tmp_path));
                    SinkError(format!("cannot write chunk {}: {e}", final_path.display()))
                })
            })
            .await
            .map_err(|e| SinkError(format!("chunk writing task failed: {e}")))?
        })
    }
}

/// The built-in file sink: chunks in `config.dir`.
pub struct FileSink;

impl FileSink {
    pub fn start(
        config: FileSinkConfig,
        clock: SharedClock,
        entropy: &Entropy,
    ) -> std::io::Result<Arc<ChunkSink>> {
        let store = ChunkDir::open(&config.dir)?;
        Ok(ChunkSink::start(
            Arc::new(store),
            ChunkSettings {
                max_bytes: config.chunk_max_bytes,
                max_age: Duration::from_millis(config.chunk_max_age_ms),
                format: config.format,
            },
            clock,
            entropy,
        ))
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
