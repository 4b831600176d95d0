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
