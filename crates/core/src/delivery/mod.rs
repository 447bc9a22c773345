//! Delivery: outputs to the sink, in batches, with retries, and completion back to the journal.
//!
//! Outputs are routed to one of `lanes` by key (by id when the key is empty). A lane gathers a
//! batch, bounded by count and bytes, from what is queued and, at the sink's depth, from what
//! arrives while the oldest send is under way, and hands it to the sink. A lane has at most
//! [`Sink::pipeline_depth`] batches awaiting their ack (1 for a gRPC sink), so with one lane per
//! key outputs of one key reach the sink in the order they were sent to the lane while nothing
//! fails. A failed batch is retried with exponential backoff and jitter; after `max_attempts`
//! its messages go to the dead-letter table. Nothing is dropped.
//!
//! [`Completion`] turns acks into journal changes: a delivered journaled output is removed, and
//! an input is completed (removed) once the last of its outputs is delivered or dead-lettered.
//! In mode `none` nothing is journaled; the held bytes are only counted, for backpressure, by a
//! [`MemoryPermit`] each item carries.
//!
//! `lanes.rs` routes, batches, sends and retries; `completion.rs` turns acks and dead letters
//! into journal changes.

mod completion;
mod lanes;

use std::sync::Arc;

use sidelog_journal::Seq;
use sidelog_proto::v1::Message;
use sidelog_runtime::Backoff;

pub use completion::{Completion, MemoryPermit};
pub use lanes::{Delivery, TrySend};

/// One output on its way to the sink: the one type of a message in transit, from the intake
/// (or a replay) to the sink's ack.
#[derive(Debug)]
pub struct DeliveryItem {
    /// The message. Its lane moves it into the batch it sends (empty here from then on), with
    /// its `sidelog-seq` header set unless the sink writes that itself.
    pub message: Message,
    /// Its entry in the journal's `outputs`, removed once delivered (sbml, hml).
    pub output_seq: Option<Seq>,
    /// The journaled input it came from, completed once all its outputs are delivered.
    pub input_seq: Option<Seq>,
    /// Its bytes counted in memory only (mode `none`), released when the item is dropped.
    pub memory: Option<MemoryPermit>,
    /// A paced replay's permit, released when the item (and every copy) is dropped.
    pub pace: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
    /// When its entry was written (unix ms): what `max_age_ms` is measured from.
    pub written_at_ms: i64,
}

impl DeliveryItem {
    /// An output sent now: no memory permit, no pace, written at `now_ms`.
    pub fn new(
        message: Message,
        output_seq: Option<Seq>,
        input_seq: Option<Seq>,
        now_ms: i64,
    ) -> Self {
        DeliveryItem {
            message,
            output_seq,
            input_seq,
            memory: None,
            pace: None,
            written_at_ms: now_ms,
        }
    }

    /// The journal sequence it is delivered under (its `sidelog-seq`): the output's, or, for a
    /// pass-through input, the input's; `None` in mode `none`.
    pub(super) fn seq(&self) -> Option<Seq> {
        self.output_seq.or(self.input_seq)
    }

    pub(super) fn size(&self) -> usize {
        self.message.payload.len() + self.message.id.len() + self.message.key.len() + 16
    }
}

/// Validated settings of delivery.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub lanes: usize,
    pub lane_queue: usize,
    pub batch_max_messages: usize,
    pub batch_max_bytes: usize,
    pub linger_ms: u64,
    pub timeout_ms: u64,
    pub backoff: Backoff,
    /// Entries older than this are dead-lettered instead of retried; 0 = no limit.
    pub max_age_ms: u64,
    pub clock: sidelog_runtime::SharedClock,
    /// The sink's outage, said once per period while it lasts.
    pub outage: std::sync::Arc<crate::outage::Outage>,
}
