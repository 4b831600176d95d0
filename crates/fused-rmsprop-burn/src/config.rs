//! [`FusedRmsPropConfig`]: burn's `RmsPropConfig`, field for field, plus the
//! fused kernel's options.

use burn::config::Config;
use burn::grad_clipping::GradientClippingConfig;
use burn::optim::ModuleOptimizer;
use burn::optim::decay::WeightDecayConfig;
use fused_rmsprop::{EpsPlacement, GradClip, Hyper, NonFinite, Rounding, StateFormat, WeightDecay};

use crate::FusedRmsProp;

/// Configuration of the [`FusedRmsProp`] optimizer: the same names, types and
/// defaults as `burn::optim::RmsPropConfig`, so swapping one for the other is
/// a one-word change, plus the options Optax and Keras users expect.
///
/// Burn's defaults hold: alpha 0.99, momentum 0.9, epsilon 1e-5, not
/// centered, no weight decay, no gradient clipping. The extra options default
/// to PyTorch's behaviour (eps outside the square root, square average
/// starting at 0, no Nesterov, coupled weight decay, minimize).
///
/// ```
/// use burn::optim::decay::WeightDecayConfig;
/// use fused_rmsprop_burn::FusedRmsPropConfig;
///
/// let optim = FusedRmsPropConfig::new()
///     .with_alpha(0.9)
///     .with_centered(true)
///     .with_weight_decay(Some(WeightDecayConfig::new(1e-4)))
///     .init();
/// # let _ = optim;
/// ```
#[derive(Config, Debug)]
pub struct FusedRmsPropConfig {
    /// Smoothing constant of the square average.
    #[config(default = 0.99)]
    alpha: f32,
    /// Momentum factor; 0 turns momentum (and its state buffer) off.
    #[config(default = 0.9)]
    momentum: f32,
    /// Added to the denominator for numerical stability.
    #[config(default = 1e-5)]
    epsilon: f32,
    /// Normalize by an estimate of the gradient's variance instead of its
    /// second moment.
    #[config(default = false)]
    centered: bool,
    /// [Weight decay](WeightDecayConfig): added to the gradient
    /// (`g += penalty * p`) unless `decoupled_weight_decay` is set.
    weight_decay: Option<WeightDecayConfig>,
    /// [Gradient clipping](GradientClippingConfig), burn's type and
    /// semantics (each parameter's gradient alone): on the in-place route
    /// inside the fused step (by value at no extra cost, by norm with one
    /// more read of the gradient), on the composed route with burn's own
    /// tensor ops. The non-finite policy sees the gradient before clipping.
    grad_clipping: Option<GradientClippingConfig>,
    /// Put epsilon inside the square root, `sqrt(v + eps)`, as Optax and
    /// Keras do; PyTorch and burn add it outside, `sqrt(v) + eps`.
    #[config(default = false)]
    eps_inside_sqrt: bool,
    /// Starting value of the square average (Keras and PyTorch: 0, TF1: 1).
    #[config(default = 0.0)]
    initial_square_avg: f32,
    /// Nesterov momentum: step by `g/denom + momentum * buf`.
    #[config(default = false)]
    nesterov: bool,
    /// Apply the weight decay to the parameter (`p *= 1 - lr * penalty`)
    /// instead of adding it to the gradient.
    #[config(default = false)]
    decoupled_weight_decay: bool,
    /// Ascend the objective instead of descending it.
    #[config(default = false)]
    maximize: bool,
    /// Clamp the centered variance estimate at 0 so rounding can never make
    /// its square root NaN. Off by default, as in PyTorch and burn.
    #[config(default = false)]
    clamp_centered_variance: bool,
    /// What a step does with a gradient holding NaN or Inf: propagate it
    /// (PyTorch, burn), skip that parameter (counted in
    /// [`FusedRmsProp::stats`]), or refuse the step (counted as rejected).
    #[config(default = "NonFinite::Propagate")]
    non_finite_grads: NonFinite,
    /// How a `bf16` parameter is rounded after each step: to nearest
    /// (burn's own `RmsProp`, the default) or stochastically, keyed by the
    /// seed, the parameter's [`RoundingKey`](crate::RoundingKey) and the
    /// element, so that updates below half an ulp survive on average. An
    /// `f16` parameter is rounded to nearest either way; `f32`/`f64` ones
    /// are not rounded. On the in-place route; the composed route (off
    /// Flex) rounds to nearest, as burn's casts do.
    #[config(default = "Rounding::Nearest")]
    rounding: Rounding,
    /// Keep an `f32` master copy of each `bf16`/`f16` parameter in the
    /// optimizer's state: each step reads and updates the copy and writes
    /// the parameter rounded from it, so no update is lost to the 16-bit
    /// format. Costs 4 bytes per element of state and 8 of traffic per
    /// step. Both routes.
    #[config(default = false)]
    master_weights: bool,
    /// How the running averages and the momentum buffer are kept:
    /// `StateFormat::Full` (tensors of the state dtype, as burn keeps them;
    /// the default) or 8 bits per element
    /// ([`StateFormat::BLOCKWISE8`](fused_rmsprop::StateFormat::BLOCKWISE8),
    /// or [`BITSANDBYTES`](fused_rmsprop::StateFormat::BITSANDBYTES) for
    /// bitsandbytes' `RMSprop8bit` maps) for parameters of at least
    /// [`MIN_8BIT_ELEMENTS`](fused_rmsprop::MIN_8BIT_ELEMENTS): about a
    /// quarter of the memory, in host memory as
    /// [`Blockwise8Averages`](crate::Blockwise8Averages) (the batched route
    /// keeps the kernel's `Blockwise8State`). See `docs/8-bit-state.md` for
    /// what it costs in accuracy.
    #[config(default = "StateFormat::Full")]
    state_format: StateFormat,
}

impl FusedRmsPropConfig {
    /// The kernel's hyper-parameters for this config. The learning rate
    /// field is left at the kernel's default: burn hands the learning rate
    /// to every step.
    ///
    /// ```
    /// use fused_rmsprop_burn::FusedRmsPropConfig;
    /// let h = FusedRmsPropConfig::new().with_momentum(0.0).hyper();
    /// assert_eq!(h.momentum, 0.0);
    /// assert_eq!(h.eps, f64::from(1e-5f32));
    /// ```
    pub fn hyper(&self) -> Hyper {
        let weight_decay = self.weight_decay.as_ref().map(|wd| {
            let penalty = f64::from(wd.penalty);
            if self.decoupled_weight_decay {
                WeightDecay::Decoupled(penalty)
            } else {
                WeightDecay::Coupled(penalty)
            }
        });
        Hyper::default()
            .with_alpha(f64::from(self.alpha))
            .with_momentum(f64::from(self.momentum))
            .with_eps(f64::from(self.epsilon))
            .with_centered(self.centered)
            .with_weight_decay(weight_decay)
            .with_eps_placement(if self.eps_inside_sqrt {
                EpsPlacement::InsideSqrt
            } else {
                EpsPlacement::OutsideSqrt
            })
            .with_initial_square_avg(f64::from(self.initial_square_avg))
            .with_nesterov(self.nesterov)
            .with_maximize(self.maximize)
            .with_clamp_centered_variance(self.clamp_centered_variance)
            .with_non_finite(self.non_finite_grads)
            .with_rounding(self.rounding)
            .with_master_weights(self.master_weights)
            .with_state_format(self.state_format)
            .with_grad_clip(self.grad_clipping.as_ref().map(|clipping| match clipping {
                GradientClippingConfig::Value(max) => GradClip::Value(f64::from(*max)),
                GradientClippingConfig::Norm(max) => GradClip::NormPerTensor(f64::from(*max)),
            }))
    }

    /// Builds the bare optimizer, or says which field is invalid.
    ///
    /// ```
    /// use fused_rmsprop_burn::FusedRmsPropConfig;
    /// assert!(FusedRmsPropConfig::new().try_build().is_ok());
    /// let err = FusedRmsPropConfig::new().with_alpha(1.5).try_build().unwrap_err();
    /// assert!(err.to_string().contains("alpha"));
    /// ```
    pub fn try_build(&self) -> Result<FusedRmsProp, fused_rmsprop::Error> {
        FusedRmsProp::new(self.hyper())
    }

    /// Builds the bare optimizer, which
    /// [`ModuleOptimizer::with_group`] takes for one parameter group, as
    /// `RmsPropConfig::build` does.
    ///
    /// # Panics
    /// On an invalid config (alpha outside [0, 1], momentum outside [0, 1),
    /// a negative or non-finite epsilon, penalty or initial square average),
    /// with the message of [`try_build`](Self::try_build)'s error. burn's
    /// signature has no room for an error; call `try_build` to get it as a
    /// value.
    ///
    /// ```
    /// use burn::optim::ModuleOptimizer;
    /// use fused_rmsprop_burn::FusedRmsPropConfig;
    /// let optim = FusedRmsPropConfig::new().build();
    /// let module_optim = ModuleOptimizer::from(optim);
    /// # let _ = module_optim;
    /// ```
    pub fn build(&self) -> FusedRmsProp {
        self.try_build()
            .unwrap_or_else(|err| panic!("invalid FusedRmsPropConfig: {err}"))
    }

    /// The whole-module optimizer, or the error of
    /// [`try_build`](Self::try_build). The config's gradient clipping is the
    /// optimizer's own (see the field), not the `ModuleOptimizer`'s.
    ///
    /// ```
    /// use fused_rmsprop_burn::FusedRmsPropConfig;
    /// assert!(FusedRmsPropConfig::new().with_momentum(-0.1).try_init().is_err());
    /// ```
    pub fn try_init(&self) -> Result<ModuleOptimizer, fused_rmsprop::Error> {
        Ok(ModuleOptimizer::from(self.try_build()?))
    }

    /// The whole-module optimizer, as `RmsPropConfig::init` returns it: use
    /// it with `step(lr, module, grads)`, learning-rate schedulers and
    /// parameter groups as before.
    ///
    /// # Panics
    /// On an invalid config, as [`build`](Self::build) does; see
    /// [`try_init`](Self::try_init).
    ///
    /// ```
    /// use fused_rmsprop_burn::FusedRmsPropConfig;
    /// let optim = FusedRmsPropConfig::new().with_momentum(0.0).init();
    /// # let _ = optim;
    /// ```
    pub fn init(&self) -> ModuleOptimizer {
        self.try_init()
            .unwrap_or_else(|err| panic!("invalid FusedRmsPropConfig: {err}"))
    }
}
