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
//! candle lends a tensor's storage mutably only inside an in-place custom op,
//! which holds that storage's write lock while it runs. The optimizer nests
//! these ops, one per variable, a bounded number deep; the
//! innermost holds every variable of the batch at once and steps them in one
//! kernel dispatch. The stack depth is bounded whatever the number of
//! variables; no `unsafe` is involved (the argument is in `src/inplace.rs`).
//! Large variables (a million elements or more) are stepped in dispatches
//! the kernel spreads over rayon's pool; the others in dispatches of at most
//! that many elements, each on one thread, several at once.
//! Before any lock is held, a step checks that no two variables share a
//! storage (an error) and copies any gradient that shares a storage with a
//! variable of the optimizer (its own or another's), so a step never waits on
//! a lock it holds itself.
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
//! # Dtypes
//! `f32` and `f64` variables keep their state in their own dtype; `bf16` and
//! `f16` variables are stepped in place by the kernel's 16-bit step, with
//! `f32` state owned by the optimizer (6 bytes per element for plain
//! RMSprop: 2 for the variable and 4 for the square average). Their rounding
//! back to 16 bits is [`ParamsRmsProp::rounding`]: to nearest even, or
//! stochastically for `bf16` (each variable draws its own bits, keyed by the
//! seed, its index in the optimizer and its step count);
//! [`ParamsRmsProp::master_weights`] keeps an `f32` copy of each 16-bit
//! variable (4 more bytes per element). A model with variables of several
//! dtypes is stepped one kernel call per dtype, every gradient checked
//! before any is written.
//!
//! # Gradient clipping
//! candle has no clipping of its own; [`ParamsRmsProp::clip_value`] clamps
//! each gradient element inside the step (PyTorch's `clip_grad_value_`, no
//! extra traffic) and [`ParamsRmsProp::max_grad_norm`] scales every gradient
//! by `min(1, max / (norm + 1e-6))`, `norm` the L2 norm of all the
//! optimizer's gradients together (PyTorch's `clip_grad_norm_`): one more
//! read of the gradients, the norm summed in the kernel's fixed order, so
//! it has the same bits however the step is cut into dispatches.
//! [`RmsProp::last_grad_norm`] returns it for logging.
//!
//! # Threads
//! Large variables are stepped on rayon's pool, and dispatches of small
//! ones run several at once on it. After a step the pool's helpers stay
//! awake for a while ([`Linger`], 1 ms by default) so that the next step
//! does not wake them; the cost is up to `pool - 1` cores busy for that
//! long. [`RmsProp::with_execution`] sets it per optimizer,
//! [`set_default_linger`] or `FUSED_RMSPROP_LINGER_US=0` for the process.
//!
//! # One dependency
//! Every type [`ParamsRmsProp`] and [`RmsProp::with_execution`] need is
//! re-exported here ([`Rounding`], [`NonFinite`], [`EpsPlacement`],
//! [`Execution`], [`Linger`], [`KernelError`], ...), so this crate is the one
//! to add beside candle.
//!
//! # Other devices and dtypes
//! [`TensorOpsRmsProp`] is the same update written with candle tensor ops:
//! it runs wherever candle runs (CUDA, Metal), one new tensor per
//! operation, computing 16-bit variables in `f32` as the fused optimizer
//! does, and is what the fused optimizer is measured and tested against.
//! [`RmsProp`] steps with it every variable the in-place route cannot take
//! (a variable on CUDA or Metal, a float dtype the kernel has no step for),
//! so no variable is refused ([`Route`]; [`RmsProp::with_route`] forces the
//! tensor-op route, which is how the tests reach it on the CPU). On that
//! route stochastic rounding is not available (16-bit variables round to
//! nearest), checkpoints do not hold its state, and a step that fails in a
//! tensor op (a device error) may come after the in-place variables were
//! written. Integer variables are skipped, as candle's own optimizers skip
//! them.

mod checkpoint;
mod error;
mod inplace;
mod kept_allocation;
mod optimizer;
mod params;
mod quantized;
mod storage;
mod tensor_ops;
mod var_state;

// What a user names to fill `ParamsRmsProp` or choose a path, re-exported
// from the kernel so that this crate is the one dependency to add.
/// The kernel's error, whose message this crate's errors carry
/// ([`candle_core::Error::Wrapped`] around it).
pub use fused_rmsprop::Error as KernelError;
pub use fused_rmsprop::{
    EpsPlacement, Execution, Isa, Kernel, Linger, NonFinite, QuantMap, Rounding, StateFormat,
    Threads, bf16, default_linger, f16, set_default_linger,
};
#[doc(hidden)]
pub use inplace::{ONE_THREAD_DISPATCH_ELEMENTS, VARS_PER_DISPATCH};
pub use optimizer::{RmsProp, Route};
pub use params::ParamsRmsProp;
pub use tensor_ops::TensorOpsRmsProp;

/// Errors are candle's: this crate's own failures are wrapped in
/// [`candle_core::Error::Wrapped`] around a [`fused_rmsprop::Error`], or are
/// [`candle_core::Error::Msg`] naming the variable and what was wrong.
pub type Result<T> = candle_core::Result<T>;
