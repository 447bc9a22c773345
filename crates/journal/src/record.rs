//! The record codec: every input and output inside a block (`block.rs`), and every value of
//! `dead_letters`, is one format byte ([`RECORD_FORMAT`]) followed by a protobuf message of
//! `sidelog.journal.v1` (`crates/proto/proto/sidelog/v1/journal.proto`). (`inputs` and
//! `outputs`, the names the decoder's errors give, were file format 1's tables; the kinds kept
//! the names.)

use super::error::{JournalError, Result};
use sidelog_proto::v1::Message;

/// The journal file's layout version; a file with another one is refused.
pub const FILE_FORMAT: u64 = 2;
/// The leading byte of every encoded record.
pub const RECORD_FORMAT: u8 = 1;

/// Encodes a record: the format byte, then the protobuf.
pub fn encode_record(message: &impl prost::Message) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + message.encoded_len());
    buf.push(RECORD_FORMAT);
    message
        .encode(&mut buf)
        .expect("encoding into a Vec cannot run out of space");
    buf
}

/// Encodes an `InputEntry` from a borrowed message: the same bytes as [`encode_record`] of
/// the entry, without cloning the message (ids, keys, headers) on the writer's hot path.
pub fn encode_input(message: &Message, received_at_ms: i64) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_input_into(message, received_at_ms, &mut buf);
    buf
}

/// [`encode_input`], appended to `buf` (a block being built).
pub(super) fn encode_input_into(message: &Message, received_at_ms: i64, buf: &mut Vec<u8>) {
    use prost::encoding::{int64, message as embedded};
    buf.reserve(1 + embedded::encoded_len(1, message) + 11);
    buf.push(RECORD_FORMAT);
    embedded::encode(1, message, buf);
    if received_at_ms != 0 {
        int64::encode(2, &received_at_ms, buf);
    }
}

/// Encodes an `OutputEntry` from a borrowed message (see [`encode_input`]).
pub fn encode_output(message: &Message, input_seq: u64, recorded_at_ms: i64) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_output_into(message, input_seq, recorded_at_ms, &mut buf);
    buf
}

/// [`encode_output`], appended to `buf` (a block being built).
pub(super) fn encode_output_into(
    message: &Message,
    input_seq: u64,
    recorded_at_ms: i64,
    buf: &mut Vec<u8>,
) {
    use prost::encoding::{int64, message as embedded, uint64};
    buf.reserve(1 + embedded::encoded_len(1, message) + 22);
    buf.push(RECORD_FORMAT);
    embedded::encode(1, message, buf);
    if input_seq != 0 {
        uint64::encode(2, &input_seq, buf);
    }
    if recorded_at_ms != 0 {
        int64::encode(3, &recorded_at_ms, buf);
    }
}

/// Decodes a record written by [`encode_record`].
pub fn decode_record<M: prost::Message + Default>(
    table: &'static str,
    key: u64,
    bytes: &[u8],
) -> Result<M> {
    let decode_err = |reason: String| JournalError::Decode { table, key, reason };
    match bytes.split_first() {
        Some((&RECORD_FORMAT, body)) => M::decode(body).map_err(|e| decode_err(e.to_string())),
        Some((other, _)) => Err(decode_err(format!("unknown record format {other}"))),
        None => Err(decode_err("empty record".into())),
    }
}
