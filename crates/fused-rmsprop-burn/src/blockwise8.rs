//! [`Blockwise8Averages`]: a parameter's running averages and momentum
//! buffer in 8 bits ([`StateFormat::Blockwise8`](fused_rmsprop::StateFormat)),
//! kept in host memory as the kernel's [`Blockwise8State`], with its
//! conversions to and from tensors and its record.
//!
//! The codes and scales are not burn tensors: burn has no 8-bit state type
//! of its own, the kernel steps them where they lie, and a clone shares
//! them (`Arc`) until one side writes, as a tensor shares its buffer.

use std::sync::Arc;

use burn::optim::{StateSink, StateSource, join_path};
use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};
use fused_rmsprop::{Blockwise8State, Float, Hyper, QuantMap, Quantized, State};

use crate::state::FullAverages;

/// A parameter's running averages and momentum buffer with one byte per
/// element and buffer plus one scale per block of
/// [`BLOCK_ELEMENTS`](fused_rmsprop::BLOCK_ELEMENTS): what the optimizer
/// keeps for a parameter of at least
/// [`MIN_8BIT_ELEMENTS`](fused_rmsprop::MIN_8BIT_ELEMENTS) under
/// `FusedRmsPropConfig::with_state_format(StateFormat::BLOCKWISE8)` (or
/// `BITSANDBYTES`).
///
/// The scales are `f32` for `f32`, `bf16` and `f16` parameters and `f64`
/// for `f64` ones (the state type of the full-state step). The buffers live
/// in host memory on every device; a clone shares them until one side
/// steps.
///
/// ```
/// use burn::optim::Optimizer;
/// use burn::tensor::{Device, Tensor};
/// use fused_rmsprop_burn::{Averages, FusedRmsPropConfig, StateFormat};
///
/// let optim = FusedRmsPropConfig::new().with_state_format(StateFormat::BLOCKWISE8).build();
/// let p = Tensor::<2>::ones([64, 128], &Device::default());
/// let (_, state) = optim.step(1e-3, p.clone(), p.clone(), None);
/// let Averages::Blockwise8(averages) = state.unwrap().averages else { panic!() };
/// assert_eq!(averages.dims(), [64, 128]);
/// let square_avg = &averages.f32().unwrap().square_avg;
/// assert_eq!((square_avg.codes.len(), square_avg.scales.len()), (8192, 32));
/// // With momentum (burn's default 0.9): two buffers of 8192 codes and 32 scales each.
/// assert_eq!(averages.state_bytes(), 2 * (8192 + 32 * 4));
/// ```
#[derive(Clone, Debug)]
pub struct Blockwise8Averages {
    dims: Vec<usize>,
    buffers: Buffers,
}

/// The kernel's 8-bit state, by state type.
#[derive(Clone, Debug)]
pub(crate) enum Buffers {
    F32(Arc<Blockwise8State<f32>>),
    F64(Arc<Blockwise8State<f64>>),
}

/// A state type of the kernel (`f32` or `f64`) and how its 8-bit state
/// sits in [`Blockwise8Averages`].
pub(crate) trait Blockwise8Element: Float + burn::tensor::Element + bytemuck::Pod {
    /// The state type as a burn dtype.
    const DTYPE: DType;
    /// The state, writable (a copy first if a clone shares it), when it is
    /// of this type.
    fn state_mut(averages: &mut Blockwise8Averages) -> Option<&mut Blockwise8State<Self>>;
    /// `state` as [`Buffers`].
    fn wrap(state: Blockwise8State<Self>) -> Buffers;
}

impl Blockwise8Element for f32 {
    const DTYPE: DType = DType::F32;
    fn state_mut(averages: &mut Blockwise8Averages) -> Option<&mut Blockwise8State<f32>> {
        match &mut averages.buffers {
            Buffers::F32(state) => Some(Arc::make_mut(state)),
            Buffers::F64(_) => None,
        }
    }
    fn wrap(state: Blockwise8State<f32>) -> Buffers {
        Buffers::F32(Arc::new(state))
    }
}

impl Blockwise8Element for f64 {
    const DTYPE: DType = DType::F64;
    fn state_mut(averages: &mut Blockwise8Averages) -> Option<&mut Blockwise8State<f64>> {
        match &mut averages.buffers {
            Buffers::F64(state) => Some(Arc::make_mut(state)),
            Buffers::F32(_) => None,
        }
    }
    fn wrap(state: Blockwise8State<f64>) -> Buffers {
        Buffers::F64(Arc::new(state))
    }
}

impl Blockwise8Averages {
    /// The shape of the parameter this state belongs to.
    ///
    /// See the [type's example](Self).
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Bytes of memory the codes and scales take.
    ///
    /// See the [type's example](Self).
    pub fn state_bytes(&self) -> usize {
        match &self.buffers {
            Buffers::F32(state) => state.state_bytes(),
            Buffers::F64(state) => state.state_bytes(),
        }
    }

    /// The kernel's state, for an `f32`, `bf16` or `f16` parameter.
    ///
    /// See the [type's example](Self).
    pub fn f32(&self) -> Option<&Blockwise8State<f32>> {
        match &self.buffers {
            Buffers::F32(state) => Some(state),
            Buffers::F64(_) => None,
        }
    }

    /// The kernel's state, for an `f64` parameter.
    ///
    /// ```
    /// use burn::optim::Optimizer;
    /// use burn::tensor::{DType, Device, Tensor, TensorCreationOptions};
    /// use fused_rmsprop_burn::{Averages, FusedRmsPropConfig, StateFormat};
    ///
    /// let optim = FusedRmsPropConfig::new().with_state_format(StateFormat::BLOCKWISE8).build();
    /// let options = TensorCreationOptions::new(Device::default()).with_dtype(DType::F64);
    /// let p = Tensor::<1>::full([5000], 1.0, options);
    /// let (_, state) = optim.step(1e-3, p.clone(), p, None);
    /// let Averages::Blockwise8(averages) = state.unwrap().averages else { panic!() };
    /// assert!(averages.f64().is_some() && averages.f32().is_none());
    /// ```
    pub fn f64(&self) -> Option<&Blockwise8State<f64>> {
        match &self.buffers {
            Buffers::F64(state) => Some(state),
            Buffers::F32(_) => None,
        }
    }

    /// Fresh 8-bit state for a parameter of shape `dims` whose state type
    /// is `dtype` (`f32` or `f64`), as the kernel makes it.
    pub(crate) fn fresh(dims: Vec<usize>, dtype: DType, hyper: &Hyper) -> Self {
        let len = dims.iter().product();
        let buffers = if dtype == DType::F64 {
            Buffers::F64(Arc::new(Blockwise8State::new(len, hyper)))
        } else {
            Buffers::F32(Arc::new(Blockwise8State::new(len, hyper)))
        };
        Self { dims, buffers }
    }

    /// Whether the buffers are of the state type `dtype` (`f64`, or `f32`
    /// for the other parameter types).
    pub(crate) fn is_of(&self, dtype: DType) -> bool {
        matches!(
            (&self.buffers, dtype),
            (Buffers::F64(_), DType::F64) | (Buffers::F32(_), DType::F32)
        )
    }

    /// The kernel's [`Blockwise8State::fit`] for `hyper`: buffers added,
    /// dropped or re-quantized with the maps it names (the shape fits).
    pub(crate) fn fit(mut self, hyper: &Hyper) -> Self {
        let len = self.dims.iter().product();
        self.buffers = match self.buffers {
            Buffers::F32(state) => Buffers::F32(Arc::new(unwrap_arc(state).fit(len, hyper).0)),
            Buffers::F64(state) => Buffers::F64(Arc::new(unwrap_arc(state).fit(len, hyper).0)),
        };
        self
    }

    /// The kernel's 8-bit state of a parameter of shape `dims` (the batched
    /// route's), as a parameter's averages.
    pub(crate) fn from_kernel<S: Blockwise8Element>(
        dims: Vec<usize>,
        state: Blockwise8State<S>,
    ) -> Self {
        Self {
            dims,
            buffers: S::wrap(state),
        }
    }

    /// Full-state tensors quantized with the maps `hyper.state_format`
    /// names: one read of each tensor into host memory.
    pub(crate) fn quantize<const D: usize>(full: &FullAverages<D>, hyper: &Hyper) -> Self {
        fn of<S: Blockwise8Element, const D: usize>(
            full: &FullAverages<D>,
            hyper: &Hyper,
        ) -> Buffers {
            let values = |t: &Tensor<D>| -> Vec<S> {
                t.to_data()
                    .convert::<S>()
                    .try_into_vec()
                    .expect("converted to the state type")
            };
            let state = State {
                square_avg: values(&full.square_avg),
                grad_avg: full.grad_avg.as_ref().map(values),
                momentum_buf: full.momentum_buf.as_ref().map(values),
                master: None,
                step: 0,
            };
            S::wrap(Blockwise8State::from_full(&state, hyper))
        }
        let buffers = if full.square_avg.dtype() == DType::F64 {
            of::<f64, D>(full, hyper)
        } else {
            of::<f32, D>(full, hyper)
        };
        Self {
            dims: full.square_avg.dims().to_vec(),
            buffers,
        }
    }

    /// The values the codes stand for, as tensors on `device` of the state
    /// type.
    pub(crate) fn dequantize<const D: usize>(&self, device: &Device) -> FullAverages<D> {
        fn of<S: Blockwise8Element, const D: usize>(
            state: &Blockwise8State<S>,
            dims: &[usize],
            device: &Device,
        ) -> FullAverages<D> {
            let options = TensorCreationOptions::new(device.clone()).with_dtype(S::DTYPE);
            let tensor = |q: &Quantized<S>| {
                Tensor::<D>::from_data(
                    TensorData::new(q.to_values(), dims.to_vec()),
                    options.clone(),
                )
            };
            FullAverages {
                square_avg: tensor(&state.square_avg),
                grad_avg: state.grad_avg.as_ref().map(tensor),
                momentum_buf: state.momentum_buf.as_ref().map(tensor),
            }
        }
        match &self.buffers {
            Buffers::F32(state) => of(state, &self.dims, device),
            Buffers::F64(state) => of(state, &self.dims, device),
        }
    }
}

/// The value out of `arc`, copied only when a clone shares it.
fn unwrap_arc<T: Clone>(arc: Arc<T>) -> T {
    Arc::try_unwrap(arc).unwrap_or_else(|shared| (*shared).clone())
}

/// Where the 8-bit buffers sit in a record, under the parameter's prefix.
const RECORD_PATH: &str = "fused.blockwise8";
const BUFFERS: [&str; 3] = ["square_avg", "grad_avg", "momentum_buf"];

/// One buffer as a record holds it: codes, scales, map.
type Taken = (TensorData, Option<TensorData>, Option<u64>);

/// A map as the integer its record holds.
fn map_code(map: QuantMap) -> u64 {
    match map {
        QuantMap::DynamicUnsigned => 0,
        QuantMap::DynamicSigned => 1,
    }
}

impl Blockwise8Averages {
    /// Writes each buffer as `{prefix}.fused.blockwise8.{buffer}.codes`
    /// (`u8`, the parameter's shape), `.scales` (the state type, one per
    /// block) and `.map` (a scalar: 0 the unsigned map, 1 the signed one).
    pub(crate) fn flatten(&self, prefix: &str, out: &mut StateSink) {
        fn of<S: Blockwise8Element>(
            state: &Blockwise8State<S>,
            dims: &[usize],
            path: &str,
            out: &mut StateSink,
        ) {
            let buffers = [
                Some(&state.square_avg),
                state.grad_avg.as_ref(),
                state.momentum_buf.as_ref(),
            ];
            for (name, q) in BUFFERS.iter().zip(buffers) {
                let Some(q) = q else { continue };
                let path = join_path(path, name);
                let codes = TensorData::new(q.codes.clone(), dims.to_vec());
                out.push_tensor(&path, "codes", codes);
                let scales = TensorData::new(q.scales.clone(), [q.scales.len()]);
                out.push_tensor(&path, "scales", scales);
                out.push_scalar(&path, "map", map_code(q.map).into());
            }
        }
        let path = join_path(prefix, RECORD_PATH);
        match &self.buffers {
            Buffers::F32(state) => of(state, &self.dims, &path, out),
            Buffers::F64(state) => of(state, &self.dims, &path, out),
        }
    }

    /// Reads what [`Self::flatten`] wrote; `None` when there is no square
    /// average, or any buffer is malformed: codes not `u8` of rank `D`, the
    /// buffers of different shapes or scale types, a scale count that is
    /// not one per block, a scale that is not finite and positive (every
    /// scale a step stores is), or a map that is neither 0 nor 1.
    pub(crate) fn unflatten<const D: usize>(prefix: &str, src: &mut StateSource) -> Option<Self> {
        let path = join_path(prefix, RECORD_PATH);
        let taken = BUFFERS.map(|name| {
            let path = join_path(&path, name);
            let codes = src.take_tensor(&path, "codes");
            let scales = src.take_tensor(&path, "scales");
            let map = src
                .take_scalar(&path, "map")
                .and_then(|map| u64::try_from(map).ok());
            codes.map(|codes| (codes, scales, map))
        });
        let [square_avg, grad_avg, momentum_buf] = taken;
        let (codes, _, _) = square_avg.as_ref()?;
        let dims = codes.shape().to_vec();
        if dims.len() != D {
            return None;
        }
        let scale_type = square_avg.as_ref()?.1.as_ref()?.dtype();
        fn read<S: Blockwise8Element>(
            buffer: Option<Taken>,
            dims: &[usize],
        ) -> Result<Option<Quantized<S>>, ()> {
            let Some((codes, scales, map)) = buffer else {
                return Ok(None);
            };
            let (Some(scales), Some(map)) = (scales, map) else {
                return Err(());
            };
            let map = match map {
                0 => QuantMap::DynamicUnsigned,
                1 => QuantMap::DynamicSigned,
                _ => return Err(()),
            };
            let len: usize = dims.iter().product();
            let blocks = len.div_ceil(fused_rmsprop::BLOCK_ELEMENTS);
            if codes.dtype() != DType::U8
                || codes.shape()[..] != *dims
                || scales.dtype() != S::DTYPE
                || scales.shape()[..] != [blocks]
            {
                return Err(());
            }
            let codes: Vec<u8> = codes.try_into_vec().map_err(|_| ())?;
            let scales: Vec<S> = scales.try_into_vec().map_err(|_| ())?;
            if !scales
                .iter()
                .all(|s| s.to_f64().is_finite() && s.to_f64() > 0.0)
            {
                return Err(());
            }
            Ok(Some(Quantized { codes, scales, map }))
        }
        fn state<S: Blockwise8Element>(
            [square_avg, grad_avg, momentum_buf]: [Option<Taken>; 3],
            dims: &[usize],
        ) -> Option<Buffers> {
            let state = Blockwise8State {
                square_avg: read::<S>(square_avg, dims).ok()??,
                grad_avg: read::<S>(grad_avg, dims).ok()?,
                momentum_buf: read::<S>(momentum_buf, dims).ok()?,
                master: None,
                step: 0,
            };
            Some(S::wrap(state))
        }
        let buffers = [square_avg, grad_avg, momentum_buf];
        let buffers = match scale_type {
            DType::F32 => state::<f32>(buffers, &dims)?,
            DType::F64 => state::<f64>(buffers, &dims)?,
            _ => return None,
        };
        Some(Self { dims, buffers })
    }
}
