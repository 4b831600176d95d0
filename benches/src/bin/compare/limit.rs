//! The fused step timed beside its bandwidth limit, the skeleton loop with the same traffic.

use std::time::Duration;

use fused_rmsprop_benches::roofline::{self, OutOfPlaceSkeleton};
use fused_rmsprop_benches::timing::{interleaved_medians, reps_for};
use fused_rmsprop_benches::workload::{Buffers, Variant};

/// Fewest timed rounds of a framework baseline beside the fused step. The
/// slowest baselines (candle-nn's `AdamW` on a 16M bf16 model: 1.2 s a
/// step) take the default run's time; their speedups are tens to hundreds,
/// so the median of three is precise enough, and the fused step's GB/s
/// comes from its own timing apart from the baseline.
pub(crate) const BASELINE_MIN_REPS: usize = 3;

/// The fused step's time and the limit's (the fastest of `limits`), timed
/// interleaved with each other only. The framework rows time their baseline
/// beside the fused step for the speedup, but a baseline that allocates and
/// frees hundreds of megabytes per step slows whatever runs right after it
/// (measured on the Xeon: candle's fused bf16 16M step took 4.8 ms beside
/// the skeleton alone and 6.2-6.5 ms right after the tensor-op baseline,
/// where the skeleton run after it was slowed less), so the roofline is
/// measured apart from the baseline.
pub(crate) fn fused_and_limit(
    fused: &mut dyn FnMut(),
    limits: &mut [&mut dyn FnMut()],
    budget: Duration,
) -> (f64, f64) {
    let (fused, limits) = fused_and_limits(fused, &mut [limits], budget);
    (fused, limits[0])
}

/// [`fused_and_limit`] with several limits, each the fastest of its group,
/// all timed in the same rounds.
pub(crate) fn fused_and_limits(
    fused: &mut dyn FnMut(),
    groups: &mut [&mut [&mut dyn FnMut()]],
    budget: Duration,
) -> (f64, Vec<f64>) {
    let first = interleaved_medians(1, 2, &mut [&mut *fused]);
    let count: usize = groups.iter().map(|g| g.len()).sum();
    let reps = reps_for(budget, first[0] * (1 + count as u32), 5, 100);
    let mut runs: Vec<&mut dyn FnMut()> = vec![fused];
    for group in groups.iter_mut() {
        runs.extend(group.iter_mut().map(|l| &mut **l as &mut dyn FnMut()));
    }
    let times = interleaved_medians(0, reps, &mut runs);
    let mut rest = &times[1..];
    let limits = groups
        .iter()
        .map(|group| {
            let (mine, others) = rest.split_at(group.len());
            rest = others;
            mine.iter().min().expect("a limit per group").as_secs_f64()
        })
        .collect();
    (times[0].as_secs_f64(), limits)
}

/// The two forms of the skeleton for `n` elements of `variant` on
/// `threads` threads, without and with software prefetch, each on its own
/// buffers: time both; the limit is the faster.
pub(crate) fn skeletons(n: usize, variant: Variant, threads: usize) -> [Box<dyn FnMut()>; 2] {
    [false, true].map(|prefetch| {
        let mut buffers = Buffers::new(n, variant);
        Box::new(move || roofline::skeleton(&mut buffers, threads, prefetch)) as Box<dyn FnMut()>
    })
}

/// The four forms of the out-of-place skeleton (the held route's traffic:
/// parameters read from one buffer and written to another) for `n`
/// elements of `variant` on `threads` threads: without and with software
/// prefetch, with ordinary and with streaming stores, each on its own
/// buffers; the limit is the fastest.
pub(crate) fn out_of_place_skeletons(
    n: usize,
    variant: Variant,
    threads: usize,
) -> [Box<dyn FnMut()>; 4] {
    [(false, false), (true, false), (false, true), (true, true)].map(|(prefetch, streaming)| {
        let mut skeleton = OutOfPlaceSkeleton::new(n, variant);
        Box::new(move || skeleton.run(threads, prefetch, streaming)) as Box<dyn FnMut()>
    })
}
