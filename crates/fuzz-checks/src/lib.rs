//! The properties the fuzz targets (`fuzz/`, cargo-fuzz) check, kept in a workspace crate so
//! that they compile with every build and run in the unit tests on random input too. Nothing
//! shipped depends on it.
//!
//! Both take arbitrary bytes, as a damaged file or a hostile client would give them, and must
//! never panic: whatever the bytes, the answer is a value or an error.

use prost::Message as _;

use sidelog_core::pipeline::Limits;
use sidelog_journal::{decode_record, encode_input, encode_record};
use sidelog_proto::journal::{DeadLetter, InputEntry, OutputEntry};
use sidelog_proto::v1::PublishRequest;

/// A journal record (and a block, head or dedup log value) read from a damaged or hostile file:
/// decoding fails cleanly or yields a
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
    sidelog_journal::fuzzing::read_hostile_values(data);
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
/// a reason, and an accepted one is journaled and read back unchanged. Returns how many
/// messages were accepted and refused (none when the bytes are not a request).
pub fn publish_request(data: &[u8]) -> (usize, usize) {
    let Ok(request) = PublishRequest::decode(data) else {
        return (0, 0);
    };
    let limits = tight_limits();
    let (mut accepted, mut refused) = (0, 0);
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
                accepted += 1;
            }
            Err((limit, reason)) => {
                assert!(
                    !limit.is_empty() && !reason.is_empty(),
                    "a refusal says why"
                );
                refused += 1;
            }
        }
    }
    (accepted, refused)
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

    /// Messages near the limits (`tight_limits`), on either side of each, about half of them
    /// within all: random bytes alone rarely decode to a request a limit would accept.
    fn message() -> impl Strategy<Value = sidelog_proto::v1::Message> {
        let id = prop_oneof![
            6 => "[a-z0-9-]{1,16}",
            1 => "[a-z0-9-]{17,24}",
            1 => "[a-z]{1,5}[ \t\n\x00][a-z]{1,5}",
            1 => Just(String::new()),
        ];
        let key = prop_oneof![6 => "[a-z]{0,16}", 1 => "[a-z]{17,20}"];
        let header = prop_oneof![
            8 => ("[a-z]{1,8}", "[ -~]{0,20}"),
            1 => ("[a-z]{1,8}", "[a-z]{1,5}\n[a-z]{1,5}"),
            1 => ("[a-z]{1,8}", "[a-z]{60,80}"),
        ];
        let headers = prop_oneof![
            8 => proptest::collection::btree_map("[a-z]{1,8}", "[ -~]{0,10}", 0..=4)
                .prop_map(|m| m.into_iter().collect::<std::collections::BTreeMap<_, _>>()),
            1 => proptest::collection::vec(header, 0..7)
                .prop_map(|v| v.into_iter().collect::<std::collections::BTreeMap<_, _>>()),
        ];
        let payload = prop_oneof![
            8 => proptest::collection::vec(any::<u8>(), 0..300),
            1 => proptest::collection::vec(any::<u8>(), 500..700),
        ];
        (id, key, headers, payload, any::<i64>()).prop_map(
            |(id, key, headers, payload, event_time_ms)| sidelog_proto::v1::Message {
                id,
                key,
                payload: payload.into(),
                headers,
                event_time_ms,
            },
        )
    }

    /// The request check on generated requests, some with a byte changed: it sees accepted
    /// and refused messages in about equal numbers.
    #[test]
    fn publish_requests_near_the_limits_are_accepted_and_refused_alike() {
        use proptest::test_runner::{Config, TestRunner};
        use prost::Message as _;
        let strategy = (
            proptest::collection::vec(message(), 1..4),
            proptest::option::weighted(0.2, (any::<usize>(), any::<u8>())),
        );
        let mut runner = TestRunner::new(Config::with_cases(2000));
        let counts = std::cell::Cell::new((0usize, 0usize));
        runner
            .run(&strategy, |(messages, flip)| {
                let mut bytes = sidelog_proto::v1::PublishRequest { messages }.encode_to_vec();
                if let Some((at, byte)) = flip {
                    let at = at % bytes.len();
                    bytes[at] ^= byte;
                }
                let (a, r) = super::publish_request(&bytes);
                let (sa, sr) = counts.get();
                counts.set((sa + a, sr + r));
                Ok(())
            })
            .unwrap();
        let (accepted, refused) = counts.get();
        let share = accepted as f64 / (accepted + refused) as f64;
        eprintln!("{accepted} messages accepted, {refused} refused");
        assert!(
            (0.35..=0.65).contains(&share),
            "{accepted} accepted, {refused} refused: the generator is lopsided"
        );
    }

    #[test]
    fn valid_requests_are_checked_too() {
        use prost::Message as _;
        let request = sidelog_proto::v1::PublishRequest {
            messages: vec![sidelog_proto::v1::Message {
                id: "a".into(),
                key: "k".into(),
                payload: b"x".to_vec().into(),
                headers: [("h".to_owned(), "v".to_owned())].into(),
                event_time_ms: 1,
            }],
        };
        super::publish_request(&request.encode_to_vec());
        super::journal_record(&sidelog_journal::encode_input(&request.messages[0], 5));
    }
}
