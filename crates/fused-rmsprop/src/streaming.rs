//! Streaming (non-temporal) stores for the out-of-place step's parameters.
//!
//! An out-of-place step ([`Group::with_source`](crate::Group::with_source))
//! writes parameters it has not read: an ordinary store first reads each
//! line of the destination into the cache (read-for-ownership), 4 more
//! bytes per `f32` element on a step of 20. A streaming store writes the
//! line without reading it. Measured on an AMD EPYC Zen 4, 2 threads, 16M
//! `f32` elements: an out-of-place loop with the step's loads and stores
//! ran at 0.76-0.85 of the in-place loop's rate with ordinary stores and
//! 0.91 with streaming ones. The stores bypass the cache, which only pays
//! when the written data would not stay there anyway: chunks of at least
//! [`STREAMING_MIN_ELEMENTS`].
//!
//! The stored values are the same; only the way they reach memory differs,
//! so every path still writes the spec's bits.

use pulp::Simd;

#[cfg(target_arch = "x86_64")]
use crate::token::{avx2, avx512};

/// The fewest elements of a chunk whose out-of-place parameters are written
/// with streaming stores (256 KiB of `f32`, a quarter of a Zen 4 core's L2;
/// larger tensors are cut into chunks of about this size or more per
/// thread).
pub(crate) const STREAMING_MIN_ELEMENTS: usize = 1 << 16;

/// The alignment, in bytes, [`store`] needs of its destination to stream
/// on instruction set `S` (the register's size), or `None` when `S` has no
/// streaming store this module uses (only AVX-512 and AVX2 do).
#[inline(always)]
pub(crate) fn alignment<S: Simd>(simd: &S) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        if avx512(simd).is_some() {
            return Some(64);
        }
        if avx2(simd).is_some() {
            return Some(32);
        }
    }
    let _ = simd;
    None
}

/// Stores `value` to `dst`: with a streaming store when `S` is AVX-512 or
/// AVX2, `L` is that set's register and `dst` is aligned to it; with an
/// ordinary store otherwise. The same bits reach memory either way.
#[inline(always)]
pub(crate) fn store<L: bytemuck::Pod, S: Simd>(simd: S, dst: &mut L, value: L) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{__m256i, __m512i};
        let address = dst as *mut L as usize;
        if let (Some(v4), Ok(bits)) = (avx512(&simd), bytemuck::try_cast::<L, __m512i>(value))
            && address.is_multiple_of(64)
        {
            // SAFETY: `v4` exists only on a CPU with AVX-512F, the feature
            // of `vmovntdq` on 512 bits. `dst` is a live, exclusive
            // reference to an `L` of 64 bytes (the cast above succeeded
            // only for that size), so the 64 bytes written are its own,
            // and it is aligned to 64 (checked above), which the
            // instruction requires.
            unsafe {
                v4.avx512f
                    ._mm512_stream_si512(address as *mut __m512i, bits)
            };
            return;
        }
        if let (Some(v3), Ok(bits)) = (avx2(&simd), bytemuck::try_cast::<L, __m256i>(value))
            && address.is_multiple_of(32)
        {
            // SAFETY: as above, with AVX (proved by `v3`, the AVX2 token)
            // and a 32-byte `L` aligned to 32.
            unsafe { v3.avx._mm256_stream_si256(address as *mut __m256i, bits) };
            return;
        }
    }
    *dst = value;
}

/// Makes the streaming stores made so far on this thread visible before any
/// later store (`sfence`): they are not ordered with ordinary stores, and
/// the thread that joins the step's tasks must see them.
#[inline(always)]
pub(crate) fn fence<S: Simd>(simd: S) {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(v4) = avx512(&simd) {
            v4.sse._mm_sfence();
        } else if let Some(v3) = avx2(&simd) {
            v3.sse._mm_sfence();
        }
    }
    let _ = simd;
}
