//! 8-bit state ([`StateFormat::Blockwise8`]): the numerics contract on every
//! path, shards, accuracy against full state, errors.
//!
//! Each property steps the same inputs through the scalar specification and
//! every other path of this machine and compares parameters, codes, scales
//! and master copies bit for bit. Cases: 256 per property, more with
//! `PROPTEST_CASES=N`.

use std::num::NonZeroUsize;

use fused_rmsprop::testing::{self, Arbitrary, Arbitrary16, SPEC, other_paths};
use fused_rmsprop::{
    BLOCK_ELEMENTS, Blockwise8Group, Blockwise8State, Error, Execution, Float, GradClip, Hyper,
    Kernel, Param, QuantMap, Quantized, QuantizedSlices, RmsProp, Rounding, State, StateFormat,
    Threads, bf16, f16,
};
use proptest::prelude::*;

fn format() -> impl Strategy<Value = StateFormat> {
    prop_oneof![
        Just(StateFormat::BLOCKWISE8),
        Just(StateFormat::BITSANDBYTES)
    ]
}

/// Everything a step writes, as bits.
#[derive(Debug, PartialEq)]
struct Outcome {
    params: Vec<u64>,
    buffers: Vec<(Vec<u8>, Vec<u64>)>,
    master: Option<Vec<u64>>,
    steps: u64,
}

fn outcome<P: Param>(params: &[P], state: &Blockwise8State<P::State>) -> Outcome {
    let quantized = |q: &Quantized<P::State>| {
        let scales = q.scales.iter().map(|s| s.to_bits_u64()).collect();
        (q.codes.clone(), scales)
    };
    let mut buffers = vec![quantized(&state.square_avg)];
    buffers.extend(state.grad_avg.as_ref().map(quantized));
    buffers.extend(state.momentum_buf.as_ref().map(quantized));
    Outcome {
        params: params.iter().map(|p| p.widen().to_bits_u64()).collect(),
        buffers,
        master: state
            .master
            .as_ref()
            .map(|m| m.iter().map(|x| x.to_bits_u64()).collect()),
        steps: state.step,
    }
}

/// Steps `params` from `state` once per gradient vector on `execution`.
fn run<P: Param>(
    hyper: Hyper,
    execution: Execution,
    params: &[P],
    state: &Blockwise8State<P::State>,
    grads: &[Vec<P>],
) -> Result<Outcome, Error> {
    let opt = RmsProp::new(hyper)?.with_execution(execution)?;
    let (mut params, mut state) = (params.to_vec(), state.clone());
    for g in grads {
        opt.step_blockwise8(&mut params, g, &mut state)?;
    }
    Ok(outcome(&params, &state))
}

/// A state of `len` elements whose buffers hold `values` (any values,
/// specials included), quantized as a step stores them.
fn state_from<S: Float>(hyper: &Hyper, values: &[S], master: Option<Vec<S>>) -> Blockwise8State<S> {
    let mut full = State::new(values.len(), hyper);
    let non_negative: Vec<S> = values
        .iter()
        .map(|&x| if x < S::ZERO { S::ZERO - x } else { x })
        .collect();
    full.square_avg = non_negative;
    if let Some(g) = &mut full.grad_avg {
        g.copy_from_slice(values);
    }
    if let Some(m) = &mut full.momentum_buf {
        m.iter_mut()
            .zip(values.iter().rev())
            .for_each(|(m, v)| *m = *v);
    }
    full.master = master;
    Blockwise8State::from_full(&full, hyper)
}

fn check_every_path<P: Param>(
    hyper: Hyper,
    params: &[P],
    state: &Blockwise8State<P::State>,
    grads: &[Vec<P>],
) -> Result<(), TestCaseError> {
    let expected = run(hyper, SPEC, params, state, grads);
    for path in other_paths() {
        let got = run(hyper, path, params, state, grads);
        prop_assert_eq!(&got, &expected, "path {:?}", path);
    }
    Ok(())
}

fn lengths() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..600, 600usize..1300]
}

fn full_precision_case<T: Arbitrary + Param<State = T>>(
    element: fn() -> BoxedStrategy<T>,
) -> impl Strategy<Value = (Hyper, Vec<T>, Vec<T>, Vec<Vec<T>>)> {
    let hyper = prop_oneof![testing::hyper(), testing::clipping_hyper()];
    (hyper, format(), lengths(), 1usize..4).prop_flat_map(move |(hyper, format, len, steps)| {
        let vec = move || proptest::collection::vec(element(), len);
        (
            Just(hyper.with_state_format(format)),
            vec(),
            vec(),
            proptest::collection::vec(vec(), steps),
        )
    })
}

fn half_case<H: Arbitrary16>() -> impl Strategy<Value = (Hyper, Vec<H>, Vec<f32>, Vec<Vec<H>>)> {
    (testing::half_hyper(), format(), lengths(), 1usize..4).prop_flat_map(
        |(hyper, format, len, steps)| {
            let vec = move || proptest::collection::vec(testing::half_element::<H>(), len);
            (
                Just(hyper.with_state_format(format)),
                vec(),
                proptest::collection::vec(testing::element::<f32>(), len),
                proptest::collection::vec(vec(), steps),
            )
        },
    )
}

proptest! {
    #[test]
    fn f32_every_path_writes_the_specs_bits(
        (hyper, params, state, grads) in full_precision_case::<f32>(testing::element::<f32>),
    ) {
        let state = state_from(&hyper, &state, None);
        check_every_path(hyper, &params, &state, &grads)?;
    }

    #[test]
    fn f32_realistic_values_every_path_writes_the_specs_bits(
        (hyper, params, state, grads) in full_precision_case::<f32>(testing::realistic_element::<f32>),
    ) {
        let state = state_from(&hyper, &state, None);
        check_every_path(hyper, &params, &state, &grads)?;
    }

    #[test]
    fn f64_every_path_writes_the_specs_bits(
        (hyper, params, state, grads) in full_precision_case::<f64>(testing::element::<f64>),
    ) {
        let state = state_from(&hyper, &state, None);
        check_every_path(hyper, &params, &state, &grads)?;
    }

    #[test]
    fn bf16_every_path_writes_the_specs_bits((hyper, params, state, grads) in half_case::<bf16>()) {
        let master = hyper.master_weights.then(|| params.iter().map(|p| p.to_f32()).collect());
        let state = state_from(&hyper, &state, master);
        check_every_path(hyper, &params, &state, &grads)?;
    }

    #[test]
    fn f16_every_path_writes_the_specs_bits((hyper, params, state, grads) in half_case::<f16>()) {
        let master = hyper.master_weights.then(|| params.iter().map(|p| p.to_f32()).collect());
        let state = state_from(&hyper, &state, master);
        check_every_path(hyper, &params, &state, &grads)?;
    }

    /// A tensor stepped as k shards (on block boundaries, each with its
    /// first element's index) gets the bits of the tensor stepped whole,
    /// stochastic rounding included.
    #[test]
    fn shards_step_as_the_whole_tensor(
        (hyper, params, state, grads) in half_case::<bf16>(),
        seed in any::<u64>(),
        k in 1usize..=8,
    ) {
        let hyper = hyper.with_rounding(Rounding::Stochastic { seed });
        let master = hyper.master_weights.then(|| params.iter().map(|p| p.to_f32()).collect());
        let state = state_from(&hyper, &state, master);
        let whole = run(hyper, SPEC, &params, &state, &grads);
        let opt = RmsProp::new(hyper).unwrap();
        let (mut p, mut s) = (params.clone(), state.clone());
        let blocks = p.len().div_ceil(BLOCK_ELEMENTS);
        let per_shard = blocks.div_ceil(k).max(1) * BLOCK_ELEMENTS;
        let mut sharded = Ok(());
        let mut bounds = Vec::new();
        let mut first = 0;
        while first < p.len() {
            let end = (first + per_shard).min(p.len());
            bounds.push((first, end));
            first = end;
        }
        for (step, g) in grads.iter().enumerate() {
            let mut views = s.slices_mut();
            for &(first, end) in &bounds {
                let shard = |q| shard(q, first, end);
                let state = fused_rmsprop::Blockwise8Slices {
                    square_avg: shard(views.square_avg.reborrow()),
                    grad_avg: views.grad_avg.as_mut().map(|q| shard(q.reborrow())),
                    momentum_buf: views.momentum_buf.as_mut().map(|q| shard(q.reborrow())),
                    master: views.master.as_mut().map(|m| &mut m[first..end]),
                };
                let group = Blockwise8Group::new(&mut p[first..end], &g[first..end], state)
                    .with_first_element(first as u64)
                    .with_rounding_key(step as u64, 0);
                if let Err(e) = opt.step_blockwise8_slices(hyper.lr, group) {
                    sharded = Err(e);
                }
            }
        }
        s.step = grads.len() as u64;
        match (whole, sharded) {
            (Ok(whole), Ok(())) => prop_assert_eq!(outcome(&p, &s), whole),
            (Err(_), Err(_)) => {}
            (whole, sharded) => prop_assert!(false, "{whole:?} against {sharded:?}"),
        }
    }
}

/// Deterministic standard normals (Box-Muller on a fixed generator).
/// Elements `first..end` of a quantized buffer (a whole number of blocks,
/// or up to the end).
fn shard(q: QuantizedSlices<'_, f32>, first: usize, end: usize) -> QuantizedSlices<'_, f32> {
    let blocks = first / BLOCK_ELEMENTS..end.div_ceil(BLOCK_ELEMENTS);
    QuantizedSlices {
        codes: &mut q.codes[first..end],
        scales: &mut q.scales[blocks],
        map: q.map,
    }
}

fn normals(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        })
        .collect()
}

/// bitsandbytes' accuracy test of its 8-bit optimizers
/// (`tests/test_optim.py::test_optimizer8bit`): 50 steps of `lr = 0.01`,
/// `alpha = 0.9`, gradients `0.01 * N(0, 1)`, against the same steps with
/// full state, re-synced after each step as bitsandbytes does (the full
/// optimizer's parameters copied to the 8-bit one, and the 8-bit state,
/// dequantized, to the full one). Bounds: mean absolute error below 6e-5,
/// mean relative error below 6e-4; the state within the map's resolution
/// of the full state's.
#[test]
fn eight_bit_state_follows_full_state_as_bitsandbytes_requires() {
    for format in [StateFormat::BLOCKWISE8, StateFormat::BITSANDBYTES] {
        let hyper = Hyper::default()
            .with_lr(0.01)
            .with_alpha(0.9)
            .with_state_format(format);
        let opt = RmsProp::new(hyper).unwrap();
        let n = 64 * 1024;
        let start: Vec<f32> = normals(n, 1).iter().map(|x| (x * 0.1) as f32).collect();
        let (mut full_p, mut full_s) = (start.clone(), State::new(n, &hyper));
        let (mut q_p, mut q_s) = (start.clone(), Blockwise8State::new(n, &hyper));
        for step in 0..50 {
            let g: Vec<f32> = normals(n, 100 + step)
                .iter()
                .map(|x| (x * 0.01) as f32)
                .collect();
            opt.step(&mut full_p, &g, &mut full_s).unwrap();
            opt.step_blockwise8(&mut q_p, &g, &mut q_s).unwrap();
            let abs: f64 = full_p
                .iter()
                .zip(&q_p)
                .map(|(a, b)| f64::from((a - b).abs()))
                .sum::<f64>()
                / n as f64;
            let rel: f64 = full_p
                .iter()
                .zip(&q_p)
                .map(|(a, b)| f64::from((a - b).abs()) / (f64::from(a.abs()) + 1e-8))
                .sum::<f64>()
                / n as f64;
            assert!(abs < 6e-5, "{format:?} step {step}: mean abs error {abs}");
            assert!(rel < 6e-4, "{format:?} step {step}: mean rel error {rel}");
            // The state: dequantized within the map's resolution (half its
            // widest gap, times the block's scale) of the full one.
            let map = q_s.square_avg.map.values();
            let resolution = map
                .windows(2)
                .map(|w| (w[1] - w[0]) / 2.0)
                .fold(0.0, f32::max);
            let v = q_s.square_avg.to_values();
            for (block, (full, quantized)) in full_s
                .square_avg
                .chunks(BLOCK_ELEMENTS)
                .zip(v.chunks(BLOCK_ELEMENTS))
                .enumerate()
            {
                let scale = q_s.square_avg.scales[block];
                for (a, b) in full.iter().zip(quantized) {
                    assert!(
                        (a - b).abs() <= resolution * scale * 1.0001,
                        "{format:?} step {step} block {block}: {a} against {b}"
                    );
                }
            }
            q_p.copy_from_slice(&full_p);
            full_s = q_s.to_full();
        }
    }
}

/// Without re-syncing, over a whole run: 8-bit state ends near full state
/// on a smooth objective (a quadratic bowl with noisy gradients), for the
/// plain, momentum and centered variants: the losses within 3% of the
/// starting loss of each other (measured: plain 1.8-2.1%, the square
/// average lags where its per-step change is below half a code's gap). Centered takes the variance
/// clamp: the two averages are quantized apart, so their difference can
/// fall below zero where the full state's does not (documented).
#[test]
fn a_whole_run_with_8_bit_state_ends_near_full_state() {
    let n = 16 * 1024;
    let variants = [
        Hyper::default().with_lr(1e-3),
        Hyper::default().with_lr(1e-3).with_momentum(0.9),
    ];
    for (hyper, format) in variants
        .into_iter()
        .flat_map(|h| [(h, StateFormat::BLOCKWISE8), (h, StateFormat::BITSANDBYTES)])
    {
        let hyper = hyper.with_state_format(format);
        let opt = RmsProp::new(hyper).unwrap();
        let target: Vec<f32> = normals(n, 7).iter().map(|x| *x as f32).collect();
        let (mut full_p, mut full_s) = (vec![0.0f32; n], State::new(n, &hyper));
        let (mut q_p, mut q_s) = (vec![0.0f32; n], Blockwise8State::new(n, &hyper));
        let loss = |p: &[f32]| {
            p.iter()
                .zip(&target)
                .map(|(p, t)| f64::from((p - t).powi(2)))
                .sum::<f64>()
                / n as f64
        };
        let start = loss(&full_p);
        for step in 0..300 {
            let noise = normals(n, 1000 + step);
            let grad = |p: &[f32]| -> Vec<f32> {
                p.iter()
                    .zip(&target)
                    .zip(&noise)
                    .map(|((p, t), e)| 2.0 * (p - t) + 0.1 * *e as f32)
                    .collect()
            };
            let (g_full, g_q) = (grad(&full_p), grad(&q_p));
            opt.step(&mut full_p, &g_full, &mut full_s).unwrap();
            opt.step_blockwise8(&mut q_p, &g_q, &mut q_s).unwrap();
        }
        let (full_loss, q_loss) = (loss(&full_p), loss(&q_p));
        assert!(
            full_loss < 0.8 * start,
            "{hyper:?}: full state did not train: {start} -> {full_loss}"
        );
        assert!(
            (q_loss - full_loss).abs() <= 0.03 * start,
            "{hyper:?}: 8-bit {q_loss} against full {full_loss}"
        );
    }
}

#[test]
fn a_block_of_one_non_finite_value_keeps_the_others() {
    let hyper = Hyper::default().with_state_format(StateFormat::BLOCKWISE8);
    let opt = RmsProp::new(hyper).unwrap();
    let mut params = vec![1.0f32; 2 * BLOCK_ELEMENTS];
    let mut state = Blockwise8State::new(params.len(), &hyper);
    let mut grads = vec![0.5f32; params.len()];
    grads[3] = f32::NAN;
    grads[BLOCK_ELEMENTS + 3] = f32::MAX; // its square overflows to +Inf
    opt.step_blockwise8(&mut params, &grads, &mut state)
        .unwrap();
    let v = state.square_avg.to_values();
    let expected = 0.01f32 * 0.25;
    assert!(params[3].is_nan());
    assert_eq!(v[3], 0.0, "a NaN is stored as zero");
    assert_eq!(
        v[BLOCK_ELEMENTS + 3],
        state.square_avg.scales[1],
        "an infinity saturates"
    );
    for (i, x) in v.iter().enumerate() {
        if i % BLOCK_ELEMENTS != 3 {
            assert_eq!(*x, expected, "element {i}");
        }
    }
    assert!(state.square_avg.scales.iter().all(|s| *s == expected));
}

#[test]
fn threads_split_on_block_boundaries_at_every_count() {
    // Longer than one pass (4,096 elements) and not a whole number of blocks.
    let n = 10_000 + 77;
    let hyper = Hyper::default()
        .with_momentum(0.9)
        .with_state_format(StateFormat::BLOCKWISE8);
    let params: Vec<f32> = normals(n, 3).iter().map(|x| *x as f32).collect();
    let grads: Vec<Vec<f32>> = (0..3)
        .map(|s| normals(n, 10 + s).iter().map(|x| *x as f32).collect())
        .collect();
    let state = Blockwise8State::new(n, &hyper);
    let expected = run(hyper, SPEC, &params, &state, &grads).unwrap();
    for threads in [1, 2, 3, 5, 8, 40, 100] {
        let execution = Execution {
            kernel: Kernel::Auto,
            threads: Threads::Exactly(NonZeroUsize::new(threads).unwrap()),
            ..Default::default()
        };
        assert_eq!(
            run(hyper, execution, &params, &state, &grads).unwrap(),
            expected,
            "{threads} threads"
        );
    }
}

#[test]
fn errors_name_the_buffer_and_write_nothing() {
    let hyper = Hyper::default()
        .with_momentum(0.9)
        .with_state_format(StateFormat::BLOCKWISE8);
    let opt = RmsProp::new(hyper).unwrap();
    let fresh = Blockwise8State::<f32>::new(600, &hyper);
    let mut params = vec![1.0f32; 600];

    let mut state = fresh.clone();
    state.square_avg.scales.pop();
    let err = opt
        .step_blockwise8(&mut params, &[0.5; 600], &mut state)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::LengthMismatch {
                buffer: "square_avg.scales",
                expected: 3,
                actual: 2,
                ..
            }
        ),
        "{err}"
    );

    let mut state = fresh.clone();
    state.momentum_buf = None;
    let err = opt
        .step_blockwise8(&mut params, &[0.5; 600], &mut state)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::MissingState {
                buffer: "momentum_buf",
                ..
            }
        ),
        "{err}"
    );

    let mut state = fresh.clone();
    let err = opt
        .step_blockwise8(&mut params, &[0.5; 599], &mut state)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::LengthMismatch {
                buffer: "grads",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(state, fresh);

    let group =
        Blockwise8Group::new(&mut params, &[0.5; 600], state.slices_mut()).with_first_element(100);
    let err = opt.step_blockwise8_slices(0.01, group).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MisalignedShard {
                first_element: 100,
                block: 256
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "a shard of 8-bit state starts at element 100, not a multiple of the block size 256"
    );

    let clipped = RmsProp::new(
        hyper
            .with_grad_clip(Some(GradClip::NormGlobal(1.0)))
            .with_non_finite(fused_rmsprop::NonFinite::Error),
    )
    .unwrap();
    let mut grads = vec![0.5f32; 600];
    grads[9] = f32::INFINITY;
    assert!(
        clipped
            .step_blockwise8(&mut params, &grads, &mut state)
            .is_err()
    );
    assert_eq!(state, fresh);
    assert!(params.iter().all(|p| *p == 1.0));
}

#[test]
fn full_state_round_trips_through_8_bits_exactly_when_it_holds_map_values() {
    let hyper = Hyper::default().with_state_format(StateFormat::BITSANDBYTES);
    let map = QuantMap::DynamicSigned;
    let mut full = State::<f32>::new(512, &hyper);
    for (i, v) in full.square_avg.iter_mut().enumerate() {
        *v = map.values()[128 + i % 128] * 4.0; // non-negative map values, block max 4
    }
    let q = Blockwise8State::from_full(&full, &hyper);
    assert_eq!(q.square_avg.scales, vec![4.0, 4.0]);
    assert_eq!(q.to_full().square_avg, full.square_avg);
}

/// The maps are bitsandbytes' own, bit for bit (printed by
/// `tests/data/bitsandbytes_maps.py` from bitsandbytes 0.50.2).
#[test]
fn the_maps_are_bitsandbytes_maps() {
    let printed = include_str!("data/bitsandbytes_maps.txt");
    for (name, map) in [
        ("unsigned", QuantMap::DynamicUnsigned),
        ("signed", QuantMap::DynamicSigned),
    ] {
        let line = printed
            .lines()
            .find(|l| l.starts_with(name))
            .expect("a line per map");
        let expected: Vec<u32> = line
            .split_whitespace()
            .skip(1)
            .map(|h| u32::from_str_radix(h, 16).unwrap())
            .collect();
        let got: Vec<u32> = map.values().iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, expected, "{name}");
    }
}

/// bitsandbytes' 8-bit RMSprop, in its pure-PyTorch reference semantics
/// (`tests/data/bitsandbytes_rmsprop8bit.py`: 12 steps of 1,000 elements,
/// four blocks, the last partial), against `StateFormat::BITSANDBYTES`.
/// The two differ only in how PyTorch orders the multiplies of `addcmul`
/// (and may fuse them): measured, every code and scale the same and the
/// parameters within one ulp of 1 (1.2e-7); the test allows two.
#[test]
fn bitsandbytes_reference_trajectory() {
    let printed = include_str!("data/bitsandbytes_rmsprop8bit.txt");
    let field = |name: &str| -> Vec<&str> {
        let line = printed
            .lines()
            .find(|l| l.starts_with(name))
            .expect("a line per field");
        line.split_whitespace().skip(1).collect()
    };
    let hex = |h: &&str| f32::from_bits(u32::from_str_radix(h, 16).unwrap());
    let (expected_params, expected_scales): (Vec<f32>, Vec<f32>) = (
        field("params").iter().map(hex).collect(),
        field("scales").iter().map(hex).collect(),
    );
    let expected_codes: Vec<u8> = field("codes").iter().map(|c| c.parse().unwrap()).collect();

    let n = 1000;
    let hyper = Hyper::default()
        .with_lr(0.01)
        .with_alpha(0.9)
        .with_state_format(StateFormat::BITSANDBYTES);
    let opt = RmsProp::new(hyper).unwrap();
    let mut params: Vec<f32> = (0..n).map(|i| (i as f32 - 500.0) / 512.0).collect();
    let mut state = Blockwise8State::new(n, &hyper);
    for step in 0..12u64 {
        let mut x = (step + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let grads: Vec<f32> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as i64 - (1 << 23)) as f32 * 2f32.powi(-30)
            })
            .collect();
        opt.step_blockwise8(&mut params, &grads, &mut state)
            .unwrap();
    }
    // The parameters start within [-1, 1]: differences of a few of its
    // ulps (1.2e-7) carry through the steps, whatever a parameter's size.
    for (i, (a, b)) in params.iter().zip(&expected_params).enumerate() {
        assert!(
            (a - b).abs() <= 2.5e-7,
            "parameter {i}: {a} against bitsandbytes' {b}"
        );
    }
    for (i, (a, b)) in state
        .square_avg
        .scales
        .iter()
        .zip(&expected_scales)
        .enumerate()
    {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs(),
            "scale {i}: {a} against bitsandbytes' {b}"
        );
    }
    assert_eq!(state.square_avg.codes, expected_codes);
}

proptest! {
    /// `step_many_blockwise8` of several tensors, on every path, writes
    /// what stepping each tensor alone on the specification writes (their
    /// rounding streams numbered by position, clipping by norm over all).
    #[test]
    fn many_tensors_step_as_each_alone_on_every_path(
        hyper in prop_oneof![testing::hyper(), testing::clipping_hyper()],
        format in format(),
        tensors in proptest::collection::vec(
            lengths().prop_flat_map(|len| (
                proptest::collection::vec(testing::element::<f32>(), len),
                proptest::collection::vec(testing::element::<f32>(), len),
                proptest::collection::vec(testing::element::<f32>(), len),
            )),
            1..5,
        ),
    ) {
        let hyper = hyper.with_state_format(format);
        // Clipping by a global norm couples the tensors: compare against
        // one call on the specification instead of each tensor alone.
        let coupled = matches!(hyper.grad_clip, Some(GradClip::NormGlobal(_)));
        let start: Vec<_> = tensors.iter().map(|(p, s, g)| (p.clone(), state_from(&hyper, s, None), g.clone())).collect();
        let run_many = |execution: Execution| -> Result<Vec<Outcome>, Error> {
            let opt = RmsProp::new(hyper)?.with_execution(execution)?;
            let mut tensors = start.clone();
            let groups = tensors.iter_mut().enumerate().map(|(i, (p, s, g))| {
                Blockwise8Group::new(p, g, s.slices_mut()).with_rounding_key(0, i as u64)
            });
            opt.step_many_blockwise8(hyper.lr, groups)?;
            Ok(tensors.iter().map(|(p, s, _)| outcome(p, s)).collect())
        };
        let expected = if coupled {
            run_many(SPEC)
        } else {
            (|| {
                let opt = RmsProp::new(hyper)?.with_execution(SPEC)?;
                let mut out = Vec::new();
                for (i, (p, s, g)) in start.iter().enumerate() {
                    let (mut p, mut s) = (p.clone(), s.clone());
                    let group = Blockwise8Group::new(&mut p, g, s.slices_mut()).with_rounding_key(0, i as u64);
                    opt.step_blockwise8_slices(hyper.lr, group)?;
                    out.push(outcome(&p, &s));
                }
                Ok(out)
            })()
        };
        for path in std::iter::once(SPEC).chain(other_paths()) {
            let got = run_many(path);
            match (&got, &expected) {
                (Ok(got), Ok(expected)) => prop_assert_eq!(got, expected, "path {:?}", path),
                (Err(_), Err(_)) => {}
                _ => prop_assert!(false, "path {path:?}: {got:?} against {expected:?}"),
            }
        }
    }
}

#[test]
fn an_error_in_one_group_names_it_and_writes_no_group() {
    let hyper = Hyper::default().with_state_format(StateFormat::BLOCKWISE8);
    let opt = RmsProp::new(hyper).unwrap();
    let (mut a, mut b) = (vec![1.0f32; 300], vec![1.0f32; 300]);
    let (mut sa, mut sb) = (
        Blockwise8State::new(300, &hyper),
        Blockwise8State::new(300, &hyper),
    );
    sb.square_avg.codes.pop();
    let err = opt
        .step_many_blockwise8(
            0.01,
            [
                Blockwise8Group::new(&mut a, &[0.5; 300], sa.slices_mut()),
                Blockwise8Group::new(&mut b, &[0.5; 300], sb.slices_mut()),
            ],
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::LengthMismatch {
                group: 1,
                buffer: "square_avg",
                ..
            }
        ),
        "{err}"
    );
    assert!(a.iter().all(|p| *p == 1.0));
    assert_eq!(sa, Blockwise8State::new(300, &hyper));
}
