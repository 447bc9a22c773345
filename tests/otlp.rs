//! The OTLP door against the real binary, with requests made by OpenTelemetry's own
//! definitions: `LogsService/Export` over gRPC, `POST /v1/logs` in protobuf and in JSON; one
//! message per record, ids that make a retried export `DUPLICATE`, OTLP's answers (partial
//! success, retryable refusals), and acked records that survive a SIGKILL.
//! (`tests/services/otlp.rs` does the same with the OpenTelemetry SDK's exporters.)

mod common;

use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;

fn text(s: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(s.to_owned())),
    })
}

/// An export of `bodies` per service, each record's body its text.
fn export(services: &[(&str, &[&str])]) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: services
            .iter()
            .map(|(service, bodies)| ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: text(service),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: None,
                    log_records: bodies
                        .iter()
                        .map(|b| LogRecord {
                            time_unix_nano: 1_700_000_000_123_000_000,
                            severity_number: 9,
                            severity_text: "INFO".into(),
                            body: text(b),
                            ..Default::default()
                        })
                        .collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

async fn post_logs(
    port: std::net::SocketAddr,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Option<String>, Vec<u8>) {
    let response = reqwest::Client::new()
        .post(format!("http://{port}/v1/logs"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("the HTTP door answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        status,
        retry_after,
        response.bytes().await.unwrap().to_vec(),
    )
}

/// gRPC and HTTP (protobuf and JSON) exports are acked once durable, one message per record
/// keyed by `service.name`; a retried export is stored once; a record over
/// `max_message_bytes` is a partial success; a full backlog is retryable; and what was acked
/// is at the sink after a SIGKILL and a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_exports_are_acked_once_durable_deduplicated_and_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let port_text = port.to_string();
    let args = [
        "--mode",
        "hml",
        "--http-listen",
        &port_text,
        "--limits-max-message-bytes",
        "2048",
        // An export larger than this goes in parts.
        "--limits-max-messages-per-request",
        "3",
        "--limits-max-backlog-bytes",
        "6000",
    ];
    // The sink is down: what is acked stays in the journal until the restart.
    let down = [&args[..], &["--sink", "http://127.0.0.1:1"]].concat();
    let mut sidelog = Sidelog::new(&data, &down);
    sidelog.start().await;
    let mut grpc = LogsServiceClient::connect(sidelog.url()).await.unwrap();

    let first = export(&[("checkout", &["c1", "c2", "c3", "c4"]), ("cart", &["k1"])]);
    let answer = grpc.export(first.clone()).await.unwrap().into_inner();
    assert_eq!(answer.partial_success, None);
    // The exporter did not hear the answer and sends the same request again.
    let again = grpc.export(first).await.unwrap().into_inner();
    assert_eq!(again.partial_success, None);

    // A record over max_message_bytes is refused, the other taken: a partial success.
    let big = "x".repeat(4096);
    let answer = grpc
        .export(export(&[("checkout", &["c5", &big])]))
        .await
        .unwrap()
        .into_inner();
    let partial = answer.partial_success.expect("a partial success");
    assert_eq!(partial.rejected_log_records, 1);
    assert!(
        partial.error_message.contains("max_message_bytes"),
        "{partial:?}"
    );

    // OTLP/HTTP in protobuf, and the same records' retry.
    let proto = export(&[("web", &["w1", "w2"])]).encode_to_vec();
    let (code, _, body) = post_logs(port, "application/x-protobuf", proto.clone()).await;
    assert_eq!(code, 200);
    assert_eq!(
        ExportLogsServiceResponse::decode(&body[..]).unwrap(),
        ExportLogsServiceResponse::default()
    );
    let (code, _, _) = post_logs(port, "application/x-protobuf", proto).await;
    assert_eq!(code, 200);
    // OTLP/JSON as the specification writes it: hex trace ids, 64-bit integers as strings.
    let json = r#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"api"}}]},
        "scopeLogs":[{"scope":{"name":"my.library","version":"1.0"},"logRecords":[{
        "timeUnixNano":"1700000000123000000","severityNumber":17,"severityText":"ERROR",
        "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
        "body":{"stringValue":"j1"},"attributes":[{"key":"http.status","value":{"intValue":"503"}}]}]}]}]}"#;
    let (code, _, body) = post_logs(port, "application/json", json.into()).await;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(answer.get("partialSuccess").is_none(), "{answer}");

    // Refusals: not OTLP (400, a google.rpc.Status), another media type (415), a full
    // backlog (429 with Retry-After; gRPC: RESOURCE_EXHAUSTED with RetryInfo).
    let (code, _, body) =
        post_logs(port, "application/json", b"{\"resourceLogs\":7}".to_vec()).await;
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((code, status["code"].as_i64()), (400, Some(3)), "{status}");
    let (code, _, _) = post_logs(port, "text/plain", b"hello".to_vec()).await;
    assert_eq!(code, 415);
    // Logs only: traces and metrics are not taken.
    let traces = reqwest::Client::new()
        .post(format!("http://{port}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(traces.status().as_u16(), 404);
    let filler: Vec<String> = (0..6).map(|i| format!("{i}{}", "f".repeat(1500))).collect();
    let filler: Vec<&str> = filler.iter().map(String::as_str).collect();
    let mut full = None;
    for part in filler.chunks(2) {
        let proto = export(&[("fill", part)]).encode_to_vec();
        let (code, retry_after, _) = post_logs(port, "application/x-protobuf", proto).await;
        if code != 200 {
            full = Some((code, retry_after));
            break;
        }
    }
    assert_eq!(full, Some((429, Some("1".to_owned()))));
    let refused = grpc
        .export(export(&[("cart", &["too much"])]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(sidelog::asks_for_retry(&refused), "{refused:?}");

    sidelog.kill9().await;
    let mut sidelog = Sidelog::new(&data, &args);
    sidelog.start().await;
    let out = data.join("out");
    let want = ["c1", "c2", "c3", "c4", "k1", "c5", "w1", "w2", "j1"];
    let arrived = eventually(Duration::from_secs(20), || {
        let found = otlp_at_sink(&out);
        want.iter().all(|b| found.contains_key(*b))
    })
    .await;
    let found = otlp_at_sink(&out);
    assert!(arrived, "acked records missing at the sink: {found:?}");
    for body in want {
        let OtlpRecord {
            ids,
            key,
            event_time_ms,
        } = &found[body];
        assert_eq!(
            ids.len(),
            1,
            "record {body} stored under more than one id: {ids:?}"
        );
        assert_eq!(*event_time_ms, 1_700_000_000_123);
        let service = match body.as_bytes()[0] {
            b'c' => "checkout",
            b'k' => "cart",
            b'w' => "web",
            _ => "api",
        };
        assert_eq!(key, service, "record {body}'s key");
    }
    assert!(!found.contains_key(&big), "refused, never stored");
    assert!(!found.contains_key("too much"), "refused, never stored");
    sidelog.kill9().await;
}

/// With `auth_token_file`, both OTLP transports ask for the bearer token, as every door does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_asks_for_the_token_on_both_transports() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "otlp-token-0123456789\n").unwrap();
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
            "2048",
        ],
    );
    sidelog.start().await;
    let request = export(&[("svc", &["t1"])]);
    let mut grpc = LogsServiceClient::connect(sidelog.url()).await.unwrap();
    let refused = grpc.export(request.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut with_token = tonic::Request::new(request.clone());
    with_token.metadata_mut().insert(
        "authorization",
        "Bearer otlp-token-0123456789".parse().unwrap(),
    );
    assert_eq!(
        grpc.export(with_token)
            .await
            .unwrap()
            .into_inner()
            .partial_success,
        None
    );
    let (code, _, body) = post_logs(port, "application/x-protobuf", request.encode_to_vec()).await;
    assert_eq!(code, 401, "{}", String::from_utf8_lossy(&body));
    let answer = reqwest::Client::new()
        .post(format!("http://{port}/v1/logs"))
        .header("content-type", "application/x-protobuf")
        .header("authorization", "Bearer otlp-token-0123456789")
        .body(request.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    // A body over max_request_bytes: 413, with OTLP's google.rpc.Status (not retried).
    let big = export(&[("svc", &[&"b".repeat(8000)])]);
    let answer = reqwest::Client::new()
        .post(format!("http://{port}/v1/logs"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer otlp-token-0123456789")
        .body(serde_json::to_vec(&big).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 413);
    let status: serde_json::Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
    assert_eq!(status["code"], 8, "RESOURCE_EXHAUSTED: {status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("max_request_bytes")
    );
    sidelog.kill9().await;
}
