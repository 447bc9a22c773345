//! The world of one run: the simulated disk, links and hops, and the incarnations of sidelog
//! built on them through the same assembly `serve` uses (`sidelog::Node`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sidelog::journal::{Journal, JournalConfig, WriterRuntime};
use sidelog::proto::{Ack, Message, ack};
use sidelog::runtime::{Entropy, Tracker};
use sidelog::{Config, Handler, LoggingMode, Pipeline};

use crate::disk::{CrashLoss, SimDisk};
use crate::hops::{SimHandler, SimSink, Stored, outputs_of};
use crate::net::{Hop, LOST_AFTER, Link};
use crate::report::{Coverage, FaultCounts};
use crate::settings::{Bug, SimConfig};
use crate::trace::{SimClock, Trace};

/// Start attempts before a sidelog that cannot start is reported.
const START_ATTEMPTS: u32 = 100;
/// The simulated disk's size when it is not full.
pub(crate) const DISK_CAPACITY: u64 = 64 << 20;

/// One incarnation of sidelog.
pub(crate) struct Node {
    pub(crate) incarnation: u64,
    pub(crate) tracker: Tracker,
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) journal: Journal,
}

/// An ack that sidelog produced (whether or not the producer received it).
#[derive(Debug, Clone)]
pub(crate) struct ProducedAck {
    pub(crate) incarnation: u64,
    pub(crate) id: String,
    pub(crate) seq: u64,
}

pub(crate) struct World {
    pub(crate) cfg: SimConfig,
    pub(crate) config: Config,
    pub(crate) clock: Arc<SimClock>,
    pub(crate) trace: Arc<Trace>,
    pub(crate) disk: SimDisk,
    pub(crate) counts: Arc<Mutex<FaultCounts>>,
    /// Behaviours the run exercised beyond the faults (see [`Coverage`]).
    pub(crate) coverage: Mutex<Coverage>,
    pub(crate) ingest_link: Arc<Link>,
    pub(crate) handler_link: Arc<Link>,
    pub(crate) sink_link: Arc<Link>,
    pub(crate) handler_hop: Arc<Mutex<Hop>>,
    pub(crate) sink_hop: Arc<Mutex<Hop>>,
    pub(crate) stored: Arc<Mutex<Vec<Stored>>>,
    pub(crate) node: Mutex<Option<Arc<Node>>>,
    pub(crate) incarnations: AtomicU64,
    pub(crate) produced: Arc<Mutex<Vec<ProducedAck>>>,
    pub(crate) violations: Mutex<Vec<String>>,
    pub(crate) entropy_seed: AtomicU64,
    /// `journal.wal_bytes` of the last start.
    pub(crate) wal_bytes: AtomicU64,
}

/// A well-mixed 64-bit value of `x` (SplitMix64's finalizer).
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl World {
    pub(crate) fn violation(&self, v: String) {
        self.trace.log(format!("VIOLATION {v}"));
        self.violations
            .lock()
            .expect("never held across a panic")
            .push(v);
    }

    /// The outputs sidelog must deliver for an input.
    pub(crate) fn expected(&self, id: &str, payload: &Bytes) -> Vec<(String, Bytes)> {
        if self.cfg.pass_through {
            vec![(id.to_owned(), payload.clone())]
        } else {
            outputs_of(id, payload)
        }
    }

    pub(crate) fn current(&self) -> Option<Arc<Node>> {
        self.node.lock().expect("never held across a panic").clone()
    }

    /// Starts an incarnation of sidelog on the disk, as `serve` does: open the journal, check
    /// that every ack sent before is durable, then replay before taking traffic.
    pub(crate) async fn start_node(self: &Arc<Self>) -> Result<(), String> {
        let incarnation = self.incarnations.fetch_add(1, Ordering::SeqCst) + 1;
        let tracker = Tracker::default();
        let node = tracker.scope(self.boot(incarnation, &tracker)).await;
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

    /// Inside the incarnation's task scope: the assembly, then the replay in a task of its own.
    async fn boot(self: &Arc<Self>, incarnation: u64, tracker: &Tracker) -> Result<Node, String> {
        let opened = sidelog::Node::open(
            Box::new(self.disk.clone()),
            "sim/journal.redb".into(),
            self.journal_config(incarnation),
            self.clock.clone(),
        )
        .await
        .map_err(|e| e.to_string())?;
        self.check_acks_durable(incarnation, opened.recovered());
        let seed = self.entropy_seed.fetch_add(1, Ordering::SeqCst);
        let sidelog::Node {
            journal, pipeline, ..
        } = opened.assemble(
            &self.config,
            self.hops(),
            self.clock.clone(),
            Entropy::from_seed(seed),
        );
        let skip_replay = self.cfg.bug == Some(Bug::SkipReplay);
        sidelog::runtime::spawn(replay_then_serve(
            self.clone(),
            pipeline.clone(),
            journal.clone(),
            incarnation,
            skip_replay,
        ));
        Ok(Node {
            incarnation,
            tracker: tracker.clone(),
            pipeline,
            journal,
        })
    }

    /// The journal's settings for a start. The operator changes `journal.wal_bytes` between
    /// some crashes and the next start (a third of the starts, to 0, 32, 96 or 256 KiB).
    fn journal_config(&self, incarnation: u64) -> JournalConfig {
        const CHOICES: [u64; 4] = [0, 32 << 10, 96 << 10, 256 << 10];
        let roll = splitmix(self.cfg.seed ^ incarnation.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let wal_bytes = if incarnation > 1 && roll.is_multiple_of(3) {
            CHOICES[(roll >> 8) as usize % CHOICES.len()]
        } else {
            self.cfg.wal_bytes
        };
        let before = self.wal_bytes.swap(wal_bytes, Ordering::SeqCst);
        if incarnation > 1 && before != wal_bytes {
            self.trace.log(format!(
                "operator: journal.wal_bytes {before} -> {wal_bytes} for sidelog #{incarnation}"
            ));
            let mut c = self.coverage.lock().expect("never held across a panic");
            c.wal_bytes_changes += 1;
        }
        JournalConfig {
            writer: WriterRuntime::Task,
            bug_ack_before_fsync: self.cfg.bug == Some(Bug::AckBeforeFsync),
            bug_retry_failed_fsync: self.cfg.bug == Some(Bug::RetryFailedFsync),
            wal_bytes,
            entropy_seed: Some(self.entropy_seed.fetch_add(1, Ordering::SeqCst)),
            ..sidelog::journal_config(&self.config)
        }
    }

    /// An operator moves the journal aside after a crash and starts sidelog on a new one
    /// beside the old redo log, then puts the journal back. The start must never apply the
    /// log to the new journal: it refuses while the log holds frames of the old one (or takes
    /// over a log that holds nothing the old one lacks), and the old journal, put back, must
    /// hold every ack (checked by its next start).
    pub(crate) async fn start_on_a_new_journal(self: &Arc<Self>) {
        let aside = self.disk.set_journal_aside();
        let tracker = Tracker::default();
        let config = JournalConfig {
            wal_bytes: self.wal_bytes.load(Ordering::SeqCst),
            ..self.journal_config(0)
        };
        let opened = tracker
            .scope(async {
                Journal::open_storage(
                    Box::new(self.disk.clone()),
                    "sim/journal.redb".into(),
                    config,
                    self.clock.clone(),
                )
            })
            .await;
        let outcome = match opened {
            Ok(_journal) => "started: the log held nothing of the old journal's",
            Err(sidelog::journal::JournalError::WalRefused { .. }) => {
                let mut c = self.coverage.lock().expect("never held across a panic");
                c.foreign_logs_refused += 1;
                "refused: the log belongs to the journal set aside"
            }
            Err(_) => "failed (a disk fault)",
        };
        self.trace
            .log(format!("operator: a start on a new journal {outcome}"));
        tracker.abort_all();
        // Its process ends; whatever it left unsynced goes with it.
        self.disk.crash(CrashLoss::All);
        self.disk.put_journal_back(aside);
    }

    /// Damage reaches the redo log after a crash: one byte of a frame that a later frame says
    /// an fsync covered changes. Returns where, or `None` when the log has no such frame.
    pub(crate) fn damage_the_log(&self, pick: u64) -> Option<u64> {
        let report = sidelog::journal::read_report(Box::new(self.disk.wal_backend())).ok()?;
        let run: Vec<_> = report.frames.iter().take_while(|f| f.whole).collect();
        let covered: Vec<_> = run
            .iter()
            .filter(|f| {
                run.iter().any(|later| {
                    later.header.number > f.header.number && later.header.synced > f.header.number
                })
            })
            .collect();
        if covered.is_empty() {
            return None;
        }
        let frame = covered[(pick % covered.len() as u64) as usize];
        let span = 48 + u64::from(frame.header.len);
        let at = frame.offset + (pick >> 16) % span;
        self.disk.flip_wal_byte(at);
        self.trace.log(format!(
            "operator: damaged the redo log at offset {at} (frame {} of epoch {})",
            frame.header.number, frame.header.epoch
        ));
        Some(at)
    }

    /// The start after [`World::damage_the_log`]: refused (the damage undone then, as an
    /// operator restores the file, and started again), or started on a log whose damaged
    /// frames were already in the journal (a stale run); the durability check runs either way.
    pub(crate) async fn start_with_a_damaged_log(self: &Arc<Self>, at: u64) {
        match self.start_node().await {
            Ok(()) => self
                .trace
                .log("the damaged frames were stale: nothing of them was needed"),
            Err(e) if e.contains("is not applied") => {
                {
                    let mut c = self.coverage.lock().expect("never held across a panic");
                    c.damaged_logs_refused += 1;
                }
                self.disk.flip_wal_byte(at);
                self.trace.log("operator: restored the damaged byte");
                self.start_until_up().await;
            }
            Err(_) => {
                self.disk.flip_wal_byte(at);
                self.start_until_up().await;
            }
        }
    }

    /// The simulated handler (none in pass-through runs) and sink, behind their links.
    fn hops(&self) -> sidelog::Hops {
        let handler: Option<Arc<dyn Handler>> = if self.cfg.pass_through {
            None
        } else {
            Some(Arc::new(SimHandler {
                link: self.handler_link.clone(),
                hop: self.handler_hop.clone(),
            }))
        };
        sidelog::Hops {
            handler,
            sink: Arc::new(SimSink {
                link: self.sink_link.clone(),
                hop: self.sink_hop.clone(),
                stored: self.stored.clone(),
            }),
        }
    }

    /// Starts sidelog, retrying a start that fails (disk full, I/O error) a bounded number of
    /// times; a sidelog that never starts again is a violation, not a hang.
    pub(crate) async fn start_until_up(self: &Arc<Self>) -> bool {
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
    pub(crate) fn check_acks_durable(
        &self,
        incarnation: u64,
        recovered: &[sidelog::journal::DedupRecord],
    ) {
        if self.cfg.mode == LoggingMode::None {
            return;
        }
        let on_disk: HashMap<&str, u64> =
            recovered.iter().map(|r| (r.id.as_str(), r.seq.0)).collect();
        // A window bounded by count keeps the newest ids: an ack older than all of them, with
        // the window full, was evicted, not lost.
        let full = recovered.len() as u64 >= self.config.dedup.window_count;
        let oldest_kept = recovered.iter().map(|r| r.seq.0).min().unwrap_or(0);
        let produced = self
            .produced
            .lock()
            .expect("never held across a panic")
            .clone();
        // Each id's latest ack: an id accepted again after eviction has its new sequence.
        let mut latest: HashMap<&str, &ProducedAck> = HashMap::new();
        for a in produced.iter().filter(|a| a.incarnation < incarnation) {
            latest.insert(a.id.as_str(), a);
        }
        for a in produced
            .iter()
            .filter(|a| a.incarnation < incarnation)
            .filter(|a| std::ptr::eq(latest[a.id.as_str()], *a))
        {
            match on_disk.get(a.id.as_str()) {
                Some(seq) if *seq == a.seq => {}
                // Evicted: older than every id the full window kept. It may have been accepted
                // again since, under a newer sequence whose ack was lost (a dropped response,
                // a crash before the answer): the journal then holds that one.
                _ if full && a.seq < oldest_kept => {}
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

    /// A clean stop: the journal is closed (what is pending fsynced, the redo log
    /// checkpointed, the stop recorded in its header), then the process ends. When the close
    /// succeeded, the next start finds the record and skips the rewrite-through.
    pub(crate) async fn stop_cleanly(&self) {
        let Some(node) = self.current() else {
            return;
        };
        let closed = node.journal.close().await;
        let recorded = sidelog::journal::read_report(Box::new(self.disk.wal_backend()))
            .ok()
            .and_then(|r| r.header)
            .is_some_and(|h| h.clean && h.db.is_some());
        self.trace.log(format!(
            "STOP sidelog #{} cleanly: {closed:?}, clean stop recorded: {recorded}",
            node.incarnation
        ));
        if recorded {
            let mut c = self.coverage.lock().expect("never held across a panic");
            c.clean_stops += 1;
        }
        // Nothing is left unsynced by a clean close; what a failed one left goes.
        self.crash_node(CrashLoss::All);
    }

    pub(crate) fn crash_node(&self, loss: CrashLoss) {
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
    pub(crate) async fn publish(self: &Arc<Self>, batch: Vec<Message>) -> Result<Vec<Ack>, String> {
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
        // Every message of a request is answered, once, in request order.
        let batch_len = batch.len();
        let ids: Vec<String> = batch.iter().map(|m| m.id.clone()).collect();
        let mut answer = Err("no answer".to_string());
        for _ in 0..copies {
            let (pipeline, produced, incarnation) = (
                node.pipeline.clone(),
                self.produced.clone(),
                node.incarnation,
            );
            let batch = batch.clone();
            let call = node.tracker.spawn(async move {
                let result = pipeline.publish(batch, sidelog::Door::Grpc).await;
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
                Ok(Ok(Ok(acks))) => {
                    if acks.len() != batch_len || acks.iter().zip(&ids).any(|(a, id)| &a.id != id) {
                        self.violation(format!(
                            "a request of {batch_len} messages got {} acks, or out of order",
                            acks.len()
                        ));
                    }
                    Ok(acks)
                }
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

pub(crate) fn sim_sidelog_config(cfg: &SimConfig) -> Config {
    let mut c = Config {
        mode: cfg.mode,
        handler: Some("http://simulated:1".into()),
        ..Config::default()
    };
    // By count only (most seeds keep every id of the run); never by age.
    c.dedup.window_count = cfg.dedup_window_count;
    c.dedup.window_age_ms = 30 * 86_400_000;
    c.replay.policy = cfg.replay_policy;
    c.replay.max_age_ms = cfg.replay_max_age_ms;
    c.handling.timeout_ms = 2000;
    c.handling.backoff_initial_ms = 20;
    c.handling.backoff_max_ms = 1000;
    c.handling.max_attempts = cfg.max_attempts;
    c.delivery.timeout_ms = 2000;
    c.delivery.backoff_initial_ms = 20;
    c.delivery.backoff_max_ms = 1000;
    c.delivery.max_attempts = cfg.max_attempts;
    c.delivery.lanes = 4;
    c.delivery.batch_max_messages = 64;
    c.journal.sync_interval_ms = 200;
    c.journal.commit_max_records = 512;
    c.limits.max_backlog_bytes = 8 << 20;
    c
}

/// Replays the journal (unless the planted bug skips it) as `replay.policy` says: `first`
/// replays, then takes traffic; `interleave` takes traffic at once, the replay paced beside it.
async fn replay_then_serve(
    world: Arc<World>,
    p: Arc<Pipeline>,
    journal: Journal,
    incarnation: u64,
    skip_replay: bool,
) {
    let options = sidelog::replay_options(&world.config);
    let interleave = options.pace.is_some();
    if skip_replay || interleave {
        serve(&world, &p, &journal, incarnation).await;
    }
    if !skip_replay {
        let backlog = p.undelivered().journaled_entries;
        match sidelog::replay(&p, &options).await {
            Ok(stats) => {
                world.trace.log(format!(
                    "sidelog #{incarnation} replayed {} outputs, {} inputs, {} expired{}",
                    stats.outputs_resent,
                    stats.inputs_rehandled,
                    stats.expired,
                    if interleave { ", interleaved" } else { "" }
                ));
                let mut c = world.coverage.lock().expect("never held across a panic");
                c.interleaved_replays += u64::from(interleave && backlog > 0);
            }
            Err(e) => {
                world
                    .trace
                    .log(format!("sidelog #{incarnation} replay failed: {e}"));
                return;
            }
        }
    }
    if !skip_replay && !interleave {
        serve(&world, &p, &journal, incarnation).await;
    }
}

/// Opens intake.
async fn serve(world: &World, p: &Pipeline, journal: &Journal, incarnation: u64) {
    p.set_serving(true);
    let summary = journal.summary().await.ok();
    world.trace.log(format!(
        "sidelog #{incarnation} serving; backlog entries {}; journal {summary:?}",
        journal.backlog().entries()
    ));
}
