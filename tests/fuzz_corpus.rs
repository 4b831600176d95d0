//! Replays every file of `fuzz/corpus/<target>/` through the target's body
//! (`fused_rmsprop_tests::{kernel_paths, config, state_load}`), on stable,
//! without libFuzzer: an input that once crashed a target stays fixed.

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus files in {}", dir.display());
    for file in &files {
        let data = std::fs::read(file).expect("a readable corpus file");
        eprintln!("{target}: {}", file.display());
        body(&data);
    }
}

#[test]
fn kernel_paths_corpus() {
    replay("kernel_paths", fused_rmsprop_tests::kernel_paths);
}

#[test]
fn config_corpus() {
    replay("config", fused_rmsprop_tests::config);
}

#[test]
fn state_load_corpus() {
    replay("state_load", fused_rmsprop_tests::state_load);
}
