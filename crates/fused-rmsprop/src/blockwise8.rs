//! 8-bit optimizer state: each state buffer kept as one `u8` code per
//! element and one scale per block of [`BLOCK_ELEMENTS`] elements, as
//! bitsandbytes' 8-bit optimizers keep it (Dettmers et al., "8-bit
//! Optimizers via Block-wise Quantization", ICLR 2022).
//!
//! **The step, per block** (the specification; every path does exactly
//! this, so every path writes the same bits):
//! 1. each state value is `map[code] * scale` ([`QuantMap`]), computed in
//!    the state type;
//! 2. the block is stepped by the full-precision kernel (the same element
//!    update, parameters updated from the new full-precision state, not
//!    from its quantized value);
//! 3. the block's new scale is the largest finite magnitude of its new
//!    values (`1` when there is none or it is zero, as bitsandbytes stores
//!    an all-zero block), and each value is stored as the code of
//!    `value / scale` (rounded to `f32`) under [`QuantMap::quantize`]'s
//!    rule.
//!
//! A NaN state value (only [`NonFinite::Propagate`](crate::NonFinite) lets
//! one arise; its parameter is NaN from the same step) is stored as the
//! code of zero, and an infinite one as the code of `±1`: it saturates to
//! the block's largest finite magnitude. Neither touches the scale, so the
//! other elements of the block keep their values.
//!
//! Blocks are counted from the first element of the tensor, threads split
//! the work on block boundaries, and a block's scale depends only on its
//! own values: how the work is split never shows in the bits.

use pulp::{Simd, WithSimd};

use crate::execution::ResolvedKernel;
use crate::step::{Chunk, Coefficients};
use crate::{Error, Float, Hyper, Param, QuantMap, State, Threads};
use crate::{Linger, parallel, quant_map};

/// Elements per block: each block of a quantized buffer has one scale.
pub const BLOCK_ELEMENTS: usize = 256;

/// The smallest tensor whose state [`StateFormat::Blockwise8`] quantizes:
/// smaller ones keep full-precision state (bitsandbytes'
/// `min_8bit_size`), where the scales would cost more than they save.
pub const MIN_8BIT_ELEMENTS: usize = 4096;

/// How the optimizer keeps its state buffers.
///
/// ```
/// use fused_rmsprop::{MIN_8BIT_ELEMENTS, StateFormat};
/// assert!(!StateFormat::Full.quantizes(1 << 20));
/// assert!(StateFormat::BLOCKWISE8.quantizes(MIN_8BIT_ELEMENTS));
/// assert!(!StateFormat::BLOCKWISE8.quantizes(MIN_8BIT_ELEMENTS - 1));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum StateFormat {
    /// One value of the state type per element and buffer (`f32`, or `f64`
    /// for `f64` parameters): [`State`].
    #[default]
    Full,
    /// One byte per element and buffer plus a scale per block
    /// ([`Blockwise8State`]), for tensors of at least
    /// [`MIN_8BIT_ELEMENTS`]. The gradient average and the momentum buffer
    /// use [`QuantMap::DynamicSigned`]; the square average uses
    /// `square_avg_map`.
    Blockwise8 {
        /// The square average's map: [`QuantMap::DynamicUnsigned`] spends
        /// all 256 codes on its non-negative values; bitsandbytes'
        /// `RMSprop8bit` uses [`QuantMap::DynamicSigned`], of which a
        /// non-negative buffer reaches 129 codes.
        square_avg_map: QuantMap,
    },
}

impl StateFormat {
    /// 8-bit state with the unsigned map for the square average.
    pub const BLOCKWISE8: Self = Self::Blockwise8 {
        square_avg_map: QuantMap::DynamicUnsigned,
    };
    /// 8-bit state as bitsandbytes' `RMSprop8bit` keeps it: the signed
    /// map for the square average too.
    pub const BITSANDBYTES: Self = Self::Blockwise8 {
        square_avg_map: QuantMap::DynamicSigned,
    };

    /// Whether a tensor of `len` elements gets 8-bit state.
    pub fn quantizes(self, len: usize) -> bool {
        matches!(self, Self::Blockwise8 { .. }) && len >= MIN_8BIT_ELEMENTS
    }

    /// The square average's map (the unsigned one for [`StateFormat::Full`],
    /// for a caller quantizing full state itself).
    ///
    /// ```
    /// use fused_rmsprop::{QuantMap, StateFormat};
    /// assert_eq!(StateFormat::BITSANDBYTES.square_avg_map(), QuantMap::DynamicSigned);
    /// ```
    pub fn square_avg_map(self) -> QuantMap {
        match self {
            Self::Full => QuantMap::DynamicUnsigned,
            Self::Blockwise8 { square_avg_map } => square_avg_map,
        }
    }
}

/// One quantized state buffer, owned: a code per element, a scale per
/// block ([`BLOCK_ELEMENTS`]), and the map the codes index.
///
/// ```
/// use fused_rmsprop::{QuantMap, Quantized};
/// let values = vec![0.5f32, 0.25, 0.0, 1e-3];
/// let q = Quantized::from_values(&values, QuantMap::DynamicUnsigned);
/// assert_eq!(q.scales, vec![0.5]);
/// let back = q.to_values();
/// assert_eq!((back[0], back[2]), (0.5, 0.0)); // the block's largest value and zero are exact
/// assert!((back[1] - 0.25).abs() < 0.5 * 0.004); // the rest within the map's resolution
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized<S> {
    /// One code per element.
    pub codes: Vec<u8>,
    /// One scale per block of [`BLOCK_ELEMENTS`] elements (the last block
    /// may be shorter).
    pub scales: Vec<S>,
    /// The map the codes index.
    pub map: QuantMap,
}

impl<S: Float> Quantized<S> {
    /// `len` elements of value `value` (finite, `>= 0` for the unsigned
    /// map): exact, since the map holds `1` and the scale is `value`.
    ///
    /// ```
    /// use fused_rmsprop::{QuantMap, Quantized};
    /// let q = Quantized::<f32>::filled(300, 0.0, QuantMap::DynamicSigned);
    /// assert_eq!(q.scales.len(), 2);
    /// assert!(q.to_values().iter().all(|v| *v == 0.0));
    /// ```
    pub fn filled(len: usize, value: S, map: QuantMap) -> Self {
        let mut block = vec![value; len.min(BLOCK_ELEMENTS)];
        let (mut code, mut scale) = (vec![0u8; block.len()], [S::ZERO]);
        quantize_block(map.table(), &mut block, &mut code, &mut scale[0]);
        let blocks = len.div_ceil(BLOCK_ELEMENTS);
        Self {
            codes: vec![code.first().copied().unwrap_or(0); len],
            scales: vec![scale[0]; blocks],
            map,
        }
    }

    /// `values` quantized as a step stores them.
    pub fn from_values(values: &[S], map: QuantMap) -> Self {
        let mut codes = vec![0u8; values.len()];
        let mut scales = vec![S::ZERO; values.len().div_ceil(BLOCK_ELEMENTS)];
        let table = map.table();
        let mut scratch = [S::ZERO; BLOCK_ELEMENTS];
        for ((block, codes), scale) in values
            .chunks(BLOCK_ELEMENTS)
            .zip(codes.chunks_mut(BLOCK_ELEMENTS))
            .zip(&mut scales)
        {
            let scratch = &mut scratch[..block.len()];
            scratch.copy_from_slice(block);
            quantize_block(table, scratch, codes, scale);
        }
        Self { codes, scales, map }
    }

    /// The values the codes stand for, as a step reads them.
    pub fn to_values(&self) -> Vec<S> {
        let mut values = vec![S::ZERO; self.codes.len()];
        dequantize(self.map.table(), &self.codes, &self.scales, &mut values);
        values
    }

    /// Borrows the buffer as a [`QuantizedSlices`] view.
    ///
    /// ```
    /// # use fused_rmsprop::{QuantMap, Quantized};
    /// let mut q = Quantized::<f32>::filled(4, 1.0, QuantMap::DynamicUnsigned);
    /// assert_eq!(q.slices_mut().codes.len(), 4);
    /// ```
    pub fn slices_mut(&mut self) -> QuantizedSlices<'_, S> {
        QuantizedSlices {
            codes: &mut self.codes,
            scales: &mut self.scales,
            map: self.map,
        }
    }
}

/// One quantized state buffer, borrowed (an adapter's tensors).
///
/// ```
/// use fused_rmsprop::{QuantMap, QuantizedSlices};
/// let (mut codes, mut scales) = ([0u8; 10], [1.0f32]);
/// let q = QuantizedSlices { codes: &mut codes, scales: &mut scales, map: QuantMap::DynamicUnsigned };
/// assert_eq!(q.codes.len(), 10);
/// ```
#[derive(Debug)]
pub struct QuantizedSlices<'a, S> {
    /// One code per element.
    pub codes: &'a mut [u8],
    /// One scale per block of [`BLOCK_ELEMENTS`] elements.
    pub scales: &'a mut [S],
    /// The map the codes index.
    pub map: QuantMap,
}

impl<'a, S> QuantizedSlices<'a, S> {
    /// A shorter-lived view of the same buffers (to cut a shard from).
    ///
    /// ```
    /// use fused_rmsprop::{QuantMap, QuantizedSlices};
    /// let (mut codes, mut scales) = ([0u8; 512], [1.0f32; 2]);
    /// let mut q = QuantizedSlices { codes: &mut codes, scales: &mut scales, map: QuantMap::DynamicUnsigned };
    /// let r = q.reborrow();
    /// let second_block = QuantizedSlices { codes: &mut r.codes[256..], scales: &mut r.scales[1..], map: r.map };
    /// assert_eq!(second_block.codes.len(), 256);
    /// ```
    pub fn reborrow(&mut self) -> QuantizedSlices<'_, S> {
        QuantizedSlices {
            codes: self.codes,
            scales: self.scales,
            map: self.map,
        }
    }

    /// Splits at element `mid`, a multiple of [`BLOCK_ELEMENTS`] or the
    /// end.
    fn split_at(self, mid: usize) -> (Self, Self) {
        debug_assert!(mid.is_multiple_of(BLOCK_ELEMENTS) || mid == self.codes.len());
        let (codes_a, codes_b) = self.codes.split_at_mut(mid);
        let blocks = mid.div_ceil(BLOCK_ELEMENTS).min(self.scales.len());
        let (scales_a, scales_b) = self.scales.split_at_mut(blocks);
        let map = self.map;
        (
            Self {
                codes: codes_a,
                scales: scales_a,
                map,
            },
            Self {
                codes: codes_b,
                scales: scales_b,
                map,
            },
        )
    }
}

/// The state of one parameter tensor with 8-bit buffers
/// ([`StateFormat::Blockwise8`]): as [`State`], each buffer quantized.
/// The master copy of a 16-bit parameter stays full precision (it is the
/// parameter, not a statistic of it).
///
/// ```
/// use fused_rmsprop::{Blockwise8State, Hyper, QuantMap, StateFormat};
/// let h = Hyper::default().with_momentum(0.9).with_state_format(StateFormat::BLOCKWISE8);
/// let s = Blockwise8State::<f32>::new(5000, &h);
/// assert_eq!(s.square_avg.codes.len(), 5000);
/// assert_eq!(s.square_avg.scales.len(), 20); // 5000 / 256, rounded up
/// assert_eq!(s.momentum_buf.as_ref().unwrap().map, QuantMap::DynamicSigned);
/// assert_eq!(s.state_bytes(), 2 * (5000 + 20 * 4));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Blockwise8State<S> {
    /// Running average of squared gradients.
    pub square_avg: Quantized<S>,
    /// Running average of gradients (centered only).
    pub grad_avg: Option<Quantized<S>>,
    /// Momentum buffer (momentum > 0 only).
    pub momentum_buf: Option<Quantized<S>>,
    /// The full-precision master copy of a 16-bit parameter
    /// ([`Hyper::master_weights`] only; made by
    /// [`Blockwise8State::for_params`]).
    pub master: Option<Vec<S>>,
    /// Successful steps taken with this state.
    pub step: u64,
}

impl<S: Float> Blockwise8State<S> {
    /// Fresh state for `len` elements, as [`State::new`] makes it, each
    /// buffer quantized with the maps `hyper.state_format` names.
    pub fn new(len: usize, hyper: &Hyper) -> Self {
        let square_map = hyper.state_format.square_avg_map();
        let signed = QuantMap::DynamicSigned;
        Self {
            square_avg: Quantized::filled(len, S::from_f64(hyper.initial_square_avg), square_map),
            grad_avg: hyper
                .needs_grad_avg()
                .then(|| Quantized::filled(len, S::ZERO, signed)),
            momentum_buf: hyper
                .needs_momentum_buf()
                .then(|| Quantized::filled(len, S::ZERO, signed)),
            master: None,
            step: 0,
        }
    }

    /// Fresh state for `params`: as [`Blockwise8State::new`], plus the
    /// master copy when `hyper.master_weights` is on and the parameters
    /// are 16-bit.
    ///
    /// ```
    /// use fused_rmsprop::{bf16, Blockwise8State, Hyper};
    /// let params = vec![bf16::from_f32(0.5); 300];
    /// let s = Blockwise8State::for_params(&params, &Hyper::default().with_master_weights(true));
    /// assert_eq!(s.master.unwrap()[0], 0.5f32);
    /// ```
    pub fn for_params<P: Param<State = S>>(params: &[P], hyper: &Hyper) -> Self {
        let mut state = Self::new(params.len(), hyper);
        if P::NARROWS && hyper.master_weights {
            state.master = Some(params.iter().map(|p| p.widen()).collect());
        }
        state
    }

    /// This state brought in line with a tensor of `len` elements under
    /// `hyper`, as [`State::fit`] does for full state: a buffer of another
    /// length makes it a fresh [`Blockwise8State::new`] (and the `bool` is
    /// `false`); otherwise a buffer `hyper` needs but the state lacks starts
    /// at zero, one it does not need is dropped, and one quantized with
    /// another map than `hyper.state_format` names is quantized again from
    /// its values. The master copy and the step count are kept.
    ///
    /// ```
    /// use fused_rmsprop::{Blockwise8State, Hyper, QuantMap, StateFormat};
    /// let h = Hyper::default().with_state_format(StateFormat::BLOCKWISE8);
    /// let plain = Blockwise8State::<f32>::new(300, &h);
    /// let (fitted, kept) = plain.clone().fit(300, &h.with_momentum(0.9));
    /// assert!(kept && fitted.momentum_buf.is_some());
    /// let (remapped, _) = plain.clone().fit(300, &h.with_state_format(StateFormat::BITSANDBYTES));
    /// assert_eq!(remapped.square_avg.map, QuantMap::DynamicSigned);
    /// assert!(!plain.fit(301, &h).1);
    /// ```
    pub fn fit(self, len: usize, hyper: &Hyper) -> (Self, bool) {
        let blocks = len.div_ceil(BLOCK_ELEMENTS);
        let fits = |q: &Quantized<S>| q.codes.len() == len && q.scales.len() == blocks;
        let all_fit = fits(&self.square_avg)
            && self.grad_avg.as_ref().is_none_or(fits)
            && self.momentum_buf.as_ref().is_none_or(fits)
            && self.master.as_ref().is_none_or(|m| m.len() == len);
        if !all_fit {
            return (Self::new(len, hyper), false);
        }
        let with_map = |q: Quantized<S>, map: QuantMap| {
            if q.map == map {
                q
            } else {
                Quantized::from_values(&q.to_values(), map)
            }
        };
        let signed = QuantMap::DynamicSigned;
        let zeros = || Quantized::filled(len, S::ZERO, signed);
        let state = Self {
            square_avg: with_map(self.square_avg, hyper.state_format.square_avg_map()),
            grad_avg: hyper
                .needs_grad_avg()
                .then(|| self.grad_avg.map_or_else(zeros, |q| with_map(q, signed))),
            momentum_buf: hyper.needs_momentum_buf().then(|| {
                self.momentum_buf
                    .map_or_else(zeros, |q| with_map(q, signed))
            }),
            ..self
        };
        (state, true)
    }

    /// Full state quantized (a checkpoint of full state loaded into an
    /// 8-bit optimizer), with the maps `hyper.state_format` names.
    ///
    /// ```
    /// use fused_rmsprop::{Blockwise8State, Hyper, State, StateFormat};
    /// let h = Hyper::default().with_state_format(StateFormat::BLOCKWISE8);
    /// let mut full = State::<f32>::new(3, &h);
    /// full.square_avg = vec![1.0, 0.5, 0.0];
    /// full.step = 7;
    /// let q = Blockwise8State::from_full(&full, &h);
    /// let back = q.to_full().square_avg;
    /// assert_eq!((back[0], back[2]), (1.0, 0.0));
    /// assert!((back[1] - 0.5).abs() < 0.004);
    /// assert_eq!(q.step, 7);
    /// ```
    pub fn from_full(state: &State<S>, hyper: &Hyper) -> Self {
        let signed = QuantMap::DynamicSigned;
        Self {
            square_avg: Quantized::from_values(
                &state.square_avg,
                hyper.state_format.square_avg_map(),
            ),
            grad_avg: state
                .grad_avg
                .as_deref()
                .map(|v| Quantized::from_values(v, signed)),
            momentum_buf: state
                .momentum_buf
                .as_deref()
                .map(|v| Quantized::from_values(v, signed)),
            master: state.master.clone(),
            step: state.step,
        }
    }

    /// The state dequantized (a checkpoint for a full-state optimizer).
    pub fn to_full(&self) -> State<S> {
        State {
            square_avg: self.square_avg.to_values(),
            grad_avg: self.grad_avg.as_ref().map(Quantized::to_values),
            momentum_buf: self.momentum_buf.as_ref().map(Quantized::to_values),
            master: self.master.clone(),
            step: self.step,
        }
    }

    /// Bytes of memory the state buffers take (codes, scales, master copy).
    pub fn state_bytes(&self) -> usize {
        let size = std::mem::size_of::<S>();
        let quantized = |q: &Quantized<S>| q.codes.len() + q.scales.len() * size;
        quantized(&self.square_avg)
            + self.grad_avg.as_ref().map_or(0, quantized)
            + self.momentum_buf.as_ref().map_or(0, quantized)
            + self.master.as_ref().map_or(0, |m| m.len() * size)
    }

    /// Borrows the buffers as a [`Blockwise8Slices`] view.
    ///
    /// ```
    /// # use fused_rmsprop::{Blockwise8State, Hyper};
    /// let mut s = Blockwise8State::<f32>::new(2, &Hyper::default());
    /// assert_eq!(s.slices_mut().square_avg.codes.len(), 2);
    /// ```
    pub fn slices_mut(&mut self) -> Blockwise8Slices<'_, S> {
        Blockwise8Slices {
            square_avg: self.square_avg.slices_mut(),
            grad_avg: self.grad_avg.as_mut().map(Quantized::slices_mut),
            momentum_buf: self.momentum_buf.as_mut().map(Quantized::slices_mut),
            master: self.master.as_deref_mut(),
        }
    }
}

/// The buffers of one parameter's 8-bit state, borrowed.
///
/// ```
/// use fused_rmsprop::{Blockwise8Slices, QuantMap, QuantizedSlices};
/// let (mut codes, mut scales) = ([0u8; 4], [1.0f32]);
/// let state = Blockwise8Slices::new(QuantizedSlices { codes: &mut codes, scales: &mut scales, map: QuantMap::DynamicUnsigned });
/// assert!(state.grad_avg.is_none());
/// ```
#[derive(Debug)]
pub struct Blockwise8Slices<'a, S> {
    /// Running average of squared gradients.
    pub square_avg: QuantizedSlices<'a, S>,
    /// Running average of gradients (centered only).
    pub grad_avg: Option<QuantizedSlices<'a, S>>,
    /// Momentum buffer (momentum > 0 only).
    pub momentum_buf: Option<QuantizedSlices<'a, S>>,
    /// Master copy of a 16-bit parameter (master weights only).
    pub master: Option<&'a mut [S]>,
}

impl<'a, S> Blockwise8Slices<'a, S> {
    /// Just the square average: plain RMSprop's state.
    pub fn new(square_avg: QuantizedSlices<'a, S>) -> Self {
        Self {
            square_avg,
            grad_avg: None,
            momentum_buf: None,
            master: None,
        }
    }
}

/// Values of `codes` under `table` and their blocks' `scales`, into `out`.
#[inline(always)]
fn dequantize<S: Float>(table: &quant_map::Table, codes: &[u8], scales: &[S], out: &mut [S]) {
    for ((out, codes), &scale) in out
        .chunks_mut(BLOCK_ELEMENTS)
        .zip(codes.chunks(BLOCK_ELEMENTS))
        .zip(scales)
    {
        for (x, &code) in out.iter_mut().zip(codes) {
            *x = S::from_f64(f64::from(table.values[code as usize])) * scale;
        }
    }
}

/// Quantizes one block's `values` into `codes` and `scale` (the module
/// docs' step 3).
#[inline(always)]
fn quantize_block<S: Float>(
    table: &quant_map::Table,
    values: &mut [S],
    codes: &mut [u8],
    scale: &mut S,
) {
    let mut largest = 0.0f64;
    for &x in values.iter() {
        let magnitude = x.to_f64().abs();
        // NaN fails the comparison; an infinity is excluded by name.
        if magnitude > largest && magnitude != f64::INFINITY {
            largest = magnitude;
        }
    }
    let block_scale = if largest == 0.0 {
        S::from_f64(1.0)
    } else {
        S::from_f64(largest)
    };
    for (code, &x) in codes.iter_mut().zip(values.iter()) {
        let ratio = (x / block_scale).to_f64() as f32;
        *code = quant_map::quantize_fast(table, quant_map::clamp_input(ratio));
    }
    *scale = block_scale;
}

/// Elements dequantized, stepped and quantized at a time: 16 blocks, so
/// the kernel's per-call costs are spread over 4,096 elements while the
/// dequantized values stay in the core's cache.
const ELEMENTS_PER_PASS: usize = 16 * BLOCK_ELEMENTS;

/// One tensor (or a whole number of its blocks) of an 8-bit step.
pub(crate) struct Job<'a, P: Param> {
    pub params: &'a mut [P],
    pub source: &'a [P],
    pub grads: &'a [P],
    pub square_avg: QuantizedSlices<'a, P::State>,
    pub grad_avg: Option<QuantizedSlices<'a, P::State>>,
    pub momentum_buf: Option<QuantizedSlices<'a, P::State>>,
    pub master: &'a mut [P::State],
    /// The index of the first element within its tensor.
    pub offset: u64,
    pub key: u64,
    pub grad_scale: Option<P::State>,
}

impl<'a, P: Param> Job<'a, P> {
    fn len(&self) -> usize {
        self.params.len()
    }

    /// Splits at element `mid`, a multiple of [`BLOCK_ELEMENTS`] or the
    /// end.
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (params_a, params_b) = self.params.split_at_mut(mid);
        let (source_a, source_b) = if self.source.is_empty() {
            (self.source, self.source)
        } else {
            self.source.split_at(mid)
        };
        let (grads_a, grads_b) = self.grads.split_at(mid);
        let (square_a, square_b) = self.square_avg.split_at(mid);
        let (grad_avg_a, grad_avg_b) = match self.grad_avg.map(|q| q.split_at(mid)) {
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        };
        let (momentum_a, momentum_b) = match self.momentum_buf.map(|q| q.split_at(mid)) {
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        };
        let (master_a, master_b) = crate::step::split_optional(self.master, mid);
        (
            Job {
                params: params_a,
                source: source_a,
                grads: grads_a,
                square_avg: square_a,
                grad_avg: grad_avg_a,
                momentum_buf: momentum_a,
                master: master_a,
                offset: self.offset,
                key: self.key,
                grad_scale: self.grad_scale,
            },
            Job {
                params: params_b,
                source: source_b,
                grads: grads_b,
                square_avg: square_b,
                grad_avg: grad_avg_b,
                momentum_buf: momentum_b,
                master: master_b,
                offset: self.offset + mid as u64,
                key: self.key,
                grad_scale: self.grad_scale,
            },
        )
    }
}

/// Checks one quantized buffer's lengths against `len` elements.
pub(crate) fn check_quantized<S>(
    group: usize,
    buffer: &'static str,
    q: &QuantizedSlices<'_, S>,
    len: usize,
) -> Result<(), Error> {
    let mismatch = |buffer, expected, actual| Error::LengthMismatch {
        group,
        buffer,
        expected,
        actual,
    };
    if q.codes.len() != len {
        return Err(mismatch(buffer, len, q.codes.len()));
    }
    let blocks = len.div_ceil(BLOCK_ELEMENTS);
    if q.scales.len() != blocks {
        let scales = match buffer {
            "grad_avg" => "grad_avg.scales",
            "momentum_buf" => "momentum_buf.scales",
            _ => "square_avg.scales",
        };
        return Err(mismatch(scales, blocks, q.scales.len()));
    }
    Ok(())
}

/// Runs `jobs` on the threads `threads` asks for: cut on block boundaries
/// into pieces of about equal size, consecutive pieces packed into tasks.
pub(crate) fn run<P: Param>(
    kernel: ResolvedKernel,
    (threads, linger): (Threads, Linger),
    c: &Coefficients<P::State>,
    jobs: Vec<Job<'_, P>>,
) {
    let total: usize = jobs.iter().map(Job::len).sum();
    let tasks = match threads {
        Threads::Single => 1,
        Threads::Exactly(n) => n.get(),
        Threads::Auto => {
            let pool = rayon::current_num_threads();
            if total < parallel::PARALLEL_MIN_ELEMENTS || pool == 1 {
                1
            } else {
                pool * parallel::TASKS_PER_THREAD
            }
        }
    };
    if tasks == 1 {
        for job in jobs {
            step_job(kernel, c, job);
        }
        return;
    }
    let per_task = total
        .div_ceil(tasks)
        .next_multiple_of(BLOCK_ELEMENTS)
        .max(BLOCK_ELEMENTS);
    let mut packed: Vec<Vec<Job<'_, P>>> = vec![Vec::new()];
    let mut room = per_task;
    for job in jobs {
        let mut rest = job;
        while rest.len() > 0 {
            if room == 0 {
                packed.push(Vec::new());
                room = per_task;
            }
            // A piece ends on a block boundary, or at the job's end.
            let take = if rest.len() <= room {
                rest.len()
            } else {
                (room / BLOCK_ELEMENTS).max(1) * BLOCK_ELEMENTS
            };
            let len = rest.len();
            let (piece, tail) = rest.split_at(take.min(len));
            room = room.saturating_sub(piece.len());
            packed.last_mut().expect("one task at least").push(piece);
            rest = tail;
        }
    }
    parallel::run_tasks(linger, packed, |task| {
        for job in task {
            step_job(kernel, c, job);
        }
    });
}

/// Steps `job` on the calling thread, [`ELEMENTS_PER_PASS`] at a time.
fn step_job<P: Param>(kernel: ResolvedKernel, c: &Coefficients<P::State>, mut job: Job<'_, P>) {
    let zero = P::State::ZERO;
    let mut square = [zero; ELEMENTS_PER_PASS];
    let mut grad_avg = [zero; ELEMENTS_PER_PASS];
    let mut momentum = [zero; ELEMENTS_PER_PASS];
    while job.len() > 0 {
        let n = job.len().min(ELEMENTS_PER_PASS);
        let (pass, rest) = job.split_at(n);
        let scratch = (&mut square[..n], &mut grad_avg[..n], &mut momentum[..n]);
        step_pass(kernel, c, pass, scratch);
        job = rest;
    }
}

/// The full-precision values of one pass: square average, gradient
/// average, momentum buffer.
type Scratch<'s, S> = (&'s mut [S], &'s mut [S], &'s mut [S]);

/// Dequantizes, steps and quantizes one pass of at most
/// [`ELEMENTS_PER_PASS`] elements, with `scratch` for the full-precision
/// state, on `kernel`'s instruction set.
fn step_pass<P: Param>(
    kernel: ResolvedKernel,
    c: &Coefficients<P::State>,
    job: Job<'_, P>,
    scratch: Scratch<'_, P::State>,
) {
    kernel.vectorize(Pass {
        kernel,
        c,
        job,
        scratch,
    });
}

struct Pass<'a, 'c, P: Param> {
    kernel: ResolvedKernel,
    c: &'c Coefficients<P::State>,
    job: Job<'a, P>,
    scratch: Scratch<'a, P::State>,
}

impl<P: Param> WithSimd for Pass<'_, '_, P> {
    type Output = ();

    #[inline(always)]
    fn with_simd<Sd: Simd>(self, simd: Sd) {
        let Pass {
            kernel,
            c,
            job,
            scratch: (square, grad_avg, momentum),
        } = self;
        let Job {
            params,
            source,
            grads,
            square_avg: square_q,
            grad_avg: grad_avg_q,
            momentum_buf: momentum_q,
            master,
            offset,
            key,
            grad_scale,
        } = job;
        expand(simd, &square_q, square);
        if let Some(q) = &grad_avg_q {
            expand(simd, q, grad_avg);
        }
        if let Some(q) = &momentum_q {
            expand(simd, q, momentum);
        }
        let chunk = Chunk {
            params,
            source,
            grads,
            square_avg: square,
            grad_avg: if grad_avg_q.is_some() {
                grad_avg
            } else {
                &mut []
            },
            momentum_buf: if momentum_q.is_some() {
                momentum
            } else {
                &mut []
            },
            master,
            offset,
            key,
            grad_scale,
        };
        kernel.run(c, chunk);
        store(simd, square_q, square);
        if let Some(q) = grad_avg_q {
            store(simd, q, grad_avg);
        }
        if let Some(q) = momentum_q {
            store(simd, q, momentum);
        }
    }
}

/// The values of `q` into `out` (the module docs' step 1): on AVX-512 or
/// AVX2 registers for `f32` state, else [`dequantize`].
#[inline(always)]
fn expand<S: Float, Sd: Simd>(simd: Sd, q: &QuantizedSlices<'_, S>, out: &mut [S]) {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(v4) = crate::token::avx512(&simd) {
            return expand_lanes(v4, q, out);
        }
        if let Some(v3) = crate::token::avx2(&simd) {
            return expand_lanes(v3, q, out);
        }
    }
    let _ = simd;
    dequantize(q.map.table(), q.codes, q.scales, out);
}

/// [`expand`] on the registers of `lanes` (for `f32` state; [`dequantize`]
/// for `f64`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn expand_lanes<S: Float>(
    lanes: impl crate::quant_lanes::CodecLanes,
    q: &QuantizedSlices<'_, S>,
    out: &mut [S],
) {
    let table = q.map.table();
    let Some(out) = S::as_f32s_mut(out) else {
        return dequantize(table, q.codes, q.scales, out);
    };
    for ((out, codes), scale) in out
        .chunks_mut(BLOCK_ELEMENTS)
        .zip(q.codes.chunks(BLOCK_ELEMENTS))
        .zip(q.scales.iter())
    {
        lanes.dequantize(table, codes, scale.to_f64() as f32, out);
    }
}

/// `values` quantized into `q` (the module docs' step 3): on AVX-512 or
/// AVX2 registers for `f32` state, else [`quantize_block`].
#[inline(always)]
fn store<S: Float, Sd: Simd>(simd: Sd, q: QuantizedSlices<'_, S>, values: &mut [S]) {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(v4) = crate::token::avx512(&simd) {
            return store_lanes(v4, q, values);
        }
        if let Some(v3) = crate::token::avx2(&simd) {
            return store_lanes(v3, q, values);
        }
    }
    let _ = simd;
    let table = q.map.table();
    for ((values, codes), scale) in blocks_of(q, values) {
        quantize_block(table, values, codes, scale);
    }
}

/// Each block of `values` with its codes and scale in `q`.
#[inline(always)]
fn blocks_of<'a, S>(
    q: QuantizedSlices<'a, S>,
    values: &'a mut [S],
) -> impl Iterator<Item = ((&'a mut [S], &'a mut [u8]), &'a mut S)> {
    values
        .chunks_mut(BLOCK_ELEMENTS)
        .zip(q.codes.chunks_mut(BLOCK_ELEMENTS))
        .zip(q.scales.iter_mut())
}

/// [`store`] on the registers of `lanes` (for `f32` state;
/// [`quantize_block`] for `f64`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn store_lanes<S: Float>(
    lanes: impl crate::quant_lanes::CodecLanes,
    q: QuantizedSlices<'_, S>,
    values: &mut [S],
) {
    let table = q.map.table();
    for ((values, codes), scale) in blocks_of(q, values) {
        let Some(values) = S::as_f32s_mut(values) else {
            quantize_block(table, values, codes, scale);
            continue;
        };
        let largest = lanes.largest_finite(values);
        let block_scale = if largest == 0.0 { 1.0 } else { largest };
        lanes.quantize(table, values, block_scale, codes);
        *scale = S::from_f64(f64::from(block_scale));
    }
}

/// One parameter tensor of an 8-bit step ([`RmsProp::step_blockwise8_slices`](crate::RmsProp::step_blockwise8_slices)):
/// its parameters, gradients and 8-bit state, as slices; as [`Group`](crate::Group)
/// for full state, plus the index of its first element when it is a shard
/// of a larger tensor.
///
/// ```
/// use fused_rmsprop::{Blockwise8Group, Blockwise8State, Hyper};
/// let (mut p, g) = (vec![1.0f32; 512], vec![0.1f32; 512]);
/// let mut s = Blockwise8State::new(512, &Hyper::default());
/// let group = Blockwise8Group::new(&mut p, &g, s.slices_mut()).with_first_element(1024);
/// assert_eq!(group.first_element, 1024);
/// ```
#[derive(Debug)]
pub struct Blockwise8Group<'a, P: Param> {
    /// The parameters, updated in place (or written, when `source` is set).
    pub params: &'a mut [P],
    /// Where the step reads the parameters' values, when not from `params`
    /// (as [`Group::with_source`](crate::Group::with_source)).
    pub source: Option<&'a [P]>,
    /// The gradients, read only.
    pub grads: &'a [P],
    /// The 8-bit state, updated in place.
    pub state: Blockwise8Slices<'a, P::State>,
    /// The index of `params[0]` in the whole tensor, a multiple of
    /// [`BLOCK_ELEMENTS`]: a shard stepped on its own gives the bits it
    /// would have in a step of the whole tensor (its blocks and its
    /// stochastic rounding are keyed by that index). 0 by default.
    pub first_element: u64,
    /// The step number keying stochastic rounding (as [`Group`](crate::Group)).
    pub step: u64,
    /// The stream keying stochastic rounding (as [`Group`](crate::Group)).
    pub stream: u64,
    /// A factor the gradient is multiplied by as the step reads it (as
    /// [`Group::with_grad_scale`](crate::Group::with_grad_scale)).
    pub grad_scale: Option<f64>,
}

impl<'a, P: Param> Blockwise8Group<'a, P> {
    /// Bundles one tensor's slices.
    pub fn new(params: &'a mut [P], grads: &'a [P], state: Blockwise8Slices<'a, P::State>) -> Self {
        Self {
            params,
            source: None,
            grads,
            state,
            first_element: 0,
            step: 0,
            stream: 0,
            grad_scale: None,
        }
    }

    /// Sets [`Blockwise8Group::first_element`].
    #[must_use]
    pub fn with_first_element(mut self, first_element: u64) -> Self {
        self.first_element = first_element;
        self
    }

    /// Sets [`Blockwise8Group::source`].
    #[must_use]
    pub fn with_source(mut self, source: &'a [P]) -> Self {
        self.source = Some(source);
        self
    }

    /// Sets [`Blockwise8Group::grad_scale`].
    #[must_use]
    pub fn with_grad_scale(mut self, scale: f64) -> Self {
        self.grad_scale = Some(scale);
        self
    }

    /// Sets the step number and stream that key stochastic rounding.
    #[must_use]
    pub fn with_rounding_key(mut self, step: u64, stream: u64) -> Self {
        self.step = step;
        self.stream = stream;
        self
    }

    /// Checks every length and buffer against `c` and makes the job;
    /// errors name the group `group`.
    pub(crate) fn into_job(
        self,
        group: usize,
        c: &Coefficients<P::State>,
        key: u64,
    ) -> Result<Job<'a, P>, Error> {
        let len = self.params.len();
        let mismatch = |buffer, actual| Error::LengthMismatch {
            group,
            buffer,
            expected: len,
            actual,
        };
        if self.grads.len() != len {
            return Err(mismatch("grads", self.grads.len()));
        }
        if let Some(source) = self.source
            && source.len() != len
        {
            return Err(mismatch("source", source.len()));
        }
        if !self.first_element.is_multiple_of(BLOCK_ELEMENTS as u64) {
            return Err(Error::MisalignedShard {
                first_element: self.first_element,
                block: BLOCK_ELEMENTS,
            });
        }
        let state = self.state;
        check_quantized(group, "square_avg", &state.square_avg, len)?;
        let required =
            |buffer: &'static str, needed: bool, q: Option<QuantizedSlices<'a, P::State>>| match (
                needed, q,
            ) {
                (false, _) => Ok(None),
                (true, None) => Err(Error::MissingState { group, buffer }),
                (true, Some(q)) => check_quantized(group, buffer, &q, len).map(|()| Some(q)),
            };
        let grad_avg = required("grad_avg", c.centered, state.grad_avg)?;
        let momentum_buf = required("momentum_buf", c.momentum.is_some(), state.momentum_buf)?;
        let master = match (c.master, state.master) {
            (false, _) => &mut [][..],
            (true, None) => {
                return Err(Error::MissingState {
                    group,
                    buffer: "master",
                });
            }
            (true, Some(m)) if m.len() != len => return Err(mismatch("master", m.len())),
            (true, Some(m)) => m,
        };
        Ok(Job {
            params: self.params,
            source: self.source.unwrap_or_default(),
            grads: self.grads,
            square_avg: state.square_avg,
            grad_avg,
            momentum_buf,
            master,
            offset: self.first_element,
            key,
            grad_scale: self.grad_scale.map(P::State::from_f64),
        })
    }
}
