//! `cargo fuzz run -s none kernel_paths`: see `fused_rmsprop_tests::kernel_paths` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fused_rmsprop_tests::kernel_paths(data));
