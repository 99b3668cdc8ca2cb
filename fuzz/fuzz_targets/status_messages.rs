//! libFuzzer target: see `forklift_fuzz::status_messages` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    forklift_fuzz::status_messages(data);
});
