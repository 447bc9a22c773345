//! Every setting of `sidelog serve`, declared once: its doc, type, default and allowed values.
//!
//! From this one list follow the TOML key (`section.name`), the flag (`--section-name`), the
//! environment variable (`SIDELOG_SECTION_NAME`), the range check at start-up, `--help`, and
//! the README's configuration table (a test fails when the README disagrees).

use std::net::SocketAddr;
use std::path::PathBuf;

use super::declare::{GIB, KIB, MIB, Rule, settings};
use super::mqtt::MqttSource;
use super::url_setting::{CorsOrigins, Parsed};
use crate::mode::LoggingMode;
use crate::sink::{ChunkFormat, SinkTarget};

/// What a start does with the journal's backlog.
#[derive(Debug, Clone, Copy, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReplayPolicy {
    /// Replay everything, then take traffic (health NOT_SERVING until done): recover, then
    /// rejoin.
    First,
    /// Take traffic at once and replay beside it, at most `replay.interleave_in_flight`
    /// backlog entries under way at a time, so fresh messages never queue behind the whole
    /// backlog.
    Interleave,
}

impl std::fmt::Display for ReplayPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReplayPolicy::First => "first",
            ReplayPolicy::Interleave => "interleave",
        })
    }
}

impl std::str::FromStr for ReplayPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "first" => Ok(ReplayPolicy::First),
            "interleave" => Ok(ReplayPolicy::Interleave),
            other => Err(format!(
                "unknown policy {other:?}: expected first or interleave"
            )),
        }
    }
}

/// How a record becomes a payload (`forward_payload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardPayload {
    /// The record as a JSON object (`application/json`).
    Json,
    /// The record's msgpack, as sent (`application/msgpack`).
    Msgpack,
}

impl std::fmt::Display for ForwardPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ForwardPayload::Json => "json",
            ForwardPayload::Msgpack => "msgpack",
        })
    }
}

impl std::str::FromStr for ForwardPayload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(ForwardPayload::Json),
            "msgpack" => Ok(ForwardPayload::Msgpack),
            other => Err(format!(
                "unknown payload {other:?}: expected json or msgpack"
            )),
        }
    }
}

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 86_400_000;

/// Settable like any other, and in the README's table, but kept out of `--help` (and so out of
/// the man page and completions): knobs for benchmarks, not for running sidelog.
pub(super) const NOT_IN_HELP: &[&str] = &["journal.simulated_fsync_latency_us"];

settings! {
    /// The complete configuration of `sidelog serve`.
    pub struct Config {
        /// gRPC address producers connect to (Ingest, health, reflection).
        listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 50051)), Rule::any();
        /// Logging mode: `hml`, `rbml`, `sbml` or `none` (see Logging modes).
        mode: LoggingMode = LoggingMode::Hybrid, Rule::any();
        /// Directory of the journal and of the default file sink.
        data_dir: PathBuf = PathBuf::from("./sidelog-data"), Rule::any();
        /// `http://host:port` of the ingest server's `Handler`; none: pass-through (each
        /// message is its own single output).
        handler: Option<String> = None, Rule::any().shown("none (pass-through)");
        /// Where outputs go: `http://host:port` (gRPC `Sink`), `file:DIR`, `nats://HOST:PORT?…`
        /// (JetStream), `kafka://HOST:PORT/TOPIC?…` (Apache Kafka) or
        /// `s3://BUCKET/PREFIX?endpoint=…` (object storage).
        sink: Option<Parsed<SinkTarget>> = None, Rule::any().shown("`file:<data_dir>/out`");
        /// Serve Prometheus text at `http://ADDR/metrics`, and the probes `/healthz` (live)
        /// and `/readyz` (taking traffic).
        metrics_listen: Option<SocketAddr> = None, Rule::any().shown("off");
        /// The HTTP door: `POST /v1/publish` with JSON (a `PublishRequest`) or NDJSON (one
        /// record a line, as log shippers send), with the same ack contract as gRPC.
        http_listen: Option<SocketAddr> = None, Rule::any().shown("off");
        /// NDJSON on the HTTP door: the top-level field whose value becomes the message key.
        http_ndjson_key_field: Option<String> = None, Rule::any().shown("none");
        /// Browser origins allowed to call the HTTP door and gRPC-Web (CORS), comma-separated,
        /// e.g. `https://app.example.com`; `*` allows any (without credentials).
        http_cors_origins: Option<Parsed<CorsOrigins>> = None, Rule::any().shown("none (no CORS)");
        /// The OTLP door (OpenTelemetry logs, on the gRPC listener and the HTTP door): the
        /// resource attribute whose value becomes each record's message key.
        otlp_key_attribute: String = "service.name".into(), Rule::any();
        /// The forward door (Fluentd's `forward` protocol, for Fluent Bit, Fluentd and the
        /// `fluent-logger` libraries): its TCP address (and UDP, for heartbeats), e.g.
        /// `127.0.0.1:24224`; TLS with `tls_cert_file`.
        forward_listen: Option<SocketAddr> = None, Rule::any().shown("off");
        /// A file holding the forward door's shared key (16+ printable characters): clients
        /// must pass the handshake with it (Fluent Bit's `Shared_Key`, Fluentd's
        /// `<security> shared_key`).
        forward_shared_key_file: Option<PathBuf> = None, Rule::any().shown("none (no handshake)");
        /// How the forward door stores a record: `json` (an object) or `msgpack` (as sent).
        forward_payload: ForwardPayload = ForwardPayload::Json, Rule::any();
        /// Forward door connections open at once; one more is closed at once.
        forward_max_connections: u64 = 1024, Rule::range(1, 1_000_000);
        /// How long a forward frame may take to arrive once it has begun (else the connection
        /// is closed and the client sends it again); an idle connection stays open.
        forward_read_timeout_ms: u64 = 10_000, Rule::range(100, 3_600_000);
        /// HTTP door connections open at once; one more is answered 503 and closed.
        http_max_connections: u64 = 1024, Rule::range(1, 1_000_000);
        /// How long an HTTP client may take to send a request's headers (else the connection
        /// is closed) and its body (else 408).
        http_read_timeout_ms: u64 = 10_000, Rule::range(100, 3_600_000);
        /// The MQTT door: subscribe to a broker, `mqtt://HOST:PORT?topics=devices/%23&client_id=ID`
        /// (QoS 1, persistent session, PUBACK only once accepted); options `user`, `password`,
        /// `tls`, `ca`, `session_expiry_s`, `receive_maximum`, `keep_alive_s`; `mqtts://` for TLS.
        mqtt_source: Option<Parsed<MqttSource>> = None, Rule::any().shown("off");
        /// The `sidelog.v1.Admin` service (`inspect`); `off` disables it; a non-loopback
        /// address needs TLS and a token.
        admin_listen: String = "127.0.0.1:50052".into(), Rule::any();
        /// On SIGTERM/Ctrl-C, how long open requests may finish and accepted messages reach the
        /// sink before sidelog exits anyway (what is journaled is replayed on the next start).
        shutdown_timeout_ms: u64 = 10_000, Rule::range(0, HOUR_MS);
        /// A file with the bearer token `Ingest` calls must carry (`authorization: Bearer
        /// TOKEN`; at least 16 printable characters; compared in constant time, never logged;
        /// health and reflection stay open); `sidelog publish --auth-token-file` sends it.
        auth_token_file: Option<PathBuf> = None, Rule::any().shown("none (no token asked)");
        /// PEM certificate chain: the listeners serve TLS (rustls), with `tls_key_file`.
        tls_cert_file: Option<PathBuf> = None, Rule::any().shown("none (plaintext)");
        /// PEM private key of `tls_cert_file`.
        tls_key_file: Option<PathBuf> = None, Rule::any();
        /// PEM CA certificates: clients must present a certificate signed by one (mTLS).
        tls_client_ca_file: Option<PathBuf> = None, Rule::any();
    }

    [limits] pub struct LimitsConfig {
        /// Larger messages are `REJECTED`.
        max_message_bytes: u64 = MIB, Rule::range(64, GIB);
        /// Larger requests fail as a whole (`RESOURCE_EXHAUSTED`), unread.
        max_request_bytes: u64 = 16 * MIB, Rule::range(64, 4 * GIB - 1);
        /// More messages in one request fail it (`INVALID_ARGUMENT`).
        max_messages_per_request: u64 = 10_000, Rule::range(1, 1_000_000);
        /// Longer ids are `REJECTED`.
        max_id_bytes: u64 = 256, Rule::range(1, 64 * KIB);
        /// Longer keys are `REJECTED`.
        max_key_bytes: u64 = 1024, Rule::range(0, 64 * KIB);
        /// More headers per message are `REJECTED`.
        max_headers: u64 = 64, Rule::range(0, 10_000);
        /// A header's name and value together; names must be tokens (no whitespace, `:` or
        /// control characters) and values one line, or the message is `REJECTED`.
        max_header_bytes: u64 = 8 * KIB, Rule::range(1, MIB);
        /// HTTP/2 requests under way per producer connection (the client queues the rest).
        max_concurrent_streams: u64 = 256, Rule::range(1, 65_536);
        /// Undelivered bytes (journal blocks still held; in `none`, queued in memory) before intake answers `RESOURCE_EXHAUSTED`.
        max_backlog_bytes: u64 = GIB, Rule::range(KIB, u64::MAX);
        /// The journal file's size limit; 0: only the disk's.
        max_journal_bytes: u64 = 0, Rule::off_or(MIB, u64::MAX);
    }

    [replay] pub struct ReplaySection {
        /// `first`: replay the backlog, then take traffic; `interleave`: take traffic at once
        /// and replay beside it.
        policy: ReplayPolicy = ReplayPolicy::First, Rule::any();
        /// With `interleave`, replayed entries under way at once.
        interleave_in_flight: u64 = 256, Rule::range(1, 1_000_000);
        /// An undelivered entry older than this goes to the dead-letter table (with that
        /// reason) instead of being sent again: at a replay, and between delivery retries; 0:
        /// no limit.
        max_age_ms: u64 = 0, Rule::range(0, 365 * DAY_MS);
    }

    [dedup] pub struct DedupConfig {
        /// Message ids remembered.
        window_count: u64 = 100_000, Rule::range(1, 100_000_000);
        /// How long a message id is remembered.
        window_age_ms: u64 = HOUR_MS, Rule::range(1, 30 * DAY_MS);
    }

    [journal] pub struct JournalSection {
        /// Records in one group commit at most.
        commit_max_records: u64 = 8192, Rule::range(1, 1_000_000);
        /// Longest a completion mark stays un-fsynced.
        sync_interval_ms: u64 = 1000, Rule::range(1, HOUR_MS);
        /// Size of the redo log `journal.wal` beside the journal (outside `limits.max_journal_bytes`): a durable commit appends to it and fsyncs it, the journal itself is fsynced at checkpoints; 0: no log, every durable commit fsyncs the journal (a log an earlier start left is still applied).
        wal_bytes: u64 = 32 * MIB, Rule::off_or(MIB, 1 << 40);
        /// Added to every fsync, to benchmark the modes as on a slow disk (`bench --fsync-latency`); 0 in production; not in `--help`.
        simulated_fsync_latency_us: u64 = 0, Rule::range(0, 1_000_000);
    }

    [handling]
    /// Calls to the handler.
    pub struct RetryConfig {
        /// Handler calls at once.
        concurrency: u64 = 256, Rule::range(1, 65_536);
        /// Per call.
        timeout_ms: u64 = 10_000, Rule::range(1, HOUR_MS);
        /// Calls of one input in all before it is dead-lettered; 0: no limit, a failing
        /// handler is retried for as long as it takes (an input it refuses, or one older than
        /// `replay.max_age_ms`, is dead-lettered all the same).
        max_attempts: u64 = 0, Rule::off_or(1, 1_000_000);
        /// First retry delay (full-jitter exponential backoff).
        backoff_initial_ms: u64 = 100, Rule::range(1, HOUR_MS);
        /// Longest retry delay.
        backoff_max_ms: u64 = 10_000, Rule::range(1, DAY_MS);
    }

    [delivery] pub struct DeliverySection {
        /// Parallel delivery lanes, chosen by key (order per key holds within a lane).
        lanes: u64 = 8, Rule::range(1, 1024);
        /// Messages in one batch at most.
        batch_max_messages: u64 = 1024, Rule::range(1, 1_000_000);
        /// Bytes in one batch at most.
        batch_max_bytes: u64 = 4 * MIB, Rule::range(1, GIB);
        /// Extra wait to fill a batch; 0 sends at once when the lane is idle (under load a
        /// batch fills while the previous send is under way).
        linger_ms: u64 = 0, Rule::range(0, 60_000);
        /// Per batch (plus the chunk age for the file and object sinks).
        timeout_ms: u64 = 10_000, Rule::range(1, HOUR_MS);
        /// Attempts of one batch in all before its messages are dead-lettered; 0: no limit, a
        /// sink that is down is retried for as long as it takes (a message it refuses, or one
        /// older than `replay.max_age_ms`, is dead-lettered all the same).
        max_attempts: u64 = 0, Rule::off_or(1, 1_000_000);
        /// First retry delay (full-jitter exponential backoff).
        backoff_initial_ms: u64 = 100, Rule::range(1, HOUR_MS);
        /// Longest retry delay.
        backoff_max_ms: u64 = 30_000, Rule::range(1, DAY_MS);
    }

    [file_sink] pub struct FileSinkSection {
        /// Roll a chunk at this size (1 MiB – 1 GiB: what object storage handles well).
        chunk_max_bytes: u64 = 64 * MIB, Rule::range(MIB, GIB);
        /// Roll a chunk this long after its first message.
        chunk_max_age_ms: u64 = 2000, Rule::range(1, HOUR_MS);
        /// `chunk` (sidelog's record format) or `parquet`; for the file and object sinks.
        format: ChunkFormat = ChunkFormat::Chunk, Rule::any();
    }
}
