//! Hyper-parameters: what the step computes, and their validation.

use crate::{Error, StateFormat};

/// Where epsilon enters the denominator.
///
/// ```
/// use fused_rmsprop::{EpsPlacement, Hyper};
/// let optax_like = Hyper::default().with_eps_placement(EpsPlacement::InsideSqrt);
/// assert_eq!(Hyper::default().eps_placement, EpsPlacement::OutsideSqrt);
/// # let _ = optax_like;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EpsPlacement {
    /// `sqrt(v) + eps`: PyTorch, Burn, candle-optimisers (the default).
    #[default]
    OutsideSqrt,
    /// `sqrt(v + eps)`: Optax (`eps_in_sqrt=True`) and Keras.
    InsideSqrt,
}

/// What a step does with a gradient that holds a NaN or an infinity.
///
/// ```
/// use fused_rmsprop::{Hyper, NonFinite};
/// let h = Hyper::default().with_non_finite(NonFinite::Skip);
/// assert_eq!(Hyper::default().non_finite, NonFinite::Propagate);
/// # let _ = h;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum NonFinite {
    /// PyTorch's behaviour: NaN and Inf flow into the parameters and state
    /// exactly as the formula puts them. No check, no cost.
    #[default]
    Propagate,
    /// A tensor whose gradient holds any NaN or Inf is left untouched,
    /// parameters and state; the others are stepped, and the step's
    /// [`StepReport`](crate::StepReport) lists the skipped ones. (Mixed
    /// precision training's "skip the step on overflow", per tensor.)
    Skip,
    /// The step returns [`Error::NonFiniteGradient`] naming the first
    /// offending tensor and element, and writes nothing.
    Error,
}

/// How a step rounds a 16-bit parameter (`bf16`, `f16`) back from the `f32`
/// it computes in. `f32` and `f64` parameters are never rounded.
///
/// Memory per element of a 16-bit parameter: 2 bytes for the parameter, 4
/// for `square_avg` (plus 4 each for `grad_avg` and `momentum_buf` when
/// used), whichever rounding; [`Hyper::master_weights`] adds 4.
///
/// ```
/// use fused_rmsprop::{Hyper, Rounding};
/// let h = Hyper::default().with_rounding(Rounding::Stochastic { seed: 7 });
/// assert_eq!(Hyper::default().rounding, Rounding::Nearest);
/// # let _ = h;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Rounding {
    /// To nearest, ties to even (`half`'s `from_f32`). An update smaller
    /// than half an ulp of the parameter is lost: with `lr = 1e-4`, a `bf16`
    /// parameter of magnitude 1 (ulp `2^-7`) never moves.
    #[default]
    Nearest,
    /// `bf16` only (an `f16` parameter is rounded to nearest): rounded up
    /// in magnitude with probability equal to the distance to the lower
    /// neighbour, so small updates survive on average. The random bits come
    /// from a counter-based generator keyed by `seed`, the step number and
    /// stream of the tensor ([`Group::step`](crate::Group::step),
    /// [`Group::stream`](crate::Group::stream)) and the element's index in
    /// the tensor: never by thread, chunk or path, so every path writes the
    /// same bits and a run is reproducible from its seed.
    Stochastic {
        /// The generator's seed.
        seed: u64,
    },
}

/// Gradient clipping inside the step: the gradient is clipped as it is read,
/// before `maximize` and weight decay, exactly as a framework's clipping of
/// the gradient before its optimizer step would leave it (Burn's
/// `GradientClippingConfig`, PyTorch's `clip_grad_value_` and
/// `clip_grad_norm_`).
///
/// Clipping by value costs nothing in memory traffic. Clipping by norm reads
/// each gradient once more, before the step, to compute its norm (4 bytes
/// per `f32` element). The norm is a sum of squares accumulated in `f64` in
/// a fixed order (blocks of [`GRAD_NORM_BLOCK`](crate::GRAD_NORM_BLOCK)
/// elements by index, sixteen interleaved partial sums per block combined
/// in a fixed tree, the blocks added in index order), so it has the same bits
/// on every path and any number of threads; [`StepReport`](crate::StepReport)
/// returns it.
///
/// ```
/// use fused_rmsprop::{GradClip, Hyper, RmsProp, State};
/// let opt = RmsProp::new(Hyper::default().with_grad_clip(Some(GradClip::NormGlobal(1.0))))?;
/// let mut p = [0.0f32; 2];
/// let mut s = State::new(2, opt.hyper());
/// let report = opt.step(&mut p, &[3.0, 4.0], &mut s)?;
/// assert_eq!(report.grad_norm(), Some(5.0));
/// assert!((report.clip_coefficient().unwrap() - 0.2).abs() < 1e-6);
/// # Ok::<(), fused_rmsprop::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GradClip {
    /// Each gradient element clamped to `[-max, max]` (Burn's
    /// `GradientClippingConfig::Value`, PyTorch's `clip_grad_value_`). A NaN
    /// stays NaN, as Burn's `mask_fill` leaves it; `max` in the state type.
    Value(f64),
    /// Each tensor's gradient scaled by `min(1, max_norm / (norm +
    /// MIN_POSITIVE))`, `norm` its own L2 norm and `MIN_POSITIVE` the
    /// smallest normal value of the state type: Burn's
    /// `GradientClippingConfig::Norm`, which clips each parameter alone.
    /// Computed in `f64`, applied in the state type (`f32` for 16-bit
    /// gradients, where Burn also computes the norm in `f32`).
    NormPerTensor(f64),
    /// Every gradient of one [`step_many`](crate::RmsProp::step_many) call
    /// scaled by `min(1, max_norm / (total + 1e-6))`, `total` the L2 norm
    /// of all of them together: PyTorch's
    /// `clip_grad_norm_(model.parameters(), max_norm)` (Hugging Face's
    /// `max_grad_norm`). A call of one tensor clips it alone.
    NormGlobal(f64),
}

impl GradClip {
    /// The threshold: the value bound or the norm bound.
    ///
    /// ```
    /// assert_eq!(fused_rmsprop::GradClip::Value(0.5).max(), 0.5);
    /// ```
    pub fn max(self) -> f64 {
        match self {
            GradClip::Value(max) | GradClip::NormPerTensor(max) | GradClip::NormGlobal(max) => max,
        }
    }

    /// Whether this clips by a norm (and so reads the gradients once more).
    ///
    /// ```
    /// assert!(fused_rmsprop::GradClip::NormGlobal(1.0).is_by_norm());
    /// assert!(!fused_rmsprop::GradClip::Value(1.0).is_by_norm());
    /// ```
    pub fn is_by_norm(self) -> bool {
        !matches!(self, GradClip::Value(_))
    }
}

/// How weight decay is applied.
///
/// ```
/// use fused_rmsprop::{Hyper, WeightDecay};
/// let h = Hyper::default().with_weight_decay(Some(WeightDecay::Decoupled(1e-2)));
/// assert!(h.validate().is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeightDecay {
    /// PyTorch's and Burn's `weight_decay`: `g += wd * p` before the
    /// square average, so the decay is scaled by the adaptive denominator.
    Coupled(f64),
    /// AdamW-style: `p *= 1 - lr * wd` before the update, independent of the
    /// gradient statistics.
    Decoupled(f64),
}

impl WeightDecay {
    /// The decay coefficient, whichever way it is applied.
    ///
    /// ```
    /// # use fused_rmsprop::WeightDecay;
    /// assert_eq!(WeightDecay::Coupled(0.1).coefficient(), 0.1);
    /// ```
    pub fn coefficient(self) -> f64 {
        match self {
            WeightDecay::Coupled(wd) | WeightDecay::Decoupled(wd) => wd,
        }
    }
}

/// RMSprop hyper-parameters. `Default` is PyTorch's `torch.optim.RMSprop`:
/// lr 0.01, alpha 0.99, eps 1e-8, everything else off.
///
/// The update of one element, with `g` its gradient and `p` its parameter
/// (the scalar path, `src/scalar.rs`, is this, written as code):
///
/// ```text
/// if maximize:            g = -g
/// if Coupled(wd):         g = g + wd * p
/// if Decoupled(wd):       p = p * (1 - lr * wd)
/// square_avg = alpha * square_avg + (1 - alpha) * (g * g)
/// if centered:
///     grad_avg = alpha * grad_avg + (1 - alpha) * g
///     var      = square_avg - grad_avg * grad_avg
///     if clamp_centered_variance and var < 0: var = 0
/// else: var = square_avg
/// denom = sqrt(var) + eps          (InsideSqrt: sqrt(var + eps))
/// step  = g / denom
/// if momentum > 0:
///     momentum_buf = momentum * momentum_buf + step
///     step = nesterov ? step + momentum * momentum_buf : momentum_buf
/// p = p - lr * step
/// ```
///
/// Fields are public for struct-update syntax; the `with_*` builders read
/// better in a chain. Call [`Hyper::validate`] (every step function does) to
/// check them.
///
/// ```
/// use fused_rmsprop::Hyper;
/// let h = Hyper::default().with_lr(1e-3).with_momentum(0.9).with_centered(true);
/// assert_eq!(h.alpha, 0.99);
/// assert!(h.validate().is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    /// Learning rate, `>= 0` and finite. A step may override it (schedulers).
    pub lr: f64,
    /// Smoothing constant of the square average, in `[0, 1]`.
    pub alpha: f64,
    /// Added to the denominator, `>= 0` and finite.
    pub eps: f64,
    /// Outside the square root (PyTorch) or inside (Optax, Keras).
    pub eps_placement: EpsPlacement,
    /// The value the square average starts from (Optax `initial_scale`;
    /// PyTorch and Burn use 0), `>= 0` and finite.
    pub initial_square_avg: f64,
    /// Normalise by the estimated variance instead of the second moment.
    pub centered: bool,
    /// With `centered`: clamp a negative variance estimate to 0. Without it
    /// (PyTorch's behaviour) a variance that rounds below zero gives NaN.
    pub clamp_centered_variance: bool,
    /// Momentum factor in `[0, 1)`; 0 turns momentum off.
    pub momentum: f64,
    /// Nesterov momentum (as Optax's `nesterov=True`); no effect when
    /// `momentum` is 0.
    pub nesterov: bool,
    /// Weight decay, coupled (PyTorch) or decoupled; `None` is off.
    pub weight_decay: Option<WeightDecay>,
    /// Ascend the objective instead of descending it.
    pub maximize: bool,
    /// What to do with a gradient holding NaN or Inf; see [`NonFinite`].
    /// The check costs one extra read of the gradients (`Skip`, `Error`).
    pub non_finite: NonFinite,
    /// How a 16-bit parameter is rounded after the step.
    pub rounding: Rounding,
    /// Keep an `f32` master copy of each 16-bit parameter in the state
    /// ([`StateSlices::master`](crate::StateSlices::master)): the step
    /// updates the copy and writes its rounded value to the parameter, which
    /// it no longer reads (mixed-precision training as PyTorch AMP and
    /// DeepSpeed do it). Costs 4 bytes per element; a plain step then moves
    /// 20 bytes per element instead of 14. Ignored for `f32`/`f64`.
    pub master_weights: bool,
    /// Gradient clipping inside the step ([`GradClip`]); `None` is off.
    pub grad_clip: Option<GradClip>,
    /// How the state is kept: full precision (the default) or 8-bit
    /// ([`StateFormat::Blockwise8`], stepped by
    /// [`RmsProp::step_blockwise8`](crate::RmsProp::step_blockwise8)).
    /// The kernel steps whichever state it is given; this field tells the
    /// adapters which to make.
    pub state_format: StateFormat,
}

impl Default for Hyper {
    fn default() -> Self {
        Self {
            lr: 0.01,
            alpha: 0.99,
            eps: 1e-8,
            eps_placement: EpsPlacement::OutsideSqrt,
            initial_square_avg: 0.0,
            centered: false,
            clamp_centered_variance: false,
            momentum: 0.0,
            nesterov: false,
            weight_decay: None,
            maximize: false,
            non_finite: NonFinite::Propagate,
            rounding: Rounding::Nearest,
            master_weights: false,
            grad_clip: None,
            state_format: StateFormat::Full,
        }
    }
}

macro_rules! builder {
    ($(#[$doc:meta] $name:ident: $field:ident: $ty:ty),* $(,)?) => {
        impl Hyper {
            $(
                #[$doc]
                ///
                /// ```
                /// # use fused_rmsprop::Hyper;
                /// let h = Hyper::default();
                #[doc = concat!("let h = h.", stringify!($name), "(h.", stringify!($field), ");")]
                /// assert_eq!(h, Hyper::default());
                /// ```
                #[must_use]
                pub fn $name(mut self, $field: $ty) -> Self {
                    self.$field = $field;
                    self
                }
            )*
        }
    };
}

builder! {
    /// Sets [`Hyper::lr`].
    with_lr: lr: f64,
    /// Sets [`Hyper::alpha`].
    with_alpha: alpha: f64,
    /// Sets [`Hyper::eps`].
    with_eps: eps: f64,
    /// Sets [`Hyper::eps_placement`].
    with_eps_placement: eps_placement: EpsPlacement,
    /// Sets [`Hyper::initial_square_avg`].
    with_initial_square_avg: initial_square_avg: f64,
    /// Sets [`Hyper::centered`].
    with_centered: centered: bool,
    /// Sets [`Hyper::clamp_centered_variance`].
    with_clamp_centered_variance: clamp_centered_variance: bool,
    /// Sets [`Hyper::momentum`].
    with_momentum: momentum: f64,
    /// Sets [`Hyper::nesterov`].
    with_nesterov: nesterov: bool,
    /// Sets [`Hyper::weight_decay`].
    with_weight_decay: weight_decay: Option<WeightDecay>,
    /// Sets [`Hyper::maximize`].
    with_maximize: maximize: bool,
    /// Sets [`Hyper::non_finite`].
    with_non_finite: non_finite: NonFinite,
    /// Sets [`Hyper::rounding`].
    with_rounding: rounding: Rounding,
    /// Sets [`Hyper::master_weights`].
    with_master_weights: master_weights: bool,
    /// Sets [`Hyper::grad_clip`].
    with_grad_clip: grad_clip: Option<GradClip>,
    /// Sets [`Hyper::state_format`].
    with_state_format: state_format: StateFormat,
}

impl Hyper {
    /// Checks every numeric field; the first invalid one is returned as
    /// [`Error::InvalidHyper`] naming the field, its value and the valid range.
    ///
    /// ```
    /// use fused_rmsprop::{Error, Hyper};
    /// let err = Hyper::default().with_alpha(1.5).validate().unwrap_err();
    /// assert!(matches!(err, Error::InvalidHyper { name: "alpha", .. }));
    /// assert_eq!(err.to_string(), "invalid hyper-parameter alpha = 1.5: expected a value in [0, 1]");
    /// ```
    pub fn validate(&self) -> Result<(), Error> {
        validate_lr(self.lr)?;
        check("alpha", self.alpha, "a value in [0, 1]", |a| {
            (0.0..=1.0).contains(&a)
        })?;
        check("eps", self.eps, "a finite value >= 0", non_negative)?;
        check(
            "initial_square_avg",
            self.initial_square_avg,
            "a finite value >= 0",
            non_negative,
        )?;
        check("momentum", self.momentum, "a value in [0, 1)", |m| {
            (0.0..1.0).contains(&m)
        })?;
        if let Some(wd) = self.weight_decay {
            check(
                "weight_decay",
                wd.coefficient(),
                "a finite value >= 0",
                non_negative,
            )?;
        }
        if let Some(clip) = self.grad_clip {
            check("grad_clip", clip.max(), "a finite value >= 0", non_negative)?;
        }
        Ok(())
    }

    /// Whether the step keeps a `grad_avg` buffer.
    ///
    /// ```
    /// # use fused_rmsprop::Hyper;
    /// assert!(Hyper::default().with_centered(true).needs_grad_avg());
    /// ```
    pub fn needs_grad_avg(&self) -> bool {
        self.centered
    }

    /// Whether the step keeps a `momentum_buf` buffer (momentum > 0).
    ///
    /// ```
    /// # use fused_rmsprop::Hyper;
    /// assert!(!Hyper::default().needs_momentum_buf());
    /// assert!(Hyper::default().with_momentum(0.9).needs_momentum_buf());
    /// ```
    pub fn needs_momentum_buf(&self) -> bool {
        self.momentum > 0.0
    }

    /// Bytes one step reads and writes per element of element size
    /// `elem_bytes`: params, grads and square_avg read, params and square_avg
    /// written, plus a read and a write per optional buffer. This is the
    /// traffic the benchmarks divide by.
    ///
    /// ```
    /// # use fused_rmsprop::Hyper;
    /// assert_eq!(Hyper::default().bytes_per_element(4), 20);
    /// assert_eq!(Hyper::default().with_momentum(0.9).bytes_per_element(4), 28);
    /// assert_eq!(Hyper::default().with_momentum(0.9).with_centered(true).bytes_per_element(4), 36);
    /// ```
    pub fn bytes_per_element(&self, elem_bytes: usize) -> usize {
        let buffers =
            5 + 2 * usize::from(self.needs_grad_avg()) + 2 * usize::from(self.needs_momentum_buf());
        buffers * elem_bytes
    }
}

/// Validates a learning rate: finite and `>= 0`.
pub(crate) fn validate_lr(lr: f64) -> Result<(), Error> {
    check("lr", lr, "a finite value >= 0", non_negative)
}

fn non_negative(value: f64) -> bool {
    value.is_finite() && value >= 0.0
}

fn check(
    name: &'static str,
    value: f64,
    expected: &'static str,
    valid: impl Fn(f64) -> bool,
) -> Result<(), Error> {
    if valid(value) {
        Ok(())
    } else {
        Err(Error::InvalidHyper {
            name,
            value,
            expected,
        })
    }
}
