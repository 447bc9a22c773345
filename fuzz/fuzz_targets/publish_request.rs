//! Publish request decoding and validation on arbitrary bytes (a hostile producer).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sidelog_fuzz_checks::publish_request(data);
});
