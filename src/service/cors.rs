//! CORS for browsers, one setting (`http_cors_origins`) for both doors a browser can use: the
//! HTTP door (`fetch`, `sendBeacon`) and gRPC-Web on the gRPC listener. Off by default: a
//! browser page on another origin can then publish only through a proxy of its own origin.

use std::time::Duration;

use axum::http::{HeaderName, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::CorsOrigins;

/// Which door the layer is for: what a request may carry and what a page may read back.
#[derive(Debug, Clone, Copy)]
pub enum For {
    /// `POST /v1/publish` and `/v1/beacon`: JSON in, JSON out, `Retry-After` readable.
    Http,
    /// gRPC-Web: the headers grpc-web's JS stubs send, and the status trailers a page must read
    /// (they come as headers when the answer is an error only).
    GrpcWeb,
}

/// The layer `origins` asks for: none (unset or an empty list), any, or these.
pub fn layer(origins: Option<&CorsOrigins>, door: For) -> Option<CorsLayer> {
    let allow = match origins? {
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) if list.is_empty() => return None,
        CorsOrigins::List(list) => AllowOrigin::list(list.iter().cloned()),
    };
    let layer = CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::POST])
        .max_age(Duration::from_secs(600));
    Some(match door {
        For::Http => layer
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
            .expose_headers([header::RETRY_AFTER]),
        For::GrpcWeb => layer
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                HeaderName::from_static("x-grpc-web"),
                HeaderName::from_static("x-user-agent"),
                HeaderName::from_static("grpc-timeout"),
            ])
            .expose_headers([
                HeaderName::from_static("grpc-status"),
                HeaderName::from_static("grpc-message"),
                HeaderName::from_static("grpc-status-details-bin"),
            ]),
    })
}
