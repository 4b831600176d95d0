//! A few steps of each variant against values worked out from the published
//! algorithm (PyTorch's `torch.optim.RMSprop` pseudo-code, with Optax's
//! variations), evaluated in f64 outside this crate.
//!
//! Every case: one parameter starting at 1.0, gradients 0.5, -0.25, 1.0,
//! lr 0.1, alpha 0.9, eps 1e-3. The first plain step by hand:
//! v = 0.1 * 0.5² = 0.025; denom = sqrt(0.025) + 1e-3 = 0.1591138830;
//! p = 1 - 0.1 * 0.5 / denom = 0.6857596644.

use fused_rmsprop::{EpsPlacement, Hyper, Isa, Kernel, RmsProp, State, Threads, WeightDecay};

const GRADS: [f64; 3] = [0.5, -0.25, 1.0];

fn base() -> Hyper {
    Hyper::default().with_lr(0.1).with_alpha(0.9).with_eps(1e-3)
}

/// The parameter after each step, on every kernel.
fn trajectory(hyper: Hyper) -> Vec<f64> {
    let mut kernels = vec![Kernel::Scalar];
    kernels.extend(Isa::available().into_iter().map(Kernel::Simd));
    let mut results = kernels.into_iter().map(|kernel| {
        let opt = RmsProp::new(hyper)
            .unwrap()
            .with_execution(fused_rmsprop::Execution {
                kernel,
                threads: Threads::Single,
                ..Default::default()
            })
            .unwrap();
        let mut p = [1.0f64];
        let mut state = State::new(1, &hyper);
        GRADS
            .iter()
            .map(|&g| {
                opt.step(&mut p, &[g], &mut state).unwrap();
                p[0]
            })
            .collect::<Vec<_>>()
    });
    let first = results.next().unwrap();
    for other in results {
        assert_eq!(other, first);
    }
    first
}

fn assert_trajectory(hyper: Hyper, expected: [f64; 3]) {
    let got = trajectory(hyper);
    for (step, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!(
            (g - e).abs() <= 1e-12,
            "step {}: got {g}, expected {e} ({hyper:?})",
            step + 1
        );
    }
}

#[test]
fn plain_matches_hand_computed_values() {
    assert_trajectory(
        base(),
        [0.6857596643697368, 0.8323371536546961, 0.551271429603553],
    );
}

#[test]
fn momentum_matches_hand_computed_values() {
    assert_trajectory(
        base().with_momentum(0.5),
        [0.6857596643697368, 0.6752169858395645, 0.38887992252333514],
    );
}

#[test]
fn nesterov_matches_hand_computed_values() {
    assert_trajectory(
        base().with_momentum(0.5).with_nesterov(true),
        [0.5286394965546053, 0.6699456465744784, 0.24571139086522065],
    );
}

#[test]
fn centered_matches_hand_computed_values() {
    assert_trajectory(
        base().with_centered(true),
        [0.6688741721854304, 0.8164760121134944, 0.5184940604811061],
    );
}

#[test]
fn centered_with_momentum_matches_hand_computed_values() {
    assert_trajectory(
        base().with_centered(true).with_momentum(0.5),
        [0.6688741721854304, 0.6509130982062096, 0.343950609584211],
    );
}

#[test]
fn coupled_weight_decay_matches_hand_computed_values() {
    assert_trajectory(
        base().with_weight_decay(Some(WeightDecay::Coupled(0.1))),
        [0.6854301625987897, 0.7809715412141319, 0.5017917255662064],
    );
}

#[test]
fn decoupled_weight_decay_matches_hand_computed_values() {
    assert_trajectory(
        base().with_weight_decay(Some(WeightDecay::Decoupled(0.1))),
        [0.6757596643697368, 0.8155795570109987, 0.5263580373897456],
    );
}

#[test]
fn maximize_matches_hand_computed_values() {
    assert_trajectory(
        base().with_maximize(true),
        [1.3142403356302632, 1.167662846345304, 1.4487285703964472],
    );
}

#[test]
fn eps_inside_sqrt_matches_hand_computed_values() {
    assert_trajectory(
        base().with_eps_placement(EpsPlacement::InsideSqrt),
        [0.6899131635269788, 0.834855922440091, 0.5541109599026524],
    );
}

#[test]
fn initial_square_avg_matches_hand_computed_values() {
    assert_trajectory(
        base().with_initial_square_avg(1.0),
        [0.9480664734186973, 0.9753342541910354, 0.8672955834961863],
    );
}

#[test]
fn zero_gradient_leaves_parameter_and_square_avg_unchanged() {
    let opt = RmsProp::new(Hyper::default()).unwrap();
    let mut p = [3.0f32; 5];
    let mut s = State::new(5, opt.hyper());
    opt.step(&mut p, &[0.0; 5], &mut s).unwrap();
    assert_eq!(p, [3.0; 5]);
    assert_eq!(s.square_avg, vec![0.0; 5]);
}

/// PyTorch's centered RMSprop goes NaN once `v - grad_avg²` rounds below
/// zero (a constant gradient does it); the clamp option keeps it finite.
#[test]
fn centered_variance_rounding_below_zero_gives_nan_unless_clamped() {
    let run = |clamp: bool| {
        let hyper = Hyper::default()
            .with_centered(true)
            .with_clamp_centered_variance(clamp);
        let opt = RmsProp::new(hyper).unwrap();
        let mut p = [0.0f32];
        let mut s = State::new(1, &hyper);
        let mut went_nan = false;
        for _ in 0..2000 {
            opt.step(&mut p, &[0.7], &mut s).unwrap();
            went_nan |= p[0].is_nan();
        }
        went_nan
    };
    assert!(
        run(false),
        "the unclamped estimate should round below zero within 2000 steps (at about step 1180 for g = 0.7)"
    );
    assert!(!run(true));
}

#[test]
fn step_counts_only_successful_steps() {
    let opt = RmsProp::new(Hyper::default()).unwrap();
    let mut p = [1.0f32; 2];
    let mut s = State::new(2, opt.hyper());
    opt.step(&mut p, &[1.0; 2], &mut s).unwrap();
    assert!(opt.step(&mut p, &[1.0; 3], &mut s).is_err());
    assert_eq!(s.step, 1);
}

#[test]
fn zero_length_step_is_a_no_op() {
    let opt = RmsProp::new(Hyper::default().with_momentum(0.9).with_centered(true)).unwrap();
    let mut s = State::<f32>::new(0, opt.hyper());
    opt.step::<f32>(&mut [], &[], &mut s).unwrap();
    assert_eq!(s.step, 1);
}

/// One plain step of a 16-bit parameter, by hand: p = 1, g = 0.5, lr 0.01,
/// alpha 0.99, eps 1e-8. v = 0.01 * 0.25 = 0.0025, sqrt(v) = 0.05, the step
/// is 0.5 / 0.05 = 10 (less 2e-7 from eps), p = 1 - 0.1 = 0.9 in f32. In
/// bf16 (8 bits of precision, ulp 2^-8 in [0.5, 1)) 0.9 lies between
/// 230 * 2^-8 = 0.8984375 and 231 * 2^-8 = 0.90234375, nearer the first; in
/// f16 (ulp 2^-11) between 1843 * 2^-11 = 0.89990234375 and 1844 * 2^-11,
/// nearer the first. The state keeps v in f32.
#[test]
fn half_precision_step_matches_hand_computed_values() {
    let opt = RmsProp::new(Hyper::default()).unwrap();
    let mut p = [fused_rmsprop::bf16::from_f32(1.0)];
    let mut s = State::new(1, opt.hyper());
    opt.step(&mut p, &[fused_rmsprop::bf16::from_f32(0.5)], &mut s)
        .unwrap();
    assert_eq!(p[0].to_f64(), 0.8984375);
    assert_eq!(s.square_avg[0], 0.0025f32);

    let mut p = [fused_rmsprop::f16::from_f32(1.0)];
    let mut s = State::new(1, opt.hyper());
    opt.step(&mut p, &[fused_rmsprop::f16::from_f32(0.5)], &mut s)
        .unwrap();
    assert_eq!(p[0].to_f64(), 1843.0 / 2048.0);

    // With master weights the f32 value is kept: 0.9 less rounding of f32.
    let master = Hyper::default().with_master_weights(true);
    let opt = RmsProp::new(master).unwrap();
    let mut p = [fused_rmsprop::bf16::from_f32(1.0)];
    let mut s = State::for_params(&p, &master);
    opt.step(&mut p, &[fused_rmsprop::bf16::from_f32(0.5)], &mut s)
        .unwrap();
    assert!((s.master.as_ref().unwrap()[0] - 0.9).abs() < 1e-6);
    assert_eq!(p[0].to_f64(), 0.8984375);
}
