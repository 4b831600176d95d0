//! RMSprop for candle: a [`candle_nn::Optimizer`] that updates every `Var`
//! in place with the fused kernel of [`fused_rmsprop`], all parameters in one
//! parallel dispatch.
//!
//! ```
//! use candle_core::{DType, Device, Tensor, Var};
//! use candle_nn::Optimizer;
//! use fused_rmsprop_candle::{ParamsRmsProp, RmsProp};
//!
//! let w = Var::new(&[1.0f32, 2.0, 3.0], &Device::Cpu)?;
//! let mut opt = RmsProp::new(vec![w.clone()], ParamsRmsProp { lr: 0.01, ..Default::default() })?;
//! let loss = w.as_tensor().sqr()?.sum_all()?;
//! opt.backward_step(&loss)?;
//! let after: Vec<f32> = w.to_vec1()?;
//! assert!(after.iter().zip([1.0, 2.0, 3.0]).all(|(a, b)| *a < b));
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! # How the update reaches the storage
//!
//! candle lends a tensor's storage mutably only inside an in-place custom op
//! ([`Tensor::inplace_op1`](candle_core::Tensor::inplace_op1)), which holds
//! that storage's write lock for the duration of the op's `cpu_fwd`. To step
//! every variable in one dispatch, the optimizer nests these ops: the op of
//! the first variable, given its storage, runs the op of the second inside
//! it, and so on; the innermost one holds a mutable slice of every variable
//! at once and calls [`fused_rmsprop::RmsProp::step_many`], which splits the
//! work of all of them across rayon's pool. It is sound without `unsafe`:
//! each slice is borrowed from a storage whose write lock is held by an
//! enclosing op for as long as the slice lives, and the borrow checker sees
//! that. Variables are deduplicated by id, so no lock is taken twice.
//! Gradients are read under read locks taken before the nesting starts.
//!
//! The optimizer's state (square average, gradient average, momentum buffer)
//! lives in `Vec`s the optimizer owns, one set per variable: no candle tensor
//! is created, and nothing is copied, in a step of contiguous `f32`/`f64`
//! variables with contiguous gradients.
//!
//! # When a step copies
//! A non-contiguous gradient (a variable used through a transpose gets one)
//! is made contiguous first: one copy of that gradient. Variables are never
//! copied: candle creates every `Var` contiguous (`Var::from_tensor` copies
//! a strided tensor into fresh storage, and `Var::set` itself refuses a
//! non-contiguous variable), so the in-place route always applies.
//!
//! # Other devices and dtypes
//! [`TensorOpsRmsProp`] is the same update written with candle tensor ops:
//! it runs wherever candle runs (CUDA, Metal, bf16, f16), one new tensor per
//! operation, and is what the fused optimizer is measured and tested against.
//!
//! # What it refuses
//! Variables on CUDA or Metal, and variables of dtype other than `f32` and
//! `f64` (bf16, f16), are refused by [`RmsProp::new`](candle_nn::Optimizer::new) with an error naming
//! the variable; the kernel has no mixed-precision step yet. Integer
//! variables are skipped, as candle's own optimizers skip them.

mod tensor_ops;

/// The non-finite gradient policy and the eps placement, re-exported from the kernel.
pub use fused_rmsprop::{EpsPlacement, NonFinite};
pub use tensor_ops::TensorOpsRmsProp;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Layout, Storage, Tensor, Var};
use fused_rmsprop::{Float, Group, Hyper, State, StepReport, WeightDecay};

/// Errors are candle's: this crate's own failures are wrapped in
/// [`candle_core::Error::Wrapped`] around a [`fused_rmsprop::Error`], or are
/// [`candle_core::Error::Msg`] naming the variable and what was wrong.
pub type Result<T> = candle_core::Result<T>;

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
    /// (PyTorch), skip that variable (see [`RmsProp::last_skipped`]), or
    /// return an error and write nothing.
    pub non_finite: NonFinite,
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
        }
    }
}

/// A float type candle stores in a `CpuStorage` that the kernel steps.
trait CpuFloat: Float + candle_core::WithDType {
    fn slice(storage: &CpuStorage) -> Option<&[Self]>;
    fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [Self]>;
}

impl CpuFloat for f32 {
    fn slice(storage: &CpuStorage) -> Option<&[Self]> {
        if let CpuStorage::F32(v) = storage {
            Some(v)
        } else {
            None
        }
    }
    fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [Self]> {
        if let CpuStorage::F32(v) = storage {
            Some(v)
        } else {
            None
        }
    }
}

impl CpuFloat for f64 {
    fn slice(storage: &CpuStorage) -> Option<&[Self]> {
        if let CpuStorage::F64(v) = storage {
            Some(v)
        } else {
            None
        }
    }
    fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [Self]> {
        if let CpuStorage::F64(v) = storage {
            Some(v)
        } else {
            None
        }
    }
}

/// One variable's state, in the variable's dtype.
#[derive(Clone, Debug, PartialEq)]
enum VarState {
    F32(State<f32>),
    F64(State<f64>),
}

/// RMSprop over candle `Var`s, stepped in place by the fused kernel.
///
/// Cost of a step: one pass over each variable's parameters, gradient and
/// state; one dispatch to rayon's pool for all `f32` variables and one for
/// all `f64` ones (or none, when the total is below
/// [`fused_rmsprop::PARALLEL_MIN_ELEMENTS`]); a few small vectors of slice
/// descriptors. No tensor is allocated.
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
    vars: Vec<(Var, VarState)>,
    params: ParamsRmsProp,
    kernel: fused_rmsprop::RmsProp,
    last_skipped: Vec<usize>,
}

fn kernel_error(e: fused_rmsprop::Error) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

fn state_for(var: &Var, index: usize, hyper: &Hyper) -> Result<VarState> {
    if !var.device().is_cpu() {
        return Err(candle_core::Error::msg(format!(
            "fused RMSprop: variable {index} is on {:?}; only CPU variables are supported",
            var.device().location()
        )));
    }
    let n = var.elem_count();
    match var.dtype() {
        DType::F32 => Ok(VarState::F32(State::new(n, hyper))),
        DType::F64 => Ok(VarState::F64(State::new(n, hyper))),
        other => Err(candle_core::Error::msg(format!(
            "fused RMSprop: variable {index} has dtype {other:?}; only f32 and f64 are supported"
        ))),
    }
}

impl candle_nn::Optimizer for RmsProp {
    type Config = ParamsRmsProp;

    /// Validates the hyper-parameters and makes zeroed state for every float
    /// variable (integer ones are skipped; a variable listed twice is kept
    /// once). Errors: an invalid hyper-parameter, a variable not on the CPU,
    /// a float variable that is not `f32` or `f64`.
    fn new(vars: Vec<Var>, params: ParamsRmsProp) -> Result<Self> {
        let hyper = params.hyper();
        let kernel = fused_rmsprop::RmsProp::new(hyper).map_err(kernel_error)?;
        let mut seen = HashSet::new();
        let vars = vars
            .into_iter()
            .filter(|v| v.dtype().is_float() && seen.insert(v.id()))
            .enumerate()
            .map(|(i, v)| state_for(&v, i, &hyper).map(|s| (v, s)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            vars,
            params,
            kernel,
            last_skipped: Vec::new(),
        })
    }

    /// Steps every variable that has a gradient in `grads`; the others are
    /// left alone. Everything is checked first (gradient shape and dtype,
    /// the learning rate): on error nothing is written.
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let lr = self.params.lr;
        // Gradients, contiguous, checked against their variables.
        let mut entries = Vec::new();
        for (index, (var, state)) in self.vars.iter_mut().enumerate() {
            let Some(grad) = grads.get(var) else { continue };
            if grad.shape() != var.shape() || grad.dtype() != var.dtype() {
                return Err(candle_core::Error::msg(format!(
                    "fused RMSprop: gradient of variable {index} is {:?} {:?}, the variable is {:?} {:?}",
                    grad.dtype(),
                    grad.shape(),
                    var.dtype(),
                    var.shape()
                )));
            }
            entries.push((index, &*var, grad.contiguous()?, state));
        }
        fused_rmsprop::Hyper::validate(&self.kernel.hyper().with_lr(lr)).map_err(kernel_error)?;

        let (mut f32s, mut f64s) = (Vec::new(), Vec::new());
        for (index, var, grad, state) in entries {
            match state {
                VarState::F32(s) => f32s.push((index, var, grad, s)),
                VarState::F64(s) => f64s.push((index, var, grad, s)),
            }
        }
        // Under `NonFinite::Error` the kernel checks each dispatch before it
        // writes; with two dtypes there are two dispatches, so check the
        // second one's gradients before the first writes anything.
        if self.params.non_finite == NonFinite::Error && !f32s.is_empty() {
            for (index, _, grad, _) in &f64s {
                let poisoned = (grad * 0.0)?.sum_all()?.to_scalar::<f64>()?;
                if poisoned.is_nan() {
                    return Err(kernel_error(fused_rmsprop::Error::NonFiniteGradient {
                        group: *index,
                        index: 0,
                    }));
                }
            }
        }
        let mut skipped = step_all(&self.kernel, lr, f32s)?;
        skipped.extend(step_all(&self.kernel, lr, f64s)?);
        skipped.sort_unstable();
        self.last_skipped = skipped;
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }
}

/// One variable to step: its index among the optimizer's variables, the
/// variable, its contiguous gradient, its state.
type Entry<'a, T> = (usize, &'a Var, Tensor, &'a mut State<T>);

/// Steps `entries` (all of dtype `T`) in one nested in-place dispatch;
/// returns the indices of the variables skipped for a non-finite gradient.
/// Errors name the variable by its index among the optimizer's.
fn step_all<T: CpuFloat>(
    kernel: &fused_rmsprop::RmsProp,
    lr: f64,
    entries: Vec<Entry<'_, T>>,
) -> Result<Vec<usize>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let indices: Vec<usize> = entries.iter().map(|e| e.0).collect();
    let (targets, grads): (Vec<_>, Vec<_>) =
        entries.into_iter().map(|(_, v, g, s)| ((v, s), g)).unzip();
    // Read locks on every gradient, held for the whole step.
    let guards: Vec<_> = grads.iter().map(Tensor::storage_and_layout).collect();
    let mut grad_slices = Vec::with_capacity(guards.len());
    for (guard, layout) in &guards {
        grad_slices.push(cpu_slice::<T>(guard, layout)?);
    }
    let pending: Vec<Pending<'_, T>> = targets
        .into_iter()
        .zip(grad_slices)
        .map(|((var, state), grad)| Pending {
            var,
            grad,
            state: &mut state.square_avg,
            grad_avg: state.grad_avg.as_deref_mut(),
            momentum_buf: state.momentum_buf.as_deref_mut(),
            step: &mut state.step,
        })
        .collect();
    let mut counters = Vec::new();
    let report = RefCell::new(Ok(StepReport::default()));
    nest(
        kernel,
        lr,
        pending.into_iter(),
        Vec::new(),
        &mut counters,
        &report,
    )?;
    match report.into_inner() {
        Ok(report) => Ok(report.skipped().iter().map(|&g| indices[g]).collect()),
        Err(fused_rmsprop::Error::NonFiniteGradient { group, index }) => {
            Err(kernel_error(fused_rmsprop::Error::NonFiniteGradient {
                group: indices[group],
                index,
            }))
        }
        Err(err) => Err(kernel_error(err)),
    }
}

/// Where the innermost nested op leaves the kernel's answer.
type ReportCell = RefCell<std::result::Result<StepReport, fused_rmsprop::Error>>;

/// The contiguous slice of a CPU tensor's storage that its layout covers.
fn cpu_slice<'s, T: CpuFloat>(storage: &'s Storage, layout: &Layout) -> Result<&'s [T]> {
    let Storage::Cpu(cpu) = storage else {
        return Err(candle_core::Error::msg(
            "fused RMSprop: tensor is not on the CPU",
        ));
    };
    let data = T::slice(cpu).ok_or_else(|| {
        candle_core::Error::msg(format!("fused RMSprop: expected {:?} storage", T::DTYPE))
    })?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::msg("fused RMSprop: tensor is not contiguous"))?;
    data.get(start..end)
        .ok_or_else(|| candle_core::Error::msg("fused RMSprop: layout outside its storage"))
}

/// A variable whose storage is not locked yet, with its gradient and state.
struct Pending<'a, T> {
    var: &'a Var,
    grad: &'a [T],
    state: &'a mut [T],
    grad_avg: Option<&'a mut [T]>,
    momentum_buf: Option<&'a mut [T]>,
    step: &'a mut u64,
}

/// Locks the next pending variable's storage (through an in-place op) and
/// recurses inside it; with none left, steps every group at once.
fn nest<'a, T: CpuFloat>(
    kernel: &fused_rmsprop::RmsProp,
    lr: f64,
    mut pending: std::vec::IntoIter<Pending<'a, T>>,
    groups: Vec<Group<'a, T>>,
    counters: &mut Vec<&'a mut u64>,
    report: &ReportCell,
) -> Result<()> {
    let Some(next) = pending.next() else {
        let result = kernel.step_many(lr, groups);
        if let Ok(r) = &result {
            for (group, step) in counters.iter_mut().enumerate() {
                if !r.is_skipped(group) {
                    **step += 1;
                }
            }
        }
        *report.borrow_mut() = result;
        return Ok(());
    };
    let var = next.var;
    let op = NestedStep {
        payload: RefCell::new(Some((
            kernel,
            lr,
            next,
            pending,
            groups,
            std::mem::take(counters),
        ))),
        report,
    };
    var.inplace_op1(&op)
}

type Payload<'a, 'k, T> = (
    &'k fused_rmsprop::RmsProp,
    f64,
    Pending<'a, T>,
    std::vec::IntoIter<Pending<'a, T>>,
    Vec<Group<'a, T>>,
    Vec<&'a mut u64>,
);

/// The in-place op that holds one variable's storage while the rest nest.
struct NestedStep<'a, 'k, T> {
    payload: RefCell<Option<Payload<'a, 'k, T>>>,
    report: &'k ReportCell,
}

impl<T: CpuFloat> candle_core::InplaceOp1 for NestedStep<'_, '_, T> {
    fn name(&self) -> &'static str {
        "fused-rmsprop-step"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let (kernel, lr, this, pending, mut groups, mut counters) = self
            .payload
            .borrow_mut()
            .take()
            .ok_or_else(|| candle_core::Error::msg("fused RMSprop: nested step ran twice"))?;
        let data = T::slice_mut(storage).ok_or_else(|| {
            candle_core::Error::msg(format!("fused RMSprop: expected {:?} storage", T::DTYPE))
        })?;
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::msg("fused RMSprop: variable is not contiguous"))?;
        let params = data
            .get_mut(start..end)
            .ok_or_else(|| candle_core::Error::msg("fused RMSprop: layout outside its storage"))?;
        let mut state = fused_rmsprop::StateSlices::new(this.state);
        state.grad_avg = this.grad_avg;
        state.momentum_buf = this.momentum_buf;
        groups.push(Group::new(params, this.grad, state));
        counters.push(this.step);
        nest(kernel, lr, pending, groups, &mut counters, self.report)
    }
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
        self.last_skipped.iter().map(|&i| &self.vars[i].0).collect()
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

    /// Saves the state of every variable as safetensors: `{i}.square_avg`,
    /// `{i}.grad_avg`, `{i}.momentum_buf` (each in the variable's shape and
    /// dtype) and `{i}.step`, where `i` is the variable's position in the
    /// list given to [`RmsProp::new`](candle_nn::Optimizer::new). A restart that builds the optimizer
    /// from the same model's variables loads it back.
    ///
    /// ```
    /// # use candle_core::{Device, Var};
    /// # use candle_nn::Optimizer;
    /// # use fused_rmsprop_candle::{ParamsRmsProp, RmsProp};
    /// let v = Var::ones(3, candle_core::DType::F32, &Device::Cpu)?;
    /// let mut opt = RmsProp::new(vec![v.clone()], ParamsRmsProp::default())?;
    /// opt.backward_step(&v.as_tensor().sum_all()?)?;
    /// let path = std::env::temp_dir().join("fused-rmsprop-doc-state.safetensors");
    /// opt.save(&path)?;
    /// let mut restored = RmsProp::new(vec![v], ParamsRmsProp::default())?;
    /// restored.load(&path)?;
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut tensors = HashMap::new();
        for (i, (var, state)) in self.vars.iter().enumerate() {
            let shape = var.shape();
            let cpu = &candle_core::Device::Cpu;
            match state {
                VarState::F32(s) => insert_state(&mut tensors, i, shape, s, cpu)?,
                VarState::F64(s) => insert_state(&mut tensors, i, shape, s, cpu)?,
            }
        }
        candle_core::safetensors::save(&tensors, path)
    }

    /// Loads state written by [`RmsProp::save`]. Every tensor is checked
    /// first (names, shapes, dtypes, no missing or extra names); on any
    /// mismatch, or a file that does not parse, it returns an error and the
    /// live state is untouched.
    ///
    /// See [`RmsProp::save`] for an example.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let bytes = std::fs::read(path)?;
        self.load_bytes(&bytes)
    }

    /// Loads state from the bytes of a file [`RmsProp::save`] wrote, with the
    /// checks of [`RmsProp::load`]: on any error the live state is untouched.
    ///
    /// ```
    /// use candle_core::{Device, Var};
    /// use candle_nn::Optimizer;
    /// use fused_rmsprop_candle::{ParamsRmsProp, RmsProp};
    ///
    /// let w = Var::new(&[1.0f32, 2.0], &Device::Cpu)?;
    /// let mut opt = RmsProp::new(vec![w], ParamsRmsProp::default())?;
    /// assert!(opt.load_bytes(b"not safetensors").is_err());
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn load_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let mut tensors = candle_core::safetensors::load_buffer(bytes, &candle_core::Device::Cpu)?;
        let hyper = self.kernel.hyper();
        let mut loaded = Vec::with_capacity(self.vars.len());
        for (i, (var, state)) in self.vars.iter().enumerate() {
            loaded.push(match state {
                VarState::F32(_) => VarState::F32(take_state(&mut tensors, i, var, hyper)?),
                VarState::F64(_) => VarState::F64(take_state(&mut tensors, i, var, hyper)?),
            });
        }
        if let Some(extra) = tensors.keys().min() {
            return Err(candle_core::Error::msg(format!(
                "fused RMSprop: the state file has {extra:?}, which no variable of this optimizer owns"
            )));
        }
        for ((_, state), new) in self.vars.iter_mut().zip(loaded) {
            *state = new;
        }
        Ok(())
    }
}

fn insert_state<T: CpuFloat>(
    tensors: &mut HashMap<String, Tensor>,
    i: usize,
    shape: &candle_core::Shape,
    s: &State<T>,
    cpu: &candle_core::Device,
) -> Result<()> {
    tensors.insert(
        format!("{i}.square_avg"),
        Tensor::from_slice(&s.square_avg, shape, cpu)?,
    );
    if let Some(ga) = &s.grad_avg {
        tensors.insert(format!("{i}.grad_avg"), Tensor::from_slice(ga, shape, cpu)?);
    }
    if let Some(b) = &s.momentum_buf {
        tensors.insert(
            format!("{i}.momentum_buf"),
            Tensor::from_slice(b, shape, cpu)?,
        );
    }
    tensors.insert(format!("{i}.step"), Tensor::new(&[s.step as i64], cpu)?);
    Ok(())
}

fn take_state<T: CpuFloat>(
    tensors: &mut HashMap<String, Tensor>,
    i: usize,
    var: &Var,
    hyper: &Hyper,
) -> Result<State<T>> {
    let mut take = |name: &str, needed: bool| -> Result<Option<Vec<T>>> {
        let key = format!("{i}.{name}");
        match (tensors.remove(&key), needed) {
            (None, false) => Ok(None),
            (None, true) => Err(candle_core::Error::msg(format!(
                "fused RMSprop: the state file lacks {key:?}"
            ))),
            (Some(_), false) => Err(candle_core::Error::msg(format!(
                "fused RMSprop: the state file has {key:?}, which these hyper-parameters do not use"
            ))),
            (Some(t), true) if t.shape() != var.shape() || t.dtype() != T::DTYPE => {
                Err(candle_core::Error::msg(format!(
                    "fused RMSprop: {key:?} is {:?} {:?}, expected {:?} {:?}",
                    t.dtype(),
                    t.shape(),
                    T::DTYPE,
                    var.shape()
                )))
            }
            (Some(t), true) => Ok(Some(t.flatten_all()?.to_vec1::<T>()?)),
        }
    };
    let square_avg = take("square_avg", true)?.unwrap_or_default();
    let grad_avg = take("grad_avg", hyper.needs_grad_avg())?;
    let momentum_buf = take("momentum_buf", hyper.needs_momentum_buf())?;
    let key = format!("{i}.step");
    let step = match tensors.remove(&key) {
        Some(t) if t.dtype() == DType::I64 && t.elem_count() == 1 => {
            t.flatten_all()?.to_vec1::<i64>()?[0]
        }
        Some(_) => {
            return Err(candle_core::Error::msg(format!(
                "fused RMSprop: {key:?} is not one i64"
            )));
        }
        None => {
            return Err(candle_core::Error::msg(format!(
                "fused RMSprop: the state file lacks {key:?}"
            )));
        }
    };
    Ok(State {
        square_avg,
        grad_avg,
        momentum_buf,
        step: u64::try_from(step)
            .map_err(|_| candle_core::Error::msg(format!("fused RMSprop: {key:?} is negative")))?,
    })
}
