//! Bad input: each invalid hyper-parameter and each mismatch returns its own
//! error and leaves every buffer exactly as it was.

use fused_rmsprop::{Error, Group, Hyper, RmsProp, State, StateSlices, WeightDecay};

fn invalid_hypers() -> Vec<(Hyper, &'static str)> {
    let d = Hyper::default();
    vec![
        (d.with_lr(-0.1), "lr"),
        (d.with_lr(f64::NAN), "lr"),
        (d.with_lr(f64::INFINITY), "lr"),
        (d.with_alpha(-0.01), "alpha"),
        (d.with_alpha(1.01), "alpha"),
        (d.with_alpha(f64::NAN), "alpha"),
        (d.with_eps(-1e-8), "eps"),
        (d.with_eps(f64::INFINITY), "eps"),
        (d.with_eps(f64::NAN), "eps"),
        (d.with_initial_square_avg(-1.0), "initial_square_avg"),
        (d.with_initial_square_avg(f64::NAN), "initial_square_avg"),
        (d.with_momentum(-0.5), "momentum"),
        (d.with_momentum(1.0), "momentum"),
        (d.with_momentum(f64::NAN), "momentum"),
        (
            d.with_weight_decay(Some(WeightDecay::Coupled(-0.1))),
            "weight_decay",
        ),
        (
            d.with_weight_decay(Some(WeightDecay::Decoupled(f64::NAN))),
            "weight_decay",
        ),
        (
            d.with_weight_decay(Some(WeightDecay::Decoupled(f64::INFINITY))),
            "weight_decay",
        ),
    ]
}

#[test]
fn each_invalid_hyper_parameter_is_named_in_its_error() {
    for (hyper, field) in invalid_hypers() {
        match RmsProp::new(hyper) {
            Err(Error::InvalidHyper { name, .. }) => assert_eq!(name, field, "{hyper:?}"),
            other => panic!("{hyper:?}: expected InvalidHyper({field}), got {other:?}"),
        }
    }
}

#[test]
fn invalid_step_lr_is_an_error_and_writes_nothing() {
    let opt = RmsProp::new(Hyper::default()).unwrap();
    for lr in [f64::NAN, -1.0, f64::INFINITY, f64::NEG_INFINITY] {
        let mut p = vec![1.0f32; 8];
        let mut s = State::new(8, opt.hyper());
        let before = (p.clone(), s.clone());
        let err = opt.step_with_lr(lr, &mut p, &[0.5; 8], &mut s).unwrap_err();
        assert!(
            matches!(err, Error::InvalidHyper { name: "lr", .. }),
            "{err}"
        );
        assert_eq!((p, s), before);
    }
}

/// Two valid groups and one bad one: nothing at all is written.
fn assert_mismatch_writes_nothing(
    hyper: Hyper,
    bad: impl Fn(&mut Vec<f32>, &mut State<f32>, &mut Vec<f32>),
    expected: Error,
) {
    let opt = RmsProp::new(hyper).unwrap();
    let n = 40;
    let mut params: Vec<Vec<f32>> = (0..3).map(|g| vec![1.0 + g as f32; n]).collect();
    let mut states: Vec<State<f32>> = (0..3).map(|_| State::new(n, &hyper)).collect();
    let mut grads: Vec<Vec<f32>> = (0..3).map(|_| vec![0.5; n]).collect();
    bad(&mut params[2], &mut states[2], &mut grads[2]);
    let before = (params.clone(), states.clone());
    let groups = params
        .iter_mut()
        .zip(&grads)
        .zip(&mut states)
        .map(|((p, g), s)| Group::new(p, g, s.slices_mut()));
    assert_eq!(opt.step_many(0.01, groups).unwrap_err(), expected);
    assert_eq!((params, states), before);
}

#[test]
fn grads_of_another_length_are_an_error_and_nothing_is_written() {
    assert_mismatch_writes_nothing(
        Hyper::default(),
        |_, _, g| g.truncate(39),
        Error::LengthMismatch {
            group: 2,
            buffer: "grads",
            expected: 40,
            actual: 39,
        },
    );
}

#[test]
fn state_buffers_of_another_length_are_an_error_and_nothing_is_written() {
    let h = Hyper::default().with_momentum(0.9).with_centered(true);
    assert_mismatch_writes_nothing(
        h,
        |_, s, _| s.square_avg.push(0.0),
        Error::LengthMismatch {
            group: 2,
            buffer: "square_avg",
            expected: 40,
            actual: 41,
        },
    );
    assert_mismatch_writes_nothing(
        h,
        |_, s, _| s.grad_avg.as_mut().unwrap().pop().map(drop).unwrap(),
        Error::LengthMismatch {
            group: 2,
            buffer: "grad_avg",
            expected: 40,
            actual: 39,
        },
    );
    assert_mismatch_writes_nothing(
        h,
        |_, s, _| s.momentum_buf.as_mut().unwrap().clear(),
        Error::LengthMismatch {
            group: 2,
            buffer: "momentum_buf",
            expected: 40,
            actual: 0,
        },
    );
}

#[test]
fn state_made_for_other_hyper_parameters_is_an_error_and_nothing_is_written() {
    let h = Hyper::default().with_momentum(0.9).with_centered(true);
    assert_mismatch_writes_nothing(
        h,
        |_, s, _| s.grad_avg = None,
        Error::MissingState {
            group: 2,
            buffer: "grad_avg",
        },
    );
    assert_mismatch_writes_nothing(
        h,
        |_, s, _| s.momentum_buf = None,
        Error::MissingState {
            group: 2,
            buffer: "momentum_buf",
        },
    );
}

#[test]
fn unneeded_state_buffers_are_left_alone() {
    let opt = RmsProp::new(Hyper::default()).unwrap();
    let (mut p, mut v, mut ga, mut b) = ([1.0f32; 4], [0.0f32; 4], [5.0f32; 4], [6.0f32; 7]);
    let state = StateSlices::new(&mut v)
        .with_grad_avg(&mut ga)
        .with_momentum_buf(&mut b);
    opt.step_slices(0.01, &mut p, &[1.0; 4], state).unwrap();
    assert_eq!((ga, b), ([5.0; 4], [6.0; 7]));
}

#[test]
fn every_error_message_names_the_value_that_was_wrong() {
    let msg = RmsProp::new(Hyper::default().with_momentum(1.0))
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "invalid hyper-parameter momentum = 1: expected a value in [0, 1)"
    );
    let msg = Error::LengthMismatch {
        group: 3,
        buffer: "grads",
        expected: 10,
        actual: 9,
    }
    .to_string();
    assert_eq!(
        msg,
        "group 3: grads has 9 elements, but the parameter has 10"
    );
}
