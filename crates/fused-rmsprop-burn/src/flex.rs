//! The in-place route on burn's Flex CPU backend: the fused kernel runs on
//! the parameter's, gradient's and state's own buffers.
//! The tensors reach it as Flex buffers through `flex_tensor`.

use burn::backend::DispatchDevice;
use burn::tensor::{DType, Tensor};
use fused_rmsprop::{Blockwise8Group, Group, RmsProp, StateSlices, StepReport, bf16, f16};

use crate::blockwise8::Blockwise8Element;
use crate::flex_tensor::{
    FlexParam, FlexTensor, from_flex, readable, to_flex, view, view_mut, writable,
};
use crate::shared::{KeptBuffers, Unshared};
use crate::state::state_dtype;
use crate::stats::Counters;
use crate::{Averages, Blockwise8Averages, FullAverages, FusedRmsPropState, RoundingKey};

/// Why the kernel cannot step `param` with `grad` in place (`None`: it
/// can): either off Flex (autodiff over Flex counts as Flex), the parameter
/// of a dtype the kernel lacks, or the gradient of another dtype. Shared by
/// both routes' checks.
fn not_steppable<const D: usize>(param: &Tensor<D>, grad: &Tensor<D>) -> Option<String> {
    let dtype = param.dtype();
    if !on_flex(param) {
        Some(format!("on {:?}, not a Flex device", param.device()))
    } else if !matches!(dtype, DType::F32 | DType::F64 | DType::BF16 | DType::F16) {
        Some(format!("dtype {dtype:?}"))
    } else if grad.dtype() != dtype {
        Some(format!(
            "gradient {:?} for a parameter {dtype:?}",
            grad.dtype()
        ))
    } else if !on_flex(grad) {
        Some(format!("gradient on {:?}", grad.device()))
    } else {
        None
    }
}

/// Whether `t` lives on a Flex device, directly or under autodiff.
fn on_flex<const D: usize>(t: &Tensor<D>) -> bool {
    matches!(t.device().inner().as_dispatch(), DispatchDevice::Flex(_))
}

/// Why the batched route cannot step `param` in place (`None`: it can):
/// [`not_steppable`], or the gradient of another shape.
pub(crate) fn refusal<const D: usize>(param: &Tensor<D>, grad: &Tensor<D>) -> Option<String> {
    not_steppable(param, grad).or_else(|| {
        (grad.dims() != param.dims()).then(|| {
            format!(
                "gradient {:?} for a parameter {:?}",
                grad.dims(),
                param.dims()
            )
        })
    })
}

/// The index of the first NaN or infinity in `grad` (contiguous, of a dtype
/// the kernel steps).
pub(crate) fn find_non_finite(grad: &FlexTensor) -> Option<usize> {
    match grad.dtype() {
        DType::F32 => fused_rmsprop::find_non_finite(view::<f32>(grad)),
        DType::F64 => fused_rmsprop::find_non_finite(view::<f64>(grad)),
        DType::BF16 => fused_rmsprop::find_non_finite(view::<bf16>(grad)),
        _ => fused_rmsprop::find_non_finite(view::<f16>(grad)),
    }
}

/// Whether the in-place route applies: every tensor on a Flex device, the
/// parameter `f32`, `f64`, `bf16` or `f16`, the gradient of its dtype, the
/// state's tensors of its state dtype (`f32` for the 16-bit types); 8-bit
/// averages are of the state type once `FusedRmsPropState::fit` has run.
pub(crate) fn applies<const D: usize>(
    param: &Tensor<D>,
    grad: &Tensor<D>,
    state: &FusedRmsPropState<D>,
) -> bool {
    let kept = state_dtype(param.dtype());
    let state_like = |t: &Tensor<D>| t.dtype() == kept && on_flex(t);
    let averages_like = match &state.averages {
        Averages::Full(full) => {
            state_like(&full.square_avg)
                && full.grad_avg.as_ref().is_none_or(state_like)
                && full.momentum_buf.as_ref().is_none_or(state_like)
        }
        Averages::Blockwise8(_) => true,
    };
    not_steppable(param, grad).is_none()
        && averages_like
        && state.master.as_ref().is_none_or(state_like)
}

/// One step in place. `applies` holds and `state` fits `param`; `lr` is
/// valid. Each buffer that is shared with another owner or not contiguous
/// is copied first (counted in `counters`); every other one is written
/// where it lies. A shared parameter is stepped out of place into a buffer
/// the kept buffers hold for it when there is one (module `shared`).
pub(crate) fn step<const D: usize>(
    kernel: &RmsProp,
    lr: f64,
    param: Tensor<D>,
    grad: Tensor<D>,
    state: FusedRmsPropState<D>,
    (counters, kept_buffers): (&Counters, &KeptBuffers),
) -> (Tensor<D>, FusedRmsPropState<D>) {
    let param = readable(to_flex(param), counters);
    let mut param = if param.is_unique() {
        kept_buffers.forget(&param);
        Unshared::own(param)
    } else {
        counters.copied();
        kept_buffers.unshare(param)
    };
    let grad = readable(to_flex(grad), counters);
    let mut averages = match state.averages {
        Averages::Full(full) => FlexAverages::Full {
            square_avg: writable(to_flex(full.square_avg), counters),
            grad_avg: full.grad_avg.map(|t| writable(to_flex(t), counters)),
            momentum_buf: full.momentum_buf.map(|t| writable(to_flex(t), counters)),
        },
        Averages::Blockwise8(averages) => FlexAverages::Blockwise8(averages),
    };
    let mut master = state.master.map(|t| writable(to_flex(t), counters));

    let buffers = Buffers {
        param: &mut param.target,
        source: param.source.as_ref(),
        grad: &grad,
        averages: &mut averages,
        master: master.as_mut(),
        rounding_key: state.rounding_key,
    };
    let result = match buffers.param.dtype() {
        DType::F32 => run::<f32>(kernel, lr, buffers),
        DType::F64 => run::<f64>(kernel, lr, buffers),
        DType::BF16 => run::<bf16>(kernel, lr, buffers),
        _ => run::<f16>(kernel, lr, buffers),
    };
    // Lengths agree (the state fits the parameter, the gradient has its
    // shape) and lr was validated, so the kernel refuses only a non-finite
    // gradient under `NonFinite::Error`; it has then written nothing.
    let written = match result {
        Ok(report) if report.is_skipped(0) => {
            counters.skipped();
            false
        }
        Ok(_) => true,
        Err(err) => {
            counters.rejected(err);
            false
        }
    };
    // A shared parameter: the buffer it ends in is handed back, the other
    // kept for its next step.
    let param = kept_buffers.handed_back(param, written);

    let averages = match averages {
        FlexAverages::Full {
            square_avg,
            grad_avg,
            momentum_buf,
        } => Averages::Full(FullAverages {
            square_avg: from_flex(square_avg),
            grad_avg: grad_avg.map(from_flex),
            momentum_buf: momentum_buf.map(from_flex),
        }),
        FlexAverages::Blockwise8(averages) => Averages::Blockwise8(averages),
    };
    let mut state = FusedRmsPropState {
        averages,
        master: master.map(from_flex),
        rounding_key: state.rounding_key,
    };
    if written {
        state.count_step();
    }
    (from_flex(param), state)
}

/// A parameter's averages during its step.
// The full variant, the common one, is the large one: boxing it would
// allocate on every step.
#[allow(clippy::large_enum_variant)]
enum FlexAverages {
    /// Flex tensors, contiguous and unshared.
    Full {
        square_avg: FlexTensor,
        grad_avg: Option<FlexTensor>,
        momentum_buf: Option<FlexTensor>,
    },
    /// 8-bit buffers in host memory.
    Blockwise8(Blockwise8Averages),
}

/// The Flex tensors of one step.
struct Buffers<'a> {
    param: &'a mut FlexTensor,
    /// Where the parameter's values are read when not from `param` (an
    /// out-of-place step; module `shared`).
    source: Option<&'a FlexTensor>,
    grad: &'a FlexTensor,
    averages: &'a mut FlexAverages,
    /// The `f32` master copy (master weights on a 16-bit parameter).
    master: Option<&'a mut FlexTensor>,
    rounding_key: Option<RoundingKey>,
}

/// One kernel step on parameters of type `P` (state of `P::State`).
fn run<P: FlexParam>(
    kernel: &RmsProp,
    lr: f64,
    b: Buffers<'_>,
) -> Result<StepReport, fused_rmsprop::Error> {
    let grads = view::<P>(b.grad);
    let master = b.master.map(view_mut::<P::State>);
    match b.averages {
        FlexAverages::Full {
            square_avg,
            grad_avg,
            momentum_buf,
        } => {
            let mut state = StateSlices::new(view_mut::<P::State>(square_avg));
            if let Some(grad_avg) = grad_avg {
                state = state.with_grad_avg(view_mut::<P::State>(grad_avg));
            }
            if let Some(momentum_buf) = momentum_buf {
                state = state.with_momentum_buf(view_mut::<P::State>(momentum_buf));
            }
            if let Some(master) = master {
                state = state.with_master(master);
            }
            let mut group = Group::new(view_mut::<P>(b.param), grads, state);
            if let Some(source) = b.source {
                group = group.with_source(view::<P>(source));
            }
            if let Some(key) = b.rounding_key {
                group = group.with_rounding_key(key.step, key.stream);
            }
            kernel.step_many(lr, [group])
        }
        FlexAverages::Blockwise8(averages) => {
            let state = P::State::state_mut(averages)
                .expect("fitted: 8-bit averages of the parameter's state type");
            let mut slices = state.slices_mut();
            slices.master = master;
            let mut group = Blockwise8Group::new(view_mut::<P>(b.param), grads, slices);
            if let Some(source) = b.source {
                group = group.with_source(view::<P>(source));
            }
            if let Some(key) = b.rounding_key {
                group = group.with_rounding_key(key.step, key.stream);
            }
            kernel.step_blockwise8_slices(lr, group)
        }
    }
}
