//! [`RmsProp`]: the `candle_nn::Optimizer`, its variables and their state.

use std::borrow::Cow;
use std::collections::HashSet;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use candle_nn::Optimizer as _;
use fused_rmsprop::{NonFinite, bf16, f16};
use rustc_hash::FxHashMap;

use crate::error::kernel_error;
use crate::inplace::{Batch, BatchAllocations, step_all};
use crate::quantized::{self, GradCopy};
use crate::storage::storage_key;
use crate::tensor_ops::sum_of_squares;
use crate::var_state::{VarState, state_for};
use crate::{ParamsRmsProp, Result, TensorOpsRmsProp};

/// Which route steps a variable.
///
/// ```
/// use candle_core::{Device, Var};
/// use fused_rmsprop_candle::{ParamsRmsProp, RmsProp, Route};
/// let w = Var::new(&[1.0f32, 2.0], &Device::Cpu)?;
/// let opt = RmsProp::with_route(vec![w], ParamsRmsProp::default(), Route::TensorOps)?;
/// assert_eq!(opt.route(), Route::TensorOps);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Route {
    /// The fused kernel in place for CPU variables of dtype `f32`, `f64`,
    /// `bf16` or `f16`; the tensor-op formulation ([`TensorOpsRmsProp`]:
    /// same formula and options, one new tensor per op) for every other
    /// variable (CUDA, Metal, other float dtypes).
    #[default]
    Auto,
    /// Every variable through the tensor-op formulation (what `Auto` does
    /// off the CPU; on the CPU, for tests and comparisons).
    TensorOps,
}

/// RMSprop over candle `Var`s, stepped in place by the fused kernel.
///
/// Cost of a step: one pass over each variable's parameters, gradient and
/// state; one kernel dispatch per batch of variables of one dtype, a few
/// dozen variables or a million elements, whichever comes first (dispatches of smaller variables each on
/// one thread, several at once on rayon's pool; larger variables spread over
/// the pool by the kernel); a few vectors of slice descriptors and a map of
/// storage addresses (the aliasing check), about 120 bytes per variable,
/// whose allocations are kept from step to step (not freed and faulted back
/// in at each step). Besides them each dispatch allocates a few short
/// vectors (its variables, their slices and indices: a few hundred bytes
/// per variable), and the step one list of its dispatches; nothing else is
/// allocated, except a contiguous copy of a gradient that is not contiguous
/// or shares storage with a variable.
///
/// ```
/// use candle_core::{Device, Var};
/// use candle_nn::Optimizer;
/// use fused_rmsprop_candle::{ParamsRmsProp, RmsProp};
/// let v = Var::zeros(4, candle_core::DType::F64, &Device::Cpu)?;
/// let mut opt = RmsProp::new(vec![v], ParamsRmsProp::default())?;
/// opt.set_learning_rate(0.1);
/// assert_eq!(opt.learning_rate(), 0.1);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug)]
pub struct RmsProp {
    pub(crate) vars: Vec<(Var, VarState)>,
    pub(crate) params: ParamsRmsProp,
    pub(crate) kernel: fused_rmsprop::RmsProp,
    route: Route,
    /// The variables the in-place route cannot step, and their optimizer.
    fallback: Option<(Vec<Var>, TensorOpsRmsProp)>,
    last_skipped: Vec<Var>,
    /// The norm of the last step's gradients, under `max_grad_norm`.
    last_grad_norm: Option<f64>,
    /// The step's map from storage address to variable, kept for its
    /// allocation (cleared when a step starts).
    owners: FxHashMap<usize, usize>,
    /// How many variables of each dtype (in the order of
    /// [`VarState::kind`]): the room a step's batches need.
    kinds: [usize; 4],
    /// The allocations of each dtype's step vectors (in the order of
    /// [`VarState::kind`]), kept from step to step.
    spares: [BatchAllocations; 4],
}

/// A step's variables by dtype, each dtype stepped by one kernel call.
struct Batches<'a> {
    f32s: Batch<'a, f32>,
    f64s: Batch<'a, f64>,
    bf16s: Batch<'a, bf16>,
    f16s: Batch<'a, f16>,
}

impl Batches<'_> {
    /// Empty batches with room for `counts` variables, in `spares`'
    /// allocations (both in the order of [`VarState::kind`]).
    fn with_capacities(
        spares: &mut [BatchAllocations; 4],
        [f32s, f64s, bf16s, f16s]: [usize; 4],
    ) -> Self {
        let [s32, s64, sb16, sf16] = spares;
        Self {
            f32s: Batch::with_capacity(s32, f32s),
            f64s: Batch::with_capacity(s64, f64s),
            bf16s: Batch::with_capacity(sb16, bf16s),
            f16s: Batch::with_capacity(sf16, f16s),
        }
    }

    /// The first gradient of the batches (in the variables' order)
    /// holding a NaN or an infinity: the variable's index and the
    /// element's.
    fn first_non_finite(&self) -> Result<Option<(usize, usize)>> {
        Ok([
            self.f32s.first_non_finite()?,
            self.f64s.first_non_finite()?,
            self.bf16s.first_non_finite()?,
            self.f16s.first_non_finite()?,
        ]
        .into_iter()
        .flatten()
        .min())
    }
}

/// Whether the in-place route can step `var`.
fn in_place(var: &Var) -> bool {
    var.device().is_cpu()
        && matches!(
            var.dtype(),
            DType::F32 | DType::F64 | DType::BF16 | DType::F16
        )
}

impl candle_nn::Optimizer for RmsProp {
    type Config = ParamsRmsProp;

    /// [`RmsProp::with_route`] with [`Route::Auto`]: every float variable
    /// is stepped, in place where the kernel can, by tensor ops elsewhere.
    /// Errors: an invalid hyper-parameter (no variable is refused).
    fn new(vars: Vec<Var>, params: ParamsRmsProp) -> Result<Self> {
        Self::with_route(vars, params, Route::Auto)
    }

    /// Steps every variable that has a gradient in `grads`; the others are
    /// left alone. Everything is checked first (gradient shape, dtype and
    /// device, the learning rate, two variables sharing one storage, and under
    /// [`NonFinite::Error`] every gradient's values): on error nothing is
    /// written.
    ///
    /// A gradient that shares storage with a variable of this optimizer (its
    /// own or another's, as in `grads.insert(w, w.clone())`) is copied first,
    /// so the step reads the gradient as it was before the step and never
    /// waits on a lock it holds itself.
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let lr = self.params.lr;
        fused_rmsprop::Hyper::validate(&self.kernel.hyper().with_lr(lr)).map_err(kernel_error)?;
        // One visit per variable before any storage is written (with 100,000
        // variables their metadata no longer fits in cache, so each visit
        // costs misses, and so does every byte of the step's own vectors):
        // its gradient checked and made contiguous, its storage's key (a
        // read lock taken and let go). Each variable's storage is
        // write-locked once, so no two may share one. The keys are
        // addresses: Fx hashing, not SipHash (no untrusted keys); the map's
        // table is kept from step to step.
        let owners = &mut self.owners;
        owners.clear();
        // Each variable goes straight to its dtype's batch, whose vectors
        // are allocated once, at that dtype's number of variables.
        let mut batches = Batches::with_capacities(&mut self.spares, self.kinds);
        let mut empty = Vec::new();
        // Variables with 8-bit state, each with a copy of its gradient.
        let mut eight_bit = Vec::new();
        for (index, (var, state)) in self.vars.iter_mut().enumerate() {
            let Some(grad) = grads.get(var) else { continue };
            check_grad("variable", index, var, grad)?;
            if let Some(key) = storage_key(var.as_tensor())
                && let Some(other) = owners.insert(key, index)
            {
                return Err(candle_core::Error::msg(format!(
                    "fused RMSprop: variables {other} and {index} share one storage; \
                     each variable must own its storage to be stepped in place"
                )));
            }
            if var.elem_count() == 0 {
                // Nothing to lock or compute; the step still counts.
                empty.push(state);
                continue;
            }
            // A contiguous gradient is read where it is (borrowed from the
            // store: no reference count touched, none dropped at the end of
            // the step); any other is copied to a contiguous tensor of its
            // own. Whether it shares storage with a variable is seen when
            // its dtype's batch read-locks it, with every variable's storage
            // known by then.
            let grad = if grad.is_contiguous() {
                Cow::Borrowed(grad)
            } else {
                Cow::Owned(grad.contiguous()?)
            };
            match state {
                VarState::F32(s) => batches.f32s.push(index, var, grad, s),
                VarState::F64(s) => batches.f64s.push(index, var, grad, s),
                VarState::BF16(s) => batches.bf16s.push(index, var, grad, s),
                VarState::F16(s) => batches.f16s.push(index, var, grad, s),
                VarState::Quantized(s) => {
                    let copy = GradCopy::of(&grad, s)?;
                    eight_bit.push((index, &*var, copy, s));
                }
            }
        }
        if self.params.non_finite == NonFinite::Error {
            let first_eight_bit = eight_bit
                .iter()
                .find_map(|(index, _, grad, _)| grad.first_non_finite().map(|at| (*index, at)));
            let first = [batches.first_non_finite()?, first_eight_bit]
                .into_iter()
                .flatten()
                .min();
            if let Some((group, index)) = first {
                return Err(kernel_error(fused_rmsprop::Error::NonFiniteGradient {
                    group,
                    index,
                }));
            }
        }
        // The tensor-op route's gradients, checked before anything is written.
        let mut skipped = Vec::new();
        let fallback_grads = match &self.fallback {
            None => None,
            Some((vars, _)) => Some(fallback_grads(
                vars,
                grads,
                self.params.non_finite,
                &mut skipped,
            )?),
        };

        let grad_scale = match self.params.max_grad_norm {
            None => None,
            Some(max) => {
                let skip = self.params.non_finite == NonFinite::Skip;
                let eight_bit_sums = eight_bit
                    .iter()
                    .filter(|(_, _, grad, _)| !(skip && grad.first_non_finite().is_some()))
                    .map(|(index, _, grad, _)| (*index, grad.sum_of_squares()))
                    .collect();
                let norm = global_norm(
                    &batches,
                    eight_bit_sums,
                    self.params.non_finite,
                    &self.fallback,
                    &fallback_grads,
                )?;
                self.last_grad_norm = Some(norm);
                fused_rmsprop::global_clip_scale(max, norm)
            }
        };
        let fallback_grads = match (fallback_grads, grad_scale, &self.fallback) {
            (Some(fallback_grads), Some(scale), Some((vars, _))) => {
                Some(scaled(vars, &fallback_grads, scale)?)
            }
            (fallback_grads, ..) => fallback_grads,
        };

        // One kernel call per dtype (one parameter type per call).
        // A gradient shares storage only with variables of its own dtype (a
        // storage has one), so each batch's copies are made before that
        // batch, or any other, writes the variable they copy.
        let [s32, s64, sb16, sf16] = &mut self.spares;
        let owners = &*owners;
        let kernel = &self.kernel;
        let kernel = (kernel, grad_scale);
        let mut in_place_skipped = step_all(kernel, lr, batches.f32s, owners, s32)?;
        in_place_skipped.extend(step_all(kernel, lr, batches.f64s, owners, s64)?);
        in_place_skipped.extend(step_all(kernel, lr, batches.bf16s, owners, sb16)?);
        in_place_skipped.extend(step_all(kernel, lr, batches.f16s, owners, sf16)?);
        for (index, var, grad, state) in eight_bit {
            if quantized::step((kernel.0, lr, grad_scale), index, var, &grad, state)? {
                in_place_skipped.push(index);
            }
        }
        in_place_skipped.sort_unstable();
        for state in empty {
            *state.step_mut() += 1;
        }
        if let (Some((_, optimizer)), Some(fallback_grads)) = (&mut self.fallback, fallback_grads) {
            optimizer.set_learning_rate(lr);
            optimizer.step(&fallback_grads)?;
        }
        let mut last: Vec<Var> = in_place_skipped
            .into_iter()
            .map(|i| self.vars[i].0.clone())
            .collect();
        last.extend(skipped);
        self.last_skipped = last;
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }
}

/// The L2 norm of every gradient of the step, for `max_grad_norm`: the
/// in-place variables' sums of squares (the kernel's, bit-reproducible)
/// added in the order of the variables, then the tensor-op route's. Under
/// [`NonFinite::Skip`] a gradient holding a NaN or an infinity is left out
/// (its variable is skipped); otherwise a NaN makes the norm NaN, and with
/// it every clipped gradient, as in PyTorch.
fn global_norm(
    batches: &Batches<'_>,
    eight_bit_sums: Vec<(usize, f64)>,
    non_finite: NonFinite,
    fallback: &Option<(Vec<Var>, TensorOpsRmsProp)>,
    fallback_grads: &Option<GradStore>,
) -> Result<f64> {
    let skip = non_finite == NonFinite::Skip;
    let mut sums = batches.f32s.sums_of_squares(skip)?;
    sums.extend(batches.f64s.sums_of_squares(skip)?);
    sums.extend(batches.bf16s.sums_of_squares(skip)?);
    sums.extend(batches.f16s.sums_of_squares(skip)?);
    sums.extend(eight_bit_sums);
    sums.sort_unstable_by_key(|(index, _)| *index);
    let mut sums: Vec<f64> = sums.into_iter().map(|(_, sum)| sum).collect();
    if let (Some((vars, _)), Some(grads)) = (fallback, fallback_grads) {
        for var in vars {
            if let Some(grad) = grads.get(var) {
                sums.push(sum_of_squares(grad)?);
            }
        }
    }
    Ok(fused_rmsprop::grad_norm(&sums))
}

/// `grads` of `vars`, each multiplied by `scale`.
fn scaled(vars: &[Var], grads: &GradStore, scale: f64) -> Result<GradStore> {
    let mut out = GradStore::default();
    for var in vars {
        if let Some(grad) = grads.get(var) {
            out.insert(var.as_tensor(), (grad * scale)?);
        }
    }
    Ok(out)
}

/// An error unless `grad` has the shape, dtype and device of `var` (`what`
/// `index` names the variable in the message). Checked for every variable
/// before any is written: a gradient on another device would otherwise be
/// found only when its dtype's batch is reached, after another dtype's batch
/// was written.
fn check_grad(what: &str, index: usize, var: &Var, grad: &Tensor) -> Result<()> {
    if grad.shape() == var.shape()
        && grad.dtype() == var.dtype()
        && grad.device().same_device(var.device())
    {
        return Ok(());
    }
    Err(candle_core::Error::msg(format!(
        "fused RMSprop: gradient of {what} {index} is {:?} {:?} on {:?}, the variable is {:?} {:?} on {:?}",
        grad.dtype(),
        grad.shape(),
        grad.device().location(),
        var.dtype(),
        var.shape(),
        var.device().location(),
    )))
}

/// The gradients of the tensor-op route's variables, checked (shape, dtype
/// and device; under [`NonFinite::Error`] and [`NonFinite::Skip`] their values,
/// with one reduction each: `sum(g * 0)` is NaN exactly when `g` holds a NaN
/// or an infinity). A skipped variable's gradient is left out and the
/// variable pushed to `skipped`.
fn fallback_grads(
    vars: &[Var],
    grads: &GradStore,
    non_finite: NonFinite,
    skipped: &mut Vec<Var>,
) -> Result<GradStore> {
    let mut kept = GradStore::default();
    for (index, var) in vars.iter().enumerate() {
        let Some(grad) = grads.get(var) else { continue };
        check_grad("tensor-op variable", index, var, grad)?;
        if non_finite != NonFinite::Propagate {
            let poisoned = (grad * 0.0)?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?
                .is_nan();
            if poisoned && non_finite == NonFinite::Error {
                return Err(candle_core::Error::msg(format!(
                    "fused RMSprop: the gradient of tensor-op variable {index} holds a NaN or an infinity"
                )));
            }
            if poisoned {
                skipped.push(var.clone());
                continue;
            }
        }
        kept.insert(var.as_tensor(), grad.clone());
    }
    Ok(kept)
}

impl RmsProp {
    /// The variables the last step left untouched because their gradient
    /// held a NaN or an infinity (only under [`NonFinite::Skip`]).
    ///
    /// ```
    /// use candle_core::{Device, Var};
    /// use candle_nn::Optimizer;
    /// use fused_rmsprop::NonFinite;
    /// use fused_rmsprop_candle::{ParamsRmsProp, RmsProp};
    ///
    /// let w = Var::new(&[1.0f32, 2.0], &Device::Cpu)?;
    /// let params = ParamsRmsProp { non_finite: NonFinite::Skip, ..Default::default() };
    /// let mut opt = RmsProp::new(vec![w.clone()], params)?;
    /// let loss = (w.as_tensor().sqr()?.sum_all()? * f64::INFINITY)?;
    /// opt.backward_step(&loss)?;
    /// assert_eq!(opt.last_skipped().len(), 1);
    /// assert_eq!(w.to_vec1::<f32>()?, [1.0, 2.0]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn last_skipped(&self) -> Vec<&Var> {
        self.last_skipped.iter().collect()
    }

    /// An optimizer over `vars` on `route`: with [`Route::Auto`] the CPU
    /// variables of dtype `f32`, `f64`, `bf16` and `f16` are stepped in
    /// place by the kernel and every other float variable by the tensor-op
    /// formulation; with [`Route::TensorOps`] all of them by tensor ops.
    /// Integer variables are skipped; a variable listed twice is kept once.
    ///
    /// Checkpoints ([`RmsProp::save`]) hold the in-place route's state; the
    /// tensor-op route's variables start afresh after a load.
    ///
    /// # Errors
    /// An invalid hyper-parameter.
    ///
    /// ```
    /// use candle_core::{Device, Var};
    /// use candle_nn::Optimizer;
    /// use fused_rmsprop_candle::{ParamsRmsProp, RmsProp, Route};
    /// let w = Var::new(&[1.0f32, 2.0], &Device::Cpu)?;
    /// let mut opt = RmsProp::with_route(vec![w.clone()], ParamsRmsProp::default(), Route::TensorOps)?;
    /// opt.backward_step(&w.as_tensor().sqr()?.sum_all()?)?;
    /// assert!(w.to_vec1::<f32>()?[0] < 1.0);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn with_route(vars: Vec<Var>, params: ParamsRmsProp, route: Route) -> Result<Self> {
        params.check_clipping().map_err(kernel_error)?;
        let hyper = params.hyper();
        let kernel = fused_rmsprop::RmsProp::new(hyper).map_err(kernel_error)?;
        let mut seen = HashSet::new();
        let (in_place_vars, other): (Vec<Var>, Vec<Var>) = vars
            .into_iter()
            .filter(|v| v.dtype().is_float() && seen.insert(v.id()))
            .partition(|v| route == Route::Auto && in_place(v));
        let vars = in_place_vars
            .into_iter()
            .enumerate()
            .map(|(i, v)| state_for(&v, i, &hyper).map(|s| (v, s)))
            .collect::<Result<Vec<_>>>()?;
        let mut kinds = [0; 4];
        vars.iter()
            .filter_map(|(_, state)| state.kind())
            .for_each(|kind| kinds[kind] += 1);
        let fallback = if other.is_empty() {
            None
        } else {
            // The norm covers every variable: this optimizer measures it
            // and hands the tensor-op route gradients already scaled.
            let optimizer = TensorOpsRmsProp::new(
                other.clone(),
                ParamsRmsProp {
                    max_grad_norm: None,
                    ..params
                },
            )?;
            Some((other, optimizer))
        };
        Ok(Self {
            vars,
            params,
            kernel,
            route,
            fallback,
            last_skipped: Vec::new(),
            last_grad_norm: None,
            owners: FxHashMap::default(),
            kinds,
            spares: Default::default(),
        })
    }

    /// The route this optimizer was built with.
    ///
    /// ```
    /// # use candle_nn::Optimizer;
    /// # use fused_rmsprop_candle::{ParamsRmsProp, RmsProp, Route};
    /// assert_eq!(RmsProp::new(vec![], ParamsRmsProp::default())?.route(), Route::Auto);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn route(&self) -> Route {
        self.route
    }

    /// How many variables the tensor-op route steps (the others are stepped
    /// in place).
    ///
    /// ```
    /// # use candle_core::{Device, Var};
    /// # use candle_nn::Optimizer;
    /// # use fused_rmsprop_candle::{ParamsRmsProp, RmsProp};
    /// let w = Var::new(&[1.0f32], &Device::Cpu)?;
    /// assert_eq!(RmsProp::new(vec![w], ParamsRmsProp::default())?.tensor_op_vars(), 0);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn tensor_op_vars(&self) -> usize {
        self.fallback.as_ref().map_or(0, |(vars, _)| vars.len())
    }

    /// The hyper-parameters.
    ///
    /// ```
    /// # use candle_nn::Optimizer;
    /// # use fused_rmsprop_candle::{ParamsRmsProp, RmsProp};
    /// let opt = RmsProp::new(vec![], ParamsRmsProp::default())?;
    /// assert_eq!(opt.params().alpha, 0.99);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn params(&self) -> &ParamsRmsProp {
        &self.params
    }

    /// Under [`ParamsRmsProp::max_grad_norm`], the L2 norm of all the last
    /// step's gradients before clipping (what PyTorch's `clip_grad_norm_`
    /// returns, for a training loop to log); `None` before the first step
    /// or without `max_grad_norm`.
    ///
    /// ```
    /// use candle_core::{Device, Var};
    /// use candle_nn::Optimizer;
    /// use fused_rmsprop_candle::{ParamsRmsProp, RmsProp};
    /// let w = Var::new(&[3.0f32, 4.0], &Device::Cpu)?;
    /// let params = ParamsRmsProp { max_grad_norm: Some(1.0), ..Default::default() };
    /// let mut opt = RmsProp::new(vec![w.clone()], params)?;
    /// assert_eq!(opt.last_grad_norm(), None);
    /// opt.backward_step(&(w.as_tensor().sqr()?.sum_all()? * 0.5)?)?; // gradient = w
    /// assert_eq!(opt.last_grad_norm(), Some(5.0));
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn last_grad_norm(&self) -> Option<f64> {
        self.last_grad_norm
    }

    /// The same optimizer on another path of the kernel: a forced
    /// instruction set or thread count, or how long the pool's helpers stay
    /// after a threaded step ([`Linger`](crate::Linger); the process
    /// default unless set). Every path writes the same bits.
    ///
    /// # Errors
    /// The kernel's [`UnsupportedIsa`](crate::KernelError::UnsupportedIsa),
    /// wrapped, when a forced instruction set is missing.
    ///
    /// ```
    /// # use candle_nn::Optimizer;
    /// use fused_rmsprop_candle::{Execution, Linger, ParamsRmsProp, RmsProp};
    /// let quiet = Execution { linger: Linger::Off, ..Execution::default() };
    /// let opt = RmsProp::new(vec![], ParamsRmsProp::default())?.with_execution(quiet)?;
    /// assert_eq!(opt.execution().linger, Linger::Off);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn with_execution(mut self, execution: fused_rmsprop::Execution) -> Result<Self> {
        self.kernel = self
            .kernel
            .with_execution(execution)
            .map_err(kernel_error)?;
        Ok(self)
    }

    /// The kernel's path ([`RmsProp::with_execution`]).
    ///
    /// ```
    /// # use candle_nn::Optimizer;
    /// use fused_rmsprop_candle::{Execution, ParamsRmsProp, RmsProp};
    /// let opt = RmsProp::new(vec![], ParamsRmsProp::default())?;
    /// assert_eq!(opt.execution(), Execution::default());
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn execution(&self) -> fused_rmsprop::Execution {
        self.kernel.execution()
    }
}
