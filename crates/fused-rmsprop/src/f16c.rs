//! `f16` conversions in hardware on AVX2 machines: F16C's `vcvtph2ps` and
//! `vcvtps2ph`, eight elements per instruction.
//!
//! pulp's AVX2 token does not include F16C, so the 16-bit kernel on AVX2
//! converted `f16` with integer and `f32` lane operations (about thirty per
//! register), which made it the slowest step in cache, about a third of
//! the `bf16` step's rate on a CPU without AVX-512. Every x86
//! CPU with AVX2 that we know of has F16C, but it is a separate feature
//! bit, so it is detected at run time ([`F16c::detect`]) and the kernel
//! keeps the lane conversions for a CPU without it.
//!
//! Both conversions are exact where the spec is: widening is exact for every
//! `f16`, and narrowing rounds to nearest even, subnormals and overflow as
//! IEEE says, like `half`'s `f16::from_f32`. The one difference, a NaN's
//! payload, does not arise: the kernel narrows only values whose NaNs are
//! canonical, and the canonical `f32` NaN narrows to the canonical `f16`
//! NaN `0x7E00` (the exhaustive tests in `param.rs` and
//! `tests/half_paths.rs` check every bit pattern on this path).

use core::arch::x86_64::_mm256_cvtps_ph;
use core::arch::x86_64::{__m128i, __m256, _MM_FROUND_TO_NEAREST_INT, _mm256_cvtph_ps};

use half::f16;

/// Proof that this CPU has F16C (and AVX, which F16C's 256-bit forms
/// need): only [`F16c::detect`] makes one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct F16c(());

impl F16c {
    /// `Some` when this CPU has AVX and F16C (std caches the answer).
    #[inline]
    pub(crate) fn detect() -> Option<Self> {
        (std::arch::is_x86_feature_detected!("avx") && std::arch::is_x86_feature_detected!("f16c"))
            .then_some(Self(()))
    }

    /// `dst[i] = src[i]` as `f32`, for slices of one length, a multiple
    /// of 8.
    #[inline]
    pub(crate) fn widen(self, src: &[f16], dst: &mut [f32]) {
        // SAFETY: `self` exists only when `detect` found AVX and F16C on
        // this CPU, the features `widen_8s` is compiled for.
        unsafe { widen_8s(src, dst) }
    }

    /// `dst[i] = src[i]` rounded to the nearest `f16` (ties to even), for
    /// slices of one length, a multiple of 8.
    #[inline]
    pub(crate) fn narrow(self, src: &[f32], dst: &mut [f16]) {
        // SAFETY: as for `widen`: `self` proves AVX and F16C.
        unsafe { narrow_8s(src, dst) }
    }
}

#[target_feature(enable = "avx,f16c")]
fn widen_8s(src: &[f16], dst: &mut [f32]) {
    debug_assert!(src.len() == dst.len() && src.len().is_multiple_of(8));
    for (s, d) in src.chunks_exact(8).zip(dst.chunks_exact_mut(8)) {
        let bits: [u16; 8] = core::array::from_fn(|k| s[k].to_bits());
        let wide: [f32; 8] = bytemuck::cast(_mm256_cvtph_ps(bytemuck::cast::<_, __m128i>(bits)));
        d.copy_from_slice(&wide);
    }
}

#[target_feature(enable = "avx,f16c")]
fn narrow_8s(src: &[f32], dst: &mut [f16]) {
    debug_assert!(src.len() == dst.len() && src.len().is_multiple_of(8));
    for (s, d) in src.chunks_exact(8).zip(dst.chunks_exact_mut(8)) {
        let wide: [f32; 8] = core::array::from_fn(|k| s[k]);
        let packed =
            _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(bytemuck::cast::<_, __m256>(wide));
        let bits: [u16; 8] = bytemuck::cast(packed);
        for (x, b) in d.iter_mut().zip(bits) {
            *x = f16::from_bits(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `f16` bit pattern widens as `half` does (NaNs: a NaN), and
    /// every widened non-NaN value narrows back to itself; the canonical
    /// NaN narrows to `0x7E00`. Runs where the CPU has F16C.
    #[test]
    fn every_f16_converts_as_half_does() {
        let Some(f16c) = F16c::detect() else {
            return;
        };
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        let mut wide = vec![0.0f32; all.len()];
        f16c.widen(&all, &mut wide);
        for (h, w) in all.iter().zip(&wide) {
            if h.is_nan() {
                assert!(w.is_nan(), "{:#06x}", h.to_bits());
            } else {
                assert_eq!(w.to_bits(), h.to_f32().to_bits(), "{:#06x}", h.to_bits());
            }
        }
        let mut back = vec![f16::ZERO; all.len()];
        let canonical: Vec<f32> = wide
            .iter()
            .map(|w| if w.is_nan() { f32::NAN } else { *w })
            .collect();
        f16c.narrow(&canonical, &mut back);
        for (h, b) in all.iter().zip(&back) {
            let expected = if h.is_nan() { 0x7E00 } else { h.to_bits() };
            assert_eq!(b.to_bits(), expected, "{:#06x}", h.to_bits());
        }
    }

    /// Narrowing rounds as `half::f16::from_f32` on values between and
    /// around `f16`s: ties, subnormals, overflow.
    #[test]
    fn narrowing_rounds_as_half_does() {
        let Some(f16c) = F16c::detect() else {
            return;
        };
        // Every f32 whose top 19 bits vary and low bits take a few
        // patterns, both signs: halfway points, just above and below.
        let values: Vec<f32> = (0..(1u32 << 19))
            .flat_map(|top| {
                [0u32, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF]
                    .map(|low| f32::from_bits((top << 13) | low))
            })
            .map(|x| if x.is_nan() { f32::NAN } else { x })
            .collect();
        let mut narrow = vec![f16::ZERO; values.len()];
        f16c.narrow(&values, &mut narrow);
        for (x, n) in values.iter().zip(&narrow) {
            assert_eq!(
                n.to_bits(),
                f16::from_f32(*x).to_bits(),
                "{:#010x}",
                x.to_bits()
            );
        }
    }
}
