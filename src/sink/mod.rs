//! The sink hop: the next tier that outputs are delivered to.
//!
//! [`Sink`] is the seam: `deliver` a [`Batch`], `Ok` once the next tier acked all of it. Every
//! delivered message carries its journal sequence in the [`SEQ_HEADER`] header: delivery puts
//! it into the message, or, for a sink that [writes it itself](Sink::writes_seq_header), the
//! sink puts it on the wire from [`Batch::seqs`].
//!
//! - `--sink http://host:port`: a gRPC `sidelog.v1.Sink` served by the next tier (`grpc.rs`);
//! - `--sink nats://…`: a NATS JetStream stream (`nats.rs`);
//! - `--sink kafka://…`: an Apache Kafka topic (`kafka.rs`);
//! - `--sink file:DIR` (the default) and `--sink s3://…`: a [`ChunkSink`] that gathers messages
//!   into large chunks, in a directory or a bucket (`chunk/`).
//!
//! [`SinkTarget`] is a parsed `--sink` URL; [`open`] (`open.rs`) builds the sink it names.

mod chunk;
mod grpc;
mod kafka;
mod nats;
mod open;

pub use sidelog_core::sink::{
    BacklogSpan, Batch, Receipt, SEQ_HEADER, Sink, SinkError, sequence_of, set_seq_header,
};

pub use chunk::bucket::{ObjectSink, ObjectSinkConfig};
pub use chunk::parquet;
pub use chunk::{
    CHUNK_MAGIC, ChunkDir, ChunkError, ChunkFormat, ChunkInfo, ChunkSettings, ChunkSink,
    ChunkStore, FileSink, FileSinkConfig, list_chunks, parse_chunk, read_chunk,
};
pub use grpc::GrpcSink;
pub use kafka::{KafkaSink, KafkaSinkConfig, NO_PROGRESS_VAR as KAFKA_NO_PROGRESS_VAR};
pub use nats::{NatsSink, NatsSinkConfig};
pub use open::{SinkSettings, SinkTarget, open};

/// Why a sink cannot be built from its settings (a bad URL, an unusable directory, missing
/// credentials). Not retryable: the configuration must change. It says what could not be done;
/// the error behind it, when there is one, is its `source()`.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct SinkSetupError {
    what: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SinkSetupError {
    /// A refusal of sidelog's own (a setting that contradicts another, a cluster's answer).
    pub fn new(what: impl Into<String>) -> Self {
        SinkSetupError {
            what: what.into(),
            source: None,
        }
    }

    /// `what` could not be done because of `source`.
    pub fn caused(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        SinkSetupError {
            what: what.into(),
            source: Some(source.into()),
        }
    }
}
