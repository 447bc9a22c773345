//! One run, start to end: the world is built from the seed, producers publish a workload and
//! retry what is not acked, faults are injected until the producers are done, everything heals
//! and drains, then the checkers (`check.rs`) read the history.
//!
//! Every random choice comes from one master generator seeded by the run's seed, drawn in a
//! fixed order: the disk, the three links, sidelog's entropy, the workload, each producer, the
//! faults. Changing that order changes every trace hash.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use sidelog::journal::Seq;
use sidelog::proto::Message;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::check::{Received, check};
use crate::disk::{CrashLoss, DiskFaults, Full, SimDisk};
use crate::net::{Link, LinkFaults};
use crate::report::{FaultCounts, Report};
use crate::settings::SimConfig;
use crate::trace::{SimClock, Trace, TraceWriter};
use crate::world::{DISK_CAPACITY, Node, World, sim_sidelog_config};

/// A run that has not drained by then has a liveness bug.
const DRAIN_LIMIT: Duration = Duration::from_secs(1800);

/// Runs one seed to the end and checks it.
pub fn run(cfg: SimConfig) -> Report {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(run_async(cfg))
}

async fn run_async(cfg: SimConfig) -> Report {
    let mut master = StdRng::seed_from_u64(cfg.seed);
    let start = Instant::now();
    let world = build_world(&cfg, &mut master, start);
    world.trace.log(format!(
        "run seed {} mode {} pass-through {}",
        cfg.seed, cfg.mode, cfg.pass_through
    ));
    // Scoped to this thread and this run, so parallel runs keep their traces apart.
    let subscriber = tracing_subscriber::fmt()
        .with_writer(TraceWriter(world.trace.clone()))
        .with_max_level(tracing::Level::WARN)
        .without_time()
        .with_ansi(false)
        .with_target(false)
        .finish();
    let _logs = tracing::subscriber::set_default(subscriber);
    world.start_until_up().await;

    let (sent, batches) = workload(&cfg, &mut StdRng::seed_from_u64(master.random::<u64>()));
    let received: Received = Arc::default();
    let producers = spawn_producers(&world, batches, &mut master, &received);
    let mut chaos = StdRng::seed_from_u64(master.random::<u64>());
    let restarting = inject_faults(&world, &cfg, &mut chaos, &producers, start).await;
    heal(&world, restarting, producers).await;

    if world.current().is_none() {
        world.start_until_up().await;
    }
    let Some(node) = world.current() else {
        // start_until_up reported why; check what reached the sink all the same.
        return check(&world, None, &sent, &received).await;
    };
    drain(&world, &node).await;
    world.trace.log("drained");
    check(&world, Some(&node), &sent, &received).await
}

/// The world of the run: its disk, links and hops, each with a seed of its own.
fn build_world(cfg: &SimConfig, master: &mut StdRng, start: Instant) -> Arc<World> {
    let mut seed = || master.random::<u64>();
    let scale = cfg.fault_scale;
    let counts = Arc::new(Mutex::new(FaultCounts::default()));
    let link_faults = LinkFaults {
        drop_request: 0.01 * scale,
        drop_response: 0.01 * scale,
        duplicate: 0.01 * scale,
        delay_max_ms: 5,
    };
    let disk_faults = DiskFaults {
        write_error: 0.0005 * scale,
        sync_error: cfg.sync_error_rate * scale,
        capacity: DISK_CAPACITY,
    };
    Arc::new(World {
        config: sim_sidelog_config(cfg),
        clock: Arc::new(SimClock { start }),
        trace: Arc::new(Trace {
            start,
            events: Mutex::new(Vec::new()),
        }),
        disk: SimDisk::new(seed(), disk_faults),
        ingest_link: Link::new("producer->sidelog", seed(), link_faults, counts.clone()),
        handler_link: Link::new("sidelog->handler", seed(), link_faults, counts.clone()),
        sink_link: Link::new("sidelog->sink", seed(), link_faults, counts.clone()),
        counts,
        coverage: Mutex::default(),
        handler_hop: Arc::default(),
        sink_hop: Arc::default(),
        stored: Arc::default(),
        node: Mutex::new(None),
        incarnations: AtomicU64::new(0),
        produced: Arc::default(),
        violations: Mutex::new(Vec::new()),
        entropy_seed: AtomicU64::new(seed()),
        wal_bytes: AtomicU64::new(cfg.wal_bytes),
        cfg: cfg.clone(),
    })
}

/// The messages (id → payload) and how the producers batch them.
type Workload = (BTreeMap<String, Bytes>, Vec<Vec<Vec<Message>>>);

/// `cfg.messages` messages of random size and key (three keys per producer), in random batches,
/// dealt to the producers.
fn workload(cfg: &SimConfig, wl: &mut StdRng) -> Workload {
    let mut sent: BTreeMap<String, Bytes> = BTreeMap::new();
    let mut producer_batches: Vec<Vec<Vec<Message>>> = vec![Vec::new(); cfg.producers.max(1)];
    let mut n = 0usize;
    while n < cfg.messages {
        let p = wl.random_range(0..producer_batches.len());
        let size = wl
            .random_range(1..=cfg.batch_max.max(1))
            .min(cfg.messages - n);
        let batch: Vec<Message> = (n..n + size)
            .map(|i| {
                let len = wl.random_range(1..600);
                let payload = Bytes::from(
                    format!("{i}:")
                        .into_bytes()
                        .into_iter()
                        .chain((0..len).map(|j| b'a' + (j % 26) as u8))
                        .collect::<Vec<u8>>(),
                );
                let id = format!("m{i}");
                sent.insert(id.clone(), payload.clone());
                Message {
                    id,
                    // A producer's own keys, so that each key's order is the producer's.
                    key: format!("p{p}-k{}", wl.random_range(0..3)),
                    payload,
                    ..Default::default()
                }
            })
            .collect();
        producer_batches[p].push(batch);
        n += size;
    }
    (sent, producer_batches)
}

/// Producers that publish their batches in order and retry an unacked batch with the same ids,
/// with a randomized exponential backoff.
fn spawn_producers(
    world: &Arc<World>,
    batches: Vec<Vec<Vec<Message>>>,
    master: &mut StdRng,
    received: &Received,
) -> Vec<JoinHandle<()>> {
    let mut producers = Vec::new();
    for (p, batches) in batches.into_iter().enumerate() {
        let (world, received) = (world.clone(), received.clone());
        let mut rng = StdRng::seed_from_u64(master.random::<u64>());
        producers.push(tokio::spawn(async move {
            for (b, batch) in batches.into_iter().enumerate() {
                let mut attempt = 0u32;
                loop {
                    attempt += 1;
                    match world.publish(batch.clone()).await {
                        Ok(acks) => {
                            let mut r = received.lock().expect("never held across a panic");
                            for a in acks {
                                r.insert(a.id, a.sequence);
                            }
                            world.trace.log(format!(
                                "producer {p} batch {b} acked after {attempt} attempts"
                            ));
                            break;
                        }
                        Err(e) => {
                            world
                                .trace
                                .log(format!("producer {p} batch {b} attempt {attempt}: {e}"));
                            let backoff = 20u64 << attempt.min(6);
                            tokio::time::sleep(Duration::from_millis(
                                rng.random_range(backoff / 2..=backoff),
                            ))
                            .await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
            }
        }));
    }
    producers
}

/// The faults, until the producers are done: crashes spread over the run, hop outages, slow and
/// failing periods, a full disk, partitions. Returns the restart still under way, if any.
async fn inject_faults(
    world: &Arc<World>,
    cfg: &SimConfig,
    chaos: &mut StdRng,
    producers: &[JoinHandle<()>],
    start: Instant,
) -> Option<JoinHandle<()>> {
    let mut crashes_left = cfg.crashes;
    let workload_ms = (cfg.messages as u64 * 3).max(500);
    let mut restarting: Option<JoinHandle<()>> = None;
    while !producers.iter().all(|p| p.is_finished()) {
        let gap = if crashes_left > 0 {
            chaos.random_range(1..=(2 * workload_ms / cfg.crashes.max(1) as u64).max(2))
        } else {
            chaos.random_range(50..500)
        };
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let roll = chaos.random_range(0..100);
        let now = Instant::now();
        let period = Duration::from_millis(chaos.random_range(100..2000));
        if crashes_left > 0 && roll < 40 {
            if world.current().is_some() {
                crashes_left -= 1;
                restarting = Some(crash_and_restart(world, chaos));
            }
        } else if cfg.fault_scale > 0.0 {
            inject_one(world, roll, now, period);
        }
        if Instant::now().duration_since(start) > DRAIN_LIMIT {
            break;
        }
    }
    restarting
}

/// Kills sidelog, losing all, none or some of the disk's unsynced pages, and starts it again
/// after a random pause. One stop in ten is a clean one instead (the journal closed first, as
/// SIGTERM does), whose next start skips the rewrite-through.
fn crash_and_restart(world: &Arc<World>, chaos: &mut StdRng) -> JoinHandle<()> {
    let loss = match chaos.random_range(0..3) {
        0 => CrashLoss::All,
        1 => CrashLoss::None,
        _ => CrashLoss::Torn,
    };
    let clean = chaos.random_range(0..10) == 0;
    if clean {
        let w = world.clone();
        let down = Duration::from_millis(chaos.random_range(0..500));
        return tokio::spawn(async move {
            w.stop_cleanly().await;
            tokio::time::sleep(down).await;
            w.start_until_up().await;
        });
    }
    world.crash_node(loss);
    let down = Duration::from_millis(chaos.random_range(0..500));
    // What an operator may do between the crash and the next start.
    let action = chaos.random_range(0..20);
    let pick = chaos.random::<u64>();
    let w = world.clone();
    tokio::spawn(async move {
        tokio::time::sleep(down).await;
        match action {
            0 | 1 => {
                w.start_on_a_new_journal().await;
                w.start_until_up().await;
            }
            2 | 3 => match w.damage_the_log(pick) {
                Some(at) => w.start_with_a_damaged_log(at).await,
                None => {
                    w.start_until_up().await;
                }
            },
            _ => {
                w.start_until_up().await;
            }
        }
    })
}

/// One fault other than a crash, chosen by `roll` (40..100), lasting `period` from `now`.
fn inject_one(world: &Arc<World>, roll: i32, now: Instant, period: Duration) {
    let mut c = world.counts.lock().expect("never held across a panic");
    let (hop, name) = if roll % 2 == 0 {
        (&world.handler_hop, "handler")
    } else {
        (&world.sink_hop, "sink")
    };
    let hop = || hop.lock().expect("never held across a panic");
    match roll {
        40..=54 => {
            // Two outages in fifteen last 15-35 s: longer than the retry budget that once
            // dead-lettered what waited (8 attempts, backoffs up to a second).
            let long = roll <= 41;
            let period = if long {
                Duration::from_secs(15) + period * 10
            } else {
                period
            };
            let mut h = hop();
            h.down_until = Some(now + period);
            h.epoch += 1;
            c.hop_outages += 1;
            c.long_outages += u64::from(long);
            world.trace.log(format!("CRASH {name} for {period:?}"));
        }
        55..=69 => {
            hop().slow_until = Some(now + period);
            c.slow_periods += 1;
            world.trace.log(format!("SLOW {name} for {period:?}"));
        }
        70..=84 => {
            hop().failing_until = Some(now + period);
            c.failing_periods += 1;
            world.trace.log(format!("FAILING {name} for {period:?}"));
        }
        85..=89 => {
            let kind = if roll % 2 == 0 {
                Full::InPlace
            } else {
                Full::CopyOnWrite
            };
            world.disk.fill_up(kind);
            c.disk_full_periods += 1;
            world
                .trace
                .log(format!("DISK FULL ({kind:?}) for {period:?}"));
            let disk = world.disk.clone();
            let trace = world.trace.clone();
            tokio::spawn(async move {
                tokio::time::sleep(period).await;
                disk.free_space();
                trace.log("disk space returns");
            });
        }
        _ => {
            let link = match roll % 3 {
                0 => &world.ingest_link,
                1 => &world.handler_link,
                _ => &world.sink_link,
            };
            link.partition(now + period);
            c.partitions += 1;
            world
                .trace
                .log(format!("PARTITION {} for {period:?}", link.name));
        }
    }
}

/// Faults stop; everything heals; the producers finish.
async fn heal(
    world: &Arc<World>,
    restarting: Option<JoinHandle<()>>,
    producers: Vec<JoinHandle<()>>,
) {
    world.trace.log("faults stop");
    for link in [&world.ingest_link, &world.handler_link, &world.sink_link] {
        link.heal();
    }
    for hop in [&world.handler_hop, &world.sink_hop] {
        let mut h = hop.lock().expect("never held across a panic");
        h.down_until = None;
        h.slow_until = None;
        h.failing_until = None;
    }
    world.disk.set_faults(DiskFaults {
        write_error: 0.0,
        sync_error: 0.0,
        capacity: DISK_CAPACITY,
    });
    world.disk.free_space();
    if let Some(r) = restarting {
        let _ = r.await;
    }
    for p in producers {
        let _ = tokio::time::timeout(DRAIN_LIMIT, p).await;
    }
}

/// Waits until the journal's backlog is empty for good, or reports that it never was.
async fn drain(world: &Arc<World>, node: &Arc<Node>) {
    let drain_deadline = Instant::now() + DRAIN_LIMIT;
    loop {
        let idle = node.pipeline.is_serving() && node.pipeline.undelivered().is_empty();
        if idle {
            // Let the last deliveries' completion marks and any straggling calls land.
            tokio::time::sleep(Duration::from_secs(10)).await;
            if node.journal.backlog().entries() == 0 {
                return;
            }
        }
        if Instant::now() > drain_deadline {
            report_stuck(world, node).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A liveness violation: what the journal still holds after the drain limit.
async fn report_stuck(world: &Arc<World>, node: &Arc<Node>) {
    let inputs = node
        .journal
        .scan_inputs(Seq(0), 5)
        .await
        .unwrap_or_default();
    let outputs = node
        .journal
        .scan_outputs(Seq(0), 5)
        .await
        .unwrap_or_default();
    let summary = node.journal.summary().await.ok();
    world.violation(format!(
        "did not drain: {} journal entries left after {DRAIN_LIMIT:?}; serving {}; summary {summary:?}; inputs {:?}; outputs {:?}",
        node.journal.backlog().entries(),
        node.pipeline.is_serving(),
        inputs.iter().map(|i| (i.seq.0, i.entry.message.as_ref().map(|m| m.id.clone()), i.state)).collect::<Vec<_>>(),
        outputs.iter().map(|o| (o.seq.0, o.entry.message.as_ref().map(|m| m.id.clone()), o.entry.input_seq)).collect::<Vec<_>>(),
    ));
}
