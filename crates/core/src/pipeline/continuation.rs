//! After the ack (or in a replay): the handler's call, recording its outputs if the plan says
//! so, and queueing them for delivery in their key's order. [`Pipeline::send`] is the one route
//! into delivery: the intake's pass-on, every continuation, sbml's recorded outputs and every
//! replayed entry go through it.

use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::handler::{Call, HandleOutcome};
use super::order::Turn;
use super::publish::Pipeline;
use crate::delivery::{DeliveryItem, MemoryPermit};
use sidelog_journal::{JournalError, OutputGroup, Seq};
use sidelog_proto::v1::Message;

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

impl Pipeline {
    /// Calls the handler, then, once `turn` comes (order per key), records the outputs if the
    /// plan says so and queues them for delivery. `memory` (mode `none`) is the input's; its
    /// outputs take their own.
    pub fn spawn_continuation(
        self: &Arc<Self>,
        input: Message,
        input_seq: InputSeq,
        call: Call,
        memory: Option<MemoryPermit>,
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
            match outcome {
                HandleOutcome::Outputs(outputs) => {
                    pipeline.dispatch(outputs, input_seq, memory, turn).await;
                }
                HandleOutcome::Dead { reason, attempts } => {
                    drop(memory);
                    pipeline
                        .completion
                        .input_dead(input, input_seq, reason, attempts)
                        .await;
                }
            }
        })
    }

    /// Queues an input's outputs for delivery, recording them first if the plan says so, in
    /// `turn`'s order (order per key): the record is queued in turn, and the outputs are queued
    /// for delivery in turn, but the key is not held while the journal writes.
    async fn dispatch(
        &self,
        outputs: Vec<Message>,
        input_seq: Option<Seq>,
        input_memory: Option<MemoryPermit>,
        mut turn: Option<Turn>,
    ) {
        if let Some(t) = &turn {
            t.ready().await;
        }
        let recorded: Option<Vec<Seq>> =
            if self.plan.records_outputs_after_handler() && input_seq.is_some() {
                let queued = self.record(&outputs, input_seq).await;
                // Sequenced in queue order: the key's next input may queue its record now.
                turn = turn.map(|t| t.then(&self.delivery_order));
                queued.await
            } else {
                None
            };
        if let Some(t) = &turn {
            t.ready().await;
        }
        if let Some(input) = input_seq {
            if outputs.is_empty() {
                // Recording an empty group completes the input; otherwise complete it here.
                if recorded.is_none()
                    && let Err(e) = self.journal.complete(Vec::new(), vec![input]).await
                {
                    warn!(error = %e, "cannot complete an input with no outputs");
                }
                return;
            }
            // One output finishes its input when it is delivered, which is what an input
            // registered nowhere means to completion: only several are counted.
            if outputs.len() > 1 {
                self.completion.expect(input, outputs.len() as u32);
            }
        }
        // Mode none: each output holds its own bytes; the input's are released.
        let memory: Vec<Option<MemoryPermit>> = outputs
            .iter()
            .map(|m| {
                input_memory
                    .as_ref()
                    .map(|_| self.completion.hold_memory(m.payload.len() as u64))
            })
            .collect();
        drop(input_memory);
        let mut output_seqs = recorded.into_iter().flatten();
        for (message, memory) in outputs.into_iter().zip(memory) {
            let mut item = DeliveryItem::new(message, output_seqs.next(), input_seq, self.now_ms());
            item.memory = memory;
            self.send(item).await;
        }
    }

    /// Queues the record of an input's outputs (without fsync); the returned future answers
    /// their sequences once written, or `None` when they could not be: then the input stays in
    /// the journal and delivery goes ahead; the input is completed once its outputs are
    /// delivered, and a crash before that handles it again.
    async fn record(
        &self,
        outputs: &[Message],
        input_seq: Option<Seq>,
    ) -> impl std::future::Future<Output = Option<Vec<Seq>>> + use<> {
        let group = OutputGroup {
            input_seq,
            dedup_id: None,
            outputs: outputs.to_vec(),
            dead: None,
        };
        let queued = self.journal.start_record_outputs(vec![group], false).await;
        async move {
            let written = match queued {
                Ok(rx) => rx.await.unwrap_or(Err(JournalError::Closed)),
                Err(e) => Err(e),
            };
            match written {
                Ok(mut recorded) => recorded.pop().map(|r| r.output_seqs),
                Err(e) => {
                    warn!(error = %e, "cannot record outputs; delivering without them");
                    None
                }
            }
        }
    }

    /// Queues one output for delivery, waiting while its lane is full (its lane gives it its
    /// `sidelog-seq` header).
    pub async fn send(&self, item: DeliveryItem) {
        if self.delivery().send(item).await.is_err() {
            // Shutting down: journaled entries are re-sent after the restart.
            debug!("delivery stopped; output left in the journal");
        }
    }
}
