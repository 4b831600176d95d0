//! `cargo fuzz run -s none config`: see `fused_rmsprop_tests::config` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fused_rmsprop_tests::config(data));
