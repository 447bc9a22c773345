//! `sidelog-bench`: the logging modes side by side, on the real pipeline.
//!
//! A binary of its own, so the shipped `sidelog` links none of its dependencies (plotters,
//! hdrhistogram, the HTTP and Kafka producers). It runs the `sidelog` binary found beside it
//! (`target/<profile>/sidelog`, or the same folder once installed).
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
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use sidelog::LoggingMode;

mod doors;
mod harness;
mod kafka;
mod load;
mod mqtt;
mod nats;
mod plot;
mod recovery;
mod report;
mod targets;

use harness::{JournalSize, Rig, sidelog_child, usage, wait_delivered, wait_delivered_external};
use load::{Load, Target, load};
use report::{print_table, scrape, workload};

/// The header carrying a message's send time, in µs since the bench started.
const SENT_HEADER: &str = "bench-sent-us";
/// Requests of one stream awaiting their response.
const STREAM_WINDOW: usize = 32;
/// Requests of one open-loop producer in flight at most (beyond, sends wait and the wait is
/// counted as latency).
const OPEN_LOOP_IN_FLIGHT: usize = 4096;

/// mimalloc, as the `sidelog` binary: the producers' allocations cost what they cost there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = <BenchArgs as clap::Parser>::parse();
    // The NATS client (--peer) logs every connection event at INFO.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Benchmark the logging modes side by side on the real pipeline.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "sidelog-bench", version)]
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
    /// Which front door the producers use: `grpc` (Ingest/Publish), `http` (the HTTP door,
    /// the JSON of a PublishRequest per request), `mqtt` (MQTT 5 devices publishing QoS 1
    /// to --mqtt-broker, which sidelog subscribes to), `otlp` (an OpenTelemetry exporter:
    /// LogsService/Export, one log record per message) or `forward` (a Fluent Bit-like client:
    /// one PackedForward chunk per request, waiting for its ack), so the doors compare in one
    /// table.
    #[arg(long, value_enum, default_value = "grpc")]
    pub door: Door,
    /// The broker `--door mqtt` publishes through: `mqtt://HOST:PORT`. Without it the bench
    /// starts a Mosquitto of its own (Nagle off: see the README).
    #[arg(long, value_parser = mqtt::parse_broker)]
    pub mqtt_broker: Option<(String, u16)>,
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
    /// Also run the workload against this NATS JetStream server or Kafka cluster, reported like
    /// a mode: `nats://HOST:PORT[?label=NAME&pid=PID]` or `kafka://HOST:PORT[?label=...&pid=...]`
    /// (pid: the server's, for its CPU time and RSS). May be given more than once.
    #[arg(long, value_parser = nats::Peer::parse)]
    pub peer: Vec<nats::Peer>,
    /// Instead of the modes table: the recovery benchmark. Builds a backlog of this many
    /// --size-byte inputs in a journal, starts sidelog on it (the first journaling mode of
    /// --modes) with an idle sink, and measures the replay: entries/s and peak RSS.
    #[arg(long)]
    pub recovery: Option<u64>,
    /// With --recovery: also time the restarts with this other sidelog binary (an earlier
    /// version, say), on a copy of the same backlog, and print its figures beside.
    #[arg(long, requires = "recovery")]
    pub recovery_compare_binary: Option<PathBuf>,
    /// Instead of one workload: every workload the lean-path targets are measured on (A: 64
    /// unary producers, B: 16 × 100 per request, C: 64 streams, one producer, 1,000 msgs/s
    /// offered, light load, A open loop at half of hml's peak, a 2 ms handler closed and at
    /// half its peak, and the replay of `--recovery` entries of 100 B if given), each with
    /// --duration, then one table of the figures and one of the targets, met or not. The
    /// --peer servers join workloads A and B. --json writes every figure.
    #[arg(long, conflicts_with_all = ["producers", "batch", "stream", "rate", "modes", "handler_outputs", "handler_delay", "door", "size"])]
    pub targets: bool,
}

/// A front door the bench can load (`--door`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Door {
    Grpc,
    Http,
    Mqtt,
    /// OpenTelemetry logs (`LogsService/Export` over gRPC).
    Otlp,
    /// Fluentd's forward protocol (PackedForward with acks).
    Forward,
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
    /// Messages acked in the run per second of the run *and* of the drain after it, until the
    /// sink had every output: the rate sidelog sustains end to end. Below `msgs_per_s` when
    /// intake outran delivery and the backlog grew. Absent where not measured (an external
    /// sink, a peer).
    pub sink_per_s: Option<f64>,
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

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.targets {
        return targets::run(&args).await;
    }
    if let Some(entries) = args.recovery {
        recovery::run(&args, entries).await?;
        return Ok(());
    }
    run_modes(&args).await.map(|_| ())
}

/// The selected modes (and peers) on one workload: prints the table, writes `--json`/`--plot`.
async fn run_modes(args: &BenchArgs) -> anyhow::Result<Vec<ModeResult>> {
    let args = args.clone();
    anyhow::ensure!(args.producers >= 1, "--producers must be at least 1");
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(!args.modes.is_empty(), "--modes is empty");
    let rig = Rig::start(&args).await?;
    let mut results = Vec::new();
    for mode in &args.modes {
        rig.reset();
        eprintln!("bench: {mode}…");
        let r = run_mode(&args, *mode, &rig)
            .await
            .with_context(|| format!("mode {mode}"))?;
        results.push(r);
    }
    for peer in &args.peer {
        eprintln!("bench: peer {}…", peer.label);
        let r = nats::run_peer(&args, peer, rig.base)
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
    write_outputs(&args, &results)?;
    Ok(results)
}

/// `--json` and `--plot`.
fn write_outputs(args: &BenchArgs, results: &[ModeResult]) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        let json = serde_json::json!({ "results": results });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {} (--json)", path.display()))?;
    }
    if let Some(path) = &args.plot {
        plot::draw(path, &workload(args), results)
            .with_context(|| format!("drawing {} (--plot)", path.display()))?;
    }
    Ok(())
}

/// A sidelog child for `mode` on `dir`, serving, with the door the run publishes through.
async fn start_child(
    args: &BenchArgs,
    mode: LoggingMode,
    rig: &Rig,
    dir: &std::path::Path,
) -> anyhow::Result<(sidelog_testkit::Sidelog, std::net::SocketAddr, Target)> {
    let (mut child, metrics) = sidelog_child(
        dir,
        mode,
        &rig.sink_url,
        rig.handler_url.as_deref(),
        args.fsync_latency,
    )?;
    let mut target = match args.door {
        Door::Grpc => Target::Sidelog(child.addr),
        Door::Otlp => Target::Otlp(child.addr),
        Door::Forward => {
            let addr = sidelog_testkit::free_port().context("binding a loopback port")?;
            child.add_args(&["--forward-listen", &addr.to_string()]);
            Target::Forward(addr)
        }
        Door::Http => {
            let addr = sidelog_testkit::free_port().context("binding a loopback port")?;
            child.add_args(&["--http-listen", &addr.to_string()]);
            Target::Http(addr)
        }
        Door::Mqtt => {
            let (host, port) = rig
                .mqtt_broker
                .clone()
                .context("no MQTT broker (the rig starts one for --door mqtt)")?;
            let prefix = format!("sidelog-bench/{}/{mode}", std::process::id());
            // A session of its own per run and mode, gone a minute after the run.
            child.add_args(&[
                "--mqtt-source",
                &format!(
                    "mqtt://{host}:{port}?topics={prefix}/%23&client_id=sidelog-bench-{}-{mode}\
                     &session_expiry_s=60",
                    std::process::id()
                ),
            ]);
            Target::Mqtt(mqtt::Devices {
                host,
                port,
                prefix,
                sent: Default::default(),
                delivered: rig.delivered.clone(),
                outputs: rig.outputs_per_input,
            })
        }
    };
    child.spawn();
    child
        .try_wait_serving(Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    if let Target::Mqtt(devices) = &mut target {
        mqtt::wait_subscribed(devices).await?;
    }
    Ok((child, metrics, target))
}

/// One mode: a fresh sidelog child, a warm-up, then the measured load.
async fn run_mode(args: &BenchArgs, mode: LoggingMode, rig: &Rig) -> anyhow::Result<ModeResult> {
    let dir = std::env::temp_dir().join(format!("sidelog-bench-{}-{mode}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (mut child, metrics, target) = start_child(args, mode, rig, &dir).await?;
    let label = mode.as_str();

    // Warm up (connections to the handler and the sink open lazily, caches fill), let the
    // warm-up's deliveries land, then measure from a clean slate.
    let warmup = (args.duration / 5).clamp(Duration::from_millis(200), Duration::from_secs(1));
    let warm = load(
        args,
        &target,
        label,
        rig.base,
        1_000_000,
        Some(warmup),
        u64::MAX,
    )
    .await?;
    let warm_outputs = warm.acked * rig.outputs_per_input;
    if args.sink.is_none() {
        wait_delivered(&rig.delivered, warm_outputs, mode).await?;
    } else {
        // An external sink is not ours to count: sidelog's own delivered counter says it.
        wait_delivered_external(metrics, warm_outputs, mode).await?;
    }
    rig.reset();
    if let Target::Mqtt(devices) = &target {
        devices.sent.store(0, std::sync::atomic::Ordering::Relaxed);
    }
    let before = scrape(metrics).await.unwrap_or_default();
    let (cpu_before, _) = usage(&child);
    let journal = JournalSize::watch(dir.join("data").join(sidelog::journal::FILE_NAME));

    let duration = args.messages.is_none().then_some(args.duration);
    let messages = args.messages.unwrap_or(u64::MAX);
    let started = tokio::time::Instant::now();
    let run = load(args, &target, label, rig.base, 0, duration, messages).await?;
    run.report_lateness(label);
    // Let the sink receive everything acked (for the end-to-end figures; an error if it stops
    // short).
    let drained = if args.sink.is_none() {
        wait_delivered(&rig.delivered, run.acked * rig.outputs_per_input, mode).await?;
        Some(started.elapsed())
    } else {
        // An external sink: sidelog's own counter says when it has everything (the warm-up's
        // deliveries were counted too).
        let want = warm_outputs + run.acked * rig.outputs_per_input;
        wait_delivered_external(metrics, want, mode).await?;
        Some(started.elapsed())
    };
    let after = scrape(metrics).await.unwrap_or_default();
    let (cpu_after, peak_rss) = usage(&child);
    let (journal_peak, journal_end) = journal.stop();
    child.kill9().await;
    let _ = std::fs::remove_dir_all(&dir);
    let measured = Measured {
        run,
        // Counters of the measured phase only: after minus after-warm-up.
        scraped: after
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
            .collect(),
        cpu_us: cpu_after.saturating_sub(cpu_before),
        drained,
        peak_rss,
        journal_peak,
        journal_end,
    };
    Ok(measured.result(args, mode, rig))
}

/// What one mode's measured phase produced.
struct Measured {
    run: Load,
    scraped: BTreeMap<String, f64>,
    cpu_us: u64,
    /// From the start of the load until the sink had everything acked.
    drained: Option<std::time::Duration>,
    peak_rss: u64,
    journal_peak: u64,
    journal_end: u64,
}

impl Measured {
    fn counter(&self, series: &str) -> f64 {
        self.scraped.get(series).copied().unwrap_or(0.0)
    }

    fn result(&self, args: &BenchArgs, mode: LoggingMode, rig: &Rig) -> ModeResult {
        let fsyncs = self.counter("sidelog_journal_commits_total{durability=\"fsync\"}");
        let commits = fsyncs + self.counter("sidelog_journal_commits_total{durability=\"none\"}");
        let records = self.counter("sidelog_journal_records_total");
        let record_bytes = self.counter("sidelog_journal_record_bytes_total");
        let (ack, acked) = (&self.run.ack, self.run.acked);
        let secs = self.run.elapsed.as_secs_f64().max(1e-9);
        let per_msg = |v: f64| if acked == 0 { 0.0 } else { v / acked as f64 };
        let e2e = rig.e2e.lock().expect("never held across a panic");
        let in_process_sink = args.sink.is_none();
        ModeResult {
            mode: mode.to_string(),
            messages: acked,
            msgs_per_s: acked as f64 / secs,
            sink_per_s: self
                .drained
                .map(|d| acked as f64 / d.as_secs_f64().max(secs)),
            mib_per_s: acked as f64 * args.size as f64 / secs / (1024.0 * 1024.0),
            ack_p50_us: ack.value_at_quantile(0.5),
            ack_p99_us: ack.value_at_quantile(0.99),
            ack_p999_us: ack.value_at_quantile(0.999),
            // Not measured where the messages carry no send time (the OTLP and forward doors
            // make their own headers).
            e2e_p50_us: (in_process_sink && !e2e.is_empty()).then(|| e2e.value_at_quantile(0.5)),
            e2e_p99_us: (in_process_sink && !e2e.is_empty()).then(|| e2e.value_at_quantile(0.99)),
            records_per_commit: Some(if commits > 0.0 {
                records / commits
            } else {
                0.0
            }),
            fsyncs_per_1k: Some(per_msg(fsyncs) * 1000.0),
            bytes_per_msg: per_msg(record_bytes),
            cpu_us_per_msg: Some(per_msg(self.cpu_us as f64)),
            peak_rss_bytes: Some(self.peak_rss),
            journal_peak_bytes: Some(self.journal_peak),
            journal_end_bytes: Some(self.journal_end),
            ratio_to_none: None,
            errors: self.run.errors,
        }
    }
}
