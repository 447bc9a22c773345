//! Shared harness of the integration tests: the test kit of the library (`sidelog_testkit`:
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
use sidelog::proto::{Ack, Message, PublishRequest, ack};
#[allow(unused_imports)] // each test file uses a different part of the kit
pub use sidelog_testkit::{
    Arrival, HandlerOutputs, Restartable, Sidelog, TestHandler, TestSink, eventually,
    expected_outputs, inspect, poll_until, summary_field,
};
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

/// A free loopback port (bound, read, released; the test reuses it across restarts).
pub fn free_port() -> SocketAddr {
    sidelog_testkit::free_port().expect("bind a loopback port")
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
                            let acks = r.into_inner().acks;
                            assert_eq!(
                                acks.len(),
                                messages.len(),
                                "every message gets exactly one ack"
                            );
                            for (a, m) in acks.iter().zip(&messages) {
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
    let log = std::mem::take(&mut *log.lock().unwrap());
    // A producer retries a batch until it is acked, so every message ends up acked once.
    assert_eq!(log.acked.len(), count, "every message was answered");
    log
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

/// A message with this id and payload.
pub fn msg(id: &str, payload: &[u8]) -> Message {
    Message {
        id: id.into(),
        payload: payload.to_vec().into(),
        ..Default::default()
    }
}

/// One Publish call to `sidelog`.
pub async fn publish(sidelog: &Sidelog, messages: Vec<Message>) -> Result<Vec<Ack>, tonic::Status> {
    let mut client = sidelog.client().await;
    client
        .publish(PublishRequest { messages })
        .await
        .map(|r| r.into_inner().acks)
}

/// Fills the journal while the sink is down until intake answers RESOURCE_EXHAUSTED, keeps
/// producers pushing, brings the sink back: everything acked is delivered and intake resumes
/// without a restart.
pub async fn fill_then_resume(mut sidelog: Sidelog, limit: &[&str]) {
    let sink = TestSink::default();
    let sink_addr = free_port();
    let sink_url = format!("http://{sink_addr}");
    let args = [
        "--mode",
        "rbml",
        "--sink",
        &sink_url,
        "--delivery-backoff-max-ms",
        "200",
        // The sink is down for as long as filling takes: no dead letters meanwhile.
        "--delivery-max-attempts",
        "1000000",
    ];
    sidelog.add_args(&[&args[..], limit].concat());
    sidelog.start().await;
    let mut accepted = HashSet::new();
    let mut full = None;
    for i in 0..400 {
        let batch: Vec<Message> = (0..5)
            .map(|j| msg(&format!("r{i}-{j}"), &[7u8; 20_000]))
            .collect();
        match publish(&sidelog, batch).await {
            Ok(acks) => accepted.extend(acks.into_iter().map(|a| a.id)),
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let err = full.expect("the journal limit was never reached");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("storage is full"), "{err}");
    // Fill the last pages too, with ever smaller messages, until not even 10 bytes fit.
    for size in [4_000usize, 1_000, 200, 10] {
        for i in 0..2_000 {
            match publish(
                &sidelog,
                vec![msg(&format!("s{size}-{i}"), &vec![7u8; size])],
            )
            .await
            {
                Ok(acks) => accepted.extend(acks.into_iter().map(|a| a.id)),
                Err(e) => {
                    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
                    break;
                }
            }
        }
    }

    // Producers keep pushing (as real ones do, retrying at once), so that completion marks
    // and appends meet in the same group commits: the appends must not take the marks down
    // with them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let resumed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut pushers = Vec::new();
    for p in 0..4 {
        let (client, stop, resumed) = (sidelog.client().await, stop.clone(), resumed.clone());
        pushers.push(tokio::spawn(async move {
            let mut client = client;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let request = PublishRequest {
                    messages: vec![msg(&format!("push{p}-{i}"), &[7u8; 20_000])],
                };
                match client.publish(request).await {
                    Ok(_) => {
                        resumed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => assert_eq!(e.code(), Code::ResourceExhausted, "{e}"),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut sink_server = sink.start(sink_addr).await;
    let missing = wait_for_ids(&sink, &accepted, Duration::from_secs(60)).await;
    // Intake resumes by itself.
    // Asserted below, with the log.
    let _ = eventually(Duration::from_secs(30), || {
        resumed.load(std::sync::atomic::Ordering::Relaxed) >= 50
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in pushers {
        p.await.unwrap();
    }
    assert!(
        missing.is_empty(),
        "{} acked messages not delivered; log:\n{}",
        missing.len(),
        sidelog.log_tail()
    );
    assert!(
        resumed.load(std::sync::atomic::Ordering::Relaxed) >= 50,
        "intake did not resume; log:\n{}",
        sidelog.log_tail()
    );
    sidelog.kill9().await;
    sink_server.stop().await;
}

/// The crash in the middle of a client's run, as the doors' client tests make it: once
/// `arrived` says the sink has some of what the client sent (`what`, for the failure), SIGKILL
/// sidelog and start it again on the same journal, while the client goes on sending.
#[allow(dead_code)] // the service tests' binary uses it
pub async fn crash_while_sending(sidelog: &mut Sidelog, what: &str, arrived: impl FnMut() -> bool) {
    assert!(
        eventually(Duration::from_secs(60), arrived).await,
        "{what} do not arrive"
    );
    sidelog.kill9().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sidelog.start().await;
}

/// GETs `/metrics` from `addr` (a sidelog started with `--metrics-listen`).
#[allow(dead_code)] // not every test binary scrapes
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// `GET path` on `addr` over HTTP/1.0: the status code and the body (an error when nothing
/// answers).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned());
    Ok((status, body))
}

/// Every message id read back from the file sink's chunks in `dir`.
pub fn chunk_ids(dir: &std::path::Path) -> HashSet<String> {
    sidelog::sink::list_chunks(dir)
        .unwrap_or_default()
        .iter()
        .flat_map(|p| sidelog::sink::read_chunk(p).expect("a readable chunk"))
        .map(|m| m.id)
        .collect()
}

/// A record the OTLP door delivered: the ids it arrived under (one, unless a retry was stored
/// twice), its message key and event time.
#[derive(Debug, Default)]
pub struct OtlpRecord {
    pub ids: HashSet<String>,
    pub key: String,
    pub event_time_ms: i64,
}

/// The OTLP door's messages read back from the file sink's chunks in `dir`, by record body
/// (a text body each); each message is checked to be one OTLP `LogsData` with one record.
pub fn otlp_at_sink(dir: &std::path::Path) -> HashMap<String, OtlpRecord> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::logs::v1::LogsData;
    use prost::Message as _;
    let mut found: HashMap<String, OtlpRecord> = HashMap::new();
    for path in sidelog::sink::list_chunks(dir).unwrap_or_default() {
        for m in sidelog::sink::read_chunk(&path).expect("a readable chunk") {
            let data = LogsData::decode(&m.payload[..]).expect("the payload is LogsData");
            let records: Vec<_> = data
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .flat_map(|s| &s.log_records)
                .collect();
            assert_eq!(records.len(), 1, "one record per message");
            let body = match records[0].body.as_ref().and_then(|b| b.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                other => panic!("a text body, not {other:?}"),
            };
            assert_eq!(
                m.headers.get("content-type").map(String::as_str),
                Some(sidelog::OTLP_PAYLOAD_TYPE)
            );
            let record = found.entry(body).or_default();
            record.ids.insert(m.id.clone());
            record.key = m.key.clone();
            record.event_time_ms = m.event_time_ms;
        }
    }
    found
}
