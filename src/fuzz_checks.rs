//! The properties the fuzz targets (`fuzz/`, cargo-fuzz) check, kept in the library so that
//! they compile with every build and run in the unit tests on random input too.
//!
//! Both take arbitrary bytes, as a damaged file or a hostile client would give them, and must
//! never panic: whatever the bytes, the answer is a value or an error.

use prost::Message as _;

use crate::journal::{decode_record, encode_input, encode_record};
use crate::pipeline::Limits;
use crate::proto::PublishRequest;
use crate::proto::journal::{DeadLetter, InputEntry, OutputEntry};

/// A journal record read from a damaged or hostile file: decoding fails cleanly or yields a
/// record that encodes back to bytes decoding to the same record.
pub fn journal_record(data: &[u8]) {
    if let Ok(input) = decode_record::<InputEntry>("inputs", 1, data) {
        let again = encode_record(&input);
        assert_eq!(
            decode_record::<InputEntry>("inputs", 1, &again).ok(),
            Some(input),
            "an input record round-trips"
        );
    }
    if let Ok(output) = decode_record::<OutputEntry>("outputs", 1, data) {
        let again = encode_record(&output);
        assert_eq!(
            decode_record::<OutputEntry>("outputs", 1, &again).ok(),
            Some(output),
            "an output record round-trips"
        );
    }
    if let Ok(dead) = decode_record::<DeadLetter>("dead_letters", 1, data) {
        let again = encode_record(&dead);
        assert_eq!(
            decode_record::<DeadLetter>("dead_letters", 1, &again).ok(),
            Some(dead),
            "a dead letter round-trips"
        );
    }
}

/// Limits small enough for a fuzzer to cross every one of them.
pub fn tight_limits() -> Limits {
    Limits {
        max_message_bytes: 512,
        max_messages_per_request: 16,
        max_id_bytes: 16,
        max_key_bytes: 16,
        max_headers: 4,
        max_header_bytes: 64,
        max_backlog_bytes: u64::MAX,
    }
}

/// A publish request off the wire: each message is accepted or refused with a named limit and
/// a reason, and an accepted one is journaled and read back unchanged.
pub fn publish_request(data: &[u8]) {
    let Ok(request) = PublishRequest::decode(data) else {
        return;
    };
    let limits = tight_limits();
    for message in &request.messages {
        match limits.check(message) {
            Ok(()) => {
                assert!(message.encoded_len() <= limits.max_message_bytes);
                assert!(message.id.len() <= limits.max_id_bytes);
                assert!(message.headers.len() <= limits.max_headers);
                let record = encode_input(message, 0);
                let back = decode_record::<InputEntry>("inputs", 1, &record)
                    .expect("an accepted message is journaled and read back");
                assert_eq!(back.message.as_ref(), Some(message));
            }
            Err((limit, reason)) => {
                assert!(
                    !limit.is_empty() && !reason.is_empty(),
                    "a refusal says why"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn journal_records_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            super::journal_record(&data);
        }

        #[test]
        fn publish_requests_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            super::publish_request(&data);
        }
    }

    #[test]
    fn valid_requests_are_checked_too() {
        use prost::Message as _;
        let request = crate::proto::PublishRequest {
            messages: vec![crate::proto::Message {
                id: "a".into(),
                key: "k".into(),
                payload: b"x".to_vec().into(),
                headers: [("h".to_owned(), "v".to_owned())].into(),
                event_time_ms: 1,
            }],
        };
        super::publish_request(&request.encode_to_vec());
        super::journal_record(&crate::journal::encode_input(&request.messages[0], 5));
    }
}
