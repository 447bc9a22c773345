//! The redo log (`journal.wal`): what makes a durable commit one append and one `fdatasync`.
//!
//! A durable redb commit writes ~12 scattered pages and fsyncs them; on this project's VM that
//! is ~250 µs of CPU and ~450 µs of latency per commit, where appending the same bytes to a
//! preallocated file and `fdatasync`ing it costs ~90 µs and ~240 µs. So the writer commits to
//! redb *without* fsync and appends every commit's changes to this log as one frame; a commit
//! that must be durable fsyncs the log, not the database. Every so often (the log is full, a
//! second has passed, the journal closes) the writer makes a **checkpoint**: one durable redb
//! commit, which makes every earlier commit durable in the database, and bumps the log's epoch
//! so that the log starts over at offset 0.
//!
//! ```text
//! frame:   [crc u32][len u32][epoch u64][salt u64][number u64][payload: len bytes]
//! payload: ops, each [code u8] then its operands (the `op` codes below)
//! ```
//! `crc` is CRC-32 of everything after it; integers are little-endian. Frames follow each
//! other from offset 0 with no gaps; `number` counts from 0 within an epoch. `salt` is drawn
//! anew each time the log starts over, and every frame after the first must carry the first's.
//!
//! # Recovery
//! After a crash redb is at its last durable commit, the last checkpoint, or ahead of it: a
//! commit made without fsync whose pages all reached the disk survives (the simulator's torn
//! crashes showed it). `meta.wal_epoch` names the epoch of the frames written since the last
//! checkpoint, and each logged commit counts itself in `meta.wal_frames`, in the database and
//! in its frame. Opening reads frames from offset 0 while each is whole (its CRC matches), of
//! that epoch and the first frame's salt, and numbered in turn; it applies those past the
//! count, the ones the database lacks (a log whose tail was lost while redb ran ahead adds
//! nothing: applying its older frames would set some keys back and not others), and commits
//! durably with the next epoch (the open's own commit). With no frame and none counted it
//! writes nothing (a full disk still opens), and the log starts over in the same epoch under a
//! new salt: a frame the last process wrote past a torn first one is never read as the new
//! one's. A reopen in the same process, after an I/O error, goes the same way. A frame is
//! written *before* its redb commit, so the database never holds a change the log lacks, and
//! a frame whose redb commit failed is un-written (its header zeroed) before the reopen, so
//! that the reopen does not bring back a commit that was reported failed (nor need the space
//! it failed for).
//!
//! A frame is torn only at the tail: a frame that follows it was written later, and an fsync
//! that made it durable would have made the earlier one durable too. So the first frame that
//! does not verify ends the log, and nothing acknowledged is past it.
//!
//! After a failed `fdatasync` of the log the writer reopens: the page cache still shows the
//! frames the disk may have dropped; replaying them and checkpointing puts them in the
//! database, durably, before anything else is written.

use super::error::Failure;
use redb::WriteTransaction;

use super::tables::{BLOCKS, DEAD_LETTERS, DEDUP_LOG, HEADS, META, RECORDED};

/// The log's file name inside the data directory.
pub const WAL_FILE_NAME: &str = "journal.wal";

/// The size of a frame's header.
const HEADER: usize = 4 + 4 + 8 + 8 + 8;

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
    fn seal(&mut self, epoch: u64, salt: u64, number: u64) -> &[u8] {
        let len = (self.buf.len() - HEADER) as u32;
        self.buf[4..8].copy_from_slice(&len.to_le_bytes());
        self.buf[8..16].copy_from_slice(&epoch.to_le_bytes());
        self.buf[16..24].copy_from_slice(&salt.to_le_bytes());
        self.buf[24..32].copy_from_slice(&number.to_le_bytes());
        let crc = crc32fast::hash(&self.buf[4..]);
        self.buf[..4].copy_from_slice(&crc.to_le_bytes());
        &self.buf
    }
}

/// The log file, as the writer appends to it.
pub(super) struct Wal {
    file: Box<dyn redb::StorageBackend>,
    /// Bytes frames may use (the file is at least this long, written with zeros).
    capacity: u64,
    epoch: u64,
    salt: u64,
    offset: u64,
    number: u64,
    /// Where the last frame starts, until the next reset.
    last: Option<u64>,
    /// Draws each reset's salt (seeded from the clock, so the simulator's runs repeat).
    entropy: crate::runtime::Entropy,
}

impl Wal {
    /// Opens the log in `file`, growing it to `capacity` bytes of zeros first (so that appends
    /// overwrite allocated blocks: an `fdatasync` then has no file size or extent to record).
    pub fn open(
        file: Box<dyn redb::StorageBackend>,
        capacity: u64,
        entropy: crate::runtime::Entropy,
    ) -> std::io::Result<Wal> {
        let len = file.len()?;
        if len < capacity {
            // Grown a step at a time, each written before the next: a start that dies on the
            // way leaves at most one step unwritten, and the next start goes on from there.
            const STEP: u64 = 1 << 20;
            let zeros = vec![0u8; STEP.min(capacity - len) as usize];
            let mut at = len;
            while at < capacity {
                let n = STEP.min(capacity - at) as usize;
                file.set_len(at + n as u64)?;
                file.write(at, &zeros[..n])?;
                at += n as u64;
            }
            file.sync_data()?;
        }
        Ok(Wal {
            file,
            capacity,
            epoch: 0,
            salt: 0,
            offset: 0,
            number: 0,
            last: None,
            entropy,
        })
    }

    /// The payloads of the frames of `epoch`, in order, up to the first that is not whole.
    pub fn read(&self, epoch: u64) -> std::io::Result<Vec<Vec<u8>>> {
        let len = self.file.len()?;
        let mut frames = Vec::new();
        let mut offset = 0u64;
        let mut header = [0u8; HEADER];
        let mut first_salt = None;
        while offset + HEADER as u64 <= len {
            self.file.read(offset, &mut header)?;
            let crc = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
            let size = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
            let frame_epoch = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
            let salt = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
            let number = u64::from_le_bytes(header[24..32].try_into().expect("8 bytes"));
            let end = offset + HEADER as u64 + u64::from(size);
            let first_salt = *first_salt.get_or_insert(salt);
            if frame_epoch != epoch
                || salt != first_salt
                || number != frames.len() as u64
                || end > len
            {
                break;
            }
            let mut payload = vec![0u8; size as usize];
            self.file.read(offset + HEADER as u64, &mut payload)?;
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&header[4..]);
            hasher.update(&payload);
            if hasher.finalize() != crc {
                break;
            }
            frames.push(payload);
            offset = end;
        }
        Ok(frames)
    }

    /// Starts the log over in `epoch`, the one the database's durable state names, under a
    /// new salt.
    pub fn reset(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.salt = self.entropy.next_u64();
        self.offset = 0;
        self.number = 0;
        self.last = None;
    }

    /// Whether frames were written since the last reset.
    pub fn has_frames(&self) -> bool {
        self.offset > 0
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
        len.saturating_sub(HEADER) <= u32::MAX as usize && self.offset + len as u64 <= self.capacity
    }

    /// Appends `redo` as the next frame (not synced). The caller checked that it fits.
    pub fn append(&mut self, redo: &mut Redo) -> std::io::Result<()> {
        let frame = redo.seal(self.epoch, self.salt, self.number);
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
        }
        Ok(())
    }

    /// Makes every frame appended so far durable.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
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
    use redb::{ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _};

    fn wal(capacity: u64) -> Wal {
        Wal::open(
            Box::new(InMemoryBackend::new()),
            capacity,
            crate::runtime::Entropy::from_seed(1),
        )
        .unwrap()
    }

    fn redo(n: u64) -> Redo {
        let mut r = Redo::default();
        r.put(BytesTable::Blocks, n, &[n as u8; 100]);
        r.put_meta("backlog_entries", n);
        r
    }

    #[test]
    fn frames_are_read_back_in_order_up_to_the_first_torn_one() {
        let mut w = wal(1 << 16);
        w.reset(7);
        let mut lens = Vec::new();
        for n in 0..3 {
            let mut r = redo(n);
            lens.push(r.frame_len() as u64);
            w.append(&mut r).unwrap();
        }
        assert_eq!(w.read(7).unwrap().len(), 3);
        // Tear the last frame: one byte of its payload changes.
        let at = lens[0] + lens[1] + HEADER as u64 + 5;
        let mut b = [0u8; 1];
        w.file.read(at, &mut b).unwrap();
        w.file.write(at, &[b[0] ^ 0xff]).unwrap();
        assert_eq!(w.read(7).unwrap().len(), 2);
    }

    #[test]
    fn frames_of_an_earlier_epoch_are_never_read_as_later_ones() {
        let mut w = wal(1 << 16);
        w.reset(1);
        for n in 0..3 {
            w.append(&mut redo(n)).unwrap();
        }
        w.reset(2);
        assert!(w.read(2).unwrap().is_empty(), "a new epoch starts empty");
        // A frame of the same length as epoch 1's first: epoch 1's second frame follows it
        // in the file, numbered 1 as the next of epoch 2 would be, and is still not read.
        w.append(&mut redo(9)).unwrap();
        let frames = w.read(2).unwrap();
        assert_eq!(frames.len(), 1);
    }

    #[test]
    fn frames_of_an_earlier_start_in_the_same_epoch_are_never_read_as_later_ones() {
        let mut w = wal(1 << 16);
        w.reset(1);
        for n in 0..3 {
            w.append(&mut redo(n)).unwrap();
        }
        // The next start found nothing to replay (say frame 0 was torn), so it keeps epoch 1.
        w.reset(1);
        w.append(&mut redo(7)).unwrap();
        assert_eq!(
            w.read(1).unwrap().len(),
            1,
            "the frames after it are the last start's"
        );
    }

    #[test]
    fn an_unwritten_frame_is_not_read_and_the_next_takes_its_place() {
        let mut w = wal(1 << 16);
        w.reset(1);
        w.append(&mut redo(0)).unwrap();
        w.append(&mut redo(1)).unwrap();
        w.unwrite_last().unwrap();
        assert_eq!(w.read(1).unwrap().len(), 1);
        w.append(&mut redo(2)).unwrap();
        let frames = w.read(1).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1], redo(2).buf[HEADER..]);
    }

    #[test]
    fn a_frame_fits_only_within_the_capacity() {
        let mut w = wal(4096);
        let r = redo(1);
        assert!(w.fits(r.frame_len()));
        let mut big = Redo::default();
        big.put(BytesTable::Blocks, 1, &[0; 5000]);
        assert!(!w.fits(big.frame_len()));
        w.reset(1);
        while w.fits(r.frame_len()) {
            w.append(&mut redo(1)).unwrap();
        }
        assert!(w.read(1).unwrap().len() > 10);
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
        use crate::journal::tables::{META_WAL_FRAMES, load_state};
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
            for n in 0..held {
                apply(&txn, &frame(n).buf[HEADER..]).unwrap();
            }
            txn.commit().unwrap();
            let mut w = wal(1 << 16);
            w.reset(0);
            for n in 0..logged {
                w.append(&mut frame(n)).unwrap();
            }
            let state = load_state(&db, std::path::Path::new("test"), Some(&w)).unwrap();
            assert_eq!(head(&db), Some(want), "held {held}, logged {logged}");
            assert_eq!(
                state.replayed_frames as u64,
                logged.saturating_sub(held),
                "held {held}, logged {logged}"
            );
            assert_eq!(state.wal_epoch, 1, "the open made its state durable");
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
