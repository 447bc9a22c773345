//! The [`Journal`] handle: opening the file, starting the writer, and the domain verbs callers
//! use. Each verb sends one command to the writer and states its durability.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::command::{Answer, Command, Read, Reply, Write};
use super::config::JournalConfig;
use super::error::{IoFailure, JournalError, Result};
use super::store::{FileStore, JournalStore};
use super::types::{
    Appended, Backlog, DeadLetterSelection, DedupRecord, DeliveryProgress, DeliveryState,
    NewDeadLetter, OutputGroup, RecordedOutputs, ScanLimit, Seq, SeqRange, StoredDeadLetter,
    StoredInput, StoredOutput, Summary,
};
use super::writer::Writer;
use sidelog_proto::v1::Message;
use sidelog_runtime::SharedClock;

/// Commands the queue to the writer holds before senders wait.
const QUEUE_CAPACITY: usize = 4096;

/// A handle to the journal. Cheap to clone; the writer stops when the last handle is dropped.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Command>,
    backlog: Arc<Backlog>,
    path: Arc<PathBuf>,
    ambiguous: Arc<std::sync::Mutex<Option<mpsc::UnboundedReceiver<SeqRange>>>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

impl Journal {
    /// Opens (or creates) `journal.redb` in `data_dir` and starts the writer thread.
    ///
    /// Fails, naming the file, when the file is damaged or of another format: sidelog never
    /// starts silently on an empty journal in place of a damaged one.
    pub fn open(data_dir: &Path, config: JournalConfig, clock: SharedClock) -> Result<Journal> {
        let store = FileStore::in_dir(data_dir, &config)?;
        let path = store.path.clone();
        Self::open_storage(Box::new(store), path, config, clock)
    }

    /// Opens the journal in the given store (the simulator passes its own disk).
    pub fn open_storage(
        storage: Box<dyn JournalStore>,
        path: PathBuf,
        config: JournalConfig,
        clock: SharedClock,
    ) -> Result<Journal> {
        let (ambiguous_tx, ambiguous_rx) = mpsc::unbounded_channel();
        let writer = Writer::open(storage, path.clone(), config, clock, ambiguous_tx)?;
        let backlog = writer.backlog().clone();
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        writer.start(rx, tx.downgrade())?;
        Ok(Journal {
            tx,
            backlog,
            path: Arc::new(path),
            ambiguous: Arc::new(std::sync::Mutex::new(Some(ambiguous_rx))),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ranges of records that failed commits left in the file (see [`SeqRange`]); the
    /// pipeline takes this once and replays each range it receives.
    pub fn take_ambiguous_ranges(&self) -> Option<mpsc::UnboundedReceiver<SeqRange>> {
        self.ambiguous
            .lock()
            .expect("never held across a panic")
            .take()
    }

    /// What the journal holds that is not yet delivered.
    pub fn backlog(&self) -> &Arc<Backlog> {
        &self.backlog
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    async fn write<T>(&self, make: impl FnOnce(Answer<T>) -> Write) -> Result<T> {
        self.call(|reply| Command::Write(make(Answer::to(reply))))
            .await
    }

    async fn read<T>(&self, make: impl FnOnce(Reply<T>) -> Read) -> Result<T> {
        self.call(|reply| Command::Read(make(reply))).await
    }

    /// Appends inputs and enters their ids into the dedup window. **Durable**: returns after
    /// the fsync, with one sequence per input, in order.
    pub async fn append_inputs(
        &self,
        inputs: Vec<Message>,
        received_at_ms: i64,
    ) -> Result<Vec<Seq>> {
        Ok(self
            .append_inputs_returning(inputs, received_at_ms)
            .await?
            .seqs)
    }

    /// [`Journal::append_inputs`], handing the inputs back with their sequences: the publish
    /// path passes them on to delivery without cloning each one for the writer.
    pub async fn append_inputs_returning(
        &self,
        inputs: Vec<Message>,
        received_at_ms: i64,
    ) -> Result<Appended> {
        self.write(|answer| Write::AppendInputs {
            inputs,
            received_at_ms,
            answer,
        })
        .await
    }

    /// Like [`Journal::append_inputs`], but only queues the write and returns a receiver for its
    /// outcome, so the caller can do other work (HML calls the handler) while it commits.
    pub async fn start_append_inputs(
        &self,
        inputs: Vec<Message>,
        received_at_ms: i64,
    ) -> Result<oneshot::Receiver<Result<Appended>>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Write(Write::AppendInputs {
                inputs,
                received_at_ms,
                answer: Answer::to(reply),
            }))
            .await
            .map_err(|_| JournalError::Closed)?;
        Ok(rx)
    }

    /// Records outputs. **Durable** when `durable` (sbml, before the producer's ack); otherwise
    /// written without fsync (hml), made durable by a later commit. For an hml group with no
    /// outputs, the input is complete and is removed.
    pub async fn record_outputs(
        &self,
        groups: Vec<OutputGroup>,
        durable: bool,
    ) -> Result<Vec<RecordedOutputs>> {
        self.write(|answer| Write::RecordOutputs {
            groups,
            durable,
            answer,
        })
        .await
    }

    /// Like [`Journal::record_outputs`], but only queues the write and returns a receiver for
    /// its outcome: records are sequenced in the order they are queued, so a caller that must
    /// keep an order holds it only while queuing, not while the journal works.
    pub async fn start_record_outputs(
        &self,
        groups: Vec<OutputGroup>,
        durable: bool,
    ) -> Result<oneshot::Receiver<Result<Vec<RecordedOutputs>>>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Write(Write::RecordOutputs {
                groups,
                durable,
                answer: Answer::to(reply),
            }))
            .await
            .map_err(|_| JournalError::Closed)?;
        Ok(rx)
    }

    /// Removes delivered outputs and completed inputs. **Not durable**: losing it only re-sends,
    /// and deterministic ids make that a harmless duplicate. Waits only for queue space.
    pub async fn complete(&self, outputs: Vec<Seq>, inputs: Vec<Seq>) -> Result<()> {
        if outputs.is_empty() && inputs.is_empty() {
            return Ok(());
        }
        self.tx
            .send(Command::Write(Write::Complete {
                outputs,
                inputs,
                answer: Answer::none(),
            }))
            .await
            .map_err(|_| JournalError::Closed)
    }

    /// Records a sink's delivery progress. **Not durable**, and written after every mark
    /// queued before it (in the same commit or a later one), so after a crash the journal holds
    /// either it and those marks, or an older progress: never a progress past its marks.
    pub async fn record_delivery_progress(&self, progress: DeliveryProgress) -> Result<()> {
        self.tx
            .send(Command::Write(Write::Progress {
                progress,
                answer: Answer::none(),
            }))
            .await
            .map_err(|_| JournalError::Closed)
    }

    /// The journal's identity and the delivery progress it holds.
    pub async fn delivery_state(&self) -> Result<DeliveryState> {
        self.read(|reply| Read::DeliveryState { reply }).await
    }

    /// Moves messages to the dead-letter table, removing the entries they replace. **Durable.**
    pub async fn dead_letter(&self, letters: Vec<NewDeadLetter>) -> Result<Vec<Seq>> {
        self.write(|answer| Write::DeadLetter { letters, answer })
            .await
    }

    /// Makes everything written so far durable (one `Immediate` commit if anything is pending).
    pub async fn sync(&self) -> Result<()> {
        self.write(|answer| Write::Sync { answer }).await
    }

    /// Makes everything durable and releases the file, so it can be opened again in this
    /// process. Every handle fails with `Closed` afterwards.
    pub async fn close(&self) -> Result<()> {
        self.call(Command::Close).await
    }

    /// Up to `limit` inputs with sequence ≥ `from`, in sequence order (or on to the end of a
    /// block: [`ScanLimit::to_block_end`]).
    pub async fn scan_inputs(
        &self,
        from: Seq,
        limit: impl Into<ScanLimit>,
    ) -> Result<Vec<StoredInput>> {
        let limit = limit.into();
        self.read(|reply| Read::ScanInputs { from, limit, reply })
            .await
    }

    /// Up to `limit` outputs with sequence ≥ `from`, in sequence order (or on to the end of a
    /// block: [`ScanLimit::to_block_end`]).
    pub async fn scan_outputs(
        &self,
        from: Seq,
        limit: impl Into<ScanLimit>,
    ) -> Result<Vec<StoredOutput>> {
        let limit = limit.into();
        self.read(|reply| Read::ScanOutputs { from, limit, reply })
            .await
    }

    /// Up to `limit` dead letters with sequence ≥ `from`, in sequence order.
    pub async fn scan_dead_letters(
        &self,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<StoredDeadLetter>> {
        self.read(|reply| Read::ScanDeadLetters { from, limit, reply })
            .await
    }

    /// The persisted dedup window, oldest first (bounded by the window's count).
    pub async fn load_dedup(&self) -> Result<Vec<DedupRecord>> {
        self.read(|reply| Read::LoadDedup { reply }).await
    }

    pub async fn summary(&self) -> Result<Summary> {
        self.read(|reply| Read::Summary { reply }).await
    }

    /// When the oldest undelivered entry was written (unix ms), or `None` with no backlog.
    pub async fn oldest_backlog_ms(&self) -> Result<Option<i64>> {
        self.read(|reply| Read::OldestBacklog { reply }).await
    }

    /// Moves the selected dead letters back into the backlog (durably), under new contiguous
    /// sequences, which it returns: the caller dispatches them (or the next start replays them).
    pub async fn requeue_dead_letters(&self, selection: DeadLetterSelection) -> Result<Vec<Seq>> {
        self.write(|answer| Write::Requeue { selection, answer })
            .await
    }

    /// Deletes the selected dead letters for good (durably); returns how many there were.
    pub async fn purge_dead_letters(&self, selection: DeadLetterSelection) -> Result<u64> {
        self.write(|answer| Write::Purge { selection, answer })
            .await
    }
}

/// Waits at most `timeout` for the journal writer to drain: used by shutdown.
pub async fn flush(journal: &Journal, timeout: Duration) -> Result<()> {
    match tokio::time::timeout(timeout, journal.sync()).await {
        Ok(r) => r,
        Err(_) => Err(JournalError::Io(IoFailure::new(
            "timed out flushing the journal",
        ))),
    }
}
