//! The parameter types a step updates: `f32` and `f64`, computed in their
//! own type, and the 16-bit `bf16` and `f16`, widened to `f32` (their state
//! is `f32`) and rounded back.
//!
//! A 16-bit element is stepped in three moves, the same on every path:
//! widen the parameter (or read its `f32` master copy) and the gradient to
//! `f32`, which is exact; run the spec's formula in `f32`; round the new
//! value back to the parameter type, to nearest even or stochastically
//! ([`Rounding`](crate::Rounding)). This module holds the one-element
//! conversions (the spec, with `half` as the reference) and the sealed
//! dispatch of each type to its SIMD kernel; the same conversions on a
//! register of lanes live in `half_lanes`.

// The sealed supertrait's kernels take the crate's private chunk types; the
// trait cannot be named (or implemented) outside the crate, so nothing
// private leaks, but the lint sees the impls as reachable.
#![allow(private_interfaces)]

use core::fmt::Debug;

use half::{bf16, f16};
use pulp::Simd;

use crate::Float;

pub(crate) mod sealed {
    use crate::step::{Chunk, Coefficients};

    /// The per-type kernels: not part of the public API.
    pub trait Sealed: Sized {
        /// Whether [`Rounding::Stochastic`](crate::Rounding::Stochastic)
        /// rounds this type any other way than to nearest (`bf16` only).
        /// When it does not, the step takes the loops that round to nearest.
        const ROUNDS_STOCHASTICALLY: bool;

        /// Steps `chunk` on instruction set `simd`.
        fn step_simd<S: pulp::Simd>(
            simd: S,
            c: &Coefficients<<Self as super::Param>::State>,
            chunk: Chunk<'_, Self>,
        ) where
            Self: super::Param;

        /// The sum of the squares of each block of `xs` in the gradient
        /// norm's order (`norm::block_sum`), on instruction set `simd`,
        /// written to `out` (one per block).
        fn block_sums_simd<S: pulp::Simd>(simd: S, xs: &[Self], out: &mut [f64])
        where
            Self: super::Param;
    }
}

/// A parameter (and gradient) type the kernel steps: `f32`, `f64`,
/// [`half::bf16`] or [`half::f16`].
///
/// The state is kept in [`Param::State`]: the type itself for `f32` and
/// `f64`, `f32` for the 16-bit types. The trait is sealed.
///
/// ```
/// use fused_rmsprop::Param;
/// use half::bf16;
/// assert_eq!(bf16::from_f32(1.5).widen(), 1.5f32);
/// assert_eq!(<bf16 as Param>::round_nearest(1.0 + 1.0 / 512.0), bf16::from_f32(1.0));
/// assert!(<f32 as Param>::CANONICAL_NAN.is_nan());
/// ```
pub trait Param:
    sealed::Sealed + Copy + Debug + Default + PartialEq + Send + Sync + 'static
{
    /// The type the step computes in and keeps state in.
    type State: Float;
    /// The type's name, for messages (`"bf16"`).
    const NAME: &'static str;
    /// Whether the type is narrower than its state (`bf16`, `f16`): only
    /// then do [`Rounding`](crate::Rounding) and master weights apply.
    const NARROWS: bool;
    /// The one NaN every path writes: `0x7FC0` for `bf16`, `0x7E00` for
    /// `f16` (what `half` rounds the canonical `f32` NaN to).
    const CANONICAL_NAN: Self;

    /// The value in the state type (exact).
    fn widen(self) -> Self::State;
    /// `x` rounded to this type, to nearest, ties to even; every NaN becomes
    /// [`Param::CANONICAL_NAN`]. For the other values the same bits as
    /// `half`'s `from_f32`.
    fn round_nearest(x: Self::State) -> Self;
    /// `x` rounded to this type stochastically with the 32 random bits
    /// `random`. For `bf16`: the 16 bits `x` loses are added to `random`'s
    /// low 16 bits, and `x` is rounded away from zero on a carry, so it is
    /// rounded up in magnitude with probability equal to its distance from
    /// the lower neighbour in ulps. `f16` and the wide types round to
    /// nearest (see [`Rounding::Stochastic`](crate::Rounding::Stochastic)).
    fn round_stochastic(x: Self::State, random: u32) -> Self;
    /// The raw bits, widened to `u64`, for bitwise comparisons.
    fn to_bits_u64(self) -> u64;
    /// Whether no element is NaN or infinite.
    fn all_finite(xs: &[Self]) -> bool;
}

macro_rules! wide_param {
    ($ty:ident, $bits:ident, $name:literal) => {
        impl sealed::Sealed for $ty {
            const ROUNDS_STOCHASTICALLY: bool = false;

            #[inline(always)]
            fn step_simd<S: Simd>(
                simd: S,
                c: &crate::step::Coefficients<$ty>,
                chunk: crate::step::Chunk<'_, $ty>,
            ) {
                crate::simd::step(simd, c, chunk)
            }

            #[inline(always)]
            fn block_sums_simd<S: Simd>(_simd: S, xs: &[$ty], out: &mut [f64]) {
                crate::norm::block_sums(xs, out)
            }
        }

        impl Param for $ty {
            type State = $ty;
            const NAME: &'static str = $name;
            const NARROWS: bool = false;
            const CANONICAL_NAN: Self = $ty::NAN;

            #[inline(always)]
            fn widen(self) -> $ty {
                self
            }
            #[inline(always)]
            fn round_nearest(x: $ty) -> Self {
                x
            }
            #[inline(always)]
            fn round_stochastic(x: $ty, _random: u32) -> Self {
                x
            }
            #[inline(always)]
            fn to_bits_u64(self) -> u64 {
                u64::from(self.to_bits())
            }
            /// On the bits: a value is finite exactly when its magnitude
            /// bits are below those of infinity, so one unsigned-max
            /// reduction over the magnitudes answers for the slice; integer
            /// max is associative, so the compiler vectorizes it.
            #[inline(always)]
            fn all_finite(xs: &[Self]) -> bool {
                const MAGNITUDE: $bits = !(1 << ($bits::BITS - 1));
                let infinity = $ty::INFINITY.to_bits();
                xs.iter()
                    .fold(0, |max: $bits, x| max.max(x.to_bits() & MAGNITUDE))
                    < infinity
            }
        }
    };
}

wide_param!(f32, u32, "f32");
wide_param!(f64, u64, "f64");

/// The [`Param`] impl of a 16-bit type: `f32` state, the SIMD kernel of
/// `simd_half`, `half`'s conversions with canonical NaNs.
macro_rules! half_param {
    ($ty:ident, $name:literal, nan: $nan:literal, infinity: $infinity:literal,
     rounds_stochastically: $rounds_stochastically:literal, stochastic: $stochastic:expr,
     block_sums: $block_sums:path) => {
        impl sealed::Sealed for $ty {
            const ROUNDS_STOCHASTICALLY: bool = $rounds_stochastically;

            #[inline(always)]
            fn step_simd<S: Simd>(
                simd: S,
                c: &crate::step::Coefficients<f32>,
                chunk: crate::step::Chunk<'_, $ty>,
            ) {
                crate::simd_half::step(simd, c, chunk)
            }

            #[inline(always)]
            fn block_sums_simd<S: Simd>(simd: S, xs: &[$ty], out: &mut [f64]) {
                $block_sums(simd, xs, out)
            }
        }

        impl Param for $ty {
            type State = f32;
            const NAME: &'static str = $name;
            const NARROWS: bool = true;
            const CANONICAL_NAN: Self = $ty::from_bits($nan);

            #[inline(always)]
            fn widen(self) -> f32 {
                self.to_f32()
            }
            #[inline(always)]
            fn round_nearest(x: f32) -> Self {
                if x.is_nan() {
                    Self::CANONICAL_NAN
                } else {
                    $ty::from_f32(x)
                }
            }
            #[inline(always)]
            fn round_stochastic(x: f32, random: u32) -> Self {
                if x.is_nan() {
                    Self::CANONICAL_NAN
                } else {
                    $stochastic(x, random)
                }
            }
            #[inline(always)]
            fn to_bits_u64(self) -> u64 {
                u64::from(self.to_bits())
            }
            #[inline(always)]
            fn all_finite(xs: &[Self]) -> bool {
                xs.iter().fold(0u16, |max, x| max.max(x.to_bits() & 0x7FFF)) < $infinity
            }
        }
    };
}

half_param!(bf16, "bf16", nan: 0x7FC0, infinity: 0x7F80, rounds_stochastically: true,
    stochastic: |x: f32, random: u32| {
    // A carry out of the low 16 bits moves the magnitude up one ulp;
    // infinities have zero low bits and stay infinite.
    bf16::from_bits((x.to_bits().wrapping_add(random & 0xFFFF) >> 16) as u16)
}, block_sums: crate::norm::bf16_block_sums);
half_param!(f16, "f16", nan: 0x7E00, infinity: 0x7C00, rounds_stochastically: false,
    stochastic: |x: f32, _random: u32| {
    f16::from_f32(x)
}, block_sums: crate::norm::widened_block_sums);
