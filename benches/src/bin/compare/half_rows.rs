//! Rows of both frameworks on 16-bit models against their own optimizers on the same models.

use std::time::Duration;

use fused_rmsprop_benches::timing::beside_baseline;
use fused_rmsprop_benches::workload::{HalfMode, Variant};
use fused_rmsprop_benches::{burn_case, candle_case, roofline};

use crate::limit::{BASELINE_MIN_REPS, fused_and_limit};
use crate::row::{Row, max_abs_diff};

/// Both frameworks on a 16-bit model (`sizes`, plain variant): the fused
/// optimizer against candle's tensor-op RMSprop and `AdamW`, and (both
/// routes: per parameter through `ModuleOptimizer`, and batched) against
/// burn's `RmsProp`, each on the same model of `dtype`; the limit is the
/// 16-bit skeleton (14 bytes per element), the faster of its two forms.
pub(crate) fn half_framework_rows(
    case: String,
    sizes: &[usize],
    dtype: candle_core::DType,
    threads: usize,
    rows: &mut Vec<Row>,
) {
    use candle_case::Baseline;
    use candle_nn::Optimizer;
    let variant = Variant::Plain;
    let name = if dtype == candle_core::DType::BF16 {
        "bf16"
    } else {
        "f16"
    };
    let n: usize = sizes.iter().sum();
    let bytes = (n * HalfMode::Nearest.bytes_per_element(variant)) as f64;
    let budget = Duration::from_millis(if n >= 1 << 24 { 1000 } else { 700 });
    let (mut plain, mut prefetched) = (
        roofline::HalfSkeleton::new(n, false),
        roofline::HalfSkeleton::new(n, false),
    );
    let mut run_skeleton = || plain.run(threads, false);
    let mut run_skeleton_prefetch = || prefetched.run(threads, true);
    let burn_dtype = if dtype == candle_core::DType::BF16 {
        burn::tensor::DType::BF16
    } else {
        burn::tensor::DType::F16
    };
    let lr = variant.hyper().lr;
    // Each framework's fused step against the limit, apart from the
    // baselines (see `fused_and_limit`): (fused s, limit s).
    let candle_own = {
        let (vars, grads) = candle_case::vars_and_grads_in(dtype, sizes);
        let mut fused = candle_case::fused(vars, variant);
        fused_and_limit(
            &mut || fused.step(&grads).expect("a step"),
            &mut [&mut run_skeleton, &mut run_skeleton_prefetch],
            budget / 2,
        )
    };
    let mut own = |optim: burn_case::Stepper| {
        let mut fused = burn_case::Case::new_in(burn_dtype, sizes, optim, lr);
        fused_and_limit(
            &mut || fused.step(),
            &mut [&mut run_skeleton, &mut run_skeleton_prefetch],
            budget / 2,
        )
    };
    let burn_own = own(burn_case::fused_rmsprop(variant).init().into());
    let batched_own = own(burn_case::fused_rmsprop(variant).init_batched().into());
    /// (framework, baseline, fused step, [baseline, fused] times, max |diff|,
    /// (fused s, limit s) timed apart).
    type Timed = (
        &'static str,
        &'static str,
        &'static str,
        Vec<Duration>,
        Option<f64>,
        (f64, f64),
    );
    let mut timed: Vec<Timed> = Vec::new();
    for baseline_kind in [Baseline::TensorOps, Baseline::AdamW] {
        let (baseline_vars, baseline_grads) = candle_case::vars_and_grads_in(dtype, sizes);
        let mut baseline_step = baseline_kind.build(baseline_vars.clone(), variant);
        let (fused_vars, fused_grads) = candle_case::vars_and_grads_in(dtype, sizes);
        let mut fused = candle_case::fused(fused_vars.clone(), variant);
        let times = beside_baseline(
            budget,
            BASELINE_MIN_REPS,
            &mut || baseline_step(&baseline_grads),
            &mut [&mut || fused.step(&fused_grads).expect("a step")],
        );
        let diff = baseline_kind.is_rmsprop().then(|| {
            max_abs_diff(
                &candle_case::values(&baseline_vars),
                &candle_case::values(&fused_vars),
            )
        });
        timed.push((
            "candle",
            baseline_kind.name(),
            "fused",
            times,
            diff,
            candle_own,
        ));
    }
    {
        let mut baseline =
            burn_case::Case::new_in(burn_dtype, sizes, burn_case::burn_rmsprop(variant), lr);
        let mut fused = burn_case::Case::new_in(
            burn_dtype,
            sizes,
            burn_case::fused_rmsprop(variant).init(),
            lr,
        );
        let mut batched = burn_case::Case::new_in(
            burn_dtype,
            sizes,
            burn_case::fused_rmsprop(variant).init_batched(),
            lr,
        );
        let times = beside_baseline(
            budget,
            BASELINE_MIN_REPS,
            &mut || baseline.step(),
            &mut [&mut || fused.step(), &mut || batched.step()],
        );
        let diff = max_abs_diff(&baseline.values(), &fused.values());
        let batched_diff = max_abs_diff(&baseline.values(), &batched.values());
        let per_parameter = vec![times[0], times[1]];
        let batched_times = vec![times[0], times[2]];
        timed.push((
            "burn",
            "burn RmsProp",
            "fused",
            per_parameter,
            Some(diff),
            burn_own,
        ));
        timed.push((
            "burn",
            "burn RmsProp",
            "fused batched",
            batched_times,
            Some(batched_diff),
            batched_own,
        ));
    }
    for (framework, baseline, fused, times, max_abs_diff, (own_t, skeleton_t)) in timed {
        let (base_t, fused_t) = (times[0].as_secs_f64(), times[1].as_secs_f64());
        rows.push(Row {
            framework,
            baseline: format!("{baseline} ({name})"),
            case: format!("{case} {name}"),
            variant,
            elements: n,
            threads: rayon::current_num_threads(),
            baseline_ns: base_t * 1e9,
            fused: format!("{fused} ({name}, f32 state)"),
            fused_ns: fused_t * 1e9,
            gbps: Some(bytes / own_t / 1e9),
            roofline_fraction: Some(skeleton_t / own_t),
            max_abs_diff,
            unclipped: None,
            in_place_fraction: None,
        });
    }
}

/// burn's fused optimizer on a `bf16` model (`sizes`, plain variant) with
/// stochastic rounding, and with master weights, each against burn's
/// `RmsProp` on the same model and against its own limit: the 16-bit
/// skeleton, with the master copy's read and write for master weights (20
/// bytes per element; 14 otherwise).
pub(crate) fn burn_rounding_rows(
    case: String,
    sizes: &[usize],
    threads: usize,
    rows: &mut Vec<Row>,
) {
    let variant = Variant::Plain;
    let n: usize = sizes.iter().sum();
    let lr = variant.hyper().lr;
    let budget = Duration::from_millis(if n >= 1 << 24 { 1000 } else { 700 });
    let dtype = burn::tensor::DType::BF16;
    for mode in [HalfMode::Stochastic, HalfMode::Master] {
        let hyper = mode.apply(variant.hyper());
        let config = burn_case::fused_rmsprop(variant)
            .with_rounding(hyper.rounding)
            .with_master_weights(hyper.master_weights);
        let mut baseline =
            burn_case::Case::new_in(dtype, sizes, burn_case::burn_rmsprop(variant), lr);
        let mut fused = burn_case::Case::new_in(dtype, sizes, config.init(), lr);
        let times = beside_baseline(
            budget,
            BASELINE_MIN_REPS,
            &mut || baseline.step(),
            &mut [&mut || fused.step()],
        );
        let diff = max_abs_diff(&baseline.values(), &fused.values());
        let master = mode == HalfMode::Master;
        let (mut plain, mut prefetched) = (
            roofline::HalfSkeleton::new(n, master),
            roofline::HalfSkeleton::new(n, master),
        );
        let (own_t, limit_t) = fused_and_limit(
            &mut || fused.step(),
            &mut [&mut || plain.run(threads, false), &mut || {
                prefetched.run(threads, true)
            }],
            budget / 2,
        );
        let bytes = (n * mode.bytes_per_element(variant)) as f64;
        rows.push(Row {
            framework: "burn",
            baseline: "burn RmsProp (bf16)".to_string(),
            case: format!("{case} bf16"),
            variant,
            elements: n,
            threads: rayon::current_num_threads(),
            baseline_ns: times[0].as_secs_f64() * 1e9,
            fused: format!("fused, {} (bf16, f32 state)", mode.name()),
            fused_ns: times[1].as_secs_f64() * 1e9,
            gbps: Some(bytes / own_t / 1e9),
            roofline_fraction: Some(limit_t / own_t),
            max_abs_diff: Some(diff),
            unclipped: None,
            in_place_fraction: None,
        });
    }
}
