//! Configuration: defaults, then a TOML file (`--config`), then `SIDELOG_*` environment
//! variables, then flags; validated once at start-up with errors that name the key and the
//! allowed range.
//!
//! Every setting has a config-file key (`section.key`), a flag (`--section-key`) and an
//! environment variable (`SIDELOG_SECTION_KEY`); the top-level ones drop the section
//! (`listen`, `--listen`, `SIDELOG_LISTEN`). The README's configuration reference lists them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use crate::mode::LoggingMode;
use crate::runtime::Backoff;
use crate::sink::SinkTarget;

/// A setting that is wrong, named by its config key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {key} = {value}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
}

/// The complete, validated configuration of `sidelog serve`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where producers connect (gRPC `Ingest`, health, reflection).
    pub listen: SocketAddr,
    pub mode: LoggingMode,
    pub data_dir: PathBuf,
    /// The ingest server's `Handler` (`http://host:port`); none: pass-through.
    pub handler: Option<String>,
    /// `http://host:port` (gRPC `Sink`) or `file:DIR`; none: `file:<data_dir>/out`.
    pub sink: Option<String>,
    /// Where to serve Prometheus metrics (`/metrics`); none: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// Where to serve the `sidelog.v1.Admin` service (`inspect`, dead letters), or `off`.
    /// A non-loopback address needs TLS and a token.
    pub admin_listen: String,
    /// On SIGTERM/Ctrl-C: how long to let open requests finish and accepted messages reach
    /// the sink before exiting anyway (what is journaled is replayed on the next start).
    pub shutdown_timeout_ms: u64,
    /// A file holding the bearer token that `Ingest` calls must carry
    /// (`authorization: Bearer TOKEN`); none: no token is asked for.
    pub auth_token_file: Option<PathBuf>,
    /// PEM certificate chain and key: the listener serves TLS (rustls).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates: clients must present a certificate signed by one (mTLS).
    pub tls_client_ca_file: Option<PathBuf>,
    pub limits: LimitsConfig,
    pub replay: ReplaySection,
    pub dedup: DedupConfig,
    pub journal: JournalSection,
    pub handling: RetryConfig,
    pub delivery: DeliverySection,
    pub file_sink: FileSinkSection,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_message_bytes: u64,
    pub max_request_bytes: u64,
    pub max_messages_per_request: u64,
    pub max_id_bytes: u64,
    pub max_key_bytes: u64,
    /// Headers per message.
    pub max_headers: u64,
    /// Bytes of one header, name and value together.
    pub max_header_bytes: u64,
    /// HTTP/2 streams (requests under way) per producer connection.
    pub max_concurrent_streams: u64,
    pub max_backlog_bytes: u64,
    /// The journal file's size limit; 0 = only the disk's.
    pub max_journal_bytes: u64,
}

/// What a start does with the journal's backlog.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReplayPolicy {
    /// Replay everything, then take traffic (health NOT_SERVING until done): the seeds'
    /// recover-then-rejoin.
    First,
    /// Take traffic at once and replay beside it, at most `replay.interleave_in_flight`
    /// backlog entries under way at a time, so fresh messages never queue behind the whole
    /// backlog.
    Interleave,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplaySection {
    pub policy: ReplayPolicy,
    /// Replayed entries under way at once with `interleave`.
    pub interleave_in_flight: u64,
    /// Entries older than this when replayed go to the dead-letter table (reason says so)
    /// instead of being sent; 0 = no limit.
    pub max_age_ms: u64,
}

impl Default for ReplaySection {
    fn default() -> Self {
        ReplaySection {
            policy: ReplayPolicy::First,
            interleave_in_flight: 256,
            max_age_ms: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    pub window_count: u64,
    pub window_age_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JournalSection {
    pub commit_max_records: u64,
    pub sync_interval_ms: u64,
    /// Added to every fsync, to benchmark the modes as on a slow disk; 0 in production.
    pub simulated_fsync_latency_us: u64,
}

/// Calls to the handler.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub concurrency: u64,
    pub timeout_ms: u64,
    pub max_attempts: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySection {
    pub lanes: u64,
    pub batch_max_messages: u64,
    pub batch_max_bytes: u64,
    pub linger_ms: u64,
    pub timeout_ms: u64,
    pub max_attempts: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FileSinkSection {
    pub chunk_max_bytes: u64,
    pub chunk_max_age_ms: u64,
    /// What a chunk holds: `chunk` (sidelog's length-prefixed records) or `parquet`; for the
    /// file sink and the object-storage sink.
    pub format: crate::sink::ChunkFormat,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            mode: LoggingMode::Hybrid,
            data_dir: PathBuf::from("./sidelog-data"),
            handler: None,
            sink: None,
            metrics_listen: None,
            admin_listen: "127.0.0.1:50052".into(),
            shutdown_timeout_ms: 10_000,
            auth_token_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            limits: LimitsConfig::default(),
            replay: ReplaySection::default(),
            dedup: DedupConfig::default(),
            journal: JournalSection::default(),
            handling: RetryConfig::default(),
            delivery: DeliverySection::default(),
            file_sink: FileSinkSection::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: MIB,
            max_request_bytes: 16 * MIB,
            max_messages_per_request: 10_000,
            max_id_bytes: 256,
            max_key_bytes: 1024,
            max_headers: 64,
            max_header_bytes: 8 * KIB,
            max_concurrent_streams: 256,
            max_backlog_bytes: GIB,
            max_journal_bytes: 0,
        }
    }
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            window_count: 100_000,
            window_age_ms: 3_600_000,
        }
    }
}

impl Default for JournalSection {
    fn default() -> Self {
        JournalSection {
            commit_max_records: 8192,
            sync_interval_ms: 1000,
            simulated_fsync_latency_us: 0,
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            concurrency: 256,
            timeout_ms: 10_000,
            max_attempts: 10,
            backoff_initial_ms: 100,
            backoff_max_ms: 10_000,
        }
    }
}

impl Default for DeliverySection {
    fn default() -> Self {
        DeliverySection {
            lanes: 8,
            batch_max_messages: 1024,
            batch_max_bytes: 4 * MIB,
            linger_ms: 2,
            timeout_ms: 10_000,
            max_attempts: 20,
            backoff_initial_ms: 100,
            backoff_max_ms: 30_000,
        }
    }
}

impl Default for FileSinkSection {
    fn default() -> Self {
        FileSinkSection {
            chunk_max_bytes: 64 * MIB,
            chunk_max_age_ms: 2000,
            format: crate::sink::ChunkFormat::Chunk,
        }
    }
}

/// Flags of `sidelog serve`. Each overrides its config-file key and has an environment variable.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML config file; flags and SIDELOG_* variables override its keys.
    #[arg(long, env = "SIDELOG_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the gRPC listener [default: 127.0.0.1:50051].
    #[arg(long, env = "SIDELOG_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Logging mode: hml, rbml, sbml or none [default: hml].
    #[arg(long, env = "SIDELOG_MODE")]
    pub mode: Option<LoggingMode>,
    /// Directory of the journal and of the default file sink [default: ./sidelog-data].
    #[arg(long, env = "SIDELOG_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The ingest server's Handler, http://host:port [default: none, pass-through].
    #[arg(long, env = "SIDELOG_HANDLER")]
    pub handler: Option<String>,
    /// http://host:port (a gRPC Sink) or file:DIR [default: file:<data-dir>/out].
    #[arg(long, env = "SIDELOG_SINK")]
    pub sink: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics [default: off].
    #[arg(long, env = "SIDELOG_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// On SIGTERM/Ctrl-C, drain for at most this long, then exit [default: 10000].
    #[arg(long, env = "SIDELOG_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// first (replay, then take traffic) or interleave (take traffic during replay).
    #[arg(long, env = "SIDELOG_REPLAY_POLICY")]
    pub replay_policy: Option<ReplayPolicy>,
    #[arg(long, env = "SIDELOG_REPLAY_INTERLEAVE_IN_FLIGHT")]
    pub replay_interleave_in_flight: Option<u64>,
    #[arg(long, env = "SIDELOG_REPLAY_MAX_AGE_MS")]
    pub replay_max_age_ms: Option<u64>,
    #[arg(long, env = "SIDELOG_SHUTDOWN_TIMEOUT_MS")]
    pub shutdown_timeout_ms: Option<u64>,
    /// File holding the bearer token Ingest calls must carry [default: none asked].
    #[arg(long, env = "SIDELOG_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// PEM certificate chain: serve TLS (with --tls-key-file) [default: plaintext].
    #[arg(long, env = "SIDELOG_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "SIDELOG_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates: require client certificates signed by them (mTLS).
    #[arg(long, env = "SIDELOG_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,

    #[arg(long, env = "SIDELOG_LIMITS_MAX_MESSAGE_BYTES")]
    pub limits_max_message_bytes: Option<u64>,
    #[arg(long, env = "SIDELOG_LIMITS_MAX_REQUEST_BYTES")]
    pub limits_max_request_bytes: Option<u64>,
    #[arg(long, env = "SIDELOG_LIMITS_MAX_MESSAGES_PER_REQUEST")]
    pub limits_max_messages_per_request: Option<u64>,
    #[arg(long, env = "SIDELOG_LIMITS_MAX_ID_BYTES")]
    pub limits_max_id_bytes: Option<u64>,
    #[arg(long, env = "SIDELOG_LIMITS_MAX_KEY_BYTES")]
    pub limits_max_key_bytes: Option<u64>,
    #[arg(long, env = "SIDELOG_LIMITS_MAX_HEADERS")]
    pub limits_max_headers: Option<u64>,
    #[arg(long, env = "SIDELOG_LIMITS_MAX_HEADER_BYTES")]
    pub limits_max_header_bytes: Option<u64>,
    #[arg(long, env = "SIDELOG_LIMITS_MAX_CONCURRENT_STREAMS")]
    pub limits_max_concurrent_streams: Option<u64>,
    #[arg(long, env = "SIDELOG_LIMITS_MAX_BACKLOG_BYTES")]
    pub limits_max_backlog_bytes: Option<u64>,
    #[arg(long, env = "SIDELOG_LIMITS_MAX_JOURNAL_BYTES")]
    pub limits_max_journal_bytes: Option<u64>,

    #[arg(long, env = "SIDELOG_DEDUP_WINDOW_COUNT")]
    pub dedup_window_count: Option<u64>,
    #[arg(long, env = "SIDELOG_DEDUP_WINDOW_AGE_MS")]
    pub dedup_window_age_ms: Option<u64>,

    #[arg(long, env = "SIDELOG_JOURNAL_COMMIT_MAX_RECORDS")]
    pub journal_commit_max_records: Option<u64>,
    #[arg(long, env = "SIDELOG_JOURNAL_SYNC_INTERVAL_MS")]
    pub journal_sync_interval_ms: Option<u64>,
    #[arg(long, env = "SIDELOG_JOURNAL_SIMULATED_FSYNC_LATENCY_US")]
    pub journal_simulated_fsync_latency_us: Option<u64>,

    #[arg(long, env = "SIDELOG_HANDLING_CONCURRENCY")]
    pub handling_concurrency: Option<u64>,
    #[arg(long, env = "SIDELOG_HANDLING_TIMEOUT_MS")]
    pub handling_timeout_ms: Option<u64>,
    #[arg(long, env = "SIDELOG_HANDLING_MAX_ATTEMPTS")]
    pub handling_max_attempts: Option<u64>,
    #[arg(long, env = "SIDELOG_HANDLING_BACKOFF_INITIAL_MS")]
    pub handling_backoff_initial_ms: Option<u64>,
    #[arg(long, env = "SIDELOG_HANDLING_BACKOFF_MAX_MS")]
    pub handling_backoff_max_ms: Option<u64>,

    #[arg(long, env = "SIDELOG_DELIVERY_LANES")]
    pub delivery_lanes: Option<u64>,
    #[arg(long, env = "SIDELOG_DELIVERY_BATCH_MAX_MESSAGES")]
    pub delivery_batch_max_messages: Option<u64>,
    #[arg(long, env = "SIDELOG_DELIVERY_BATCH_MAX_BYTES")]
    pub delivery_batch_max_bytes: Option<u64>,
    #[arg(long, env = "SIDELOG_DELIVERY_LINGER_MS")]
    pub delivery_linger_ms: Option<u64>,
    #[arg(long, env = "SIDELOG_DELIVERY_TIMEOUT_MS")]
    pub delivery_timeout_ms: Option<u64>,
    #[arg(long, env = "SIDELOG_DELIVERY_MAX_ATTEMPTS")]
    pub delivery_max_attempts: Option<u64>,
    #[arg(long, env = "SIDELOG_DELIVERY_BACKOFF_INITIAL_MS")]
    pub delivery_backoff_initial_ms: Option<u64>,
    #[arg(long, env = "SIDELOG_DELIVERY_BACKOFF_MAX_MS")]
    pub delivery_backoff_max_ms: Option<u64>,

    #[arg(long, env = "SIDELOG_FILE_SINK_CHUNK_MAX_BYTES")]
    pub file_sink_chunk_max_bytes: Option<u64>,
    /// chunk (sidelog's record format) or parquet: what the file and object sinks write.
    #[arg(long, env = "SIDELOG_FILE_SINK_FORMAT")]
    pub file_sink_format: Option<crate::sink::ChunkFormat>,
    #[arg(long, env = "SIDELOG_FILE_SINK_CHUNK_MAX_AGE_MS")]
    pub file_sink_chunk_max_age_ms: Option<u64>,
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

impl Config {
    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Defaults, then the file named by `--config`, then flags and environment; validated.
    pub fn load(args: ServeArgs) -> Result<Config, ConfigError> {
        let mut c = match &args.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        set(&mut c.listen, args.listen);
        set(&mut c.mode, args.mode);
        set(&mut c.data_dir, args.data_dir);
        if args.handler.is_some() {
            c.handler = args.handler;
        }
        if args.sink.is_some() {
            c.sink = args.sink;
        }
        if args.metrics_listen.is_some() {
            c.metrics_listen = args.metrics_listen;
        }
        set(&mut c.shutdown_timeout_ms, args.shutdown_timeout_ms);
        set(&mut c.admin_listen, args.admin_listen);
        set(&mut c.replay.policy, args.replay_policy);
        set(
            &mut c.replay.interleave_in_flight,
            args.replay_interleave_in_flight,
        );
        set(&mut c.replay.max_age_ms, args.replay_max_age_ms);
        if args.auth_token_file.is_some() {
            c.auth_token_file = args.auth_token_file;
        }
        for (to, from) in [
            (&mut c.tls_cert_file, args.tls_cert_file),
            (&mut c.tls_key_file, args.tls_key_file),
            (&mut c.tls_client_ca_file, args.tls_client_ca_file),
        ] {
            if from.is_some() {
                *to = from;
            }
        }
        let l = &mut c.limits;
        set(&mut l.max_message_bytes, args.limits_max_message_bytes);
        set(&mut l.max_request_bytes, args.limits_max_request_bytes);
        set(
            &mut l.max_messages_per_request,
            args.limits_max_messages_per_request,
        );
        set(&mut l.max_id_bytes, args.limits_max_id_bytes);
        set(&mut l.max_key_bytes, args.limits_max_key_bytes);
        set(&mut l.max_headers, args.limits_max_headers);
        set(&mut l.max_header_bytes, args.limits_max_header_bytes);
        set(
            &mut l.max_concurrent_streams,
            args.limits_max_concurrent_streams,
        );
        set(&mut l.max_backlog_bytes, args.limits_max_backlog_bytes);
        set(&mut l.max_journal_bytes, args.limits_max_journal_bytes);
        set(&mut c.dedup.window_count, args.dedup_window_count);
        set(&mut c.dedup.window_age_ms, args.dedup_window_age_ms);
        set(
            &mut c.journal.commit_max_records,
            args.journal_commit_max_records,
        );
        set(
            &mut c.journal.sync_interval_ms,
            args.journal_sync_interval_ms,
        );
        set(
            &mut c.journal.simulated_fsync_latency_us,
            args.journal_simulated_fsync_latency_us,
        );
        let h = &mut c.handling;
        set(&mut h.concurrency, args.handling_concurrency);
        set(&mut h.timeout_ms, args.handling_timeout_ms);
        set(&mut h.max_attempts, args.handling_max_attempts);
        set(&mut h.backoff_initial_ms, args.handling_backoff_initial_ms);
        set(&mut h.backoff_max_ms, args.handling_backoff_max_ms);
        let d = &mut c.delivery;
        set(&mut d.lanes, args.delivery_lanes);
        set(&mut d.batch_max_messages, args.delivery_batch_max_messages);
        set(&mut d.batch_max_bytes, args.delivery_batch_max_bytes);
        set(&mut d.linger_ms, args.delivery_linger_ms);
        set(&mut d.timeout_ms, args.delivery_timeout_ms);
        set(&mut d.max_attempts, args.delivery_max_attempts);
        set(&mut d.backoff_initial_ms, args.delivery_backoff_initial_ms);
        set(&mut d.backoff_max_ms, args.delivery_backoff_max_ms);
        set(
            &mut c.file_sink.chunk_max_bytes,
            args.file_sink_chunk_max_bytes,
        );
        set(
            &mut c.file_sink.chunk_max_age_ms,
            args.file_sink_chunk_max_age_ms,
        );
        set(&mut c.file_sink.format, args.file_sink_format);
        c.validate()?;
        Ok(c)
    }

    /// The listener's TLS settings, if `tls_cert_file` is set.
    pub fn tls(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, ConfigError> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let read = |key: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| ConfigError::Invalid {
                key,
                value: path.display().to_string(),
                reason: format!("cannot read it: {e}"),
            })
        };
        let (cert, key) = match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => {
                if let Some(ca) = &self.tls_client_ca_file {
                    return Err(ConfigError::Invalid {
                        key: "tls_client_ca_file",
                        value: ca.display().to_string(),
                        reason: "client certificates need TLS: set tls_cert_file and tls_key_file"
                            .into(),
                    });
                }
                return Ok(None);
            }
            (Some(c), Some(k)) => (read("tls_cert_file", c)?, read("tls_key_file", k)?),
            (Some(c), None) | (None, Some(c)) => {
                return Err(ConfigError::Invalid {
                    key: if self.tls_key_file.is_none() {
                        "tls_key_file"
                    } else {
                        "tls_cert_file"
                    },
                    value: c.display().to_string(),
                    reason: "tls_cert_file and tls_key_file go together".into(),
                });
            }
        };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = &self.tls_client_ca_file {
            tls = tls.client_ca_root(Certificate::from_pem(read("tls_client_ca_file", ca)?));
        }
        Ok(Some(tls))
    }

    /// The bearer token from `auth_token_file`, if one is set.
    pub fn auth_token(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.auth_token_file else {
            return Ok(None);
        };
        crate::service::read_token_file(path)
            .map(Some)
            .map_err(|reason| ConfigError::Invalid {
                key: "auth_token_file",
                value: path.display().to_string(),
                reason,
            })
    }

    /// Checks every value against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: &[(&'static str, u64, u64, u64)] = &[
            (
                "limits.max_message_bytes",
                self.limits.max_message_bytes,
                64,
                GIB,
            ),
            (
                "limits.max_request_bytes",
                self.limits.max_request_bytes,
                64,
                4 * GIB - 1,
            ),
            (
                "limits.max_messages_per_request",
                self.limits.max_messages_per_request,
                1,
                1_000_000,
            ),
            ("limits.max_id_bytes", self.limits.max_id_bytes, 1, 64 * KIB),
            (
                "limits.max_key_bytes",
                self.limits.max_key_bytes,
                0,
                64 * KIB,
            ),
            ("limits.max_headers", self.limits.max_headers, 0, 10_000),
            (
                "limits.max_header_bytes",
                self.limits.max_header_bytes,
                1,
                MIB,
            ),
            (
                "limits.max_concurrent_streams",
                self.limits.max_concurrent_streams,
                1,
                65_536,
            ),
            (
                "limits.max_backlog_bytes",
                self.limits.max_backlog_bytes,
                KIB,
                u64::MAX,
            ),
            (
                "shutdown_timeout_ms",
                self.shutdown_timeout_ms,
                0,
                3_600_000,
            ),
            (
                "replay.interleave_in_flight",
                self.replay.interleave_in_flight,
                1,
                1_000_000,
            ),
            (
                "replay.max_age_ms",
                self.replay.max_age_ms,
                0,
                365 * 86_400_000,
            ),
            (
                "dedup.window_count",
                self.dedup.window_count,
                1,
                100_000_000,
            ),
            (
                "dedup.window_age_ms",
                self.dedup.window_age_ms,
                1,
                30 * 86_400_000,
            ),
            (
                "journal.commit_max_records",
                self.journal.commit_max_records,
                1,
                1_000_000,
            ),
            (
                "journal.sync_interval_ms",
                self.journal.sync_interval_ms,
                1,
                3_600_000,
            ),
            (
                "journal.simulated_fsync_latency_us",
                self.journal.simulated_fsync_latency_us,
                0,
                1_000_000,
            ),
            ("handling.concurrency", self.handling.concurrency, 1, 65_536),
            (
                "handling.timeout_ms",
                self.handling.timeout_ms,
                1,
                3_600_000,
            ),
            (
                "handling.max_attempts",
                self.handling.max_attempts,
                1,
                1_000_000,
            ),
            (
                "handling.backoff_initial_ms",
                self.handling.backoff_initial_ms,
                1,
                3_600_000,
            ),
            (
                "handling.backoff_max_ms",
                self.handling.backoff_max_ms,
                1,
                86_400_000,
            ),
            ("delivery.lanes", self.delivery.lanes, 1, 1024),
            (
                "delivery.batch_max_messages",
                self.delivery.batch_max_messages,
                1,
                1_000_000,
            ),
            (
                "delivery.batch_max_bytes",
                self.delivery.batch_max_bytes,
                1,
                GIB,
            ),
            ("delivery.linger_ms", self.delivery.linger_ms, 0, 60_000),
            (
                "delivery.timeout_ms",
                self.delivery.timeout_ms,
                1,
                3_600_000,
            ),
            (
                "delivery.max_attempts",
                self.delivery.max_attempts,
                1,
                1_000_000,
            ),
            (
                "delivery.backoff_initial_ms",
                self.delivery.backoff_initial_ms,
                1,
                3_600_000,
            ),
            (
                "delivery.backoff_max_ms",
                self.delivery.backoff_max_ms,
                1,
                86_400_000,
            ),
            // The seeds' guidance for object storage: 1 MiB to 1 GiB per file.
            (
                "file_sink.chunk_max_bytes",
                self.file_sink.chunk_max_bytes,
                MIB,
                GIB,
            ),
            (
                "file_sink.chunk_max_age_ms",
                self.file_sink.chunk_max_age_ms,
                1,
                3_600_000,
            ),
        ];
        for &(key, value, min, max) in checks {
            if value < min || value > max {
                return Err(ConfigError::Invalid {
                    key,
                    value: value.to_string(),
                    reason: format!("allowed range is {min}..={max}"),
                });
            }
        }
        if self.limits.max_journal_bytes != 0 && self.limits.max_journal_bytes < MIB {
            return Err(ConfigError::Invalid {
                key: "limits.max_journal_bytes",
                value: self.limits.max_journal_bytes.to_string(),
                reason: format!("must be 0 (no limit) or at least {MIB}"),
            });
        }
        if self.limits.max_message_bytes > self.limits.max_request_bytes {
            return Err(ConfigError::Invalid {
                key: "limits.max_message_bytes",
                value: self.limits.max_message_bytes.to_string(),
                reason: "must not exceed limits.max_request_bytes".into(),
            });
        }
        if let Some(url) = &self.handler {
            check_http_url("handler", url)?;
        }
        if let Some(addr) = self.admin_addr()?
            && !addr.ip().is_loopback()
            && (self.tls_cert_file.is_none() || self.auth_token_file.is_none())
        {
            return Err(ConfigError::Invalid {
                key: "admin_listen",
                value: addr.to_string(),
                reason: "the admin service can re-queue and purge: on a non-loopback address it \
                         needs TLS (tls_cert_file, tls_key_file) and a token (auth_token_file)"
                    .into(),
            });
        }
        self.sink_target()?;
        Ok(())
    }

    /// Where the admin service listens, parsed from `admin_listen`; `None` when it is `off`.
    pub fn admin_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.admin_listen == "off" {
            return Ok(None);
        }
        let addr: SocketAddr = self
            .admin_listen
            .parse()
            .map_err(|e| ConfigError::Invalid {
                key: "admin_listen",
                value: self.admin_listen.clone(),
                reason: format!("expected HOST:PORT (an IP address) or off: {e}"),
            })?;
        if addr.port() != 0 && (self.metrics_listen == Some(addr) || self.listen == addr) {
            return Err(ConfigError::Invalid {
                key: "admin_listen",
                value: self.admin_listen.clone(),
                reason: "must differ from listen and metrics_listen".into(),
            });
        }
        Ok(Some(addr))
    }

    /// Where outputs go, parsed from `sink`.
    pub fn sink_target(&self) -> Result<SinkTarget, ConfigError> {
        match self.sink.as_deref() {
            None => Ok(SinkTarget::File(self.data_dir.join("out"))),
            Some(s) if s.starts_with("file:") => {
                let dir = &s["file:".len()..];
                if dir.is_empty() {
                    return Err(ConfigError::Invalid {
                        key: "sink",
                        value: s.to_owned(),
                        reason: "file: needs a directory, e.g. file:./out".into(),
                    });
                }
                Ok(SinkTarget::File(PathBuf::from(dir)))
            }
            Some(s) if s.starts_with("nats://") => crate::sink::NatsSinkConfig::parse(s)
                .map(|c| SinkTarget::Nats(Box::new(c)))
                .map_err(|reason| ConfigError::Invalid {
                    key: "sink",
                    // The URL may hold a token or a password: not repeated in the error.
                    value: "nats://…".into(),
                    reason,
                }),
            Some(s) if s.starts_with("s3://") => crate::sink::ObjectSinkConfig::parse(s)
                .map(|c| SinkTarget::Object(Box::new(c)))
                .map_err(|reason| ConfigError::Invalid {
                    key: "sink",
                    value: s.to_owned(),
                    reason,
                }),
            Some(s) => {
                check_http_url("sink", s)?;
                Ok(SinkTarget::Grpc(s.to_owned()))
            }
        }
    }

    pub fn handler_backoff(&self) -> Backoff {
        Backoff {
            initial_ms: self.handling.backoff_initial_ms,
            max_ms: self.handling.backoff_max_ms,
            max_attempts: self.handling.max_attempts as u32,
        }
    }

    pub fn delivery_backoff(&self) -> Backoff {
        Backoff {
            initial_ms: self.delivery.backoff_initial_ms,
            max_ms: self.delivery.backoff_max_ms,
            max_attempts: self.delivery.max_attempts as u32,
        }
    }
}

fn check_http_url(key: &'static str, url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(hostport) if !hostport.is_empty() && hostport.contains(':') => Ok(()),
        _ => Err(ConfigError::Invalid {
            key,
            value: url.to_owned(),
            reason: "expected http://host:port".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        Config::default().validate().unwrap();
        assert_eq!(
            Config::default().sink_target().unwrap(),
            SinkTarget::File(PathBuf::from("./sidelog-data/out"))
        );
    }

    #[test]
    fn a_file_sets_keys_and_flags_override_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sidelog.toml");
        std::fs::write(
            &path,
            "mode = \"rbml\"\nsink = \"http://127.0.0.1:9\"\n[delivery]\nlanes = 3\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            mode: Some(LoggingMode::SenderBased),
            ..Default::default()
        };
        let c = Config::load(args).unwrap();
        assert_eq!(c.mode, LoggingMode::SenderBased);
        assert_eq!(c.delivery.lanes, 3);
        assert_eq!(
            c.sink_target().unwrap(),
            SinkTarget::Grpc("http://127.0.0.1:9".into())
        );
    }

    #[test]
    fn errors_name_the_key() {
        let args = ServeArgs {
            delivery_lanes: Some(0),
            ..Default::default()
        };
        let err = Config::load(args).unwrap_err().to_string();
        assert!(err.contains("delivery.lanes"), "{err}");
        let args = ServeArgs {
            sink: Some("ftp://x".into()),
            ..Default::default()
        };
        let err = Config::load(args).unwrap_err().to_string();
        assert!(err.contains("sink"), "{err}");
        let args = ServeArgs {
            sink: Some("s3://Bad_Bucket/x".into()),
            ..Default::default()
        };
        let err = Config::load(args).unwrap_err().to_string();
        assert!(err.contains("sink") && err.contains("bucket"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "lanes = 3\n").unwrap();
        let err = Config::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("lanes"), "{err}");
    }
}
