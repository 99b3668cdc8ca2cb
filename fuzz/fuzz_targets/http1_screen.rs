//! libFuzzer target: see `forklift_fuzz::http1_screen` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    forklift_fuzz::http1_screen(data);
});
