//! The bench's rig: the in-process sink (counting, measuring publish→sink latency) and
//! handler, the `sidelog serve` child, and what is read from it (CPU, RSS, journal size). Built
//! on the library's test kit, as the integration tests are.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use sidelog::LoggingMode;
use sidelog::proto::Message;
use sidelog_testkit::{
    self as testkit, HandlerOutputs, Restartable, Sidelog, TestHandler, TestSink,
};
use tokio::time::Instant;

use super::{BenchArgs, SENT_HEADER};

pub(super) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// The in-process next tier and handler, and what the sink measures. The servers serve as
/// long as the rig is held.
pub(super) struct Rig {
    pub base: Instant,
    pub delivered: Arc<AtomicU64>,
    pub e2e: Arc<Mutex<Histogram<u64>>>,
    pub sink_url: String,
    pub handler_url: Option<String>,
    /// Outputs the handler makes of each input (1 without a handler).
    pub outputs_per_input: u64,
    /// `--door mqtt`: the broker's host and port (`--mqtt-broker`, or one the rig started).
    pub mqtt_broker: Option<(String, u16)>,
    _servers: Vec<Restartable>,
    _own_broker: Option<super::mqtt::OwnBroker>,
}

impl Rig {
    /// Serves the in-process sink (unless `--sink` names one) and handler (with
    /// `--handler-outputs`, unless `--handler` names one).
    pub async fn start(args: &BenchArgs) -> anyhow::Result<Rig> {
        let base = Instant::now();
        let delivered = Arc::new(AtomicU64::new(0));
        let e2e = Arc::new(Mutex::new(histogram()));
        let mut servers = Vec::new();
        let sink_url = match &args.sink {
            Some(url) => url.clone(),
            None => {
                let sink = bench_sink(base, &delivered, &e2e, args.sink_delay);
                servers.push(serve_sink(&sink).await?);
                servers.last().expect("just pushed").url()
            }
        };
        let handler_url = match (&args.handler, args.handler_outputs) {
            (Some(url), _) => Some(url.clone()),
            (None, Some(k)) => {
                servers.push(serve_handler(k, args.handler_delay).await?);
                Some(servers.last().expect("just pushed").url())
            }
            (None, None) => None,
        };
        let (mqtt_broker, own_broker) = match (args.door, &args.mqtt_broker) {
            (super::Door::Mqtt, Some(broker)) => (Some(broker.clone()), None),
            (super::Door::Mqtt, None) => {
                let own = super::mqtt::OwnBroker::start().await?;
                (Some(("127.0.0.1".to_owned(), own.port)), Some(own))
            }
            _ => (None, None),
        };
        Ok(Rig {
            base,
            delivered,
            e2e,
            sink_url,
            handler_url,
            outputs_per_input: u64::from(args.handler_outputs.unwrap_or(1)),
            mqtt_broker,
            _servers: servers,
            _own_broker: own_broker,
        })
    }

    /// Forgets what the sink saw (a new phase).
    pub fn reset(&self) {
        self.delivered.store(0, Ordering::Relaxed);
        self.e2e.lock().expect("never held across a panic").reset();
    }
}

/// The in-process next tier: counts deliveries and records publish→sink latency from the
/// send-time header.
pub(super) fn bench_sink(
    base: Instant,
    delivered: &Arc<AtomicU64>,
    e2e: &Arc<Mutex<Histogram<u64>>>,
    delay: Duration,
) -> TestSink {
    let e2e = e2e.clone();
    let observe = move |messages: &[Message]| {
        let now = base.elapsed().as_micros() as u64;
        let mut h = e2e.lock().expect("never held across a panic");
        for m in messages {
            if let Some(sent) = m
                .headers
                .get(SENT_HEADER)
                .and_then(|v| v.parse::<u64>().ok())
            {
                h.saturating_record(now.saturating_sub(sent).max(1));
            }
        }
    };
    TestSink {
        delay_us: Arc::new(AtomicU64::new(delay.as_micros() as u64)),
        delivered: delivered.clone(),
        count_only: true,
        observer: Some(Arc::new(observe)),
        ..TestSink::default()
    }
}

/// Serves `sink` on a free loopback port; keep the server to keep it serving.
pub(super) async fn serve_sink(sink: &TestSink) -> anyhow::Result<Restartable> {
    let addr = testkit::free_port().context("binding a loopback port")?;
    sink.serve(addr)
        .await
        .with_context(|| format!("serving the in-process sink on {addr}"))
}

/// Serves a handler that makes `outputs` copies of each input, taking `delay` per call.
async fn serve_handler(outputs: u32, delay: Duration) -> anyhow::Result<Restartable> {
    let handler = TestHandler {
        outputs: HandlerOutputs::Copies(outputs),
        delay_us: Arc::new(AtomicU64::new(delay.as_micros() as u64)),
        ..TestHandler::default()
    };
    let addr = testkit::free_port().context("binding a loopback port")?;
    handler
        .serve(addr)
        .await
        .with_context(|| format!("serving the in-process handler on {addr}"))
}

/// A `sidelog serve` child of the bench, on free loopback ports, its data in `dir/data` and
/// its log in `dir/sidelog.log`; returns it with its metrics address.
pub(super) fn sidelog_child(
    dir: &Path,
    mode: LoggingMode,
    sink: &str,
    handler: Option<&str>,
    fsync_latency: Duration,
) -> anyhow::Result<(Sidelog, SocketAddr)> {
    let metrics = testkit::free_port().context("binding a loopback port")?;
    let fsync_us = fsync_latency.as_micros().to_string();
    let metrics_arg = metrics.to_string();
    let mut args = vec![
        "--mode",
        mode.as_str(),
        "--metrics-listen",
        &metrics_arg,
        "--sink",
        sink,
        "--journal-simulated-fsync-latency-us",
        &fsync_us,
    ];
    if let Some(h) = handler {
        args.extend(["--handler", h]);
    }
    let child = Sidelog::new(&dir.join("data"), &args)
        .without_admin()
        .with_log(dir.join("sidelog.log"))
        .with_env("RUST_LOG", "warn");
    Ok((child, metrics))
}

/// CPU time (µs) and peak RSS (bytes) of the child so far.
pub(super) fn usage(child: &Sidelog) -> (u64, u64) {
    child.pid().map(testkit::proc_usage).unwrap_or((0, 0))
}

/// Samples the journal file's size four times a second, keeping the largest.
pub(super) struct JournalSize {
    file: PathBuf,
    peak: Arc<AtomicU64>,
    sampler: tokio::task::JoinHandle<()>,
}

impl JournalSize {
    pub fn watch(file: PathBuf) -> JournalSize {
        let peak = Arc::new(AtomicU64::new(file_len(&file)));
        let sampler = {
            let (file, peak) = (file.clone(), peak.clone());
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(file_len(&file), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        };
        JournalSize {
            file,
            peak,
            sampler,
        }
    }

    /// Stops sampling; the largest size seen and the size now.
    pub fn stop(self) -> (u64, u64) {
        self.sampler.abort();
        let end = file_len(&self.file);
        (self.peak.load(Ordering::Relaxed).max(end), end)
    }
}

pub(super) fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Waits until the in-process sink has received `want` messages; an error if it stops
/// receiving (10 s without one) short of that: something acked was not delivered, and no
/// figure of such a run is worth printing.
pub(super) async fn wait_delivered(
    delivered: &AtomicU64,
    want: u64,
    mode: LoggingMode,
) -> anyhow::Result<()> {
    let mut last = (delivered.load(Ordering::Relaxed), Instant::now());
    while delivered.load(Ordering::Relaxed) < want {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = delivered.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10) {
            anyhow::bail!(
                "{mode}: the sink got {now} of the {want} outputs acked, and nothing more for 10 s"
            );
        }
    }
    Ok(())
}

/// [`wait_delivered`] for an external sink (`--sink`): reads sidelog's
/// `sidelog_delivered_total` from its metrics at `metrics` until it reaches `want`.
pub(super) async fn wait_delivered_external(
    metrics: std::net::SocketAddr,
    want: u64,
    mode: LoggingMode,
) -> anyhow::Result<()> {
    let delivered = AtomicU64::new(0);
    let poll = async {
        loop {
            let now = super::report::scrape(metrics)
                .await
                .ok()
                .and_then(|m| m.get("sidelog_delivered_total").copied())
                .unwrap_or(0.0);
            delivered.store(now as u64, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        never = poll => never,
        done = wait_delivered(&delivered, want, mode) => done,
    }
}
