//! A fused RMSprop optimizer step over slices: one pass over memory per step,
//! hand-vectorized, multi-threaded, and bit-identical on every path.
//!
//! ```
//! use fused_rmsprop::{Hyper, RmsProp, State};
//!
//! let opt = RmsProp::new(Hyper::default().with_lr(0.01).with_momentum(0.9))?;
//! let mut params = vec![1.0f32, -2.0, 3.0];
//! let mut state = State::new(params.len(), opt.hyper());
//! let grads = [0.1f32, -0.2, 0.0];
//! opt.step(&mut params, &grads, &mut state)?;
//! // First step from v = 0: v = 0.01 g², so every non-zero gradient moves its
//! // parameter by lr / sqrt(0.01) = 0.1 (up to eps) against the gradient's sign.
//! assert!((params[0] - 0.9).abs() < 1e-6);
//! assert!((params[1] + 1.9).abs() < 1e-6);
//! assert_eq!(params[2], 3.0);
//! # Ok::<(), fused_rmsprop::Error>(())
//! ```
//!
//! # What a step does
//!
//! PyTorch's `torch.optim.RMSprop` (which Burn follows), with Optax's and
//! Keras's variations as options: the formula is on [`Hyper`]. Each element's
//! parameter, gradient and state are read once and written once (the
//! gradient only read): 20 bytes per `f32` element for plain RMSprop, 28 with
//! momentum, 36 centered with momentum ([`Hyper::bytes_per_element`]). A step
//! never allocates, except one small vector of task descriptors when it runs
//! on several threads.
//!
//! # The paths
//!
//! - **scalar** (`src/scalar.rs`): the specification, one element at a time,
//!   written to be read.
//! - **SIMD** (`src/simd.rs`): the same operations on a register of lanes,
//!   written once over pulp's `Simd` trait and dispatched at run time to
//!   AVX-512, AVX2, NEON or a portable fallback ([`Isa`]). The elements that
//!   do not fill a register go through the scalar specification itself.
//! - **threaded** (`src/parallel.rs`): rayon's global pool, used from
//!   16K elements per call (below that, a second thread costs more than it
//!   saves). A call made from outside the pool (a training loop stepping one
//!   tensor at a time) has the calling thread work beside the pool instead
//!   of sleeping until the pool is done. [`RmsProp::step_many`] steps many
//!   tensors in one dispatch, split across threads by size.
//!
//! [`Execution`] forces a path and a thread count.
//!
//! # Lingering helpers: the one process-wide policy
//!
//! After a threaded call from outside the pool, `pool - 1` of rayon's
//! threads stay awake for a while ([`DEFAULT_LINGER`], 1 ms), polling for
//! the next call, so that a framework calling the kernel once per tensor
//! does not wake a sleeping thread for every tensor. Meanwhile they run any
//! other rayon work there is; what they cost is up to `pool - 1` cores busy
//! for the linger time after the last call. [`Linger`] in [`Execution`]
//! sets it per optimizer; [`set_default_linger`] or the environment
//! variable `FUSED_RMSPROP_LINGER_US` (microseconds, `0` for off) for the
//! process.
//!
//! # Mixed precision: `bf16` and `f16` parameters
//!
//! Every entry point is generic over the parameter type ([`Param`]): `f32`
//! and `f64` keep their state in their own type; [`bf16`] and [`f16`](struct@f16)
//! parameters and gradients keep `f32` state. Each 16-bit element is widened
//! to `f32` (exact), stepped with the `f32` formula and constants, and
//! rounded back ([`Rounding`]): to nearest even (the default; `half`'s
//! `from_f32`, NaN canonical), or stochastically for `bf16` (keyed by seed,
//! step, stream and element index, so every path writes the same bits). With
//! [`Hyper::master_weights`] the state also keeps an `f32` copy of the
//! parameters, which the step updates and rounds into the parameter.
//!
//! ```
//! use fused_rmsprop::{bf16, Hyper, RmsProp, Rounding, State};
//! let hyper = Hyper::default().with_rounding(Rounding::Stochastic { seed: 1 });
//! let opt = RmsProp::new(hyper)?;
//! let mut params = vec![bf16::from_f32(1.0); 4];
//! let mut state = State::for_params(&params, &hyper); // f32 state
//! opt.step(&mut params, &[bf16::from_f32(0.5); 4], &mut state)?;
//! assert!(params.iter().all(|p| p.to_f32() < 1.0));
//! # Ok::<(), fused_rmsprop::Error>(())
//! ```
//!
//! Memory and traffic per element (plain RMSprop): `f32` 8 bytes kept, 20
//! moved; `bf16`/`f16` 6 kept (2 parameter + 4 square average), 14 moved
//! (read 2 + 2 + 4, write 2 + 4); with master weights 10 kept, 20 moved (the
//! parameter is written, no longer read). Centered and momentum add 4 bytes
//! kept and 8 moved each, as for `f32`. Fewer bytes make a 16-bit step
//! faster in DRAM, up to the rate at which the cores' divide and square-root
//! units get through one of each per element (on CPUs without AVX-512 that
//! bound comes first). `cargo run --release -p fused-rmsprop-benches --bin
//! compare` prints each 16-bit step against a skeleton loop with its loads
//! and stores, and `--example in_cache` the rate per core in cache. One call
//! steps one parameter type: a model with tensors of several types makes one
//! [`RmsProp::step_many`] call per type (the adapters do).
//!
//! # Gradient clipping
//!
//! [`Hyper::grad_clip`] clips the gradient as the step reads it, before
//! anything else touches it ([`GradClip`]): by value (each element clamped,
//! no extra traffic), by each tensor's norm (Burn's `Norm`), or by the norm
//! of all the tensors of one [`RmsProp::step_many`] call (PyTorch's
//! `clip_grad_norm_`). Clipping by norm reads the gradients once more
//! before the step; the norm has the same bits on every path and thread
//! count, and the [`StepReport`] returns it ([`StepReport::grad_norm`]).
//!
//! ```
//! use fused_rmsprop::{GradClip, Group, Hyper, RmsProp, StateSlices};
//! let opt = RmsProp::new(Hyper::default().with_grad_clip(Some(GradClip::NormGlobal(1.0))))?;
//! let (mut w, mut b) = (vec![0.0f32; 2], vec![0.0f32; 1]);
//! let (mut vw, mut vb) = (vec![0.0f32; 2], vec![0.0f32; 1]);
//! let report = opt.step_many(0.01, [
//!     Group::new(&mut w, &[3.0, 0.0], StateSlices::new(&mut vw)),
//!     Group::new(&mut b, &[4.0], StateSlices::new(&mut vb)),
//! ])?;
//! assert_eq!(report.grad_norm(), Some(5.0)); // log it as clip_grad_norm_'s return value
//! # Ok::<(), fused_rmsprop::Error>(())
//! ```
//!
//! # The numerics contract
//!
//! Every path — scalar, SIMD with each instruction set, threaded with any
//! thread count, single-tensor or multi-tensor — writes **bit-identical**
//! parameters and state for every hyper-parameter combination, every input
//! bit pattern (NaN, ±Inf, ±0, subnormals, huge values), every length, and
//! any alignment of the slices. It holds by construction, not by tolerance:
//!
//! - every path performs the same sequence of IEEE-754 operations per
//!   element (add, subtract, multiply, divide, square root, each correctly
//!   rounded), with the constants (`1 - alpha`, `1 - lr * wd`) computed once
//!   per step and shared;
//! - **no path uses FMA**. A fused multiply-add rounds once where a multiply
//!   and an add round twice, so it must be used everywhere or nowhere. FMA
//!   everywhere would make the scalar path call `fmaf` for every element on
//!   a build without FMA in its target features (the default `x86_64`
//!   target), many times slower; FMA nowhere costs the vector paths nothing
//!   measurable, since the step is bound by memory bandwidth or by the
//!   square-root/divide unit, not by multiply-add throughput;
//! - no reciprocal or reciprocal-square-root estimates, no flush-to-zero:
//!   subnormals are computed as IEEE says;
//! - **every NaN written is the canonical quiet NaN** ([`Param::CANONICAL_NAN`],
//!   `0x7FC0_0000` for `f32`). Which NaN an IEEE operation returns when both
//!   operands are NaN depends on operand order, which the compiler is free to
//!   commute; canonicalizing the outputs (one compare and one blend per
//!   written value) makes that invisible. A NaN in the inputs still flows into
//!   the outputs exactly where the formula puts it; only its payload is fixed.
//!
//! For 16-bit parameters the contract extends unchanged: the SIMD path does
//! the widening and rounding in vector registers, with integer and `f32`
//! lane operations that the tests hold equal to `half` on all 65,536 bit
//! patterns (widening) and on every value near each of them (rounding), on
//! every instruction set; `f16` and `bf16` outputs that are NaN are the
//! canonical `0x7E00` and `0x7FC0`. `f16` uses the hardware's conversions
//! where it has them: AVX-512's in the registers, and under AVX2 F16C's, a
//! block of 256 elements at a time into `f32` buffers (pulp's AVX2 path has
//! no F16C; run-time detected, the lane conversions remain for a CPU
//! without it). The same tests hold those equal to `half` too.
//!
//! The tests (`tests/paths.rs`, `tests/half_paths.rs`) check the contract with proptest on arbitrary
//! bit patterns and realistic values, every variant, lengths 0 to a few
//! thousand and unaligned sub-slices, for every instruction set the machine
//! has.
//!
//! # Errors
//!
//! Every step validates everything first — hyper-parameters, the learning
//! rate, every length, the presence of the state buffers the variant needs —
//! and returns an [`Error`] before writing anything. Nothing in the crate
//! panics on bad input.

#![deny(unsafe_code)]

mod blockwise8;
mod config;
mod element;
mod error;
mod execution;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod f16c;
mod finite;
mod half_lanes;
mod linger;
mod norm;
mod parallel;
mod param;
#[allow(unsafe_code)]
mod prefetch;
mod quant_guess;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod quant_lanes;
mod quant_map;
mod rounding;
mod scalar;
mod simd;
mod simd_half;
mod state;
mod step;
#[allow(unsafe_code)]
mod streaming;
#[cfg(feature = "proptest")]
pub mod testing;
#[cfg(target_arch = "x86_64")]
mod token;

pub use blockwise8::{
    BLOCK_ELEMENTS, Blockwise8Group, Blockwise8Slices, Blockwise8State, MIN_8BIT_ELEMENTS,
    Quantized, QuantizedSlices, StateFormat,
};
pub use config::{EpsPlacement, GradClip, Hyper, NonFinite, Rounding, WeightDecay};
pub use element::Float;
pub use error::Error;
pub use execution::{Execution, Isa, Kernel, Threads};
/// The 16-bit float types the kernel steps, re-exported from `half`.
pub use half::{bf16, f16};
pub use linger::{DEFAULT_LINGER, LINGER_ENV, Linger, default_linger, set_default_linger};
pub use norm::GRAD_NORM_BLOCK;
// Work-splitting internals, public for the benchmarks and the candle
// adapter only: hidden from the docs, not part of the API.
#[doc(hidden)]
pub use parallel::{PARALLEL_MIN_ELEMENTS, TASK_ALIGN_ELEMENTS, TASKS_PER_THREAD, run_tasks};
pub use param::Param;
pub use quant_map::QuantMap;
pub use state::{State, StateSlices};

use execution::ResolvedKernel;

/// The sum of the squares of `xs`, in `f64`, in the order clipping by norm
/// uses ([`GradClip`]): the same bits on every CPU, path and thread count
/// (a NaN sum is the canonical NaN). Threaded for long slices. An adapter that steps a model in several
/// calls adds these sums over all its gradients (in a fixed order), takes
/// the square root and scales each gradient with
/// [`Group::with_grad_scale`], which is what [`GradClip::NormGlobal`] does
/// within one call.
///
/// ```
/// assert_eq!(fused_rmsprop::sum_of_squares(&[3.0f32, 4.0]), 25.0);
/// ```
pub fn sum_of_squares<P: Param>(xs: &[P]) -> f64 {
    norm::sums_of_squares(&[xs], Threads::Auto)[0]
}

/// The L2 norm of several tensors from their [`sum_of_squares`], added in
/// the order given; a NaN norm is the canonical one. With the sums in a
/// fixed order, the same bits on every path: what [`GradClip::NormGlobal`]
/// computes within one call, for an adapter that measures the sums over
/// several.
///
/// ```
/// assert_eq!(fused_rmsprop::grad_norm(&[9.0, 16.0]), 5.0);
/// ```
pub fn grad_norm(sums_of_squares: &[f64]) -> f64 {
    norm::norm(sums_of_squares.iter().fold(0.0, |total, sum| total + sum))
}

/// The factor clipping by a global norm multiplies every gradient by,
/// PyTorch's `clip_grad_norm_` rule `max_norm / (norm + 1e-6)`, or `None`
/// when that is 1 or more (nothing is clipped); a NaN norm gives the
/// canonical NaN (every gradient becomes NaN, as in PyTorch). What
/// [`GradClip::NormGlobal`] applies within one call, for an adapter that
/// measures the norm over several with [`grad_norm`] and passes the factor
/// to [`Group::with_grad_scale`].
///
/// ```
/// assert_eq!(fused_rmsprop::global_clip_scale(1.0, 0.5), None);
/// let scale = fused_rmsprop::global_clip_scale(2.0, 4.0).unwrap();
/// assert!((scale - 0.5).abs() < 1e-6);
/// assert!(fused_rmsprop::global_clip_scale(1.0, f64::NAN).unwrap().is_nan());
/// ```
pub fn global_clip_scale(max_norm: f64, norm: f64) -> Option<f64> {
    norm::clip_scale(max_norm, norm, 1e-6)
}

/// The index of the first NaN or infinity in `xs`, or `None` when every
/// element is finite: the check behind [`NonFinite::Error`], for callers that
/// must check gradients before a step of several dispatches writes anything.
/// One vectorized read-only pass (threaded for long slices); a second,
/// scalar pass only to find the index once one is known to exist.
///
/// ```
/// assert_eq!(fused_rmsprop::find_non_finite(&[1.0f32, 2.0]), None);
/// assert_eq!(fused_rmsprop::find_non_finite(&[1.0f32, f32::INFINITY]), Some(1));
/// ```
pub fn find_non_finite<T: Param>(xs: &[T]) -> Option<usize> {
    if finite::all_finite(xs, Threads::Auto) {
        None
    } else {
        finite::first_non_finite(xs)
    }
}
use step::{Chunk, Coefficients};

/// What a step did beyond updating: which tensors it skipped under
/// [`NonFinite::Skip`], and under clipping by norm ([`GradClip`]) the
/// gradients' norms before clipping and the coefficient applied.
///
/// ```
/// use fused_rmsprop::{Hyper, NonFinite, RmsProp, State};
/// let opt = RmsProp::new(Hyper::default().with_non_finite(NonFinite::Skip))?;
/// let mut p = [1.0f32, 2.0];
/// let mut s = State::new(2, opt.hyper());
/// let report = opt.step(&mut p, &[0.5, f32::NAN], &mut s)?;
/// assert_eq!(report.skipped(), &[0]);
/// assert_eq!(p, [1.0, 2.0]);
/// assert_eq!(s.step, 0);
/// # Ok::<(), fused_rmsprop::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct StepReport {
    skipped: Vec<usize>,
    /// Under clipping by norm: each group's norm (`None` for a group
    /// skipped before it was measured), by group index.
    group_grad_norms: Vec<Option<f64>>,
    grad_norm: Option<f64>,
    clip_coefficient: Option<f64>,
}

/// Reports are equal when they skipped the same groups and hold the same
/// bits in every norm and coefficient (a NaN norm equals itself: every path
/// writes the same canonical NaN).
impl PartialEq for StepReport {
    fn eq(&self, other: &Self) -> bool {
        let bits = |x: &Option<f64>| x.map(f64::to_bits);
        self.skipped == other.skipped
            && self.group_grad_norms.len() == other.group_grad_norms.len()
            && self
                .group_grad_norms
                .iter()
                .zip(&other.group_grad_norms)
                .all(|(a, b)| bits(a) == bits(b))
            && bits(&self.grad_norm) == bits(&other.grad_norm)
            && bits(&self.clip_coefficient) == bits(&other.clip_coefficient)
    }
}

impl StepReport {
    /// The groups (indices into the step's groups; 0 for a single tensor)
    /// left untouched because their gradient held a NaN or an infinity.
    ///
    /// ```
    /// assert!(fused_rmsprop::StepReport::default().skipped().is_empty());
    /// ```
    pub fn skipped(&self) -> &[usize] {
        &self.skipped
    }

    /// Whether group `group` was skipped.
    ///
    /// ```
    /// assert!(!fused_rmsprop::StepReport::default().is_skipped(0));
    /// ```
    pub fn is_skipped(&self, group: usize) -> bool {
        self.skipped.contains(&group)
    }

    /// Under clipping by norm, the L2 norm of all the step's gradients
    /// together, before clipping (what PyTorch's `clip_grad_norm_`
    /// returns); groups skipped for a non-finite gradient are not in it.
    /// `None` when the step does not clip by norm.
    ///
    /// ```
    /// use fused_rmsprop::{GradClip, Hyper, RmsProp, State};
    /// let opt = RmsProp::new(Hyper::default().with_grad_clip(Some(GradClip::NormPerTensor(10.0))))?;
    /// let mut s = State::new(2, opt.hyper());
    /// let report = opt.step(&mut [0.0f32; 2], &[6.0, 8.0], &mut s)?;
    /// assert_eq!(report.grad_norm(), Some(10.0));
    /// # Ok::<(), fused_rmsprop::Error>(())
    /// ```
    pub fn grad_norm(&self) -> Option<f64> {
        self.grad_norm
    }

    /// Under clipping by norm, group `group`'s own gradient norm before
    /// clipping; `None` otherwise, or when the group was skipped.
    ///
    /// ```
    /// assert_eq!(fused_rmsprop::StepReport::default().group_grad_norm(0), None);
    /// ```
    pub fn group_grad_norm(&self, group: usize) -> Option<f64> {
        self.group_grad_norms.get(group).copied().flatten()
    }

    /// Under [`GradClip::NormGlobal`], the factor every gradient was
    /// multiplied by: `min(1, max_norm / (grad_norm + 1e-6))` (1.0 when
    /// nothing was clipped). `None` otherwise.
    ///
    /// ```
    /// assert_eq!(fused_rmsprop::StepReport::default().clip_coefficient(), None);
    /// ```
    pub fn clip_coefficient(&self) -> Option<f64> {
        self.clip_coefficient
    }
}

/// The RMSprop optimizer: validated hyper-parameters and the path to run.
///
/// Cheap to copy; holds no buffers. State lives in a [`State`] per parameter
/// (or in the caller's own buffers, through [`StateSlices`]).
///
/// ```
/// use fused_rmsprop::{Hyper, RmsProp, State};
/// let opt = RmsProp::new(Hyper::default().with_centered(true))?;
/// let mut p = vec![0.5f64; 10];
/// let mut s = State::new(10, opt.hyper());
/// for _ in 0..3 {
///     opt.step(&mut p, &[1.0; 10], &mut s)?;
/// }
/// assert_eq!(s.step, 3);
/// assert!(p.iter().all(|&x| x < 0.5));
/// # Ok::<(), fused_rmsprop::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct RmsProp {
    hyper: Hyper,
    execution: Execution,
    kernel: ResolvedKernel,
}

/// One parameter tensor of a multi-tensor step: its parameters, gradients
/// and state, as slices; for stochastic rounding, its step number and stream.
///
/// ```
/// use fused_rmsprop::{Group, StateSlices};
/// let (mut p, g, mut v) = (vec![1.0f32; 4], vec![0.1f32; 4], vec![0.0f32; 4]);
/// let group = Group::new(&mut p, &g, StateSlices::new(&mut v));
/// # let _ = group;
/// ```
#[derive(Debug)]
pub struct Group<'a, P: Param> {
    /// The parameters, updated in place (or written, when `source` is set).
    pub params: &'a mut [P],
    /// Where the step reads the parameters' values, when not from `params`
    /// (see [`Group::with_source`]); `None` by default.
    pub source: Option<&'a [P]>,
    /// The gradients, read only.
    pub grads: &'a [P],
    /// The state, updated in place.
    pub state: StateSlices<'a, P::State>,
    /// The step number that keys [`Rounding::Stochastic`]'s random bits
    /// (pass the state's step count, so each step draws new bits); 0 by
    /// default. Unused when rounding to nearest.
    pub step: u64,
    /// Which tensor, for [`Rounding::Stochastic`]: tensors stepped with the
    /// same seed and step number draw independent bits when their streams
    /// differ (an adapter passes the parameter's index); 0 by default.
    pub stream: u64,
    /// A factor the gradient is multiplied by as the step reads it (see
    /// [`Group::with_grad_scale`]); `None` by default.
    pub grad_scale: Option<f64>,
}

impl<'a, P: Param> Group<'a, P> {
    /// Bundles one tensor's slices.
    ///
    /// ```
    /// # use fused_rmsprop::{Group, StateSlices};
    /// let (mut p, mut v) = ([0.0f64; 1], [0.0f64; 1]);
    /// let _ = Group::new(&mut p, &[1.0], StateSlices::new(&mut v));
    /// ```
    pub fn new(params: &'a mut [P], grads: &'a [P], state: StateSlices<'a, P::State>) -> Self {
        Self {
            params,
            source: None,
            grads,
            state,
            step: 0,
            stream: 0,
            grad_scale: None,
        }
    }

    /// An out-of-place step: the parameters' values are read from `source`
    /// and the results written to `params`, whose contents the step never
    /// reads. For a parameter whose own buffer is shared and must not be
    /// written: one pass instead of copying `source` into `params` first,
    /// with the same bits as that copy followed by an in-place step. The
    /// state is still updated in place. `source` must have the parameters'
    /// length ([`Error::LengthMismatch`] with buffer `"source"`). A step
    /// that writes nothing (an error, or this group skipped for a
    /// non-finite gradient under [`NonFinite::Skip`]) leaves `params` as it
    /// was, not a copy of `source`.
    ///
    /// ```
    /// # use fused_rmsprop::{Group, Hyper, RmsProp, StateSlices};
    /// let opt = RmsProp::new(Hyper::default())?;
    /// let shared = [1.0f32, -1.0];
    /// let (mut out, mut v) = ([0.0f32; 2], [0.0f32; 2]);
    /// let group = Group::new(&mut out, &[0.5, -0.5], StateSlices::new(&mut v)).with_source(&shared);
    /// opt.step_many(0.01, [group])?;
    /// assert!(out[0] < 1.0 && out[1] > -1.0);
    /// # Ok::<(), fused_rmsprop::Error>(())
    /// ```
    #[must_use]
    pub fn with_source(mut self, source: &'a [P]) -> Self {
        self.source = Some(source);
        self
    }

    /// Multiplies the gradient by `scale` as the step reads it (in the state
    /// type, after clipping by value): clipping by a norm the caller
    /// measured over more than one call, as an adapter that steps a model
    /// in several dispatches does with [`sum_of_squares`]. Clipping by norm
    /// of the step itself ([`GradClip::NormPerTensor`],
    /// [`GradClip::NormGlobal`]) replaces it.
    ///
    /// ```
    /// # use fused_rmsprop::{Group, Hyper, RmsProp, StateSlices};
    /// let opt = RmsProp::new(Hyper::default().with_alpha(0.0))?;
    /// let (mut p, mut v) = ([0.0f32; 1], [0.0f32; 1]);
    /// opt.step_many(0.01, [Group::new(&mut p, &[4.0], StateSlices::new(&mut v)).with_grad_scale(0.5)])?;
    /// assert_eq!(v[0], 4.0); // (4 * 0.5)²
    /// # Ok::<(), fused_rmsprop::Error>(())
    /// ```
    #[must_use]
    pub fn with_grad_scale(mut self, scale: f64) -> Self {
        self.grad_scale = Some(scale);
        self
    }

    /// Sets the step number and stream that key stochastic rounding.
    ///
    /// ```
    /// # use fused_rmsprop::{Group, StateSlices};
    /// let (mut p, mut v) = ([0.0f32; 1], [0.0f32; 1]);
    /// let g = Group::new(&mut p, &[1.0], StateSlices::new(&mut v)).with_rounding_key(3, 1);
    /// assert_eq!((g.step, g.stream), (3, 1));
    /// ```
    #[must_use]
    pub fn with_rounding_key(mut self, step: u64, stream: u64) -> Self {
        self.step = step;
        self.stream = stream;
        self
    }
}

impl RmsProp {
    /// An optimizer with `hyper` (validated) on the default path: SIMD with
    /// the widest instruction set, threads from 16K elements per call
    /// ([`Threads::Auto`]), the process default [`Linger`].
    ///
    /// # Errors
    /// [`Error::InvalidHyper`] for the first invalid field.
    ///
    /// ```
    /// # use fused_rmsprop::{Hyper, RmsProp};
    /// assert!(RmsProp::new(Hyper::default().with_momentum(1.0)).is_err());
    /// ```
    pub fn new(hyper: Hyper) -> Result<Self, Error> {
        hyper.validate()?;
        Ok(Self {
            hyper,
            execution: Execution::default(),
            kernel: ResolvedKernel::new(Kernel::Auto)?,
        })
    }

    /// The same optimizer on another path.
    ///
    /// # Errors
    /// [`Error::UnsupportedIsa`] when a forced instruction set is missing.
    ///
    /// ```
    /// # use fused_rmsprop::{Execution, Hyper, Isa, Kernel, RmsProp};
    /// let opt = RmsProp::new(Hyper::default())?;
    /// let fallback = Execution { kernel: Kernel::Simd(Isa::Fallback), ..Default::default() };
    /// assert!(opt.with_execution(fallback).is_ok());
    /// # Ok::<(), fused_rmsprop::Error>(())
    /// ```
    pub fn with_execution(self, execution: Execution) -> Result<Self, Error> {
        Ok(Self {
            execution,
            kernel: ResolvedKernel::new(execution.kernel)?,
            ..self
        })
    }

    /// The hyper-parameters.
    ///
    /// ```
    /// # use fused_rmsprop::{Hyper, RmsProp};
    /// assert_eq!(RmsProp::new(Hyper::default())?.hyper().lr, 0.01);
    /// # Ok::<(), fused_rmsprop::Error>(())
    /// ```
    pub fn hyper(&self) -> &Hyper {
        &self.hyper
    }

    /// The path steps take.
    ///
    /// ```
    /// # use fused_rmsprop::{Execution, Hyper, RmsProp};
    /// assert_eq!(RmsProp::new(Hyper::default())?.execution(), Execution::default());
    /// # Ok::<(), fused_rmsprop::Error>(())
    /// ```
    pub fn execution(&self) -> Execution {
        self.execution
    }

    /// One step at the configured learning rate; counts the step in `state`.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] if `grads` or a state buffer is not as long
    /// as `params`, [`Error::MissingState`] if `state` lacks a buffer the
    /// hyper-parameters need (it was made for other hyper-parameters).
    /// Nothing is written on error.
    ///
    /// ```
    /// # use fused_rmsprop::{Hyper, RmsProp, State};
    /// let opt = RmsProp::new(Hyper::default())?;
    /// let mut p = [1.0f32; 3];
    /// let mut s = State::new(3, opt.hyper());
    /// opt.step(&mut p, &[1.0; 3], &mut s)?;
    /// assert_eq!(s.step, 1);
    /// # Ok::<(), fused_rmsprop::Error>(())
    /// ```
    pub fn step<P: Param>(
        &self,
        params: &mut [P],
        grads: &[P],
        state: &mut State<P::State>,
    ) -> Result<StepReport, Error> {
        self.step_with_lr(self.hyper.lr, params, grads, state)
    }

    /// One step at learning rate `lr` (a scheduler's value); counts the step.
    ///
    /// # Errors
    /// As [`RmsProp::step`], and [`Error::InvalidHyper`] for an `lr` that is
    /// negative, NaN or infinite.
    ///
    /// ```
    /// # use fused_rmsprop::{Hyper, RmsProp, State};
    /// let opt = RmsProp::new(Hyper::default())?;
    /// let mut p = [1.0f32; 3];
    /// let mut s = State::new(3, opt.hyper());
    /// assert!(opt.step_with_lr(f64::NAN, &mut p, &[1.0; 3], &mut s).is_err());
    /// opt.step_with_lr(0.0, &mut p, &[1.0; 3], &mut s)?;
    /// assert_eq!(p, [1.0; 3]);
    /// # Ok::<(), fused_rmsprop::Error>(())
    /// ```
    pub fn step_with_lr<P: Param>(
        &self,
        lr: f64,
        params: &mut [P],
        grads: &[P],
        state: &mut State<P::State>,
    ) -> Result<StepReport, Error> {
        let step = state.step;
        let group = Group::new(params, grads, state.slices_mut()).with_rounding_key(step, 0);
        let report = self.step_many(lr, [group])?;
        if !report.is_skipped(0) {
            state.step += 1;
        }
        Ok(report)
    }

    /// One step on state the caller owns (an adapter's tensors), at
    /// learning rate `lr`.
    ///
    /// # Errors
    /// As [`RmsProp::step_with_lr`].
    ///
    /// ```
    /// # use fused_rmsprop::{Hyper, RmsProp, StateSlices};
    /// let opt = RmsProp::new(Hyper::default())?;
    /// let (mut p, mut v) = ([1.0f32; 2], [0.0f32; 2]);
    /// opt.step_slices(0.01, &mut p, &[1.0; 2], StateSlices::new(&mut v))?;
    /// assert!(v[0] > 0.0);
    /// # Ok::<(), fused_rmsprop::Error>(())
    /// ```
    pub fn step_slices<P: Param>(
        &self,
        lr: f64,
        params: &mut [P],
        grads: &[P],
        state: StateSlices<'_, P::State>,
    ) -> Result<StepReport, Error> {
        self.step_many(lr, [Group::new(params, grads, state)])
    }

    /// One step of many tensors in one call: their work is split across the
    /// threads by size, so small tensors share a thread and the pool is
    /// entered once. Bit-identical to stepping each group alone.
    ///
    /// # Errors
    /// As [`RmsProp::step_with_lr`], naming the group (its index in
    /// `groups`). Every group is checked before any is written: on error,
    /// nothing is.
    ///
    /// ```
    /// # use fused_rmsprop::{Group, Hyper, RmsProp, StateSlices};
    /// let opt = RmsProp::new(Hyper::default())?;
    /// let (mut w, mut b) = (vec![1.0f32; 6], vec![0.0f32; 2]);
    /// let (mut vw, mut vb) = (vec![0.0f32; 6], vec![0.0f32; 2]);
    /// opt.step_many(0.01, [
    ///     Group::new(&mut w, &[0.5; 6], StateSlices::new(&mut vw)),
    ///     Group::new(&mut b, &[0.5; 2], StateSlices::new(&mut vb)),
    /// ])?;
    /// assert!(w[0] < 1.0 && b[0] < 0.0);
    /// # Ok::<(), fused_rmsprop::Error>(())
    /// ```
    pub fn step_many<'a, P: Param>(
        &self,
        lr: f64,
        groups: impl IntoIterator<Item = Group<'a, P>>,
    ) -> Result<StepReport, Error> {
        let mut coefficients = Coefficients::<P::State>::new(&self.hyper, lr, P::NARROWS)?;
        // `f16` "rounds stochastically" to nearest: it takes the loops that
        // round to nearest (F16C's block conversions under AVX2), same bits.
        coefficients.stochastic &= P::ROUNDS_STOCHASTICALLY;
        let seed = match self.hyper.rounding {
            Rounding::Stochastic { seed } if coefficients.stochastic => Some(seed),
            _ => None,
        };
        let groups = groups.into_iter();
        // One vector of descriptors, sized once: at 100,000 groups it holds
        // 13 MB, which a vector grown by doubling (what `collect` into a
        // `Result` does) faulted in again at every step.
        let mut chunks = Vec::with_capacity(groups.size_hint().0);
        for (i, g) in groups.enumerate() {
            let key = seed.map_or(0, |seed| rounding::key(seed, g.step, g.stream));
            let mut chunk =
                Chunk::new(i, &coefficients, g.params, g.source, g.grads, g.state, key)?;
            chunk.grad_scale = g.grad_scale.map(P::State::from_f64);
            chunks.push(chunk);
        }
        let mut report = StepReport::default();
        if self.hyper.non_finite != NonFinite::Propagate {
            self.keep_finite(&mut chunks, &mut report)?;
        }
        if let Some(clip) = self.hyper.grad_clip.filter(|clip| clip.is_by_norm()) {
            self.clip_by_norm(clip, &mut chunks, &mut report)?;
        }
        let execution = self.execution;
        parallel::run(
            self.kernel,
            (execution.threads, execution.linger),
            &coefficients,
            chunks,
        );
        Ok(report)
    }

    /// One step of a tensor with 8-bit state ([`StateFormat::Blockwise8`])
    /// at the configured learning rate; counts the step in `state`. The
    /// same options as [`RmsProp::step`], the module docs of
    /// [`Blockwise8State`] say what quantizing adds.
    ///
    /// # Errors
    /// As [`RmsProp::step`]; a scale buffer of the wrong length is named
    /// `"square_avg.scales"` (and so on). Nothing is written on error.
    ///
    /// ```
    /// use fused_rmsprop::{Blockwise8State, Hyper, RmsProp, StateFormat};
    /// let opt = RmsProp::new(Hyper::default().with_state_format(StateFormat::BLOCKWISE8))?;
    /// let mut params = vec![1.0f32; 4096];
    /// let mut state = Blockwise8State::new(params.len(), opt.hyper());
    /// opt.step_blockwise8(&mut params, &vec![0.5; 4096], &mut state)?;
    /// assert!((params[0] - 0.9).abs() < 1e-6); // as with full state: lr / sqrt(1 - alpha)
    /// assert_eq!(state.state_bytes(), 4096 + 16 * 4); // a byte per element, a scale per block
    /// # Ok::<(), fused_rmsprop::Error>(())
    /// ```
    pub fn step_blockwise8<P: Param>(
        &self,
        params: &mut [P],
        grads: &[P],
        state: &mut Blockwise8State<P::State>,
    ) -> Result<StepReport, Error> {
        self.step_blockwise8_with_lr(self.hyper.lr, params, grads, state)
    }

    /// [`RmsProp::step_blockwise8`] at learning rate `lr`.
    ///
    /// # Errors
    /// As [`RmsProp::step_with_lr`].
    ///
    /// ```
    /// # use fused_rmsprop::{Blockwise8State, Hyper, RmsProp};
    /// let opt = RmsProp::new(Hyper::default())?;
    /// let mut p = [1.0f32; 3];
    /// let mut s = Blockwise8State::new(3, opt.hyper());
    /// opt.step_blockwise8_with_lr(0.0, &mut p, &[1.0; 3], &mut s)?;
    /// assert_eq!((p, s.step), ([1.0; 3], 1));
    /// # Ok::<(), fused_rmsprop::Error>(())
    /// ```
    pub fn step_blockwise8_with_lr<P: Param>(
        &self,
        lr: f64,
        params: &mut [P],
        grads: &[P],
        state: &mut Blockwise8State<P::State>,
    ) -> Result<StepReport, Error> {
        let step = state.step;
        let group =
            Blockwise8Group::new(params, grads, state.slices_mut()).with_rounding_key(step, 0);
        let report = self.step_blockwise8_slices(lr, group)?;
        if !report.is_skipped(0) {
            state.step += 1;
        }
        Ok(report)
    }

    /// One 8-bit step on state the caller owns (an adapter's tensors, or a
    /// shard of a tensor: [`Blockwise8Group::first_element`]).
    ///
    /// # Errors
    /// As [`RmsProp::step_with_lr`], and [`Error::MisalignedShard`].
    ///
    /// ```
    /// use fused_rmsprop::{Blockwise8Group, Blockwise8State, Hyper, RmsProp};
    /// let opt = RmsProp::new(Hyper::default())?;
    /// let (mut p, g) = (vec![1.0f32; 300], vec![0.5f32; 300]);
    /// let mut s = Blockwise8State::new(300, opt.hyper());
    /// opt.step_blockwise8_slices(0.01, Blockwise8Group::new(&mut p, &g, s.slices_mut()))?;
    /// assert!(p[299] < 1.0);
    /// # Ok::<(), fused_rmsprop::Error>(())
    /// ```
    pub fn step_blockwise8_slices<P: Param>(
        &self,
        lr: f64,
        group: Blockwise8Group<'_, P>,
    ) -> Result<StepReport, Error> {
        self.step_many_blockwise8(lr, [group])
    }

    /// One 8-bit step of many tensors in one call, as
    /// [`RmsProp::step_many`] for full state: split across the threads by
    /// size on block boundaries, bit-identical to stepping each group
    /// alone.
    ///
    /// # Errors
    /// As [`RmsProp::step_blockwise8_slices`], naming the group. Every
    /// group is checked before any is written: on error, nothing is.
    ///
    /// ```
    /// use fused_rmsprop::{Blockwise8Group, Blockwise8State, Hyper, RmsProp};
    /// let opt = RmsProp::new(Hyper::default())?;
    /// let (mut w, mut b) = (vec![1.0f32; 5000], vec![0.0f32; 300]);
    /// let (mut sw, mut sb) = (Blockwise8State::new(5000, opt.hyper()), Blockwise8State::new(300, opt.hyper()));
    /// opt.step_many_blockwise8(0.01, [
    ///     Blockwise8Group::new(&mut w, &vec![0.5; 5000], sw.slices_mut()),
    ///     Blockwise8Group::new(&mut b, &[0.5; 300], sb.slices_mut()),
    /// ])?;
    /// assert!(w[4999] < 1.0 && b[0] < 0.0);
    /// # Ok::<(), fused_rmsprop::Error>(())
    /// ```
    pub fn step_many_blockwise8<'a, P: Param>(
        &self,
        lr: f64,
        groups: impl IntoIterator<Item = Blockwise8Group<'a, P>>,
    ) -> Result<StepReport, Error> {
        let mut coefficients = Coefficients::<P::State>::new(&self.hyper, lr, P::NARROWS)?;
        coefficients.stochastic &= P::ROUNDS_STOCHASTICALLY;
        let seed = match self.hyper.rounding {
            Rounding::Stochastic { seed } if coefficients.stochastic => Some(seed),
            _ => None,
        };
        let mut jobs = Vec::new();
        for (i, group) in groups.into_iter().enumerate() {
            let key = seed.map_or(0, |seed| rounding::key(seed, group.step, group.stream));
            jobs.push(group.into_job(i, &coefficients, key)?);
        }
        // The gradient checks and the norm work on the gradients alone:
        // chunks with no state carry them through the full-state code.
        let mut probes: Vec<Chunk<'_, P>> = jobs
            .iter()
            .enumerate()
            .map(|(i, job)| Chunk {
                params: &mut [],
                source: &[],
                grads: job.grads,
                square_avg: &mut [],
                grad_avg: &mut [],
                momentum_buf: &mut [],
                master: &mut [],
                // Which job the probe stands for.
                offset: i as u64,
                key: job.key,
                grad_scale: job.grad_scale,
            })
            .collect();
        let mut report = StepReport::default();
        if self.hyper.non_finite != NonFinite::Propagate {
            self.keep_finite(&mut probes, &mut report)?;
        }
        if let Some(clip) = self.hyper.grad_clip.filter(|clip| clip.is_by_norm()) {
            self.clip_by_norm(clip, &mut probes, &mut report)?;
        }
        let mut stepped: Vec<Option<P::State>> = vec![None; jobs.len()];
        let mut kept = vec![false; jobs.len()];
        for probe in &probes {
            kept[probe.offset as usize] = true;
            stepped[probe.offset as usize] = probe.grad_scale;
        }
        drop(probes);
        let jobs: Vec<_> = jobs
            .into_iter()
            .zip(kept.into_iter().zip(stepped))
            .filter_map(|(mut job, (kept, scale))| {
                job.grad_scale = scale;
                kept.then_some(job)
            })
            .collect();
        let execution = self.execution;
        blockwise8::run(
            self.kernel,
            (execution.threads, execution.linger),
            &coefficients,
            jobs,
        );
        Ok(report)
    }

    /// Measures the gradients' norms for clipping by norm, records them in
    /// `report`, and sets each chunk's gradient scale. A norm that is not
    /// finite although the gradients are (an `f64` overflow) is an error
    /// under [`NonFinite::Error`], skips the groups it covers under
    /// [`NonFinite::Skip`], and scales by what the formula gives under
    /// [`NonFinite::Propagate`] (as PyTorch does). Writes no parameter.
    fn clip_by_norm<P: Param>(
        &self,
        clip: GradClip,
        chunks: &mut Vec<Chunk<'_, P>>,
        report: &mut StepReport,
    ) -> Result<(), Error> {
        let groups = chunks.len() + report.skipped.len();
        let stepped: Vec<usize> = (0..groups).filter(|g| !report.is_skipped(*g)).collect();
        let grads: Vec<&[P]> = chunks.iter().map(|chunk| chunk.grads).collect();
        let sums = norm::sums_of_squares(&grads, self.execution.threads);
        let norms: Vec<f64> = sums.iter().map(|&sum| norm::norm(sum)).collect();
        report.group_grad_norms = vec![None; groups];
        for (&group, &norm) in stepped.iter().zip(&norms) {
            report.group_grad_norms[group] = Some(norm);
        }
        let total = grad_norm(&sums);
        report.grad_norm = Some(total);
        // Groups whose norm overflowed, by position in `chunks`.
        let mut overflowed = Vec::new();
        match clip {
            GradClip::NormGlobal(max) => {
                let factor = global_clip_scale(max, total);
                report.clip_coefficient = Some(factor.unwrap_or(1.0));
                if total.is_infinite() {
                    if self.hyper.non_finite == NonFinite::Error {
                        return Err(Error::NonFiniteGradNorm {
                            group: None,
                            norm: total,
                        });
                    }
                    overflowed.extend(0..chunks.len());
                }
                for chunk in chunks.iter_mut() {
                    chunk.grad_scale = factor.map(P::State::from_f64);
                }
            }
            GradClip::NormPerTensor(max) => {
                let tiny = P::State::MIN_POSITIVE.to_f64();
                for (position, (chunk, &norm)) in chunks.iter_mut().zip(&norms).enumerate() {
                    if norm.is_infinite() {
                        if self.hyper.non_finite == NonFinite::Error {
                            let group = Some(stepped[position]);
                            return Err(Error::NonFiniteGradNorm { group, norm });
                        }
                        overflowed.push(position);
                    }
                    chunk.grad_scale = norm::clip_scale(max, norm, tiny).map(P::State::from_f64);
                }
            }
            GradClip::Value(_) => {}
        }
        if self.hyper.non_finite == NonFinite::Skip && !overflowed.is_empty() {
            let mut position = 0;
            chunks.retain(|_| {
                let keep = !overflowed.contains(&position);
                position += 1;
                keep
            });
            report
                .skipped
                .extend(overflowed.iter().map(|&p| stepped[p]));
            report.skipped.sort_unstable();
        }
        Ok(())
    }

    /// Drops from `chunks` those whose gradients are not all finite,
    /// listing them in `report` as skipped, or, under
    /// [`NonFinite::Error`], returns the error with `chunks` unchanged.
    fn keep_finite<P: Param>(
        &self,
        chunks: &mut Vec<Chunk<'_, P>>,
        report: &mut StepReport,
    ) -> Result<(), Error> {
        for (group, chunk) in chunks.iter().enumerate() {
            if finite::all_finite(chunk.grads, self.execution.threads) {
                continue;
            }
            if self.hyper.non_finite != NonFinite::Skip {
                let index = finite::first_non_finite(chunk.grads).unwrap_or(0);
                return Err(Error::NonFiniteGradient { group, index });
            }
            report.skipped.push(group);
        }
        if !report.skipped.is_empty() {
            let mut skipped = report.skipped.iter().peekable();
            let mut group = 0;
            chunks.retain(|_| {
                let keep = skipped.next_if_eq(&&group).is_none();
                group += 1;
                keep
            });
        }
        Ok(())
    }
}
