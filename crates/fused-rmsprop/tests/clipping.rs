//! Gradient clipping inside the step: every path writes the specification's
//! bits and reports the same norm, and the step equals clipping the
//! gradients first and stepping without clipping (what a framework's
//! clipping followed by its optimizer does).

use std::num::NonZeroUsize;

use fused_rmsprop::testing::{self, SPEC, other_paths};
use fused_rmsprop::{
    Error, Execution, GradClip, Group, Hyper, NonFinite, Param, RmsProp, State, StepReport,
    Threads, bf16,
};
use proptest::prelude::*;

/// Several tensors' starting values and one gradient per tensor per step.
#[derive(Clone, Debug)]
struct Case<T> {
    hyper: Hyper,
    params: Vec<Vec<T>>,
    grads: Vec<Vec<Vec<T>>>,
}

fn case<T: Param>(element: fn() -> BoxedStrategy<T>) -> impl Strategy<Value = Case<T>> {
    let policy = prop_oneof![Just(NonFinite::Propagate), Just(NonFinite::Skip)];
    // Lengths around the norm's block and register sizes, and one past a
    // block now and then.
    let len = prop_oneof![4 => 0usize..300, 1 => Just(1), 1 => 4090usize..4200];
    (
        testing::clipping_hyper(),
        policy,
        proptest::collection::vec(len, 1..4),
        1usize..3,
    )
        .prop_flat_map(move |(hyper, policy, lens, steps)| {
            let tensors = move || {
                lens.iter()
                    .map(|&n| proptest::collection::vec(element(), n))
                    .collect::<Vec<_>>()
            };
            (tensors(), proptest::collection::vec(tensors(), steps)).prop_map(
                move |(params, grads)| Case {
                    hyper: hyper.with_non_finite(policy),
                    params,
                    grads,
                },
            )
        })
}

fn bits<T: Param>(values: &[T]) -> Vec<u64> {
    values.iter().map(|x| x.to_bits_u64()).collect()
}

/// Every tensor's parameters and square average as bits, and every step's
/// report.
type Outcome = (Vec<Vec<u64>>, Vec<Vec<u64>>, Vec<StepReport>);

fn run<P: Param>(c: &Case<P>, path: Execution) -> Outcome {
    let opt = RmsProp::new(c.hyper).unwrap().with_execution(path).unwrap();
    let mut params = c.params.clone();
    let mut states: Vec<State<P::State>> = params
        .iter()
        .map(|p| State::for_params(p, &c.hyper))
        .collect();
    let mut reports = Vec::new();
    for grads in &c.grads {
        let groups = params
            .iter_mut()
            .zip(grads)
            .zip(&mut states)
            .enumerate()
            .map(|(i, ((p, g), s))| {
                let step = s.step;
                Group::new(p, g, s.slices_mut()).with_rounding_key(step, i as u64)
            });
        reports.push(opt.step_many(c.hyper.lr, groups).unwrap());
    }
    let square_avgs = states.iter().map(|s| bits(&s.square_avg)).collect();
    (
        params.iter().map(|p| bits(p)).collect(),
        square_avgs,
        reports,
    )
}

fn assert_every_path_matches_spec<P: Param>(c: &Case<P>) -> Result<(), TestCaseError> {
    let spec = run(c, SPEC);
    for path in other_paths() {
        prop_assert!(
            run(c, path) == spec,
            "path {path:?} differs from the specification"
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn clipped_steps_match_the_spec_on_every_path_f32(c in case::<f32>(testing::element::<f32>)) {
        assert_every_path_matches_spec(&c)?;
    }

    #[test]
    fn clipped_steps_match_the_spec_on_every_path_f64(c in case::<f64>(testing::element::<f64>)) {
        assert_every_path_matches_spec(&c)?;
    }

    #[test]
    fn clipped_steps_match_the_spec_on_every_path_realistic_f32(c in case::<f32>(testing::realistic_element::<f32>)) {
        assert_every_path_matches_spec(&c)?;
    }

    #[test]
    fn clipped_steps_match_the_spec_on_every_path_bf16(c in case::<bf16>(testing::half_element::<bf16>)) {
        assert_every_path_matches_spec(&c)?;
    }

    /// Clipping inside the step is clipping the gradients first (in the
    /// state type, with the step's own norm and coefficient) and stepping
    /// without clipping, bit for bit.
    #[test]
    fn clipping_in_the_step_equals_clipping_first(c in case::<f32>(testing::realistic_element::<f32>)) {
        let clip = c.hyper.grad_clip.unwrap();
        let plain = c.hyper.with_grad_clip(None);
        let clipped = run(&c, SPEC);
        let mut params = c.params.clone();
        let mut states: Vec<State<f32>> = params.iter().map(|p| State::new(p.len(), &plain)).collect();
        for (grads, report) in c.grads.iter().zip(&clipped.2) {
            let grads: Vec<Vec<f32>> = grads.iter().enumerate().map(|(i, g)| clip_first(clip, g, report, i)).collect();
            let groups = params.iter_mut().zip(&grads).zip(&mut states)
                .map(|((p, g), s)| Group::new(p, g, s.slices_mut()));
            let unclipped = RmsProp::new(plain).unwrap().step_many(plain.lr, groups).unwrap();
            prop_assert_eq!(unclipped.skipped(), report.skipped());
        }
        let params: Vec<Vec<u64>> = params.iter().map(|p| bits(p)).collect();
        prop_assert_eq!(params, clipped.0);
    }
}

/// Group `group`'s gradient clipped the way the step specifies, using the
/// norms the step reported.
fn clip_first(clip: GradClip, grad: &[f32], report: &StepReport, group: usize) -> Vec<f32> {
    let scale = |max: f64, norm: f64, tiny: f64| {
        let coefficient = max / (norm + tiny);
        (coefficient < 1.0 || coefficient.is_nan()).then_some(coefficient as f32)
    };
    let factor = match clip {
        GradClip::Value(max) => {
            let max = max as f32;
            return grad
                .iter()
                .map(|&g| {
                    let g = if max < g { max } else { g };
                    if g < -max { -max } else { g }
                })
                .collect();
        }
        GradClip::NormGlobal(max) => scale(max, report.grad_norm().unwrap(), 1e-6),
        GradClip::NormPerTensor(max) => match report.group_grad_norm(group) {
            Some(norm) => scale(max, norm, f64::from(f32::MIN_POSITIVE)),
            None => None,
        },
    };
    match factor {
        Some(factor) => grad.iter().map(|&g| g * factor).collect(),
        None => grad.to_vec(),
    }
}

fn step_once(hyper: Hyper, grads: &[&[f32]]) -> (Vec<Vec<f32>>, Vec<State<f32>>, StepReport) {
    let mut params: Vec<Vec<f32>> = grads.iter().map(|g| vec![0.0; g.len()]).collect();
    let mut states: Vec<State<f32>> = grads.iter().map(|g| State::new(g.len(), &hyper)).collect();
    let groups = params
        .iter_mut()
        .zip(grads)
        .zip(&mut states)
        .map(|((p, g), s)| Group::new(p, g, s.slices_mut()));
    let report = RmsProp::new(hyper)
        .unwrap()
        .step_many(hyper.lr, groups)
        .unwrap();
    (params, states, report)
}

/// With `alpha = 0` the square average is the clipped gradient's square:
/// clipping by value clamps each element to `[-max, max]` and keeps a NaN.
#[test]
fn clipping_by_value_clamps_each_element_and_keeps_nan() {
    let hyper = Hyper::default()
        .with_alpha(0.0)
        .with_grad_clip(Some(GradClip::Value(0.5)));
    let grads = [
        2.0f32,
        -3.0,
        0.1,
        -0.5,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
    ];
    let (_, states, report) = step_once(hyper, &[&grads]);
    let squares = &states[0].square_avg;
    assert_eq!(&squares[..4], &[0.25, 0.25, 0.1f32 * 0.1, 0.25]);
    assert!(squares[4].is_nan());
    assert_eq!(&squares[5..], &[0.25, 0.25, 0.0]);
    assert_eq!(
        report.grad_norm(),
        None,
        "clipping by value measures no norm"
    );
}

/// The global norm is the L2 norm of every gradient of the call; a total
/// above the bound scales every gradient by `max / (norm + 1e-6)`.
#[test]
fn the_global_norm_covers_every_group_and_scales_them_all() {
    let hyper = Hyper::default()
        .with_alpha(0.0)
        .with_grad_clip(Some(GradClip::NormGlobal(1.0)));
    let a = [3.0f32, 0.0];
    let b = [4.0f32];
    let (_, states, report) = step_once(hyper, &[&a, &b]);
    assert_eq!(report.grad_norm(), Some(5.0));
    assert_eq!(report.group_grad_norm(0), Some(3.0));
    assert_eq!(report.group_grad_norm(1), Some(4.0));
    let coefficient = 1.0 / (5.0 + 1e-6);
    assert_eq!(report.clip_coefficient(), Some(coefficient));
    let scaled = |g: f32| g * coefficient as f32;
    assert_eq!(states[0].square_avg[0], scaled(3.0) * scaled(3.0));
    assert_eq!(states[1].square_avg[0], scaled(4.0) * scaled(4.0));
}

/// Per tensor, each group is clipped by its own norm, as Burn clips each
/// parameter alone; a group under the bound is left as it is.
#[test]
fn the_per_tensor_norm_clips_each_group_alone() {
    let hyper = Hyper::default()
        .with_alpha(0.0)
        .with_grad_clip(Some(GradClip::NormPerTensor(3.5)));
    let a = [3.0f32, 0.0];
    let b = [4.0f32];
    let (_, states, report) = step_once(hyper, &[&a, &b]);
    assert_eq!(states[0].square_avg[0], 9.0, "3 is under 3.5: not clipped");
    let coefficient = (3.5 / (4.0 + f64::from(f32::MIN_POSITIVE))) as f32;
    assert_eq!(
        states[1].square_avg[0],
        (4.0 * coefficient) * (4.0 * coefficient)
    );
    assert_eq!(report.clip_coefficient(), None);
}

/// A zero gradient has norm 0 and is not scaled; a tensor of one element
/// is clipped to the bound's magnitude.
#[test]
fn a_zero_gradient_and_a_single_element() {
    for clip in [GradClip::NormGlobal(1.0), GradClip::NormPerTensor(1.0)] {
        let hyper = Hyper::default().with_alpha(0.0).with_grad_clip(Some(clip));
        let (params, states, report) = step_once(hyper, &[&[0.0f32; 5]]);
        assert_eq!(report.grad_norm(), Some(0.0));
        assert_eq!(params[0], vec![0.0; 5]);
        assert_eq!(states[0].square_avg, vec![0.0; 5]);

        let (_, states, report) = step_once(hyper, &[&[-8.0f32]]);
        assert_eq!(report.grad_norm(), Some(8.0));
        assert!((states[0].square_avg[0] - 1.0).abs() < 1e-6, "{clip:?}");
    }
}

/// Non-finite gradients under each policy with clipping by norm: a NaN
/// propagates into the norm and from it into every gradient it scales;
/// `Skip` leaves the group out of the norm; `Error` refuses the step first.
#[test]
fn non_finite_gradients_under_each_policy() {
    let clip = Some(GradClip::NormGlobal(1.0));
    let finite = [3.0f32, 4.0];
    let poisoned = [1.0f32, f32::NAN];

    let propagate = Hyper::default().with_grad_clip(clip);
    let (params, _, report) = step_once(propagate, &[&finite, &poisoned]);
    assert_eq!(
        report.grad_norm().map(f64::to_bits),
        Some(f64::NAN.to_bits())
    );
    assert!(params.iter().flatten().all(|p| p.is_nan()), "{params:?}");

    let skip = propagate.with_non_finite(NonFinite::Skip);
    let (params, _, report) = step_once(skip, &[&finite, &poisoned]);
    assert_eq!(report.skipped(), &[1]);
    assert_eq!(report.grad_norm(), Some(5.0));
    assert_eq!(report.group_grad_norm(1), None);
    assert_eq!(params[1], vec![0.0; 2], "the skipped group is untouched");
    assert!(params[0].iter().all(|p| p.is_finite()));

    let error = propagate.with_non_finite(NonFinite::Error);
    let opt = RmsProp::new(error).unwrap();
    let (mut p, mut s) = (vec![0.0f32; 2], State::new(2, &error));
    let err = opt.step(&mut p, &poisoned, &mut s).unwrap_err();
    assert_eq!(err, Error::NonFiniteGradient { group: 0, index: 1 });
}

/// `f64` gradients whose squares overflow have an infinite norm although
/// every gradient is finite: an error under `Error` (PyTorch's
/// `error_if_nonfinite`), a skip under `Skip`, a scale of 0 otherwise.
#[test]
fn an_overflowing_norm_under_each_policy() {
    let grads = [1e200f64, -1e200];
    for clip in [GradClip::NormGlobal(1.0), GradClip::NormPerTensor(1.0)] {
        let hyper = Hyper::default().with_grad_clip(Some(clip));
        let step = |policy: NonFinite| {
            let opt = RmsProp::new(hyper.with_non_finite(policy)).unwrap();
            let mut p = vec![0.5f64; 2];
            let mut s = State::new(2, &hyper);
            let result = opt.step(&mut p, &grads, &mut s);
            (result, p)
        };
        let (result, p) = step(NonFinite::Error);
        assert!(
            matches!(result, Err(Error::NonFiniteGradNorm { .. })),
            "{result:?}"
        );
        assert_eq!(p, vec![0.5; 2], "a refused step writes nothing");
        let (result, p) = step(NonFinite::Skip);
        assert_eq!(result.unwrap().skipped(), &[0]);
        assert_eq!(p, vec![0.5; 2]);
        let (result, p) = step(NonFinite::Propagate);
        assert_eq!(result.unwrap().grad_norm(), Some(f64::INFINITY));
        assert_eq!(p, vec![0.5; 2], "scaled by 0: no update");
    }
}

/// Long gradients, threaded with several task counts and on one thread:
/// the same norm to the last bit, the same parameters; and against a
/// plain `f64` sum within rounding.
#[test]
fn the_norm_of_long_gradients_is_the_same_on_every_thread_count() {
    let n = (1 << 20) + 4099;
    let grads: Vec<f32> = (0..n)
        .map(|i| ((i % 977) as f32 - 488.0) * 1e-3 * if i % 5 == 0 { 1e4 } else { 1.0 })
        .collect();
    let hyper = Hyper::default().with_grad_clip(Some(GradClip::NormGlobal(0.5)));
    let run = |threads: Threads| {
        let opt = RmsProp::new(hyper)
            .unwrap()
            .with_execution(Execution {
                threads,
                ..Execution::default()
            })
            .unwrap();
        let mut params = vec![1.0f32; n];
        let mut state = State::new(n, &hyper);
        let report = opt.step(&mut params, &grads, &mut state).unwrap();
        (report.grad_norm().unwrap().to_bits(), bits(&params))
    };
    let single = run(Threads::Single);
    for tasks in [2, 3, 8] {
        let threads = Threads::Exactly(NonZeroUsize::new(tasks).unwrap());
        assert!(run(threads) == single, "{tasks} tasks");
    }
    assert!(run(Threads::Auto) == single);
    let naive: f64 = grads
        .iter()
        .map(|&g| f64::from(g) * f64::from(g))
        .sum::<f64>()
        .sqrt();
    let norm = f64::from_bits(single.0);
    assert!(
        (norm - naive).abs() <= 1e-12 * naive,
        "{norm} against {naive}"
    );
}

/// An invalid bound is refused, naming the field.
#[test]
fn a_negative_or_non_finite_bound_is_refused() {
    for max in [-1.0, f64::NAN, f64::INFINITY] {
        for clip in [
            GradClip::Value(max),
            GradClip::NormPerTensor(max),
            GradClip::NormGlobal(max),
        ] {
            let err = RmsProp::new(Hyper::default().with_grad_clip(Some(clip))).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidHyper {
                        name: "grad_clip",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }
}

/// A gradient scale set by the caller (`Group::with_grad_scale`) is
/// applied the same way on every path, and equals scaling the gradient
/// first in the state type.
#[test]
fn a_caller_scale_is_the_same_on_every_path_and_equals_scaling_first() {
    let hyper = Hyper::default().with_momentum(0.9).with_centered(true);
    for len in [0usize, 1, 15, 16, 17, 70, 5000] {
        let grads: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
        let step = |path: Execution, scale: Option<f64>, grads: &[f32]| {
            let opt = RmsProp::new(hyper).unwrap().with_execution(path).unwrap();
            let mut params = vec![0.25f32; len];
            let mut state = State::new(len, &hyper);
            for _ in 0..2 {
                let mut group = Group::new(&mut params, grads, state.slices_mut());
                if let Some(scale) = scale {
                    group = group.with_grad_scale(scale);
                }
                opt.step_many(hyper.lr, [group]).unwrap();
            }
            (bits(&params), bits(&state.square_avg))
        };
        let spec = step(SPEC, Some(0.3), &grads);
        for path in other_paths() {
            assert!(step(path, Some(0.3), &grads) == spec, "len {len} {path:?}");
        }
        let scaled_first: Vec<f32> = grads.iter().map(|g| g * 0.3f64 as f32).collect();
        assert!(step(SPEC, None, &scaled_first) == spec, "len {len}");
    }
}
