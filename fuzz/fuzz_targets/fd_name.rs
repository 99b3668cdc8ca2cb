//! libFuzzer target: see `forklift_fuzz::fd_name` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    forklift_fuzz::fd_name(data);
});
