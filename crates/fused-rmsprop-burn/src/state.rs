//! [`FusedRmsPropState`]: the per-parameter state, recorded under the names
//! burn's own `RmsPropState` uses, so checkpoints move both ways.

use std::sync::atomic::{AtomicU64, Ordering};

use burn::optim::{RecordState, StateSink, StateSource, join_path};
use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};
use fused_rmsprop::{Hyper, Rounding};

/// The dtype the state of a parameter of `dtype` is kept in: `f32` for the
/// 16-bit types (as the kernel's mixed-precision step keeps it), the
/// parameter's own otherwise.
pub(crate) fn state_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

/// The state of one parameter: its running averages and momentum buffer,
/// as tensors of the parameter's shape and device, in the parameter's dtype
/// for `f32`/`f64` parameters and in `f32` for `bf16`/`f16` ones.
///
/// A record written from this state has the keys of burn's `RmsPropState`
/// (`square_avg.square_avg`, `centered.avg`, `centered.grad_avg`,
/// `momentum.buf`), so a checkpoint of burn's `RmsProp` loads into
/// [`FusedRmsProp`](crate::FusedRmsProp) and the other way round.
/// `centered.avg` (the square average minus the squared gradient average) is
/// derived data that both optimizers recompute every step; it is written for
/// burn's sake and ignored on load. Tensors keep the dtype they were saved
/// with: an `f64` model resumes in `f64`.
///
/// Under the two options burn's `RmsProp` lacks, the record holds more,
/// under names of this crate's own (`fused.master`, `fused.step`,
/// `fused.stream`), which burn's loader leaves unread: the `f32` master
/// copy of a 16-bit parameter under master weights, and the rounding key
/// under stochastic rounding. With both off the record is burn's, key for
/// key.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use fused_rmsprop_burn::FusedRmsPropState;
///
/// let v = Tensor::<1>::from_floats([1.0, 2.0], &Device::default());
/// let state = FusedRmsPropState {
///     square_avg: v,
///     grad_avg: None,
///     momentum_buf: None,
///     master: None,
///     rounding_key: None,
/// };
/// assert_eq!(state.square_avg.dims(), [2]);
/// ```
#[derive(Clone, Debug)]
pub struct FusedRmsPropState<const D: usize> {
    /// Running average of the squared gradient.
    pub square_avg: Tensor<D>,
    /// Running average of the gradient (centered only).
    pub grad_avg: Option<Tensor<D>>,
    /// Momentum buffer (momentum > 0 only).
    pub momentum_buf: Option<Tensor<D>>,
    /// The `f32` master copy of a `bf16`/`f16` parameter, which the step
    /// reads and writes in its place (master weights only).
    pub master: Option<Tensor<D>>,
    /// What keys this parameter's stochastic rounding (stochastic rounding
    /// only).
    pub rounding_key: Option<RoundingKey>,
}

/// What keys a parameter's stochastic rounding besides the seed (see
/// [`fused_rmsprop::Rounding::Stochastic`]): the steps it has taken and its
/// stream. The optimizer gives each parameter the next stream when it
/// first steps it, so the streams follow the module's parameter order
/// (burn's `ModuleOptimizer` steps parameters in that order), as the
/// candle adapter numbers its variables: the `k`-th parameter's stream is
/// `k`. Both live in the state and its record, so a resumed run draws the
/// bits an uninterrupted one draws.
///
/// ```
/// use fused_rmsprop_burn::RoundingKey;
/// let key = RoundingKey { step: 0, stream: 3 };
/// assert_eq!(key.stream, 3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundingKey {
    /// Steps taken (the kernel's `Group::step`).
    pub step: u64,
    /// The parameter's stream (the kernel's `Group::stream`).
    pub stream: u64,
}

/// Whether a parameter of `dtype` keeps a master copy under master weights.
fn narrow(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}

impl<const D: usize> FusedRmsPropState<D> {
    /// A fresh state for a parameter like `param`: the square average at
    /// `hyper.initial_square_avg`, the other buffers zero where `hyper`
    /// needs them.
    ///
    /// ```
    /// use burn::tensor::{Device, Tensor};
    /// use fused_rmsprop::Hyper;
    /// use fused_rmsprop_burn::FusedRmsPropState;
    ///
    /// let p = Tensor::<2>::zeros([2, 3], &Device::default());
    /// let s = FusedRmsPropState::fresh(&p, &Hyper::default().with_momentum(0.9));
    /// assert!(s.momentum_buf.is_some() && s.grad_avg.is_none());
    /// ```
    pub fn fresh(param: &Tensor<D>, hyper: &Hyper) -> Self {
        // Made in the state dtype directly: a 16-bit parameter's initial
        // square average is not rounded to 16 bits on the way.
        let options =
            TensorCreationOptions::new(param.device()).with_dtype(state_dtype(param.dtype()));
        let full = |value: f64| Tensor::<D>::full(param.shape(), value, options.clone());
        let zeros = || full(0.0);
        Self {
            square_avg: full(hyper.initial_square_avg),
            grad_avg: hyper.needs_grad_avg().then(zeros),
            momentum_buf: hyper.needs_momentum_buf().then(zeros),
            master: Self::fresh_master(param, hyper),
            rounding_key: None,
        }
    }

    /// The master copy a fresh state of `param` starts with: the parameter
    /// widened to `f32` (exact) for a 16-bit parameter under master
    /// weights, none otherwise.
    fn fresh_master(param: &Tensor<D>, hyper: &Hyper) -> Option<Tensor<D>> {
        (hyper.master_weights && narrow(param.dtype())).then(|| param.clone().cast(DType::F32))
    }

    /// This state with the rounding key `hyper` asks for: under stochastic
    /// rounding the key it has, or else step 0 and the next stream of
    /// `next_stream`; none otherwise. A key it has moves `next_stream`
    /// past its stream, so a parameter first stepped after a resumed one
    /// does not take the same stream.
    pub(crate) fn keyed(mut self, hyper: &Hyper, next_stream: &AtomicU64) -> Self {
        self.rounding_key = match (hyper.rounding, self.rounding_key) {
            (Rounding::Nearest, _) => None,
            (Rounding::Stochastic { .. }, Some(key)) => {
                next_stream.fetch_max(key.stream.saturating_add(1), Ordering::Relaxed);
                Some(key)
            }
            (Rounding::Stochastic { .. }, None) => Some(RoundingKey {
                step: 0,
                stream: next_stream.fetch_add(1, Ordering::Relaxed),
            }),
        };
        self
    }

    /// Counts one step taken in the rounding key, if there is one.
    pub(crate) fn count_step(&mut self) {
        if let Some(key) = &mut self.rounding_key {
            key.step += 1;
        }
    }

    /// Brings a state (fresh, carried over, or loaded from any checkpoint)
    /// in line with `param` and `hyper`: a state of another shape is
    /// replaced by a fresh one; a state of another dtype or device is converted;
    /// a buffer `hyper` needs but the state lacks starts at zero, as burn's
    /// own `RmsProp` starts it, a missing master copy as the parameter's
    /// values; a buffer it does not need is dropped. The rounding key is
    /// kept as it is ([`Self::keyed`] sets it).
    pub(crate) fn fit(self, param: &Tensor<D>, hyper: &Hyper) -> (Self, bool) {
        let fits = |t: &Tensor<D>| t.dims() == param.dims();
        let all_fit = fits(&self.square_avg)
            && self.grad_avg.as_ref().is_none_or(fits)
            && self.momentum_buf.as_ref().is_none_or(fits)
            && self.master.as_ref().is_none_or(fits);
        if !all_fit {
            return (Self::fresh(param, hyper), false);
        }
        let device = param.device();
        let dtype = state_dtype(param.dtype());
        let like_param = |t: Tensor<D>| {
            let t = if t.device() == device {
                t
            } else {
                t.to_device(&device)
            };
            if t.dtype() == dtype { t } else { t.cast(dtype) }
        };
        let zeros = || like_param(param.zeros_like());
        let grad_avg = hyper
            .needs_grad_avg()
            .then(|| self.grad_avg.map_or_else(zeros, like_param));
        let momentum_buf = hyper
            .needs_momentum_buf()
            .then(|| self.momentum_buf.map_or_else(zeros, like_param));
        let master = match self.master {
            Some(master) if hyper.master_weights && narrow(param.dtype()) => {
                Some(like_param(master))
            }
            _ => Self::fresh_master(param, hyper),
        };
        let state = Self {
            square_avg: like_param(self.square_avg),
            grad_avg,
            momentum_buf,
            master,
            rounding_key: self.rounding_key,
        };
        (state, true)
    }

    /// Moves every buffer to `device` (no copy for a buffer already there).
    pub(crate) fn moved_to(self, device: &Device) -> Self {
        let move_to = |t: Tensor<D>| {
            if t.device() == *device {
                t
            } else {
                t.to_device(device)
            }
        };
        Self {
            square_avg: move_to(self.square_avg),
            grad_avg: self.grad_avg.map(move_to),
            momentum_buf: self.momentum_buf.map(move_to),
            master: self.master.map(move_to),
            rounding_key: self.rounding_key,
        }
    }
}

const SQUARE_AVG: &str = "square_avg";
const CENTERED: &str = "centered";
const MOMENTUM: &str = "momentum";
/// The prefix of what burn's `RmsPropState` does not have.
const FUSED: &str = "fused";

impl<const D: usize> RecordState for FusedRmsPropState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        out.push_tensor(
            &join_path(prefix, SQUARE_AVG),
            "square_avg",
            self.square_avg.to_data(),
        );
        let centered = join_path(prefix, CENTERED);
        let avg = match &self.grad_avg {
            Some(grad_avg) => self.square_avg.clone() - grad_avg.clone().square(),
            None => self.square_avg.clone(),
        };
        out.push_tensor(&centered, "avg", avg.into_data());
        if let Some(grad_avg) = &self.grad_avg {
            out.push_tensor(&centered, "grad_avg", grad_avg.to_data());
        }
        if let Some(buf) = &self.momentum_buf {
            out.push_tensor(&join_path(prefix, MOMENTUM), "buf", buf.to_data());
        }
        let fused = join_path(prefix, FUSED);
        if let Some(master) = &self.master {
            out.push_tensor(&fused, "master", master.to_data());
        }
        if let Some(key) = self.rounding_key {
            out.push_scalar(&fused, "step", key.step.into());
            out.push_scalar(&fused, "stream", key.stream.into());
        }
    }

    /// `None` (burn then starts the parameter's state afresh on its next
    /// step, as it does for any record it cannot read) when the square
    /// average is missing, a tensor is not a float tensor of rank `D`, or the
    /// buffers disagree in shape or dtype. A master copy of another shape
    /// than the square average, or a rounding key with one of its two
    /// numbers missing or not a non-negative integer, is left out (the step
    /// starts it afresh).
    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let square_avg = src.take_tensor(&join_path(prefix, SQUARE_AVG), "square_avg");
        let centered = join_path(prefix, CENTERED);
        let _derived_avg = src.take_tensor(&centered, "avg");
        let grad_avg = src.take_tensor(&centered, "grad_avg");
        let momentum_buf = src.take_tensor(&join_path(prefix, MOMENTUM), "buf");
        let fused = join_path(prefix, FUSED);
        let master = src.take_tensor(&fused, "master");
        let mut unsigned = |leaf| src.take_scalar(&fused, leaf)?.try_into().ok();
        let rounding_key = match (unsigned("step"), unsigned("stream")) {
            (Some(step), Some(stream)) => Some(RoundingKey { step, stream }),
            _ => None,
        };

        let square_avg = square_avg?;
        let like_square_avg = |data: &TensorData| {
            data.shape() == square_avg.shape() && data.dtype() == square_avg.dtype()
        };
        let valid = square_avg.dtype().is_float()
            && square_avg.rank() == D
            && grad_avg.as_ref().is_none_or(like_square_avg)
            && momentum_buf.as_ref().is_none_or(like_square_avg);
        if !valid {
            return None;
        }
        let load = |data: TensorData| {
            let options = TensorCreationOptions::new(device.clone()).with_dtype(data.dtype());
            Tensor::<D>::from_data(data, options)
        };
        let master = master
            .filter(|m| m.shape() == square_avg.shape() && m.dtype().is_float() && m.rank() == D);
        Some(Self {
            square_avg: load(square_avg),
            grad_avg: grad_avg.map(load),
            momentum_buf: momentum_buf.map(load),
            master: master.map(load),
            rounding_key,
        })
    }
}
