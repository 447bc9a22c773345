//! The doors and the admin service: `sidelog.v1.Ingest` over gRPC and gRPC-Web for producers
//! (`ingest.rs`), the HTTP door (`http.rs`, CORS in `cors.rs`, TLS in `tls.rs`), OpenTelemetry
//! logs on both (`otlp.rs`), the forward door for Fluentd and Fluent Bit (`forward/`), the MQTT
//! door (`mqtt.rs`), and `sidelog.v1.Admin` for operators and `sidelog inspect` (`admin.rs`);
//! gRPC and HTTP behind the same optional bearer token (`auth.rs`). The pipeline's errors
//! become each door's own answers (`tonic::Status`, HTTP statuses, withheld PUBACKs and
//! forward acks) here and nowhere else.

mod admin;
mod auth;
pub mod cors;
pub mod forward;
pub mod http;
mod ingest;
pub mod mqtt;
pub mod otlp;
pub mod tls;

pub use admin::{AdminService, Live, MAX_LIST_LIMIT};
pub use auth::TokenCheck;
pub use ingest::{IngestService, RETRY_AFTER, asks_for_retry, behind_token};

/// The dead letter for a message `door` refused before intake (a limit, a malformed payload),
/// with why: the doors whose clients cannot be told per message (MQTT, forward) keep such
/// messages in the dead-letter table instead of dropping them.
fn refused_letter(
    door: &str,
    message: crate::proto::Message,
    reason: &str,
) -> crate::journal::NewDeadLetter {
    crate::journal::NewDeadLetter {
        kind: crate::proto::journal::dead_letter::Kind::Input,
        message,
        reason: format!("refused at the {door} door: {reason}"),
        attempts: 0,
        input_seq: None,
        remove: None,
        complete_input: None,
    }
}
