//! The checkers, over the recorded history: nothing phantom or altered reached the sink, every
//! delivered message carries its sequence (journaled modes), and every output of an acked input
//! reached the sink or the dead-letter table; in a run without faults, each key's outputs
//! arrived in the order their producer sent the inputs. (Acks that were not durable are caught
//! at each restart, by `World::check_acks_durable`.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sidelog::LoggingMode;
use sidelog::journal::Seq;
use sidelog::sink::SEQ_HEADER;

use crate::hops::Stored;
use crate::report::Report;
use crate::world::{Node, World};

/// The acks the producers received: id → sequence.
pub(crate) type Received = Arc<Mutex<BTreeMap<String, u64>>>;

/// Checks the history and writes the report.
pub(crate) async fn check(
    world: &Arc<World>,
    node: Option<&Arc<Node>>,
    sent: &BTreeMap<String, Bytes>,
    received: &Received,
) -> Report {
    let dead = match node {
        Some(node) => dead_letters(world, node).await,
        None => BTreeSet::new(),
    };
    let stored = world
        .stored
        .lock()
        .expect("never held across a panic")
        .clone();
    let copies = check_sink(world, sent, &stored);
    check_order(world, &stored);
    let acked = acked_ids(world, received);
    check_reacceptance(world);
    let losses = losses(world, sent, &acked, &dead, &copies);
    report(world, &acked, &stored, &copies, dead.len(), losses)
}

/// The ids in the dead-letter table: what sidelog gave up on (kept, not lost). A dead letter
/// excuses a loss only for a reason the run's faults or settings cause: retries exhausted
/// against a failing handler or sink where the seed sets `max_attempts`, or
/// `replay.max_age_ms`; any other reason is a violation (the simulated handler and sink never
/// refuse a message, no entry is ever malformed, and without a limit no outage, however long,
/// may dead-letter anything).
async fn dead_letters(world: &World, node: &Node) -> BTreeSet<String> {
    let handler_gave_up = format!(
        "handler failed {} times",
        world.config.handling.max_attempts
    );
    let sink_gave_up = format!("sink failed {} times", world.config.delivery.max_attempts);
    let expired = "undelivered for longer than replay.max_age_ms";
    let mut dead: BTreeSet<String> = BTreeSet::new();
    let mut from = Seq(0);
    loop {
        match node.journal.scan_dead_letters(from, 1024).await {
            Ok(batch) if !batch.is_empty() => {
                from = Seq(batch.last().expect("non-empty").seq.0 + 1);
                for d in batch {
                    let reason = &d.letter.reason;
                    if reason.starts_with(expired) && world.cfg.replay_max_age_ms > 0 {
                        world
                            .coverage
                            .lock()
                            .expect("never held across a panic")
                            .expired_dead_letters += 1;
                    } else if world.cfg.max_attempts == 0
                        || !(reason.starts_with(&handler_gave_up)
                            || reason.starts_with(&sink_gave_up))
                    {
                        world.violation(format!(
                            "dead letter {} for a reason no fault explains: {reason}",
                            d.seq.0
                        ));
                    }
                    if let Some(m) = d.letter.message {
                        dead.insert(m.id);
                    }
                }
            }
            Ok(_) => return dead,
            Err(e) => {
                world.violation(format!("cannot read the dead letters: {e}"));
                return dead;
            }
        }
    }
}

/// What reached the sink was produced, unaltered, and (journaled modes) carries its sequence.
/// Returns how many copies of each id arrived.
fn check_sink<'a>(
    world: &World,
    sent: &BTreeMap<String, Bytes>,
    stored: &'a [Stored],
) -> HashMap<&'a str, usize> {
    let possible: HashMap<String, Bytes> = sent
        .iter()
        .flat_map(|(id, payload)| world.expected(id, payload))
        .collect();
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for s in stored {
        match possible.get(&s.id) {
            None => world.violation(format!("phantom: the sink got {:?}, never produced", s.id)),
            Some(p) if *p != s.payload => world.violation(format!(
                "altered: the sink got {} with another payload",
                s.id
            )),
            Some(_) => {}
        }
        if world.cfg.mode != LoggingMode::None && s.seq.is_none() {
            world.violation(format!("{} reached the sink without {SEQ_HEADER}", s.id));
        }
        *copies.entry(s.id.as_str()).or_default() += 1;
    }
    copies
}

/// Within one key, outputs reach the sink in the order their inputs were sent (each key has
/// one producer, which waits for each ack), while nothing fails: checked on the first copy of
/// each output in runs without faults or crashes, where the README promises it.
fn check_order(world: &World, stored: &[Stored]) {
    if world.cfg.fault_scale > 0.0 || world.cfg.crashes > 0 {
        return;
    }
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut last: HashMap<&str, ((u64, u64), &str)> = HashMap::new();
    for s in stored {
        if !seen.insert(s.id.as_str()) {
            continue; // a duplicate; its first copy was checked
        }
        let (input, output) = s.id.split_once('/').unwrap_or((s.id.as_str(), "0"));
        let position = (
            input
                .trim_start_matches('m')
                .parse::<u64>()
                .unwrap_or(u64::MAX),
            output.parse::<u64>().unwrap_or(u64::MAX),
        );
        if let Some((before, before_id)) = last.get(s.key.as_str())
            && position <= *before
        {
            world.violation(format!(
                "order: key {} got {} after {before_id}, which was sent later",
                s.key, s.id
            ));
        }
        last.insert(s.key.as_str(), (position, s.id.as_str()));
    }
}

/// A retried id within the dedup window is a duplicate: an id accepted twice must have had at
/// least `dedup.window_count` other ids accepted between its two acceptances (journaled modes;
/// in mode `none` the window is in memory and a crash empties it). Counts the ids accepted
/// again.
///
/// "Between" is by sequence, the order the journal took them in, not by when their acks were
/// sent: an ack lost at a crash is answered `DUPLICATE` (with the old sequence) long after, and
/// that answer does not move the id in the window.
fn check_reacceptance(world: &World) {
    let produced = world.produced.lock().expect("never held across a panic");
    let window = world.config.dedup.window_count as usize;
    // Every acceptance, by sequence.
    let accepted: std::collections::BTreeMap<u64, &str> =
        produced.iter().map(|a| (a.seq, a.id.as_str())).collect();
    let mut last: HashMap<&str, u64> = HashMap::new();
    let mut reaccepted = 0;
    for a in produced.iter() {
        if let Some(&seq) = last.get(a.id.as_str())
            && seq != a.seq
        {
            reaccepted += 1;
            // A sequence at or below the earlier one can only come from a journal that lost
            // durable commits (a deliberate bug): nothing is between.
            let between: std::collections::HashSet<&str> = if a.seq > seq {
                accepted
                    .range(seq + 1..a.seq)
                    .map(|(_, id)| *id)
                    .filter(|id| *id != a.id)
                    .collect()
            } else {
                std::collections::HashSet::new()
            };
            if world.cfg.mode != LoggingMode::None && between.len() < window {
                world.violation(format!(
                    "{} accepted again (seq {} after {seq}) only {} other ids accepted between, within the window of {window}",
                    a.id,
                    a.seq,
                    between.len()
                ));
            }
        }
        last.insert(a.id.as_str(), a.seq);
    }
    world
        .coverage
        .lock()
        .expect("never held across a panic")
        .reaccepted_ids += reaccepted;
}

/// Every id sidelog acked, whether or not the producer heard it.
fn acked_ids(world: &World, received: &Received) -> BTreeSet<String> {
    let produced = world.produced.lock().expect("never held across a panic");
    let received = received.lock().expect("never held across a panic");
    produced
        .iter()
        .map(|a| a.id.clone())
        .chain(received.keys().cloned())
        .collect()
}

/// Outputs of acked inputs that reached neither the sink nor the dead-letter table.
fn losses(
    world: &World,
    sent: &BTreeMap<String, Bytes>,
    acked: &BTreeSet<String>,
    dead: &BTreeSet<String>,
    copies: &HashMap<&str, usize>,
) -> Vec<String> {
    let mut losses = Vec::new();
    for id in acked {
        if dead.contains(id) {
            continue;
        }
        let payload = &sent[id];
        for (out, _) in world.expected(id, payload) {
            if !copies.contains_key(out.as_str()) && !dead.contains(&out) {
                losses.push(out);
            }
        }
    }
    if !losses.is_empty() {
        world.trace.log(format!(
            "LOSS {} outputs of acked inputs, e.g. {:?}",
            losses.len(),
            &losses[..losses.len().min(5)]
        ));
    }
    losses
}

fn report(
    world: &World,
    acked: &BTreeSet<String>,
    stored: &[Stored],
    copies: &HashMap<&str, usize>,
    dead_letters: usize,
    losses: Vec<String>,
) -> Report {
    let d = world.disk.stats();
    let mut faults = world
        .counts
        .lock()
        .expect("never held across a panic")
        .clone();
    faults.disk_write_errors = d.write_errors;
    faults.disk_sync_errors = d.sync_errors;
    faults.disk_full_errors = d.full_errors;
    let (trace_hash, trace_tail) = world.trace.hash_and_tail(40);
    Report {
        config: world.cfg.clone(),
        coverage: world
            .coverage
            .lock()
            .expect("never held across a panic")
            .clone(),
        inputs_acked: acked.len(),
        acks: world
            .produced
            .lock()
            .expect("never held across a panic")
            .len() as u64,
        restarts: world.incarnations.load(Ordering::SeqCst).saturating_sub(1),
        faults,
        sink_messages: stored.len(),
        sink_duplicates: copies.values().filter(|c| **c > 1).count(),
        dead_letters,
        losses,
        violations: world
            .violations
            .lock()
            .expect("never held across a panic")
            .clone(),
        trace_hash,
        trace_tail,
        virtual_ms: world.trace.start.elapsed().as_millis() as u64,
    }
}
