//! Medians of repeated runs, with the contenders interleaved so that a noisy
//! neighbour on a shared machine slows them alike and their ratio holds.

use std::time::{Duration, Instant};

/// Runs each closure `warmup` times, then `reps` rounds of one run of each
/// in turn; returns each one's median time.
pub fn interleaved_medians(
    warmup: usize,
    reps: usize,
    runs: &mut [&mut dyn FnMut()],
) -> Vec<Duration> {
    for run in runs.iter_mut() {
        for _ in 0..warmup {
            run();
        }
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(reps); runs.len()];
    for _ in 0..reps {
        for (run, t) in runs.iter_mut().zip(&mut times) {
            let start = Instant::now();
            run();
            t.push(start.elapsed());
        }
    }
    times.into_iter().map(median).collect()
}

/// The median of `times` (the mean of the middle two for an even count).
pub fn median(mut times: Vec<Duration>) -> Duration {
    assert!(!times.is_empty(), "median of no runs");
    times.sort();
    let mid = times.len() / 2;
    if times.len() % 2 == 1 {
        times[mid]
    } else {
        (times[mid - 1] + times[mid]) / 2
    }
}

/// How many repetitions fit in `budget` for a run that takes about `each`,
/// clamped to `[min, max]`.
pub fn reps_for(budget: Duration, each: Duration, min: usize, max: usize) -> usize {
    let n = budget.as_secs_f64() / each.as_secs_f64().max(1e-9);
    (n as usize).clamp(min, max)
}

/// A slow baseline timed beside faster contenders in as few runs as a
/// median allows: each contender runs once to warm up, the baseline once
/// (its warm-up, timed to size the rounds), then as many rounds of one run
/// each as fit in `budget` (at least `min_reps`, at most 100). Returns the
/// medians, the baseline's first. Every closure runs the same number of
/// times, so steps that should agree can be compared afterwards.
///
/// A baseline that takes most of a second per step (candle-nn's `AdamW` on
/// 16M `bf16` parameters: 1.2 s) sets the run's length, so it is warmed
/// once, not once more for each contender.
///
/// ```
/// # use std::time::Duration;
/// # use fused_rmsprop_benches::timing::beside_baseline;
/// let (mut slow, mut fast) = (0, 0);
/// let times = beside_baseline(
///     Duration::from_millis(1),
///     3,
///     &mut || slow += 1,
///     &mut [&mut || fast += 1],
/// );
/// assert_eq!(times.len(), 2);
/// assert_eq!(slow, fast);
/// ```
pub fn beside_baseline(
    budget: Duration,
    min_reps: usize,
    baseline: &mut dyn FnMut(),
    contenders: &mut [&mut dyn FnMut()],
) -> Vec<Duration> {
    for run in contenders.iter_mut() {
        run();
    }
    let start = Instant::now();
    baseline();
    let each = start.elapsed() * (1 + contenders.len() as u32);
    let reps = reps_for(budget, each, min_reps, 100);
    let mut runs: Vec<&mut dyn FnMut()> = vec![baseline];
    runs.extend(contenders.iter_mut().map(|c| &mut **c as &mut dyn FnMut()));
    interleaved_medians(0, reps, &mut runs)
}
