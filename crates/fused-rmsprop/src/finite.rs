//! The gradient check behind [`NonFinite::Skip`](crate::NonFinite::Skip) and
//! [`NonFinite::Error`](crate::NonFinite::Error): does a slice hold a NaN or
//! an infinity?
//!
//! Both policies promise that a rejected tensor is left untouched, so the
//! check must finish before the update writes anything: it is a read-only
//! pass over the gradients, before the fused pass (4 bytes per `f32` element
//! on top of the step's 20-36). It works on the bits ([`Float::all_finite`]:
//! one unsigned-max reduction over the magnitudes), compiled through pulp's
//! dispatch so that the reduction uses the widest vectors the CPU has.

use rayon::prelude::*;

use crate::{Float, PARALLEL_MIN_ELEMENTS, Param, Threads};

/// Runs [`Float::all_finite`] compiled for the best instruction set.
struct Check<'a, T>(&'a [T]);

impl<T: Param> pulp::WithSimd for Check<'_, T> {
    type Output = bool;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> bool {
        T::all_finite(self.0)
    }
}

fn all_finite_serial<T: Param>(xs: &[T]) -> bool {
    pulp::Arch::new().dispatch(Check(xs))
}

/// Whether every element of `xs` is finite, on rayon's pool for long slices
/// (unless `threads` is `Single`).
pub(crate) fn all_finite<T: Param>(xs: &[T], threads: Threads) -> bool {
    if threads == Threads::Single || xs.len() < 4 * PARALLEL_MIN_ELEMENTS {
        all_finite_serial(xs)
    } else {
        xs.par_chunks(PARALLEL_MIN_ELEMENTS).all(all_finite_serial)
    }
}

/// The index of the first non-finite element (for the error message; only
/// called once one is known to exist).
pub(crate) fn first_non_finite<T: Param>(xs: &[T]) -> Option<usize> {
    xs.iter().position(|&x| {
        let y = x.widen() * T::State::ZERO;
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
