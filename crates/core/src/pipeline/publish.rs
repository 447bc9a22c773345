//! The publish path: validate → dedup → journal / handler per the mode's plan → ack, and the
//! work that continues after the ack (handler, recording outputs, delivery).
//!
//! [`Pipeline::publish`] reads top to bottom. It acts on [`Plan`] fields and never on the mode.
//! Its invariant: an `ACCEPTED` ack is built only after the journal reported the record durable
//! (in the modes that journal), and the id's dedup claim is committed with that same sequence.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::dedup::{Claim, ClaimGuard, ClaimOutcome, DedupWindow};
use super::handler::{Call, HandleOutcome, HandlerRunner};
use super::limits::Limits;
use super::order::{KeyOrder, Turn};
use crate::delivery::{Completion, Delivery, DeliveryItem};
use crate::mode::{InputJournaling, LoggingMode, OutputJournaling, Plan};
use sidelog_journal::{Appended, Journal, JournalError, NewDeadLetter, OutputGroup, Seq};
use sidelog_proto::v1::{Ack, Message, ack};
use sidelog_runtime::{Entropy, SharedClock};

/// The front door a request came in by, a label (`door`) on the intake metrics. gRPC-Web
/// arrives through the gRPC service and counts as `grpc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Grpc,
    Http,
    Mqtt,
}

impl Door {
    pub fn label(self) -> &'static str {
        match self {
            Door::Grpc => "grpc",
            Door::Http => "http",
            Door::Mqtt => "mqtt",
        }
    }
}

/// Why a whole publish request failed, in the pipeline's terms; each door says it its own way
/// (gRPC statuses in `service/ingest.rs`, HTTP statuses in `service/http.rs`, a withheld PUBACK
/// in `service/mqtt.rs`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// Malformed request (empty, too many messages). Not retryable as is.
    #[error("{0}")]
    Malformed(String),
    /// Backpressure: the backlog or the disk is full. Retry later; nothing was accepted.
    #[error("{0}")]
    Full(String),
    /// Replaying, shutting down, or a transient journal failure. Retry; nothing was accepted
    /// that a retry would not answer `DUPLICATE`.
    #[error("{0}")]
    Transient(String),
    /// sidelog could not finish the request, and a retry will not help until something
    /// changes: the journal needs an operator (a damaged file, another format), or a task
    /// ended without an answer (a bug). Not retryable.
    #[error("{0}")]
    Failed(String),
}

/// What [`Pipeline::undelivered`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Undelivered {
    pub journaled_entries: u64,
    pub in_memory_bytes: u64,
}

impl Undelivered {
    pub fn is_empty(&self) -> bool {
        self.journaled_entries == 0 && self.in_memory_bytes == 0
    }
}

impl From<JournalError> for IngestError {
    fn from(e: JournalError) -> Self {
        match e {
            JournalError::StorageFull(_) => IngestError::Full(e.to_string()),
            JournalError::Io(_) | JournalError::Closed => IngestError::Transient(e.to_string()),
            _ => IngestError::Failed(e.to_string()),
        }
    }
}

/// At most one warning per period about messages refused at a door (a producer sending
/// oversized messages would otherwise write a line per message); every one is counted.
static REJECTED_WARNING: sidelog_runtime::WarnLimit =
    sidelog_runtime::WarnLimit::new(sidelog_runtime::WARN_EVERY);

/// Everything the publish path and replay act on.
pub struct Pipeline {
    mode: LoggingMode,
    plan: Plan,
    journal: Journal,
    dedup: Arc<DedupWindow>,
    handler: Arc<HandlerRunner>,
    delivery: Delivery,
    completion: Arc<Completion>,
    limits: Limits,
    clock: SharedClock,
    entropy: Entropy,
    serving: AtomicBool,
    /// Set once the start's replay has dispatched the whole backlog (or failed): re-queued
    /// dead letters are dispatched at once only after that (before, its scan would send them
    /// twice).
    pub(crate) replay_over: AtomicBool,
    /// Order per key: handler results to the journal (or straight to delivery) ...
    order: Arc<KeyOrder>,
    /// ... and recorded outputs on to delivery (see [`Turn::then`]).
    delivery_order: Arc<KeyOrder>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("mode", &self.mode)
            .finish()
    }
}

/// A message that passed validation and holds its dedup claim.
struct Fresh {
    index: usize,
    message: Message,
    claim: ClaimGuard,
}

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mode: LoggingMode,
        journal: Journal,
        dedup: Arc<DedupWindow>,
        handler: Arc<HandlerRunner>,
        delivery: Delivery,
        completion: Arc<Completion>,
        limits: Limits,
        clock: SharedClock,
        entropy: Entropy,
    ) -> Arc<Self> {
        Arc::new(Pipeline {
            mode,
            plan: mode.plan(),
            journal,
            dedup,
            handler,
            delivery,
            completion,
            limits,
            clock,
            entropy,
            serving: AtomicBool::new(false),
            replay_over: AtomicBool::new(false),
            order: Arc::new(KeyOrder::default()),
            delivery_order: Arc::new(KeyOrder::default()),
        })
    }

    pub fn mode(&self) -> LoggingMode {
        self.mode
    }

    pub(crate) fn journal(&self) -> &Journal {
        &self.journal
    }

    pub(crate) fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    pub(crate) fn completion(&self) -> &Arc<Completion> {
        &self.completion
    }

    /// What was accepted and has not reached the sink yet: entries in the journal's backlog,
    /// and bytes held in memory only (mode `none`).
    pub fn undelivered(&self) -> Undelivered {
        Undelivered {
            journaled_entries: self.journal.backlog().entries(),
            in_memory_bytes: self.completion.memory_bytes(),
        }
    }

    /// Dead-letters messages a door refused before they reached the pipeline's intake (a
    /// malformed MQTT publish, or one a limit rejected that the door cannot answer with a
    /// refusal): durable before this returns, counted in `sidelog_dead_lettered_total`.
    pub async fn dead_letter_refused(
        &self,
        letters: Vec<NewDeadLetter>,
    ) -> Result<(), IngestError> {
        let count = letters.len() as u64;
        self.journal.dead_letter(letters).await?;
        metrics::counter!(crate::metrics::DEAD_LETTERED).increment(count);
        Ok(())
    }

    /// Opens or closes intake (closed during replay and shutdown).
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// Has the sink send what it holds back for batching (a replay waits for it).
    pub fn flush_sink(&self) {
        self.delivery.flush_sink();
    }

    /// Tells the sink that the start's replay is over (every replayed entry delivered and
    /// marked), and records the progress it answers after those marks.
    pub async fn sink_replayed(&self) {
        if let Some(progress) = self.delivery.sink_replayed() {
            if let Err(e) = self.journal.record_delivery_progress(progress).await {
                debug!(error = %e, "cannot record the sink's progress; the next start reads more of it");
            }
        }
    }

    /// Undelivered bytes: in the journal, plus what mode `none` holds in memory.
    pub fn backlog_bytes(&self) -> u64 {
        self.journal.backlog().bytes() + self.completion.memory_bytes()
    }

    /// Takes one publish request; answers one ack per message, in order.
    pub async fn publish(
        self: &Arc<Self>,
        messages: Vec<Message>,
        door: Door,
    ) -> Result<Vec<Ack>, IngestError> {
        self.admit(&messages)?;
        let mut acks: Vec<Option<Ack>> = vec![None; messages.len()];
        let claimed = self.validate_and_claim(messages, door, &mut acks);

        // Accept what is new, per the plan. In a task of its own: if the client goes away
        // (deadline, disconnect) tonic drops this future, and a half-done accept would leave
        // journaled records whose dedup claims were released and whose delivery never started.
        // The same task then hands pass-through messages on to delivery, after the ack.
        if !claimed.fresh.is_empty() {
            let pipeline = self.clone();
            let fresh = claimed.fresh;
            let (answer, accepted) = oneshot::channel();
            sidelog_runtime::spawn(async move {
                match pipeline.accept(fresh).await {
                    Ok((acks, after)) => {
                        // A producer that went away needs no ack; the rest goes on regardless.
                        let _ = answer.send(Ok(acks));
                        pipeline.pass_on(after).await;
                    }
                    Err(e) => {
                        let _ = answer.send(Err(e));
                    }
                }
            });
            let accepted = accepted.await.map_err(|_| {
                IngestError::Failed("the publish task ended without an answer".into())
            })??;
            for (index, ack) in accepted {
                acks[index] = Some(ack);
            }
        }

        // Ids another request is publishing right now: its outcome is ours.
        for (index, id, rx) in claimed.waiting {
            match super::dedup::wait_for(rx).await {
                ClaimOutcome::Committed(seq) => acks[index] = Some(duplicate(id, seq)),
                _ => {
                    return Err(IngestError::Transient(format!(
                        "a concurrent publish of id {id:?} failed; retry"
                    )));
                }
            }
        }
        let acks: Vec<Ack> = acks
            .into_iter()
            .map(|a| a.expect("every message got an ack above"))
            .collect();
        count_acks(&acks, door);
        Ok(acks)
    }

    /// Whether the request as a whole may come in: serving, not empty, not too many messages,
    /// room in the backlog.
    fn admit(&self, messages: &[Message]) -> Result<(), IngestError> {
        if !self.is_serving() {
            return Err(IngestError::Transient(
                "sidelog is replaying its journal or shutting down; retry shortly".into(),
            ));
        }
        if messages.is_empty() {
            return Err(IngestError::Malformed("the request has no messages".into()));
        }
        if messages.len() > self.limits.max_messages_per_request {
            return Err(IngestError::Malformed(format!(
                "the request has {} messages, over the limit of {} (max_messages_per_request)",
                messages.len(),
                self.limits.max_messages_per_request
            )));
        }
        let backlog = self.backlog_bytes();
        if backlog >= self.limits.max_backlog_bytes {
            return Err(IngestError::Full(format!(
                "backlog is {backlog} bytes, at the limit of {} (max_backlog_bytes); retry once it drains",
                self.limits.max_backlog_bytes
            )));
        }
        Ok(())
    }

    /// Assigns missing ids, checks each message against the limits and claims its id: a
    /// refused or duplicate message gets its ack in `acks` here.
    fn validate_and_claim(
        &self,
        messages: Vec<Message>,
        door: Door,
        acks: &mut [Option<Ack>],
    ) -> Claimed {
        let mut claimed = Claimed {
            fresh: Vec::with_capacity(messages.len()),
            waiting: Vec::new(),
        };
        for (index, mut message) in messages.into_iter().enumerate() {
            if message.id.is_empty() {
                message.id = self.assign_id();
            }
            if let Err((limit, reason)) = self.limits.check(&message) {
                metrics::counter!(crate::metrics::MESSAGES, "door" => door.label(),
                    "outcome" => "rejected", "reason" => limit)
                .increment(1);
                if let Some(held_back) = REJECTED_WARNING.check() {
                    tracing::warn!(door = door.label(), id = %message.id, %reason, held_back,
                        "a message was refused at the door: not taken, not delivered (gRPC and \
                         HTTP answer it REJECTED, MQTT dead-letters it)");
                }
                acks[index] = Some(rejected(message.id, reason));
                continue;
            }
            match self.dedup.claim(&message.id) {
                Claim::Fresh(claim) => claimed.fresh.push(Fresh {
                    index,
                    message,
                    claim,
                }),
                Claim::Duplicate(seq) => acks[index] = Some(duplicate(message.id, seq)),
                Claim::InFlight(rx) => claimed.waiting.push((index, message.id, rx)),
            }
        }
        claimed
    }

    /// A UUIDv7 from the injected clock and entropy.
    pub fn assign_id(&self) -> String {
        let ms = self.clock.now_ms().max(0) as u64;
        let random =
            (u128::from(self.entropy.next_u64()) << 64) | u128::from(self.entropy.next_u64());
        uuid::Builder::from_unix_timestamp_millis(
            ms,
            &random.to_le_bytes()[..10].try_into().expect("10 bytes"),
        )
        .into_uuid()
        .to_string()
    }

    /// Journals and hands on the fresh messages as the plan says; returns their acks, and, with
    /// no handler before the ack, the messages to pass on to delivery once the acks are sent.
    async fn accept(
        self: &Arc<Self>,
        fresh: Vec<Fresh>,
    ) -> Result<(Vec<(usize, Ack)>, Vec<PassOn>), IngestError> {
        let now = self.clock.now_ms();
        let (acked, inputs): (Vec<(usize, String, ClaimGuard)>, Vec<Message>) = fresh
            .into_iter()
            .map(|f| ((f.index, f.message.id.clone(), f.claim), f.message))
            .unzip();
        if !self.plan.journals_anything() {
            self.completion
                .hold_memory(inputs.iter().map(|m| m.payload.len() as u64).sum());
        }
        let mut after = Vec::new();

        let ack_seqs: Vec<Seq> = match (self.plan.inputs, self.plan.handle_before_ack()) {
            // No handler, and none before the ack: each input is its own output. Its
            // continuation needs no task and no handler call; the publish task itself passes it
            // on after the ack.
            (journaling, false) if self.handler.is_pass_through() => {
                let turns: Vec<_> = inputs.iter().map(|m| self.order.take(&m.key)).collect();
                let journaled = journaling != InputJournaling::None;
                let (seqs, inputs) = if journaled {
                    let appended = self.journal.append_inputs_returning(inputs, now).await?;
                    (appended.seqs, appended.inputs)
                } else {
                    (vec![Seq(0); inputs.len()], inputs)
                };
                after = inputs
                    .into_iter()
                    .zip(&seqs)
                    .zip(turns)
                    .map(|((message, seq), turn)| PassOn {
                        message,
                        input_seq: journaled.then_some(*seq),
                        turn,
                    })
                    .collect();
                seqs
            }
            (InputJournaling::BeforeHandler, _) => {
                let Appended { seqs, inputs } =
                    self.journal.append_inputs_returning(inputs, now).await?;
                for (message, seq) in inputs.into_iter().zip(&seqs) {
                    let turn = self.order.take(&message.key);
                    self.spawn_continuation(message, InputSeq::Known(*seq), Call::Live, turn);
                }
                seqs
            }
            (InputJournaling::ConcurrentWithHandler, _) => {
                let write = self
                    .journal
                    .start_append_inputs(inputs.clone(), now)
                    .await?;
                // The handler runs while the write commits; each continuation waits for the
                // input's sequence before it records outputs.
                let mut seq_senders = Vec::with_capacity(inputs.len());
                for message in inputs {
                    let (tx, rx) = oneshot::channel();
                    seq_senders.push(tx);
                    let turn = self.order.take(&message.key);
                    self.spawn_continuation(message, InputSeq::Pending(rx), Call::Live, turn);
                }
                let seqs = write.await.map_err(|_| JournalError::Closed)??.seqs;
                for (tx, seq) in seq_senders.into_iter().zip(&seqs) {
                    // A continuation that ended early no longer needs its sequence.
                    let _ = tx.send(*seq);
                }
                seqs
            }
            (InputJournaling::None, true) => self.handle_and_record(inputs).await?,
            (InputJournaling::None, false) => {
                let seqs = vec![Seq(0); inputs.len()];
                for message in inputs {
                    let turn = self.order.take(&message.key);
                    self.spawn_continuation(message, InputSeq::Unjournaled, Call::Live, turn);
                }
                seqs
            }
        };

        let acks = acked
            .into_iter()
            .zip(ack_seqs)
            .map(|((index, id, claim), seq)| {
                claim.commit(seq);
                let ack = Ack {
                    id,
                    status: ack::Status::Accepted as i32,
                    sequence: seq.0,
                    reason: String::new(),
                };
                (index, ack)
            })
            .collect();
        Ok((acks, after))
    }

    /// Hands accepted pass-through inputs on to delivery, each in its key's turn: what
    /// [`Pipeline::spawn_continuation`] does with a handler, without a task per message.
    async fn pass_on(&self, after: Vec<PassOn>) {
        let journaled = self.plan.journals_anything();
        for PassOn {
            message,
            input_seq,
            turn,
        } in after
        {
            let memory_bytes = if journaled {
                0
            } else {
                message.payload.len() as u64
            };
            self.dispatch(vec![message], input_seq, memory_bytes, None, turn)
                .await;
        }
    }

    /// SBML: calls the handler on every input, makes the outputs durable, queues them for
    /// delivery, and returns each input's ack sequence.
    async fn handle_and_record(
        self: &Arc<Self>,
        inputs: Vec<Message>,
    ) -> Result<Vec<Seq>, IngestError> {
        let turns: Vec<Option<Turn>> = inputs.iter().map(|m| self.order.take(&m.key)).collect();
        // Without a handler each input is its own output: no call, no task.
        let calls: Vec<_> = inputs
            .iter()
            .map(|m| {
                (!self.handler.is_pass_through()).then(|| {
                    let (pipeline, m) = (self.clone(), m.clone());
                    sidelog_runtime::spawn(
                        async move { pipeline.handler.run(&m, Call::Live).await },
                    )
                })
            })
            .collect();
        let mut groups = Vec::with_capacity(inputs.len());
        for (input, call) in inputs.iter().zip(calls) {
            let outcome = match call {
                Some(call) => call
                    .await
                    .map_err(|e| IngestError::Failed(format!("handler task failed: {e}")))?,
                None => HandleOutcome::Outputs(vec![input.clone()]),
            };
            // A dead input's letter is written with the group: one transaction, and the ack
            // carries the dead letter's sequence.
            let (outputs, dead) = match outcome {
                HandleOutcome::Outputs(outputs) => (outputs, None),
                HandleOutcome::Dead { reason, attempts } => (
                    Vec::new(),
                    Some(
                        self.completion
                            .dead_input_letter(input.clone(), None, reason, attempts),
                    ),
                ),
            };
            groups.push(OutputGroup {
                input_seq: None,
                dedup_id: Some(input.id.clone()),
                outputs,
                dead,
            });
        }
        let recorded = self.journal.record_outputs(groups.clone(), true).await?;
        let acks = recorded.iter().map(|r| r.ack_seq).collect();
        let pipeline = self.clone();
        sidelog_runtime::spawn(async move {
            for ((group, rec), turn) in groups.into_iter().zip(recorded).zip(turns) {
                if let Some(turn) = &turn {
                    turn.ready().await;
                }
                for (message, seq) in group.outputs.into_iter().zip(rec.output_seqs) {
                    let out = Outgoing {
                        output_seq: Some(seq),
                        ..Outgoing::default()
                    };
                    pipeline.send(message, out).await;
                }
            }
        });
        Ok(acks)
    }

    /// After the ack (or in replay): call the handler, then, once `turn` comes (order per key),
    /// record outputs if the plan says so and queue them for delivery.
    pub fn spawn_continuation(
        self: &Arc<Self>,
        input: Message,
        input_seq: InputSeq,
        call: Call,
        turn: Option<Turn>,
    ) -> tokio::task::JoinHandle<()> {
        let pipeline = self.clone();
        sidelog_runtime::spawn(async move {
            let outcome = pipeline.handler.run(&input, call).await;
            let input_seq = match input_seq {
                InputSeq::Known(seq) => Some(seq),
                InputSeq::Pending(rx) => match rx.await {
                    Ok(seq) => Some(seq),
                    // The input never became durable: it was not acked, the producer retries.
                    Err(_) => {
                        debug!(id = %input.id, "input write failed; dropping its outputs");
                        return;
                    }
                },
                InputSeq::Unjournaled => None,
            };
            let input_bytes = if pipeline.plan.journals_anything() || call == Call::Replay {
                0
            } else {
                input.payload.len() as u64
            };
            match outcome {
                HandleOutcome::Outputs(outputs) => {
                    pipeline
                        .dispatch(outputs, input_seq, input_bytes, None, turn)
                        .await;
                }
                HandleOutcome::Dead { reason, attempts } => {
                    pipeline.completion.release_memory(input_bytes);
                    pipeline
                        .completion
                        .input_dead(input, input_seq, reason, attempts)
                        .await;
                }
            }
        })
    }

    /// Replays one journaled input whose handler is pass-through: it is its own output, so it
    /// goes straight to delivery (no handler task, no copy), exactly where
    /// [`Pipeline::spawn_continuation`] would have put it. Waits for room in delivery's queue.
    pub async fn replay_pass_through(&self, input: Message, input_seq: Seq, replayed: Replayed) {
        debug_assert!(self.handler.is_pass_through());
        // What `dispatch` does with one pass-through output of a journaled input: nothing is
        // recorded (the input is the record), no key turn (replay goes in sequence order),
        // one output needs no completion count, and nothing is held in memory only. Sent
        // directly, without dispatch's three small vectors per entry.
        let out = Outgoing {
            output_seq: None,
            input_seq: Some(input_seq),
            memory_bytes: 0,
            replayed: Some(replayed),
        };
        self.send(input, out).await;
    }

    /// The pipeline's clock, unix ms.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Whether there is no handler (a message is its own single output).
    pub fn is_pass_through(&self) -> bool {
        self.handler.is_pass_through()
    }

    /// Queues an input's outputs for delivery, recording them first if the plan says so, in
    /// `turn`'s order (order per key): the record is queued in turn, and the outputs are queued
    /// for delivery in turn, but the key is not held while the journal writes.
    async fn dispatch(
        &self,
        outputs: Vec<Message>,
        input_seq: Option<Seq>,
        input_memory_bytes: u64,
        replayed: Option<Replayed>,
        mut turn: Option<Turn>,
    ) {
        if let Some(t) = &turn {
            t.ready().await;
        }
        // With pass-through the output is the input itself, already journaled: recording it
        // again would double the bytes written for nothing, since replaying the input yields
        // the same output.
        let record = self.plan.outputs == OutputJournaling::AfterHandler
            && input_seq.is_some()
            && !self.handler.is_pass_through();
        let recorded: Option<Vec<Seq>> = if record {
            let group = OutputGroup {
                input_seq,
                dedup_id: None,
                outputs: outputs.clone(),
                dead: None,
            };
            let queued = self.journal.start_record_outputs(vec![group], false).await;
            // Sequenced in queue order: the key's next input may queue its record now.
            turn = turn.map(|t| t.then(&self.delivery_order));
            let written = match queued {
                Ok(rx) => rx.await.unwrap_or(Err(JournalError::Closed)),
                Err(e) => Err(e),
            };
            match written {
                Ok(mut recorded) => {
                    Some(recorded.pop().expect("one group in, one out").output_seqs)
                }
                // Not recorded: the input stays in the journal and delivery goes ahead; the
                // input is completed once its outputs are delivered, and a crash before that
                // re-handles it.
                Err(e) => {
                    warn!(error = %e, "cannot record outputs; delivering without them");
                    None
                }
            }
        } else {
            None
        };
        if let Some(t) = &turn {
            t.ready().await;
        }
        let output_seqs: Vec<Option<Seq>> = match &recorded {
            Some(seqs) => seqs.iter().copied().map(Some).collect(),
            None => vec![None; outputs.len()],
        };
        if let Some(input) = input_seq {
            if outputs.is_empty() {
                // Recording an empty group completes the input; otherwise complete it here.
                if recorded.is_none() {
                    if let Err(e) = self.journal.complete(Vec::new(), vec![input]).await {
                        warn!(error = %e, "cannot complete an input with no outputs");
                    }
                }
                return;
            }
            // One output finishes its input when it is delivered, which is what an input
            // registered nowhere means to completion: only several are counted.
            if outputs.len() > 1 {
                self.completion.expect(input, outputs.len() as u32);
            }
        }
        let mut memory: Vec<u64> = outputs.iter().map(|m| m.payload.len() as u64).collect();
        if input_memory_bytes > 0 {
            self.completion.hold_memory(memory.iter().sum());
            self.completion.release_memory(input_memory_bytes);
        } else {
            memory.iter_mut().for_each(|m| *m = 0);
        }
        for ((message, seq), memory_bytes) in outputs.into_iter().zip(output_seqs).zip(memory) {
            let out = Outgoing {
                output_seq: seq,
                input_seq,
                memory_bytes,
                replayed: replayed.clone(),
            };
            self.send(message, out).await;
        }
    }

    /// Queues one output for delivery (its lane gives it its `sidelog-seq` header).
    pub async fn send(&self, message: Message, out: Outgoing) {
        let Outgoing {
            output_seq,
            input_seq,
            memory_bytes,
            replayed,
        } = out;
        let item = DeliveryItem {
            message,
            output_seq,
            input_seq,
            memory_bytes,
            written_at_ms: replayed
                .as_ref()
                .map_or_else(|| self.clock.now_ms(), |r| r.written_at_ms),
            pace: replayed.and_then(|r| r.pace),
        };
        if self.delivery.send(item).await.is_err() {
            // Shutting down: journaled entries are re-sent after the restart.
            debug!("delivery stopped; output left in the journal");
        }
    }
}

/// How a continuation learns its input's journal sequence.
#[derive(Debug)]
pub enum InputSeq {
    /// Journaled before the handler runs (rbml), or replayed.
    Known(Seq),
    /// Journaled while the handler runs (hml): arrives once the write commits; a closed
    /// channel means the write failed and the input was not acked.
    Pending(oneshot::Receiver<Seq>),
    /// Not journaled (mode none).
    Unjournaled,
}

/// One output on its way to delivery.
#[derive(Debug, Default)]
pub struct Outgoing {
    /// Its journal sequence, when it was recorded.
    pub output_seq: Option<Seq>,
    /// The journaled input it came from, completed once all its outputs are delivered.
    pub input_seq: Option<Seq>,
    /// What it holds in memory only (mode none), released when it is delivered.
    pub memory_bytes: u64,
    /// Set when a replay re-sends it.
    pub replayed: Option<Replayed>,
}

/// What a replay knows about an entry it re-sends.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// A paced replay's permit, carried by the delivery item and released when the item is
    /// delivered or dead-lettered.
    pub pace: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
    /// When the entry was written, unix ms (for `max_age_ms`; fresh items use the time of
    /// their sending).
    pub written_at_ms: i64,
}

/// An accepted pass-through input, to be queued for delivery after the ack.
struct PassOn {
    message: Message,
    /// Its journal sequence (none in mode `none`).
    input_seq: Option<Seq>,
    /// Its key's turn, taken when it was accepted.
    turn: Option<Turn>,
}

/// The messages of a request whose ids were claimed.
struct Claimed {
    /// New ids: to be accepted.
    fresh: Vec<Fresh>,
    /// Ids another request is publishing now: (index, id, that publish's outcome).
    waiting: Vec<(usize, String, tokio::sync::watch::Receiver<ClaimOutcome>)>,
}

/// Counts a request's accepted and duplicate messages (refusals were counted with their
/// reason): one counter update per outcome, not one per message (a lookup of the labelled
/// series each).
fn count_acks(acks: &[Ack], door: Door) {
    let (mut accepted, mut duplicate) = (0u64, 0u64);
    for a in acks {
        match ack::Status::try_from(a.status) {
            Ok(ack::Status::Accepted) => accepted += 1,
            Ok(ack::Status::Duplicate) => duplicate += 1,
            _ => {}
        }
    }
    for (outcome, n) in [("accepted", accepted), ("duplicate", duplicate)] {
        if n > 0 {
            metrics::counter!(crate::metrics::MESSAGES, "door" => door.label(), "outcome" => outcome)
                .increment(n);
        }
    }
}

fn rejected(id: String, reason: String) -> Ack {
    Ack {
        id,
        status: ack::Status::Rejected as i32,
        sequence: 0,
        reason,
    }
}

fn duplicate(id: String, seq: Seq) -> Ack {
    Ack {
        id,
        status: ack::Status::Duplicate as i32,
        sequence: seq.0,
        reason: String::new(),
    }
}
