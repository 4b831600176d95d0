//! Variables with 8-bit state ([`fused_rmsprop::StateFormat::Blockwise8`]):
//! each is stepped alone, inside an in-place op that holds its storage,
//! by [`fused_rmsprop::RmsProp::step_blockwise8_slices`].
//!
//! Only variables of at least [`fused_rmsprop::MIN_8BIT_ELEMENTS`] have
//! 8-bit state, so one dispatch per variable costs little beside its
//! elements. Each gradient is copied out of candle's storage before the
//! variable's storage is locked: a copy reads the gradient as it was even
//! when it shares storage with a variable of the step (its own or
//! another's), and the checks that must see every gradient before anything
//! is written (`NonFinite::Error`, the global norm) read the copies.

use std::cell::RefCell;

use candle_core::{CpuStorage, Layout, Tensor, Var};
use fused_rmsprop::{Blockwise8Group, Blockwise8State, Param, StepReport, bf16, f16};

use crate::Result;
use crate::error::kernel_error;
use crate::storage::{CpuParam, variable_slice_mut};
use crate::var_state::QuantizedVarState;

/// A gradient copied out of candle's storage, by dtype.
pub(crate) enum GradCopy {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
}

impl GradCopy {
    /// `grad`'s values, in the dtype of `state`'s variable.
    pub(crate) fn of(grad: &Tensor, state: &QuantizedVarState) -> Result<Self> {
        let flat = grad.flatten_all()?;
        Ok(match state {
            QuantizedVarState::F32(_) => GradCopy::F32(flat.to_vec1()?),
            QuantizedVarState::F64(_) => GradCopy::F64(flat.to_vec1()?),
            QuantizedVarState::BF16(_) => GradCopy::BF16(flat.to_vec1()?),
            QuantizedVarState::F16(_) => GradCopy::F16(flat.to_vec1()?),
        })
    }

    /// The first element holding a NaN or an infinity.
    pub(crate) fn first_non_finite(&self) -> Option<usize> {
        match self {
            GradCopy::F32(g) => fused_rmsprop::find_non_finite(g),
            GradCopy::F64(g) => fused_rmsprop::find_non_finite(g),
            GradCopy::BF16(g) => fused_rmsprop::find_non_finite(g),
            GradCopy::F16(g) => fused_rmsprop::find_non_finite(g),
        }
    }

    /// The sum of squares clipping by norm adds up (the kernel's order).
    pub(crate) fn sum_of_squares(&self) -> f64 {
        match self {
            GradCopy::F32(g) => fused_rmsprop::sum_of_squares(g),
            GradCopy::F64(g) => fused_rmsprop::sum_of_squares(g),
            GradCopy::BF16(g) => fused_rmsprop::sum_of_squares(g),
            GradCopy::F16(g) => fused_rmsprop::sum_of_squares(g),
        }
    }
}

/// Steps variable `index` with its 8-bit `state` and copied gradient;
/// returns whether the step skipped it (a non-finite gradient under
/// `NonFinite::Skip`). Counts the step in the state otherwise.
pub(crate) fn step(
    (kernel, lr, grad_scale): (&fused_rmsprop::RmsProp, f64, Option<f64>),
    index: usize,
    var: &Var,
    grad: &GradCopy,
    state: &mut QuantizedVarState,
) -> Result<bool> {
    let call = Call {
        kernel,
        lr,
        grad_scale,
        index,
    };
    match (state, grad) {
        (QuantizedVarState::F32(s), GradCopy::F32(g)) => call.run(var, g, s),
        (QuantizedVarState::F64(s), GradCopy::F64(g)) => call.run(var, g, s),
        (QuantizedVarState::BF16(s), GradCopy::BF16(g)) => call.run(var, g, s),
        (QuantizedVarState::F16(s), GradCopy::F16(g)) => call.run(var, g, s),
        _ => Err(candle_core::Error::msg(format!(
            "fused RMSprop: variable {index}'s gradient copy is not of its dtype"
        ))),
    }
}

/// What one variable's step needs besides its buffers.
#[derive(Clone, Copy)]
struct Call<'k> {
    kernel: &'k fused_rmsprop::RmsProp,
    lr: f64,
    grad_scale: Option<f64>,
    index: usize,
}

impl Call<'_> {
    fn run<T: CpuParam>(
        self,
        var: &Var,
        grad: &[T],
        state: &mut Blockwise8State<T::State>,
    ) -> Result<bool> {
        let op = QuantizedStep {
            call: self,
            grad,
            state: RefCell::new(Some(&mut *state)),
            report: RefCell::new(None),
        };
        var.inplace_op1(&op)?;
        let report = op
            .report
            .into_inner()
            .ok_or_else(|| candle_core::Error::msg("fused RMSprop: the 8-bit step did not run"))?
            .map_err(|err| kernel_error(name_variable(err, self.index)))?;
        let skipped = report.is_skipped(0);
        if !skipped {
            state.step += 1;
        }
        Ok(skipped)
    }
}

/// The kernel's error for group 0 of a one-group call, naming the
/// variable's index instead.
fn name_variable(err: fused_rmsprop::Error, index: usize) -> fused_rmsprop::Error {
    match err {
        fused_rmsprop::Error::NonFiniteGradient { index: at, .. } => {
            fused_rmsprop::Error::NonFiniteGradient {
                group: index,
                index: at,
            }
        }
        other => other,
    }
}

/// The in-place op that holds the variable's storage during its step.
struct QuantizedStep<'a, 'k, T: Param> {
    call: Call<'k>,
    grad: &'a [T],
    state: RefCell<Option<&'a mut Blockwise8State<T::State>>>,
    report: RefCell<Option<std::result::Result<StepReport, fused_rmsprop::Error>>>,
}

impl<T: CpuParam> candle_core::InplaceOp1 for QuantizedStep<'_, '_, T> {
    fn name(&self) -> &'static str {
        "fused-rmsprop-8-bit-step"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let state = self
            .state
            .borrow_mut()
            .take()
            .ok_or_else(|| candle_core::Error::msg("fused RMSprop: 8-bit step ran twice"))?;
        let params = variable_slice_mut::<T>(storage, layout)?;
        let Call {
            kernel,
            lr,
            grad_scale,
            index,
        } = self.call;
        let step = state.step;
        let mut group = Blockwise8Group::new(params, self.grad, state.slices_mut())
            .with_rounding_key(step, index as u64);
        if let Some(scale) = grad_scale {
            group = group.with_grad_scale(scale);
        }
        *self.report.borrow_mut() = Some(kernel.step_blockwise8_slices(lr, group));
        Ok(())
    }
}
