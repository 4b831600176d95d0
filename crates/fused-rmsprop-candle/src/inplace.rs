//! How the update reaches candle's storage: in-place ops nested a bounded
//! number deep, each holding one variable's write lock.
//!
//! candle lends a tensor's storage mutably only inside an in-place custom op
//! ([`Tensor::inplace_op1`]), which holds that storage's write lock for the
//! duration of the op's `cpu_fwd`. To step many variables in one kernel
//! dispatch, the ops are nested: the op of the first variable, given its
//! storage, runs the op of the second inside it, and so on; the innermost one
//! holds a mutable slice of every variable of the batch at once and calls
//! [`fused_rmsprop::RmsProp::step_many`], which splits their work across
//! rayon's pool. Each nesting level costs a few stack frames, so a step cuts
//! its variables into batches of at most [`VARS_PER_DISPATCH`]: the stack
//! depth is bounded whatever the number of variables (the tests step 100,000
//! variables on a thread with a 256 KiB stack), at the price of one kernel
//! dispatch per batch.
//!
//! It is sound without `unsafe`: each slice is borrowed from a storage whose
//! write lock is held by an enclosing op for as long as the slice lives, and
//! the borrow checker sees that. No lock is taken twice: the caller
//! guarantees that no two variables share a storage (see `RmsProp::step`),
//! and [`step_all`] read-locks every gradient before the nesting starts,
//! copying (and letting go of) each one that shares a storage with a
//! variable of the step.

use std::borrow::Cow;
use std::cell::RefCell;

use candle_core::{CpuStorage, Layout, Tensor, Var};
use fused_rmsprop::{Execution, Group, Param, State, StateSlices, StepReport, Threads};
use rustc_hash::FxHashMap;

use crate::Result;
use crate::error::kernel_error;
use crate::kept_allocation::KeptAllocation;
use crate::storage::{CpuParam, buffer_key, cpu_slice, variable_slice_mut};

/// The most variables one nested dispatch holds: it bounds the stack a step
/// needs (each level of nesting costs a few stack frames; the tests step
/// 100,000 variables on a 256 KiB stack), and a step of many small
/// variables pays one kernel dispatch per batch of this many.
///
/// Not part of the API: public for the tests and benchmarks.
pub const VARS_PER_DISPATCH: usize = 32;

/// The variables of one dtype `T` to step: each one's index among the
/// optimizer's variables, the variable and its state, and beside them (in a
/// vector of their own, which the read locks borrow while the states are
/// lent to the kernel) its contiguous gradient, borrowed from the gradient
/// store or a copy.
pub(crate) struct Batch<'a, T: Param> {
    targets: Vec<(usize, &'a Var, &'a mut State<T::State>)>,
    grads: Vec<Cow<'a, Tensor>>,
}

/// The allocations of one dtype's step vectors, kept from step to step
/// (see [`KeptAllocation`]): the batch's two, and the locks and slices of its
/// gradients.
#[derive(Debug, Default)]
pub(crate) struct BatchAllocations {
    targets: KeptAllocation<[usize; 3]>,
    grads: KeptAllocation<[usize; 2]>,
    locks: KeptAllocation<[usize; 2]>,
    slices: KeptAllocation<[usize; 2]>,
}

impl<'a, T: CpuParam> Batch<'a, T> {
    /// An empty batch with room for `n` variables, in `spare`'s allocations.
    pub(crate) fn with_capacity(spare: &mut BatchAllocations, n: usize) -> Self {
        Self {
            targets: spare.targets.take(n),
            grads: spare.grads.take(n),
        }
    }

    pub(crate) fn push(
        &mut self,
        index: usize,
        var: &'a Var,
        grad: Cow<'a, Tensor>,
        state: &'a mut State<T::State>,
    ) {
        self.targets.push((index, var, state));
        self.grads.push(grad);
    }

    /// Each variable's index and its gradient's sum of squares (the
    /// kernel's, in its fixed order), for clipping by the norm of all the
    /// optimizer's gradients; with `skip_non_finite`, a gradient holding a
    /// NaN or an infinity is left out (its variable will be skipped).
    pub(crate) fn sums_of_squares(&self, skip_non_finite: bool) -> Result<Vec<(usize, f64)>> {
        let mut sums = Vec::with_capacity(self.grads.len());
        for ((index, ..), grad) in self.targets.iter().zip(&self.grads) {
            let (storage, layout) = grad.storage_and_layout();
            let slice = cpu_slice::<T>(&storage, layout)?;
            if skip_non_finite && fused_rmsprop::find_non_finite(slice).is_some() {
                continue;
            }
            sums.push((*index, fused_rmsprop::sum_of_squares(slice)));
        }
        Ok(sums)
    }

    /// The first gradient holding a NaN or an infinity: the variable's
    /// index and the element's.
    pub(crate) fn first_non_finite(&self) -> Result<Option<(usize, usize)>> {
        for ((index, ..), grad) in self.targets.iter().zip(&self.grads) {
            let (storage, layout) = grad.storage_and_layout();
            if let Some(at) = fused_rmsprop::find_non_finite(cpu_slice::<T>(&storage, layout)?) {
                return Ok(Some((*index, at)));
            }
        }
        Ok(None)
    }
}

/// Steps `batch` in nested in-place ops of at most [`VARS_PER_DISPATCH`]
/// variables; returns the indices of the variables skipped for a
/// non-finite gradient. Errors name the variable by its index among the
/// optimizer's.
///
/// Every gradient is read-locked before the first variable is
/// write-locked, and held so for the whole step. A gradient whose storage
/// is a key of `owners` (the storage of a variable of the step, its own or
/// another's) is copied under that read lock and the lock let go at once:
/// the step reads it as it was before the step, and never waits for a lock
/// it holds itself.
///
/// Under `NonFinite::Error` the caller has checked every gradient already
/// (a dispatch cannot see the next one's gradients before it writes).
/// `grad_scale`, when set, multiplies every gradient (clipping by a norm
/// the caller measured over all of them).
pub(crate) fn step_all<T: CpuParam>(
    (kernel, grad_scale): (&fused_rmsprop::RmsProp, Option<f64>),
    lr: f64,
    batch: Batch<'_, T>,
    owners: &FxHashMap<usize, usize>,
    spare: &mut BatchAllocations,
) -> Result<Vec<usize>> {
    let Batch { mut targets, grads } = batch;
    let mut skipped = Vec::new();
    if !targets.is_empty() {
        // `None` where the gradient was copied (into `copies`, in order).
        let mut locks = spare.locks.take(grads.len());
        let mut copies: Vec<Vec<T>> = Vec::new();
        for grad in &grads {
            let (storage, layout) = grad.storage_and_layout();
            if buffer_key(&storage).is_some_and(|key| owners.contains_key(&key)) {
                copies.push(cpu_slice::<T>(&storage, layout)?.to_vec());
                locks.push(None);
            } else {
                locks.push(Some((storage, layout)));
            }
        }
        let mut copied = copies.iter();
        let mut slices = spare.slices.take(locks.len());
        for lock in &locks {
            slices.push(match lock {
                Some((storage, layout)) => cpu_slice::<T>(storage, layout)?,
                None => copied.next().map(Vec::as_slice).unwrap_or_default(),
            });
        }
        let pending = targets
            .drain(..)
            .zip(slices.drain(..))
            .map(|((index, var, state), grad)| Pending {
                index,
                var,
                grad,
                state: &mut state.square_avg,
                grad_avg: state.grad_avg.as_deref_mut(),
                momentum_buf: state.momentum_buf.as_deref_mut(),
                master: state.master.as_deref_mut(),
                step: &mut state.step,
                grad_scale,
            });
        step_in_dispatches(kernel, lr, pending, &mut skipped)?;
        spare.slices.keep(slices);
        spare.locks.keep(locks);
    }
    spare.targets.keep(targets);
    spare.grads.keep(grads);
    Ok(skipped)
}

/// The most elements a dispatch stepped on one thread holds, and the size
/// from which a variable is stepped in dispatches the kernel spreads over
/// rayon's pool instead.
///
/// Why: a step of many variables, cut into dispatches of
/// [`VARS_PER_DISPATCH`] each spread over the pool, would end every dispatch
/// waiting for the slower thread of its split, and step a dispatch of small
/// variables on one thread while the others waited. Instead the dispatches
/// of smaller variables each run whole on one thread, several at once,
/// largest first, and only variables of this size or more are split. `cargo
/// run --release -p fused-rmsprop-benches --example many_tensors -- candle
/// 100` measures a step of the 2,000- and 150-tensor models against the
/// bare kernel's one `step_many`.
///
/// Not part of the API: public for the tests and benchmarks.
///
/// ```
/// use fused_rmsprop_candle::{ONE_THREAD_DISPATCH_ELEMENTS, VARS_PER_DISPATCH};
/// // Worth spreading over threads only when the kernel itself would.
/// assert!(ONE_THREAD_DISPATCH_ELEMENTS >= fused_rmsprop::PARALLEL_MIN_ELEMENTS);
/// assert!(VARS_PER_DISPATCH > 1);
/// ```
pub const ONE_THREAD_DISPATCH_ELEMENTS: usize = 1 << 20;

/// Steps `pending` in nested in-place ops of at most [`VARS_PER_DISPATCH`]
/// variables, pushing to `skipped` the indices of the variables skipped for
/// a non-finite gradient: variables of [`ONE_THREAD_DISPATCH_ELEMENTS`] or
/// more in dispatches spread over rayon's pool, one after the other; the
/// others in dispatches of at most that many elements, each on one thread,
/// several at once.
fn step_in_dispatches<'a, T: CpuParam>(
    kernel: &fused_rmsprop::RmsProp,
    lr: f64,
    pending: impl Iterator<Item = Pending<'a, T>>,
    skipped: &mut Vec<usize>,
) -> Result<()> {
    let mut spread: Vec<Pending<'a, T>> = Vec::new();
    let mut whole: Vec<(usize, Vec<Pending<'a, T>>)> = Vec::new();
    let mut open: (usize, Vec<Pending<'a, T>>) = (0, Vec::new());
    for p in pending {
        let len = p.grad.len();
        if len >= ONE_THREAD_DISPATCH_ELEMENTS {
            spread.push(p);
            continue;
        }
        if open.1.len() == VARS_PER_DISPATCH || open.0 + len > ONE_THREAD_DISPATCH_ELEMENTS {
            whole.push(std::mem::take(&mut open));
        }
        open.0 += len;
        open.1.push(p);
    }
    if !open.1.is_empty() {
        whole.push(open);
    }
    let mut spread = spread.into_iter();
    loop {
        let dispatch: Vec<Pending<'_, T>> = spread.by_ref().take(VARS_PER_DISPATCH).collect();
        if dispatch.is_empty() {
            break;
        }
        skipped.extend(step_dispatch(kernel, lr, dispatch)?);
    }
    // Largest first, so that the last dispatches to start are the shortest
    // and the threads finish together.
    whole.sort_by_key(|(elements, _)| std::cmp::Reverse(*elements));
    let one_thread = kernel
        .with_execution(Execution {
            threads: Threads::Single,
            ..kernel.execution()
        })
        .map_err(kernel_error)?;
    let mut outcomes: Vec<Option<Result<Vec<usize>>>> = Vec::new();
    outcomes.resize_with(whole.len(), || None);
    let tasks: Vec<_> = whole
        .into_iter()
        .map(|(_, dispatch)| dispatch)
        .zip(outcomes.iter_mut())
        .collect();
    fused_rmsprop::run_tasks(kernel.execution().linger, tasks, |(dispatch, outcome)| {
        *outcome = Some(step_dispatch(&one_thread, lr, dispatch));
    });
    for outcome in outcomes {
        let outcome = outcome
            .ok_or_else(|| candle_core::Error::msg("fused RMSprop: a dispatch did not run"))?;
        skipped.extend(outcome?);
    }
    Ok(())
}

/// Steps the variables of `dispatch` in one kernel call, inside their nested
/// in-place ops; returns the indices of those skipped for a non-finite
/// gradient.
fn step_dispatch<T: CpuParam>(
    kernel: &fused_rmsprop::RmsProp,
    lr: f64,
    dispatch: Vec<Pending<'_, T>>,
) -> Result<Vec<usize>> {
    let indices: Vec<usize> = dispatch.iter().map(|p| p.index).collect();
    let report = RefCell::new(Ok(StepReport::default()));
    nest(
        kernel,
        lr,
        dispatch.into_iter(),
        Vec::with_capacity(indices.len()),
        &mut Vec::with_capacity(indices.len()),
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

/// A variable whose storage is not locked yet, with its gradient and state.
struct Pending<'a, T: Param> {
    /// The variable's index among the optimizer's (its stochastic-rounding
    /// stream).
    index: usize,
    var: &'a Var,
    grad: &'a [T],
    state: &'a mut [T::State],
    grad_avg: Option<&'a mut [T::State]>,
    momentum_buf: Option<&'a mut [T::State]>,
    master: Option<&'a mut [T::State]>,
    step: &'a mut u64,
    /// The factor clipping by the global norm multiplies the gradient by.
    grad_scale: Option<f64>,
}

/// Locks the next pending variable's storage (through an in-place op) and
/// recurses inside it; with none left, steps every group at once.
fn nest<'a, T: CpuParam>(
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
struct NestedStep<'a, 'k, T: CpuParam> {
    payload: RefCell<Option<Payload<'a, 'k, T>>>,
    report: &'k ReportCell,
}

impl<T: CpuParam> candle_core::InplaceOp1 for NestedStep<'_, '_, T> {
    fn name(&self) -> &'static str {
        "fused-rmsprop-step"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let (kernel, lr, this, pending, mut groups, mut counters) = self
            .payload
            .borrow_mut()
            .take()
            .ok_or_else(|| candle_core::Error::msg("fused RMSprop: nested step ran twice"))?;
        let params = variable_slice_mut::<T>(storage, layout)?;
        let mut state = StateSlices::new(this.state);
        state.grad_avg = this.grad_avg;
        state.momentum_buf = this.momentum_buf;
        state.master = this.master;
        let mut group =
            Group::new(params, this.grad, state).with_rounding_key(*this.step, this.index as u64);
        if let Some(scale) = this.grad_scale {
            group = group.with_grad_scale(scale);
        }
        groups.push(group);
        counters.push(this.step);
        nest(kernel, lr, pending, groups, &mut counters, self.report)
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{align_of, size_of};

    use super::*;

    /// A [`KeptAllocation`] keeps an allocation only for items laid out like its
    /// stand-in (otherwise every step allocates again, silently).
    #[test]
    fn every_kept_vector_is_laid_out_like_its_stand_in() {
        fn same<T, W>() -> bool {
            size_of::<T>() == size_of::<W>() && align_of::<T>() == align_of::<W>()
        }
        assert!(same::<(usize, &Var, &mut State<f32>), [usize; 3]>());
        assert!(same::<(usize, &Var, &mut State<f64>), [usize; 3]>());
        assert!(same::<Cow<'_, Tensor>, [usize; 2]>());
        assert!(same::<
            Option<(candle_core::StorageRef<'_>, &Layout)>,
            [usize; 2],
        >());
        assert!(same::<&[f64], [usize; 2]>());
        assert!(same::<&[fused_rmsprop::bf16], [usize; 2]>());
    }
}
