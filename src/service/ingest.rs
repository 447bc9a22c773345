//! The `sidelog.v1.Ingest` service: tonic glue around [`Pipeline::publish`], and the one place
//! where errors become gRPC statuses.
//!
//! `PublishStream` is pipelined: up to [`STREAM_PIPELINE`] requests of one stream are processed
//! at once, and their responses are sent in request order, one per request. An error ends the
//! stream with its status; every request before it has had its response.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use crate::pipeline::{Door, IngestError, Pipeline};
use crate::proto::ingest_server::Ingest;
use crate::proto::{PublishRequest, PublishResponse};

/// Requests of one `PublishStream` in process at once.
pub const STREAM_PIPELINE: usize = 64;

pub(super) fn count_refused(door: Door, code: &'static str) {
    metrics::counter!(crate::metrics::REQUESTS_REFUSED, "door" => door.label(), "code" => code)
        .increment(1);
}

/// How long a producer is asked to wait before it retries a request refused for now (gRPC's
/// `RetryInfo`, HTTP's `Retry-After`).
pub const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The gRPC status that refuses a whole request for `e`, counted in
/// `sidelog_requests_refused_total`.
pub(crate) fn refuse(e: IngestError) -> Status {
    refuse_at(Door::Grpc, e)
}

/// [`refuse`] for a request that came through `door`.
pub(crate) fn refuse_at(door: Door, e: IngestError) -> Status {
    count_refused(door, refusal_code(&e));
    status(e)
}

/// The code a refusal for `e` is counted under in `sidelog_requests_refused_total`.
pub(super) fn refusal_code(e: &IngestError) -> &'static str {
    match e {
        IngestError::Malformed(_) => "invalid_argument",
        IngestError::Full(_) => "resource_exhausted",
        IngestError::Transient(_) => "unavailable",
        IngestError::Failed(_) => "internal",
    }
}

/// The gRPC status that says `e`.
fn status(e: IngestError) -> Status {
    {
        match e {
            IngestError::Malformed(m) => Status::invalid_argument(m),
            // Backlog or disk full: retry later, and the status says when (`RetryInfo`), which
            // tells it apart from a request too large (RESOURCE_EXHAUSTED without it: never
            // retry).
            IngestError::Full(m) => retry_later(tonic::Code::ResourceExhausted, m),
            IngestError::Transient(m) => retry_later(tonic::Code::Unavailable, m),
            IngestError::Failed(m) => Status::internal(m),
        }
    }
}

/// A status with `google.rpc.RetryInfo` asking for a retry after [`RETRY_AFTER`].
fn retry_later(code: tonic::Code, message: String) -> Status {
    use tonic_types::{ErrorDetails, StatusExt as _};
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
    )
}

/// Whether `status` asks to be retried later (it carries `RetryInfo`): a client's test.
pub fn asks_for_retry(status: &Status) -> bool {
    use tonic_types::StatusExt as _;
    status.get_details_retry_info().is_some()
}

#[derive(Debug, Clone)]
pub struct IngestService {
    pipeline: Arc<Pipeline>,
}

impl IngestService {
    pub fn new(pipeline: Arc<Pipeline>) -> Self {
        IngestService { pipeline }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<PublishResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let acks = self
            .pipeline
            .publish(request.into_inner().messages, Door::Grpc)
            .await
            .map_err(refuse)?;
        Ok(Response::new(PublishResponse { acks }))
    }

    type PublishStreamStream = ResponseStream;

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (out_tx, out_rx) = mpsc::channel::<Result<PublishResponse, Status>>(STREAM_PIPELINE);
        // Handles of the requests in process, in arrival order; the bound is the pipeline depth.
        let (order_tx, mut order_rx) = mpsc::channel(STREAM_PIPELINE);
        let pipeline = self.pipeline.clone();
        crate::runtime::spawn(async move {
            loop {
                let next = match inbound.message().await {
                    Ok(Some(req)) => {
                        let pipeline = pipeline.clone();
                        Ok(crate::runtime::spawn(async move {
                            pipeline.publish(req.messages, Door::Grpc).await
                        }))
                    }
                    Ok(None) => break,
                    Err(status) => Err(oversize_is_exhausted(Door::Grpc, status)),
                };
                let failed = next.is_err();
                if order_tx.send(next).await.is_err() || failed {
                    break;
                }
            }
        });
        crate::runtime::spawn(async move {
            while let Some(next) = order_rx.recv().await {
                let response = match next {
                    Ok(handle) => match handle.await {
                        Ok(Ok(acks)) => Ok(PublishResponse { acks }),
                        Ok(Err(e)) => Err(refuse(e)),
                        Err(e) => Err(Status::internal(format!("publish task failed: {e}"))),
                    },
                    Err(status) => Err(status),
                };
                let failed = response.is_err();
                if out_tx.send(response).await.is_err() {
                    debug!("publish stream closed by the client");
                    break;
                }
                if failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

/// tonic's decoder refuses a message over `max_request_bytes` with OUT_OF_RANGE, before the
/// service sees it. sidelog answers RESOURCE_EXHAUSTED for it, as for every limit (grpc-go's
/// code for the same case), and counts it with the other refusals.
fn oversize_is_exhausted(door: Door, status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange && status.message().contains(TONIC_TOO_LARGE) {
        count_refused(door, "resource_exhausted");
        Status::resource_exhausted(format!("{} (max_request_bytes)", status.message()))
    } else {
        status
    }
}

/// The start of the message of tonic's decoder when a request is over its size limit.
const TONIC_TOO_LARGE: &str = "decoded message length too large";

/// A door's gRPC service as it is served: behind the bearer token, its oversize refusals
/// counted for `door`.
pub fn behind_token<S>(
    service: S,
    token: &super::TokenCheck,
    door: Door,
) -> OversizeRefusals<tonic::service::interceptor::InterceptedService<S, super::TokenCheck>> {
    OversizeRefusals(
        tonic::service::interceptor::InterceptedService::new(service, token.clone()),
        door,
    )
}

/// A door's service behind tonic's decoder, turning a unary request refused for its size into
/// RESOURCE_EXHAUSTED and counting it for the door (see [`oversize_is_exhausted`]): tonic
/// answers it in the response headers without calling the service.
#[derive(Debug, Clone)]
pub struct OversizeRefusals<S>(pub S, pub Door);

impl<S: tonic::server::NamedService> tonic::server::NamedService for OversizeRefusals<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> tonic::codegen::Service<tonic::codegen::http::Request<B>> for OversizeRefusals<S>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<B>,
            Response = tonic::codegen::http::Response<R>,
        >,
    R: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<S::Response, S::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        let response = self.0.call(request);
        let door = self.1;
        Box::pin(async move {
            let mut response = response.await?;
            // Only a status tonic put in the headers (a refusal before the service) is looked at.
            if let Some(status) = Status::from_header_map(response.headers())
                .filter(|s| s.code() == tonic::Code::OutOfRange)
            {
                let mapped = oversize_is_exhausted(door, status);
                if mapped.code() != tonic::Code::OutOfRange {
                    let headers = response.headers_mut();
                    headers.remove("grpc-status");
                    headers.remove("grpc-message");
                    // Writing a status's headers fails only for a message that cannot be
                    // percent-encoded, which this one (ASCII) can.
                    let _ = mapped.add_header(headers);
                }
            }
            Ok(response)
        })
    }
}
