//! 8-bit state: the kernel's step with `StateFormat::Blockwise8` against its
//! full-state step on the same tensors (the speedup is what the fewer bytes
//! buy), with the 8-bit skeleton (same loads and stores) as the limit.

use std::time::Duration;

use fused_rmsprop::{
    Blockwise8Group, Blockwise8State, Group, Hyper, Param, RmsProp, State, StateFormat, bf16,
};
use fused_rmsprop_benches::roofline::{Blockwise8Skeleton, SkeletonElement};
use fused_rmsprop_benches::timing::{interleaved_medians, reps_for};
use fused_rmsprop_benches::workload::{self, Variant, size_label};

use crate::limit::fused_and_limit;
use crate::row::Row;

/// `f32` and `bf16` parameters of `n` elements, and `f32` on the
/// 150-tensor model, plain variant, on `threads`.
pub(crate) fn blockwise8_rows(n: usize, model: bool, threads: usize, rows: &mut Vec<Row>) {
    let one = [n];
    rows_of::<f32, f32>("f32", size_label(n), &one, threads, 0.5, rows);
    rows_of::<bf16, u16>(
        "bf16",
        size_label(n),
        &one,
        threads,
        bf16::from_f32(0.5),
        rows,
    );
    if model {
        let sizes = workload::transformer_sizes();
        let case = format!("model-{}", sizes.len());
        rows_of::<f32, f32>("f32", case, &sizes, threads, 0.5, rows);
    }
}

/// One row: tensors of `sizes` stepped with 8-bit state (those below
/// `MIN_8BIT_ELEMENTS` with full state, as an adapter keeps them: one
/// `step_many_blockwise8` and one `step_many` per step) against all of
/// them with full state (one `step_many`).
fn rows_of<P, E>(
    name: &str,
    case: String,
    sizes: &[usize],
    threads: usize,
    start: P,
    rows: &mut Vec<Row>,
) where
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
    let grads: Vec<Vec<P>> = sizes
        .iter()
        .map(|&n| {
            (0..n)
                .map(|i| P::round_nearest(((i % 1000) as f32 - 500.0) * 1e-4))
                .collect()
        })
        .collect();
    let total: usize = sizes.iter().sum();
    let mut full: Vec<(Vec<P>, State<f32>)> = sizes
        .iter()
        .map(|&n| (vec![start; n], State::new(n, &hyper)))
        .collect();
    let (big, small): (Vec<usize>, Vec<usize>) =
        (0..sizes.len()).partition(|&i| hyper.state_format.quantizes(sizes[i]));
    let mut eight_bit: Vec<(Vec<P>, Blockwise8State<f32>)> = big
        .iter()
        .map(|&i| {
            (
                vec![start; sizes[i]],
                Blockwise8State::new(sizes[i], &hyper),
            )
        })
        .collect();
    let mut kept_full: Vec<(Vec<P>, State<f32>)> = small
        .iter()
        .map(|&i| (vec![start; sizes[i]], State::new(sizes[i], &hyper)))
        .collect();
    let mut full_step = || {
        let groups = full
            .iter_mut()
            .zip(&grads)
            .map(|((p, s), g)| Group::new(p, g, s.slices_mut()));
        opt.step_many(hyper.lr, groups).unwrap();
    };
    let mut quantized = || {
        let groups = eight_bit
            .iter_mut()
            .zip(&big)
            .map(|((p, s), &i)| Blockwise8Group::new(p, &grads[i], s.slices_mut()));
        opt.step_many_blockwise8(hyper.lr, groups).unwrap();
        if !kept_full.is_empty() {
            let groups = kept_full
                .iter_mut()
                .zip(&small)
                .map(|((p, s), &i)| Group::new(p, &grads[i], s.slices_mut()));
            opt.step_many(hyper.lr, groups).unwrap();
        }
    };
    let budget = Duration::from_millis(600);
    let first = interleaved_medians(1, 3, &mut [&mut quantized]);
    let reps = reps_for(budget / 2, first[0] * 2, 5, 100);
    let times = interleaved_medians(1, reps, &mut [&mut full_step, &mut quantized]);
    let [full_t, quantized_t] = [times[0], times[1]].map(|d| d.as_secs_f64());
    // The limit: the 8-bit skeleton over all the elements (the few small
    // tensors' full-state traffic is within a part in a thousand of it).
    let mut skeleton = Blockwise8Skeleton::<E>::new(total, E::default(), E::default());
    let (own_t, skeleton_t) = fused_and_limit(
        &mut quantized,
        &mut [&mut || skeleton.run(threads)],
        budget / 2,
    );
    let bytes = total as f64 * Blockwise8Skeleton::<E>::bytes_per_element();
    let kept: usize = eight_bit
        .iter()
        .map(|(_, s)| s.state_bytes())
        .sum::<usize>()
        + kept_full.iter().map(|(p, _)| 4 * p.len()).sum::<usize>();
    let state_bytes = kept as f64 / total as f64;
    rows.push(Row {
        framework: "kernel",
        baseline: format!("{name} step, full state"),
        case,
        variant: Variant::Plain,
        elements: total,
        threads,
        baseline_ns: full_t * 1e9,
        fused: format!("{name} step, 8-bit state ({state_bytes:.3} B/element kept)"),
        fused_ns: quantized_t * 1e9,
        gbps: Some(bytes / own_t / 1e9),
        roofline_fraction: Some(skeleton_t / own_t),
        max_abs_diff: None,
        unclipped: None,
        in_place_fraction: None,
    });
}
