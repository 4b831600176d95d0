//! The batched route (`BatchedRmsProp`) against the per-parameter route
//! through `ModuleOptimizer`: the same bits on a trained model for every
//! dtype and variant, the parameters' training state kept, the buffers
//! stepped in place, bad input refused with the module left as it was,
//! gradients that are parameters' own buffers read as they were (on both
//! routes), and models of many tensors on a small stack.

mod common;

use burn::grad_clipping::GradientClippingConfig;
use burn::module::{Module, Param, ParamId};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{DType, Device, Tensor, TensorCreationOptions};
use common::{Mlp, device, gradients, train_step};
use fused_rmsprop_burn::{BatchedError, BatchedRmsProp, FusedRmsPropConfig, NonFinite};

const LR: f64 = 1e-2;

/// Every parameter's bits, in a fixed order.
fn bits(model: &Mlp) -> Vec<Vec<u64>> {
    model
        .values()
        .into_iter()
        .map(|v| v.into_iter().map(f64::to_bits).collect())
        .collect()
}

/// One batched training step of `model` on batch `i`; panics on error.
fn batched_step(optim: &mut BatchedRmsProp, model: Mlp, i: usize, dtype: DType) -> Mlp {
    let grads = gradients(&model, i, dtype);
    let (model, outcome) = optim.step(LR, model, grads);
    assert_eq!(outcome, Ok(Vec::new()));
    model
}

fn configs() -> Vec<(&'static str, FusedRmsPropConfig)> {
    let wd = || Some(WeightDecayConfig::new(0.05));
    vec![
        ("plain", FusedRmsPropConfig::new().with_momentum(0.0)),
        ("defaults (momentum 0.9)", FusedRmsPropConfig::new()),
        (
            "centered + momentum + weight decay",
            FusedRmsPropConfig::new()
                .with_momentum(0.5)
                .with_centered(true)
                .with_weight_decay(wd()),
        ),
        (
            "eps inside the sqrt, nesterov, maximize",
            FusedRmsPropConfig::new()
                .with_eps_inside_sqrt(true)
                .with_nesterov(true)
                .with_maximize(true),
        ),
    ]
}

#[test]
fn steps_the_same_bits_as_the_per_parameter_route_for_every_dtype_and_variant() {
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        for (name, config) in configs() {
            let model = Mlp::new(&device()).cast(dtype);
            let mut reference = (model.clone(), config.init());
            let mut batched = (model, config.init_batched());
            for i in 0..10 {
                reference.0 = train_step(&mut reference.1, reference.0, i, LR, dtype);
                batched.0 = batched_step(&mut batched.1, batched.0, i, dtype);
                assert_eq!(
                    bits(&reference.0),
                    bits(&batched.0),
                    "{dtype:?} {name}: step {i}"
                );
            }
            let stats = batched.1.stats();
            assert_eq!(stats.in_place_steps, 60, "{dtype:?} {name}: {stats:?}");
            assert_eq!(stats.rejected_steps, 0, "{dtype:?} {name}: {stats:?}");
        }
    }
}

#[test]
fn parameters_keep_their_training_state_and_their_buffers() {
    let mut optim = FusedRmsPropConfig::new().init_batched();
    let mut model = Mlp::new(&device());
    model = batched_step(&mut optim, model, 0, DType::F32);
    let before = flex_ptr(&model.l2.weight.val());
    let copied = optim.stats().buffers_copied;
    for i in 1..5 {
        model = batched_step(&mut optim, model, i, DType::F32);
    }
    assert!(model.l2.weight.val().is_require_grad());
    assert_eq!(flex_ptr(&model.l2.weight.val()), before, "stepped in place");
    assert_eq!(optim.stats().buffers_copied, copied, "{:?}", optim.stats());
}

#[test]
fn a_shared_parameter_is_copied_once_and_only_by_a_step_that_runs() {
    let mut optim = FusedRmsPropConfig::new().init_batched();
    let model = Mlp::new(&device());
    // A clone keeps every buffer shared: the step must not write through it.
    let kept = model.clone();
    let before = bits(&kept);
    let grads = gradients(&model, 0, DType::F32);
    let (model, outcome) = optim.step(f64::NAN, model, grads);
    assert!(outcome.is_err());
    assert_eq!(
        optim.stats().buffers_copied,
        0,
        "a refused step copies nothing"
    );
    let model = batched_step(&mut optim, model, 0, DType::F32);
    let params = bits(&model).len() as u64;
    assert_eq!(optim.stats().buffers_copied, params, "{:?}", optim.stats());
    assert_eq!(bits(&kept), before, "the clone's buffers untouched");
}

fn flex_ptr<const D: usize>(t: &Tensor<D>) -> *const u8 {
    let primitive = t
        .clone()
        .inner()
        .try_into_primitive::<burn::backend::Flex>()
        .unwrap();
    primitive.bytes().as_ptr()
}

/// `grads` with the gradient of `id` replaced by `value` everywhere.
fn poisoned(mut grads: GradientsParams, id: ParamId, value: f32) -> GradientsParams {
    let grad: Tensor<2> = grads.remove(id).unwrap();
    grads.register(id, grad.ones_like().mul_scalar(value));
    grads
}

#[test]
fn a_refused_step_leaves_the_module_and_every_state_as_they_were() {
    let config = FusedRmsPropConfig::new().with_non_finite_grads(NonFinite::Error);
    let model = Mlp::new(&device());
    let mut reference = (model.clone(), config.init_batched());
    let mut batched = (model, config.init_batched());
    for i in 0..2 {
        reference.0 = batched_step(&mut reference.1, reference.0, i, DType::F32);
        batched.0 = batched_step(&mut batched.1, batched.0, i, DType::F32);
    }
    let before = bits(&batched.0);
    let id = batched.0.l2.weight.id;

    // A NaN in one gradient, under NonFinite::Error.
    let grads = poisoned(gradients(&batched.0, 2, DType::F32), id, f32::NAN);
    let (model, outcome) = batched.1.step(LR, batched.0, grads);
    match outcome {
        Err(BatchedError::Kernel {
            param: Some(param),
            error: fused_rmsprop::Error::NonFiniteGradient { .. },
        }) => assert_eq!(param, id),
        other => panic!("expected the NaN gradient refused, got {other:?}"),
    }
    assert_eq!(bits(&model), before);

    // An invalid learning rate.
    let grads = gradients(&model, 2, DType::F32);
    let (model, outcome) = batched.1.step(f64::NAN, model, grads);
    assert!(
        matches!(outcome, Err(BatchedError::Kernel { param: None, .. })),
        "{outcome:?}"
    );
    assert_eq!(bits(&model), before);
    assert!(batched.1.stats().last_error.is_some());

    // A gradient of another shape.
    let mut grads = gradients(&model, 2, DType::F32);
    let _: Tensor<2> = grads.remove(id).unwrap();
    grads.register(id, Tensor::<2>::zeros([3, 3], &Device::default()));
    let (model, outcome) = batched.1.step(LR, model, grads);
    match &outcome {
        Err(err @ BatchedError::NotInPlace { param, .. }) => {
            assert_eq!(*param, id);
            assert!(err.to_string().contains("gradient"), "{err}");
        }
        other => panic!("expected the gradient refused, got {other:?}"),
    }
    assert_eq!(bits(&model), before);
    assert!(model.l1.weight.val().is_require_grad());
    assert_eq!(batched.1.stats().rejected_steps, 3);
    // Not the kernel's refusal: no stale kernel error left from before.
    assert_eq!(batched.1.stats().last_error, None);

    // The states were untouched: the next step matches the run that never
    // saw the refused ones.
    reference.0 = batched_step(&mut reference.1, reference.0, 2, DType::F32);
    let model = batched_step(&mut batched.1, model, 2, DType::F32);
    assert_eq!(bits(&reference.0), bits(&model));
}

#[test]
fn skip_leaves_the_poisoned_parameter_and_steps_the_others() {
    let config = FusedRmsPropConfig::new().with_non_finite_grads(NonFinite::Skip);
    let mut optim = config.init_batched();
    let model = Mlp::new(&device());
    let before = bits(&model);
    let id = model.l1.weight.id;
    let grads = poisoned(gradients(&model, 0, DType::F32), id, f32::INFINITY);
    let (model, outcome) = optim.step(LR, model, grads);
    assert_eq!(outcome, Ok(vec![id]));
    let after = bits(&model);
    assert_eq!(after[0], before[0], "l1.weight skipped");
    for k in 1..after.len() {
        assert_ne!(after[k], before[k], "parameter {k} stepped");
    }
    assert_eq!(optim.stats().skipped_steps, 1);
}

#[test]
fn gradient_clipping_and_missing_gradients_act_as_in_the_per_parameter_route() {
    let config =
        FusedRmsPropConfig::new().with_grad_clipping(Some(GradientClippingConfig::Norm(0.01)));
    let model = Mlp::new(&device());
    let mut reference = (model.clone(), config.init());
    let mut batched = (model, config.init_batched());
    for i in 0..5 {
        // l3's bias gets no gradient.
        let mut grads = gradients(&reference.0, i, DType::F32);
        let _: Tensor<1> = grads
            .remove(reference.0.l3.bias.as_ref().unwrap().id)
            .unwrap();
        reference.0 = reference.1.step(LR, reference.0, grads);
        let mut grads = gradients(&batched.0, i, DType::F32);
        let _: Tensor<1> = grads
            .remove(batched.0.l3.bias.as_ref().unwrap().id)
            .unwrap();
        let (model, outcome) = batched.1.step(LR, batched.0, grads);
        assert_eq!(outcome, Ok(Vec::new()));
        batched.0 = model;
        assert_eq!(bits(&reference.0), bits(&batched.0), "step {i}");
    }
    let initial = Mlp::new(&device()).values();
    assert_eq!(batched.0.values()[5], initial[5], "no gradient, no step");
}

/// Gradients of `model` where some are parameters' own buffers: l1's
/// weight gets its own values as gradient, and the two 16-element biases
/// each other's (`aliased`); or the same values in buffers of their own.
fn aliasing_gradients(model: &Mlp, i: usize, dtype: DType, aliased: bool) -> GradientsParams {
    let mut grads = gradients(model, i, dtype);
    let options = TensorCreationOptions::new(Device::default()).with_dtype(dtype);
    // The same values in a buffer of its own, for a tensor of any rank.
    fn own<const D: usize>(t: Tensor<D>, options: &TensorCreationOptions) -> Tensor<D> {
        Tensor::from_data(t.to_data(), options.clone())
    }
    let (b1, b2) = (
        model.l1.bias.as_ref().unwrap(),
        model.l2.bias.as_ref().unwrap(),
    );
    let (w, v1, v2) = (
        model.l1.weight.val().inner(),
        b1.val().inner(),
        b2.val().inner(),
    );
    for (id, g) in [(b1.id, v2), (b2.id, v1)] {
        let _: Tensor<1> = grads.remove(id).unwrap();
        grads.register(id, if aliased { g } else { own(g, &options) });
    }
    let _: Tensor<2> = grads.remove(model.l1.weight.id).unwrap();
    grads.register(
        model.l1.weight.id,
        if aliased { w } else { own(w, &options) },
    );
    grads
}

/// A gradient that shares its buffer with a parameter being stepped, its
/// own or another's, is read as it was before the step, on both routes and
/// in every dtype: the result is the step with the same values in buffers
/// of their own, and the parameter is stepped into a buffer of its own
/// (counted as a copy) rather than written under the gradient.
#[test]
fn gradients_that_are_parameters_are_read_as_they_were() {
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        let config = FusedRmsPropConfig::new();
        // Three steps of one route; the bits after each, and the copies.
        let run = |batched: bool, aliased: bool| {
            let mut model = Mlp::new(&device()).cast(dtype);
            let handle = config.build();
            let mut per_parameter = ModuleOptimizer::from(handle.clone());
            let mut batched_optim = config.init_batched();
            let mut after = Vec::new();
            for i in 0..3 {
                let grads = aliasing_gradients(&model, i, dtype, aliased);
                model = if batched {
                    let (model, outcome) = batched_optim.step(LR, model, grads);
                    assert_eq!(outcome, Ok(Vec::new()), "{dtype:?} step {i}");
                    model
                } else {
                    per_parameter.step(LR, model, grads)
                };
                after.push(bits(&model));
            }
            let copied = handle.stats().buffers_copied + batched_optim.stats().buffers_copied;
            (after, copied)
        };
        let (expected, no_copies) = run(false, false);
        assert_eq!(no_copies, 0, "{dtype:?}: gradients of their own");
        for (batched, aliased) in [(false, true), (true, false), (true, true)] {
            let (after, copied) = run(batched, aliased);
            let route = format!("{dtype:?}, batched {batched}, aliased {aliased}");
            for (step, (actual, expected)) in after.iter().zip(&expected).enumerate() {
                let first_difference =
                    actual
                        .iter()
                        .zip(expected)
                        .enumerate()
                        .find_map(|(p, (a, b))| {
                            a.iter().zip(b).position(|(x, y)| x != y).map(|e| (p, e))
                        });
                assert_eq!(
                    first_difference, None,
                    "{route}, step {step}: (param, element)"
                );
            }
            // Batched: l1's weight and both biases, each step (every
            // gradient is held until the step ends). Per parameter: the
            // weight and l1's bias, each step; l2's bias is stepped after
            // l1's, whose gradient (l2's buffer) burn has dropped by then,
            // so it is written where it lies.
            let expected_copies = match (aliased, batched) {
                (false, _) => 0,
                (true, false) => 6,
                (true, true) => 9,
            };
            assert_eq!(copied, expected_copies, "{route}");
        }
    }
}

/// Many small parameters in one module.
#[derive(Module, Debug)]
struct Many {
    tensors: Vec<Param<Tensor<1>>>,
}

/// The length of parameter `k` of [`Many`] in the small-stack test: 4
/// elements, and every 1,000th one 40,000, which the kernel spreads over
/// the pool's threads (`PARALLEL_MIN_ELEMENTS` is 16K): the calling
/// thread, with its small stack, works beside the pool's helpers.
fn many_len(k: usize) -> usize {
    if k % 1_000 == 999 { 40_000 } else { 4 }
}

#[test]
fn many_tensors_step_and_checkpoint_on_a_small_stack() {
    assert!(many_len(999) >= fused_rmsprop::PARALLEL_MIN_ELEMENTS);
    let worker = std::thread::Builder::new().stack_size(256 * 1024);
    let handle = worker
        .spawn(|| {
            let device = device();
            let tensors: Vec<_> = (0..5_000)
                .map(|k| {
                    let values: Vec<f32> = (0..many_len(k))
                        .map(|i| ((k * 4 + i) % 4_001) as f32 * 1e-3)
                        .collect();
                    Param::from_tensor(Tensor::<1>::from_floats(values.as_slice(), &device))
                })
                .collect();
            let module = Many { tensors };
            let grads = |module: &Many| {
                let mut grads = GradientsParams::new();
                for (k, p) in module.tensors.iter().enumerate() {
                    let pattern = [k as f32, -1.0, 0.5, 0.0];
                    let g: Vec<f32> = (0..many_len(k)).map(|i| pattern[i % 4]).collect();
                    let g = Tensor::<1>::from_floats(g.as_slice(), &Device::default());
                    grads.register(p.id, g);
                }
                grads
            };
            let config = FusedRmsPropConfig::new();
            let mut reference: ModuleOptimizer = config.init();
            let expected = reference.step(LR, module.clone(), grads(&module));
            let all = grads(&module);
            let mut batched = config.init_batched();
            let (module, outcome) = batched.step(LR, module, all);
            assert_eq!(outcome, Ok(Vec::new()));
            let values = |m: &Many| -> Vec<u32> {
                m.tensors
                    .iter()
                    .flat_map(|p| p.val().into_data().try_to_vec::<f32>().unwrap())
                    .map(f32::to_bits)
                    .collect()
            };
            assert_eq!(values(&expected), values(&module));
            // A checkpoint of all of them, read back by both routes; the
            // next step of each matches the optimizer that never stopped.
            let bytes = batched.to_record(&module).into_bytes().unwrap();
            let mut resumed = config.init_batched();
            resumed.load_record(&module, bytes.clone()).unwrap();
            let mut per_parameter: ModuleOptimizer = config.init();
            fused_rmsprop_burn::load_record(&mut per_parameter, bytes).unwrap();
            let expected = reference.step(LR, expected.clone(), grads(&expected));
            let (from_batched, outcome) = resumed.step(LR, module.clone(), grads(&module));
            assert_eq!(outcome, Ok(Vec::new()));
            let from_per_parameter = per_parameter.step(LR, module.clone(), grads(&module));
            assert_eq!(values(&expected), values(&from_batched));
            assert_eq!(values(&expected), values(&from_per_parameter));
            // And the per-parameter route's own checkpoint of 5,000 states.
            let bytes = per_parameter.to_record().into_bytes().unwrap();
            fused_rmsprop_burn::load_record(&mut config.init(), bytes).unwrap();
        })
        .unwrap();
    handle.join().unwrap();
}

#[test]
fn parameters_without_a_gradient_for_a_while_keep_their_state() {
    let config = FusedRmsPropConfig::new().with_centered(true);
    let model = Mlp::new(&device());
    let mut reference = (model.clone(), config.init());
    let mut batched = (model, config.init_batched());
    // Step 1 and 2 without l1.weight's gradient, then with it again: its
    // state from step 0 must still be there, lined up again.
    for i in 0..6 {
        let left_out = (1..3).contains(&i);
        let without = |model: &Mlp| {
            let mut grads = gradients(model, i, DType::F32);
            if left_out {
                let _: Tensor<2> = grads.remove(model.l1.weight.id).unwrap();
            }
            grads
        };
        let grads = without(&reference.0);
        reference.0 = reference.1.step(LR, reference.0, grads);
        let grads = without(&batched.0);
        let (model, outcome) = batched.1.step(LR, batched.0, grads);
        assert_eq!(outcome, Ok(Vec::new()));
        batched.0 = model;
        assert_eq!(bits(&reference.0), bits(&batched.0), "step {i}");
    }
    assert_eq!(batched.1.stats().states_reset, 0);
}

/// `steps` batched steps from batch `first` on.
fn batched_steps(optim: &mut BatchedRmsProp, mut model: Mlp, first: usize, dtype: DType) -> Mlp {
    for i in first..first + 3 {
        model = batched_step(optim, model, i, dtype);
    }
    model
}

/// Three per-parameter steps from batch `first` on.
fn module_steps(optim: &mut ModuleOptimizer, mut model: Mlp, first: usize, dtype: DType) -> Mlp {
    for i in first..first + 3 {
        model = train_step(optim, model, i, LR, dtype);
    }
    model
}

#[test]
fn checkpoints_move_between_the_two_routes_in_both_directions() {
    let config = FusedRmsPropConfig::new().with_centered(true);
    for dtype in [DType::F32, DType::F64, DType::BF16] {
        let start = Mlp::new(&device()).cast(dtype);

        // Batched for three steps, saved, resumed per parameter: the same
        // bits as the batched run going on.
        let mut batched = config.init_batched();
        let model = batched_steps(&mut batched, start.clone(), 0, dtype);
        let bytes = batched.to_record(&model).into_bytes().unwrap();
        let mut resumed: ModuleOptimizer = config.init();
        fused_rmsprop_burn::load_record(&mut resumed, bytes.clone()).unwrap();
        let per_parameter = module_steps(&mut resumed, model.clone(), 3, dtype);
        let going_on = batched_steps(&mut batched, model.clone(), 3, dtype);
        assert_eq!(
            bits(&per_parameter),
            bits(&going_on),
            "{dtype:?} batched → per parameter"
        );

        // The same checkpoint resumed batched.
        let mut again = config.init_batched();
        again.load_record(&model, bytes).unwrap();
        let resumed_batched = batched_steps(&mut again, model, 3, dtype);
        assert_eq!(
            bits(&resumed_batched),
            bits(&going_on),
            "{dtype:?} batched → batched"
        );

        // Per parameter for three steps, saved, resumed batched.
        let mut module_optim: ModuleOptimizer = config.init();
        let model = module_steps(&mut module_optim, start, 0, dtype);
        let bytes = module_optim.into_bytes().unwrap();
        let mut batched = config.init_batched();
        batched.load_record(&model, bytes).unwrap();
        let resumed = batched_steps(&mut batched, model.clone(), 3, dtype);
        let going_on = module_steps(&mut module_optim, model, 3, dtype);
        assert_eq!(
            bits(&resumed),
            bits(&going_on),
            "{dtype:?} per parameter → batched"
        );
        assert_eq!(batched.stats().states_reset, 0);
    }
}

#[test]
fn a_checkpoint_of_burns_rmsprop_resumes_batched_as_in_the_per_parameter_route() {
    let dtype = DType::BF16;
    let mut burn_optim = burn::optim::RmsPropConfig::new().init();
    let model = module_steps(&mut burn_optim, Mlp::new(&device()).cast(dtype), 0, dtype);
    let bytes = burn_optim.into_bytes().unwrap();
    let config = FusedRmsPropConfig::new();
    let mut per_parameter: ModuleOptimizer = config.init();
    fused_rmsprop_burn::load_record(&mut per_parameter, bytes.clone()).unwrap();
    let mut batched = config.init_batched();
    batched.load_record(&model, bytes).unwrap();
    let a = module_steps(&mut per_parameter, model.clone(), 3, dtype);
    let b = batched_steps(&mut batched, model, 3, dtype);
    assert_eq!(bits(&a), bits(&b));
}

#[test]
fn bytes_that_are_not_a_checkpoint_leave_the_state_as_it_was() {
    let config = FusedRmsPropConfig::new();
    let mut reference = config.init_batched();
    let mut batched = config.init_batched();
    let start = Mlp::new(&device());
    let expected = batched_steps(&mut reference, start.clone(), 0, DType::F32);
    let model = batched_steps(&mut batched, start, 0, DType::F32);
    let err = batched
        .load_record(
            &model,
            burn::tensor::Bytes::from_bytes_vec(b"not a record".to_vec()),
        )
        .unwrap_err();
    assert!(
        matches!(err, fused_rmsprop_burn::RecordLoadError::Record(_)),
        "{err}"
    );
    let expected = batched_steps(&mut reference, expected, 3, DType::F32);
    let model = batched_steps(&mut batched, model, 3, DType::F32);
    assert_eq!(bits(&expected), bits(&model));
}

#[test]
fn a_checkpoint_of_another_variant_resumes_as_in_the_per_parameter_route() {
    // Saved without momentum or centering, resumed with both: the buffers
    // the record lacks start at zero in both routes.
    let plain = FusedRmsPropConfig::new().with_momentum(0.0);
    let mut saved = plain.init_batched();
    let model = batched_steps(&mut saved, Mlp::new(&device()), 0, DType::F32);
    let bytes = saved.to_record(&model).into_bytes().unwrap();
    let richer = FusedRmsPropConfig::new()
        .with_momentum(0.5)
        .with_centered(true);
    let mut per_parameter: ModuleOptimizer = richer.init();
    fused_rmsprop_burn::load_record(&mut per_parameter, bytes.clone()).unwrap();
    let mut batched = richer.init_batched();
    batched.load_record(&model, bytes).unwrap();
    let a = module_steps(&mut per_parameter, model.clone(), 3, DType::F32);
    let b = batched_steps(&mut batched, model, 3, DType::F32);
    assert_eq!(bits(&a), bits(&b));
    let stats = batched.stats();
    assert_eq!(
        (stats.states_reset, stats.rejected_steps),
        (0, 0),
        "{stats:?}"
    );
}

#[test]
fn a_gradient_with_autodiff_registered_by_hand_is_stepped() {
    let config = FusedRmsPropConfig::new();
    let model = Mlp::new(&device());
    let mut reference = config.init_batched();
    let expected = batched_step(&mut reference, model.clone(), 0, DType::F32);
    let mut grads = gradients(&model, 0, DType::F32);
    let id = model.l1.weight.id;
    let grad: Tensor<2> = grads.remove(id).unwrap();
    grads.register(id, grad.autodiff());
    let (model, outcome) = config.init_batched().step(LR, model, grads);
    assert_eq!(outcome, Ok(Vec::new()));
    assert_eq!(bits(&model), bits(&expected));
}
