//! Rows with gradient clipping: each framework's optimizer with its own
//! clipping against the fused step clipping inside the kernel.

use std::time::Duration;

use burn::grad_clipping::GradientClippingConfig;
use fused_rmsprop_benches::timing::beside_baseline;
use fused_rmsprop_benches::workload::{Buffers, Variant};
use fused_rmsprop_benches::{burn_case, candle_case, roofline};
use fused_rmsprop_candle::{ParamsRmsProp, RmsProp, TensorOpsRmsProp};

use crate::limit::{BASELINE_MIN_REPS, fused_and_limit};
use crate::row::{Row, max_abs_diff};

/// A clipping, as each framework spells it.
#[derive(Clone, Copy)]
pub(crate) enum Clip {
    /// Each element clamped: burn's `Value`, candle's `clip_value`.
    Value,
    /// By norm: burn's `Norm` (each parameter alone), candle's
    /// `max_grad_norm` (every variable together).
    Norm,
}

impl Clip {
    /// The name in tables.
    fn name(self) -> &'static str {
        match self {
            Clip::Value => "clip by value",
            Clip::Norm => "clip by norm",
        }
    }

    /// Bytes per `f32` element a plain step with this clipping must move:
    /// the step's 20, and for a norm one more read of the gradient.
    fn bytes_per_element(self) -> usize {
        match self {
            Clip::Value => 20,
            Clip::Norm => 24,
        }
    }

    /// burn's config: bounds that clip on the benchmark's gradients
    /// (`1e-3 * [-1, 1]`; norms of 0.1 and more).
    fn burn(self) -> GradientClippingConfig {
        match self {
            Clip::Value => GradientClippingConfig::Value(5e-4),
            Clip::Norm => GradientClippingConfig::Norm(0.01),
        }
    }

    /// candle's parameters: bounds that clip on its gradients (a ramp of
    /// `1e-7 * i`).
    fn candle(self) -> ParamsRmsProp {
        let params = candle_case::params(Variant::Plain);
        match self {
            Clip::Value => ParamsRmsProp {
                clip_value: Some(0.05),
                ..params
            },
            Clip::Norm => ParamsRmsProp {
                max_grad_norm: Some(1.0),
                ..params
            },
        }
    }
}

/// The limit of a clipped step of `n` elements: for a norm, a read of the
/// gradients and the skeleton one after the other; by value the skeleton
/// alone (both forms, with and without prefetch, the faster counts).
fn limits(n: usize, clip: Clip, threads: usize) -> [Box<dyn FnMut()>; 2] {
    [false, true].map(|prefetch| {
        let mut buffers = Buffers::new(n, Variant::Plain);
        Box::new(move || {
            if matches!(clip, Clip::Norm) {
                std::hint::black_box(roofline::read_all(&buffers.grads, threads));
            }
            roofline::skeleton(&mut buffers, threads, prefetch);
        }) as Box<dyn FnMut()>
    })
}

/// Both frameworks with `clip`, plain variant, on tensors of `sizes`.
pub(crate) fn clipping_rows(case: String, sizes: &[usize], threads: usize, rows: &mut Vec<Row>) {
    for clip in [Clip::Value, Clip::Norm] {
        burn_clipped(&case, sizes, clip, threads, rows);
        candle_clipped(&case, sizes, clip, threads, rows);
    }
}

fn budget(n: usize) -> Duration {
    Duration::from_millis(if n >= 1 << 24 { 1000 } else { 700 })
}

/// burn's `RmsProp` with burn's clipping (applied by `ModuleOptimizer` with
/// tensor ops) against the fused optimizer with the same clipping config
/// (applied inside the kernel).
fn burn_clipped(case: &str, sizes: &[usize], clip: Clip, threads: usize, rows: &mut Vec<Row>) {
    let variant = Variant::Plain;
    let lr = variant.hyper().lr;
    let n: usize = sizes.iter().sum();
    let baseline_optim = burn_case::burn_rmsprop_config(variant)
        .with_grad_clipping(Some(clip.burn()))
        .init();
    let fused_optim = burn_case::fused_rmsprop(variant)
        .with_grad_clipping(Some(clip.burn()))
        .init();
    let mut baseline = burn_case::Case::new(sizes, baseline_optim, lr);
    let mut fused = burn_case::Case::new(sizes, fused_optim, lr);
    let times = beside_baseline(
        budget(n),
        BASELINE_MIN_REPS,
        &mut || baseline.step(),
        &mut [&mut || fused.step()],
    );
    let diff = max_abs_diff(&baseline.values(), &fused.values());
    let [mut limit, mut limit_prefetch] = limits(n, clip, threads);
    let (own_t, limit_t) = fused_and_limit(
        &mut || fused.step(),
        &mut [&mut *limit, &mut *limit_prefetch],
        budget(n) / 2,
    );
    rows.push(Row {
        framework: "burn",
        baseline: format!("burn RmsProp, {} (burn's)", clip.name()),
        case: case.to_string(),
        variant,
        elements: n,
        threads: rayon::current_num_threads(),
        baseline_ns: times[0].as_secs_f64() * 1e9,
        fused: format!("FusedRmsProp, {} (in the step)", clip.name()),
        fused_ns: times[1].as_secs_f64() * 1e9,
        gbps: Some((n * clip.bytes_per_element()) as f64 / own_t / 1e9),
        roofline_fraction: Some(limit_t / own_t),
        max_abs_diff: Some(diff),
    });
}

/// candle has no clipping: the baseline is RMSprop and the clipping both
/// written in candle tensor ops ([`TensorOpsRmsProp`] with the same
/// parameters), what a candle user writes today; against the fused
/// optimizer clipping inside the kernel.
fn candle_clipped(case: &str, sizes: &[usize], clip: Clip, threads: usize, rows: &mut Vec<Row>) {
    use candle_nn::Optimizer;
    let n: usize = sizes.iter().sum();
    let params = clip.candle();
    let (baseline_vars, baseline_grads) = candle_case::vars_and_grads(sizes);
    let mut baseline = TensorOpsRmsProp::new(baseline_vars.clone(), params).expect("valid");
    let (fused_vars, fused_grads) = candle_case::vars_and_grads(sizes);
    let mut fused = RmsProp::new(fused_vars.clone(), params).expect("valid");
    let times = beside_baseline(
        budget(n),
        BASELINE_MIN_REPS,
        &mut || baseline.step(&baseline_grads).expect("a step"),
        &mut [&mut || fused.step(&fused_grads).expect("a step")],
    );
    let diff = max_abs_diff(
        &candle_case::values(&baseline_vars),
        &candle_case::values(&fused_vars),
    );
    let [mut limit, mut limit_prefetch] = limits(n, clip, threads);
    let (own_t, limit_t) = fused_and_limit(
        &mut || fused.step(&fused_grads).expect("a step"),
        &mut [&mut *limit, &mut *limit_prefetch],
        budget(n) / 2,
    );
    rows.push(Row {
        framework: "candle",
        baseline: format!("tensor-op RMSprop, {} (candle ops)", clip.name()),
        case: case.to_string(),
        variant: Variant::Plain,
        elements: n,
        threads: rayon::current_num_threads(),
        baseline_ns: times[0].as_secs_f64() * 1e9,
        fused: format!("fused RmsProp, {} (in the step)", clip.name()),
        fused_ns: times[1].as_secs_f64() * 1e9,
        gbps: Some((n * clip.bytes_per_element()) as f64 / own_t / 1e9),
        roofline_fraction: Some(limit_t / own_t),
        max_abs_diff: Some(diff),
    });
}
