//! The out-of-place step ([`Group::with_source`]): on every path, reading
//! the parameters from `source` and writing them to a buffer of junk gives
//! the bits of copying `source` into the buffer and stepping in place (the
//! scalar specification), state included, and leaves `source` as it was.

use fused_rmsprop::testing::{self, Arbitrary16};
use fused_rmsprop::testing::{SPEC, other_paths};
use fused_rmsprop::{
    Error, Execution, Group, Hyper, Param, RmsProp, State, StateSlices, bf16, f16,
};
use proptest::prelude::*;

/// Every path, the specification first.
fn paths() -> Vec<Execution> {
    std::iter::once(SPEC).chain(other_paths()).collect()
}

/// The parameters and every state buffer after two steps of `params` on
/// `path`, in place or out of place (each step's results written over
/// `junk` from the previous step's, which stays unchanged), as bits.
fn run<P: Param<State: Copy + Into<f64>>>(
    hyper: Hyper,
    params: &[P],
    grads: &[Vec<P>],
    path: Execution,
    junk: Option<P>,
) -> (Vec<u64>, Vec<Vec<u64>>) {
    let opt = RmsProp::new(hyper).unwrap().with_execution(path).unwrap();
    let mut state = State::for_params(params, &hyper);
    let mut current = params.to_vec();
    for (step, grads) in grads.iter().enumerate() {
        let group = |out: &mut [P], state: &mut State<P::State>| {
            opt.step_many(
                hyper.lr,
                [Group::new(out, grads, state.slices_mut()).with_rounding_key(step as u64, 1)],
            )
            .unwrap();
        };
        match junk {
            None => group(&mut current, &mut state),
            Some(junk) => {
                let before = current.clone();
                let mut out = vec![junk; current.len()];
                let source: &[P] = &current;
                opt.step_many(
                    hyper.lr,
                    [Group::new(&mut out, grads, state.slices_mut())
                        .with_source(source)
                        .with_rounding_key(step as u64, 1)],
                )
                .unwrap();
                assert!(bits(&current) == bits(&before), "the source was written");
                current = out;
            }
        }
    }
    let buffers = [
        Some(&state.square_avg),
        state.grad_avg.as_ref(),
        state.momentum_buf.as_ref(),
        state.master.as_ref(),
    ];
    let state_bits = buffers
        .into_iter()
        .flatten()
        .map(|b| b.iter().map(|x| (*x).into().to_bits()).collect())
        .collect();
    (bits(&current), state_bits)
}

fn bits<P: Param>(xs: &[P]) -> Vec<u64> {
    xs.iter().map(|x| x.to_bits_u64()).collect()
}

fn assert_out_of_place_matches<P: Param<State: Copy + Into<f64>>>(
    hyper: Hyper,
    params: &[P],
    grads: &[Vec<P>],
    junk: P,
) -> Result<(), TestCaseError> {
    let spec = run(hyper, params, grads, paths()[0], None);
    for path in paths() {
        prop_assert!(
            run(hyper, params, grads, path, Some(junk)) == spec,
            "{} out of place on {path:?} differs from the specification in place",
            P::NAME
        );
    }
    Ok(())
}

fn wide_case<T: testing::Arbitrary + Param>() -> impl Strategy<Value = (Hyper, Vec<T>, Vec<Vec<T>>)>
{
    (testing::hyper(), 0usize..700).prop_flat_map(|(hyper, len)| {
        let vec = move || proptest::collection::vec(testing::element::<T>(), len);
        (Just(hyper), vec(), proptest::collection::vec(vec(), 2))
    })
}

fn half_case<H: Arbitrary16>() -> impl Strategy<Value = (Hyper, Vec<H>, Vec<Vec<H>>)> {
    (testing::half_hyper(), 0usize..700).prop_flat_map(|(hyper, len)| {
        let vec = move || proptest::collection::vec(testing::half_element::<H>(), len);
        (Just(hyper), vec(), proptest::collection::vec(vec(), 2))
    })
}

proptest! {
    #[test]
    fn f32_out_of_place_equals_in_place((hyper, params, grads) in wide_case::<f32>()) {
        assert_out_of_place_matches(hyper, &params, &grads, f32::NAN)?;
    }

    #[test]
    fn f64_out_of_place_equals_in_place((hyper, params, grads) in wide_case::<f64>()) {
        assert_out_of_place_matches(hyper, &params, &grads, -7.25f64)?;
    }

    #[test]
    fn bf16_out_of_place_equals_in_place((hyper, params, grads) in half_case::<bf16>()) {
        assert_out_of_place_matches(hyper, &params, &grads, bf16::NAN)?;
    }

    #[test]
    fn f16_out_of_place_equals_in_place((hyper, params, grads) in half_case::<f16>()) {
        assert_out_of_place_matches(hyper, &params, &grads, f16::from_f32(-7.25))?;
    }
}

#[test]
fn a_source_of_another_length_is_an_error_and_writes_nothing() {
    let opt = RmsProp::new(Hyper::default()).unwrap();
    let (mut out, mut v) = ([3.0f32; 4], [0.5f32; 4]);
    let group = Group::new(&mut out, &[1.0; 4], StateSlices::new(&mut v)).with_source(&[1.0; 3]);
    let err = opt.step_many(0.1, [group]).unwrap_err();
    assert_eq!(
        err,
        Error::LengthMismatch {
            group: 0,
            buffer: "source",
            expected: 4,
            actual: 3
        }
    );
    assert_eq!((out, v), ([3.0; 4], [0.5; 4]));
}

/// Large out-of-place chunks write their parameters with streaming stores
/// (module `streaming`), after a lead of elements up to the first aligned
/// register: on every path, destinations at every offset from a register
/// boundary give the spec's bits, NaN and infinity included, and the
/// threaded paths whose tasks stay below the threshold give them too.
#[test]
fn streamed_parameters_are_the_specs_bits_at_every_alignment() {
    let n = 70_001; // above the streaming threshold, not a whole register count
    let value = |i: usize, k: usize| match (i * 7 + k) % 997 {
        0 => f32::NAN,
        1 => f32::INFINITY,
        2 => -0.0,
        3 => 1e-40,
        r => (r as f32 - 498.0) / 300.0,
    };
    let params: Vec<f32> = (0..n).map(|i| value(i, 0)).collect();
    let grads: Vec<f32> = (0..n).map(|i| value(i, 1) * 0.01).collect();
    let hyper = Hyper::default().with_momentum(0.9).with_centered(true);
    let step = |path: Execution, offset: usize| {
        let opt = RmsProp::new(hyper).unwrap().with_execution(path).unwrap();
        let mut state = State::for_params(&params, &hyper);
        let mut buffer = vec![f32::NAN; n + 16];
        let out = &mut buffer[offset..offset + n];
        opt.step_many(
            hyper.lr,
            [Group::new(out, &grads, state.slices_mut()).with_source(&params)],
        )
        .unwrap();
        (
            bits(out),
            bits(&state.square_avg),
            bits(state.momentum_buf.as_ref().unwrap()),
        )
    };
    let spec = step(SPEC, 0);
    for path in other_paths() {
        for offset in 0..16 {
            assert!(step(path, offset) == spec, "{path:?}, offset {offset}");
        }
    }
}
