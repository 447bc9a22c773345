//! The HTTP door (`http_listen`): `POST /v1/publish` into the same pipeline as gRPC (limits,
//! dedup, journal, mode, backpressure), with the same ack contract: `"ACCEPTED"` only once the
//! message is as durable as the mode promises.
//!
//! Two bodies:
//! - `application/json`: the proto3 JSON mapping of `PublishRequest` (`payload` in base64,
//!   `eventTimeMs` or `event_time_ms`, 64-bit numbers as strings or numbers);
//! - `application/x-ndjson`: one JSON record a line, as Vector's and Fluent Bit's `http`
//!   outputs send. Each line becomes one message whose payload is the line as sent; its id is
//!   the record's top-level `"id"` (so a shipper's retry is a `DUPLICATE`), else assigned; its
//!   key the field `http_ndjson_key_field` names, if any.
//!
//! `?format=json|ndjson` on the path overrides the `Content-Type` (for shippers that label
//! NDJSON `application/json`).
//!
//! The answer is the JSON of `PublishResponse`, one ack per message in order. Statuses are the
//! ones HTTP clients retry correctly: 200 when every message was taken, 422 (with the acks)
//! when any was `REJECTED`, 400 malformed (with the reason), 401 without the bearer token, 413
//! over `max_request_bytes`, 415 for an unknown `Content-Encoding`, 429 + `Retry-After` when
//! the backlog or disk is full, 503 + `Retry-After` while replaying or stopping.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;

use super::TokenCheck;
use crate::pipeline::{Door, IngestError, Pipeline};
use crate::proto::{Ack, Message, ack};

/// Headers a request may carry (hyper answers 431 over it).
pub const MAX_HEADERS: usize = 64;

/// What the door allows one connection: how many may be open, how long a client may take to
/// send a request's headers and its body (slow clients hold a connection and a buffer).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub read_timeout: std::time::Duration,
}

/// The door's TLS (see [`super::tls`]), HTTP/2 and HTTP/1.1 by ALPN.
pub fn tls_acceptor(
    pem: &crate::config::TlsPem,
) -> Result<tokio_rustls::TlsAcceptor, super::tls::TlsSetupError> {
    super::tls::acceptor(pem, &[b"h2", b"http/1.1"])
}

/// Serves `router` on `listener` until `stop`, then lets open requests finish (the caller
/// bounds that with its shutdown deadline); over TLS when `tls` is given (a handshake not done
/// within `read_timeout` closes the connection). Over `max_connections` a connection is
/// answered 503 with `Retry-After` and closed; headers slower than `read_timeout` close the
/// connection, a body slower than that is 408.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.read_timeout);
    let service = hyper_util::service::TowerToHyperService::new(router.layer(
        tower_http::timeout::RequestBodyTimeoutLayer::new(limits.read_timeout),
    ));
    tokio::pin!(stop);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "HTTP door cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let permit = permits.clone().try_acquire_owned();
        let builder = builder.clone();
        let service = service.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        crate::runtime::spawn(async move {
            let stream = match tls {
                None => Stream::Left(stream),
                Some(tls) => {
                    match tokio::time::timeout(limits.read_timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => Stream::Right(Box::new(stream)),
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "HTTP door: TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
            };
            let Ok(_permit) = permit else {
                return refuse_connection(stream, limits.max_connections).await;
            };
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A connection, plain or TLS.
type Stream = tokio_util::either::Either<
    tokio::net::TcpStream,
    Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
>;

/// The answer to a connection over the cap: 503, `Retry-After`, closed.
async fn refuse_connection(mut stream: Stream, max: usize) {
    use tokio::io::AsyncWriteExt as _;
    metrics::counter!(crate::metrics::REQUESTS_REFUSED, "door" => "http", "code" => "unavailable")
        .increment(1);
    let body = serde_json::json!({
        "error": format!("{max} HTTP connections are open (http_max_connections); retry shortly")
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: {RETRY_AFTER_SECONDS}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
}

/// Seconds a client is told to wait before retrying a 429 or 503: [`super::RETRY_AFTER`] in
/// whole seconds, as `Retry-After` says it.
pub(super) const RETRY_AFTER_SECONDS: &str = "1";
const _: () = assert!(super::RETRY_AFTER.as_secs() == 1 && super::RETRY_AFTER.subsec_nanos() == 0);

/// What the HTTP door needs.
#[derive(Debug)]
pub struct HttpDoor {
    pub pipeline: Arc<Pipeline>,
    pub token: TokenCheck,
    pub max_request_bytes: usize,
    /// NDJSON: the top-level field whose value becomes the message key.
    pub key_field: Option<String>,
    /// Origins allowed by CORS (`http_cors_origins`): none, any (`*`), or these.
    pub cors_origins: Option<crate::config::CorsOrigins>,
    /// `POST /v1/logs`: OpenTelemetry logs over OTLP/HTTP.
    pub otlp: super::otlp::OtlpLogs,
}

/// The door's routes: `/v1/publish`, and `/v1/beacon` for `navigator.sendBeacon`, whose body
/// comes as `text/plain` (NDJSON, one event a line) and whose answer no page reads.
pub fn router(door: Arc<HttpDoor>) -> axum::Router {
    let cors = super::cors::layer(door.cors_origins.as_ref(), super::cors::For::Http);
    let router = axum::Router::new()
        .route("/v1/publish", axum::routing::post(publish))
        .route("/v1/beacon", axum::routing::post(beacon))
        .route("/v1/logs", axum::routing::post(otlp_logs))
        .with_state(door);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// `POST /v1/logs`: see [`super::otlp`].
async fn otlp_logs(State(door): State<Arc<HttpDoor>>, headers: HeaderMap, body: Body) -> Response {
    super::otlp::http_export(&door, &door.otlp, headers, body).await
}

/// Why a body's `Content-Encoding` cannot be undone.
enum Undecodable {
    /// An encoding the door does not take (answered 415).
    Unsupported(String),
    /// Decoded, it is over `max_request_bytes` (413; a small body can expand a thousandfold).
    TooLarge,
    /// It is not what its encoding says (400).
    Damaged(&'static str, std::io::Error),
}

/// The body as it was before its `Content-Encoding` (`gzip`, `zstd`; none or `identity`: as
/// it is), at most `limit` bytes decoded: shippers compress what they send (Vector's and
/// Fluent Bit's `compress` settings, curl `--compressed`).
fn decode(
    headers: &HeaderMap,
    body: bytes::Bytes,
    limit: usize,
) -> Result<bytes::Bytes, Undecodable> {
    use std::io::Read as _;
    let Some(encoding) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(body);
    };
    let encoding = encoding
        .to_str()
        .unwrap_or("(not text)")
        .trim()
        .to_ascii_lowercase();
    let (name, reader): (&'static str, Box<dyn std::io::Read + '_>) = match encoding.as_str() {
        "" | "identity" => return Ok(body),
        "gzip" | "x-gzip" => (
            "gzip",
            Box::new(flate2::read::MultiGzDecoder::new(&body[..])),
        ),
        "zstd" => (
            "zstd",
            Box::new(
                zstd::stream::read::Decoder::with_buffer(&body[..])
                    .map_err(|e| Undecodable::Damaged("zstd", e))?,
            ),
        ),
        _ => return Err(Undecodable::Unsupported(encoding)),
    };
    let mut decoded = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut decoded)
        .map_err(|e| Undecodable::Damaged(name, e))?;
    if decoded.len() > limit {
        return Err(Undecodable::TooLarge);
    }
    Ok(decoded.into())
}

/// `navigator.sendBeacon` posts a string as `text/plain` and cannot set headers: the body is
/// read as NDJSON whatever its type says. The answer is the same JSON, for tools and tests.
async fn beacon(State(door): State<Arc<HttpDoor>>, headers: HeaderMap, body: Body) -> Response {
    accept(&door, headers, body, Some(Format::Ndjson)).await
}

/// How a body is read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    /// The JSON of a `PublishRequest`.
    Json,
    /// One JSON record a line.
    Ndjson,
}

/// `POST /v1/publish`: the body's format is `?format=json|ndjson` when given (for shippers
/// that label NDJSON `application/json`, as Fluent Bit's `json_lines` did before 3.0), else
/// its `Content-Type`.
async fn publish(
    State(door): State<Arc<HttpDoor>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let format = match query.as_deref().map(format_of_query).transpose() {
        Ok(format) => format.flatten(),
        Err(reason) => return refuse(StatusCode::BAD_REQUEST, "invalid_argument", &reason),
    };
    accept(&door, headers, body, format).await
}

/// The `format` a query names, if it names one.
fn format_of_query(query: &str) -> Result<Option<Format>, String> {
    let mut format = None;
    for (name, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
        if name == "format" {
            format = Some(match value {
                "json" => Format::Json,
                "ndjson" | "jsonl" | "json_lines" => Format::Ndjson,
                other => {
                    return Err(format!(
                        "format={other} is not taken: format=json (a PublishRequest) or \
                         format=ndjson (one record a line)"
                    ));
                }
            });
        }
    }
    Ok(format)
}

async fn accept(
    door: &HttpDoor,
    headers: HeaderMap,
    body: Body,
    format: Option<Format>,
) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(reason) = door.token.check_header(auth) {
        return refuse(StatusCode::UNAUTHORIZED, "unauthenticated", reason);
    }
    let body = match read_body(door, &headers, body).await {
        Ok(body) => body,
        Err(r) => return refuse(r.status, r.code, &r.reason),
    };
    let messages = match messages(&headers, format, &body, door.key_field.as_deref()) {
        Ok(m) => m,
        Err(reason) => return refuse(StatusCode::BAD_REQUEST, "invalid_argument", &reason),
    };
    match door.pipeline.publish(messages, Door::Http).await {
        Ok(acks) => acks_response(&acks),
        Err(e) => ingest_error(e),
    }
}

/// Why a body is refused before it is read as messages: the status, the refusal's code (as
/// the refusal metric counts it) and the reason. Each door that reads bodies answers it in
/// its own form (the HTTP door's JSON, OTLP's `google.rpc.Status`).
pub(super) struct BodyRefusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub reason: String,
}

impl BodyRefusal {
    fn new(status: StatusCode, code: &'static str, reason: impl Into<String>) -> Self {
        BodyRefusal {
            status,
            code,
            reason: reason.into(),
        }
    }
}

/// The request's body, whole and decoded (`Content-Encoding`), within `max_request_bytes` and
/// `http_read_timeout_ms`; or why it is refused.
pub(super) async fn read_body(
    door: &HttpDoor,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, BodyRefusal> {
    let too_large = || {
        BodyRefusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "resource_exhausted",
            format!(
                "the body is over {} bytes (max_request_bytes)",
                door.max_request_bytes
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > door.max_request_bytes) {
        return Err(too_large());
    }
    let body = match axum::body::to_bytes(body, door.max_request_bytes).await {
        Ok(body) => body,
        Err(e) if has_source::<tower_http::timeout::TimeoutError>(&e) => {
            return Err(BodyRefusal::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_argument",
                "the body did not arrive within http_read_timeout_ms",
            ));
        }
        // The limit is the only other error a body that arrived whole can give.
        Err(e) if declared.is_none() || has_source::<http_body_util::LengthLimitError>(&e) => {
            return Err(too_large());
        }
        Err(e) => {
            return Err(BodyRefusal::new(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!("cannot read the body: {e}"),
            ));
        }
    };
    decode(headers, body, door.max_request_bytes).map_err(|e| match e {
        Undecodable::Unsupported(encoding) => BodyRefusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_argument",
            format!(
                "Content-Encoding {encoding} is not taken: send the body as it is, or as gzip \
                 or zstd"
            ),
        ),
        Undecodable::TooLarge => too_large(),
        Undecodable::Damaged(encoding, e) => BodyRefusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!("cannot decode the {encoding} body: {e}"),
        ),
    })
}

/// The messages of a body, in the format `?format=` or the `Content-Type` names.
fn messages(
    headers: &HeaderMap,
    format: Option<Format>,
    body: &[u8],
    key_field: Option<&str>,
) -> Result<Vec<Message>, String> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or("").trim();
    let format = match (format, media) {
        (Some(format), _) => format,
        (None, "application/x-ndjson" | "application/jsonl" | "application/json-lines") => {
            Format::Ndjson
        }
        (None, "application/json" | "") => Format::Json,
        (None, other) => {
            return Err(format!(
                "Content-Type {other} is not taken: send application/json (a PublishRequest) \
                 or application/x-ndjson (one record a line), or say ?format=json|ndjson"
            ));
        }
    };
    match format {
        Format::Ndjson => ndjson(body, key_field),
        Format::Json => json(body),
    }
}

/// 200 when every message was taken (`ACCEPTED` or `DUPLICATE`); 422 when any was
/// `REJECTED`: a shipper counts a 200 as delivered and never reads the body, and a 4xx other
/// than 408 and 429 is what shippers treat as "not delivered, do not retry". The body has every
/// ack either way (the others were taken: a retry answers them `DUPLICATE`), and `error` says
/// how many were refused and the first reason.
fn acks_response(acks: &[Ack]) -> Response {
    let json: Vec<_> = acks.iter().map(ack_json).collect();
    let mut rejected = acks
        .iter()
        .filter(|a| a.status == ack::Status::Rejected as i32);
    let Some(first) = rejected.next() else {
        return json_response(StatusCode::OK, serde_json::json!({ "acks": json }));
    };
    let error = format!(
        "{} of {} messages were rejected (the others were taken); first: id {:?}: {}",
        1 + rejected.count(),
        acks.len(),
        first.id,
        first.reason
    );
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        serde_json::json!({ "acks": json, "error": error }),
    )
}

/// Whether `E` is among the causes of `e`.
fn has_source<E: std::error::Error + 'static>(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<E>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A refusal of the whole request, counted like gRPC's.
fn refuse(status: StatusCode, code: &'static str, reason: &str) -> Response {
    metrics::counter!(crate::metrics::REQUESTS_REFUSED, "door" => "http", "code" => code)
        .increment(1);
    let mut response = json_response(status, serde_json::json!({ "error": reason }));
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECONDS),
        );
    }
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn ingest_error(e: IngestError) -> Response {
    match e {
        IngestError::Malformed(m) => refuse(StatusCode::BAD_REQUEST, "invalid_argument", &m),
        IngestError::Full(m) => refuse(StatusCode::TOO_MANY_REQUESTS, "resource_exhausted", &m),
        IngestError::Transient(m) => refuse(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &m),
        IngestError::Failed(m) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal", &m),
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// An ack in the proto3 JSON mapping (the status by name, the 64-bit sequence as a string).
fn ack_json(a: &Ack) -> serde_json::Value {
    let status = ack::Status::try_from(a.status)
        .unwrap_or(ack::Status::Unspecified)
        .as_str_name();
    let mut out = serde_json::json!({
        "id": a.id,
        "status": status,
        "sequence": a.sequence.to_string(),
    });
    if !a.reason.is_empty() {
        out["reason"] = a.reason.clone().into();
    }
    out
}

/// The proto3 JSON mapping of `PublishRequest`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    #[serde(default)]
    messages: Vec<JsonMessage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    key: String,
    /// Base64 (standard or URL-safe, padded or not), as proto3 JSON writes `bytes`.
    #[serde(default)]
    payload: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default, rename = "eventTimeMs", alias = "event_time_ms")]
    event_time_ms: Option<Int64>,
}

/// proto3 JSON writes 64-bit integers as strings, and takes numbers too.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Int64 {
    Number(i64),
    Text(String),
}

fn json(body: &[u8]) -> Result<Vec<Message>, String> {
    let request: JsonRequest = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not a PublishRequest in JSON: {e}"))?;
    request
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let payload = decode_base64(&m.payload)
                .map_err(|e| format!("messages[{i}].payload is not base64: {e}"))?;
            let event_time_ms = match m.event_time_ms {
                None => 0,
                Some(Int64::Number(n)) => n,
                Some(Int64::Text(t)) => t
                    .parse()
                    .map_err(|_| format!("messages[{i}].eventTimeMs is not an integer: {t:?}"))?,
            };
            Ok(Message {
                id: m.id,
                key: m.key,
                payload: payload.into(),
                headers: m.headers.into_iter().collect(),
                event_time_ms,
            })
        })
        .collect()
}

fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let trimmed = text.trim_end_matches('=');
    if text.contains(['-', '_']) {
        URL_SAFE_NO_PAD.decode(trimmed)
    } else {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(trimmed)
            .or_else(|_| STANDARD.decode(text))
    }
}

/// One message per non-empty line; the line itself is the payload.
fn ndjson(body: &[u8], key_field: Option<&str>) -> Result<Vec<Message>, String> {
    let mut messages = Vec::new();
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| format!("line {} is not JSON: {e}", n + 1))?;
        let field = |name: &str| match record.get(name) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(x)) => Some(x.to_string()),
            _ => None,
        };
        messages.push(Message {
            id: field("id").unwrap_or_default(),
            key: key_field.and_then(field).unwrap_or_default(),
            payload: bytes::Bytes::copy_from_slice(line),
            ..Default::default()
        });
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_lines_become_messages_with_their_id_and_key() {
        let body = b"{\"id\":\"a\",\"host\":\"h1\",\"msg\":\"x\"}\r\n\n{\"msg\":\"y\",\"id\":7}\n  \n{\"msg\":\"z\"}";
        let m = ndjson(body, Some("host")).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].id.as_str(), m[0].key.as_str()), ("a", "h1"));
        assert_eq!(&m[0].payload[..], br#"{"id":"a","host":"h1","msg":"x"}"#);
        assert_eq!((m[1].id.as_str(), m[1].key.as_str()), ("7", ""));
        assert_eq!(m[2].id, "");
        let err = ndjson(b"{\"a\":1}\nnot json\n", None).unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn the_json_mapping_takes_base64_and_both_field_spellings() {
        let body =
            br#"{"messages":[{"id":"a","payload":"aGk=","eventTimeMs":"5","headers":{"h":"v"}},
                                   {"payload":"aGk","event_time_ms":6},{"payload":"_-8"}]}"#;
        let m = json(body).unwrap();
        assert_eq!(&m[0].payload[..], b"hi");
        assert_eq!((m[0].event_time_ms, m[1].event_time_ms), (5, 6));
        assert_eq!(&m[1].payload[..], b"hi");
        assert_eq!(&m[2].payload[..], [0xff, 0xef]);
        assert_eq!(m[0].headers.get("h").map(String::as_str), Some("v"));
        for bad in [
            &br#"{"messages":[{"payload":"***"}]}"#[..],
            br#"{"messages":[{"nope":1}]}"#,
            br#"{"messages":[{"eventTimeMs":"x"}]}"#,
            b"[",
        ] {
            assert!(json(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
