//! The fallback: the same update written with burn tensor ops, for every
//! device and dtype the in-place route does not take (wgpu, CUDA, the CubeCL
//! CPU runtime, f16/bf16, a gradient of another dtype).
//!
//! It follows the scalar spec of [`fused_rmsprop`] operation by operation
//! (same products, same order), so it agrees with the in-place route to the
//! rounding of the backend's element-wise ops; it does not canonicalize NaN
//! payloads. A `bf16`/`f16` parameter is computed as the kernel computes it:
//! parameter and gradient cast to `f32` (the state's dtype), the update in
//! `f32`, the result cast back with the backend's own conversion (round to
//! nearest on Flex and the CubeCL backends). Under master weights it reads
//! and writes the `f32` master copy, as the kernel does; under stochastic
//! rounding it still rounds to nearest (the backend's cast), so the two
//! routes then differ by the rounding, and it counts the step in the
//! rounding key so that a run moving between routes keeps its keys.

use burn::grad_clipping::GradientClipping;
use burn::tensor::Tensor;
use fused_rmsprop::{EpsPlacement, GradClip, Hyper, WeightDecay};

use crate::{Averages, Blockwise8Averages, FullAverages, FusedRmsPropState, RoundingKey};

/// One step of `hyper` at learning rate `lr` (already validated) with tensor
/// ops; `state` already fits `param` (see `FusedRmsPropState::fit`). 8-bit
/// averages are dequantized into tensors on the parameter's device, stepped
/// as full ones and quantized again: the update reads the new
/// full-precision values, as the kernel's 8-bit step does.
pub(crate) fn step_any<const D: usize>(
    hyper: &Hyper,
    lr: f64,
    param: Tensor<D>,
    grad: Tensor<D>,
    state: FusedRmsPropState<D>,
) -> (Tensor<D>, FusedRmsPropState<D>) {
    let (full, quantized) = match state.averages {
        Averages::Full(full) => (full, false),
        Averages::Blockwise8(averages) => (averages.dequantize(&param.device()), true),
    };
    let (param, full, master, rounding_key) = step(
        hyper,
        lr,
        param,
        grad,
        full,
        state.master,
        state.rounding_key,
    );
    let averages = if quantized {
        Averages::Blockwise8(Blockwise8Averages::quantize(&full, hyper))
    } else {
        Averages::Full(full)
    };
    let state = FusedRmsPropState {
        averages,
        master,
        rounding_key,
    };
    (param, state)
}

/// The step of [`step_any`] on full averages; returns the parameter, the
/// averages, the master copy and the rounding key (counted).
fn step<const D: usize>(
    hyper: &Hyper,
    lr: f64,
    param: Tensor<D>,
    grad: Tensor<D>,
    state: FullAverages<D>,
    master: Option<Tensor<D>>,
    mut rounding_key: Option<RoundingKey>,
) -> Stepped<D> {
    let dtype = param.dtype();
    let compute = state.square_avg.dtype();
    let widen = |t: Tensor<D>| {
        if t.dtype() == compute {
            t
        } else {
            t.cast(compute)
        }
    };
    let grad = clip(hyper, grad);
    // Under master weights the step reads and writes the `f32` master copy.
    let param = match &master {
        Some(master) => master.clone(),
        None => widen(param),
    };
    let grad = widen(grad);
    let mut grad = if hyper.maximize { grad.neg() } else { grad };
    let mut param = param;
    match hyper.weight_decay {
        Some(WeightDecay::Coupled(wd)) if wd != 0.0 => {
            grad = grad + param.clone().mul_scalar(wd);
        }
        Some(WeightDecay::Decoupled(wd)) if wd != 0.0 => {
            param = param.mul_scalar(1.0 - lr * wd);
        }
        _ => {}
    }

    let square_avg = state.square_avg.mul_scalar(hyper.alpha)
        + (grad.clone() * grad.clone()).mul_scalar(1.0 - hyper.alpha);
    let mut variance = square_avg.clone();
    let grad_avg = state.grad_avg.map(|grad_avg| {
        let grad_avg =
            grad_avg.mul_scalar(hyper.alpha) + grad.clone().mul_scalar(1.0 - hyper.alpha);
        variance = square_avg.clone() - grad_avg.clone() * grad_avg.clone();
        if hyper.clamp_centered_variance {
            variance = variance.clone().clamp_min(0.0);
        }
        grad_avg
    });

    let denom = match hyper.eps_placement {
        EpsPlacement::OutsideSqrt => variance.sqrt().add_scalar(hyper.eps),
        EpsPlacement::InsideSqrt => variance.add_scalar(hyper.eps).sqrt(),
    };
    let mut update = grad / denom;
    let momentum_buf = state.momentum_buf.map(|buf| {
        let buf = buf.mul_scalar(hyper.momentum) + update.clone();
        update = if hyper.nesterov {
            update.clone() + buf.clone().mul_scalar(hyper.momentum)
        } else {
            buf.clone()
        };
        buf
    });

    let param = param - update.mul_scalar(lr);
    let master = master.is_some().then(|| param.clone());
    let param = if param.dtype() == dtype {
        param
    } else {
        param.cast(dtype)
    };
    let averages = FullAverages {
        square_avg,
        grad_avg,
        momentum_buf,
    };
    if let Some(key) = &mut rounding_key {
        key.step += 1;
    }
    (param, averages, master, rounding_key)
}

/// What [`step`] returns: the parameter, the averages, the master copy and
/// the rounding key.
type Stepped<const D: usize> = (
    Tensor<D>,
    FullAverages<D>,
    Option<Tensor<D>>,
    Option<RoundingKey>,
);

/// Whether every element of `grad` is finite: `x * 0` is 0 for finite `x`
/// and NaN otherwise, so the sum is NaN exactly when one is not. One
/// reduction and a read-back of one scalar.
pub(crate) fn all_finite<const D: usize>(grad: &Tensor<D>) -> bool {
    let poisoned = grad.clone().mul_scalar(0.0).sum().into_scalar::<f64>();
    !poisoned.is_nan()
}

/// The gradient clipped with burn's own clipping (its tensor ops, in the
/// gradient's dtype), as burn's `ModuleOptimizer` clips it. Each call is one
/// parameter, so a global norm is this parameter's norm.
fn clip<const D: usize>(hyper: &Hyper, grad: Tensor<D>) -> Tensor<D> {
    match hyper.grad_clip {
        None => grad,
        Some(GradClip::Value(max)) => GradientClipping::Value(max as f32).clip_gradient(grad),
        Some(GradClip::NormPerTensor(max) | GradClip::NormGlobal(max)) => {
            GradientClipping::Norm(max as f32).clip_gradient(grad)
        }
    }
}
