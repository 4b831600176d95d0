//! The numerics contract for 16-bit parameters (`bf16`, `f16`, with `f32`
//! state): every path writes the scalar specification's bits, for every
//! rounding option, with and without master weights.
//!
//! As `tests/paths.rs` for `f32`: each property steps the same inputs
//! through the scalar path and through every other path this machine has,
//! 1-3 steps, lengths up to 3000, slices at offsets 0-16 into larger
//! buffers, and compares parameters and every state buffer bit for bit.

use std::num::NonZeroUsize;

use fused_rmsprop::testing::{self, Arbitrary16};
use fused_rmsprop::testing::{SPEC, other_paths};
use fused_rmsprop::{
    Execution, Group, Hyper, Kernel, RmsProp, Rounding, State, StateSlices, Threads, bf16, f16,
};
use proptest::prelude::*;

/// The inputs of one case: start values and one gradient vector per step.
#[derive(Clone, Debug)]
struct Case<H> {
    hyper: Hyper,
    offset: usize,
    params: Vec<H>,
    square_avg: Vec<f32>,
    grads: Vec<Vec<H>>,
}

fn case<H: Arbitrary16>(max_len: usize) -> impl Strategy<Value = Case<H>> {
    (testing::half_hyper(), 0..max_len, 0usize..17, 1usize..4).prop_flat_map(
        move |(hyper, len, offset, steps)| {
            let vec = move || proptest::collection::vec(testing::half_element::<H>(), len);
            (
                vec(),
                proptest::collection::vec(testing::element::<f32>().prop_map(f32::abs), len),
                proptest::collection::vec(vec(), steps),
            )
                .prop_map(move |(params, square_avg, grads)| Case {
                    hyper,
                    offset,
                    params,
                    square_avg,
                    grads,
                })
        },
    )
}

/// Parameters and every state buffer after the steps, as bits.
#[derive(Debug, PartialEq)]
struct Outcome {
    params: Vec<u64>,
    state: Vec<Vec<u32>>,
}

fn placed<T: Copy>(values: &[T], offset: usize, junk: T) -> Vec<T> {
    let mut buffer = vec![junk; offset];
    buffer.extend_from_slice(values);
    buffer.push(junk);
    buffer
}

/// Steps the case on `path`, every slice at the case's offset, as stream 5.
fn run<H: Arbitrary16>(c: &Case<H>, path: Execution) -> Outcome {
    let opt = RmsProp::new(c.hyper).unwrap().with_execution(path).unwrap();
    let n = c.params.len();
    let range = c.offset..c.offset + n;
    let mut state = State::for_params(&c.params, &c.hyper);
    state.square_avg.clone_from(&c.square_avg);
    let mut params = placed(&c.params, c.offset, H::from_f32(-7.25));
    let mut buffers: Vec<Option<Vec<f32>>> = [
        Some(&state.square_avg),
        state.grad_avg.as_ref(),
        state.momentum_buf.as_ref(),
        state.master.as_ref(),
    ]
    .into_iter()
    .map(|b| b.map(|b| placed(b, c.offset, -7.25)))
    .collect();
    for (step, grads) in c.grads.iter().enumerate() {
        let grads = placed(grads, c.offset, H::from_f32(-7.25));
        let [square_avg, grad_avg, momentum_buf, master] = &mut buffers[..] else {
            unreachable!()
        };
        let mut slices = StateSlices::new(&mut square_avg.as_mut().unwrap()[range.clone()]);
        slices.grad_avg = grad_avg.as_mut().map(|b| &mut b[range.clone()]);
        slices.momentum_buf = momentum_buf.as_mut().map(|b| &mut b[range.clone()]);
        slices.master = master.as_mut().map(|b| &mut b[range.clone()]);
        let group = Group::new(&mut params[range.clone()], &grads[range.clone()], slices)
            .with_rounding_key(step as u64, 5);
        opt.step_many(c.hyper.lr, [group]).unwrap();
    }
    let junk = H::from_f32(-7.25);
    assert!(
        params[..c.offset]
            .iter()
            .chain(&params[c.offset + n..])
            .all(|&x| x == junk)
    );
    for buffer in buffers.iter().flatten() {
        assert!(
            buffer[..c.offset]
                .iter()
                .chain(&buffer[c.offset + n..])
                .all(|&x| x == -7.25)
        );
    }
    Outcome {
        params: params[range.clone()]
            .iter()
            .map(|p| p.to_bits_u64())
            .collect(),
        state: buffers
            .iter()
            .flatten()
            .map(|b| b[range.clone()].iter().map(|x| x.to_bits()).collect())
            .collect(),
    }
}

fn assert_every_path_matches_spec<H: Arbitrary16>(c: &Case<H>) -> Result<(), TestCaseError> {
    let spec = run(c, SPEC);
    for path in other_paths() {
        prop_assert!(
            run(c, path) == spec,
            "path {path:?} differs from the scalar specification"
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn every_path_matches_scalar_bitwise_bf16(c in case::<bf16>(3000)) {
        assert_every_path_matches_spec(&c)?;
    }

    #[test]
    fn every_path_matches_scalar_bitwise_f16(c in case::<f16>(3000)) {
        assert_every_path_matches_spec(&c)?;
    }

    #[test]
    fn multi_tensor_step_equals_stepping_each_group_alone_bf16(
        hyper in testing::half_hyper(),
        lens in proptest::collection::vec(0usize..300, 0..10),
        tasks in 1usize..6,
    ) {
        let make = |salt: usize| -> Vec<Vec<bf16>> {
            lens.iter().enumerate().map(|(g, &n)| {
                (0..n).map(|i| bf16::from_f32(((i * 7 + g * 13 + salt) as f32 * 0.37).sin())).collect()
            }).collect()
        };
        let grads = make(1);
        let mut together = make(2);
        let mut alone = together.clone();
        let mut together_state: Vec<State<f32>> =
            together.iter().map(|p| State::for_params(p, &hyper)).collect();
        let mut alone_state = together_state.clone();
        let threads = Threads::Exactly(NonZeroUsize::new(tasks).unwrap());
        let opt = RmsProp::new(hyper).unwrap()
            .with_execution(Execution { kernel: Kernel::Auto, threads, ..Default::default() }).unwrap();
        for step in 0..2u64 {
            let groups = together.iter_mut().zip(&grads).zip(&mut together_state).enumerate()
                .map(|(g, ((p, gr), s))| Group::new(p, gr, s.slices_mut()).with_rounding_key(step, g as u64));
            opt.step_many(hyper.lr, groups).unwrap();
            for (g, ((p, gr), s)) in alone.iter_mut().zip(&grads).zip(&mut alone_state).enumerate() {
                let group = Group::new(p, gr, s.slices_mut()).with_rounding_key(step, g as u64);
                RmsProp::new(hyper).unwrap().step_many(hyper.lr, [group]).unwrap();
            }
        }
        let bits = |params: &[Vec<bf16>], states: &[State<f32>]| -> Vec<Vec<u32>> {
            let mut out: Vec<Vec<u32>> = params.iter().map(|p| p.iter().map(|x| u32::from(x.to_bits())).collect()).collect();
            for s in states {
                for buffer in [Some(&s.square_avg), s.grad_avg.as_ref(), s.momentum_buf.as_ref(), s.master.as_ref()].into_iter().flatten() {
                    out.push(buffer.iter().map(|x| x.to_bits()).collect());
                }
                out.push(vec![s.step as u32]);
            }
            out
        };
        prop_assert_eq!(bits(&together, &together_state), bits(&alone, &alone_state));
    }
}

/// Every bit pattern of `H` as a parameter and as a gradient (signalling
/// NaNs, NaNs of every payload and both signs, subnormals, infinities),
/// under the options that read the inputs differently: the SIMD paths widen
/// a NaN without setting its quiet bit, which must never show in what they
/// store.
fn every_bit_pattern_steps_as_the_spec<H: Arbitrary16>() {
    let all: Vec<H> = (0..=u16::MAX).map(H::from_bits).collect();
    let hypers = [
        Hyper::default(),
        Hyper::default()
            .with_centered(true)
            .with_momentum(0.9)
            .with_weight_decay(Some(fused_rmsprop::WeightDecay::Coupled(0.01)))
            .with_maximize(true),
        Hyper::default()
            .with_eps_placement(fused_rmsprop::EpsPlacement::InsideSqrt)
            .with_momentum(0.5)
            .with_nesterov(true)
            .with_weight_decay(Some(fused_rmsprop::WeightDecay::Decoupled(0.1))),
        Hyper::default().with_master_weights(true),
        Hyper::default().with_rounding(Rounding::Stochastic { seed: 11 }),
    ];
    for hyper in hypers {
        let c = Case {
            hyper,
            offset: 3,
            params: all.clone(),
            square_avg: (0..all.len()).map(|i| (i % 97) as f32 * 0.01).collect(),
            // The second step's gradients meet the first step's NaN states.
            grads: vec![
                all.iter().rev().copied().collect(),
                all.iter()
                    .cycle()
                    .skip(4099)
                    .take(all.len())
                    .copied()
                    .collect(),
            ],
        };
        let spec = run(&c, SPEC);
        for path in other_paths() {
            assert!(
                run(&c, path) == spec,
                "{} under {hyper:?}: path {path:?} differs from the scalar specification",
                H::NAME
            );
        }
    }
}

#[test]
fn every_bf16_bit_pattern_steps_as_the_spec_on_every_path() {
    every_bit_pattern_steps_as_the_spec::<bf16>();
}

#[test]
fn every_f16_bit_pattern_steps_as_the_spec_on_every_path() {
    every_bit_pattern_steps_as_the_spec::<f16>();
}

/// `Rounding::Stochastic` rounds an `f16` parameter to nearest (documented
/// there), and the step takes the nearest loops for it: on every path, every
/// bit pattern gets the spec's bits of rounding to nearest.
#[test]
fn f16_under_stochastic_rounding_steps_as_rounding_to_nearest() {
    let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    let case = |rounding| Case {
        hyper: Hyper::default().with_momentum(0.9).with_rounding(rounding),
        offset: 1,
        params: all.clone(),
        square_avg: (0..all.len()).map(|i| (i % 89) as f32 * 0.01).collect(),
        grads: vec![all.iter().rev().copied().collect()],
    };
    let nearest = run(&case(Rounding::Nearest), SPEC);
    let stochastic = case(Rounding::Stochastic { seed: 5 });
    for path in std::iter::once(SPEC).chain(other_paths()) {
        assert!(run(&stochastic, path) == nearest, "path {path:?}");
    }
}

/// A bf16 parameter of 1.5 (ulp 2^-7) moved by a quarter of an ulp,
/// `count` elements, on `path`: the new parameters.
fn quarter_ulp_updates(rounding: Rounding, count: usize, path: Execution) -> Vec<bf16> {
    // First step from v = 0 with alpha 0: v = g^2, so p -= lr * g / |g| = lr.
    let hyper = Hyper::default()
        .with_alpha(0.0)
        .with_eps(0.0)
        .with_lr(2f64.powi(-9))
        .with_rounding(rounding);
    let opt = RmsProp::new(hyper).unwrap().with_execution(path).unwrap();
    let mut params = vec![bf16::from_f32(1.5); count];
    let grads = vec![bf16::from_f32(0.75); count];
    let mut state = State::for_params(&params, &hyper);
    opt.step(&mut params, &grads, &mut state).unwrap();
    params
}

#[test]
fn nearest_loses_an_update_below_half_an_ulp_that_stochastic_keeps_on_average() {
    let nearest = quarter_ulp_updates(Rounding::Nearest, 1000, Execution::default());
    assert!(nearest.iter().all(|&p| p == bf16::from_f32(1.5)));

    // The mean of the rounded values is unbiased: each element rounds to
    // 1.5 - 2^-7 with probability 1/4 and to 1.5 otherwise, so the error of
    // one element (rounded - exact) has mean 0 and standard deviation
    // 2^-7 * sqrt(1/4 * 3/4) = 0.433 * 2^-7; over n = 2^20 elements the
    // mean error has standard deviation 0.433 * 2^-7 / 2^10 = 3.3e-6. The
    // bound is six of those, 2.0e-5: a hundredth of the bias of rounding to
    // nearest here (2^-9 = 1.95e-3).
    let n = 1 << 20;
    let exact = 1.5f64 - 2f64.powi(-9);
    let rounded = quarter_ulp_updates(Rounding::Stochastic { seed: 11 }, n, Execution::default());
    let mean_error = rounded.iter().map(|p| p.to_f64() - exact).sum::<f64>() / n as f64;
    assert!(
        mean_error.abs() < 2.0e-5,
        "mean rounding error {mean_error:e}"
    );
    let up = rounded
        .iter()
        .filter(|&&p| p != bf16::from_f32(1.5))
        .count();
    assert!(
        (up as f64 / n as f64 - 0.25).abs() < 0.005,
        "{up} of {n} rounded away"
    );
}

#[test]
fn stochastic_rounding_is_a_function_of_the_seed_alone() {
    let seeded = |seed, path| quarter_ulp_updates(Rounding::Stochastic { seed }, 70_000, path);
    let reference = seeded(3, SPEC);
    for path in other_paths() {
        assert_eq!(seeded(3, path), reference, "{path:?}");
    }
    assert_ne!(seeded(4, Execution::default()), reference);
}

#[test]
fn master_weights_accumulate_what_the_parameter_cannot_hold() {
    // Four quarter-ulp steps: the master copy moves a whole ulp and the
    // parameter with it; without it, rounding to nearest never moves.
    let run = |master_weights: bool| {
        let hyper = Hyper::default()
            .with_alpha(1.0)
            .with_eps(0.0)
            .with_initial_square_avg(1.0)
            .with_lr(2f64.powi(-9))
            .with_master_weights(master_weights);
        let opt = RmsProp::new(hyper).unwrap();
        let mut params = vec![bf16::from_f32(1.5); 40];
        let mut state = State::for_params(&params, &hyper);
        for _ in 0..4 {
            opt.step(&mut params, &[bf16::from_f32(1.0); 40], &mut state)
                .unwrap();
        }
        (params, state.master)
    };
    let (params, master) = run(true);
    assert!(
        params
            .iter()
            .all(|&p| p == bf16::from_f32(1.5 - 2f32.powi(-7)))
    );
    assert!(master.unwrap().iter().all(|&m| m == 1.5 - 2f32.powi(-7)));
    let (params, master) = run(false);
    assert!(params.iter().all(|&p| p == bf16::from_f32(1.5)));
    assert!(master.is_none());
}

#[test]
fn master_weights_without_a_master_buffer_is_an_error_that_writes_nothing() {
    let hyper = Hyper::default().with_master_weights(true);
    let opt = RmsProp::new(hyper).unwrap();
    let mut params = vec![f16::from_f32(1.0); 3];
    let mut state = State::new(3, &hyper);
    let err = opt
        .step(&mut params, &[f16::from_f32(1.0); 3], &mut state)
        .unwrap_err();
    assert!(err.to_string().contains("master"), "{err}");
    assert_eq!(params, vec![f16::from_f32(1.0); 3]);
    assert_eq!(state, State::new(3, &hyper));
    // f32 parameters have no master copy to keep: the option is ignored.
    let mut wide = vec![1.0f32; 3];
    opt.step(&mut wide, &[1.0; 3], &mut State::new(3, &hyper))
        .unwrap();
}
