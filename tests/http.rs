//! The HTTP door (`--http-listen`) against the real binary: NDJSON as log shippers send it and
//! the JSON of `PublishRequest`, the statuses HTTP clients retry on, and acks that survive a
//! SIGKILL like gRPC's.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// POSTs `body` to `/v1/publish`; the status, the `Retry-After` header and the JSON answer.
async fn post(
    port: std::net::SocketAddr,
    content_type: &str,
    body: impl Into<reqwest::Body>,
    token: Option<&str>,
) -> (u16, Option<String>, Value) {
    post_to(port, "/v1/publish", content_type, body, token).await
}

async fn post_to(
    port: std::net::SocketAddr,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
    token: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{port}{path}"))
        .header("content-type", content_type)
        .body(body);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.expect("the HTTP door answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, retry_after, json)
}

fn statuses(answer: &Value) -> Vec<String> {
    answer["acks"]
        .as_array()
        .unwrap_or_else(|| panic!("acks in {answer}"))
        .iter()
        .map(|a| a["status"].as_str().unwrap().to_owned())
        .collect()
}

/// A log shipper's NDJSON and a browser's JSON are acked after the journal's fsync, retried
/// records are `DUPLICATE`, a full backlog is 429 with `Retry-After`, and everything acked
/// reaches the sink after a SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_acks_survive_sigkill_and_retries_are_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let port_text = port.to_string();
    // The sink is down: what is acked stays in the journal until the restart.
    let args = [
        "--mode",
        "hml",
        "--http-listen",
        &port_text,
        "--http-ndjson-key-field",
        "host",
        "--limits-max-backlog-bytes",
        "8192",
    ];
    let down = [&args[..], &["--sink", "http://127.0.0.1:1"]].concat();
    let mut sidelog = Sidelog::new(&data, &down);
    sidelog.start().await;

    // As Vector's and Fluent Bit's `http` outputs send: one record a line.
    let ndjson = "{\"id\":\"log-1\",\"host\":\"a\",\"msg\":\"one\"}\n\
                  {\"id\":\"log-2\",\"host\":\"b\",\"msg\":\"two\"}\n\
                  {\"host\":\"a\",\"msg\":\"no id\"}\n";
    let (code, _, answer) = post(port, "application/x-ndjson", ndjson, None).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(statuses(&answer), ["ACCEPTED"; 3], "{answer}");
    let acks = answer["acks"].as_array().unwrap();
    assert_eq!(acks[0]["id"], "log-1");
    let assigned = acks[2]["id"].as_str().unwrap().to_owned();
    assert!(!assigned.is_empty());
    let seq: u64 = acks[0]["sequence"].as_str().unwrap().parse().unwrap();
    assert!(seq > 0, "{answer}");

    // The shipper retries the whole request: the records with ids are duplicates.
    let (code, _, again) = post(port, "application/x-ndjson", ndjson, None).await;
    assert_eq!(code, 200);
    assert_eq!(statuses(&again)[..2], ["DUPLICATE", "DUPLICATE"], "{again}");
    assert_eq!(again["acks"][0]["sequence"], acks[0]["sequence"]);

    // The JSON of a PublishRequest, payload in base64; big enough to fill the backlog.
    let big = base64_of(&vec![b'x'; 9000]);
    let json = format!(r#"{{"messages":[{{"id":"json-1","key":"k","payload":"{big}"}}]}}"#);
    let (code, _, answer) = post(port, "application/json", json, None).await;
    assert_eq!(
        (code, statuses(&answer)),
        (200, vec!["ACCEPTED".to_string()])
    );
    let full = r#"{"messages":[{"id":"json-2","payload":"eA=="}]}"#;
    let (code, retry_after, answer) = post(port, "application/json", full, None).await;
    assert_eq!(code, 429, "{answer}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("max_backlog_bytes"),
        "{answer}"
    );

    sidelog.kill9().await;
    // Started again with the sink still down, the replay cannot finish (policy `first`): intake
    // is closed, 503 with Retry-After.
    let mut sidelog = Sidelog::new(&data, &down);
    sidelog.spawn();
    let mut answer = None;
    for _ in 0..200 {
        if sidelog.health().await == Some(false) {
            answer = Some(post(port, "application/json", full, None).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (code, retry_after, body) = answer.expect("health answered NOT_SERVING");
    assert_eq!((code, retry_after.as_deref()), (503, Some("1")), "{body}");
    sidelog.kill9().await;
    let mut sidelog = Sidelog::new(&data, &args);
    sidelog.start().await;
    let want: HashSet<String> = ["log-1", "log-2", "json-1", assigned.as_str()]
        .into_iter()
        .map(String::from)
        .collect();
    let out = data.join("out");
    assert!(
        eventually(Duration::from_secs(20), || chunk_ids(&out)
            .is_superset(&want))
        .await,
        "acked messages missing at the sink: {:?}",
        want.difference(&chunk_ids(&out)).collect::<Vec<_>>()
    );
    assert!(!chunk_ids(&out).contains("json-2"), "refused, never stored");
    sidelog.kill9().await;
}

/// Bad requests get a status and a reason, never a hang or a half-taken batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_requests_get_a_status_and_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "0123456789abcdef0123\n").unwrap();
    let port = free_port();
    let port_text = port.to_string();
    let mut sidelog = Sidelog::new(
        &dir.path().join("data"),
        &[
            "--http-listen",
            &port_text,
            "--auth-token-file",
            token_file.to_str().unwrap(),
            "--limits-max-request-bytes",
            "4096",
            "--limits-max-message-bytes",
            "1024",
        ],
    );
    sidelog.start().await;
    let token = Some("0123456789abcdef0123");
    let one = "{\"id\":\"a\"}\n";

    let (code, _, answer) = post(port, "application/x-ndjson", one, None).await;
    assert_eq!(code, 401, "{answer}");
    let (code, _, _) = post(port, "application/x-ndjson", one, Some("wrong-token-xxxxx")).await;
    assert_eq!(code, 401);
    let (code, _, answer) = post(port, "application/x-ndjson", one, token).await;
    assert_eq!(
        (code, statuses(&answer)),
        (200, vec!["ACCEPTED".to_string()])
    );
    // Fluent Bit before 3.0 labels its `json_lines` `application/json`: `?format=ndjson` says
    // what the body is; an unknown format is named in the 400.
    let lines = "{\"id\":\"fb-1\"}\n{\"id\":\"fb-2\"}\n";
    let (code, _, answer) = post(port, "application/json", lines, token).await;
    assert_eq!(code, 400, "NDJSON labelled JSON, without ?format: {answer}");
    let path = "/v1/publish?format=ndjson";
    let (code, _, answer) = post_to(port, path, "application/json", lines, token).await;
    assert_eq!(
        (code, statuses(&answer)),
        (200, vec!["ACCEPTED".to_string(); 2])
    );
    let path = "/v1/publish?format=xml";
    let (code, _, answer) = post_to(port, path, "application/json", lines, token).await;
    assert_eq!(code, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("format=xml"),
        "{answer}"
    );
    // A beacon cannot carry the token: refused like any call without it.
    let beacon = reqwest::Client::new()
        .post(format!("http://{port}/v1/beacon"))
        .header("content-type", "text/plain")
        .body(one)
        .send()
        .await
        .unwrap();
    assert_eq!(beacon.status(), 401);

    let (code, _, answer) = post(
        port,
        "application/x-ndjson",
        "{\"ok\":1}\nnot json\n",
        token,
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("line 2"),
        "{answer}"
    );
    let (code, _, answer) = post(
        port,
        "application/json",
        "{\"messages\":[{\"payload\":\"***\"}]}",
        token,
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("base64"),
        "{answer}"
    );
    let (code, _, answer) = post(port, "text/csv", "a,b", token).await;
    assert_eq!(code, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("application/x-ndjson"),
        "{answer}"
    );
    let (code, _, answer) = post(port, "application/json", "{\"messages\":[]}", token).await;
    assert_eq!(code, 400, "{answer}");

    // Over max_request_bytes: 413, whether the length is declared or the body is streamed.
    let big = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(5000));
    let (code, _, answer) = post(port, "application/x-ndjson", big.clone(), token).await;
    assert_eq!(code, 413, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("max_request_bytes"),
        "{answer}"
    );
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .into_bytes()
        .chunks(1000)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let streamed = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let (code, _, _) = post(port, "application/x-ndjson", streamed, token).await;
    assert_eq!(code, 413);

    // A message over max_message_bytes is REJECTED by its ack, the others taken; the status
    // is not a 200 (a shipper would count the rejected line as delivered) but 422, which
    // shippers do not retry, and the body says which and why.
    let lines = format!(
        "{{\"id\":\"small\"}}\n{{\"id\":\"large\",\"pad\":\"{}\"}}\n",
        "y".repeat(2000)
    );
    let (code, _, answer) = post(port, "application/x-ndjson", lines.clone(), token).await;
    assert_eq!(code, 422, "{answer}");
    assert_eq!(statuses(&answer), ["ACCEPTED", "REJECTED"], "{answer}");
    assert!(
        answer["acks"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("max_message_bytes"),
        "{answer}"
    );
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.starts_with("1 of 2 messages were rejected"),
        "{error}"
    );
    assert!(
        error.contains("\"large\"") && error.contains("max_message_bytes"),
        "{error}"
    );
    // Sent again, the taken one is a DUPLICATE and the refused one refused again.
    let (code, _, answer) = post(port, "application/x-ndjson", lines, token).await;
    assert_eq!(code, 422, "{answer}");
    assert_eq!(statuses(&answer), ["DUPLICATE", "REJECTED"], "{answer}");
    // All taken: a 200.
    let (code, _, answer) = post(
        port,
        "application/x-ndjson",
        "{\"id\":\"small\"}\n".to_string(),
        token,
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    sidelog.kill9().await;
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Browsers: CORS for the origins configured (preflight and response), none for others; a
/// `sendBeacon` body (`text/plain`, one event a line) is taken on `/v1/beacon` and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_get_cors_and_beacons_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let port_text = port.to_string();
    let mut sidelog = Sidelog::new(
        &data,
        &[
            "--http-listen",
            &port_text,
            "--http-cors-origins",
            "https://app.example, https://other.example",
        ],
    );
    sidelog.start().await;
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(
                reqwest::Method::OPTIONS,
                format!("http://{port}/v1/publish"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert!(allowed.status().is_success(), "{allowed:?}");
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(
        !other.headers().contains_key("access-control-allow-origin"),
        "{other:?}"
    );

    let events =
        "{\"id\":\"beacon-1\",\"event\":\"unload\"}\n{\"id\":\"beacon-2\",\"event\":\"unload\"}";
    let response = client
        .post(format!("http://{port}/v1/beacon"))
        .header("origin", "https://app.example")
        .header("content-type", "text/plain;charset=UTF-8")
        .body(events)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let answer: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(statuses(&answer), ["ACCEPTED", "ACCEPTED"], "{answer}");
    let want: HashSet<String> = ["beacon-1".to_string(), "beacon-2".to_string()].into();
    let out = data.join("out");
    assert!(
        eventually(Duration::from_secs(20), || chunk_ids(&out)
            .is_superset(&want))
        .await,
        "beacons missing at the sink: {:?}",
        chunk_ids(&out)
    );
    sidelog.kill9().await;
}

/// Hostile clients: headers sent too slowly close the connection, a body sent too slowly is
/// 408, too many headers 431, and a connection over `http_max_connections` is 503 with
/// `Retry-After`; the door keeps serving others throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_and_too_many_connections_are_refused() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let port_text = port.to_string();
    let mut sidelog = Sidelog::new(
        &dir.path().join("data"),
        &[
            "--http-listen",
            &port_text,
            "--http-max-connections",
            "2",
            "--http-read-timeout-ms",
            "700",
        ],
    );
    sidelog.start().await;
    /// What the server sends before it closes, within `limit`.
    async fn answer(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<String> {
        let mut got = Vec::new();
        let read = tokio::time::timeout(limit, stream.read_to_end(&mut got)).await;
        read.ok()
            .map(|_| String::from_utf8_lossy(&got).into_owned())
    }

    // Headers that never end: the connection is closed after the read timeout.
    let mut slow_headers = tokio::net::TcpStream::connect(port).await.unwrap();
    slow_headers
        .write_all(b"POST /v1/publish HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // A second connection holds the other slot: a third one is over the cap.
    let mut slow_body = tokio::net::TcpStream::connect(port).await.unwrap();
    slow_body
        .write_all(
            b"POST /v1/publish HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-ndjson\r\n\
              content-length: 100\r\n\r\n{\"id\":",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = tokio::net::TcpStream::connect(port).await.unwrap();
    let over = answer(&mut third, Duration::from_secs(5))
        .await
        .expect("the third connection is answered and closed at once");
    assert!(over.starts_with("HTTP/1.1 503"), "{over}");
    assert!(over.contains("retry-after: 1"), "{over}");
    assert!(over.contains("http_max_connections"), "{over}");

    let closed = answer(&mut slow_headers, Duration::from_secs(5))
        .await
        .expect("slow headers: the connection is closed");
    assert!(!closed.contains(" 200 "), "{closed}");
    let timed_out = answer(&mut slow_body, Duration::from_secs(5))
        .await
        .expect("slow body: answered and closed");
    assert!(timed_out.starts_with("HTTP/1.1 408"), "{timed_out}");
    assert!(timed_out.contains("http_read_timeout_ms"), "{timed_out}");

    // The slots are free again: a normal request is served; too many headers are 431.
    let (code, _, answer_json) =
        post(port, "application/x-ndjson", "{\"id\":\"ok\"}\n", None).await;
    assert_eq!(
        (code, statuses(&answer_json)),
        (200, vec!["ACCEPTED".to_string()])
    );
    let mut request = reqwest::Client::new()
        .post(format!("http://{port}/v1/publish"))
        .header("content-type", "application/x-ndjson")
        .body("{\"id\":\"many\"}\n");
    for i in 0..100 {
        request = request.header(format!("x-padding-{i}"), "x");
    }
    let many = request.send().await.unwrap();
    assert_eq!(many.status(), 431);
    sidelog.kill9().await;
}

/// Shippers compress: `Content-Encoding: gzip` and `zstd` bodies are decoded (and their records
/// acked and delivered), an encoding the door does not know is 415, a body that is not what its
/// encoding says is 400, and one that decodes past `max_request_bytes` is 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_bodies_are_decoded_and_unknown_encodings_refused() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::default();
    let sink_server = sink.start(free_port()).await;
    let sink_url = format!("http://{}", sink_server.addr);
    let port = free_port();
    let port_text = port.to_string();
    let mut sidelog = Sidelog::new(
        &dir.path().join("data"),
        &[
            "--http-listen",
            &port_text,
            "--sink",
            &sink_url,
            "--limits-max-request-bytes",
            "65536",
            "--limits-max-message-bytes",
            "16384",
        ],
    );
    sidelog.start().await;
    let send = |encoding: &'static str, body: Vec<u8>| async move {
        let response = reqwest::Client::new()
            .post(format!("http://{port}/v1/publish"))
            .header("content-type", "application/x-ndjson")
            .header("content-encoding", encoding)
            .body(body)
            .send()
            .await
            .expect("the HTTP door answers");
        let status = response.status().as_u16();
        let json: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        (status, json)
    };
    let lines = |prefix: &str| -> Vec<u8> {
        (0..3)
            .map(|i| format!("{{\"id\":\"{prefix}-{i}\",\"n\":{i}}}\n"))
            .collect::<String>()
            .into_bytes()
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&lines("gz")).unwrap();
    let (code, answer) = send("gzip", gz.finish().unwrap()).await;
    assert_eq!(
        (code, statuses(&answer)),
        (200, vec!["ACCEPTED".to_string(); 3])
    );
    let zst = zstd::encode_all(&lines("zst")[..], 3).unwrap();
    let (code, answer) = send("zstd", zst).await;
    assert_eq!(
        (code, statuses(&answer)),
        (200, vec!["ACCEPTED".to_string(); 3])
    );
    let want: HashSet<String> = ["gz", "zst"]
        .iter()
        .flat_map(|p| (0..3).map(move |i| format!("{p}-{i}")))
        .collect();
    let missing = wait_for_ids(&sink, &want, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "never delivered: {missing:?}");

    let (code, answer) = send("br", lines("br")).await;
    assert_eq!(code, 415, "{answer}");
    assert!(answer.to_string().contains("gzip or zstd"), "{answer}");
    let (code, answer) = send("gzip", lines("not-gzip")).await;
    assert_eq!(code, 400, "{answer}");
    // 1 MiB of one byte compresses to ~1 KiB: over the 64 KiB limit once decoded.
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    bomb.write_all(&vec![b'x'; 1 << 20]).unwrap();
    let bomb = bomb.finish().unwrap();
    assert!(bomb.len() < 65536);
    let (code, answer) = send("gzip", bomb).await;
    assert_eq!(code, 413, "{answer}");
    sidelog.terminate().await;
}
