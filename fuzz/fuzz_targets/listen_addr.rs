//! libFuzzer target: see `forklift_fuzz::listen_addr` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    forklift_fuzz::listen_addr(data);
});
