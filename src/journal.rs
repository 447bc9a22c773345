//! The journal: sidelog's one durable store, a single redb file under `--data-dir`.
//!
//! Only this module imports redb. It speaks in domain verbs ([`Journal::append_inputs`],
//! [`Journal::record_outputs`], [`Journal::complete`], [`Journal::dead_letter`],
//! [`Journal::scan_outputs`], ...) and each verb states its durability.
//!
//! # Group commit
//! One writer thread owns the `Database`. Callers send commands on a bounded queue (backpressure
//! when the disk is slow) and await a reply. The writer takes every command waiting in the queue,
//! up to [`JournalConfig::commit_max_records`], applies them all in one write transaction, commits
//! once, and only then replies to each. A commit is `Immediate` (one fsync) when any command in it
//! needs durability, and `None` (no fsync) otherwise: completion marks ride along for free and
//! become durable with the next `Immediate` commit, or with the periodic sync. Reads (replay
//! scans, the dedup load) go through the same thread, so there is exactly one owner of the file.
//!
//! # Tables and key encodings
//! ```text
//! inputs        u64 input seq   -> [1][InputEntry protobuf]    rbml, hml: awaiting completion
//! outputs       u64 output seq  -> [1][OutputEntry protobuf]   sbml, hml: awaiting the sink's ack
//! recorded      u64 input seq   -> (u64 first output seq, u32 count)  hml: where this input's outputs are
//! dead_letters  u64 letter seq  -> [1][DeadLetter protobuf]    kept until re-queued or purged
//! dedup         &str message id -> (u64 seq, i64 recorded_at_ms)
//! dedup_order   u64 seq         -> &str message id             eviction order of the dedup window
//! meta          &str            -> u64                         format, seq_floor, backlog_bytes, backlog_entries
//! ```
//! The leading byte of every protobuf value is the record format version ([`RECORD_FORMAT`]).
//!
//! # Invariants
//! - Sequences are unique for the life of the file, also across crashes: every `Immediate`
//!   commit persists `seq_floor = next_seq + SEQ_RESERVE`, a commit that would hand out a
//!   sequence at or past the durable floor is made `Immediate`, and on open `next_seq` starts at
//!   the floor. Sequences handed out by a lost non-durable commit are therefore never reused.
//! - `backlog_bytes`/`backlog_entries` in `meta` count exactly the entries of `inputs` and
//!   `outputs` (the sum of their encoded sizes); they are updated in the same transaction.
//! - A reply `Ok` to a durable command is sent only after the `Immediate` commit returned.
//!
//! The file is `journal.redb`; redb's own checksums and two commit slots make a torn write roll
//! back to the last commit.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::clock::SharedClock;
use crate::proto::Message;
use crate::proto::journal::{DeadLetter, InputEntry, OutputEntry, dead_letter};

const INPUTS: TableDefinition<u64, &[u8]> = TableDefinition::new("inputs");
const OUTPUTS: TableDefinition<u64, &[u8]> = TableDefinition::new("outputs");
const RECORDED: TableDefinition<u64, (u64, u32)> = TableDefinition::new("recorded");
const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
const DEDUP: TableDefinition<&str, (u64, i64)> = TableDefinition::new("dedup");
const DEDUP_ORDER: TableDefinition<u64, &str> = TableDefinition::new("dedup_order");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_FORMAT: &str = "format";
const META_SEQ_FLOOR: &str = "seq_floor";
const META_BACKLOG_BYTES: &str = "backlog_bytes";
const META_BACKLOG_ENTRIES: &str = "backlog_entries";

/// The journal file's layout version; a file with another one is refused.
pub const FILE_FORMAT: u64 = 1;
/// The leading byte of every encoded record.
pub const RECORD_FORMAT: u8 = 1;
/// Sequences reserved past each durable commit (see the module's invariants).
const SEQ_RESERVE: u64 = 1 << 20;
/// Commands the queue to the writer holds before senders wait.
const QUEUE_CAPACITY: usize = 4096;
/// Dedup entries evicted per commit beyond the ones the commit inserted, so that age-based
/// eviction catches up without making one transaction unboundedly large.
const EVICT_EXTRA_PER_COMMIT: usize = 1024;

/// The file name of the journal inside the data directory.
pub const FILE_NAME: &str = "journal.redb";

/// A journal sequence number: the key of an entry, unique for the life of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

/// Errors of the journal. `StorageFull` and `Io` are operating conditions (retryable);
/// `Corrupted` and `Format` need an operator; `Closed` means the process is stopping.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// The disk, or the journal's size limit, is full. Retryable once space returns.
    #[error("journal storage is full: {0}")]
    StorageFull(String),
    /// Another I/O error. Retryable: the writer reopens the file before the next commit.
    #[error("journal I/O error: {0}")]
    Io(String),
    /// The file is damaged. Not retryable: an operator must restore or move it.
    #[error("journal {path} is damaged: {reason}")]
    Corrupted { path: PathBuf, reason: String },
    /// The file was written by an incompatible version. Not retryable.
    #[error("journal {path} has format {found}, this sidelog reads format {FILE_FORMAT}")]
    Format { path: PathBuf, found: u64 },
    /// A record could not be decoded: a bug or damage. Not retryable.
    #[error("journal record {table}/{key} cannot be decoded: {reason}")]
    Decode {
        table: &'static str,
        key: u64,
        reason: String,
    },
    /// The writer has stopped. Not retryable in this process.
    #[error("journal is closed")]
    Closed,
    /// Another process (a running sidelog) has the file open.
    #[error("journal {path} is in use by another process (a running sidelog)")]
    InUse { path: PathBuf },
}

impl JournalError {
    fn from_redb(err: impl Into<redb::Error>, path: &Path) -> Self {
        match err.into() {
            // A read past the end: the file is shorter than its own pages say.
            redb::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                JournalError::Corrupted {
                    path: path.to_owned(),
                    reason: format!("the file ends early, it was truncated ({io})"),
                }
            }
            redb::Error::Io(io) => Self::from_io(&io),
            redb::Error::PreviousIo => {
                JournalError::Io("an earlier I/O error left the file to be reopened".into())
            }
            redb::Error::Corrupted(reason) => JournalError::Corrupted {
                path: path.to_owned(),
                reason,
            },
            redb::Error::DatabaseAlreadyOpen => JournalError::InUse {
                path: path.to_owned(),
            },
            other => JournalError::Io(other.to_string()),
        }
    }

    fn from_io(io: &std::io::Error) -> Self {
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        if io.kind() == std::io::ErrorKind::StorageFull
            || matches!(io.raw_os_error(), Some(ENOSPC | EDQUOT))
        {
            JournalError::StorageFull(io.to_string())
        } else {
            JournalError::Io(io.to_string())
        }
    }

    /// Whether the same operation may succeed later in this process.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            JournalError::StorageFull(_) | JournalError::Io(_) | JournalError::InUse { .. }
        )
    }
}

pub type Result<T, E = JournalError> = std::result::Result<T, E>;

/// Validated settings of the journal.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Records applied in one transaction at most.
    pub commit_max_records: usize,
    /// Longest a non-durable change waits for the next durable commit.
    pub sync_interval_ms: u64,
    /// Message ids the dedup window keeps at most.
    pub dedup_window_count: u64,
    /// Age after which a message id leaves the dedup window.
    pub dedup_window_age_ms: i64,
    /// The journal file's size limit; writes past it fail as `StorageFull`.
    pub max_file_bytes: Option<u64>,
    /// Added to every fsync, to measure the modes as on a slow disk (benchmarks only).
    pub simulated_fsync_latency_us: u64,
    /// Where the writer runs.
    pub writer: WriterRuntime,
    /// A deliberate bug for the simulator's self-test: commits that must be durable are made
    /// without fsync, so acks can precede durability. Never set outside the simulator.
    #[doc(hidden)]
    pub bug_ack_before_fsync: bool,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            commit_max_records: 8192,
            sync_interval_ms: 1000,
            dedup_window_count: 100_000,
            dedup_window_age_ms: 3_600_000,
            max_file_bytes: None,
            simulated_fsync_latency_us: 0,
            writer: WriterRuntime::Thread,
            bug_ack_before_fsync: false,
        }
    }
}

/// Where the journal's writer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterRuntime {
    /// Its own OS thread (production): redb's blocking calls never stall the runtime.
    Thread,
    /// A task on the current tokio runtime (the simulator): deterministic scheduling, and a
    /// crash (aborting the process's tasks) stops it like the rest.
    Task,
}

/// The undelivered work the journal holds: kept up to date by the writer, read by the publish
/// path for backpressure without touching the file.
#[derive(Debug, Default)]
pub struct Backlog {
    bytes: AtomicU64,
    entries: AtomicU64,
}

impl Backlog {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }
    fn set(&self, bytes: u64, entries: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
        self.entries.store(entries, Ordering::Relaxed);
    }
}

/// Outputs to record for one input.
#[derive(Debug, Clone)]
pub struct OutputGroup {
    /// The journaled input these outputs belong to (hml); `None` in sbml.
    pub input_seq: Option<Seq>,
    /// The input's message id, entered into the dedup window in the same transaction (sbml).
    pub dedup_id: Option<String>,
    pub outputs: Vec<Message>,
}

/// What the journal assigned to one [`OutputGroup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedOutputs {
    /// One sequence per output, in order.
    pub output_seqs: Vec<Seq>,
    /// The sequence the dedup window remembers for the input: the first output's, or a fresh
    /// one when there are no outputs.
    pub ack_seq: Seq,
}

/// A message to move to the dead-letter table.
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    pub kind: dead_letter::Kind,
    pub message: Message,
    pub reason: String,
    pub attempts: u32,
    pub input_seq: Option<Seq>,
    /// The entry this letter replaces, removed in the same transaction.
    pub remove: Option<EntryRef>,
    /// The input this letter finishes (it was the input's last undelivered output), completed
    /// in the same transaction: a crash cannot leave the input to be handled again while its
    /// outputs sit in the dead-letter table.
    pub complete_input: Option<Seq>,
}

/// An entry of `inputs` or `outputs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryRef {
    Input(Seq),
    Output(Seq),
}

/// What replay must do with a stored input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputState {
    /// No outputs were recorded: call the handler again.
    Unhandled,
    /// Its outputs are in `outputs` (hml): replay re-sends those instead.
    OutputsPending,
    /// Its outputs were recorded and are all gone (delivered or dead-lettered), but the
    /// completion mark was lost in a crash: it only needs completing.
    Finished,
}

/// An input read back for replay.
#[derive(Debug, Clone)]
pub struct StoredInput {
    pub seq: Seq,
    pub entry: InputEntry,
    pub state: InputState,
}

/// An output read back for replay.
#[derive(Debug, Clone)]
pub struct StoredOutput {
    pub seq: Seq,
    pub entry: OutputEntry,
}

/// A dead letter read back.
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    pub seq: Seq,
    pub letter: DeadLetter,
}

/// A message id in the persisted dedup window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupRecord {
    pub id: String,
    pub seq: Seq,
    pub recorded_at_ms: i64,
}

/// Entry counts, for `inspect` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub inputs: u64,
    pub outputs: u64,
    pub dead_letters: u64,
    pub dedup_ids: u64,
    pub backlog_bytes: u64,
    pub next_seq: u64,
    /// When the oldest undelivered entry was received (inputs) or recorded (outputs), unix ms.
    pub oldest_backlog_ms: Option<i64>,
}

/// Which dead letters an operator acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterSelection {
    /// These sequences (those that are not dead letters are skipped).
    Seqs(Vec<Seq>),
    /// Every dead letter.
    All,
}

type Reply<T> = oneshot::Sender<Result<T>>;

enum Command {
    AppendInputs {
        inputs: Vec<Message>,
        received_at_ms: i64,
        reply: Reply<Vec<Seq>>,
    },
    RecordOutputs {
        groups: Vec<OutputGroup>,
        durable: bool,
        reply: Reply<Vec<RecordedOutputs>>,
    },
    Complete {
        outputs: Vec<Seq>,
        inputs: Vec<Seq>,
        reply: Option<Reply<()>>,
    },
    DeadLetter {
        letters: Vec<NewDeadLetter>,
        reply: Reply<Vec<Seq>>,
    },
    Sync {
        reply: Reply<()>,
    },
    /// From the sync ticker: make non-durable commits durable, if there are any.
    SyncIfDirty,
    /// Make everything durable, then release the file; later commands fail with `Closed`.
    Close {
        reply: Reply<()>,
    },
    ScanInputs {
        from: Seq,
        limit: usize,
        reply: Reply<Vec<StoredInput>>,
    },
    ScanOutputs {
        from: Seq,
        limit: usize,
        reply: Reply<Vec<StoredOutput>>,
    },
    ScanDeadLetters {
        from: Seq,
        limit: usize,
        reply: Reply<Vec<StoredDeadLetter>>,
    },
    LoadDedup {
        reply: Reply<Vec<DedupRecord>>,
    },
    Summary {
        reply: Reply<Summary>,
    },
    /// When the oldest backlog entry was written, unix ms (`None`: the backlog is empty).
    OldestBacklog {
        reply: Reply<Option<i64>>,
    },
    /// Moves dead letters back into the backlog under new sequences (an input to `inputs`, an
    /// output to `outputs`), durably; answers the new sequences, contiguous.
    Requeue {
        selection: DeadLetterSelection,
        reply: Reply<Vec<Seq>>,
    },
    /// Deletes dead letters for good, durably; answers how many.
    Purge {
        selection: DeadLetterSelection,
        reply: Reply<u64>,
    },
}

impl Command {
    fn is_read(&self) -> bool {
        matches!(
            self,
            Command::ScanInputs { .. }
                | Command::ScanOutputs { .. }
                | Command::ScanDeadLetters { .. }
                | Command::LoadDedup { .. }
                | Command::Summary { .. }
                | Command::OldestBacklog { .. }
        )
    }

    fn needs_durability(&self) -> bool {
        match self {
            Command::AppendInputs { .. }
            | Command::DeadLetter { .. }
            | Command::Sync { .. }
            | Command::Requeue { .. }
            | Command::Purge { .. } => true,
            Command::RecordOutputs { durable, .. } => *durable,
            _ => false,
        }
    }

    fn records(&self) -> usize {
        match self {
            Command::AppendInputs { inputs, .. } => inputs.len(),
            Command::RecordOutputs { groups, .. } => {
                groups.iter().map(|g| g.outputs.len().max(1)).sum()
            }
            Command::Complete {
                outputs, inputs, ..
            } => outputs.len() + inputs.len(),
            Command::DeadLetter { letters, .. } => letters.len(),
            _ => 1,
        }
    }

    /// Sequences a write takes at most, for the durable-floor check. A re-queue may take any
    /// number, but it is durable anyway.
    fn seqs_taken(&self) -> usize {
        match self {
            Command::AppendInputs { inputs, .. } => inputs.len(),
            Command::RecordOutputs { groups, .. } => {
                groups.iter().map(|g| g.outputs.len().max(1)).sum()
            }
            Command::DeadLetter { letters, .. } => letters.len(),
            _ => 0,
        }
    }

    fn fail(self, err: JournalError) {
        // A caller that stopped waiting has nothing to be told.
        match self {
            Command::AppendInputs { reply, .. } => drop(reply.send(Err(err))),
            Command::RecordOutputs { reply, .. } => drop(reply.send(Err(err))),
            Command::Complete { reply, .. } => {
                if let Some(reply) = reply {
                    drop(reply.send(Err(err)));
                }
            }
            Command::DeadLetter { reply, .. } => drop(reply.send(Err(err))),
            Command::Sync { reply } => drop(reply.send(Err(err))),
            Command::SyncIfDirty => {}
            Command::Close { reply } => drop(reply.send(Err(err))),
            Command::ScanInputs { reply, .. } => drop(reply.send(Err(err))),
            Command::ScanOutputs { reply, .. } => drop(reply.send(Err(err))),
            Command::ScanDeadLetters { reply, .. } => drop(reply.send(Err(err))),
            Command::LoadDedup { reply } => drop(reply.send(Err(err))),
            Command::Summary { reply } => drop(reply.send(Err(err))),
            Command::OldestBacklog { reply } => drop(reply.send(Err(err))),
            Command::Requeue { reply, .. } => drop(reply.send(Err(err))),
            Command::Purge { reply, .. } => drop(reply.send(Err(err))),
        }
    }
}

/// A handle to the journal. Cheap to clone; the writer stops when the last handle is dropped.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Command>,
    backlog: Arc<Backlog>,
    path: Arc<PathBuf>,
    ambiguous: Arc<std::sync::Mutex<Option<mpsc::UnboundedReceiver<SeqRange>>>>,
}

/// Sequences `[from, to)` written by a commit that reported failure but turned out to be in the
/// file when it was reopened (an I/O error after redb had made the commit visible). Nobody was
/// told those records were accepted, and nothing is processing them: they must be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub from: Seq,
    pub to: Seq,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

/// Where the journal's file lives: the real filesystem, or the simulator's disk.
///
/// A journal is created atomically: initialized under a temporary name, synced, then renamed
/// into place. So the journal file either does not exist or is a complete database, and a
/// crash (or I/O error) during the very first start cannot leave a half-made file that every
/// later start would have to refuse as damaged.
pub trait JournalStore: Send + 'static {
    /// Whether the journal file exists.
    fn exists(&self) -> std::io::Result<bool>;
    /// A backend for the existing journal file.
    fn open(&self) -> std::io::Result<Box<dyn redb::StorageBackend>>;
    /// A backend for an empty temporary file (replacing any leftover) to build a new journal in.
    fn create_temp(&self) -> std::io::Result<Box<dyn redb::StorageBackend>>;
    /// Makes the temporary file the journal file, atomically and durably.
    fn publish_temp(&self) -> std::io::Result<()>;
    /// Lets the file grow into the headroom kept past its size limit (`on`), or not. The writer
    /// turns it on only to commit completion marks after the journal filled up: removing
    /// entries needs new pages (copy-on-write), and without headroom a full journal could never
    /// drain. Stores without a size limit ignore it.
    fn set_reserve(&self, _on: bool) {}
}

/// The headroom past `limits.max_journal_bytes` that only completion marks may use: 1/16 of
/// the limit, between 256 KiB and 64 MiB.
pub fn reserve_bytes(max_file_bytes: u64) -> u64 {
    (max_file_bytes / 16).clamp(256 << 10, 64 << 20)
}

/// The journal file on the real filesystem, optionally size-limited.
#[derive(Debug, Clone)]
pub struct FileStore {
    pub path: PathBuf,
    pub max_file_bytes: Option<u64>,
    /// Added to every fsync (benchmarks: a slow disk on a fast machine).
    pub fsync_latency: Duration,
    /// Whether the file may grow into its headroom now (see [`JournalStore::set_reserve`]).
    pub reserve: Arc<std::sync::atomic::AtomicBool>,
}

impl FileStore {
    fn temp_path(&self) -> PathBuf {
        self.path.with_extension("redb.new")
    }

    fn backend(&self, path: &Path, create: bool) -> std::io::Result<Box<dyn redb::StorageBackend>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(create)
            .open(path)?;
        let inner = redb::backends::FileBackend::new(file).map_err(std::io::Error::other)?;
        Ok(Box::new(QuotaBackend {
            inner,
            max_len: self.max_file_bytes.unwrap_or(u64::MAX),
            fsync_latency: self.fsync_latency,
            reserve: self.reserve.clone(),
        }))
    }
}

impl JournalStore for FileStore {
    fn exists(&self) -> std::io::Result<bool> {
        self.path.try_exists()
    }

    fn open(&self) -> std::io::Result<Box<dyn redb::StorageBackend>> {
        self.backend(&self.path, false)
    }

    fn create_temp(&self) -> std::io::Result<Box<dyn redb::StorageBackend>> {
        self.backend(&self.temp_path(), true)
    }

    fn set_reserve(&self, on: bool) {
        self.reserve.store(on, Ordering::Relaxed);
    }

    fn publish_temp(&self) -> std::io::Result<()> {
        std::fs::rename(self.temp_path(), &self.path)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir)?.sync_all()
    }
}

impl Journal {
    /// Opens (or creates) `journal.redb` in `data_dir` and starts the writer thread.
    ///
    /// Fails, naming the file, when the file is damaged or of another format: sidelog never
    /// starts silently on an empty journal in place of a damaged one.
    pub fn open(data_dir: &Path, config: JournalConfig, clock: SharedClock) -> Result<Journal> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            JournalError::Io(format!(
                "cannot create data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(FILE_NAME);
        let store = FileStore {
            path: path.clone(),
            max_file_bytes: config.max_file_bytes,
            fsync_latency: Duration::from_micros(config.simulated_fsync_latency_us),
            reserve: Arc::default(),
        };
        Self::open_storage(Box::new(store), path, config, clock)
    }

    /// Opens the journal in the given store (the simulator passes its own disk).
    pub fn open_storage(
        storage: Box<dyn JournalStore>,
        path: PathBuf,
        config: JournalConfig,
        clock: SharedClock,
    ) -> Result<Journal> {
        let db = open_database(storage.as_ref(), &path)?;
        let backlog = Arc::new(Backlog::default());
        let (ambiguous_tx, ambiguous_rx) = mpsc::unbounded_channel();
        let mut writer = Writer {
            db: Some(db),
            storage,
            path: path.clone(),
            config,
            clock,
            backlog: backlog.clone(),
            next_seq: 0,
            durable_floor: 0,
            dedup_len: 0,
            dirty: false,
            retry_marks: Vec::new(),
            last_durable_ms: 0,
            ambiguous: ambiguous_tx,
            unsynced_marks: Vec::new(),
            max_key: 0,
            full: false,
            force_durable: false,
        };
        writer.load_state()?;
        info!(
            path = %path.display(),
            next_seq = writer.next_seq,
            backlog_entries = backlog.entries(),
            backlog_bytes = backlog.bytes(),
            dedup_ids = writer.dedup_len,
            "journal opened"
        );
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let sync_interval = Duration::from_millis(writer.config.sync_interval_ms.max(1));
        // Completion marks are committed without fsync; the sync ticker bounds how long they
        // stay non-durable when no durable write comes along. It holds only a weak sender, so
        // the writer still stops when the last handle is dropped.
        let weak = tx.downgrade();
        match writer.config.writer {
            WriterRuntime::Thread => {
                std::thread::Builder::new()
                    .name("sidelog-journal".into())
                    .spawn(move || writer.run_thread(rx))
                    .map_err(|e| {
                        JournalError::Io(format!("cannot start the journal writer: {e}"))
                    })?;
                std::thread::Builder::new()
                    .name("sidelog-journal-sync".into())
                    .spawn(move || {
                        loop {
                            std::thread::sleep(sync_interval);
                            let Some(tx) = weak.upgrade() else { break };
                            // A full queue means commits are happening anyway.
                            let _ = tx.try_send(Command::SyncIfDirty);
                        }
                    })
                    .map_err(|e| {
                        JournalError::Io(format!("cannot start the journal sync ticker: {e}"))
                    })?;
            }
            WriterRuntime::Task => {
                crate::spawn::spawn(writer.run_task(rx));
                crate::spawn::spawn(async move {
                    let mut interval = tokio::time::interval(sync_interval);
                    interval.tick().await;
                    loop {
                        interval.tick().await;
                        let Some(tx) = weak.upgrade() else { break };
                        let _ = tx.try_send(Command::SyncIfDirty);
                    }
                });
            }
        }
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

    /// Appends inputs and enters their ids into the dedup window. **Durable**: returns after
    /// the fsync, with one sequence per input, in order.
    pub async fn append_inputs(
        &self,
        inputs: Vec<Message>,
        received_at_ms: i64,
    ) -> Result<Vec<Seq>> {
        self.call(|reply| Command::AppendInputs {
            inputs,
            received_at_ms,
            reply,
        })
        .await
    }

    /// Like [`Journal::append_inputs`], but only queues the write and returns a receiver for its
    /// outcome, so the caller can do other work (HML calls the handler) while it commits.
    pub async fn start_append_inputs(
        &self,
        inputs: Vec<Message>,
        received_at_ms: i64,
    ) -> Result<oneshot::Receiver<Result<Vec<Seq>>>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::AppendInputs {
                inputs,
                received_at_ms,
                reply,
            })
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
        self.call(|reply| Command::RecordOutputs {
            groups,
            durable,
            reply,
        })
        .await
    }

    /// Removes delivered outputs and completed inputs. **Not durable**: losing it only re-sends,
    /// and deterministic ids make that a harmless duplicate. Waits only for queue space.
    pub async fn complete(&self, outputs: Vec<Seq>, inputs: Vec<Seq>) -> Result<()> {
        if outputs.is_empty() && inputs.is_empty() {
            return Ok(());
        }
        self.tx
            .send(Command::Complete {
                outputs,
                inputs,
                reply: None,
            })
            .await
            .map_err(|_| JournalError::Closed)
    }

    /// Moves messages to the dead-letter table, removing the entries they replace. **Durable.**
    pub async fn dead_letter(&self, letters: Vec<NewDeadLetter>) -> Result<Vec<Seq>> {
        self.call(|reply| Command::DeadLetter { letters, reply })
            .await
    }

    /// Makes everything written so far durable (one `Immediate` commit if anything is pending).
    pub async fn sync(&self) -> Result<()> {
        self.call(|reply| Command::Sync { reply }).await
    }

    /// Makes everything durable and releases the file, so it can be opened again in this
    /// process. Every handle fails with `Closed` afterwards.
    pub async fn close(&self) -> Result<()> {
        self.call(|reply| Command::Close { reply }).await
    }

    /// Up to `limit` inputs with sequence ≥ `from`, in sequence order.
    pub async fn scan_inputs(&self, from: Seq, limit: usize) -> Result<Vec<StoredInput>> {
        self.call(|reply| Command::ScanInputs { from, limit, reply })
            .await
    }

    /// Up to `limit` outputs with sequence ≥ `from`, in sequence order.
    pub async fn scan_outputs(&self, from: Seq, limit: usize) -> Result<Vec<StoredOutput>> {
        self.call(|reply| Command::ScanOutputs { from, limit, reply })
            .await
    }

    /// Up to `limit` dead letters with sequence ≥ `from`, in sequence order.
    pub async fn scan_dead_letters(
        &self,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<StoredDeadLetter>> {
        self.call(|reply| Command::ScanDeadLetters { from, limit, reply })
            .await
    }

    /// The persisted dedup window, oldest first (bounded by the window's count).
    pub async fn load_dedup(&self) -> Result<Vec<DedupRecord>> {
        self.call(|reply| Command::LoadDedup { reply }).await
    }

    pub async fn summary(&self) -> Result<Summary> {
        self.call(|reply| Command::Summary { reply }).await
    }

    /// When the oldest undelivered entry was written (unix ms), or `None` with no backlog.
    pub async fn oldest_backlog_ms(&self) -> Result<Option<i64>> {
        self.call(|reply| Command::OldestBacklog { reply }).await
    }

    /// Moves the selected dead letters back into the backlog (durably), under new contiguous
    /// sequences, which it returns: the caller dispatches them (or the next start replays them).
    pub async fn requeue_dead_letters(&self, selection: DeadLetterSelection) -> Result<Vec<Seq>> {
        self.call(|reply| Command::Requeue { selection, reply })
            .await
    }

    /// Deletes the selected dead letters for good (durably); returns how many there were.
    pub async fn purge_dead_letters(&self, selection: DeadLetterSelection) -> Result<u64> {
        self.call(|reply| Command::Purge { selection, reply }).await
    }
}

fn open_database(store: &dyn JournalStore, path: &Path) -> Result<Database> {
    let corrupted = |reason: String| JournalError::Corrupted {
        path: path.to_owned(),
        reason,
    };
    let io = |e: std::io::Error| JournalError::from_io(&e);
    if !store.exists().map_err(io)? {
        // A new journal: built and synced under a temporary name, then renamed into place.
        let db = redb::Builder::new()
            .create_with_backend(BoxedBackend(store.create_temp().map_err(io)?))
            .map_err(|e| JournalError::from_redb(e, path))?;
        let txn = db
            .begin_write()
            .map_err(|e| JournalError::from_redb(e, path))?;
        {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| JournalError::from_redb(e, path))?;
            meta.insert(META_FORMAT, FILE_FORMAT)
                .map_err(|e| JournalError::from_redb(e, path))?;
        }
        txn.commit().map_err(|e| JournalError::from_redb(e, path))?;
        drop(db);
        store.publish_temp().map_err(io)?;
        info!(path = %path.display(), "created a new journal");
    }
    let backend = store.open().map_err(io)?;
    // redb would format an empty file as a new database. sidelog never leaves an empty
    // journal behind (a new one is built under a temporary name and renamed into place), so
    // an empty journal.redb was truncated: starting on it would silently drop the backlog.
    if backend.len().map_err(io)? == 0 {
        return Err(corrupted(
            "the file is empty (0 bytes): it was truncated or replaced".into(),
        ));
    }
    match redb::Builder::new().create_with_backend(BoxedBackend(backend)) {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason))) => {
            Err(corrupted(reason))
        }
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(JournalError::InUse {
            path: path.to_owned(),
        }),
        Err(redb::DatabaseError::UpgradeRequired(v)) => Err(JournalError::Format {
            path: path.to_owned(),
            found: u64::from(v),
        }),
        Err(e) => {
            let e: redb::Error = e.into();
            match e {
                redb::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                    Err(corrupted(io.to_string()))
                }
                other => Err(JournalError::from_redb(other, path)),
            }
        }
    }
}

/// redb's file backend with a size limit: growing the file past `max_len` fails as
/// `StorageFull`, exactly as a full disk would. It can also make fsync slower, to benchmark
/// the modes as on a real disk (fsync on a virtual disk takes ~40 µs, on real ones 0.1–10 ms).
#[derive(Debug)]
struct QuotaBackend {
    inner: redb::backends::FileBackend,
    max_len: u64,
    fsync_latency: Duration,
    reserve: Arc<std::sync::atomic::AtomicBool>,
}

impl redb::StorageBackend for QuotaBackend {
    fn len(&self) -> std::result::Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::result::Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::result::Result<(), std::io::Error> {
        let limit = if self.reserve.load(Ordering::Relaxed) {
            self.max_len.saturating_add(reserve_bytes(self.max_len))
        } else {
            self.max_len
        };
        if len > limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!("journal size limit of {} bytes reached", self.max_len),
            ));
        }
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::result::Result<(), std::io::Error> {
        if !self.fsync_latency.is_zero() {
            // The writer runs on its own thread: sleeping here stalls only the journal.
            std::thread::sleep(self.fsync_latency);
        }
        let started = tokio::time::Instant::now();
        let result = self.inner.sync_data();
        metrics::histogram!(crate::metrics::JOURNAL_FSYNC_SECONDS)
            .record(started.elapsed().as_secs_f64());
        result
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::result::Result<(), std::io::Error> {
        self.inner.write(offset, data)
    }
    fn close(&self) -> std::result::Result<(), std::io::Error> {
        self.inner.close()
    }
    fn try_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> std::result::Result<bool, redb::BackendError> {
        self.inner.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> std::result::Result<bool, redb::BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }
    fn unlock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> std::result::Result<(), redb::BackendError> {
        self.inner.unlock_range(start, end)
    }
}

/// Lets a boxed backend (chosen at run time) be handed to redb, which takes `impl StorageBackend`.
#[derive(Debug)]
struct BoxedBackend(Box<dyn redb::StorageBackend>);

impl redb::StorageBackend for BoxedBackend {
    fn len(&self) -> std::result::Result<u64, std::io::Error> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::result::Result<(), std::io::Error> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::result::Result<(), std::io::Error> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> std::result::Result<(), std::io::Error> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::result::Result<(), std::io::Error> {
        self.0.write(offset, data)
    }
    fn close(&self) -> std::result::Result<(), std::io::Error> {
        self.0.close()
    }
    fn try_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> std::result::Result<bool, redb::BackendError> {
        self.0.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> std::result::Result<bool, redb::BackendError> {
        self.0.try_lock_shared_range(start, end)
    }
    fn unlock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> std::result::Result<(), redb::BackendError> {
        self.0.unlock_range(start, end)
    }
}

/// Encodes a record: the format byte, then the protobuf.
pub fn encode_record(message: &impl prost::Message) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + message.encoded_len());
    buf.push(RECORD_FORMAT);
    message
        .encode(&mut buf)
        .expect("encoding into a Vec cannot run out of space");
    buf
}

/// Encodes an `InputEntry` from a borrowed message: the same bytes as [`encode_record`] of
/// the entry, without cloning the message (ids, keys, headers) on the writer's hot path.
pub fn encode_input(message: &Message, received_at_ms: i64) -> Vec<u8> {
    use prost::encoding::{int64, message as embedded};
    let mut buf = Vec::with_capacity(1 + embedded::encoded_len(1, message) + 11);
    buf.push(RECORD_FORMAT);
    embedded::encode(1, message, &mut buf);
    if received_at_ms != 0 {
        int64::encode(2, &received_at_ms, &mut buf);
    }
    buf
}

/// Encodes an `OutputEntry` from a borrowed message (see [`encode_input`]).
pub fn encode_output(message: &Message, input_seq: u64, recorded_at_ms: i64) -> Vec<u8> {
    use prost::encoding::{int64, message as embedded, uint64};
    let mut buf = Vec::with_capacity(1 + embedded::encoded_len(1, message) + 22);
    buf.push(RECORD_FORMAT);
    embedded::encode(1, message, &mut buf);
    if input_seq != 0 {
        uint64::encode(2, &input_seq, &mut buf);
    }
    if recorded_at_ms != 0 {
        int64::encode(3, &recorded_at_ms, &mut buf);
    }
    buf
}

/// Decodes a record written by [`encode_record`].
pub fn decode_record<M: prost::Message + Default>(
    table: &'static str,
    key: u64,
    bytes: &[u8],
) -> Result<M> {
    let decode_err = |reason: String| JournalError::Decode { table, key, reason };
    match bytes.split_first() {
        Some((&RECORD_FORMAT, body)) => M::decode(body).map_err(|e| decode_err(e.to_string())),
        Some((other, _)) => Err(decode_err(format!("unknown record format {other}"))),
        None => Err(decode_err("empty record".into())),
    }
}

/// The writer thread's state. Owns the database.
struct Writer {
    /// `None` after an I/O error until the file is reopened.
    db: Option<Database>,
    storage: Box<dyn JournalStore>,
    path: PathBuf,
    config: JournalConfig,
    clock: SharedClock,
    backlog: Arc<Backlog>,
    next_seq: u64,
    /// Sequences below this are covered by a durable `seq_floor`.
    durable_floor: u64,
    dedup_len: u64,
    /// Non-durable commits happened since the last durable one.
    dirty: bool,
    /// Completion marks whose commit failed: idempotent, so kept and applied again with the
    /// next commit instead of being lost (which would leave their entries in the backlog).
    retry_marks: Vec<Command>,
    /// Where reopening reports the records of failed commits that are in the file after all.
    ambiguous: mpsc::UnboundedSender<SeqRange>,
    /// Completion marks committed without fsync since the last durable commit. Reopening the
    /// file after an I/O error loses those commits (redb holds them in its process's write
    /// buffer), so they are applied again: otherwise their entries would come back to life.
    unsynced_marks: Vec<(Vec<Seq>, Vec<Seq>)>,
    /// The highest key found in the file by the last `load_state`.
    max_key: u64,
    last_durable_ms: i64,
    /// The last commit failed for lack of space: completion marks are committed on their own
    /// first (with the store's headroom), so that the backlog drains and frees space.
    full: bool,
    /// Make the next commit durable whatever it holds (pages freed by a commit are reused only
    /// once a durable commit follows it).
    force_durable: bool,
}

/// The outcome of applying one command inside a transaction, sent after the commit.
enum Applied {
    Seqs(Vec<Seq>),
    Recorded(Vec<RecordedOutputs>),
    Count(u64),
    Unit,
}

impl Writer {
    fn db(&mut self) -> Result<&Database> {
        if self.db.is_none() {
            warn!(path = %self.path.display(), "reopening the journal after an I/O error");
            let db = open_database(self.storage.as_ref(), &self.path)?;
            self.db = Some(db);
            let before = self.next_seq;
            self.load_state()?;
            for (outputs, inputs) in self.unsynced_marks.drain(..) {
                self.retry_marks.push(Command::Complete {
                    outputs,
                    inputs,
                    reply: None,
                });
            }
            if self.max_key >= before {
                let range = SeqRange {
                    from: Seq(before),
                    to: Seq(self.max_key + 1),
                };
                warn!(
                    from = before,
                    to = self.max_key + 1,
                    "a failed commit is in the journal after all; its records will be replayed"
                );
                // Nobody listening (inspect, tests): the records wait for the next start.
                let _ = self.ambiguous.send(range);
            }
        }
        Ok(self.db.as_ref().expect("just reopened"))
    }

    /// Reads the counters from `meta`, creating the tables on a new file.
    fn load_state(&mut self) -> Result<()> {
        let path = self.path.clone();
        let db = self
            .db
            .as_ref()
            .expect("load_state runs with an open database");
        let err = |e: redb::Error| JournalError::from_redb(e, &path);
        let txn = db.begin_write().map_err(|e| err(e.into()))?;
        let (format, floor, bytes, entries, max_key, dedup_len) = {
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            let inputs = txn.open_table(INPUTS).map_err(|e| err(e.into()))?;
            let outputs = txn.open_table(OUTPUTS).map_err(|e| err(e.into()))?;
            let dead = txn.open_table(DEAD_LETTERS).map_err(|e| err(e.into()))?;
            let order = txn.open_table(DEDUP_ORDER).map_err(|e| err(e.into()))?;
            txn.open_table(RECORDED).map_err(|e| err(e.into()))?;
            txn.open_table(DEDUP).map_err(|e| err(e.into()))?;
            let get = |meta: &redb::Table<&str, u64>, k: &str| -> Result<Option<u64>> {
                Ok(meta.get(k).map_err(|e| err(e.into()))?.map(|v| v.value()))
            };
            let format = match get(&meta, META_FORMAT)? {
                Some(f) => f,
                None => {
                    meta.insert(META_FORMAT, FILE_FORMAT)
                        .map_err(|e| err(e.into()))?;
                    FILE_FORMAT
                }
            };
            let mut max_key = 0u64;
            for last in [
                inputs
                    .last()
                    .map_err(|e| err(e.into()))?
                    .map(|(k, _)| k.value()),
                outputs
                    .last()
                    .map_err(|e| err(e.into()))?
                    .map(|(k, _)| k.value()),
                dead.last()
                    .map_err(|e| err(e.into()))?
                    .map(|(k, _)| k.value()),
                order
                    .last()
                    .map_err(|e| err(e.into()))?
                    .map(|(k, _)| k.value()),
            ]
            .into_iter()
            .flatten()
            {
                max_key = max_key.max(last);
            }
            (
                format,
                get(&meta, META_SEQ_FLOOR)?.unwrap_or(1),
                get(&meta, META_BACKLOG_BYTES)?.unwrap_or(0),
                get(&meta, META_BACKLOG_ENTRIES)?.unwrap_or(0),
                max_key,
                order.len().map_err(|e| err(e.into()))?,
            )
        };
        if format != FILE_FORMAT {
            return Err(JournalError::Format {
                path: self.path.clone(),
                found: format,
            });
        }
        txn.commit().map_err(|e| err(e.into()))?;
        self.next_seq = floor.max(max_key + 1);
        self.max_key = max_key;
        self.durable_floor = floor;
        self.dedup_len = dedup_len;
        self.backlog.set(bytes, entries);
        self.dirty = false;
        self.last_durable_ms = self.clock.now_ms();
        Ok(())
    }

    fn run_thread(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            if let Some(reply) = self.group(first, &mut rx) {
                drop(reply.send(self.close()));
                // Closed: answer everything else with `Closed` until the handles are gone.
                while let Some(cmd) = rx.blocking_recv() {
                    cmd.fail(JournalError::Closed);
                }
                return;
            }
        }
        self.stop();
    }

    async fn run_task(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.recv().await {
            if let Some(reply) = self.group(first, &mut rx) {
                drop(reply.send(self.close()));
                while let Some(cmd) = rx.recv().await {
                    cmd.fail(JournalError::Closed);
                }
                return;
            }
        }
        self.stop();
    }

    /// Every handle is gone: make what is pending durable before the writer ends.
    fn stop(&mut self) {
        if let Err(e) = self.close() {
            error!(error = %e, "the journal's last sync failed; the last completion marks are lost and those entries will be re-sent");
        }
        debug!("journal writer stopped");
    }

    /// Handles `first` and every command already waiting, up to the record limit, as one
    /// group commit, then the reads among them. Returns the reply of a `Close` if one came.
    fn group(&mut self, first: Command, rx: &mut mpsc::Receiver<Command>) -> Option<Reply<()>> {
        let max_records = self.config.commit_max_records.max(1);
        let mut writes: Vec<Command> = Vec::new();
        let mut reads: Vec<Command> = Vec::new();
        let mut close = None;
        let mut next = Some(first);
        let mut records = 0;
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Close { reply } => {
                    close = Some(reply);
                    break;
                }
                cmd if cmd.is_read() => reads.push(cmd),
                cmd => {
                    records += cmd.records();
                    writes.push(cmd);
                }
            }
            if records < max_records {
                next = rx.try_recv().ok();
            }
        }
        if !writes.is_empty() {
            self.commit(&mut writes);
        }
        for read in reads {
            self.read(read);
        }
        close
    }

    /// Makes pending non-durable commits durable and releases the file.
    fn close(&mut self) -> Result<()> {
        let result = if self.dirty {
            let (reply, rx) = oneshot::channel();
            let mut last = vec![Command::Sync { reply }];
            self.commit(&mut last);
            let mut rx = rx;
            rx.try_recv().unwrap_or(Err(JournalError::Closed))
        } else {
            Ok(())
        };
        self.db = None;
        result
    }

    fn commit(&mut self, cmds: &mut Vec<Command>) {
        if !self.retry_marks.is_empty() {
            let mut all = std::mem::take(&mut self.retry_marks);
            all.append(cmds);
            *cmds = all;
        }
        if self.full {
            // Out of space: appends cannot succeed until entries are removed, and removing
            // needs pages too. Marks go first, alone, into the headroom; then the rest.
            let (mut marks, rest): (Vec<Command>, Vec<Command>) = cmds
                .drain(..)
                .partition(|c| matches!(c, Command::Complete { .. } | Command::Purge { .. }));
            *cmds = rest;
            if !marks.is_empty() {
                self.storage.set_reserve(true);
                self.force_durable = true;
                self.commit_now(&mut marks);
                self.force_durable = false;
                self.storage.set_reserve(false);
                if self.full {
                    // Still failing: the rest would fail the same way; it waits with the marks.
                    for cmd in cmds.drain(..) {
                        match cmd {
                            Command::SyncIfDirty => {}
                            cmd => cmd.fail(JournalError::StorageFull(
                                "the journal is full; removing delivered entries first".into(),
                            )),
                        }
                    }
                    return;
                }
                info!("space freed in the full journal by removing delivered entries");
            }
            if cmds.is_empty() {
                return;
            }
        }
        self.commit_now(cmds);
    }

    fn commit_now(&mut self, cmds: &mut Vec<Command>) {
        if !self.dirty && cmds.iter().all(|c| matches!(c, Command::SyncIfDirty)) {
            // Nothing pending: the ticker found the journal clean.
            cmds.clear();
            return;
        }
        let now = self.clock.now_ms();
        match self.try_commit(cmds, now) {
            Ok(results) => {
                self.full = false;
                for (cmd, applied) in cmds.drain(..).zip(results) {
                    reply_ok(cmd, applied);
                }
            }
            Err(err) => {
                self.full = matches!(err, JournalError::StorageFull(_));
                if err.is_retryable() {
                    // redb may need the file reopened after an I/O error (PreviousIo).
                    self.db = None;
                    warn!(error = %err, commands = cmds.len(), "journal commit failed; nothing in it is acknowledged");
                } else {
                    error!(error = %err, commands = cmds.len(), "journal commit failed");
                }
                for cmd in cmds.drain(..) {
                    match cmd {
                        Command::Complete { .. } if err.is_retryable() => {
                            self.retry_marks.push(cmd)
                        }
                        cmd => cmd.fail(err.clone()),
                    }
                }
            }
        }
    }

    fn try_commit(&mut self, cmds: &mut [Command], now: i64) -> Result<Vec<Applied>> {
        // Reopen first (after an I/O error): it reloads the counters read below. A commit that
        // reported failure may still be in the file, and its sequences must not be reused.
        self.db()?;
        let started = tokio::time::Instant::now();
        let sync_due = self.dirty
            && now.saturating_sub(self.last_durable_ms) >= self.config.sync_interval_ms as i64;
        let records: usize = cmds.iter().map(Command::records).sum();
        // Sequences handed out by this commit must stay below the durable floor unless the
        // commit itself is durable (module invariant). Completion marks take none: right after
        // an open (next_seq is at the floor) they stay non-durable like any others.
        let seqs: usize = cmds.iter().map(Command::seqs_taken).sum();
        let seq_exhausts_floor = seqs > 0 && self.next_seq + seqs as u64 + 1 >= self.durable_floor;
        let sync_asked = self.dirty && cmds.iter().any(|c| matches!(c, Command::SyncIfDirty));
        let durable = cmds.iter().any(Command::needs_durability)
            || self.force_durable
            || sync_due
            || sync_asked
            || seq_exhausts_floor;

        let mut next_seq = self.next_seq;
        let mut dedup_len = self.dedup_len;
        let path = self.path.clone();
        let db = self.db.as_ref().expect("opened at the start of try_commit");
        let err = |e: redb::Error| JournalError::from_redb(e, &path);
        let mut txn = db.begin_write().map_err(|e| err(e.into()))?;
        // The simulator's deliberate bug: nothing is fsynced, though replies say durable.
        let fsync = durable && !self.config.bug_ack_before_fsync;
        txn.set_durability(if fsync {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        })
        .map_err(|e| JournalError::Io(e.to_string()))?;
        let mut results = Vec::with_capacity(cmds.len());
        let (bytes, entries, written_records, written_bytes) = {
            let mut t = Tables {
                inputs: txn.open_table(INPUTS).map_err(|e| err(e.into()))?,
                outputs: txn.open_table(OUTPUTS).map_err(|e| err(e.into()))?,
                recorded: txn.open_table(RECORDED).map_err(|e| err(e.into()))?,
                dead: txn.open_table(DEAD_LETTERS).map_err(|e| err(e.into()))?,
                dedup: txn.open_table(DEDUP).map_err(|e| err(e.into()))?,
                dedup_order: txn.open_table(DEDUP_ORDER).map_err(|e| err(e.into()))?,
                meta: txn.open_table(META).map_err(|e| err(e.into()))?,
                next_seq: &mut next_seq,
                dedup_len: &mut dedup_len,
                bytes_delta: 0,
                entries_delta: 0,
                dedup_inserted: 0,
                written_records: 0,
                written_bytes: 0,
                now,
            };
            for cmd in cmds.iter() {
                results.push(t.apply(cmd).map_err(err)?);
            }
            t.evict_dedup(&self.config).map_err(err)?;
            let bytes = (self.backlog.bytes() as i64 + t.bytes_delta).max(0) as u64;
            let entries = (self.backlog.entries() as i64 + t.entries_delta).max(0) as u64;
            t.meta
                .insert(META_BACKLOG_BYTES, bytes)
                .map_err(|e| err(e.into()))?;
            t.meta
                .insert(META_BACKLOG_ENTRIES, entries)
                .map_err(|e| err(e.into()))?;
            if durable {
                t.meta
                    .insert(META_SEQ_FLOOR, *t.next_seq + SEQ_RESERVE)
                    .map_err(|e| err(e.into()))?;
            }
            (bytes, entries, t.written_records, t.written_bytes)
        };
        txn.commit().map_err(|e| err(e.into()))?;
        // Committed: from here on the state in memory follows the file.
        if durable {
            self.durable_floor = next_seq + SEQ_RESERVE;
            self.dirty = false;
            self.last_durable_ms = now;
            self.unsynced_marks.clear();
        } else {
            self.dirty = true;
            for cmd in cmds.iter() {
                match cmd {
                    Command::Complete {
                        outputs, inputs, ..
                    } => self.unsynced_marks.push((outputs.clone(), inputs.clone())),
                    // An hml input with no outputs is completed by recording its empty group.
                    Command::RecordOutputs { groups, .. } => {
                        let done: Vec<Seq> = groups
                            .iter()
                            .filter(|g| g.outputs.is_empty())
                            .filter_map(|g| g.input_seq)
                            .collect();
                        if !done.is_empty() {
                            self.unsynced_marks.push((Vec::new(), done));
                        }
                    }
                    _ => {}
                }
            }
        }
        self.next_seq = next_seq;
        self.dedup_len = dedup_len;
        self.backlog.set(bytes, entries);
        metrics::counter!(crate::metrics::JOURNAL_COMMITS, "durability" => if fsync { "fsync" } else { "none" })
            .increment(1);
        metrics::counter!(crate::metrics::JOURNAL_RECORDS).increment(written_records);
        metrics::counter!(crate::metrics::JOURNAL_RECORD_BYTES).increment(written_bytes);
        metrics::histogram!(crate::metrics::JOURNAL_RECORDS_PER_COMMIT)
            .record(written_records as f64);
        metrics::histogram!(crate::metrics::JOURNAL_COMMIT_SECONDS)
            .record(started.elapsed().as_secs_f64());
        metrics::gauge!(crate::metrics::BACKLOG_ENTRIES).set(entries as f64);
        metrics::gauge!(crate::metrics::BACKLOG_BYTES).set(bytes as f64);
        debug!(commands = cmds.len(), records, durable, "journal commit");
        Ok(results)
    }

    fn read(&mut self, cmd: Command) {
        let result = self.try_read(&cmd);
        match (cmd, result) {
            (cmd, Err(e)) => cmd.fail(e),
            (Command::ScanInputs { reply, .. }, Ok(ReadResult::Inputs(v))) => {
                drop(reply.send(Ok(v)))
            }
            (Command::ScanOutputs { reply, .. }, Ok(ReadResult::Outputs(v))) => {
                drop(reply.send(Ok(v)))
            }
            (Command::ScanDeadLetters { reply, .. }, Ok(ReadResult::Dead(v))) => {
                drop(reply.send(Ok(v)))
            }
            (Command::LoadDedup { reply }, Ok(ReadResult::Dedup(v))) => drop(reply.send(Ok(v))),
            (Command::Summary { reply }, Ok(ReadResult::Summary(v))) => drop(reply.send(Ok(v))),
            (Command::OldestBacklog { reply }, Ok(ReadResult::Oldest(v))) => {
                drop(reply.send(Ok(v)))
            }
            (_, Ok(_)) => unreachable!("try_read answers each read with its own kind"),
        }
    }

    fn try_read(&mut self, cmd: &Command) -> Result<ReadResult> {
        self.db()?;
        let next_seq = self.next_seq;
        let backlog_bytes = self.backlog.bytes();
        let path = self.path.clone();
        let db = self.db.as_ref().expect("opened at the start of try_read");
        let err = |e: redb::Error| JournalError::from_redb(e, &path);
        let txn = db.begin_read().map_err(|e| err(e.into()))?;
        match cmd {
            Command::ScanInputs { from, limit, .. } => {
                let inputs = txn.open_table(INPUTS).map_err(|e| err(e.into()))?;
                let recorded = txn.open_table(RECORDED).map_err(|e| err(e.into()))?;
                let outputs = txn.open_table(OUTPUTS).map_err(|e| err(e.into()))?;
                let mut out = Vec::with_capacity((*limit).min(4096));
                for row in inputs
                    .range(from.0..)
                    .map_err(|e| err(e.into()))?
                    .take(*limit)
                {
                    let (k, v) = row.map_err(|e| err(e.into()))?;
                    let key = k.value();
                    let entry = decode_record::<InputEntry>("inputs", key, v.value())?;
                    let range = recorded
                        .get(key)
                        .map_err(|e| err(e.into()))?
                        .map(|r| r.value());
                    let state = match range {
                        None => InputState::Unhandled,
                        Some((first, count)) => {
                            let end = first + u64::from(count);
                            let mut left = outputs.range(first..end).map_err(|e| err(e.into()))?;
                            if left.next().is_some() {
                                InputState::OutputsPending
                            } else {
                                InputState::Finished
                            }
                        }
                    };
                    out.push(StoredInput {
                        seq: Seq(key),
                        entry,
                        state,
                    });
                }
                Ok(ReadResult::Inputs(out))
            }
            Command::ScanOutputs { from, limit, .. } => {
                let outputs = txn.open_table(OUTPUTS).map_err(|e| err(e.into()))?;
                let mut out = Vec::with_capacity((*limit).min(4096));
                for row in outputs
                    .range(from.0..)
                    .map_err(|e| err(e.into()))?
                    .take(*limit)
                {
                    let (k, v) = row.map_err(|e| err(e.into()))?;
                    let key = k.value();
                    let entry = decode_record::<OutputEntry>("outputs", key, v.value())?;
                    out.push(StoredOutput {
                        seq: Seq(key),
                        entry,
                    });
                }
                Ok(ReadResult::Outputs(out))
            }
            Command::ScanDeadLetters { from, limit, .. } => {
                let dead = txn.open_table(DEAD_LETTERS).map_err(|e| err(e.into()))?;
                let mut out = Vec::with_capacity((*limit).min(4096));
                for row in dead
                    .range(from.0..)
                    .map_err(|e| err(e.into()))?
                    .take(*limit)
                {
                    let (k, v) = row.map_err(|e| err(e.into()))?;
                    let key = k.value();
                    let letter = decode_record::<DeadLetter>("dead_letters", key, v.value())?;
                    out.push(StoredDeadLetter {
                        seq: Seq(key),
                        letter,
                    });
                }
                Ok(ReadResult::Dead(out))
            }
            Command::LoadDedup { .. } => {
                let order = txn.open_table(DEDUP_ORDER).map_err(|e| err(e.into()))?;
                let dedup = txn.open_table(DEDUP).map_err(|e| err(e.into()))?;
                let mut out = Vec::new();
                for row in order.iter().map_err(|e| err(e.into()))? {
                    let (k, v) = row.map_err(|e| err(e.into()))?;
                    let id = v.value();
                    if let Some(entry) = dedup.get(id).map_err(|e| err(e.into()))? {
                        let (seq, recorded_at_ms) = entry.value();
                        if seq == k.value() {
                            out.push(DedupRecord {
                                id: id.to_owned(),
                                seq: Seq(seq),
                                recorded_at_ms,
                            });
                        }
                    }
                }
                Ok(ReadResult::Dedup(out))
            }
            Command::Summary { .. } => {
                let len = |def: TableDefinition<u64, &[u8]>| -> Result<u64> {
                    let t = txn.open_table(def).map_err(|e| err(e.into()))?;
                    t.len().map_err(|e| err(e.into()))
                };
                let dedup = txn.open_table(DEDUP).map_err(|e| err(e.into()))?;
                Ok(ReadResult::Summary(Summary {
                    inputs: len(INPUTS)?,
                    outputs: len(OUTPUTS)?,
                    dead_letters: len(DEAD_LETTERS)?,
                    dedup_ids: dedup.len().map_err(|e| err(e.into()))?,
                    backlog_bytes,
                    next_seq,
                    oldest_backlog_ms: oldest_backlog(&txn).map_err(err)?,
                }))
            }
            Command::OldestBacklog { .. } => {
                Ok(ReadResult::Oldest(oldest_backlog(&txn).map_err(err)?))
            }
            _ => unreachable!("only reads are passed to try_read"),
        }
    }
}

enum ReadResult {
    Inputs(Vec<StoredInput>),
    Outputs(Vec<StoredOutput>),
    Dead(Vec<StoredDeadLetter>),
    Dedup(Vec<DedupRecord>),
    Summary(Summary),
    Oldest(Option<i64>),
}

/// When the oldest backlog entry was written: the first (lowest-sequence) entry of `inputs` and
/// of `outputs`, whichever is older. Two lookups, whatever the backlog's size.
fn oldest_backlog(txn: &redb::ReadTransaction) -> Result<Option<i64>, redb::Error> {
    let inputs = txn.open_table(INPUTS)?;
    let outputs = txn.open_table(OUTPUTS)?;
    let input = match inputs.first()? {
        Some((k, v)) => decode_record::<InputEntry>("inputs", k.value(), v.value())
            .ok()
            .map(|e| e.received_at_ms),
        None => None,
    };
    let output = match outputs.first()? {
        Some((k, v)) => decode_record::<OutputEntry>("outputs", k.value(), v.value())
            .ok()
            .map(|e| e.recorded_at_ms),
        None => None,
    };
    Ok(match (input, output) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

fn reply_ok(cmd: Command, applied: Applied) {
    // A caller that stopped waiting has nothing to be told.
    match (cmd, applied) {
        (Command::AppendInputs { reply, .. }, Applied::Seqs(s)) => drop(reply.send(Ok(s))),
        (Command::DeadLetter { reply, .. }, Applied::Seqs(s)) => drop(reply.send(Ok(s))),
        (Command::RecordOutputs { reply, .. }, Applied::Recorded(r)) => drop(reply.send(Ok(r))),
        (Command::Complete { reply, .. }, Applied::Unit) => {
            if let Some(reply) = reply {
                drop(reply.send(Ok(())));
            }
        }
        (Command::Sync { reply }, Applied::Unit) => drop(reply.send(Ok(()))),
        (Command::SyncIfDirty, Applied::Unit) => {}
        (Command::Requeue { reply, .. }, Applied::Seqs(s)) => drop(reply.send(Ok(s))),
        (Command::Purge { reply, .. }, Applied::Count(n)) => drop(reply.send(Ok(n))),
        _ => unreachable!("apply answers each write with its own kind"),
    }
}

/// Which table a new record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NewRecord {
    Input,
    Output,
    DeadLetter,
}

/// The open tables of one write transaction, and what it changed.
struct Tables<'txn> {
    inputs: redb::Table<'txn, u64, &'static [u8]>,
    outputs: redb::Table<'txn, u64, &'static [u8]>,
    recorded: redb::Table<'txn, u64, (u64, u32)>,
    dead: redb::Table<'txn, u64, &'static [u8]>,
    dedup: redb::Table<'txn, &'static str, (u64, i64)>,
    dedup_order: redb::Table<'txn, u64, &'static str>,
    meta: redb::Table<'txn, &'static str, u64>,
    next_seq: &'txn mut u64,
    dedup_len: &'txn mut u64,
    bytes_delta: i64,
    entries_delta: i64,
    dedup_inserted: usize,
    /// Records and their encoded bytes written by this transaction (metrics).
    written_records: u64,
    written_bytes: u64,
    now: i64,
}

impl Tables<'_> {
    fn take_seq(&mut self) -> Seq {
        let seq = *self.next_seq;
        *self.next_seq += 1;
        Seq(seq)
    }

    fn apply(&mut self, cmd: &Command) -> Result<Applied, redb::Error> {
        match cmd {
            Command::AppendInputs {
                inputs,
                received_at_ms,
                ..
            } => {
                let mut seqs = Vec::with_capacity(inputs.len());
                for message in inputs {
                    let seq = self.take_seq();
                    let record = encode_input(message, *received_at_ms);
                    self.insert_new(NewRecord::Input, seq, &record)?;
                    self.remember_id(&message.id, seq)?;
                    seqs.push(seq);
                }
                Ok(Applied::Seqs(seqs))
            }
            Command::RecordOutputs { groups, .. } => {
                let mut recorded = Vec::with_capacity(groups.len());
                for group in groups {
                    let mut output_seqs = Vec::with_capacity(group.outputs.len());
                    for message in &group.outputs {
                        let seq = self.take_seq();
                        let record =
                            encode_output(message, group.input_seq.map_or(0, |s| s.0), self.now);
                        self.insert_new(NewRecord::Output, seq, &record)?;
                        output_seqs.push(seq);
                    }
                    if let Some(input) = group.input_seq {
                        if group.outputs.is_empty() {
                            self.remove_input(input)?;
                        } else {
                            let first = output_seqs.first().expect("outputs is not empty").0;
                            self.recorded
                                .insert(input.0, (first, group.outputs.len() as u32))?;
                        }
                    }
                    let ack_seq = match output_seqs.first() {
                        Some(first) => *first,
                        None => self.take_seq(),
                    };
                    if let Some(id) = &group.dedup_id {
                        self.remember_id(id, ack_seq)?;
                    }
                    recorded.push(RecordedOutputs {
                        output_seqs,
                        ack_seq,
                    });
                }
                Ok(Applied::Recorded(recorded))
            }
            Command::Complete {
                outputs, inputs, ..
            } => {
                for seq in outputs {
                    self.remove_output(*seq)?;
                }
                for seq in inputs {
                    self.remove_input(*seq)?;
                }
                Ok(Applied::Unit)
            }
            Command::DeadLetter { letters, .. } => {
                let mut seqs = Vec::with_capacity(letters.len());
                for letter in letters {
                    match letter.remove {
                        Some(EntryRef::Input(seq)) => self.remove_input(seq)?,
                        Some(EntryRef::Output(seq)) => self.remove_output(seq)?,
                        None => {}
                    }
                    if let Some(input) = letter.complete_input {
                        self.remove_input(input)?;
                    }
                    let seq = self.take_seq();
                    let record = encode_record(&DeadLetter {
                        kind: letter.kind as i32,
                        message: Some(letter.message.clone()),
                        reason: letter.reason.clone(),
                        attempts: letter.attempts,
                        dead_at_ms: self.now,
                        input_seq: letter.input_seq.map_or(0, |s| s.0),
                    });
                    self.insert_new(NewRecord::DeadLetter, seq, &record)?;
                    seqs.push(seq);
                }
                Ok(Applied::Seqs(seqs))
            }
            Command::Requeue { selection, .. } => {
                let mut seqs = Vec::new();
                for old in self.select_dead(selection)? {
                    let Some(record) = self.dead.remove(old.0)?.map(|v| v.value().to_vec()) else {
                        continue;
                    };
                    let letter = decode_record::<DeadLetter>("dead_letters", old.0, &record)
                        .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
                    let message = letter.message.unwrap_or_default();
                    let seq = self.take_seq();
                    if letter.kind == dead_letter::Kind::Input as i32 {
                        let record = encode_input(&message, self.now);
                        self.insert_new(NewRecord::Input, seq, &record)?;
                    } else {
                        // On its own: the input it came from may be long completed.
                        let record = encode_output(&message, 0, self.now);
                        self.insert_new(NewRecord::Output, seq, &record)?;
                    }
                    seqs.push(seq);
                }
                Ok(Applied::Seqs(seqs))
            }
            Command::Purge { selection, .. } => {
                let mut purged = 0;
                for seq in self.select_dead(selection)? {
                    if self.dead.remove(seq.0)?.is_some() {
                        purged += 1;
                    }
                }
                Ok(Applied::Count(purged))
            }
            Command::Sync { .. } | Command::SyncIfDirty => Ok(Applied::Unit),
            _ => unreachable!("reads are not applied in a write transaction"),
        }
    }

    /// Writes a record under a sequence just taken, counting it. Sequences are never reused:
    /// finding one taken is a bug that would overwrite an entry, so it crashes here.
    fn insert_new(&mut self, kind: NewRecord, seq: Seq, record: &[u8]) -> Result<(), redb::Error> {
        let (table, name) = match kind {
            NewRecord::Input => (&mut self.inputs, "input"),
            NewRecord::Output => (&mut self.outputs, "output"),
            NewRecord::DeadLetter => (&mut self.dead, "dead-letter"),
        };
        let reused = table.insert(seq.0, record)?.is_some();
        assert!(
            !reused,
            "journal invariant: {name} sequence {} reused",
            seq.0
        );
        self.written_records += 1;
        self.written_bytes += record.len() as u64;
        if kind != NewRecord::DeadLetter {
            // Inputs and outputs are the backlog; dead letters are kept apart from it.
            self.bytes_delta += record.len() as i64;
            self.entries_delta += 1;
        }
        Ok(())
    }

    /// The dead letters a selection names, in sequence order.
    fn select_dead(&self, selection: &DeadLetterSelection) -> Result<Vec<Seq>, redb::Error> {
        match selection {
            DeadLetterSelection::Seqs(seqs) => {
                let mut seqs = seqs.clone();
                seqs.sort_unstable();
                seqs.dedup();
                Ok(seqs)
            }
            DeadLetterSelection::All => {
                let mut all = Vec::new();
                for row in self.dead.iter()? {
                    all.push(Seq(row?.0.value()));
                }
                Ok(all)
            }
        }
    }

    fn remove_input(&mut self, seq: Seq) -> Result<(), redb::Error> {
        if let Some(old) = self.inputs.remove(seq.0)? {
            self.bytes_delta -= old.value().len() as i64;
            self.entries_delta -= 1;
        }
        self.recorded.remove(seq.0)?;
        Ok(())
    }

    fn remove_output(&mut self, seq: Seq) -> Result<(), redb::Error> {
        if let Some(old) = self.outputs.remove(seq.0)? {
            self.bytes_delta -= old.value().len() as i64;
            self.entries_delta -= 1;
        }
        Ok(())
    }

    fn remember_id(&mut self, id: &str, seq: Seq) -> Result<(), redb::Error> {
        if let Some(old) = self.dedup.insert(id, (seq.0, self.now))? {
            // The id was in the window already (its entry had expired in memory): drop the
            // old position so the window counts it once.
            let (old_seq, _) = old.value();
            drop(old);
            if self.dedup_order.remove(old_seq)?.is_some() {
                *self.dedup_len -= 1;
            }
        }
        let reused = self.dedup_order.insert(seq.0, id)?.is_some();
        assert!(
            !reused,
            "journal invariant: dedup sequence {} reused",
            seq.0
        );
        *self.dedup_len += 1;
        self.dedup_inserted += 1;
        Ok(())
    }

    /// Evicts the oldest ids while the window is over its count or they are over its age.
    fn evict_dedup(&mut self, config: &JournalConfig) -> Result<(), redb::Error> {
        let budget = self.dedup_inserted + EVICT_EXTRA_PER_COMMIT;
        let oldest_allowed = self.now.saturating_sub(config.dedup_window_age_ms);
        for _ in 0..budget {
            let Some((seq, id)) = self
                .dedup_order
                .first()?
                .map(|(k, v)| (k.value(), v.value().to_owned()))
            else {
                break;
            };
            let recorded_at = self.dedup.get(id.as_str())?.map(|v| v.value());
            let over_count = *self.dedup_len > config.dedup_window_count;
            let too_old = recorded_at.is_none_or(|(_, at)| at < oldest_allowed);
            if !over_count && !too_old {
                break;
            }
            self.dedup_order.remove(seq)?;
            *self.dedup_len -= 1;
            if recorded_at.is_some_and(|(s, _)| s == seq) {
                self.dedup.remove(id.as_str())?;
            }
        }
        Ok(())
    }
}

/// What can still be read of one table of a damaged journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalvagedTable {
    pub table: &'static str,
    /// Entries read (and, for records, decoded) before the first failure.
    pub readable: u64,
    /// Why reading stopped early, if it did.
    pub error: Option<String>,
}

/// Reads what it can of a journal file that does not open normally, without writing to it:
/// redb's read-only open (no repair), then each table in key order up to its first unreadable
/// entry. Fails when even that open fails (a file that needs repair, or a damaged header).
pub fn salvage(path: &Path) -> std::result::Result<Vec<SalvagedTable>, String> {
    let db = redb::Builder::new()
        .open_read_only(path)
        .map_err(|e| match e {
            redb::DatabaseError::RepairAborted => {
                "the file was not closed cleanly and needs redb's repair, which a read-only look \
                 does not do"
                    .to_owned()
            }
            e => e.to_string(),
        })?;
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let records: [(&'static str, TableDefinition<u64, &[u8]>); 3] = [
        ("inputs", INPUTS),
        ("outputs", OUTPUTS),
        ("dead_letters", DEAD_LETTERS),
    ];
    for (name, def) in records {
        let mut t = SalvagedTable {
            table: name,
            readable: 0,
            error: None,
        };
        let result = (|| -> std::result::Result<(), String> {
            let table = txn.open_table(def).map_err(|e| e.to_string())?;
            for row in table.iter().map_err(|e| e.to_string())? {
                let (k, v) = row.map_err(|e| e.to_string())?;
                let decoded = match name {
                    "inputs" => decode_record::<InputEntry>(name, k.value(), v.value()).map(drop),
                    "outputs" => decode_record::<OutputEntry>(name, k.value(), v.value()).map(drop),
                    _ => decode_record::<DeadLetter>(name, k.value(), v.value()).map(drop),
                };
                decoded.map_err(|e| e.to_string())?;
                t.readable += 1;
            }
            Ok(())
        })();
        t.error = result.err();
        out.push(t);
    }
    let mut t = SalvagedTable {
        table: "dedup",
        readable: 0,
        error: None,
    };
    let result = (|| -> std::result::Result<(), String> {
        let table = txn.open_table(DEDUP).map_err(|e| e.to_string())?;
        for row in table.iter().map_err(|e| e.to_string())? {
            row.map_err(|e| e.to_string())?;
            t.readable += 1;
        }
        Ok(())
    })();
    t.error = result.err();
    out.push(t);
    Ok(out)
}

/// Waits at most `timeout` for the journal writer to drain: used by shutdown.
pub async fn flush(journal: &Journal, timeout: Duration) -> Result<()> {
    match tokio::time::timeout(timeout, journal.sync()).await {
        Ok(r) => r,
        Err(_) => Err(JournalError::Io("timed out flushing the journal".into())),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::clock::SystemClock;

    fn config() -> JournalConfig {
        JournalConfig {
            commit_max_records: 64,
            sync_interval_ms: 1000,
            dedup_window_count: 1000,
            dedup_window_age_ms: 3_600_000,
            max_file_bytes: None,
            ..JournalConfig::default()
        }
    }

    fn open(dir: &Path) -> Journal {
        Journal::open(dir, config(), Arc::new(SystemClock)).expect("open the journal")
    }

    fn msg(id: &str) -> Message {
        Message {
            id: id.into(),
            payload: id.as_bytes().to_vec().into(),
            ..Default::default()
        }
    }

    async fn all_inputs(j: &Journal) -> Vec<StoredInput> {
        j.scan_inputs(Seq(0), usize::MAX).await.unwrap()
    }

    async fn all_outputs(j: &Journal) -> Vec<StoredOutput> {
        j.scan_outputs(Seq(0), usize::MAX).await.unwrap()
    }

    #[tokio::test]
    async fn entries_survive_reopen_and_finished_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path());
        let seqs = j
            .append_inputs(vec![msg("a"), msg("b"), msg("c")], 1)
            .await
            .unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "sequences ascend: {seqs:?}"
        );
        // hml: "a" gets two outputs, "b" none (it is complete at once).
        let rec = j
            .record_outputs(
                vec![
                    OutputGroup {
                        input_seq: Some(seqs[0]),
                        dedup_id: None,
                        outputs: vec![msg("a/0"), msg("a/1")],
                    },
                    OutputGroup {
                        input_seq: Some(seqs[1]),
                        dedup_id: None,
                        outputs: vec![],
                    },
                ],
                false,
            )
            .await
            .unwrap();
        assert_eq!(rec[0].output_seqs.len(), 2);
        assert_eq!(j.backlog().entries(), 4, "a, c and a's two outputs");
        j.complete(vec![rec[0].output_seqs[0]], vec![])
            .await
            .unwrap();
        j.close().await.unwrap();

        let j = open(dir.path());
        let inputs = all_inputs(&j).await;
        let states: Vec<_> = inputs
            .iter()
            .map(|i| (i.entry.message.as_ref().unwrap().id.clone(), i.state))
            .collect();
        assert_eq!(
            states,
            [
                ("a".to_string(), InputState::OutputsPending),
                ("c".to_string(), InputState::Unhandled)
            ]
        );
        let outputs = all_outputs(&j).await;
        assert_eq!(outputs.len(), 1);
        assert_eq!(outputs[0].entry.input_seq, seqs[0].0);
        // a/1 dead-lettered without its completion mark: replay sees "a" as finished.
        j.dead_letter(vec![NewDeadLetter {
            kind: dead_letter::Kind::Output,
            message: msg("a/1"),
            reason: "test".into(),
            attempts: 3,
            input_seq: Some(seqs[0]),
            remove: Some(EntryRef::Output(outputs[0].seq)),
            complete_input: None,
        }])
        .await
        .unwrap();
        assert_eq!(all_inputs(&j).await[0].state, InputState::Finished);
        j.complete(vec![], vec![seqs[0], seqs[2]]).await.unwrap();
        j.sync().await.unwrap();
        assert_eq!(j.backlog().entries(), 0);
        assert_eq!(j.backlog().bytes(), 0);
        let summary = j.summary().await.unwrap();
        assert_eq!(
            (summary.inputs, summary.outputs, summary.dead_letters),
            (0, 0, 1)
        );
        let next = summary.next_seq;
        j.close().await.unwrap();

        // Sequences are never reused after a reopen.
        let j = open(dir.path());
        let more = j.append_inputs(vec![msg("d")], 1).await.unwrap();
        assert!(more[0].0 >= next, "{more:?} reuses a sequence below {next}");
        let dedup: Vec<_> = j
            .load_dedup()
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(dedup, ["a", "b", "c", "d"]);
    }

    /// The borrowed-message encoders write exactly what prost writes for the entries.
    #[test]
    fn entries_encode_without_a_clone_to_the_same_bytes() {
        let mut headers = std::collections::BTreeMap::new();
        headers.insert("sidelog-seq".to_string(), "7".to_string());
        headers.insert("a".to_string(), String::new());
        let full = Message {
            id: "x/1".into(),
            key: "k".into(),
            payload: vec![0, 1, 2, 255].into(),
            headers,
            event_time_ms: -5,
        };
        for m in [full, Message::default()] {
            for at in [0, 1, -1, i64::MAX] {
                let entry = InputEntry {
                    message: Some(m.clone()),
                    received_at_ms: at,
                };
                assert_eq!(encode_input(&m, at), encode_record(&entry));
                for input_seq in [0, 3, u64::MAX] {
                    let entry = OutputEntry {
                        message: Some(m.clone()),
                        input_seq,
                        recorded_at_ms: at,
                    };
                    assert_eq!(encode_output(&m, input_seq, at), encode_record(&entry));
                }
            }
        }
    }

    #[tokio::test]
    async fn a_damaged_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path());
        j.append_inputs(vec![msg("a")], 1).await.unwrap();
        j.close().await.unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = 4096.min(bytes.len());
        bytes[..n].fill(0xA5);
        std::fs::write(&path, &bytes).unwrap();
        let err = Journal::open(dir.path(), config(), Arc::new(SystemClock)).unwrap_err();
        assert!(err.to_string().contains(FILE_NAME), "{err}");
        assert!(!err.is_retryable());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_letter_completes_the_input_it_finishes_in_the_same_commit() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path());
        let seqs = j.append_inputs(vec![msg("a")], 1).await.unwrap();
        j.dead_letter(vec![NewDeadLetter {
            kind: dead_letter::Kind::Output,
            message: msg("a"),
            reason: "sink failed".into(),
            attempts: 1,
            input_seq: Some(seqs[0]),
            remove: None,
            complete_input: Some(seqs[0]),
        }])
        .await
        .unwrap();
        assert!(all_inputs(&j).await.is_empty());
        assert_eq!(j.backlog().entries(), 0);
        assert_eq!(j.scan_dead_letters(Seq(0), 10).await.unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn salvage_reads_a_cleanly_closed_file_without_writing_it() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path());
        j.append_inputs(vec![msg("a"), msg("b"), msg("c")], 1)
            .await
            .unwrap();
        j.close().await.unwrap();
        drop(j);
        let path = dir.path().join(FILE_NAME);
        let before = std::fs::read(&path).unwrap();
        let tables = salvage(&path).unwrap();
        assert_eq!(tables[0].table, "inputs");
        assert_eq!((tables[0].readable, tables[0].error.clone()), (3, None));
        assert_eq!(tables[3].table, "dedup");
        assert_eq!(tables[3].readable, 3);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "salvage wrote to the file"
        );
    }

    /// A first start that died while creating the journal (power cut, I/O error) leaves only a
    /// half-built temporary file: the next start builds a new journal instead of refusing a
    /// "damaged" one forever.
    #[tokio::test]
    async fn a_half_created_journal_is_built_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("journal.redb.new"), b"half a header").unwrap();
        let j = open(dir.path());
        j.append_inputs(vec![msg("a")], 1).await.unwrap();
        j.close().await.unwrap();
        assert!(!dir.path().join("journal.redb.new").exists());
        let j = open(dir.path());
        assert_eq!(all_inputs(&j).await.len(), 1);
    }

    #[tokio::test]
    async fn the_persisted_dedup_window_is_bounded_by_count() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(
            dir.path(),
            JournalConfig {
                dedup_window_count: 3,
                ..config()
            },
            Arc::new(SystemClock),
        )
        .unwrap();
        for id in ["a", "b", "c", "d", "e"] {
            j.append_inputs(vec![msg(id)], 1).await.unwrap();
        }
        let ids: Vec<_> = j
            .load_dedup()
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(ids, ["c", "d", "e"]);
    }

    /// Operations of the model test.
    #[derive(Debug, Clone)]
    enum Op {
        Append(u8),
        /// Record `n` outputs for the i-th live input (hml), durably or not.
        Record {
            input: usize,
            n: u8,
            durable: bool,
        },
        /// Record `n` outputs with no input (sbml).
        RecordAlone(u8),
        CompleteOutput(usize),
        CompleteInput(usize),
        DeadLetterOutput(usize),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1u8..4).prop_map(Op::Append),
            2 => (any::<usize>(), 0u8..3, any::<bool>()).prop_map(|(input, n, durable)| Op::Record { input, n, durable }),
            1 => (0u8..3).prop_map(Op::RecordAlone),
            2 => any::<usize>().prop_map(Op::CompleteOutput),
            1 => any::<usize>().prop_map(Op::CompleteInput),
            1 => any::<usize>().prop_map(Op::DeadLetterOutput),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// The journal against a BTreeMap model: after any sequence of operations (with
        /// reopens in between), the entries, the backlog counters and sequence order agree.
        #[test]
        fn the_journal_matches_a_simple_model(ops in proptest::collection::vec(op(), 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let mut j = open(dir.path());
                let mut inputs: BTreeMap<u64, String> = BTreeMap::new();
                let mut outputs: BTreeMap<u64, (String, u64)> = BTreeMap::new();
                let mut recorded: BTreeMap<u64, ()> = BTreeMap::new();
                let mut dead = 0u64;
                let mut last_seq = 0u64;
                let mut n = 0u32;
                for op in ops {
                    match op {
                        Op::Append(k) => {
                            let ms: Vec<Message> = (0..k).map(|_| { n += 1; msg(&format!("m{n}")) }).collect();
                            let seqs = j.append_inputs(ms.clone(), 1).await.unwrap();
                            for (m, s) in ms.iter().zip(&seqs) {
                                prop_assert!(s.0 > last_seq);
                                last_seq = s.0;
                                inputs.insert(s.0, m.id.clone());
                            }
                        }
                        Op::Record { input, n: k, durable } => {
                            let unrecorded: Vec<u64> = inputs.keys().copied().filter(|s| !recorded.contains_key(s)).collect();
                            if unrecorded.is_empty() { continue; }
                            let s = unrecorded[input % unrecorded.len()];
                            let outs: Vec<Message> = (0..k).map(|i| msg(&format!("{}/{i}", inputs[&s]))).collect();
                            let rec = j.record_outputs(vec![OutputGroup { input_seq: Some(Seq(s)), dedup_id: None, outputs: outs.clone() }], durable).await.unwrap();
                            if outs.is_empty() {
                                inputs.remove(&s);
                            } else {
                                recorded.insert(s, ());
                            }
                            for (m, o) in outs.iter().zip(&rec[0].output_seqs) {
                                prop_assert!(o.0 > last_seq);
                                last_seq = o.0;
                                outputs.insert(o.0, (m.id.clone(), s));
                            }
                        }
                        Op::RecordAlone(k) => {
                            n += 1;
                            let outs: Vec<Message> = (0..k).map(|i| msg(&format!("s{n}/{i}"))).collect();
                            let rec = j.record_outputs(vec![OutputGroup { input_seq: None, dedup_id: Some(format!("s{n}")), outputs: outs.clone() }], true).await.unwrap();
                            prop_assert!(rec[0].ack_seq.0 > last_seq);
                            last_seq = rec[0].ack_seq.0.max(rec[0].output_seqs.last().map_or(0, |s| s.0));
                            for (m, o) in outs.iter().zip(&rec[0].output_seqs) {
                                outputs.insert(o.0, (m.id.clone(), 0));
                            }
                        }
                        Op::CompleteOutput(i) => {
                            if outputs.is_empty() { continue; }
                            let s = *outputs.keys().nth(i % outputs.len()).unwrap();
                            outputs.remove(&s);
                            j.complete(vec![Seq(s)], vec![]).await.unwrap();
                        }
                        Op::CompleteInput(i) => {
                            if inputs.is_empty() { continue; }
                            let s = *inputs.keys().nth(i % inputs.len()).unwrap();
                            inputs.remove(&s);
                            recorded.remove(&s);
                            j.complete(vec![], vec![Seq(s)]).await.unwrap();
                        }
                        Op::DeadLetterOutput(i) => {
                            if outputs.is_empty() { continue; }
                            let s = *outputs.keys().nth(i % outputs.len()).unwrap();
                            let (id, input) = outputs.remove(&s).unwrap();
                            let d = j.dead_letter(vec![NewDeadLetter {
                                kind: dead_letter::Kind::Output,
                                message: msg(&id),
                                reason: "model".into(),
                                attempts: 1,
                                input_seq: (input != 0).then_some(Seq(input)),
                                remove: Some(EntryRef::Output(Seq(s))),
                                complete_input: None,
                            }]).await.unwrap();
                            last_seq = last_seq.max(d[0].0);
                            dead += 1;
                        }
                        Op::Reopen => {
                            j.close().await.unwrap();
                            j = open(dir.path());
                        }
                    }
                    let got_inputs: Vec<(u64, String)> = all_inputs(&j).await.into_iter()
                        .map(|i| (i.seq.0, i.entry.message.unwrap().id)).collect();
                    let want_inputs: Vec<(u64, String)> = inputs.iter().map(|(k, v)| (*k, v.clone())).collect();
                    prop_assert_eq!(got_inputs, want_inputs);
                    let got_outputs: Vec<(u64, String, u64)> = all_outputs(&j).await.into_iter()
                        .map(|o| (o.seq.0, o.entry.message.unwrap().id, o.entry.input_seq)).collect();
                    let want_outputs: Vec<(u64, String, u64)> = outputs.iter().map(|(k, (id, i))| (*k, id.clone(), *i)).collect();
                    prop_assert_eq!(got_outputs, want_outputs);
                    // Completions are fire-and-forget: a read after them sees them (one writer).
                    let summary = j.summary().await.unwrap();
                    prop_assert_eq!(j.backlog().entries(), (inputs.len() + outputs.len()) as u64);
                    prop_assert_eq!(summary.dead_letters, dead);
                    prop_assert!(summary.next_seq > last_seq);
                }
                Ok(())
            })?;
        }
    }
}
