//! Completion: acks and dead letters become journal changes. A delivered journaled output is
//! removed, and an input is completed (removed) once the last of its outputs is delivered or
//! dead-lettered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::{debug, error, warn};

use super::DeliveryItem;
use crate::sink::Receipt;
use sidelog_journal::{EntryRef, Journal, NewDeadLetter, Seq};
use sidelog_proto::journal::dead_letter;
use sidelog_proto::v1::Message;

/// Tracks which inputs are complete and tells the journal.
#[derive(Debug)]
pub struct Completion {
    journal: Journal,
    /// Outputs still undelivered, per journaled input. Additive: replay may register one
    /// input's outputs in several steps.
    pending: Mutex<HashMap<Seq, u32>>,
    /// Bytes held only in memory (mode `none`), by the [`MemoryPermit`]s alive.
    memory: Arc<Held>,
}

/// What the [`MemoryPermit`]s hold.
#[derive(Debug, Default)]
struct Held {
    bytes: AtomicU64,
    /// Told whenever the last held byte is released.
    emptied: tokio::sync::Notify,
}

/// Bytes of a message held only in memory (mode `none`), counted for backpressure while the
/// permit lives: it is carried with the message to delivery and frees itself when dropped,
/// whichever way the message leaves (delivered, dead-lettered, a handler that gave up, or a
/// shutdown that drops the queues).
#[derive(Debug)]
pub struct MemoryPermit {
    held: Arc<Held>,
    bytes: u64,
}

impl Drop for MemoryPermit {
    fn drop(&mut self) {
        if self.held.bytes.fetch_sub(self.bytes, Ordering::Relaxed) == self.bytes {
            self.held.emptied.notify_waiters();
        }
    }
}

impl Completion {
    pub fn new(journal: Journal) -> Arc<Self> {
        Arc::new(Completion {
            journal,
            pending: Mutex::new(HashMap::new()),
            memory: Arc::default(),
        })
    }

    /// Registers `outputs` more undelivered outputs of `input`. An input registered nowhere
    /// is finished by the first of its outputs delivered or dead-lettered, so an input with
    /// one output needs no registration.
    pub fn expect(&self, input: Seq, outputs: u32) {
        let mut pending = self.pending.lock().expect("never held across a panic");
        *pending.entry(input).or_insert(0) += outputs;
    }

    /// Counts `bytes` as held in memory until the permit is dropped.
    pub fn hold_memory(&self, bytes: u64) -> MemoryPermit {
        self.memory.bytes.fetch_add(bytes, Ordering::Relaxed);
        MemoryPermit {
            held: self.memory.clone(),
            bytes,
        }
    }

    /// Bytes held in memory only (mode `none`).
    pub fn memory_bytes(&self) -> u64 {
        self.memory.bytes.load(Ordering::Relaxed)
    }

    /// Completes when the last byte held in memory is released (enable it before looking at
    /// [`Completion::memory_bytes`]).
    pub fn memory_emptied(&self) -> tokio::sync::futures::Notified<'_> {
        self.memory.emptied.notified()
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

    /// The sink acked `items`; `receipt` is marked once their marks are queued, and the sink
    /// progress it answers, if any, is queued after them.
    pub async fn delivered(&self, items: &[DeliveryItem], receipt: Receipt) {
        metrics::counter!(crate::metrics::DELIVERED).increment(items.len() as u64);
        let outputs: Vec<Seq> = items.iter().filter_map(|i| i.output_seq).collect();
        let inputs = self.finished_inputs(items);
        if let Err(e) = self.journal.complete(outputs, inputs).await {
            // The marks are lost: the entries stay and are re-sent after a restart (duplicates,
            // or, for a sink with progress records, skipped: its progress stays where it was).
            warn!(error = %e, "cannot record deliveries in the journal");
            return;
        }
        if let Some(progress) = receipt.marked()
            && let Err(e) = self.journal.record_delivery_progress(progress).await
        {
            debug!(error = %e, "cannot record the sink's progress; the next start reads more of it");
        }
    }

    /// The dead letter of an input the handler gave up on, logged and counted; the caller
    /// writes it ([`Completion::input_dead`], or sbml with the input's record).
    pub fn dead_input_letter(
        &self,
        input: Message,
        input_seq: Option<Seq>,
        reason: String,
        attempts: u32,
    ) -> NewDeadLetter {
        warn!(id = %input.id, attempts, reason = %reason, "input moved to the dead-letter table");
        metrics::counter!(crate::metrics::DEAD_LETTERED).increment(1);
        NewDeadLetter {
            kind: dead_letter::Kind::Input,
            message: input,
            reason,
            attempts,
            input_seq,
            remove: input_seq.map(EntryRef::Input),
            complete_input: None,
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
        let letter = self.dead_input_letter(input, input_seq, reason, attempts);
        if let Err(e) = self.write_dead_letters(vec![letter]).await {
            error!(error = %e, "cannot write a dead letter; the input stays in the journal and is retried after a restart");
        }
    }

    /// Writes dead letters, retrying while the journal's failure is transient: a dead letter
    /// that is not written leaves its entry in the backlog.
    async fn write_dead_letters(
        &self,
        letters: Vec<NewDeadLetter>,
    ) -> Result<(), sidelog_journal::JournalError> {
        let write = || self.journal.dead_letter(letters.clone());
        sidelog_runtime::retry_transient(
            sidelog_runtime::JOURNAL_RETRY,
            "cannot write dead letters yet; retrying",
            write,
            sidelog_journal::JournalError::is_retryable,
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
        metrics::counter!(crate::metrics::DEAD_LETTERED).increment(items.len() as u64);
        if let Err(e) = self.write_dead_letters(letters).await {
            // Not written: the entries stay in the journal and are retried after a restart.
            error!(error = %e, "cannot write dead letters; the outputs stay in the journal");
        }
    }
}
