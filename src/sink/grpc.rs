//! A `sidelog.v1.Sink` served by the next tier (`--sink http://host:port`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tonic::GrpcMethod;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic_prost::ProstCodec;

use super::{Sink, SinkError, SinkSetupError};
use crate::proto::{DeliverResponse, Message};
use crate::runtime::BoxFuture;

/// A `sidelog.v1.Sink` served by the next tier.
#[derive(Debug, Clone)]
pub struct GrpcSink {
    grpc: Grpc<Channel>,
}

impl GrpcSink {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, SinkSetupError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| SinkSetupError(format!("invalid sink URL {url:?}: {e}")))?
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        Ok(GrpcSink {
            grpc: Grpc::new(endpoint.connect_lazy()).max_encoding_message_size(usize::MAX),
        })
    }
}

impl Sink for GrpcSink {
    fn deliver(&self, batch: Arc<[Message]>) -> BoxFuture<'static, Result<(), SinkError>> {
        let mut grpc = self.grpc.clone();
        Box::pin(async move {
            grpc.ready()
                .await
                .map_err(|e| SinkError(format!("sink connection not ready: {e}")))?;
            let mut request = tonic::Request::new(SharedDeliverRequest::new(batch));
            request
                .extensions_mut()
                .insert(GrpcMethod::new("sidelog.v1.Sink", "Deliver"));
            let codec = ProstCodec::<SharedDeliverRequest, DeliverResponse>::default();
            grpc.unary(request, PathAndQuery::from_static(DELIVER_PATH), codec)
                .await
                .map(|_| ())
                .map_err(|status| SinkError(format!("sink answered {status}")))
        })
    }
}

/// `Sink/Deliver`, as the generated client calls it.
const DELIVER_PATH: &str = "/sidelog.v1.Sink/Deliver";

/// A `DeliverRequest` encoded straight from the lane's shared batch. The generated
/// `DeliverRequest` owns its messages, so sending one cloned every message of every batch
/// (its id, key and headers map: ~10 % of a replay's CPU). Same bytes on the wire:
/// `repeated Message messages = 1`. Each message's encoded length is computed once: encoding
/// asks for the request's length first and then prefixes every message with its own, and
/// the generated code computed it twice (~4 % of a replay's CPU).
#[derive(Debug)]
struct SharedDeliverRequest {
    messages: Arc<[Message]>,
    lengths: OnceLock<Vec<usize>>,
}

impl SharedDeliverRequest {
    fn new(messages: Arc<[Message]>) -> Self {
        SharedDeliverRequest {
            messages,
            lengths: OnceLock::new(),
        }
    }

    fn lengths(&self) -> &[usize] {
        use prost::Message as _;
        self.lengths
            .get_or_init(|| self.messages.iter().map(Message::encoded_len).collect())
    }
}

impl prost::Message for SharedDeliverRequest {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        use prost::encoding::{WireType, encode_key, encode_varint};
        for (message, &len) in self.messages.iter().zip(self.lengths()) {
            encode_key(1, WireType::LengthDelimited, buf);
            encode_varint(len as u64, buf);
            message.encode_raw(buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        if tag != 1 {
            return prost::encoding::skip_field(wire_type, tag, buf, ctx);
        }
        // Never on a hot path (sidelog only sends these): a copy per message decoded.
        let mut message = Message::default();
        prost::encoding::message::merge(wire_type, &mut message, buf, ctx)?;
        let mut messages = self.messages.to_vec();
        messages.push(message);
        *self = SharedDeliverRequest::new(messages.into());
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        use prost::encoding::{encoded_len_varint, key_len};
        self.lengths()
            .iter()
            .map(|&len| key_len(1) + encoded_len_varint(len as u64) + len)
            .sum()
    }

    fn clear(&mut self) {
        *self = SharedDeliverRequest::new(Arc::from([]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::DeliverRequest;
    use prost::Message as _;

    fn messages() -> Vec<Message> {
        (0..3)
            .map(|i| Message {
                id: format!("id-{i}"),
                key: if i == 1 { String::new() } else { "k".into() },
                payload: bytes::Bytes::from(vec![i as u8; 100 * i]),
                headers: [("sidelog-seq".to_owned(), i.to_string())].into(),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn a_shared_request_is_a_deliver_request_on_the_wire() {
        let owned = DeliverRequest {
            messages: messages(),
        };
        let shared = SharedDeliverRequest::new(messages().into());
        assert_eq!(shared.encoded_len(), owned.encoded_len());
        assert_eq!(shared.encode_to_vec(), owned.encode_to_vec());
        let empty = SharedDeliverRequest::new(Arc::from([]));
        assert_eq!(
            empty.encode_to_vec(),
            DeliverRequest::default().encode_to_vec()
        );
    }

    #[test]
    fn a_shared_request_decodes_what_it_encoded() {
        let bytes = DeliverRequest {
            messages: messages(),
        }
        .encode_to_vec();
        let mut decoded = SharedDeliverRequest::new(Arc::from([]));
        // Lengths taken before the merges must not outlive them.
        assert_eq!(decoded.encoded_len(), 0);
        decoded
            .merge(bytes.as_slice())
            .expect("a valid DeliverRequest");
        assert_eq!(&decoded.messages[..], &messages()[..]);
        assert_eq!(
            decoded.encode_to_vec(),
            bytes,
            "re-encoded after the merges"
        );
        decoded.clear();
        assert!(decoded.messages.is_empty());
        assert_eq!(decoded.encoded_len(), 0);
    }
}
