//! Replay on start: what the journal holds is finished before new traffic is taken.
//!
//! Recovery: stop intake, re-process what was logged, then rejoin the load balancer (see the
//! crash contract in ARCHITECTURE.md).
//! Replay is mode-agnostic, so a restart in another mode loses nothing:
//! 1. every output in `outputs` (sbml, hml) is sent again;
//! 2. every input in `inputs` without recorded outputs (rbml, and hml inputs whose outputs were
//!    never written) goes to the handler again with `replay = true`.
//!
//! Then it waits until the backlog is empty (each entry delivered or dead-lettered).
//!
//! Memory stays bounded whatever the backlog's size: the journal is read in batches of
//! [`SCAN_BATCH`] entries and the rest of the block the batch ends in (a block is one commit's
//! records, so each is read once), each batch is pushed into delivery's bounded queues (which
//! wait when full), and at most [`REPLAY_INPUTS_IN_FLIGHT`] inputs are being handled at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::continuation::InputSeq;
use super::handler::Call;
use super::publish::Pipeline;
use crate::delivery::DeliveryItem;
use crate::sink::BacklogSpan;
use sidelog_journal::{
    DeadLetterSelection, InputState, JournalError, ScanLimit, Seq, SeqRange, StoredInput,
    StoredOutput,
};

/// Journal entries read per scan, then on to the end of their block.
pub const SCAN_BATCH: usize = 1024;
/// Replayed inputs with a handler call or delivery under way at once.
pub const REPLAY_INPUTS_IN_FLIGHT: usize = 4096;
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How long the replay's backlog may stay the same before the sink is told to flush what it
/// holds back (a chunk of the file or object sink waits for its age otherwise).
const STALL: Duration = Duration::from_millis(20);

/// How a replay goes.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Entries written longer ago than this (ms) go to the dead-letter table instead of being
    /// sent; 0 = no limit.
    pub max_age_ms: u64,
    /// Pacing (the `interleave` policy, re-queues): each replayed entry holds a permit until
    /// it is delivered or dead-lettered, so at most this many are under way and fresh traffic
    /// finds the delivery queues nearly empty. `None`: as fast as delivery takes them.
    pub pace: Option<Pace>,
}

/// A bound on replayed entries under way (see [`ReplayOptions::pace`]).
#[derive(Debug, Clone)]
pub struct Pace {
    permits: Arc<Semaphore>,
    capacity: usize,
}

impl Pace {
    pub fn new(capacity: usize) -> Pace {
        let capacity = capacity.max(1);
        Pace {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// Waits for room, then holds it until the returned permit (and every clone) is dropped.
    async fn acquire(&self) -> Arc<tokio::sync::OwnedSemaphorePermit> {
        Arc::new(
            self.permits
                .clone()
                .acquire_owned()
                .await
                .expect("the pacing semaphore is never closed"),
        )
    }

    /// Completes when every paced entry is finished (all permits are back). Only once
    /// nothing more is paced: a waiter for all the permits goes before later acquirers.
    async fn all_back(&self) {
        let all = u32::try_from(self.capacity).unwrap_or(u32::MAX);
        // Never closed (see `acquire`); the permits go back at once.
        let _ = self.permits.acquire_many(all).await;
    }
}

/// What replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub outputs_resent: u64,
    pub inputs_rehandled: u64,
    /// Entries over `max_age_ms`, moved to the dead-letter table.
    pub expired: u64,
}

/// Replays the journal through `pipeline` and waits until what it held is delivered (or
/// dead-lettered). Only entries written before the call are replayed: with the `interleave`
/// policy fresh traffic is journaled meanwhile, and it is on its way already.
pub async fn replay(
    pipeline: &Arc<Pipeline>,
    options: &ReplayOptions,
) -> Result<ReplayStats, JournalError> {
    if let Some(sink) = pipeline.delivery().sink_reads_back() {
        match backlog_span(pipeline.journal()).await {
            Ok(Some((from, to, since_ms))) => {
                sink.read_back(BacklogSpan { from, to, since_ms }).await;
            }
            Ok(None) => {}
            Err(e) => {
                warn!(error = %e, "cannot read the backlog's span; the replay re-sends all of it")
            }
        }
    }
    let result = replay_backlog(pipeline, options).await;
    if result.is_ok() {
        pipeline.sink_replayed().await;
    }
    pipeline.replay_over.store(true, Ordering::Release);
    result
}

/// Re-queued entries under way at once: a large re-queue does not crowd out fresh traffic.
const REQUEUE_IN_FLIGHT: usize = 256;

/// Why re-queued dead letters were not taken.
#[derive(Debug, thiserror::Error)]
pub enum RequeueError {
    /// The start's replay is still dispatching the backlog: its scan would send them twice.
    #[error("the start-up replay is still dispatching the backlog; re-queue once it is done")]
    ReplayUnderWay,
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl Pipeline {
    /// Moves the selected dead letters back into the backlog (new sequences, durable before
    /// this returns) and dispatches them beside traffic, paced: the handler for inputs, the
    /// sink for outputs. Refused while the start's replay is under way.
    pub async fn requeue_dead_letters(
        self: &Arc<Self>,
        selection: DeadLetterSelection,
    ) -> Result<Vec<Seq>, RequeueError> {
        if !self.replay_over.load(Ordering::Acquire) {
            return Err(RequeueError::ReplayUnderWay);
        }
        let seqs = self.journal().requeue_dead_letters(selection).await?;
        if let (Some(first), Some(last)) = (seqs.first(), seqs.last()) {
            let pipeline = self.clone();
            let (from, to) = (*first, Seq(last.0 + 1));
            sidelog_runtime::spawn(async move {
                let options = ReplayOptions {
                    max_age_ms: 0,
                    pace: Some(Pace::new(REQUEUE_IN_FLIGHT)),
                };
                if let Err(e) = replay_range(&pipeline, from, to, &options).await {
                    warn!(error = %e, "cannot dispatch re-queued entries; they are replayed on the next start");
                }
            });
        }
        Ok(seqs)
    }
}

async fn replay_backlog(
    pipeline: &Arc<Pipeline>,
    options: &ReplayOptions,
) -> Result<ReplayStats, JournalError> {
    let journal = pipeline.journal().clone();
    let start_entries = journal.backlog().entries();
    if start_entries == 0 {
        return Ok(ReplayStats::default());
    }
    let end = Seq(retrying(|| journal.summary()).await?.next_seq);
    info!(
        entries = start_entries,
        bytes = journal.backlog().bytes(),
        paced = options.pace.is_some(),
        "replaying the journal"
    );
    let stats = replay_range(pipeline, Seq(0), end, options).await?;
    let mut last_report = tokio::time::Instant::now();
    let mut last_entries = u64::MAX;
    loop {
        // Done when every replayed entry is gone: all pacing permits are back, or (unpaced,
        // before any traffic is taken) a commit empties the backlog.
        let emptied = journal.backlog().emptied();
        let mut emptied = std::pin::pin!(emptied);
        emptied.as_mut().enable();
        if options.pace.is_none() && journal.backlog().entries() == 0 {
            break;
        }
        let done = async {
            match &options.pace {
                Some(pace) => pace.all_back().await,
                None => emptied.await,
            }
        };
        tokio::select! {
            () = done => break,
            () = tokio::time::sleep(STALL) => {}
        }
        // No progress for a while: what is left may sit in a sink that batches by age. Intake
        // waits for it, so it goes now.
        let entries = journal.backlog().entries();
        if entries == last_entries {
            pipeline.flush_sink();
        }
        last_entries = entries;
        if last_report.elapsed() >= PROGRESS_EVERY {
            last_report = tokio::time::Instant::now();
            info!(remaining = entries, "replay in progress");
        }
    }
    info!(
        outputs_resent = stats.outputs_resent,
        inputs_rehandled = stats.inputs_rehandled,
        expired = stats.expired,
        "replay done"
    );
    Ok(stats)
}

/// The backlog's sequences `[from, to]` and when its oldest entry was written (unix ms), or
/// `None` without a backlog.
pub async fn backlog_span(
    journal: &sidelog_journal::Journal,
) -> Result<Option<(u64, u64, i64)>, JournalError> {
    if journal.backlog().entries() == 0 {
        return Ok(None);
    }
    let first_input = journal.scan_inputs(Seq(0), 1).await?.into_iter().next();
    let first_output = journal.scan_outputs(Seq(0), 1).await?.into_iter().next();
    let from = [
        first_input.as_ref().map(|i| i.seq.0),
        first_output.as_ref().map(|o| o.seq.0),
    ]
    .into_iter()
    .flatten()
    .min();
    let Some(from) = from else { return Ok(None) };
    let to = journal.summary().await?.next_seq;
    let since = journal.oldest_backlog_ms().await?.unwrap_or(0);
    Ok(Some((from, to, since)))
}

/// Replays the records of failed commits that the journal found in the file on reopening, for
/// as long as the journal lives.
pub async fn replay_ambiguous(
    pipeline: Arc<Pipeline>,
    mut ranges: tokio::sync::mpsc::UnboundedReceiver<SeqRange>,
) {
    while let Some(range) = ranges.recv().await {
        match replay_range(&pipeline, range.from, range.to, &ReplayOptions::default()).await {
            Ok(stats) => info!(
                from = range.from.0,
                to = range.to.0,
                outputs_resent = stats.outputs_resent,
                inputs_rehandled = stats.inputs_rehandled,
                "replayed the records of a failed commit"
            ),
            Err(e) => {
                warn!(error = %e, "cannot replay the records of a failed commit; they are replayed on the next start")
            }
        }
    }
}

/// Runs a journal read again while it fails transiently (an I/O error, a full disk): replay
/// must not give up on the backlog because the disk hiccupped.
async fn retrying<T, Fut>(read: impl FnMut() -> Fut) -> Result<T, JournalError>
where
    Fut: std::future::Future<Output = Result<T, JournalError>>,
{
    sidelog_runtime::retry_transient(
        sidelog_runtime::JOURNAL_RETRY,
        "journal read failed during replay; retrying",
        read,
        JournalError::is_retryable,
    )
    .await
}

/// Dispatches every journaled entry with a sequence in `[from, to)` (does not wait for them):
/// the outputs first, then the inputs without recorded outputs.
pub async fn replay_range(
    pipeline: &Arc<Pipeline>,
    from: Seq,
    to: Seq,
    options: &ReplayOptions,
) -> Result<ReplayStats, JournalError> {
    let mut replayer = Replayer {
        pipeline,
        options,
        oldest_allowed: (options.max_age_ms > 0)
            .then(|| pipeline.now_ms().saturating_sub(options.max_age_ms as i64)),
        stats: ReplayStats::default(),
        counters: ReplayCounters::new(),
    };
    replayer.outputs(from, to).await?;
    replayer.inputs(from, to).await?;
    Ok(replayer.stats)
}

/// One replay of a range of the journal.
struct Replayer<'a> {
    pipeline: &'a Arc<Pipeline>,
    options: &'a ReplayOptions,
    /// Entries written before this (unix ms) are dead-lettered instead (`max_age_ms`).
    oldest_allowed: Option<i64>,
    stats: ReplayStats,
    counters: ReplayCounters,
}

/// The replay's metric series, looked up once (a labelled lookup per entry was ~3 % of a
/// replay's CPU time).
struct ReplayCounters {
    resent: metrics::Counter,
    inputs: metrics::Counter,
    outputs: metrics::Counter,
}

impl ReplayCounters {
    fn new() -> Self {
        ReplayCounters {
            resent: metrics::counter!(crate::metrics::RESENT, "cause" => "replay"),
            inputs: metrics::counter!(crate::metrics::REPLAYED, "kind" => "input"),
            outputs: metrics::counter!(crate::metrics::REPLAYED, "kind" => "output"),
        }
    }
}

impl Replayer<'_> {
    fn expired(&self, written_at_ms: i64) -> bool {
        self.oldest_allowed.is_some_and(|t| written_at_ms < t)
    }

    fn expiry_reason(&self) -> String {
        format!(
            "undelivered for longer than replay.max_age_ms ({} ms)",
            self.options.max_age_ms
        )
    }

    /// A pacing permit, when the replay is paced.
    async fn pace(&self) -> Option<Arc<tokio::sync::OwnedSemaphorePermit>> {
        match &self.options.pace {
            Some(pace) => Some(pace.acquire().await),
            None => None,
        }
    }

    /// Sends every output in `[from, to)` again, or dead-letters it when it is too old.
    async fn outputs(&mut self, from: Seq, to: Seq) -> Result<(), JournalError> {
        let journal = self.pipeline.journal().clone();
        let mut cursor = from;
        loop {
            let batch =
                retrying(|| journal.scan_outputs(cursor, ScanLimit::to_block_end(SCAN_BATCH)))
                    .await?;
            let Some(last) = batch.last() else {
                return Ok(());
            };
            cursor = Seq(last.seq.0 + 1);
            for stored in batch {
                if stored.seq >= to {
                    return Ok(());
                }
                self.output(stored).await?;
            }
        }
    }

    async fn output(&mut self, stored: StoredOutput) -> Result<(), JournalError> {
        let input_seq = (stored.entry.input_seq != 0).then_some(Seq(stored.entry.input_seq));
        if let Some(input) = input_seq {
            self.pipeline.completion().expect(input, 1);
        }
        let Some(message) = stored.entry.message else {
            return Err(JournalError::Decode {
                table: "outputs",
                key: stored.seq.0,
                reason: "output entry without a message".into(),
            });
        };
        let written_at_ms = stored.entry.recorded_at_ms;
        if self.expired(written_at_ms) {
            self.stats.expired += 1;
            let item = DeliveryItem::new(message, Some(stored.seq), input_seq, written_at_ms);
            let reason = self.expiry_reason();
            self.pipeline
                .completion()
                .outputs_dead(&[item], &reason, 0)
                .await;
            return Ok(());
        }
        let mut item = DeliveryItem::new(message, Some(stored.seq), input_seq, written_at_ms);
        item.pace = self.pace().await;
        self.pipeline.send(item).await;
        self.stats.outputs_resent += 1;
        self.counters.resent.increment(1);
        self.counters.outputs.increment(1);
        Ok(())
    }

    /// Hands every input in `[from, to)` without recorded outputs to the handler again, or
    /// dead-letters it when it is too old.
    async fn inputs(&mut self, from: Seq, to: Seq) -> Result<(), JournalError> {
        let journal = self.pipeline.journal().clone();
        let permits = match &self.options.pace {
            Some(pace) => pace.permits.clone(),
            None => Arc::new(Semaphore::new(REPLAY_INPUTS_IN_FLIGHT)),
        };
        let mut cursor = from;
        loop {
            let batch =
                retrying(|| journal.scan_inputs(cursor, ScanLimit::to_block_end(SCAN_BATCH)))
                    .await?;
            let Some(last) = batch.last() else {
                return Ok(());
            };
            cursor = Seq(last.seq.0 + 1);
            for stored in batch {
                if stored.seq >= to {
                    return Ok(());
                }
                self.input(stored, &permits).await?;
            }
        }
    }

    async fn input(
        &mut self,
        stored: StoredInput,
        permits: &Arc<Semaphore>,
    ) -> Result<(), JournalError> {
        match stored.state {
            InputState::OutputsPending => return Ok(()),
            InputState::Finished => {
                return self
                    .pipeline
                    .journal()
                    .complete(Vec::new(), vec![stored.seq])
                    .await;
            }
            InputState::Unhandled => {}
        }
        let Some(message) = stored.entry.message else {
            return Err(JournalError::Decode {
                table: "inputs",
                key: stored.seq.0,
                reason: "input entry without a message".into(),
            });
        };
        let written_at_ms = stored.entry.received_at_ms;
        if self.expired(written_at_ms) {
            self.stats.expired += 1;
            let reason = self.expiry_reason();
            self.pipeline
                .completion()
                .input_dead(message, Some(stored.seq), reason, 0)
                .await;
            return Ok(());
        }
        self.stats.inputs_rehandled += 1;
        self.counters.resent.increment(1);
        self.counters.inputs.increment(1);
        if self.pipeline.is_pass_through() {
            // The input is its own output: straight to delivery, as the intake's pass-on does
            // (profile-guided: a task and a message copy per entry were most of replay's CPU
            // time; without a handler there is nothing to run concurrently). Nothing is
            // recorded, replay goes in sequence order without key turns, and one output needs
            // no completion count.
            let mut item = DeliveryItem::new(message, None, Some(stored.seq), written_at_ms);
            item.pace = self.pace().await;
            self.pipeline.send(item).await;
            return Ok(());
        }
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the replay semaphore is never closed");
        let task = self.pipeline.spawn_continuation(
            message,
            InputSeq::Known(stored.seq),
            Call::Replay,
            None,
            None,
        );
        sidelog_runtime::spawn(async move {
            drop(task.await);
            drop(permit);
        });
        Ok(())
    }
}
