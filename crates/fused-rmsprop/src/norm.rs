//! The gradient norm behind clipping by norm: a sum of squares whose bits
//! do not depend on the path or the number of threads.
//!
//! A floating-point sum depends on its order, so the order is part of the
//! specification:
//!
//! 1. a gradient is cut into blocks of [`GRAD_NORM_BLOCK`] elements by
//!    index (the last one shorter);
//! 2. within a block, element `i` is widened to `f64` (exact for `f32` and
//!    the 16-bit types), squared, and added to partial sum `i % 16`; the
//!    sixteen partial sums are then added in a fixed tree
//!    (`s[j] += s[j + 8]`, then `+ 4`, `+ 2`, `+ 1`);
//! 3. the block sums are added in index order, from 0.0;
//! 4. a tensor's norm is the square root of its sum; the norm of several
//!    tensors (clipping by the global norm) is the square root of their
//!    sums added in the order of the call's groups.
//!
//! [`block_sum`] is the one implementation of step 2, compiled through
//! pulp's dispatch so that the widest vectors the CPU has run it (the
//! sixteen partial sums are independent, so vectorizing them reorders no
//! addition). Threads split the work on block boundaries and each block is
//! summed whole by one thread, so neither the instruction set nor the
//! thread count can change a bit of the result. Accumulating in `f64`
//! keeps the sum of `f32` squares exact to far below the `f32` norm's own
//! precision. 16-bit gradients are widened to `f32` exactly, by a shift
//! for `bf16` ([`bf16_block_sums`]) and a block at a time with the kernel's
//! conversions for `f16` ([`widened_block_sums`]). A sum that is NaN is the canonical NaN (the
//! payload of a sum of NaNs depends on the order of its operands and the
//! instruction set).

use rayon::prelude::*;

use crate::half_lanes::Half;
use crate::{Float, PARALLEL_MIN_ELEMENTS, Param, Threads};

/// Elements per block of the norm's summation order (see the module docs).
///
/// ```
/// assert_eq!(fused_rmsprop::GRAD_NORM_BLOCK % 16, 0);
/// ```
pub const GRAD_NORM_BLOCK: usize = 4096;

/// Partial sums per block.
const PARTIALS: usize = 16;

/// The sum of the squares of `xs` (at most one block), in the order of the
/// module docs, in `f64`.
#[inline(always)]
pub(crate) fn block_sum<P: Param>(xs: &[P]) -> f64 {
    block_sum_of(xs, |x| x.widen())
}

/// [`block_sum`] with each element widened by `widen` (which must give
/// [`Param::widen`]'s value, a NaN's payload aside).
#[inline(always)]
fn block_sum_of<X, F: Float>(xs: &[X], widen: impl Fn(&X) -> F) -> f64 {
    let mut partial = [0.0f64; PARTIALS];
    let mut registers = xs.chunks_exact(PARTIALS);
    for register in &mut registers {
        // Widened whole first, then squared and added lane by lane: the
        // shape the compiler turns into whole vector registers.
        let wide: [f64; PARTIALS] = core::array::from_fn(|j| widen(&register[j]).to_f64());
        for j in 0..PARTIALS {
            partial[j] += wide[j] * wide[j];
        }
    }
    for (sum, x) in partial.iter_mut().zip(registers.remainder()) {
        let x = widen(x).to_f64();
        *sum += x * x;
    }
    let mut width = PARTIALS;
    while width > 1 {
        width /= 2;
        for j in 0..width {
            partial[j] += partial[j + width];
        }
    }
    partial[0]
}

/// [`block_sum`] of each block of `xs`, written to `out`.
#[inline(always)]
pub(crate) fn block_sums<P: Param>(xs: &[P], out: &mut [f64]) {
    for (block, out) in xs.chunks(GRAD_NORM_BLOCK).zip(out) {
        *out = block_sum(block);
    }
}

/// [`block_sums`] of `bf16` elements, each widened by moving its bits up
/// (`f32`'s top half): exact for every value, and a NaN stays a NaN, whose
/// payload the canonical sum drops. The compiler vectorizes the shift,
/// where `half`'s conversion tests each element for a NaN to quiet it.
#[inline(always)]
pub(crate) fn bf16_block_sums<S: pulp::Simd>(_simd: S, xs: &[half::bf16], out: &mut [f64]) {
    let widen = |x: &half::bf16| f32::from_bits(u32::from(x.to_bits()) << 16);
    for (block, out) in xs.chunks(GRAD_NORM_BLOCK).zip(out) {
        *out = block_sum_of(block, widen);
    }
}

/// [`block_sums`] of 16-bit elements, each block widened to `f32` on the
/// stack first with the lane conversions (widening one element at a time
/// inside the sum kept the pass from being vectorized). Widening is exact,
/// so the sums are the same but for a NaN's payload, which
/// [`sums_of_squares`] makes canonical.
#[inline(always)]
pub(crate) fn widened_block_sums<H: Half, S: pulp::Simd>(simd: S, xs: &[H], out: &mut [f64]) {
    let mut wide = [0.0f32; GRAD_NORM_BLOCK];
    for (block, out) in xs.chunks(GRAD_NORM_BLOCK).zip(out) {
        let wide = &mut wide[..block.len()];
        crate::simd_half::widen_into(simd, block, wide);
        *out = block_sum(wide);
    }
}

/// [`block_sums`] of a slice, compiled for the best instruction set.
struct BlockSums<'a, 'o, P> {
    xs: &'a [P],
    out: &'o mut [f64],
}

impl<P: Param> pulp::WithSimd for BlockSums<'_, '_, P> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        P::block_sums_simd(simd, self.xs, self.out);
    }
}

/// The number of blocks of a gradient of `len` elements.
fn blocks(len: usize) -> usize {
    len.div_ceil(GRAD_NORM_BLOCK)
}

/// Each gradient's sum of squares (step 3 of the module docs), on rayon's
/// pool when they hold enough elements (unless `threads` is `Single`).
pub(crate) fn sums_of_squares<P: Param>(grads: &[&[P]], threads: Threads) -> Vec<f64> {
    let total: usize = grads.iter().map(|g| g.len()).sum();
    let mut block_sums = vec![0.0f64; grads.iter().map(|g| blocks(g.len())).sum()];
    // One piece per run of whole blocks of one gradient.
    let mut pieces: Vec<(&[P], &mut [f64])> = Vec::with_capacity(grads.len());
    let mut rest = block_sums.as_mut_slice();
    for grad in grads {
        let (out, later) = rest.split_at_mut(blocks(grad.len()));
        rest = later;
        pieces.push((grad, out));
    }
    let parallel = threads != Threads::Single
        && total >= PARALLEL_MIN_ELEMENTS
        && rayon::current_num_threads() > 1;
    if parallel {
        // Cut long gradients into runs of whole blocks, so every thread
        // gets a share of a single large tensor.
        const RUN: usize = 16 * GRAD_NORM_BLOCK;
        let runs: Vec<(&[P], &mut [f64])> = pieces
            .into_iter()
            .flat_map(|(xs, out)| {
                xs.chunks(RUN)
                    .zip(out.chunks_mut(RUN / GRAD_NORM_BLOCK))
                    .collect::<Vec<_>>()
            })
            .collect();
        runs.into_par_iter()
            .for_each(|(xs, out)| pulp::Arch::new().dispatch(BlockSums { xs, out }));
    } else {
        for (xs, out) in pieces {
            pulp::Arch::new().dispatch(BlockSums { xs, out });
        }
    }
    let mut sums = Vec::with_capacity(grads.len());
    let mut block_sums = block_sums.as_slice();
    for grad in grads {
        let (own, later) = block_sums.split_at(blocks(grad.len()));
        block_sums = later;
        sums.push(canonical(own.iter().fold(0.0, |sum, block| sum + block)));
    }
    sums
}

/// The norm of a sum of squares, with every NaN the canonical one (which
/// NaN a sum of NaNs returns depends on the order of its operands).
pub(crate) fn norm(sum_of_squares: f64) -> f64 {
    canonical(sum_of_squares.sqrt())
}

/// The factor clipping to `max` by a norm multiplies a gradient by,
/// `max / (norm + tiny)`, or `None` when that is 1 or more (nothing is
/// clipped); a NaN factor (a NaN norm) is the canonical NaN and clips.
pub(crate) fn clip_scale(max: f64, norm: f64, tiny: f64) -> Option<f64> {
    let coefficient = canonical(max / (norm + tiny));
    (coefficient < 1.0 || coefficient.is_nan()).then_some(coefficient)
}

/// `x`, or the canonical NaN if `x` is a NaN. `x` goes through
/// `black_box` first: the compiler treats a NaN's payload as unspecified and
/// would otherwise fold the choice away (it did, in the tests).
pub(crate) fn canonical(x: f64) -> f64 {
    let x = std::hint::black_box(x);
    if x.is_nan() { f64::NAN } else { x }
}

/// The reference of the tests: the module docs' order, one element at a
/// time, no dispatch, no threads.
#[cfg(test)]
pub(crate) fn spec_sum_of_squares<P: Param>(xs: &[P]) -> f64 {
    let mut total = 0.0;
    for block in xs.chunks(GRAD_NORM_BLOCK) {
        let mut partial = [0.0f64; PARTIALS];
        for (i, x) in block.iter().enumerate() {
            let x = x.widen().to_f64();
            partial[i % PARTIALS] += x * x;
        }
        let mut width = PARTIALS;
        while width > 1 {
            width /= 2;
            for j in 0..width {
                partial[j] += partial[j + width];
            }
        }
        total += partial[0];
    }
    canonical(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values whose squares' sum depends on the order: large and tiny
    /// magnitudes mixed, so any reordering shows in the low bits.
    fn awkward(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let magnitude = [1e-20f32, 3.0, 1e15, 0.1, 7e-3][i % 5];
                let sign = if i % 3 == 0 { -1.0 } else { 1.0 };
                sign * magnitude * (1.0 + (i % 7) as f32 / 7.0)
            })
            .collect()
    }

    #[test]
    fn every_thread_setting_sums_in_the_specified_order() {
        for len in [
            0,
            1,
            15,
            16,
            17,
            4095,
            4096,
            4097,
            3 * PARALLEL_MIN_ELEMENTS + 5,
        ] {
            let xs = awkward(len);
            let spec = spec_sum_of_squares(&xs);
            for threads in [Threads::Single, Threads::Auto] {
                let got = sums_of_squares(&[&xs], threads);
                assert_eq!(got[0].to_bits(), spec.to_bits(), "len {len} {threads:?}");
            }
        }
    }

    #[test]
    fn several_gradients_keep_their_own_sums() {
        let a = awkward(70_000);
        let b = awkward(3);
        let c: Vec<f32> = Vec::new();
        let sums = sums_of_squares(&[&a, &b, &c], Threads::Auto);
        let expected = [&a, &b, &c].map(|g| spec_sum_of_squares(g).to_bits());
        assert_eq!(
            sums.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
            expected
        );
    }

    /// Each block's sum from `BlockSums` on every instruction set of this
    /// machine against the spec's, bit for bit (NaN sums canonical).
    fn every_isa_sums_as_the_spec<P: Param>(xs: &[P]) {
        let spec: Vec<u64> = xs
            .chunks(GRAD_NORM_BLOCK)
            .map(|block| spec_sum_of_squares(block).to_bits())
            .collect();
        let check = |isa: &str, out: &[f64]| {
            let got: Vec<u64> = out.iter().map(|&x| canonical(x).to_bits()).collect();
            assert_eq!(got, spec, "{} on {isa}", P::NAME);
        };
        use pulp::Simd;
        let mut out = vec![0.0; spec.len()];
        Simd::vectorize(pulp::Scalar::new(), BlockSums { xs, out: &mut out });
        check("fallback", &out);
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(v3) = pulp::x86::V3::try_new() {
                Simd::vectorize(v3, BlockSums { xs, out: &mut out });
                check("avx2", &out);
            }
            if let Some(v4) = pulp::x86::V4::try_new() {
                Simd::vectorize(v4, BlockSums { xs, out: &mut out });
                check("avx512", &out);
            }
        }
        #[cfg(target_arch = "aarch64")]
        if let Some(neon) = pulp::aarch64::Neon::try_new() {
            Simd::vectorize(neon, BlockSums { xs, out: &mut out });
            check("neon", &out);
        }
    }

    #[test]
    fn every_sixteen_bit_pattern_sums_as_the_spec_on_every_isa() {
        // Every bit pattern in order (blocks of finite values, of
        // infinities and of NaNs), then shuffled by a stride coprime to
        // 2^16 so that blocks mix magnitudes, then with a tail that does
        // not fill a register.
        let patterns = |stride: u32, len: u32| -> Vec<u16> {
            (0..len)
                .map(|i| (i.wrapping_mul(stride) & 0xFFFF) as u16)
                .collect()
        };
        for bits in [
            patterns(1, 1 << 16),
            patterns(40_503, 1 << 16),
            patterns(7, 4_099),
        ] {
            every_isa_sums_as_the_spec(
                &bits
                    .iter()
                    .map(|&b| half::bf16::from_bits(b))
                    .collect::<Vec<_>>(),
            );
            every_isa_sums_as_the_spec(
                &bits
                    .iter()
                    .map(|&b| half::f16::from_bits(b))
                    .collect::<Vec<_>>(),
            );
        }
        every_isa_sums_as_the_spec(&awkward(3 * GRAD_NORM_BLOCK + 21));
        every_isa_sums_as_the_spec(
            &awkward(5_000)
                .iter()
                .map(|&x| f64::from(x))
                .collect::<Vec<_>>(),
        );
    }

    #[test]
    fn a_nan_anywhere_gives_the_canonical_nan() {
        let mut xs = awkward(10_000);
        xs[9_999] = f32::from_bits(0x7FC0_1234);
        let sums = sums_of_squares(&[&xs], Threads::Auto);
        assert_eq!(norm(sums[0]).to_bits(), f64::NAN.to_bits());
    }
}
