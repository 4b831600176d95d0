//! The concrete instruction-set tokens behind pulp's generic `S: Simd`: a
//! kernel written once over `S` reaches an intrinsic that pulp's trait does
//! not offer (AVX-512's `f16` conversions) through the token of the set it
//! was monomorphized for. A leaf: it knows nothing of the step.

use pulp::Simd;

/// The AVX-512 token when `S` is AVX-512: the concrete token that pulp's
/// safe intrinsics need. `S` is a type, so the compiler decides the
/// downcast when it monomorphizes the kernel: no run-time cost.
#[inline(always)]
pub(crate) fn avx512<S: Simd>(simd: &S) -> Option<pulp::x86::V4> {
    (simd as &dyn core::any::Any)
        .downcast_ref::<pulp::x86::V4>()
        .copied()
}

/// The AVX2 token when `S` is AVX2 (pulp's `V3`), as [`avx512`] does for
/// AVX-512.
#[inline(always)]
pub(crate) fn avx2<S: Simd>(simd: &S) -> Option<pulp::x86::V3> {
    (simd as &dyn core::any::Any)
        .downcast_ref::<pulp::x86::V3>()
        .copied()
}
