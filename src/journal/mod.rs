//! The journal: sidelog's one durable store, a single redb file under `--data-dir`.
//!
//! Only this module imports redb. It speaks in domain verbs ([`Journal::append_inputs`],
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
//! # Tables and key encodings
//! ```text
//! inputs        u64 input seq   -> [1][InputEntry protobuf]    rbml, hml: awaiting completion
//! outputs       u64 output seq  -> [1][OutputEntry protobuf]   sbml, hml: awaiting the sink's ack
//! recorded      u64 input seq   -> (u64 first output seq, u32 count)  hml: where this input's outputs are
//! dead_letters  u64 letter seq  -> [1][DeadLetter protobuf]    kept until re-queued or purged
//! dedup         &str message id -> (u64 seq, i64 recorded_at_ms)
//! dedup_order   u64 seq         -> &str message id             eviction order of the dedup window
//! meta          &str            -> u64                         format, seq_floor, backlog_bytes, backlog_entries
//! ```
//! The leading byte of every protobuf value is the record format version ([`RECORD_FORMAT`],
//! `record.rs`).
//!
//! # Invariants
//! - Sequences are unique for the life of the file, also across crashes: every `Immediate`
//!   commit persists `seq_floor = next_seq + SEQ_RESERVE`, a commit that would hand out a
//!   sequence at or past the durable floor is made `Immediate`, and on open `next_seq` starts at
//!   the floor. Sequences handed out by a lost non-durable commit are therefore never reused.
//! - `backlog_bytes`/`backlog_entries` in `meta` count exactly the entries of `inputs` and
//!   `outputs` (the sum of their encoded sizes); they are updated in the same transaction.
//! - A reply `Ok` to a durable command is sent only after the `Immediate` commit returned.
//!
//! The file is `journal.redb`, created atomically (`store.rs`); redb's own checksums and two
//! commit slots make a torn write roll back to the last commit. ARCHITECTURE.md draws where the
//! journal sits in each mode's data path.
//!
//! # Files
//! `handle.rs` the [`Journal`] handle and its verbs · `command.rs` what a handle asks the writer ·
//! `writer.rs` group commit, reopening after I/O errors, a full disk · `tables.rs` the tables and
//! what each command does to them · `record.rs` the record codec · `store.rs` where the file
//! lives · `salvage.rs` reading a damaged file · `error.rs` · `config.rs`.

mod command;
mod config;
mod error;
mod handle;
mod record;
mod salvage;
mod store;
mod tables;
mod types;
mod writer;

#[cfg(test)]
mod tests;

pub use config::{JournalConfig, WriterRuntime};
pub use error::{JournalError, Result};
pub use handle::{Journal, flush};
pub use record::{
    FILE_FORMAT, RECORD_FORMAT, decode_record, encode_input, encode_output, encode_record,
};
pub use salvage::{SalvagedTable, salvage};
pub use store::{FILE_NAME, FileStore, JournalStore, reserve_bytes};
pub use types::{
    Backlog, DeadLetterSelection, DedupRecord, EntryRef, InputState, NewDeadLetter, OutputGroup,
    RecordedOutputs, Seq, SeqRange, StoredDeadLetter, StoredInput, StoredOutput, Summary,
};
