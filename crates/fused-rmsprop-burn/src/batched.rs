//! [`BatchedRmsProp`]: every parameter of a module stepped in one kernel
//! dispatch, for training loops that call the optimizer themselves.
//!
//! burn's [`ModuleOptimizer`](burn::optim::ModuleOptimizer) hands an
//! optimizer one parameter at a time, and between two parameters runs its
//! own bookkeeping on caches the previous parameter has just streamed
//! through. This route walks the module twice instead: the first walk takes
//! each parameter that has a gradient out of the module (leaving its
//! gradient in its place), one call of the kernel's `step_many` per
//! parameter dtype steps them all, and the second walk puts them back.

mod checkpoint;

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, GradientCheckpointingStrategy, Tensor};
use fused_rmsprop::{
    Blockwise8Group, Blockwise8State, Float, Group, Hyper, NonFinite, RmsProp, Rounding, State,
    bf16, f16,
};

use crate::flex;
use crate::flex_tensor::{self, FlexParam, FlexTensor};
use crate::stats::Counters;
use crate::{FusedRmsPropConfig, StepStats};

/// RMSprop over a whole module per step, in one kernel dispatch per
/// parameter dtype: the fused step without burn's per-parameter machinery.
///
/// An opt-in for training loops that call the optimizer themselves:
/// [`BatchedRmsProp::step`] has the arguments of `ModuleOptimizer::step`.
/// Same numbers as [`FusedRmsPropConfig::init`]'s optimizer, bit for bit,
/// with a few differences a user should know:
///
/// - **Flex only.** Every parameter with a gradient must be on a Flex device
///   (burn's CPU backend) with dtype `f32`, `f64`, `bf16` or `f16`, its
///   gradient of the same dtype and shape; otherwise the step is refused
///   ([`BatchedError::NotInPlace`]) and the module returned as it was. Use
///   `init()` elsewhere.
/// - **One learning rate, no parameter groups**: `lr` applies to every
///   parameter. Gradient clipping from the config is applied inside the
///   step, per parameter, as `init()`'s optimizer applies it; this route
///   can also clip by the norm of all gradients together
///   ([`with_max_grad_norm`](Self::with_max_grad_norm)).
/// - **Checkpoints in burn's optimizer record**, through
///   [`to_record`](Self::to_record) and [`load_record`](Self::load_record),
///   which take the module (burn ties a record to parameter ids): the
///   record `init()`'s optimizer writes, so a checkpoint moves between the
///   two routes, and one of burn's `RmsProp` loads here. The state itself
///   is kept as `f32` buffers for `f32`, `bf16` and `f16` parameters, `f64`
///   for `f64`, in 8 bits under `StateFormat::Blockwise8`.
/// - **Not for burn-train's `Learner`**, which takes only a
///   `ModuleOptimizer`.
///
/// ```
/// use burn::module::Module;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::optim::GradientsParams;
/// use burn::tensor::{Device, Tensor};
/// use fused_rmsprop_burn::FusedRmsPropConfig;
///
/// let device = Device::default().autodiff();
/// let model: Linear = LinearConfig::new(4, 2).init(&device);
/// let mut optim = FusedRmsPropConfig::new().init_batched();
///
/// let x = Tensor::<2>::ones([8, 4], &device);
/// let loss = model.forward(x).powi_scalar(2).mean();
/// let grads = GradientsParams::from_grads(loss.backward(), &model);
/// let (model, outcome) = optim.step(1e-2, model, grads);
/// assert!(outcome.is_ok());
/// # let _ = model;
/// ```
#[derive(Debug)]
pub struct BatchedRmsProp {
    kernel: RmsProp,
    /// Every parameter's state, those of the last step's parameters first
    /// and in their order (so that a step of the same parameters finds them
    /// lined up, without a lookup); `None` only while a step lines them up.
    states: Vec<(ParamId, Option<KernelState>)>,
    /// An empty vector whose capacity the next step reuses.
    spare: Vec<Taken>,
    counters: Counters,
    /// Clipping by the norm of all the step's gradients together
    /// ([`BatchedRmsProp::with_max_grad_norm`]).
    max_grad_norm: Option<f64>,
    /// The norm of the last step's gradients, under `max_grad_norm`.
    last_grad_norm: Option<f64>,
    /// Each parameter's stochastic-rounding stream
    /// ([`RoundingKey`](crate::RoundingKey)), given at its first step under
    /// stochastic rounding in the module's order; the key's step is the
    /// state's own count.
    streams: HashMap<ParamId, u64>,
    /// The stream the next parameter without one gets.
    next_stream: u64,
}

/// Why [`BatchedRmsProp::step`] left the module as it was.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchedError {
    /// The kernel refused the step: an invalid learning rate, or a NaN or an
    /// infinity in a gradient under `NonFinite::Error` (`param` names it;
    /// the error's `group` is 0 and its `index` the element's).
    Kernel {
        /// The parameter the error is about, when it is about one.
        param: Option<ParamId>,
        /// The kernel's error.
        error: fused_rmsprop::Error,
    },
    /// A parameter this route cannot step in place.
    NotInPlace {
        /// The parameter.
        param: ParamId,
        /// Why: its device or dtype, or its gradient's dtype or shape.
        reason: String,
    },
}

impl std::fmt::Display for BatchedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchedError::Kernel {
                param: Some(param),
                error,
            } => write!(f, "parameter {param}: {error}"),
            BatchedError::Kernel { param: None, error } => error.fmt(f),
            BatchedError::NotInPlace { param, reason } => write!(
                f,
                "parameter {param} cannot be stepped in place ({reason}); \
                 FusedRmsPropConfig::init() steps it"
            ),
        }
    }
}

impl std::error::Error for BatchedError {}

/// A parameter's state: `f32` for `f32`, `bf16` and `f16` parameters, `f64`
/// for `f64` ones; full or 8-bit (a parameter of at least
/// `MIN_8BIT_ELEMENTS` under `StateFormat::Blockwise8`).
#[derive(Clone, Debug)]
enum KernelState {
    F32(State<f32>),
    F64(State<f64>),
    Blockwise8F32(Blockwise8State<f32>),
    Blockwise8F64(Blockwise8State<f64>),
}

impl FusedRmsPropConfig {
    /// The batched route ([`BatchedRmsProp`]) with this config, or the
    /// config's error.
    ///
    /// ```
    /// use fused_rmsprop_burn::FusedRmsPropConfig;
    /// assert!(FusedRmsPropConfig::new().with_alpha(2.0).try_init_batched().is_err());
    /// ```
    pub fn try_init_batched(&self) -> Result<BatchedRmsProp, fused_rmsprop::Error> {
        Ok(BatchedRmsProp {
            kernel: RmsProp::new(self.hyper())?,
            states: Vec::new(),
            spare: Vec::new(),
            counters: Counters::default(),
            max_grad_norm: None,
            last_grad_norm: None,
            streams: HashMap::new(),
            next_stream: 0,
        })
    }

    /// [`try_init_batched`](Self::try_init_batched), panicking on an invalid
    /// config (as `init` does).
    ///
    /// ```
    /// use fused_rmsprop_burn::FusedRmsPropConfig;
    /// let optim = FusedRmsPropConfig::new().init_batched();
    /// assert_eq!(optim.hyper().alpha, f64::from(0.99f32));
    /// ```
    pub fn init_batched(&self) -> BatchedRmsProp {
        self.try_init_batched()
            .unwrap_or_else(|err| panic!("invalid FusedRmsPropConfig: {err}"))
    }
}

impl BatchedRmsProp {
    /// Steps every parameter of `module` that has a gradient in `grads`, at
    /// learning rate `lr`; returns the module and, on success, the
    /// parameters left untouched for a non-finite gradient (under
    /// `NonFinite::Skip`; empty otherwise).
    ///
    /// On error the module comes back exactly as it was, and so does every
    /// state; the gradients are consumed either way. The error is also kept
    /// in [`stats`](Self::stats) (`rejected_steps`, `last_error`).
    ///
    /// See [`BatchedRmsProp`] for an example.
    pub fn step<M: Module>(
        &mut self,
        lr: f64,
        module: M,
        mut grads: GradientsParams,
    ) -> (M, Result<Vec<ParamId>, BatchedError>) {
        let mut take = Take {
            grads: &mut grads,
            counters: &self.counters,
            taken: std::mem::take(&mut self.spare),
            refused: None,
        };
        let module = module.map(&mut take);
        let Take {
            mut taken, refused, ..
        } = take;
        let outcome = match refused {
            Some(err) => Err(err),
            None => self.step_taken(lr, &mut taken),
        };
        match &outcome {
            Err(BatchedError::Kernel { error, .. }) => self.counters.rejected(error.clone()),
            Err(BatchedError::NotInPlace { .. }) => self.counters.refused(None),
            Ok(_) => {}
        }
        let mut back = PutBack {
            taken: taken.drain(..).peekable(),
        };
        let module = module.map(&mut back);
        // Both walks visit the parameters in the same order, so the second
        // finds every parameter the first took.
        debug_assert!(
            back.taken.peek().is_none(),
            "a taken parameter was not put back"
        );
        drop(back);
        self.spare = taken;
        (module, outcome)
    }

    /// Clips every gradient by the norm of all the step's gradients
    /// together, PyTorch's `clip_grad_norm_(model.parameters(), max_norm)`
    /// before its `RMSprop` step: each gradient is multiplied by
    /// `min(1, max_norm / (norm + 1e-6))` as the kernel reads it, one more
    /// read of the gradients and no pass of tensor ops. `None` turns it
    /// off. The route that burn's `ModuleOptimizer` drives sees one
    /// parameter at a time and cannot offer this; burn's own
    /// `GradientClippingConfig::Norm` (the config's `grad_clipping`) clips
    /// each parameter by its own norm instead.
    ///
    /// The norm is the kernel's ([`fused_rmsprop::sum_of_squares`] of each
    /// gradient in the module's order, [`fused_rmsprop::grad_norm`]), the
    /// same bits on every path and thread count; under `NonFinite::Skip`
    /// the gradients that hold a NaN or an infinity are left out of it
    /// (their parameters are skipped), under `NonFinite::Error` they are
    /// refused before the norm, and otherwise a NaN makes every gradient
    /// NaN, as in PyTorch. [`last_grad_norm`](Self::last_grad_norm) returns
    /// it.
    ///
    /// # Errors
    /// [`fused_rmsprop::Error::InvalidHyper`] (`grad_clip`) for a bound that
    /// is negative, NaN or infinite, or when the config clips already
    /// (`grad_clipping`): one clipping at a time.
    ///
    /// ```
    /// use burn::module::{Module, Param};
    /// use burn::optim::GradientsParams;
    /// use burn::tensor::{Device, Tensor};
    /// use fused_rmsprop_burn::FusedRmsPropConfig;
    ///
    /// let device = Device::default().autodiff();
    /// let p = Param::from_tensor(Tensor::<1>::from_floats([1.0, 2.0], &device));
    /// let mut grads = GradientsParams::new();
    /// grads.register(p.id, Tensor::<1>::from_floats([3.0, 4.0], &Device::default()));
    ///
    /// let mut optim = FusedRmsPropConfig::new().init_batched().with_max_grad_norm(Some(1.0))?;
    /// let (_p, outcome) = optim.step(1e-2, p, grads);
    /// assert!(outcome.is_ok());
    /// assert_eq!(optim.last_grad_norm(), Some(5.0));
    ///
    /// let clipping = FusedRmsPropConfig::new()
    ///     .with_grad_clipping(Some(burn::grad_clipping::GradientClippingConfig::Norm(1.0)));
    /// assert!(clipping.init_batched().with_max_grad_norm(Some(1.0)).is_err());
    /// # Ok::<(), fused_rmsprop::Error>(())
    /// ```
    pub fn with_max_grad_norm(
        mut self,
        max_norm: Option<f64>,
    ) -> Result<Self, fused_rmsprop::Error> {
        if let Some(max) = max_norm {
            fused_rmsprop::Hyper::default()
                .with_grad_clip(Some(fused_rmsprop::GradClip::NormGlobal(max)))
                .validate()?;
            if self.kernel.hyper().grad_clip.is_some() {
                return Err(fused_rmsprop::Error::InvalidHyper {
                    name: "grad_clip",
                    value: max,
                    expected: "no grad_clipping in the config alongside a global norm",
                });
            }
        }
        self.max_grad_norm = max_norm;
        Ok(self)
    }

    /// Under [`with_max_grad_norm`](Self::with_max_grad_norm), the norm of
    /// all the last step's gradients before clipping (what PyTorch's
    /// `clip_grad_norm_` returns); `None` before the first such step and
    /// without it.
    ///
    /// ```
    /// use fused_rmsprop_burn::FusedRmsPropConfig;
    /// assert_eq!(FusedRmsPropConfig::new().init_batched().last_grad_norm(), None);
    /// ```
    pub fn last_grad_norm(&self) -> Option<f64> {
        self.last_grad_norm
    }

    /// The hyper-parameters.
    ///
    /// ```
    /// use fused_rmsprop_burn::FusedRmsPropConfig;
    /// let optim = FusedRmsPropConfig::new().with_momentum(0.5).init_batched();
    /// assert_eq!(optim.hyper().momentum, 0.5);
    /// ```
    pub fn hyper(&self) -> &fused_rmsprop::Hyper {
        self.kernel.hyper()
    }

    /// What the steps so far did, counted per parameter as
    /// [`FusedRmsProp::stats`](crate::FusedRmsProp::stats) counts them:
    /// parameters stepped in place, buffers copied first (a parameter
    /// shared with another owner, a gradient that was not contiguous),
    /// states started afresh because they no longer fitted, skipped
    /// parameters; and refused steps (one per call) with the last error.
    ///
    /// ```
    /// use fused_rmsprop_burn::FusedRmsPropConfig;
    /// assert_eq!(FusedRmsPropConfig::new().init_batched().stats().in_place_steps, 0);
    /// ```
    pub fn stats(&self) -> StepStats {
        self.counters.snapshot()
    }

    /// Puts the states of `taken` first in `states`, in `taken`'s order
    /// (`None` for a parameter without one), the others after them; nothing
    /// to do when the last step took the same parameters in the same order.
    fn line_up(&mut self, taken: &[Taken]) {
        let in_order = self.states.len() >= taken.len()
            && self
                .states
                .iter()
                .zip(taken)
                .all(|((id, _), t)| *id == t.id);
        if in_order {
            return;
        }
        let mut by_id: HashMap<ParamId, Option<KernelState>> =
            std::mem::take(&mut self.states).into_iter().collect();
        let mut lined: Vec<_> = taken
            .iter()
            .map(|t| (t.id, by_id.remove(&t.id).flatten()))
            .collect();
        // The states of parameters without a gradient this step, kept.
        lined.extend(by_id);
        self.states = lined;
    }

    /// Steps the taken parameters: everything checked first, then one
    /// `step_many` per parameter dtype.
    fn step_taken(&mut self, lr: f64, taken: &mut [Taken]) -> Result<Vec<ParamId>, BatchedError> {
        let hyper = self.kernel.hyper().with_lr(lr);
        hyper
            .validate()
            .map_err(|error| BatchedError::Kernel { param: None, error })?;
        if hyper.non_finite == NonFinite::Error {
            for t in taken.iter() {
                if let Some(index) = flex::find_non_finite(&t.grad) {
                    let error = fused_rmsprop::Error::NonFiniteGradient { group: 0, index };
                    return Err(BatchedError::Kernel {
                        param: Some(t.id),
                        error,
                    });
                }
            }
        }
        // The states of the taken parameters, lined up with them; a missing
        // one, or one that no longer fits its parameter, starts afresh.
        self.line_up(taken);
        let lined = &mut self.states[..taken.len()];
        for ((_, slot), t) in lined.iter_mut().zip(taken.iter()) {
            let wide = t.param.dtype() != DType::F64;
            let (state, kept) = KernelState::fitted(slot.take(), wide, t.len, &hyper);
            if !kept {
                Counters::bump(&self.counters.reset);
            }
            *slot = Some(state.without_unneeded_master(&hyper));
        }
        let stochastic = matches!(hyper.rounding, Rounding::Stochastic { .. });
        for t in taken.iter_mut().filter(|_| stochastic) {
            t.stream = Some(*self.streams.entry(t.id).or_insert_with(|| {
                self.next_stream += 1;
                self.next_stream - 1
            }));
        }
        let grad_scale = match self.max_grad_norm {
            None => None,
            Some(max) => {
                let norm = global_norm(taken, hyper.non_finite);
                self.last_grad_norm = Some(norm);
                if norm.is_infinite() && hyper.non_finite == NonFinite::Error {
                    let error = fused_rmsprop::Error::NonFiniteGradNorm { group: None, norm };
                    return Err(BatchedError::Kernel { param: None, error });
                }
                fused_rmsprop::global_clip_scale(max, norm)
            }
        };
        // Only a non-finite gradient under `NonFinite::Error` could make
        // the kernel refuse now (the rate is valid, every length fits), and
        // that was checked above for every dtype: a later dtype's call
        // cannot fail after an earlier one wrote.
        let with = (&self.kernel, &self.counters, lr, grad_scale);
        let skipped = run::<f32>(with, DType::F32, taken, lined).and_then(|mut s| {
            s.extend(run::<bf16>(with, DType::BF16, taken, lined)?);
            s.extend(run::<f16>(with, DType::F16, taken, lined)?);
            s.extend(run::<f64>(with, DType::F64, taken, lined)?);
            Ok(s)
        });
        let skipped = skipped.map_err(|error| BatchedError::Kernel { param: None, error })?;
        for _ in 0..taken.len() - skipped.len() {
            Counters::bump(&self.counters.in_place);
        }
        skipped.iter().for_each(|_| self.counters.skipped());
        Ok(skipped)
    }
}

/// The norm of all the taken gradients, their sums of squares added in the
/// module's order; under `NonFinite::Skip` a gradient whose sum is not
/// finite (a NaN or an infinity in it: its parameter will be skipped) is
/// left out.
fn global_norm(taken: &[Taken], non_finite: NonFinite) -> f64 {
    let sums: Vec<f64> = taken
        .iter()
        .map(|t| match t.grad.dtype() {
            DType::F64 => fused_rmsprop::sum_of_squares(flex_tensor::view::<f64>(&t.grad)),
            DType::BF16 => fused_rmsprop::sum_of_squares(flex_tensor::view::<bf16>(&t.grad)),
            DType::F16 => fused_rmsprop::sum_of_squares(flex_tensor::view::<f16>(&t.grad)),
            _ => fused_rmsprop::sum_of_squares(flex_tensor::view::<f32>(&t.grad)),
        })
        .filter(|sum| non_finite != NonFinite::Skip || sum.is_finite())
        .collect();
    fused_rmsprop::grad_norm(&sums)
}

/// One `step_many` over the taken parameters of dtype `dtype` (of type `P`)
/// with full state and one `step_many_blockwise8` over those with 8-bit
/// state, each gradient multiplied by `grad_scale` when there is one; the
/// ones they skipped. A parameter whose buffer is shared is copied here
/// (copy-on-write) and counted, not when it was taken: a refused step
/// copies nothing.
fn run<P: FlexParam>(
    (kernel, counters, lr, grad_scale): (&RmsProp, &Counters, f64, Option<f64>),
    dtype: DType,
    taken: &mut [Taken],
    states: &mut [(ParamId, Option<KernelState>)],
) -> Result<Vec<ParamId>, fused_rmsprop::Error>
where
    P::State: Wide,
{
    let count = taken.iter().filter(|t| t.param.dtype() == dtype).count();
    if count == 0 {
        return Ok(Vec::new());
    }
    // Sized once: grown a push at a time, their reallocations showed in a
    // profile of a step of 1,000 small parameters.
    let (mut ids, mut ids8) = (Vec::with_capacity(count), Vec::new());
    let (mut groups, mut groups8) = (Vec::with_capacity(count), Vec::new());
    let needs_master = P::NARROWS && kernel.hyper().master_weights;
    // A fresh state, or one loaded without a master copy, starts the copy
    // as the parameter's values (exact), read from the buffer the step
    // writes (the copy-on-write copy of a shared one has the same values).
    for (t, state) in taken.iter_mut().zip(states.iter_mut()) {
        if t.param.dtype() != dtype {
            continue;
        }
        let Some(state) = state.1.as_mut().and_then(P::State::state_mut) else {
            continue;
        };
        if !t.param.is_unique() {
            counters.copied();
        }
        let params = flex_tensor::view_mut::<P>(&mut t.param);
        let grads = flex_tensor::view::<P>(&t.grad);
        match state {
            StateMut::Full(state) => {
                if needs_master && state.master.is_none() {
                    state.master = Some(params.iter().map(|x| x.widen()).collect());
                }
                ids.push(t.id);
                let step = state.step;
                let mut group = Group::new(params, grads, state.slices_mut());
                if let Some(stream) = t.stream {
                    group = group.with_rounding_key(step, stream);
                }
                if let Some(scale) = grad_scale {
                    group = group.with_grad_scale(scale);
                }
                groups.push(group);
            }
            StateMut::Blockwise8(state) => {
                if needs_master && state.master.is_none() {
                    state.master = Some(params.iter().map(|x| x.widen()).collect());
                }
                ids8.push(t.id);
                let step = state.step;
                let mut group = Blockwise8Group::new(params, grads, state.slices_mut());
                if let Some(stream) = t.stream {
                    group = group.with_rounding_key(step, stream);
                }
                if let Some(scale) = grad_scale {
                    group = group.with_grad_scale(scale);
                }
                groups8.push(group);
            }
        }
    }
    let report = (!groups.is_empty())
        .then(|| kernel.step_many(lr, groups))
        .transpose()?
        .unwrap_or_default();
    let report8 = (!groups8.is_empty())
        .then(|| kernel.step_many_blockwise8(lr, groups8))
        .transpose()?
        .unwrap_or_default();
    // Count the step of every parameter the kernel did not skip.
    let (mut position, mut position8) = (0, 0);
    for (t, state) in taken.iter().zip(states.iter_mut()) {
        if t.param.dtype() != dtype {
            continue;
        }
        match state.1.as_mut().and_then(P::State::state_mut) {
            Some(StateMut::Full(state)) => {
                state.step += u64::from(!report.is_skipped(position));
                position += 1;
            }
            Some(StateMut::Blockwise8(state)) => {
                state.step += u64::from(!report8.is_skipped(position8));
                position8 += 1;
            }
            None => {}
        }
    }
    let skipped = report.skipped().iter().map(|&g| ids[g]);
    Ok(skipped
        .chain(report8.skipped().iter().map(|&g| ids8[g]))
        .collect())
}

/// A [`KernelState`] of state type `S`, borrowed: full or 8-bit.
enum StateMut<'a, S: Float> {
    Full(&'a mut State<S>),
    Blockwise8(&'a mut Blockwise8State<S>),
}

/// The state types, and the state of a [`KernelState`] of that type.
trait Wide: Float {
    fn state_mut(state: &mut KernelState) -> Option<StateMut<'_, Self>>;
}

impl Wide for f32 {
    fn state_mut(state: &mut KernelState) -> Option<StateMut<'_, f32>> {
        match state {
            KernelState::F32(s) => Some(StateMut::Full(s)),
            KernelState::Blockwise8F32(s) => Some(StateMut::Blockwise8(s)),
            _ => None,
        }
    }
}

impl Wide for f64 {
    fn state_mut(state: &mut KernelState) -> Option<StateMut<'_, f64>> {
        match state {
            KernelState::F64(s) => Some(StateMut::Full(s)),
            KernelState::Blockwise8F64(s) => Some(StateMut::Blockwise8(s)),
            _ => None,
        }
    }
}

impl KernelState {
    /// `old` brought in line with a parameter of `len` elements (of state
    /// type `f32` when `wide`, `f64` otherwise) under `hyper`, by the
    /// kernel's `fit`: full state where `hyper` keeps full state, 8-bit
    /// where it quantizes (converted with `from_full`/`to_full`), of the
    /// parameter's state type; a fresh one for none or another type. The
    /// `bool` is `false` when a state was there and did not fit.
    fn fitted(old: Option<Self>, wide: bool, len: usize, hyper: &Hyper) -> (Self, bool) {
        use KernelState::{Blockwise8F32 as Q32, Blockwise8F64 as Q64, F32, F64};
        let quantizes = hyper.state_format.quantizes(len);
        let full32 = |s: State<f32>| s.fit(len, hyper);
        let full64 = |s: State<f64>| s.fit(len, hyper);
        match (old, wide, quantizes) {
            (Some(F32(s)), true, false) => map(full32(s), F32),
            (Some(F64(s)), false, false) => map(full64(s), F64),
            (Some(Q32(s)), true, true) => map(s.fit(len, hyper), Q32),
            (Some(Q64(s)), false, true) => map(s.fit(len, hyper), Q64),
            (Some(F32(s)), true, true) => {
                map(full32(s), |s| Q32(Blockwise8State::from_full(&s, hyper)))
            }
            (Some(F64(s)), false, true) => {
                map(full64(s), |s| Q64(Blockwise8State::from_full(&s, hyper)))
            }
            (Some(Q32(s)), true, false) => map(full32(s.to_full()), F32),
            (Some(Q64(s)), false, false) => map(full64(s.to_full()), F64),
            (old, _, _) => {
                let fresh = match (wide, quantizes) {
                    (true, false) => F32(State::new(len, hyper)),
                    (false, false) => F64(State::new(len, hyper)),
                    (true, true) => Q32(Blockwise8State::new(len, hyper)),
                    (false, true) => Q64(Blockwise8State::new(len, hyper)),
                };
                (fresh, old.is_none())
            }
        }
    }

    /// This state without its master copy when `hyper` does not keep one
    /// (the kernel's `fit` keeps it).
    fn without_unneeded_master(mut self, hyper: &Hyper) -> Self {
        if !hyper.master_weights {
            match &mut self {
                KernelState::F32(s) => s.master = None,
                KernelState::Blockwise8F32(s) => s.master = None,
                KernelState::F64(_) | KernelState::Blockwise8F64(_) => {}
            }
        }
        self
    }
}

/// `(f(state), kept)` of a fitted `(state, kept)`.
fn map<T, U>((state, kept): (T, bool), f: impl FnOnce(T) -> U) -> (U, bool) {
    (f(state), kept)
}

/// The first walk: each parameter with a gradient is taken out of the
/// module, its gradient left in its place; the first parameter this route
/// cannot step stops the taking (the rest stay where they are).
struct Take<'a> {
    grads: &'a mut GradientsParams,
    counters: &'a Counters,
    taken: Vec<Taken>,
    refused: Option<BatchedError>,
}

/// A parameter taken out of the module, with what putting it back needs
/// (what burn's `ModuleOptimizer` keeps of a parameter across its step).
#[derive(Debug)]
struct Taken {
    id: ParamId,
    /// The number of elements.
    len: usize,
    param: FlexTensor,
    grad: FlexTensor,
    require_grad: bool,
    checkpointing: Option<GradientCheckpointingStrategy>,
    distributed: bool,
    /// Its stochastic-rounding stream (stochastic rounding only).
    stream: Option<u64>,
}

impl ModuleMapper for Take<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let grad = match self.grads.remove::<D>(id) {
            Some(grad) if self.refused.is_none() => grad,
            _ => return Param::from_mapped_value(id, tensor, mapper),
        };
        if let Some(reason) = flex::refusal(&tensor, &grad) {
            self.refused = Some(BatchedError::NotInPlace { param: id, reason });
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let taken = Taken {
            id,
            len: tensor.shape().num_elements(),
            require_grad: tensor.is_require_grad(),
            checkpointing: tensor.gradient_checkpointing_strategy(),
            distributed: tensor.is_distributed(),
            // Made writable (a shared buffer copied) only if the step runs.
            param: flex_tensor::readable(flex_tensor::to_flex(tensor.inner()), self.counters),
            // A gradient registered by hand may carry autodiff.
            grad: flex_tensor::readable(flex_tensor::to_flex(grad.clone().inner()), self.counters),
            stream: None,
        };
        self.taken.push(taken);
        Param::from_mapped_value(id, grad, mapper)
    }
}

/// The second walk: every taken parameter back in its place, as burn's
/// `ModuleOptimizer` puts a stepped parameter back. It visits the
/// parameters in the order of the first walk, so the next taken parameter
/// is the next one it meets with that id.
struct PutBack<'a> {
    taken: std::iter::Peekable<std::vec::Drain<'a, Taken>>,
}

impl ModuleMapper for PutBack<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, placeholder, mapper) = param.consume();
        let Some(t) = self.taken.next_if(|t| t.id == id) else {
            return Param::from_mapped_value(id, placeholder, mapper);
        };
        drop(placeholder);
        let mut tensor = Tensor::from_inner(flex_tensor::from_flex::<D>(t.param));
        if let Some(strategy) = t.checkpointing {
            tensor = tensor.with_gradient_checkpointing_strategy(strategy);
        }
        if t.require_grad {
            tensor = tensor.require_grad();
        }
        if t.distributed {
            tensor = tensor.set_distributed(id);
        }
        Param::from_mapped_value(id, tensor, mapper)
    }
}
