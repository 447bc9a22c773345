//! Chunks: a sink that gathers batches into large chunks (object storage and data lakes want
//! 1 MB–1 GB files, not one per message) and acks each batch once its chunk is stored whole.
//!
//! [`ChunkSink`] gathers and seals (by size and age); a [`ChunkStore`] keeps sealed chunks:
//! a directory (`dir.rs`, the file sink) or a bucket (`bucket.rs`, the object sink). A chunk
//! holds sidelog's own record format (`format.rs`) or Parquet (`parquet.rs`).

pub(super) mod bucket;
mod dir;
mod format;
pub mod parquet;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::proto::Message;
use crate::runtime::{BoxFuture, Entropy, SharedClock};
use crate::sink::{BacklogSpan, Batch, Receipt, Sink, SinkError, sequence_of};

pub use dir::{ChunkDir, FileSink, FileSinkConfig};
pub(crate) use format::encode_chunk_record;
pub use format::{CHUNK_MAGIC, ChunkError, list_chunks, parse_chunk, read_chunk};

/// What a chunk (a file of the file sink, an object of the object sink) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkFormat {
    /// sidelog's length-prefixed records (`format.rs`), `.sdlc`: written as batches arrive.
    Chunk,
    /// Parquet, one row per message (`parquet.rs`), `.parquet`: encoded when sealed.
    Parquet,
}

impl std::fmt::Display for ChunkFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChunkFormat::Chunk => "chunk",
            ChunkFormat::Parquet => "parquet",
        })
    }
}

impl std::str::FromStr for ChunkFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "chunk" => Ok(ChunkFormat::Chunk),
            "parquet" => Ok(ChunkFormat::Parquet),
            other => Err(format!(
                "unknown format {other:?}: expected chunk or parquet"
            )),
        }
    }
}

impl ChunkFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ChunkFormat::Chunk => "sdlc",
            ChunkFormat::Parquet => "parquet",
        }
    }
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

    /// Whether [`stored_seqs`](ChunkStore::stored_seqs) can tell (an object store lists and
    /// reads its objects; a directory of chunk files is not read back).
    fn can_read_back(&self) -> bool {
        false
    }

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

impl OpenChunk {
    /// Adds a batch: its records (`encoded`, format `chunk`) or its messages (`parquet`).
    fn add(&mut self, batch: &[Message], encoded: &[u8]) {
        match self.info.format {
            ChunkFormat::Chunk => {
                self.bytes.extend_from_slice(encoded);
                self.size += encoded.len() as u64;
            }
            ChunkFormat::Parquet => {
                self.size += batch.iter().map(|m| m.encoded_len() as u64).sum::<u64>();
                self.messages.extend(batch.iter().cloned());
            }
        }
        self.info.records += batch.len() as u64;
        for seq in batch.iter().filter_map(sequence_of) {
            self.info.seqs = Some(match self.info.seqs {
                Some((lo, hi)) => (lo.min(seq), hi.max(seq)),
                None => (seq, seq),
            });
        }
    }
}

/// A sink that gathers batches into chunks (object storage and data lakes want 1 MB–1 GB files, not
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
        crate::runtime::spawn(async move {
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
    /// A new, empty chunk, number `counter` of this process.
    fn open_chunk(&self, counter: u64) -> OpenChunk {
        let format = self.settings.format;
        let mut bytes = Vec::new();
        if format == ChunkFormat::Chunk {
            bytes.reserve((self.settings.max_bytes as usize).min(8 << 20));
            bytes.extend_from_slice(CHUNK_MAGIC);
        }
        OpenChunk {
            info: ChunkInfo {
                opened_at_ms: self.clock.now_ms(),
                nonce: self.nonce,
                counter,
                seqs: None,
                format,
                records: 0,
            },
            size: bytes.len() as u64,
            bytes,
            messages: Vec::new(),
            opened_at: Instant::now(),
            waiters: Vec::new(),
        }
    }

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
            state.0 = Some(self.open_chunk(state.1));
        }
        let chunk = state.0.as_mut().expect("opened above");
        chunk.add(batch, &encoded);
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
        crate::runtime::spawn(async move {
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
                    tokio::task::spawn_blocking(move || crate::sink::parquet::encode(&messages))
                        .await
                        .map_err(|e| SinkError::retry(format!("parquet encoding task failed: {e}")))
                        .and_then(|r| {
                            r.map_err(|e| SinkError::retry(format!("cannot encode parquet: {e}")))
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
                    static WARN: crate::runtime::WarnLimit =
                        crate::runtime::WarnLimit::new(crate::runtime::WARN_EVERY);
                    if let Some(suppressed) = WARN.check() {
                        warn!(chunk = %name, error = %e, suppressed, "cannot store a chunk; its messages will be re-sent (suppressed: like warnings held back since the last one)")
                    }
                }
            }
            for w in waiters {
                drop(w.send(result.clone()));
            }
        });
    }
}

impl Sink for ChunkSink {
    fn deliver(&self, batch: Batch) -> BoxFuture<'static, Result<Receipt, SinkError>> {
        // Appending now, not when the future is first polled, fixes the batch's place.
        let appended = self.append(&batch.messages);
        Box::pin(async move {
            appended?
                .await
                .unwrap_or_else(|_| Err(SinkError::retry("the chunk sink stopped")))
                .map(|()| Receipt::none())
        })
    }

    fn pipeline_depth(&self) -> usize {
        // Batches join the open chunk in call order, so many may await the seal together.
        1024
    }

    fn reads_back(&self) -> bool {
        self.store.can_read_back()
    }

    fn read_back(&self, span: BacklogSpan) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.absorb_stored(span.from, span.to, span.since_ms).await {
                warn!(error = %e, "cannot read back the bucket; the replay re-sends the whole backlog (duplicates of what was uploaded but not acked)");
            }
        })
    }

    fn ack_delay_max(&self) -> Option<Duration> {
        Some(self.settings.max_age)
    }

    fn flush(&self) {
        let chunk = self.lock().0.take();
        if let Some(chunk) = chunk {
            self.seal(chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::SystemClock;

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
            crate::sink::parquet::ids_and_sequences(std::fs::read(&chunks[0]).unwrap()).unwrap();
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
