//! The cost per tensor of each route on models of many tensors, over the bare kernel's `step_many`.

use std::time::Duration;

use fused_rmsprop::RmsProp;
use fused_rmsprop_benches::timing::{beside_baseline, interleaved_medians, reps_for};
use fused_rmsprop_benches::workload::{Buffers, Variant};
use fused_rmsprop_benches::{burn_case, candle_case, report};

use crate::limit::{BASELINE_MIN_REPS, fused_and_limits, out_of_place_skeletons, skeletons};
use crate::row::Row;

/// The cost per tensor of a many-tensor step: each framework's fused step
/// against the bare kernel's `step_many` on buffers of the same sizes (the
/// same arithmetic and bytes, no framework), the bare kernel called once
/// per tensor (what a one-parameter-at-a-time interface such as burn's
/// costs before any framework code), burn's batched route (one kernel
/// dispatch per step, outside `ModuleOptimizer`), and burn's floor (the same model
/// through `ModuleOptimizer` with an optimizer that returns its inputs),
/// alone and under the kernel's traffic (the optimizer also steps side
/// buffers of the parameter's size with the bare kernel: the least any
/// per-parameter optimizer with this kernel costs in burn), against the
/// bare kernel too; the skeleton on one tensor of the model's total size is
/// the limit. `print_overheads` turns the rows into microseconds per tensor.
pub(crate) fn overhead_rows(
    case: String,
    sizes: &[usize],
    variant: Variant,
    threads: usize,
    rows: &mut Vec<Row>,
) {
    use candle_nn::Optimizer;
    let hyper = variant.hyper();
    let n: usize = sizes.iter().sum();
    let bytes = (n * variant.bytes_per_element()) as f64;
    let budget = Duration::from_millis(1000);
    let kernel = RmsProp::new(hyper).unwrap();
    let mut buffers: Vec<Buffers> = sizes.iter().map(|&k| Buffers::new(k, variant)).collect();
    let mut run_kernel = || {
        let groups = buffers
            .iter_mut()
            .map(|b| fused_rmsprop::Group::new(&mut b.params, &b.grads, b.state.slices_mut()));
        kernel.step_many(hyper.lr, groups).expect("a step");
    };
    // The same kernel called once per tensor, as a framework that steps one
    // parameter at a time must call it: what that interface costs before
    // any framework code runs.
    let mut one_by_one: Vec<Buffers> = sizes.iter().map(|&k| Buffers::new(k, variant)).collect();
    let mut run_one_by_one = || {
        for b in one_by_one.iter_mut() {
            b.step(&kernel);
        }
    };
    let (candle_vars, candle_grads) = candle_case::vars_and_grads(sizes);
    let mut candle = candle_case::fused(candle_vars, variant);
    let mut run_candle = || candle.step(&candle_grads).expect("a step");
    let lr = hyper.lr;
    let mut burn = burn_case::Case::new(sizes, burn_case::fused_rmsprop(variant).init(), lr);
    let mut batched =
        burn_case::Case::new(sizes, burn_case::fused_rmsprop(variant).init_batched(), lr);
    let mut floor = burn_case::Case::new(sizes, burn_case::floor(), lr);
    let traffic = burn_case::floor_with_traffic(sizes, kernel);
    let mut floor_traffic = burn_case::Case::new(sizes, traffic, lr);
    let [mut skeleton, mut skeleton_prefetch] = skeletons(n, variant, threads);
    let first = interleaved_medians(1, 2, &mut [&mut || burn.step()]);
    let reps = reps_for(budget, first[0] * 7, 5, 100);
    let times = interleaved_medians(
        1,
        reps,
        &mut [
            &mut run_kernel,
            &mut run_one_by_one,
            &mut run_candle,
            &mut || burn.step(),
            &mut || batched.step(),
            &mut || floor.step(),
            &mut || floor_traffic.step(),
            &mut *skeleton,
            &mut *skeleton_prefetch,
        ],
    );
    let [
        kernel_t,
        one_by_one_t,
        candle_t,
        burn_t,
        batched_t,
        floor_t,
        floor_traffic_t,
    ] = [0, 1, 2, 3, 4, 5, 6].map(|i| times[i].as_secs_f64());
    let skeleton_t = times[7].min(times[8]).as_secs_f64();
    for (framework, fused, fused_t) in [
        ("kernel", "step_many", kernel_t),
        ("kernel", ONE_CALL_PER_TENSOR, one_by_one_t),
        ("candle", "fused RmsProp", candle_t),
        ("burn", "FusedRmsProp", burn_t),
        ("burn", "BatchedRmsProp", batched_t),
        ("burn", FLOOR, floor_t),
        ("burn", FLOOR_UNDER_TRAFFIC, floor_traffic_t),
    ] {
        rows.push(Row {
            framework,
            baseline: "bare kernel step_many".into(),
            case: case.clone(),
            variant,
            elements: n,
            threads: rayon::current_num_threads(),
            baseline_ns: kernel_t * 1e9,
            fused: fused.into(),
            fused_ns: fused_t * 1e9,
            gbps: Some(bytes / fused_t / 1e9),
            roofline_fraction: Some(skeleton_t / fused_t),
            max_abs_diff: None,
            unclipped: None,
            in_place_fraction: None,
        });
    }
}

/// The name of `overhead_rows`' kernel row that calls the kernel once per
/// tensor.
pub(crate) const ONE_CALL_PER_TENSOR: &str = "one call per tensor";

/// The name of `overhead_rows`' row of burn's floor on its own.
pub(crate) const FLOOR: &str = "floor: returns inputs";

/// The name of `overhead_rows`' row of burn's floor under the kernel's
/// traffic (`burn_case::Traffic`).
pub(crate) const FLOOR_UNDER_TRAFFIC: &str = "floor + kernel per call";

/// Microseconds per tensor over the bare kernel, from `overhead_rows`.
pub(crate) fn print_overheads(rows: &[report::Row]) {
    let overheads: Vec<&report::Row> = rows
        .iter()
        .filter(|r| {
            r.baseline == "bare kernel step_many"
                && (r.framework != "kernel" || r.fused == ONE_CALL_PER_TENSOR)
        })
        .collect();
    if overheads.is_empty() {
        return;
    }
    println!("per-tensor cost over the bare kernel's step_many on the same sizes (same run):");
    for r in overheads {
        let tensors: f64 = r
            .case
            .trim_start_matches("model-")
            .parse()
            .unwrap_or(f64::NAN);
        let fused = r.fused_ns.unwrap_or(f64::NAN);
        let over = (fused - r.baseline_ns) / tensors / 1e3;
        let over = match (r.framework.as_str(), r.fused.as_str()) {
            (_, FLOOR) => format!(
                "{:.2} us/tensor (burn's machinery alone)",
                fused / tensors / 1e3
            ),
            (_, FLOOR_UNDER_TRAFFIC) => format!(
                "{over:+.2} us/tensor (burn's machinery and the per-tensor calls, \
                 caches streamed through: the least a per-parameter optimizer costs)"
            ),
            ("kernel", _) => {
                format!("{over:+.2} us/tensor (no framework: the per-tensor calls alone)")
            }
            _ => format!("{over:+.2} us/tensor"),
        };
        println!(
            "  {:<7} {:<22} {:<10} {}",
            r.framework, r.fused, r.case, over
        );
    }
}

/// The bare kernel's out-of-place step, as burn's optimizer takes it while
/// burn-train's `Learner` holds the module: called once per tensor of
/// `sizes`, reading each parameter from one buffer and writing it to
/// another (the two swap every step), against the same calls in place
/// (the baseline), with the out-of-place skeleton as the limit and the
/// in-place skeleton beside it. What the held rows cannot beat through a
/// one-parameter-at-a-time interface, before any framework code.
pub(crate) fn out_of_place_rows(
    case: String,
    sizes: &[usize],
    variant: Variant,
    threads: usize,
    rows: &mut Vec<Row>,
) {
    let hyper = variant.hyper();
    let kernel = RmsProp::new(hyper).unwrap();
    let n: usize = sizes.iter().sum();
    let bytes = (n * variant.bytes_per_element()) as f64;
    let mut in_place: Vec<Buffers> = sizes.iter().map(|&k| Buffers::new(k, variant)).collect();
    let mut run_in_place = || in_place.iter_mut().for_each(|b| b.step(&kernel));
    let mut out_of_place: Vec<(Buffers, Vec<f32>)> = sizes
        .iter()
        .map(|&k| {
            let b = Buffers::new(k, variant);
            let spare = b.params.clone();
            (b, spare)
        })
        .collect();
    let mut run_out_of_place = || {
        for (b, spare) in out_of_place.iter_mut() {
            let group = fused_rmsprop::Group::new(spare, &b.grads, b.state.slices_mut())
                .with_source(&b.params);
            kernel.step_many(hyper.lr, [group]).expect("a step");
            std::mem::swap(&mut b.params, spare);
        }
    };
    let budget = Duration::from_millis(1000);
    // The in-place calls beside the out-of-place ones for the speedup, as
    // every row times its baseline; the limits apart (see `fused_and_limit`).
    let times = beside_baseline(
        budget,
        BASELINE_MIN_REPS,
        &mut run_in_place,
        &mut [&mut run_out_of_place],
    );
    let (baseline_t, beside_t) = (times[0].as_secs_f64(), times[1].as_secs_f64());
    let [mut a, mut b, mut c, mut d] = out_of_place_skeletons(n, variant, threads);
    let [mut e, mut f] = skeletons(n, variant, threads);
    let (fused_t, limits) = fused_and_limits(
        &mut run_out_of_place,
        &mut [
            &mut [&mut *a, &mut *b, &mut *c, &mut *d],
            &mut [&mut *e, &mut *f],
        ],
        budget,
    );
    rows.push(Row {
        framework: "kernel",
        baseline: format!("{ONE_CALL_PER_TENSOR}, in place"),
        case,
        variant,
        elements: n,
        threads: rayon::current_num_threads(),
        baseline_ns: baseline_t * 1e9,
        fused: format!("{ONE_CALL_PER_TENSOR}, out of place (the held route's kernel)"),
        fused_ns: beside_t * 1e9,
        gbps: Some(bytes / fused_t / 1e9),
        roofline_fraction: Some(limits[0] / fused_t),
        max_abs_diff: None,
        unclipped: None,
        in_place_fraction: Some(limits[1] / fused_t),
    });
}
