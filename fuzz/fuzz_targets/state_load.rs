//! `cargo fuzz run -s none state_load`: see `fused_rmsprop_tests::state_load` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fused_rmsprop_tests::state_load(data));
