//! The tables (see the layout in `mod.rs`) and what each command does to them: the writes
//! applied inside the writer's transaction ([`Tables`]), the reads answered from a read
//! transaction ([`answer`]), and the counters read at open ([`load_state`]).

use std::path::Path;

use redb::{
    Database, ReadTransaction, ReadableDatabase as _, ReadableTable as _,
    ReadableTableMetadata as _, TableDefinition, WriteTransaction,
};

use super::command::{Read, Write};
use super::config::JournalConfig;
use super::error::Failure;
use super::record::{FILE_FORMAT, decode_record, encode_input, encode_output, encode_record};
use super::types::{
    DeadLetterSelection, DedupRecord, EntryRef, InputState, NewDeadLetter, OutputGroup,
    RecordedOutputs, Seq, StoredDeadLetter, StoredInput, StoredOutput, Summary,
};
use crate::proto::Message;
use crate::proto::journal::{DeadLetter, InputEntry, OutputEntry, dead_letter};

pub(super) const INPUTS: TableDefinition<u64, &[u8]> = TableDefinition::new("inputs");
pub(super) const OUTPUTS: TableDefinition<u64, &[u8]> = TableDefinition::new("outputs");
const RECORDED: TableDefinition<u64, (u64, u32)> = TableDefinition::new("recorded");
pub(super) const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
pub(super) const DEDUP: TableDefinition<&str, (u64, i64)> = TableDefinition::new("dedup");
const DEDUP_ORDER: TableDefinition<u64, &str> = TableDefinition::new("dedup_order");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub(super) const META_FORMAT: &str = "format";
const META_SEQ_FLOOR: &str = "seq_floor";
const META_BACKLOG_BYTES: &str = "backlog_bytes";
const META_BACKLOG_ENTRIES: &str = "backlog_entries";

/// Dedup entries evicted per commit beyond the ones the commit inserted, so that age-based
/// eviction catches up without making one transaction unboundedly large.
const EVICT_EXTRA_PER_COMMIT: usize = 1024;

type Step<T = ()> = std::result::Result<T, Failure>;

/// The counters and shape of the file, read when it is opened.
pub(super) struct FileState {
    pub seq_floor: u64,
    pub backlog_bytes: u64,
    pub backlog_entries: u64,
    /// The highest key in any table.
    pub max_key: u64,
    pub dedup_len: u64,
}

/// Reads the counters from `meta`, creating the tables on a new file. A file of another format
/// is refused before anything is written to it.
pub(super) fn load_state(db: &Database, path: &Path) -> Step<FileState> {
    let txn = db.begin_write()?;
    let state = {
        let mut meta = txn.open_table(META)?;
        let inputs = txn.open_table(INPUTS)?;
        let outputs = txn.open_table(OUTPUTS)?;
        let dead = txn.open_table(DEAD_LETTERS)?;
        let order = txn.open_table(DEDUP_ORDER)?;
        txn.open_table(RECORDED)?;
        txn.open_table(DEDUP)?;
        let stored_format = meta.get(META_FORMAT)?.map(|v| v.value());
        let format = match stored_format {
            Some(f) => f,
            None => {
                meta.insert(META_FORMAT, FILE_FORMAT)?;
                FILE_FORMAT
            }
        };
        if format != FILE_FORMAT {
            return Err(Failure::Journal(super::JournalError::Format {
                path: path.to_owned(),
                found: format,
            }));
        }
        let last_keys = [
            inputs.last()?.map(|(k, _)| k.value()),
            outputs.last()?.map(|(k, _)| k.value()),
            dead.last()?.map(|(k, _)| k.value()),
            order.last()?.map(|(k, _)| k.value()),
        ];
        let get = |k: &str| -> Step<Option<u64>> { Ok(meta.get(k)?.map(|v| v.value())) };
        FileState {
            seq_floor: get(META_SEQ_FLOOR)?.unwrap_or(1),
            backlog_bytes: get(META_BACKLOG_BYTES)?.unwrap_or(0),
            backlog_entries: get(META_BACKLOG_ENTRIES)?.unwrap_or(0),
            max_key: last_keys.into_iter().flatten().max().unwrap_or(0),
            dedup_len: order.len()?,
        }
    };
    txn.commit()?;
    Ok(state)
}

/// Which table a new record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NewRecord {
    Input,
    Output,
    DeadLetter,
}

/// The open tables of one write transaction, and what it changed.
pub(super) struct Tables<'txn> {
    inputs: redb::Table<'txn, u64, &'static [u8]>,
    outputs: redb::Table<'txn, u64, &'static [u8]>,
    recorded: redb::Table<'txn, u64, (u64, u32)>,
    dead: redb::Table<'txn, u64, &'static [u8]>,
    dedup: redb::Table<'txn, &'static str, (u64, i64)>,
    dedup_order: redb::Table<'txn, u64, &'static str>,
    meta: redb::Table<'txn, &'static str, u64>,
    pub next_seq: &'txn mut u64,
    dedup_len: &'txn mut u64,
    pub bytes_delta: i64,
    pub entries_delta: i64,
    dedup_inserted: usize,
    /// Records and their encoded bytes written by this transaction (metrics).
    pub written_records: u64,
    pub written_bytes: u64,
    now: i64,
}

impl<'txn> Tables<'txn> {
    pub(super) fn open(
        txn: &'txn WriteTransaction,
        next_seq: &'txn mut u64,
        dedup_len: &'txn mut u64,
        now: i64,
    ) -> Step<Self> {
        Ok(Tables {
            inputs: txn.open_table(INPUTS)?,
            outputs: txn.open_table(OUTPUTS)?,
            recorded: txn.open_table(RECORDED)?,
            dead: txn.open_table(DEAD_LETTERS)?,
            dedup: txn.open_table(DEDUP)?,
            dedup_order: txn.open_table(DEDUP_ORDER)?,
            meta: txn.open_table(META)?,
            next_seq,
            dedup_len,
            bytes_delta: 0,
            entries_delta: 0,
            dedup_inserted: 0,
            written_records: 0,
            written_bytes: 0,
            now,
        })
    }
}

impl Tables<'_> {
    fn take_seq(&mut self) -> Seq {
        let seq = *self.next_seq;
        *self.next_seq += 1;
        Seq(seq)
    }

    /// Applies one write, keeping its outcome in it until the commit is answered.
    pub(super) fn apply(&mut self, cmd: &mut Write) -> Step {
        match cmd {
            Write::AppendInputs {
                inputs,
                received_at_ms,
                answer,
            } => answer.set(self.append_inputs(inputs, *received_at_ms)?),
            Write::RecordOutputs { groups, answer, .. } => answer.set(self.record_outputs(groups)?),
            Write::Complete {
                outputs,
                inputs,
                answer,
            } => {
                for seq in outputs.iter() {
                    self.remove_output(*seq)?;
                }
                for seq in inputs.iter() {
                    self.remove_input(*seq)?;
                }
                answer.set(());
            }
            Write::DeadLetter { letters, answer } => answer.set(self.dead_letter(letters)?),
            Write::Requeue { selection, answer } => answer.set(self.requeue(selection)?),
            Write::Purge { selection, answer } => {
                let mut purged = 0;
                for seq in self.select_dead(selection)? {
                    if self.dead.remove(seq.0)?.is_some() {
                        purged += 1;
                    }
                }
                answer.set(purged);
            }
            Write::Sync { answer } => answer.set(()),
            Write::SyncIfDirty => {}
        }
        Ok(())
    }

    fn append_inputs(&mut self, inputs: &[Message], received_at_ms: i64) -> Step<Vec<Seq>> {
        let mut seqs = Vec::with_capacity(inputs.len());
        for message in inputs {
            let seq = self.take_seq();
            let record = encode_input(message, received_at_ms);
            self.insert_new(NewRecord::Input, seq, &record)?;
            self.remember_id(&message.id, seq)?;
            seqs.push(seq);
        }
        Ok(seqs)
    }

    fn record_outputs(&mut self, groups: &[OutputGroup]) -> Step<Vec<RecordedOutputs>> {
        let mut recorded = Vec::with_capacity(groups.len());
        for group in groups {
            let mut output_seqs = Vec::with_capacity(group.outputs.len());
            for message in &group.outputs {
                let seq = self.take_seq();
                let record = encode_output(message, group.input_seq.map_or(0, |s| s.0), self.now);
                self.insert_new(NewRecord::Output, seq, &record)?;
                output_seqs.push(seq);
            }
            if let Some(input) = group.input_seq {
                if group.outputs.is_empty() {
                    self.remove_input(input)?;
                } else {
                    let first = output_seqs.first().expect("outputs is not empty").0;
                    self.recorded
                        .insert(input.0, (first, group.outputs.len() as u32))?;
                }
            }
            let ack_seq = match (&group.dead, output_seqs.first()) {
                (Some(letter), _) => self.dead_letter(std::slice::from_ref(letter))?[0],
                (None, Some(first)) => *first,
                (None, None) => self.take_seq(),
            };
            if let Some(id) = &group.dedup_id {
                self.remember_id(id, ack_seq)?;
            }
            recorded.push(RecordedOutputs {
                output_seqs,
                ack_seq,
            });
        }
        Ok(recorded)
    }

    fn dead_letter(&mut self, letters: &[NewDeadLetter]) -> Step<Vec<Seq>> {
        let mut seqs = Vec::with_capacity(letters.len());
        for letter in letters {
            match letter.remove {
                Some(EntryRef::Input(seq)) => self.remove_input(seq)?,
                Some(EntryRef::Output(seq)) => self.remove_output(seq)?,
                None => {}
            }
            if let Some(input) = letter.complete_input {
                self.remove_input(input)?;
            }
            // One message, one sequence: a letter that replaces an entry keeps its sequence (the
            // one its ack or its `sidelog-seq` carried); a letter for an entry never journaled
            // (sbml's refused input), or one dead-lettered twice, takes a new one.
            let seq = match letter.remove {
                Some(EntryRef::Input(seq) | EntryRef::Output(seq))
                    if self.dead.get(seq.0)?.is_none() =>
                {
                    seq
                }
                _ => self.take_seq(),
            };
            let record = encode_record(&DeadLetter {
                kind: letter.kind as i32,
                message: Some(letter.message.clone()),
                reason: letter.reason.clone(),
                attempts: letter.attempts,
                dead_at_ms: self.now,
                input_seq: letter.input_seq.map_or(0, |s| s.0),
            });
            self.insert_new(NewRecord::DeadLetter, seq, &record)?;
            seqs.push(seq);
        }
        Ok(seqs)
    }

    fn requeue(&mut self, selection: &DeadLetterSelection) -> Step<Vec<Seq>> {
        let mut seqs = Vec::new();
        for old in self.select_dead(selection)? {
            let Some(record) = self.dead.remove(old.0)?.map(|v| v.value().to_vec()) else {
                continue;
            };
            let letter = decode_record::<DeadLetter>("dead_letters", old.0, &record)
                .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            let message = letter.message.unwrap_or_default();
            let seq = self.take_seq();
            if letter.kind == dead_letter::Kind::Input as i32 {
                let record = encode_input(&message, self.now);
                self.insert_new(NewRecord::Input, seq, &record)?;
            } else {
                // On its own: the input it came from may be long completed.
                let record = encode_output(&message, 0, self.now);
                self.insert_new(NewRecord::Output, seq, &record)?;
            }
            seqs.push(seq);
        }
        Ok(seqs)
    }

    /// Writes the backlog counters, and the durable floor when the commit is durable.
    pub(super) fn store_counters(&mut self, bytes: u64, entries: u64, floor: Option<u64>) -> Step {
        self.meta.insert(META_BACKLOG_BYTES, bytes)?;
        self.meta.insert(META_BACKLOG_ENTRIES, entries)?;
        if let Some(floor) = floor {
            self.meta.insert(META_SEQ_FLOOR, floor)?;
        }
        Ok(())
    }

    /// Writes a record under a sequence just taken, counting it. Sequences are never reused:
    /// finding one taken is a bug that would overwrite an entry, so it crashes here.
    fn insert_new(&mut self, kind: NewRecord, seq: Seq, record: &[u8]) -> Step {
        let (table, name) = match kind {
            NewRecord::Input => (&mut self.inputs, "input"),
            NewRecord::Output => (&mut self.outputs, "output"),
            NewRecord::DeadLetter => (&mut self.dead, "dead-letter"),
        };
        let reused = table.insert(seq.0, record)?.is_some();
        assert!(
            !reused,
            "journal invariant: {name} sequence {} reused",
            seq.0
        );
        self.written_records += 1;
        self.written_bytes += record.len() as u64;
        if kind != NewRecord::DeadLetter {
            // Inputs and outputs are the backlog; dead letters are kept apart from it.
            self.bytes_delta += record.len() as i64;
            self.entries_delta += 1;
        }
        Ok(())
    }

    /// The dead letters a selection names, in sequence order.
    fn select_dead(&self, selection: &DeadLetterSelection) -> Step<Vec<Seq>> {
        match selection {
            DeadLetterSelection::Seqs(seqs) => {
                let mut seqs = seqs.clone();
                seqs.sort_unstable();
                seqs.dedup();
                Ok(seqs)
            }
            DeadLetterSelection::All => {
                let mut all = Vec::new();
                for row in self.dead.iter()? {
                    all.push(Seq(row?.0.value()));
                }
                Ok(all)
            }
        }
    }

    fn remove_input(&mut self, seq: Seq) -> Step {
        if let Some(old) = self.inputs.remove(seq.0)? {
            self.bytes_delta -= old.value().len() as i64;
            self.entries_delta -= 1;
        }
        self.recorded.remove(seq.0)?;
        Ok(())
    }

    fn remove_output(&mut self, seq: Seq) -> Step {
        if let Some(old) = self.outputs.remove(seq.0)? {
            self.bytes_delta -= old.value().len() as i64;
            self.entries_delta -= 1;
        }
        Ok(())
    }

    fn remember_id(&mut self, id: &str, seq: Seq) -> Step {
        if let Some(old) = self.dedup.insert(id, (seq.0, self.now))? {
            // The id was in the window already (its entry had expired in memory): drop the
            // old position so the window counts it once.
            let (old_seq, _) = old.value();
            drop(old);
            if self.dedup_order.remove(old_seq)?.is_some() {
                *self.dedup_len -= 1;
            }
        }
        let reused = self.dedup_order.insert(seq.0, id)?.is_some();
        assert!(
            !reused,
            "journal invariant: dedup sequence {} reused",
            seq.0
        );
        *self.dedup_len += 1;
        self.dedup_inserted += 1;
        Ok(())
    }

    /// Evicts the oldest ids while the window is over its count or they are over its age.
    pub(super) fn evict_dedup(&mut self, config: &JournalConfig) -> Step {
        let budget = self.dedup_inserted + EVICT_EXTRA_PER_COMMIT;
        let oldest_allowed = self.now.saturating_sub(config.dedup_window_age_ms);
        for _ in 0..budget {
            let Some((seq, id)) = self
                .dedup_order
                .first()?
                .map(|(k, v)| (k.value(), v.value().to_owned()))
            else {
                break;
            };
            let recorded_at = self.dedup.get(id.as_str())?.map(|v| v.value());
            let over_count = *self.dedup_len > config.dedup_window_count;
            let too_old = recorded_at.is_none_or(|(_, at)| at < oldest_allowed);
            if !over_count && !too_old {
                break;
            }
            self.dedup_order.remove(seq)?;
            *self.dedup_len -= 1;
            if recorded_at.is_some_and(|(s, _)| s == seq) {
                self.dedup.remove(id.as_str())?;
            }
        }
        Ok(())
    }
}

/// Answers a read from a read transaction. `next_seq` and `backlog_bytes` are the writer's
/// counters, for the summary.
pub(super) fn answer(db: &Database, read: Read, next_seq: u64, backlog_bytes: u64, path: &Path) {
    let txn = match db.begin_read() {
        Ok(txn) => txn,
        Err(e) => return read.fail(Failure::from(e).at(path)),
    };
    let at = |e: Failure| e.at(path);
    // A caller that stopped waiting has nothing to be told.
    match read {
        Read::ScanInputs { from, limit, reply } => {
            drop(reply.send(scan_inputs(&txn, from, limit).map_err(at)))
        }
        Read::ScanOutputs { from, limit, reply } => {
            drop(reply.send(scan_outputs(&txn, from, limit).map_err(at)))
        }
        Read::ScanDeadLetters { from, limit, reply } => {
            drop(reply.send(scan_dead_letters(&txn, from, limit).map_err(at)))
        }
        Read::LoadDedup { reply } => drop(reply.send(load_dedup(&txn).map_err(at))),
        Read::Summary { reply } => {
            drop(reply.send(summary(&txn, next_seq, backlog_bytes).map_err(at)))
        }
        Read::OldestBacklog { reply } => drop(reply.send(oldest_backlog(&txn).map_err(at))),
    }
}

fn scan_inputs(txn: &ReadTransaction, from: Seq, limit: usize) -> Step<Vec<StoredInput>> {
    let inputs = txn.open_table(INPUTS)?;
    let recorded = txn.open_table(RECORDED)?;
    let outputs = txn.open_table(OUTPUTS)?;
    let mut out = Vec::with_capacity(limit.min(4096));
    for row in inputs.range(from.0..)?.take(limit) {
        let (k, v) = row?;
        let key = k.value();
        let entry = decode_record::<InputEntry>("inputs", key, v.value())?;
        let state = match recorded.get(key)?.map(|r| r.value()) {
            None => InputState::Unhandled,
            Some((first, count)) => {
                let end = first + u64::from(count);
                if outputs.range(first..end)?.next().is_some() {
                    InputState::OutputsPending
                } else {
                    InputState::Finished
                }
            }
        };
        out.push(StoredInput {
            seq: Seq(key),
            entry,
            state,
        });
    }
    Ok(out)
}

fn scan_outputs(txn: &ReadTransaction, from: Seq, limit: usize) -> Step<Vec<StoredOutput>> {
    let outputs = txn.open_table(OUTPUTS)?;
    let mut out = Vec::with_capacity(limit.min(4096));
    for row in outputs.range(from.0..)?.take(limit) {
        let (k, v) = row?;
        let key = k.value();
        let entry = decode_record::<OutputEntry>("outputs", key, v.value())?;
        out.push(StoredOutput {
            seq: Seq(key),
            entry,
        });
    }
    Ok(out)
}

fn scan_dead_letters(
    txn: &ReadTransaction,
    from: Seq,
    limit: usize,
) -> Step<Vec<StoredDeadLetter>> {
    let dead = txn.open_table(DEAD_LETTERS)?;
    let mut out = Vec::with_capacity(limit.min(4096));
    for row in dead.range(from.0..)?.take(limit) {
        let (k, v) = row?;
        let key = k.value();
        let letter = decode_record::<DeadLetter>("dead_letters", key, v.value())?;
        out.push(StoredDeadLetter {
            seq: Seq(key),
            letter,
        });
    }
    Ok(out)
}

/// The persisted dedup window, oldest first.
fn load_dedup(txn: &ReadTransaction) -> Step<Vec<DedupRecord>> {
    let order = txn.open_table(DEDUP_ORDER)?;
    let dedup = txn.open_table(DEDUP)?;
    let mut out = Vec::new();
    for row in order.iter()? {
        let (k, v) = row?;
        let id = v.value();
        if let Some(entry) = dedup.get(id)? {
            let (seq, recorded_at_ms) = entry.value();
            if seq == k.value() {
                out.push(DedupRecord {
                    id: id.to_owned(),
                    seq: Seq(seq),
                    recorded_at_ms,
                });
            }
        }
    }
    Ok(out)
}

fn summary(txn: &ReadTransaction, next_seq: u64, backlog_bytes: u64) -> Step<Summary> {
    let len = |def: TableDefinition<u64, &[u8]>| -> Step<u64> { Ok(txn.open_table(def)?.len()?) };
    Ok(Summary {
        inputs: len(INPUTS)?,
        outputs: len(OUTPUTS)?,
        dead_letters: len(DEAD_LETTERS)?,
        dedup_ids: txn.open_table(DEDUP)?.len()?,
        backlog_bytes,
        next_seq,
        oldest_backlog_ms: oldest_backlog(txn)?,
    })
}

/// When the oldest backlog entry was written: the first (lowest-sequence) entry of `inputs` and
/// of `outputs`, whichever is older. Two lookups, whatever the backlog's size.
fn oldest_backlog(txn: &ReadTransaction) -> Step<Option<i64>> {
    let inputs = txn.open_table(INPUTS)?;
    let outputs = txn.open_table(OUTPUTS)?;
    let input = match inputs.first()? {
        Some((k, v)) => decode_record::<InputEntry>("inputs", k.value(), v.value())
            .ok()
            .map(|e| e.received_at_ms),
        None => None,
    };
    let output = match outputs.first()? {
        Some((k, v)) => decode_record::<OutputEntry>("outputs", k.value(), v.value())
            .ok()
            .map(|e| e.recorded_at_ms),
        None => None,
    };
    Ok(match (input, output) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}
