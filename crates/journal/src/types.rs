//! The values that go into the journal and come back out of it: sequences, output groups, dead
//! letters, stored entries, the dedup window's records and counts.

use std::sync::atomic::{AtomicU64, Ordering};

use sidelog_proto::journal::{DeadLetter, InputEntry, OutputEntry, dead_letter};
use sidelog_proto::v1::Message;

/// A journal sequence number: the key of an entry, unique for the life of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

/// The undelivered work the journal holds: kept up to date by the writer, read by the publish
/// path for backpressure without touching the file.
#[derive(Debug, Default)]
pub struct Backlog {
    bytes: AtomicU64,
    entries: AtomicU64,
    /// Rows of the dead-letter table.
    dead_letters: AtomicU64,
    /// Told whenever a commit leaves the backlog empty.
    emptied: tokio::sync::Notify,
}

impl Backlog {
    pub fn dead_letters(&self) -> u64 {
        self.dead_letters.load(Ordering::Relaxed)
    }
    pub(super) fn set_dead_letters(&self, n: u64) {
        self.dead_letters.store(n, Ordering::Relaxed);
    }
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }
    pub(super) fn set(&self, bytes: u64, entries: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
        self.entries.store(entries, Ordering::Relaxed);
        if entries == 0 {
            self.emptied.notify_waiters();
        }
    }

    /// Completes at the next commit that leaves the backlog empty (enable it before looking
    /// at [`Backlog::entries`], so that such a commit in between is not missed).
    pub fn emptied(&self) -> tokio::sync::futures::Notified<'_> {
        self.emptied.notified()
    }
}

/// Appended inputs: their sequences, one per input in order, and the inputs themselves, handed
/// back once the commit has returned so that a caller that goes on with them (to delivery)
/// need not clone them before the append.
#[derive(Debug)]
pub struct Appended {
    pub seqs: Vec<Seq>,
    pub inputs: Vec<Message>,
}

/// Outputs to record for one input.
#[derive(Debug, Clone)]
pub struct OutputGroup {
    /// The journaled input these outputs belong to (hml); `None` in sbml.
    pub input_seq: Option<Seq>,
    /// The input's message id, entered into the dedup window in the same transaction (sbml).
    pub dedup_id: Option<String>,
    pub outputs: Vec<Message>,
    /// sbml: the handler gave up on the input, so there are no outputs but this dead letter,
    /// written in the same transaction; the ack and the dedup window carry its sequence.
    pub dead: Option<NewDeadLetter>,
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

/// A live input or output entry (in a block).
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

/// How far a sink that can read back what it holds has got (the Kafka sink's progress
/// records): opaque to the journal, kept in `meta` and written after the completion marks it
/// covers, in the writer's order, so it never claims more than the journal has marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryProgress {
    /// Which log the position is in (a hash of the sink's cluster, topic and producer).
    pub key: u64,
    /// The partition of that log.
    pub partition: u64,
    /// Everything in the partition before this position is covered by the journal's marks.
    pub position: u64,
}

/// The journal's identity (random, made with the file) and the delivery progress it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryState {
    pub identity: u64,
    pub progress: Option<DeliveryProgress>,
}

/// Which dead letters an operator acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterSelection {
    /// These sequences (those that are not dead letters are skipped).
    Seqs(Vec<Seq>),
    /// Every dead letter.
    All,
}

/// Sequences `[from, to)` written by a commit that reported failure but turned out to be in the
/// file when it was reopened (an I/O error after redb had made the commit visible). Nobody was
/// told those records were accepted, and nothing is processing them: they must be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub from: Seq,
    pub to: Seq,
}

/// How many entries a scan of inputs or outputs returns: a count is an exact limit
/// (`scan_inputs(from, 100)`); [`ScanLimit::to_block_end`] reads on to the end of the block
/// the count is reached in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanLimit {
    pub(super) entries: usize,
    pub(super) whole_blocks: bool,
}

impl ScanLimit {
    /// At least `entries`, then the rest of the block the last of them is in, so a caller
    /// scanning on reads each block once. A block holds one commit's records (up to
    /// `journal.commit_max_records`, or one large request's): replay read 1,024 entries at a
    /// time, and a block of 20,000 was read 20 times (most of its journal time).
    pub fn to_block_end(entries: usize) -> ScanLimit {
        ScanLimit {
            entries,
            whole_blocks: true,
        }
    }
}

impl From<usize> for ScanLimit {
    fn from(entries: usize) -> ScanLimit {
        ScanLimit {
            entries,
            whole_blocks: false,
        }
    }
}
