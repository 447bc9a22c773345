//! One simulated run: producers, sidelog (its real pipeline, journal, delivery and replay), a
//! handler and a sink, the links between them, and the faults, all on one current-thread tokio
//! runtime with paused time. One seed fixes every choice, so a run is a pure function of its
//! seed and settings.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use sidelog::Config;
use sidelog::LoggingMode;
use sidelog::Pipeline;
use sidelog::journal::{Journal, JournalConfig, Seq, WriterRuntime};
use sidelog::proto::{Ack, Message, ack};
use sidelog::runtime::BoxFuture;
use sidelog::runtime::Tracker;
use sidelog::runtime::{Clock, Entropy};
use sidelog::sink::{SEQ_HEADER, Sink, SinkError};
use sidelog::{Handler, HandlerError};
use tokio::time::Instant;

use crate::disk::{CrashLoss, DiskFaults, Full, SimDisk};

/// A deliberate bug, to show that the checkers catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The journal acks durable writes without fsync.
    AckBeforeFsync,
    /// sidelog takes traffic on start without replaying its journal.
    SkipReplay,
}

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub mode: LoggingMode,
    pub messages: usize,
    pub producers: usize,
    pub batch_max: usize,
    pub crashes: usize,
    /// Multiplies every fault rate; 0 turns faults but crashes off.
    pub fault_scale: f64,
    pub bug: Option<Bug>,
    /// No handler: each input is its own output (sidelog's default). Without the flag, a
    /// quarter of the seeds run this way.
    pub pass_through: bool,
}

impl SimConfig {
    pub fn new(seed: u64, mode: LoggingMode) -> SimConfig {
        SimConfig {
            seed,
            mode,
            messages: 1000,
            producers: 4,
            batch_max: 20,
            crashes: 10,
            fault_scale: 1.0,
            bug: None,
            pass_through: seed.is_multiple_of(4),
        }
    }

    /// The command that repeats this run.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "cargo run -p sidelog-sim --release -- --mode {} --seed {} --messages {} --producers {} --crashes {} --fault-scale {}",
            self.mode, self.seed, self.messages, self.producers, self.crashes, self.fault_scale
        );
        if self.pass_through {
            cmd.push_str(" --pass-through");
        }
        match self.bug {
            Some(Bug::AckBeforeFsync) => cmd.push_str(" --bug ack-before-fsync"),
            Some(Bug::SkipReplay) => cmd.push_str(" --bug skip-replay"),
            None => {}
        }
        cmd
    }
}

/// Faults injected, by kind.
#[derive(Debug, Default, Clone)]
pub struct FaultCounts {
    pub crashes: u64,
    pub torn_crashes: u64,
    pub hop_outages: u64,
    pub slow_periods: u64,
    pub failing_periods: u64,
    pub partitions: u64,
    pub disk_full_periods: u64,
    pub dropped_requests: u64,
    pub dropped_responses: u64,
    pub duplicated_requests: u64,
    pub disk_write_errors: u64,
    pub disk_sync_errors: u64,
    pub disk_full_errors: u64,
}

impl FaultCounts {
    pub fn total(&self) -> u64 {
        self.crashes
            + self.hop_outages
            + self.slow_periods
            + self.failing_periods
            + self.partitions
            + self.disk_full_periods
            + self.dropped_requests
            + self.dropped_responses
            + self.duplicated_requests
            + self.disk_write_errors
            + self.disk_sync_errors
            + self.disk_full_errors
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub config: SimConfig,
    pub inputs_acked: usize,
    pub acks: u64,
    pub restarts: u64,
    pub faults: FaultCounts,
    pub sink_messages: usize,
    pub sink_duplicates: usize,
    pub dead_letters: usize,
    /// Outputs of acknowledged inputs that never reached the sink (nor the dead letters).
    pub losses: Vec<String>,
    /// Broken promises other than loss (phantoms, acks without durability, no drain).
    pub violations: Vec<String>,
    pub trace_hash: u64,
    pub trace_tail: Vec<String>,
    pub virtual_ms: u64,
}

impl Report {
    /// Whether the run kept every promise of its mode (mode none promises nothing on loss).
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
            && (self.losses.is_empty() || self.config.mode == LoggingMode::None)
    }
}

const EPOCH_MS: i64 = 1_800_000_000_000;
/// How long a caller waits for a lost request or response before it gives up.
const LOST_AFTER: Duration = Duration::from_secs(3);
/// Start attempts before a sidelog that cannot start is reported.
const START_ATTEMPTS: u32 = 100;
/// The simulated disk's size when it is not full.
const DISK_CAPACITY: u64 = 64 << 20;
/// A run that has not drained by then has a liveness bug.
const DRAIN_LIMIT: Duration = Duration::from_secs(1800);

/// The simulation's clock: tokio's paused clock, from a fixed epoch.
#[derive(Debug)]
struct SimClock {
    start: Instant,
}

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        EPOCH_MS + self.start.elapsed().as_millis() as i64
    }
}

/// The event history; its hash identifies the run.
#[derive(Debug)]
struct Trace {
    start: Instant,
    events: Mutex<Vec<String>>,
}

impl Trace {
    fn log(&self, event: impl Into<String>) {
        let ms = self.start.elapsed().as_millis();
        self.events
            .lock()
            .expect("never held across a panic")
            .push(format!("{ms:>8} ms  {}", event.into()));
    }

    fn hash_and_tail(&self, tail: usize) -> (u64, Vec<String>) {
        let events = self.events.lock().expect("never held across a panic");
        if let Ok(path) = std::env::var("SIDELOG_SIM_TRACE_FILE") {
            let _ = std::fs::write(path, events.join("\n"));
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for e in events.iter() {
            for b in e.bytes().chain([b'\n']) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        (h, events[events.len().saturating_sub(tail)..].to_vec())
    }
}

/// Writes sidelog's tracing events into the trace.
#[derive(Clone)]
struct TraceWriter(Arc<Trace>);

impl std::io::Write for TraceWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = String::from_utf8_lossy(buf);
        let line = line.trim_end();
        if !line.is_empty() {
            self.0.log(format!("sidelog: {line}"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for TraceWriter {
    type Writer = TraceWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The outputs the simulated handler makes of an input: 0 to 3, decided by its id.
pub fn outputs_of(id: &str, payload: &[u8]) -> Vec<(String, Bytes)> {
    let n = id
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % 4;
    (0..n)
        .map(|i| {
            let mut p = payload.to_vec();
            p.extend(format!("#{i}").bytes());
            (format!("{id}/{i}"), Bytes::from(p))
        })
        .collect()
}

/// Fault rates of a link.
#[derive(Debug, Clone, Copy, Default)]
struct LinkFaults {
    drop_request: f64,
    drop_response: f64,
    duplicate: f64,
    delay_max_ms: u64,
}

/// What the link does to one call, drawn up front so the draw order is fixed.
#[derive(Debug, Clone, Copy)]
struct Fate {
    delay_out: Duration,
    delay_back: Duration,
    drop_request: bool,
    drop_response: bool,
    duplicate: bool,
}

/// A network link between two hops.
#[derive(Debug)]
struct Link {
    name: &'static str,
    rng: Mutex<StdRng>,
    faults: Mutex<LinkFaults>,
    partitioned_until: Mutex<Option<Instant>>,
    counts: Arc<Mutex<FaultCounts>>,
}

impl Link {
    fn new(
        name: &'static str,
        seed: u64,
        faults: LinkFaults,
        counts: Arc<Mutex<FaultCounts>>,
    ) -> Arc<Link> {
        Arc::new(Link {
            name,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            faults: Mutex::new(faults),
            partitioned_until: Mutex::new(None),
            counts,
        })
    }

    fn fate(&self) -> Fate {
        let f = *self.faults.lock().expect("never held across a panic");
        let mut rng = self.rng.lock().expect("never held across a panic");
        let partitioned = self
            .partitioned_until
            .lock()
            .expect("never held across a panic")
            .is_some_and(|until| Instant::now() < until);
        let fate = Fate {
            delay_out: Duration::from_millis(rng.random_range(0..=f.delay_max_ms)),
            delay_back: Duration::from_millis(rng.random_range(0..=f.delay_max_ms)),
            drop_request: partitioned || rng.random_bool(f.drop_request),
            drop_response: rng.random_bool(f.drop_response),
            duplicate: rng.random_bool(f.duplicate),
        };
        let mut c = self.counts.lock().expect("never held across a panic");
        c.dropped_requests += u64::from(fate.drop_request && !partitioned);
        c.dropped_responses += u64::from(fate.drop_response);
        c.duplicated_requests += u64::from(fate.duplicate);
        fate
    }

    fn partition(&self, until: Instant) {
        *self
            .partitioned_until
            .lock()
            .expect("never held across a panic") = Some(until);
    }

    fn heal(&self) {
        *self.faults.lock().expect("never held across a panic") = LinkFaults::default();
        *self
            .partitioned_until
            .lock()
            .expect("never held across a panic") = None;
    }
}

/// The state of a hop (handler or sink) that can crash, slow down or fail.
#[derive(Debug, Default)]
struct Hop {
    down_until: Option<Instant>,
    slow_until: Option<Instant>,
    failing_until: Option<Instant>,
    /// Bumped by each crash: a call in progress across a crash gets no answer.
    epoch: u64,
}

impl Hop {
    fn until(t: Option<Instant>) -> bool {
        t.is_some_and(|t| Instant::now() < t)
    }
}

/// The simulated ingest server's handler, behind its link.
struct SimHandler {
    link: Arc<Link>,
    hop: Arc<Mutex<Hop>>,
}

impl Handler for SimHandler {
    fn handle(
        &self,
        message: Message,
        _attempt: u32,
        _call: sidelog::Call,
    ) -> BoxFuture<'_, Result<Vec<Message>, HandlerError>> {
        let fate = self.link.fate();
        let (link, hop) = (self.link.clone(), self.hop.clone());
        Box::pin(async move {
            tokio::time::sleep(fate.delay_out).await;
            if fate.drop_request {
                tokio::time::sleep(LOST_AFTER).await;
                return Err(HandlerError::Failed(format!("{}: request lost", link.name)));
            }
            let epoch = {
                let h = hop.lock().expect("never held across a panic");
                if Hop::until(h.down_until) {
                    return Err(HandlerError::Failed("connection refused".into()));
                }
                h.epoch
            };
            if Hop::until(hop.lock().expect("never held across a panic").slow_until) {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            if Hop::until(hop.lock().expect("never held across a panic").failing_until) {
                return Err(HandlerError::Failed("handler is failing".into()));
            }
            let outputs = outputs_of(&message.id, &message.payload)
                .into_iter()
                .map(|(_, payload)| Message {
                    id: "overwritten-by-sidelog".into(),
                    payload,
                    ..Default::default()
                })
                .collect();
            tokio::time::sleep(fate.delay_back).await;
            if fate.drop_response || hop.lock().expect("never held across a panic").epoch != epoch {
                tokio::time::sleep(LOST_AFTER).await;
                return Err(HandlerError::Failed(format!(
                    "{}: response lost",
                    link.name
                )));
            }
            Ok(outputs)
        })
    }
}

/// One message as the sink stored it.
#[derive(Debug, Clone)]
struct Stored {
    id: String,
    payload: Bytes,
    seq: Option<u64>,
}

/// The simulated next tier, behind its link. What it stores survives its crashes.
struct SimSink {
    link: Arc<Link>,
    hop: Arc<Mutex<Hop>>,
    stored: Arc<Mutex<Vec<Stored>>>,
}

impl Sink for SimSink {
    fn deliver(&self, batch: Arc<[Message]>) -> BoxFuture<'static, Result<(), SinkError>> {
        let fate = self.link.fate();
        let (link, hop, stored) = (self.link.clone(), self.hop.clone(), self.stored.clone());
        Box::pin(async move {
            tokio::time::sleep(fate.delay_out).await;
            if fate.drop_request {
                tokio::time::sleep(LOST_AFTER).await;
                return Err(SinkError(format!("{}: request lost", link.name)));
            }
            let epoch = {
                let h = hop.lock().expect("never held across a panic");
                if Hop::until(h.down_until) {
                    return Err(SinkError("connection refused".into()));
                }
                h.epoch
            };
            if Hop::until(hop.lock().expect("never held across a panic").slow_until) {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            {
                let h = hop.lock().expect("never held across a panic");
                if Hop::until(h.failing_until) {
                    return Err(SinkError("sink is failing".into()));
                }
                if h.epoch != epoch {
                    return Err(SinkError("sink crashed before storing".into()));
                }
            }
            let copies = if fate.duplicate { 2 } else { 1 };
            {
                let mut s = stored.lock().expect("never held across a panic");
                for _ in 0..copies {
                    for m in batch.iter() {
                        s.push(Stored {
                            id: m.id.clone(),
                            payload: m.payload.clone(),
                            seq: m.headers.get(SEQ_HEADER).and_then(|v| v.parse().ok()),
                        });
                    }
                }
            }
            tokio::time::sleep(fate.delay_back).await;
            if fate.drop_response || hop.lock().expect("never held across a panic").epoch != epoch {
                tokio::time::sleep(LOST_AFTER).await;
                return Err(SinkError(format!("{}: response lost", link.name)));
            }
            Ok(())
        })
    }
}

/// One incarnation of sidelog.
struct Node {
    incarnation: u64,
    tracker: Tracker,
    pipeline: Arc<Pipeline>,
    journal: Journal,
}

/// An ack that sidelog produced (whether or not the producer received it).
#[derive(Debug, Clone)]
struct ProducedAck {
    incarnation: u64,
    id: String,
    seq: u64,
}

struct World {
    cfg: SimConfig,
    config: Config,
    clock: Arc<SimClock>,
    trace: Arc<Trace>,
    disk: SimDisk,
    counts: Arc<Mutex<FaultCounts>>,
    ingest_link: Arc<Link>,
    handler_link: Arc<Link>,
    sink_link: Arc<Link>,
    handler_hop: Arc<Mutex<Hop>>,
    sink_hop: Arc<Mutex<Hop>>,
    stored: Arc<Mutex<Vec<Stored>>>,
    node: Mutex<Option<Arc<Node>>>,
    incarnations: AtomicU64,
    produced: Arc<Mutex<Vec<ProducedAck>>>,
    violations: Mutex<Vec<String>>,
    entropy_seed: AtomicU64,
}

impl World {
    fn violation(&self, v: String) {
        self.trace.log(format!("VIOLATION {v}"));
        self.violations
            .lock()
            .expect("never held across a panic")
            .push(v);
    }

    /// The outputs sidelog must deliver for an input.
    fn expected(&self, id: &str, payload: &Bytes) -> Vec<(String, Bytes)> {
        if self.cfg.pass_through {
            vec![(id.to_owned(), payload.clone())]
        } else {
            outputs_of(id, payload)
        }
    }

    fn current(&self) -> Option<Arc<Node>> {
        self.node.lock().expect("never held across a panic").clone()
    }

    /// Starts an incarnation of sidelog on the disk, as `serve` does: open the journal, check
    /// that every ack sent before is durable, then replay before taking traffic.
    async fn start_node(self: &Arc<Self>) -> Result<(), String> {
        let incarnation = self.incarnations.fetch_add(1, Ordering::SeqCst) + 1;
        let tracker = Tracker::default();
        let world = self.clone();
        let node = tracker
            .scope(async {
                let opened = sidelog::Node::open(
                    Box::new(world.disk.clone()),
                    "sim/journal.redb".into(),
                    JournalConfig {
                        writer: WriterRuntime::Task,
                        bug_ack_before_fsync: world.cfg.bug == Some(Bug::AckBeforeFsync),
                        ..sidelog::journal_config(&world.config)
                    },
                    world.clock.clone(),
                )
                .await
                .map_err(|e| e.to_string())?;
                world.check_acks_durable(incarnation, opened.recovered());
                let seed = world.entropy_seed.fetch_add(1, Ordering::SeqCst);
                let handler: Option<Arc<dyn Handler>> = if world.cfg.pass_through {
                    None
                } else {
                    Some(Arc::new(SimHandler {
                        link: world.handler_link.clone(),
                        hop: world.handler_hop.clone(),
                    }))
                };
                let hops = sidelog::Hops {
                    handler,
                    sink: Arc::new(SimSink {
                        link: world.sink_link.clone(),
                        hop: world.sink_hop.clone(),
                        stored: world.stored.clone(),
                    }),
                };
                let sidelog::Node {
                    journal, pipeline, ..
                } = opened.assemble(
                    &world.config,
                    hops,
                    world.clock.clone(),
                    Entropy::from_seed(seed),
                );
                let skip_replay = world.cfg.bug == Some(Bug::SkipReplay);
                let (p, trace) = (pipeline.clone(), world.trace.clone());
                sidelog::runtime::spawn(async move {
                    if !skip_replay {
                        match sidelog::replay(&p, &Default::default()).await {
                            Ok(stats) => trace.log(format!(
                                "sidelog #{incarnation} replayed {} outputs, {} inputs",
                                stats.outputs_resent, stats.inputs_rehandled
                            )),
                            Err(e) => {
                                trace.log(format!("sidelog #{incarnation} replay failed: {e}"));
                                return;
                            }
                        }
                    }
                    p.set_serving(true);
                    let summary = p.journal().summary().await.ok();
                    trace.log(format!(
                        "sidelog #{incarnation} serving; backlog entries {}; journal {summary:?}",
                        p.journal().backlog().entries()
                    ));
                });
                Ok::<_, String>(Node {
                    incarnation,
                    tracker: tracker.clone(),
                    pipeline,
                    journal,
                })
            })
            .await;
        match node {
            Ok(node) => {
                self.trace.log(format!("sidelog #{incarnation} started"));
                *self.node.lock().expect("never held across a panic") = Some(Arc::new(node));
                Ok(())
            }
            Err(e) => {
                tracker.abort_all();
                self.trace
                    .log(format!("sidelog #{incarnation} failed to start: {e}"));
                Err(e)
            }
        }
    }

    /// Starts sidelog, retrying a start that fails (disk full, I/O error) a bounded number of
    /// times; a sidelog that never starts again is a violation, not a hang.
    async fn start_until_up(self: &Arc<Self>) -> bool {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match self.start_node().await {
                Ok(()) => return true,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.violation(format!(
            "sidelog cannot start again after {START_ATTEMPTS} attempts: {last}"
        ));
        false
    }

    /// The durability checker: every ack sidelog sent before this start must be in the journal
    /// that survived, with the same sequence. The dedup entry is written in the same
    /// transaction as the acked record and never removed by completion, so its absence means
    /// an ack was sent for a record that was not durable.
    fn check_acks_durable(&self, incarnation: u64, recovered: &[sidelog::journal::DedupRecord]) {
        if self.cfg.mode == LoggingMode::None {
            return;
        }
        let on_disk: HashMap<&str, u64> =
            recovered.iter().map(|r| (r.id.as_str(), r.seq.0)).collect();
        let produced = self
            .produced
            .lock()
            .expect("never held across a panic")
            .clone();
        for a in produced.iter().filter(|a| a.incarnation < incarnation) {
            match on_disk.get(a.id.as_str()) {
                Some(seq) if *seq == a.seq => {}
                other => {
                    self.violation(format!(
                        "ack for {} (seq {}) sent by sidelog #{} was not durable: after the crash the journal has {:?}",
                        a.id, a.seq, a.incarnation, other
                    ));
                    return;
                }
            }
        }
    }

    fn crash_node(&self, loss: CrashLoss) {
        let Some(node) = self.node.lock().expect("never held across a panic").take() else {
            return;
        };
        // Fence the disk first: nothing of the dead process may write after this point.
        self.disk.crash(loss);
        node.tracker.abort_all();
        let mut c = self.counts.lock().expect("never held across a panic");
        c.crashes += 1;
        c.torn_crashes += u64::from(loss == CrashLoss::Torn);
        self.trace.log(format!(
            "CRASH sidelog #{} ({loss:?} unsynced pages lost)",
            node.incarnation
        ));
    }

    /// A producer's publish over its link: the request runs as a task of the current sidelog
    /// process (as a gRPC server runs each call), and sidelog's answer is recorded as sent the
    /// moment it is produced, whatever the link then does to it.
    async fn publish(self: &Arc<Self>, batch: Vec<Message>) -> Result<Vec<Ack>, String> {
        let fate = self.ingest_link.fate();
        tokio::time::sleep(fate.delay_out).await;
        if fate.drop_request {
            tokio::time::sleep(LOST_AFTER).await;
            return Err("request lost".into());
        }
        let node = self
            .current()
            .ok_or_else(|| "connection refused".to_string())?;
        let copies = if fate.duplicate { 2 } else { 1 };
        let mut answer = Err("no answer".to_string());
        for _ in 0..copies {
            let (pipeline, produced, incarnation) = (
                node.pipeline.clone(),
                self.produced.clone(),
                node.incarnation,
            );
            let batch = batch.clone();
            let call = node.tracker.spawn(async move {
                let result = pipeline.publish(batch).await;
                if let Ok(acks) = &result {
                    let mut p = produced.lock().expect("never held across a panic");
                    for a in acks
                        .iter()
                        .filter(|a| a.status != ack::Status::Rejected as i32)
                    {
                        p.push(ProducedAck {
                            incarnation,
                            id: a.id.clone(),
                            seq: a.sequence,
                        });
                    }
                }
                result
            });
            answer = match tokio::time::timeout(LOST_AFTER, call).await {
                Ok(Ok(Ok(acks))) => Ok(acks),
                Ok(Ok(Err(e))) => Err(format!("status: {e}")),
                Ok(Err(_)) => Err("connection reset (sidelog crashed)".into()),
                Err(_) => Err("timed out".into()),
            };
        }
        tokio::time::sleep(fate.delay_back).await;
        if fate.drop_response {
            tokio::time::sleep(LOST_AFTER).await;
            return Err("response lost".into());
        }
        answer
    }
}

fn sim_sidelog_config(mode: LoggingMode) -> Config {
    let mut c = Config {
        mode,
        handler: Some("http://simulated:1".into()),
        ..Config::default()
    };
    // The window outlives the run, so the durability checker sees every acked id.
    c.dedup.window_count = 10_000_000;
    c.dedup.window_age_ms = 30 * 86_400_000;
    c.handling.timeout_ms = 2000;
    c.handling.backoff_initial_ms = 20;
    c.handling.backoff_max_ms = 1000;
    c.handling.max_attempts = 8;
    c.delivery.timeout_ms = 2000;
    c.delivery.backoff_initial_ms = 20;
    c.delivery.backoff_max_ms = 1000;
    c.delivery.max_attempts = 8;
    c.delivery.lanes = 4;
    c.delivery.batch_max_messages = 64;
    c.journal.sync_interval_ms = 200;
    c.journal.commit_max_records = 512;
    c.limits.max_backlog_bytes = 8 << 20;
    c
}

/// Runs one seed to the end and checks it.
pub fn run(cfg: SimConfig) -> Report {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(run_async(cfg))
}

async fn run_async(cfg: SimConfig) -> Report {
    let mut master = StdRng::seed_from_u64(cfg.seed);
    let mut seed = || master.random::<u64>();
    let scale = cfg.fault_scale;
    let counts = Arc::new(Mutex::new(FaultCounts::default()));
    let link_faults = LinkFaults {
        drop_request: 0.01 * scale,
        drop_response: 0.01 * scale,
        duplicate: 0.01 * scale,
        delay_max_ms: 5,
    };
    let disk_faults = DiskFaults {
        write_error: 0.0005 * scale,
        sync_error: 0.005 * scale,
        capacity: DISK_CAPACITY,
    };
    let start = Instant::now();
    let world = Arc::new(World {
        config: sim_sidelog_config(cfg.mode),
        clock: Arc::new(SimClock { start }),
        trace: Arc::new(Trace {
            start,
            events: Mutex::new(Vec::new()),
        }),
        disk: SimDisk::new(seed(), disk_faults),
        ingest_link: Link::new("producer->sidelog", seed(), link_faults, counts.clone()),
        handler_link: Link::new("sidelog->handler", seed(), link_faults, counts.clone()),
        sink_link: Link::new("sidelog->sink", seed(), link_faults, counts.clone()),
        counts,
        handler_hop: Arc::default(),
        sink_hop: Arc::default(),
        stored: Arc::default(),
        node: Mutex::new(None),
        incarnations: AtomicU64::new(0),
        produced: Arc::default(),
        violations: Mutex::new(Vec::new()),
        entropy_seed: AtomicU64::new(seed()),
        cfg: cfg.clone(),
    });
    world.trace.log(format!(
        "run seed {} mode {} pass-through {}",
        cfg.seed, cfg.mode, cfg.pass_through
    ));
    // Scoped to this thread and this run, so parallel runs keep their traces apart.
    let subscriber = tracing_subscriber::fmt()
        .with_writer(TraceWriter(world.trace.clone()))
        .with_max_level(tracing::Level::WARN)
        .without_time()
        .with_ansi(false)
        .with_target(false)
        .finish();
    let _logs = tracing::subscriber::set_default(subscriber);
    world.start_until_up().await;

    // The workload: producers that retry unacked batches with the same ids.
    let mut sent: BTreeMap<String, Bytes> = BTreeMap::new();
    let mut producer_batches: Vec<Vec<Vec<Message>>> = vec![Vec::new(); cfg.producers.max(1)];
    let mut wl = StdRng::seed_from_u64(seed());
    let mut n = 0usize;
    while n < cfg.messages {
        let p = wl.random_range(0..producer_batches.len());
        let size = wl
            .random_range(1..=cfg.batch_max.max(1))
            .min(cfg.messages - n);
        let batch: Vec<Message> = (n..n + size)
            .map(|i| {
                let len = wl.random_range(1..600);
                let payload = Bytes::from(
                    format!("{i}:")
                        .into_bytes()
                        .into_iter()
                        .chain((0..len).map(|j| b'a' + (j % 26) as u8))
                        .collect::<Vec<u8>>(),
                );
                let id = format!("m{i}");
                sent.insert(id.clone(), payload.clone());
                Message {
                    id,
                    key: format!("k{}", wl.random_range(0..8)),
                    payload,
                    ..Default::default()
                }
            })
            .collect();
        producer_batches[p].push(batch);
        n += size;
    }
    let received_acks = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let mut producers = Vec::new();
    for (p, batches) in producer_batches.into_iter().enumerate() {
        let (world, received) = (world.clone(), received_acks.clone());
        let mut rng = StdRng::seed_from_u64(seed());
        producers.push(tokio::spawn(async move {
            for (b, batch) in batches.into_iter().enumerate() {
                let mut attempt = 0u32;
                loop {
                    attempt += 1;
                    match world.publish(batch.clone()).await {
                        Ok(acks) => {
                            let mut r = received.lock().expect("never held across a panic");
                            for a in acks {
                                r.insert(a.id, a.sequence);
                            }
                            world.trace.log(format!(
                                "producer {p} batch {b} acked after {attempt} attempts"
                            ));
                            break;
                        }
                        Err(e) => {
                            world
                                .trace
                                .log(format!("producer {p} batch {b} attempt {attempt}: {e}"));
                            let backoff = 20u64 << attempt.min(6);
                            tokio::time::sleep(Duration::from_millis(
                                rng.random_range(backoff / 2..=backoff),
                            ))
                            .await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
            }
        }));
    }

    // The faults, until the producers are done: crashes spread over the run, hop outages,
    // slow and failing periods, partitions.
    let mut chaos = StdRng::seed_from_u64(seed());
    let mut crashes_left = cfg.crashes;
    let workload_ms = (cfg.messages as u64 * 3).max(500);
    let mut restarting: Option<tokio::task::JoinHandle<()>> = None;
    while !producers.iter().all(|p| p.is_finished()) {
        let gap = if crashes_left > 0 {
            chaos.random_range(1..=(2 * workload_ms / cfg.crashes.max(1) as u64).max(2))
        } else {
            chaos.random_range(50..500)
        };
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let roll = chaos.random_range(0..100);
        let now = Instant::now();
        let period = Duration::from_millis(chaos.random_range(100..2000));
        if crashes_left > 0 && roll < 40 {
            if world.current().is_some() {
                crashes_left -= 1;
                let loss = match chaos.random_range(0..3) {
                    0 => CrashLoss::All,
                    1 => CrashLoss::None,
                    _ => CrashLoss::Torn,
                };
                world.crash_node(loss);
                let down = Duration::from_millis(chaos.random_range(0..500));
                let w = world.clone();
                restarting = Some(tokio::spawn(async move {
                    tokio::time::sleep(down).await;
                    w.start_until_up().await;
                }));
            }
        } else if scale > 0.0 {
            let mut c = world.counts.lock().expect("never held across a panic");
            let (hop, name) = if roll % 2 == 0 {
                (&world.handler_hop, "handler")
            } else {
                (&world.sink_hop, "sink")
            };
            match roll {
                40..=54 => {
                    let mut h = hop.lock().expect("never held across a panic");
                    h.down_until = Some(now + period);
                    h.epoch += 1;
                    c.hop_outages += 1;
                    world.trace.log(format!("CRASH {name} for {period:?}"));
                }
                55..=69 => {
                    hop.lock().expect("never held across a panic").slow_until = Some(now + period);
                    c.slow_periods += 1;
                    world.trace.log(format!("SLOW {name} for {period:?}"));
                }
                70..=84 => {
                    hop.lock().expect("never held across a panic").failing_until =
                        Some(now + period);
                    c.failing_periods += 1;
                    world.trace.log(format!("FAILING {name} for {period:?}"));
                }
                85..=89 => {
                    let kind = if roll % 2 == 0 {
                        Full::InPlace
                    } else {
                        Full::CopyOnWrite
                    };
                    world.disk.fill_up(kind);
                    c.disk_full_periods += 1;
                    world
                        .trace
                        .log(format!("DISK FULL ({kind:?}) for {period:?}"));
                    let disk = world.disk.clone();
                    let trace = world.trace.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(period).await;
                        disk.free_space();
                        trace.log("disk space returns");
                    });
                }
                _ => {
                    let link = match roll % 3 {
                        0 => &world.ingest_link,
                        1 => &world.handler_link,
                        _ => &world.sink_link,
                    };
                    link.partition(now + period);
                    c.partitions += 1;
                    world
                        .trace
                        .log(format!("PARTITION {} for {period:?}", link.name));
                }
            }
        }
        if Instant::now().duration_since(start) > DRAIN_LIMIT {
            break;
        }
    }

    // Faults stop; everything heals and drains.
    world.trace.log("faults stop");
    for link in [&world.ingest_link, &world.handler_link, &world.sink_link] {
        link.heal();
    }
    for hop in [&world.handler_hop, &world.sink_hop] {
        let mut h = hop.lock().expect("never held across a panic");
        h.down_until = None;
        h.slow_until = None;
        h.failing_until = None;
    }
    world.disk.set_faults(DiskFaults {
        write_error: 0.0,
        sync_error: 0.0,
        capacity: DISK_CAPACITY,
    });
    world.disk.free_space();
    if let Some(r) = restarting.take() {
        let _ = r.await;
    }
    for p in producers {
        let _ = tokio::time::timeout(DRAIN_LIMIT, p).await;
    }
    if world.current().is_none() {
        world.start_until_up().await;
    }
    let Some(node) = world.current() else {
        // start_until_up reported why; check what reached the sink all the same.
        return check(&world, None, &sent, &received_acks).await;
    };
    let drain_deadline = Instant::now() + DRAIN_LIMIT;
    loop {
        let idle = node.pipeline.is_serving()
            && node.journal.backlog().entries() == 0
            && node.pipeline.completion().memory_bytes() == 0;
        if idle {
            // Let the last deliveries' completion marks and any straggling calls land.
            tokio::time::sleep(Duration::from_secs(10)).await;
            if node.journal.backlog().entries() == 0 {
                break;
            }
        }
        if Instant::now() > drain_deadline {
            let inputs = node
                .journal
                .scan_inputs(Seq(0), 5)
                .await
                .unwrap_or_default();
            let outputs = node
                .journal
                .scan_outputs(Seq(0), 5)
                .await
                .unwrap_or_default();
            let summary = node.journal.summary().await.ok();
            world.violation(format!(
                "did not drain: {} journal entries left after {DRAIN_LIMIT:?}; serving {}; summary {summary:?}; inputs {:?}; outputs {:?}",
                node.journal.backlog().entries(),
                node.pipeline.is_serving(),
                inputs.iter().map(|i| (i.seq.0, i.entry.message.as_ref().map(|m| m.id.clone()), i.state)).collect::<Vec<_>>(),
                outputs.iter().map(|o| (o.seq.0, o.entry.message.as_ref().map(|m| m.id.clone()), o.entry.input_seq)).collect::<Vec<_>>(),
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    world.trace.log("drained");
    check(&world, Some(&node), &sent, &received_acks).await
}

/// The checkers, over the recorded history.
async fn check(
    world: &Arc<World>,
    node: Option<&Arc<Node>>,
    sent: &BTreeMap<String, Bytes>,
    received: &Arc<Mutex<BTreeMap<String, u64>>>,
) -> Report {
    // Dead letters account for what sidelog gave up on (kept, not lost).
    let mut dead: BTreeSet<String> = BTreeSet::new();
    let mut from = Seq(0);
    while let Some(node) = node {
        match node.journal.scan_dead_letters(from, 1024).await {
            Ok(batch) if !batch.is_empty() => {
                from = Seq(batch.last().expect("non-empty").seq.0 + 1);
                for d in batch {
                    if let Some(m) = d.letter.message {
                        dead.insert(m.id);
                    }
                }
            }
            Ok(_) => break,
            Err(e) => {
                world.violation(format!("cannot read the dead letters: {e}"));
                break;
            }
        }
    }
    let stored = world
        .stored
        .lock()
        .expect("never held across a panic")
        .clone();
    let possible: HashMap<String, Bytes> = sent
        .iter()
        .flat_map(|(id, payload)| world.expected(id, payload))
        .collect();
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for s in &stored {
        match possible.get(&s.id) {
            None => world.violation(format!("phantom: the sink got {:?}, never produced", s.id)),
            Some(p) if *p != s.payload => world.violation(format!(
                "altered: the sink got {} with another payload",
                s.id
            )),
            Some(_) => {}
        }
        if world.cfg.mode != LoggingMode::None && s.seq.is_none() {
            world.violation(format!("{} reached the sink without {SEQ_HEADER}", s.id));
        }
        *copies.entry(s.id.as_str()).or_default() += 1;
    }
    let produced = world
        .produced
        .lock()
        .expect("never held across a panic")
        .clone();
    let received_ids: Vec<String> = received
        .lock()
        .expect("never held across a panic")
        .keys()
        .cloned()
        .collect();
    let acked: BTreeSet<&str> = produced
        .iter()
        .map(|a| a.id.as_str())
        .chain(received_ids.iter().map(String::as_str))
        .collect();
    let mut losses = Vec::new();
    for id in &acked {
        if dead.contains(*id) {
            continue;
        }
        let payload = &sent[*id];
        for (out, _) in world.expected(id, payload) {
            if !copies.contains_key(out.as_str()) && !dead.contains(&out) {
                losses.push(out);
            }
        }
    }
    if !losses.is_empty() {
        world.trace.log(format!(
            "LOSS {} outputs of acked inputs, e.g. {:?}",
            losses.len(),
            &losses[..losses.len().min(5)]
        ));
    }
    let d = world.disk.stats();
    let mut faults = world
        .counts
        .lock()
        .expect("never held across a panic")
        .clone();
    faults.disk_write_errors = d.write_errors;
    faults.disk_sync_errors = d.sync_errors;
    faults.disk_full_errors = d.full_errors;
    let (trace_hash, trace_tail) = world.trace.hash_and_tail(40);
    Report {
        config: world.cfg.clone(),
        inputs_acked: acked.len(),
        acks: produced.len() as u64,
        restarts: world.incarnations.load(Ordering::SeqCst).saturating_sub(1),
        faults,
        sink_messages: stored.len(),
        sink_duplicates: copies.values().filter(|c| **c > 1).count(),
        dead_letters: dead.len(),
        losses,
        violations: world
            .violations
            .lock()
            .expect("never held across a panic")
            .clone(),
        trace_hash,
        trace_tail,
        virtual_ms: world.trace.start.elapsed().as_millis() as u64,
    }
}
