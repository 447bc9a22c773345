//! What a [`Journal`](super::Journal) handle asks of the writer: a write (applied in the next
//! group commit, answered after it), a read (answered at once from a read transaction), or a
//! close. Each command carries the channel its caller awaits; a write also carries its outcome
//! from the moment it is applied until its commit has returned.

use tokio::sync::oneshot;

use super::error::{JournalError, Result};
use super::types::{
    Appended, DeadLetterSelection, DedupRecord, DeliveryProgress, DeliveryState, NewDeadLetter,
    OutputGroup, RecordedOutputs, ScanLimit, Seq, StoredDeadLetter, StoredInput, StoredOutput,
    Summary,
};
use sidelog_proto::v1::Message;

pub(super) type Reply<T> = oneshot::Sender<Result<T>>;

pub(super) enum Command {
    Write(Write),
    Read(Read),
    /// Make everything durable, then release the file; later commands fail with `Closed`.
    Close(Reply<()>),
}

/// An answer owed to the caller of a write: its channel (none for fire-and-forget completion
/// marks) and, once applied, the outcome to send when the commit has returned.
pub(super) struct Answer<T> {
    reply: Option<Reply<T>>,
    outcome: Option<T>,
}

impl<T> Answer<T> {
    pub(super) fn to(reply: Reply<T>) -> Self {
        Answer {
            reply: Some(reply),
            outcome: None,
        }
    }

    /// Nobody waits for this write.
    pub(super) fn none() -> Self {
        Answer {
            reply: None,
            outcome: None,
        }
    }

    pub(super) fn set(&mut self, outcome: T) {
        self.outcome = Some(outcome);
    }

    fn ok(self) {
        if let Some(reply) = self.reply {
            let outcome = self
                .outcome
                .expect("a write is applied before its commit is answered");
            // A caller that stopped waiting has nothing to be told.
            drop(reply.send(Ok(outcome)));
        }
    }

    fn err(self, err: JournalError) {
        if let Some(reply) = self.reply {
            drop(reply.send(Err(err)));
        }
    }
}

/// A change to the journal, applied inside the writer's next transaction.
pub(super) enum Write {
    AppendInputs {
        inputs: Vec<Message>,
        received_at_ms: i64,
        answer: Answer<Appended>,
    },
    RecordOutputs {
        groups: Vec<OutputGroup>,
        durable: bool,
        answer: Answer<Vec<RecordedOutputs>>,
    },
    Complete {
        outputs: Vec<Seq>,
        inputs: Vec<Seq>,
        answer: Answer<()>,
    },
    DeadLetter {
        letters: Vec<NewDeadLetter>,
        answer: Answer<Vec<Seq>>,
    },
    Sync {
        answer: Answer<()>,
    },
    /// A sink's delivery progress, after the marks it covers (not durable, like them).
    Progress {
        progress: DeliveryProgress,
        answer: Answer<()>,
    },
    /// From the sync ticker: make non-durable commits durable, if there are any.
    SyncIfDirty,
    /// Moves dead letters back into the backlog under new sequences (each into a new block
    /// as the input or output it was), durably; answers the new sequences, contiguous.
    Requeue {
        selection: DeadLetterSelection,
        answer: Answer<Vec<Seq>>,
    },
    /// Deletes dead letters for good, durably; answers how many.
    Purge {
        selection: DeadLetterSelection,
        answer: Answer<u64>,
    },
}

impl Write {
    pub(super) fn needs_durability(&self) -> bool {
        match self {
            Write::AppendInputs { .. }
            | Write::DeadLetter { .. }
            | Write::Sync { .. }
            | Write::Requeue { .. }
            | Write::Purge { .. } => true,
            Write::RecordOutputs { durable, .. } => *durable,
            Write::Complete { .. } | Write::Progress { .. } | Write::SyncIfDirty => false,
        }
    }

    /// Records this write touches, for the group's size limit.
    pub(super) fn records(&self) -> usize {
        match self {
            Write::Complete {
                outputs, inputs, ..
            } => outputs.len() + inputs.len(),
            Write::AppendInputs { .. } | Write::RecordOutputs { .. } | Write::DeadLetter { .. } => {
                self.seqs_taken()
            }
            _ => 1,
        }
    }

    /// Sequences a write takes at most, for the durable-floor check. A re-queue may take any
    /// number, but it is durable anyway.
    pub(super) fn seqs_taken(&self) -> usize {
        match self {
            Write::AppendInputs { inputs, .. } => inputs.len(),
            Write::RecordOutputs { groups, .. } => {
                groups.iter().map(|g| g.outputs.len().max(1)).sum()
            }
            Write::DeadLetter { letters, .. } => letters.len(),
            _ => 0,
        }
    }

    /// Whether this write only removes entries (it may use the store's headroom when full).
    pub(super) fn is_removal(&self) -> bool {
        matches!(self, Write::Complete { .. } | Write::Purge { .. })
    }

    /// Its commit returned: answers the caller with the outcome applied.
    pub(super) fn finish(self) {
        match self {
            Write::AppendInputs {
                mut answer, inputs, ..
            } => {
                // The inputs stay in the write until its commit has returned and go back with
                // the outcome; a failed write drops them with its error.
                if let Some(appended) = answer.outcome.as_mut() {
                    appended.inputs = inputs;
                }
                answer.ok()
            }
            Write::DeadLetter { answer, .. } | Write::Requeue { answer, .. } => answer.ok(),
            Write::RecordOutputs { answer, .. } => answer.ok(),
            Write::Complete { answer, .. } | Write::Sync { answer } => answer.ok(),
            Write::Purge { answer, .. } => answer.ok(),
            Write::Progress { answer, .. } => answer.ok(),
            Write::SyncIfDirty => {}
        }
    }

    pub(super) fn fail(self, err: JournalError) {
        match self {
            Write::AppendInputs { answer, .. } => answer.err(err),
            Write::DeadLetter { answer, .. } | Write::Requeue { answer, .. } => answer.err(err),
            Write::RecordOutputs { answer, .. } => answer.err(err),
            Write::Complete { answer, .. } | Write::Sync { answer } => answer.err(err),
            Write::Purge { answer, .. } => answer.err(err),
            Write::Progress { answer, .. } => answer.err(err),
            Write::SyncIfDirty => {}
        }
    }
}

/// A look at the journal, served from a read transaction after the group's commit.
pub(super) enum Read {
    ScanInputs {
        from: Seq,
        limit: ScanLimit,
        reply: Reply<Vec<StoredInput>>,
    },
    ScanOutputs {
        from: Seq,
        limit: ScanLimit,
        reply: Reply<Vec<StoredOutput>>,
    },
    ScanDeadLetters {
        from: Seq,
        limit: usize,
        reply: Reply<Vec<StoredDeadLetter>>,
    },
    LoadDedup {
        reply: Reply<Vec<DedupRecord>>,
    },
    Summary {
        reply: Reply<Summary>,
    },
    /// When the oldest backlog entry was written, unix ms (`None`: the backlog is empty).
    OldestBacklog {
        reply: Reply<Option<i64>>,
    },
    DeliveryState {
        reply: Reply<DeliveryState>,
    },
}

impl Read {
    pub(super) fn fail(self, err: JournalError) {
        // A caller that stopped waiting has nothing to be told.
        match self {
            Read::ScanInputs { reply, .. } => drop(reply.send(Err(err))),
            Read::ScanOutputs { reply, .. } => drop(reply.send(Err(err))),
            Read::ScanDeadLetters { reply, .. } => drop(reply.send(Err(err))),
            Read::LoadDedup { reply } => drop(reply.send(Err(err))),
            Read::Summary { reply } => drop(reply.send(Err(err))),
            Read::OldestBacklog { reply } => drop(reply.send(Err(err))),
            Read::DeliveryState { reply } => drop(reply.send(Err(err))),
        }
    }
}

impl Command {
    pub(super) fn fail(self, err: JournalError) {
        match self {
            Command::Write(w) => w.fail(err),
            Command::Read(r) => r.fail(err),
            Command::Close(reply) => drop(reply.send(Err(err))),
        }
    }
}
