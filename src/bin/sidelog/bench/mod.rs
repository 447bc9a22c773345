//! `sidelog bench`: the logging modes side by side, on the real pipeline.
//!
//! For each selected mode, a real `sidelog serve` child process (so its CPU time and peak RSS
//! are its own) runs on a fresh temporary data directory, between an in-process gRPC handler
//! (optional, `--handler-outputs K`) and an in-process gRPC sink, all over loopback. Producers
//! publish one workload; the sink measures publish→sink latency from a send-time header. After
//! the run, the child's `/metrics` gives journal commits, fsyncs and bytes, and `/proc` its CPU
//! time and peak RSS. One table compares the modes, each as a ratio of `none` from the same run.
//!
//! Open loop (`--rate`): requests are sent on a fixed schedule whatever the answers do, and
//! latency is measured from the *intended* send time, so a stall shows as latency instead of
//! being hidden by producers that simply waited (coordinated omission).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use sidelog::LoggingMode;

mod nats;
mod plot;
mod recovery;
use sidelog::proto::ingest_client::IngestClient;
use sidelog::proto::{Message, PublishRequest, ack};
use sidelog::testkit::{self, HandlerOutputs, Restartable, Sidelog, TestHandler, TestSink};

/// The header carrying a message's send time, in µs since the bench started.
const SENT_HEADER: &str = "bench-sent-us";
/// Requests of one stream awaiting their response.
const STREAM_WINDOW: usize = 32;
/// Requests of one open-loop producer in flight at most (beyond, sends wait and the wait is
/// counted as latency).
const OPEN_LOOP_IN_FLIGHT: usize = 4096;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Modes to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "none,rbml,sbml,hml")]
    pub modes: Vec<LoggingMode>,
    /// Concurrent producers (one connection each).
    #[arg(long, default_value_t = 64)]
    pub producers: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Messages per request.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Use PublishStream (pipelined) instead of unary Publish.
    #[arg(long)]
    pub stream: bool,
    /// How long each mode is loaded, e.g. 10s, 500ms.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Stop after this many messages per mode instead of after --duration.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Open loop: offer this many messages per second in all, on a fixed schedule.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Run an in-process handler making K outputs per input (default: no handler, pass-through).
    #[arg(long)]
    pub handler_outputs: Option<u32>,
    /// Time the in-process handler takes per call, e.g. 1ms.
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    pub handler_delay: Duration,
    /// Time the in-process sink takes per batch, e.g. 1ms.
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    pub sink_delay: Duration,
    /// Make every journal fsync this much slower, e.g. 2ms (a real disk on a fast VM).
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    pub fsync_latency: Duration,
    /// Use this external handler instead of the in-process one.
    #[arg(long)]
    pub handler: Option<String>,
    /// Use this external sink (end-to-end latency is then not measured).
    #[arg(long)]
    pub sink: Option<String>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw throughput and ack latency per mode into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Also run the workload against this NATS JetStream server, reported like a mode:
    /// `nats://HOST:PORT[?label=NAME&pid=PID]` (pid: the server's, for its CPU time and RSS).
    /// May be given more than once.
    #[arg(long, value_parser = nats::Peer::parse)]
    pub peer: Vec<nats::Peer>,
    /// Instead of the modes table: the recovery benchmark. Builds a backlog of this many
    /// --size-byte inputs in a journal, starts sidelog on it (the first journaling mode of
    /// --modes) with an idle sink, and measures the replay: entries/s and peak RSS.
    #[arg(long)]
    pub recovery: Option<u64>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .ok_or_else(|| format!("{s:?}: give a unit, e.g. 10s, 500ms, 200us"))?;
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration"))?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (s, ms, us, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// One mode's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModeResult {
    pub mode: String,
    pub messages: u64,
    pub msgs_per_s: f64,
    pub mib_per_s: f64,
    pub ack_p50_us: u64,
    pub ack_p99_us: u64,
    pub ack_p999_us: u64,
    /// Publish→sink; absent where not measured (an external sink, a peer).
    pub e2e_p50_us: Option<u64>,
    pub e2e_p99_us: Option<u64>,
    /// Journal figures; absent for a peer (its internals are not ours to scrape).
    pub records_per_commit: Option<f64>,
    pub fsyncs_per_1k: Option<f64>,
    pub bytes_per_msg: f64,
    /// Of the server process (sidelog, or a peer whose pid was given).
    pub cpu_us_per_msg: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    /// sidelog's journal file: its largest size during the measured run and its size at the
    /// end (retention: it stays bounded by backlog plus dedup window however many messages).
    pub journal_peak_bytes: Option<u64>,
    pub journal_end_bytes: Option<u64>,
    pub ratio_to_none: Option<f64>,
    pub errors: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// The in-process next tier: counts deliveries and records publish→sink latency from the
/// send-time header.
fn bench_sink(
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
async fn serve_sink(sink: &TestSink) -> anyhow::Result<Restartable> {
    let addr = testkit::free_port().context("binding a loopback port")?;
    sink.serve(addr)
        .await
        .with_context(|| format!("serving the in-process sink on {addr}"))
}

/// A `sidelog serve` child of the bench, on free loopback ports, its data in `dir/data` and
/// its log in `dir/sidelog.log`; returns it with its metrics address.
fn sidelog_child(
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
fn usage(child: &Sidelog) -> (u64, u64) {
    child.pid().map(testkit::proc_usage).unwrap_or((0, 0))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<Vec<ModeResult>> {
    if let Some(entries) = args.recovery {
        recovery::run(&args, entries).await?;
        return Ok(Vec::new());
    }
    anyhow::ensure!(args.producers >= 1, "--producers must be at least 1");
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(!args.modes.is_empty(), "--modes is empty");
    let base = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let e2e = Arc::new(Mutex::new(histogram()));
    // The in-process servers serve as long as these are held.
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
            let handler = TestHandler {
                outputs: HandlerOutputs::Copies(k),
                delay_us: Arc::new(AtomicU64::new(args.handler_delay.as_micros() as u64)),
                ..TestHandler::default()
            };
            let addr = testkit::free_port().context("binding a loopback port")?;
            let server = handler
                .serve(addr)
                .await
                .with_context(|| format!("serving the in-process handler on {addr}"))?;
            servers.push(server);
            Some(servers.last().expect("just pushed").url())
        }
        (None, None) => None,
    };
    let outputs_per_input = u64::from(args.handler_outputs.unwrap_or(1));

    let mut results = Vec::new();
    for mode in &args.modes {
        delivered.store(0, Ordering::Relaxed);
        e2e.lock().expect("never held across a panic").reset();
        eprintln!("bench: {mode}…");
        let r = run_mode(
            &args,
            *mode,
            base,
            &sink_url,
            handler_url.as_deref(),
            &delivered,
            &e2e,
            outputs_per_input,
        )
        .await
        .with_context(|| format!("mode {mode}"))?;
        results.push(r);
    }
    for peer in &args.peer {
        eprintln!("bench: peer {}…", peer.label);
        let r = nats::run_peer(&args, peer, base)
            .await
            .with_context(|| format!("peer {} ({})", peer.label, peer.addr))?;
        results.push(r);
    }
    if let Some(none) = results
        .iter()
        .find(|r| r.mode == "none")
        .map(|r| r.msgs_per_s)
    {
        for r in &mut results {
            r.ratio_to_none = (none > 0.0).then(|| r.msgs_per_s / none);
        }
    }
    print_table(&args, &results);
    if let Some(path) = &args.json {
        let json = serde_json::json!({ "results": results });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {} (--json)", path.display()))?;
    }
    if let Some(path) = &args.plot {
        plot::draw(path, &workload(&args), &results)
            .with_context(|| format!("drawing {} (--plot)", path.display()))?;
    }
    Ok(results)
}

#[allow(clippy::too_many_arguments)]
async fn run_mode(
    args: &BenchArgs,
    mode: LoggingMode,
    base: Instant,
    sink_url: &str,
    handler_url: Option<&str>,
    delivered: &Arc<AtomicU64>,
    e2e: &Arc<Mutex<Histogram<u64>>>,
    outputs_per_input: u64,
) -> anyhow::Result<ModeResult> {
    let dir = std::env::temp_dir().join(format!("sidelog-bench-{}-{mode}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (mut child, metrics) =
        sidelog_child(&dir, mode, sink_url, handler_url, args.fsync_latency)?;
    child.spawn();
    child
        .try_wait_serving(Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    let listen = child.addr;

    // Warm up (connections to the handler and the sink open lazily, caches fill), let the
    // warm-up's deliveries land, then measure from a clean slate.
    let warmup = (args.duration / 5).clamp(Duration::from_millis(200), Duration::from_secs(1));
    let target = Target::Sidelog(listen);
    let label = mode.as_str();
    let warm = load(
        args,
        &target,
        label,
        base,
        1_000_000,
        Some(warmup),
        u64::MAX,
    )
    .await?;
    wait_delivered(delivered, warm.acked * outputs_per_input, mode).await;
    delivered.store(0, Ordering::Relaxed);
    e2e.lock().expect("never held across a panic").reset();
    let before = scrape(metrics).await.unwrap_or_default();
    let (cpu_before, _) = usage(&child);
    let journal_file = dir.join("data").join(sidelog::journal::FILE_NAME);
    let journal_size = || std::fs::metadata(&journal_file).map_or(0, |m| m.len());
    let journal_peak = Arc::new(AtomicU64::new(journal_size()));
    let sampler = {
        let (journal_file, peak) = (journal_file.clone(), journal_peak.clone());
        tokio::spawn(async move {
            loop {
                let size = std::fs::metadata(&journal_file).map_or(0, |m| m.len());
                peak.fetch_max(size, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let run = load(
        args,
        &target,
        label,
        base,
        0,
        args.messages.is_none().then_some(args.duration),
        args.messages.unwrap_or(u64::MAX),
    )
    .await?;
    let (ack, acked, elapsed) = (run.ack, run.acked, run.elapsed);
    let errors = run.errors;

    // Let the sink receive everything acked (bounded wait, for the end-to-end figures).
    if args.sink.is_none() {
        wait_delivered(delivered, acked * outputs_per_input, mode).await;
    }
    let after = scrape(metrics).await.unwrap_or_default();
    // Counters of the measured phase only: after minus after-warm-up.
    let scraped: BTreeMap<String, f64> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect();
    let (cpu_after, peak_rss) = usage(&child);
    let cpu_us = cpu_after.saturating_sub(cpu_before);
    sampler.abort();
    let journal_end = journal_size();
    journal_peak.fetch_max(journal_end, Ordering::Relaxed);
    child.kill9().await;
    let _ = std::fs::remove_dir_all(&dir);

    let e2e = e2e.lock().expect("never held across a panic");
    let commits = scraped
        .get("sidelog_journal_commits_total{durability=\"fsync\"}")
        .copied()
        .unwrap_or(0.0)
        + scraped
            .get("sidelog_journal_commits_total{durability=\"none\"}")
            .copied()
            .unwrap_or(0.0);
    let fsyncs = scraped
        .get("sidelog_journal_commits_total{durability=\"fsync\"}")
        .copied()
        .unwrap_or(0.0);
    let records = scraped
        .get("sidelog_journal_records_total")
        .copied()
        .unwrap_or(0.0);
    let record_bytes = scraped
        .get("sidelog_journal_record_bytes_total")
        .copied()
        .unwrap_or(0.0);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let per_msg = |v: f64| if acked == 0 { 0.0 } else { v / acked as f64 };
    Ok(ModeResult {
        mode: mode.to_string(),
        messages: acked,
        msgs_per_s: acked as f64 / secs,
        mib_per_s: acked as f64 * args.size as f64 / secs / (1024.0 * 1024.0),
        ack_p50_us: ack.value_at_quantile(0.5),
        ack_p99_us: ack.value_at_quantile(0.99),
        ack_p999_us: ack.value_at_quantile(0.999),
        e2e_p50_us: (args.sink.is_none()).then(|| e2e.value_at_quantile(0.5)),
        e2e_p99_us: (args.sink.is_none()).then(|| e2e.value_at_quantile(0.99)),
        records_per_commit: Some(if commits > 0.0 {
            records / commits
        } else {
            0.0
        }),
        fsyncs_per_1k: Some(per_msg(fsyncs) * 1000.0),
        bytes_per_msg: per_msg(record_bytes),
        cpu_us_per_msg: Some(per_msg(cpu_us as f64)),
        peak_rss_bytes: Some(peak_rss),
        journal_peak_bytes: Some(journal_peak.load(Ordering::Relaxed)),
        journal_end_bytes: Some(journal_end),
        ratio_to_none: None,
        errors,
    })
}

/// What one load phase measured.
struct Load {
    ack: Histogram<u64>,
    acked: u64,
    errors: u64,
    elapsed: Duration,
}

/// Where the producers send.
enum Target {
    /// A sidelog `Ingest` service.
    Sidelog(SocketAddr),
    /// A JetStream subject (each producer opens its own connection).
    Nats { addr: String, subject: String },
}

/// Runs the producers against `target` for `duration` (or until `messages` are sent).
/// Producer ids start at `first_id`, so phases never reuse a message id.
async fn load(
    args: &BenchArgs,
    target: &Target,
    label: &str,
    base: Instant,
    first_id: usize,
    duration: Option<Duration>,
    messages: u64,
) -> anyhow::Result<Load> {
    let ack = Arc::new(Mutex::new(histogram()));
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let budget = Arc::new(AtomicU64::new(messages));
    let started = Instant::now();
    let deadline = started + duration.unwrap_or(Duration::from_secs(3600));
    let mut tasks = Vec::new();
    let label: Arc<str> = label.into();
    for p in 0..args.producers {
        let ctx = Producer {
            id: first_id + p,
            label: label.clone(),
            base,
            size: args.size,
            batch: args.batch,
            deadline,
            budget: budget.clone(),
            ack: ack.clone(),
            acked: acked.clone(),
            errors: errors.clone(),
        };
        let per_producer = args
            .rate
            .map(|rate| (rate as f64 / args.producers as f64).max(1e-3));
        tasks.push(match target {
            Target::Sidelog(listen) => {
                let channel = Endpoint::from_shared(format!("http://{listen}"))?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .context("connecting a producer")?;
                match (per_producer, args.stream) {
                    (Some(rate), _) => {
                        tokio::spawn(ctx.open_loop(IngestClient::new(channel), rate))
                    }
                    (None, true) => tokio::spawn(ctx.stream(channel)),
                    (None, false) => tokio::spawn(ctx.closed_loop(IngestClient::new(channel))),
                }
            }
            Target::Nats { addr, subject } => {
                let publisher = nats::Publisher::connect(addr, subject).await?;
                match per_producer {
                    Some(rate) => tokio::spawn(ctx.open_loop(publisher, rate)),
                    None => tokio::spawn(ctx.closed_loop(publisher)),
                }
            }
        });
    }
    for t in tasks {
        t.await.context("a producer failed")?;
    }
    let elapsed = started.elapsed();
    let ack = ack.lock().expect("never held across a panic").clone();
    Ok(Load {
        ack,
        acked: acked.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed,
    })
}

/// Waits (bounded) until the in-process sink has received `want` messages.
async fn wait_delivered(delivered: &AtomicU64, want: u64, mode: LoggingMode) {
    let mut last = (delivered.load(Ordering::Relaxed), Instant::now());
    while delivered.load(Ordering::Relaxed) < want {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = delivered.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10) {
            eprintln!("bench: {mode}: the sink got {now} of {want} outputs; not waiting longer");
            return;
        }
    }
}

/// One producer's share of the workload.
/// One way to send a request of messages and wait for its acks: sidelog's unary `Publish`, or
/// a JetStream publish-with-ack of each message.
trait Send1: Clone + Send + Sync + 'static {
    /// Sends `messages`; returns how many were acknowledged (the rest count as errors), or an
    /// error if none were.
    fn send(
        &mut self,
        messages: Vec<Message>,
    ) -> impl std::future::Future<Output = Result<usize, ()>> + Send;
}

impl Send1 for IngestClient<Channel> {
    async fn send(&mut self, messages: Vec<Message>) -> Result<usize, ()> {
        let acks = self
            .publish(PublishRequest { messages })
            .await
            .map_err(|_| ())?
            .into_inner()
            .acks;
        Ok(acks.iter().filter(|a| is_ok(a)).count())
    }
}

fn is_ok(a: &sidelog::proto::Ack) -> bool {
    a.status == ack::Status::Accepted as i32 || a.status == ack::Status::Duplicate as i32
}

struct Producer {
    id: usize,
    label: Arc<str>,
    base: Instant,
    size: usize,
    batch: usize,
    deadline: Instant,
    budget: Arc<AtomicU64>,
    ack: Arc<Mutex<Histogram<u64>>>,
    acked: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
}

impl Producer {
    /// Takes up to `batch` messages from the budget; 0 once the run is over.
    fn take(&self) -> usize {
        if Instant::now() >= self.deadline {
            return 0;
        }
        let want = self.batch as u64;
        let mut left = self.budget.load(Ordering::Relaxed);
        loop {
            let n = want.min(left);
            if n == 0 {
                return 0;
            }
            match self
                .budget
                .compare_exchange(left, left - n, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return n as usize,
                Err(now) => left = now,
            }
        }
    }

    fn messages(&self, seq: &mut u64, n: usize, payload: &bytes::Bytes) -> Vec<Message> {
        let sent = self.base.elapsed().as_micros().to_string();
        (0..n)
            .map(|_| {
                *seq += 1;
                let mut headers = BTreeMap::new();
                headers.insert(SENT_HEADER.to_owned(), sent.clone());
                Message {
                    id: format!("{}-{}-{}", self.label, self.id, seq),
                    key: format!("k{}", *seq % 64),
                    payload: payload.clone(),
                    headers,
                    event_time_ms: 0,
                }
            })
            .collect()
    }

    /// Records one answered request of `n` messages, `ok` of them acknowledged.
    fn record(&self, latency: Duration, n: usize, ok: usize) {
        self.ack
            .lock()
            .expect("never held across a panic")
            .saturating_record_n(latency.as_micros().max(1) as u64, n as u64);
        self.acked.fetch_add(ok as u64, Ordering::Relaxed);
        self.errors
            .fetch_add(n.saturating_sub(ok) as u64, Ordering::Relaxed);
    }

    async fn closed_loop(self, mut client: impl Send1) {
        let payload = bytes::Bytes::from(vec![b'x'; self.size]);
        let mut seq = 0;
        loop {
            let n = self.take();
            if n == 0 {
                break;
            }
            let messages = self.messages(&mut seq, n, &payload);
            let t0 = Instant::now();
            match client.send(messages).await {
                Ok(ok) => self.record(t0.elapsed(), n, ok),
                Err(_) => {
                    self.errors.fetch_add(n as u64, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    async fn stream(self, channel: Channel) {
        let mut client = IngestClient::new(channel);
        let payload = bytes::Bytes::from(vec![b'x'; self.size]);
        let (req_tx, req_rx) = tokio::sync::mpsc::channel(STREAM_WINDOW);
        let (sent_tx, mut sent_rx) = tokio::sync::mpsc::channel::<(Instant, usize)>(STREAM_WINDOW);
        let mut responses = match client
            .publish_stream(tokio_stream::wrappers::ReceiverStream::new(req_rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let this = Arc::new(self);
        let sender = {
            let this = this.clone();
            tokio::spawn(async move {
                let mut seq = 0;
                loop {
                    let n = this.take();
                    if n == 0 {
                        break;
                    }
                    let request = PublishRequest {
                        messages: this.messages(&mut seq, n, &payload),
                    };
                    // The window: a slot in `sent` before the request goes out.
                    if sent_tx.send((Instant::now(), n)).await.is_err()
                        || req_tx.send(request).await.is_err()
                    {
                        break;
                    }
                }
            })
        };
        while let Some((t0, n)) = sent_rx.recv().await {
            match responses.message().await {
                Ok(Some(r)) => {
                    this.record(t0.elapsed(), n, r.acks.iter().filter(|a| is_ok(a)).count())
                }
                _ => {
                    this.errors.fetch_add(n as u64, Ordering::Relaxed);
                    break;
                }
            }
        }
        let _ = sender.await;
    }

    async fn open_loop(self, client: impl Send1, msgs_per_s: f64) {
        let payload = bytes::Bytes::from(vec![b'x'; self.size]);
        let interval = Duration::from_secs_f64(self.batch as f64 / msgs_per_s);
        let permits = Arc::new(tokio::sync::Semaphore::new(OPEN_LOOP_IN_FLIGHT));
        let this = Arc::new(self);
        let start = Instant::now();
        let mut seq = 0;
        let mut k: u32 = 0;
        let mut in_flight = Vec::new();
        loop {
            let intended = start + interval * k;
            k += 1;
            tokio::time::sleep_until(intended).await;
            let n = this.take();
            if n == 0 {
                break;
            }
            let messages = this.messages(&mut seq, n, &payload);
            let permit = permits.clone().acquire_owned().await.expect("never closed");
            let (this, mut client) = (this.clone(), client.clone());
            in_flight.push(tokio::spawn(async move {
                match client.send(messages).await {
                    // From the intended send time: a late send is latency too.
                    Ok(ok) => this.record(intended.elapsed(), n, ok),
                    Err(_) => {
                        this.errors.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
                drop(permit);
            }));
            in_flight.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
        }
        for t in in_flight {
            let _ = t.await;
        }
    }
}

/// Reads a Prometheus text endpoint into `series → value`.
async fn scrape(addr: SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect())
}

/// One line naming the workload, for the table and the plot.
fn workload(args: &BenchArgs) -> String {
    format!(
        "{} producers, {} B messages, {} per request, {}{}{}{}",
        args.producers,
        args.size,
        args.batch,
        if args.stream {
            "PublishStream"
        } else {
            "unary Publish"
        },
        args.rate
            .map(|r| format!(", open loop at {r} msg/s"))
            .unwrap_or_default(),
        args.handler_outputs
            .map(|k| format!(", handler with {k} outputs"))
            .unwrap_or_else(|| ", pass-through".into()),
        if args.fsync_latency.is_zero() {
            String::new()
        } else {
            format!(", fsync +{:?}", args.fsync_latency)
        },
    )
}

fn print_table(args: &BenchArgs, results: &[ModeResult]) {
    fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
        v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
    }
    fn opt1(v: Option<f64>) -> String {
        v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
    }
    let width = results
        .iter()
        .map(|r| r.mode.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!("workload: {}", workload(args));
    println!(
        "{:<width$} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>10} {:>8} {:>6}",
        "mode",
        "messages",
        "msgs/s",
        "MiB/s",
        "ack p50",
        "ack p99",
        "ack p99.9",
        "e2e p50",
        "e2e p99",
        "rec/commit",
        "fsync/1k",
        "B/msg",
        "cpu us/msg",
        "RSS MiB",
        "x none"
    );
    for r in results {
        println!(
            "{:<width$} {:>10} {:>10.0} {:>8.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9.0} {:>10} {:>8} {:>6}",
            r.mode,
            r.messages,
            r.msgs_per_s,
            r.mib_per_s,
            r.ack_p50_us,
            r.ack_p99_us,
            r.ack_p999_us,
            opt(r.e2e_p50_us),
            opt(r.e2e_p99_us),
            opt1(r.records_per_commit),
            opt1(r.fsyncs_per_1k),
            r.bytes_per_msg,
            opt1(r.cpu_us_per_msg),
            opt1(r.peak_rss_bytes.map(|b| b as f64 / (1024.0 * 1024.0))),
            r.ratio_to_none
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    for r in results {
        if let (Some(peak), Some(end)) = (r.journal_peak_bytes, r.journal_end_bytes) {
            println!(
                "{}: journal file {:.1} MiB at most, {:.1} MiB at the end ({} messages)",
                r.mode,
                mib(peak),
                mib(end),
                r.messages
            );
        }
    }
    println!(
        "latencies in µs; ack = publish→ack, e2e = publish→sink; errors: {}",
        results
            .iter()
            .map(|r| format!("{} {}", r.mode, r.errors))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
