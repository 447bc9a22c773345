//! The forward door against the real binary, with frames written as Fluent Bit and Fluentd
//! write them: the four modes, `{ack: chunk}` only after the journal, a resent chunk stored
//! once, a malformed frame that closes only its own connection, the UDP heartbeat, the
//! shared-key handshake, a record over the limit dead-lettered, a full backlog answered with
//! no ack (and a frame that asked for none held, not dropped), and acked records that survive a
//! SIGKILL. (`tests/services/forward.rs` does the
//! same with Fluentd's `fluent-logger` clients.)

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use rmpv::Value;
use sha2::{Digest as _, Sha512};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, value).unwrap();
    out
}

fn record(text: &str) -> Value {
    Value::Map(vec![
        (Value::from("log"), Value::from(text)),
        (Value::from("level"), Value::from("info")),
    ])
}

fn event_time() -> Value {
    let mut data = 1_700_000_000u32.to_be_bytes().to_vec();
    data.extend(123_000_000u32.to_be_bytes());
    Value::Ext(0, data)
}

fn entry(text: &str) -> Value {
    Value::Array(vec![event_time(), record(text)])
}

fn options(chunk: &str, gzip: bool) -> Value {
    let mut pairs = vec![(Value::from("chunk"), Value::from(chunk))];
    if gzip {
        pairs.push((Value::from("compressed"), Value::from("gzip")));
    }
    Value::Map(pairs)
}

/// A Forward-mode frame of `texts`, acked by `chunk`.
fn forward(tag: &str, texts: &[&str], chunk: &str) -> Vec<u8> {
    encode(&Value::Array(vec![
        Value::from(tag),
        Value::Array(texts.iter().map(|t| entry(t)).collect()),
        options(chunk, false),
    ]))
}

/// A PackedForward frame, gzip-compressed when asked (CompressedPackedForward).
fn packed(tag: &str, texts: &[&str], chunk: &str, gzip: bool) -> Vec<u8> {
    let mut entries: Vec<u8> = texts.iter().flat_map(|t| encode(&entry(t))).collect();
    if gzip {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&entries).unwrap();
        entries = gz.finish().unwrap();
    }
    encode(&Value::Array(vec![
        Value::from(tag),
        Value::Binary(entries),
        options(chunk, gzip),
    ]))
}

fn message(tag: &str, text: &str, chunk: &str) -> Vec<u8> {
    encode(&Value::Array(vec![
        Value::from(tag),
        event_time(),
        record(text),
        options(chunk, false),
    ]))
}

/// Reads one msgpack value from the connection (`None`: closed, or nothing within 5 s).
async fn answer(conn: &mut TcpStream) -> Option<Value> {
    let mut buf = Vec::new();
    loop {
        let mut slice = &buf[..];
        if let Ok(value) = rmpv::decode::read_value(&mut slice) {
            return Some(value);
        }
        let mut more = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut more)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&more[..n]),
        }
    }
}

/// Sends `frame` and reads the ack; `Some(chunk)` when it is `{ack: chunk}`.
async fn send(conn: &mut TcpStream, frame: &[u8]) -> Option<String> {
    conn.write_all(frame).await.ok()?;
    let value = answer(conn).await?;
    let map = value.as_map()?;
    map.iter()
        .find(|(k, _)| k.as_str() == Some("ack"))
        .and_then(|(_, v)| v.as_str().map(str::to_owned))
}

/// What the sink holds: per record text, its ids, its key and its event time.
fn at_sink(out: &std::path::Path) -> HashMap<String, (Vec<String>, String, i64)> {
    let mut found: HashMap<String, (Vec<String>, String, i64)> = HashMap::new();
    for path in sidelog::sink::list_chunks(out).unwrap_or_default() {
        for m in sidelog::sink::read_chunk(&path).expect("a readable chunk") {
            let json: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(json["level"], "info", "{json}");
            let text = json["log"].as_str().unwrap().to_owned();
            let entry = found.entry(text).or_default();
            if !entry.0.contains(&m.id) {
                entry.0.push(m.id.clone());
            }
            entry.1 = m.key.clone();
            entry.2 = m.event_time_ms;
        }
    }
    found
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr)
        .await
        .expect("the forward door listens")
}

/// Every mode acked after the journal; a resent chunk stored once; a malformed frame closes
/// only its connection; a heartbeat is answered; a record over the limit is dead-lettered and
/// its chunk acked; a full backlog gets no ack; a SIGKILL loses nothing acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_chunks_are_acked_after_the_journal_deduplicated_and_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = free_port();
    let addr_text = addr.to_string();
    let args = [
        "--mode",
        "hml",
        "--forward-listen",
        &addr_text,
        "--limits-max-message-bytes",
        "1024",
        "--limits-max-backlog-bytes",
        "8000",
    ];
    let down = [&args[..], &["--sink", "http://127.0.0.1:1"]].concat();
    let mut sidelog = Sidelog::new(&data, &down);
    sidelog.start().await;

    let mut conn = connect(addr).await;
    let sent = [
        (
            forward("app.web", &["f1", "f2"], "Y2h1bmstMQ=="),
            "Y2h1bmstMQ==",
        ),
        (
            packed("app.web", &["p1", "p2"], "Y2h1bmstMg==", false),
            "Y2h1bmstMg==",
        ),
        (
            packed("app.db", &["z1", "z2"], "Y2h1bmstMw==", true),
            "Y2h1bmstMw==",
        ),
        (message("app.db", "m1", "Y2h1bmstNA=="), "Y2h1bmstNA=="),
    ];
    for (frame, chunk) in &sent {
        assert_eq!(send(&mut conn, frame).await.as_deref(), Some(*chunk));
    }
    // No ack heard: the client sends the chunk again, on a new connection.
    let mut again = connect(addr).await;
    assert_eq!(
        send(&mut again, &sent[0].0).await.as_deref(),
        Some("Y2h1bmstMQ==")
    );

    // A frame that is not one closes that connection, and only it.
    let mut bad = connect(addr).await;
    bad.write_all(&encode(&Value::from("not a frame")))
        .await
        .unwrap();
    assert_eq!(answer(&mut bad).await, None, "closed without an answer");
    assert_eq!(
        send(&mut conn, &forward("app.web", &["f3"], "Y2h1bmstNQ=="))
            .await
            .as_deref(),
        Some("Y2h1bmstNQ==")
    );

    // The UDP heartbeat, on the same port.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(&[0], addr).await.unwrap();
    let mut beat = [9u8; 4];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), udp.recv_from(&mut beat))
        .await
        .expect("a heartbeat answer")
        .unwrap();
    assert_eq!(&beat[..n], &[0]);

    // A record over max_message_bytes: dead-lettered with the reason, the chunk acked.
    let big = "x".repeat(2000);
    assert_eq!(
        send(
            &mut conn,
            &forward("app.web", &["f4", &big], "Y2h1bmstNg==")
        )
        .await
        .as_deref(),
        Some("Y2h1bmstNg==")
    );
    let letters = sidelog.inspect(&["dead-letters"]).await.expect("inspect");
    assert!(letters.contains("refused at the forward door"), "{letters}");

    // The backlog full: no ack, the connection closed; the client will send it again.
    let filler = "f".repeat(900);
    let mut refused = false;
    for i in 0..20 {
        let chunk = format!("ZmlsbC0{i}");
        match send(&mut conn, &forward("fill", &[&filler, &filler], &chunk)).await {
            Some(acked) => assert_eq!(acked, chunk),
            None => {
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "a full backlog was acked");
    // A frame that asks for no ack cannot be sent again by its client: it is held, its
    // connection open and unread (backpressure), not dropped.
    let mut unacked = connect(addr).await;
    let frame = encode(&Value::Array(vec![
        Value::from("fill"),
        event_time(),
        record("held"),
    ]));
    unacked.write_all(&frame).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(1), unacked.read(&mut byte)).await;
    assert!(
        read.is_err(),
        "the connection was answered or closed: {read:?}"
    );

    sidelog.kill9().await;
    let mut sidelog = Sidelog::new(&data, &args);
    sidelog.start().await;
    let out = data.join("out");
    let want = ["f1", "f2", "p1", "p2", "z1", "z2", "m1", "f3", "f4"];
    let arrived = eventually(Duration::from_secs(20), || {
        let found = at_sink(&out);
        want.iter().all(|t| found.contains_key(*t))
    })
    .await;
    let found = at_sink(&out);
    assert!(
        arrived,
        "acked records missing at the sink: {:?}",
        found.keys()
    );
    for text in want {
        let (ids, key, event_time_ms) = &found[text];
        assert_eq!(ids.len(), 1, "{text} under more than one id: {ids:?}");
        assert!(ids[0].starts_with("fwd-"), "{ids:?}");
        let tag = if text.starts_with('z') || text.starts_with('m') {
            "app.db"
        } else {
            "app.web"
        };
        assert_eq!(key, tag);
        assert_eq!(*event_time_ms, 1_700_000_000_123);
    }
    assert!(!found.contains_key(&big), "dead-lettered, not delivered");
    sidelog.kill9().await;
}

/// With `forward_shared_key_file`, a client must pass Fluentd's handshake: the right key gets
/// `PONG` with the server's own proof, a wrong one a refusal and a closed connection, and no
/// frame is taken before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_key_handshake_lets_in_only_the_right_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("shared_key");
    std::fs::write(&key_file, "forward-shared-key-0123\n").unwrap();
    let addr = free_port();
    let addr_text = addr.to_string();
    let data = dir.path().join("data");
    let mut sidelog = Sidelog::new(
        &data,
        &[
            "--forward-listen",
            &addr_text,
            "--forward-shared-key-file",
            key_file.to_str().unwrap(),
            "--forward-payload",
            "msgpack",
        ],
    );
    sidelog.start().await;

    let hex = |parts: &[&[u8]]| -> String {
        let mut sha = Sha512::new();
        for part in parts {
            sha.update(part);
        }
        sha.finalize().iter().map(|b| format!("{b:02x}")).collect()
    };
    let handshake = |key: &'static str| async move {
        let mut conn = connect(addr).await;
        let helo = answer(&mut conn).await.expect("HELO");
        let helo = helo.as_array().unwrap();
        assert_eq!(helo[0].as_str(), Some("HELO"));
        let nonce = helo[1]
            .as_map()
            .unwrap()
            .iter()
            .find(|(k, _)| k.as_str() == Some("nonce"))
            .map(|(_, v)| v.as_slice().unwrap().to_vec())
            .unwrap();
        let digest = hex(&[b"salty", b"client", &nonce, key.as_bytes()]);
        let ping = Value::Array(vec![
            Value::from("PING"),
            Value::from("client"),
            Value::from("salty"),
            Value::from(digest),
            Value::from(""),
            Value::from(""),
        ]);
        conn.write_all(&encode(&ping)).await.unwrap();
        let pong = answer(&mut conn).await.expect("PONG");
        (conn, pong, nonce)
    };

    let (mut conn, pong, nonce) = handshake("forward-shared-key-0123").await;
    let pong = pong.as_array().unwrap().clone();
    assert_eq!(pong[1], Value::from(true), "{pong:?}");
    let server = pong[3].as_str().unwrap().as_bytes().to_vec();
    let proof = hex(&[b"salty", &server, &nonce, b"forward-shared-key-0123"]);
    assert_eq!(pong[4].as_str(), Some(proof.as_str()));
    assert_eq!(
        send(&mut conn, &forward("t", &["in"], "a2V5LTE="))
            .await
            .as_deref(),
        Some("a2V5LTE=")
    );

    // forward_payload = msgpack: the record as it was sent.
    let out = data.join("out");
    let stored = || {
        sidelog::sink::list_chunks(&out)
            .unwrap_or_default()
            .iter()
            .flat_map(|p| sidelog::sink::read_chunk(p).unwrap())
            .find(|m| m.id == "fwd-a2V5LTE=-0")
    };
    assert!(eventually(Duration::from_secs(20), || stored().is_some()).await);
    let m = stored().unwrap();
    assert_eq!(
        m.headers.get("content-type").map(String::as_str),
        Some("application/msgpack")
    );
    assert_eq!(
        rmpv::decode::read_value(&mut &m.payload[..]).unwrap(),
        record("in")
    );

    let (mut conn, pong, _) = handshake("not-the-key-at-all-000").await;
    let pong = pong.as_array().unwrap().clone();
    assert_eq!(pong[1], Value::from(false));
    assert_eq!(pong[2].as_str(), Some("shared_key mismatch"));
    assert_eq!(answer(&mut conn).await, None, "closed after the refusal");

    // A frame instead of a PING: refused, nothing taken.
    let mut conn = connect(addr).await;
    let _helo = answer(&mut conn).await.expect("HELO");
    conn.write_all(&forward("t", &["sneaky"], "a2V5LTI="))
        .await
        .unwrap();
    let pong = answer(&mut conn).await.expect("PONG");
    assert_eq!(pong.as_array().unwrap()[1], Value::from(false));
    assert_eq!(answer(&mut conn).await, None);
    sidelog.kill9().await;
}
