//! The 16-bit parameter types on a register of lanes: `bf16` and `f16`
//! widened to `f32` and rounded back with integer and `f32` lane operations
//! only, so that every instruction set runs the same sequence and writes the
//! bits of the one-element conversions in [`Param`] (`half`'s, NaNs
//! canonical). The SIMD kernel of `simd_half` is their one user; the
//! exhaustive tests below hold them equal to `half` on every bit pattern and
//! on every value next to each, on every instruction set the machine has.

use half::{bf16, f16};
use pulp::Simd;

use crate::param::Param;
#[cfg(target_arch = "x86_64")]
use crate::token::avx512;

/// The 16-bit types: their bits as `u16`, and their conversions on a
/// register of `u32` lanes (one element in the low 16 bits of each lane).
pub(crate) trait Half: Param<State = f32> {
    fn to_bits(self) -> u16;
    fn from_bits(bits: u16) -> Self;
    /// [`Param::widen`] on every lane, except that a NaN's quiet bit may be
    /// left as it was: the kernel stores no widened value unchanged (every
    /// state and parameter it writes has gone through arithmetic, which
    /// reads a signalling NaN as a NaN, and has its NaNs made canonical), so
    /// the bit never reaches memory.
    fn widen_lanes<S: Simd>(simd: S, bits: S::u32s) -> S::f32s;
    /// [`Param::round_nearest`] on every lane whose NaNs are the canonical
    /// `f32` NaN, as [`update_lanes`](crate::simd::update_lanes) returns
    /// them (another NaN may round to anything).
    fn round_nearest_lanes<S: Simd>(simd: S, x: S::f32s) -> S::u32s;
    /// [`Param::round_stochastic`] on every lane, NaNs canonical as for
    /// [`Half::round_nearest_lanes`].
    fn round_stochastic_lanes<S: Simd>(simd: S, x: S::f32s, random: S::u32s) -> S::u32s;
    /// Whether this CPU converts this type a slice at a time in hardware
    /// where the AVX2 lane conversions do not (`f16` with F16C): then the
    /// AVX2 kernel uses [`Half::widen_slice`] and [`Half::narrow_slice`].
    fn converts_slices() -> bool {
        false
    }
    /// `dst[i] = src[i]` widened (slices of one length, a multiple of 8),
    /// when [`Half::converts_slices`]; writes nothing otherwise.
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        let _ = (src, dst);
    }
    /// `dst[i] = src[i]` rounded to nearest (slices of one length, a
    /// multiple of 8, NaNs canonical), when [`Half::converts_slices`];
    /// writes nothing otherwise.
    fn narrow_slice(src: &[f32], dst: &mut [Self]) {
        let _ = (src, dst);
    }
}

/// `f32` bits of a NaN: the magnitude above infinity's.
const F32_INFINITY_BITS: u32 = 0x7F80_0000;
const F32_MAGNITUDE: u32 = 0x7FFF_FFFF;

#[inline(always)]
fn splat<S: Simd>(simd: S, x: u32) -> S::u32s {
    simd.splat_u32s(x)
}

#[inline(always)]
fn shr<S: Simd>(simd: S, x: S::u32s, amount: u32) -> S::u32s {
    simd.wrapping_dyn_shr_u32s(x, simd.splat_u32s(amount))
}

#[inline(always)]
fn shl<S: Simd>(simd: S, x: S::u32s, amount: u32) -> S::u32s {
    simd.wrapping_dyn_shl_u32s(x, simd.splat_u32s(amount))
}

/// Lanes whose `f32` bits are a NaN (magnitude above infinity's; every
/// magnitude is below `2^31`, so the signed comparison is exact).
#[inline(always)]
fn is_nan_lanes<S: Simd>(simd: S, bits: S::u32s) -> S::m32s {
    let magnitude = simd.and_u32s(bits, splat(simd, F32_MAGNITUDE));
    simd.greater_than_i32s(
        simd.transmute_i32s_u32s(magnitude),
        simd.splat_i32s(F32_INFINITY_BITS as i32),
    )
}

impl Half for bf16 {
    #[inline(always)]
    fn to_bits(self) -> u16 {
        bf16::to_bits(self)
    }
    #[inline(always)]
    fn from_bits(bits: u16) -> Self {
        bf16::from_bits(bits)
    }
    #[inline(always)]
    fn widen_lanes<S: Simd>(simd: S, bits: S::u32s) -> S::f32s {
        // The bits move up by 16. `half` also sets a NaN's quiet bit, which
        // no stored result can show (see the trait): leaving it out, with
        // the rounding's NaN test below, makes a bf16 step in cache
        // measurably faster (the `in_cache` example of the benches).
        simd.transmute_f32s_u32s(shl(simd, bits, 16))
    }
    #[inline(always)]
    fn round_nearest_lanes<S: Simd>(simd: S, x: S::f32s) -> S::u32s {
        // (bits + 0x7FFF + lsb) >> 16: ties go to the even neighbour. The
        // canonical NaN 0x7FC0_0000 has zero low bits, so it becomes 0x7FC0,
        // the canonical bf16 NaN, with no test for NaN.
        let bits = simd.transmute_u32s_f32s(x);
        let lsb = simd.and_u32s(shr(simd, bits, 16), splat(simd, 1));
        shr(
            simd,
            simd.add_u32s(simd.add_u32s(bits, splat(simd, 0x7FFF)), lsb),
            16,
        )
    }
    #[inline(always)]
    fn round_stochastic_lanes<S: Simd>(simd: S, x: S::f32s, random: S::u32s) -> S::u32s {
        // The canonical NaN's low 16 bits are zero: noise below 2^16 leaves
        // its top half, 0x7FC0, as it is.
        let bits = simd.transmute_u32s_f32s(x);
        let noise = simd.and_u32s(random, splat(simd, 0xFFFF));
        shr(simd, simd.add_u32s(bits, noise), 16)
    }
}

/// `2^112`: moves an `f16` exponent (bias 15) placed in an `f32` exponent
/// field (bias 127) to its value.
const F16_EXPONENT_SHIFT: f32 = 5.192_297e33;

impl Half for f16 {
    #[inline(always)]
    fn to_bits(self) -> u16 {
        f16::to_bits(self)
    }
    #[inline(always)]
    fn from_bits(bits: u16) -> Self {
        f16::from_bits(bits)
    }
    #[inline(always)]
    fn widen_lanes<S: Simd>(simd: S, bits: S::u32s) -> S::f32s {
        // AVX-512F converts f16 in hardware (`vcvtph2ps`): exact for every
        // bit pattern, NaNs quieted as `half` does (the exhaustive tests
        // check this on every bit pattern).
        #[cfg(target_arch = "x86_64")]
        if let (Some(v4), Ok(wide)) = (
            avx512(&simd),
            bytemuck::try_cast::<S::u32s, core::arch::x86_64::__m512i>(bits),
        ) {
            let packed = v4.avx512f._mm512_cvtepi32_epi16(wide);
            if let Ok(out) = bytemuck::try_cast(v4.avx512f._mm512_cvtph_ps(packed)) {
                return out;
            }
        }
        // Exponent and mantissa shifted into place, then scaled by 2^112:
        // exact for normals, and for subnormals too (an f32 subnormal times
        // a power of two that lands in range is exact). Infinities and NaNs
        // take all-ones exponents; a NaN gets its quiet bit, as in `half`.
        let sign = shl(simd, simd.and_u32s(bits, splat(simd, 0x8000)), 16);
        let magnitude = simd.and_u32s(bits, splat(simd, 0x7FFF));
        let shifted = shl(simd, magnitude, 13);
        let finite = simd.transmute_u32s_f32s(simd.mul_f32s(
            simd.transmute_f32s_u32s(shifted),
            simd.splat_f32s(F16_EXPONENT_SHIFT),
        ));
        let is_nan =
            simd.greater_than_i32s(simd.transmute_i32s_u32s(magnitude), simd.splat_i32s(0x7C00));
        let quiet = simd.select_u32s(is_nan, splat(simd, 0x0040_0000), splat(simd, 0));
        let special = simd.or_u32s(simd.or_u32s(shifted, splat(simd, F32_INFINITY_BITS)), quiet);
        let is_special =
            simd.greater_than_i32s(simd.transmute_i32s_u32s(magnitude), simd.splat_i32s(0x7BFF));
        simd.transmute_f32s_u32s(simd.or_u32s(sign, simd.select_u32s(is_special, special, finite)))
    }
    #[inline(always)]
    fn round_nearest_lanes<S: Simd>(simd: S, x: S::f32s) -> S::u32s {
        // AVX-512F rounds to f16 in hardware (`vcvtps2ph`, to nearest even,
        // subnormal results and overflow to infinity as IEEE says); NaNs
        // are made canonical first, and the canonical f32 NaN converts to
        // the canonical f16 NaN 0x7E00.
        #[cfg(target_arch = "x86_64")]
        {
            let canonical = simd.select_f32s(simd.equal_f32s(x, x), x, simd.splat_f32s(f32::NAN));
            if let (Some(v4), Ok(wide)) = (
                avx512(&simd),
                bytemuck::try_cast::<S::f32s, core::arch::x86_64::__m512>(canonical),
            ) {
                use core::arch::x86_64::{_MM_FROUND_NO_EXC, _MM_FROUND_TO_NEAREST_INT};
                const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
                let packed = v4.avx512f._mm512_cvtps_ph::<NEAREST>(wide);
                if let Ok(out) = bytemuck::try_cast(v4.avx512f._mm512_cvtepu16_epi32(packed)) {
                    return out;
                }
            }
        }
        // Three ranges of the magnitude (F. Giesen's float_to_half_fast3_rtne):
        // overflow to infinity, subnormal results (rounded by an f32 add of
        // 0.5, whose ulp is the f16 subnormal ulp), and normals (rebias and
        // round on the bits, ties to even).
        let bits = simd.transmute_u32s_f32s(x);
        let sign = shr(simd, simd.and_u32s(bits, splat(simd, 0x8000_0000)), 16);
        let magnitude = simd.and_u32s(bits, splat(simd, F32_MAGNITUDE));
        let signed = |v: S::u32s| simd.transmute_i32s_u32s(v);

        let overflow = simd.greater_than_i32s(signed(magnitude), simd.splat_i32s(0x477F_FFFF));
        let subnormal = simd.less_than_i32s(signed(magnitude), simd.splat_i32s(0x3880_0000));

        let half_magic = splat(simd, 0x3F00_0000);
        let sum = simd.add_f32s(
            simd.transmute_f32s_u32s(magnitude),
            simd.transmute_f32s_u32s(half_magic),
        );
        let from_subnormal = simd.sub_u32s(simd.transmute_u32s_f32s(sum), half_magic);

        let odd = simd.and_u32s(shr(simd, magnitude, 13), splat(simd, 1));
        let rebias = 0u32.wrapping_sub(112 << 23).wrapping_add(0xFFF);
        let from_normal = shr(
            simd,
            simd.add_u32s(simd.add_u32s(magnitude, splat(simd, rebias)), odd),
            13,
        );

        let finite = simd.select_u32s(subnormal, from_subnormal, from_normal);
        let infinity = splat(simd, 0x7C00);
        let rounded = simd.or_u32s(sign, simd.select_u32s(overflow, infinity, finite));
        simd.select_u32s(is_nan_lanes(simd, bits), splat(simd, 0x7E00), rounded)
    }
    #[inline(always)]
    fn round_stochastic_lanes<S: Simd>(simd: S, x: S::f32s, _random: S::u32s) -> S::u32s {
        Self::round_nearest_lanes(simd, x)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn converts_slices() -> bool {
        crate::f16c::F16c::detect().is_some()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        if let Some(f16c) = crate::f16c::F16c::detect() {
            f16c.widen(src, dst);
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn narrow_slice(src: &[f32], dst: &mut [Self]) {
        if let Some(f16c) = crate::f16c::F16c::detect() {
            f16c.narrow(src, dst);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Exhaustive checks of the lane conversions against the spec's
    //! (`half`), on every instruction set this machine has.
    use super::*;

    #[test]
    fn f16_exponent_shift_is_two_to_the_112() {
        assert_eq!(F16_EXPONENT_SHIFT, 2f32.powi(112));
    }

    /// Every `f32` a step could round to `H`'s bit pattern `bits` or its
    /// neighbours: the value, the midpoints to both neighbours, one `f32`
    /// ulp either side of each, and the same around a few NaN payloads.
    fn near<H: Half>(bits: u16) -> Vec<f32> {
        let x = H::from_bits(bits).widen();
        let next = H::from_bits(bits.wrapping_add(1)).widen();
        let mut out = vec![x];
        if x.is_finite() && next.is_finite() {
            let mid = (x as f64 + next as f64) / 2.0;
            let mid = mid as f32;
            for m in [mid, x, next] {
                out.extend([m, f32::from_bits(m.to_bits().wrapping_add(1))]);
                out.push(f32::from_bits(m.to_bits().wrapping_sub(1)));
            }
        }
        out
    }

    struct Widen<'a, H>(&'a [u16], core::marker::PhantomData<H>);

    impl<H: Half> pulp::WithSimd for Widen<'_, H> {
        type Output = Vec<u32>;
        fn with_simd<S: Simd>(self, simd: S) -> Vec<u32> {
            let width = core::mem::size_of::<S::u32s>() / 4;
            let mut out = Vec::new();
            for chunk in self.0.chunks(width) {
                let mut lanes: S::u32s = bytemuck::Zeroable::zeroed();
                let l = bytemuck::cast_slice_mut::<S::u32s, u32>(core::slice::from_mut(&mut lanes));
                for (l, b) in l.iter_mut().zip(chunk) {
                    *l = u32::from(*b);
                }
                let wide = simd.transmute_u32s_f32s(H::widen_lanes(simd, lanes));
                out.extend_from_slice(
                    &bytemuck::cast_slice::<S::u32s, u32>(&[wide])[..chunk.len()],
                );
            }
            out
        }
    }

    struct Narrow<'a, H>(&'a [f32], Option<&'a [u32]>, core::marker::PhantomData<H>);

    impl<H: Half> pulp::WithSimd for Narrow<'_, H> {
        type Output = Vec<u16>;
        fn with_simd<S: Simd>(self, simd: S) -> Vec<u16> {
            let width = core::mem::size_of::<S::u32s>() / 4;
            let mut out = Vec::new();
            for (c, chunk) in self.0.chunks(width).enumerate() {
                let mut x: S::f32s = bytemuck::Zeroable::zeroed();
                bytemuck::cast_slice_mut::<S::f32s, f32>(core::slice::from_mut(&mut x))
                    [..chunk.len()]
                    .copy_from_slice(chunk);
                let rounded = match self.1 {
                    None => H::round_nearest_lanes(simd, x),
                    Some(random) => {
                        let mut r: S::u32s = bytemuck::Zeroable::zeroed();
                        let start = c * width;
                        bytemuck::cast_slice_mut::<S::u32s, u32>(core::slice::from_mut(&mut r))
                            [..chunk.len()]
                            .copy_from_slice(&random[start..start + chunk.len()]);
                        H::round_stochastic_lanes(simd, x, r)
                    }
                };
                let lanes = bytemuck::cast_slice::<S::u32s, u32>(core::slice::from_ref(&rounded));
                for lane in &lanes[..chunk.len()] {
                    assert!(*lane <= 0xFFFF, "lane {lane:#x} does not fit 16 bits");
                    out.push(*lane as u16);
                }
            }
            out
        }
    }

    /// Every instruction set of this machine, as a function that runs `op`.
    fn each_isa<Op: pulp::WithSimd + Clone>(op: Op, mut check: impl FnMut(&str, Op::Output)) {
        check("fallback", pulp::Scalar::new().vectorize(op.clone()));
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(v3) = pulp::x86::V3::try_new() {
                check("avx2", Simd::vectorize(v3, op.clone()));
            }
            if let Some(v4) = pulp::x86::V4::try_new() {
                check("avx512", Simd::vectorize(v4, op.clone()));
            }
        }
        #[cfg(target_arch = "aarch64")]
        if let Some(neon) = pulp::aarch64::Neon::try_new() {
            check("neon", Simd::vectorize(neon, op.clone()));
        }
    }

    impl<H> Clone for Widen<'_, H> {
        fn clone(&self) -> Self {
            Widen(self.0, core::marker::PhantomData)
        }
    }
    impl<H> Clone for Narrow<'_, H> {
        fn clone(&self) -> Self {
            Narrow(self.0, self.1, core::marker::PhantomData)
        }
    }

    fn every_bit_pattern_widens_as_half_does<H: Half>() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let want: Vec<u32> = all
            .iter()
            .map(|&b| H::from_bits(b).widen().to_bits())
            .collect();
        each_isa(Widen::<H>(&all, core::marker::PhantomData), |isa, got| {
            for ((b, g), w) in all.iter().zip(&got).zip(&want) {
                // A NaN may keep its quiet bit clear (the trait's contract);
                // sign and payload are `half`'s.
                let got = if f32::from_bits(*w).is_nan() {
                    g | 0x0040_0000
                } else {
                    *g
                };
                assert_eq!(
                    got,
                    *w,
                    "{} {b:#06x} on {isa}: {g:#010x}, half {w:#010x}",
                    H::NAME
                );
            }
        });
    }

    fn every_neighbourhood_rounds_as_half_does<H: Reference>() {
        let mut inputs: Vec<f32> = (0..=u16::MAX).flat_map(near::<H>).collect();
        inputs.extend([
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7F80_0001),
            f32::from_bits(0xFFC0_1234),
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            f32::from_bits(1),
            f32::from_bits(0x8000_0001),
            65_519.996,
            65_520.0,
            65_536.0,
            1e-10,
            -0.0,
        ]);
        let want: Vec<u16> = inputs
            .iter()
            .map(|&x| H::round_nearest(x).to_bits())
            .collect();
        // The spec itself is `half` except for NaN, which is canonical.
        for (x, w) in inputs.iter().zip(&want) {
            if x.is_nan() {
                assert_eq!(*w, H::CANONICAL_NAN.to_bits());
            } else {
                assert_eq!(*w, H::round_nearest_reference(*x), "{} from {x:e}", H::NAME);
            }
        }
        // The lanes take NaNs canonical, as the kernel hands them over.
        let inputs: Vec<f32> = inputs
            .iter()
            .map(|&x| if x.is_nan() { f32::NAN } else { x })
            .collect();
        each_isa(
            Narrow::<H>(&inputs, None, core::marker::PhantomData),
            |isa, got| {
                for ((x, g), w) in inputs.iter().zip(&got).zip(&want) {
                    assert_eq!(
                        g,
                        w,
                        "{} from {x:e} ({:#010x}) on {isa}",
                        H::NAME,
                        x.to_bits()
                    );
                }
            },
        );
        // Stochastic rounding: lanes == spec for every input and a spread of
        // random bits, including all-zeros and all-ones.
        let random: Vec<u32> = (0..inputs.len() as u64)
            .map(|i| match i % 4 {
                0 => 0,
                1 => u32::MAX,
                _ => crate::rounding::random_bits(9, i),
            })
            .collect();
        let want: Vec<u16> = inputs
            .iter()
            .zip(&random)
            .map(|(&x, &r)| H::round_stochastic(x, r).to_bits())
            .collect();
        each_isa(
            Narrow::<H>(&inputs, Some(&random), core::marker::PhantomData),
            |isa, got| {
                for ((x, g), w) in inputs.iter().zip(&got).zip(&want) {
                    assert_eq!(g, w, "{} stochastic from {x:e} on {isa}", H::NAME);
                }
            },
        );
    }

    trait Reference: Half {
        fn round_nearest_reference(x: f32) -> u16;
    }
    impl Reference for bf16 {
        fn round_nearest_reference(x: f32) -> u16 {
            bf16::from_f32(x).to_bits()
        }
    }
    impl Reference for f16 {
        fn round_nearest_reference(x: f32) -> u16 {
            f16::from_f32(x).to_bits()
        }
    }

    #[test]
    fn bf16_widens_exactly_on_every_isa() {
        every_bit_pattern_widens_as_half_does::<bf16>();
    }

    #[test]
    fn f16_widens_exactly_on_every_isa() {
        every_bit_pattern_widens_as_half_does::<f16>();
    }

    #[test]
    fn bf16_rounds_as_half_on_every_isa() {
        every_neighbourhood_rounds_as_half_does::<bf16>();
    }

    #[test]
    fn f16_rounds_as_half_on_every_isa() {
        every_neighbourhood_rounds_as_half_does::<f16>();
    }

    #[test]
    fn bf16_stochastic_rounding_rounds_up_by_the_lost_fraction() {
        // 1 + 2^-9 lies a quarter of the way from 1 to the next bf16
        // (1 + 2^-7): low 16 bits 0x4000.
        let x = 1.0f32 + 2f32.powi(-9);
        assert_eq!(x.to_bits() & 0xFFFF, 0x4000);
        assert_eq!(bf16::round_stochastic(x, 0xBFFF).to_f32(), 1.0);
        assert_eq!(
            bf16::round_stochastic(x, 0xC000).to_f32(),
            1.0 + 2f32.powi(-7)
        );
        assert_eq!(
            bf16::round_stochastic(-x, 0xC000).to_f32(),
            -(1.0 + 2f32.powi(-7))
        );
        assert_eq!(
            bf16::round_stochastic(f32::INFINITY, u32::MAX).to_f32(),
            f32::INFINITY
        );
    }
}
