//! The redo log (`journal.wal`): what makes a durable commit one append and one `fdatasync`.
//!
//! A durable redb commit writes ~12 scattered pages and fsyncs them; on this project's VM that
//! is ~250 µs of CPU and ~450 µs of latency per commit, where appending the same bytes to a
//! preallocated file and `fdatasync`ing it costs ~90 µs and ~240 µs. So the writer commits to
//! redb *without* fsync and appends every commit's changes to this log as one frame; a commit
//! that must be durable fsyncs the log, not the database. Every so often (the log is full, a
//! second has passed, the journal closes) the writer makes a **checkpoint**: one durable redb
//! commit, which makes every earlier commit durable in the database, and bumps the log's epoch
//! so that the log starts over.
//!
//! ```text
//! file:    [header: 4096 bytes][frames from offset 4096 ...]
//! header:  [magic "sidelogW"][version u32][crc u32][identity u64][clean u64]
//!          [db_len u64][db_crc u32]                      (crc: CRC-32 of bytes 16..64)
//! frame:   [crc u32][len u32][identity u64][epoch u64][salt u64][number u64][synced u64]
//!          [payload: len bytes]
//! payload: ops, each [code u8] then its operands (the `op` codes below)
//! ```
//! A frame's `crc` is CRC-32 of everything after it; integers are little-endian. Frames follow
//! each other from offset 4096 with no gaps; `number` counts from 0 within a run. A **run** is
//! what one process wrote in one epoch: `salt` is drawn from the operating system's randomness
//! each time the log starts over, and every frame of a run carries its first frame's.
//! `identity` is the journal's (`meta.journal_id`, random, made with the database): a frame
//! belongs to the database whose identity it carries and to no other. `synced` is how many
//! frames of the run an `fdatasync` had covered when this one was written.
//!
//! The header names the journal the log belongs to and holds the record of a **clean stop**:
//! `clean` says that every frame in the file is in that journal's database (the close
//! checkpointed them; it is cleared before the next frame is written), and `db_len`/`db_crc`
//! fingerprint `journal.redb` as the clean stop left it (its length and the CRC of its first
//! page, where redb's commit slots are). The next start compares the fingerprint with the file
//! before redb opens it: a match means the file and the disk agree, and the rewrite-through that
//! a start after a crash does (`store.rs`) is skipped. The fingerprint is cleared before redb
//! writes a byte, so a crash of that start rewrites again.
//!
//! # Recovery
//! After a crash redb is at its last durable commit, the last checkpoint, or ahead of it: a
//! commit made without fsync whose pages all reached the disk survives. `meta.wal_epoch`
//! names the epoch of the frames written since the last checkpoint, and each logged commit
//! counts itself in `meta.wal_frames`, in the database and in its frame. Opening reads the run
//! frame by frame from offset 4096 (one frame in memory at a time), applies those past the
//! count (the ones the database lacks), and commits durably with the next epoch. Every
//! checkpoint bumps the epoch, with the log in use or not, so no frame is ever read twice.
//! The log is read whatever `journal.wal_bytes` says now: a log left by a run with the log on
//! is applied by a start with it off (`wal_bytes = 0` keeps only the header).
//!
//! Where the run ends, the file holds something that is not its next frame: zeros, an older
//! run's frames, or a frame whose check fails. A frame is torn only at the tail, but pages can
//! reach the disk out of order when power fails, so the rest of the file is searched for
//! frames of the same run. One written after an `fdatasync` covered the frame where the run
//! ended (its `synced` is past that frame's number) proves that frame was durable, maybe
//! acknowledged, and is damaged now: the start is refused, naming the file and offset. Frames
//! found after the end that no fsync covered were never acknowledged; they and a torn frame
//! are cut off, logged with the bytes dropped. A damaged frame in the last group that an
//! `fdatasync` covered before a crash cannot be told from a torn write (no later frame says it
//! was synced): it is cut off too, as SQLite, PostgreSQL and RocksDB's point-in-time recovery
//! treat the end of their logs.
//!
//! The log is also refused, before anything is applied, when its first frame belongs to
//! another journal (`journal.redb` was moved or replaced; unless that journal stopped cleanly,
//! when the log holds nothing it lacks and is taken over), or is of a later epoch than the
//! database (the database is older than its log: a restored backup). `--discard-wal` starts
//! anyway, saying how many frames it discards.
//!
//! A frame is written *before* its redb commit, so the database never holds a change the log
//! lacks, and a frame whose redb commit failed is un-written (its header zeroed) before the
//! reopen, so that the reopen does not bring back a commit that was reported failed. After a
//! failed `fdatasync` of the log the writer reopens: the page cache still shows the frames the
//! disk may have dropped; replaying them and checkpointing puts them in the database, durably,
//! before anything else is written.
//!
//! A log written by sidelog before identities (format 1: no header, frames from offset 0 with
//! a 32-byte header without `identity` and `synced`) is applied once, beside the database it
//! came with (one without an identity), and the log is rewritten in this format.

use super::error::Failure;
use redb::WriteTransaction;

use super::tables::{BLOCKS, DEAD_LETTERS, DEDUP_LOG, HEADS, META, RECORDED};

/// The log's file name inside the data directory.
pub const WAL_FILE_NAME: &str = "journal.wal";

/// Where frames start; the file header lies before.
pub const FRAMES_START: u64 = 4096;
/// The file header's bytes that are read and written (within one sector, written at once).
const FILE_HEADER: usize = 64;
const MAGIC: [u8; 8] = *b"sidelogW";
const VERSION: u32 = 2;

/// The size of a frame's header.
const HEADER: usize = 4 + 4 + 8 + 8 + 8 + 8 + 8;
/// Format 1's frame header: `[crc][len][epoch][salt][number]`.
const V1_HEADER: usize = 4 + 4 + 8 + 8 + 8;
/// The bytes of a redb page the clean-stop fingerprint covers (redb's header and commit slots
/// are in the first 320).
const DB_FINGERPRINT_BYTES: usize = 4096;
/// Bytes read at a time when searching the file for frames of a run.
const SCAN_CHUNK: usize = 1 << 20;

/// Op codes. Each names the table and whether a key is set or removed.
mod op {
    pub const BLOCK_PUT: u8 = 1;
    pub const BLOCK_DEL: u8 = 2;
    pub const HEAD_PUT: u8 = 3;
    pub const HEAD_DEL: u8 = 4;
    pub const RECORDED_PUT: u8 = 5;
    pub const RECORDED_DEL: u8 = 6;
    pub const DEAD_PUT: u8 = 7;
    pub const DEAD_DEL: u8 = 8;
    pub const IDS_PUT: u8 = 9;
    pub const IDS_DEL: u8 = 10;
    pub const META_PUT: u8 = 11;
}

/// The tables of bytes values a redo op can name.
#[derive(Debug, Clone, Copy)]
pub(super) enum BytesTable {
    Blocks,
    Heads,
    DeadLetters,
    DedupLog,
}

impl BytesTable {
    fn codes(self) -> (u8, u8) {
        match self {
            BytesTable::Blocks => (op::BLOCK_PUT, op::BLOCK_DEL),
            BytesTable::Heads => (op::HEAD_PUT, op::HEAD_DEL),
            BytesTable::DeadLetters => (op::DEAD_PUT, op::DEAD_DEL),
            BytesTable::DedupLog => (op::IDS_PUT, op::IDS_DEL),
        }
    }
}

/// The changes one write transaction makes, as a frame's payload. The header is reserved at
/// the front so that the frame is written from this buffer without another copy.
#[derive(Debug)]
pub(super) struct Redo {
    buf: Vec<u8>,
    /// Whether changes are recorded: not when the commit cannot be logged (no log, or no room
    /// for one), where the frame would be built for nothing.
    on: bool,
}

impl Default for Redo {
    fn default() -> Self {
        Redo {
            buf: vec![0; HEADER],
            on: true,
        }
    }
}

impl Redo {
    /// A redo that records nothing.
    pub fn off() -> Redo {
        Redo {
            buf: Vec::new(),
            on: false,
        }
    }

    pub fn put(&mut self, table: BytesTable, key: u64, value: &[u8]) {
        if !self.on {
            return;
        }
        self.buf.push(table.codes().0);
        self.buf.extend_from_slice(&key.to_le_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(value);
    }

    pub fn remove(&mut self, table: BytesTable, key: u64) {
        if !self.on {
            return;
        }
        self.buf.push(table.codes().1);
        self.buf.extend_from_slice(&key.to_le_bytes());
    }

    pub fn put_recorded(&mut self, key: u64, first: u64, count: u32) {
        if !self.on {
            return;
        }
        self.buf.push(op::RECORDED_PUT);
        self.buf.extend_from_slice(&key.to_le_bytes());
        self.buf.extend_from_slice(&first.to_le_bytes());
        self.buf.extend_from_slice(&count.to_le_bytes());
    }

    pub fn remove_recorded(&mut self, key: u64) {
        if !self.on {
            return;
        }
        self.buf.push(op::RECORDED_DEL);
        self.buf.extend_from_slice(&key.to_le_bytes());
    }

    pub fn put_meta(&mut self, name: &str, value: u64) {
        if !self.on {
            return;
        }
        debug_assert!(name.len() <= usize::from(u8::MAX));
        self.buf.push(op::META_PUT);
        self.buf.push(name.len() as u8);
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    /// The whole frame's size.
    pub fn frame_len(&self) -> usize {
        self.buf.len()
    }

    /// The frame: header filled in.
    fn seal(&mut self, head: &FrameHeader) -> &[u8] {
        let len = (self.buf.len() - HEADER) as u32;
        self.buf[4..8].copy_from_slice(&len.to_le_bytes());
        self.buf[8..16].copy_from_slice(&head.identity.to_le_bytes());
        self.buf[16..24].copy_from_slice(&head.epoch.to_le_bytes());
        self.buf[24..32].copy_from_slice(&head.salt.to_le_bytes());
        self.buf[32..40].copy_from_slice(&head.number.to_le_bytes());
        self.buf[40..48].copy_from_slice(&head.synced.to_le_bytes());
        let crc = crc32fast::hash(&self.buf[4..]);
        self.buf[..4].copy_from_slice(&crc.to_le_bytes());
        &self.buf
    }
}

/// A frame's header, as written and as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub crc: u32,
    pub len: u32,
    /// 0 in a format-1 log.
    pub identity: u64,
    pub epoch: u64,
    pub salt: u64,
    pub number: u64,
    /// 0 in a format-1 log.
    pub synced: u64,
}

impl FrameHeader {
    fn parse(format: Format, b: &[u8]) -> FrameHeader {
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        match format {
            Format::V1 => FrameHeader {
                crc: u32_at(0),
                len: u32_at(4),
                identity: 0,
                epoch: u64_at(8),
                salt: u64_at(16),
                number: u64_at(24),
                synced: 0,
            },
            Format::V2 => FrameHeader {
                crc: u32_at(0),
                len: u32_at(4),
                identity: u64_at(8),
                epoch: u64_at(16),
                salt: u64_at(24),
                number: u64_at(32),
                synced: u64_at(40),
            },
        }
    }
}

/// The layout of the frames in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// sidelog before identities: no file header, 32-byte frame headers from offset 0.
    V1,
    /// This layout (see the module's docs).
    V2,
}

impl Format {
    fn header_len(self) -> usize {
        match self {
            Format::V1 => V1_HEADER,
            Format::V2 => HEADER,
        }
    }

    fn frames_start(self) -> u64 {
        match self {
            Format::V1 => 0,
            Format::V2 => FRAMES_START,
        }
    }
}

/// The log file's header, as found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileHeader {
    pub identity: u64,
    /// Every frame in the file is in the database of `identity` (a clean stop).
    pub clean: bool,
    /// `journal.redb` as the clean stop left it; `None` once a start has used it.
    pub db: Option<DbFingerprint>,
}

impl FileHeader {
    fn encode(&self) -> [u8; FILE_HEADER] {
        let mut b = [0u8; FILE_HEADER];
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.identity.to_le_bytes());
        b[24..32].copy_from_slice(&u64::from(self.clean).to_le_bytes());
        if let Some(db) = self.db {
            b[32..40].copy_from_slice(&db.len.to_le_bytes());
            b[40..44].copy_from_slice(&db.crc.to_le_bytes());
        }
        let crc = crc32fast::hash(&b[16..]);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// `None` when the bytes are not a whole header of this version.
    fn decode(b: &[u8; FILE_HEADER]) -> Option<FileHeader> {
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
        if b[..8] != MAGIC || b[8..12] != VERSION.to_le_bytes() || crc32fast::hash(&b[16..]) != crc
        {
            return None;
        }
        let len = u64_at(32);
        let db_crc = u32::from_le_bytes(b[40..44].try_into().expect("4 bytes"));
        Some(FileHeader {
            identity: u64_at(16),
            clean: u64_at(24) == 1,
            db: (len > 0).then_some(DbFingerprint { len, crc: db_crc }),
        })
    }
}

/// `journal.redb`'s length and the CRC of its first page, as a clean stop left them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbFingerprint {
    pub len: u64,
    pub crc: u32,
}

impl DbFingerprint {
    /// The fingerprint of the database in `file`.
    pub fn of(file: &dyn redb::StorageBackend) -> std::io::Result<DbFingerprint> {
        let len = file.len()?;
        let mut page = vec![0u8; DB_FINGERPRINT_BYTES.min(len as usize)];
        file.read(0, &mut page)?;
        Ok(DbFingerprint {
            len,
            crc: crc32fast::hash(&page),
        })
    }
}

/// What a log's first whole frame says about the log.
enum First {
    /// This journal's, of an epoch the database has not passed: read on.
    Ours,
    /// Another journal's log, all of it in that journal (it stopped cleanly): nothing to apply.
    InItsJournal,
    /// Another journal's, or of a newer epoch than the database's.
    Refused(Refusal),
}

/// Why a log cannot be applied to the database beside it. Each is refused unless the start
/// was told to discard the log's unusable frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The log's first frame carries another journal's identity (0: a format-1 log, which
    /// carries none, beside a database that has one).
    Foreign { identity: u64, frames: u64 },
    /// The log's first frame is of a later epoch than the database names: the database is
    /// older than its log.
    Newer { epoch: u64, frames: u64 },
    /// The frame at `offset` (number `number` of the run) fails its check, and `later` frames
    /// after it were written once an fsync had covered it.
    Damaged {
        offset: u64,
        number: u64,
        later: u64,
    },
}

impl Refusal {
    /// What the operator reads: what was found, and what to do.
    pub fn describe(&self, ours: u64, db_epoch: u64) -> String {
        match self {
            Refusal::Foreign {
                identity: 0,
                frames,
            } => format!(
                "it was written by an older sidelog for another journal ({frames} frames), not \
                 for this one (identity {ours:016x}): journal.redb was moved or replaced since. \
                 Put the log back beside the journal it belongs to, or move it aside; \
                 --discard-wal starts without it"
            ),
            Refusal::Foreign { identity, frames } => format!(
                "it belongs to another journal (identity {identity:016x}, {frames} frames \
                 that journal may still need), not to this one ({ours:016x}): journal.redb was \
                 moved or replaced since. Put the log back beside the journal it belongs to \
                 (with `sidelog inspect wal` you can see what it holds), or move it aside; \
                 --discard-wal starts without it"
            ),
            Refusal::Newer { epoch, frames } => format!(
                "its {frames} frames are of epoch {epoch}, later than journal.redb's {db_epoch}: \
                 journal.redb is older than its log (a restored backup?), and starting on it \
                 would lose what those frames hold. Restore journal.redb and journal.wal \
                 together, or start with --discard-wal to go on without them"
            ),
            Refusal::Damaged {
                offset,
                number,
                later,
            } => format!(
                "its frame {number} at offset {offset} is damaged (its checksum does not match), \
                 and {later} frames written after an fsync had made it durable follow it: \
                 acknowledged messages may be in it. Restore the file from a backup, or read \
                 what it still holds with `sidelog inspect wal`; --discard-wal applies the \
                 frames before it and drops the rest"
            ),
        }
    }

    /// Frames that discarding this gives up.
    pub fn frames(&self) -> u64 {
        match self {
            Refusal::Foreign { frames, .. } | Refusal::Newer { frames, .. } => *frames,
            Refusal::Damaged { later, .. } => *later + 1,
        }
    }
}

/// What reading a run for recovery found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Whole frames of the run, in order from 0.
    pub frames: u64,
    /// Where the run ends.
    pub end: u64,
    /// A frame of the run that was cut off at `end` (its header is the run's next, its check
    /// fails): the bytes it claimed.
    pub torn_bytes: u64,
    /// Whole frames of the run found past `end` that no fsync had covered: cut off with it.
    pub unsynced_after: u64,
}

/// The log file, as the writer appends to it.
pub(super) struct Wal {
    file: Box<dyn redb::StorageBackend>,
    /// The layout of the frames in the file as found; V2 once [`Wal::start`] has run.
    format: Format,
    /// The header as found (`None`: none, or not whole), then as last written.
    header: Option<FileHeader>,
    /// Whether the file was empty when opened.
    found_empty: bool,
    /// Bytes frames may use (the file is `FRAMES_START` + this long, written with zeros).
    capacity: u64,
    identity: u64,
    epoch: u64,
    salt: u64,
    /// Where the next frame goes.
    offset: u64,
    number: u64,
    /// Frames of this run an fsync has covered.
    synced: u64,
    /// Where the last frame starts, until the next reset.
    last: Option<u64>,
    /// Draws each reset's salt.
    entropy: sidelog_runtime::Entropy,
}

impl Wal {
    /// Opens the log in `file` and reads its header. Nothing is written.
    pub fn open(
        file: Box<dyn redb::StorageBackend>,
        entropy: sidelog_runtime::Entropy,
    ) -> std::io::Result<Wal> {
        let len = file.len()?;
        let mut raw = [0u8; FILE_HEADER];
        if len >= FILE_HEADER as u64 {
            file.read(0, &mut raw)?;
        }
        let header = FileHeader::decode(&raw);
        // No header: a format-1 log (frames from offset 0), or nothing at all. A damaged
        // header reads as format 1 here; `recover` decides with the database's identity.
        let format = if header.is_some() {
            Format::V2
        } else {
            Format::V1
        };
        Ok(Wal {
            file,
            format,
            header,
            // Only an empty file is known to hold nothing: a header of zeros can be one that
            // a failed fsync dropped, in front of frames that later fsyncs made durable.
            found_empty: len == 0,
            capacity: 0,
            identity: 0,
            epoch: 0,
            salt: 0,
            offset: FRAMES_START,
            number: 0,
            synced: 0,
            last: None,
            entropy,
        })
    }

    /// The header as found at open (or as last written).
    pub fn header(&self) -> Option<FileHeader> {
        self.header
    }

    /// Clears the clean stop's fingerprint of `journal.redb` (durably), before redb opens it:
    /// a crash of this start must not find it again.
    pub fn clear_fingerprint(&mut self) -> std::io::Result<()> {
        if let Some(header) = self.header.filter(|h| h.db.is_some()) {
            self.write_header(FileHeader { db: None, ..header })?;
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn write_header(&mut self, header: FileHeader) -> std::io::Result<()> {
        if self.file.len()? < FRAMES_START {
            self.file.set_len(FRAMES_START)?;
        }
        self.file.write(0, &header.encode())?;
        self.header = Some(header);
        Ok(())
    }

    /// Records a clean stop (durably): every frame is in the database of this log's identity,
    /// and `db` is that database's file now.
    pub fn record_clean_stop(&mut self, db: DbFingerprint) -> std::io::Result<()> {
        self.write_header(FileHeader {
            identity: self.identity,
            clean: true,
            db: Some(db),
        })?;
        self.file.sync_data()
    }

    /// Reads the run of `epoch` that belongs to the database `ours` (0: a database from before
    /// identities), passing each frame's number and payload to `apply` in order, one at a time.
    /// Refuses the log as the module's docs say.
    pub fn recover(
        &self,
        ours: u64,
        db_epoch: u64,
        mut apply: impl FnMut(u64, &[u8]) -> Result<(), Failure>,
    ) -> Result<Result<Recovered, Refusal>, Failure> {
        let io = |e: std::io::Error| Failure::Journal(super::JournalError::from_io(e));
        if self.found_empty {
            return Ok(Ok(Recovered::default()));
        }
        let format = match self.frames_format(ours).map_err(io)? {
            Ok(format) => format,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let header_len = format.header_len();
        let len = self.file.len().map_err(io)?;
        let mut offset = format.frames_start();
        let mut number = 0u64;
        let mut salt = None;
        let mut raw = vec![0u8; header_len];
        let mut payload = Vec::new();
        // The header of a frame that is the run's next but does not verify: torn.
        let mut torn = None;
        while offset + header_len as u64 <= len {
            self.file.read(offset, &mut raw).map_err(io)?;
            let h = FrameHeader::parse(format, &raw);
            let whole = self
                .whole(format, offset, &raw, &h, &mut payload)
                .map_err(io)?;
            if number == 0 && whole {
                match self.first(format, offset, &h, ours, db_epoch).map_err(io)? {
                    First::Ours => {}
                    First::InItsJournal => break,
                    First::Refused(refusal) => return Ok(Err(refusal)),
                }
            }
            let next = h.identity == ours
                && h.epoch == db_epoch
                && h.number == number
                && salt.is_none_or(|s| s == h.salt);
            if !next || !whole {
                torn = next.then_some(h);
                break;
            }
            salt = Some(h.salt);
            apply(number, &payload)?;
            number += 1;
            offset += (header_len + payload.len()) as u64;
        }
        let mut found = Recovered {
            frames: number,
            end: offset,
            torn_bytes: torn.map_or(0, |h| {
                (header_len as u64 + u64::from(h.len)).min(len.saturating_sub(offset))
            }),
            unsynced_after: 0,
        };
        if format == Format::V1 {
            // Format 1 has no `synced`: its first frame that does not verify ends it.
            return Ok(Ok(found));
        }
        let (later, unsynced_after) = self
            .past_the_end(offset, ours, db_epoch, salt, number)
            .map_err(io)?;
        found.unsynced_after = unsynced_after;
        if later > 0 {
            return Ok(Err(Refusal::Damaged {
                offset,
                number,
                later,
            }));
        }
        Ok(Ok(found))
    }

    /// What the log's first whole frame, `h` at `offset`, says about the log.
    fn first(
        &self,
        format: Format,
        offset: u64,
        h: &FrameHeader,
        ours: u64,
        db_epoch: u64,
    ) -> std::io::Result<First> {
        if h.identity != ours && self.clean_for(h.identity) {
            return Ok(First::InItsJournal);
        }
        if h.identity != ours {
            return Ok(First::Refused(Refusal::Foreign {
                identity: h.identity,
                frames: self.count_run(format, offset)?,
            }));
        }
        if h.epoch > db_epoch {
            return Ok(First::Refused(Refusal::Newer {
                epoch: h.epoch,
                frames: self.count_run(format, offset)?,
            }));
        }
        Ok(First::Ours)
    }

    /// The format the frames are read in: the file's, except that a log without a header
    /// beside a database with an identity is another journal's if it holds a frame (refused),
    /// or else this journal's log with its header damaged (read as format 2).
    fn frames_format(&self, ours: u64) -> std::io::Result<Result<Format, Refusal>> {
        Ok(Ok(match self.format {
            Format::V1 if ours == 0 => Format::V1,
            Format::V1 => match self.first_frame(Format::V1)? {
                Some(_) if !self.ours_past_a_damaged_header(ours)? => {
                    return Ok(Err(Refusal::Foreign {
                        identity: 0,
                        frames: self.count_run(Format::V1, 0)?,
                    }));
                }
                _ => Format::V2,
            },
            Format::V2 => Format::V2,
        }))
    }

    /// Frames of the run (`salt`, from `number` on) past its end at `offset`: those a later
    /// frame says were synced (proof of damage), and those no sync covered (unsynced writes
    /// that a power cut left behind).
    fn past_the_end(
        &self,
        offset: u64,
        ours: u64,
        db_epoch: u64,
        salt: Option<u64>,
        number: u64,
    ) -> std::io::Result<(u64, u64)> {
        let (mut later, mut unsynced) = (0, 0);
        for (_, h) in self.frames_after(offset, ours, Some(db_epoch))? {
            // The run's salt is known once it has a frame; before, any run of this epoch
            // counts (an earlier start's frames are never synced past a frame 0 that is bad).
            if salt.is_some_and(|s| s != h.salt) || h.number < number {
                continue;
            }
            if h.synced > number {
                later += 1;
            } else {
                unsynced += 1;
            }
        }
        Ok((later, unsynced))
    }

    /// Whether a whole frame of `ours` lies where this format's frames start: the file is our
    /// log, its header damaged.
    fn ours_past_a_damaged_header(&self, ours: u64) -> std::io::Result<bool> {
        Ok(self
            .first_frame(Format::V2)?
            .is_some_and(|h| h.identity == ours))
    }

    /// Whether `identity`'s log stopped cleanly (its frames are all in its database).
    fn clean_for(&self, identity: u64) -> bool {
        self.header
            .is_some_and(|h| h.clean && h.identity == identity)
    }

    /// The first frame, if it is whole.
    fn first_frame(&self, format: Format) -> std::io::Result<Option<FrameHeader>> {
        let start = format.frames_start();
        let mut raw = vec![0u8; format.header_len()];
        if self.file.len()? < start + raw.len() as u64 {
            return Ok(None);
        }
        self.file.read(start, &mut raw)?;
        let h = FrameHeader::parse(format, &raw);
        let mut payload = Vec::new();
        Ok(self
            .whole(format, start, &raw, &h, &mut payload)?
            .then_some(h))
    }

    /// The whole frames of the run that starts at `offset`, counted (for a refusal's message).
    fn count_run(&self, format: Format, offset: u64) -> std::io::Result<u64> {
        let mut raw = vec![0u8; format.header_len()];
        let mut payload = Vec::new();
        let (mut at, mut n, mut first) = (offset, 0u64, None);
        let len = self.file.len()?;
        while at + raw.len() as u64 <= len {
            self.file.read(at, &mut raw)?;
            let h = FrameHeader::parse(format, &raw);
            let (id, epoch, salt) = *first.get_or_insert((h.identity, h.epoch, h.salt));
            if (h.identity, h.epoch, h.salt, h.number) != (id, epoch, salt, n)
                || !self.whole(format, at, &raw, &h, &mut payload)?
            {
                break;
            }
            n += 1;
            at += (raw.len() + payload.len()) as u64;
        }
        Ok(n)
    }

    /// Whether the frame at `offset`, whose header bytes are `raw` (parsed: `h`), is whole:
    /// its payload, read into `payload`, matches its CRC.
    fn whole(
        &self,
        format: Format,
        offset: u64,
        raw: &[u8],
        h: &FrameHeader,
        payload: &mut Vec<u8>,
    ) -> std::io::Result<bool> {
        let end = offset + format.header_len() as u64 + u64::from(h.len);
        if end > self.file.len()? {
            return Ok(false);
        }
        payload.resize(h.len as usize, 0);
        self.file
            .read(offset + format.header_len() as u64, payload)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&raw[4..]);
        hasher.update(payload);
        Ok(hasher.finalize() == h.crc)
    }

    /// The whole frames of `identity` (and `epoch`, if given) that start after `offset`, with
    /// where each starts, in file order. Searches the file for their identity and epoch, a
    /// chunk at a time.
    fn frames_after(
        &self,
        offset: u64,
        identity: u64,
        epoch: Option<u64>,
    ) -> std::io::Result<Vec<(u64, FrameHeader)>> {
        let mut needle = identity.to_le_bytes().to_vec();
        if let Some(epoch) = epoch {
            needle.extend_from_slice(&epoch.to_le_bytes());
        }
        let finder = memchr::memmem::Finder::new(&needle);
        let len = self.file.len()?;
        let mut found = Vec::new();
        let mut payload = Vec::new();
        let mut raw = [0u8; HEADER];
        // A frame's identity is 8 bytes from its start: search from there.
        let mut at = offset + 1 + 8;
        let mut chunk = vec![0u8; SCAN_CHUNK];
        while at + needle.len() as u64 <= len {
            let n = (SCAN_CHUNK as u64).min(len - at) as usize;
            self.file.read(at, &mut chunk[..n])?;
            // Chunks overlap by the needle's length less one: no match is split.
            let mut next = at + (n - needle.len() + 1) as u64;
            for pos in finder.find_iter(&chunk[..n]) {
                let start = at + pos as u64 - 8;
                if start + HEADER as u64 > len {
                    continue;
                }
                self.file.read(start, &mut raw)?;
                let h = FrameHeader::parse(Format::V2, &raw);
                if self.whole(Format::V2, start, &raw, &h, &mut payload)? {
                    found.push((start, h));
                    // Go on past this frame: its payload holds no frame of the run.
                    next = start + HEADER as u64 + u64::from(h.len) + 8;
                    break;
                }
            }
            at = next;
        }
        Ok(found)
    }

    /// Makes the file this log's, in this format, with room for `capacity` bytes of frames
    /// (grown with zeros, or cut after its frames were applied), and starts the log in
    /// `epoch`. Called once the database has applied what the file held (or chose to discard
    /// it), so nothing in the file is needed any more.
    pub fn start(&mut self, identity: u64, epoch: u64, capacity: u64) -> std::io::Result<()> {
        self.identity = identity;
        self.capacity = capacity;
        // An empty file stays empty without a log: a full disk must still open. The clean
        // stop writes the header.
        if !(capacity == 0 && self.found_empty) {
            let header = match self.header {
                Some(h) if self.format == Format::V2 && h.identity == identity => {
                    FileHeader { db: None, ..h }
                }
                _ => FileHeader {
                    identity,
                    clean: false,
                    db: None,
                },
            };
            let mut changed = false;
            let len = self.file.len()?;
            if self.format == Format::V1 && !self.found_empty {
                // A format-1 log's frames lie where this format's header goes.
                self.file
                    .write(0, &vec![0u8; FRAMES_START.min(len) as usize])?;
                changed = true;
            }
            let want = FRAMES_START + capacity;
            if len > want {
                self.file.set_len(want)?;
                changed = true;
            } else if len < want {
                // Grown a step at a time, each written before the next: a start that dies on
                // the way leaves at most one step unwritten, and the next start goes on from
                // there. An appended frame then overwrites allocated blocks: its `fdatasync`
                // has no file size or extent to record.
                const STEP: u64 = 1 << 20;
                let zeros = vec![0u8; STEP.min(want - len) as usize];
                let mut at = len;
                while at < want {
                    let n = STEP.min(want - at) as usize;
                    self.file.set_len(at + n as u64)?;
                    self.file.write(at, &zeros[..n])?;
                    at += n as u64;
                }
                changed = true;
            }
            if changed || self.header != Some(header) {
                self.write_header(header)?;
                self.file.sync_data()?;
            }
        }
        self.format = Format::V2;
        self.found_empty = false;
        self.reset(epoch);
        Ok(())
    }

    /// Starts the log over in `epoch`, the one the database's durable state names, under a
    /// new salt.
    pub fn reset(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.salt = self.entropy.next_u64();
        self.offset = FRAMES_START;
        self.number = 0;
        self.synced = 0;
        self.last = None;
    }

    /// Whether frames were written since the last reset.
    pub fn has_frames(&self) -> bool {
        self.number > 0
    }

    /// Frames written since the last reset.
    pub fn frames(&self) -> u64 {
        self.number
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether a frame of `len` bytes fits after the frames written so far (and its payload's
    /// length in the header's `u32`).
    pub fn fits(&self, len: usize) -> bool {
        len.saturating_sub(HEADER) <= u32::MAX as usize
            && self.offset + len as u64 <= FRAMES_START + self.capacity
    }

    /// Appends `redo` as the next frame (not synced). The caller checked that it fits.
    pub fn append(&mut self, redo: &mut Redo) -> std::io::Result<()> {
        if self.header.is_some_and(|h| h.clean) {
            // The frame is not in the database yet: the header stops saying so before the
            // frame can be synced (one fdatasync covers both).
            self.write_header(FileHeader {
                identity: self.identity,
                clean: false,
                db: None,
            })?;
        }
        let frame = redo.seal(&FrameHeader {
            crc: 0,
            len: 0,
            identity: self.identity,
            epoch: self.epoch,
            salt: self.salt,
            number: self.number,
            synced: self.synced,
        });
        self.file.write(self.offset, frame)?;
        self.last = Some(self.offset);
        self.offset += frame.len() as u64;
        self.number += 1;
        Ok(())
    }

    /// Takes the last frame back (its commit failed): its header is zeroed, so that no read
    /// finds it or anything after it.
    pub fn unwrite_last(&mut self) -> std::io::Result<()> {
        if let Some(at) = self.last.take() {
            self.file.write(at, &[0u8; HEADER])?;
            self.offset = at;
            self.number -= 1;
            self.synced = self.synced.min(self.number);
        }
        Ok(())
    }

    /// Releases the file (and its lock): the journal is closed.
    pub fn close(&mut self) {
        self.file = Box::new(Released);
    }

    /// Makes every frame appended so far durable.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        self.synced = self.number;
        Ok(())
    }
}

/// The file of a closed log: every operation fails.
#[derive(Debug)]
struct Released;

impl redb::StorageBackend for Released {
    fn len(&self) -> std::io::Result<u64> {
        Err(released())
    }
    fn read(&self, _: u64, _: &mut [u8]) -> std::io::Result<()> {
        Err(released())
    }
    fn set_len(&self, _: u64) -> std::io::Result<()> {
        Err(released())
    }
    fn sync_data(&self) -> std::io::Result<()> {
        Err(released())
    }
    fn write(&self, _: u64, _: &[u8]) -> std::io::Result<()> {
        Err(released())
    }
    fn close(&self) -> std::io::Result<()> {
        Ok(())
    }
}

fn released() -> std::io::Error {
    std::io::Error::other("the redo log is closed")
}

/// One frame of a log file as `sidelog inspect wal` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameInfo {
    pub offset: u64,
    pub header: FrameHeader,
    /// The frame's check passes.
    pub whole: bool,
    /// The ops of a whole frame, one line each.
    pub ops: Vec<String>,
}

/// What a log file holds, read without the database (`sidelog inspect wal`): its header and
/// every frame of the run that starts the file, then every whole frame found after it.
#[derive(Debug, Clone)]
pub struct WalReport {
    pub len: u64,
    pub format: Format,
    pub header: Option<FileHeader>,
    pub frames: Vec<FrameInfo>,
}

/// Reads the log in `file` for a person: frames in file order from where they start, the
/// run that begins there, where it ends, and whole frames found after it. Never fails on
/// damage; reads one frame at a time.
pub fn read_report(file: Box<dyn redb::StorageBackend>) -> std::io::Result<WalReport> {
    let wal = Wal::open(file, sidelog_runtime::Entropy::from_seed(0))?;
    let format = wal.format;
    let len = wal.file.len()?;
    let header_len = format.header_len();
    let mut frames = Vec::new();
    let mut offset = format.frames_start();
    let mut payload = Vec::new();
    let mut raw = vec![0u8; header_len];
    let mut first: Option<FrameHeader> = None;
    while offset + header_len as u64 <= len {
        wal.file.read(offset, &mut raw)?;
        let h = FrameHeader::parse(format, &raw);
        let whole = wal.whole(format, offset, &raw, &h, &mut payload)?;
        let same_run = first.is_none_or(|f| {
            (f.identity, f.epoch, f.salt) == (h.identity, h.epoch, h.salt)
                && h.number == frames.len() as u64
        });
        if !whole || !same_run {
            if raw.iter().any(|b| *b != 0) {
                frames.push(FrameInfo {
                    offset,
                    header: h,
                    whole: false,
                    ops: Vec::new(),
                });
            }
            break;
        }
        first.get_or_insert(h);
        frames.push(FrameInfo {
            offset,
            header: h,
            whole: true,
            ops: describe_ops(&payload),
        });
        offset += (header_len + payload.len()) as u64;
    }
    // Frames of the same journal past the end: of the run's epoch, or any when the run has no
    // whole first frame.
    let identity = first.map(|f| f.identity).or(wal.header.map(|h| h.identity));
    if let (Format::V2, Some(identity)) = (format, identity) {
        {
            for (at, h) in wal.frames_after(offset, identity, first.map(|f| f.epoch))? {
                payload.resize(h.len as usize, 0);
                wal.file.read(at + HEADER as u64, &mut payload)?;
                frames.push(FrameInfo {
                    offset: at,
                    header: h,
                    whole: true,
                    ops: describe_ops(&payload),
                });
            }
        }
    }
    Ok(WalReport {
        len,
        format,
        header: wal.header,
        frames,
    })
}

/// A frame's ops, one line each: `put blocks 17 (4211 bytes)`, `meta backlog_entries = 9`.
fn describe_ops(payload: &[u8]) -> Vec<String> {
    let mut r = Reader { data: payload };
    let mut lines = Vec::new();
    let table = |code: u8| match code {
        op::BLOCK_PUT | op::BLOCK_DEL => "blocks",
        op::HEAD_PUT | op::HEAD_DEL => "heads",
        op::DEAD_PUT | op::DEAD_DEL => "dead_letters",
        op::IDS_PUT | op::IDS_DEL => "dedup_log",
        op::RECORDED_PUT | op::RECORDED_DEL => "recorded",
        _ => "meta",
    };
    while let Some(code) = r.u8() {
        let line = match code {
            op::BLOCK_PUT | op::HEAD_PUT | op::DEAD_PUT | op::IDS_PUT => {
                let (Some(k), Some(n)) = (r.u64(), r.u32()) else {
                    break;
                };
                let Some(v) = r.take(n as usize) else {
                    break;
                };
                let mut line = format!("put {} {k} ({n} bytes)", table(code));
                match code {
                    op::BLOCK_PUT => describe_block(k, v, &mut line),
                    op::DEAD_PUT => {
                        match super::record::decode_record::<sidelog_proto::journal::DeadLetter>(
                            "dead_letters",
                            k,
                            v,
                        ) {
                            Ok(d) => line.push_str(&format!(
                                ": dead letter id {:?}",
                                d.message.unwrap_or_default().id
                            )),
                            Err(e) => line.push_str(&format!(": {e}")),
                        }
                    }
                    _ => {}
                }
                line
            }
            op::BLOCK_DEL | op::HEAD_DEL | op::DEAD_DEL | op::IDS_DEL | op::RECORDED_DEL => {
                let Some(k) = r.u64() else { break };
                format!("remove {} {k}", table(code))
            }
            op::RECORDED_PUT => {
                let (Some(k), Some(first), Some(count)) = (r.u64(), r.u64(), r.u32()) else {
                    break;
                };
                format!("put recorded {k} = ({first}, {count})")
            }
            op::META_PUT => {
                let Some(n) = r.u8() else { break };
                let (Some(name), Some(v)) = (r.take(usize::from(n)), r.u64()) else {
                    break;
                };
                format!("meta {} = {v}", String::from_utf8_lossy(name))
            }
            other => format!("unknown op {other}"),
        };
        lines.push(line);
    }
    lines
}

/// Appends a block's entries to `line`: each one's kind, sequence and message id.
fn describe_block(first: u64, block: &[u8], line: &mut String) {
    use sidelog_proto::journal::{InputEntry, OutputEntry};
    for entry in super::block::entries(first, block) {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                line.push_str(&format!("; {e}"));
                return;
            }
        };
        let (kind, id) = match entry.kind {
            super::block::Kind::Input => (
                "input",
                super::record::decode_record::<InputEntry>("blocks", entry.seq, entry.record)
                    .map(|e| e.message.unwrap_or_default().id),
            ),
            super::block::Kind::Output => (
                "output",
                super::record::decode_record::<OutputEntry>("blocks", entry.seq, entry.record)
                    .map(|e| e.message.unwrap_or_default().id),
            ),
            super::block::Kind::Gone => continue,
        };
        match id {
            Ok(id) => line.push_str(&format!("; {kind} {} id {id:?}", entry.seq)),
            Err(e) => line.push_str(&format!("; {kind} {}: {e}", entry.seq)),
        }
    }
}

/// Reads the log file at `path` for a person, without writing it or taking its lock (a
/// running sidelog may be writing it: what is read is a snapshot).
pub fn read_wal(path: &std::path::Path) -> std::io::Result<WalReport> {
    let file = std::fs::File::open(path)?;
    let backend = redb::backends::FileBackend::new(file).map_err(std::io::Error::other)?;
    read_report(Box::new(backend))
}

/// Applies one frame's ops to the tables in `txn`. A frame that does not parse is a bug or
/// damage past the CRC; it fails the open rather than guessing.
pub(super) fn apply(txn: &WriteTransaction, payload: &[u8]) -> Result<(), Failure> {
    let bad = |what: &str| {
        Failure::Redb(redb::Error::Corrupted(format!(
            "{WAL_FILE_NAME}: a frame {what}"
        )))
    };
    let mut r = Reader { data: payload };
    let mut blocks = txn.open_table(BLOCKS)?;
    let mut heads = txn.open_table(HEADS)?;
    let mut dead = txn.open_table(DEAD_LETTERS)?;
    let mut ids = txn.open_table(DEDUP_LOG)?;
    let mut recorded = txn.open_table(RECORDED)?;
    let mut meta = txn.open_table(META)?;
    while let Some(code) = r.u8() {
        let key = || bad("ends inside a key");
        let value = || bad("ends inside a value");
        match code {
            op::BLOCK_PUT | op::HEAD_PUT | op::DEAD_PUT | op::IDS_PUT => {
                let k = r.u64().ok_or_else(key)?;
                let len = r.u32().ok_or_else(value)?;
                let v = r.take(len as usize).ok_or_else(value)?;
                match code {
                    op::BLOCK_PUT => blocks.insert(k, v)?,
                    op::HEAD_PUT => heads.insert(k, v)?,
                    op::DEAD_PUT => dead.insert(k, v)?,
                    _ => ids.insert(k, v)?,
                };
            }
            op::BLOCK_DEL | op::HEAD_DEL | op::DEAD_DEL | op::IDS_DEL => {
                let k = r.u64().ok_or_else(key)?;
                match code {
                    op::BLOCK_DEL => blocks.remove(k)?,
                    op::HEAD_DEL => heads.remove(k)?,
                    op::DEAD_DEL => dead.remove(k)?,
                    _ => ids.remove(k)?,
                };
            }
            op::RECORDED_PUT => {
                let k = r.u64().ok_or_else(key)?;
                let first = r.u64().ok_or_else(value)?;
                let count = r.u32().ok_or_else(value)?;
                recorded.insert(k, (first, count))?;
            }
            op::RECORDED_DEL => {
                let k = r.u64().ok_or_else(key)?;
                recorded.remove(k)?;
            }
            op::META_PUT => {
                let len = r.u8().ok_or_else(key)?;
                let name = r.take(usize::from(len)).ok_or_else(key)?;
                let name =
                    std::str::from_utf8(name).map_err(|_| bad("names a key that is not UTF-8"))?;
                let v = r.u64().ok_or_else(value)?;
                meta.insert(name, v)?;
            }
            other => return Err(bad(&format!("holds an unknown op {other}"))),
        }
    }
    Ok(())
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.data.len() < n {
            return None;
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::backends::InMemoryBackend;
    use redb::{
        ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _, StorageBackend as _,
    };
    use std::sync::Arc;

    const ID: u64 = 0x5eed;

    /// A backend that several `Wal`s can share, as the starts of one machine share a file.
    #[derive(Debug, Clone, Default)]
    struct Shared(Arc<InMemoryBackend>);

    impl redb::StorageBackend for Shared {
        fn len(&self) -> std::io::Result<u64> {
            redb::StorageBackend::len(self.0.as_ref())
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            redb::StorageBackend::read(self.0.as_ref(), offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            redb::StorageBackend::set_len(self.0.as_ref(), len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            redb::StorageBackend::write(self.0.as_ref(), offset, data)
        }
        fn close(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn flip(&self, at: u64) {
            let mut b = [0u8; 1];
            self.read(at, &mut b).unwrap();
            self.write(at, &[b[0] ^ 0x5a]).unwrap();
        }
    }

    fn wal_on(file: &Shared, seed: u64) -> Wal {
        Wal::open(
            Box::new(file.clone()),
            sidelog_runtime::Entropy::from_seed(seed),
        )
        .unwrap()
    }

    /// A log of `identity` started in `epoch` with 64 KiB of frames.
    fn started(file: &Shared, identity: u64, epoch: u64) -> Wal {
        let mut w = wal_on(file, epoch);
        w.start(identity, epoch, 1 << 16).unwrap();
        w
    }

    fn redo(n: u64) -> Redo {
        let mut r = Redo::default();
        r.put(BytesTable::Blocks, n, &[n as u8; 100]);
        r.put_meta("backlog_entries", n);
        r
    }

    /// Appends frames 0..n, fsyncing after each one listed in `synced`; returns where each
    /// frame starts.
    fn append(w: &mut Wal, n: u64, synced: &[u64]) -> Vec<u64> {
        let mut at = Vec::new();
        for i in 0..n {
            at.push(w.offset);
            w.append(&mut redo(i)).unwrap();
            if synced.contains(&i) {
                w.sync().unwrap();
            }
        }
        at
    }

    /// What a new start reads from `file` for a database of `identity` at `epoch`.
    fn recover(
        file: &Shared,
        identity: u64,
        epoch: u64,
    ) -> (Result<Recovered, Refusal>, Vec<Vec<u8>>) {
        let w = wal_on(file, 99);
        let mut frames = Vec::new();
        let r = w
            .recover(identity, epoch, |n, p| {
                assert_eq!(n, frames.len() as u64, "frames come in order");
                frames.push(p.to_vec());
                Ok(())
            })
            .map_err(|_| "recover failed")
            .unwrap();
        (r, frames)
    }

    #[test]
    fn frames_are_read_back_in_order_and_a_torn_tail_is_cut_off_with_its_bytes() {
        let file = Shared::default();
        let mut w = started(&file, ID, 7);
        let at = append(&mut w, 3, &[0, 1, 2]);
        let (r, frames) = recover(&file, ID, 7);
        assert_eq!(r.unwrap().frames, 3);
        assert_eq!(frames[1], redo(1).buf[HEADER..]);
        // The last frame's payload changes: nothing follows it, so it is a torn tail.
        file.flip(at[2] + HEADER as u64 + 5);
        let (r, frames) = recover(&file, ID, 7);
        let r = r.unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!((r.end, r.torn_bytes), (at[2], redo(2).frame_len() as u64));
    }

    #[test]
    fn a_damaged_frame_that_an_fsync_had_covered_refuses_the_start() {
        let file = Shared::default();
        let mut w = started(&file, ID, 7);
        let at = append(&mut w, 3, &[0, 1, 2]);
        file.flip(at[0] + HEADER as u64 + 5);
        let (r, frames) = recover(&file, ID, 7);
        assert_eq!(
            r,
            Err(Refusal::Damaged {
                offset: FRAMES_START,
                number: 0,
                later: 2
            })
        );
        assert!(frames.is_empty());
        // A damaged header is damage too.
        file.flip(at[0] + HEADER as u64 + 5);
        file.flip(at[1] + 20);
        let (r, frames) = recover(&file, ID, 7);
        assert!(
            matches!(
                r,
                Err(Refusal::Damaged {
                    number: 1,
                    later: 1,
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(frames.len(), 1, "the frames before it were read");
    }

    /// A power cut can keep a later unsynced page and lose an earlier one: frames past the
    /// end that no fsync covered were never acknowledged, and are cut off with it.
    #[test]
    fn unsynced_frames_past_a_lost_one_are_cut_off_not_refused() {
        let file = Shared::default();
        let mut w = started(&file, ID, 7);
        let at = append(&mut w, 4, &[0]);
        // Frame 1's page "never reached the disk": the file's old bytes (zeros) are there.
        file.write(at[1], &vec![0u8; (at[2] - at[1]) as usize])
            .unwrap();
        let (r, frames) = recover(&file, ID, 7);
        let r = r.unwrap();
        assert_eq!((frames.len(), r.end, r.unsynced_after), (1, at[1], 2));
    }

    #[test]
    fn frames_of_an_earlier_epoch_or_start_are_never_read_as_later_ones() {
        let file = Shared::default();
        let mut w = started(&file, ID, 1);
        append(&mut w, 3, &[2]);
        // Checkpointed: epoch 2. Its first frame has the length of epoch 1's first: epoch 1's
        // second frame follows it, numbered 1 as the next of epoch 2 would be.
        w.reset(2);
        append(&mut w, 1, &[0]);
        assert_eq!(recover(&file, ID, 2).1.len(), 1);
        // A start that found nothing to replay keeps the epoch under a new salt.
        w.reset(2);
        append(&mut w, 1, &[0]);
        let (r, frames) = recover(&file, ID, 2);
        assert_eq!(
            frames.len(),
            1,
            "the frames after it are the last start's: {r:?}"
        );
        assert_eq!(r.unwrap().unsynced_after, 0);
        // Stale frames: nothing to apply for the epoch after them.
        assert!(recover(&file, ID, 3).1.is_empty());
    }

    #[test]
    fn a_log_of_another_journal_is_refused_unless_that_journal_stopped_cleanly() {
        let file = Shared::default();
        let mut w = started(&file, ID, 4);
        append(&mut w, 3, &[2]);
        let (r, frames) = recover(&file, ID + 1, 4);
        assert_eq!(
            r,
            Err(Refusal::Foreign {
                identity: ID,
                frames: 3
            })
        );
        assert!(frames.is_empty());
        assert!(
            Refusal::Foreign {
                identity: ID,
                frames: 3
            }
            .describe(ID + 1, 4)
            .contains("--discard-wal")
        );
        w.record_clean_stop(DbFingerprint { len: 1, crc: 2 })
            .unwrap();
        let (r, frames) = recover(&file, ID + 1, 0);
        assert_eq!((r.unwrap().frames, frames.len()), (0, 0));
        // Its next frame clears the record.
        w.reset(5);
        append(&mut w, 1, &[0]);
        assert!(recover(&file, ID + 1, 0).0.is_err());
    }

    #[test]
    fn a_log_newer_than_its_database_is_refused() {
        let file = Shared::default();
        let mut w = started(&file, ID, 9);
        append(&mut w, 2, &[1]);
        assert_eq!(
            recover(&file, ID, 6).0,
            Err(Refusal::Newer {
                epoch: 9,
                frames: 2
            })
        );
    }

    #[test]
    fn an_unwritten_frame_is_not_read_and_the_next_takes_its_place() {
        let file = Shared::default();
        let mut w = started(&file, ID, 1);
        append(&mut w, 2, &[]);
        w.unwrite_last().unwrap();
        assert_eq!(recover(&file, ID, 1).1.len(), 1);
        w.append(&mut redo(2)).unwrap();
        let frames = recover(&file, ID, 1).1;
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1], redo(2).buf[HEADER..]);
    }

    #[test]
    fn a_frame_fits_only_within_the_capacity() {
        let file = Shared::default();
        let mut w = wal_on(&file, 1);
        w.start(ID, 1, 4096).unwrap();
        assert_eq!(file.len().unwrap(), FRAMES_START + 4096);
        let r = redo(1);
        assert!(w.fits(r.frame_len()));
        let mut big = Redo::default();
        big.put(BytesTable::Blocks, 1, &[0; 5000]);
        assert!(!w.fits(big.frame_len()));
        while w.fits(r.frame_len()) {
            w.append(&mut redo(1)).unwrap();
        }
        assert!(w.frames() > 10);
    }

    /// `wal_bytes` changed between two starts: the file is cut or grown only after what it
    /// held was read, and with 0 only its header is kept.
    #[test]
    fn a_start_resizes_the_file_to_its_capacity_and_keeps_its_header() {
        let file = Shared::default();
        let mut w = started(&file, ID, 1);
        append(&mut w, 2, &[1]);
        let mut w = wal_on(&file, 2);
        w.start(ID, 2, 0).unwrap();
        assert_eq!(file.len().unwrap(), FRAMES_START);
        assert_eq!(wal_on(&file, 3).header().unwrap().identity, ID);
        let mut w = wal_on(&file, 3);
        w.start(ID, 3, 1 << 20).unwrap();
        assert_eq!(file.len().unwrap(), FRAMES_START + (1 << 20));
    }

    /// A log written by sidelog before identities is applied once beside its database, and
    /// beside any other database is another journal's.
    #[test]
    fn a_format_1_log_is_read_beside_its_database_and_converted() {
        let file = Shared::default();
        let mut offset = 0u64;
        for n in 0..3u64 {
            let r = redo(n);
            let payload = &r.buf[HEADER..];
            let mut frame = Vec::new();
            frame.extend_from_slice(&[0; 4]);
            frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            frame.extend_from_slice(&6u64.to_le_bytes());
            frame.extend_from_slice(&77u64.to_le_bytes());
            frame.extend_from_slice(&n.to_le_bytes());
            frame.extend_from_slice(payload);
            let crc = crc32fast::hash(&frame[4..]);
            frame[..4].copy_from_slice(&crc.to_le_bytes());
            file.set_len(offset + frame.len() as u64).unwrap();
            file.write(offset, &frame).unwrap();
            offset += frame.len() as u64;
        }
        let (r, frames) = recover(&file, 0, 6);
        assert_eq!(
            (r.unwrap().frames, frames[2].clone()),
            (3, redo(2).buf[HEADER..].to_vec())
        );
        assert_eq!(
            recover(&file, ID, 6).0,
            Err(Refusal::Foreign {
                identity: 0,
                frames: 3
            })
        );
        let mut w = wal_on(&file, 1);
        w.start(ID, 7, 1 << 16).unwrap();
        assert_eq!(recover(&file, ID, 7).0.unwrap().frames, 0);
        append(&mut w, 1, &[0]);
        assert_eq!(recover(&file, ID, 7).1.len(), 1);
    }

    #[test]
    fn the_report_shows_the_run_its_end_and_frames_after_it() {
        let file = Shared::default();
        let mut w = started(&file, ID, 3);
        let at = append(&mut w, 3, &[0, 1, 2]);
        file.flip(at[1] + HEADER as u64 + 2);
        let report = read_report(Box::new(file.clone())).unwrap();
        let shown: Vec<(u64, bool)> = report.frames.iter().map(|f| (f.offset, f.whole)).collect();
        assert_eq!(shown, [(at[0], true), (at[1], false), (at[2], true)]);
        assert!(
            report.frames[0]
                .ops
                .iter()
                .any(|l| l.starts_with("put blocks 0"))
        );
        assert_eq!(report.header.unwrap().identity, ID);
    }

    #[test]
    fn replaying_over_a_state_that_holds_some_of_the_frames_gives_the_last_state() {
        let db = redb::Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        let frames: Vec<Vec<u8>> = (0..4)
            .map(|n| {
                let mut r = Redo::default();
                r.put(BytesTable::Heads, 1, &[n as u8]);
                if n == 2 {
                    r.remove(BytesTable::Heads, 1);
                    r.put(BytesTable::DedupLog, 5, b"ids");
                }
                if n == 3 {
                    r.remove(BytesTable::DedupLog, 5);
                }
                r.put_recorded(10 + n, n, 1);
                r.remove_recorded(10);
                r.put_meta("seq_floor", 100 + n);
                r.buf[HEADER..].to_vec()
            })
            .collect();
        let state = |db: &redb::Database| {
            let txn = db.begin_read().unwrap();
            let heads: Vec<(u64, Vec<u8>)> = txn
                .open_table(HEADS)
                .unwrap()
                .iter()
                .unwrap()
                .map(|r| {
                    let (k, v) = r.unwrap();
                    (k.value(), v.value().to_vec())
                })
                .collect();
            let ids = txn.open_table(DEDUP_LOG).unwrap().len().unwrap();
            let recorded = txn.open_table(RECORDED).unwrap().len().unwrap();
            let floor = txn
                .open_table(META)
                .unwrap()
                .get("seq_floor")
                .unwrap()
                .map(|v| v.value());
            (heads, ids, recorded, floor)
        };
        let txn = db.begin_write().unwrap();
        for f in &frames[..2] {
            apply(&txn, f).unwrap();
        }
        txn.commit().unwrap();
        let txn = db.begin_write().unwrap();
        for f in &frames {
            apply(&txn, f).unwrap();
        }
        txn.commit().unwrap();
        assert_eq!(state(&db), (vec![(1, vec![3])], 0, 3, Some(103)));
    }

    /// redb can come back ahead of its last durable commit; the log may end before it (its
    /// later frames torn) or after it. Opening applies exactly the frames it lacks.
    #[test]
    fn opening_applies_only_the_frames_the_database_lacks() {
        use crate::tables::{LogAtOpen, META_JOURNAL_ID, META_WAL_FRAMES, load_state};
        let frame = |n: u64| {
            let mut r = Redo::default();
            r.put_recorded(1, n, 1);
            r.put_meta(META_WAL_FRAMES, n + 1);
            r
        };
        let head = |db: &redb::Database| {
            let txn = db.begin_read().unwrap();
            let recorded = txn.open_table(RECORDED).unwrap();
            recorded.get(1).unwrap().map(|v| v.value().0)
        };
        // (frames the database holds, frames in the log) -> the value after opening.
        for (held, logged, want) in [(4u64, 2u64, 3u64), (2, 4, 3), (0, 3, 2), (3, 3, 2)] {
            let db = redb::Database::builder()
                .create_with_backend(InMemoryBackend::new())
                .unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(META_JOURNAL_ID, ID)
                .unwrap();
            for n in 0..held {
                apply(&txn, &frame(n).buf[HEADER..]).unwrap();
            }
            txn.commit().unwrap();
            let file = Shared::default();
            let mut w = started(&file, ID, 0);
            for n in 0..logged {
                w.append(&mut frame(n)).unwrap();
                w.sync().unwrap();
            }
            let log = LogAtOpen {
                wal: &wal_on(&file, 5),
                new_identity: 1,
                discard: false,
            };
            let state = load_state(&db, std::path::Path::new("test"), log).unwrap();
            assert_eq!(head(&db), Some(want), "held {held}, logged {logged}");
            assert_eq!(
                state.replayed_frames as u64,
                logged.saturating_sub(held),
                "held {held}, logged {logged}"
            );
            assert_eq!(state.wal_epoch, 1, "the open made its state durable");
            assert_eq!(state.identity, ID);
        }
    }

    #[test]
    fn a_frame_that_does_not_parse_fails_the_replay() {
        let db = redb::Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        let txn = db.begin_write().unwrap();
        assert!(apply(&txn, &[op::BLOCK_PUT, 1, 2]).is_err());
        assert!(apply(&txn, &[99]).is_err());
    }
}
