//! The gradient check behind [`NonFinite::Skip`](crate::NonFinite::Skip) and
//! [`NonFinite::Error`](crate::NonFinite::Error): does a slice hold a NaN or
//! an infinity?
//!
//! Both policies promise that a rejected tensor is left untouched, so the
//! check must finish before the update writes anything: it is a read-only
//! pass over the gradients, before the fused pass (4 bytes per `f32` element
//! on top of the step's 20-36). It is written to vectorize without `unsafe`
//! or intrinsics: `x * 0` is `±0` for every finite `x` and NaN for NaN and
//! ±Inf, so summing `x * 0` into independent lanes leaves a NaN in some lane
//! exactly when a non-finite value was seen; the compiler turns the lane
//! array into vector registers.

use rayon::prelude::*;

use crate::{Float, PARALLEL_MIN_ELEMENTS, Threads};

const LANES: usize = 16;

/// Whether every element of `xs` is finite.
fn all_finite_serial<T: Float>(xs: &[T]) -> bool {
    let mut acc = [T::ZERO; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = *a + x * T::ZERO;
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a = *a + x * T::ZERO;
    }
    #[allow(clippy::eq_op)] // a == a is false only for NaN
    acc.iter().all(|&a| a == a)
}

/// Whether every element of `xs` is finite, on rayon's pool for long slices
/// (unless `threads` is `Single`).
pub(crate) fn all_finite<T: Float>(xs: &[T], threads: Threads) -> bool {
    if threads == Threads::Single || xs.len() < 4 * PARALLEL_MIN_ELEMENTS {
        all_finite_serial(xs)
    } else {
        xs.par_chunks(PARALLEL_MIN_ELEMENTS).all(all_finite_serial)
    }
}

/// The index of the first non-finite element (for the error message; only
/// called once one is known to exist).
pub(crate) fn first_non_finite<T: Float>(xs: &[T]) -> Option<usize> {
    xs.iter().position(|&x| {
        let y = x * T::ZERO;
        #[allow(clippy::eq_op)]
        let nan = y != y;
        nan
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_kind_of_non_finite_anywhere() {
        for len in [0usize, 1, 15, 16, 17, 100, 4 * PARALLEL_MIN_ELEMENTS + 3] {
            let clean = vec![1.5f32; len];
            assert!(all_finite(&clean, Threads::Auto), "len {len}");
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                for at in [0, len / 2, len.saturating_sub(1)] {
                    if len == 0 {
                        continue;
                    }
                    let mut xs = clean.clone();
                    xs[at] = bad;
                    assert!(!all_finite(&xs, Threads::Auto), "{bad} at {at} of {len}");
                    assert!(!all_finite(&xs, Threads::Single));
                    assert_eq!(first_non_finite(&xs), Some(at));
                }
            }
        }
        let extremes = [f64::MAX, f64::MIN, f64::MIN_POSITIVE / 4.0, -0.0, 0.0];
        assert!(all_finite(&extremes, Threads::Auto));
    }
}
