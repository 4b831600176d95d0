//! The vectorized kernel for 16-bit parameters: the [scalar
//! specification](crate::scalar) on registers of `f32` lanes, with the
//! parameter and gradient widened from 16 bits and the result rounded back
//! inside the registers ([`Half`](crate::half_lanes::Half)'s lane conversions).
//!
//! Each register's 16-bit elements are moved to and from the low halves of
//! `u32` lanes by a fixed-length copy (zero-extension on load, truncation on
//! store) that the compiler turns into the instruction set's widening and
//! narrowing moves (`vpmovzxwd`/`vpmovdw` on AVX-512); the arithmetic itself
//! — exponent rebias, rounding, NaN handling, the random bits of stochastic
//! rounding — is integer and `f32` lane operations, the same sequence on
//! every instruction set. The `f32` state is contiguous, so it is read as
//! whole registers as in the `f32` kernel. Elements that do not fill a
//! register go through the scalar specification itself.
//!
//! One exception: `f16` under AVX2 on a CPU with F16C (every AVX2 CPU we
//! know of) is converted a block at a time by F16C's instructions (module
//! `f16c`) into `f32` buffers in L1, stepped there, and converted back;
//! the lane conversions took thirty-odd operations a register.

use pulp::{Simd, WithSimd};

use crate::half_lanes::Half;
use crate::simd::{LaneCoefficients, update_lanes};
use crate::step::{Chunk, Coefficients};
use crate::{prefetch, rounding, scalar};

/// Steps `chunk` with instruction set `simd`.
#[inline(always)]
pub(crate) fn step<H: Half, S: Simd>(simd: S, c: &Coefficients<f32>, chunk: Chunk<'_, H>) {
    simd.vectorize(Kernel {
        coefficients: c,
        chunk,
    });
}

struct Kernel<'a, 'c, H: Half> {
    coefficients: &'c Coefficients<f32>,
    chunk: Chunk<'a, H>,
}

/// `dst[i] = src[i]` widened to `f32` (slices of one length), for a pass
/// that only reads the values (the gradient norm): whole registers with
/// the lane conversions, or with the CPU's own when it converts this type
/// a slice at a time ([`Half::converts_slices`]); the rest one element at a
/// time. As with [`Half::widen_lanes`], a NaN's quiet bit may be left as it
/// was, so a caller keeping a NaN's bits makes it canonical.
#[inline(always)]
pub(crate) fn widen_into<H: Half, S: Simd>(simd: S, src: &[H], dst: &mut [f32]) {
    let dst = &mut dst[..src.len()];
    let whole = if H::converts_slices() {
        let whole = src.len() / 8 * 8;
        H::widen_slice(&src[..whole], &mut dst[..whole]);
        whole
    } else {
        let width = core::mem::size_of::<S::f32s>() / core::mem::size_of::<f32>();
        let whole = src.len() / width * width;
        let (lanes, _) = S::as_mut_simd_f32s(&mut dst[..whole]);
        for (out, register) in lanes.iter_mut().zip(src.chunks_exact(width)) {
            *out = H::widen_lanes(simd, load::<H, S>(register));
        }
        whole
    };
    for (out, x) in dst[whole..].iter_mut().zip(&src[whole..]) {
        *out = x.widen();
    }
}

/// `src` (one register's worth of elements) in the low halves of `u32` lanes.
#[inline(always)]
fn load<H: Half, S: Simd>(src: &[H]) -> S::u32s {
    let mut lanes: S::u32s = bytemuck::Zeroable::zeroed();
    let wide = bytemuck::cast_slice_mut::<S::u32s, u32>(core::slice::from_mut(&mut lanes));
    let src = &src[..wide.len()];
    for (lane, x) in wide.iter_mut().zip(src) {
        *lane = u32::from(x.to_bits());
    }
    lanes
}

/// The low halves of `lanes` (each below `2^16`) stored to `dst`.
///
/// The compiler does not find a single narrowing store for the portable
/// loop (it extracts and inserts words one by one), so on x86 the
/// instruction set's own narrowing is used: `vpmovdw` on AVX-512,
/// `vpackusdw` and a lane permute on AVX2 (exact, as every lane is below
/// `2^16`). pulp's safe intrinsics need the concrete token: `S` is that
/// token exactly when the downcast succeeds, which the compiler decides at
/// monomorphization.
#[inline(always)]
fn store<H: Half, S: Simd>(simd: S, dst: &mut [H], lanes: S::u32s) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{__m256i, __m512i};
        if let (Some(v4), Ok(wide)) = (
            crate::token::avx512(&simd),
            bytemuck::try_cast::<S::u32s, __m512i>(lanes),
        ) {
            let narrow: [u16; 16] = bytemuck::cast(v4.avx512f._mm512_cvtepi32_epi16(wide));
            for (x, bits) in dst[..16].iter_mut().zip(narrow) {
                *x = H::from_bits(bits);
            }
            return;
        }
        if let (Some(v3), Ok(wide)) = (
            crate::token::avx2(&simd),
            bytemuck::try_cast::<S::u32s, __m256i>(lanes),
        ) {
            // Packs within each 128-bit half, then gathers the two halves'
            // low quadwords.
            let packed = v3.avx2._mm256_packus_epi32(wide, wide);
            let ordered = v3.avx2._mm256_permute4x64_epi64::<0b1000>(packed);
            let narrow: [u16; 8] = bytemuck::cast(v3.avx._mm256_castsi256_si128(ordered));
            for (x, bits) in dst[..8].iter_mut().zip(narrow) {
                *x = H::from_bits(bits);
            }
            return;
        }
    }
    let wide = bytemuck::cast_slice::<S::u32s, u32>(core::slice::from_ref(&lanes));
    for (x, lane) in dst[..wide.len()].iter_mut().zip(wide) {
        *x = H::from_bits(*lane as u16);
    }
}

impl<H: Half> WithSimd for Kernel<'_, '_, H> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let c = self.coefficients;
        let width = core::mem::size_of::<S::f32s>() / core::mem::size_of::<f32>();
        let whole = self.chunk.len() / width * width;
        let (head, tail) = self.chunk.split_at(whole);
        crate::step::with_constant_options!(
            c,
            [
                plain,
                plain_with_momentum,
                plain_stochastic,
                plain_with_master,
                plain_clipped_by_value,
                plain_scaled
            ],
            |k| whole_registers(simd, k, head)
        );
        scalar::step(c, tail);
    }
}

/// Steps `head` (a whole number of registers) with coefficients `c`.
/// Inlined into each call, so coefficients whose options are constants
/// ([`with_constant_options`](crate::step::with_constant_options)) get a
/// loop of their own.
#[inline(always)]
fn whole_registers<H: Half, S: Simd>(simd: S, c: &Coefficients<f32>, head: Chunk<'_, H>) {
    #[cfg(target_arch = "x86_64")]
    if !c.stochastic && (&simd as &dyn core::any::Any).is::<pulp::x86::V3>() && H::converts_slices()
    {
        return converted_in_blocks(simd, c, head);
    }
    let width = core::mem::size_of::<S::f32s>() / core::mem::size_of::<f32>();
    let Chunk {
        params,
        source,
        grads,
        square_avg,
        grad_avg,
        momentum_buf,
        master,
        offset,
        key,
        // Already in `c`: `ResolvedKernel::run` moves it there.
        grad_scale: _,
    } = head;
    let (square_head, _) = S::as_mut_simd_f32s(square_avg);
    let (grad_avg_head, _) = S::as_mut_simd_f32s(grad_avg);
    let (momentum_head, _) = S::as_mut_simd_f32s(momentum_buf);
    let (master_head, _) = S::as_mut_simd_f32s(master);

    let lanes = LaneCoefficients::splat(simd, c);
    let mut random = rounding::LaneRandom::new(simd, key);
    let ahead = prefetch::DISTANCE_BYTES / core::mem::size_of::<S::f32s>();
    for (i, (params16, grads16)) in params
        .chunks_exact_mut(width)
        .zip(grads.chunks_exact(width))
        .enumerate()
    {
        prefetch::prefetch(grads, (i + ahead) * width);
        prefetch::prefetch(source, (i + ahead) * width);
        prefetch::prefetch(square_head, i + ahead);
        prefetch::prefetch(grad_avg_head, i + ahead);
        prefetch::prefetch(momentum_head, i + ahead);
        prefetch::prefetch(master_head, i + ahead);
        let p = if c.master {
            master_head[i]
        } else if source.is_empty() {
            H::widen_lanes(simd, load::<H, S>(params16))
        } else {
            H::widen_lanes(simd, load::<H, S>(&source[i * width..]))
        };
        let g = H::widen_lanes(simd, load::<H, S>(grads16));
        let grad_avg = if c.centered {
            Some(&mut grad_avg_head[i])
        } else {
            None
        };
        let momentum_buf = if c.momentum.is_some() {
            Some(&mut momentum_head[i])
        } else {
            None
        };
        let p = update_lanes(
            simd,
            c,
            &lanes,
            p,
            g,
            &mut square_head[i],
            grad_avg,
            momentum_buf,
        );
        if c.master {
            master_head[i] = p;
        }
        // `p`'s NaNs are canonical (`update_lanes`), as the rounding
        // lanes require.
        let rounded = if c.stochastic {
            let first = offset + (i * width) as u64;
            H::round_stochastic_lanes(simd, p, random.bits(simd, first))
        } else {
            H::round_nearest_lanes(simd, p)
        };
        store::<H, S>(simd, params16, rounded);
    }
}

/// [`whole_registers`] for a type that the CPU converts a slice at a time
/// ([`Half::converts_slices`]: `f16` with F16C under AVX2): each block of
/// parameters and gradients is widened into `f32` buffers on the stack,
/// stepped there as the `f32` kernel steps, and narrowed back, instead of
/// converting in the registers. Rounds to nearest only (the caller checks).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn converted_in_blocks<H: Half, S: Simd>(simd: S, c: &Coefficients<f32>, head: Chunk<'_, H>) {
    /// Elements per block: the two `f32` buffers (2 KiB) stay in L1.
    const BLOCK: usize = 256;
    let Chunk {
        params,
        source,
        grads,
        square_avg,
        grad_avg,
        momentum_buf,
        master,
        ..
    } = head;
    let lanes = LaneCoefficients::splat(simd, c);
    let (mut wide_params, mut wide_grads) = ([0f32; BLOCK], [0f32; BLOCK]);
    // As far ahead as the f32 kernel, in elements; a block's lines at once.
    let ahead = prefetch::DISTANCE_BYTES / core::mem::size_of::<f32>();
    let mut start = 0;
    while start < params.len() {
        let end = (start + BLOCK).min(params.len());
        let (from, to) = (start + ahead, end + ahead);
        prefetch::prefetch_lines(params, from, to);
        prefetch::prefetch_lines(source, from, to);
        prefetch::prefetch_lines(grads, from, to);
        prefetch::prefetch_lines(square_avg, from, to);
        prefetch::prefetch_lines(grad_avg, from, to);
        prefetch::prefetch_lines(momentum_buf, from, to);
        prefetch::prefetch_lines(master, from, to);
        let p32 = &mut wide_params[..end - start];
        let g32 = &mut wide_grads[..end - start];
        if c.master {
            p32.copy_from_slice(&master[start..end]);
        } else if source.is_empty() {
            H::widen_slice(&params[start..end], p32);
        } else {
            H::widen_slice(&source[start..end], p32);
        }
        H::widen_slice(&grads[start..end], g32);
        let (p_lanes, _) = S::as_mut_simd_f32s(p32);
        let (g_lanes, _) = S::as_simd_f32s(g32);
        let (square_lanes, _) = S::as_mut_simd_f32s(&mut square_avg[start..end]);
        let (grad_avg_lanes, _) = S::as_mut_simd_f32s(if c.centered {
            &mut grad_avg[start..end]
        } else {
            &mut []
        });
        let (momentum_lanes, _) = S::as_mut_simd_f32s(if c.momentum.is_some() {
            &mut momentum_buf[start..end]
        } else {
            &mut []
        });
        for (i, (p, g)) in p_lanes.iter_mut().zip(g_lanes).enumerate() {
            *p = update_lanes(
                simd,
                c,
                &lanes,
                *p,
                *g,
                &mut square_lanes[i],
                grad_avg_lanes.get_mut(i),
                momentum_lanes.get_mut(i),
            );
        }
        if c.master {
            master[start..end].copy_from_slice(p32);
        }
        // `update_lanes` made the NaNs canonical, as narrowing requires.
        H::narrow_slice(p32, &mut params[start..end]);
        start = end;
    }
}
