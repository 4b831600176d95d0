//! Each variable's optimizer state, by dtype: what the step updates and
//! what a checkpoint saves. A leaf of the optimizer and the checkpoint.

use candle_core::{DType, Var};
use fused_rmsprop::{Blockwise8State, Hyper, State, bf16, f16};

use crate::Result;

/// One variable's state: in the variable's dtype for `f32` and `f64`, in
/// `f32` for `bf16` and `f16` (with the master copy under master weights).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum VarState {
    F32(State<f32>),
    F64(State<f64>),
    BF16(State<f32>),
    F16(State<f32>),
    /// 8-bit state ([`fused_rmsprop::StateFormat::Blockwise8`]), by the
    /// variable's dtype, for variables of at least
    /// [`fused_rmsprop::MIN_8BIT_ELEMENTS`].
    Quantized(QuantizedVarState),
}

/// One variable's 8-bit state, by the variable's dtype.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum QuantizedVarState {
    F32(Blockwise8State<f32>),
    F64(Blockwise8State<f64>),
    BF16(Blockwise8State<f32>),
    F16(Blockwise8State<f32>),
}

impl VarState {
    /// Which of the four dtypes of full state this is, as an index: `f32`,
    /// `f64`, `bf16`, `f16` (`None` for 8-bit state, stepped apart).
    pub(crate) fn kind(&self) -> Option<usize> {
        match self {
            VarState::F32(_) => Some(0),
            VarState::F64(_) => Some(1),
            VarState::BF16(_) => Some(2),
            VarState::F16(_) => Some(3),
            VarState::Quantized(_) => None,
        }
    }

    /// The steps this state has taken.
    pub(crate) fn step_mut(&mut self) -> &mut u64 {
        match self {
            VarState::F32(s) | VarState::BF16(s) | VarState::F16(s) => &mut s.step,
            VarState::F64(s) => &mut s.step,
            VarState::Quantized(
                QuantizedVarState::F32(s) | QuantizedVarState::BF16(s) | QuantizedVarState::F16(s),
            ) => &mut s.step,
            VarState::Quantized(QuantizedVarState::F64(s)) => &mut s.step,
        }
    }
}

/// Fresh state for a variable of the in-place route.
pub(crate) fn state_for(var: &Var, index: usize, hyper: &Hyper) -> Result<VarState> {
    let n = var.elem_count();
    if hyper.state_format.quantizes(n) {
        let full = state_for(
            var,
            index,
            &hyper.with_state_format(fused_rmsprop::StateFormat::Full),
        )?;
        return Ok(quantized(&full, hyper));
    }
    match var.dtype() {
        DType::F32 => Ok(VarState::F32(State::new(n, hyper))),
        DType::F64 => Ok(VarState::F64(State::new(n, hyper))),
        DType::BF16 => Ok(VarState::BF16(half_state::<bf16>(var, hyper)?)),
        DType::F16 => Ok(VarState::F16(half_state::<f16>(var, hyper)?)),
        other => Err(candle_core::Error::msg(format!(
            "fused RMSprop: variable {index} has dtype {other:?}; \
             the in-place route steps f32, f64, bf16 and f16"
        ))),
    }
}

/// Fresh `f32` state for a 16-bit variable; under master weights, the
/// master copy starts as the variable's values (one read of the variable).
pub(crate) fn half_state<P>(var: &Var, hyper: &Hyper) -> Result<State<f32>>
where
    P: fused_rmsprop::Param<State = f32> + candle_core::WithDType,
{
    if hyper.master_weights {
        let values = var.as_tensor().flatten_all()?.to_vec1::<P>()?;
        Ok(State::for_params(&values, hyper))
    } else {
        Ok(State::new(var.elem_count(), hyper))
    }
}

/// Full state quantized as `hyper.state_format` says (a state that is 8-bit
/// already is returned as it is).
pub(crate) fn quantized(state: &VarState, hyper: &Hyper) -> VarState {
    let q = |s| Blockwise8State::from_full(s, hyper);
    VarState::Quantized(match state {
        VarState::F32(s) => QuantizedVarState::F32(q(s)),
        VarState::F64(s) => QuantizedVarState::F64(Blockwise8State::from_full(s, hyper)),
        VarState::BF16(s) => QuantizedVarState::BF16(q(s)),
        VarState::F16(s) => QuantizedVarState::F16(q(s)),
        VarState::Quantized(q) => q.clone(),
    })
}

/// 8-bit state dequantized (full state is returned as it is).
pub(crate) fn dequantized(state: &VarState) -> VarState {
    match state {
        VarState::Quantized(QuantizedVarState::F32(s)) => VarState::F32(s.to_full()),
        VarState::Quantized(QuantizedVarState::F64(s)) => VarState::F64(s.to_full()),
        VarState::Quantized(QuantizedVarState::BF16(s)) => VarState::BF16(s.to_full()),
        VarState::Quantized(QuantizedVarState::F16(s)) => VarState::F16(s.to_full()),
        full => full.clone(),
    }
}
