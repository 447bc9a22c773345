//! sidelog's core: what happens to a message between a producer's request and the next tier.
//!
//! ```text
//! a door ──▶ pipeline/: validate → dedup → the intake of the mode's plan (mode.rs) → ack
//!                          │                              │
//!                          │ sidelog-journal              └─▶ Handler (seam) ──▶ outputs
//!                          ▼                                                        │
//!                       delivery/ (lanes, batches, retries, completion) ◀───────────┘
//!                          │
//!                          └─▶ Sink (seam, sink.rs) ──▶ next tier
//! ```
//!
//! It owns the logging modes (`mode.rs`), the pipeline (`pipeline/`: intake, dedup, the handler
//! runner, key order, replay after a restart), delivery (`delivery/`), and the two seams to the
//! hops: [`pipeline::Handler`] and [`sink::Sink`]. It must not know how a request arrived (gRPC,
//! HTTP, MQTT, OTLP, forward: the `sidelog` crate's doors), how a hop is reached (the gRPC handler client and
//! the sinks live there too), or how the journal stores anything (`sidelog-journal`'s verbs
//! only). It links no network stack: tonic's transport, axum, hyper and rumqttc are not among
//! its dependencies, and the simulator drives it with its own hops.

pub mod delivery;
pub mod metrics;
pub mod mode;
mod outage;
pub mod pipeline;
pub mod sink;

pub use mode::LoggingMode;
pub use outage::Outage;
