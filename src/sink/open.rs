//! Building the sink a `--sink` URL names.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{
    ChunkSettings, FileSink, FileSinkConfig, GrpcSink, KafkaSink, KafkaSinkConfig, NatsSink,
    NatsSinkConfig, ObjectSink, ObjectSinkConfig, Sink, SinkSetupError,
};
use crate::runtime::{Entropy, SharedClock};

/// A parsed `--sink` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    /// `http://host:port`: a gRPC `sidelog.v1.Sink`.
    Grpc(String),
    /// `file:DIR`: chunk files in a directory.
    File(PathBuf),
    /// `nats://…`: a JetStream stream.
    Nats(Box<NatsSinkConfig>),
    /// `kafka://HOST:PORT/TOPIC?…`: an Apache Kafka topic.
    Kafka(Box<KafkaSinkConfig>),
    /// `s3://BUCKET/PREFIX?…`: chunk objects in a bucket.
    Object(Box<ObjectSinkConfig>),
}

/// The settings every sink shares.
#[derive(Debug, Clone, Copy)]
pub struct SinkSettings {
    /// How long one delivery may take.
    pub timeout: Duration,
    /// When chunks are sealed, and their format (file and object sinks).
    pub chunks: ChunkSettings,
    /// The journal's identity and stored delivery progress (the exactly-once Kafka sink).
    pub journal: Option<crate::journal::DeliveryState>,
}

/// Builds the sink `target` names.
pub async fn open(
    target: &SinkTarget,
    settings: SinkSettings,
    clock: SharedClock,
    entropy: &Entropy,
) -> Result<Arc<dyn Sink>, SinkSetupError> {
    let plain = |sink: Arc<dyn Sink>| sink;
    Ok(match target {
        SinkTarget::Grpc(url) => plain(Arc::new(GrpcSink::new(url, settings.timeout)?)),
        SinkTarget::Nats(nats) => plain(Arc::new(
            NatsSink::connect((**nats).clone(), settings.timeout).await?,
        )),
        SinkTarget::Kafka(kafka) => plain(Arc::new(
            KafkaSink::connect((**kafka).clone(), settings.timeout, settings.journal).await?,
        )),
        SinkTarget::Object(object) => ObjectSink::start(
            (**object).clone(),
            settings.chunks,
            settings.timeout,
            clock,
            entropy,
        )?,
        SinkTarget::File(dir) => {
            let config = FileSinkConfig {
                dir: dir.clone(),
                chunk_max_bytes: settings.chunks.max_bytes,
                chunk_max_age_ms: settings.chunks.max_age.as_millis() as u64,
                format: settings.chunks.format,
            };
            plain(FileSink::start(config, clock, entropy)?)
        }
    })
}
