//! Producers for the shippers' doors: an OpenTelemetry exporter (`LogsService/Export` over
//! gRPC, one log record per message) and a Fluent Bit-like forward client (PackedForward
//! chunks, waiting for each `{ack: chunk}`). Each record carries its bench id, so that no two
//! requests are the same (an OTLP request's ids come from its content).

use std::net::SocketAddr;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use rmpv::Value;
use sidelog::proto::Message;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::Channel;

use super::load::Send1;

fn text(s: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(s.to_owned())),
    })
}

/// An OTLP exporter: one request per batch, the first message's key as `service.name`.
#[derive(Clone)]
pub(super) struct OtlpPublisher {
    client: LogsServiceClient<Channel>,
}

impl OtlpPublisher {
    pub(super) fn new(channel: Channel) -> Self {
        OtlpPublisher {
            client: LogsServiceClient::new(channel),
        }
    }
}

impl Send1 for OtlpPublisher {
    async fn send(&mut self, messages: Vec<Message>) -> Result<usize, ()> {
        let n = messages.len();
        let service = messages.first().map(|m| m.key.clone()).unwrap_or_default();
        let records = messages
            .into_iter()
            .map(|m| LogRecord {
                body: Some(AnyValue {
                    value: Some(any_value::Value::BytesValue(m.payload.to_vec())),
                }),
                attributes: m
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .chain([("bench.id", m.id.as_str())])
                    .map(|(k, v)| KeyValue {
                        key: k.to_owned(),
                        value: text(v),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: text(&service),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                schema_url: String::new(),
            }],
        };
        let answer = self.client.export(request).await.map_err(|_| ())?;
        let rejected = answer
            .into_inner()
            .partial_success
            .map_or(0, |p| p.rejected_log_records.max(0) as usize);
        Ok(n.saturating_sub(rejected))
    }
}

/// A forward client: one connection, one PackedForward chunk per batch, acked.
#[derive(Clone)]
pub(super) struct ForwardPublisher {
    addr: SocketAddr,
    conn: Arc<tokio::sync::Mutex<Option<tokio::net::TcpStream>>>,
}

impl ForwardPublisher {
    pub(super) fn new(addr: SocketAddr) -> Self {
        ForwardPublisher {
            addr,
            conn: Arc::default(),
        }
    }
}

fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = rmpv::encode::write_value(&mut out, value);
    out
}

impl Send1 for ForwardPublisher {
    async fn send(&mut self, messages: Vec<Message>) -> Result<usize, ()> {
        let n = messages.len();
        let Some(chunk) = messages.first().map(|m| m.id.clone()) else {
            return Ok(0);
        };
        let tag = messages[0].key.clone();
        let mut entries = Vec::new();
        for m in messages {
            let mut record = vec![
                (Value::from("log"), Value::Binary(m.payload.to_vec())),
                (Value::from("id"), Value::from(m.id)),
            ];
            record.extend(
                m.headers
                    .into_iter()
                    .map(|(k, v)| (Value::from(k), Value::from(v))),
            );
            entries.extend(encode(&Value::Array(vec![
                Value::from(0),
                Value::Map(record),
            ])));
        }
        let frame = encode(&Value::Array(vec![
            Value::from(tag),
            Value::Binary(entries),
            Value::Map(vec![(Value::from("chunk"), Value::from(chunk.as_str()))]),
        ]));
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|_| ())?;
            let _ = stream.set_nodelay(true);
            *conn = Some(stream);
        }
        let stream = conn.as_mut().ok_or(())?;
        let answered = async {
            stream.write_all(&frame).await.map_err(|_| ())?;
            let mut buf = Vec::new();
            loop {
                let mut slice = &buf[..];
                if let Ok(value) = rmpv::decode::read_value(&mut slice) {
                    return Ok(value);
                }
                let mut more = [0u8; 256];
                match stream.read(&mut more).await {
                    Ok(0) | Err(_) => return Err(()),
                    Ok(k) => buf.extend_from_slice(&more[..k]),
                }
            }
        };
        match answered.await {
            Ok(ack)
                if ack.as_map().is_some_and(|m| {
                    m.iter()
                        .any(|(k, v)| k.as_str() == Some("ack") && v.as_str() == Some(&chunk))
                }) =>
            {
                Ok(n)
            }
            _ => {
                // No ack: the connection is closed; the next request opens another.
                *conn = None;
                Err(())
            }
        }
    }
}
