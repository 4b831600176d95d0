//! Rows of the bare kernel: each path against a plain loop, and the 16-bit steps against the f32 step.

use std::time::Duration;

use fused_rmsprop::{Execution, Isa, Kernel, RmsProp, Threads};
use fused_rmsprop_benches::timing::{interleaved_medians, reps_for};
use fused_rmsprop_benches::workload::{self, Buffers, HalfBuffers, HalfMode, Variant, size_label};
use fused_rmsprop_benches::{naive, roofline};

use crate::limit::{fused_and_limit, skeletons};
use crate::row::Row;

/// Times a kernel path against a baseline, interleaved, on one set of buffers
/// each; also times the skeleton on `threads` threads for the roofline.
pub(crate) fn kernel_rows(n: usize, variant: Variant, threads: usize, rows: &mut Vec<Row>) {
    let hyper = variant.hyper();
    let opt = RmsProp::new(hyper).unwrap();
    let forced = |kernel, threads| {
        opt.with_execution(Execution {
            kernel,
            threads,
            ..Default::default()
        })
        .unwrap()
    };
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
            unclipped: None,
            in_place_fraction: None,
        });
    }
}

/// 16-bit parameters with `f32` state: the fused step of `bf16` and `f16`
/// (each rounding mode) against the `f32` step on the same number of
/// elements (the baseline: the speedup is what the narrower types buy), with
/// the 16-bit skeleton (same loads and stores) as the limit. Plain variant;
/// nearest on one thread and on `threads`, the other modes on `threads`.
pub(crate) fn half_kernel_rows(n: usize, threads: usize, rows: &mut Vec<Row>) {
    use fused_rmsprop::{bf16, f16};
    half_rows_of::<bf16>("bf16", n, threads, rows);
    half_rows_of::<f16>("f16", n, threads, rows);
}

pub(crate) fn half_rows_of<H>(name: &str, n: usize, threads: usize, rows: &mut Vec<Row>)
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
            ..Default::default()
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
            unclipped: None,
            in_place_fraction: None,
        });
    }
}
