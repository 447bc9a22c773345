//! A `sidelog.v1.Sink` served by the next tier (`--sink http://host:port`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tonic::GrpcMethod;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic_prost::ProstCodec;

use super::{Batch, Receipt, SEQ_HEADER, Sink, SinkError, SinkSetupError, set_seq_header};
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
            .map_err(|e| SinkSetupError::caused(format!("invalid sink URL {url:?}"), e))?
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        Ok(GrpcSink {
            grpc: Grpc::new(endpoint.connect_lazy()).max_encoding_message_size(usize::MAX),
        })
    }
}

impl Sink for GrpcSink {
    fn deliver(&self, batch: Batch) -> BoxFuture<'static, Result<Receipt, SinkError>> {
        let mut grpc = self.grpc.clone();
        Box::pin(async move {
            grpc.ready()
                .await
                .map_err(|e| SinkError::retry(format!("sink connection not ready: {e}")))?;
            let mut request = tonic::Request::new(SharedDeliverRequest::new(batch));
            request
                .extensions_mut()
                .insert(GrpcMethod::new("sidelog.v1.Sink", "Deliver"));
            let codec = ProstCodec::<SharedDeliverRequest, DeliverResponse>::default();
            grpc.unary(request, PathAndQuery::from_static(DELIVER_PATH), codec)
                .await
                .map(|_| Receipt::none())
                .map_err(|status| {
                    let reason = format!("sink answered {status}");
                    match status.code() {
                        // The next tier says the batch itself is wrong: no retry heals that.
                        tonic::Code::InvalidArgument
                        | tonic::Code::FailedPrecondition
                        | tonic::Code::OutOfRange => SinkError::refused(reason),
                        _ => SinkError::retry(reason),
                    }
                })
        })
    }

    fn writes_seq_header(&self) -> bool {
        true
    }
}

/// `Sink/Deliver`, as the generated client calls it.
const DELIVER_PATH: &str = "/sidelog.v1.Sink/Deliver";

/// A `DeliverRequest` encoded straight from the lane's shared batch, each message with its
/// `sidelog-seq` header. The generated `DeliverRequest` owns its messages, so sending one cloned
/// every message of every batch (its id, key and headers map: ~10 % of a replay's CPU); and the
/// header, inserted into each message's map, cost two strings and a map node per message. Here
/// the header is one more map entry (field 4) written after the message's own fields: the same
/// message to any protobuf decoder (map entries may come in any order). Each message's encoded
/// length is computed once: encoding asks for the request's length first and then prefixes
/// every message with its own.
#[derive(Debug)]
struct SharedDeliverRequest {
    batch: Batch,
    /// Per message, computed once.
    encoded: OnceLock<Vec<Encoded>>,
}

#[derive(Debug)]
struct Encoded {
    /// A copy with the header replaced, when the message came with a `sidelog-seq` of its own
    /// (the rare slow path: a producer set it); otherwise the message is encoded as it is.
    replaced: Option<Message>,
    /// The header to write after the message's fields, if any: the sequence, and the length of
    /// its map entry.
    seq_entry: Option<(u64, usize)>,
    /// The whole encoded length, header included.
    len: usize,
}

/// The map of headers is `Message` field 4; a map entry's key is field 1, its value field 2.
const HEADERS_FIELD: u32 = 4;

impl SharedDeliverRequest {
    fn new(batch: Batch) -> Self {
        SharedDeliverRequest {
            batch,
            encoded: OnceLock::new(),
        }
    }

    fn encoded(&self) -> &[Encoded] {
        use prost::Message as _;
        self.encoded.get_or_init(|| {
            let seqs = self.batch.seqs.iter().copied();
            self.batch
                .messages
                .iter()
                .zip(seqs.chain(std::iter::repeat(None)))
                .map(|(message, seq)| match seq {
                    Some(seq) if message.headers.contains_key(SEQ_HEADER) => {
                        let mut replaced = message.clone();
                        set_seq_header(&mut replaced, seq);
                        Encoded {
                            len: replaced.encoded_len(),
                            replaced: Some(replaced),
                            seq_entry: None,
                        }
                    }
                    Some(seq) => {
                        use prost::encoding::{encoded_len_varint, key_len};
                        let entry = seq_entry_len(seq);
                        Encoded {
                            replaced: None,
                            seq_entry: Some((seq, entry)),
                            len: message.encoded_len()
                                + key_len(HEADERS_FIELD)
                                + encoded_len_varint(entry as u64)
                                + entry,
                        }
                    }
                    None => Encoded {
                        replaced: None,
                        seq_entry: None,
                        len: message.encoded_len(),
                    },
                })
                .collect()
        })
    }
}

/// The length of the `sidelog-seq` map entry (key and value, without its own field key and
/// length prefix).
fn seq_entry_len(seq: u64) -> usize {
    use prost::encoding::{encoded_len_varint, key_len};
    let value_len = itoa::Buffer::new().format(seq).len();
    key_len(1)
        + encoded_len_varint(SEQ_HEADER.len() as u64)
        + SEQ_HEADER.len()
        + key_len(2)
        + encoded_len_varint(value_len as u64)
        + value_len
}

impl prost::Message for SharedDeliverRequest {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        use prost::encoding::{WireType, encode_key, encode_varint};
        fn delimited(tag: u32, bytes: &[u8], buf: &mut impl prost::bytes::BufMut) {
            encode_key(tag, WireType::LengthDelimited, buf);
            encode_varint(bytes.len() as u64, buf);
            buf.put_slice(bytes);
        }
        for (message, encoded) in self.batch.messages.iter().zip(self.encoded()) {
            encode_key(1, WireType::LengthDelimited, buf);
            encode_varint(encoded.len as u64, buf);
            encoded.replaced.as_ref().unwrap_or(message).encode_raw(buf);
            if let Some((seq, entry_len)) = encoded.seq_entry {
                encode_key(HEADERS_FIELD, WireType::LengthDelimited, buf);
                encode_varint(entry_len as u64, buf);
                delimited(1, SEQ_HEADER.as_bytes(), buf);
                delimited(2, itoa::Buffer::new().format(seq).as_bytes(), buf);
            }
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
        // Never on a hot path (sidelog only sends these): a copy per message decoded. A decoded
        // message's sequence stays in its headers.
        let mut message = Message::default();
        prost::encoding::message::merge(wire_type, &mut message, buf, ctx)?;
        let mut messages = self.batch.messages.to_vec();
        messages.push(message);
        let seqs = vec![None; messages.len()];
        *self = SharedDeliverRequest::new(Batch {
            messages: messages.into(),
            seqs: seqs.into(),
        });
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        use prost::encoding::{encoded_len_varint, key_len};
        self.encoded()
            .iter()
            .map(|e| key_len(1) + encoded_len_varint(e.len as u64) + e.len)
            .sum()
    }

    fn clear(&mut self) {
        *self = SharedDeliverRequest::new(Batch {
            messages: Arc::from([]),
            seqs: Arc::from([]),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::DeliverRequest;
    use prost::Message as _;

    /// Messages as a lane hands them over, and each one's sequence: no headers, other headers,
    /// a producer's own `sidelog-seq` (replaced), none at all (mode `none`), empty fields.
    fn batch() -> Batch {
        let message = |i: usize, headers: &[(&str, &str)]| Message {
            id: format!("id-{i}"),
            key: if i == 1 { String::new() } else { "k".into() },
            payload: bytes::Bytes::from(vec![i as u8; 100 * i]),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            event_time_ms: i as i64,
        };
        Batch {
            messages: vec![
                message(0, &[]),
                message(1, &[("a", "1"), ("z", "2")]),
                message(2, &[(SEQ_HEADER, "999"), ("trace", "t")]),
                message(3, &[("a", "1")]),
                message(4, &[]),
            ]
            .into(),
            seqs: vec![Some(7), Some(128), Some(u64::MAX), None, Some(0)].into(),
        }
    }

    /// What a lane would send to a sink that does not write the header itself.
    fn with_headers(batch: &Batch) -> Vec<Message> {
        batch
            .messages
            .iter()
            .zip(batch.seqs.iter())
            .map(|(m, seq)| {
                let mut m = m.clone();
                if let Some(seq) = seq {
                    set_seq_header(&mut m, *seq);
                }
                m
            })
            .collect()
    }

    #[test]
    fn a_shared_request_decodes_as_the_deliver_request_with_headers() {
        let shared = SharedDeliverRequest::new(batch());
        let bytes = shared.encode_to_vec();
        assert_eq!(shared.encoded_len(), bytes.len());
        let decoded = DeliverRequest::decode(bytes.as_slice()).expect("a valid DeliverRequest");
        assert_eq!(decoded.messages, with_headers(&batch()));
        assert_eq!(
            decoded.messages[2].headers[SEQ_HEADER],
            u64::MAX.to_string()
        );
        assert!(!decoded.messages[3].headers.contains_key(SEQ_HEADER));

        // Without sequences it is the generated request, byte for byte.
        let plain = batch();
        let none = SharedDeliverRequest::new(Batch {
            seqs: vec![None; plain.len()].into(),
            ..plain.clone()
        });
        let owned = DeliverRequest {
            messages: plain.messages.to_vec(),
        };
        assert_eq!(none.encoded_len(), owned.encoded_len());
        assert_eq!(none.encode_to_vec(), owned.encode_to_vec());
        let empty = SharedDeliverRequest::new(Batch {
            messages: Arc::from([]),
            seqs: Arc::from([]),
        });
        assert_eq!(
            empty.encode_to_vec(),
            DeliverRequest::default().encode_to_vec()
        );
    }

    #[test]
    fn a_shared_request_decodes_what_it_encoded() {
        let bytes = DeliverRequest {
            messages: with_headers(&batch()),
        }
        .encode_to_vec();
        let mut decoded = SharedDeliverRequest::new(Batch {
            messages: Arc::from([]),
            seqs: Arc::from([]),
        });
        // Lengths taken before the merges must not outlive them.
        assert_eq!(decoded.encoded_len(), 0);
        decoded
            .merge(bytes.as_slice())
            .expect("a valid DeliverRequest");
        assert_eq!(&decoded.batch.messages[..], &with_headers(&batch())[..]);
        assert_eq!(
            decoded.encode_to_vec(),
            bytes,
            "re-encoded after the merges"
        );
        decoded.clear();
        assert!(decoded.batch.is_empty());
        assert_eq!(decoded.encoded_len(), 0);
    }
}
