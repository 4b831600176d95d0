//! The non-finite gradient policy: `Propagate` is the plain step, `Skip`
//! leaves exactly the poisoned tensors untouched and steps the others as if
//! alone, `Error` writes nothing; on every path.

use fused_rmsprop::testing::{hyper, realistic_element};
use fused_rmsprop::{
    Error, Execution, Group, Hyper, Isa, Kernel, NonFinite, RmsProp, State, Threads,
};
use proptest::prelude::*;

fn executions() -> Vec<Execution> {
    let mut out = vec![
        Execution::default(),
        Execution {
            kernel: Kernel::Scalar,
            threads: Threads::Single,
            ..Default::default()
        },
    ];
    for isa in Isa::available() {
        out.push(Execution {
            kernel: Kernel::Simd(isa),
            threads: Threads::Exactly(3.try_into().unwrap()),
            ..Default::default()
        });
    }
    out
}

fn bits(xs: &[f32]) -> Vec<u32> {
    xs.iter().map(|x| x.to_bits()).collect()
}

/// Three tensors; the ones listed in `poisoned` get a NaN or Inf at a
/// position of the case's choosing.
#[derive(Clone, Debug)]
struct Case {
    hyper: Hyper,
    params: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
}

fn case() -> impl Strategy<Value = Case> {
    (hyper(), proptest::collection::vec(1usize..200, 3))
        .prop_flat_map(|(hyper, lens)| {
            let tensor = |n: usize| proptest::collection::vec(realistic_element::<f32>(), n);
            let params: Vec<_> = lens.iter().map(|&n| tensor(n)).collect();
            let grads: Vec<_> = lens
                .iter()
                .map(|&n| {
                    (
                        tensor(n),
                        prop_oneof![
                            Just(None),
                            (
                                0..n,
                                prop_oneof![
                                    Just(f32::NAN),
                                    Just(f32::INFINITY),
                                    Just(f32::NEG_INFINITY)
                                ]
                            )
                                .prop_map(Some)
                        ],
                    )
                        .prop_map(|(mut g, poison)| {
                            if let Some((at, value)) = poison {
                                g[at] = value;
                            }
                            g
                        })
                })
                .collect();
            (Just(hyper), params, grads)
        })
        .prop_map(|(hyper, params, grads)| Case {
            hyper,
            params,
            grads,
        })
}

/// Runs one multi-tensor step of `case` under `policy`; returns the result,
/// the parameters and the square averages after it.
#[allow(clippy::type_complexity)]
fn run(
    case: &Case,
    policy: NonFinite,
    execution: Execution,
) -> (Result<Vec<usize>, Error>, Vec<Vec<f32>>, Vec<State<f32>>) {
    let hyper = case.hyper.with_non_finite(policy);
    let opt = RmsProp::new(hyper)
        .unwrap()
        .with_execution(execution)
        .unwrap();
    let mut params = case.params.clone();
    let mut states: Vec<State<f32>> = params.iter().map(|p| State::new(p.len(), &hyper)).collect();
    let groups = params
        .iter_mut()
        .zip(&case.grads)
        .zip(&mut states)
        .map(|((p, g), s)| Group::new(p, g, s.slices_mut()));
    let result = opt
        .step_many(hyper.lr, groups)
        .map(|report| report.skipped().to_vec());
    (result, params, states)
}

fn poisoned(case: &Case) -> Vec<usize> {
    (0..case.grads.len())
        .filter(|&i| case.grads[i].iter().any(|g| !g.is_finite()))
        .collect()
}

proptest! {
    #[test]
    fn skip_leaves_exactly_the_poisoned_tensors_untouched(case in case()) {
        let expected_skipped = poisoned(&case);
        for execution in executions() {
            let (result, params, states) = run(&case, NonFinite::Skip, execution);
            prop_assert_eq!(result.unwrap(), expected_skipped.clone());
            let (_, propagated, propagated_states) = run(&case, NonFinite::Propagate, execution);
            for i in 0..params.len() {
                if expected_skipped.contains(&i) {
                    prop_assert_eq!(bits(&params[i]), bits(&case.params[i]), "{:?}", execution);
                    let fresh = State::<f32>::new(params[i].len(), &case.hyper);
                    prop_assert_eq!(bits(&states[i].square_avg), bits(&fresh.square_avg));
                } else {
                    prop_assert_eq!(bits(&params[i]), bits(&propagated[i]), "{:?}", execution);
                    prop_assert_eq!(bits(&states[i].square_avg), bits(&propagated_states[i].square_avg));
                }
            }
        }
    }

    #[test]
    fn error_writes_nothing_and_names_the_first_poisoned_tensor(case in case()) {
        let expected = poisoned(&case);
        for execution in executions() {
            let (result, params, states) = run(&case, NonFinite::Error, execution);
            match expected.first() {
                None => prop_assert!(result.is_ok()),
                Some(&group) => {
                    let index = case.grads[group].iter().position(|g| !g.is_finite()).unwrap();
                    prop_assert_eq!(result, Err(Error::NonFiniteGradient { group, index }));
                    prop_assert_eq!(&params, &case.params);
                    for (s, p) in states.iter().zip(&params) {
                        let fresh = State::<f32>::new(p.len(), &case.hyper);
                        prop_assert_eq!(bits(&s.square_avg), bits(&fresh.square_avg));
                    }
                }
            }
        }
    }

    #[test]
    fn propagate_is_the_plain_step(case in case()) {
        let (result, params, _) = run(&case, NonFinite::Propagate, Execution::default());
        prop_assert_eq!(result.unwrap(), Vec::<usize>::new());
        let mut plain = case.params.clone();
        let opt = RmsProp::new(case.hyper).unwrap();
        for (p, g) in plain.iter_mut().zip(&case.grads) {
            let mut s = State::new(p.len(), &case.hyper);
            opt.step(p, g, &mut s).unwrap();
        }
        for (a, b) in params.iter().zip(&plain) {
            prop_assert_eq!(bits(a), bits(b));
        }
    }
}

/// A gradient long enough for the threaded check, poisoned at its very end.
#[test]
fn the_threaded_check_sees_the_last_element() {
    let n = 5 * fused_rmsprop::PARALLEL_MIN_ELEMENTS + 1;
    let mut grads = vec![0.25f32; n];
    grads[n - 1] = f32::INFINITY;
    let hyper = Hyper::default().with_non_finite(NonFinite::Skip);
    let opt = RmsProp::new(hyper).unwrap();
    let mut params = vec![1.0f32; n];
    let mut state = State::new(n, &hyper);
    let report = opt.step(&mut params, &grads, &mut state).unwrap();
    assert_eq!(report.skipped(), &[0]);
    assert!(params.iter().all(|&p| p == 1.0));
    assert_eq!(state.step, 0);
}
