//! 8-bit state: the kernel's step with `StateFormat::Blockwise8` against its
//! full-state step on the same tensor (the speedup is what the fewer bytes
//! buy), with the 8-bit skeleton (same loads and stores) as the limit.

use std::time::Duration;

use fused_rmsprop::{Blockwise8State, Hyper, Param, RmsProp, State, StateFormat, bf16};
use fused_rmsprop_benches::roofline::{Blockwise8Skeleton, SkeletonElement};
use fused_rmsprop_benches::timing::{interleaved_medians, reps_for};
use fused_rmsprop_benches::workload::{Variant, size_label};

use crate::limit::fused_and_limit;
use crate::row::Row;

/// `f32` and `bf16` parameters of `n` elements, plain variant, on `threads`.
pub(crate) fn blockwise8_rows(n: usize, threads: usize, rows: &mut Vec<Row>) {
    rows_of::<f32, f32>("f32", n, threads, 0.5, rows);
    rows_of::<bf16, u16>("bf16", n, threads, bf16::from_f32(0.5), rows);
}

fn rows_of<P, E>(name: &str, n: usize, threads: usize, start: P, rows: &mut Vec<Row>)
where
    P: Param<State = f32>,
    E: SkeletonElement + Default,
{
    let hyper = Hyper::default().with_state_format(StateFormat::BLOCKWISE8);
    let execution = fused_rmsprop::Execution {
        threads: fused_rmsprop::Threads::Exactly(std::num::NonZeroUsize::new(threads).unwrap()),
        ..Default::default()
    };
    let opt = RmsProp::new(hyper)
        .unwrap()
        .with_execution(execution)
        .unwrap();
    let grads: Vec<P> = (0..n)
        .map(|i| P::round_nearest(((i % 1000) as f32 - 500.0) * 1e-4))
        .collect();
    let (mut full_p, mut full_s) = (vec![start; n], State::new(n, &hyper));
    let (mut q_p, mut q_s) = (vec![start; n], Blockwise8State::new(n, &hyper));
    let mut full = || {
        opt.step(&mut full_p, &grads, &mut full_s).unwrap();
    };
    let mut quantized = || {
        opt.step_blockwise8(&mut q_p, &grads, &mut q_s).unwrap();
    };
    let budget = Duration::from_millis(600);
    let first = interleaved_medians(1, 3, &mut [&mut quantized]);
    let reps = reps_for(budget / 2, first[0] * 2, 5, 100);
    let times = interleaved_medians(1, reps, &mut [&mut full, &mut quantized]);
    let [full_t, quantized_t] = [times[0], times[1]].map(|d| d.as_secs_f64());
    let mut skeleton = Blockwise8Skeleton::<E>::new(n, E::default(), E::default());
    let (own_t, skeleton_t) = fused_and_limit(
        &mut quantized,
        &mut [&mut || skeleton.run(threads)],
        budget / 2,
    );
    let bytes = n as f64 * Blockwise8Skeleton::<E>::bytes_per_element();
    let state_bytes = q_s.state_bytes() as f64 / n as f64;
    rows.push(Row {
        framework: "kernel",
        baseline: format!("{name} step, full state"),
        case: size_label(n),
        variant: Variant::Plain,
        elements: n,
        threads,
        baseline_ns: full_t * 1e9,
        fused: format!("{name} step, 8-bit state ({state_bytes:.3} B/element kept)"),
        fused_ns: quantized_t * 1e9,
        gbps: Some(bytes / own_t / 1e9),
        roofline_fraction: Some(skeleton_t / own_t),
        max_abs_diff: None,
        unclipped: None,
    });
}
