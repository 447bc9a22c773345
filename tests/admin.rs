//! The admin service and `sidelog inspect` against the real binary: dead letters listed, shown,
//! re-queued and purged (through a running server and from the file), the `interleave` replay
//! policy, `replay.max_age_ms`, and the admin listener's rules.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{
    Sidelog, TestHandler, expected_outputs, failing_sink, free_port, inspect, msg, poll_until,
    produce, publish, summary_field, wait_for_ids,
};
use sidelog::proto::{Message, PublishRequest};

/// `(sequence, id)` of each line of an `inspect` listing.
fn listed(listing: &str) -> Vec<(u64, String)> {
    listing
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let seq = words.next()?.parse().ok()?;
            let id = words.find_map(|w| w.strip_prefix("id="))?.to_owned();
            Some((seq, id))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_requeued_and_purged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (sink, sink_server) = failing_sink().await;
    let args = [
        "--mode",
        "hml",
        "--sink",
        &sink_server.url(),
        "--delivery-max-attempts",
        "2",
        "--delivery-backoff-initial-ms",
        "10",
        "--delivery-backoff-max-ms",
        "50",
    ];
    let mut sidelog = Sidelog::new(&data, &args);
    sidelog.start().await;
    produce(sidelog.url(), "dl".into(), 1, 10, 10, Duration::ZERO).await;
    sidelog.wait_summary("dead letters", 10).await;
    // The inputs are completed just after their outputs are dead-lettered.
    let summary = sidelog.wait_summary("backlog inputs", 0).await;
    assert!(summary.contains("mode hml, serving"), "{summary}");

    let listing = sidelog.inspect(&["dead-letters"]).await.unwrap();
    let dead = listed(&listing);
    assert_eq!(dead.len(), 10, "{listing}");
    assert!(listing.contains("output after 2 attempts"), "{listing}");
    assert!(listing.contains("(10 entries, end)"), "{listing}");
    let page = sidelog
        .inspect(&["dead-letters", "--limit", "4"])
        .await
        .unwrap();
    let next = format!("more with --from {}", dead[4].0);
    assert!(page.contains(&next), "{page}");

    let (first_seq, first_id) = &dead[0];
    let shown = sidelog
        .inspect(&["show", &first_seq.to_string()])
        .await
        .unwrap();
    assert!(
        shown.contains(&format!("id            {first_id}")),
        "{shown}"
    );
    assert!(
        shown.contains("reason        sink failed 2 times"),
        "{shown}"
    );
    assert!(shown.contains("payload       payload "), "{shown}");
    // The same for scripts, as JSON.
    let listing: serde_json::Value =
        serde_json::from_str(&sidelog.inspect(&["--json", "dead-letters"]).await.unwrap())
            .expect("inspect --json prints JSON");
    let from_json: Vec<(u64, String)> = listing["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["sequence"].as_u64().unwrap(),
                e["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(from_json, dead, "{listing}");
    assert_eq!(listing["next_from_sequence"], serde_json::Value::Null);
    let shown: serde_json::Value = serde_json::from_str(
        &sidelog
            .inspect(&["show", &first_seq.to_string(), "--json"])
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(shown["id"], first_id.as_str(), "{shown}");
    assert_eq!(shown["table"], "dead", "{shown}");
    assert_eq!(shown["attempts"], 2, "{shown}");
    assert!(
        shown["payload_text"]
            .as_str()
            .unwrap()
            .starts_with("payload "),
        "{shown}"
    );
    assert!(
        shown["written_at"].as_str().unwrap().ends_with('Z'),
        "{shown}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&sidelog.inspect(&["--json"]).await.unwrap()).unwrap();
    assert_eq!(
        (summary["mode"].as_str(), summary["dead_letters"].as_u64()),
        (Some("hml"), Some(10)),
        "{summary}"
    );
    let missing = sidelog.inspect(&["show", "999999999"]).await.unwrap_err();
    assert!(
        missing.contains("no entry with sequence 999999999"),
        "{missing}"
    );
    let nothing = sidelog.inspect(&["requeue"]).await.unwrap_err();
    assert!(nothing.contains("--all"), "{nothing}");

    // Re-queued with the sink back: delivered, and gone from the dead letters.
    sink.failing.store(false, Ordering::Relaxed);
    let requeued = sidelog
        .inspect(&["requeue", &dead[0].0.to_string(), &dead[1].0.to_string()])
        .await
        .unwrap();
    assert!(requeued.contains("re-queued 2 dead letters"), "{requeued}");
    let want: HashSet<String> = [dead[0].1.clone(), dead[1].1.clone()].into();
    assert!(
        wait_for_ids(&sink, &want, Duration::from_secs(20))
            .await
            .is_empty(),
        "re-queued dead letters never reached the sink; log:\n{}",
        sidelog.log_tail()
    );
    sidelog.wait_summary("dead letters", 8).await;
    let purged = sidelog
        .inspect(&["purge", &dead[2].0.to_string()])
        .await
        .unwrap();
    assert!(purged.contains("purged 1 dead letters"), "{purged}");

    // With the server stopped, inspect reads the file; a re-queue there is sent by the next
    // start.
    assert!(sidelog.terminate().await.success());
    let offline = inspect(&["--data-dir", data.to_str().unwrap()])
        .await
        .unwrap();
    assert!(offline.contains("not running"), "{offline}");
    assert_eq!(summary_field(&offline, "dead letters"), 7, "{offline}");
    let requeued = inspect(&[
        "--data-dir",
        data.to_str().unwrap(),
        "requeue",
        &dead[3].0.to_string(),
    ])
    .await
    .unwrap();
    assert!(
        requeued.contains("sent when sidelog next starts"),
        "{requeued}"
    );
    let backlog = inspect(&["--data-dir", data.to_str().unwrap(), "backlog"])
        .await
        .unwrap();
    assert_eq!(listed(&backlog).len(), 1, "{backlog}");
    assert!(backlog.contains(&dead[3].1), "{backlog}");

    let mut sidelog = Sidelog::new(&data, &args);
    sidelog.start().await;
    let want: HashSet<String> = [dead[3].1.clone()].into();
    assert!(
        wait_for_ids(&sink, &want, Duration::from_secs(20))
            .await
            .is_empty()
    );
    let purged = sidelog.inspect(&["purge", "--all"]).await.unwrap();
    assert!(purged.contains("purged 6 dead letters"), "{purged}");
    let summary = sidelog.wait_summary("dead letters", 0).await;
    assert_eq!(summary_field(&summary, "backlog inputs"), 0, "{summary}");
    // What was purged never reached the sink; what was re-queued did, once each.
    let ids = sink.ids();
    for (_, id) in &dead[4..] {
        assert!(!ids.contains(id), "{id} was purged but delivered");
    }
}

/// With `interleave`, a restart takes traffic at once: a fresh message reaches the sink while
/// the backlog is still being replayed (with `first` it would wait behind all of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleave_takes_fresh_traffic_during_a_long_replay() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (sink, sink_server) = failing_sink().await;
    let base = [
        "--mode",
        "rbml",
        "--sink",
        &sink_server.url(),
        "--delivery-max-attempts",
        "1000000",
        "--delivery-backoff-max-ms",
        "50",
    ];
    let mut sidelog = Sidelog::new(&data, &base);
    sidelog.start().await;
    let backlog = produce(sidelog.url(), "old".into(), 4, 2000, 50, Duration::ZERO).await;
    assert_eq!(backlog.acked.len(), 2000);
    sidelog.kill9().await;

    // A slow sink: the backlog takes seconds to drain at 16 entries under way.
    sink.failing.store(false, Ordering::Relaxed);
    sink.delay_us.store(40_000, Ordering::Relaxed);
    let args = [
        &base[..],
        &[
            "--replay-policy",
            "interleave",
            "--replay-interleave-in-flight",
            "16",
        ],
    ]
    .concat();
    let mut sidelog = Sidelog::new(&data, &args);
    sidelog.start().await;
    let summary = sidelog.inspect(&[]).await.unwrap();
    let left = summary_field(&summary, "backlog inputs");
    assert!(
        left > 500,
        "serving only after most of the backlog was replayed ({left} left):\n{summary}"
    );
    let mut client = sidelog.client().await;
    client
        .publish(PublishRequest {
            messages: vec![Message {
                id: "fresh-1".into(),
                payload: b"fresh".to_vec().into(),
                ..Default::default()
            }],
        })
        .await
        .expect("a fresh message is taken during replay");
    let fresh: HashSet<String> = ["fresh-1".to_owned()].into();
    assert!(
        wait_for_ids(&sink, &fresh, Duration::from_secs(10))
            .await
            .is_empty(),
        "the fresh message never arrived; log:\n{}",
        sidelog.log_tail()
    );
    let old_delivered = sink
        .ids()
        .iter()
        .filter(|id| id.starts_with("old-"))
        .count();
    assert!(
        old_delivered < 1500,
        "the fresh message waited behind the backlog ({old_delivered} of 2000 old first)"
    );
    let all: HashSet<String> = backlog.acked.keys().cloned().collect();
    assert!(
        wait_for_ids(&sink, &all, Duration::from_secs(120))
            .await
            .is_empty(),
        "the backlog was not delivered; log:\n{}",
        sidelog.log_tail()
    );
    sidelog.wait_summary("backlog inputs", 0).await;
    // Every replayed entry has given its pacing permit back: the replay reports itself done.
    poll_until(
        Duration::from_secs(10),
        || format!("replay never finished; log:\n{}", sidelog.log_tail()),
        || async { sidelog.log().contains("replay done").then_some(()) },
    )
    .await;
}

/// Entries older than `replay.max_age_ms` are dead-lettered by the replay, with that reason,
/// and never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_dead_letters_entries_over_the_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (sink, sink_server) = failing_sink().await;
    let base = [
        "--mode",
        "hml",
        "--sink",
        &sink_server.url(),
        "--delivery-max-attempts",
        "1000000",
        "--delivery-backoff-max-ms",
        "50",
    ];
    let mut sidelog = Sidelog::new(&data, &base);
    sidelog.start().await;
    let old = produce(sidelog.url(), "aged".into(), 2, 50, 10, Duration::ZERO).await;
    sidelog.kill9().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    sink.failing.store(false, Ordering::Relaxed);
    let args = [&base[..], &["--replay-max-age-ms", "1000"]].concat();
    let mut sidelog = Sidelog::new(&data, &args);
    sidelog.start().await;
    let summary = sidelog.wait_summary("dead letters", 50).await;
    assert_eq!(summary_field(&summary, "backlog inputs"), 0, "{summary}");
    let listing = sidelog
        .inspect(&["dead-letters", "--limit", "100"])
        .await
        .unwrap();
    let dead: HashSet<String> = listed(&listing).into_iter().map(|(_, id)| id).collect();
    let acked: HashSet<String> = old.acked.keys().cloned().collect();
    assert_eq!(dead, acked, "{listing}");
    assert!(listing.contains("replay.max_age_ms (1000 ms)"), "{listing}");
    assert!(
        sink.ids().is_disjoint(&acked),
        "an expired entry was delivered"
    );
    // Fresh traffic is not affected by the age limit.
    let fresh = produce(sidelog.url(), "new".into(), 1, 5, 5, Duration::ZERO).await;
    let fresh: HashSet<String> = fresh.acked.keys().cloned().collect();
    assert!(
        wait_for_ids(&sink, &fresh, Duration::from_secs(10))
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_stays_on_loopback_and_asks_for_the_token() {
    let dir = tempfile::tempdir().unwrap();
    // Not on a public address without TLS and a token: refused at start, naming the setting.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidelog"))
        .args(["serve", "--admin-listen", "0.0.0.0:0", "--listen"])
        .arg(free_port().to_string())
        .arg("--data-dir")
        .arg(dir.path().join("refused"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("admin_listen"), "{stderr}");
    assert!(stderr.contains("TLS"), "{stderr}");

    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-admin-token-0123456789\n").unwrap();
    let mut sidelog = Sidelog::new(
        &dir.path().join("data"),
        &["--auth-token-file", token.to_str().unwrap()],
    );
    sidelog.start().await;
    let refused = sidelog.inspect(&[]).await.unwrap_err();
    assert!(refused.contains("Unauthenticated"), "{refused}");
    let summary = sidelog
        .inspect(&["--auth-token-file", token.to_str().unwrap()])
        .await
        .unwrap();
    assert_eq!(summary_field(&summary, "dead letters"), 0, "{summary}");
    assert!(
        !sidelog.log().contains("s3cret"),
        "the token is never logged"
    );
}

/// Without any restart, an entry that keeps failing is dead-lettered once it is older than
/// `replay.max_age_ms`, between two retries, with that reason (and the sink's last error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_entry_over_the_max_age_is_dead_lettered_between_retries() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, sink_server) = failing_sink().await;
    let mut sidelog = Sidelog::new(
        &dir.path().join("data"),
        &[
            "--mode",
            "sbml",
            "--sink",
            &sink_server.url(),
            "--delivery-max-attempts",
            "1000000",
            "--delivery-backoff-max-ms",
            "50",
            "--replay-max-age-ms",
            "800",
        ],
    );
    sidelog.start().await;
    let sent = produce(sidelog.url(), "live".into(), 1, 30, 10, Duration::ZERO).await;
    let summary = sidelog.wait_summary("dead letters", 30).await;
    assert_eq!(summary_field(&summary, "backlog outputs"), 0, "{summary}");
    let listing = sidelog
        .inspect(&["dead-letters", "--limit", "100"])
        .await
        .unwrap();
    assert!(listing.contains("replay.max_age_ms (800 ms)"), "{listing}");
    let dead: HashSet<String> = listed(&listing).into_iter().map(|(_, id)| id).collect();
    let acked: HashSet<String> = sent.acked.keys().cloned().collect();
    assert_eq!(dead, acked);
    assert!(sink.ids().is_empty(), "nothing was delivered");
}

/// One message, one sequence: a refused (poison) message's ack carries the sequence under which
/// it is dead-lettered, `inspect show` finds it there, and an undeliverable output keeps the
/// `sidelog-seq` it was sent with. In every journaled mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_keeps_the_sequence_its_ack_carried() {
    for mode in ["sbml", "rbml", "hml"] {
        let dir = tempfile::tempdir().unwrap();
        let handler = TestHandler::default();
        let mut handler_server = handler.start(free_port()).await;
        let (_sink, mut sink_server) = failing_sink().await;
        let mut sidelog = Sidelog::new(
            &dir.path().join("data"),
            &[
                "--mode",
                mode,
                "--handler",
                &handler_server.url(),
                "--sink",
                &sink_server.url(),
                "--delivery-max-attempts",
                "2",
                "--delivery-backoff-initial-ms",
                "10",
            ],
        );
        sidelog.start().await;
        // "poison-1" is refused by the test handler; "ok-7" makes outputs the sink refuses.
        let acks = publish(&sidelog, vec![msg("poison-1", b"x"), msg("ok-7", b"y")])
            .await
            .unwrap();
        let poison_seq = acks[0].sequence;
        let outputs = expected_outputs("ok-7", b"y").len() as u64;
        sidelog.wait_summary("dead letters", 1 + outputs).await;
        let listing = sidelog.inspect(&["dead-letters"]).await.unwrap();
        let dead = listed(&listing);
        assert!(
            dead.contains(&(poison_seq, "poison-1".to_string())),
            "{mode}: the ack said {poison_seq}; the dead letters: {listing}"
        );
        let shown = sidelog
            .inspect(&["show", &poison_seq.to_string()])
            .await
            .unwrap_or_else(|e| panic!("{mode}: show {poison_seq}: {e}"));
        assert!(shown.contains("poison-1"), "{mode}: {shown}");
        // In sbml the outputs were journaled under the ack's sequence and the next ones; each
        // undeliverable one is dead-lettered under its own (the sidelog-seq it was sent with).
        if mode == "sbml" {
            for (i, (id, _)) in expected_outputs("ok-7", b"y").iter().enumerate() {
                let want = (acks[1].sequence + i as u64, id.clone());
                assert!(dead.contains(&want), "{mode}: want {want:?} in {listing}");
            }
        }
        sidelog.kill9().await;
        handler_server.stop().await;
        sink_server.stop().await;
    }
}

/// `inspect` on a running pass-through sidelog labels an undelivered input as such (there is
/// no handler for it to wait for), and `show` gives times as RFC 3339.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_labels_pass_through_entries_and_shows_rfc3339_times() {
    let dir = tempfile::tempdir().unwrap();
    let (_sink, mut sink_server) = failing_sink().await;
    let mut sidelog = Sidelog::new(
        &dir.path().join("data"),
        &["--mode", "rbml", "--sink", &sink_server.url()],
    );
    sidelog.start().await;
    let acks = publish(&sidelog, vec![msg("waiting-1", b"x")])
        .await
        .unwrap();
    let backlog = sidelog.inspect(&["backlog"]).await.unwrap();
    assert!(
        backlog.contains("id=waiting-1") && backlog.contains("undelivered (pass-through)"),
        "{backlog}"
    );
    let shown = sidelog
        .inspect(&["show", &acks[0].sequence.to_string()])
        .await
        .unwrap();
    let written = shown
        .lines()
        .find(|l| l.starts_with("written at"))
        .unwrap_or_else(|| panic!("{shown}"));
    // e.g. "written at    2026-11-26T18:50:01.123Z (1795… unix ms)"
    assert!(
        written.contains('T') && written.contains("Z (") && written.contains("unix ms)"),
        "{written}"
    );
    sidelog.kill9().await;
    sink_server.stop().await;
}
