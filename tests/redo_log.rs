//! The redo log (`journal.wal`) across SIGKILLs of the real binary, with what an operator may
//! do between two starts: change `journal.wal_bytes`, move `journal.redb` aside or replace it,
//! damage the log. Acked messages are never lost silently: each start either keeps every one
//! of them or refuses, saying what it found and what to do.
//!
//! Every test acks messages while the sink fails (so they stay in the journal, their frames in
//! the log since the last checkpoint), SIGKILLs sidelog, acts on the files, and starts again;
//! at the end the sink comes back and must receive every acked id.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

/// Flags that keep acked messages in the journal while the sink fails, without dead letters;
/// a start serves at once and replays beside (the sink fails: a replay never ends).
const HOLD: &[&str] = &[
    "--replay-policy",
    "interleave",
    "--delivery-backoff-initial-ms",
    "50",
    "--delivery-backoff-max-ms",
    "200",
    "--delivery-max-attempts",
    "1000000",
];

fn wal(dir: &Path) -> std::path::PathBuf {
    dir.join(sidelog::journal::WAL_FILE_NAME)
}

/// Publishes each id in its own request (one commit, one frame each) and returns the acks'
/// sequences.
async fn ack_each(sidelog: &Sidelog, ids: &[&str]) -> Vec<u64> {
    let mut seqs = Vec::new();
    for id in ids {
        let acks = publish(sidelog, vec![msg(id, id.as_bytes())])
            .await
            .expect("publish");
        assert_eq!(acks[0].status, sidelog::proto::ack::Status::Accepted as i32);
        seqs.push(acks[0].sequence);
    }
    seqs
}

/// A sidelog whose sink fails until told otherwise.
async fn setup(dir: &Path, extra: &[&str]) -> (Sidelog, TestSink, Restartable) {
    let (sink, server) = failing_sink().await;
    let mut sidelog = with_sink(dir, &server, extra);
    sidelog.start().await;
    (sidelog, sink, server)
}

/// A sidelog on `dir` delivering to `sink`, with these flags (not started).
fn with_sink(dir: &Path, sink: &Restartable, extra: &[&str]) -> Sidelog {
    let url = format!("http://{}", sink.addr);
    let mut args = vec!["--sink", url.as_str()];
    args.extend_from_slice(HOLD);
    args.extend_from_slice(extra);
    Sidelog::new(dir, &args)
}

/// Starts sidelog with `args` added, expecting it to refuse: returns its log.
async fn start_refused(sidelog: &mut Sidelog) -> String {
    sidelog.spawn();
    let status = tokio::time::timeout(Duration::from_secs(30), sidelog.wait_exit())
        .await
        .expect("a refused start exits");
    assert!(!status.success(), "the start was refused: {status}");
    sidelog.log()
}

/// The sink comes back: every id in `want` arrives.
async fn all_delivered(sink: &TestSink, want: &[&str]) {
    sink.failing.store(false, Ordering::Relaxed);
    let want: HashSet<String> = want.iter().map(|s| s.to_string()).collect();
    let missing = wait_for_ids(sink, &want, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "acked but never delivered: {missing:?}");
}

/// `journal.wal_bytes = 0` at the start after a crash still applies the log; new messages get
/// new sequences; turning the log on again later replays nothing over them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_the_log_off_after_a_crash_loses_nothing_and_reuses_no_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut sidelog, sink, server) = setup(&data, &[]).await;
    let first = ack_each(&sidelog, &["a", "b", "c"]).await;
    sidelog.kill9().await;

    let mut sidelog = with_sink(&data, &server, &["--journal-wal-bytes", "0"]);
    sidelog.start().await;
    assert!(
        sidelog.log().contains("applied the redo log's commits"),
        "the log was applied with wal_bytes = 0:\n{}",
        sidelog.log_tail()
    );
    let second = ack_each(&sidelog, &["x", "y"]).await;
    for s in &second {
        assert!(
            !first.contains(s),
            "sequence {s} handed out twice: {first:?} {second:?}"
        );
    }
    assert_eq!(
        std::fs::metadata(wal(&data)).unwrap().len(),
        4096,
        "with wal_bytes = 0 the log keeps only its header"
    );
    sidelog.kill9().await;

    // On again, larger than before.
    let mut sidelog = with_sink(&data, &server, &["--journal-wal-bytes", "67108864"]);
    sidelog.start().await;
    let third = ack_each(&sidelog, &["z"]).await;
    assert!(!first.contains(&third[0]) && !second.contains(&third[0]));
    sidelog.kill9().await;
    // And smaller.
    let mut sidelog = with_sink(&data, &server, &["--journal-wal-bytes", "1048576"]);
    sidelog.start().await;
    all_delivered(&sink, &["a", "b", "c", "x", "y", "z"]).await;
    sidelog.terminate().await;
}

/// `journal.redb` moved aside after a crash (what the damaged-journal advice asks for): the
/// fresh journal beside the old log refuses to start, naming the problem and both ways out;
/// the moved journal put back loses nothing; `--discard-wal` starts a fresh one and says how
/// many frames it discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_beside_another_journal_is_never_applied() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut sidelog, sink, _server) = setup(&data, &[]).await;
    ack_each(&sidelog, &["a", "b", "c"]).await;
    sidelog.kill9().await;

    let journal = data.join(sidelog::journal::FILE_NAME);
    let aside = dir.path().join("journal.redb.moved");
    std::fs::rename(&journal, &aside).unwrap();
    let log = start_refused(&mut sidelog).await;
    assert!(
        log.contains("belongs to another journal") && log.contains("--discard-wal"),
        "{log}"
    );
    assert!(
        sidelog::journal::read_wal(&wal(&data))
            .unwrap()
            .frames
            .len()
            >= 3,
        "the refused start left the log as it was"
    );

    // Put back: nothing is lost.
    std::fs::rename(&aside, &journal).unwrap();
    sidelog.start().await;
    all_delivered(&sink, &["a", "b", "c"]).await;
    sink.failing.store(true, Ordering::Relaxed);
    ack_each(&sidelog, &["d"]).await;
    sidelog.kill9().await;

    // Moved aside again, and this time the fresh journal is told to discard the log: it
    // starts, and says what it gave up.
    std::fs::rename(&journal, &aside).unwrap();
    sidelog.add_args(&["--discard-wal"]);
    sidelog.start().await;
    let log = sidelog.log();
    assert!(
        log.contains("--discard-wal: discarded") && log.contains("frames="),
        "{}",
        sidelog.log_tail()
    );
    sidelog.terminate().await;
}

/// One byte of the log's first frame flipped after a crash: frames written after an fsync had
/// covered it follow, so the start refuses, naming the file and the offset; `inspect wal`
/// shows what the log still holds; the byte restored, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_frame_in_the_middle_of_the_log_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut sidelog, sink, _server) = setup(&data, &[]).await;
    ack_each(&sidelog, &["a", "b", "c"]).await;
    sidelog.kill9().await;

    let path = wal(&data);
    let at = 4096 + 48 + 5;
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let log = start_refused(&mut sidelog).await;
    assert!(
        log.contains("journal.wal") && log.contains("at offset 4096") && log.contains("damaged"),
        "{log}"
    );

    let shown = inspect(&["--data-dir", data.to_str().unwrap(), "wal"])
        .await
        .expect("inspect wal reads a damaged log");
    assert!(shown.contains("offset 4096: the run ends here"), "{shown}");
    assert!(
        shown.contains("after the end: frame") && shown.contains("id \"c\""),
        "what the damaged log still holds is shown:\n{shown}"
    );

    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    sidelog.start().await;
    all_delivered(&sink, &["a", "b", "c"]).await;
    sidelog.terminate().await;
}

/// `--discard-wal` on a damaged log applies the frames before the damage, drops the rest and
/// says how many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discarding_a_damaged_log_says_what_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut sidelog, _sink, _server) = setup(&data, &[]).await;
    ack_each(&sidelog, &["a", "b", "c"]).await;
    sidelog.kill9().await;
    let path = wal(&data);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4096 + 48 + 5] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    sidelog.add_args(&["--discard-wal"]);
    sidelog.start().await;
    let log = sidelog.log();
    assert!(
        log.contains("--discard-wal: discarded") && log.contains("frames="),
        "{log}"
    );
    sidelog.terminate().await;
}

/// A clean stop records that the journal file and the disk agree: the next start does not
/// rewrite it. A start after a SIGKILL does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_start_after_a_crash_rewrites_the_journal_through() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut sidelog, sink, _server) = setup(&data, &[]).await;
    ack_each(&sidelog, &["a", "b"]).await;
    let rewrites = |s: &Sidelog| s.log().matches("rewrote the journal through").count();
    assert_eq!(rewrites(&sidelog), 0, "a new journal is not rewritten");
    assert!(sidelog.terminate().await.success());
    sidelog.start().await;
    assert_eq!(rewrites(&sidelog), 0, "{}", sidelog.log_tail());
    assert!(sidelog.log().contains("stopped cleanly"));
    ack_each(&sidelog, &["c"]).await;
    sidelog.kill9().await;
    sidelog.start().await;
    assert_eq!(rewrites(&sidelog), 1, "{}", sidelog.log_tail());
    all_delivered(&sink, &["a", "b", "c"]).await;
    sidelog.terminate().await;
}
