//! The persisted dedup window: one value per commit holding the message ids that commit
//! remembered, keyed by the commit's last sequence so the table is in commit order. Eviction
//! removes whole values from the front; loading reads them oldest first, a later entry for an
//! id replacing an earlier one.
//!
//! ```text
//! [IDLOG_FORMAT][recorded_at_ms i64][count u32] then per id: [seq u64][len u32][id, UTF-8]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher as _;

use super::error::JournalError;
use super::types::{DedupRecord, Seq};

const IDLOG_FORMAT: u8 = 1;
const FIXED: usize = 1 + 8 + 4;

/// The ids one commit remembers, being encoded.
#[derive(Debug, Default)]
pub(super) struct IdLogBuilder {
    buf: Vec<u8>,
    count: u32,
    /// The ids' hashes ([`IdWindow::hash`]), for the window once the value is written.
    pub hashes: Vec<u64>,
}

impl IdLogBuilder {
    pub fn push(&mut self, id: &str, hash: u64, seq: u64, now: i64) {
        self.hashes.push(hash);
        if self.buf.is_empty() {
            self.buf.push(IDLOG_FORMAT);
            self.buf.extend_from_slice(&now.to_le_bytes());
            self.buf.extend_from_slice(&[0; 4]);
        }
        self.buf.extend_from_slice(&seq.to_le_bytes());
        let len = u32::try_from(id.len()).expect("ids are limited far below 4 GiB");
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(id.as_bytes());
        self.count += 1;
    }

    /// The encoded value and its count, if any id was pushed.
    pub fn finish(mut self) -> Option<(Vec<u8>, Vec<u64>)> {
        if self.count == 0 {
            return None;
        }
        self.buf[9..13].copy_from_slice(&self.count.to_le_bytes());
        Some((self.buf, self.hashes))
    }
}

/// The header of one value: when its ids were recorded, and how many it holds.
pub(super) fn header(key: u64, bytes: &[u8]) -> Result<(i64, u32), JournalError> {
    if bytes.len() < FIXED || bytes[0] != IDLOG_FORMAT {
        return Err(bad(key, "not a dedup log value"));
    }
    let at = i64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(bytes[9..13].try_into().expect("4 bytes"));
    Ok((at, count))
}

/// Appends the ids of one value to `out`.
pub(super) fn read(key: u64, bytes: &[u8], out: &mut Vec<DedupRecord>) -> Result<(), JournalError> {
    let (at, _) = header(key, bytes)?;
    walk(key, bytes, |seq, id| {
        out.push(DedupRecord {
            id: id.to_owned(),
            seq: Seq(seq),
            recorded_at_ms: at,
        })
    })
}

/// Calls `each` with every (sequence, id) of one value.
fn walk(key: u64, bytes: &[u8], mut each: impl FnMut(u64, &str)) -> Result<(), JournalError> {
    let (_, count) = header(key, bytes)?;
    let mut rest = &bytes[FIXED..];
    for _ in 0..count {
        if rest.len() < 12 {
            return Err(bad(key, "an id is cut short"));
        }
        let seq = u64::from_le_bytes(rest[0..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes")) as usize;
        if rest.len() - 12 < len {
            return Err(bad(key, "an id is cut short"));
        }
        let id =
            std::str::from_utf8(&rest[12..12 + len]).map_err(|_| bad(key, "an id is not UTF-8"))?;
        each(seq, id);
        rest = &rest[12 + len..];
    }
    if !rest.is_empty() {
        return Err(bad(key, "bytes after the last id"));
    }
    Ok(())
}

/// Which entries of the dedup log are the latest for their id, per log value: the window's
/// count is of ids, and an id remembered again (accepted anew after it expired from the
/// pipeline's window) has an older entry that no longer counts. The writer keeps it beside
/// the file; ids are known by a 64-bit hash (a collision would only make the window hold one
/// id fewer).
#[derive(Debug, Default)]
pub(super) struct IdWindow {
    hasher: std::hash::RandomState,
    /// id hash → the key of the log value holding its latest entry.
    latest: HashMap<u64, u64>,
    /// log key → how many of its entries are the latest for their id.
    live: BTreeMap<u64, u32>,
    /// A commit failed after changing it: it is read from the file again before the next.
    pub stale: bool,
}

impl IdWindow {
    pub fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    /// Ids in the window.
    pub fn len(&self) -> u64 {
        self.latest.len() as u64
    }

    /// How many ids the log value `key` holds the latest entry of.
    pub fn live(&self, key: u64) -> u32 {
        self.live.get(&key).copied().unwrap_or(0)
    }

    /// A log value was written under `key` with these ids.
    pub fn add(&mut self, key: u64, hashes: &[u64]) {
        for &h in hashes {
            if let Some(old) = self.latest.insert(h, key) {
                self.forget_one(old);
            }
            *self.live.entry(key).or_default() += 1;
        }
    }

    /// The log value `key` (these bytes) was evicted.
    pub fn remove(&mut self, key: u64, bytes: &[u8]) -> Result<(), JournalError> {
        let mut hashes = Vec::new();
        walk(key, bytes, |_, id| hashes.push(self.hash(id)))?;
        for h in hashes {
            if self.latest.get(&h) == Some(&key) {
                self.latest.remove(&h);
            }
        }
        self.live.remove(&key);
        Ok(())
    }

    /// Adds a value read from the file (oldest first).
    pub fn load(&mut self, key: u64, bytes: &[u8]) -> Result<(), JournalError> {
        let mut hashes = Vec::new();
        walk(key, bytes, |_, id| hashes.push(self.hash(id)))?;
        self.add(key, &hashes);
        Ok(())
    }

    fn forget_one(&mut self, key: u64) {
        if let Some(n) = self.live.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.live.remove(&key);
            }
        }
    }
}

fn bad(key: u64, reason: &str) -> JournalError {
    JournalError::Decode {
        table: "dedup_log",
        key,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_back_and_damage_is_an_error() {
        let mut b = IdLogBuilder::default();
        b.push("a", 1, 3, 77);
        b.push("bé", 2, 4, 77);
        let (bytes, hashes) = b.finish().unwrap();
        assert_eq!(hashes, [1, 2]);
        assert_eq!(header(4, &bytes).unwrap(), (77, 2));
        let mut out = Vec::new();
        read(4, &bytes, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[1].id.as_str(), out[1].seq, out[1].recorded_at_ms),
            ("bé", Seq(4), 77)
        );
        for cut in 0..bytes.len() {
            assert!(
                read(4, &bytes[..cut], &mut Vec::new()).is_err(),
                "cut at {cut}"
            );
        }
        assert!(IdLogBuilder::default().finish().is_none());
    }

    #[test]
    fn the_window_counts_an_id_once_at_its_latest_place() {
        let mut w = IdWindow::default();
        let value = |key: u64, ids: &[&str]| {
            let mut b = IdLogBuilder::default();
            for id in ids {
                b.push(id, 0, key, 1);
            }
            b.finish().unwrap().0
        };
        let (one, two) = (value(1, &["a", "b"]), value(2, &["b", "c"]));
        w.load(1, &one).unwrap();
        w.load(2, &two).unwrap();
        assert_eq!((w.len(), w.live(1), w.live(2)), (3, 1, 2));
        w.remove(1, &one).unwrap();
        assert_eq!(
            (w.len(), w.live(1), w.live(2)),
            (2, 0, 2),
            "b stays: its latest is in 2"
        );
    }
}
