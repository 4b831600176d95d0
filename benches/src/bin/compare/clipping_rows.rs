//! Rows with gradient clipping: each framework's optimizer with its own
//! clipping against the fused step clipping inside the kernel.

use std::time::Duration;

use burn::grad_clipping::GradientClippingConfig;
use fused_rmsprop_benches::report::Unclipped;
use fused_rmsprop_benches::timing::{beside_baseline, interleaved_medians, reps_for};
use fused_rmsprop_benches::workload::{Buffers, HalfMode, Variant};
use fused_rmsprop_benches::{burn_case, candle_case, roofline};
use fused_rmsprop_candle::{ParamsRmsProp, RmsProp, TensorOpsRmsProp};

use crate::limit::BASELINE_MIN_REPS;
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

/// The element types of the clipped rows: the parameters and gradients
/// (the state is `f32` in both).
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Format {
    F32,
    Bf16,
}

impl Format {
    fn candle(self) -> candle_core::DType {
        match self {
            Format::F32 => candle_core::DType::F32,
            Format::Bf16 => candle_core::DType::BF16,
        }
    }

    fn burn(self) -> burn::tensor::DType {
        match self {
            Format::F32 => burn::tensor::DType::F32,
            Format::Bf16 => burn::tensor::DType::BF16,
        }
    }

    /// Bytes of one gradient element.
    fn grad_bytes(self) -> usize {
        match self {
            Format::F32 => 4,
            Format::Bf16 => 2,
        }
    }

    /// Bytes per element a plain step with `clip` must move: the step's
    /// (20 for `f32`, 14 for `bf16` with `f32` state), and for a norm one
    /// more read of the gradient.
    fn bytes_per_element(self, clip: Clip) -> usize {
        let step = match self {
            Format::F32 => Variant::Plain.bytes_per_element(),
            Format::Bf16 => HalfMode::Nearest.bytes_per_element(Variant::Plain),
        };
        match clip {
            Clip::Value => step,
            Clip::Norm => step + self.grad_bytes(),
        }
    }
}

/// The limit of a clipped step of `n` elements: for a norm, a read of the
/// gradients' bytes and the skeleton one after the other; by value the
/// skeleton alone (both forms, with and without prefetch, the faster
/// counts).
fn limits(n: usize, clip: Clip, format: Format, threads: usize) -> [Box<dyn FnMut()>; 2] {
    [false, true].map(|prefetch| {
        // The gradients' bytes, read as f32 (written, so that no page is
        // the shared zero page).
        let grads = vec![1.0f32; n * format.grad_bytes() / 4];
        let mut skeleton: Box<dyn FnMut()> = match format {
            Format::F32 => {
                let mut buffers = Buffers::new(n, Variant::Plain);
                Box::new(move || roofline::skeleton(&mut buffers, threads, prefetch))
            }
            Format::Bf16 => {
                let mut buffers = roofline::HalfSkeleton::new(n, false);
                Box::new(move || buffers.run(threads, prefetch))
            }
        };
        Box::new(move || {
            if matches!(clip, Clip::Norm) {
                std::hint::black_box(roofline::read_all(&grads, threads));
            }
            skeleton();
        }) as Box<dyn FnMut()>
    })
}

/// Both frameworks with each clipping, plain variant, on tensors of
/// `sizes` of `format`.
pub(crate) fn clipping_rows(
    case: String,
    sizes: &[usize],
    format: Format,
    threads: usize,
    rows: &mut Vec<Row>,
) {
    for clip in [Clip::Value, Clip::Norm] {
        let what = What {
            case: &case,
            sizes,
            clip,
            format,
            threads,
        };
        burn_clipped(&what, rows);
        candle_clipped(&what, rows);
    }
}

/// One clipped row's workload.
struct What<'a> {
    case: &'a str,
    sizes: &'a [usize],
    clip: Clip,
    format: Format,
    threads: usize,
}

fn budget(n: usize) -> Duration {
    Duration::from_millis(if n >= 1 << 24 { 1000 } else { 700 })
}

/// The four steps of a clipped row: the framework's optimizer and the fused
/// one, each with and without the clipping.
struct Steps<'a> {
    baseline: &'a mut dyn FnMut(),
    fused: &'a mut dyn FnMut(),
    baseline_unclipped: &'a mut dyn FnMut(),
    fused_unclipped: &'a mut dyn FnMut(),
}

/// What [`time`] measures of a clipped row.
struct Times {
    baseline_ns: f64,
    fused_ns: f64,
    /// The clipped fused step's time timed beside the limit alone.
    fused_apart_s: f64,
    limit_s: f64,
    unclipped: Unclipped,
}

/// Times the four steps in the same rounds (the speedups with and without
/// clipping under the same conditions), then the two fused steps
/// interleaved with the limit alone, apart from the baselines that
/// allocate (see [`fused_and_limit`](crate::limit::fused_and_limit)): the
/// fraction of the limit and what clipping costs the fused step.
fn time(what: &What, steps: Steps) -> Times {
    let n: usize = what.sizes.iter().sum();
    let Steps {
        baseline,
        fused,
        baseline_unclipped,
        fused_unclipped,
    } = steps;
    let beside = beside_baseline(
        budget(n),
        BASELINE_MIN_REPS,
        baseline,
        &mut [&mut *fused, &mut *baseline_unclipped, &mut *fused_unclipped],
    );
    let [mut limit, mut limit_prefetch] = limits(n, what.clip, what.format, what.threads);
    let first = interleaved_medians(1, 2, &mut [&mut *fused]);
    let reps = reps_for(budget(n) / 2, first[0] * 4, 5, 100);
    let apart = interleaved_medians(
        0,
        reps,
        &mut [fused, fused_unclipped, &mut *limit, &mut *limit_prefetch],
    );
    let seconds = |d: Duration| d.as_secs_f64();
    let ns = |d: Duration| d.as_secs_f64() * 1e9;
    Times {
        baseline_ns: ns(beside[0]),
        fused_ns: ns(beside[1]),
        fused_apart_s: seconds(apart[0]),
        limit_s: seconds(apart[2].min(apart[3])),
        unclipped: Unclipped {
            baseline_ns: ns(beside[2]),
            fused_ns: ns(beside[3]),
            clipped_over_unclipped: seconds(apart[0]) / seconds(apart[1]),
        },
    }
}

/// burn's `RmsProp` with burn's clipping (applied by `ModuleOptimizer` with
/// tensor ops) against the fused optimizer with the same clipping config
/// (applied inside the kernel).
fn burn_clipped(what: &What, rows: &mut Vec<Row>) {
    let variant = Variant::Plain;
    let lr = variant.hyper().lr;
    let clipping = Some(what.clip.burn());
    let case = |optim: burn::optim::ModuleOptimizer| {
        burn_case::Case::new_in(what.format.burn(), what.sizes, optim, lr)
    };
    let mut baseline = case(
        burn_case::burn_rmsprop_config(variant)
            .with_grad_clipping(clipping.clone())
            .init(),
    );
    let mut fused = case(
        burn_case::fused_rmsprop(variant)
            .with_grad_clipping(clipping)
            .init(),
    );
    let mut baseline_unclipped = case(burn_case::burn_rmsprop(variant));
    let mut fused_unclipped = case(burn_case::fused_rmsprop(variant).init());
    let times = time(
        what,
        Steps {
            baseline: &mut || baseline.step(),
            fused: &mut || fused.step(),
            baseline_unclipped: &mut || baseline_unclipped.step(),
            fused_unclipped: &mut || fused_unclipped.step(),
        },
    );
    let diff = max_abs_diff(&baseline.values(), &fused.values());
    rows.push(row(
        "burn",
        format!("burn RmsProp, {} (burn's)", what.clip.name()),
        format!("FusedRmsProp, {} (in the step)", what.clip.name()),
        (what, diff),
        times,
    ));
}

/// candle has no clipping: the baseline is RMSprop and the clipping both
/// written in candle tensor ops ([`TensorOpsRmsProp`] with the same
/// parameters), what a candle user writes today; against the fused
/// optimizer clipping inside the kernel.
fn candle_clipped(what: &What, rows: &mut Vec<Row>) {
    use candle_nn::Optimizer;
    let vars_and_grads = || candle_case::vars_and_grads_in(what.format.candle(), what.sizes);
    let unclipped = candle_case::params(Variant::Plain);
    let (baseline_vars, baseline_grads) = vars_and_grads();
    let mut baseline =
        TensorOpsRmsProp::new(baseline_vars.clone(), what.clip.candle()).expect("valid");
    let (fused_vars, fused_grads) = vars_and_grads();
    let mut fused = RmsProp::new(fused_vars.clone(), what.clip.candle()).expect("valid");
    let (vars, unclipped_grads) = vars_and_grads();
    let mut baseline_unclipped = TensorOpsRmsProp::new(vars, unclipped).expect("valid");
    let (vars, fused_unclipped_grads) = vars_and_grads();
    let mut fused_unclipped = RmsProp::new(vars, unclipped).expect("valid");
    let times = time(
        what,
        Steps {
            baseline: &mut || baseline.step(&baseline_grads).expect("a step"),
            fused: &mut || fused.step(&fused_grads).expect("a step"),
            baseline_unclipped: &mut || baseline_unclipped.step(&unclipped_grads).expect("a step"),
            fused_unclipped: &mut || {
                fused_unclipped
                    .step(&fused_unclipped_grads)
                    .expect("a step")
            },
        },
    );
    let diff = max_abs_diff(
        &candle_case::values(&baseline_vars),
        &candle_case::values(&fused_vars),
    );
    rows.push(row(
        "candle",
        format!("tensor-op RMSprop, {} (candle ops)", what.clip.name()),
        format!("fused RmsProp, {} (in the step)", what.clip.name()),
        (what, diff),
        times,
    ));
}

/// The row of one framework and clipping, with the largest parameter
/// difference after the timed steps.
fn row(
    framework: &'static str,
    baseline: String,
    fused: String,
    (what, diff): (&What, f64),
    times: Times,
) -> Row {
    let n: usize = what.sizes.iter().sum();
    let bytes = (n * what.format.bytes_per_element(what.clip)) as f64;
    Row {
        framework,
        baseline,
        case: what.case.to_string(),
        variant: Variant::Plain,
        elements: n,
        threads: rayon::current_num_threads(),
        baseline_ns: times.baseline_ns,
        fused,
        fused_ns: times.fused_ns,
        gbps: Some(bytes / times.fused_apart_s / 1e9),
        roofline_fraction: Some(times.limit_s / times.fused_apart_s),
        max_abs_diff: Some(diff),
        unclipped: Some(times.unclipped),
        in_place_fraction: None,
    }
}
