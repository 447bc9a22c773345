//! Journal record decoding on arbitrary bytes (a damaged or hostile journal file).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidelog_fuzz_checks::journal_record(data));
