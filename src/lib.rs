//! sidelog: a fault-tolerance logging sidecar for streaming-ingestion servers.
//!
//! ```text
//! producers ──Ingest.Publish──▶ service/ ──▶ pipeline/: validate → dedup → journal/handler per mode.rs → ack
//!                                                 │                    │
//!                                                 │ journal/           └─▶ Handler ──Handler.Handle──▶ ingest server
//!                                                 │ (redb, group             │ outputs
//!                                                 │  commit)                 ▼
//!                                                 └──────────────────▶ delivery/ (lanes, batches, retries)
//!                                                                          │
//!                                                                          └─▶ sink/ ──▶ next tier
//! on start: node.rs assembles the parts, pipeline/recovery.rs replays the journal, server.rs serves
//! ```
//!
//! ARCHITECTURE.md in the repository walks through each mode's data path, the journal's layout,
//! the crash contract, and which folder holds which concern.

// The components, each in its own folder (see ARCHITECTURE.md for the map). The journal, the
// sinks and the runtime seams are public modules: the simulator, the benchmarks and the fuzz
// targets build on them. The rest is reached through the names below.
mod config;
use sidelog_core::{delivery, mode, pipeline};
#[doc(hidden)]
pub mod fuzz_checks;
pub use sidelog_journal as journal;
mod handler;
mod metrics;
mod node;
pub mod runtime;
mod server;
mod service;
pub mod sink;

pub use config::{
    Config, ConfigError, ReplayPolicy, ServeArgs, check_environment,
    example_toml as example_config, markdown_table as config_reference, read_token_file,
};
pub use mode::LoggingMode;
pub use node::{Hops, Node, Opened, journal_config, replay_options};
pub use pipeline::{
    Call, Claim, ClaimOutcome, DedupWindow, Door, Handler, HandlerError, IngestError, PassThrough,
    Pipeline, ReplayOptions, ReplayStats, replay,
};
pub use server::{ThisStart, serve};
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
