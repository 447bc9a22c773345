//! sidelog: a fault-tolerance logging sidecar for streaming-ingestion servers.
//!
//! ```text
//! producers ──Ingest.Publish──▶ api.rs ──▶ ingest.rs: validate → dedup.rs → journal/handler per mode.rs → ack
//!                                               │                │
//!                                               │ journal.rs     └─▶ handler.rs ──Handler.Handle──▶ ingest server
//!                                               │ (redb, group        │ outputs
//!                                               │  commit)            ▼
//!                                               └──────────────▶ delivery.rs (lanes, batches, retries)
//!                                                                     │
//!                                                                     └─▶ sink.rs ──▶ next tier (gRPC Sink, chunk files)
//! on start: recovery.rs replays the journal before api.rs takes traffic
//! ```
//!
//! Where to look: `mode.rs` (what each logging mode decides), `ingest.rs` (the publish path),
//! `journal.rs` (tables, durability), `delivery.rs` (batching, retries, dead letters),
//! `recovery.rs` (replay), `server.rs` (wiring), `config.rs` (every setting).

pub mod admin;
pub mod api;
pub mod auth;
pub mod backoff;
pub mod bench;
pub mod clock;
pub mod config;
pub mod dedup;
pub mod delivery;
pub mod fuzz_checks;
pub mod handler;
pub mod ingest;
pub mod inspect;
pub mod journal;
pub mod metrics;
pub mod mode;
pub mod nats_sink;
pub mod object_sink;
pub mod parquet_chunk;
pub mod publish;
pub mod recovery;
pub mod server;
pub mod sink;
pub mod spawn;

/// Generated protobuf code, laid out by package as prost's cross-package paths expect.
mod generated {
    pub mod sidelog {
        pub mod v1 {
            tonic::include_proto!("sidelog.v1");
        }
        pub mod journal {
            pub mod v1 {
                tonic::include_proto!("sidelog.journal.v1");
            }
        }
    }
}

/// The `sidelog.v1` contract (messages, clients, servers) and the journal's record types.
pub mod proto {
    pub use crate::generated::sidelog::v1::*;

    /// The journal's on-disk records (internal, but stable).
    pub mod journal {
        pub use crate::generated::sidelog::journal::v1::*;
    }

    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("sidelog_descriptor");
}
