//! SIGKILL tests of the real binary: the durability promise of each logging mode.
//!
//! Every test here starts `sidelog serve` with a real gRPC handler and sink (in-process tonic
//! servers), loads it from concurrent producers that retry unacked batches with the same ids,
//! kills processes at random points of progress during the load (after a random number of
//! further outputs at the sink), and checks what reached the sink against what was
//! acknowledged. The random schedule's seed is printed; `SIDELOG_TEST_SEED=<n>` repeats it.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use tokio::time::Instant;

fn seed() -> u64 {
    let seed = std::env::var("SIDELOG_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) * 7919 + 17);
    eprintln!("schedule seed: {seed} (SIDELOG_TEST_SEED={seed} repeats it)");
    seed
}

/// Flags that make retries quick enough for a test.
const FAST_RETRIES: &[&str] = &[
    "--handling-backoff-initial-ms",
    "10",
    "--handling-backoff-max-ms",
    "200",
    "--handling-max-attempts",
    "1000",
    "--delivery-backoff-initial-ms",
    "10",
    "--delivery-backoff-max-ms",
    "200",
    "--delivery-max-attempts",
    "1000",
    "--delivery-timeout-ms",
    "2000",
    "--journal-sync-interval-ms",
    "100",
];

struct Outcome {
    /// Outputs of acknowledged inputs that never reached the sink.
    missing: HashSet<String>,
    /// Output ids that reached the sink more than once.
    duplicates: usize,
    /// Duplicates whose copies do not straddle a crash.
    unexplained_duplicates: Vec<String>,
    acked: usize,
}

/// A crash: from the SIGKILL to the restart. A request the dying process had already written
/// to the socket can still reach the sink inside this interval.
#[derive(Debug, Clone, Copy)]
struct Crash {
    killed: Instant,
    restarted: Instant,
}

/// Checks the sink against the producers' log: no phantom messages, and reports losses and
/// duplicates. A duplicate is "explained" when its first copy arrived before a restart and a
/// later copy after the kill that preceded it.
async fn check(
    sink: &TestSink,
    log: &ProducerLog,
    crashes: &[Crash],
    wait: Duration,
    journaled: bool,
) -> Outcome {
    let want: HashSet<String> = log
        .acked
        .iter()
        .flat_map(|(id, payload)| expected_outputs(id, payload))
        .map(|(id, _)| id)
        .collect();
    let missing = wait_for_ids(sink, &want, wait).await;
    // Everything that may legitimately appear: outputs of anything ever sent.
    let possible: HashMap<String, Vec<u8>> = log
        .sent
        .iter()
        .flat_map(|(id, payload)| expected_outputs(id, payload))
        .collect();
    let mut copies: HashMap<String, Vec<Instant>> = HashMap::new();
    for a in sink.arrivals() {
        let expected = possible
            .get(&a.id)
            .unwrap_or_else(|| panic!("the sink received {:?}, which was never produced", a.id));
        assert_eq!(&a.payload, expected, "payload of {} was altered", a.id);
        // Mode none has no journal, so no sequence to carry.
        assert!(
            a.seq.is_some() || !journaled,
            "{} arrived without a sidelog-seq header",
            a.id
        );
        copies.entry(a.id).or_default().push(a.at);
    }
    let mut duplicates = 0;
    let mut unexplained = Vec::new();
    for (id, times) in &copies {
        if times.len() > 1 {
            duplicates += 1;
            let first = times.iter().min().unwrap();
            let last = times.iter().max().unwrap();
            if !crashes
                .iter()
                .any(|c| *first <= c.restarted && c.killed <= *last)
            {
                let t0 = crashes.first().map_or(*first, |c| c.killed);
                let detail: Vec<String> = sink
                    .arrivals()
                    .iter()
                    .filter(|a| &a.id == id)
                    .map(|a| {
                        format!(
                            "seq {:?} at {:?}",
                            a.seq,
                            a.at.saturating_duration_since(t0)
                        )
                    })
                    .collect();
                let kills: Vec<_> = crashes
                    .iter()
                    .map(|c| c.killed.saturating_duration_since(t0))
                    .collect();
                unexplained.push(format!("{id}: {detail:?} (kills at {kills:?})"));
            }
        }
    }
    Outcome {
        missing,
        duplicates,
        unexplained_duplicates: unexplained,
        acked: log.acked.len(),
    }
}

/// A test's world: a gRPC sink and handler of the test's own, and sidelog between them.
struct Rig {
    _dir: tempfile::TempDir,
    sink: TestSink,
    sink_srv: Restartable,
    handler: TestHandler,
    handler_srv: Restartable,
    sidelog: Sidelog,
}

impl Rig {
    /// Starts sink, handler and sidelog in `mode` with `flags`, and waits until it serves.
    async fn start(mode: &str, flags: &[&str]) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let sink = TestSink::default();
        let sink_srv = sink.start(free_port()).await;
        let handler = TestHandler::default();
        let handler_srv = handler.start(free_port()).await;
        let (handler_url, sink_url) = (handler_srv.url(), sink_srv.url());
        let mut args = vec![
            "--mode",
            mode,
            "--handler",
            &handler_url,
            "--sink",
            &sink_url,
        ];
        args.extend_from_slice(flags);
        let mut sidelog = Sidelog::new(&dir.path().join("data"), &args);
        sidelog.start().await;
        Rig {
            _dir: dir,
            sink,
            sink_srv,
            handler,
            handler_srv,
            sidelog,
        }
    }

    /// Waits for `more` further arrivals at the sink, or for the producers to be done.
    async fn sink_progress<T>(&self, more: usize, producers: &tokio::task::JoinHandle<T>) {
        let want = self.sink.arrivals().len() + more;
        // A pace, not a check: the run's checks come at its end.
        let _ = eventually(Duration::from_secs(60), || {
            self.sink.arrivals().len() >= want || producers.is_finished()
        })
        .await;
    }

    /// Waits until sidelog logs `needle` once more (it felt a hop go down), or for the
    /// producers to be done (then nothing may call the hop any more).
    async fn felt<T>(&self, needle: &str, producers: &tokio::task::JoinHandle<T>) {
        let seen = self.sidelog.log().matches(needle).count();
        let _ = eventually(Duration::from_secs(60), || {
            self.sidelog.log().matches(needle).count() > seen || producers.is_finished()
        })
        .await;
    }

    async fn stop(mut self) {
        self.sidelog.kill9().await;
        self.sink_srv.stop().await;
        self.handler_srv.stop().await;
    }
}

/// Loads sidelog in `mode` and SIGKILLs it `kills` times at random moments.
async fn sigkill_during_load(
    mode: &str,
    kills: usize,
    extra: &[&str],
    sink_delay_ms: u64,
) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed());
    let mut flags = FAST_RETRIES.to_vec();
    flags.extend_from_slice(extra);
    let mut rig = Rig::start(mode, &flags).await;
    rig.sink
        .delay_us
        .store(sink_delay_ms * 1000, std::sync::atomic::Ordering::Relaxed);
    let (sink, sidelog) = (&rig.sink, &mut rig.sidelog);

    let producers = tokio::spawn(produce(
        sidelog.url(),
        format!("{mode}-run"),
        4,
        3000,
        10,
        Duration::from_millis(3),
    ));
    let mut crashes = Vec::new();
    for _ in 0..kills {
        // Each kill lands after the sink has taken a random number of further outputs: at a
        // point of progress of this run, whatever the machine's speed.
        let want = sink.arrivals().len() + rng.random_range(100..400);
        // Or until the producers are done (mode none loses what a kill holds, so the sink may
        // never reach `want`).
        let progressed = eventually(Duration::from_secs(60), || {
            sink.arrivals().len() >= want || producers.is_finished()
        })
        .await;
        assert!(
            progressed,
            "{mode}: the sink stalled below {want} outputs; log:\n{}",
            sidelog.log_tail()
        );
        let killed = Instant::now();
        sidelog.kill9().await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
        crashes.push(Crash {
            killed,
            restarted: Instant::now(),
        });
        sidelog.spawn();
    }
    let log = producers.await.expect("producers");
    sidelog.wait_serving(Duration::from_secs(60)).await;
    let journaled = mode != "none";
    // In mode none the missing messages are gone for good: a short wait drains the rest.
    let wait = Duration::from_secs(if journaled { 60 } else { 10 });
    let outcome = check(sink, &log, &crashes, wait, journaled).await;
    eprintln!(
        "{mode}: acked {} inputs, {} producer retries, {} kills, {} missing outputs, {} duplicate outputs",
        outcome.acked,
        log.errors,
        kills,
        outcome.missing.len(),
        outcome.duplicates
    );
    rig.stop().await;
    outcome
}

fn assert_no_loss(outcome: &Outcome) {
    let mut missing: Vec<_> = outcome.missing.iter().collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "{} acknowledged outputs never reached the sink, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        outcome.unexplained_duplicates.is_empty(),
        "duplicates not caused by a crash: {:?}",
        &outcome.unexplained_duplicates[..outcome.unexplained_duplicates.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbml_acked_messages_survive_sigkill_during_load() {
    assert_no_loss(&sigkill_during_load("rbml", 3, &[], 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sbml_acked_messages_survive_sigkill_during_load() {
    assert_no_loss(&sigkill_during_load("sbml", 3, &[], 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hml_acked_messages_survive_sigkill_during_load() {
    assert_no_loss(&sigkill_during_load("hml", 3, &[], 0).await);
}

/// Mode `none` acks on receipt and holds messages only in memory: a SIGKILL while the sink is
/// slow must lose some. If this test passes with no loss, the harness cannot see loss.
/// sbml exists for handlers that are not deterministic: its replay re-sends the journaled
/// outputs and never calls the handler again. The handler here stamps each call's number into
/// its outputs, so an output handled twice would reach the sink with two different payloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sbml_replays_what_a_non_deterministic_handler_made_and_never_calls_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::default();
    let sink_srv = sink.start(free_port()).await;
    let handler = TestHandler {
        outputs: HandlerOutputs::Stamped,
        ..TestHandler::default()
    };
    let handler_srv = handler.start(free_port()).await;
    let (handler_url, sink_url) = (handler_srv.url(), sink_srv.url());
    let mut args = vec![
        "--mode",
        "sbml",
        "--handler",
        &handler_url,
        "--sink",
        &sink_url,
    ];
    args.extend_from_slice(FAST_RETRIES);
    let mut sidelog = Sidelog::new(&dir.path().join("data"), &args);
    sidelog.start().await;
    let producers = tokio::spawn(produce(
        sidelog.url(),
        "stamped".into(),
        4,
        2000,
        10,
        Duration::from_millis(3),
    ));
    // Kills at progress points: after each further 300 outputs at the sink.
    for kill in 1..=3 {
        let want = kill * 300;
        let reached = eventually(Duration::from_secs(60), || sink.arrivals().len() >= want).await;
        assert!(
            reached,
            "the sink never got {want} outputs; log:\n{}",
            sidelog.log_tail()
        );
        sidelog.kill9().await;
        sidelog.start().await;
    }
    let log = producers.await.expect("producers");
    let want: HashSet<String> = log
        .acked
        .iter()
        .flat_map(|(id, payload)| expected_outputs(id, payload))
        .map(|(id, _)| id)
        .collect();
    let missing = wait_for_ids(&sink, &want, Duration::from_secs(60)).await;
    assert!(
        missing.is_empty(),
        "{} acked outputs never arrived",
        missing.len()
    );
    let mut payloads: HashMap<String, HashSet<Vec<u8>>> = HashMap::new();
    let mut seqs: HashMap<String, HashSet<Option<u64>>> = HashMap::new();
    let mut arrived: HashMap<String, usize> = HashMap::new();
    for a in sink.arrivals() {
        payloads.entry(a.id.clone()).or_default().insert(a.payload);
        seqs.entry(a.id.clone()).or_default().insert(a.seq);
        *arrived.entry(a.id).or_default() += 1;
    }
    // Every output is re-sent from the journal, so a duplicate carries its original sequence.
    let duplicates = arrived.values().filter(|n| **n > 1).count();
    let reseq: Vec<(&String, &HashSet<Option<u64>>)> =
        seqs.iter().filter(|(_, s)| s.len() > 1).collect();
    assert!(
        reseq.is_empty(),
        "duplicates with different sidelog-seq: {:?}",
        &reseq[..reseq.len().min(10)]
    );
    let rehandled: Vec<&String> = payloads
        .iter()
        .filter(|(_, p)| p.len() > 1)
        .map(|(id, _)| id)
        .collect();
    let calls = handler.calls.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "sbml, stamped handler: {} acked inputs, {} handler calls, {} outputs at the sink, {} \
         output ids with two payloads, {} duplicated (all with one sidelog-seq)",
        log.acked.len(),
        calls,
        sink.arrivals().len(),
        rehandled.len(),
        duplicates
    );
    assert!(
        rehandled.is_empty(),
        "outputs reached the sink with different payloads, so their input was handled again: \
         {:?}",
        &rehandled[..rehandled.len().min(10)]
    );
    sidelog.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_none_loses_acked_messages_under_sigkill() {
    let outcome = sigkill_during_load(
        "none",
        2,
        &[
            "--delivery-batch-max-messages",
            "10",
            "--delivery-lanes",
            "2",
        ],
        100,
    )
    .await;
    assert!(
        !outcome.missing.is_empty(),
        "mode none lost nothing under SIGKILL: the test cannot observe loss"
    );
}

/// The handler and the sink crash (their servers stop and come back on the same port) during
/// the load; sidelog retries and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_and_sink_crashes_lose_nothing() {
    for mode in ["hml", "rbml", "sbml"] {
        let mut rng = StdRng::seed_from_u64(seed());
        let mut rig = Rig::start(mode, FAST_RETRIES).await;
        let producers = tokio::spawn(produce(
            rig.sidelog.url(),
            format!("{mode}-hops"),
            4,
            2000,
            10,
            Duration::from_millis(3),
        ));
        // Each hop goes down after some progress at the sink, and comes back once sidelog has
        // felt the outage (a failed call in its log), not after a fixed time.
        for _ in 0..2 {
            rig.sink_progress(rng.random_range(100..400), &producers)
                .await;
            rig.handler_srv.stop().await;
            rig.felt("the handler is down", &producers).await;
            rig.handler_srv = rig.handler.start(rig.handler_srv.addr).await;
            rig.sink_progress(rng.random_range(100..400), &producers)
                .await;
            rig.sink_srv.stop().await;
            rig.felt("the sink is down", &producers).await;
            rig.sink_srv = rig.sink.start(rig.sink_srv.addr).await;
        }
        let log = producers.await.expect("producers");
        // A sink that crashes after receiving a batch but before answering causes a retry,
        // a duplicate of that batch; so no crash times are given and duplicates are allowed,
        // but nothing may be lost or invented.
        let outcome = check(&rig.sink, &log, &[], Duration::from_secs(60), true).await;
        eprintln!(
            "{mode}: acked {} inputs, {} missing, {} duplicates",
            outcome.acked,
            outcome.missing.len(),
            outcome.duplicates
        );
        assert!(
            outcome.missing.is_empty(),
            "{mode}: lost {:?}",
            outcome.missing
        );
        rig.stop().await;
    }
}

/// The sink is down: intake stops at the backlog limit with RESOURCE_EXHAUSTED, nothing is
/// dropped; sidelog is SIGKILLed and restarted while the sink is still down (it replays and
/// stays NOT_SERVING); once the sink is back, everything acked arrives and intake resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_down_until_the_backlog_limit_then_back_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::default();
    let sink_addr = free_port(); // nothing listens here yet
    let sink_url = format!("http://{sink_addr}");
    let mut args = vec![
        "--mode",
        "hml",
        "--sink",
        &sink_url,
        "--limits-max-backlog-bytes",
        "65536",
    ];
    args.extend_from_slice(FAST_RETRIES);
    let mut sidelog = Sidelog::new(&dir.path().join("data"), &args);
    sidelog.start().await;
    let mut client = sidelog.client().await;

    let mut acked = HashSet::new();
    let mut exhausted = false;
    for i in 0..10_000 {
        let messages = (0..10)
            .map(|j| sidelog::proto::Message {
                id: format!("bp-{i}-{j}"),
                payload: vec![b'x'; 200].into(),
                ..Default::default()
            })
            .collect::<Vec<_>>();
        match client
            .publish(sidelog::proto::PublishRequest {
                messages: messages.clone(),
            })
            .await
        {
            Ok(r) => {
                for a in r.into_inner().acks {
                    assert_eq!(a.status, sidelog::proto::ack::Status::Accepted as i32);
                    acked.insert(a.id);
                }
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
                assert!(status.message().contains("max_backlog_bytes"), "{status}");
                exhausted = true;
                break;
            }
        }
    }
    assert!(exhausted, "the backlog limit was never reached");
    assert!(!acked.is_empty());

    sidelog.kill9().await;
    sidelog.spawn();
    // Replaying into a sink that is down: not serving, and Publish says UNAVAILABLE.
    let health = poll_until(
        Duration::from_secs(30),
        || "health never answered after the restart".into(),
        || async { sidelog.health().await },
    )
    .await;
    assert_eq!(
        Some(health),
        Some(false),
        "health must be NOT_SERVING during replay"
    );
    let err = sidelog
        .client()
        .await
        .publish(sidelog::proto::PublishRequest {
            messages: vec![sidelog::proto::Message {
                id: "during-replay".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");

    let mut sink_srv = sink.start(sink_addr).await;
    sidelog.wait_serving(Duration::from_secs(60)).await;
    let missing = wait_for_ids(&sink, &acked, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "{} acked messages lost", missing.len());
    let r = sidelog
        .client()
        .await
        .publish(sidelog::proto::PublishRequest {
            messages: vec![sidelog::proto::Message {
                id: "after".into(),
                ..Default::default()
            }],
        })
        .await
        .expect("intake resumes once the backlog drained");
    assert_eq!(
        r.into_inner().acks[0].status,
        sidelog::proto::ack::Status::Accepted as i32
    );
    sidelog.kill9().await;
    sink_srv.stop().await;
}

/// A message the handler refuses, and outputs the sink never takes, end in the dead-letter
/// table: kept, listed by `sidelog inspect`, and out of the backlog, so nothing else is held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_and_undeliverable_messages_go_to_the_dead_letter_table() {
    for mode in ["hml", "rbml", "sbml"] {
        let flags = [
            "--delivery-max-attempts",
            "3",
            "--delivery-backoff-initial-ms",
            "5",
            "--journal-sync-interval-ms",
            "50",
        ];
        let mut rig = Rig::start(mode, &flags).await;
        // Set before anything is published: nothing is ever delivered.
        rig.sink
            .failing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let data = rig.sidelog.data_dir.clone();
        let mut client = rig.sidelog.client().await;
        // "x-2" has 1 output, "x-3" has 2, "x-1" none (see expected_outputs); "poison-1" is refused.
        let ids = ["x-1", "x-2", "x-3", "poison-1"];
        assert_eq!(expected_outputs("x-1", b"p").len(), 0);
        assert_eq!(expected_outputs("x-2", b"p").len(), 1);
        assert_eq!(expected_outputs("x-3", b"p").len(), 2);
        let messages = ids
            .iter()
            .map(|id| sidelog::proto::Message {
                id: id.to_string(),
                payload: b"p".to_vec().into(),
                ..Default::default()
            })
            .collect();
        let acks = client
            .publish(sidelog::proto::PublishRequest { messages })
            .await
            .unwrap()
            .into_inner()
            .acks;
        assert!(
            acks.iter()
                .all(|a| a.status == sidelog::proto::ack::Status::Accepted as i32),
            "{mode}: {acks:?}"
        );
        // 1 refused input + 3 undeliverable outputs; then the backlog is empty.
        rig.sidelog.wait_summary("dead letters", 4).await;
        rig.sidelog.wait_summary("backlog inputs", 0).await;
        rig.sidelog.wait_summary("backlog outputs", 0).await;
        rig.sidelog.terminate().await;
        let data = data.to_str().unwrap();
        let text = common::inspect(&["--data-dir", data]).await.unwrap();
        assert_eq!(
            common::summary_field(&text, "dead letters"),
            4,
            "{mode}:\n{text}"
        );
        assert_eq!(
            common::summary_field(&text, "backlog inputs"),
            0,
            "{mode}:\n{text}"
        );
        assert_eq!(
            common::summary_field(&text, "backlog outputs"),
            0,
            "{mode}:\n{text}"
        );
        let text = common::inspect(&["--data-dir", data, "dead-letters"])
            .await
            .unwrap();
        assert!(
            text.contains("id=poison-1") && text.contains("refused"),
            "{mode}:\n{text}"
        );
        assert!(
            text.contains("id=x-3/1") && text.contains("sink failed 3 times"),
            "{mode}:\n{text}"
        );
        rig.stop().await;
    }
}

/// The file sink writes a chunk to `.tmp-<name>`, fsyncs, renames: a SIGKILL while a chunk is
/// being written (its `.tmp-` file is seen) leaves no partial chunk under a chunk's name; the
/// restart removes the `.tmp-` file and re-sends its messages, and every acked message ends up
/// in a whole chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_killed_mid_write_is_never_visible_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = data.join("out");
    let mut sidelog = Sidelog::new(
        &data,
        &[
            "--mode",
            "rbml",
            "--file-sink-chunk-max-bytes",
            "4194304",
            "--file-sink-chunk-max-age-ms",
            "50",
        ],
    );
    sidelog.start().await;
    let url = sidelog.url();
    let producers = tokio::spawn(async move {
        let mut acked = HashSet::new();
        let mut client = None;
        for i in 0..400 {
            let id = format!("big-{i}");
            let request = sidelog::proto::PublishRequest {
                messages: vec![msg(&id, &vec![b'x'; 64 * 1024])],
            };
            // Retry with the same id until acked (sidelog is being killed).
            loop {
                let c = match &mut client {
                    Some(c) => c,
                    None => {
                        match sidelog::proto::ingest_client::IngestClient::connect(url.clone())
                            .await
                        {
                            Ok(c) => client.insert(c),
                            Err(_) => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        }
                    }
                };
                match c.publish(request.clone()).await {
                    Ok(_) => break,
                    Err(_) => {
                        client = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            acked.insert(id);
        }
        acked
    });
    let is_tmp = |e: &std::fs::DirEntry| e.file_name().to_string_lossy().starts_with(".tmp-");
    let mut caught = 0;
    for _ in 0..6 {
        // Wait until a chunk is being written, then kill.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && !producers.is_finished() {
            let writing = std::fs::read_dir(&out)
                .map(|d| d.flatten().any(|e| is_tmp(&e)))
                .unwrap_or(false);
            if writing {
                sidelog.kill9().await;
                caught += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if sidelog.pid().is_some() {
            continue; // not caught this time; the producers may be done
        }
        let half_written: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .filter(|e| is_tmp(e))
            .map(|e| e.file_name())
            .collect();
        if half_written.is_empty() {
            // The write finished (renamed into place) between the look and the kill: this kill
            // did not land mid-write.
            caught -= 1;
        }
        sidelog.start().await;
    }
    assert!(
        caught > 0,
        "no kill landed while a chunk was being written (left a .tmp- file)"
    );
    let acked = producers.await.unwrap();
    assert_eq!(acked.len(), 400);
    // Checked below, chunk by chunk.
    let _ = eventually(Duration::from_secs(30), || {
        acked.is_subset(
            &sidelog::sink::list_chunks(&out)
                .unwrap_or_default()
                .iter()
                .flat_map(|p| sidelog::sink::read_chunk(p).unwrap_or_default())
                .map(|m| m.id)
                .collect(),
        )
    })
    .await;
    // Every chunk under a chunk's name reads back whole; no .tmp- file is left after the
    // restart.
    let mut stored = HashSet::new();
    for path in sidelog::sink::list_chunks(&out).unwrap() {
        let messages = sidelog::sink::read_chunk(&path)
            .unwrap_or_else(|e| panic!("{} is not a whole chunk: {e}", path.display()));
        stored.extend(messages.into_iter().map(|m| m.id));
    }
    let missing: Vec<_> = acked.difference(&stored).collect();
    assert!(missing.is_empty(), "acked but in no chunk: {missing:?}");
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| is_tmp(e))
        .map(|e| e.file_name())
        .collect();
    eprintln!("{caught} kills landed while a chunk was being written");
    sidelog.terminate().await;
    let after: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| is_tmp(e))
        .map(|e| e.file_name())
        .collect();
    assert!(
        after.is_empty(),
        "left behind: {after:?} (before the stop: {leftovers:?})"
    );
}
