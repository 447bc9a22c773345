//! Delivery: outputs to the sink, in batches, with retries, and completion back to the journal.
//!
//! Outputs are routed to one of `lanes` by key (by id when the key is empty). A lane gathers a
//! batch, bounded by count, bytes and linger time, and hands it to the sink. A lane has at most
//! [`Sink::pipeline_depth`] batches awaiting their ack (1 for a gRPC sink), so with one lane per
//! key outputs of one key reach the sink in the order they were sent to the lane while nothing
//! fails. A failed batch is retried with exponential backoff and jitter; after `max_attempts`
//! its messages go to the dead-letter table. Nothing is dropped.
//!
//! [`Completion`] turns acks into journal changes: a delivered journaled output is removed, and
//! an input is completed (removed) once the last of its outputs is delivered or dead-lettered.
//! In mode `none` nothing is journaled; the held bytes are only counted, for backpressure.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, warn};

use crate::journal::{EntryRef, Journal, NewDeadLetter, Seq};
use crate::proto::Message;
use crate::proto::journal::dead_letter;
use crate::runtime::Backoff;
use crate::runtime::Entropy;
use crate::sink::Sink;

/// One output on its way to the sink.
#[derive(Debug, Clone)]
pub struct DeliveryItem {
    /// The message, with its `sidelog-seq` header set.
    pub message: Message,
    /// Its entry in the journal's `outputs`, removed once delivered (sbml, hml).
    pub output_seq: Option<Seq>,
    /// The journaled input it came from, completed once all its outputs are delivered.
    pub input_seq: Option<Seq>,
    /// Bytes counted in memory only (mode `none`), released once delivered.
    pub memory_bytes: u64,
    /// A paced replay's permit, released when the item (and every copy) is dropped.
    pub pace: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
    /// When its entry was written (unix ms): what `max_age_ms` is measured from.
    pub written_at_ms: i64,
}

impl DeliveryItem {
    fn size(&self) -> usize {
        self.message.payload.len() + self.message.id.len() + self.message.key.len() + 16
    }
}

/// Validated settings of delivery.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub lanes: usize,
    pub lane_queue: usize,
    pub batch_max_messages: usize,
    pub batch_max_bytes: usize,
    pub linger_ms: u64,
    pub timeout_ms: u64,
    pub backoff: Backoff,
    /// Entries older than this are dead-lettered instead of retried; 0 = no limit.
    pub max_age_ms: u64,
    pub clock: crate::runtime::SharedClock,
}

/// Counters of what delivery did (exported as metrics by the operations work).
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub delivered: AtomicU64,
    pub batches: AtomicU64,
    pub retries: AtomicU64,
    pub dead_lettered: AtomicU64,
}

/// Tracks which inputs are complete and tells the journal.
#[derive(Debug)]
pub struct Completion {
    journal: Journal,
    /// Outputs still undelivered, per journaled input. Additive: replay may register one
    /// input's outputs in several steps.
    pending: Mutex<HashMap<Seq, u32>>,
    /// Bytes held only in memory (mode `none`).
    memory_bytes: AtomicU64,
    pub stats: DeliveryStats,
}

impl Completion {
    pub fn new(journal: Journal) -> Arc<Self> {
        Arc::new(Completion {
            journal,
            pending: Mutex::new(HashMap::new()),
            memory_bytes: AtomicU64::new(0),
            stats: DeliveryStats::default(),
        })
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Registers `outputs` more undelivered outputs of `input`.
    pub fn expect(&self, input: Seq, outputs: u32) {
        let mut pending = self.pending.lock().expect("never held across a panic");
        *pending.entry(input).or_insert(0) += outputs;
    }

    pub fn hold_memory(&self, bytes: u64) {
        self.memory_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn release_memory(&self, bytes: u64) {
        self.memory_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes held in memory only (mode `none`).
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes.load(Ordering::Relaxed)
    }

    /// The inputs among `items` whose last output this was.
    fn finished_inputs(&self, items: &[DeliveryItem]) -> Vec<Seq> {
        let mut pending = self.pending.lock().expect("never held across a panic");
        let mut done = Vec::new();
        for input in items.iter().filter_map(|i| i.input_seq) {
            match pending.get_mut(&input) {
                Some(n) if *n > 1 => *n -= 1,
                Some(_) => {
                    pending.remove(&input);
                    done.push(input);
                }
                // Registered nowhere: a replayed output whose input was completed already.
                None => done.push(input),
            }
        }
        done
    }

    /// The sink acked `items`.
    pub async fn delivered(&self, items: &[DeliveryItem]) {
        self.stats
            .delivered
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        metrics::counter!(crate::metrics::DELIVERED).increment(items.len() as u64);
        let outputs: Vec<Seq> = items.iter().filter_map(|i| i.output_seq).collect();
        let inputs = self.finished_inputs(items);
        self.release_memory(items.iter().map(|i| i.memory_bytes).sum());
        if let Err(e) = self.journal.complete(outputs, inputs).await {
            // The marks are lost: the entries stay and are re-sent after a restart (duplicates).
            warn!(error = %e, "cannot record deliveries in the journal");
        }
    }

    /// An input whose handler never succeeded: moved to the dead-letter table.
    pub async fn input_dead(
        &self,
        input: Message,
        input_seq: Option<Seq>,
        reason: String,
        attempts: u32,
    ) {
        warn!(id = %input.id, attempts, reason = %reason, "input moved to the dead-letter table");
        let letter = NewDeadLetter {
            kind: dead_letter::Kind::Input,
            message: input,
            reason,
            attempts,
            input_seq,
            remove: input_seq.map(EntryRef::Input),
            complete_input: None,
        };
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metrics::DEAD_LETTERED).increment(1);
        if let Err(e) = self.write_dead_letters(vec![letter]).await {
            error!(error = %e, "cannot write a dead letter; the input stays in the journal and is retried after a restart");
        }
    }

    /// Writes dead letters, retrying while the journal's failure is transient: a dead letter
    /// that is not written leaves its entry in the backlog.
    async fn write_dead_letters(
        &self,
        letters: Vec<NewDeadLetter>,
    ) -> Result<(), crate::journal::JournalError> {
        let write = || self.journal.dead_letter(letters.clone());
        crate::runtime::retry_transient(
            crate::runtime::JOURNAL_RETRY,
            "cannot write dead letters yet; retrying",
            write,
            crate::journal::JournalError::is_retryable,
        )
        .await
        .map(drop)
    }

    /// Outputs the sink never acked within `max_attempts`: moved to the dead-letter table.
    pub async fn outputs_dead(&self, items: &[DeliveryItem], reason: &str, attempts: u32) {
        warn!(
            messages = items.len(),
            attempts, reason, "outputs moved to the dead-letter table"
        );
        // Inputs these letters finish are completed in the letters' own transaction.
        let mut finished = self.finished_inputs(items);
        let letters = items
            .iter()
            .map(|item| {
                let complete_input = item.input_seq.filter(|input| {
                    let pos = finished.iter().position(|f| f == input);
                    pos.map(|p| finished.swap_remove(p)).is_some()
                });
                NewDeadLetter {
                    kind: dead_letter::Kind::Output,
                    message: item.message.clone(),
                    reason: reason.to_owned(),
                    attempts,
                    input_seq: item.input_seq,
                    remove: item.output_seq.map(EntryRef::Output),
                    complete_input,
                }
            })
            .collect();
        self.stats
            .dead_lettered
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        metrics::counter!(crate::metrics::DEAD_LETTERED).increment(items.len() as u64);
        self.release_memory(items.iter().map(|i| i.memory_bytes).sum());
        if let Err(e) = self.write_dead_letters(letters).await {
            // Not written: the entries stay in the journal and are retried after a restart.
            error!(error = %e, "cannot write dead letters; the outputs stay in the journal");
        }
    }
}

/// The sending side of delivery.
#[derive(Clone)]
pub struct Delivery {
    lanes: Arc<[mpsc::Sender<DeliveryItem>]>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("lanes", &self.lanes.len())
            .finish()
    }
}

/// Delivery has stopped (shutdown).
#[derive(Debug, Clone, thiserror::Error)]
#[error("delivery has stopped")]
pub struct DeliveryClosed;

impl Delivery {
    /// Starts the lanes. They run until every [`Delivery`] handle is dropped and their queues
    /// are drained.
    pub fn start(
        sink: Arc<dyn Sink>,
        completion: Arc<Completion>,
        config: DeliveryConfig,
        entropy: Entropy,
    ) -> (Delivery, Vec<JoinHandle<()>>) {
        let mut senders = Vec::with_capacity(config.lanes);
        let mut tasks = Vec::with_capacity(config.lanes);
        for lane in 0..config.lanes {
            let (tx, rx) = mpsc::channel(config.lane_queue);
            senders.push(tx);
            tasks.push(crate::runtime::spawn(run_lane(
                lane,
                rx,
                sink.clone(),
                completion.clone(),
                config.clone(),
                entropy.clone(),
            )));
        }
        (
            Delivery {
                lanes: senders.into(),
            },
            tasks,
        )
    }

    /// Queues an output for delivery; waits while its lane is full (backpressure).
    pub async fn send(&self, item: DeliveryItem) -> Result<(), DeliveryClosed> {
        let routing = if item.message.key.is_empty() {
            &item.message.id
        } else {
            &item.message.key
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        routing.hash(&mut hasher);
        let lane = (hasher.finish() % self.lanes.len() as u64) as usize;
        self.lanes[lane]
            .send(item)
            .await
            .map_err(|_| DeliveryClosed)
    }
}

async fn run_lane(
    lane: usize,
    mut rx: mpsc::Receiver<DeliveryItem>,
    sink: Arc<dyn Sink>,
    completion: Arc<Completion>,
    config: DeliveryConfig,
    entropy: Entropy,
) {
    let depth = sink.pipeline_depth().max(1);
    let linger = Duration::from_millis(config.linger_ms);
    let mut in_flight: std::collections::VecDeque<JoinHandle<()>> = Default::default();
    while let Some(first) = rx.recv().await {
        let mut bytes = first.size();
        let mut items = vec![first];
        let deadline = tokio::time::Instant::now() + linger;
        while items.len() < config.batch_max_messages && bytes < config.batch_max_bytes {
            let next = match rx.try_recv() {
                Ok(item) => Some(item),
                Err(mpsc::error::TryRecvError::Empty) if !linger.is_zero() => {
                    tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
                Err(_) => None,
            };
            let Some(item) = next else { break };
            bytes += item.size();
            items.push(item);
        }
        while in_flight.front().is_some_and(JoinHandle::is_finished) {
            in_flight.pop_front();
        }
        if in_flight.len() >= depth {
            let oldest = in_flight.pop_front().expect("non-empty");
            if let Err(e) = oldest.await {
                report_task_error(lane, &e);
            }
        }
        let batch: Arc<[Message]> = items.iter().map(|i| i.message.clone()).collect();
        // Called here, in lane order, so that the sink takes batches in the order they were made.
        let first_attempt = sink.deliver(batch.clone());
        in_flight.push_back(crate::runtime::spawn(deliver_with_retries(
            first_attempt,
            batch,
            items,
            sink.clone(),
            completion.clone(),
            config.clone(),
            entropy.clone(),
        )));
    }
    for task in in_flight {
        if let Err(e) = task.await {
            report_task_error(lane, &e);
        }
    }
    debug!(lane, "delivery lane stopped");
}

fn report_task_error(lane: usize, e: &tokio::task::JoinError) {
    if e.is_panic() {
        error!(lane, error = %e, "a delivery task panicked");
    } else {
        debug!(
            lane,
            "a delivery task was cancelled at shutdown; its entries stay journaled"
        );
    }
}

async fn deliver_with_retries(
    first_attempt: crate::runtime::BoxFuture<'static, Result<(), crate::sink::SinkError>>,
    mut batch: Arc<[Message]>,
    mut items: Vec<DeliveryItem>,
    sink: Arc<dyn Sink>,
    completion: Arc<Completion>,
    config: DeliveryConfig,
    entropy: Entropy,
) {
    let timeout = Duration::from_millis(config.timeout_ms) + sink.ack_delay_max();
    let mut attempt = 1u32;
    let mut pending = first_attempt;
    loop {
        let started = tokio::time::Instant::now();
        let outcome = tokio::time::timeout(timeout, pending).await;
        let label = if matches!(outcome, Ok(Ok(()))) {
            "ok"
        } else {
            "error"
        };
        metrics::histogram!(crate::metrics::SINK_DELIVER_SECONDS, "outcome" => label)
            .record(started.elapsed().as_secs_f64());
        let error = match outcome {
            Ok(Ok(())) => {
                completion.stats.batches.fetch_add(1, Ordering::Relaxed);
                completion.delivered(&items).await;
                return;
            }
            Ok(Err(e)) => e.0,
            Err(_) => format!("no ack within {timeout:?}"),
        };
        if config.backoff.exhausted(attempt) {
            completion
                .outputs_dead(
                    &items,
                    &format!("sink failed {attempt} times; last error: {error}"),
                    attempt,
                )
                .await;
            return;
        }
        if config.max_age_ms > 0 {
            // Too old to keep trying: dead letters, with that reason; the rest goes on.
            let oldest_allowed = config.clock.now_ms() - config.max_age_ms as i64;
            let (expired, live): (Vec<DeliveryItem>, Vec<DeliveryItem>) = items
                .into_iter()
                .partition(|i| i.written_at_ms < oldest_allowed);
            if !expired.is_empty() {
                let reason = format!(
                    "undelivered for longer than replay.max_age_ms ({} ms); last error: {error}",
                    config.max_age_ms
                );
                completion.outputs_dead(&expired, &reason, attempt).await;
                batch = live.iter().map(|i| i.message.clone()).collect();
            }
            items = live;
            if items.is_empty() {
                return;
            }
        }
        completion.stats.retries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metrics::DELIVERY_RETRIES).increment(1);
        metrics::counter!(crate::metrics::RESENT, "cause" => "retry").increment(items.len() as u64);
        let delay = config.backoff.delay(attempt, &entropy);
        if attempt == 1 {
            warn!(messages = items.len(), error = %error, "delivery failed; retrying with backoff");
        } else {
            debug!(messages = items.len(), attempt, error = %error, ?delay, "delivery failed; retrying");
        }
        tokio::time::sleep(delay).await;
        attempt += 1;
        pending = sink.deliver(batch.clone());
    }
}
