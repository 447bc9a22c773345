//! Order per key: the outputs of one key go to delivery in the order their inputs were accepted.
//!
//! Handler calls run concurrently, so without this a later input's outputs could overtake an
//! earlier one's whenever its call returned first. Each keyed input takes a numbered [`Turn`]
//! in its key's shard when it is accepted (before its ack, so a producer that waits for its ack
//! before sending the next request is ordered too); its outputs are recorded and queued for
//! delivery only when every earlier turn of that shard has finished. A turn that ends without
//! outputs (a dead letter, a failed write) finishes when dropped.
//!
//! Keys are spread over [`SHARDS`] shards, so one slow input holds back only the keys that share
//! its shard, and only while it is being handled. Replays take no turn: retries and replays may
//! re-order, as the README says, and `sidelog-seq` lets the next tier restore order.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// How many independent queues the keys are spread over.
pub const SHARDS: usize = 256;

/// The turns of every shard.
#[derive(Debug)]
pub struct KeyOrder {
    shards: Box<[Mutex<Shard>]>,
}

#[derive(Debug, Default)]
struct Shard {
    /// The next number to hand out.
    issued: u64,
    /// The number whose turn it is.
    serving: u64,
    /// Turns dropped before theirs came: skipped when reached.
    finished_early: BTreeSet<u64>,
    /// Turns waiting, woken when theirs comes.
    waiting: HashMap<u64, oneshot::Sender<()>>,
}

impl Default for KeyOrder {
    fn default() -> Self {
        KeyOrder {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }
}

impl KeyOrder {
    /// Takes the next turn for `key`; an empty key is not ordered and takes none.
    pub fn take(self: &Arc<Self>, key: &str) -> Option<Turn> {
        if key.is_empty() {
            return None;
        }
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        let shard = (hasher.finish() % SHARDS as u64) as usize;
        Some(self.take_in(shard))
    }

    /// Takes the next turn in `shard` (see [`Turn::then`]).
    fn take_in(self: &Arc<Self>, shard: usize) -> Turn {
        let mut s = self.lock(shard);
        let number = s.issued;
        s.issued += 1;
        Turn {
            order: self.clone(),
            shard,
            number,
        }
    }

    fn lock(&self, shard: usize) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[shard]
            .lock()
            .expect("no code panics while holding a shard lock")
    }
}

/// One input's place in its key's queue; finishing (dropping) it lets the next one go.
#[derive(Debug)]
pub struct Turn {
    order: Arc<KeyOrder>,
    shard: usize,
    number: u64,
}

impl Turn {
    /// Whether every earlier turn of this shard has finished (what [`Turn::ready`] would not
    /// wait for).
    pub fn is_ready(&self) -> bool {
        self.order.lock(self.shard).serving == self.number
    }

    /// Waits until every earlier turn of this shard has finished.
    pub async fn ready(&self) {
        let rx = {
            let mut s = self.order.lock(self.shard);
            if s.serving == self.number {
                return;
            }
            let (tx, rx) = oneshot::channel();
            s.waiting.insert(self.number, tx);
            rx
        };
        // The sender is dropped only after it is sent on, or with the whole `KeyOrder`, which
        // this turn keeps alive: an error cannot happen, and would only mean "go".
        let _ = rx.await;
    }

    /// A turn in `next` for the same key, taken now: taken while this turn is held, the turns
    /// of `next` follow the same order. A two-step path (queue a journal write, then queue for
    /// delivery) holds each step's turn only for that step, so one key's writes are not waited
    /// for one by one.
    pub fn then(&self, next: &Arc<KeyOrder>) -> Turn {
        next.take_in(self.shard)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut s = self.order.lock(self.shard);
        if s.serving != self.number {
            // Not its turn yet (it ends without outputs): skipped when reached.
            s.waiting.remove(&self.number);
            s.finished_early.insert(self.number);
            return;
        }
        s.serving += 1;
        loop {
            let next = s.serving;
            if s.finished_early.remove(&next) {
                s.serving += 1;
                continue;
            }
            if let Some(tx) = s.waiting.remove(&next) {
                let _ = tx.send(()); // a waiter that went away drops its turn next
            }
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn turns_of_one_key_go_in_the_order_taken_whatever_order_they_are_ready_in() {
        let order = Arc::new(KeyOrder::default());
        let turns: Vec<Turn> = (0..20).map(|_| order.take("k").unwrap()).collect();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, turn) in turns.into_iter().enumerate().rev() {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                // Later turns are ready first.
                tokio::time::sleep(Duration::from_millis(20 - i as u64)).await;
                if i % 5 == 3 {
                    return; // ends without outputs: dropped, skipped
                }
                turn.ready().await;
                log.lock().unwrap().push(i);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let got = log.lock().unwrap().clone();
        let want: Vec<usize> = (0..20).filter(|i| i % 5 != 3).collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn other_keys_and_empty_keys_do_not_wait() {
        let order = Arc::new(KeyOrder::default());
        assert!(order.take("").is_none());
        let first = order.take("a").unwrap();
        // A key in another shard goes at once while "a" is still held.
        let other = (0..1000)
            .map(|i| format!("b{i}"))
            .find(|k| order.take(k).map(|t| t.shard) != Some(first.shard))
            .unwrap();
        let turn = order.take(&other).unwrap();
        tokio::time::timeout(Duration::from_secs(1), turn.ready())
            .await
            .expect("not held back by another shard");
        let second = order.take("a").unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), second.ready())
                .await
                .is_err(),
            "waits for the first"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), second.ready())
            .await
            .expect("goes once the first is done");
    }
}
