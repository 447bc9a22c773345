//! The publish path: validate → dedup → the plan's intake (`intake.rs`) → ack; the work after
//! the ack is the intake's pass-on or a continuation (`continuation.rs`).
//!
//! [`Pipeline::publish`] reads top to bottom. It acts on the [`Plan`] and never on the mode.
//! Its invariant: an `ACCEPTED` ack is built only after the journal reported the record durable
//! (in the modes that journal), and the id's dedup claim is committed with that same sequence.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::debug;

use super::dedup::{Claim, ClaimGuard, ClaimOutcome, DedupWindow};
use super::handler::HandlerRunner;
use super::limits::Limits;
use super::order::KeyOrder;
use crate::delivery::{Completion, Delivery};
use crate::mode::{LoggingMode, Plan};
use sidelog_journal::{Journal, JournalError, NewDeadLetter, Seq};
use sidelog_proto::v1::{Ack, Message, ack};
use sidelog_runtime::{Entropy, SharedClock};

/// The front door a request came in by, a label (`door`) on the intake metrics. gRPC-Web
/// arrives through the gRPC service and counts as `grpc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Grpc,
    Http,
    Mqtt,
    /// OpenTelemetry logs (OTLP), over gRPC or HTTP.
    Otlp,
    /// Fluentd's forward protocol.
    Forward,
}

impl Door {
    pub fn label(self) -> &'static str {
        match self {
            Door::Grpc => "grpc",
            Door::Http => "http",
            Door::Mqtt => "mqtt",
            Door::Otlp => "otlp",
            Door::Forward => "forward",
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
    pub(super) plan: Plan,
    pub(super) journal: Journal,
    dedup: Arc<DedupWindow>,
    pub(super) handler: Arc<HandlerRunner>,
    delivery: Delivery,
    pub(super) completion: Arc<Completion>,
    limits: Limits,
    pub(super) clock: SharedClock,
    entropy: Entropy,
    serving: AtomicBool,
    /// Set once the start's replay has dispatched the whole backlog (or failed): re-queued
    /// dead letters are dispatched at once only after that (before, its scan would send them
    /// twice).
    pub(crate) replay_over: AtomicBool,
    /// Order per key: handler results to the journal (or straight to delivery) ...
    pub(super) order: Arc<KeyOrder>,
    /// ... and recorded outputs on to delivery (see [`Turn::then`]).
    pub(super) delivery_order: Arc<KeyOrder>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("mode", &self.mode)
            .field("plan", &self.plan)
            .finish()
    }
}

/// What a [`Pipeline`] is made of, assembled by the node (or the simulator).
pub struct Parts {
    pub mode: LoggingMode,
    pub journal: Journal,
    pub dedup: Arc<DedupWindow>,
    pub handler: Arc<HandlerRunner>,
    pub delivery: Delivery,
    pub completion: Arc<Completion>,
    pub limits: Limits,
    pub clock: SharedClock,
    pub entropy: Entropy,
}

/// A message that passed validation and holds its dedup claim.
pub(super) struct Fresh {
    pub(super) index: usize,
    pub(super) message: Message,
    pub(super) claim: ClaimGuard,
}

impl Pipeline {
    /// The pipeline of `parts.mode`, planned for its handler (or for none: pass-through).
    pub fn new(parts: Parts) -> Arc<Self> {
        let Parts {
            mode,
            journal,
            dedup,
            handler,
            delivery,
            completion,
            limits,
            clock,
            entropy,
        } = parts;
        Arc::new(Pipeline {
            mode,
            plan: mode.plan(handler.is_pass_through()),
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

    /// Completes once nothing accepted is undelivered ([`Pipeline::undelivered`] is empty),
    /// woken by the commit or the release that empties it: no polling.
    pub async fn all_delivered(&self) {
        loop {
            let journal = self.journal.backlog().emptied();
            let memory = self.completion.memory_emptied();
            tokio::pin!(journal, memory);
            journal.as_mut().enable();
            memory.as_mut().enable();
            if self.undelivered().is_empty() {
                return;
            }
            tokio::select! {
                _ = journal => {}
                _ = memory => {}
            }
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
        if let Some(progress) = self.delivery.sink_replayed()
            && let Err(e) = self.journal.record_delivery_progress(progress).await
        {
            debug!(error = %e, "cannot record the sink's progress; the next start reads more of it");
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

        // Accept what is new, per the plan, in this task, but detachable: if the client goes
        // away (deadline, disconnect) tonic drops this future, and a half-done accept would
        // leave journaled records whose dedup claims were released and whose delivery never
        // started; then the rest of the accept runs in a task of its own. Without a handler the
        // accepted inputs are queued for delivery here too, as far as their turns and lanes
        // allow without waiting (a task takes the rest).
        if !claimed.fresh.is_empty() {
            let pipeline = self.clone();
            let fresh = claimed.fresh;
            let accepted = sidelog_runtime::detachable(async move {
                let (acks, pass_on) = pipeline.accept(fresh).await?;
                pipeline.pass_on(pass_on);
                Ok::<_, IngestError>(acks)
            })
            .await?;
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

    /// The pipeline's clock, unix ms.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Whether there is no handler (a message is its own single output).
    pub fn is_pass_through(&self) -> bool {
        self.plan.pass_through
    }
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
