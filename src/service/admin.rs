//! The `sidelog.v1.Admin` service: what the journal holds, and the dead letters.
//!
//! `serve` runs it on its own listener (`admin_listen`, loopback by default, behind the same
//! token and TLS as ingest). `sidelog inspect` calls it, or, with no server running, builds one
//! over the journal file it opened itself (no pipeline: re-queued entries are then replayed by
//! the next start instead of at once).

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::info;

use crate::journal::{DeadLetterSelection, InputState, Journal, JournalError, Seq};
use crate::pipeline::{Pipeline, RequeueError};
use crate::proto::admin_server::Admin;
use crate::proto::journal::dead_letter;
use crate::proto::{
    Entry, GetEntryRequest, ListRequest, ListResponse, PurgeResponse, RequeueResponse,
    SelectDeadLetters, SummaryRequest, SummaryResponse, entry,
};
use crate::runtime::SharedClock;

/// Entries one list call returns when the request does not say.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// Entries one list call returns at most.
pub const MAX_LIST_LIMIT: u32 = 10_000;

/// The running server's side of the admin service, absent when `inspect` reads a file.
#[derive(Debug, Clone)]
pub struct Live {
    pub pipeline: Arc<Pipeline>,
}

#[derive(Debug, Clone)]
pub struct AdminService {
    journal: Journal,
    clock: SharedClock,
    live: Option<Live>,
}

impl AdminService {
    /// Whether the running sidelog has no handler (unknown when `inspect` reads a file).
    fn pass_through(&self) -> bool {
        self.live
            .as_ref()
            .is_some_and(|l| l.pipeline.is_pass_through())
    }

    pub fn new(journal: Journal, clock: SharedClock, live: Option<Live>) -> Self {
        AdminService {
            journal,
            clock,
            live,
        }
    }
}

fn status(e: JournalError) -> Status {
    match e {
        JournalError::StorageFull(m) => Status::resource_exhausted(m.to_string()),
        JournalError::Closed => Status::unavailable("the journal is closed (shutting down)"),
        e => Status::internal(e.to_string()),
    }
}

fn limit(request: &ListRequest) -> usize {
    let n = match request.limit {
        0 => DEFAULT_LIST_LIMIT,
        n => n.min(MAX_LIST_LIMIT),
    };
    n as usize
}

fn selection(request: &SelectDeadLetters) -> Result<DeadLetterSelection, Status> {
    match (request.all, request.sequences.is_empty()) {
        (true, true) => Ok(DeadLetterSelection::All),
        (false, false) => Ok(DeadLetterSelection::Seqs(
            request.sequences.iter().map(|s| Seq(*s)).collect(),
        )),
        (true, false) => Err(Status::invalid_argument(
            "give either sequences or all, not both",
        )),
        (false, true) => Err(Status::invalid_argument(
            "no dead letters selected: give sequences, or all = true",
        )),
    }
}

/// Lists leave payloads out; `GetEntry` has them.
fn without_payload(mut entry: Entry) -> Entry {
    if let Some(m) = entry.message.as_mut() {
        m.payload = Default::default();
    }
    entry
}

/// An input as `inspect` shows it. `pass_through`: sidelog runs without a handler (known only
/// when it runs), so an input with nothing recorded is waiting for delivery, not for a handler.
fn input_entry(input: crate::journal::StoredInput, pass_through: bool) -> Entry {
    let message = input.entry.message.unwrap_or_default();
    Entry {
        sequence: input.seq.0,
        table: entry::Table::Input as i32,
        payload_bytes: message.payload.len() as u64,
        message: Some(message),
        written_at_ms: input.entry.received_at_ms,
        state: match input.state {
            InputState::Unhandled if pass_through => "undelivered (pass-through)",
            InputState::Unhandled => "unhandled",
            InputState::OutputsPending => "outputs_pending",
            InputState::Finished => "finished",
        }
        .into(),
        ..Entry::default()
    }
}

fn output_entry(output: crate::journal::StoredOutput) -> Entry {
    let message = output.entry.message.unwrap_or_default();
    Entry {
        sequence: output.seq.0,
        table: entry::Table::Output as i32,
        payload_bytes: message.payload.len() as u64,
        message: Some(message),
        written_at_ms: output.entry.recorded_at_ms,
        input_sequence: output.entry.input_seq,
        ..Entry::default()
    }
}

fn dead_entry(dead: crate::journal::StoredDeadLetter) -> Entry {
    let letter = dead.letter;
    let message = letter.message.unwrap_or_default();
    Entry {
        sequence: dead.seq.0,
        table: entry::Table::DeadLetter as i32,
        payload_bytes: message.payload.len() as u64,
        message: Some(message),
        written_at_ms: letter.dead_at_ms,
        input_sequence: letter.input_seq,
        reason: letter.reason,
        attempts: letter.attempts,
        dead_kind: match dead_letter::Kind::try_from(letter.kind) {
            Ok(dead_letter::Kind::Input) => "input",
            Ok(dead_letter::Kind::Output) => "output",
            _ => "unknown",
        }
        .into(),
        ..Entry::default()
    }
}

fn page(entries: Vec<Entry>, limit: usize) -> ListResponse {
    let next_from_sequence = match entries.last() {
        Some(last) if entries.len() == limit => last.sequence + 1,
        _ => 0,
    };
    ListResponse {
        entries: entries.into_iter().map(without_payload).collect(),
        next_from_sequence,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn summary(
        &self,
        _request: Request<SummaryRequest>,
    ) -> Result<Response<SummaryResponse>, Status> {
        let s = self.journal.summary().await.map_err(status)?;
        let now = self.clock.now_ms();
        let journal_file_bytes = std::fs::metadata(self.journal.path()).map_or(0, |m| m.len());
        Ok(Response::new(SummaryResponse {
            backlog_inputs: s.inputs,
            backlog_outputs: s.outputs,
            backlog_bytes: s.backlog_bytes,
            dead_letters: s.dead_letters,
            dedup_ids: s.dedup_ids,
            next_sequence: s.next_seq,
            oldest_backlog_ms: s.oldest_backlog_ms.unwrap_or(0),
            oldest_backlog_age_ms: s.oldest_backlog_ms.map_or(0, |t| (now - t).max(0)),
            journal_file_bytes,
            journal_path: self.journal.path().display().to_string(),
            mode: self
                .live
                .as_ref()
                .map(|l| l.pipeline.mode().to_string())
                .unwrap_or_default(),
            serving: self.live.as_ref().is_some_and(|l| l.pipeline.is_serving()),
        }))
    }

    async fn list_backlog(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<ListResponse>, Status> {
        let request = request.into_inner();
        let (from, limit) = (Seq(request.from_sequence), limit(&request));
        let inputs = self
            .journal
            .scan_inputs(from, limit)
            .await
            .map_err(status)?;
        let outputs = self
            .journal
            .scan_outputs(from, limit)
            .await
            .map_err(status)?;
        let mut entries: Vec<Entry> = inputs
            .into_iter()
            .map(|i| input_entry(i, self.pass_through()))
            .chain(outputs.into_iter().map(output_entry))
            .collect();
        entries.sort_by_key(|e| e.sequence);
        entries.truncate(limit);
        Ok(Response::new(page(entries, limit)))
    }

    async fn list_dead_letters(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<ListResponse>, Status> {
        let request = request.into_inner();
        let (from, limit) = (Seq(request.from_sequence), limit(&request));
        let dead = self
            .journal
            .scan_dead_letters(from, limit)
            .await
            .map_err(status)?;
        let entries = dead.into_iter().map(dead_entry).collect();
        Ok(Response::new(page(entries, limit)))
    }

    async fn get_entry(
        &self,
        request: Request<GetEntryRequest>,
    ) -> Result<Response<Entry>, Status> {
        let seq = Seq(request.into_inner().sequence);
        if let Some(i) = self
            .journal
            .scan_inputs(seq, 1)
            .await
            .map_err(status)?
            .into_iter()
            .find(|i| i.seq == seq)
        {
            return Ok(Response::new(input_entry(i, self.pass_through())));
        }
        if let Some(o) = self
            .journal
            .scan_outputs(seq, 1)
            .await
            .map_err(status)?
            .into_iter()
            .find(|o| o.seq == seq)
        {
            return Ok(Response::new(output_entry(o)));
        }
        if let Some(d) = self
            .journal
            .scan_dead_letters(seq, 1)
            .await
            .map_err(status)?
            .into_iter()
            .find(|d| d.seq == seq)
        {
            return Ok(Response::new(dead_entry(d)));
        }
        Err(Status::not_found(format!(
            "no entry with sequence {}: it was never written, or it was delivered, completed or purged",
            seq.0
        )))
    }

    async fn requeue(
        &self,
        request: Request<SelectDeadLetters>,
    ) -> Result<Response<RequeueResponse>, Status> {
        let selection = selection(request.get_ref())?;
        let seqs = match &self.live {
            // The running pipeline moves them back and dispatches them.
            Some(live) => live
                .pipeline
                .requeue_dead_letters(selection)
                .await
                .map_err(|e| match e {
                    RequeueError::ReplayUnderWay => Status::unavailable(e.to_string()),
                    RequeueError::Journal(e) => status(e),
                })?,
            // Over a file `inspect` opened: the next start replays them.
            None => self
                .journal
                .requeue_dead_letters(selection)
                .await
                .map_err(status)?,
        };
        metrics::counter!(crate::metrics::DEAD_LETTERS_HANDLED, "action" => "requeue")
            .increment(seqs.len() as u64);
        info!(
            entries = seqs.len(),
            "dead letters re-queued by an operator"
        );
        Ok(Response::new(RequeueResponse {
            requeued: seqs.len() as u64,
            new_sequences: seqs.into_iter().map(|s| s.0).collect(),
        }))
    }

    async fn purge(
        &self,
        request: Request<SelectDeadLetters>,
    ) -> Result<Response<PurgeResponse>, Status> {
        let selection = selection(request.get_ref())?;
        let purged = self
            .journal
            .purge_dead_letters(selection)
            .await
            .map_err(status)?;
        metrics::counter!(crate::metrics::DEAD_LETTERS_HANDLED, "action" => "purge")
            .increment(purged);
        info!(entries = purged, "dead letters purged by an operator");
        Ok(Response::new(PurgeResponse { purged }))
    }
}
