//! Rows of burn: the fused optimizer against burn's `RmsProp`, the module owned or held as burn-train's `Learner` holds it.

use std::time::Duration;

use fused_rmsprop_benches::burn_case;
use fused_rmsprop_benches::timing::beside_baseline;
use fused_rmsprop_benches::workload::Variant;

use crate::limit::{
    BASELINE_MIN_REPS, fused_and_limit, fused_and_limits, out_of_place_skeletons, skeletons,
};
use crate::row::{Row, max_abs_diff};

/// Burn: the fused optimizer against burn's `RmsProp`, both through
/// `ModuleOptimizer` on the default Flex device with autodiff, as a training
/// loop calls them, on parameters of `sizes` elements; the same gradients
/// every step. Both take the same number of steps, so their parameters can
/// be compared at the end.
pub(crate) fn burn_rows(
    case: String,
    sizes: &[usize],
    variant: Variant,
    threads: usize,
    rows: &mut Vec<Row>,
) {
    burn_rows_stepped(case, sizes, variant, threads, Stepping::Alone, rows);
}

/// How the training loop around a burn optimizer holds the module.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Stepping {
    /// It hands the module over (a loop of the user's own).
    Alone,
    /// It holds a clone during the step, as burn-train's `Learner` does.
    Held,
}

/// [`burn_rows`] with the module held as `stepping` says.
pub(crate) fn burn_rows_stepped(
    case: String,
    sizes: &[usize],
    variant: Variant,
    threads: usize,
    stepping: Stepping,
    rows: &mut Vec<Row>,
) {
    let lr = variant.hyper().lr;
    let mut baseline = burn_case::Case::new(sizes, burn_case::burn_rmsprop(variant), lr);
    let mut fused = burn_case::Case::new(sizes, burn_case::fused_rmsprop(variant).init(), lr);
    let step = |case: &mut burn_case::Case| match stepping {
        Stepping::Alone => case.step(),
        Stepping::Held => case.step_holding_the_module(),
    };
    let n: usize = sizes.iter().sum();
    let bytes = (n * variant.bytes_per_element()) as f64;
    let budget = Duration::from_millis(if n >= 1 << 24 { 1000 } else { 700 });
    let [mut skeleton, mut skeleton_prefetch] = skeletons(n, variant, threads);
    let times = beside_baseline(
        budget,
        BASELINE_MIN_REPS,
        &mut || step(&mut baseline),
        &mut [&mut || step(&mut fused)],
    );
    let diff = max_abs_diff(&baseline.values(), &fused.values());
    let (base_t, fused_t) = (times[0].as_secs_f64(), times[1].as_secs_f64());
    // Held, the step is out of place: its own limit is the out-of-place
    // skeleton, timed beside the in-place one.
    let (own_t, skeleton_t, in_place_fraction) = match stepping {
        Stepping::Alone => {
            let (own_t, skeleton_t) = fused_and_limit(
                &mut || step(&mut fused),
                &mut [&mut *skeleton, &mut *skeleton_prefetch],
                budget / 2,
            );
            (own_t, skeleton_t, None)
        }
        Stepping::Held => {
            let [mut a, mut b, mut c, mut d] = out_of_place_skeletons(n, variant, threads);
            let (own_t, limits) = fused_and_limits(
                &mut || step(&mut fused),
                &mut [
                    &mut [&mut *a, &mut *b, &mut *c, &mut *d],
                    &mut [&mut *skeleton, &mut *skeleton_prefetch],
                ],
                budget,
            );
            (own_t, limits[0], Some(limits[1] / own_t))
        }
    };
    let held = if stepping == Stepping::Held {
        " (Learner: module held)"
    } else {
        ""
    };
    rows.push(Row {
        framework: "burn",
        baseline: format!("burn RmsProp{held}"),
        case,
        variant,
        elements: n,
        threads: rayon::current_num_threads(),
        baseline_ns: base_t * 1e9,
        fused: format!("FusedRmsProp{held}"),
        fused_ns: fused_t * 1e9,
        gbps: Some(bytes / own_t / 1e9),
        roofline_fraction: Some(skeleton_t / own_t),
        max_abs_diff: Some(diff),
        unclipped: None,
        in_place_fraction,
    });
}
