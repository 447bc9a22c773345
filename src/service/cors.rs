//! CORS for browsers, one setting (`http_cors_origins`) for both doors a browser can use: the
//! HTTP door (`fetch`, `sendBeacon`) and gRPC-Web on the gRPC listener. Off by default: a
//! browser page on another origin can then publish only through a proxy of its own origin.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Which door the layer is for: what a request may carry and what a page may read back.
#[derive(Debug, Clone, Copy)]
pub enum For {
    /// `POST /v1/publish` and `/v1/beacon`: JSON in, JSON out, `Retry-After` readable.
    Http,
    /// gRPC-Web: the headers grpc-web's JS stubs send, and the status trailers a page must read
    /// (they come as headers when the answer is an error only).
    GrpcWeb,
}

/// The layer `origins` asks for: none (unset or empty), any (`*`), or a comma-separated list.
pub fn layer(origins: Option<&str>, door: For) -> Result<Option<CorsLayer>, String> {
    let Some(origins) = origins.map(str::trim).filter(|o| !o.is_empty()) else {
        return Ok(None);
    };
    let allow = if origins == "*" {
        AllowOrigin::any()
    } else {
        let list = origins
            .split(',')
            .map(|o| {
                HeaderValue::from_str(o.trim())
                    .map_err(|_| format!("http_cors_origins: {o:?} is not a valid origin"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    let layer = CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::POST])
        .max_age(Duration::from_secs(600));
    Ok(Some(match door {
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
    }))
}
