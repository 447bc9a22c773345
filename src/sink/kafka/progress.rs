//! Progress records: what the exactly-once Kafka sink writes, in each transaction, beside the
//! records it delivers, and reads back at start to learn what the topic already holds.
//!
//! A progress record goes to one partition of the progress topic (`progress_topic`, default
//! `sidelog-progress`), keyed by the producer's `transactional.id`. Its value, little-endian:
//!
//! | bytes | field                                                                   |
//! |-------|-------------------------------------------------------------------------|
//! | 4     | magic `SLKP`                                                            |
//! | 1     | version, 1                                                              |
//! | 1     | kind: 1 delivered, 2 start                                              |
//! | 8     | the journal's identity (random, made with the journal file)             |
//! | 2 + n | the data topic's name                                                   |
//! | kind 1: 4 + 16 × count | the XXH3-128 hash of each delivered message's id      |
//! | kind 2: 8              | a random nonce: this start's marker                   |
//!
//! A message is known by its id, not by its journal sequence: an hml output whose record was
//! lost in a crash is made again from its input, under a new sequence but the same id.
//! Records of another journal or another data topic are ignored (a journal made anew, a
//! configured `transactional_id` reused, a sink pointed at a new topic).

use std::collections::{BTreeMap, HashMap};

use crate::journal::DeliveryProgress;

const MAGIC: &[u8; 4] = b"SLKP";
const VERSION: u8 = 1;
const KIND_DELIVERED: u8 = 1;
const KIND_START: u8 = 2;

/// The hash a message id is known by in progress records (XXH3-128: stable, specified).
pub fn id_hash(id: &str) -> u128 {
    twox_hash::XxHash3_128::oneshot(id.as_bytes())
}

/// A decoded progress record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Messages committed in the transaction this record was committed in.
    Delivered {
        identity: u64,
        topic: String,
        ids: Vec<u128>,
    },
    /// A start's marker: everything of this producer before it is committed or aborted.
    Start {
        identity: u64,
        topic: String,
        nonce: u64,
    },
}

fn header(kind: u8, identity: u64, topic: &str, extra: usize) -> Vec<u8> {
    let topic = &topic.as_bytes()[..topic.len().min(usize::from(u16::MAX))];
    let mut out = Vec::with_capacity(16 + topic.len() + extra);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&identity.to_le_bytes());
    out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    out.extend_from_slice(topic);
    out
}

pub fn encode_delivered(identity: u64, topic: &str, ids: &[u128]) -> Vec<u8> {
    let mut out = header(KIND_DELIVERED, identity, topic, 4 + 16 * ids.len());
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

pub fn encode_start(identity: u64, topic: &str, nonce: u64) -> Vec<u8> {
    let mut out = header(KIND_START, identity, topic, 8);
    out.extend_from_slice(&nonce.to_le_bytes());
    out
}

/// Decodes a progress record; `None` for anything else (another writer's record, damage).
pub fn decode(bytes: &[u8]) -> Option<Record> {
    let mut r = bytes;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, rest) = r.split_at_checked(n)?;
        r = rest;
        Some(head)
    };
    if take(4)? != MAGIC || take(1)?[0] != VERSION {
        return None;
    }
    let kind = take(1)?[0];
    let identity = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let len = u16::from_le_bytes(take(2)?.try_into().ok()?);
    let topic = String::from_utf8(take(usize::from(len))?.to_vec()).ok()?;
    let record = match kind {
        KIND_DELIVERED => {
            let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            let raw = take(count.checked_mul(16)?)?;
            let ids = raw
                .chunks_exact(16)
                .map(|c| u128::from_le_bytes(c.try_into().expect("chunks of 16")))
                .collect();
            Record::Delivered {
                identity,
                topic,
                ids,
            }
        }
        KIND_START => Record::Start {
            identity,
            topic,
            nonce: u64::from_le_bytes(take(8)?.try_into().ok()?),
        },
        _ => return None,
    };
    take(1).is_none().then_some(record)
}

/// What the topic holds already, from the progress records read back at start: a message of
/// the replay with one of these ids is marked delivered instead of being sent again.
#[derive(Debug, Default)]
pub struct Held {
    counts: HashMap<u128, u32>,
}

impl Held {
    pub fn add(&mut self, ids: &[u128]) {
        for id in ids {
            *self.counts.entry(*id).or_insert(0) += 1;
        }
    }

    /// Whether the topic holds a copy of `id` not yet claimed by a replayed message (each
    /// copy is claimed once).
    pub fn take(&mut self, id: u128) -> bool {
        match self.counts.get_mut(&id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.counts.remove(&id);
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.counts.values().map(|n| *n as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// How far the journal's marks cover the progress records, as the position to store.
///
/// Committed transactions are numbered in commit order; each is counted until every batch in
/// it has its marks queued in the journal. The stored position moves to just past the newest
/// transaction's progress record whose older ones are all marked, and never before the start's
/// replay is over: until then the records read back at start are still needed.
#[derive(Debug)]
pub struct Tracker {
    key: u64,
    partition: u64,
    /// Just past this start's marker, once the start has read the records back.
    floor: Option<u64>,
    replayed: bool,
    /// The last position handed out (or read from the journal).
    stored: u64,
    /// Committed transactions with batches whose marks are not queued: (batches left, the
    /// position past its progress record).
    pending: BTreeMap<u64, (usize, u64)>,
    /// Past the newest progress record whose transaction, and every older one, is marked.
    marked_to: u64,
}

impl Tracker {
    pub fn new(key: u64, partition: u64, stored: u64) -> Tracker {
        Tracker {
            key,
            partition,
            floor: None,
            replayed: false,
            stored,
            pending: BTreeMap::new(),
            marked_to: 0,
        }
    }

    /// The start has read back everything before its marker at `marker`.
    pub fn started(&mut self, marker: u64) {
        self.floor = Some(marker + 1);
    }

    /// Transaction `txn` committed with `batches` batches and its progress record at `offset`.
    pub fn committed(&mut self, txn: u64, batches: usize, offset: u64) {
        self.pending.insert(txn, (batches, offset + 1));
    }

    /// One batch of `txn` has its marks queued.
    pub fn marked(&mut self, txn: u64) -> Option<DeliveryProgress> {
        if let Some((left, _)) = self.pending.get_mut(&txn) {
            *left = left.saturating_sub(1);
        }
        while let Some((&txn, &(0, position))) = self.pending.first_key_value() {
            self.pending.remove(&txn);
            self.marked_to = self.marked_to.max(position);
        }
        self.advance()
    }

    pub fn is_replayed(&self) -> bool {
        self.replayed
    }

    /// The start's replay is over.
    pub fn replayed(&mut self) -> Option<DeliveryProgress> {
        self.replayed = true;
        self.advance()
    }

    fn advance(&mut self) -> Option<DeliveryProgress> {
        if !self.replayed {
            return None;
        }
        let position = self.floor?.max(self.marked_to);
        (position > self.stored).then(|| {
            self.stored = position;
            DeliveryProgress {
                key: self.key,
                partition: self.partition,
                position,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_anything_else_is_not_one() {
        let ids = vec![id_hash("a"), id_hash("b/0"), 7];
        let d = encode_delivered(42, "events", &ids);
        assert_eq!(
            decode(&d),
            Some(Record::Delivered {
                identity: 42,
                topic: "events".into(),
                ids
            })
        );
        let s = encode_start(42, "events", 9);
        assert_eq!(
            decode(&s),
            Some(Record::Start {
                identity: 42,
                topic: "events".into(),
                nonce: 9
            })
        );
        assert_eq!(decode(&d[..d.len() - 1]), None, "truncated");
        assert_eq!(
            decode(&[d.as_slice(), b"x"].concat()),
            None,
            "trailing bytes"
        );
        assert_eq!(decode(b"hello world"), None);
        // The hash is part of the format: it must not change between versions.
        assert_eq!(id_hash("a"), id_hash("a"));
        assert_eq!(
            format!("{:032x}", id_hash("m-1")),
            format!("{:032x}", twox_hash::XxHash3_128::oneshot(b"m-1"))
        );
    }

    #[test]
    fn held_copies_are_claimed_once_each() {
        let mut held = Held::default();
        held.add(&[1, 2, 2]);
        assert_eq!(held.len(), 3);
        assert!(held.take(2) && held.take(2));
        assert!(!held.take(2), "two copies, two claims");
        assert!(held.take(1) && !held.take(3));
        assert!(held.is_empty());
    }

    #[test]
    fn the_position_waits_for_the_replay_and_for_older_transactions() {
        let mut t = Tracker::new(5, 0, 10);
        t.committed(0, 2, 20);
        t.committed(1, 1, 30);
        assert_eq!(t.marked(1), None, "not started, not replayed");
        t.started(15);
        assert_eq!(t.marked(0), None, "the replay is not over");
        let p = t.replayed().expect("past the marker, txn 1 waits on txn 0");
        assert_eq!(p.position, 16);
        assert_eq!(t.marked(0).map(|p| p.position), Some(31), "both marked");
        assert_eq!(t.marked(0), None, "nothing new");
        // A batch never marked holds every later transaction back.
        t.committed(2, 1, 40);
        t.committed(3, 1, 50);
        assert_eq!(t.marked(3), None);
        assert_eq!(t.marked(2).map(|p| p.position), Some(51));
    }

    #[test]
    fn a_stored_position_never_goes_back() {
        let mut t = Tracker::new(5, 0, 100);
        t.started(40);
        assert_eq!(t.replayed(), None, "the journal's position is further on");
        t.committed(0, 1, 120);
        assert_eq!(t.marked(0).map(|p| p.position), Some(121));
    }

    /// A model of the whole protocol: a journal whose marks and stored position are lost on a
    /// crash unless a sync made them durable, a topic and its progress partition, transactions
    /// of two batches marked in either order, and a crash at any step (between the commit and
    /// the marks, between the marks and the position, mid-replay). Every message must end in
    /// the topic exactly once.
    #[test]
    fn a_model_with_crashes_between_commit_marks_and_position_delivers_each_message_once() {
        use std::collections::BTreeSet;

        #[derive(Clone)]
        struct Journal {
            backlog: BTreeSet<u32>,
            stored: u64,
        }
        enum Entry {
            Delivered(Vec<u128>),
            Start,
        }
        let hash = |id: u32| id_hash(&format!("m-{id}"));
        for seed in 0..300 {
            let rng = crate::runtime::Entropy::from_seed(seed);
            let chance = |percent: u64| rng.below(100) < percent;
            let mut durable = Journal {
                backlog: (0..20).collect(),
                stored: 0,
            };
            let mut next_id = 20;
            let mut topic: Vec<u32> = Vec::new();
            let mut log: Vec<Entry> = Vec::new();
            let mut lives = 0;
            while !durable.backlog.is_empty() || lives == 0 {
                lives += 1;
                assert!(lives < 1000, "seed {seed}: no progress");
                let mut journal = durable.clone();
                // Start: a marker, then the records from the stored position up to it.
                log.push(Entry::Start);
                let marker = log.len() as u64 - 1;
                let mut held = Held::default();
                for entry in &log[journal.stored as usize..marker as usize] {
                    if let Entry::Delivered(ids) = entry {
                        held.add(ids);
                    }
                }
                let mut tracker = Tracker::new(1, 0, journal.stored);
                tracker.started(marker);
                // The replay: the whole backlog goes to the sink, which acks what is held, in
                // any order (lanes run side by side).
                let mut to_send: Vec<u32> = journal.backlog.iter().copied().collect();
                for i in (1..to_send.len()).rev() {
                    to_send.swap(i, rng.below(i as u64 + 1) as usize);
                }
                let mut replaying = true;
                let mut txn = 0;
                let crashed = loop {
                    if to_send.is_empty() {
                        if replaying {
                            replaying = false;
                            if let Some(p) = tracker.replayed() {
                                journal.stored = p.position;
                            }
                        }
                        // New traffic: appended durably (with whatever came before it).
                        if next_id < 60 && chance(50) {
                            for _ in 0..1 + rng.below(4) {
                                journal.backlog.insert(next_id);
                                to_send.push(next_id);
                                next_id += 1;
                            }
                            durable = journal.clone();
                        } else if !chance(90) || next_id >= 60 {
                            break chance(50);
                        }
                        continue;
                    }
                    // One transaction of up to two batches, but for what the topic holds:
                    // acked at once, marked like any delivered message.
                    let n = to_send.len().min(1 + rng.below(4) as usize);
                    let (skipped, ids): (Vec<u32>, Vec<u32>) =
                        to_send.drain(..n).partition(|&id| held.take(hash(id)));
                    if !skipped.is_empty() {
                        if chance(10) {
                            break true; // before these marks
                        }
                        for id in &skipped {
                            journal.backlog.remove(id);
                        }
                        if chance(20) {
                            durable = journal.clone();
                        }
                    }
                    if ids.is_empty() {
                        continue;
                    }
                    let cut = ids.len().div_ceil(2);
                    let batches: Vec<Vec<u32>> = [&ids[..cut], &ids[cut..]]
                        .into_iter()
                        .filter(|b| !b.is_empty())
                        .map(<[u32]>::to_vec)
                        .collect();
                    if chance(5) {
                        break true; // crashed with the transaction open: aborted at start
                    }
                    topic.extend(&ids);
                    log.push(Entry::Delivered(ids.iter().map(|&i| hash(i)).collect()));
                    tracker.committed(txn, batches.len(), log.len() as u64 - 1);
                    let mut order: Vec<Vec<u32>> = batches;
                    if chance(50) {
                        order.reverse();
                    }
                    let mut died = false;
                    for batch in order {
                        if chance(10) {
                            died = true; // between the commit and these marks
                            break;
                        }
                        for id in &batch {
                            journal.backlog.remove(id);
                        }
                        if let Some(p) = tracker.marked(txn) {
                            journal.stored = p.position;
                        }
                        if chance(20) {
                            durable = journal.clone(); // a sync
                        }
                    }
                    if died {
                        break true;
                    }
                    txn += 1;
                };
                if !crashed {
                    durable = journal; // a clean stop syncs
                }
            }
            let mut copies = std::collections::BTreeMap::new();
            for id in &topic {
                *copies.entry(*id).or_insert(0) += 1;
            }
            assert_eq!(copies.len(), next_id as usize, "seed {seed}: every message");
            assert!(
                copies.values().all(|n| *n == 1),
                "seed {seed}: duplicates {:?}",
                copies.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
            );
        }
    }
}
