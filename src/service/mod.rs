//! The gRPC services sidelog serves: `sidelog.v1.Ingest` for producers (`ingest.rs`) and
//! `sidelog.v1.Admin` for operators and `sidelog inspect` (`admin.rs`), both behind the same
//! optional bearer token (`auth.rs`). Errors become `tonic::Status` here and nowhere else.

mod admin;
mod auth;
pub mod cors;
pub mod http;
mod ingest;
pub mod mqtt;

pub use admin::{AdminService, Live, MAX_LIST_LIMIT};
pub use auth::TokenCheck;
pub use ingest::{IngestService, OversizeRefusals, RETRY_AFTER, asks_for_retry};
