//! libFuzzer target: see `forklift_fuzz::proxy_header` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    forklift_fuzz::proxy_header(data);
});
