//! [`TensorOpsRmsProp`]: the same update written with candle tensor ops.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use fused_rmsprop::EpsPlacement;

use crate::error::kernel_error;
use crate::{ParamsRmsProp, Result};

/// RMSprop written with candle tensor ops, as candle-optimisers writes it:
/// state in `Var`s, new values copied in with `Var::set`, one new tensor per
/// operation.
///
/// It is what the fused [`RmsProp`](crate::RmsProp) replaces: the baseline
/// of the benchmarks and the oracle of the tests. It runs on any device and
/// dtype candle supports (CUDA, Metal, bf16, f16), so it is also the way to
/// run these semantics where the fused optimizer refuses a variable. It
/// agrees with the fused optimizer to rounding (candle's scalar ops and
/// products may round differently by an ulp), not bit for bit. It ignores
/// `non_finite` (NaN and Inf propagate, as in PyTorch). A `bf16` or `f16`
/// variable is stepped as the fused optimizer steps it: widened to `f32`,
/// state in `f32`, rounded back to nearest (candle's `to_dtype`), with an
/// `f32` master copy under `master_weights`; stochastic rounding is not
/// available here (it rounds to nearest).
///
/// ```
/// use candle_core::{Device, Var};
/// use candle_nn::Optimizer;
/// use fused_rmsprop_candle::{ParamsRmsProp, TensorOpsRmsProp};
///
/// let w = Var::new(&[1.0f32, 2.0], &Device::Cpu)?;
/// let mut opt = TensorOpsRmsProp::new(vec![w.clone()], ParamsRmsProp::default())?;
/// opt.backward_step(&w.as_tensor().sqr()?.sum_all()?)?;
/// assert!(w.to_vec1::<f32>()?[0] < 1.0);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug)]
pub struct TensorOpsRmsProp {
    vars: Vec<Var>,
    square_avg: Vec<Var>,
    grad_avg: Vec<Option<Var>>,
    momentum_buf: Vec<Option<Var>>,
    master: Vec<Option<Var>>,
    params: ParamsRmsProp,
}

/// The dtype the update computes in and keeps state in: `f32` for `bf16` and
/// `f16` variables (as the fused optimizer), the variable's own otherwise.
fn state_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

impl candle_nn::Optimizer for TensorOpsRmsProp {
    type Config = ParamsRmsProp;

    /// Validates the hyper-parameters and makes the state of every float
    /// variable (integer ones are skipped).
    fn new(vars: Vec<Var>, params: ParamsRmsProp) -> Result<Self> {
        params.check_clipping().map_err(kernel_error)?;
        params.hyper().validate().map_err(kernel_error)?;
        let vars: Vec<Var> = vars.into_iter().filter(|v| v.dtype().is_float()).collect();
        let filled = |v: &Var, fill: f64| {
            Var::from_tensor(&(v.zeros_like()?.to_dtype(state_dtype(v.dtype()))? + fill)?)
        };
        let hyper = params.hyper();
        let optional = |needed: bool| -> Result<Vec<Option<Var>>> {
            vars.iter()
                .map(|v| needed.then(|| filled(v, 0.0)).transpose())
                .collect()
        };
        Ok(Self {
            square_avg: vars
                .iter()
                .map(|v| filled(v, params.initial_square_avg))
                .collect::<Result<_>>()?,
            grad_avg: optional(hyper.needs_grad_avg())?,
            momentum_buf: optional(hyper.needs_momentum_buf())?,
            master: vars
                .iter()
                .map(|v| {
                    let narrow = state_dtype(v.dtype()) != v.dtype();
                    (hyper.master_weights && narrow)
                        .then(|| Var::from_tensor(&v.as_tensor().to_dtype(DType::F32)?))
                        .transpose()
                })
                .collect::<Result<_>>()?,
            vars,
            params,
        })
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let p = self.params;
        p.hyper().validate().map_err(kernel_error)?;
        // The norm of every gradient before any variable is written.
        let grad_scale = match p.max_grad_norm {
            None => None,
            Some(max) => {
                let mut sums = Vec::new();
                for var in &self.vars {
                    if let Some(grad) = grads.get(var) {
                        sums.push(sum_of_squares(grad)?);
                    }
                }
                fused_rmsprop::global_clip_scale(max, fused_rmsprop::grad_norm(&sums))
            }
        };
        for (i, var) in self.vars.iter().enumerate() {
            let Some(grad) = grads.get(var) else { continue };
            let compute = state_dtype(var.dtype());
            let mut g = grad.detach().to_dtype(compute)?;
            if let Some(max) = p.clip_value {
                g = clamp_keeping_nan(&g, max)?;
            }
            if let Some(scale) = grad_scale {
                g = (g * scale)?;
            }
            let mut param = match &self.master[i] {
                Some(master) => master.as_tensor().detach(),
                None => var.as_tensor().detach().to_dtype(compute)?,
            };
            if p.maximize {
                g = g.neg()?;
            }
            if let Some(wd) = p.weight_decay {
                if p.decoupled_weight_decay {
                    param = (param * (1.0 - p.lr * wd))?;
                } else {
                    g = (g + (&param * wd)?)?;
                }
            }
            let v = ((self.square_avg[i].as_tensor() * p.alpha)? + (g.sqr()? * (1.0 - p.alpha))?)?;
            self.square_avg[i].set(&v)?;
            let mut variance = v;
            if let Some(grad_avg) = &self.grad_avg[i] {
                let m = ((grad_avg.as_tensor() * p.alpha)? + (&g * (1.0 - p.alpha))?)?;
                grad_avg.set(&m)?;
                variance = (variance - m.sqr()?)?;
                if p.clamp_centered_variance {
                    variance = variance.relu()?;
                }
            }
            let denom = match p.eps_placement {
                EpsPlacement::OutsideSqrt => (variance.sqrt()? + p.eps)?,
                EpsPlacement::InsideSqrt => (variance + p.eps)?.sqrt()?,
            };
            let mut step: Tensor = (g / denom)?;
            if let (Some(buf), Some(momentum)) = (&self.momentum_buf[i], p.momentum) {
                let b = ((buf.as_tensor() * momentum)? + &step)?;
                buf.set(&b)?;
                step = if p.nesterov {
                    (step + (&b * momentum)?)?
                } else {
                    b
                };
            }
            let param = (param - (step * p.lr)?)?;
            if let Some(master) = &self.master[i] {
                master.set(&param)?;
            }
            var.set(&param.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }
}

/// The sum of the squares of `grad`'s elements, in `f64` (candle's own
/// reduction order: the tensor-op route's norm is not bit-reproducible
/// across versions of candle, unlike the in-place route's).
pub(crate) fn sum_of_squares(grad: &Tensor) -> Result<f64> {
    grad.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()
}

/// `g` with every element above `max` set to `max` and every one below
/// `-max` to `-max`; a NaN stays (as the kernel and Burn's clipping leave it).
fn clamp_keeping_nan(g: &Tensor, max: f64) -> Result<Tensor> {
    let bound = |value: f64| g.ones_like()? * value;
    let g = g.gt(max)?.where_cond(&bound(max)?, g)?;
    g.lt(-max)?.where_cond(&bound(-max)?, &g)
}
