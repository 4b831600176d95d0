//! [`ParamsRmsProp`]: the optimizer's settings, with candle-optimisers' names.

use fused_rmsprop::{EpsPlacement, GradClip, Hyper, NonFinite, Rounding, WeightDecay};

/// Hyper-parameters, with candle-optimisers' field names and types plus the
/// fused kernel's options. `Default` is PyTorch's: lr 0.01, alpha 0.99,
/// eps 1e-8, everything else off.
///
/// ```
/// use fused_rmsprop_candle::ParamsRmsProp;
/// let p = ParamsRmsProp { momentum: Some(0.9), centered: true, ..Default::default() };
/// assert_eq!(p.alpha, 0.99);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamsRmsProp {
    /// Learning rate.
    pub lr: f64,
    /// Smoothing constant of the square average.
    pub alpha: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Weight decay (coupled, as PyTorch, unless `decoupled_weight_decay`).
    pub weight_decay: Option<f64>,
    /// Momentum factor.
    pub momentum: Option<f64>,
    /// Centered RMSprop.
    pub centered: bool,
    /// Apply `weight_decay` as `p *= 1 - lr * wd` (AdamW-style).
    pub decoupled_weight_decay: bool,
    /// Where eps enters the denominator.
    pub eps_placement: EpsPlacement,
    /// Starting value of the square average (Optax `initial_scale`).
    pub initial_square_avg: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Clamp a negative centered variance estimate to zero.
    pub clamp_centered_variance: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
    /// What a step does with a gradient holding NaN or Inf: propagate it
    /// (PyTorch), skip that variable (see [`RmsProp::last_skipped`](crate::RmsProp::last_skipped)), or
    /// return an error and write nothing.
    pub non_finite: NonFinite,
    /// How `bf16`/`f16` variables are rounded after the step: to nearest
    /// (default), or stochastically for `bf16` with a seed (each variable
    /// draws its own bits, keyed by its index and step count).
    pub rounding: Rounding,
    /// Keep an `f32` master copy of each `bf16`/`f16` variable in the
    /// optimizer (4 bytes per element): the step updates the copy and
    /// writes its rounded value to the variable.
    pub master_weights: bool,
    /// Clip each gradient element to `[-clip_value, clip_value]` inside the
    /// step (PyTorch's `clip_grad_value_`; a NaN stays NaN). `None`: off.
    pub clip_value: Option<f64>,
    /// Scale every gradient by `min(1, max_grad_norm / (norm + 1e-6))`,
    /// `norm` the L2 norm of all the optimizer's gradients together
    /// (PyTorch's `clip_grad_norm_(parameters, max_grad_norm)`, Hugging
    /// Face's `max_grad_norm`); [`RmsProp::last_grad_norm`](crate::RmsProp::last_grad_norm)
    /// returns the norm. One more read of the gradients per step. `None`:
    /// off. Not together with `clip_value`.
    pub max_grad_norm: Option<f64>,
    /// How the state is kept: full precision (default) or 8-bit
    /// ([`StateFormat::Blockwise8`](fused_rmsprop::StateFormat::Blockwise8):
    /// a byte per element and buffer plus a scale per 256 elements, for
    /// variables of at least 4,096 elements; smaller ones keep full state).
    pub state_format: fused_rmsprop::StateFormat,
}

impl Default for ParamsRmsProp {
    fn default() -> Self {
        let h = Hyper::default();
        Self {
            lr: h.lr,
            alpha: h.alpha,
            eps: h.eps,
            weight_decay: None,
            momentum: None,
            centered: false,
            decoupled_weight_decay: false,
            eps_placement: h.eps_placement,
            initial_square_avg: h.initial_square_avg,
            nesterov: false,
            clamp_centered_variance: false,
            maximize: false,
            non_finite: NonFinite::Propagate,
            rounding: Rounding::Nearest,
            master_weights: false,
            clip_value: None,
            max_grad_norm: None,
            state_format: fused_rmsprop::StateFormat::Full,
        }
    }
}

impl ParamsRmsProp {
    /// The kernel's hyper-parameters for these settings.
    ///
    /// ```
    /// # use fused_rmsprop_candle::ParamsRmsProp;
    /// let h = ParamsRmsProp { momentum: Some(0.9), ..Default::default() }.hyper();
    /// assert_eq!(h.momentum, 0.9);
    /// ```
    pub fn hyper(&self) -> Hyper {
        Hyper {
            lr: self.lr,
            alpha: self.alpha,
            eps: self.eps,
            eps_placement: self.eps_placement,
            initial_square_avg: self.initial_square_avg,
            centered: self.centered,
            clamp_centered_variance: self.clamp_centered_variance,
            momentum: self.momentum.unwrap_or(0.0),
            nesterov: self.nesterov,
            weight_decay: self.weight_decay.map(|wd| {
                if self.decoupled_weight_decay {
                    WeightDecay::Decoupled(wd)
                } else {
                    WeightDecay::Coupled(wd)
                }
            }),
            maximize: self.maximize,
            non_finite: self.non_finite,
            rounding: self.rounding,
            master_weights: self.master_weights,
            grad_clip: self.clip_value.map(GradClip::Value),
            state_format: self.state_format,
        }
    }

    /// Checks the clipping fields under their own names: each bound finite
    /// and `>= 0`, and not both set.
    pub(crate) fn check_clipping(&self) -> Result<(), fused_rmsprop::Error> {
        if let Some(max) = self.clip_value
            && !(max.is_finite() && max >= 0.0)
        {
            return Err(fused_rmsprop::Error::InvalidHyper {
                name: "clip_value",
                value: max,
                expected: "a finite value >= 0",
            });
        }
        let Some(max) = self.max_grad_norm else {
            return Ok(());
        };
        let expected = if self.clip_value.is_some() {
            "None when clip_value is set (clip by value or by norm, not both)"
        } else if max.is_finite() && max >= 0.0 {
            return Ok(());
        } else {
            "a finite value >= 0"
        };
        Err(fused_rmsprop::Error::InvalidHyper {
            name: "max_grad_norm",
            value: max,
            expected,
        })
    }
}
