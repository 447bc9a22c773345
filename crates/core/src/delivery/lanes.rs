//! The lanes: outputs routed by key, gathered into batches bounded by count and bytes, sent to
//! the sink with at most `Sink::pipeline_depth` batches awaiting their ack, and retried with
//! backoff until they are delivered or dead-lettered. Batching comes from the load: an idle
//! lane sends what it has at once, a lane at its depth fills the next batch while the oldest
//! send is under way (`linger_ms` adds a wait of its own, 0 by default).

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error};

use super::{Completion, DeliveryConfig, DeliveryItem};
use crate::sink::{Batch, Receipt, Sink, set_seq_header};
use sidelog_runtime::Entropy;

/// The sending side of delivery.
#[derive(Clone)]
pub struct Delivery {
    lanes: Arc<[mpsc::Sender<DeliveryItem>]>,
    sink: Arc<dyn Sink>,
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

/// Why [`Delivery::try_send`] did not queue an item.
#[derive(Debug)]
pub enum TrySend {
    /// Its lane is full: here it is back.
    Full(Box<DeliveryItem>),
    /// Delivery has stopped (shutting down).
    Closed(DeliveryClosed),
}

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
            tasks.push(sidelog_runtime::spawn(run_lane(
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
                sink,
            },
            tasks,
        )
    }

    /// Asks the sink to send what it holds back for batching now ([`Sink::flush`]).
    pub fn flush_sink(&self) {
        self.sink.flush();
    }

    /// The start's replay is over ([`Sink::replayed`]).
    /// The sink's [`read_back`](Sink::read_back), if it does one.
    pub(crate) fn sink_reads_back(&self) -> Option<&Arc<dyn Sink>> {
        self.sink.reads_back().then_some(&self.sink)
    }

    pub fn sink_replayed(&self) -> Option<sidelog_journal::DeliveryProgress> {
        self.sink.replayed()
    }

    /// Queues an output for delivery; waits while its lane is full (backpressure).
    pub async fn send(&self, item: DeliveryItem) -> Result<(), DeliveryClosed> {
        self.lane(&item)
            .send(item)
            .await
            .map_err(|_| DeliveryClosed)
    }

    /// Queues an output for delivery if its lane has room; hands it back if not.
    pub fn try_send(&self, item: DeliveryItem) -> Result<(), TrySend> {
        self.lane(&item).try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(item) => TrySend::Full(Box::new(item)),
            mpsc::error::TrySendError::Closed(_) => TrySend::Closed(DeliveryClosed),
        })
    }

    /// The lane of an item's key (of its id when the key is empty).
    fn lane(&self, item: &DeliveryItem) -> &mpsc::Sender<DeliveryItem> {
        let routing = if item.message.key.is_empty() {
            &item.message.id
        } else {
            &item.message.key
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        routing.hash(&mut hasher);
        &self.lanes[(hasher.finish() % self.lanes.len() as u64) as usize]
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
    let mut in_flight: VecDeque<JoinHandle<()>> = VecDeque::new();
    while let Some(first) = rx.recv().await {
        let mut batch = Filling::new(first, &config);
        batch.take_queued(&mut rx).await;
        while in_flight.front().is_some_and(JoinHandle::is_finished) {
            in_flight.pop_front();
        }
        batch
            .while_at_depth(lane, depth, &mut in_flight, &mut rx)
            .await;
        let mut items = batch.items;
        // The messages move into the batch (cloning them, their headers map and strings, was
        // ~9 % of a replay's CPU); `items` keeps the rest, index for index, and gets them back
        // only on the rare paths that need them (dead letters, expiry).
        let batch = take_batch(&mut items, sink.writes_seq_header());
        // Called here, in lane order, so that the sink takes batches in the order they were made.
        let first_attempt = sink.deliver(batch.clone());
        let sending = Sending {
            sink: sink.clone(),
            completion: completion.clone(),
            config: config.clone(),
            entropy: entropy.clone(),
        };
        in_flight.push_back(sidelog_runtime::spawn(deliver_with_retries(
            first_attempt,
            batch,
            items,
            sending,
        )));
    }
    for task in in_flight {
        if let Err(e) = task.await {
            report_task_error(lane, &e);
        }
    }
    debug!(lane, "delivery lane stopped");
}

/// A lane's next batch while it is gathered, bounded by count and bytes.
struct Filling<'a> {
    items: Vec<DeliveryItem>,
    bytes: usize,
    config: &'a DeliveryConfig,
}

impl<'a> Filling<'a> {
    fn new(first: DeliveryItem, config: &'a DeliveryConfig) -> Self {
        Filling {
            bytes: first.size(),
            items: vec![first],
            config,
        }
    }

    fn has_room(&self) -> bool {
        self.items.len() < self.config.batch_max_messages
            && self.bytes < self.config.batch_max_bytes
    }

    fn push(&mut self, item: DeliveryItem) {
        self.bytes += item.size();
        self.items.push(item);
    }

    /// What is queued already joins the batch; waiting for more is only for `linger_ms`.
    async fn take_queued(&mut self, rx: &mut mpsc::Receiver<DeliveryItem>) {
        let linger = Duration::from_millis(self.config.linger_ms);
        let deadline = tokio::time::Instant::now() + linger;
        while self.has_room() {
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
            self.push(item);
        }
    }

    /// At the sink's depth: the batch goes on filling while the oldest send is under way, so
    /// batches grow with the load, and an idle lane sends at once.
    async fn while_at_depth(
        &mut self,
        lane: usize,
        depth: usize,
        in_flight: &mut VecDeque<JoinHandle<()>>,
        rx: &mut mpsc::Receiver<DeliveryItem>,
    ) {
        while in_flight.len() >= depth {
            let room = self.has_room();
            let oldest = in_flight.front_mut().expect("at depth, so not empty");
            tokio::select! {
                biased;
                done = oldest => {
                    in_flight.pop_front();
                    if let Err(e) = done {
                        report_task_error(lane, &e);
                    }
                }
                next = rx.recv(), if room => match next {
                    Some(item) => self.push(item),
                    // Closed: send what there is once the oldest is done.
                    None => {
                        let oldest = in_flight.pop_front().expect("at depth, so not empty");
                        if let Err(e) = oldest.await {
                            report_task_error(lane, &e);
                        }
                    }
                },
            }
        }
    }
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

/// What a batch's sending needs besides the batch: the sink, completion, the settings and the
/// lane's randomness (for the backoff's jitter).
#[derive(Clone)]
struct Sending {
    sink: Arc<dyn Sink>,
    completion: Arc<Completion>,
    config: DeliveryConfig,
    entropy: Entropy,
}

async fn deliver_with_retries(
    first_attempt: sidelog_runtime::BoxFuture<'static, Result<Receipt, crate::sink::SinkError>>,
    mut batch: Batch,
    mut items: Vec<DeliveryItem>,
    s: Sending,
) {
    let timeout = s
        .sink
        .ack_delay_max()
        .map(|delay| Duration::from_millis(s.config.timeout_ms) + delay);
    let mut attempt = 1u32;
    let mut pending = first_attempt;
    loop {
        let started = tokio::time::Instant::now();
        let outcome = match timeout {
            Some(timeout) => tokio::time::timeout(timeout, pending).await,
            None => Ok(pending.await),
        };
        record_attempt(matches!(outcome, Ok(Ok(_))), started);
        let error = match outcome {
            Ok(Ok(receipt)) => {
                s.config.outage.succeeded();
                s.completion.delivered(&items, receipt).await;
                return;
            }
            Ok(Err(e)) if e.halted => {
                // The entries stay in the journal; the next start delivers them.
                debug!(messages = items.len(), reason = %e.reason, "the sink has halted; leaving the batch in the journal");
                return;
            }
            Ok(Err(e)) if e.refused => {
                restore_messages(&mut items, &batch);
                refused(items, e.reason, attempt, &s).await;
                return;
            }
            Ok(Err(e)) => e.reason,
            // Only a timed wait ends this way.
            Err(_) => format!("no ack within {:?}", timeout.unwrap_or_default()),
        };
        if s.config.backoff.exhausted(attempt) {
            restore_messages(&mut items, &batch);
            let reason = format!("sink failed {attempt} times; last error: {error}");
            s.completion.outputs_dead(&items, &reason, attempt).await;
            return;
        }
        let oldest_allowed = (s.config.max_age_ms > 0)
            .then(|| s.config.clock.now_ms() - s.config.max_age_ms as i64)
            .filter(|t| items.iter().any(|i| i.written_at_ms < *t));
        if let Some(oldest_allowed) = oldest_allowed {
            // Too old to keep trying: dead letters, with that reason; the rest goes on.
            restore_messages(&mut items, &batch);
            let (expired, mut live): (Vec<DeliveryItem>, Vec<DeliveryItem>) = items
                .into_iter()
                .partition(|i| i.written_at_ms < oldest_allowed);
            let reason = format!(
                "undelivered for longer than replay.max_age_ms ({} ms); last error: {error}",
                s.config.max_age_ms
            );
            s.completion.outputs_dead(&expired, &reason, attempt).await;
            if live.is_empty() {
                return;
            }
            batch = take_batch(&mut live, s.sink.writes_seq_header());
            items = live;
        }
        metrics::counter!(crate::metrics::DELIVERY_RETRIES).increment(1);
        metrics::counter!(crate::metrics::RESENT, "cause" => "retry").increment(items.len() as u64);
        let delay = s.config.backoff.delay(attempt, &s.entropy);
        s.config.outage.failed(&error);
        debug!(messages = items.len(), attempt, error = %error, ?delay, "delivery failed; retrying");
        tokio::time::sleep(delay).await;
        attempt += 1;
        pending = s.sink.deliver(batch.clone());
    }
}

/// One attempt's time and outcome, and whether the sink is up, for `/metrics`.
fn record_attempt(ok: bool, started: tokio::time::Instant) {
    let label = if ok { "ok" } else { "error" };
    metrics::histogram!(crate::metrics::SINK_DELIVER_SECONDS, "outcome" => label)
        .record(started.elapsed().as_secs_f64());
    metrics::gauge!(crate::metrics::SINK_UP).set(if ok { 1.0 } else { 0.0 });
}

/// The sink refused a batch (`SinkError::refused`): a single message is a dead letter at once,
/// with the sink's reason; a larger batch is sent again one message at a time, in order, so
/// that only what the sink refuses is dead-lettered and the rest goes through.
async fn refused(items: Vec<DeliveryItem>, reason: String, attempts: u32, s: &Sending) {
    if items.len() == 1 {
        let reason = format!("the sink refused it: {reason}");
        s.completion.outputs_dead(&items, &reason, attempts).await;
        return;
    }
    debug!(
        messages = items.len(),
        reason = %reason,
        "the sink refused a batch; sending its messages one at a time"
    );
    for item in items {
        let mut one = vec![item];
        let batch = take_batch(&mut one, s.sink.writes_seq_header());
        let first_attempt = s.sink.deliver(batch.clone());
        Box::pin(deliver_with_retries(first_attempt, batch, one, s.clone())).await;
    }
}

/// Moves the messages of `items` into a batch, index for index (the items keep the rest), each
/// with its `sidelog-seq` header unless the sink writes that itself.
fn take_batch(items: &mut [DeliveryItem], sink_writes_seq: bool) -> Batch {
    let mut seqs = Vec::with_capacity(items.len());
    let messages = items
        .iter_mut()
        .map(|i| {
            let seq = i.seq().map(|s| s.0);
            seqs.push(seq);
            let mut message = std::mem::take(&mut i.message);
            if let (false, Some(seq)) = (sink_writes_seq, seq) {
                set_seq_header(&mut message, seq);
            }
            message
        })
        .collect();
    Batch {
        messages,
        seqs: seqs.into(),
    }
}

/// Puts the messages of `batch` back into `items` (the batch took them, index for index), each
/// with its `sidelog-seq` header: a dead letter keeps the sequence it was delivered under.
fn restore_messages(items: &mut [DeliveryItem], batch: &Batch) {
    debug_assert_eq!(items.len(), batch.len());
    for (item, message) in items.iter_mut().zip(batch.messages.iter()) {
        item.message = message.clone();
        if let Some(seq) = item.seq() {
            set_seq_header(&mut item.message, seq.0);
        }
    }
}
