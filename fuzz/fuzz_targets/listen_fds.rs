//! libFuzzer target: see `forklift_fuzz::listen_fds` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    forklift_fuzz::listen_fds(data);
});
