//! `compare`: the fused step against its limits and against plain code, in
//! one table from one run.
//!
//! ```text
//! cargo run --release -p fused-rmsprop-benches --bin compare [-- OPTIONS]
//!   --quick            1M only, plain variant, no model (well under 30 s)
//!   --no-model         skip the 150-parameter transformer-sized model
//!   --no-train         skip the whole-training-step rows
//!   --sizes 1M,16M     tensor sizes (K and M suffixes: 2^10, 2^20)
//!   --threads N        threads for the threaded rows (default: the pool's)
//!   --variant NAME     plain | momentum | centered+momentum+wd (default: all
//!                      for the single tensors, plain for the models)
//!   --json             one JSON object per row on stdout instead of the table
//!   --peers FILE       add rows of other ecosystems (JSON lines, as written by
//!                      benches/python/peers.py) to the table and the plot
//!   --plot PATH        draw elements/s against size for the first variant (SVG)
//!   --half LIST        16-bit types of the framework rows (bf16, f16; default
//!                      bf16; `none` skips them). The kernel rows always
//!                      cover both.
//! ```
//!
//! Rows, for each size and variant: the kernel's paths (`framework` kernel:
//! SIMD on one thread, the scalar spec, SIMD on all threads, against a plain
//! Rust loop); Candle's fused optimizer against the same update in candle
//! tensor ops, candle-nn's `AdamW` and `SGD` (those two in the plain
//! variant only: they do not change with it); Burn's fused optimizer against
//! Burn's `RmsProp` through `ModuleOptimizer` (the scalar spec only up to
//! 1M elements: its speed per element does not change with size). Then the
//! 150-tensor transformer-sized model in both frameworks, Burn's two
//! optimizers again at the largest size and on that model with the module
//! held during the step as burn-train's `Learner` holds it (every parameter
//! shared, so the fused optimizer writes each into a buffer it keeps for it
//! instead of in place), and whole training steps
//! (forward, backward, optimizer) of a small MLP, built-in vs fused.
//!
//! Then the cost per tensor on the 150- and the 2,000-tensor model: each
//! framework's fused step, the bare kernel called once per tensor, burn's
//! batched route, and burn's floor (an optimizer that returns its inputs)
//! alone and under the kernel's traffic, each against the bare kernel's
//! `step_many` on buffers of the same sizes, printed in µs per tensor.
//!
//! Then 16-bit parameters: the kernel's bf16 and f16 step (each rounding
//! mode) against the f32 step of the same size and the 16-bit skeleton, and
//! each framework's fused optimizer on a bf16 (and, with `--half`, f16) model
//! (the largest size and the 150-tensor model, plain variant) against its
//! built-in optimizers on the same 16-bit model.
//!
//! Each row: median ms per step (baseline and fused interleaved, after
//! warm-up), the speedup, the fused GB/s (bytes the variant must stream),
//! `roofline_fraction`: the fused GB/s over the GB/s of the skeleton loop
//! (the kernel's loads and stores, trivial arithmetic) on the same threads,
//! and for RMSprop baselines the largest parameter difference after all the
//! timed steps. Every row times the fused step and the skeleton (the
//! faster of its two forms, with and without software prefetch)
//! interleaved with each other, apart from the baseline (a baseline that
//! allocates hundreds of megabytes per step slows whatever runs right after
//! it, and after a one-thread baseline the pool's helpers are asleep), so
//! the GB/s and roofline come from that pair and the fused ms and speedup
//! from the interleaving with the baseline. The 16-bit kernel rows, whose
//! baseline is the threaded f32 step, time all four together.

use std::time::Duration;

use fused_rmsprop::{Execution, Isa, Kernel, RmsProp, Threads};
use fused_rmsprop_benches::timing::{beside_baseline, interleaved_medians, reps_for};
use fused_rmsprop_benches::workload::{self, Buffers, HalfBuffers, HalfMode, Variant, size_label};
use fused_rmsprop_benches::{burn_case, candle_case, naive, report, roofline};

struct Options {
    sizes: Vec<usize>,
    variants: Vec<Variant>,
    /// The variants of the many-tensor model rows: plain unless `--variant`
    /// names one.
    model_variants: Vec<Variant>,
    threads: usize,
    json: bool,
    model: bool,
    training: bool,
    peers: Option<String>,
    plot: Option<String>,
    half: Vec<candle_core::DType>,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        _ => (s, 0),
    };
    digits
        .parse::<usize>()
        .map(|n| n << shift)
        .map_err(|_| format!("--sizes: cannot read {s:?} as a size (examples: 4096, 64K, 16M)"))
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        sizes: vec![1 << 20, 1 << 24],
        variants: Variant::ALL.to_vec(),
        model_variants: vec![Variant::Plain],
        threads: rayon::current_num_threads(),
        json: false,
        model: true,
        training: true,
        peers: None,
        plot: None,
        half: vec![candle_core::DType::BF16],
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => {
                options.sizes = vec![1 << 20];
                options.variants = vec![Variant::Plain];
                options.model = false;
                options.training = false;
                options.half = Vec::new();
            }
            "--no-model" => options.model = false,
            "--no-train" => options.training = false,
            "--sizes" => {
                options.sizes = value("--sizes")?
                    .split(',')
                    .map(parse_size)
                    .collect::<Result<_, _>>()?
            }
            "--threads" => {
                options.threads = value("--threads")?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--threads needs a whole number >= 1")?
            }
            "--variant" => {
                let name = value("--variant")?;
                options.variants = vec![Variant::parse(&name).ok_or(format!(
                    "--variant: unknown {name:?}; one of plain, momentum, centered+momentum+wd"
                ))?];
                options.model_variants = options.variants.clone();
            }
            "--half" => {
                let list = value("--half")?;
                options.half = if list == "none" {
                    Vec::new()
                } else {
                    list.split(',')
                        .map(|t| match t {
                            "bf16" => Ok(candle_core::DType::BF16),
                            "f16" => Ok(candle_core::DType::F16),
                            other => Err(format!("--half: unknown {other:?}; bf16, f16 or none")),
                        })
                        .collect::<Result<_, _>>()?
                };
            }
            "--json" => options.json = true,
            "--peers" => options.peers = Some(value("--peers")?),
            "--plot" => options.plot = Some(value("--plot")?),
            "--help" | "-h" => {
                println!(
                    "{}",
                    include_str!("compare.rs")
                        .lines()
                        .take_while(|l| l.starts_with("//!"))
                        .map(|l| l.trim_start_matches("//!").trim_start_matches(' '))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other:?} (see --help)")),
        }
    }
    Ok(options)
}

/// The CPU's model name, from /proc/cpuinfo where there is one.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

struct Row {
    framework: &'static str,
    baseline: String,
    case: String,
    variant: Variant,
    elements: usize,
    threads: usize,
    baseline_ns: f64,
    fused: String,
    fused_ns: f64,
    /// Fused GB/s and fraction of the skeleton's; `None` for whole
    /// training steps, whose time is not the optimizer's alone.
    gbps: Option<f64>,
    roofline_fraction: Option<f64>,
    /// Largest |difference| of the parameters after the timed steps, for
    /// baselines computing the same update (RMSprop).
    max_abs_diff: Option<f64>,
}

impl Row {
    fn report(&self, cpu: &str) -> report::Row {
        report::Row {
            framework: self.framework.to_string(),
            baseline: self.baseline.clone(),
            fused: self.fused.clone(),
            case: self.case.clone(),
            variant: self.variant.name().to_string(),
            elements: self.elements,
            threads: self.threads,
            baseline_ns: self.baseline_ns,
            fused_ns: Some(self.fused_ns),
            speedup: Some(self.baseline_ns / self.fused_ns),
            gbps: self.gbps,
            roofline_fraction: self.roofline_fraction,
            max_abs_diff: self.max_abs_diff,
            cpu: cpu.to_string(),
        }
    }
}

/// Times a kernel path against a baseline, interleaved, on one set of buffers
/// each; also times the skeleton on `threads` threads for the roofline.
fn kernel_rows(n: usize, variant: Variant, threads: usize, rows: &mut Vec<Row>) {
    let hyper = variant.hyper();
    let opt = RmsProp::new(hyper).unwrap();
    let forced = |kernel, threads| opt.with_execution(Execution { kernel, threads }).unwrap();
    let pool_threads = Threads::Exactly(std::num::NonZeroUsize::new(threads).unwrap());
    let best = Isa::detect();
    let paths = [
        (
            format!("simd-{}", best.name()),
            1,
            forced(Kernel::Simd(best), Threads::Single),
        ),
        (
            "scalar-spec".to_string(),
            1,
            forced(Kernel::Scalar, Threads::Single),
        ),
        (
            format!("simd-{} x{threads}", best.name()),
            threads,
            forced(Kernel::Simd(best), pool_threads),
        ),
    ];
    let bytes = (n * variant.bytes_per_element()) as f64;
    let budget = Duration::from_millis(if n >= 1 << 24 { 800 } else { 500 });
    for (name, t, fused) in paths {
        if fused.execution().kernel == Kernel::Scalar && n > 1 << 20 {
            continue;
        }
        let mut fused_buffers = Buffers::new(n, variant);
        let mut plain_buffers = Buffers::new(n, variant);
        let [mut skeleton, mut skeleton_prefetch] = skeletons(n, variant, t);
        let mut run_fused = || {
            fused_buffers.step(&fused);
        };
        let mut run_plain = || naive::step(&hyper, &mut plain_buffers);
        let first = interleaved_medians(1, 3, &mut [&mut run_fused]);
        let reps = reps_for(budget / 2, first[0] * 2, 5, 200);
        let times = interleaved_medians(1, reps, &mut [&mut run_plain, &mut run_fused]);
        let [plain_t, fused_t] = [times[0], times[1]].map(|d| d.as_secs_f64());
        // GB/s and the roofline from the step and the limit timed apart
        // from the one-thread baseline: right after it, the pool's helpers
        // are asleep, and whichever threaded run comes first pays their
        // waking (on the Xeon a 1M two-thread step read 0.43 ms beside
        // the baseline, where its skeleton, run next, took 0.24).
        let (own_t, skeleton_t) = fused_and_limit(
            &mut run_fused,
            &mut [&mut *skeleton, &mut *skeleton_prefetch],
            budget / 2,
        );
        rows.push(Row {
            framework: "kernel",
            baseline: if t == 1 {
                "plain-loop".into()
            } else {
                "plain-loop (1 thread)".into()
            },
            case: size_label(n),
            variant,
            elements: n,
            threads: t,
            baseline_ns: plain_t * 1e9,
            fused: name,
            fused_ns: fused_t * 1e9,
            gbps: Some(bytes / own_t / 1e9),
            roofline_fraction: Some(skeleton_t / own_t),
            max_abs_diff: None,
        });
    }
}

/// 16-bit parameters with `f32` state: the fused step of `bf16` and `f16`
/// (each rounding mode) against the `f32` step on the same number of
/// elements (the baseline: the speedup is what the narrower types buy), with
/// the 16-bit skeleton (same loads and stores) as the limit. Plain variant;
/// nearest on one thread and on `threads`, the other modes on `threads`.
fn half_kernel_rows(n: usize, threads: usize, rows: &mut Vec<Row>) {
    use fused_rmsprop::{bf16, f16};
    half_rows_of::<bf16>("bf16", n, threads, rows);
    half_rows_of::<f16>("f16", n, threads, rows);
}

fn half_rows_of<H>(name: &str, n: usize, threads: usize, rows: &mut Vec<Row>)
where
    H: fused_rmsprop::Param<State = f32> + workload::From16,
{
    let variant = Variant::Plain;
    let best = Isa::detect();
    let mut cases = vec![(HalfMode::Nearest, 1)];
    cases.extend(HalfMode::ALL.map(|mode| (mode, threads)));
    let budget = Duration::from_millis(if n >= 1 << 24 { 400 } else { 300 });
    for (mode, t) in cases {
        let hyper = mode.apply(variant.hyper());
        let execution = Execution {
            kernel: Kernel::Simd(best),
            threads: if t == 1 {
                Threads::Single
            } else {
                Threads::Exactly(std::num::NonZeroUsize::new(t).unwrap())
            },
        };
        let opt = RmsProp::new(hyper)
            .unwrap()
            .with_execution(execution)
            .unwrap();
        let wide_opt = RmsProp::new(variant.hyper())
            .unwrap()
            .with_execution(execution)
            .unwrap();
        let mut half = HalfBuffers::<H>::new(n, &hyper);
        let mut wide = Buffers::new(n, variant);
        let master = mode == HalfMode::Master;
        let (mut plain, mut prefetched) = (
            roofline::HalfSkeleton::new(n, master),
            roofline::HalfSkeleton::new(n, master),
        );
        let mut run_half = || half.step(&opt);
        let mut run_wide = || wide.step(&wide_opt);
        let mut run_skeleton = || plain.run(t, false);
        let mut run_skeleton_prefetch = || prefetched.run(t, true);
        let first = interleaved_medians(1, 3, &mut [&mut run_half]);
        let reps = reps_for(budget, first[0] * 4, 5, 200);
        let times = interleaved_medians(
            1,
            reps,
            &mut [
                &mut run_wide,
                &mut run_half,
                &mut run_skeleton,
                &mut run_skeleton_prefetch,
            ],
        );
        // The limit: the faster skeleton, with or without prefetch.
        let [wide_t, half_t, skeleton_t] =
            [times[0], times[1], times[2].min(times[3])].map(|d| d.as_secs_f64());
        let bytes = (n * mode.bytes_per_element(variant)) as f64;
        rows.push(Row {
            framework: "kernel",
            baseline: format!(
                "f32 step, same n{}",
                if t == 1 { "" } else { " and threads" }
            ),
            case: format!("{} {name} {}", size_label(n), mode.name()),
            variant,
            elements: n,
            threads: t,
            baseline_ns: wide_t * 1e9,
            fused: format!(
                "{name}-{} simd-{}{}",
                mode.name(),
                best.name(),
                if t == 1 {
                    String::new()
                } else {
                    format!(" x{t}")
                }
            ),
            fused_ns: half_t * 1e9,
            gbps: Some(bytes / half_t / 1e9),
            roofline_fraction: Some(skeleton_t / half_t),
            max_abs_diff: None,
        });
    }
}

/// Fewest timed rounds of a framework baseline beside the fused step. The
/// slowest baselines (candle-nn's `AdamW` on a 16M bf16 model: 1.2 s a
/// step) take the default run's time; their speedups are tens to hundreds,
/// so the median of three is precise enough, and the fused step's GB/s
/// comes from its own timing apart from the baseline.
const BASELINE_MIN_REPS: usize = 3;

/// The fused step's time and the limit's (the fastest of `limits`), timed
/// interleaved with each other only. The framework rows time their baseline
/// beside the fused step for the speedup, but a baseline that allocates and
/// frees hundreds of megabytes per step slows whatever runs right after it
/// (measured on the Xeon: candle's fused bf16 16M step took 4.8 ms beside
/// the skeleton alone and 6.2-6.5 ms right after the tensor-op baseline,
/// where the skeleton run after it was slowed less), so the roofline is
/// measured apart from the baseline.
fn fused_and_limit(
    fused: &mut dyn FnMut(),
    limits: &mut [&mut dyn FnMut()],
    budget: Duration,
) -> (f64, f64) {
    let first = interleaved_medians(1, 2, &mut [&mut *fused]);
    let reps = reps_for(budget, first[0] * (1 + limits.len() as u32), 5, 100);
    let mut runs: Vec<&mut dyn FnMut()> = vec![fused];
    runs.extend(limits.iter_mut().map(|l| &mut **l as &mut dyn FnMut()));
    let times = interleaved_medians(0, reps, &mut runs);
    let limit = times[1..].iter().min().expect("at least one limit");
    (times[0].as_secs_f64(), limit.as_secs_f64())
}

/// The two forms of the skeleton for `n` elements of `variant` on
/// `threads` threads, without and with software prefetch, each on its own
/// buffers: time both; the limit is the faster.
fn skeletons(n: usize, variant: Variant, threads: usize) -> [Box<dyn FnMut()>; 2] {
    [false, true].map(|prefetch| {
        let mut buffers = Buffers::new(n, variant);
        Box::new(move || roofline::skeleton(&mut buffers, threads, prefetch)) as Box<dyn FnMut()>
    })
}

/// Candle: the fused optimizer against the same update in candle tensor ops
/// (as candle-optimisers writes it), candle-nn's `AdamW` (its built-in
/// adaptive optimizer) and `SGD` (the cheapest built-in step), on `Var`s of
/// `sizes` elements and the same gradients every step. Each baseline is
/// timed against a fresh fused optimizer that takes as many steps, so the
/// RMSprop baseline's parameters can be compared at the end.
fn candle_rows(
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
        });
    }
}

/// Both frameworks on a 16-bit model (`sizes`, plain variant): the fused
/// optimizer against candle's tensor-op RMSprop and `AdamW`, and (both
/// routes: per parameter through `ModuleOptimizer`, and batched) against
/// burn's `RmsProp`, each on the same model of `dtype`; the limit is the
/// 16-bit skeleton (14 bytes per element), the faster of its two forms.
fn half_framework_rows(
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
        });
    }
}

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
fn overhead_rows(
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
        });
    }
}

/// The name of `overhead_rows`' kernel row that calls the kernel once per
/// tensor.
const ONE_CALL_PER_TENSOR: &str = "one call per tensor";

/// The name of `overhead_rows`' row of burn's floor on its own.
const FLOOR: &str = "floor: returns inputs";

/// The name of `overhead_rows`' row of burn's floor under the kernel's
/// traffic (`burn_case::Traffic`).
const FLOOR_UNDER_TRAFFIC: &str = "floor + kernel per call";

/// Microseconds per tensor over the bare kernel, from `overhead_rows`.
fn print_overheads(rows: &[report::Row]) {
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

/// The largest |a - b| over two equally long parameter lists.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}

/// Burn: the fused optimizer against burn's `RmsProp`, both through
/// `ModuleOptimizer` on the default Flex device with autodiff, as a training
/// loop calls them, on parameters of `sizes` elements; the same gradients
/// every step. Both take the same number of steps, so their parameters can
/// be compared at the end.
fn burn_rows(case: String, sizes: &[usize], variant: Variant, threads: usize, rows: &mut Vec<Row>) {
    burn_rows_stepped(case, sizes, variant, threads, Stepping::Alone, rows);
}

/// How the training loop around a burn optimizer holds the module.
#[derive(Clone, Copy, PartialEq)]
enum Stepping {
    /// It hands the module over (a loop of the user's own).
    Alone,
    /// It holds a clone during the step, as burn-train's `Learner` does.
    Held,
}

/// [`burn_rows`] with the module held as `stepping` says.
fn burn_rows_stepped(
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
    let (own_t, skeleton_t) = fused_and_limit(
        &mut || step(&mut fused),
        &mut [&mut *skeleton, &mut *skeleton_prefetch],
        budget / 2,
    );
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
    });
}

/// A framework, a baseline's name, and whole training steps with the
/// baseline and with the fused optimizer.
type TrainingCase = (
    &'static str,
    &'static str,
    Box<dyn FnMut()>,
    Box<dyn FnMut()>,
);

/// End to end: one whole training step (forward, backward, optimizer) of a
/// 2.1M-parameter MLP on a batch of 64, built-in optimizer vs fused, in each
/// framework.
fn training_rows(variant: Variant, rows: &mut Vec<Row>) {
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
        });
    }
}

fn main() {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("compare: {e}");
            std::process::exit(2);
        }
    };
    let cpu = cpu_name();
    let mut rows = Vec::new();
    let model_units = if options.model {
        options.model_variants.len()
    } else {
        0
    };
    let units = options.sizes.len() * options.variants.len()
        + model_units
        + usize::from(options.training)
        + 2 * usize::from(options.model)
        + options.half.len();
    let progress = indicatif::ProgressBar::new(units as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}")
            .expect("a valid template"),
    );
    for &n in &options.sizes {
        for &variant in &options.variants {
            progress.set_message(format!("{} {}", size_label(n), variant.name()));
            kernel_rows(n, variant, options.threads, &mut rows);
            if variant == Variant::Plain {
                half_kernel_rows(n, options.threads, &mut rows);
            }
            candle_rows(size_label(n), &[n], variant, options.threads, &mut rows);
            burn_rows(size_label(n), &[n], variant, options.threads, &mut rows);
            progress.inc(1);
        }
    }
    if options.model {
        let sizes = workload::transformer_sizes();
        for &variant in &options.model_variants {
            progress.set_message(format!(
                "the {}-tensor model, {}",
                sizes.len(),
                variant.name()
            ));
            // The limit of the model's step: the skeleton on one tensor of
            // the model's total size.
            candle_rows(
                format!("model-{}", sizes.len()),
                &sizes,
                variant,
                options.threads,
                &mut rows,
            );
            burn_rows(
                format!("model-{}", sizes.len()),
                &sizes,
                variant,
                options.threads,
                &mut rows,
            );
            progress.inc(1);
        }
    }
    if options.model {
        let many = workload::many_tensor_sizes();
        let variant = options.variants[0];
        progress.set_message(format!("the {}-tensor model", many.len()));
        let label = format!("model-{}", many.len());
        candle_rows(label.clone(), &many, variant, options.threads, &mut rows);
        burn_rows(label.clone(), &many, variant, options.threads, &mut rows);
        for (label, sizes) in [
            (
                format!("model-{}", workload::transformer_sizes().len()),
                workload::transformer_sizes(),
            ),
            (label, many),
        ] {
            overhead_rows(label, &sizes, variant, options.threads, &mut rows);
        }
        progress.inc(1);
    }
    if !options.half.is_empty() {
        let largest = options.sizes.iter().copied().max().unwrap_or(1 << 24);
        let model = workload::transformer_sizes();
        for &dtype in &options.half {
            progress.set_message(format!("16-bit models, {dtype:?}"));
            half_framework_rows(
                size_label(largest),
                &[largest],
                dtype,
                options.threads,
                &mut rows,
            );
            if options.model {
                half_framework_rows(
                    format!("model-{}", model.len()),
                    &model,
                    dtype,
                    options.threads,
                    &mut rows,
                );
            }
            progress.inc(1);
        }
    }
    if options.model {
        // burn-train's Learner holds the model it steps: every parameter
        // arrives shared. The largest size and the 150-tensor model, plain.
        let variant = options.variants[0];
        progress.set_message("burn, the module held as burn-train's Learner holds it");
        let largest = options.sizes.iter().copied().max().unwrap_or(1 << 24);
        let model = workload::transformer_sizes();
        for (case, sizes) in [
            (size_label(largest), vec![largest]),
            (format!("model-{}", model.len()), model),
        ] {
            burn_rows_stepped(
                case,
                &sizes,
                variant,
                options.threads,
                Stepping::Held,
                &mut rows,
            );
        }
        progress.inc(1);
    }
    if options.training {
        // One variant is enough to show what the swap buys a whole step.
        let variant = options.variants[0];
        progress.set_message(format!("whole training steps, {}", variant.name()));
        training_rows(variant, &mut rows);
        progress.inc(1);
    }
    progress.finish_and_clear();
    let mut rows: Vec<report::Row> = rows.iter().map(|r| r.report(&cpu)).collect();
    if options.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).expect("a row serializes"));
        }
    } else {
        print_table(&cpu, &rows);
        print_overheads(&rows);
    }
    if let Some(path) = &options.peers {
        let peers = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| report::read_rows(&text));
        match peers {
            Ok(peers) => {
                if !options.json {
                    print_peers(&rows, &peers);
                }
                rows.extend(peers);
            }
            Err(e) => {
                eprintln!("compare: --peers {path}: {e}");
                std::process::exit(2);
            }
        }
    }
    if let Some(path) = &options.plot {
        let variant = options.variants[0].name();
        match report::plot(&rows, variant, path) {
            Ok(()) => eprintln!("compare: plot of {variant} written to {path}"),
            Err(e) => {
                eprintln!("compare: {e}");
                std::process::exit(2);
            }
        }
    }
}

fn print_table(cpu: &str, rows: &[report::Row]) {
    println!(
        "CPU: {cpu}; rayon pool: {} threads",
        rayon::current_num_threads()
    );
    println!(
        "{:<9} {:<34} {:<18} {:<21} {:<30} {:>3} {:>11} {:>9} {:>8} {:>7} {:>9} {:>10}",
        "framework",
        "baseline",
        "case",
        "variant",
        "fused",
        "thr",
        "baseline ms",
        "fused ms",
        "speedup",
        "GB/s",
        "roofline",
        "max |diff|"
    );
    let or_dash = |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map_or("-".to_string(), f);
    for r in rows {
        println!(
            "{:<9} {:<34} {:<18} {:<21} {:<30} {:>3} {:>11.3} {:>9} {:>8} {:>7} {:>9} {:>10}",
            r.framework,
            r.baseline,
            r.case,
            r.variant,
            r.fused,
            r.threads,
            r.baseline_ns / 1e6,
            or_dash(r.fused_ns, &|x| format!("{:.3}", x / 1e6)),
            or_dash(r.speedup, &|x| format!("{x:.2}x")),
            or_dash(r.gbps, &|x| format!("{x:.2}")),
            or_dash(r.roofline_fraction, &|x| format!("{x:.2}")),
            or_dash(r.max_abs_diff, &|x| format!("{x:.1e}")),
        );
    }
    println!(
        "roofline = fused GB/s / skeleton GB/s (same loads and stores, trivial arithmetic, same threads, same run)"
    );
}

/// The peers' rows against the fused kernel of this run at the same size,
/// variant and thread count.
fn print_peers(rows: &[report::Row], peers: &[report::Row]) {
    println!("\nPeers (their own run on this machine, read from --peers):");
    println!(
        "{:<9} {:<34} {:<6} {:<21} {:>3} {:>10} {:>15} {:>14}",
        "framework",
        "optimizer",
        "case",
        "variant",
        "thr",
        "their ms",
        "fused ms (run)",
        "fused speedup"
    );
    for p in peers {
        // An f32 peer meets the kernel's f32 row (case "16M"); a bf16 peer
        // (case "16M bf16") the kernel's bf16 row rounding to nearest.
        let fused = rows.iter().find(|r| {
            r.framework == "kernel"
                && (r.case == p.case || r.case == format!("{} nearest", p.case))
                && r.elements == p.elements
                && r.variant == p.variant
                && r.threads == p.threads.max(1)
                && r.threads > 1
        });
        let fused_ns = fused.and_then(|r| r.fused_ns);
        println!(
            "{:<9} {:<34} {:<6} {:<21} {:>3} {:>10.3} {:>15} {:>14}",
            p.framework,
            p.baseline,
            p.case,
            p.variant,
            p.threads,
            p.baseline_ns / 1e6,
            fused_ns.map_or("-".to_string(), |ns| format!("{:.3}", ns / 1e6)),
            fused_ns.map_or("-".to_string(), |ns| format!("{:.1}x", p.baseline_ns / ns)),
        );
    }
}
