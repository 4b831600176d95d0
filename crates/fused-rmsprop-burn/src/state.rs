//! [`FusedRmsPropState`]: the per-parameter state, recorded under the names
//! burn's own `RmsPropState` uses, so checkpoints move both ways.

use std::sync::atomic::{AtomicU64, Ordering};

use burn::optim::{RecordState, StateSink, StateSource, join_path};
use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};
use fused_rmsprop::{Hyper, Rounding};

use crate::Blockwise8Averages;

/// The dtype the state of a parameter of `dtype` is kept in: `f32` for the
/// 16-bit types (as the kernel's mixed-precision step keeps it), the
/// parameter's own otherwise.
pub(crate) fn state_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

/// The state of one parameter: its running averages and momentum buffer
/// ([`Averages`]: tensors, or 8 bits per element), its master copy and its
/// rounding key.
///
/// With full-precision averages, a record written from this state has the
/// keys of burn's `RmsPropState` (`square_avg.square_avg`, `centered.avg`,
/// `centered.grad_avg`, `momentum.buf`), so a checkpoint of burn's
/// `RmsProp` loads into [`FusedRmsProp`](crate::FusedRmsProp) and the other
/// way round. `centered.avg` (the square average minus the squared gradient
/// average) is derived data that both optimizers recompute every step; it is
/// written for burn's sake and ignored on load. Tensors keep the dtype they
/// were saved with: an `f64` model resumes in `f64`.
///
/// Under the options burn's `RmsProp` lacks, the record holds more, under
/// names of this crate's own (`fused.master`, `fused.step`, `fused.stream`,
/// `fused.blockwise8.*`), which burn's loader leaves unread: the `f32`
/// master copy of a 16-bit parameter under master weights, the rounding key
/// under stochastic rounding, and the codes, scales and maps of 8-bit
/// averages ([`Blockwise8Averages`]; burn's `RmsProp` finds no square
/// average for such a parameter and starts its state afresh). With all
/// three off the record is burn's, key for key.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use fused_rmsprop_burn::{Averages, FullAverages, FusedRmsPropState};
///
/// let v = Tensor::<1>::from_floats([1.0, 2.0], &Device::default());
/// let state = FusedRmsPropState {
///     averages: Averages::Full(FullAverages { square_avg: v, grad_avg: None, momentum_buf: None }),
///     master: None,
///     rounding_key: None,
/// };
/// assert_eq!(state.full().unwrap().square_avg.dims(), [2]);
/// ```
#[derive(Clone, Debug)]
pub struct FusedRmsPropState<const D: usize> {
    /// The running averages and the momentum buffer.
    pub averages: Averages<D>,
    /// The `f32` master copy of a `bf16`/`f16` parameter, which the step
    /// reads and writes in its place (master weights only).
    pub master: Option<Tensor<D>>,
    /// What keys this parameter's stochastic rounding (stochastic rounding
    /// only).
    pub rounding_key: Option<RoundingKey>,
}

/// A parameter's running averages and momentum buffer, in the format
/// `FusedRmsPropConfig::state_format` chose for it.
///
/// ```
/// use burn::optim::Optimizer;
/// use burn::tensor::{Device, Tensor};
/// use fused_rmsprop_burn::{Averages, FusedRmsPropConfig, StateFormat};
///
/// let optim = FusedRmsPropConfig::new().with_state_format(StateFormat::BLOCKWISE8).build();
/// let small = Tensor::<1>::ones([100], &Device::default());
/// let (_, state) = optim.step(1e-3, small.clone(), small, None);
/// // Below MIN_8BIT_ELEMENTS the state stays full precision.
/// assert!(matches!(state.unwrap().averages, Averages::Full(_)));
/// ```
// The full variant, the common one, is the large one: boxing it would
// allocate on every step.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Averages<const D: usize> {
    /// Tensors of the parameter's shape and device ([`FullAverages`]).
    Full(FullAverages<D>),
    /// 8 bits per element and buffer, in host memory: a parameter of at
    /// least [`MIN_8BIT_ELEMENTS`](fused_rmsprop::MIN_8BIT_ELEMENTS) under
    /// [`StateFormat::Blockwise8`](fused_rmsprop::StateFormat).
    Blockwise8(Blockwise8Averages),
}

/// Full-precision averages: tensors of the parameter's shape and device, in
/// the parameter's dtype for `f32`/`f64` parameters and in `f32` for
/// `bf16`/`f16` ones.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use fused_rmsprop_burn::FullAverages;
/// let v = Tensor::<1>::zeros([3], &Device::default());
/// let full = FullAverages { square_avg: v, grad_avg: None, momentum_buf: None };
/// assert_eq!(full.square_avg.dims(), [3]);
/// ```
#[derive(Clone, Debug)]
pub struct FullAverages<const D: usize> {
    /// Running average of the squared gradient.
    pub square_avg: Tensor<D>,
    /// Running average of the gradient (centered only).
    pub grad_avg: Option<Tensor<D>>,
    /// Momentum buffer (momentum > 0 only).
    pub momentum_buf: Option<Tensor<D>>,
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
    /// needs them; 8-bit when `hyper.state_format` quantizes a tensor of
    /// `param`'s size.
    ///
    /// ```
    /// use burn::tensor::{Device, Tensor};
    /// use fused_rmsprop::Hyper;
    /// use fused_rmsprop_burn::FusedRmsPropState;
    ///
    /// let p = Tensor::<2>::zeros([2, 3], &Device::default());
    /// let s = FusedRmsPropState::fresh(&p, &Hyper::default().with_momentum(0.9));
    /// let full = s.full().unwrap();
    /// assert!(full.momentum_buf.is_some() && full.grad_avg.is_none());
    /// ```
    pub fn fresh(param: &Tensor<D>, hyper: &Hyper) -> Self {
        let dtype = state_dtype(param.dtype());
        let averages = if hyper.state_format.quantizes(param.shape().num_elements()) {
            Averages::Blockwise8(Blockwise8Averages::fresh(
                param.dims().to_vec(),
                dtype,
                hyper,
            ))
        } else {
            // Made in the state dtype directly: a 16-bit parameter's initial
            // square average is not rounded to 16 bits on the way.
            let options = TensorCreationOptions::new(param.device()).with_dtype(dtype);
            let full = |value: f64| Tensor::<D>::full(param.shape(), value, options.clone());
            let zeros = || full(0.0);
            Averages::Full(FullAverages {
                square_avg: full(hyper.initial_square_avg),
                grad_avg: hyper.needs_grad_avg().then(zeros),
                momentum_buf: hyper.needs_momentum_buf().then(zeros),
            })
        };
        Self {
            averages,
            master: Self::fresh_master(param, hyper),
            rounding_key: None,
        }
    }

    /// The full-precision averages, if the state has them.
    ///
    /// See the [type's example](Self).
    pub fn full(&self) -> Option<&FullAverages<D>> {
        match &self.averages {
            Averages::Full(full) => Some(full),
            Averages::Blockwise8(_) => None,
        }
    }

    /// The 8-bit averages, if the state has them.
    ///
    /// ```
    /// use burn::tensor::{Device, Tensor};
    /// use fused_rmsprop::{Hyper, StateFormat};
    /// use fused_rmsprop_burn::FusedRmsPropState;
    ///
    /// let p = Tensor::<1>::zeros([4096], &Device::default());
    /// let s = FusedRmsPropState::fresh(&p, &Hyper::default().with_state_format(StateFormat::BLOCKWISE8));
    /// assert_eq!(s.blockwise8().unwrap().state_bytes(), 4096 + 16 * 4);
    /// ```
    pub fn blockwise8(&self) -> Option<&Blockwise8Averages> {
        match &self.averages {
            Averages::Full(_) => None,
            Averages::Blockwise8(averages) => Some(averages),
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
    /// values; a buffer it does not need is dropped. Full averages where
    /// `hyper` asks for 8 bits are quantized, 8-bit ones where it asks for
    /// full precision dequantized; 8-bit ones of another state type go
    /// through full precision and back, the others through the kernel's
    /// `Blockwise8State::fit` (a buffer added or dropped, a map changed).
    /// The rounding key is kept as it is ([`Self::keyed`] sets it).
    pub(crate) fn fit(self, param: &Tensor<D>, hyper: &Hyper) -> (Self, bool) {
        let fits = |t: &Tensor<D>| t.dims() == param.dims();
        let averages_fit = match &self.averages {
            Averages::Full(full) => {
                fits(&full.square_avg)
                    && full.grad_avg.as_ref().is_none_or(fits)
                    && full.momentum_buf.as_ref().is_none_or(fits)
            }
            Averages::Blockwise8(averages) => averages.dims() == param.dims(),
        };
        if !averages_fit || !self.master.as_ref().is_none_or(fits) {
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
        let quantizes = hyper.state_format.quantizes(param.shape().num_elements());
        let fit_full = |full: FullAverages<D>| {
            let zeros = || like_param(param.zeros_like());
            let full = FullAverages {
                square_avg: like_param(full.square_avg),
                grad_avg: hyper
                    .needs_grad_avg()
                    .then(|| full.grad_avg.map_or_else(zeros, like_param)),
                momentum_buf: hyper
                    .needs_momentum_buf()
                    .then(|| full.momentum_buf.map_or_else(zeros, like_param)),
            };
            if quantizes {
                Averages::Blockwise8(Blockwise8Averages::quantize(&full, hyper))
            } else {
                Averages::Full(full)
            }
        };
        let averages = match self.averages {
            Averages::Blockwise8(averages) if quantizes && averages.is_of(dtype) => {
                Averages::Blockwise8(averages.fit(hyper))
            }
            Averages::Blockwise8(averages) => fit_full(averages.dequantize(&device)),
            Averages::Full(full) => fit_full(full),
        };
        let master = match self.master {
            Some(master) if hyper.master_weights && narrow(param.dtype()) => {
                Some(like_param(master))
            }
            _ => Self::fresh_master(param, hyper),
        };
        let state = Self {
            averages,
            master,
            rounding_key: self.rounding_key,
        };
        (state, true)
    }

    /// Moves every tensor to `device` (no copy for a tensor already there;
    /// 8-bit averages stay in host memory).
    pub(crate) fn moved_to(self, device: &Device) -> Self {
        let move_to = |t: Tensor<D>| {
            if t.device() == *device {
                t
            } else {
                t.to_device(device)
            }
        };
        let averages = match self.averages {
            Averages::Full(full) => Averages::Full(FullAverages {
                square_avg: move_to(full.square_avg),
                grad_avg: full.grad_avg.map(move_to),
                momentum_buf: full.momentum_buf.map(move_to),
            }),
            blockwise8 @ Averages::Blockwise8(_) => blockwise8,
        };
        Self {
            averages,
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
        match &self.averages {
            Averages::Full(full) => full.flatten(prefix, out),
            Averages::Blockwise8(averages) => averages.flatten(prefix, out),
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
    /// step, as it does for any record it cannot read) when the averages
    /// are missing or malformed: for full precision, a tensor that is not a
    /// float tensor of rank `D`, or buffers that disagree in shape or dtype;
    /// for 8 bits, see [`Blockwise8Averages`]' record. A master copy of
    /// another shape than the averages, or a rounding key with one of its
    /// two numbers missing or not a non-negative integer, is left out (the
    /// step starts it afresh).
    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let full = FullAverages::unflatten(prefix, src, device);
        let blockwise8 = Blockwise8Averages::unflatten::<D>(prefix, src);
        let fused = join_path(prefix, FUSED);
        let master = src.take_tensor(&fused, "master");
        let mut unsigned = |leaf| src.take_scalar(&fused, leaf)?.try_into().ok();
        let rounding_key = match (unsigned("step"), unsigned("stream")) {
            (Some(step), Some(stream)) => Some(RoundingKey { step, stream }),
            _ => None,
        };

        let averages = match (full, blockwise8) {
            (Some(full), _) => Averages::Full(full),
            (None, Some(blockwise8)) => Averages::Blockwise8(blockwise8),
            (None, None) => return None,
        };
        let dims = match &averages {
            Averages::Full(full) => full.square_avg.dims().to_vec(),
            Averages::Blockwise8(averages) => averages.dims().to_vec(),
        };
        let master = master
            .filter(|m| m.shape()[..] == *dims && m.dtype().is_float() && m.rank() == D)
            .map(|data| load(data, device));
        Some(Self {
            averages,
            master,
            rounding_key,
        })
    }
}

/// `data` as a tensor on `device`, in its own dtype.
fn load<const D: usize>(data: TensorData, device: &Device) -> Tensor<D> {
    let options = TensorCreationOptions::new(device.clone()).with_dtype(data.dtype());
    Tensor::<D>::from_data(data, options)
}

impl<const D: usize> FullAverages<D> {
    /// Writes the averages under burn's `RmsPropState` names.
    fn flatten(&self, prefix: &str, out: &mut StateSink) {
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
    }

    /// Reads what [`Self::flatten`] (or burn's `RmsPropState`) wrote;
    /// `None` when the square average is missing, a tensor is not a float
    /// tensor of rank `D`, or the buffers disagree in shape or dtype.
    fn unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let square_avg = src.take_tensor(&join_path(prefix, SQUARE_AVG), "square_avg");
        let centered = join_path(prefix, CENTERED);
        let _derived_avg = src.take_tensor(&centered, "avg");
        let grad_avg = src.take_tensor(&centered, "grad_avg");
        let momentum_buf = src.take_tensor(&join_path(prefix, MOMENTUM), "buf");

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
        Some(Self {
            square_avg: load(square_avg, device),
            grad_avg: grad_avg.map(|data| load(data, device)),
            momentum_buf: momentum_buf.map(|data| load(data, device)),
        })
    }
}
