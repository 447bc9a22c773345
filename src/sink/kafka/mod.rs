//! The Apache Kafka sink (`--sink kafka://HOST:PORT[,HOST:PORT...]/TOPIC?...`), through
//! librdkafka (`rdkafka`): the client Vector, Fluent Bit and most non-Java tools use.
//!
//! - Each message is one record: its key the record key, partitioned as the Java client does
//!   (murmur2 of the key, `partitioner=murmur2_random`), so a key's records land in one
//!   partition in journal order; its payload the value; its event time the record timestamp;
//!   its id (`sidelog-id`), its journal sequence (`sidelog-seq`) and its own headers the record
//!   headers.
//! - `acks=all` and the idempotent producer: a record the broker acked is on every in-sync
//!   replica, and librdkafka's own retries neither reorder nor duplicate within a partition.
//!   A batch is acked to delivery only once every record of it is acked by the broker.
//! - **Exactly once** (the default, `exactly_once=false` turns it off): a transactional
//!   producer with one `transactional.id` per sidecar commits each delivered batch in a
//!   transaction that also writes a progress record; at start the records are read back and
//!   what the topic holds is not sent again (`txn.rs`, `progress.rs`). Without it, delivery is
//!   at least once: a batch retried after a failure, or replayed after a crash, may add
//!   records the topic already holds; their `sidelog-id` tells them apart.
//! - A record the broker (or librdkafka, before sending) refuses as too large is refused for
//!   good (dead-lettered with the reason); a broker that is down or a leader that moves is
//!   retried for as long as it takes.

mod progress;
mod txn;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientConfig, Offset};
use tracing::{info, warn};

use super::{Batch, Receipt, SEQ_HEADER, Sink, SinkError, SinkSetupError};
use crate::journal::{DeliveryProgress, DeliveryState};
use crate::proto::Message;
use crate::runtime::BoxFuture;

/// Set to 1 in a test, the exactly-once sink writes and reads no progress records, so the
/// test can show that its read-back is what keeps duplicates out.
pub const NO_PROGRESS_VAR: &str = "SIDELOG_TEST_KAFKA_NO_PROGRESS";

/// The record header that carries the message id.
pub const ID_HEADER: &str = "sidelog-id";

/// Compression of record batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
    Zstd,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// A parsed `kafka://` sink URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSinkConfig {
    /// `host:port[,host:port...]`.
    pub bootstrap: String,
    pub topic: String,
    pub compression: Compression,
    /// How long librdkafka waits to fill a record batch (`linger.ms`).
    pub linger_ms: u64,
    /// The most bytes of one record batch (`batch.size`).
    pub batch_bytes: u64,
    /// The largest record librdkafka sends (`message.max.bytes`); keep it at or below the
    /// topic's `max.message.bytes`.
    pub max_record_bytes: u64,
    pub client_id: String,
    /// Transactions and progress records (the default), or the idempotent producer alone.
    pub exactly_once: bool,
    /// The producer's `transactional.id`; empty: `sidelog-` and the journal's identity.
    pub transactional_id: String,
    /// Where the progress records go.
    pub progress_topic: String,
    /// TLS and SASL.
    pub security: Security,
}

/// How the sink reaches the brokers: TLS (with a CA of its own, and a client certificate for
/// mutual TLS) and SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    pub tls: bool,
    /// `ca_file`: the CA certificates (PEM) that sign the brokers'; the system's otherwise.
    pub ca_file: Option<std::path::PathBuf>,
    /// `cert_file` and `key_file`: the sink's own certificate and key (PEM), for mutual TLS.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub sasl: Option<Sasl>,
}

/// SASL credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Sasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: &'static str,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Security {
    /// librdkafka's `security.protocol`.
    fn protocol(&self) -> &'static str {
        match (self.tls, self.sasl.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        }
    }

    fn apply(&self, c: &mut ClientConfig) {
        c.set("security.protocol", self.protocol());
        if let Some(ca) = &self.ca_file {
            c.set("ssl.ca.location", ca.to_string_lossy());
        }
        if let Some((cert, key)) = &self.client_cert {
            c.set("ssl.certificate.location", cert.to_string_lossy())
                .set("ssl.key.location", key.to_string_lossy());
        }
        if let Some(sasl) = &self.sasl {
            c.set("sasl.mechanism", sasl.mechanism)
                .set("sasl.username", &sasl.username)
                .set("sasl.password", &sasl.password);
        }
    }

    /// The files it names can be read (librdkafka reads them itself, with a vaguer error).
    fn check_files(&self) -> Result<(), SinkSetupError> {
        let files = self.ca_file.iter().map(|f| ("ca_file", f)).chain(
            self.client_cert
                .iter()
                .flat_map(|(c, k)| [("cert_file", c), ("key_file", k)]),
        );
        for (option, file) in files {
            std::fs::read(file).map_err(|e| {
                SinkSetupError::caused(format!("{option}={}: cannot read it", file.display()), e)
            })?;
        }
        Ok(())
    }
}
const OPTIONS: &str = "compression (zstd, lz4, none), linger_ms, batch_bytes, max_record_bytes, \
                       client_id, exactly_once (true, false), transactional_id, progress_topic, \
                       tls (true, false), ca_file, cert_file, key_file, sasl_mechanism (PLAIN, \
                       SCRAM-SHA-256, SCRAM-SHA-512), username, password";

/// The progress topic when the URL names none.
pub const DEFAULT_PROGRESS_TOPIC: &str = "sidelog-progress";

impl KafkaSinkConfig {
    /// Parses `kafka://HOST:PORT[,HOST:PORT...]/TOPIC[?option=value&...]`; the options are read
    /// as every sink's are (`url_options`: `%`-decoded, `+` kept).
    pub fn parse(url: &str) -> Result<KafkaSinkConfig, String> {
        let rest = url
            .strip_prefix("kafka://")
            .ok_or("a Kafka sink URL starts with kafka://")?;
        let (hosts, rest) = rest
            .split_once('/')
            .ok_or("expected kafka://HOST:PORT/TOPIC: the topic is missing")?;
        let (topic, query) = rest.split_once('?').unwrap_or((rest, ""));
        check_topic(topic)?;
        let mut config = KafkaSinkConfig {
            bootstrap: bootstrap(hosts)?,
            topic: topic.to_owned(),
            compression: Compression::Zstd,
            linger_ms: 5,
            batch_bytes: 1 << 20,
            max_record_bytes: 1_000_000,
            client_id: "sidelog".into(),
            exactly_once: true,
            transactional_id: String::new(),
            progress_topic: DEFAULT_PROGRESS_TOPIC.into(),
            security: Security::default(),
        };
        let mut security = SecurityOptions::default();
        for (name, value) in crate::url_options::options(query)? {
            config.set(name, value, &mut security)?;
        }
        config.security = security.into_security()?;
        Ok(config)
    }

    /// Takes one option of the URL; the security options are gathered in `security`, which
    /// checks them together.
    fn set(
        &mut self,
        name: &str,
        value: String,
        security: &mut SecurityOptions,
    ) -> Result<(), String> {
        let number = |max: u64| {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=max).contains(n) || (name == "linger_ms" && *n == 0))
                .ok_or_else(|| format!("{name}={value}: expected a number up to {max}"))
        };
        let flag = |v: &str| crate::url_options::flag(name, v);
        match name {
            "compression" => {
                self.compression = match value.as_str() {
                    "zstd" => Compression::Zstd,
                    "lz4" => Compression::Lz4,
                    "none" => Compression::None,
                    other => {
                        return Err(format!("compression={other}: expected zstd, lz4 or none"));
                    }
                }
            }
            "linger_ms" => self.linger_ms = number(60_000)?,
            "batch_bytes" => self.batch_bytes = number(1 << 30)?,
            "max_record_bytes" => self.max_record_bytes = number(1_000_000_000)?,
            "client_id" => self.client_id = value,
            "exactly_once" => self.exactly_once = flag(&value)?,
            "transactional_id" => self.transactional_id = value,
            "progress_topic" => {
                check_topic(&value).map_err(|e| format!("progress_topic: {e}"))?;
                self.progress_topic = value;
            }
            "tls" => security.tls = Some(flag(&value)?),
            "ca_file" => security.ca_file = Some(value.into()),
            "cert_file" => security.cert = Some(value),
            "key_file" => security.key = Some(value),
            "sasl_mechanism" => {
                security.mechanism = Some(
                    ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
                        .into_iter()
                        .find(|m| m.eq_ignore_ascii_case(&value))
                        .ok_or_else(|| {
                            format!(
                                "sasl_mechanism={value}: expected PLAIN, SCRAM-SHA-256 or \
                                 SCRAM-SHA-512"
                            )
                        })?,
                )
            }
            "username" => security.username = Some(value),
            "password" => security.password = Some(value),
            other => {
                return Err(format!(
                    "unknown option {other:?}; the Kafka sink takes {OPTIONS}"
                ));
            }
        }
        Ok(())
    }

    fn sasl_over_plaintext(&self) -> bool {
        self.security.sasl.is_some() && !self.security.tls
    }

    /// The settings of a client that only asks (metadata, topic creation).
    fn admin_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("client.id", &self.client_id);
        self.security.apply(&mut c);
        c
    }

    fn client_config(&self, timeout: Duration) -> ClientConfig {
        let mut c = self.admin_config();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("client.id", &self.client_id)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // The Java client's partitioner: a key's records go where a Java producer (and
            // Kafka Streams, and Kafka Connect) would put them.
            .set("partitioner", "murmur2_random")
            .set("compression.type", self.compression.as_str())
            .set("linger.ms", self.linger_ms.to_string())
            .set("batch.size", self.batch_bytes.to_string())
            .set("message.max.bytes", self.max_record_bytes.to_string())
            // librdkafka retries inside this; past it, delivery retries the whole batch.
            .set(
                "message.timeout.ms",
                timeout.as_millis().max(1000).to_string(),
            );
        if self.exactly_once {
            // librdkafka requires message.timeout.ms <= transaction.timeout.ms.
            c.set("transactional.id", &self.transactional_id)
                .set(
                    "transaction.timeout.ms",
                    timeout.as_millis().max(60_000).to_string(),
                )
                // A transaction begun right after a commit finds the partitions still busy
                // with the last one's markers (CONCURRENT_TRANSACTIONS) and is retried after
                // this: librdkafka's 100 ms default was most of each transaction's time.
                .set("retry.backoff.ms", "5")
                .set("retry.backoff.max.ms", "100");
        }
        c
    }
}

/// The bootstrap list of a Kafka URL's authority: `HOST:PORT[,HOST:PORT...]`, no credentials.
fn bootstrap(hosts: &str) -> Result<String, String> {
    let mut bootstrap = Vec::new();
    for host in hosts.split(',') {
        let (name, port) = host
            .rsplit_once(':')
            .ok_or_else(|| format!("{host:?}: expected HOST:PORT"))?;
        if name.contains('@') {
            return Err(format!(
                "{host:?}: credentials go in the username= and password= options (the \
                 password is redacted wherever the URL is shown)"
            ));
        }
        if name.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("{host:?}: expected HOST:PORT"));
        }
        bootstrap.push(host);
    }
    Ok(bootstrap.join(","))
}

/// The security options of a Kafka URL, as given; [`SecurityOptions::into_security`] checks
/// them together.
#[derive(Default)]
struct SecurityOptions {
    tls: Option<bool>,
    ca_file: Option<std::path::PathBuf>,
    cert: Option<String>,
    key: Option<String>,
    mechanism: Option<&'static str>,
    username: Option<String>,
    password: Option<String>,
}

impl SecurityOptions {
    fn into_security(self) -> Result<Security, String> {
        let client_cert = match (self.cert, self.key) {
            (Some(cert), Some(key)) => Some((cert.into(), key.into())),
            (None, None) => None,
            _ => return Err("cert_file and key_file go together (mutual TLS)".into()),
        };
        let sasl = match (self.mechanism, self.username, self.password) {
            (Some(mechanism), Some(username), Some(password)) => Some(Sasl {
                mechanism,
                username,
                password,
            }),
            (None, None, None) => None,
            (None, ..) => {
                return Err(
                    "username and password need sasl_mechanism= (PLAIN, SCRAM-SHA-256 or \
                     SCRAM-SHA-512)"
                        .into(),
                );
            }
            _ => return Err("sasl_mechanism needs both username= and password=".into()),
        };
        // A CA or a client certificate means TLS, unless it is turned off outright.
        let files = self.ca_file.is_some() || client_cert.is_some();
        let tls = match self.tls {
            Some(false) if files => {
                return Err(
                    "tls=false with ca_file, cert_file or key_file: TLS files need TLS".into(),
                );
            }
            Some(tls) => tls,
            None => files,
        };
        Ok(Security {
            tls,
            ca_file: self.ca_file,
            client_cert,
            sasl,
        })
    }
}

/// Kafka's rule for topic names.
fn check_topic(topic: &str) -> Result<(), String> {
    let valid = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{topic:?} is not a Kafka topic name (1-249 of a-z, A-Z, 0-9, '.', '_', '-')"
        ))
    }
}

/// Delivers into a Kafka topic (see the module docs).
#[derive(Clone)]
pub struct KafkaSink {
    how: How,
    config: Arc<KafkaSinkConfig>,
    timeout: Duration,
}

#[derive(Clone)]
enum How {
    /// The idempotent producer alone: at least once.
    Plain(FutureProducer),
    /// Transactions and progress records: exactly once.
    Transactional(txn::Transactions),
}

impl KafkaSink {
    /// Makes the producer and asks the cluster about the topic: a topic the cluster says does
    /// not exist fails the start; a cluster that does not answer yet is said in the log (it
    /// may be starting too) and retried by delivery. With exactly once, `journal` (its
    /// identity and stored progress) names the producer and says where to read back from; the
    /// progress topic is made when it is missing.
    pub async fn connect(
        mut config: KafkaSinkConfig,
        timeout: Duration,
        journal: Option<DeliveryState>,
    ) -> Result<KafkaSink, SinkSetupError> {
        config.security.check_files()?;
        if config.sasl_over_plaintext() {
            warn!("SASL without tls=true: the credentials cross the network in the clear");
        }
        if config.exactly_once && config.transactional_id.is_empty() {
            let identity = journal.map(|j| j.identity).ok_or_else(|| {
                SinkSetupError::new(
                    "the exactly-once Kafka sink needs the journal's identity or a \
                     transactional_id in the sink URL",
                )
            })?;
            config.transactional_id = format!("sidelog-{identity:016x}");
        }
        let reachable = match probe(&config.admin_config(), &config.topic, &config.bootstrap).await
        {
            Probe::Found(partitions) => {
                metrics::gauge!(crate::metrics::SINK_UP).set(1.0);
                info!(topic = %config.topic, partitions, bootstrap = %config.bootstrap, "Kafka topic found");
                true
            }
            Probe::NoTopic(reason) | Probe::Misconfigured(reason) => {
                return Err(SinkSetupError::new(reason));
            }
            Probe::NoAnswer(reason) => {
                metrics::gauge!(crate::metrics::SINK_UP).set(0.0);
                warn!("{reason}; deliveries are retried until it answers");
                false
            }
        };
        let client = config.client_config(timeout);
        let producer: FutureProducer = client
            .create()
            .map_err(|e| SinkSetupError::caused("cannot make a Kafka producer", e))?;
        let config = Arc::new(config);
        let how = if config.exactly_once {
            // The progress topic is found (or made) and read back by the transaction driver,
            // retried until Kafka answers: a cluster down at start holds the replay, not the
            // start.
            let _ = reachable;
            How::Transactional(txn::Transactions::start(
                producer,
                config.clone(),
                journal,
                timeout,
            ))
        } else {
            How::Plain(producer)
        };
        Ok(KafkaSink {
            how,
            config,
            timeout,
        })
    }
}

/// Where this sidecar's progress records go (the progress topic made if missing), where to
/// read them back from, and the tracker of the position to store.
async fn progress_log(
    config: &KafkaSinkConfig,
    journal: Option<DeliveryState>,
) -> Result<(Option<txn::ProgressLog>, progress::Tracker), SinkSetupError> {
    let Some(journal) = journal else {
        return Ok((None, progress::Tracker::new(0, 0, 0)));
    };
    if std::env::var_os(NO_PROGRESS_VAR).is_some_and(|v| v == "1") {
        warn!("{NO_PROGRESS_VAR}=1: no progress records; a crash leaves duplicates in the topic");
        return Ok((None, progress::Tracker::new(0, 0, 0)));
    }
    let topic = &config.progress_topic;
    let cluster = cluster(&config.admin_config(), &config.bootstrap).await?;
    let partitions = match probe(&config.admin_config(), topic, &config.bootstrap).await {
        Probe::Found(partitions) => partitions,
        Probe::NoTopic(_) => {
            create_progress_topic(config, cluster.brokers).await?;
            made_topic_partitions(config).await?
        }
        Probe::NoAnswer(reason) | Probe::Misconfigured(reason) => {
            return Err(SinkSetupError::new(reason));
        }
    };
    let partition = (twox_hash::XxHash3_64::oneshot(config.transactional_id.as_bytes())
        % partitions as u64) as i32;
    // The position means something only in this partition of this cluster's progress topic,
    // for this producer and data topic: otherwise the records are read from the start.
    let key = twox_hash::XxHash3_64::oneshot(
        format!(
            "{}\0{topic}\0{partitions}\0{}\0{}",
            cluster.id, config.transactional_id, config.topic
        )
        .as_bytes(),
    );
    let stored = journal
        .progress
        .filter(|p| p.key == key && p.partition == partition as u64);
    let from = stored.map_or(Offset::Beginning, |p| Offset::Offset(p.position as i64));
    info!(
        transactional_id = %config.transactional_id,
        progress_topic = %topic,
        partition,
        from = ?from,
        "exactly once into Kafka: the progress records are read back before the replay"
    );
    Ok((
        Some(txn::ProgressLog {
            topic: topic.clone(),
            partition,
            identity: journal.identity,
            from,
        }),
        progress::Tracker::new(key, partition as u64, stored.map_or(0, |p| p.position)),
    ))
}

/// What the cluster says of itself.
struct Cluster {
    /// Its id (empty when it does not say).
    id: String,
    brokers: usize,
}

async fn cluster(config: &ClientConfig, bootstrap: &str) -> Result<Cluster, SinkSetupError> {
    let config = config.clone();
    let answer = tokio::task::spawn_blocking(move || -> Result<Cluster, KafkaError> {
        let client: BaseProducer = config.create()?;
        let metadata = client
            .client()
            .fetch_metadata(None, Duration::from_secs(5))?;
        let id = client
            .client()
            .fetch_cluster_id(Duration::from_secs(5))
            .unwrap_or_default();
        Ok(Cluster {
            id,
            brokers: metadata.brokers().len(),
        })
    })
    .await
    .map_err(|e| SinkSetupError::caused("the Kafka metadata request failed", e))?;
    answer.map_err(|e| {
        SinkSetupError::caused(format!("Kafka at {bootstrap} did not answer within 5 s"), e)
    })
}

/// Makes the progress topic: one partition, as replicated as the cluster allows (up to 3),
/// records kept for 7 days.
async fn create_progress_topic(
    config: &KafkaSinkConfig,
    brokers: usize,
) -> Result<(), SinkSetupError> {
    let topic = &config.progress_topic;
    let admin: AdminClient<DefaultClientContext> = config
        .admin_config()
        .create()
        .map_err(|e| SinkSetupError::caused("cannot make a Kafka admin client", e))?;
    let replicas = brokers.clamp(1, 3) as i32;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(replicas))
        .set("retention.ms", "604800000")
        .set("cleanup.policy", "delete");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let made = admin.create_topics([&new], &options).await;
    let what_to_do = format!(
        "create it (kafka-topics.sh --create --topic {topic} --partitions 1 \
         --replication-factor 3) or name another with progress_topic="
    );
    match made.map(|r| r.into_iter().next()) {
        Ok(Some(Ok(_))) => info!(topic = %topic, replicas, "made the Kafka progress topic"),
        Ok(Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists)))) => {}
        Ok(Some(Err((_, code)))) => {
            return Err(SinkSetupError::new(format!(
                "cannot create the Kafka progress topic {topic} ({code}): {what_to_do}"
            )));
        }
        Ok(None) => {}
        Err(e) => {
            return Err(SinkSetupError::caused(
                format!("cannot create the Kafka progress topic {topic}: {what_to_do}"),
                e,
            ));
        }
    }
    Ok(())
}

/// The partition count of the progress topic just made (the cluster's metadata may take a
/// moment to show it; another sidecar may have made it first, with more).
async fn made_topic_partitions(config: &KafkaSinkConfig) -> Result<usize, SinkSetupError> {
    let mut last = String::new();
    for _ in 0..25 {
        match probe(
            &config.admin_config(),
            &config.progress_topic,
            &config.bootstrap,
        )
        .await
        {
            Probe::Found(partitions) => return Ok(partitions),
            Probe::NoTopic(reason) | Probe::NoAnswer(reason) | Probe::Misconfigured(reason) => {
                last = reason
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(SinkSetupError::new(format!(
        "the Kafka progress topic {} was made but does not show: {last}",
        config.progress_topic
    )))
}

/// The last failure librdkafka reported on a client (the cause behind a metadata timeout:
/// a refused login, a failed handshake), from its error events and its `FAIL` log lines.
#[derive(Clone, Default)]
struct LastError(Arc<std::sync::Mutex<Option<String>>>);

impl LastError {
    fn take(&self) -> Option<String> {
        self.0.lock().expect("never held across a panic").take()
    }

    fn set(&self, reason: String) {
        *self.0.lock().expect("never held across a panic") = Some(reason);
    }
}

impl rdkafka::ClientContext for LastError {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "FAIL" {
            // "sasl_ssl://host:port/bootstrap: SASL authentication error: ..."
            let reason = message
                .split_once("/bootstrap: ")
                .map_or(message, |(_, r)| r);
            self.set(reason.to_owned());
        }
        DefaultClientContext.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.set(format!("{error}: {reason}"));
        DefaultClientContext.error(error, reason);
    }
}

impl rdkafka::producer::ProducerContext for LastError {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

fn refused_login(cause: &str) -> bool {
    cause.contains("SASL authentication error") || cause.contains("Authentication failed")
}

fn failed_tls(cause: &str) -> bool {
    cause.contains("SSL") || cause.contains("certificate")
}

/// Why the cluster did not answer, and what to fix.
fn no_answer(bootstrap: &str, e: &KafkaError, cause: Option<String>) -> String {
    let Some(cause) = cause else {
        return format!(
            "Kafka at {bootstrap} did not answer within 5 s ({e}): check the host and port in \
             the sink URL, and that the broker's advertised listeners are reachable from here"
        );
    };
    let advice = if refused_login(&cause) {
        "the credentials were refused: check username=, password= and sasl_mechanism= (the \
         broker's listener must enable that mechanism)"
    } else if failed_tls(&cause) {
        "TLS failed: check tls=, and that ca_file= holds the CA that signed the broker's \
         certificate (and cert_file=/key_file= if the broker wants a client certificate)"
    } else {
        "check the host and port in the sink URL, that the broker's advertised listeners are \
         reachable from here, and that tls= and sasl_mechanism= match its listener"
    };
    format!("Kafka at {bootstrap} did not answer within 5 s: {cause}: {advice}")
}

/// What the cluster said about the sink's topic.
enum Probe {
    /// It exists, with this many partitions.
    Found(usize),
    /// The cluster answered that it does not exist (what to do, said).
    NoTopic(String),
    /// No answer within the probe's time, or one that says nothing about the topic.
    NoAnswer(String),
    /// The cluster is there but refuses the sink's credentials, or TLS fails: a setting to fix.
    Misconfigured(String),
}

/// Asks the cluster about `topic` (metadata, 5 s at most).
async fn probe(config: &ClientConfig, topic: &str, bootstrap: &str) -> Probe {
    let config = config.clone();
    let name = topic.to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        let context = LastError::default();
        let client: BaseProducer<LastError> = config
            .create_with_context(context.clone())
            .map_err(|e| (e, None))?;
        let metadata = client
            .client()
            .fetch_metadata(Some(&name), Duration::from_secs(5));
        // Serves the error events (a failed handshake, refused credentials) to the context.
        client.poll(Duration::ZERO);
        metadata.map_err(|e| (e, context.take()))
    })
    .await;
    let metadata = match answer {
        Ok(Ok(metadata)) => metadata,
        Ok(Err((e, cause))) => {
            let misconfigured = cause
                .as_deref()
                .is_some_and(|c| refused_login(c) || failed_tls(c));
            let reason = no_answer(bootstrap, &e, cause);
            return if misconfigured {
                Probe::Misconfigured(reason)
            } else {
                Probe::NoAnswer(reason)
            };
        }
        Err(e) => return Probe::NoAnswer(format!("the Kafka metadata request failed: {e}")),
    };
    let found = metadata.topics().iter().find(|t| t.name() == topic);
    match found.map(|t| (t.error(), t.partitions().len())) {
        Some((None, partitions)) if partitions > 0 => Probe::Found(partitions),
        Some((Some(e), _))
            if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition =>
        {
            Probe::NoTopic(format!(
                "the Kafka topic {topic} does not exist on {bootstrap}: create it \
                 (kafka-topics.sh --create --topic {topic} --partitions N --replication-factor 3), \
                 then start again"
            ))
        }
        other => Probe::NoAnswer(format!(
            "Kafka at {bootstrap} answered about topic {topic} without saying it is usable: \
             {other:?}"
        )),
    }
}

impl KafkaSinkConfig {
    /// What `serve --check-config` asks: the cluster answers, and the topic is there. `Ok`
    /// with what was found, `Err` with what to fix.
    pub async fn check(&self) -> Result<String, SinkSetupError> {
        self.security.check_files()?;
        match probe(&self.admin_config(), &self.topic, &self.bootstrap).await {
            Probe::Found(partitions) => Ok(format!(
                "Kafka at {} has topic {} ({partitions} partitions)",
                self.bootstrap, self.topic
            )),
            Probe::NoTopic(reason) | Probe::NoAnswer(reason) | Probe::Misconfigured(reason) => {
                Err(SinkSetupError::new(reason))
            }
        }
    }
}

/// Whether the broker (or librdkafka) will never take this record as it is.
fn refused(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
        )
    )
}

/// The record of message `m` with journal sequence `seq`, for `topic` (see the module docs).
fn build_record<'a>(
    topic: &'a str,
    m: &'a Message,
    seq: Option<u64>,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut headers = OwnedHeaders::new_with_capacity(m.headers.len() + 2).insert(Header {
        key: ID_HEADER,
        value: Some(m.id.as_bytes()),
    });
    if let Some(seq) = seq {
        let mut digits = itoa::Buffer::new();
        headers = headers.insert(Header {
            key: SEQ_HEADER,
            value: Some(digits.format(seq).as_bytes()),
        });
    }
    for (name, value) in m.headers.iter().filter(|(n, _)| *n != SEQ_HEADER) {
        headers = headers.insert(Header {
            key: name,
            value: Some(value.as_bytes()),
        });
    }
    let mut record = FutureRecord::to(topic)
        .payload(m.payload.as_ref())
        .headers(headers);
    if !m.key.is_empty() {
        record = record.key(m.key.as_bytes());
    }
    if m.event_time_ms > 0 {
        record = record.timestamp(m.event_time_ms);
    }
    record
}

impl Sink for KafkaSink {
    fn writes_seq_header(&self) -> bool {
        true
    }

    fn ack_delay_max(&self) -> Option<Duration> {
        match self.how {
            How::Plain(_) => Some(Duration::ZERO),
            // The driver answers every batch itself once its transaction's outcome is known
            // (`txn.rs`): a lane that gave up on it and sent it again could put it into a
            // second transaction while the first may still commit.
            How::Transactional(_) => None,
        }
    }

    fn replayed(&self) -> Option<DeliveryProgress> {
        match &self.how {
            How::Plain(_) => None,
            How::Transactional(t) => t.replayed(),
        }
    }

    fn deliver(&self, batch: Batch) -> BoxFuture<'static, Result<Receipt, SinkError>> {
        let producer = match &self.how {
            How::Plain(producer) => producer.clone(),
            How::Transactional(t) => return t.deliver(batch),
        };
        let (config, timeout) = (self.config.clone(), self.timeout);
        Box::pin(async move {
            // Every record is queued first (in order: the idempotent producer keeps it per
            // partition), then every delivery report is awaited.
            let mut reports = Vec::with_capacity(batch.len());
            for (m, seq) in batch.messages.iter().zip(batch.seqs.iter()) {
                let mut record = build_record(&config.topic, m, *seq);
                let report = loop {
                    match producer.send_result(record) {
                        Ok(report) => break report,
                        Err((e, back))
                            if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) =>
                        {
                            // librdkafka's queue is full: wait for it to send some.
                            record = back;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((e, _)) if refused(&e) => {
                            return Err(SinkError::refused(format!(
                                "Kafka refuses message {}: {e}",
                                m.id
                            )));
                        }
                        Err((e, _)) => {
                            return Err(SinkError::retry(format!(
                                "cannot queue message {} for Kafka: {e}",
                                m.id
                            )));
                        }
                    }
                };
                reports.push((report, m.id.clone()));
            }
            let wait = async {
                for (report, id) in reports {
                    match report.await {
                        Ok(Ok(_)) => {}
                        Ok(Err((e, _))) if refused(&e) => {
                            return Err(SinkError::refused(format!(
                                "Kafka refuses message {id}: {e}"
                            )));
                        }
                        Ok(Err((e, _))) => {
                            return Err(SinkError::retry(format!(
                                "Kafka did not take message {id}: {e}"
                            )));
                        }
                        Err(_) => {
                            return Err(SinkError::retry(
                                "the Kafka producer dropped a delivery report".to_string(),
                            ));
                        }
                    }
                }
                Ok(Receipt::none())
            };
            // librdkafka gives up at message.timeout.ms (the delivery timeout); the margin lets
            // its own report arrive first.
            tokio::time::timeout(timeout + Duration::from_secs(5), wait)
                .await
                .unwrap_or_else(|_| {
                    Err(SinkError::retry(format!(
                        "Kafka did not ack within {timeout:?}"
                    )))
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_names_what_is_wrong() {
        let c = KafkaSinkConfig::parse(
            "kafka://127.0.0.1:9092,10.0.0.2:9093/events.v1?compression=lz4&linger_ms=0",
        )
        .unwrap();
        assert_eq!(c.bootstrap, "127.0.0.1:9092,10.0.0.2:9093");
        assert_eq!(c.topic, "events.v1");
        assert_eq!(c.compression, Compression::Lz4);
        assert_eq!(c.linger_ms, 0);
        let defaults = KafkaSinkConfig::parse("kafka://k:9092/t").unwrap();
        assert_eq!(defaults.compression, Compression::Zstd);
        assert!(defaults.exactly_once);
        assert_eq!(defaults.security.protocol(), "plaintext");
        let secured = KafkaSinkConfig::parse(
            "kafka://k:9093/t?ca_file=%2Fetc%2Fca.pem&sasl_mechanism=scram-sha-512&username=u&\
             password=s3cret&transactional_id=edge-1&progress_topic=p",
        )
        .unwrap();
        assert_eq!(secured.security.protocol(), "sasl_ssl");
        assert_eq!(
            secured.security.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(secured.transactional_id, "edge-1");
        let shown = format!("{secured:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("SCRAM-SHA-512"),
            "{shown}"
        );
        let plain =
            KafkaSinkConfig::parse("kafka://k:9092/t?sasl_mechanism=PLAIN&username=u&password=p")
                .unwrap();
        assert_eq!(plain.security.protocol(), "sasl_plaintext");
        // Read as every sink URL's options: `%`-decoded, and a `+` in a password stays a `+`.
        let decoded = KafkaSinkConfig::parse(
            "kafka://k:9092/t?sasl_mechanism=PLAIN&username=u&password=a+b%26c",
        )
        .unwrap();
        assert_eq!(decoded.security.sasl.unwrap().password, "a+b&c");
        assert_eq!(
            KafkaSinkConfig::parse("kafka://k:9092/t?tls=true")
                .unwrap()
                .security
                .protocol(),
            "ssl"
        );
        for (url, want) in [
            ("kafka://k:9092", "the topic is missing"),
            ("kafka://k/t", "expected HOST:PORT"),
            ("kafka://k:99999/t", "expected HOST:PORT"),
            ("kafka://k:9092/bad topic", "not a Kafka topic name"),
            (
                "kafka://k:9092/t?compression=gzip",
                "expected zstd, lz4 or none",
            ),
            ("kafka://k:9092/t?acks=1", "unknown option \"acks\""),
            ("kafka://k:9092/t?client_id=", "option client_id is empty"),
            ("kafka://k:9092/t?batch_bytes=0", "batch_bytes=0"),
            (
                "kafka://u:p@k:9092/t",
                "credentials go in the username= and password=",
            ),
            (
                "kafka://k:9092/t?username=u&password=p",
                "need sasl_mechanism=",
            ),
            (
                "kafka://k:9092/t?sasl_mechanism=PLAIN&username=u",
                "needs both",
            ),
            (
                "kafka://k:9092/t?sasl_mechanism=GSSAPI",
                "expected PLAIN, SCRAM-SHA-256",
            ),
            ("kafka://k:9092/t?cert_file=c.pem", "go together"),
            (
                "kafka://k:9092/t?ca_file=ca.pem&tls=false",
                "TLS files need TLS",
            ),
            (
                "kafka://k:9092/t?exactly_once=maybe",
                "expected true or false",
            ),
        ] {
            let err = KafkaSinkConfig::parse(url).unwrap_err();
            assert!(err.contains(want), "{url}: {err}");
        }
    }
}
