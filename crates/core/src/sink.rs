//! The sink seam: what delivery hands the next tier ([`Batch`]), what it answers ([`Receipt`],
//! [`SinkError`]), and the [`Sink`] trait the `sidelog` crate's sinks (gRPC, NATS, Kafka, files,
//! object stores) implement. Every delivered message carries its journal sequence in the
//! [`SEQ_HEADER`] header: delivery puts it into the message, or, for a sink that
//! [writes it itself](Sink::writes_seq_header), the sink puts it on the wire from [`Batch::seqs`].

use std::sync::Arc;
use std::time::Duration;

use sidelog_journal::DeliveryProgress;
use sidelog_proto::v1::Message;
use sidelog_runtime::BoxFuture;

/// The header every delivered message carries: its journal sequence.
pub const SEQ_HEADER: &str = "sidelog-seq";
/// Puts `seq` into `message`'s [`SEQ_HEADER`], replacing one it came with.
pub fn set_seq_header(message: &mut Message, seq: u64) {
    message
        .headers
        .insert(SEQ_HEADER.to_owned(), seq.to_string());
}

/// The journal sequence a delivered message carries in [`SEQ_HEADER`], if any.
pub fn sequence_of(message: &Message) -> Option<u64> {
    message.headers.get(SEQ_HEADER)?.parse().ok()
}

/// What one `deliver` sends: messages, and each one's journal sequence.
#[derive(Debug, Clone)]
pub struct Batch {
    pub messages: Arc<[Message]>,
    /// Index for index with `messages`; `None` for a message never journaled (mode `none`).
    /// Each one is in its message's [`SEQ_HEADER`] too, unless the sink
    /// [writes it itself](Sink::writes_seq_header).
    pub seqs: Arc<[Option<u64>]>,
}

/// A batch of messages that carry their sequences in their headers already.
impl From<Vec<Message>> for Batch {
    fn from(messages: Vec<Message>) -> Self {
        let seqs = messages.iter().map(sequence_of).collect();
        Batch {
            messages: messages.into(),
            seqs,
        }
    }
}

impl Batch {
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// What a sink hands back with a delivered batch: for a sink that keeps its own record of
/// what it holds (the Kafka sink's progress records), the way to tell it that the batch's
/// completion marks are queued in the journal; nothing for the others.
pub struct Receipt(Option<Box<dyn FnOnce() -> Option<DeliveryProgress> + Send>>);

impl Receipt {
    /// Nothing to tell the sink.
    pub fn none() -> Receipt {
        Receipt(None)
    }

    /// Calls `marked` once the batch's marks are queued.
    pub fn new(marked: impl FnOnce() -> Option<DeliveryProgress> + Send + 'static) -> Receipt {
        Receipt(Some(Box::new(marked)))
    }

    /// The batch's completion marks are queued in the journal: the sink's progress, when this
    /// moves it, to be written after them. A receipt dropped unmarked (the marks failed) holds
    /// the sink's progress where it is for the rest of the run.
    pub fn marked(self) -> Option<DeliveryProgress> {
        self.0.and_then(|marked| marked())
    }
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Receipt(..)"
        } else {
            "Receipt(none)"
        })
    }
}

/// Why a delivery failed: retryable (the sink is down, slow, overloaded: the whole batch is
/// sent again, for as long as it takes), or a refusal (the next tier will never take it: a
/// message too large, one it calls invalid), which no retry can heal.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct SinkError {
    pub reason: String,
    /// The next tier refused the batch: retrying it as it is cannot succeed.
    pub refused: bool,
    /// The sink will take nothing more from this process (a Kafka producer fenced by another
    /// sidecar with its transactional id): the batch stays in the journal, for the next start.
    pub halted: bool,
}

impl SinkError {
    /// A failure that may heal (connection refused, `UNAVAILABLE`, a timeout, a 5xx).
    pub fn retry(reason: impl Into<String>) -> SinkError {
        SinkError {
            reason: reason.into(),
            refused: false,
            halted: false,
        }
    }

    /// The next tier refuses what it was sent (`INVALID_ARGUMENT`, too large, ...).
    pub fn refused(reason: impl Into<String>) -> SinkError {
        SinkError {
            reason: reason.into(),
            refused: true,
            halted: false,
        }
    }

    /// The sink has stopped for good in this process; nothing is retried or dead-lettered.
    pub fn halted(reason: impl Into<String>) -> SinkError {
        SinkError {
            reason: reason.into(),
            refused: false,
            halted: true,
        }
    }
}

/// The backlog's journal sequences `[from, to]`, and when its oldest entry was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogSpan {
    pub from: u64,
    pub to: u64,
    pub since_ms: i64,
}

/// The next tier.
pub trait Sink: Send + Sync + 'static {
    /// Delivers a batch: `Ok` means every message in it is acked by the next tier, an error
    /// means none is (the batch is retried). Work that fixes the batch's place in the sink's
    /// order happens before the future is returned, so calls made in order are taken in order.
    fn deliver(&self, batch: Batch) -> BoxFuture<'static, Result<Receipt, SinkError>>;

    /// Whether the sink can tell which of the backlog's messages the next tier holds already
    /// (a crash came between their upload and their ack): then the start's replay calls
    /// [`read_back`](Sink::read_back) first.
    fn reads_back(&self) -> bool {
        false
    }

    /// Before the start's replay: learns which of the backlog's sequences `[span.from,
    /// span.to]` the next tier holds, so that the replay acks those instead of sending them
    /// twice. A failure only costs duplicates: it is the sink's to log.
    fn read_back(&self, span: BacklogSpan) -> BoxFuture<'_, ()> {
        let _ = span;
        Box::pin(async {})
    }

    /// The start's replay is over: every entry the journal held is delivered (or
    /// dead-lettered) and its marks are applied. A sink that skipped what it already held
    /// answers the progress that covers all of that, to be recorded.
    fn replayed(&self) -> Option<DeliveryProgress> {
        None
    }

    /// Whether the sink writes each message's [`SEQ_HEADER`] itself, from [`Batch::seqs`], as it
    /// encodes the message. Otherwise (the default) delivery inserts it into every message's
    /// headers before the batch is made: two strings and a map node per message, which the
    /// gRPC sink saves by encoding the header straight onto the wire.
    fn writes_seq_header(&self) -> bool {
        false
    }

    /// Batches one delivery lane may have awaiting their ack at once. 1 keeps per-key order
    /// strict; a sink that takes batches in call order can allow more.
    fn pipeline_depth(&self) -> usize {
        1
    }

    /// How long the sink may hold a batch before it acks it, beyond the delivery timeout.
    /// `None`: the sink answers every batch itself, delivered or failed, and a lane must never
    /// give up on one and send it again (the exactly-once Kafka sink: a batch sent again could
    /// be in two transactions that both commit).
    fn ack_delay_max(&self) -> Option<Duration> {
        Some(Duration::ZERO)
    }

    /// Sends what the sink holds back to batch it (an open chunk) now rather than when its
    /// size or age says: a replay under `replay.policy = first` is waiting for it.
    fn flush(&self) {}
}
