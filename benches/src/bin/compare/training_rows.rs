//! Whole training steps (forward, backward, optimizer) of a small MLP, built-in against fused.

use std::time::Duration;

use fused_rmsprop_benches::timing::beside_baseline;
use fused_rmsprop_benches::workload::Variant;
use fused_rmsprop_benches::{burn_case, candle_case};

use crate::row::Row;

/// A framework, a baseline's name, and whole training steps with the
/// baseline and with the fused optimizer.
pub(crate) type TrainingCase = (
    &'static str,
    &'static str,
    Box<dyn FnMut()>,
    Box<dyn FnMut()>,
);

/// End to end: one whole training step (forward, backward, optimizer) of a
/// 2.1M-parameter MLP on a batch of 64, built-in optimizer vs fused, in each
/// framework.
pub(crate) fn training_rows(variant: Variant, rows: &mut Vec<Row>) {
    let lr = variant.hyper().lr;
    let mut cases: Vec<TrainingCase> = Vec::new();
    {
        let mut builtin = burn_case::Training::new(burn_case::burn_rmsprop(variant), lr);
        let mut fused = burn_case::Training::new(burn_case::fused_rmsprop(variant).init(), lr);
        cases.push((
            "burn",
            "burn RmsProp",
            Box::new(move || builtin.step()),
            Box::new(move || fused.step()),
        ));
    }
    for baseline in [
        candle_case::Baseline::TensorOps,
        candle_case::Baseline::AdamW,
    ] {
        let mut builtin = candle_case::Training::new(|vars| baseline.build(vars, variant));
        let mut fused = candle_case::Training::new(|vars| candle_case::fused_step(vars, variant));
        cases.push((
            "candle",
            baseline.name(),
            Box::new(move || builtin.step()),
            Box::new(move || fused.step()),
        ));
    }
    for (framework, baseline, mut builtin, mut fused) in cases {
        let times = beside_baseline(
            Duration::from_millis(1500),
            5,
            &mut *builtin,
            &mut [&mut *fused],
        );
        let (base_t, fused_t) = (times[0].as_secs_f64(), times[1].as_secs_f64());
        rows.push(Row {
            framework,
            baseline: format!("{baseline} (train step)"),
            case: "train-mlp".into(),
            variant,
            elements: 2_109_450,
            threads: rayon::current_num_threads(),
            baseline_ns: base_t * 1e9,
            fused: "fused (train step)".into(),
            fused_ns: fused_t * 1e9,
            gbps: None,
            roofline_fraction: None,
            max_abs_diff: None,
            unclipped: None,
            in_place_fraction: None,
        });
    }
}
