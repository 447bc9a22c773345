//! The OTLP door: OpenTelemetry logs, as the SDKs' and the Collector's `otlp` exporters send
//! them, on the gRPC listener (`opentelemetry.proto.collector.logs.v1.LogsService/Export`) and
//! on the HTTP door (`POST /v1/logs`, protobuf or JSON). The definitions are the protocol's
//! own, from the `opentelemetry-proto` crate.
//!
//! **One log record, one message.** Its payload is an OTLP `LogsData` holding that record alone,
//! with its resource and its scope (protobuf, so any OTLP library reads it; the message's
//! `content-type` header says so); its key is the value of a resource attribute
//! (`otlp_key_attribute`, `service.name` unless set; none: no key); its event time the record's
//! time, or the time it was observed.
//!
//! **Ids without ids.** OTLP carries no message id, and an exporter that got no answer sends
//! the same request again. Each record's id is `otlp-{hash}-{position}`: the hash the XXH3-128
//! of the request (every record's payload in order, each after its length as 8 little-endian
//! bytes) in 32 hex digits, the position the record's place in the request (from 0). A retried
//! request gives the same ids and is answered from the dedup window, not stored twice, while
//! two requests that differ in anything, even a record's order, share no id. The payload
//! encoding and the hash are part of the contract: they do not change between versions (a
//! test holds one id).
//!
//! **The answer** follows the OTLP specification. Success only once every record is as durable
//! as the mode promises (the same acks as every door; a duplicate counts as taken); records the
//! pipeline refuses (over `max_message_bytes`) are counted in `partial_success` with the first
//! reason, and are not retried by the exporter. When sidelog cannot take the request now
//! (backlog or disk full, replaying, stopping) the answer is retryable: `RESOURCE_EXHAUSTED` or
//! `UNAVAILABLE` with `RetryInfo` over gRPC, 429 or 503 with `Retry-After` over HTTP. A journal
//! that needs an operator is `UNAVAILABLE` too: an exporter drops what it may not retry.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::LogsService;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::logs::v1::{LogsData, ResourceLogs, ScopeLogs};
use prost::Message as _;

use crate::pipeline::{Door, IngestError, Pipeline};
use crate::proto::{Message, ack};

/// The `content-type` header of every message the door makes.
pub const PAYLOAD_TYPE: &str =
    "application/x-protobuf; messageType=opentelemetry.proto.logs.v1.LogsData";

/// The OTLP logs service, for both listeners.
#[derive(Debug, Clone)]
pub struct OtlpLogs {
    pipeline: Arc<Pipeline>,
    /// The resource attribute whose value keys a record's message.
    key_attribute: String,
    /// Messages per publish (`max_messages_per_request`): a larger export goes in parts.
    max_messages: usize,
}

/// What became of an export's records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Taken {
    /// Records the pipeline refused (too large): the exporter must not send them again.
    pub rejected: u64,
    /// Why the first of them was refused.
    pub first_reason: String,
}

impl Taken {
    /// The OTLP response: `partial_success` only when something was refused.
    pub fn response(&self) -> ExportLogsServiceResponse {
        ExportLogsServiceResponse {
            partial_success: (self.rejected > 0).then(|| ExportLogsPartialSuccess {
                rejected_log_records: i64::try_from(self.rejected).unwrap_or(i64::MAX),
                error_message: self.first_reason.clone(),
            }),
        }
    }
}

impl Taken {
    /// The response in OTLP/JSON: `{}`, or the partial success (its 64-bit count a string, as
    /// proto3's JSON mapping writes it).
    fn json(&self) -> serde_json::Value {
        match self.response().partial_success {
            None => serde_json::json!({}),
            Some(partial) => serde_json::json!({
                "partialSuccess": {
                    "rejectedLogRecords": partial.rejected_log_records.to_string(),
                    "errorMessage": partial.error_message,
                }
            }),
        }
    }
}

impl OtlpLogs {
    pub fn new(pipeline: Arc<Pipeline>, key_attribute: String, max_messages: usize) -> Self {
        OtlpLogs {
            pipeline,
            key_attribute,
            max_messages: max_messages.max(1),
        }
    }

    /// Publishes the records of `request`, in parts of `max_messages`: `Ok` once every record
    /// is taken or refused. A part that fails fails the export; the parts before it were taken
    /// and are answered `DUPLICATE` when the exporter retries.
    pub async fn export(&self, request: ExportLogsServiceRequest) -> Result<Taken, IngestError> {
        let mut rest = messages(request, &self.key_attribute);
        let mut taken = Taken::default();
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(self.max_messages));
            let acks = self.pipeline.publish(rest, Door::Otlp).await?;
            for refused in acks
                .iter()
                .filter(|a| a.status == ack::Status::Rejected as i32)
            {
                if taken.rejected == 0 {
                    taken.first_reason = format!("record {}: {}", refused.id, refused.reason);
                }
                taken.rejected += 1;
            }
            rest = tail;
        }
        Ok(taken)
    }
}

/// The messages of an export, one per log record, with their ids (see the module's docs).
pub fn messages(request: ExportLogsServiceRequest, key_attribute: &str) -> Vec<Message> {
    let mut made = Vec::new();
    for resource_logs in request.resource_logs {
        let key = resource_logs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == key_attribute))
            .and_then(|a| a.value.as_ref()?.value.as_ref())
            .map(attribute_text)
            .unwrap_or_default();
        for scope_logs in resource_logs.scope_logs {
            for record in scope_logs.log_records {
                let nanos = match record.time_unix_nano {
                    0 => record.observed_time_unix_nano,
                    t => t,
                };
                let alone = LogsData {
                    resource_logs: vec![ResourceLogs {
                        resource: resource_logs.resource.clone(),
                        scope_logs: vec![ScopeLogs {
                            scope: scope_logs.scope.clone(),
                            log_records: vec![record],
                            schema_url: scope_logs.schema_url.clone(),
                        }],
                        schema_url: resource_logs.schema_url.clone(),
                    }],
                };
                made.push(Message {
                    id: String::new(),
                    key: key.clone(),
                    payload: alone.encode_to_vec().into(),
                    headers: [("content-type".to_owned(), PAYLOAD_TYPE.to_owned())].into(),
                    event_time_ms: i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX),
                });
            }
        }
    }
    let mut hash = twox_hash::XxHash3_128::new();
    for m in &made {
        hash.write(&(m.payload.len() as u64).to_le_bytes());
        hash.write(&m.payload);
    }
    let request = hash.finish_128();
    for (position, m) in made.iter_mut().enumerate() {
        m.id = format!("otlp-{request:032x}-{position}");
    }
    made
}

/// An attribute's value as a key: strings as they are, numbers and booleans as written.
fn attribute_text(value: &Value) -> String {
    match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(n) => n.to_string(),
        Value::DoubleValue(x) => x.to_string(),
        Value::BoolValue(b) => b.to_string(),
        _ => String::new(),
    }
}

#[tonic::async_trait]
impl LogsService for OtlpLogs {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        match OtlpLogs::export(self, request.into_inner()).await {
            Ok(taken) => Ok(tonic::Response::new(taken.response())),
            Err(e) => Err(super::ingest::refuse_at(Door::Otlp, retryable(e))),
        }
    }
}

/// What an exporter may retry: all but a malformed request. A journal that needs an operator
/// becomes transient (the exporter drops what it may not retry; the operator is told by the
/// journal's own errors).
fn retryable(e: IngestError) -> IngestError {
    match e {
        IngestError::Failed(m) => IngestError::Transient(m),
        other => other,
    }
}

/// How an OTLP/HTTP body is encoded (its `Content-Type`); the answer uses the same.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn of(headers: &HeaderMap) -> Option<Encoding> {
        let media = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/x-protobuf" | "application/protobuf" => Some(Encoding::Protobuf),
            "application/json" => Some(Encoding::Json),
            _ => None,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// `google.rpc.Status`, the body of an OTLP/HTTP error.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// `POST /v1/logs` on the HTTP door.
pub(super) async fn http_export(
    door: &super::http::HttpDoor,
    otlp: &OtlpLogs,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // Errors before the encoding is known are answered in protobuf, the protocol's default.
    let encoding = Encoding::of(&headers);
    let answer_in = encoding.unwrap_or(Encoding::Protobuf);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(reason) = door.token.check_header(auth) {
        return refuse(
            answer_in,
            StatusCode::UNAUTHORIZED,
            tonic::Code::Unauthenticated,
            reason,
        );
    }
    let Some(encoding) = encoding else {
        return refuse(
            answer_in,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            tonic::Code::InvalidArgument,
            "Content-Type must be application/x-protobuf or application/json (OTLP/HTTP)",
        );
    };
    let body = match super::http::read_body(door, &headers, body).await {
        Ok(body) => body,
        Err(r) => {
            let code = match r.code {
                "resource_exhausted" => tonic::Code::ResourceExhausted,
                _ => tonic::Code::InvalidArgument,
            };
            return refuse(encoding, r.status, code, &r.reason);
        }
    };
    let request = match decode(encoding, &body) {
        Ok(request) => request,
        Err(reason) => {
            return refuse(
                encoding,
                StatusCode::BAD_REQUEST,
                tonic::Code::InvalidArgument,
                &reason,
            );
        }
    };
    answer(encoding, otlp.export(request).await)
}

/// The request a body holds, or why it holds none.
fn decode(encoding: Encoding, body: &[u8]) -> Result<ExportLogsServiceRequest, String> {
    match encoding {
        Encoding::Protobuf => ExportLogsServiceRequest::decode(body)
            .map_err(|e| format!("not an OTLP ExportLogsServiceRequest: {e}")),
        Encoding::Json => serde_json::from_slice(body)
            .map_err(|e| format!("not an OTLP ExportLogsServiceRequest in JSON: {e}")),
    }
}

/// What an OTLP/HTTP client is told of its export.
fn answer(encoding: Encoding, export: Result<Taken, IngestError>) -> Response {
    match export.map_err(retryable) {
        Ok(taken) => {
            let body = match encoding {
                Encoding::Protobuf => taken.response().encode_to_vec(),
                Encoding::Json => taken.json().to_string().into_bytes(),
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, encoding.content_type())],
                body,
            )
                .into_response()
        }
        Err(IngestError::Malformed(m)) => refuse(
            encoding,
            StatusCode::BAD_REQUEST,
            tonic::Code::InvalidArgument,
            &m,
        ),
        Err(IngestError::Full(m)) => refuse(
            encoding,
            StatusCode::TOO_MANY_REQUESTS,
            tonic::Code::ResourceExhausted,
            &m,
        ),
        Err(IngestError::Transient(m) | IngestError::Failed(m)) => refuse(
            encoding,
            StatusCode::SERVICE_UNAVAILABLE,
            tonic::Code::Unavailable,
            &m,
        ),
    }
}

/// An OTLP/HTTP refusal: `status` with a `google.rpc.Status` body, `Retry-After` on 429 and
/// 503, counted like every door's refusals.
fn refuse(encoding: Encoding, status: StatusCode, code: tonic::Code, reason: &str) -> Response {
    let label = match code {
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::ResourceExhausted => "resource_exhausted",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::Unauthenticated => "unauthenticated",
        _ => "internal",
    };
    metrics::counter!(crate::metrics::REQUESTS_REFUSED, "door" => "otlp", "code" => label)
        .increment(1);
    let rpc = RpcStatus {
        code: code as i32,
        message: reason.to_owned(),
    };
    let body = match encoding {
        Encoding::Protobuf => rpc.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&rpc).unwrap_or_default(),
    };
    let mut response = (
        status,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response();
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(super::http::RETRY_AFTER_SECONDS),
        );
    }
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
    use opentelemetry_proto::tonic::logs::v1::LogRecord;
    use opentelemetry_proto::tonic::resource::v1::Resource;

    use super::*;

    fn request(bodies: &[&str]) -> ExportLogsServiceRequest {
        let text = |s: &str| {
            Some(AnyValue {
                value: Some(Value::StringValue(s.to_owned())),
            })
        };
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: text("checkout"),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: bodies
                        .iter()
                        .map(|b| LogRecord {
                            observed_time_unix_nano: 1_700_000_000_999_000_000,
                            body: text(b),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                schema_url: String::new(),
            }],
        }
    }

    /// The ids are part of the contract: a retry after an upgrade must still be a duplicate.
    /// Should this value change, the payload encoding or the hash changed: that breaks dedup
    /// across an upgrade and must not ship.
    #[test]
    fn ids_are_the_requests_hash_and_the_records_position_and_do_not_change() {
        let made = messages(request(&["one", "two"]), "service.name");
        let ids: Vec<&str> = made.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "otlp-4cf83341bda537e2ee3b18d919247400-0",
                "otlp-4cf83341bda537e2ee3b18d919247400-1",
            ]
        );
        assert!(made.iter().all(|m| m.key == "checkout"));
        assert!(made.iter().all(|m| m.event_time_ms == 1_700_000_000_999));
        let again = messages(request(&["one", "two"]), "service.name");
        assert_eq!(made, again, "a retried export gives the same messages");
        let swapped = messages(request(&["two", "one"]), "service.name");
        assert!(
            swapped.iter().all(|m| !made.iter().any(|n| n.id == m.id)),
            "another order is another request"
        );
        let unkeyed = messages(request(&["one"]), "host.name");
        assert_eq!(unkeyed[0].key, "");
        let alone = LogsData::decode(&made[1].payload[..]).unwrap();
        let record = &alone.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(
            record.body,
            request(&["two"]).resource_logs[0].scope_logs[0].log_records[0].body
        );
    }
}
