//! The tables (see the layout in `mod.rs`) and what each command does to them: the writes
//! applied inside the writer's transaction ([`Tables`]), the reads answered from a read
//! transaction ([`answer`]), and the counters read at open ([`load_state`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase as _, ReadableTable as _,
    ReadableTableMetadata as _, TableDefinition, WriteTransaction,
};

use super::block::{self, BlockBuilder, Head, Kind};
use super::command::{Read, Write};
use super::config::JournalConfig;
use super::error::Failure;
use super::idlog::{self, IdLogBuilder, IdWindow};
use super::record::{FILE_FORMAT, decode_record, encode_record};
use super::types::{
    Appended, DeadLetterSelection, DedupRecord, DeliveryProgress, DeliveryState, EntryRef,
    InputState, NewDeadLetter, OutputGroup, RecordedOutputs, ScanLimit, Seq, StoredDeadLetter,
    StoredInput, StoredOutput, Summary,
};
use super::wal::{self, BytesTable, Recovered, Redo, Refusal, Wal};
use sidelog_proto::journal::{DeadLetter, InputEntry, OutputEntry, dead_letter};
use sidelog_proto::v1::Message;

pub(super) const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
pub(super) const HEADS: TableDefinition<u64, &[u8]> = TableDefinition::new("heads");
pub(super) const RECORDED: TableDefinition<u64, (u64, u32)> = TableDefinition::new("recorded");
pub(super) const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
pub(super) const DEDUP_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("dedup_log");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub(super) const META_FORMAT: &str = "format";
const META_SEQ_FLOOR: &str = "seq_floor";
const META_BACKLOG_BYTES: &str = "backlog_bytes";
const META_BACKLOG_ENTRIES: &str = "backlog_entries";
/// The epoch of the redo log's frames written since this durable state (`wal.rs`).
pub(super) const META_WAL_EPOCH: &str = "wal_epoch";
/// How many of that epoch's frames this state holds (each logged commit counts itself).
pub(super) const META_WAL_FRAMES: &str = "wal_frames";
/// The journal's identity: random, made with the database; the redo log's frames carry it.
pub(super) const META_JOURNAL_ID: &str = "journal_id";
/// A sink's delivery progress ([`DeliveryProgress`]): its log, partition and position.
const META_PROGRESS_KEY: &str = "delivery_progress_key";
const META_PROGRESS_PARTITION: &str = "delivery_progress_partition";
const META_PROGRESS_POSITION: &str = "delivery_progress_position";

/// Dedup log values (one per past commit) evicted at most per commit, so that age-based
/// eviction catches up without making one transaction unboundedly large.
const EVICT_MAX_PER_COMMIT: usize = 256;

type Step<T = ()> = std::result::Result<T, Failure>;

/// The counters and shape of the file, read when it is opened.
pub(super) struct FileState {
    pub seq_floor: u64,
    pub backlog_bytes: u64,
    pub backlog_entries: u64,
    /// The highest sequence anywhere in the file.
    pub max_key: u64,
    /// The dedup log's ids, per value.
    pub ids: IdWindow,
    /// The journal's identity (made now for a file that had none).
    pub identity: u64,
    /// Rows of the dead-letter table.
    pub dead_letters: u64,
    /// The epoch the redo log's next frames carry (the file's, after any replay).
    pub wal_epoch: u64,
    /// Frames of the redo log applied while opening.
    pub replayed_frames: usize,
    /// What reading the log found.
    pub recovered: Recovered,
    /// A log that was refused and, as the start was told, discarded.
    pub discarded: Option<Refusal>,
}

/// How an open treats the redo log beside the database.
pub(super) struct LogAtOpen<'a> {
    pub wal: &'a Wal,
    /// The identity a database that has none gets (one made before identities, or new).
    pub new_identity: u64,
    /// Discard the frames of a log that would refuse the open (`--discard-wal`).
    pub discard: bool,
}

/// Reads the counters from `meta`, creating the tables on a new file. A file of another format
/// is refused before anything is written to it. The redo log's frames since the last checkpoint
/// are applied first (`wal.rs`); a log that is not this database's, is newer than it or is
/// damaged refuses the open, unless told to discard it.
pub(super) fn load_state(db: &Database, path: &Path, log: LogAtOpen<'_>) -> Step<FileState> {
    let txn = db.begin_write()?;
    let state = {
        let mut meta = check_format(&txn, path)?;
        let identity = meta.get(META_JOURNAL_ID)?.map(|v| v.value());
        let epoch = meta.get(META_WAL_EPOCH)?.map_or(0, |v| v.value());
        let held = meta.get(META_WAL_FRAMES)?.map_or(0, |v| v.value());
        drop(meta);
        let Replayed {
            frames: replayed,
            recovered,
            discarded,
            next_epoch,
        } = replay_log(&txn, path, &log, identity.unwrap_or(0), epoch, held)?;
        meta = txn.open_table(META)?;
        let identity = match identity {
            Some(id) => id,
            None => {
                meta.insert(META_JOURNAL_ID, log.new_identity)?;
                log.new_identity
            }
        };
        // Applied frames are in the database once this commits: the log starts a new epoch,
        // and every frame of the old one is stale. With no frame and none applied, nothing
        // is written (a full disk must still open).
        let epoch = if recovered.frames == 0 && held == 0 && discarded.is_none() {
            epoch
        } else {
            meta.insert(META_WAL_EPOCH, next_epoch)?;
            meta.insert(META_WAL_FRAMES, 0)?;
            next_epoch
        };
        let heads = txn.open_table(HEADS)?;
        let dead = txn.open_table(DEAD_LETTERS)?;
        let ids = txn.open_table(DEDUP_LOG)?;
        txn.open_table(BLOCKS)?;
        txn.open_table(RECORDED)?;
        let last_head = match heads.last()? {
            Some((k, v)) => Some(Head::decode(k.value(), v.value())?.last),
            None => None,
        };
        let last_keys = [
            last_head,
            dead.last()?.map(|(k, _)| k.value()),
            ids.last()?.map(|(k, _)| k.value()),
        ];
        let window = load_window(&ids)?;
        let get = |k: &str| -> Step<Option<u64>> { Ok(meta.get(k)?.map(|v| v.value())) };
        FileState {
            seq_floor: get(META_SEQ_FLOOR)?.unwrap_or(1),
            backlog_bytes: get(META_BACKLOG_BYTES)?.unwrap_or(0),
            backlog_entries: get(META_BACKLOG_ENTRIES)?.unwrap_or(0),
            max_key: last_keys.into_iter().flatten().max().unwrap_or(0),
            ids: window,
            identity,
            dead_letters: dead.len()?,
            wal_epoch: epoch,
            replayed_frames: replayed,
            recovered,
            discarded,
        }
    };
    txn.commit()?;
    Ok(state)
}

/// The file's format, checked (a new file is given this one; a file of format 1 is rewritten
/// into it); answers `meta`, open.
fn check_format<'t>(
    txn: &'t WriteTransaction,
    path: &Path,
) -> Step<redb::Table<'t, &'static str, u64>> {
    let mut meta = txn.open_table(META)?;
    let stored_format = meta.get(META_FORMAT)?.map(|v| v.value());
    let format = match stored_format {
        Some(f) => f,
        None => {
            meta.insert(META_FORMAT, FILE_FORMAT)?;
            FILE_FORMAT
        }
    };
    if format == 1 {
        drop(meta);
        migrate_from_1(txn)?;
        meta = txn.open_table(META)?;
        meta.insert(META_FORMAT, FILE_FORMAT)?;
    } else if format != FILE_FORMAT {
        return Err(Failure::Journal(super::JournalError::Format {
            path: path.to_owned(),
            found: format,
        }));
    }
    Ok(meta)
}

/// What replaying the redo log into the open transaction did.
struct Replayed {
    /// Frames applied.
    frames: usize,
    recovered: Recovered,
    /// The log refused and discarded (`--discard-wal`).
    discarded: Option<Refusal>,
    /// The epoch the log starts once this commits.
    next_epoch: u64,
}

/// Applies the frames of the log (`identity`, `epoch`) the database lacks: those numbered
/// `held` and later. redb may come back ahead of its last durable commit (a commit without
/// fsync whose pages all reached the disk): the frames it holds already are skipped, and a
/// log that ends before it adds nothing. Either way the state is made durable by the caller's
/// commit. A log that is not this journal's, or damaged, is refused unless `log.discard`.
fn replay_log(
    txn: &WriteTransaction,
    path: &Path,
    log: &LogAtOpen<'_>,
    identity: u64,
    epoch: u64,
    held: u64,
) -> Step<Replayed> {
    let mut frames = 0;
    let found = log.wal.recover(identity, epoch, |number, payload| {
        if number >= held {
            wal::apply(txn, payload)?;
            frames += 1;
        }
        Ok(())
    })?;
    let (recovered, discarded, next_epoch) = match found {
        Ok(recovered) => (recovered, None, epoch + 1),
        Err(refusal) if log.discard => {
            // Frames of the refused log are never read again: the next epoch is past theirs.
            // A damaged run's frames before the damage were applied.
            let past = match refusal {
                Refusal::Newer { epoch: theirs, .. } => theirs.max(epoch) + 1,
                _ => epoch + 1,
            };
            (Recovered::default(), Some(refusal), past)
        }
        Err(refusal) => {
            return Err(Failure::Journal(super::JournalError::WalRefused {
                path: path.with_file_name(wal::WAL_FILE_NAME),
                reason: refusal.describe(identity, epoch),
            }));
        }
    };
    Ok(Replayed {
        frames,
        recovered,
        discarded,
        next_epoch,
    })
}

/// Rewrites a file of format 1 (one row per record, a string-keyed dedup index) into this
/// layout, in the transaction that opens it: upgrading sidelog keeps the backlog, the dead
/// letters and the dedup window. Format 1 tables, for this alone:
/// `inputs`/`outputs` u64 seq → record, `dedup` id → (seq, recorded_at_ms), `dedup_order`
/// seq → id; `recorded`, `dead_letters` and `meta` are unchanged.
fn migrate_from_1(txn: &WriteTransaction) -> Step {
    let (bytes, entries) = migrate_entries_from_1(txn)?;
    migrate_ids_from_1(txn)?;
    for name in [INPUTS_1, OUTPUTS_1] {
        txn.delete_table(name)?;
    }
    txn.delete_table(DEDUP_1)?;
    txn.delete_table(DEDUP_ORDER_1)?;
    let mut meta = txn.open_table(META)?;
    meta.insert(META_BACKLOG_BYTES, bytes)?;
    meta.insert(META_BACKLOG_ENTRIES, entries)?;
    tracing::info!(
        entries,
        bytes,
        "journal rewritten from format 1 to format {FILE_FORMAT}"
    );
    Ok(())
}

/// Format 1's tables, read once by the migration and then deleted.
const INPUTS_1: TableDefinition<u64, &[u8]> = TableDefinition::new("inputs");
const OUTPUTS_1: TableDefinition<u64, &[u8]> = TableDefinition::new("outputs");
const DEDUP_1: TableDefinition<&str, (u64, i64)> = TableDefinition::new("dedup");
const DEDUP_ORDER_1: TableDefinition<u64, &str> = TableDefinition::new("dedup_order");

/// Format 1's inputs and outputs, in sequence order, into blocks; answers the backlog's bytes
/// and entries.
fn migrate_entries_from_1(txn: &WriteTransaction) -> Result<(u64, u64), Failure> {
    /// Entries per block written by the migration.
    const PER_BLOCK: usize = 8192;
    let mut blocks = txn.open_table(BLOCKS)?;
    let mut heads = txn.open_table(HEADS)?;
    let (mut bytes, mut entries) = (0u64, 0u64);
    let inputs = txn.open_table(INPUTS_1)?;
    let outputs = txn.open_table(OUTPUTS_1)?;
    let mut all = Vec::new();
    for row in inputs.iter()? {
        let (k, v) = row?;
        let at = decode_record::<InputEntry>("inputs", k.value(), v.value())?.received_at_ms;
        all.push((k.value(), Kind::Input, v.value().to_vec(), at));
    }
    for row in outputs.iter()? {
        let (k, v) = row?;
        let at = decode_record::<OutputEntry>("outputs", k.value(), v.value())?.recorded_at_ms;
        all.push((k.value(), Kind::Output, v.value().to_vec(), at));
    }
    all.sort_unstable_by_key(|e| e.0);
    for chunk in all.chunks(PER_BLOCK) {
        let mut block = BlockBuilder::default();
        for (seq, kind, record, at) in chunk {
            block.push_record(*seq, *kind, record, *at);
        }
        entries += block.len() as u64;
        if let Some((value, head)) = block.finish() {
            blocks.insert(head.first, value.as_slice())?;
            heads.insert(head.first, head.encode().as_slice())?;
            bytes += head.block_bytes;
        }
    }
    Ok((bytes, entries))
}

/// Format 1's dedup window (an id's latest sequence and time, in sequence order) into the
/// dedup log: one log value per run of ids recorded at the same time, keyed by its last
/// sequence.
fn migrate_ids_from_1(txn: &WriteTransaction) -> Step {
    let mut ids = txn.open_table(DEDUP_LOG)?;
    let dedup = txn.open_table(DEDUP_1)?;
    let order = txn.open_table(DEDUP_ORDER_1)?;
    let mut run: Option<(i64, u64, IdLogBuilder)> = None;
    for row in order.iter()? {
        let (k, v) = row?;
        let (seq, id) = (k.value(), v.value());
        let Some((latest, at)) = dedup.get(id)?.map(|e| e.value()) else {
            continue;
        };
        if latest != seq {
            continue;
        }
        if run.as_ref().is_some_and(|(run_at, _, _)| *run_at != at) {
            let (_, last, value) = run.take().expect("checked just above");
            if let Some((value, _)) = value.finish() {
                ids.insert(last, value.as_slice())?;
            }
        }
        let (_, last, value) = run.get_or_insert_with(|| (at, seq, IdLogBuilder::default()));
        value.push(id, 0, seq, at);
        *last = seq;
    }
    if let Some((_, last, value)) = run
        && let Some((value, _)) = value.finish()
    {
        ids.insert(last, value.as_slice())?;
    }
    Ok(())
}

/// Reads the dedup log's ids into a fresh [`IdWindow`].
fn load_window(ids: &impl redb::ReadableTable<u64, &'static [u8]>) -> Step<IdWindow> {
    let mut window = IdWindow::default();
    for row in ids.iter()? {
        let (k, v) = row?;
        window.load(k.value(), v.value())?;
    }
    Ok(window)
}

/// Reads the window again from the file when a failed commit left it behind the file.
pub(super) fn refresh_window(db: &Database, window: &mut IdWindow) -> Step {
    if window.stale {
        let txn = db.begin_read()?;
        *window = load_window(&txn.open_table(DEDUP_LOG)?)?;
    }
    Ok(())
}

/// The open tables of one write transaction, and what it changed.
pub(super) struct Tables<'txn> {
    blocks: redb::Table<'txn, u64, &'static [u8]>,
    heads: redb::Table<'txn, u64, &'static [u8]>,
    recorded: redb::Table<'txn, u64, (u64, u32)>,
    dead: redb::Table<'txn, u64, &'static [u8]>,
    ids: redb::Table<'txn, u64, &'static [u8]>,
    meta: redb::Table<'txn, &'static str, u64>,
    pub next_seq: &'txn mut u64,
    window: &'txn mut IdWindow,
    pub bytes_delta: i64,
    /// Rows this commit added to the dead-letter table, less those it removed.
    pub dead_delta: i64,
    pub entries_delta: i64,
    /// The entries this commit adds, written as one block by [`Tables::finish`].
    block: BlockBuilder,
    /// Heads of earlier blocks whose entries this commit completed, written back (or removed
    /// with their block) by [`Tables::finish`].
    touched: BTreeMap<u64, Head>,
    /// The ids this commit remembers, written as one dedup log value by [`Tables::finish`].
    remembered: IdLogBuilder,
    /// Records and their encoded bytes written by this transaction (metrics).
    pub written_records: u64,
    pub written_bytes: u64,
    /// Every change above, as the redo log's frame (`wal.rs`).
    pub redo: Redo,
    now: i64,
}

impl<'txn> Tables<'txn> {
    pub(super) fn open(
        txn: &'txn WriteTransaction,
        next_seq: &'txn mut u64,
        window: &'txn mut IdWindow,
        now: i64,
    ) -> Step<Self> {
        Ok(Tables {
            blocks: txn.open_table(BLOCKS)?,
            heads: txn.open_table(HEADS)?,
            recorded: txn.open_table(RECORDED)?,
            dead: txn.open_table(DEAD_LETTERS)?,
            ids: txn.open_table(DEDUP_LOG)?,
            meta: txn.open_table(META)?,
            next_seq,
            window,
            bytes_delta: 0,
            dead_delta: 0,
            entries_delta: 0,
            block: BlockBuilder::default(),
            touched: BTreeMap::new(),
            remembered: IdLogBuilder::default(),
            written_records: 0,
            written_bytes: 0,
            redo: Redo::default(),
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
            } => answer.set(Appended {
                seqs: self.append_inputs(inputs, *received_at_ms)?,
                inputs: Vec::new(),
            }),
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
                        self.dead_delta -= 1;
                        self.redo.remove(BytesTable::DeadLetters, seq.0);
                        purged += 1;
                    }
                }
                answer.set(purged);
            }
            Write::Sync { answer } => answer.set(()),
            Write::Progress { progress, answer } => {
                for (name, value) in [
                    (META_PROGRESS_KEY, progress.key),
                    (META_PROGRESS_PARTITION, progress.partition),
                    (META_PROGRESS_POSITION, progress.position),
                ] {
                    self.meta.insert(name, value)?;
                    self.redo.put_meta(name, value);
                }
                answer.set(());
            }
            Write::SyncIfDirty => {}
        }
        Ok(())
    }

    fn append_inputs(&mut self, inputs: &[Message], received_at_ms: i64) -> Step<Vec<Seq>> {
        let mut seqs = Vec::with_capacity(inputs.len());
        for message in inputs {
            let seq = self.take_seq();
            let len = self.block.push_input(seq.0, message, received_at_ms);
            self.count_new(len);
            self.remember_id(&message.id, seq);
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
                let input_seq = group.input_seq.map_or(0, |s| s.0);
                let len = self.block.push_output(seq.0, message, input_seq, self.now);
                self.count_new(len);
                output_seqs.push(seq);
            }
            if let Some(input) = group.input_seq {
                if group.outputs.is_empty() {
                    self.remove_input(input)?;
                } else {
                    let first = output_seqs.first().expect("outputs is not empty").0;
                    let count = group.outputs.len() as u32;
                    self.recorded.insert(input.0, (first, count))?;
                    self.redo.put_recorded(input.0, first, count);
                }
            }
            let ack_seq = match (&group.dead, output_seqs.first()) {
                (Some(letter), _) => self.dead_letter(std::slice::from_ref(letter))?[0],
                (None, Some(first)) => *first,
                (None, None) => self.take_seq(),
            };
            if let Some(id) = &group.dedup_id {
                self.remember_id(id, ack_seq);
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
            self.insert_dead(seq, &record)?;
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
            self.dead_delta -= 1;
            self.redo.remove(BytesTable::DeadLetters, old.0);
            let letter = decode_record::<DeadLetter>("dead_letters", old.0, &record)
                .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            let message = letter.message.unwrap_or_default();
            let seq = self.take_seq();
            let len = if letter.kind == dead_letter::Kind::Input as i32 {
                self.block.push_input(seq.0, &message, self.now)
            } else {
                // On its own: the input it came from may be long completed.
                self.block.push_output(seq.0, &message, 0, self.now)
            };
            self.count_new(len);
            seqs.push(seq);
        }
        Ok(seqs)
    }

    /// Writes the backlog counters, and the durable floor when the commit is durable.
    pub(super) fn store_counters(&mut self, bytes: u64, entries: u64, floor: Option<u64>) -> Step {
        self.meta.insert(META_BACKLOG_BYTES, bytes)?;
        self.meta.insert(META_BACKLOG_ENTRIES, entries)?;
        self.redo.put_meta(META_BACKLOG_BYTES, bytes);
        self.redo.put_meta(META_BACKLOG_ENTRIES, entries);
        if let Some(floor) = floor {
            self.meta.insert(META_SEQ_FLOOR, floor)?;
            self.redo.put_meta(META_SEQ_FLOOR, floor);
        }
        Ok(())
    }

    /// Names the redo log's epoch that follows this commit (a checkpoint's; not logged).
    pub(super) fn store_wal_epoch(&mut self, epoch: u64) -> Step {
        self.meta.insert(META_WAL_EPOCH, epoch)?;
        self.meta.insert(META_WAL_FRAMES, 0)?;
        Ok(())
    }

    /// Counts this commit's frame as held by the database (logged, so a replay counts too).
    pub(super) fn store_wal_frames(&mut self, frames: u64) -> Step {
        self.meta.insert(META_WAL_FRAMES, frames)?;
        self.redo.put_meta(META_WAL_FRAMES, frames);
        Ok(())
    }

    /// Counts a record just added to this commit's block.
    fn count_new(&mut self, len: usize) {
        self.written_records += 1;
        self.written_bytes += len as u64;
        self.entries_delta += 1;
    }

    /// Writes a dead letter under its sequence. Dead letters are kept apart from the backlog,
    /// one row each: they are few, and an operator acts on them one by one.
    fn insert_dead(&mut self, seq: Seq, record: &[u8]) -> Step {
        let reused = self.dead.insert(seq.0, record)?.is_some();
        self.dead_delta += 1;
        self.redo.put(BytesTable::DeadLetters, seq.0, record);
        assert!(
            !reused,
            "journal invariant: dead-letter sequence {} reused",
            seq.0
        );
        self.written_records += 1;
        self.written_bytes += record.len() as u64;
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
        self.mark_gone(seq, Kind::Input)?;
        if self.recorded.remove(seq.0)?.is_some() {
            self.redo.remove_recorded(seq.0);
        }
        Ok(())
    }

    fn remove_output(&mut self, seq: Seq) -> Step {
        self.mark_gone(seq, Kind::Output)
    }

    /// Completes a live entry of `kind` (a no-op for one already completed, or never there:
    /// completion marks are applied again after a failed commit).
    fn mark_gone(&mut self, seq: Seq, kind: Kind) -> Step {
        let seq = seq.0;
        let head = match self.block.head_mut() {
            Some(head) if seq >= head.first => Some(head),
            _ => self.touched_head(seq)?,
        };
        if head.is_some_and(|h| h.mark_gone(seq, kind)) {
            self.entries_delta -= 1;
        }
        Ok(())
    }

    /// The head of the earlier block holding `seq`, read into `touched` once per commit.
    fn touched_head(&mut self, seq: u64) -> Step<Option<&mut Head>> {
        let cached = self
            .touched
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, h)| seq <= h.last);
        if !cached {
            let Some((first, head)) = (match self.heads.range(..=seq)?.next_back() {
                Some(row) => {
                    let (k, v) = row?;
                    Some((k.value(), Head::decode(k.value(), v.value())?))
                }
                None => None,
            }) else {
                return Ok(None);
            };
            if seq > head.last {
                return Ok(None);
            }
            self.touched.insert(first, head);
        }
        Ok(self
            .touched
            .range_mut(..=seq)
            .next_back()
            .map(|(_, head)| head))
    }

    fn remember_id(&mut self, id: &str, seq: Seq) {
        let hash = self.window.hash(id);
        self.remembered.push(id, hash, seq.0, self.now);
    }

    /// Writes what the commit built: its block and head, the heads it changed (removing the
    /// blocks left with no live entry), and the ids it remembered.
    pub(super) fn finish(&mut self) -> Step {
        for (first, head) in std::mem::take(&mut self.touched) {
            if head.is_empty() {
                self.blocks.remove(first)?;
                self.heads.remove(first)?;
                self.redo.remove(BytesTable::Blocks, first);
                self.redo.remove(BytesTable::Heads, first);
                self.bytes_delta -= head.block_bytes as i64;
            } else {
                let value = head.encode();
                self.heads.insert(first, value.as_slice())?;
                self.redo.put(BytesTable::Heads, first, &value);
            }
        }
        if let Some((bytes, head)) = std::mem::take(&mut self.block).finish() {
            // Completed within its own commit (possible, not expected): nothing to keep.
            if !head.is_empty() {
                let reused = self.blocks.insert(head.first, bytes.as_slice())?.is_some();
                assert!(
                    !reused,
                    "journal invariant: block sequence {} reused",
                    head.first
                );
                let value = head.encode();
                self.heads.insert(head.first, value.as_slice())?;
                self.redo.put(BytesTable::Blocks, head.first, &bytes);
                self.redo.put(BytesTable::Heads, head.first, &value);
                self.bytes_delta += head.block_bytes as i64;
            }
        }
        if let Some((bytes, hashes)) = std::mem::take(&mut self.remembered).finish() {
            // Keyed by the commit's last sequence: every id it remembers carries a sequence
            // it took, so the key is new and the log stays in commit order.
            let key = *self.next_seq - 1;
            let reused = self.ids.insert(key, bytes.as_slice())?.is_some();
            assert!(!reused, "journal invariant: dedup log key {key} reused");
            self.redo.put(BytesTable::DedupLog, key, &bytes);
            self.window.add(key, &hashes);
        }
        Ok(())
    }

    /// Evicts the oldest commits' ids while the window holds at least its count of ids
    /// without them, or they are over its age.
    pub(super) fn evict_dedup(&mut self, config: &JournalConfig) -> Step {
        let bounds = config.dedup_bounds();
        for _ in 0..EVICT_MAX_PER_COMMIT {
            let Some((key, at)) = (match self.ids.first()? {
                Some((k, v)) => Some((k.value(), idlog::header(k.value(), v.value())?.0)),
                None => None,
            }) else {
                break;
            };
            // The ids whose latest commit is this entry go with it.
            let left = self
                .window
                .len()
                .saturating_sub(u64::from(self.window.live(key)));
            if !bounds.evicts(left, at, self.now) {
                break;
            }
            let Some(value) = self.ids.remove(key)? else {
                break;
            };
            self.redo.remove(BytesTable::DedupLog, key);
            self.window.remove(key, value.value())?;
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
        Read::DeliveryState { reply } => drop(reply.send(delivery_state(&txn).map_err(at))),
    }
}

fn scan_inputs(txn: &ReadTransaction, from: Seq, limit: ScanLimit) -> Step<Vec<StoredInput>> {
    let recorded = txn.open_table(RECORDED)?;
    let heads = txn.open_table(HEADS)?;
    let mut out = Vec::with_capacity(limit.entries.min(4096));
    scan_live(txn, from, limit, Kind::Input, |seq, record| {
        let entry = decode_record::<InputEntry>("blocks", seq, record)?;
        let state = match recorded.get(seq)?.map(|r| r.value()) {
            None => InputState::Unhandled,
            Some((first, count)) => {
                let end = first + u64::from(count);
                if any_live(&heads, first, end, Kind::Output)? {
                    InputState::OutputsPending
                } else {
                    InputState::Finished
                }
            }
        };
        out.push(StoredInput {
            seq: Seq(seq),
            entry,
            state,
        });
        Ok(())
    })?;
    Ok(out)
}

fn scan_outputs(txn: &ReadTransaction, from: Seq, limit: ScanLimit) -> Step<Vec<StoredOutput>> {
    let mut out = Vec::with_capacity(limit.entries.min(4096));
    scan_live(txn, from, limit, Kind::Output, |seq, record| {
        let entry = decode_record::<OutputEntry>("blocks", seq, record)?;
        out.push(StoredOutput {
            seq: Seq(seq),
            entry,
        });
        Ok(())
    })?;
    Ok(out)
}

/// Calls `each` with the live entries of `kind` from `from` on, in sequence order: at most
/// `limit` of them, or with `whole_blocks` the blocks up to the one in which the limit is
/// reached. Blocks with no such entry are not read.
fn scan_live(
    txn: &ReadTransaction,
    from: Seq,
    ScanLimit {
        entries: limit,
        whole_blocks,
    }: ScanLimit,
    kind: Kind,
    mut each: impl FnMut(u64, &[u8]) -> Step,
) -> Step {
    let heads = txn.open_table(HEADS)?;
    let blocks = txn.open_table(BLOCKS)?;
    // The block holding `from`, if any, starts before it.
    let start = match heads.range(..=from.0)?.next_back() {
        Some(row) => row?.0.value(),
        None => from.0,
    };
    let mut taken = 0;
    for row in heads.range(start..)? {
        if taken >= limit {
            break;
        }
        let (k, v) = row?;
        let first = k.value();
        let head = Head::decode(first, v.value())?;
        if !head.has_live_from(kind, from.0) {
            continue;
        }
        let Some(value) = blocks.get(first)? else {
            return Err(
                redb::Error::Corrupted(format!("the block of head {first} is missing")).into(),
            );
        };
        for entry in block::entries(first, value.value()) {
            let entry = entry?;
            if entry.seq < from.0 || head.kind(entry.seq) != kind {
                continue;
            }
            if entry.kind != kind {
                let reason = format!(
                    "entry {} is {:?} in its block, {kind:?} in its head",
                    entry.seq, entry.kind
                );
                return Err(redb::Error::Corrupted(reason).into());
            }
            each(entry.seq, entry.record)?;
            taken += 1;
            if taken >= limit && !whole_blocks {
                break;
            }
        }
    }
    Ok(())
}

/// Whether any sequence in `from..to` is a live entry of `kind`.
fn any_live(heads: &ReadOnlyTable<u64, &[u8]>, from: u64, to: u64, kind: Kind) -> Step<bool> {
    let start = match heads.range(..=from)?.next_back() {
        Some(row) => row?.0.value(),
        None => from,
    };
    for row in heads.range(start..to)? {
        let (k, v) = row?;
        let head = Head::decode(k.value(), v.value())?;
        if (from.max(head.first)..to.min(head.last + 1)).any(|seq| head.kind(seq) == kind) {
            return Ok(true);
        }
    }
    Ok(false)
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

/// The persisted dedup window, oldest first; an id remembered twice is given once, at its
/// later place.
fn load_dedup(txn: &ReadTransaction) -> Step<Vec<DedupRecord>> {
    let ids = txn.open_table(DEDUP_LOG)?;
    let mut all = Vec::new();
    for row in ids.iter()? {
        let (k, v) = row?;
        idlog::read(k.value(), v.value(), &mut all)?;
    }
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(all.len());
    for (i, r) in all.iter().enumerate() {
        last.insert(r.id.as_str(), i);
    }
    let keep: Vec<bool> = (0..all.len())
        .map(|i| last.get(all[i].id.as_str()) == Some(&i))
        .collect();
    drop(last);
    let mut keep = keep.into_iter();
    all.retain(|_| keep.next().unwrap_or(false));
    Ok(all)
}

fn summary(txn: &ReadTransaction, next_seq: u64, backlog_bytes: u64) -> Step<Summary> {
    let heads = txn.open_table(HEADS)?;
    let (mut inputs, mut outputs) = (0, 0);
    for row in heads.iter()? {
        let (k, v) = row?;
        let head = Head::decode(k.value(), v.value())?;
        inputs += head.count(Kind::Input);
        outputs += head.count(Kind::Output);
    }
    Ok(Summary {
        inputs,
        outputs,
        dead_letters: txn.open_table(DEAD_LETTERS)?.len()?,
        dedup_ids: load_dedup(txn)?.len() as u64,
        backlog_bytes,
        next_seq,
        oldest_backlog_ms: oldest_backlog(txn)?,
    })
}

/// When the oldest backlog entry was written: the earliest time in the first block still
/// held. One lookup, whatever the backlog's size.
fn oldest_backlog(txn: &ReadTransaction) -> Step<Option<i64>> {
    let heads = txn.open_table(HEADS)?;
    Ok(match heads.first()? {
        Some((k, v)) => Some(Head::decode(k.value(), v.value())?.oldest_ms),
        None => None,
    })
}

fn delivery_state(txn: &ReadTransaction) -> Step<DeliveryState> {
    let meta = txn.open_table(META)?;
    let get = |k: &str| -> Step<Option<u64>> { Ok(meta.get(k)?.map(|v| v.value())) };
    let progress = match (
        get(META_PROGRESS_KEY)?,
        get(META_PROGRESS_PARTITION)?,
        get(META_PROGRESS_POSITION)?,
    ) {
        (Some(key), Some(partition), Some(position)) => Some(DeliveryProgress {
            key,
            partition,
            position,
        }),
        _ => None,
    };
    Ok(DeliveryState {
        identity: get(META_JOURNAL_ID)?.unwrap_or(0),
        progress,
    })
}
