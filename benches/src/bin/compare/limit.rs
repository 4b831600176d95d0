//! The fused step timed beside its bandwidth limit, the skeleton loop with the same traffic.

use std::time::Duration;

use fused_rmsprop_benches::roofline;
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
pub(crate) fn skeletons(n: usize, variant: Variant, threads: usize) -> [Box<dyn FnMut()>; 2] {
    [false, true].map(|prefetch| {
        let mut buffers = Buffers::new(n, variant);
        Box::new(move || roofline::skeleton(&mut buffers, threads, prefetch)) as Box<dyn FnMut()>
    })
}
