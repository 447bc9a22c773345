//! The two values one group commit writes for the entries it adds (layout in `mod.rs`): the
//! **block**, every new input and output record of the commit in one value, written once and
//! never changed; and its **head**, which of those entries are still live, rewritten when some
//! complete and removed with the block when none is left.
//!
//! One value per commit instead of one per record: a commit of 700 records costs two B-tree
//! inserts, and completing them one head rewrite per commit that touches the block, then two
//! removals.
//!
//! ```text
//! block: [BLOCK_FORMAT] then per entry: [offset u32][kind u8][len u32][record: RECORD_FORMAT, protobuf]
//! head:  [HEAD_FORMAT][last u64][oldest_ms i64][block_bytes u64] then one kind byte per sequence first..=last
//! ```
//! `offset` is the entry's sequence minus the block's first; the kinds are 0 (not an entry of
//! this block, or completed), 1 (live input), 2 (live output). Integers are little-endian.

use super::error::JournalError;
use super::record::{encode_input_into, encode_output_into};
use sidelog_proto::v1::Message;

const BLOCK_FORMAT: u8 = 1;
const HEAD_FORMAT: u8 = 1;
const FRAME: usize = 4 + 1 + 4;
const HEAD_FIXED: usize = 1 + 8 + 8 + 8;

/// What an entry of a block is, and in a head whether it is still live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Gone = 0,
    Input = 1,
    Output = 2,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            0 => Some(Kind::Gone),
            1 => Some(Kind::Input),
            2 => Some(Kind::Output),
            _ => None,
        }
    }
}

/// Which entries of one block are live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Head {
    pub first: u64,
    pub last: u64,
    /// The earliest time among the block's entries (received or recorded), unix ms.
    pub oldest_ms: i64,
    /// The size of the block's value: what the backlog frees when the block is removed.
    pub block_bytes: u64,
    kinds: Vec<u8>,
}

impl Head {
    /// The live kind of `seq` (`Gone` outside the block).
    pub fn kind(&self, seq: u64) -> Kind {
        seq.checked_sub(self.first)
            .and_then(|i| self.kinds.get(usize::try_from(i).ok()?))
            .and_then(|&b| Kind::from_byte(b))
            .unwrap_or(Kind::Gone)
    }

    /// Marks `seq` completed if it is a live entry of `kind`; says whether it was.
    pub fn mark_gone(&mut self, seq: u64, kind: Kind) -> bool {
        if self.kind(seq) != kind || kind == Kind::Gone {
            return false;
        }
        self.kinds[(seq - self.first) as usize] = Kind::Gone as u8;
        true
    }

    pub fn count(&self, kind: Kind) -> u64 {
        self.kinds.iter().filter(|&&b| b == kind as u8).count() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.iter().all(|&b| b == Kind::Gone as u8)
    }

    /// Whether any live entry of `kind` has a sequence at or after `from`.
    pub fn has_live_from(&self, kind: Kind, from: u64) -> bool {
        let skip = from.saturating_sub(self.first) as usize;
        self.kinds.iter().skip(skip).any(|&b| b == kind as u8)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEAD_FIXED + self.kinds.len());
        out.push(HEAD_FORMAT);
        out.extend_from_slice(&self.last.to_le_bytes());
        out.extend_from_slice(&self.oldest_ms.to_le_bytes());
        out.extend_from_slice(&self.block_bytes.to_le_bytes());
        out.extend_from_slice(&self.kinds);
        out
    }

    pub fn decode(first: u64, bytes: &[u8]) -> Result<Head, JournalError> {
        let bad = |reason: &str| JournalError::Decode {
            table: "heads",
            key: first,
            reason: reason.to_owned(),
        };
        if bytes.len() < HEAD_FIXED {
            return Err(bad("shorter than a head"));
        }
        if bytes[0] != HEAD_FORMAT {
            return Err(bad(&format!("unknown head format {}", bytes[0])));
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let last = u64_at(1);
        let kinds = bytes[HEAD_FIXED..].to_vec();
        if last < first || kinds.is_empty() || last - first != (kinds.len() - 1) as u64 {
            return Err(bad("its sequences do not match its length"));
        }
        if kinds.iter().any(|&b| Kind::from_byte(b).is_none()) {
            return Err(bad("unknown entry kind"));
        }
        Ok(Head {
            first,
            last,
            oldest_ms: u64_at(9) as i64,
            block_bytes: u64_at(17),
            kinds,
        })
    }
}

/// The block a commit is building: its entries' records, and its head.
#[derive(Debug, Default)]
pub(super) struct BlockBuilder {
    buf: Vec<u8>,
    head: Option<Head>,
}

impl BlockBuilder {
    /// The head of the block being built, to mark entries of this same commit.
    pub fn head_mut(&mut self) -> Option<&mut Head> {
        self.head.as_mut()
    }

    /// Adds an input's record; returns the record's size.
    pub fn push_input(&mut self, seq: u64, message: &Message, received_at_ms: i64) -> usize {
        let at = self.start(seq, Kind::Input, received_at_ms);
        encode_input_into(message, received_at_ms, &mut self.buf);
        self.end(at)
    }

    /// Adds an output's record; returns the record's size.
    pub fn push_output(&mut self, seq: u64, message: &Message, input_seq: u64, now: i64) -> usize {
        let at = self.start(seq, Kind::Output, now);
        encode_output_into(message, input_seq, now, &mut self.buf);
        self.end(at)
    }

    /// Adds a record encoded already (a file of the previous format being rewritten).
    pub fn push_record(&mut self, seq: u64, kind: Kind, record: &[u8], at_ms: i64) -> usize {
        let at = self.start(seq, kind, at_ms);
        self.buf.extend_from_slice(record);
        self.end(at)
    }

    /// Entries added so far.
    pub fn len(&self) -> usize {
        self.head
            .as_ref()
            .map_or(0, |h| h.count(Kind::Input) + h.count(Kind::Output)) as usize
    }

    /// Writes the frame of a new entry (its length patched by `end`); returns where the
    /// record starts.
    fn start(&mut self, seq: u64, kind: Kind, at_ms: i64) -> usize {
        let head = self.head.get_or_insert_with(|| Head {
            first: seq,
            last: seq,
            oldest_ms: at_ms,
            block_bytes: 0,
            kinds: Vec::new(),
        });
        assert!(
            seq >= head.first && (head.kinds.is_empty() || seq > head.last),
            "journal invariant: block entries take rising sequences ({seq} after {})",
            head.last
        );
        let offset = seq - head.first;
        head.kinds.resize(offset as usize, Kind::Gone as u8);
        head.kinds.push(kind as u8);
        head.last = seq;
        head.oldest_ms = head.oldest_ms.min(at_ms);
        if self.buf.is_empty() {
            self.buf.push(BLOCK_FORMAT);
        }
        let offset = u32::try_from(offset).expect("a commit takes fewer than 2^32 sequences");
        self.buf.extend_from_slice(&offset.to_le_bytes());
        self.buf.push(kind as u8);
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.len()
    }

    fn end(&mut self, record_at: usize) -> usize {
        let len = self.buf.len() - record_at;
        let len32 = u32::try_from(len).expect("a record is smaller than 4 GiB");
        self.buf[record_at - 4..record_at].copy_from_slice(&len32.to_le_bytes());
        len
    }

    /// The finished block and its head, if the commit added any entry.
    pub fn finish(self) -> Option<(Vec<u8>, Head)> {
        let mut head = self.head?;
        head.block_bytes = self.buf.len() as u64;
        Some((self.buf, head))
    }
}

/// One entry read back from a block.
pub(super) struct Entry<'a> {
    pub seq: u64,
    pub kind: Kind,
    pub record: &'a [u8],
}

/// The entries of a block, in sequence order; an error ends the walk.
pub(super) fn entries(first: u64, bytes: &[u8]) -> Entries<'_> {
    match bytes.split_first() {
        Some((&BLOCK_FORMAT, rest)) => Entries {
            first,
            rest,
            error: None,
        },
        Some((other, _)) => Entries::failed(first, format!("unknown block format {other}")),
        None => Entries::failed(first, "empty block".into()),
    }
}

/// The walk over a block's entries ([`entries`]).
pub(super) struct Entries<'a> {
    first: u64,
    rest: &'a [u8],
    /// A format error found before the walk started, given as its only item.
    error: Option<String>,
}

impl Entries<'_> {
    fn failed(first: u64, reason: String) -> Self {
        Entries {
            first,
            rest: &[],
            error: Some(reason),
        }
    }

    fn bad(&mut self, reason: String) -> JournalError {
        self.rest = &[];
        JournalError::Decode {
            table: "blocks",
            key: self.first,
            reason,
        }
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(reason) = self.error.take() {
            return Some(Err(self.bad(reason)));
        }
        let rest = self.rest;
        if rest.is_empty() {
            return None;
        }
        if rest.len() < FRAME {
            return Some(Err(self.bad("a frame is cut short".into())));
        }
        let offset = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(rest[5..9].try_into().expect("4 bytes")) as usize;
        let kind = match Kind::from_byte(rest[4]) {
            Some(k) if k != Kind::Gone => k,
            _ => return Some(Err(self.bad(format!("unknown entry kind {}", rest[4])))),
        };
        if rest.len() - FRAME < len {
            return Some(Err(self.bad("a record is cut short".into())));
        }
        let Some(seq) = self.first.checked_add(u64::from(offset)) else {
            return Some(Err(self.bad("a sequence past the last one".into())));
        };
        self.rest = &rest[FRAME + len..];
        Some(Ok(Entry {
            seq,
            kind,
            record: &rest[FRAME..FRAME + len],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str) -> Message {
        Message {
            id: id.into(),
            payload: vec![7; 10].into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_block_reads_back_its_entries_and_its_head_tracks_them() {
        let mut b = BlockBuilder::default();
        b.push_input(10, &msg("a"), 5);
        b.push_output(12, &msg("b"), 10, 3);
        let (bytes, mut head) = b.finish().unwrap();
        assert_eq!((head.first, head.last, head.oldest_ms), (10, 12, 3));
        assert_eq!(head.block_bytes, bytes.len() as u64);
        let read: Vec<_> = entries(10, &bytes).map(|e| e.unwrap()).collect();
        assert_eq!(read.len(), 2);
        assert_eq!((read[0].seq, read[0].kind), (10, Kind::Input));
        assert_eq!((read[1].seq, read[1].kind), (12, Kind::Output));
        assert_eq!(head.kind(11), Kind::Gone);
        assert!(!head.mark_gone(10, Kind::Output), "kinds must match");
        assert!(head.mark_gone(10, Kind::Input));
        assert!(!head.mark_gone(10, Kind::Input), "marks are idempotent");
        assert!(!head.is_empty());
        assert!(head.mark_gone(12, Kind::Output));
        assert!(head.is_empty());
        let back = Head::decode(10, &head.encode()).unwrap();
        assert_eq!(back, head);
    }

    #[test]
    fn a_damaged_block_or_head_is_an_error_not_a_panic() {
        let mut b = BlockBuilder::default();
        b.push_input(1, &msg("a"), 5);
        let (bytes, head) = b.finish().unwrap();
        // One byte is a block with no entries; every other cut is damage.
        for cut in (0..bytes.len()).filter(|&c| c != 1) {
            let read: Vec<_> = entries(1, &bytes[..cut]).collect();
            assert!(read.iter().any(|e| e.is_err()), "cut at {cut}");
        }
        let head = head.encode();
        for cut in 0..head.len() {
            assert!(Head::decode(1, &head[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Head::decode(2, &head).is_err(), "wrong key");
        // Sequences at the top of the range are an error too, not an overflow.
        let mut top = vec![HEAD_FORMAT];
        top.extend_from_slice(&u64::MAX.to_le_bytes());
        top.extend_from_slice(&[0; 16]);
        assert!(Head::decode(0, &top).is_err());
        let mut far = vec![BLOCK_FORMAT];
        far.extend_from_slice(&u32::MAX.to_le_bytes());
        far.push(Kind::Input as u8);
        far.extend_from_slice(&0u32.to_le_bytes());
        assert!(entries(u64::MAX, &far).next().unwrap().is_err());
    }
}
