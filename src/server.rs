//! `sidelog serve`: assembles a sidelog (`node.rs`), serves gRPC, replays, then takes traffic
//! until told to stop.
//!
//! Start-up order matters (recover, then rejoin the load balancer): the listener comes up first
//! so that health checks see `NOT_SERVING` and `Publish` answers `UNAVAILABLE` while the journal
//! is replayed; only then is intake opened and health set to `SERVING`. Shutdown is the
//! reverse: intake closes, in-flight requests finish, the journal is synced.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;
use tracing::{debug, info, warn};

use crate::config::{Config, ReplayPolicy, Secrets};
use crate::handler::GrpcHandler;
use crate::journal::{FileStore, Journal, JournalError};
use crate::node::{Hops, Node, Opened};
use crate::pipeline::{Door, Handler, Pipeline};
use crate::proto::ingest_server::IngestServer;
use crate::runtime::{Entropy, SharedClock, SystemClock};
use crate::service::IngestService;
use crate::sink::{ChunkSettings, SinkSettings};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::LogsServiceServer;

/// How long shutdown waits for the journal's last sync.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

type ServerTask = JoinHandle<Result<(), tonic::transport::Error>>;

/// A gRPC server running until its stop is sent.
struct Running {
    stop: oneshot::Sender<()>,
    task: ServerTask,
}

/// What one start is told beside its configuration: choices that must not outlive it (a
/// configuration file would repeat them at every start).
#[derive(Debug, Clone, Copy, Default)]
pub struct ThisStart {
    /// `--discard-wal`: a redo log that would refuse the start has its unusable frames
    /// discarded (counted in the log) instead.
    pub discard_wal: bool,
}

/// Runs `serve` until `shutdown` resolves. `on_listening` learns the bound address (useful with
/// port 0).
pub async fn serve(
    config: Config,
    this_start: ThisStart,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    // Read before anything is opened or bound: a file that cannot be read fails the start.
    let secrets = config.secrets()?;
    let clock: SharedClock = Arc::new(SystemClock);
    let entropy = Entropy::from_clock(clock.as_ref());
    let readiness = match config.metrics_listen {
        Some(addr) => {
            let readiness = crate::metrics::install(addr).await?;
            info!(addr = %addr, "serving /metrics, /healthz and /readyz");
            Some(readiness)
        }
        None => None,
    };
    let opened = open_journal(&config, this_start, clock.clone()).await?;
    // Once the journal is this process's: the pid file names the sidelog of this data
    // directory, not every sidelog on the machine (`kill -9 $(cat sidelog-data/sidelog.pid)`).
    let _pid_file = PidFile::write(&config.data_dir)?;
    let delivery_state = opened
        .journal()
        .delivery_state()
        .await
        .context("cannot read the journal's delivery progress")?;
    let hops = open_hops(&config, delivery_state, clock.clone(), &entropy).await?;
    let node = opened.assemble(&config, hops, clock.clone(), entropy);
    let Node {
        journal, pipeline, ..
    } = &node;
    if let Some(readiness) = &readiness {
        readiness.attach(pipeline.clone());
    }

    let doors = start_doors(&config, &secrets, &node, &clock).await?;
    crate::runtime::spawn(report_backlog_age(journal.clone(), clock.clone()));
    info!(addr = %doors.local, mode = %config.mode, "listening");
    info!(config = %config.summary_line(), "running with");
    on_listening(doors.local);

    tokio::pin!(shutdown);
    if !replay(&config, &node, &mut shutdown).await? {
        info!("stopping during replay; the rest is replayed on the next start");
        doors.abandon().await;
        close_journal(journal).await?;
        return Ok(());
    }
    pipeline.set_serving(true);
    set_health(&doors.health, true).await;
    info!(mode = %config.mode, "serving");

    shutdown.await;
    let Doors {
        ingest,
        health,
        http,
        mqtt,
        forward,
        admin,
        ..
    } = doors;
    let others = Others {
        http,
        mqtt,
        forward,
    };
    stop(&config, &node, &health, ingest, others, admin).await
}

/// Every listener and the MQTT source, started; intake stays closed until the replay is done.
struct Doors {
    ingest: Running,
    /// The ingest listener's address (a port of 0 in the configuration is the one it got).
    local: SocketAddr,
    health: HealthReporter,
    http: Option<HttpRunning>,
    mqtt: Option<crate::service::mqtt::MqttDoor>,
    forward: Option<crate::service::forward::ForwardRunning>,
    admin: Option<Running>,
}

/// The doors beside the gRPC listener, as [`stop`] closes them.
struct Others {
    http: Option<HttpRunning>,
    mqtt: Option<crate::service::mqtt::MqttDoor>,
    forward: Option<crate::service::forward::ForwardRunning>,
}

impl Doors {
    /// Stops every door at once, without draining (a stop during the replay).
    async fn abandon(self) {
        let _ = self.ingest.stop.send(()); // the server may have stopped already
        if let Some(admin) = self.admin {
            let _ = admin.stop.send(());
        }
        if let Some(http) = self.http {
            let _ = http.stop.send(());
        }
        if let Some(mqtt) = self.mqtt {
            mqtt.stop().await;
        }
        if let Some(forward) = self.forward {
            forward.stop().await;
        }
    }
}

/// Starts the ingest listener, the HTTP door, the MQTT source and the admin listener, as
/// configured; a failure stops the ingest listener already started.
async fn start_doors(
    config: &Config,
    secrets: &Secrets,
    node: &Node,
    clock: &SharedClock,
) -> anyhow::Result<Doors> {
    let pipeline = &node.pipeline;
    let ((ingest, local), health) = start_ingest(config, secrets, pipeline.clone()).await?;
    let started = async {
        let http = start_http(config, secrets, pipeline.clone()).await?;
        let mqtt = match &config.mqtt_source {
            Some(source) => Some(crate::service::mqtt::MqttDoor::start(
                source.value(),
                pipeline.clone(),
                config.limits.max_message_bytes as usize,
            )?),
            None => None,
        };
        let forward = start_forward(config, secrets, pipeline.clone()).await?;
        let admin = start_admin(config, secrets, node, clock).await?;
        anyhow::Ok((http, mqtt, forward, admin))
    };
    match started.await {
        Ok((http, mqtt, forward, admin)) => Ok(Doors {
            ingest,
            local,
            health,
            http,
            mqtt,
            forward,
            admin,
        }),
        Err(e) => {
            let _ = ingest.stop.send(());
            Err(e)
        }
    }
}

/// The HTTP door, running until its stop is sent.
struct HttpRunning {
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Binds `http_listen`, if set, and serves the HTTP door (`service/http.rs`) on it. Intake
/// answers 503 until the replay is done, as gRPC answers `UNAVAILABLE`.
async fn start_http(
    config: &Config,
    secrets: &Secrets,
    pipeline: Arc<Pipeline>,
) -> anyhow::Result<Option<HttpRunning>> {
    let Some(addr) = config.http_listen else {
        return Ok(None);
    };
    let tls = match &secrets.tls {
        Some(pem) => {
            Some(crate::service::http::tls_acceptor(pem).context("http_listen (--http-listen)")?)
        }
        None => None,
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--http-listen)"))?;
    let door = crate::service::http::HttpDoor {
        pipeline: pipeline.clone(),
        token: crate::service::TokenCheck::new(secrets.token.clone()),
        max_request_bytes: usize::try_from(config.limits.max_request_bytes).unwrap_or(usize::MAX),
        key_field: config.http_ndjson_key_field.clone(),
        cors_origins: config.http_cors_origins.as_ref().map(|o| o.value().clone()),
        otlp: otlp_logs(config, pipeline.clone()),
    };
    let router = crate::service::http::router(Arc::new(door));
    crate::metrics::zero_intake(crate::pipeline::Door::Http);
    let (stop, stop_rx) = oneshot::channel::<()>();
    let limits = crate::service::http::ConnectionLimits {
        max_connections: config.http_max_connections as usize,
        read_timeout: Duration::from_millis(config.http_read_timeout_ms),
    };
    let tls_on = tls.is_some();
    let task = tokio::spawn(crate::service::http::serve(
        listener, router, limits, tls, stop_rx,
    ));
    info!(addr = %addr, tls = tls_on, "HTTP door listening");
    Ok(Some(HttpRunning { stop, task }))
}

/// Binds `forward_listen` and serves the forward door on it, if it is set.
async fn start_forward(
    config: &Config,
    secrets: &Secrets,
    pipeline: Arc<Pipeline>,
) -> anyhow::Result<Option<crate::service::forward::ForwardRunning>> {
    let Some(addr) = config.forward_listen else {
        return Ok(None);
    };
    let tls = match &secrets.tls {
        Some(pem) => Some(
            crate::service::tls::acceptor(pem, &[]).context("forward_listen (--forward-listen)")?,
        ),
        None => None,
    };
    let door = crate::service::forward::ForwardDoor {
        pipeline,
        payload: config.forward_payload,
        shared_key: secrets.forward_shared_key.as_deref().map(Arc::from),
        hostname: crate::service::forward::hostname(),
        nonces: Entropy::from_os().context("forward_listen: no randomness for the handshake")?,
        max_frame_bytes: usize::try_from(config.limits.max_request_bytes).unwrap_or(usize::MAX),
        max_messages: usize::try_from(config.limits.max_messages_per_request).unwrap_or(usize::MAX),
        max_connections: usize::try_from(config.forward_max_connections).unwrap_or(usize::MAX),
        read_timeout: Duration::from_millis(config.forward_read_timeout_ms),
    };
    let running = door
        .start(addr, tls)
        .await
        .with_context(|| format!("cannot listen on {addr} (--forward-listen)"))?;
    Ok(Some(running))
}

/// The variable that plants the skipped-fsync bug in a debug build's `serve`: the journal's
/// fsync returns without syncing, so acks come before durability. A SIGKILL cannot see it (the
/// page cache keeps the writes); the power-loss test must (tests/services/power_loss.rs).
/// Release builds, what users run, ignore it and say so.
pub const UNSAFE_SKIP_FSYNC: &str = "SIDELOG_UNSAFE_SKIP_FSYNC";

/// Opens the journal in `--data-dir` and reads back its dedup window.
async fn open_journal(
    config: &Config,
    this_start: ThisStart,
    clock: SharedClock,
) -> anyhow::Result<Opened> {
    let mut journal = crate::node::journal_config(config);
    journal.discard_wal = this_start.discard_wal;
    if std::env::var_os(UNSAFE_SKIP_FSYNC).is_some_and(|v| v == "1") {
        if cfg!(debug_assertions) {
            tracing::error!(
                "{UNSAFE_SKIP_FSYNC}=1: the journal is never fsynced, so a power loss loses \
                 acknowledged messages; this exists only to test the power-loss test"
            );
            journal.unsafe_skip_fsync = true;
        } else {
            tracing::warn!(
                "{UNSAFE_SKIP_FSYNC}=1 is ignored: only debug builds honour it (the journal is \
                 fsynced as always)"
            );
        }
    }
    let open = async {
        let store = FileStore::in_dir(&config.data_dir, &journal)?;
        let path = store.path.clone();
        Node::open(Box::new(store), path, journal, clock).await
    };
    open.await.map_err(|e| {
        // Advice for the cause at hand: a damaged file and a file in use call for different
        // things.
        let advice = match &e {
            JournalError::Corrupted { .. } | JournalError::Decode { .. } => {
                "; move the damaged file aside and restore it from a backup (sidelog will not \
                 start on an empty journal in its place)"
            }
            JournalError::Format { .. } => "; it was written by another version of sidelog",
            JournalError::WalRefused { .. } => "",
            JournalError::InUse { .. } => {
                "; another sidelog is running on this data directory: stop it, or give this one \
                 another --data-dir"
            }
            _ => "",
        };
        anyhow::anyhow!(
            "cannot open the journal in {} (--data-dir): {e}{advice}",
            config.data_dir.display()
        )
    })
}

/// The handler and the sink `config` names.
async fn open_hops(
    config: &Config,
    journal: crate::journal::DeliveryState,
    clock: SharedClock,
    entropy: &Entropy,
) -> anyhow::Result<Hops> {
    let handler: Option<Arc<dyn Handler>> = match &config.handler {
        Some(url) => Some(Arc::new(
            GrpcHandler::new(url, Duration::from_millis(config.handling.timeout_ms))
                .context("--handler")?,
        )),
        None => None,
    };
    let settings = SinkSettings {
        timeout: Duration::from_millis(config.delivery.timeout_ms),
        chunks: ChunkSettings {
            max_bytes: config.file_sink.chunk_max_bytes,
            max_age: Duration::from_millis(config.file_sink.chunk_max_age_ms),
            format: config.file_sink.format,
        },
        journal: Some(journal),
    };
    let sink = crate::sink::open(&config.sink_target(), settings, clock, entropy)
        .await
        .context("--sink")?;
    Ok(Hops { handler, sink })
}

/// Health of the ingest service and of the server as a whole (`""`), as load balancers ask.
async fn set_health(health: &HealthReporter, serving: bool) {
    use tonic_health::ServingStatus;
    if serving {
        health.set_serving::<IngestServer<IngestService>>().await;
    } else {
        health
            .set_not_serving::<IngestServer<IngestService>>()
            .await;
    }
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
}

/// Server reflection advertising `services` (those a port serves) and itself, in both versions
/// clients use: v1 (grpcurl) and v1alpha (Python's grpcio-reflection, older tools).
fn reflection(
    services: &[&str],
) -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for s in services {
            b = b.with_service_name(*s);
        }
        b
    };
    Ok((
        builder().build_v1().context("reflection service")?,
        builder()
            .build_v1alpha()
            .context("reflection service (v1alpha)")?,
    ))
}

/// The OTLP logs service (on the gRPC listener and the HTTP door).
fn otlp_logs(config: &Config, pipeline: Arc<Pipeline>) -> crate::service::otlp::OtlpLogs {
    crate::service::otlp::OtlpLogs::new(
        pipeline,
        config.otlp_key_attribute.clone(),
        usize::try_from(config.limits.max_messages_per_request).unwrap_or(usize::MAX),
    )
}

/// Binds `--listen` and serves ingest, health (`NOT_SERVING` until the replay is done) and
/// reflection on it.
async fn start_ingest(
    config: &Config,
    secrets: &Secrets,
    pipeline: Arc<Pipeline>,
) -> anyhow::Result<((Running, SocketAddr), HealthReporter)> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
    let local = listener.local_addr().context("listener address")?;
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, false).await;
    let (reflection, reflection_v1alpha) =
        reflection(&["sidelog.v1.Ingest", "grpc.health.v1.Health"])?;
    let max_request = config.limits.max_request_bytes as usize;
    let token = crate::service::TokenCheck::new(secrets.token.clone());
    let otlp = crate::service::behind_token(
        LogsServiceServer::new(otlp_logs(config, pipeline.clone()))
            .max_decoding_message_size(max_request)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .send_compressed(tonic::codec::CompressionEncoding::Gzip),
        &token,
        Door::Otlp,
    );
    let ingest = crate::service::behind_token(
        IngestServer::new(IngestService::new(pipeline))
            .max_decoding_message_size(max_request)
            .max_encoding_message_size(usize::MAX),
        &token,
        Door::Grpc,
    );
    // gRPC-Web (browsers' generated stubs) on the same listener: HTTP/1.1 accepted beside
    // HTTP/2, requests translated by tonic-web, CORS per `http_cors_origins`.
    let cors = crate::service::cors::layer(
        config.http_cors_origins.as_ref().map(|o| o.value()),
        crate::service::cors::For::GrpcWeb,
    );
    let layers = tower::ServiceBuilder::new()
        .option_layer(cors)
        .layer(tonic_web::GrpcWebLayer::new())
        .into_inner();
    let mut builder = Server::builder()
        .tcp_nodelay(true)
        .accept_http1(true)
        .max_concurrent_streams(Some(config.limits.max_concurrent_streams as u32));
    if let Some(tls) = secrets.grpc_tls() {
        builder = builder
            .tls_config(tls)
            .context("cannot use the TLS certificate and key (tls_cert_file, tls_key_file)")?;
        info!(
            client_certificates = config.tls_client_ca_file.is_some(),
            "serving TLS"
        );
    }
    let router = builder
        .layer(layers)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(ingest)
        .add_service(otlp);
    let (stop, stop_rx) = oneshot::channel::<()>();
    // Nagle off on every accepted connection: Server::tcp_nodelay applies only to listeners
    // tonic binds itself, and small HTTP/2 writes otherwise wait for the peer's delayed ACK (a
    // ~40 ms tail on acks).
    let task = tokio::spawn(router.serve_with_incoming_shutdown(
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        async {
            drop(stop_rx.await);
        },
    ));
    Ok(((Running { stop, task }, local), health))
}

/// The admin service on its own listener, unless `admin_listen` is off.
async fn start_admin(
    config: &Config,
    secrets: &Secrets,
    node: &Node,
    clock: &SharedClock,
) -> anyhow::Result<Option<Running>> {
    let Some(addr) = config.admin_addr()? else {
        return Ok(None);
    };
    let service = crate::service::AdminService::new(
        node.journal.clone(),
        clock.clone(),
        Some(crate::service::Live {
            pipeline: node.pipeline.clone(),
        }),
    );
    let (stop, task) = serve_admin(secrets, addr, service).await?;
    Ok(Some(Running { stop, task }))
}

/// Replays the journal per `replay.policy`. With `first`, it returns once the replay is done
/// (`true`), or when `shutdown` came first (`false`); with `interleave`, at once, the replay
/// running beside traffic.
async fn replay(
    config: &Config,
    node: &Node,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> anyhow::Result<bool> {
    let interleave = config.replay.policy == ReplayPolicy::Interleave;
    let options = crate::node::replay_options(config);
    let pipeline = node.pipeline.clone();
    let replay = async move { crate::pipeline::replay(&pipeline, &options).await };
    if interleave {
        // Traffic is taken at once; the backlog follows, paced. A failed replay leaves its
        // entries in the journal for the next start, and says so.
        crate::runtime::spawn(async move {
            if let Err(e) = replay.await {
                tracing::error!(error = %e, "replay failed; the backlog stays in the journal and is replayed on the next start");
            }
        });
        return Ok(true);
    }
    tokio::select! {
        result = replay => {
            result.context("replay failed")?;
            Ok(true)
        }
        () = shutdown => Ok(false),
    }
}

/// Shutdown: intake closes, requests under way finish, what was accepted is delivered within
/// `shutdown_timeout_ms`, and the journal is synced.
async fn stop(
    config: &Config,
    node: &Node,
    health: &HealthReporter,
    ingest: Running,
    Others {
        http,
        mqtt,
        forward,
    }: Others,
    admin: Option<Running>,
) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(config.shutdown_timeout_ms);
    let deadline = tokio::time::Instant::now() + timeout;
    info!(
        timeout_ms = config.shutdown_timeout_ms,
        "shutting down: intake closed, draining"
    );
    node.pipeline.set_serving(false);
    set_health(health, false).await;
    let _ = ingest.stop.send(()); // the server may have stopped already
    // Requests under way finish (their acks follow their commits); a client holding a stream
    // open is cut at the deadline, and whatever it had not been acked it retries.
    match tokio::time::timeout_at(deadline, ingest.task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => warn!(error = %e, "gRPC server task failed"),
        Err(_) => warn!("requests still open at the shutdown deadline; closing them"),
    }
    if let Some(http) = http {
        let _ = http.stop.send(());
        match tokio::time::timeout_at(deadline, http.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "HTTP door ended with an error"),
            Ok(Err(e)) => warn!(error = %e, "HTTP door task failed"),
            Err(_) => warn!("HTTP requests still open at the shutdown deadline; closing them"),
        }
    }
    if let Some(mqtt) = mqtt {
        // What it took and had accepted is acknowledged; the rest stays with the broker.
        mqtt.stop().await;
    }
    if let Some(forward) = forward {
        // Frames being accepted finish and are acked; what was not, the clients send again.
        forward.stop().await;
    }
    drain(&node.pipeline, deadline).await;
    if let Some(admin) = admin {
        let _ = admin.stop.send(()); // the admin server may have stopped already
        // Admin calls are short; one still open at this point is cut with the process.
        drop(tokio::time::timeout(Duration::from_secs(1), admin.task).await);
    }
    close_journal(&node.journal).await?;
    info!("stopped");
    Ok(())
}

/// `<data-dir>/sidelog.pid`: the running sidelog's process id, written when its journal is
/// open and removed when `serve` returns. One left by a crash is stale; the next start
/// replaces it.
struct PidFile(std::path::PathBuf);

/// The pid file's name inside the data directory.
pub const PID_FILE_NAME: &str = "sidelog.pid";

impl PidFile {
    fn write(data_dir: &std::path::Path) -> anyhow::Result<PidFile> {
        let path = data_dir.join(PID_FILE_NAME);
        let temp = data_dir.join(format!("{PID_FILE_NAME}.new"));
        std::fs::write(&temp, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&temp, &path))
            .with_context(|| format!("cannot write the pid file {}", path.display()))?;
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot remove the pid file");
        }
    }
}

/// The journal's last act of a clean stop: what is pending is made durable, the redo log is
/// checkpointed, and the log's header records the stop, so that the next start neither
/// replays the log nor rewrites the journal through.
async fn close_journal(journal: &crate::journal::Journal) -> anyhow::Result<()> {
    match tokio::time::timeout(FLUSH_TIMEOUT, journal.close()).await {
        Ok(result) => result.context("closing the journal"),
        Err(_) => anyhow::bail!("closing the journal took longer than {FLUSH_TIMEOUT:?}"),
    }
}

/// Serves the admin service on `addr` (same TLS and token as ingest) until told to stop.
async fn serve_admin(
    secrets: &Secrets,
    addr: SocketAddr,
    service: crate::service::AdminService,
) -> anyhow::Result<(
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--admin-listen; off disables it)"))?;
    let local = listener.local_addr().context("admin listener address")?;
    let token = crate::service::TokenCheck::new(secrets.token.clone());
    let admin = tonic::service::interceptor::InterceptedService::new(
        crate::proto::admin_server::AdminServer::new(service),
        move |request| token.check(request),
    );
    let mut builder = Server::builder();
    if let Some(tls) = secrets.grpc_tls() {
        builder = builder
            .tls_config(tls)
            .context("cannot use the TLS certificate and key (tls_cert_file, tls_key_file)")?;
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (reflection, reflection_v1alpha) = reflection(&["sidelog.v1.Admin"])?;
    let router = builder
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(admin);
    let server = tokio::spawn(router.serve_with_incoming_shutdown(
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        async {
            drop(stop_rx.await);
        },
    ));
    info!(addr = %local, "serving admin");
    Ok((stop_tx, server))
}

/// Keeps the oldest backlog entry's age up to date for `/metrics`, once a second.
async fn report_backlog_age(journal: Journal, clock: SharedClock) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        match journal.oldest_backlog_ms().await {
            Ok(oldest) => {
                let age_ms = oldest.map_or(0, |t| (clock.now_ms() - t).max(0));
                metrics::gauge!(crate::metrics::BACKLOG_OLDEST_AGE_SECONDS)
                    .set(age_ms as f64 / 1000.0);
            }
            Err(JournalError::Closed) => break,
            Err(e) => debug!(error = %e, "cannot read the oldest backlog entry"),
        }
    }
}

/// Waits until everything accepted has reached the sink (the journal's backlog is empty and
/// nothing is held in memory only), or until `deadline`. What is left is in the journal and is
/// replayed on the next start; in mode `none` it is lost, which the log says.
async fn drain(pipeline: &Pipeline, deadline: tokio::time::Instant) {
    // Over when the last entry's completion commits, or the last in-memory byte is released.
    let _ = tokio::time::timeout_at(deadline, pipeline.all_delivered()).await;
    let left = pipeline.undelivered();
    match (left.journaled_entries, left.in_memory_bytes) {
        (0, 0) => info!("drained: everything accepted was delivered"),
        (entries, 0) => warn!(
            entries,
            "shutdown deadline reached with undelivered entries; they stay in the journal and are replayed on the next start"
        ),
        (entries, memory_bytes) => warn!(
            entries,
            memory_bytes,
            "shutdown deadline reached with messages held only in memory (mode none): they are lost"
        ),
    }
}
