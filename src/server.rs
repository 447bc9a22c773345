//! `sidelog serve`: opens the journal, builds the pipeline, serves gRPC, replays, then takes
//! traffic until told to stop.
//!
//! Start-up order matters (the seeds: recover, then rejoin the load balancer): the listener
//! comes up first so that health checks see `NOT_SERVING` and `Publish` answers `UNAVAILABLE`
//! while the journal is replayed; only then is intake opened and health set to `SERVING`.
//! Shutdown is the reverse: intake closes, in-flight requests finish, the journal is synced.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::{debug, info, warn};

use crate::api::IngestService;
use crate::clock::{Entropy, SharedClock, SystemClock};
use crate::config::{Config, ReplayPolicy, SinkTarget};
use crate::dedup::DedupWindow;
use crate::delivery::{Completion, Delivery, DeliveryConfig};
use crate::handler::{GrpcHandler, Handler, HandlerRunner, PassThrough};
use crate::ingest::{Limits, Pipeline};
use crate::journal::{Journal, JournalConfig};
use crate::proto::ingest_server::IngestServer;
use crate::recovery::{Pace, ReplayOptions};
use crate::sink::{FileSink, FileSinkConfig, GrpcSink, Sink};

/// How long shutdown waits for the journal's last sync.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `serve` until `shutdown` resolves. `on_listening` learns the bound address (useful with
/// port 0).
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let clock: SharedClock = Arc::new(SystemClock);
    let entropy = Entropy::from_clock(clock.as_ref());
    if let Some(addr) = config.metrics_listen {
        crate::metrics::install(addr)?;
        info!(addr = %addr, "serving metrics");
    }

    let journal = Journal::open(&config.data_dir, journal_config(&config), clock.clone())
        .with_context(|| {
            format!(
                "cannot open the journal in {} (--data-dir); if the file is damaged, move it aside \
             and restore it from a backup: sidelog will not start on an empty journal in its place",
                config.data_dir.display()
            )
        })?;
    let dedup = DedupWindow::new(
        config.dedup.window_count,
        config.dedup.window_age_ms as i64,
        clock.clone(),
    );
    dedup.load(
        journal
            .load_dedup()
            .await
            .context("cannot read the dedup window")?,
    );

    let (handler, rewrites_ids): (Arc<dyn Handler>, bool) = match &config.handler {
        Some(url) => (
            Arc::new(
                GrpcHandler::new(url, Duration::from_millis(config.handling.timeout_ms))
                    .map_err(anyhow::Error::msg)
                    .context("--handler")?,
            ),
            true,
        ),
        None => (Arc::new(PassThrough), false),
    };
    // The object sink reads back, before a replay, what a crash left uploaded but unacked.
    let mut object_chunks: Option<Arc<crate::sink::ChunkSink>> = None;
    let sink: Arc<dyn Sink> = match config.sink_target()? {
        SinkTarget::Grpc(url) => Arc::new(
            GrpcSink::new(&url, Duration::from_millis(config.delivery.timeout_ms))
                .map_err(anyhow::Error::msg)
                .context("--sink")?,
        ),
        SinkTarget::Nats(nats) => Arc::new(
            crate::nats_sink::NatsSink::connect(
                *nats,
                Duration::from_millis(config.delivery.timeout_ms),
            )
            .await
            .context("--sink")?,
        ),
        SinkTarget::Object(object) => {
            let chunks = crate::object_sink::ObjectSink::start(
                *object,
                crate::sink::ChunkSettings {
                    max_bytes: config.file_sink.chunk_max_bytes,
                    max_age: Duration::from_millis(config.file_sink.chunk_max_age_ms),
                    format: config.file_sink.format,
                },
                Duration::from_millis(config.delivery.timeout_ms),
                clock.clone(),
                &entropy,
            )
            .map_err(anyhow::Error::msg)
            .context("--sink")?;
            object_chunks = Some(chunks.clone());
            Arc::new(chunks)
        }
        SinkTarget::File(dir) => {
            let file_sink = FileSink::start(
                FileSinkConfig {
                    dir: dir.clone(),
                    chunk_max_bytes: config.file_sink.chunk_max_bytes,
                    chunk_max_age_ms: config.file_sink.chunk_max_age_ms,
                    format: config.file_sink.format,
                },
                clock.clone(),
                &entropy,
            )
            .with_context(|| format!("cannot use {} for the file sink (--sink)", dir.display()))?;
            Arc::new(file_sink)
        }
    };
    let (pipeline, _lanes) = build_pipeline(
        &config,
        journal.clone(),
        dedup,
        handler,
        rewrites_ids,
        sink,
        clock.clone(),
        entropy,
    );

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
    let local = listener.local_addr().context("listener address")?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_not_serving::<IngestServer<IngestService>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("reflection service")?;
    let max_request = config.limits.max_request_bytes as usize;
    let token = crate::auth::TokenCheck::new(config.auth_token()?);
    let ingest = tonic::service::interceptor::InterceptedService::new(
        IngestServer::new(IngestService::new(pipeline.clone()))
            .max_decoding_message_size(max_request)
            .max_encoding_message_size(usize::MAX),
        move |request| token.check(request),
    );

    let mut builder = Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(Some(config.limits.max_concurrent_streams as u32));
    if let Some(tls) = config.tls()? {
        builder = builder
            .tls_config(tls)
            .context("cannot use the TLS certificate and key (tls_cert_file, tls_key_file)")?;
        info!(
            client_certificates = config.tls_client_ca_file.is_some(),
            "serving TLS"
        );
    }
    let replay_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (admin_stop, admin_server) = match config.admin_addr()? {
        Some(addr) => {
            let (stop, server) = serve_admin(
                &config,
                addr,
                crate::admin::AdminService::new(
                    journal.clone(),
                    clock.clone(),
                    Some(crate::admin::Live {
                        pipeline: pipeline.clone(),
                        replay_done: replay_done.clone(),
                    }),
                ),
            )
            .await?;
            (Some(stop), Some(server))
        }
        None => (None, None),
    };
    crate::spawn::spawn(report_backlog_age(journal.clone(), clock.clone()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        builder
            .add_service(health_service)
            .add_service(reflection)
            .add_service(ingest)
            // Nagle off on every accepted connection: Server::tcp_nodelay applies only to
            // listeners tonic binds itself, and small HTTP/2 writes otherwise wait for the
            // peer's delayed ACK (a ~40 ms tail on acks).
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    drop(stop_rx.await);
                },
            ),
    );
    info!(addr = %local, mode = %config.mode, "listening");
    on_listening(local);

    if let Some(chunks) = &object_chunks {
        absorb_stored(chunks, &journal).await;
    }
    let interleave = config.replay.policy == ReplayPolicy::Interleave;
    let options = ReplayOptions {
        max_age_ms: config.replay.max_age_ms,
        pace: interleave.then(|| Pace::new(config.replay.interleave_in_flight as usize)),
    };
    let replay = {
        let pipeline = pipeline.clone();
        let replay_done = replay_done.clone();
        async move {
            let result = crate::recovery::replay(&pipeline, &options).await;
            replay_done.store(true, std::sync::atomic::Ordering::Release);
            result
        }
    };
    tokio::pin!(shutdown);
    if interleave {
        // Traffic is taken at once; the backlog follows, paced. A failed replay leaves its
        // entries in the journal for the next start, and says so.
        crate::spawn::spawn(async move {
            if let Err(e) = replay.await {
                tracing::error!(error = %e, "replay failed; the backlog stays in the journal and is replayed on the next start");
            }
        });
    } else {
        tokio::select! {
            result = replay => {
                result.context("replay failed")?;
            }
            () = &mut shutdown => {
                info!("stopping during replay; the rest is replayed on the next start");
                let _ = stop_tx.send(()); // the server may have stopped already
                if let Some(stop) = admin_stop {
                    let _ = stop.send(());
                }
                crate::journal::flush(&journal, FLUSH_TIMEOUT).await.context("final journal sync")?;
                return Ok(());
            }
        }
    }
    pipeline.set_serving(true);
    health.set_serving::<IngestServer<IngestService>>().await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    info!(mode = %config.mode, "serving");

    shutdown.await;
    let timeout = Duration::from_millis(config.shutdown_timeout_ms);
    let deadline = tokio::time::Instant::now() + timeout;
    info!(
        timeout_ms = config.shutdown_timeout_ms,
        "shutting down: intake closed, draining"
    );
    pipeline.set_serving(false);
    health
        .set_not_serving::<IngestServer<IngestService>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let _ = stop_tx.send(()); // the server may have stopped already
    // Requests under way finish (their acks follow their commits); a client holding a stream
    // open is cut at the deadline, and whatever it had not been acked it retries.
    match tokio::time::timeout_at(deadline, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => warn!(error = %e, "gRPC server task failed"),
        Err(_) => warn!("requests still open at the shutdown deadline; closing them"),
    }
    drain(&pipeline, deadline).await;
    if let Some(stop) = admin_stop {
        let _ = stop.send(()); // the admin server may have stopped already
    }
    if let Some(server) = admin_server {
        // Admin calls are short; one still open at this point is cut with the process.
        drop(tokio::time::timeout(Duration::from_secs(1), server).await);
    }
    crate::journal::flush(&journal, FLUSH_TIMEOUT)
        .await
        .context("final journal sync")?;
    info!("stopped");
    Ok(())
}

/// Serves the admin service on `addr` (same TLS and token as ingest) until told to stop.
async fn serve_admin(
    config: &Config,
    addr: SocketAddr,
    service: crate::admin::AdminService,
) -> anyhow::Result<(
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--admin-listen; off disables it)"))?;
    let local = listener.local_addr().context("admin listener address")?;
    let token = crate::auth::TokenCheck::new(config.auth_token()?);
    let admin = tonic::service::interceptor::InterceptedService::new(
        crate::proto::admin_server::AdminServer::new(service),
        move |request| token.check(request),
    );
    let mut builder = Server::builder();
    if let Some(tls) = config.tls()? {
        builder = builder
            .tls_config(tls)
            .context("cannot use the TLS certificate and key (tls_cert_file, tls_key_file)")?;
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(builder.add_service(admin).serve_with_incoming_shutdown(
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        async {
            drop(stop_rx.await);
        },
    ));
    info!(addr = %local, "serving admin");
    Ok((stop_tx, server))
}

/// Learns which backlog messages the bucket holds already, so the replay does not upload them
/// twice. A failure only costs duplicates, so it is logged, not fatal.
async fn absorb_stored(chunks: &crate::sink::ChunkSink, journal: &Journal) {
    let span = match crate::recovery::backlog_span(journal).await {
        Ok(Some(span)) => span,
        Ok(None) => return,
        Err(e) => {
            warn!(error = %e, "cannot read the backlog's span; the replay re-sends all of it");
            return;
        }
    };
    let (from, to, since) = span;
    if let Err(e) = chunks.absorb_stored(from, to, since).await {
        warn!(error = %e, "cannot read back the bucket; the replay re-sends the whole backlog (duplicates of what was uploaded but not acked)");
    }
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
            Err(crate::journal::JournalError::Closed) => break,
            Err(e) => debug!(error = %e, "cannot read the oldest backlog entry"),
        }
    }
}

/// Waits until everything accepted has reached the sink (the journal's backlog is empty and
/// nothing is held in memory only), or until `deadline`. What is left is in the journal and is
/// replayed on the next start; in mode `none` it is lost, which the log says.
async fn drain(pipeline: &Pipeline, deadline: tokio::time::Instant) {
    let pending = || {
        (
            pipeline.journal().backlog().entries(),
            pipeline.completion().memory_bytes(),
        )
    };
    while pending() != (0, 0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match pending() {
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

/// Builds the pipeline of `config` around the given journal, dedup window, handler and sink:
/// the wiring `serve` and the simulator share.
#[allow(clippy::too_many_arguments)]
pub fn build_pipeline(
    config: &Config,
    journal: Journal,
    dedup: Arc<DedupWindow>,
    handler: Arc<dyn Handler>,
    rewrites_ids: bool,
    sink: Arc<dyn Sink>,
    clock: SharedClock,
    entropy: Entropy,
) -> (Arc<Pipeline>, Vec<tokio::task::JoinHandle<()>>) {
    let runner = Arc::new(HandlerRunner::new(
        handler,
        rewrites_ids,
        config.handling.concurrency as usize,
        Duration::from_millis(config.handling.timeout_ms),
        config.handler_backoff(),
        entropy.clone(),
    ));
    let completion = Completion::new(journal.clone());
    let (delivery, lanes) = Delivery::start(
        sink,
        completion.clone(),
        DeliveryConfig {
            lanes: config.delivery.lanes as usize,
            lane_queue: (config.delivery.batch_max_messages as usize * 2).max(64),
            batch_max_messages: config.delivery.batch_max_messages as usize,
            batch_max_bytes: config.delivery.batch_max_bytes as usize,
            linger_ms: config.delivery.linger_ms,
            timeout_ms: config.delivery.timeout_ms,
            backoff: config.delivery_backoff(),
            max_age_ms: config.replay.max_age_ms,
            clock: clock.clone(),
        },
        entropy.clone(),
    );
    let pipeline = Pipeline::new(
        config.mode,
        journal,
        dedup,
        runner,
        delivery,
        completion,
        Limits::of(config),
        clock,
        entropy,
    );
    if let Some(ranges) = pipeline.journal().take_ambiguous_ranges() {
        crate::spawn::spawn(crate::recovery::replay_ambiguous(pipeline.clone(), ranges));
    }
    (pipeline, lanes)
}

/// The journal settings of `config`.
pub fn journal_config(config: &Config) -> JournalConfig {
    JournalConfig {
        commit_max_records: config.journal.commit_max_records as usize,
        sync_interval_ms: config.journal.sync_interval_ms,
        dedup_window_count: config.dedup.window_count,
        dedup_window_age_ms: config.dedup.window_age_ms as i64,
        max_file_bytes: (config.limits.max_journal_bytes != 0)
            .then_some(config.limits.max_journal_bytes),
        simulated_fsync_latency_us: config.journal.simulated_fsync_latency_us,
        ..JournalConfig::default()
    }
}
