//! Software prefetch of the streams a step reads, a fixed distance ahead.
//!
//! The SIMD loop spends most of its time waiting for the divide and square
//! root unit, so the out-of-order window covers only a few registers ahead and
//! the hardware prefetchers restart at every 4 KiB page; asking for the data a
//! kilobyte ahead keeps DRAM busy while the divider works.

/// How far ahead to prefetch, in bytes: far enough to cover DRAM's latency
/// at the step's rate, near enough that the lines are still in L1 when the
/// loop reaches them. Chosen with `cargo run --release -p
/// fused-rmsprop-benches --bin compare -- --sizes 16M --no-model --no-train`
/// among 512 B, 1, 2 and 4 KiB.
pub(crate) const DISTANCE_BYTES: usize = 2048;

/// Hints the CPU to bring the cache line holding `slice[index]` into cache;
/// does nothing when `index` is past the end.
#[inline(always)]
pub(crate) fn prefetch<T>(slice: &[T], index: usize) {
    if index < slice.len() {
        let address = slice[index..].as_ptr();
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `_mm_prefetch` is a hint that never faults and never writes,
        // whatever the address (here one inside `slice`); it needs only SSE,
        // which every x86_64 CPU has (it is in the target's baseline features).
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                address.cast::<i8>(),
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = address;
    }
}

/// [`prefetch`] of every cache line of `slice[from..to]` (clamped to the
/// slice): for loops that step a block at a time rather than a register.
#[inline(always)]
pub(crate) fn prefetch_lines<T>(slice: &[T], from: usize, to: usize) {
    const LINE_BYTES: usize = 64;
    let step = (LINE_BYTES / core::mem::size_of::<T>().max(1)).max(1);
    let mut index = from;
    while index < to.min(slice.len()) {
        prefetch(slice, index);
        index += step;
    }
}
