//! A `sidelog.v1.Sink` served by the next tier (`--sink http://host:port`).

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use super::{Sink, SinkError, SinkSetupError};
use crate::proto::sink_client::SinkClient;
use crate::proto::{DeliverRequest, Message};
use crate::runtime::BoxFuture;

/// A `sidelog.v1.Sink` served by the next tier.
#[derive(Debug, Clone)]
pub struct GrpcSink {
    client: SinkClient<Channel>,
}

impl GrpcSink {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, SinkSetupError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| SinkSetupError(format!("invalid sink URL {url:?}: {e}")))?
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        Ok(GrpcSink {
            client: SinkClient::new(endpoint.connect_lazy()).max_encoding_message_size(usize::MAX),
        })
    }
}

impl Sink for GrpcSink {
    fn deliver(&self, batch: Arc<[Message]>) -> BoxFuture<'static, Result<(), SinkError>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            let request = DeliverRequest {
                messages: batch.to_vec(),
            };
            client
                .deliver(request)
                .await
                .map(|_| ())
                .map_err(|status| SinkError(format!("sink answered {status}")))
        })
    }
}
