//! The specification: one element at a time, in plain Rust.
//!
//! Every other path ([`simd`](crate::simd), [`parallel`](crate::parallel))
//! must produce exactly the bits this function produces. Read it next to
//! `simd.rs`: the two are the same sequence of IEEE operations, line for line.
//!
//! No operation here is fused: Rust never contracts `a * b + c` into an FMA,
//! and the SIMD kernel uses separate multiply and add instructions to match.

use crate::step::{Chunk, Coefficients};
use crate::{Float, Param, rounding};

/// Steps every element of `chunk`, in order. A 16-bit parameter is widened
/// to `f32` (or read from its master copy), stepped in `f32`, and rounded
/// back; for `f32` and `f64` both conversions are the identity.
pub(crate) fn step<P: Param>(c: &Coefficients<P::State>, chunk: Chunk<'_, P>) {
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
    } = chunk;
    for i in 0..params.len() {
        let grad_avg = if c.centered {
            Some(&mut grad_avg[i])
        } else {
            None
        };
        let momentum_buf = if c.momentum.is_some() {
            Some(&mut momentum_buf[i])
        } else {
            None
        };
        let p = if c.master {
            master[i]
        } else if source.is_empty() {
            params[i].widen()
        } else {
            source[i].widen()
        };
        let p = update_element(
            c,
            p,
            grads[i].widen(),
            &mut square_avg[i],
            grad_avg,
            momentum_buf,
        );
        if c.master {
            master[i] = p;
        }
        params[i] = if c.stochastic {
            P::round_stochastic(p, rounding::random_bits(key, offset + i as u64))
        } else {
            P::round_nearest(p)
        };
    }
}

/// The RMSprop update of one element: the formula of [`Hyper`](crate::Hyper).
/// Returns the new parameter value (NaN canonical).
#[inline(always)]
fn update_element<T: Float>(
    c: &Coefficients<T>,
    param: T,
    grad: T,
    square_avg: &mut T,
    grad_avg: Option<&mut T>,
    momentum_buf: Option<&mut T>,
) -> T {
    let mut g = grad;
    if let Some(max) = c.clip_value {
        // Above max becomes max, then below -max becomes -max; a NaN fails
        // both comparisons and stays.
        if max < g {
            g = max;
        }
        if g < -max {
            g = -max;
        }
    }
    if let Some(scale) = c.grad_scale {
        g = g * scale;
    }
    if c.maximize {
        g = -g;
    }
    let mut p = param;
    if let Some(wd) = c.coupled_weight_decay {
        g = g + wd * p;
    }
    if let Some(factor) = c.decoupled_decay_factor {
        p = p * factor;
    }

    let v = c.alpha * *square_avg + c.one_minus_alpha * (g * g);
    *square_avg = canonical(v);

    let mut variance = v;
    if let Some(grad_avg) = grad_avg {
        let m = c.alpha * *grad_avg + c.one_minus_alpha * g;
        *grad_avg = canonical(m);
        variance = v - m * m;
        if c.clamp_centered_variance && variance < T::ZERO {
            variance = T::ZERO;
        }
    }

    let denom = if c.eps_inside_sqrt {
        (variance + c.eps).sqrt()
    } else {
        variance.sqrt() + c.eps
    };
    let mut step = g / denom;

    if let (Some(momentum), Some(buf)) = (c.momentum, momentum_buf) {
        let b = momentum * *buf + step;
        *buf = canonical(b);
        step = if c.nesterov { step + momentum * b } else { b };
    }

    canonical(p - c.lr * step)
}

/// Every NaN becomes [`Param::CANONICAL_NAN`], so that which NaN an operation
/// propagates (which the compiler may change by commuting operands) never
/// shows in the output.
#[inline(always)]
fn canonical<T: Float>(x: T) -> T {
    #[allow(clippy::eq_op)] // x != x is the NaN test, written as the SIMD path writes it
    if x == x { x } else { T::CANONICAL_NAN }
}
