//! The publish pipeline: what happens to a message between the producer's request and its ack,
//! and to its outputs until the sink has them.
//!
//! `publish.rs` reads top to bottom: validate (`limits.rs`) → dedup (`dedup.rs`) → the intake of
//! the mode's plan (`intake.rs`, one function per `crate::mode::Intake`) → ack; then the
//! handler (`handler.rs`) and recorded outputs (`continuation.rs`) go to delivery
//! (`crate::delivery`) in order per key (`order.rs`), through one route, `Pipeline::send`.
//! `recovery.rs` replays the journal through the same pipeline after a restart.
//! ARCHITECTURE.md draws the path of each mode.

mod continuation;
mod dedup;
mod handler;
mod intake;
mod limits;
mod order;
mod publish;
mod recovery;

pub use continuation::InputSeq;
pub use dedup::{Claim, ClaimOutcome, DedupWindow};
pub use handler::{Call, Handler, HandlerError, HandlerRunner, OutputIds, PassThrough};
pub use limits::Limits;
pub use publish::{Door, IngestError, Parts, Pipeline, Undelivered};
pub use recovery::{
    Pace, ReplayOptions, ReplayStats, RequeueError, backlog_span, replay, replay_ambiguous,
    replay_range,
};
