//! Rows of candle: the fused optimizer against candle's own optimizers.

use std::time::Duration;

use fused_rmsprop_benches::candle_case;
use fused_rmsprop_benches::timing::beside_baseline;
use fused_rmsprop_benches::workload::Variant;

use crate::limit::{BASELINE_MIN_REPS, fused_and_limit, skeletons};
use crate::row::{Row, max_abs_diff};

/// Candle: the fused optimizer against the same update in candle tensor ops
/// (as candle-optimisers writes it), candle-nn's `AdamW` (its built-in
/// adaptive optimizer) and `SGD` (the cheapest built-in step), on `Var`s of
/// `sizes` elements and the same gradients every step. Each baseline is
/// timed against a fresh fused optimizer that takes as many steps, so the
/// RMSprop baseline's parameters can be compared at the end.
pub(crate) fn candle_rows(
    case: String,
    sizes: &[usize],
    variant: Variant,
    threads: usize,
    rows: &mut Vec<Row>,
) {
    use candle_case::Baseline;
    use candle_nn::Optimizer;
    let n: usize = sizes.iter().sum();
    let bytes = (n * variant.bytes_per_element()) as f64;
    let budget = Duration::from_millis(if n >= 1 << 24 { 1000 } else { 700 });
    let [mut skeleton, mut skeleton_prefetch] = skeletons(n, variant, threads);
    let (own_t, skeleton_t) = {
        let (vars, grads) = candle_case::vars_and_grads(sizes);
        let mut fused = candle_case::fused(vars, variant);
        fused_and_limit(
            &mut || fused.step(&grads).expect("a step"),
            &mut [&mut *skeleton, &mut *skeleton_prefetch],
            budget / 2,
        )
    };
    // candle-nn's `AdamW` and `SGD` do not change with the variant: their
    // rows are in the plain variant's table only.
    let baselines = Baseline::ALL
        .into_iter()
        .filter(|b| variant == Variant::Plain || b.is_rmsprop());
    for baseline_kind in baselines {
        let (baseline_vars, baseline_grads) = candle_case::vars_and_grads(sizes);
        let mut baseline_step = baseline_kind.build(baseline_vars.clone(), variant);
        let (fused_vars, fused_grads) = candle_case::vars_and_grads(sizes);
        let mut fused = candle_case::fused(fused_vars.clone(), variant);
        let times = beside_baseline(
            budget,
            BASELINE_MIN_REPS,
            &mut || baseline_step(&baseline_grads),
            &mut [&mut || fused.step(&fused_grads).expect("a step")],
        );
        let (base_t, fused_t) = (times[0].as_secs_f64(), times[1].as_secs_f64());
        let max_abs_diff = baseline_kind.is_rmsprop().then(|| {
            max_abs_diff(
                &candle_case::values(&baseline_vars),
                &candle_case::values(&fused_vars),
            )
        });
        rows.push(Row {
            framework: "candle",
            baseline: baseline_kind.name().into(),
            case: case.clone(),
            variant,
            elements: n,
            threads: rayon::current_num_threads(),
            baseline_ns: base_t * 1e9,
            fused: "fused RmsProp".into(),
            fused_ns: fused_t * 1e9,
            gbps: Some(bytes / own_t / 1e9),
            roofline_fraction: Some(skeleton_t / own_t),
            max_abs_diff,
            unclipped: None,
            in_place_fraction: None,
        });
    }
}
