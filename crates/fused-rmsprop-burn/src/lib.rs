//! RMSprop for burn: a drop-in for `burn::optim::RmsPropConfig` whose step
//! runs the fused kernel of [`fused_rmsprop`] in place on burn's Flex CPU
//! backend.
//!
//! Change `RmsPropConfig` to [`FusedRmsPropConfig`]; nothing else changes:
//! `init()` returns burn's [`ModuleOptimizer`](burn::optim::ModuleOptimizer),
//! so gradient clipping, learning-rate schedulers, parameter groups and
//! optimizer checkpoints work as before.
//!
//! ```
//! use burn::module::Module;
//! use burn::nn::{Linear, LinearConfig};
//! use burn::optim::GradientsParams;
//! use burn::tensor::{Device, Tensor};
//! use fused_rmsprop_burn::FusedRmsPropConfig;
//!
//! let device = Device::default().autodiff();
//! let model: Linear = LinearConfig::new(4, 2).init(&device);
//! let mut optim = FusedRmsPropConfig::new().init(); // was: RmsPropConfig::new().init()
//!
//! let x = Tensor::<2>::ones([8, 4], &device);
//! let loss = model.forward(x).powi_scalar(2).mean();
//! let grads = GradientsParams::from_grads(loss.backward(), &model);
//! let model = optim.step(1e-2, model, grads);
//! # let _ = model;
//! ```
//!
//! # Semantics
//! PyTorch's `RMSprop`, which burn's `RmsProp` follows: `v = alpha*v +
//! (1-alpha)*g²`, `p -= lr * g / (sqrt(v) + eps)`, with coupled weight decay,
//! centered and momentum as burn has them. The hyper-parameters are burn's
//! `f32` fields widened to `f64`; the kernel computes its per-step constants
//! (`1 - alpha`, say) in `f64` where burn computes them in `f32`, so results
//! agree with burn's `RmsProp` to a few ulps per step, not bit for bit. They
//! agree bit for bit with the bare kernel and with the candle adapter.
//!
//! # How the update reaches the buffers
//! On a Flex device (burn's default CPU backend) with `f32`, `f64`, `bf16`
//! or `f16` parameters, the parameter, its gradient and the state tensors are downcast
//! to their Flex primitives with `Tensor::try_into_primitive` (burn's
//! `extension` feature, the route it provides for backend extensions), and
//! the kernel runs on their storage: one fused pass, threaded with rayon for
//! large tensors. `#[backend_extension]` was not used: its generated dispatch
//! panics on a backend it does not list, and the fallback below needs to
//! choose the route before giving the tensors away.
//!
//! # When a step copies
//! A buffer is written in place when this step owns it alone and it is
//! contiguous, which in an ordinary training loop holds for every parameter
//! and every state buffer after the first step. Otherwise it is copied first:
//! a parameter still shared with another owner (a clone of the model the user
//! keeps, for instance) is copied, never mutated behind the other owner's
//! back (Flex's copy-on-write); a non-contiguous parameter or gradient (a
//! transposed view) is made contiguous. [`FusedRmsProp::stats`] counts these
//! copies.
//!
//! burn-train's `Learner` is such an owner: it holds a clone of the model
//! while the optimizer steps it (burn-train 0.22), so there every parameter
//! arrives shared, every step. The optimizer keeps the buffer each shared
//! parameter arrived in (the `Learner` lets go of it when the step returns)
//! and writes the parameter's next step into it, reading the parameter
//! where it arrived (the kernel's out-of-place step: no copy, no
//! allocation). Left to copy-on-write, every step allocated and copied each
//! parameter first, which for a large parameter costs more than the step
//! itself (the "Learner: module held" rows of `cargo run --release -p
//! fused-rmsprop-benches --bin compare` measure the held step). The kept
//! buffers cost memory: one more buffer per parameter that arrives shared,
//! for as long as it does.
//!
//! # bf16 and f16 parameters
//! A `bf16` or `f16` parameter keeps its state in `f32` (burn's own
//! `RmsProp` keeps it in the parameter's dtype and computes in 16 bits): the
//! kernel widens the parameter and gradient, steps in `f32` and rounds the
//! parameter back to nearest even, in place. A record of such a parameter
//! holds `f32` state tensors under burn's names. A checkpoint of burn's
//! `RmsProp` loads here (its 16-bit state widened exactly); one of this
//! optimizer loaded into burn 0.22.1's `RmsProp` makes burn panic at its
//! next step (burn-flex: "binary_op: dtype mismatch", since burn's optimizer
//! does not convert a loaded state to the parameter's dtype), so moving a
//! 16-bit model back to burn's optimizer means starting its state afresh.
//! [`FusedRmsPropConfig::with_rounding`] (stochastic rounding of `bf16`
//! parameters) and [`FusedRmsPropConfig::with_master_weights`] (an `f32`
//! master copy of each 16-bit parameter) are the kernel's options: the
//! copy lives in the parameter's [`FusedRmsPropState`], and so does the
//! [`RoundingKey`] (the parameter's step count and stream; streams are
//! given in the order the optimizer first steps the parameters, the
//! module's order, as the candle adapter numbers its variables). Both
//! travel in records under names burn's `RmsProp` leaves unread, so a
//! resumed run draws the same bits as an uninterrupted one. The composed
//! route keeps master weights and rounds to nearest.
//!
//! # 8-bit state
//! [`FusedRmsPropConfig::with_state_format`]`(StateFormat::BLOCKWISE8)`
//! keeps the averages and momentum buffer of every parameter of at least
//! [`MIN_8BIT_ELEMENTS`] in one byte per element plus a scale per 256
//! ([`Averages::Blockwise8`], in host memory; `docs/8-bit-state.md` has
//! the rules and what it costs). On Flex the kernel steps them in place,
//! held by the `Learner` or not; elsewhere they are dequantized, stepped
//! with tensor ops and quantized again. Records hold the codes, scales and
//! maps under names burn's `RmsProp` leaves unread (it starts those
//! parameters afresh); either kind of record loads into either format. The
//! batched route keeps it too (one `step_many_blockwise8` per dtype beside
//! the full-state `step_many`), with the same bits.
//!
//! ```
//! use fused_rmsprop_burn::{FusedRmsPropConfig, StateFormat};
//! let optim = FusedRmsPropConfig::new().with_state_format(StateFormat::BLOCKWISE8).init();
//! # let _ = optim;
//! ```
//!
//! # Gradient clipping
//! [`FusedRmsPropConfig::with_grad_clipping`] takes burn's
//! `GradientClippingConfig` with burn's semantics (each parameter's
//! gradient clipped alone, by value or by its norm), but the optimizer
//! clips, not the `ModuleOptimizer`: on the in-place route inside the fused
//! step (by value at no extra cost, by norm with one more read of the
//! gradient, where burn's clipping makes several passes and new tensors),
//! on the composed route with burn's own clipping. The numbers are burn's
//! within rounding (`tests/clipping.rs`: the norm is summed in `f64` in the
//! kernel's fixed order where burn sums it in `f32`). A 16-bit gradient is
//! clipped widened to `f32`, where burn clips it in its own dtype.
//!
//! The batched route can also clip by the norm of all the gradients
//! together, PyTorch's `clip_grad_norm_(model.parameters(), ..)`
//! ([`BatchedRmsProp::with_max_grad_norm`]); `ModuleOptimizer` hands the
//! optimizer one parameter at a time, so the per-parameter routes cannot.
//!
//! # Threads
//! A parameter of 16K elements or more is stepped on rayon's pool, the
//! training loop's thread working beside it. Burn calls the optimizer once
//! per parameter, so after each call the pool's helpers stay awake for a
//! while ([`Linger`], 1 ms by default) to take the next one without being
//! woken; the cost is up to `pool - 1` cores busy for that long after the
//! last call. [`FusedRmsProp::with_execution`] sets it per optimizer,
//! [`set_default_linger`] or `FUSED_RMSPROP_LINGER_US=0` for the process.
//!
//! # One dependency
//! Every type the options need is re-exported here ([`Hyper`],
//! [`NonFinite`], [`Rounding`], [`Execution`], [`Linger`], [`KernelError`],
//! ...), so this crate is the one to add beside burn.
//!
//! # Every other device and dtype
//! On wgpu, CUDA, the CubeCL CPU runtime or any other backend, and when a
//! gradient's dtype differs from its parameter's, the step is the same
//! formula written with burn tensor ops (one new tensor per op, as burn's own
//! optimizers do), 16-bit parameters computed in `f32` and cast back with
//! the backend's conversion. It never panics for want of a route.
//!
//! # burn-train's multi-device strategies
//! Both `ExecutionStrategy::MultiDevice` strategies step through the same
//! `ModuleOptimizer` as a single device, with `step_multi`: under
//! `OptimMainDevice` every gradient is gathered on the first device and
//! stepped there; under `OptimSharded` each parameter is stepped on the
//! device that accumulated its gradient. Either way burn moves a
//! parameter's state to that device with [`Optimizer::to_device`], which
//! moves every buffer of a [`FusedRmsPropState`] (the master copy too; the
//! rounding key is two numbers) and copies none already there, and gathers
//! the records with `ModuleOptimizer::to_record`, as on one device.
//! Parameters are visited in the module's order, so streams are given as on
//! one device. Verified here: both strategies on two handles of the one
//! Flex device (`tests/learner.rs`: burn-train's threads per device,
//! gradients gathered, the same losses as burn's `RmsProp` under the same
//! strategy, every step in place). Not verified: distinct devices, which
//! these machines lack (Flex has one device); on a GPU the composed route
//! runs, as for a single GPU.
//!
//! `ExecutionStrategy::DistributedDataParallel` gives each worker a clone
//! of the `Learner`, whose `ModuleOptimizer` shares this optimizer: the
//! workers' steps are counted together in [`FusedRmsProp::stats`], and one
//! stream counter serves them all, in whatever order their threads reach
//! it (stochastic rounding happens only on the in-place Flex route, which
//! a run across devices cannot take). Each worker steps its replica with
//! the all-reduced gradients, which this optimizer takes as any gradient.
//! Not run here: it needs several devices.
//!
//! # One dispatch per step: the batched route
//! burn's `ModuleOptimizer` calls an optimizer once per parameter, and runs
//! its own bookkeeping between two calls on caches the previous parameter
//! has just streamed through; on models of thousands of tensors that costs
//! more than the step itself. For training loops that call the optimizer
//! themselves, [`FusedRmsPropConfig::init_batched`] returns a
//! [`BatchedRmsProp`], whose [`step`](BatchedRmsProp::step) takes the
//! arguments of `ModuleOptimizer::step`, takes every parameter that has a
//! gradient out of the module, steps them all with one kernel dispatch per
//! dtype and puts them back: the same bits as `init()`'s optimizer. It
//! steps Flex parameters only and applies one learning rate to all (no
//! parameter groups); its checkpoints are burn's optimizer record, the one
//! `init()`'s optimizer writes ([`BatchedRmsProp::to_record`],
//! [`BatchedRmsProp::load_record`]); burn-train's `Learner` cannot use it
//! (it takes only a `ModuleOptimizer`).
//!
//! # Errors
//! burn's `Optimizer::step` cannot return an error, so a step that cannot be
//! taken (a learning rate that is NaN, infinite or negative) leaves the
//! parameter and its state exactly as they were and is recorded in
//! [`FusedRmsProp::stats`] (`rejected_steps`, `last_error`). An invalid config
//! is an error of [`FusedRmsPropConfig::try_build`] (and a panic of `build`
//! and `init`, whose burn signatures have no room for one). A state that does
//! not fit its parameter (a checkpoint of another model) is replaced by a
//! fresh one and counted in `states_reset`; burn itself starts afresh a
//! parameter whose record it cannot read.
//!
//! [`BatchedRmsProp::step`] returns its error beside the module, which
//! comes back as it was ([`BatchedError`]).
//!
//! # Non-finite gradients
//! [`FusedRmsPropConfig::with_non_finite_grads`] chooses: `Propagate` (burn's
//! and PyTorch's behaviour, the default), `Skip` (the parameter and its state
//! are left as they were; counted in `skipped_steps`) or `Error` (the step is
//! refused; counted in `rejected_steps` with a `NonFiniteGradient` error).

mod batched;
mod blockwise8;
mod composed;
mod config;
mod flex;
mod flex_tensor;
mod record;
mod shared;
mod state;
mod stats;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use burn::optim::LearningRate;
use burn::optim::Optimizer;
use burn::tensor::{Device, Tensor};
use fused_rmsprop::RmsProp;

pub use batched::{BatchedError, BatchedRmsProp};
pub use config::FusedRmsPropConfig;
// What a user names to fill `FusedRmsPropConfig`, build a `FusedRmsProp`
// from `Hyper` or choose a path, re-exported from the kernel so that this
// crate is the one dependency to add.
pub use blockwise8::Blockwise8Averages;
/// The kernel's error: what [`FusedRmsPropConfig::try_build`] returns and
/// [`StepStats::last_error`] holds.
pub use fused_rmsprop::Error as KernelError;
pub use fused_rmsprop::{
    BLOCK_ELEMENTS, Blockwise8State, EpsPlacement, Execution, Hyper, Isa, Kernel, Linger,
    MIN_8BIT_ELEMENTS, NonFinite, QuantMap, Quantized, Rounding, StateFormat, Threads, WeightDecay,
    bf16, default_linger, f16, set_default_linger,
};
pub use record::{RecordLoadError, load_record};
pub use state::{Averages, FullAverages, FusedRmsPropState, RoundingKey};
pub use stats::StepStats;

use stats::Counters;

/// The fused RMSprop optimizer for burn: what [`FusedRmsPropConfig::build`]
/// returns, and what [`FusedRmsPropConfig::init`] wraps in a
/// [`ModuleOptimizer`](burn::optim::ModuleOptimizer).
///
/// Clones share one set of [`stats`](Self::stats) counters, so a clone kept
/// before handing the optimizer to a `ModuleOptimizer` reports what it did.
///
/// ```
/// use burn::optim::{ModuleOptimizer, Optimizer};
/// use burn::tensor::{Device, Tensor};
/// use fused_rmsprop_burn::FusedRmsPropConfig;
///
/// let optim = FusedRmsPropConfig::new().build();
/// let p = Tensor::<1>::from_floats([1.0, -1.0], &Device::default());
/// let g = Tensor::<1>::from_floats([0.5, -0.5], &Device::default());
/// let (p, state) = optim.step(0.01, p, g, None);
/// assert!(state.is_some());
/// assert_eq!(optim.stats().in_place_steps, 1);
/// # let _ = p;
/// ```
#[derive(Clone, Debug)]
pub struct FusedRmsProp {
    kernel: RmsProp,
    route: Route,
    counters: Arc<Counters>,
    kept_buffers: Arc<shared::KeptBuffers>,
    /// The stream the next parameter without a rounding key gets
    /// ([`RoundingKey`]), shared by clones.
    next_stream: Arc<AtomicU64>,
}

/// Which route a step takes.
///
/// ```
/// use fused_rmsprop_burn::{FusedRmsPropConfig, Route};
/// let optim = FusedRmsPropConfig::new().build().with_route(Route::ComposedOps);
/// assert_eq!(optim.route(), Route::ComposedOps);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Route {
    /// In place with the fused kernel where it applies (Flex, `f32`/`f64`),
    /// composed tensor ops elsewhere.
    #[default]
    Auto,
    /// Always composed tensor ops: the route of every non-Flex device, on
    /// any device (for comparison and testing).
    ComposedOps,
}

impl FusedRmsProp {
    /// An optimizer for `hyper` (its `lr` field is ignored: burn passes the
    /// learning rate to every step), or the error naming an invalid field.
    ///
    /// ```
    /// use fused_rmsprop::Hyper;
    /// use fused_rmsprop_burn::FusedRmsProp;
    /// assert!(FusedRmsProp::new(Hyper::default().with_nesterov(true).with_momentum(0.9)).is_ok());
    /// assert!(FusedRmsProp::new(Hyper::default().with_eps(-1.0)).is_err());
    /// ```
    pub fn new(hyper: Hyper) -> Result<Self, fused_rmsprop::Error> {
        Ok(Self {
            kernel: RmsProp::new(hyper)?,
            route: Route::Auto,
            counters: Arc::default(),
            kept_buffers: Arc::default(),
            next_stream: Arc::default(),
        })
    }

    /// Forces a [`Route`].
    ///
    /// ```
    /// use fused_rmsprop_burn::{FusedRmsPropConfig, Route};
    /// let optim = FusedRmsPropConfig::new().build().with_route(Route::Auto);
    /// # let _ = optim;
    /// ```
    #[must_use]
    pub fn with_route(mut self, route: Route) -> Self {
        self.route = route;
        self
    }

    /// Forces the kernel's path (scalar spec, an instruction set, a thread
    /// count) for the in-place route; see [`fused_rmsprop::Execution`].
    ///
    /// ```
    /// use fused_rmsprop::{Execution, Kernel, Threads};
    /// use fused_rmsprop_burn::FusedRmsPropConfig;
    /// let exec = Execution { kernel: Kernel::Scalar, threads: Threads::Single, ..Default::default() };
    /// let optim = FusedRmsPropConfig::new().build().with_execution(exec)?;
    /// # let _ = optim;
    /// # Ok::<(), fused_rmsprop::Error>(())
    /// ```
    pub fn with_execution(mut self, execution: Execution) -> Result<Self, fused_rmsprop::Error> {
        self.kernel = self.kernel.with_execution(execution)?;
        Ok(self)
    }

    /// The route steps take.
    ///
    /// ```
    /// use fused_rmsprop_burn::{FusedRmsPropConfig, Route};
    /// assert_eq!(FusedRmsPropConfig::new().build().route(), Route::Auto);
    /// ```
    pub fn route(&self) -> Route {
        self.route
    }

    /// The hyper-parameters.
    ///
    /// ```
    /// use fused_rmsprop_burn::FusedRmsPropConfig;
    /// assert_eq!(FusedRmsPropConfig::new().build().hyper().momentum, f64::from(0.9f32));
    /// ```
    pub fn hyper(&self) -> &Hyper {
        self.kernel.hyper()
    }

    /// What the steps of this optimizer and its clones did so far.
    ///
    /// ```
    /// use fused_rmsprop_burn::FusedRmsPropConfig;
    /// let optim = FusedRmsPropConfig::new().build();
    /// assert_eq!(optim.stats().in_place_steps, 0);
    /// ```
    pub fn stats(&self) -> StepStats {
        self.counters.snapshot()
    }
}

impl Optimizer for FusedRmsProp {
    type State<const D: usize> = FusedRmsPropState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let hyper = self.kernel.hyper().with_lr(lr);
        if let Err(err) = hyper.validate() {
            self.counters.rejected(err);
            return (tensor, state);
        }
        if grad.dims() != tensor.dims() {
            self.counters
                .rejected(fused_rmsprop::Error::LengthMismatch {
                    group: 0,
                    buffer: "grads",
                    expected: tensor.shape().num_elements(),
                    actual: grad.shape().num_elements(),
                });
            return (tensor, state);
        }
        let state = match state {
            None => FusedRmsPropState::fresh(&tensor, &hyper),
            Some(state) => {
                let (state, kept) = state.fit(&tensor, &hyper);
                if !kept {
                    Counters::bump(&self.counters.reset);
                }
                state
            }
        };
        let state = state.keyed(&hyper, &self.next_stream);

        let (tensor, state) = if self.route == Route::Auto && flex::applies(&tensor, &grad, &state)
        {
            Counters::bump(&self.counters.in_place);
            let shared = (&*self.counters, &*self.kept_buffers);
            flex::step(&self.kernel, lr, tensor, grad, state, shared)
        } else {
            Counters::bump(&self.counters.composed);
            if hyper.non_finite == NonFinite::Propagate || composed::all_finite(&grad) {
                composed::step_any(&hyper, lr, tensor, grad, state)
            } else {
                if hyper.non_finite == NonFinite::Skip {
                    self.counters.skipped();
                } else {
                    let err = fused_rmsprop::Error::NonFiniteGradient { group: 0, index: 0 };
                    self.counters.rejected(err);
                }
                (tensor, state)
            }
        };
        (tensor, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.moved_to(device)
    }
}
