//! Shared harness of the integration tests: the test kit of the library (`sidelog::testkit`:
//! the real `sidelog` binary as a child process, in-process handler and sink servers that a
//! test can stop, restart on the same port, slow down or make fail, polling with a deadline),
//! and the producers that the tests run against it.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sidelog::proto::ingest_client::IngestClient;
use sidelog::proto::{Message, PublishRequest, ack};
#[allow(unused_imports)] // each test file uses a different part of the kit
pub use sidelog::testkit::{
    Arrival, Restartable, Sidelog, TestHandler, TestSink, eventually, expected_outputs, inspect,
    poll_until, summary_field,
};
use tokio::time::Instant;
use tonic::transport::Channel;

/// A free loopback port (bound, read, released; the test reuses it across restarts).
pub fn free_port() -> SocketAddr {
    sidelog::testkit::free_port().expect("bind a loopback port")
}

/// What producers learned from their acks.
#[derive(Debug, Default)]
pub struct ProducerLog {
    /// id → payload, for every message acked ACCEPTED or DUPLICATE.
    pub acked: BTreeMap<String, Vec<u8>>,
    /// Every id ever sent, with its payload.
    pub sent: HashMap<String, Vec<u8>>,
    pub errors: u64,
}

/// Publishes `count` messages as `producers` concurrent producers, `batch` per request, each
/// retrying a batch with the same ids until it is acked, as a real client does.
pub async fn produce(
    url: String,
    run: String,
    producers: usize,
    count: usize,
    batch: usize,
    pause: Duration,
) -> ProducerLog {
    let log = Arc::new(Mutex::new(ProducerLog::default()));
    let mut tasks = Vec::new();
    for p in 0..producers {
        let (url, log, run) = (url.clone(), log.clone(), run.clone());
        tasks.push(tokio::spawn(async move {
            let channel = Channel::from_shared(url)
                .unwrap()
                .connect_timeout(Duration::from_millis(300))
                .timeout(Duration::from_secs(5))
                .connect_lazy();
            let mut client = IngestClient::new(channel);
            let mine: Vec<usize> = (0..count).filter(|i| i % producers == p).collect();
            for chunk in mine.chunks(batch) {
                let messages: Vec<Message> = chunk
                    .iter()
                    .map(|i| Message {
                        id: format!("{run}-{i}"),
                        key: format!("key-{}", i % 7),
                        payload: format!("payload {i}").into_bytes().into(),
                        ..Default::default()
                    })
                    .collect();
                {
                    let mut l = log.lock().unwrap();
                    for m in &messages {
                        l.sent.insert(m.id.clone(), m.payload.to_vec());
                    }
                }
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    match client
                        .publish(PublishRequest {
                            messages: messages.clone(),
                        })
                        .await
                    {
                        Ok(r) => {
                            let mut l = log.lock().unwrap();
                            for (a, m) in r.into_inner().acks.iter().zip(&messages) {
                                assert_eq!(a.id, m.id, "acks come in request order");
                                match ack::Status::try_from(a.status) {
                                    Ok(ack::Status::Accepted | ack::Status::Duplicate) => {
                                        l.acked.insert(m.id.clone(), m.payload.to_vec());
                                    }
                                    other => panic!(
                                        "unexpected ack {other:?} for {}: {}",
                                        a.id, a.reason
                                    ),
                                }
                            }
                            break;
                        }
                        Err(status) => {
                            log.lock().unwrap().errors += 1;
                            assert!(
                                matches!(
                                    status.code(),
                                    tonic::Code::Unavailable
                                        | tonic::Code::ResourceExhausted
                                        | tonic::Code::DeadlineExceeded
                                        | tonic::Code::Unknown
                                        | tonic::Code::Cancelled
                                ),
                                "unexpected error: {status}"
                            );
                            assert!(
                                Instant::now() < deadline,
                                "a batch was never acked: {status}"
                            );
                            tokio::time::sleep(Duration::from_millis(30)).await;
                        }
                    }
                }
                tokio::time::sleep(pause).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("producer task");
    }
    std::mem::take(&mut *log.lock().unwrap())
}

/// Waits until the sink holds every id in `want`, or the timeout passes.
pub async fn wait_for_ids(
    sink: &TestSink,
    want: &HashSet<String>,
    timeout: Duration,
) -> HashSet<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let have = sink.ids();
        let missing: HashSet<String> = want.difference(&have).cloned().collect();
        if missing.is_empty() || Instant::now() >= deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A [`TestSink`] that fails every delivery until told otherwise, serving on a free port.
pub async fn failing_sink() -> (TestSink, Restartable) {
    let sink = TestSink::default();
    sink.failing.store(true, Ordering::Relaxed);
    let server = sink.start(free_port()).await;
    (sink, server)
}
