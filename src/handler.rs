//! The handler client: a `sidelog.v1.Handler` served by the ingest server, behind the core's
//! [`Handler`] seam.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::pipeline::{Call, Handler, HandlerError};
use crate::proto::handler_client::HandlerClient;
use crate::proto::{HandleRequest, Message};
use crate::runtime::BoxFuture;

/// A `sidelog.v1.Handler` served by the ingest server.
#[derive(Debug, Clone)]
pub struct GrpcHandler {
    client: HandlerClient<Channel>,
}

impl GrpcHandler {
    /// A client for `url` (`http://host:port`). Connects lazily and reconnects by itself.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let endpoint = Endpoint::from_shared(url.to_owned())
            .with_context(|| format!("invalid handler URL {url:?}"))?
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        Ok(GrpcHandler {
            client: HandlerClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(usize::MAX),
        })
    }
}

impl Handler for GrpcHandler {
    fn handle(
        &self,
        message: Message,
        attempt: u32,
        call: Call,
    ) -> BoxFuture<'_, Result<Vec<Message>, HandlerError>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            let request = HandleRequest {
                message: Some(message),
                attempt,
                replay: call == Call::Replay,
            };
            match client.handle(request).await {
                Ok(response) => Ok(response.into_inner().outputs),
                Err(status) => match status.code() {
                    tonic::Code::InvalidArgument
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::OutOfRange => Err(HandlerError::Refused(status.to_string())),
                    _ => Err(HandlerError::Failed(status.to_string())),
                },
            }
        })
    }
}
