//! The intake: what each plan does with a request's new messages before their acks, one
//! function per [`Intake`], and, without a handler, the hand-off to delivery after the acks.
//!
//! Every intake answers each message's ack sequence, in order. With a handler, each accepted
//! input's continuation (`continuation.rs`) is started before the ack, so the call runs while
//! the ack is sent. Without one (pass-through) an input is its own output: it needs no task and
//! no call, and the request's own task queues it for delivery before it answers, unless that
//! would wait (its key's turn, room in its lane): then a task takes it and what follows it.

use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::debug;

use super::continuation::InputSeq;
use super::dedup::ClaimGuard;
use super::handler::{Call, HandleOutcome};
use super::order::Turn;
use super::publish::{Fresh, IngestError, Pipeline};
use crate::delivery::{DeliveryItem, MemoryPermit, TrySend};
use crate::mode::Intake;
use sidelog_journal::{Appended, JournalError, OutputGroup, Seq};
use sidelog_proto::v1::{Ack, Message, ack};

/// An accepted pass-through input, to queue for delivery after the acks, in its key's turn.
pub(super) type PassOn = (Option<Turn>, DeliveryItem);

/// What an intake answers.
struct Accepted {
    /// Each message's sequence for its ack (0 where nothing is written: mode `none`).
    seqs: Vec<Seq>,
    /// Without a handler: the inputs, each its own output, for [`Pipeline::pass_on`].
    pass_on: Vec<PassOn>,
}

impl Pipeline {
    /// Takes the fresh messages in as the plan says; returns their acks (with the index of the
    /// message each answers), committing each id's dedup claim with its sequence, and what to
    /// pass on to delivery once the acks are sent.
    pub(super) async fn accept(
        self: &Arc<Self>,
        fresh: Vec<Fresh>,
    ) -> Result<(Vec<(usize, Ack)>, Vec<PassOn>), IngestError> {
        let (claims, inputs): (Vec<(usize, ClaimGuard)>, Vec<Message>) = fresh
            .into_iter()
            .map(|f| ((f.index, f.claim), f.message))
            .unzip();
        let ids: Vec<String> = inputs.iter().map(|m| m.id.clone()).collect();
        let accepted = match self.plan.intake {
            Intake::MemoryOnly => self.memory_only(inputs),
            Intake::InputFirst => self.input_first(inputs).await?,
            Intake::OutputsFirst => self.outputs_first(inputs).await?,
            Intake::Hybrid => self.hybrid(inputs).await?,
        };
        let acks = claims
            .into_iter()
            .zip(ids)
            .zip(accepted.seqs)
            .map(|(((index, claim), id), seq)| {
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
        Ok((acks, accepted.pass_on))
    }

    /// `none`: nothing is written; each message holds its bytes in memory until it is
    /// delivered, and is acked on receipt.
    fn memory_only(self: &Arc<Self>, inputs: Vec<Message>) -> Accepted {
        let mut accepted = Accepted::with_capacity(inputs.len());
        for message in inputs {
            let memory = self.completion.hold_memory(message.payload.len() as u64);
            let turn = self.order.take(&message.key);
            accepted.seqs.push(Seq(0));
            self.after_ack(
                message,
                InputSeq::Unjournaled,
                Some(memory),
                turn,
                &mut accepted,
            );
        }
        accepted
    }

    /// `rbml` (and `hml` without a handler): the inputs are durable before their acks; the
    /// handler, if any, is called after that.
    async fn input_first(self: &Arc<Self>, inputs: Vec<Message>) -> Result<Accepted, IngestError> {
        // Turns first: the key's order is the order in which requests reach the journal.
        let turns: Vec<_> = inputs.iter().map(|m| self.order.take(&m.key)).collect();
        let Appended { seqs, inputs } = self
            .journal
            .append_inputs_returning(inputs, self.clock.now_ms())
            .await?;
        let mut accepted = Accepted::with_capacity(seqs.len());
        for ((message, seq), turn) in inputs.into_iter().zip(&seqs).zip(turns) {
            self.after_ack(message, InputSeq::Known(*seq), None, turn, &mut accepted);
        }
        accepted.seqs = seqs;
        Ok(accepted)
    }

    /// `hml`: the inputs' durable write is queued first; the handler runs while it commits, and
    /// each continuation waits for its input's sequence before it records outputs.
    async fn hybrid(self: &Arc<Self>, inputs: Vec<Message>) -> Result<Accepted, IngestError> {
        let write = self
            .journal
            .start_append_inputs(inputs.clone(), self.clock.now_ms())
            .await?;
        let mut seq_senders = Vec::with_capacity(inputs.len());
        for message in inputs {
            let (tx, rx) = oneshot::channel();
            seq_senders.push(tx);
            let turn = self.order.take(&message.key);
            self.spawn_continuation(message, InputSeq::Pending(rx), Call::Live, None, turn);
        }
        let seqs = write.await.map_err(|_| JournalError::Closed)??.seqs;
        for (tx, seq) in seq_senders.into_iter().zip(&seqs) {
            // A continuation that ended early no longer needs its sequence.
            let _ = tx.send(*seq);
        }
        Ok(Accepted {
            seqs,
            pass_on: Vec::new(),
        })
    }

    /// `sbml`: calls the handler on every input (without one, each input is its own output),
    /// makes the outputs durable, and queues them for delivery after that, in each key's turn.
    /// An input's ack carries the sequence of its first output (or of its dead letter).
    async fn outputs_first(
        self: &Arc<Self>,
        inputs: Vec<Message>,
    ) -> Result<Accepted, IngestError> {
        let turns: Vec<Option<Turn>> = inputs.iter().map(|m| self.order.take(&m.key)).collect();
        let calls: Vec<_> = inputs
            .iter()
            .map(|m| {
                (!self.plan.pass_through).then(|| {
                    let (pipeline, m) = (self.clone(), m.clone());
                    sidelog_runtime::spawn(
                        async move { pipeline.handler.run(&m, Call::Live).await },
                    )
                })
            })
            .collect();
        let mut groups = Vec::with_capacity(inputs.len());
        for (input, call) in inputs.into_iter().zip(calls) {
            let dedup_id = Some(input.id.clone());
            let Some(call) = call else {
                groups.push(sbml_group(dedup_id, vec![input], None));
                continue;
            };
            let outcome = call
                .await
                .map_err(|e| IngestError::Failed(format!("handler task failed: {e}")))?;
            // A dead input's letter is written with the group: one transaction, and the ack
            // carries the dead letter's sequence.
            groups.push(match outcome {
                HandleOutcome::Outputs(outputs) => sbml_group(dedup_id, outputs, None),
                HandleOutcome::Dead { reason, attempts } => {
                    let letter = self
                        .completion
                        .dead_input_letter(input, None, reason, attempts);
                    sbml_group(dedup_id, Vec::new(), Some(letter))
                }
            });
        }
        let recorded = self.journal.record_outputs(groups.clone(), true).await?;
        let seqs = recorded.iter().map(|r| r.ack_seq).collect();
        let pipeline = self.clone();
        sidelog_runtime::spawn(async move {
            for ((group, rec), turn) in groups.into_iter().zip(recorded).zip(turns) {
                if let Some(turn) = &turn {
                    turn.ready().await;
                }
                for (message, seq) in group.outputs.into_iter().zip(rec.output_seqs) {
                    let item = DeliveryItem::new(message, Some(seq), None, pipeline.now_ms());
                    pipeline.send(item).await;
                }
            }
        });
        Ok(Accepted {
            seqs,
            pass_on: Vec::new(),
        })
    }

    /// What follows an accepted input's ack: with a handler, its continuation, started now;
    /// without one, the input as its own output joins `accepted.pass_on`.
    fn after_ack(
        self: &Arc<Self>,
        input: Message,
        input_seq: InputSeq,
        memory: Option<MemoryPermit>,
        turn: Option<Turn>,
        accepted: &mut Accepted,
    ) {
        if !self.plan.pass_through {
            self.spawn_continuation(input, input_seq, Call::Live, memory, turn);
            return;
        }
        let input_seq = match input_seq {
            InputSeq::Known(seq) => Some(seq),
            // A pass-through plan waits for no write (hml without a handler is input-first).
            InputSeq::Pending(_) | InputSeq::Unjournaled => None,
        };
        let mut item = DeliveryItem::new(input, None, input_seq, 0);
        item.memory = memory;
        accepted.pass_on.push((turn, item));
    }

    /// Queues accepted pass-through inputs for delivery, each in its key's turn (held until
    /// it is queued): what a continuation does, without a task per message. Queued here as long
    /// as each one's turn has come and its lane has room; from the first that would wait, in a
    /// task of its own, in order.
    pub(super) fn pass_on(self: &Arc<Self>, items: Vec<PassOn>) {
        let mut items = items.into_iter();
        while let Some((turn, mut item)) = items.next() {
            let waiting = if turn.as_ref().is_none_or(Turn::is_ready) {
                item.written_at_ms = self.clock.now_ms();
                match self.delivery().try_send(item) {
                    Ok(()) => continue,
                    Err(TrySend::Full(item)) => *item,
                    Err(TrySend::Closed(_)) => {
                        // Shutting down: journaled entries are re-sent after the restart.
                        debug!("delivery stopped; output left in the journal");
                        return;
                    }
                }
            } else {
                item
            };
            let rest: Vec<PassOn> = std::iter::once((turn, waiting)).chain(items).collect();
            let pipeline = self.clone();
            sidelog_runtime::spawn(async move { pipeline.pass_on_waiting(rest).await });
            return;
        }
    }

    /// The rest of [`Pipeline::pass_on`], waiting for each turn and for room in each lane.
    async fn pass_on_waiting(&self, items: Vec<PassOn>) {
        for (turn, mut item) in items {
            if let Some(turn) = &turn {
                turn.ready().await;
            }
            item.written_at_ms = self.clock.now_ms();
            self.send(item).await;
        }
    }
}

impl Accepted {
    fn with_capacity(n: usize) -> Self {
        Accepted {
            seqs: Vec::with_capacity(n),
            pass_on: Vec::new(),
        }
    }
}

/// The record of one sbml input: its outputs (or its dead letter) and its id, for the dedup
/// window, in one transaction.
fn sbml_group(
    dedup_id: Option<String>,
    outputs: Vec<Message>,
    dead: Option<sidelog_journal::NewDeadLetter>,
) -> OutputGroup {
    OutputGroup {
        input_seq: None,
        dedup_id,
        outputs,
        dead,
    }
}
