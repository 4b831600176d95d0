//! Burn's gradient clipping, inside the fused step: the same numbers as
//! burn's `RmsPropConfig` with the same clipping, on a real MLP trained
//! through `ModuleOptimizer`, with every step in place; the composed route
//! clips with burn's own tensor ops.
//!
//! Tolerance, absolute over 25 steps on parameters of magnitude below about
//! 1: by value `TOL` (1e-6), as in `tests/training.rs`: the two clip the
//! same elements to the same bound. By norm `TOL_NORM` (1e-5): burn sums the
//! squares in `f32` in its own order and the kernel in `f64` in its fixed
//! order, so each step's clipping factor differs by an ulp or so of `f32`,
//! which momentum carries from step to step (measured: up to 2e-6).

mod common;

use burn::grad_clipping::GradientClippingConfig;
use burn::optim::{GradientsParams, ModuleOptimizer, RmsPropConfig};
use burn::tensor::DType;
use common::{Mlp, device, gradients, max_abs_diff, train_step};
use fused_rmsprop_burn::{FusedRmsPropConfig, Route};

const TOL: f64 = 1e-6;
const TOL_NORM: f64 = 1e-5;

fn tolerance(clipping: &GradientClippingConfig) -> f64 {
    match clipping {
        GradientClippingConfig::Value(_) => TOL,
        GradientClippingConfig::Norm(_) => TOL_NORM,
    }
}
const STEPS: usize = 25;
const LR: f64 = 1e-2;

/// Clippings that clip on this model (each a bound below what its
/// gradients reach), by value and by norm.
fn clippings() -> [GradientClippingConfig; 2] {
    [
        GradientClippingConfig::Value(0.002),
        GradientClippingConfig::Norm(0.01),
    ]
}

#[test]
fn clips_like_burns_rmsprop_in_place() {
    for clipping in clippings() {
        for momentum in [0.0, 0.9] {
            let burn_config = RmsPropConfig::new()
                .with_momentum(momentum)
                .with_grad_clipping(Some(clipping.clone()));
            let fused_config = FusedRmsPropConfig::new()
                .with_momentum(momentum)
                .with_grad_clipping(Some(clipping.clone()));
            let unclipped_config = FusedRmsPropConfig::new().with_momentum(momentum);
            let model = Mlp::new(&device());
            let fused_optim = fused_config.build();
            let stats = fused_optim.clone();
            let mut fused = (model.clone(), ModuleOptimizer::from(fused_optim));
            let mut reference = (model.clone(), burn_config.init());
            let mut unclipped = (model, unclipped_config.init());
            for i in 0..STEPS {
                reference.0 = train_step(&mut reference.1, reference.0, i, LR, DType::F32);
                fused.0 = train_step(&mut fused.1, fused.0, i, LR, DType::F32);
                unclipped.0 = train_step(&mut unclipped.1, unclipped.0, i, LR, DType::F32);
                let diff = max_abs_diff(&reference.0.values(), &fused.0.values());
                assert!(
                    diff <= tolerance(&clipping),
                    "{clipping:?}, momentum {momentum}: step {i}: {diff:e}"
                );
            }
            let clipped_away = max_abs_diff(&fused.0.values(), &unclipped.0.values());
            assert!(
                clipped_away > 100.0 * TOL,
                "{clipping:?}: clipping changed nothing ({clipped_away:e}): the test cannot see it"
            );
            let stats = stats.stats();
            assert_eq!(stats.in_place_steps, 6 * STEPS as u64, "{stats:?}");
            assert_eq!(stats.composed_steps, 0);
        }
    }
}

/// `init()` returns a `ModuleOptimizer` that does not clip again: the
/// optimizer clips, once, the same bits as the bare optimizer (`build()`)
/// in a `ModuleOptimizer` of its own.
#[test]
fn init_and_build_clip_the_same_once() {
    for clipping in clippings() {
        let config = FusedRmsPropConfig::new().with_grad_clipping(Some(clipping.clone()));
        let model = Mlp::new(&device());
        let mut a = (model.clone(), config.init());
        let mut b = (model, ModuleOptimizer::from(config.build()));
        for i in 0..5 {
            a.0 = train_step(&mut a.1, a.0, i, LR, DType::F32);
            b.0 = train_step(&mut b.1, b.0, i, LR, DType::F32);
        }
        assert_eq!(a.0.values(), b.0.values(), "{clipping:?}");
    }
}

/// The composed route (every device but Flex) clips with burn's tensor ops:
/// the same numbers within the tolerance, not the same bits (burn's norm is
/// summed in `f32` in its own order).
#[test]
fn the_composed_route_clips_with_burns_ops() {
    for clipping in clippings() {
        let config = FusedRmsPropConfig::new().with_grad_clipping(Some(clipping.clone()));
        let model = Mlp::new(&device());
        let composed_optim = config.build().with_route(Route::ComposedOps);
        let stats = composed_optim.clone();
        let mut composed = (model.clone(), ModuleOptimizer::from(composed_optim));
        let mut in_place = (model, config.init());
        for i in 0..STEPS {
            composed.0 = train_step(&mut composed.1, composed.0, i, LR, DType::F32);
            in_place.0 = train_step(&mut in_place.1, in_place.0, i, LR, DType::F32);
        }
        let diff = max_abs_diff(&composed.0.values(), &in_place.0.values());
        assert!(diff <= tolerance(&clipping), "{clipping:?}: {diff:e}");
        assert_eq!(stats.stats().in_place_steps, 0);
    }
}

/// A `bf16` model clips in place too (the kernel clips the gradient widened
/// to `f32`, where burn's `RmsProp` clips it in `bf16`), and clipping moves
/// it away from the unclipped run.
#[test]
fn a_bf16_model_clips_in_place() {
    for clipping in clippings() {
        let config = FusedRmsPropConfig::new().with_grad_clipping(Some(clipping.clone()));
        let model = Mlp::new(&device()).cast(DType::BF16);
        let optim = config.build();
        let stats = optim.clone();
        let mut clipped = (model.clone(), ModuleOptimizer::from(optim));
        let mut unclipped = (model, FusedRmsPropConfig::new().init());
        for i in 0..5 {
            clipped.0 = train_step(&mut clipped.1, clipped.0, i, LR, DType::BF16);
            unclipped.0 = train_step(&mut unclipped.1, unclipped.0, i, LR, DType::BF16);
        }
        assert!(max_abs_diff(&clipped.0.values(), &unclipped.0.values()) > 1e-3);
        assert_eq!(stats.stats().composed_steps, 0, "{clipping:?}");
    }
}

/// Each parameter's gradient in `grads`, in the model's order, as `f32`.
fn gradient_values(model: &Mlp, grads: &GradientsParams) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for l in [&model.l1, &model.l2, &model.l3] {
        let weight = grads.get::<2>(l.weight.id).expect("a weight gradient");
        let bias = l.bias.as_ref().expect("a bias");
        let bias = grads.get::<1>(bias.id).expect("a bias gradient");
        for values in [weight.into_data(), bias.into_data()] {
            out.push(values.convert::<f32>().try_into_vec::<f32>().expect("f32"));
        }
    }
    out
}

/// `grads` with every gradient multiplied by `scale`.
fn scaled(model: &Mlp, mut grads: GradientsParams, scale: f32) -> GradientsParams {
    for l in [&model.l1, &model.l2, &model.l3] {
        let weight = grads.remove::<2>(l.weight.id).expect("a weight gradient");
        grads.register(l.weight.id, weight.mul_scalar(scale));
        let bias = l.bias.as_ref().expect("a bias").id;
        let grad = grads.remove::<1>(bias).expect("a bias gradient");
        grads.register(bias, grad.mul_scalar(scale));
    }
    grads
}

/// The batched route clips by the norm of all the gradients together
/// (PyTorch's `clip_grad_norm_`): the same numbers, within `TOL_NORM`, as
/// burn's `RmsProp` stepping gradients the test scaled itself by
/// `min(1, max / (norm + 1e-6))`, the norm summed here in plain `f64`; and
/// `last_grad_norm` is the kernel's norm of those gradients, bit for bit.
#[test]
fn the_batched_route_clips_by_the_global_norm() {
    let max = 0.01;
    let model = Mlp::new(&device());
    let config = FusedRmsPropConfig::new().with_momentum(0.9);
    let mut batched = config
        .init_batched()
        .with_max_grad_norm(Some(max))
        .expect("a valid bound");
    let mut unclipped = (model.clone(), config.init_batched());
    let mut fused = model.clone();
    let mut reference = (model, RmsPropConfig::new().with_momentum(0.9).init());
    for i in 0..STEPS {
        let grads = gradients(&fused, i, DType::F32);
        let values = gradient_values(&fused, &grads);
        let sums: Vec<f64> = values
            .iter()
            .map(|g| fused_rmsprop::sum_of_squares(g))
            .collect();
        let outcome;
        (fused, outcome) = batched.step(LR, fused, grads);
        outcome.expect("a step in place");
        assert_eq!(
            batched.last_grad_norm().map(f64::to_bits),
            Some(fused_rmsprop::grad_norm(&sums).to_bits())
        );

        let grads = gradients(&reference.0, i, DType::F32);
        let norm = gradient_values(&reference.0, &grads)
            .iter()
            .flatten()
            .map(|&g| f64::from(g) * f64::from(g))
            .sum::<f64>()
            .sqrt();
        let scale = (max / (norm + 1e-6)).min(1.0);
        assert!(
            scale < 1.0,
            "step {i}: nothing to clip, the test cannot see it"
        );
        let grads = scaled(&reference.0, grads, scale as f32);
        reference.0 = reference.1.step(LR, reference.0, grads);
        let diff = max_abs_diff(&reference.0.values(), &fused.values());
        assert!(diff <= TOL_NORM, "step {i}: {diff:e}");

        let grads = gradients(&unclipped.0, i, DType::F32);
        let outcome;
        (unclipped.0, outcome) = unclipped.1.step(LR, unclipped.0.clone(), grads);
        outcome.expect("a step in place");
    }
    let clipped_away = max_abs_diff(&fused.values(), &unclipped.0.values());
    assert!(clipped_away > 100.0 * TOL, "{clipped_away:e}");
}

/// A global norm refuses a bad bound and a config that clips already, and
/// leaves the optimizer usable.
#[test]
fn a_global_norm_refuses_a_bad_bound_and_a_second_clipping() {
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        let err = FusedRmsPropConfig::new()
            .init_batched()
            .with_max_grad_norm(Some(bad))
            .unwrap_err();
        assert!(
            matches!(
                err,
                fused_rmsprop::Error::InvalidHyper {
                    name: "grad_clip",
                    ..
                }
            ),
            "{err:?}"
        );
    }
    for clipping in clippings() {
        let config = FusedRmsPropConfig::new().with_grad_clipping(Some(clipping));
        assert!(config.init_batched().with_max_grad_norm(Some(1.0)).is_err());
        assert!(config.init_batched().with_max_grad_norm(None).is_ok());
    }
}
