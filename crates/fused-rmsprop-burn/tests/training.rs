//! The fused optimizer against burn's own `RmsProp`, on a real model trained
//! through `ModuleOptimizer`, and the adapter's routes, copies, checkpoints
//! and bad input.
//!
//! Tolerance against burn: the two agree to rounding. The kernel computes its
//! per-step constants in f64 and canonicalizes NaN; burn computes them in
//! f32. Over 25 steps the parameters agree within `TOL_F32` (absolute, on
//! parameters of magnitude below about 1).

mod common;

use burn::optim::decay::WeightDecayConfig;
use burn::optim::{ModuleOptimizer, Optimizer, RmsPropConfig};
use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};
use common::{Mlp, data, device, max_abs_diff, to_vec, train_step};
use fused_rmsprop_burn::{FusedRmsPropConfig, Route};

const TOL_F32: f64 = 1e-6;
const STEPS: usize = 25;
const LR: f64 = 1e-2;

/// The variants burn's `RmsProp` has: (name, burn config, fused config).
fn variants() -> Vec<(&'static str, RmsPropConfig, FusedRmsPropConfig)> {
    let wd = || Some(WeightDecayConfig::new(0.05));
    vec![
        (
            "plain",
            RmsPropConfig::new().with_momentum(0.0),
            FusedRmsPropConfig::new().with_momentum(0.0),
        ),
        (
            "defaults (momentum 0.9)",
            RmsPropConfig::new(),
            FusedRmsPropConfig::new(),
        ),
        (
            "centered",
            RmsPropConfig::new().with_momentum(0.0).with_centered(true),
            FusedRmsPropConfig::new()
                .with_momentum(0.0)
                .with_centered(true),
        ),
        (
            "weight decay",
            RmsPropConfig::new()
                .with_momentum(0.0)
                .with_weight_decay(wd()),
            FusedRmsPropConfig::new()
                .with_momentum(0.0)
                .with_weight_decay(wd()),
        ),
        (
            "centered + momentum",
            RmsPropConfig::new().with_momentum(0.5).with_centered(true),
            FusedRmsPropConfig::new()
                .with_momentum(0.5)
                .with_centered(true),
        ),
        (
            "centered + momentum + weight decay, alpha 0.9, eps 1e-3",
            RmsPropConfig::new()
                .with_centered(true)
                .with_weight_decay(wd())
                .with_alpha(0.9)
                .with_epsilon(1e-3),
            FusedRmsPropConfig::new()
                .with_centered(true)
                .with_weight_decay(wd())
                .with_alpha(0.9)
                .with_epsilon(1e-3),
        ),
    ]
}

#[test]
fn trains_like_burns_rmsprop_for_every_variant() {
    for (name, burn_config, fused_config) in variants() {
        let model = Mlp::new(&device());
        let initial = model.values();
        let mut reference = (model.clone(), burn_config.init());
        let fused_optim = fused_config.build();
        let stats = fused_optim.clone();
        let mut fused = (model, ModuleOptimizer::from(fused_optim));
        let mut worst: f64 = 0.0;
        for i in 0..STEPS {
            reference.0 = train_step(&mut reference.1, reference.0, i, LR, DType::F32);
            fused.0 = train_step(&mut fused.1, fused.0, i, LR, DType::F32);
            let diff = max_abs_diff(&reference.0.values(), &fused.0.values());
            worst = worst.max(diff);
            assert!(diff <= TOL_F32, "{name}: step {i}: max |diff| {diff:e}");
        }
        let moved = max_abs_diff(&initial, &fused.0.values());
        assert!(
            moved > 1e-2,
            "{name}: the parameters barely moved ({moved:e})"
        );
        let stats = stats.stats();
        assert_eq!(stats.in_place_steps, 6 * STEPS as u64, "{name}: {stats:?}");
        assert_eq!(stats.composed_steps, 0, "{name}");
        eprintln!("{name}: worst max |diff| over {STEPS} steps: {worst:e}");
    }
}

#[test]
fn f64_model_trains_in_place_in_f64() {
    let model = Mlp::new(&device()).cast(DType::F64);
    let optim = FusedRmsPropConfig::new().with_centered(true).build();
    let handle = optim.clone();
    let mut optim = ModuleOptimizer::from(optim);
    let mut reference_optim = RmsPropConfig::new().with_centered(true).init();
    let (mut fused, mut reference) = (model.clone(), model);
    for i in 0..STEPS {
        fused = train_step(&mut optim, fused, i, LR, DType::F64);
        reference = train_step(&mut reference_optim, reference, i, LR, DType::F64);
    }
    assert_eq!(fused.l1.weight.val().dtype(), DType::F64);
    let diff = max_abs_diff(&reference.values(), &fused.values());
    assert!(diff <= 1e-12, "f64: max |diff| {diff:e}");
    assert_eq!(handle.stats().composed_steps, 0);
}

/// In a training loop every buffer is written where it lies once the first
/// step has made the parameters the optimizer's own (the model is cloned
/// from nothing here, but Linear weights start transposed, non-contiguous).
#[test]
fn training_loop_steps_in_place_without_copies() {
    let optim = FusedRmsPropConfig::new().with_centered(true).build();
    let handle = optim.clone();
    let mut optim = ModuleOptimizer::from(optim);
    let mut model = Mlp::new(&device());
    model = train_step(&mut optim, model, 0, LR, DType::F32);
    let after_first = handle.stats().buffers_copied;
    for i in 1..5 {
        model = train_step(&mut optim, model, i, LR, DType::F32);
    }
    let stats = handle.stats();
    assert_eq!(stats.in_place_steps, 5 * 6);
    assert_eq!(
        stats.buffers_copied, after_first,
        "steps after the first copied buffers: {stats:?}"
    );
}

/// burn-train's `Learner` holds a clone of the model while the optimizer
/// steps it, so every parameter arrives shared. The held model is never
/// written, the numbers are those of a loop that holds nothing, and from
/// the second step on each parameter alternates between two buffers (the
/// one it arrived in is kept for its next step) instead of a fresh one per
/// step; in every dtype the kernel steps.
#[test]
fn a_model_held_during_the_step_is_not_written_and_buffers_are_reused() {
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        let plain = FusedRmsPropConfig::new().with_momentum(0.5).build();
        let held = FusedRmsPropConfig::new().with_momentum(0.5).build();
        let handle = held.clone();
        let (mut plain, mut held) = (ModuleOptimizer::from(plain), ModuleOptimizer::from(held));
        let mut alone = Mlp::new(&device()).cast(dtype);
        let mut model = alone.clone();
        let mut pointers = Vec::new();
        for i in 0..6 {
            alone = train_step(&mut plain, alone, i, LR, dtype);
            let holding = model.clone();
            let before = holding.values();
            model = train_step(&mut held, model, i, LR, dtype);
            assert_eq!(
                holding.values(),
                before,
                "{dtype:?}: the held model was written"
            );
            drop(holding);
            pointers.push(flex_ptr(&model.l2.weight.val().inner()));
        }
        assert_eq!(model.values(), alone.values(), "{dtype:?}");
        let stats = handle.stats();
        assert_eq!(stats.in_place_steps, 6 * 6, "{dtype:?}: {stats:?}");
        assert_eq!(stats.buffers_copied, 6 * 6, "{dtype:?}: every step copied");
        // Steps 2, 4, 6 land in one buffer, 3 and 5 in the other.
        assert_eq!(pointers[1], pointers[3], "{dtype:?}: {pointers:?}");
        assert_eq!(pointers[3], pointers[5], "{dtype:?}: {pointers:?}");
        assert_eq!(pointers[2], pointers[4], "{dtype:?}: {pointers:?}");
        assert_ne!(pointers[1], pointers[2], "{dtype:?}: {pointers:?}");
    }
}

/// Parameters of one tensor each, for a model of many.
#[derive(burn::module::Module, Debug)]
struct Many {
    params: Vec<burn::module::Param<Tensor<1>>>,
}

/// The same with a model of 200 parameters (the kept buffers' map is swept
/// now and then from 64 entries): every parameter still alternates between
/// two buffers, a held model is never written.
#[test]
fn a_held_model_of_many_parameters_reuses_every_buffer() {
    let device = device();
    let values = |k: usize, scale: f32| -> Vec<f32> {
        (0..8)
            .map(|i| scale * ((i * 7 + k * 13) % 11) as f32 - 0.5)
            .collect()
    };
    let mut model = Many {
        params: (0..200)
            .map(|k| {
                burn::module::Param::from_tensor(Tensor::<1>::from_floats(
                    values(k, 0.1).as_slice(),
                    &device,
                ))
            })
            .collect(),
    };
    let grads: Vec<Tensor<1>> = (0..200)
        .map(|k| Tensor::<1>::from_floats(values(k, 0.01).as_slice(), &Device::default()))
        .collect();
    let optim = FusedRmsPropConfig::new().build();
    let handle = optim.clone();
    let mut optim = ModuleOptimizer::from(optim);
    let mut pointers: Vec<Vec<*const u8>> = Vec::new();
    for _ in 0..6 {
        let mut gradients = burn::optim::GradientsParams::new();
        for (p, g) in model.params.iter().zip(&grads) {
            gradients.register(p.id, g.clone());
        }
        let holding = model.clone();
        let before = holding.params[7].val().into_data();
        model = optim.step(LR, model, gradients);
        assert_eq!(
            holding.params[7].val().into_data(),
            before,
            "the held model was written"
        );
        drop(holding);
        pointers.push(
            model
                .params
                .iter()
                .map(|p| flex_ptr(&p.val().inner()))
                .collect(),
        );
    }
    let [_, p2, p3, p4, p5, p6] = &pointers[..] else {
        unreachable!("six steps")
    };
    for (k, (((p2, p3), p4), (p5, p6))) in
        p2.iter().zip(p3).zip(p4).zip(p5.iter().zip(p6)).enumerate()
    {
        assert_eq!(p2, p4, "parameter {k}: steps 2 and 4 in one buffer");
        assert_eq!(p4, p6, "parameter {k}: steps 4 and 6 in one buffer");
        assert_eq!(p3, p5, "parameter {k}: steps 3 and 5 in the other");
        assert_ne!(p2, p3, "parameter {k}");
    }
    assert_eq!(handle.stats().buffers_copied, 6 * 200);
}

/// A held parameter whose step writes nothing (a gradient with a NaN under
/// `NonFinite::Skip` or `Error`) keeps its values, though the out-of-place
/// step that wrote nothing had a kept buffer of stale values ready; the
/// steps around it match a parameter that was never held.
#[test]
fn a_held_parameter_whose_step_writes_nothing_keeps_its_values() {
    use fused_rmsprop::NonFinite;
    for policy in [NonFinite::Skip, NonFinite::Error] {
        let config = FusedRmsPropConfig::new().with_non_finite_grads(policy);
        let (held, alone) = (config.build(), config.build());
        let device = Device::default();
        let start = [1.0, 2.0, 3.0, 4.0];
        let (mut p_held, mut p_alone) = (
            Tensor::<1>::from_floats(start, &device),
            Tensor::<1>::from_floats(start, &device),
        );
        let (mut s_held, mut s_alone) = (None, None);
        for i in 0..8 {
            let g = if i % 3 == 2 {
                [0.5, f32::NAN, 0.25, 0.0]
            } else {
                [0.5, -0.5, 0.25, 1.0]
            };
            let g = Tensor::<1>::from_floats(g, &device);
            let holding = p_held.clone();
            let before = to_vec(holding.clone());
            (p_held, s_held) = held.step(0.1, p_held, g.clone(), s_held);
            assert_eq!(
                to_vec(holding),
                before,
                "{policy:?}, step {i}: the holder's copy"
            );
            (p_alone, s_alone) = alone.step(0.1, p_alone, g, s_alone);
            assert_eq!(
                to_vec(p_held.clone()),
                to_vec(p_alone.clone()),
                "{policy:?}, step {i}"
            );
        }
        assert_eq!(held.stats().buffers_copied, 8, "{policy:?}");
    }
}

fn flex_ptr<const D: usize>(t: &Tensor<D>) -> *const u8 {
    let primitive = t
        .clone()
        .try_into_primitive::<burn::backend::Flex>()
        .unwrap();
    primitive.bytes().as_ptr()
}

#[test]
fn updates_the_parameter_buffer_in_place() {
    let device = Device::default();
    let optim = FusedRmsPropConfig::new().build();
    let p = Tensor::<1>::from_floats([1.0, 2.0, 3.0, 4.0], &device);
    let g = Tensor::<1>::from_floats([0.5, -0.5, 0.25, 0.0], &device);
    let (p, state) = optim.step(0.1, p, g.clone(), None);
    let state = state.unwrap();
    let (p_ptr, v_ptr) = (flex_ptr(&p), flex_ptr(&state.full().unwrap().square_avg));
    let (p, state) = optim.step(0.1, p, g, Some(state));
    let state = state.unwrap();
    assert_eq!(flex_ptr(&p), p_ptr, "the parameter moved");
    assert_eq!(
        flex_ptr(&state.full().unwrap().square_avg),
        v_ptr,
        "the square average moved"
    );
    assert_eq!(optim.stats().buffers_copied, 0);
}

#[test]
fn a_shared_parameter_is_copied_not_mutated_behind_its_owner() {
    let device = Device::default();
    let optim = FusedRmsPropConfig::new().build();
    let p = Tensor::<1>::from_floats([1.0, 2.0, 3.0], &device);
    let kept = p.clone();
    let g = Tensor::<1>::from_floats([0.5, -0.5, 0.25], &device);
    let (stepped, _) = optim.step(0.1, p, g, None);
    assert_eq!(to_vec(kept), vec![1.0, 2.0, 3.0]);
    assert_ne!(to_vec(stepped), vec![1.0, 2.0, 3.0]);
    assert_eq!(optim.stats().buffers_copied, 1);
}

#[test]
fn non_contiguous_parameter_and_gradient_are_stepped_correctly() {
    let device = Device::default();
    let optim = FusedRmsPropConfig::new().with_momentum(0.0).build();
    let p = Tensor::<2>::from_floats([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], &device).transpose();
    let g = Tensor::<2>::from_floats([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], &device);
    let g_t = Tensor::<2>::from_floats([[0.1, 0.3, 0.5], [0.2, 0.4, 0.6]], &device).transpose();
    let contiguous = p.clone().into_data();
    let p_contiguous = Tensor::<2>::from_data(contiguous, &device);

    let (a, _) = optim.step(0.1, p.clone(), g.clone(), None);
    let (b, _) = optim.step(0.1, p_contiguous.clone(), g_t, None);
    let (c, _) = optim.step(0.1, p_contiguous, g, None);
    assert_eq!(to_vec(a.clone()), to_vec(c.clone()));
    assert_eq!(to_vec(b), to_vec(c));
    assert!(optim.stats().buffers_copied >= 2);
}

/// Every option, composed tensor ops against the in-place kernel.
#[test]
fn composed_route_equals_in_place_route() {
    let configs = [
        FusedRmsPropConfig::new(),
        FusedRmsPropConfig::new().with_momentum(0.0),
        FusedRmsPropConfig::new()
            .with_centered(true)
            .with_clamp_centered_variance(true),
        FusedRmsPropConfig::new()
            .with_nesterov(true)
            .with_eps_inside_sqrt(true)
            .with_initial_square_avg(1.0),
        FusedRmsPropConfig::new()
            .with_weight_decay(Some(WeightDecayConfig::new(0.1)))
            .with_decoupled_weight_decay(true)
            .with_maximize(true),
        FusedRmsPropConfig::new()
            .with_weight_decay(Some(WeightDecayConfig::new(0.1)))
            .with_centered(true),
    ];
    for config in configs {
        let in_place = config.build();
        let composed = config.build().with_route(Route::ComposedOps);
        let model = Mlp::new(&device());
        let mut a = (model.clone(), ModuleOptimizer::from(in_place.clone()));
        let mut b = (model, ModuleOptimizer::from(composed.clone()));
        for i in 0..10 {
            a.0 = train_step(&mut a.1, a.0, i, LR, DType::F32);
            b.0 = train_step(&mut b.1, b.0, i, LR, DType::F32);
            let diff = max_abs_diff(&a.0.values(), &b.0.values());
            assert!(diff <= TOL_F32, "{config:?}: step {i}: {diff:e}");
        }
        assert_eq!(composed.stats().in_place_steps, 0);
        assert_eq!(in_place.stats().composed_steps, 0);
    }
}

/// A bf16 and an f16 model train in place (no composed step, no copy after
/// the first step, `f32` state), their loss falls, and they end where the
/// composed route (the same semantics in burn tensor ops: f32 compute,
/// rounded back) ends, within two ulps of the type.
#[test]
fn half_precision_models_train_in_place_with_f32_state() {
    for (dtype, ulp) in [(DType::BF16, 1.0 / 128.0), (DType::F16, 1.0 / 1024.0)] {
        let model = Mlp::new(&device()).cast(dtype);
        let config = FusedRmsPropConfig::new().with_momentum(0.5);
        let in_place = config.build();
        let composed = config.build().with_route(Route::ComposedOps);
        let mut a = (model.clone(), ModuleOptimizer::from(in_place.clone()));
        let mut b = (model.clone(), ModuleOptimizer::from(composed.clone()));
        let loss = |m: &Mlp| -> f64 {
            let device = device();
            (0..STEPS)
                .map(|i| {
                    let x = data([8, 6], 2 * i as u64, &device, dtype);
                    let y = data([8, 3], 2 * i as u64 + 1, &device, dtype);
                    let l = (m.forward(x) - y).powi_scalar(2).mean();
                    to_vec(l)[0]
                })
                .sum::<f64>()
                / STEPS as f64
        };
        let before = loss(&model);
        let mut copied_after_first = 0;
        for i in 0..STEPS {
            a.0 = train_step(&mut a.1, a.0, i, LR, dtype);
            b.0 = train_step(&mut b.1, b.0, i, LR, dtype);
            if i == 0 {
                copied_after_first = in_place.stats().buffers_copied;
            }
        }
        assert_eq!(a.0.l1.weight.val().dtype(), dtype);
        let stats = in_place.stats();
        assert_eq!(stats.composed_steps, 0, "{dtype:?}: {stats:?}");
        assert_eq!(
            stats.in_place_steps,
            STEPS as u64 * 6,
            "{dtype:?}: {stats:?}"
        );
        assert_eq!(
            stats.buffers_copied, copied_after_first,
            "{dtype:?}: {stats:?}"
        );
        let after = loss(&a.0);
        assert!(after < before, "{dtype:?}: loss {before} -> {after}");
        for (x, y) in
            a.0.values()
                .iter()
                .flatten()
                .zip(b.0.values().iter().flatten())
        {
            assert!(
                (x - y).abs() <= 2.0 * ulp * y.abs().max(1.0),
                "{dtype:?}: in place {x}, composed {y}"
            );
        }
        let (_, state) = in_place.step(
            LR,
            a.0.l3.bias.as_ref().unwrap().val().inner(),
            Tensor::<1>::from_data(
                TensorData::from([0.5f32, -0.5, 0.25]),
                TensorCreationOptions::new(Device::default()).with_dtype(dtype),
            ),
            None,
        );
        assert_eq!(
            state.unwrap().full().unwrap().square_avg.dtype(),
            DType::F32
        );
    }
}

/// The accuracy that `f32` state buys a 16-bit parameter: 200 steps of one
/// tensor of 4,096 elements with the same gradients (a fixed pattern), in
/// bf16 and f16 with the fused optimizer (f32 state) and with burn's
/// `RmsProp` (state in the parameter's dtype), each against the same steps
/// in f64. The largest parameter error of each is printed (`cargo test --
/// --nocapture`) and the fused optimizer's is asserted the smaller.
#[test]
fn f32_state_keeps_a_16_bit_parameter_closer_to_the_f64_trajectory() {
    const N: usize = 4096;
    let device = Device::default();
    let tensor = |dtype: DType, f: &dyn Fn(usize) -> f32| {
        let values: Vec<f32> = (0..N).map(f).collect();
        let options = TensorCreationOptions::new(device.clone()).with_dtype(dtype);
        Tensor::<1>::from_data(TensorData::new(values, [N]), options)
    };
    let start = |i: usize| ((i * 37 % 101) as f32 / 50.0) - 1.0;
    let grad =
        |step: usize| move |i: usize| (((i * 13 + step * 7) % 97) as f32 / 48.0 - 1.0) * 1e-2;
    let run = |optim: &dyn Fn(Tensor<1>, Tensor<1>, usize) -> Tensor<1>, dtype: DType| {
        let mut p = tensor(dtype, &start);
        for step in 0..200 {
            p = optim(p, tensor(dtype, &grad(step)), step);
        }
        to_vec(p)
    };
    // burn's RmsProp and the fused one through ModuleOptimizer-free steps.
    let burn_optim = burn::optim::RmsPropConfig::new().with_momentum(0.0).build();
    let fused_optim = FusedRmsPropConfig::new().build();
    let exact = {
        let state = std::cell::RefCell::new(None);
        run(
            &|p, g, _| {
                let (p, s) = fused_optim.step(LR, p, g, state.take());
                *state.borrow_mut() = s;
                p
            },
            DType::F64,
        )
    };
    for (dtype, ulp) in [(DType::BF16, 1.0 / 128.0), (DType::F16, 1.0 / 1024.0)] {
        let fused_state = std::cell::RefCell::new(None);
        let fused = run(
            &|p, g, _| {
                let (p, s) = fused_optim.step(LR, p, g, fused_state.take());
                *fused_state.borrow_mut() = s;
                p
            },
            dtype,
        );
        let burn_state = std::cell::RefCell::new(None);
        let burn = run(
            &|p, g, _| {
                let (p, s) = burn_optim.step(LR, p, g, burn_state.take());
                *burn_state.borrow_mut() = s;
                p
            },
            dtype,
        );
        let error = |xs: &[f64]| {
            xs.iter()
                .zip(&exact)
                .map(|(x, y)| {
                    if x.is_finite() {
                        (x - y).abs()
                    } else {
                        f64::INFINITY
                    }
                })
                .fold(0.0, f64::max)
        };
        let (fused_error, burn_error) = (error(&fused), error(&burn));
        println!(
            "{dtype:?}: max |param - f64| after 200 steps: fused (f32 state) {fused_error:.2e} \
             ({:.1} ulp of 1), burn RmsProp ({dtype:?} state) {burn_error:.2e}",
            fused_error / ulp
        );
        assert!(
            fused_error < burn_error,
            "{dtype:?}: fused {fused_error:e}, burn {burn_error:e}"
        );
    }
}

#[test]
fn an_invalid_learning_rate_writes_nothing_and_is_reported() {
    let device = Device::default();
    let optim = FusedRmsPropConfig::new().build();
    let p = Tensor::<1>::from_floats([1.0, 2.0], &device);
    let g = Tensor::<1>::from_floats([0.5, -0.5], &device);
    let (p, state) = optim.step(0.1, p, g.clone(), None);
    let before = (
        to_vec(p.clone()),
        to_vec(state.clone().unwrap().full().unwrap().square_avg.clone()),
    );
    for lr in [f64::NAN, -1.0, f64::INFINITY] {
        let (p2, state2) = optim.step(lr, p.clone(), g.clone(), state.clone());
        assert_eq!(
            (
                to_vec(p2),
                to_vec(state2.unwrap().full().unwrap().square_avg.clone())
            ),
            before
        );
    }
    let stats = optim.stats();
    assert_eq!(stats.rejected_steps, 3);
    assert!(stats.last_error.unwrap().to_string().contains("lr"));
}

#[test]
fn invalid_configs_are_errors_naming_the_field() {
    for (config, field) in [
        (FusedRmsPropConfig::new().with_alpha(-0.1), "alpha"),
        (FusedRmsPropConfig::new().with_momentum(1.0), "momentum"),
        (FusedRmsPropConfig::new().with_epsilon(f32::NAN), "eps"),
        (
            FusedRmsPropConfig::new().with_weight_decay(Some(WeightDecayConfig::new(-1.0))),
            "weight_decay",
        ),
        (
            FusedRmsPropConfig::new().with_initial_square_avg(f32::INFINITY),
            "initial_square_avg",
        ),
    ] {
        let err = config.try_init().err().expect("invalid config accepted");
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[test]
fn non_finite_gradients_follow_the_policy_on_both_routes() {
    use fused_rmsprop::NonFinite;
    let device = Device::default();
    for route in [Route::Auto, Route::ComposedOps] {
        for bad in [f32::NAN, f32::INFINITY] {
            let p = || Tensor::<1>::from_floats([1.0, 2.0], &device);
            let g = Tensor::<1>::from_floats([0.5, bad], &device);

            let skip = FusedRmsPropConfig::new()
                .with_non_finite_grads(NonFinite::Skip)
                .build()
                .with_route(route);
            let (stepped, _) = skip.step(0.1, p(), g.clone(), None);
            assert_eq!(to_vec(stepped), vec![1.0, 2.0]);
            assert_eq!(skip.stats().skipped_steps, 1);

            let error = FusedRmsPropConfig::new()
                .with_non_finite_grads(NonFinite::Error)
                .build()
                .with_route(route);
            let (stepped, _) = error.step(0.1, p(), g.clone(), None);
            assert_eq!(to_vec(stepped), vec![1.0, 2.0]);
            let stats = error.stats();
            assert_eq!(stats.rejected_steps, 1);
            assert!(matches!(
                stats.last_error,
                Some(fused_rmsprop::Error::NonFiniteGradient { .. })
            ));

            let propagate = FusedRmsPropConfig::new().build().with_route(route);
            let (stepped, _) = propagate.step(0.1, p(), g, None);
            assert!(to_vec(stepped)[1].is_nan());
        }
    }
}

#[test]
fn zero_elements_and_a_gradient_of_another_shape_are_handled() {
    let device = Device::default();
    let optim = FusedRmsPropConfig::new().build();

    // Zero elements: a step that does nothing, on either route.
    let empty = Tensor::<2>::zeros([0, 3], &device);
    let (p, state) = optim.step(0.1, empty.clone(), empty.clone(), None);
    assert_eq!(p.dims(), [0, 3]);
    assert_eq!(state.unwrap().full().unwrap().square_avg.dims(), [0, 3]);

    // A gradient of another shape: refused, nothing written, reported.
    let p = Tensor::<2>::ones([2, 3], &device);
    let g = Tensor::<2>::ones([3, 2], &device);
    let (after, state) = optim.step(0.1, p, g, None);
    assert_eq!(to_vec(after), vec![1.0; 6]);
    assert!(state.is_none());
    let stats = optim.stats();
    assert_eq!(stats.rejected_steps, 1);
    assert!(matches!(
        stats.last_error,
        Some(fused_rmsprop::Error::LengthMismatch { .. })
    ));
}
