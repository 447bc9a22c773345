//! The NATS JetStream sink against a real server with JetStream at 127.0.0.1:4222 (`.ci/run`
//! starts one when none answers there).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Missing, Outcome};
use crate::common::{Sidelog, produce};
use async_nats::jetstream;

const NATS: &str = "127.0.0.1:4222";

/// A JetStream context, or what is missing.
async fn jetstream() -> Result<jetstream::Context, Missing> {
    let reachable =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(NATS))
            .await
            .is_ok_and(|r| r.is_ok());
    if !reachable {
        return Err(Missing(format!(
            "no NATS server at {NATS} (start one with JetStream: nats-server -js)"
        )));
    }
    let client = async_nats::connect(NATS)
        .await
        .map_err(|e| Missing(format!("cannot connect to NATS at {NATS}: {e}")))?;
    let js = jetstream::new(client);
    let probe = format!("SIDELOG_PROBE_{}", std::process::id());
    let created = js
        .create_stream(jetstream::stream::Config {
            name: probe.clone(),
            subjects: vec![format!("sidelogprobe{}", std::process::id())],
            storage: jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await;
    if let Err(e) = created {
        return Err(Missing(format!(
            "the NATS server at {NATS} has no usable JetStream (-js): {e}"
        )));
    }
    let _ = js.delete_stream(&probe).await;
    Ok(js)
}

/// Every message in the stream, by `Nats-Msg-Id`: how many times each id is there.
async fn read_back(js: &jetstream::Context, stream: &str) -> BTreeMap<String, u32> {
    let mut s = js.get_stream(stream).await.expect("the stream exists");
    let state = s.info().await.expect("stream info").state.clone();
    let mut ids = BTreeMap::new();
    if state.messages == 0 {
        return ids;
    }
    for seq in state.first_sequence..=state.last_sequence {
        let m = s.get_raw_message(seq).await.expect("read a stored message");
        let id = m
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .expect("every message carries its id");
        *ids.entry(id).or_insert(0) += 1;
    }
    ids
}

/// SIGKILLs during delivery, then a kill that loses the last completion marks (so a replay
/// re-sends delivered messages): every acked message is in the stream exactly once.
pub async fn sigkill_during_delivery_leaves_every_acked_message_in_the_stream_once() -> Outcome {
    let js = jetstream().await?;
    let tag = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let stream = format!("SIDELOG_TEST_{tag}");
    let sink =
        format!("nats://{NATS}?stream={stream}&subject=sidelogtest{tag}.{{key}}&create=true");
    let dir = tempfile::tempdir().unwrap();
    let mut sidelog = Sidelog::new(
        &dir.path().join("data"),
        &[
            "--mode",
            "hml",
            "--sink",
            &sink,
            // Completion marks stay un-fsynced, and without the redo log a SIGKILL loses
            // them (with it, they are in the page cache): the last kill makes a replay re-send.
            "--journal-sync-interval-ms",
            "600000",
            "--journal-wal-bytes",
            "0",
        ],
    );
    sidelog.start().await;
    let producer = tokio::spawn(produce(
        sidelog.url(),
        "n".into(),
        4,
        2000,
        10,
        Duration::from_millis(2),
    ));
    // Killed twice while the stream fills: after 300, then 800 messages are in it.
    for at in [300usize, 800] {
        crate::common::poll_until(
            Duration::from_secs(60),
            || format!("the stream never held {at} messages"),
            || async {
                (read_back(&js, &stream).await.len() >= at || producer.is_finished()).then_some(())
            },
        )
        .await;
        sidelog.kill9().await;
        sidelog.start().await;
    }
    let log = producer.await.unwrap();
    assert_eq!(log.acked.len(), 2000);

    // Everything arrives, then the kill that loses the marks, then the replay.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while read_back(&js, &stream).await.len() < 2000 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sidelog.kill9().await;
    sidelog.start().await;
    let last_start = sidelog.log();
    let last_start = last_start
        .rsplit("journal opened")
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(
        last_start.contains("replaying the journal"),
        "the last restart had nothing to re-send, so duplicates were not exercised; log:\n{}",
        sidelog.log_tail()
    );
    // Let the replay finish (start() waits for SERVING, which follows replay).
    let ids = read_back(&js, &stream).await;
    let missing: Vec<&String> = log
        .acked
        .keys()
        .filter(|id| !ids.contains_key(*id))
        .collect();
    let doubled: Vec<(&String, &u32)> = ids.iter().filter(|(_, n)| **n > 1).collect();
    let unknown: Vec<&String> = ids
        .keys()
        .filter(|id| !log.sent.contains_key(*id))
        .collect();
    sidelog.kill9().await;
    let _ = js.delete_stream(&stream).await;
    assert!(
        missing.is_empty(),
        "{} acked messages missing from the stream: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        doubled.is_empty(),
        "duplicates reached the stream: {doubled:?}"
    );
    assert!(unknown.is_empty(), "messages nobody sent: {unknown:?}");
    eprintln!(
        "{} messages in the stream, each once; {} producer retries",
        ids.len(),
        log.errors
    );
    Ok(())
}

/// A NATS sink whose subject no stream captures is not refused (the stream may be made later)
/// but said at start, naming the subject; once a stream captures it, it is found.
pub async fn a_subject_without_a_stream_is_reported_at_start() -> Outcome {
    let js = jetstream().await?;
    let tag = format!("{}_{}", std::process::id(), line!());
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("nats://{NATS}?subject=sidelognostream{tag}.{{key}}");
    let mut sidelog = Sidelog::new(&dir.path().join("data"), &["--sink", &sink]);
    sidelog.start().await;
    sidelog
        .wait_log(
            "no JetStream stream captures the NATS sink's subject",
            Duration::from_secs(20),
        )
        .await;
    assert!(
        sidelog.log().contains(&format!("sidelognostream{tag}.k")),
        "the subject is named: {}",
        sidelog.log_tail()
    );
    sidelog.kill9().await;
    // With a stream for it, the next start finds it.
    let name = format!("SIDELOG_TEST_FOUND_{tag}");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("sidelognostream{tag}.*")],
        ..Default::default()
    })
    .await
    .expect("a stream");
    sidelog.start().await;
    sidelog
        .wait_log("JetStream stream found", Duration::from_secs(20))
        .await;
    sidelog.kill9().await;
    drop(js.delete_stream(&name).await);
    Ok(())
}
