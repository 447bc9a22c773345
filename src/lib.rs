//! sidelog: a fault-tolerance logging sidecar for streaming-ingestion servers.
//!
//! This crate is the product: the doors producers reach it by, the hops it reaches, and the
//! assembly. The crates under `crates/` hold what it is built on, each with a boundary the
//! compiler keeps:
//!
//! ```text
//! sidelog (this crate)   doors: service/ (gRPC + gRPC-Web, HTTP, MQTT, OTLP, forward, admin)
//!   │                    · sink/ (gRPC, NATS, Kafka, files, object stores) · handler.rs (the
//!   │                    gRPC handler client) · config/ · node.rs (assembly) · server.rs ·
//!   │                    metrics.rs · CLI
//!   ▼
//! sidelog-core           modes, pipeline (intake, dedup, handler runner, key order, replay),
//!   │                    delivery, the Handler and Sink seams; no network stack
//!   ▼
//! sidelog-journal        the redb file, its redo log, the group-commit writer; redb is private
//!   ▼
//! sidelog-proto · sidelog-runtime   messages (prost only) · clock, randomness, spawning, fs steps
//! ```
//!
//! Beside them, and not linked into the `sidelog` binary: `sidelog-testkit` (driving a real
//! sidelog from tests), `sidelog-bench` (the benchmark binary), `sidelog-fuzz-checks`, and the
//! simulator (`sim/`). ARCHITECTURE.md walks through each mode's data path, the journal's
//! layout, the crash contract, and where each concern lives.

// The journal, the sinks and the runtime seams are public: the simulator and the benchmark
// build on them. The rest is reached through the names below.
mod config;
use sidelog_core::{delivery, mode, pipeline};
pub use sidelog_journal as journal;
mod handler;
#[cfg(test)]
mod house_rules;
mod metrics;
mod node;
pub mod runtime;
mod server;
mod service;
pub mod sink;
mod url_options;

pub use config::{
    Config, ConfigError, ReplayPolicy, ServeArgs, TokenFileError, check_environment,
    example_toml as example_config, markdown_table as config_reference, read_token_file,
};
pub use mode::LoggingMode;
pub use node::{Hops, Node, Opened, journal_config, replay_options};
pub use pipeline::{
    Call, Claim, ClaimOutcome, DedupWindow, Door, Handler, HandlerError, IngestError, PassThrough,
    Pipeline, ReplayOptions, ReplayStats, replay,
};
pub use server::{ThisStart, serve};
pub use service::otlp::PAYLOAD_TYPE as OTLP_PAYLOAD_TYPE;
pub use service::{AdminService, MAX_LIST_LIMIT, asks_for_retry};

/// The generated services (their messages are `sidelog-proto`'s).
mod generated {
    tonic::include_proto!("sidelog.v1");
}

/// The `sidelog.v1` contract (messages, clients, servers) and the journal's record types.
pub mod proto {
    pub use crate::generated::*;
    pub use sidelog_proto::v1::*;

    /// The journal's on-disk records (internal, but stable).
    pub use sidelog_proto::journal;

    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("sidelog_descriptor");
}
