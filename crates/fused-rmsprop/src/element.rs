//! The element types the kernel computes in (`f32`, `f64`), and their SIMD
//! vocabulary.
//!
//! pulp names every vector operation by type (`add_f32s`, `add_f64s`); this
//! trait gives the kernel one name per operation so the SIMD kernel is written
//! once, generic over both the instruction set and the element type. Each
//! method is a single IEEE operation: nothing here fuses, approximates or
//! reorders, which is what lets the SIMD path match the scalar path bit for
//! bit.

use core::fmt::Debug;
use core::ops::{Add, Div, Mul, Neg, Sub};

use pulp::Simd;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A floating-point type the RMSprop kernel computes in: `f32` or `f64`
/// (every [`Param`](crate::Param) type's state is one of them).
///
/// The trait is sealed; it exists so that every public step function is
/// written once for both widths.
///
/// ```
/// use fused_rmsprop::Float;
/// assert_eq!(<f32 as Float>::from_f64(0.5), 0.5f32);
/// assert_eq!(<f64 as Float>::ZERO, 0.0);
/// ```
pub trait Float:
    sealed::Sealed
    + crate::Param<State = Self>
    + Copy
    + Debug
    + Default
    + PartialEq
    + PartialOrd
    + Send
    + Sync
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + 'static
{
    /// `0.0`.
    const ZERO: Self;
    /// The smallest positive normal value (what Burn adds to a norm before
    /// dividing by it).
    const MIN_POSITIVE: Self;

    /// Rounds an `f64` hyper-parameter to this type (round to nearest even).
    fn from_f64(value: f64) -> Self;
    /// Widens to `f64` (exact).
    fn to_f64(self) -> f64;
    /// The IEEE square root (correctly rounded).
    fn sqrt(self) -> Self;

    /// A SIMD register of this type for instruction set `S`.
    type Lanes<S: Simd>: Copy + bytemuck::Pod;
    /// Splits a slice into whole registers and a scalar tail.
    fn as_lanes<S: Simd>(slice: &[Self]) -> (&[Self::Lanes<S>], &[Self]);
    /// Splits a mutable slice into whole registers and a scalar tail.
    fn as_lanes_mut<S: Simd>(slice: &mut [Self]) -> (&mut [Self::Lanes<S>], &mut [Self]);
    /// Every lane set to `value`.
    fn lanes_splat<S: Simd>(simd: S, value: Self) -> Self::Lanes<S>;
    /// Lane-wise `a + b`.
    fn lanes_add<S: Simd>(simd: S, a: Self::Lanes<S>, b: Self::Lanes<S>) -> Self::Lanes<S>;
    /// Lane-wise `a - b`.
    fn lanes_sub<S: Simd>(simd: S, a: Self::Lanes<S>, b: Self::Lanes<S>) -> Self::Lanes<S>;
    /// Lane-wise `a * b` (never fused with a following add).
    fn lanes_mul<S: Simd>(simd: S, a: Self::Lanes<S>, b: Self::Lanes<S>) -> Self::Lanes<S>;
    /// Lane-wise `a / b` (IEEE division, no reciprocal estimate).
    fn lanes_div<S: Simd>(simd: S, a: Self::Lanes<S>, b: Self::Lanes<S>) -> Self::Lanes<S>;
    /// Lane-wise square root (IEEE, no reciprocal-square-root estimate).
    fn lanes_sqrt<S: Simd>(simd: S, a: Self::Lanes<S>) -> Self::Lanes<S>;
    /// Lane-wise `-a` (flips the sign bit, as scalar `-a` does).
    fn lanes_neg<S: Simd>(simd: S, a: Self::Lanes<S>) -> Self::Lanes<S>;
    /// `a` clamped to `[lo, hi]` as the scalar specification's gradient
    /// clipping does it: above `hi` becomes `hi`, then below `lo` becomes
    /// `lo`; a NaN lane stays as it is.
    fn lanes_clamp_keeping_nan<S: Simd>(
        simd: S,
        a: Self::Lanes<S>,
        lo: Self::Lanes<S>,
        hi: Self::Lanes<S>,
    ) -> Self::Lanes<S>;
    /// Lane-wise `if a < 0 { 0 } else { a }`: NaN and `-0.0` pass through.
    fn lanes_clamp_negative_to_zero<S: Simd>(simd: S, a: Self::Lanes<S>) -> Self::Lanes<S>;
    /// Lane-wise `if a == a { a } else { CANONICAL_NAN }`.
    fn lanes_canonicalize_nan<S: Simd>(simd: S, a: Self::Lanes<S>) -> Self::Lanes<S>;
    /// The slice as `f32`s when this type is `f32` (`None` for `f64`): for
    /// code vectorized for `f32` alone, such as 8-bit state's codes.
    #[doc(hidden)]
    fn as_f32s_mut(slice: &mut [Self]) -> Option<&mut [f32]>;
}

macro_rules! impl_float {
    ($ty:ident, $lanes:ident,
     $as_simd:ident, $as_mut_simd:ident, $splat:ident, $add:ident, $sub:ident, $mul:ident,
     $div:ident, $sqrt:ident, $neg:ident, $less:ident, $equal:ident, $select:ident) => {
        impl Float for $ty {
            const ZERO: Self = 0.0;
            const MIN_POSITIVE: Self = $ty::MIN_POSITIVE;

            #[inline(always)]
            fn from_f64(value: f64) -> Self {
                value as $ty
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                $ty::sqrt(self)
            }
            #[inline(always)]
            fn as_f32s_mut(slice: &mut [Self]) -> Option<&mut [f32]> {
                if core::mem::size_of::<$ty>() == 4 {
                    bytemuck::try_cast_slice_mut(slice).ok()
                } else {
                    None
                }
            }

            type Lanes<S: Simd> = S::$lanes;
            #[inline(always)]
            fn as_lanes<S: Simd>(slice: &[Self]) -> (&[Self::Lanes<S>], &[Self]) {
                S::$as_simd(slice)
            }
            #[inline(always)]
            fn as_lanes_mut<S: Simd>(slice: &mut [Self]) -> (&mut [Self::Lanes<S>], &mut [Self]) {
                S::$as_mut_simd(slice)
            }
            #[inline(always)]
            fn lanes_splat<S: Simd>(simd: S, value: Self) -> Self::Lanes<S> {
                simd.$splat(value)
            }
            #[inline(always)]
            fn lanes_add<S: Simd>(simd: S, a: Self::Lanes<S>, b: Self::Lanes<S>) -> Self::Lanes<S> {
                simd.$add(a, b)
            }
            #[inline(always)]
            fn lanes_sub<S: Simd>(simd: S, a: Self::Lanes<S>, b: Self::Lanes<S>) -> Self::Lanes<S> {
                simd.$sub(a, b)
            }
            #[inline(always)]
            fn lanes_mul<S: Simd>(simd: S, a: Self::Lanes<S>, b: Self::Lanes<S>) -> Self::Lanes<S> {
                simd.$mul(a, b)
            }
            #[inline(always)]
            fn lanes_div<S: Simd>(simd: S, a: Self::Lanes<S>, b: Self::Lanes<S>) -> Self::Lanes<S> {
                simd.$div(a, b)
            }
            #[inline(always)]
            fn lanes_sqrt<S: Simd>(simd: S, a: Self::Lanes<S>) -> Self::Lanes<S> {
                simd.$sqrt(a)
            }
            #[inline(always)]
            fn lanes_neg<S: Simd>(simd: S, a: Self::Lanes<S>) -> Self::Lanes<S> {
                simd.$neg(a)
            }
            #[inline(always)]
            fn lanes_clamp_negative_to_zero<S: Simd>(simd: S, a: Self::Lanes<S>) -> Self::Lanes<S> {
                let zero = simd.$splat(0.0);
                simd.$select(simd.$less(a, zero), zero, a)
            }
            #[inline(always)]
            fn lanes_clamp_keeping_nan<S: Simd>(
                simd: S,
                a: Self::Lanes<S>,
                lo: Self::Lanes<S>,
                hi: Self::Lanes<S>,
            ) -> Self::Lanes<S> {
                let a = simd.$select(simd.$less(hi, a), hi, a);
                simd.$select(simd.$less(a, lo), lo, a)
            }
            #[inline(always)]
            fn lanes_canonicalize_nan<S: Simd>(simd: S, a: Self::Lanes<S>) -> Self::Lanes<S> {
                simd.$select(simd.$equal(a, a), a, simd.$splat($ty::NAN))
            }
        }
    };
}

impl_float!(
    f32,
    f32s,
    as_simd_f32s,
    as_mut_simd_f32s,
    splat_f32s,
    add_f32s,
    sub_f32s,
    mul_f32s,
    div_f32s,
    sqrt_f32s,
    neg_f32s,
    less_than_f32s,
    equal_f32s,
    select_f32s
);
impl_float!(
    f64,
    f64s,
    as_simd_f64s,
    as_mut_simd_f64s,
    splat_f64s,
    add_f64s,
    sub_f64s,
    mul_f64s,
    div_f64s,
    sqrt_f64s,
    neg_f64s,
    less_than_f64s,
    equal_f64s,
    select_f64s
);
