//! The publish pipeline: what happens to a message between the producer's request and its ack,
//! and to its outputs until the sink has them.
//!
//! `publish.rs` reads top to bottom: validate (`limits.rs`) → dedup (`dedup.rs`) → journal and
//! handler (`handler.rs`) in the order the mode decides (`crate::mode`) → ack, then hands the
//! outputs to delivery (`crate::delivery`) in order per key (`order.rs`). `recovery.rs` replays
//! the journal through the same pipeline after a restart. ARCHITECTURE.md draws the path of each mode.

mod dedup;
mod handler;
mod limits;
mod order;
mod publish;
mod recovery;

pub use dedup::{Claim, ClaimOutcome, DedupWindow};
pub use handler::{Call, Handler, HandlerError, HandlerRunner, OutputIds, PassThrough};
pub use limits::Limits;
pub use publish::{Door, IngestError, Pipeline, Undelivered};
pub use recovery::{
    Pace, ReplayOptions, ReplayStats, RequeueError, backlog_span, replay, replay_ambiguous,
    replay_range,
};
