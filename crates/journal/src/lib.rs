//! The journal: sidelog's one durable store, a redb file under `--data-dir` and its redo log.
//!
//! It owns the files and their formats; it knows messages (`sidelog-proto`) and the runtime's
//! seams (`sidelog-runtime`), and nothing of modes, doors, handlers or sinks. Only this crate
//! imports redb. It speaks in domain verbs ([`Journal::append_inputs`],
//! [`Journal::record_outputs`], [`Journal::complete`], [`Journal::dead_letter`],
//! [`Journal::scan_outputs`], ...) and each verb states its durability.
//!
//! # Group commit
//! One writer (`writer.rs`) owns the `Database`. Callers send commands (`command.rs`) on a
//! bounded queue (backpressure when the disk is slow) and await a reply. The writer takes every
//! command waiting in the queue, up to [`JournalConfig::commit_max_records`], applies them all in
//! one write transaction (`tables.rs`), commits once, and only then replies to each. A commit is
//! `Immediate` (one fsync) when any command in it needs durability, and `None` (no fsync)
//! otherwise: completion marks ride along for free and become durable with the next `Immediate`
//! commit, or with the periodic sync. Reads (replay scans, the dedup load) go through the same
//! writer, so there is exactly one owner of the file.
//!
//! # Redo log
//! While the log is in use, "durable" is reached differently: every commit is made to redb
//! without fsync, its changes appended first to `journal.wal` as one frame, and a commit that
//! needs durability fsyncs the log. A checkpoint (a redb `Immediate` commit) comes once a
//! second, when the log is full, and at close, and starts the log over; opening applies the
//! frames written since, whatever `wal_bytes` says now, and only to the journal whose identity
//! they carry. `wal.rs` explains the frames, the epochs, recovery and what refuses a start; the
//! writer decides when a commit is a checkpoint, and uses the log only while the disk has room
//! to replay it.
//!
//! # Tables and key encodings
//! ```text
//! blocks        u64 first seq  -> every input and output a commit added, one value (block.rs)
//! heads         u64 first seq  -> which entries of that block are still live (block.rs)
//! recorded      u64 input seq  -> (u64 first output seq, u32 count)  hml: where this input's outputs are
//! dead_letters  u64 letter seq -> [1][DeadLetter protobuf]    kept until re-queued or purged
//! dedup_log     u64 last seq   -> the message ids a commit remembered (idlog.rs)
//! meta          &str           -> u64                         format, journal_id, seq_floor, backlog_bytes, backlog_entries, wal_epoch, wal_frames
//! ```
//! A commit's new inputs (rbml, hml) and outputs (sbml, hml) go into **one block**: two B-tree
//! inserts per commit, whatever its size. Completing entries rewrites the heads of the blocks
//! they are in, once per commit; a block whose entries are all complete is removed with its
//! head. Every record inside a block is one format byte ([`RECORD_FORMAT`], `record.rs`) and a
//! protobuf of `proto/sidelog/journal/v1`. The dedup window is persisted the same way, one
//! value per commit, evicted from the oldest; the writer keeps which ids each value holds the
//! latest entry of, so the window's count is of distinct ids (`idlog.rs`).
//!
//! The backlog's bytes are those of the blocks still held: a block's space is freed when its
//! last entry completes, so that is what the disk holds and what `max_backlog_bytes` limits.
//!
//! # Invariants
//! - Sequences are unique for the life of the file, also across crashes: every `Immediate`
//!   commit persists `seq_floor = next_seq + SEQ_RESERVE`, a commit that would hand out a
//!   sequence at or past the durable floor is made `Immediate`, and on open `next_seq` starts at
//!   the floor. Sequences handed out by a lost non-durable commit are therefore never reused.
//! - `backlog_entries` in `meta` counts exactly the live entries of all heads, `backlog_bytes`
//!   the sizes of the blocks held; both are updated in the same transaction.
//! - Blocks do not overlap: a commit takes its sequences in one run, so a sequence is in at
//!   most one block, the one whose first sequence is the greatest at or below it.
//! - A reply `Ok` to a durable command is sent only after the `Immediate` commit returned, or,
//!   with the redo log, after the fsync of the log that holds the commit's frame.
//! - The database never holds a change the log lacks: a frame is written before its commit, and
//!   taken back when the commit fails. ("Durable" and "`Immediate`" above, with the log in use:
//!   in a frame the log's fsync covered.)
//!
//! The file is `journal.redb`, created atomically (`store.rs`); redb's own checksums and two
//! commit slots make a torn write roll back to the last commit. ARCHITECTURE.md draws where the
//! journal sits in each mode's data path.
//!
//! # Files
//! `handle.rs` the [`Journal`] handle and its verbs · `command.rs` what a handle asks the writer ·
//! `writer.rs` group commit, reopening after I/O errors, a full disk · `tables.rs` the tables and
//! what each command does to them · `block.rs` blocks and heads · `idlog.rs` the dedup log ·
//! `record.rs` the record codec · `wal.rs` the redo log · `store.rs` where the files
//! live · `salvage.rs` reading a damaged file · `error.rs` · `config.rs`.

mod block;
mod command;
mod config;
mod error;
mod handle;
mod idlog;
pub mod metrics;
mod record;
mod salvage;
mod store;
mod tables;
mod types;
mod wal;
mod writer;

#[cfg(test)]
mod tests;

/// What the fuzz checks (`sidelog-fuzz-checks`) reach inside the journal; compiled only for
/// them (the `fuzzing` feature).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use super::{block, idlog};

    /// Reads `data` as each of the journal's own values (a block, a head, a dedup log value), as
    /// a damaged or hostile file would present them: each decodes or fails, never panics. A head
    /// that decodes round-trips. Returns how many entries and ids were read (for the fuzz checks).
    pub fn read_hostile_values(data: &[u8]) -> usize {
        let mut read = block::entries(7, data).take_while(|e| e.is_ok()).count();
        if let Ok(head) = block::Head::decode(7, data) {
            assert_eq!(
                block::Head::decode(7, &head.encode()).ok(),
                Some(head.clone()),
                "a head round-trips"
            );
            read += head.count(block::Kind::Input) as usize;
        }
        let mut ids = Vec::new();
        if idlog::read(7, data, &mut ids).is_ok() {
            read += ids.len();
        }
        let _ = idlog::IdWindow::default().load(7, data);
        read
    }
}

pub use config::{DedupBounds, JournalConfig, WriterRuntime};

pub use error::{IoFailure, JournalError, Result};
pub use handle::{Journal, flush};
pub use record::{
    FILE_FORMAT, RECORD_FORMAT, decode_record, encode_input, encode_output, encode_record,
};
pub use salvage::{SalvagedTable, salvage};
pub use store::{FILE_NAME, FileStore, JournalStore, reserve_bytes};
pub use types::{
    Appended, Backlog, DeadLetterSelection, DedupRecord, DeliveryProgress, DeliveryState, EntryRef,
    InputState, NewDeadLetter, OutputGroup, RecordedOutputs, ScanLimit, Seq, SeqRange,
    StoredDeadLetter, StoredInput, StoredOutput, Summary,
};
pub use wal::{
    DbFingerprint, FileHeader, FrameHeader, FrameInfo, WAL_FILE_NAME, WalReport, read_report,
    read_wal,
};
pub use wal::{FRAMES_START as WAL_FRAMES_START, Format as WalFormat};
