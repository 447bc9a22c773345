//! Metric names, in one place, and the metrics listener (`--metrics-listen`): Prometheus text
//! at `/metrics`, and the probes `/healthz` and `/readyz`.
//!
//! Labels are of low cardinality only (mode, outcome, durability), never message ids. Without
//! an installed recorder (tests, the simulator) every update is a no-op.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use crate::pipeline::Pipeline;

// The journal's own metrics (commits, fsyncs, backlog, dead letters).
pub use sidelog_journal::metrics::*;
// The pipeline's and delivery's (intake, handler calls, deliveries, replays).
pub use sidelog_core::metrics::*;

/// Age of the oldest undelivered entry in the journal, in seconds (0 with no backlog).
pub const BACKLOG_OLDEST_AGE_SECONDS: &str = "sidelog_backlog_oldest_age_seconds";
/// Dead letters re-queued or purged by an operator, by action.
pub const DEAD_LETTERS_HANDLED: &str = "sidelog_dead_letters_handled_total";
/// Whole Publish requests refused, by gRPC code (invalid_argument, resource_exhausted,
/// unavailable, internal).
pub const REQUESTS_REFUSED: &str = "sidelog_requests_refused_total";

/// 1, with the version as a label (the Prometheus convention for what is running).
pub const BUILD_INFO: &str = "sidelog_build_info";

/// What `/readyz` asks: whether the pipeline takes traffic (not while it replays under
/// `replay.policy = first`, not while it stops). Not ready until the pipeline is attached.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<OnceLock<Arc<Pipeline>>>);

impl Readiness {
    /// From now on `/readyz` follows `pipeline`'s intake.
    pub fn attach(&self, pipeline: Arc<Pipeline>) {
        // A second attach (there is one pipeline per process) keeps the first.
        let _ = self.0.set(pipeline);
    }

    fn ready(&self) -> bool {
        self.0.get().is_some_and(|p| p.is_serving())
    }
}

/// Installs the Prometheus recorder and serves on `addr`: `/metrics` (Prometheus text, the
/// process's own metrics included), `/healthz` (200 while the process answers: liveness) and
/// `/readyz` (200 while it takes traffic, else 503: readiness).
pub async fn install(addr: SocketAddr) -> anyhow::Result<Readiness> {
    use metrics_exporter_prometheus::Matcher;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr} (--metrics-listen): {e}"))?;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 1e-1, 1.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full(JOURNAL_RECORDS_PER_COMMIT.into()),
            &[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0,
            ],
        )?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    describe_and_zero();
    let process = Arc::new(metrics_process::Collector::default());
    process.describe();
    let readiness = Readiness::default();
    let router = endpoints(handle.clone(), process, readiness.clone());
    crate::runtime::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    // Without the exporter's own listener, its histograms are drained by hand.
    crate::runtime::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
    Ok(readiness)
}

fn endpoints(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    process: Arc<metrics_process::Collector>,
    readiness: Readiness,
) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let (handle, process) = (handle.clone(), process.clone());
                async move {
                    process.collect();
                    handle.render()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: starting, replaying the journal (replay.policy = first) or stopping\n",
                        )
                    }
                }
            }),
        )
}

/// Gives every family its `# HELP` line, and creates the series that dashboards and alerts
/// watch at zero, so that they exist before the first event.
/// Puts a door's intake counters at zero, so that an alert on them has a series from the start.
/// The gRPC door's at install; the HTTP and MQTT doors' when they open.
pub fn zero_intake(door: crate::pipeline::Door) {
    let door = door.label();
    for outcome in ["accepted", "duplicate"] {
        metrics::counter!(MESSAGES, "door" => door, "outcome" => outcome).absolute(0);
    }
    for code in [
        "invalid_argument",
        "resource_exhausted",
        "unavailable",
        "internal",
    ] {
        metrics::counter!(REQUESTS_REFUSED, "door" => door, "code" => code).absolute(0);
    }
}

fn describe_and_zero() {
    describe_intake_and_journal();
    describe_delivery_and_operations();
    zero_series();
}

/// Intake, the journal and the backlog.
fn describe_intake_and_journal() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        MESSAGES,
        "Messages received, by door (grpc, http, mqtt), outcome (accepted, duplicate, rejected) and, for rejected, the limit broken."
    );
    describe_counter!(
        REQUESTS_REFUSED,
        "Whole Publish requests refused, by door and gRPC code."
    );
    describe_counter!(
        JOURNAL_COMMITS,
        "Journal group commits, by durability (fsync or none)."
    );
    describe_counter!(
        JOURNAL_COMMIT_FAILURES,
        "Journal commits that failed (nothing in them acknowledged), by cause: full (the disk or limits.max_journal_bytes), io, other."
    );
    describe_counter!(JOURNAL_RECORDS, "Records written to the journal.");
    describe_counter!(
        JOURNAL_RECORD_BYTES,
        "Encoded bytes of the records written to the journal."
    );
    describe_histogram!(JOURNAL_RECORDS_PER_COMMIT, "Records per journal commit.");
    describe_histogram!(
        JOURNAL_COMMIT_SECONDS,
        "Seconds a journal commit took, fsync included."
    );
    describe_histogram!(
        JOURNAL_FSYNC_SECONDS,
        "Seconds an fsync of the journal took."
    );
    describe_gauge!(BACKLOG_ENTRIES, "Undelivered entries in the journal.");
    describe_gauge!(
        BACKLOG_BYTES,
        "Bytes of journal blocks holding undelivered entries."
    );
    describe_gauge!(
        BACKLOG_OLDEST_AGE_SECONDS,
        "Age of the oldest undelivered entry in seconds (0: none)."
    );
}

/// Replay, delivery, dead letters, and what runs.
fn describe_delivery_and_operations() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REPLAYED,
        "Journal entries a replay dispatched again, by kind (input, output)."
    );
    describe_counter!(DELIVERED, "Messages acked by the sink.");
    describe_gauge!(
        SINK_UP,
        "1 while the sink's last delivery or start-up check succeeded, 0 once one failed."
    );
    describe_histogram!(
        SINK_DELIVER_SECONDS,
        "Seconds per sink delivery attempt, by outcome (ok, error)."
    );
    describe_histogram!(
        HANDLER_CALL_SECONDS,
        "Seconds per handler call, by outcome (ok, refused, error)."
    );
    describe_counter!(DELIVERY_RETRIES, "Delivery batches retried.");
    describe_counter!(
        RESENT,
        "Messages the next tier may see twice, by cause (retry, replay)."
    );
    describe_counter!(DEAD_LETTERED, "Entries moved to the dead-letter table.");
    describe_gauge!(
        DEAD_LETTERS,
        "Dead letters waiting for an operator (sidelog inspect requeue or purge)."
    );
    describe_gauge!(
        BUILD_INFO,
        "1, labelled with the version of sidelog that runs."
    );
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    describe_counter!(
        DEAD_LETTERS_HANDLED,
        "Dead letters an operator re-queued or purged, by action."
    );
}

/// The series that read 0 (or 1) until something happens, so that a dashboard and a rate()
/// see them from the start.
fn zero_series() {
    zero_intake(crate::pipeline::Door::Grpc);
    zero_intake(crate::pipeline::Door::Otlp);
    for durability in ["fsync", "none"] {
        metrics::counter!(JOURNAL_COMMITS, "durability" => durability).absolute(0);
    }
    for cause in ["full", "io", "other"] {
        metrics::counter!(JOURNAL_COMMIT_FAILURES, "cause" => cause).absolute(0);
    }
    for kind in ["input", "output"] {
        metrics::counter!(REPLAYED, "kind" => kind).absolute(0);
    }
    for cause in ["retry", "replay"] {
        metrics::counter!(RESENT, "cause" => cause).absolute(0);
    }
    for action in ["requeue", "purge"] {
        metrics::counter!(DEAD_LETTERS_HANDLED, "action" => action).absolute(0);
    }
    for name in [
        JOURNAL_RECORDS,
        JOURNAL_RECORD_BYTES,
        DELIVERED,
        DELIVERY_RETRIES,
        DEAD_LETTERED,
    ] {
        metrics::counter!(name).absolute(0);
    }
    // Up until a check or a delivery says otherwise.
    metrics::gauge!(SINK_UP).set(1.0);
    // The backlog gauges are set when the journal opens (and its age within a second).
}
