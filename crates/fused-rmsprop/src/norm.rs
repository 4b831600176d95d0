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
//! precision.

use rayon::prelude::*;

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
fn block_sum<P: Param>(xs: &[P]) -> f64 {
    let mut partial = [0.0f64; PARTIALS];
    let mut registers = xs.chunks_exact(PARTIALS);
    for register in &mut registers {
        for (sum, x) in partial.iter_mut().zip(register) {
            let x = x.widen().to_f64();
            *sum += x * x;
        }
    }
    for (sum, x) in partial.iter_mut().zip(registers.remainder()) {
        let x = x.widen().to_f64();
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

/// [`block_sum`] of every block of a slice, compiled for the best
/// instruction set; the sums written to `out`, one per block.
struct BlockSums<'a, 'o, P> {
    xs: &'a [P],
    out: &'o mut [f64],
}

impl<P: Param> pulp::WithSimd for BlockSums<'_, '_, P> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        for (block, out) in self.xs.chunks(GRAD_NORM_BLOCK).zip(self.out) {
            *out = block_sum(block);
        }
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
        sums.push(own.iter().fold(0.0, |sum, block| sum + block));
    }
    sums
}

/// The norm of a sum of squares, with every NaN the canonical one (which
/// NaN a sum of NaNs returns depends on the order of its operands).
pub(crate) fn norm(sum_of_squares: f64) -> f64 {
    canonical(sum_of_squares.sqrt())
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
    total
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

    #[test]
    fn a_nan_anywhere_gives_the_canonical_nan() {
        let mut xs = awkward(10_000);
        xs[9_999] = f32::from_bits(0x7FC0_1234);
        let sums = sums_of_squares(&[&xs], Threads::Auto);
        assert_eq!(norm(sums[0]).to_bits(), f64::NAN.to_bits());
    }
}
