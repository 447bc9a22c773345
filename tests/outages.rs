//! Outages that heal by themselves: a sink or a handler that is down for far longer than the
//! old retry budget (20 delivery attempts, 10 handler calls) loses nothing to the dead-letter
//! table; delivery and handling resume by themselves when it returns. Only what the next tier
//! refuses is dead-lettered, at once, with its reason.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

/// Backoffs of 5-20 ms: a few hundred attempts in the seconds an outage lasts here.
const SHORT_BACKOFFS: &[&str] = &[
    "--replay-policy",
    "interleave",
    "--delivery-backoff-initial-ms",
    "5",
    "--delivery-backoff-max-ms",
    "20",
    "--handling-backoff-initial-ms",
    "5",
    "--handling-backoff-max-ms",
    "20",
];

/// A sidelog on `dir` delivering to `sink`, with the short backoffs, serving.
async fn started(dir: &std::path::Path, sink: &Restartable) -> Sidelog {
    let url = format!("http://{}", sink.addr);
    let mut args = vec!["--sink", url.as_str()];
    args.extend_from_slice(SHORT_BACKOFFS);
    let mut sidelog = Sidelog::new(&dir.join("data"), &args);
    sidelog.start().await;
    sidelog
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

async fn ack_all(sidelog: &Sidelog, ids: &[String]) {
    let messages = ids.iter().map(|id| msg(id, id.as_bytes())).collect();
    let acks = publish(sidelog, messages).await.expect("publish");
    assert!(
        acks.iter()
            .all(|a| a.status == sidelog::proto::ack::Status::Accepted as i32),
        "{acks:?}"
    );
}

/// The sink down for 4 s with 5-20 ms backoffs (~300 attempts, 15 times the old limit), then
/// back: nothing dead-lettered, everything delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_outage_longer_than_the_old_retry_budget_dead_letters_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, server) = failing_sink().await;
    let mut sidelog = started(dir.path(), &server).await;
    let want = ids("s", 50);
    ack_all(&sidelog, &want).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let summary = sidelog.inspect(&[]).await.expect("summary");
    assert_eq!(summary_field(&summary, "dead letters"), 0, "{summary}");
    // Said once per period while it lasts: which hop, and what waits.
    let log = sidelog.log();
    assert!(
        log.contains("the sink is down; retrying for as long as it takes, 50 entries wait"),
        "{log}"
    );
    sink.failing.store(false, Ordering::Relaxed);
    let want: HashSet<String> = want.into_iter().collect();
    let missing = wait_for_ids(&sink, &want, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    sidelog
        .wait_log("the sink is back", Duration::from_secs(10))
        .await;
    let summary = sidelog.inspect(&[]).await.expect("summary");
    assert_eq!(summary_field(&summary, "dead letters"), 0, "{summary}");
    sidelog.terminate().await;
}

/// The handler down for 4 s: inputs wait, none is dead-lettered, all are handled and their
/// outputs delivered when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_outage_longer_than_the_old_retry_budget_dead_letters_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::default();
    let sink_server = sink.start(free_port()).await;
    let handler = TestHandler::default();
    handler.failing.store(true, Ordering::Relaxed);
    let handler_server = handler.start(free_port()).await;
    let (sink_url, handler_url) = (
        format!("http://{}", sink_server.addr),
        format!("http://{}", handler_server.addr),
    );
    let mut args = vec![
        "--sink",
        sink_url.as_str(),
        "--handler",
        handler_url.as_str(),
    ];
    args.extend_from_slice(SHORT_BACKOFFS);
    let mut sidelog = Sidelog::new(&dir.path().join("data"), &args);
    sidelog.start().await;
    let inputs = ids("h", 20);
    ack_all(&sidelog, &inputs).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let summary = sidelog.inspect(&[]).await.expect("summary");
    assert_eq!(summary_field(&summary, "dead letters"), 0, "{summary}");
    assert!(
        sidelog.log().contains("the handler is down"),
        "{}",
        sidelog.log_tail()
    );
    handler.failing.store(false, Ordering::Relaxed);
    let want: HashSet<String> = inputs
        .iter()
        .flat_map(|id| expected_outputs(id, id.as_bytes()))
        .map(|(id, _)| id)
        .collect();
    let missing = wait_for_ids(&sink, &want, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    sidelog.terminate().await;
}

/// A message the sink refuses (`INVALID_ARGUMENT`) is dead-lettered at once with the sink's
/// reason; the other messages of its batch are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_sink_refuses_is_dead_lettered_at_once_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::default();
    sink.refuse.lock().unwrap().insert("poison".to_string());
    // Held while the batch forms, so that the poison shares it with good messages.
    sink.failing.store(true, Ordering::Relaxed);
    let server = sink.start(free_port()).await;
    let mut sidelog = started(dir.path(), &server).await;
    let mut batch = ids("good", 10);
    batch.insert(5, "poison".into());
    ack_all(&sidelog, &batch).await;
    sink.failing.store(false, Ordering::Relaxed);
    let want: HashSet<String> = ids("good", 10).into_iter().collect();
    let missing = wait_for_ids(&sink, &want, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert!(!sink.ids().contains("poison"));
    let summary = sidelog.wait_summary("dead letters", 1).await;
    let letters = sidelog
        .inspect(&["dead-letters"])
        .await
        .expect("dead letters");
    assert!(
        letters.contains("poison") && letters.contains("the sink refused it"),
        "{summary}\n{letters}"
    );
    sidelog.terminate().await;
}

/// With dead letters in the journal, the outage warning says how many and how to re-queue them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_warning_says_how_many_dead_letters_wait_and_how_to_requeue_them() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::default();
    sink.refuse.lock().unwrap().insert("poison".to_string());
    let server = sink.start(free_port()).await;
    let mut sidelog = started(dir.path(), &server).await;
    ack_all(&sidelog, &["poison".to_string()]).await;
    sidelog.wait_summary("dead letters", 1).await;
    sink.failing.store(true, Ordering::Relaxed);
    ack_all(&sidelog, &["later".to_string()]).await;
    sidelog
        .wait_log(
            "1 dead letters wait for `sidelog inspect requeue --all`",
            Duration::from_secs(10),
        )
        .await;
    sink.failing.store(false, Ordering::Relaxed);
    let want: HashSet<String> = ["later".to_string()].into();
    let missing = wait_for_ids(&sink, &want, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    sidelog.terminate().await;
}
