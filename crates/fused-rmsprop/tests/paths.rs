//! The numerics contract: every path writes the scalar specification's bits.
//!
//! Each property steps the same inputs through the scalar path and through
//! every other path this machine has (SIMD with each instruction set,
//! threaded with several forced task counts, the multi-tensor step), for
//! several consecutive steps, and compares parameters and every state buffer
//! bit for bit. Cases: 256 per property, more with `PROPTEST_CASES=N`.

use std::num::NonZeroUsize;

use fused_rmsprop::testing::{self, Arbitrary};
use fused_rmsprop::testing::{SPEC, other_paths};
use fused_rmsprop::{Execution, Float, Group, Hyper, Kernel, RmsProp, State, Threads};
use proptest::prelude::*;

fn bits<T: Float>(values: &[T]) -> Vec<u64> {
    values.iter().map(|x| x.to_bits_u64()).collect()
}

/// Parameters and state after `grads.len()` steps, as bits.
#[derive(Debug, PartialEq)]
struct Outcome {
    params: Vec<u64>,
    square_avg: Vec<u64>,
    grad_avg: Option<Vec<u64>>,
    momentum_buf: Option<Vec<u64>>,
}

/// The inputs of one case: parameters and state start values, and one
/// gradient vector per step. `offset` places every slice that many elements
/// into a larger buffer, so the paths also see unaligned slices.
#[derive(Clone, Debug)]
struct Case<T> {
    hyper: Hyper,
    offset: usize,
    params: Vec<T>,
    square_avg: Vec<T>,
    grad_avg: Vec<T>,
    momentum_buf: Vec<T>,
    grads: Vec<Vec<T>>,
}

fn case<T: Arbitrary>(
    max_len: usize,
    element: fn() -> BoxedStrategy<T>,
) -> impl Strategy<Value = Case<T>> {
    (testing::hyper(), 0..max_len, 0usize..17, 1usize..4).prop_flat_map(
        move |(hyper, len, offset, steps)| {
            let vec = move || proptest::collection::vec(element(), len);
            let non_negative = move || {
                proptest::collection::vec(
                    element().prop_map(|x: T| if x < T::ZERO { -x } else { x }),
                    len,
                )
            };
            (
                vec(),
                non_negative(),
                vec(),
                vec(),
                proptest::collection::vec(vec(), steps),
            )
                .prop_map(
                    move |(params, square_avg, grad_avg, momentum_buf, grads)| Case {
                        hyper,
                        offset,
                        params,
                        square_avg,
                        grad_avg,
                        momentum_buf,
                        grads,
                    },
                )
        },
    )
}

/// `values` placed `offset` elements into a buffer of junk.
fn placed<T: Float>(values: &[T], offset: usize) -> Vec<T> {
    let mut buffer = vec![T::from_f64(-7.25); offset];
    buffer.extend_from_slice(values);
    buffer.push(T::from_f64(-7.25));
    buffer
}

fn state_of<T: Float>(c: &Case<T>) -> State<T> {
    let mut state = State::new(c.params.len(), &c.hyper);
    state.square_avg.clone_from(&c.square_avg);
    if let Some(ga) = &mut state.grad_avg {
        ga.clone_from(&c.grad_avg);
    }
    if let Some(b) = &mut state.momentum_buf {
        b.clone_from(&c.momentum_buf);
    }
    state
}

fn outcome<T: Float>(params: &[T], state: &State<T>) -> Outcome {
    Outcome {
        params: bits(params),
        square_avg: bits(&state.square_avg),
        grad_avg: state.grad_avg.as_deref().map(bits),
        momentum_buf: state.momentum_buf.as_deref().map(bits),
    }
}

/// Steps the case on `path`, with every slice at the case's offset.
fn run<T: Float>(c: &Case<T>, path: Execution) -> Outcome {
    let opt = RmsProp::new(c.hyper).unwrap().with_execution(path).unwrap();
    let n = c.params.len();
    let range = c.offset..c.offset + n;
    let mut params = placed(&c.params, c.offset);
    let state = state_of(c);
    let mut square_avg = placed(&state.square_avg, c.offset);
    let mut grad_avg = state.grad_avg.as_deref().map(|b| placed(b, c.offset));
    let mut momentum_buf = state.momentum_buf.as_deref().map(|b| placed(b, c.offset));
    for grads in &c.grads {
        let grads = placed(grads, c.offset);
        let mut slices = fused_rmsprop::StateSlices::new(&mut square_avg[range.clone()]);
        slices.grad_avg = grad_avg.as_mut().map(|b| &mut b[range.clone()]);
        slices.momentum_buf = momentum_buf.as_mut().map(|b| &mut b[range.clone()]);
        opt.step_slices(
            c.hyper.lr,
            &mut params[range.clone()],
            &grads[range.clone()],
            slices,
        )
        .unwrap();
    }
    // The junk around the slices is untouched.
    for buffer in [
        Some(&params),
        Some(&square_avg),
        grad_avg.as_ref(),
        momentum_buf.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(
            buffer[..c.offset]
                .iter()
                .chain(&buffer[c.offset + n..])
                .all(|&x| x == T::from_f64(-7.25))
        );
    }
    let mut result = State::new(n, &c.hyper);
    result.square_avg = square_avg[range.clone()].to_vec();
    result.grad_avg = grad_avg.map(|b| b[range.clone()].to_vec());
    result.momentum_buf = momentum_buf.map(|b| b[range.clone()].to_vec());
    outcome(&params[range], &result)
}

/// Runs `f` on a thread of a pool of three. A threaded step called from a
/// pool thread splits its work with rayon's own stealing; called from any
/// other thread (the tests' own), the caller takes tasks itself: both must
/// write the specification's bits.
fn inside_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("a pool of three threads")
    })
    .install(f)
}

fn assert_every_path_matches_spec<T: Float>(c: &Case<T>) -> Result<(), TestCaseError> {
    let spec = run(c, SPEC);
    for path in other_paths() {
        let got = run(c, path);
        prop_assert!(
            got == spec,
            "path {path:?} differs from the scalar specification"
        );
        if path.threads != Threads::Single {
            let got = inside_pool(|| run(c, path));
            prop_assert!(
                got == spec,
                "path {path:?} on a pool thread differs from the scalar specification"
            );
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn every_path_matches_scalar_bitwise_f32(c in case::<f32>(3000, testing::element::<f32>)) {
        assert_every_path_matches_spec(&c)?;
    }

    #[test]
    fn every_path_matches_scalar_bitwise_f64(c in case::<f64>(3000, testing::element::<f64>)) {
        assert_every_path_matches_spec(&c)?;
    }

    #[test]
    fn every_path_matches_scalar_bitwise_on_arbitrary_bits_f32(c in case::<f32>(200, f32::any_bits)) {
        assert_every_path_matches_spec(&c)?;
    }

    #[test]
    fn every_path_matches_scalar_bitwise_on_arbitrary_bits_f64(c in case::<f64>(200, f64::any_bits)) {
        assert_every_path_matches_spec(&c)?;
    }

    #[test]
    fn every_path_matches_scalar_bitwise_on_realistic_values_f32(c in case::<f32>(3000, testing::realistic_element::<f32>)) {
        assert_every_path_matches_spec(&c)?;
    }

    #[test]
    fn multi_tensor_step_equals_stepping_each_group_alone(
        hyper in testing::hyper(),
        lens in proptest::collection::vec(0usize..300, 0..12),
        seed in any::<u64>(),
        tasks in 1usize..6,
    ) {
        // Deterministic values from the seed: the property is about how
        // groups are cut and packed, not about the values.
        let value = |i: usize, salt: u64| {
            let x = (seed ^ salt).wrapping_add(i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        };
        let make = |salt: u64| -> Vec<Vec<f32>> {
            lens.iter().enumerate().map(|(g, &n)| (0..n).map(|i| value(i, salt + g as u64 * 7)).collect()).collect()
        };
        let grads = make(1);
        let mut together = make(2);
        let mut alone = together.clone();
        let mut together_state: Vec<State<f32>> = lens.iter().map(|&n| State::new(n, &hyper)).collect();
        let mut alone_state = together_state.clone();

        let threads = Threads::Exactly(NonZeroUsize::new(tasks).unwrap());
        let opt = RmsProp::new(hyper).unwrap().with_execution(Execution { kernel: Kernel::Auto, threads, ..Default::default() }).unwrap();
        for _ in 0..2 {
            let groups = together.iter_mut().zip(&grads).zip(&mut together_state)
                .map(|((p, g), s)| Group::new(p, g, s.slices_mut()));
            opt.step_many(hyper.lr, groups).unwrap();
            for ((p, g), s) in alone.iter_mut().zip(&grads).zip(&mut alone_state) {
                RmsProp::new(hyper).unwrap().step(p, g, s).unwrap();
            }
        }
        for g in 0..lens.len() {
            let mut counted = together_state[g].clone();
            counted.step = alone_state[g].step;
            prop_assert_eq!(outcome(&together[g], &counted), outcome(&alone[g], &alone_state[g]));
        }
    }
}

/// Every length up to a few registers, at every offset within a cache line,
/// on every instruction set: each head/tail split the SIMD kernel can meet.
#[test]
fn every_length_and_offset_matches_scalar_on_every_isa() {
    let hyper = Hyper::default()
        .with_momentum(0.9)
        .with_centered(true)
        .with_weight_decay(Some(fused_rmsprop::WeightDecay::Coupled(0.01)));
    for len in 0..=70 {
        for offset in 0..16 {
            let values = |salt: f32| {
                (0..len)
                    .map(|i| ((i as f32 + salt) * 0.37).sin())
                    .collect::<Vec<f32>>()
            };
            let c = Case {
                hyper,
                offset,
                params: values(1.0),
                square_avg: values(2.0).iter().map(|x| x.abs()).collect(),
                grad_avg: values(3.0),
                momentum_buf: values(4.0),
                grads: vec![values(5.0), values(6.0)],
            };
            let spec = run(&c, SPEC);
            for path in other_paths() {
                assert_eq!(
                    run(&c, path),
                    spec,
                    "len {len}, offset {offset}, path {path:?}"
                );
            }
        }
    }
}

#[test]
fn nan_outputs_are_canonical_on_every_path() {
    let nan_with_payload = f32::from_bits(0xFFC0_1234);
    let c = Case {
        hyper: Hyper::default().with_momentum(0.5).with_centered(true),
        offset: 3,
        params: vec![nan_with_payload; 40],
        square_avg: vec![0.0; 40],
        grad_avg: vec![0.0; 40],
        momentum_buf: vec![0.0; 40],
        grads: vec![vec![f32::from_bits(0x7FA0_0001); 40]],
    };
    for path in std::iter::once(SPEC).chain(other_paths()) {
        let out = run(&c, path);
        assert!(
            out.params.iter().all(|&b| b == f32::NAN.to_bits() as u64),
            "{path:?}"
        );
        assert!(
            out.square_avg
                .iter()
                .all(|&b| b == f32::NAN.to_bits() as u64),
            "{path:?}"
        );
    }
}

/// Long threaded calls (over a million elements, more than the property
/// tests above generate) from outside the pool, where the calling thread
/// works beside the pool: the same bits as one thread, for several task
/// counts, on one tensor and in `step_many` over four tensors.
#[test]
fn large_threaded_calls_match_one_thread() {
    let hyper = Hyper::default().with_momentum(0.9).with_centered(true);
    let n = (1 << 20) + 4099;
    let make = || -> (Vec<f32>, Vec<f32>) {
        let params = (0..n).map(|i| ((i % 977) as f32 - 488.0) * 1e-3).collect();
        let grads = (0..n).map(|i| ((i % 613) as f32 - 306.0) * 1e-4).collect();
        (params, grads)
    };
    let step = |threads: Threads| {
        let opt = RmsProp::new(hyper)
            .unwrap()
            .with_execution(Execution {
                kernel: Kernel::Auto,
                threads,
                ..Default::default()
            })
            .unwrap();
        let (mut params, grads) = make();
        let mut state = State::new(n, &hyper);
        for _ in 0..2 {
            opt.step(&mut params, &grads, &mut state).unwrap();
        }
        // The same elements as four tensors in one step_many call.
        let (mut many, _) = make();
        let mut states: Vec<State<f32>> = Vec::new();
        let cuts = [0, n / 5, n / 2, n - 7, n];
        for w in cuts.windows(2) {
            states.push(State::new(w[1] - w[0], &hyper));
        }
        for _ in 0..2 {
            let mut rest = many.as_mut_slice();
            let mut groups = Vec::new();
            for (w, state) in cuts.windows(2).zip(states.iter_mut()) {
                let (head, tail) = rest.split_at_mut(w[1] - w[0]);
                groups.push(Group::new(head, &grads[w[0]..w[1]], state.slices_mut()));
                rest = tail;
            }
            opt.step_many(hyper.lr, groups).unwrap();
        }
        (bits(&params), bits(&many), bits(&state.square_avg))
    };
    let single = step(Threads::Single);
    assert_eq!(single.0, single.1, "step_many equals one step");
    for tasks in [2, 3, 8] {
        let threaded = step(Threads::Exactly(NonZeroUsize::new(tasks).unwrap()));
        assert!(threaded == single, "{tasks} tasks differ from one thread");
    }
    assert!(step(Threads::Auto) == single);
}
