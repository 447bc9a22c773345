//! gRPC-Web on the gRPC listener, spoken byte for byte as a browser's generated stubs speak it
//! (HTTP/1.1, `application/grpc-web+proto` and `application/grpc-web-text`, the status in a
//! trailer frame), with the CORS a page on another origin needs, the same token and the same
//! ack contract as gRPC: what was acked survives a SIGKILL.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use prost::Message as _;
use sidelog::proto::{Message, PublishRequest, PublishResponse, ack};

const ORIGIN: &str = "https://app.example";

/// One gRPC-Web answer, taken apart.
#[derive(Debug)]
struct WebAnswer {
    http: u16,
    /// The `PublishResponse`, when a data frame came.
    response: Option<PublishResponse>,
    /// `grpc-status`, from the trailer frame or (trailers-only answers) the headers.
    grpc_status: String,
    grpc_message: String,
    allow_origin: Option<String>,
    expose_headers: Option<String>,
}

/// POSTs a `PublishRequest` to `Ingest/Publish` as gRPC-Web; `text` for the base64 variant.
async fn web_publish(
    url: &str,
    request: &PublishRequest,
    text: bool,
    token: Option<&str>,
) -> WebAnswer {
    let payload = request.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    framed.extend_from_slice(&payload);
    let (content_type, body) = if text {
        (
            "application/grpc-web-text",
            base64::engine::general_purpose::STANDARD
                .encode(&framed)
                .into_bytes(),
        )
    } else {
        ("application/grpc-web+proto", framed)
    };
    let mut call = reqwest::Client::new()
        .post(format!("{url}/sidelog.v1.Ingest/Publish"))
        .header("content-type", content_type)
        .header("x-grpc-web", "1")
        .header("accept", content_type)
        .header("origin", ORIGIN)
        .body(body);
    if let Some(token) = token {
        call = call.header("authorization", format!("Bearer {token}"));
    }
    let answer = call
        .send()
        .await
        .expect("the gRPC listener answers HTTP/1.1");
    let header = |name: &str| {
        answer
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let http = answer.status().as_u16();
    let allow_origin = header("access-control-allow-origin");
    let expose_headers = header("access-control-expose-headers");
    let mut grpc_status = header("grpc-status").unwrap_or_default();
    let mut grpc_message = header("grpc-message").unwrap_or_default();
    let mut body = answer.bytes().await.unwrap().to_vec();
    if text {
        // Each frame may come base64-encoded on its own, padding and all.
        let mut decoded = Vec::new();
        let mut start = 0;
        for end in 1..=body.len() {
            let at_pad_end = body[end - 1] == b'=' && body.get(end) != Some(&b'=');
            if end == body.len() || at_pad_end {
                let piece = &body[start..end];
                decoded.extend(
                    base64::engine::general_purpose::STANDARD
                        .decode(piece)
                        .expect("a grpc-web-text answer is base64"),
                );
                start = end;
            }
        }
        body = decoded;
    }
    let mut response = None;
    let mut rest = &body[..];
    while rest.len() >= 5 {
        let flag = rest[0];
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let frame = &rest[5..5 + len];
        if flag & 0x80 == 0 {
            response = Some(PublishResponse::decode(frame).expect("a PublishResponse"));
        } else {
            for line in String::from_utf8_lossy(frame).split("\r\n") {
                if let Some((name, value)) = line.split_once(':') {
                    match name.trim().to_ascii_lowercase().as_str() {
                        "grpc-status" => grpc_status = value.trim().to_owned(),
                        "grpc-message" => grpc_message = value.trim().to_owned(),
                        _ => {}
                    }
                }
            }
        }
        rest = &rest[5 + len..];
    }
    assert!(rest.is_empty(), "a torn frame at the end: {body:?}");
    // `grpc-message` is percent-encoded (gRPC over HTTP/2, "Responses").
    let grpc_message = percent_encoding::percent_decode_str(&grpc_message)
        .decode_utf8_lossy()
        .into_owned();
    WebAnswer {
        http,
        response,
        grpc_status,
        grpc_message,
        allow_origin,
        expose_headers,
    }
}

fn request(ids: &[&str]) -> PublishRequest {
    PublishRequest {
        messages: ids
            .iter()
            .map(|id| Message {
                id: id.to_string(),
                key: "page".into(),
                payload: format!("event {id}").into_bytes().into(),
                ..Default::default()
            })
            .collect(),
    }
}

fn statuses(answer: &WebAnswer) -> Vec<ack::Status> {
    answer
        .response
        .as_ref()
        .unwrap_or_else(|| panic!("a PublishResponse in {answer:?}"))
        .acks
        .iter()
        .map(|a| ack::Status::try_from(a.status).unwrap())
        .collect()
}

/// Both encodings are acked after the fsync, a retry is `DUPLICATE` with the first sequence,
/// an allowed origin gets CORS headers that let the page read the status, and the acked
/// messages reach the sink across a SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_acks_survive_sigkill_and_retries_are_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--mode", "hml", "--http-cors-origins", ORIGIN];
    // The sink is down: what is acked stays in the journal until the restart.
    let down = [&args[..], &["--sink", "http://127.0.0.1:1"]].concat();
    let mut sidelog = Sidelog::new(&data, &down);
    sidelog.start().await;
    let url = sidelog.url();

    let first = web_publish(&url, &request(&["web-1", "web-2"]), false, None).await;
    assert_eq!(
        (first.http, first.grpc_status.as_str()),
        (200, "0"),
        "{first:?}"
    );
    assert_eq!(statuses(&first), [ack::Status::Accepted; 2]);
    assert_eq!(first.allow_origin.as_deref(), Some(ORIGIN), "{first:?}");
    let exposed = first.expose_headers.clone().unwrap_or_default();
    assert!(exposed.contains("grpc-status"), "{first:?}");

    let text = web_publish(&url, &request(&["web-3"]), true, None).await;
    assert_eq!(text.grpc_status, "0", "{text:?}");
    assert_eq!(statuses(&text), [ack::Status::Accepted]);

    // The page retries: duplicates, with the sequences of the first acks.
    let again = web_publish(&url, &request(&["web-1", "web-2"]), false, None).await;
    assert_eq!(statuses(&again), [ack::Status::Duplicate; 2]);
    let seqs = |a: &WebAnswer| -> Vec<u64> {
        a.response
            .as_ref()
            .unwrap()
            .acks
            .iter()
            .map(|a| a.sequence)
            .collect()
    };
    assert_eq!(seqs(&again), seqs(&first));

    // A malformed request is answered with its gRPC status, as gRPC's.
    let empty = web_publish(&url, &PublishRequest::default(), false, None).await;
    assert_eq!(empty.grpc_status, "3", "INVALID_ARGUMENT: {empty:?}");
    assert!(empty.grpc_message.contains("no messages"), "{empty:?}");

    sidelog.kill9().await;
    let mut sidelog = Sidelog::new(&data, &args);
    sidelog.start().await;
    let out = data.join("out");
    let want: HashSet<String> = ["web-1", "web-2", "web-3"].map(String::from).into();
    assert!(
        eventually(Duration::from_secs(20), || chunk_ids(&out) == want).await,
        "at the sink: {:?}",
        chunk_ids(&out)
    );
    sidelog.kill9().await;
}

/// A browser's preflight is answered for the allowed origin only; without the token a call is
/// `UNAUTHENTICATED`; with CORS unset no origin is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_preflight_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "0123456789abcdef0123\n").unwrap();
    let mut sidelog = Sidelog::new(
        &dir.path().join("data"),
        &[
            "--http-cors-origins",
            ORIGIN,
            "--auth-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    sidelog.start().await;
    let url = sidelog.url();
    let preflight = |origin: &'static str| {
        reqwest::Client::new()
            .request(
                reqwest::Method::OPTIONS,
                format!("{url}/sidelog.v1.Ingest/Publish"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,x-grpc-web,x-user-agent,authorization",
            )
            .send()
    };
    let allowed = preflight(ORIGIN).await.unwrap();
    assert!(allowed.status().is_success(), "{allowed:?}");
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
    };
    assert_eq!(
        header(&allowed, "access-control-allow-origin").as_deref(),
        Some(ORIGIN)
    );
    let allowed_headers = header(&allowed, "access-control-allow-headers").unwrap_or_default();
    for needed in ["x-grpc-web", "authorization", "content-type"] {
        assert!(allowed_headers.contains(needed), "{allowed_headers}");
    }
    let other = preflight("https://evil.example").await.unwrap();
    assert_eq!(header(&other, "access-control-allow-origin"), None);

    let without = web_publish(&url, &request(&["t-1"]), false, None).await;
    assert_eq!(without.grpc_status, "16", "UNAUTHENTICATED: {without:?}");
    let with = web_publish(
        &url,
        &request(&["t-1"]),
        false,
        Some("0123456789abcdef0123"),
    )
    .await;
    assert_eq!(statuses(&with), [ack::Status::Accepted], "{with:?}");
    sidelog.kill9().await;

    // CORS unset (the default): gRPC-Web still works for same-origin pages and tools, and no
    // origin is allowed.
    let mut plain = Sidelog::new(&dir.path().join("plain"), &[]);
    plain.start().await;
    let answer = web_publish(&plain.url(), &request(&["p-1"]), false, None).await;
    assert_eq!(statuses(&answer), [ack::Status::Accepted], "{answer:?}");
    assert_eq!(answer.allow_origin, None);
    plain.kill9().await;
}
