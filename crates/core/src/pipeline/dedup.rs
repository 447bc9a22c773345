//! The dedup window: recent message ids and the sequence each was accepted with.
//!
//! A producer that lost an ack retries with the same id; within the window it gets `DUPLICATE`
//! with the original sequence, and the message is neither handled nor delivered again. The
//! window is bounded by count and by age (remember only recent ids, tolerate the
//! rare late duplicate): `DedupBounds`, one rule with the journal's persisted window. It lives
//! in memory for lookups and is persisted by the journal in the same transaction as the record
//! it points to, so it survives restarts.
//!
//! Claims close the race between two concurrent publishes of one id: the first claims the id
//! (`Pending`), the second waits for that claim's outcome instead of writing the message again.
//! A claim that is dropped without being committed (the journal write failed) is released and
//! its waiters learn that nothing was accepted.
//!
//! Invariants: `order` holds exactly the committed entries of `map`, oldest first (each with
//! the generation it was committed under, so a stale order slot never evicts a newer entry);
//! pending claims are not in `order` and do not count towards the window's size.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use sidelog_journal::{DedupBounds, DedupRecord, Seq};
use sidelog_runtime::SharedClock;

/// What a claim ended as, as seen by a concurrent publish of the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    Waiting,
    Committed(Seq),
    Released,
}

/// The answer to [`DedupWindow::claim`].
pub enum Claim {
    /// The id is new: the caller owns it until it commits or drops the guard.
    Fresh(ClaimGuard),
    /// The id was accepted before, with this sequence.
    Duplicate(Seq),
    /// Another publish holds the id right now; wait for its outcome.
    InFlight(watch::Receiver<ClaimOutcome>),
}

enum Slot {
    /// A publish holds the id. The channel exists only once another publish of the same id
    /// waits for the outcome (rare: a retry racing its original), so that the common claim
    /// allocates none.
    Pending(Option<watch::Sender<ClaimOutcome>>),
    Committed {
        seq: Seq,
        at_ms: i64,
        generation: u64,
    },
}

/// The ids are shared between the map, the eviction order and the claim guard: one allocation
/// per claimed id.
struct Inner {
    map: HashMap<Arc<str>, Slot>,
    order: VecDeque<(i64, u64, Arc<str>)>,
    next_generation: u64,
}

pub struct DedupWindow {
    inner: Mutex<Inner>,
    bounds: DedupBounds,
    clock: SharedClock,
}

impl std::fmt::Debug for DedupWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupWindow")
            .field("bounds", &self.bounds)
            .finish()
    }
}

impl DedupWindow {
    pub fn new(max_count: u64, max_age_ms: i64, clock: SharedClock) -> Arc<Self> {
        Arc::new(DedupWindow {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
                next_generation: 0,
            }),
            bounds: DedupBounds {
                count: max_count,
                age_ms: max_age_ms,
            },
            clock,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("the dedup mutex is never held across a panic")
    }

    /// Fills the window from the journal's persisted ids (oldest first).
    pub fn load(&self, records: Vec<DedupRecord>) {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        for r in records {
            let generation = inner.next_generation;
            inner.next_generation += 1;
            let id: Arc<str> = r.id.into();
            inner.map.insert(
                id.clone(),
                Slot::Committed {
                    seq: r.seq,
                    at_ms: r.recorded_at_ms,
                    generation,
                },
            );
            inner.order.push_back((r.recorded_at_ms, generation, id));
        }
        self.evict(&mut inner, now);
    }

    /// Claims `id` for a publish, or says why it cannot be.
    pub fn claim(self: &Arc<Self>, id: &str) -> Claim {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        self.evict(&mut inner, now);
        match inner.map.get_mut(id) {
            Some(Slot::Committed { seq, at_ms, .. }) if !self.expired(*at_ms, now) => {
                return Claim::Duplicate(*seq);
            }
            Some(Slot::Pending(waiters)) => {
                let tx = waiters.get_or_insert_with(|| watch::channel(ClaimOutcome::Waiting).0);
                return Claim::InFlight(tx.subscribe());
            }
            _ => {}
        }
        let id: Arc<str> = id.into();
        inner.map.insert(id.clone(), Slot::Pending(None));
        Claim::Fresh(ClaimGuard {
            window: self.clone(),
            id: Some(id),
        })
    }

    /// Ids in the window (committed ones).
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expired(&self, at_ms: i64, now: i64) -> bool {
        self.bounds.expired(at_ms, now)
    }

    fn evict(&self, inner: &mut Inner, now: i64) {
        while let Some((at_ms, generation, _)) = inner.order.front() {
            // One id per entry: the others stay.
            let left = inner.order.len() as u64 - 1;
            if !self.bounds.evicts(left, *at_ms, now) {
                break;
            }
            let generation = *generation;
            let (_, _, id) = inner.order.pop_front().expect("front exists");
            // One lookup: the entry is removed only if it is still this commit of the id.
            if let Entry::Occupied(slot) = inner.map.entry(id)
                && matches!(slot.get(), Slot::Committed { generation: g, .. } if *g == generation)
            {
                slot.remove();
            }
        }
    }

    /// Ends a claim: the pending slot becomes the committed id in place (one lookup), or goes.
    fn settle(&self, id: Arc<str>, outcome: ClaimOutcome) {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let generation = inner.next_generation;
        let pending = match outcome {
            ClaimOutcome::Committed(seq) => inner.map.get_mut(&*id).map(|slot| {
                std::mem::replace(
                    slot,
                    Slot::Committed {
                        seq,
                        at_ms: now,
                        generation,
                    },
                )
            }),
            _ => inner.map.remove(&*id),
        };
        let Some(Slot::Pending(waiters)) = pending else {
            unreachable!("a claim guard owns its pending slot until it settles");
        };
        if let Some(tx) = waiters {
            tx.send_replace(outcome);
        }
        if matches!(outcome, ClaimOutcome::Committed(_)) {
            inner.next_generation += 1;
            inner.order.push_back((now, generation, id));
            self.evict(&mut inner, now);
        }
    }
}

/// Ownership of a claimed id. Commit it once the message is accepted; dropping it releases the
/// id (the message was not accepted) and wakes any publish waiting on it.
pub struct ClaimGuard {
    window: Arc<DedupWindow>,
    id: Option<Arc<str>>,
}

impl ClaimGuard {
    pub fn commit(mut self, seq: Seq) {
        let id = self.id.take().expect("a guard commits at most once");
        self.window.settle(id, ClaimOutcome::Committed(seq));
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.window.settle(id, ClaimOutcome::Released);
        }
    }
}

/// Waits for a concurrent claim to settle.
pub async fn wait_for(mut rx: watch::Receiver<ClaimOutcome>) -> ClaimOutcome {
    match rx.wait_for(|o| *o != ClaimOutcome::Waiting).await {
        Ok(o) => *o,
        // The sender is gone only once the claim settled; treat an unseen outcome as released.
        Err(_) => ClaimOutcome::Released,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidelog_runtime::Clock;
    use std::sync::atomic::{AtomicI64, Ordering};

    #[derive(Debug, Default)]
    struct ManualClock(AtomicI64);
    impl Clock for ManualClock {
        fn now_ms(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn window(count: u64, age: i64) -> (Arc<DedupWindow>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        (DedupWindow::new(count, age, clock.clone()), clock)
    }

    fn commit(w: &Arc<DedupWindow>, id: &str, seq: u64) {
        match w.claim(id) {
            Claim::Fresh(g) => g.commit(Seq(seq)),
            _ => panic!("{id} should be fresh"),
        }
    }

    #[test]
    fn a_committed_id_is_a_duplicate_with_its_sequence() {
        let (w, _) = window(10, 1000);
        commit(&w, "a", 7);
        assert!(matches!(w.claim("a"), Claim::Duplicate(Seq(7))));
    }

    #[test]
    fn a_released_claim_leaves_the_id_free() {
        let (w, _) = window(10, 1000);
        match w.claim("a") {
            Claim::Fresh(g) => drop(g),
            _ => panic!(),
        }
        assert!(matches!(w.claim("a"), Claim::Fresh(_)));
        assert!(w.is_empty());
    }

    #[tokio::test]
    async fn a_concurrent_claim_waits_for_the_outcome() {
        let (w, _) = window(10, 1000);
        let Claim::Fresh(guard) = w.claim("a") else {
            panic!()
        };
        let Claim::InFlight(rx) = w.claim("a") else {
            panic!()
        };
        let waiter = tokio::spawn(wait_for(rx));
        guard.commit(Seq(3));
        assert_eq!(waiter.await.unwrap(), ClaimOutcome::Committed(Seq(3)));
    }

    #[test]
    fn the_window_is_bounded_by_count_and_age() {
        let (w, clock) = window(2, 100);
        commit(&w, "a", 1);
        commit(&w, "b", 2);
        commit(&w, "c", 3);
        assert_eq!(w.len(), 2);
        assert!(
            matches!(w.claim("a"), Claim::Fresh(_)),
            "a was evicted by count"
        );
        clock.0.store(500, Ordering::SeqCst);
        assert!(matches!(w.claim("c"), Claim::Fresh(_)), "c expired by age");
    }

    #[test]
    fn a_reaccepted_id_is_not_evicted_by_its_old_slot() {
        let (w, clock) = window(2, 100);
        commit(&w, "a", 1);
        clock.0.store(150, Ordering::SeqCst);
        commit(&w, "a", 5); // expired, accepted again
        commit(&w, "b", 6);
        assert!(matches!(w.claim("a"), Claim::Duplicate(Seq(5))));
    }

    /// One step of the dedup model test.
    #[derive(Debug, Clone)]
    enum Op {
        /// Claim an id; then commit, release or hold the claim.
        Claim(u8, Then),
        /// Settle the oldest held claim.
        Settle(bool),
        /// The clock moves on.
        Advance(i64),
        /// A restart: held claims are released, and a new window is loaded with what the
        /// journal keeps (each id's latest acceptance, oldest first).
        Restart,
    }

    #[derive(Debug, Clone, Copy)]
    enum Then {
        Commit,
        Release,
        Hold,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let then = prop_oneof![Just(Then::Commit), Just(Then::Release), Just(Then::Hold)];
        prop_oneof![
            6 => (0u8..8, then).prop_map(|(id, t)| Op::Claim(id, t)),
            2 => any::<bool>().prop_map(Op::Settle),
            2 => (0i64..80).prop_map(Op::Advance),
            1 => Just(Op::Restart),
        ]
    }

    /// The model: every acceptance in order (id, sequence, time). An id is a duplicate when its
    /// latest acceptance is among the last `count` acceptances and not older than `age`.
    fn model_duplicate(
        accepted: &[(String, u64, i64)],
        id: &str,
        count: usize,
        age: i64,
        now: i64,
    ) -> Option<u64> {
        let window = &accepted[accepted.len().saturating_sub(count)..];
        let latest = accepted.iter().rposition(|(i, _, _)| i == id)?;
        let (_, seq, at) = &accepted[latest];
        let in_window = latest >= accepted.len() - window.len();
        (in_window && *at >= now - age).then_some(*seq)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// The window against the model, through claims held concurrently, releases, time
        /// and restarts.
        #[test]
        fn the_dedup_window_matches_a_model(
            count in 1u64..6,
            age in 1i64..200,
            ops in proptest::collection::vec(op(), 1..60),
        ) {
            let (mut w, clock) = window(count, age);
            let mut accepted: Vec<(String, u64, i64)> = Vec::new();
            let mut held: Vec<(String, ClaimGuard)> = Vec::new();
            let mut next_seq = 1u64;
            for op in ops {
                let now = clock.0.load(Ordering::SeqCst);
                match op {
                    Op::Claim(n, then) => {
                        let id = format!("id-{n}");
                        let pending = held.iter().any(|(h, _)| *h == id);
                        let want = model_duplicate(&accepted, &id, count as usize, age, now);
                        match w.claim(&id) {
                            Claim::InFlight(_) => proptest::prop_assert!(pending, "{} in flight", id),
                            Claim::Duplicate(Seq(seq)) => {
                                proptest::prop_assert!(!pending);
                                proptest::prop_assert_eq!(Some(seq), want, "{} duplicate", id);
                            }
                            Claim::Fresh(guard) => {
                                proptest::prop_assert!(!pending, "{} fresh while held", id);
                                proptest::prop_assert_eq!(want, None, "{} fresh", id);
                                match then {
                                    Then::Commit => {
                                        guard.commit(Seq(next_seq));
                                        accepted.push((id, next_seq, now));
                                        next_seq += 1;
                                    }
                                    Then::Release => drop(guard),
                                    Then::Hold => held.push((id, guard)),
                                }
                            }
                        }
                    }
                    Op::Settle(commit) => {
                        if held.is_empty() {
                            continue;
                        }
                        let (id, guard) = held.remove(0);
                        if commit {
                            guard.commit(Seq(next_seq));
                            accepted.push((id, next_seq, now));
                            next_seq += 1;
                        } else {
                            drop(guard);
                        }
                    }
                    Op::Advance(ms) => {
                        clock.0.fetch_add(ms, Ordering::SeqCst);
                    }
                    Op::Restart => {
                        held.clear();
                        // What the journal keeps: each id's latest acceptance in the window.
                        let keep = accepted.len().saturating_sub(count as usize);
                        let mut kept: Vec<(String, u64, i64)> = Vec::new();
                        for (i, a) in accepted.iter().enumerate().skip(keep) {
                            let latest = accepted.iter().rposition(|(x, _, _)| *x == a.0) == Some(i);
                            if latest {
                                kept.push(a.clone());
                            }
                        }
                        accepted = kept.clone();
                        let fresh = DedupWindow::new(count, age, clock.clone());
                        fresh.load(kept.into_iter().map(|(id, seq, at)| DedupRecord {
                            id,
                            seq: Seq(seq),
                            recorded_at_ms: at,
                        }).collect());
                        w = fresh;
                    }
                }
            }
        }
    }
}
