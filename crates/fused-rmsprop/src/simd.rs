//! The vectorized kernel: the [scalar specification](crate::scalar), one
//! register of lanes at a time, written once for every instruction set.
//!
//! [`step`] hands the kernel to pulp, which runs it with the instruction set
//! it is given (AVX-512, AVX2+FMA, NEON, or pulp's one-lane fallback); the
//! `#[inline(always)]` body is monomorphized for each. The whole registers
//! are stepped here; the tail (fewer elements than one register) is stepped
//! by the scalar specification itself, so the two cannot drift apart.

use pulp::{Simd, WithSimd};

use crate::step::{Chunk, Coefficients};
use crate::{Float, Param};
use crate::{prefetch, scalar, streaming};

/// Steps `chunk` with instruction set `simd`.
#[inline(always)]
pub(crate) fn step<T: Float + Param<State = T>, S: Simd>(
    simd: S,
    c: &Coefficients<T>,
    chunk: Chunk<'_, T>,
) {
    simd.vectorize(Kernel {
        coefficients: c,
        chunk,
    });
}

struct Kernel<'a, 'c, T: Param> {
    coefficients: &'c Coefficients<T>,
    chunk: Chunk<'a, T>,
}

impl<T: Float + Param<State = T>> WithSimd for Kernel<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let c = self.coefficients;
        let mut chunk = self.chunk;
        // An out-of-place chunk large enough streams its parameters: the
        // elements before the first aligned register go through the spec.
        let streaming = match streaming::alignment(&simd) {
            Some(align)
                if !chunk.source.is_empty() && chunk.len() >= streaming::STREAMING_MIN_ELEMENTS =>
            {
                let address = chunk.params.as_ptr() as usize;
                let lead = (align - address % align) % align / core::mem::size_of::<T>();
                let lead = lead.min(chunk.len());
                let (lead, rest) = chunk.split_at(lead);
                scalar::step(c, lead);
                chunk = rest;
                true
            }
            _ => false,
        };
        let width = core::mem::size_of::<T::Lanes<S>>() / core::mem::size_of::<T>();
        let whole = chunk.len() / width * width;
        let (head, tail) = chunk.split_at(whole);
        crate::step::with_constant_options!(
            c,
            [
                plain,
                plain_with_momentum,
                plain_clipped_by_value,
                plain_scaled
            ],
            |k| whole_registers(simd, k, head, streaming)
        );
        scalar::step(c, tail);
    }
}

/// Steps `head` (a whole number of registers) with coefficients `c`,
/// writing the parameters with streaming stores when `streaming` (module
/// `streaming`; an out-of-place chunk). Inlined into each call, so
/// coefficients whose options are constants
/// ([`with_constant_options`](crate::step::with_constant_options)) get a
/// loop of their own.
#[inline(always)]
fn whole_registers<T: Float + Param<State = T>, S: Simd>(
    simd: S,
    c: &Coefficients<T>,
    head: Chunk<'_, T>,
    streaming: bool,
) {
    let Chunk {
        params,
        source,
        grads,
        square_avg,
        grad_avg,
        momentum_buf,
        ..
    } = head;
    let (params_head, params_tail) = T::as_lanes_mut::<S>(params);
    let (source_head, source_tail) = T::as_lanes::<S>(source);
    let (grads_head, grads_tail) = T::as_lanes::<S>(grads);
    let (square_head, square_tail) = T::as_lanes_mut::<S>(square_avg);
    let (grad_avg_head, grad_avg_tail) = T::as_lanes_mut::<S>(grad_avg);
    let (momentum_head, momentum_tail) = T::as_lanes_mut::<S>(momentum_buf);

    let lanes = LaneCoefficients::splat(simd, c);
    let ahead = prefetch::DISTANCE_BYTES / core::mem::size_of::<T::Lanes<S>>().max(1);
    for i in 0..params_head.len() {
        if !streaming {
            // A streamed destination is never read: fetching it would
            // bring back the traffic streaming saves.
            prefetch::prefetch(params_head, i + ahead);
        }
        prefetch::prefetch(source_head, i + ahead);
        prefetch::prefetch(grads_head, i + ahead);
        prefetch::prefetch(square_head, i + ahead);
        prefetch::prefetch(grad_avg_head, i + ahead);
        prefetch::prefetch(momentum_head, i + ahead);
        let grad_avg = if c.centered {
            Some(&mut grad_avg_head[i])
        } else {
            None
        };
        let momentum_buf = if c.momentum.is_some() {
            Some(&mut momentum_head[i])
        } else {
            None
        };
        let p = update_lanes(
            simd,
            c,
            &lanes,
            if source_head.is_empty() {
                params_head[i]
            } else {
                source_head[i]
            },
            grads_head[i],
            &mut square_head[i],
            grad_avg,
            momentum_buf,
        );
        if streaming {
            streaming::store(simd, &mut params_head[i], p);
        } else {
            params_head[i] = p;
        }
    }
    if streaming {
        streaming::fence(simd);
    }
    debug_assert!(params_tail.is_empty() && grads_tail.is_empty());
    debug_assert!(source_tail.is_empty());
    debug_assert!(square_tail.is_empty() && grad_avg_tail.is_empty());
    debug_assert!(momentum_tail.is_empty());
}

/// The coefficients broadcast to every lane, once per chunk.
pub(crate) struct LaneCoefficients<L> {
    lr: L,
    alpha: L,
    one_minus_alpha: L,
    eps: L,
    coupled_weight_decay: L,
    decoupled_decay_factor: L,
    momentum: L,
    clip_value: L,
    neg_clip_value: L,
    grad_scale: L,
}

impl<L: Copy> LaneCoefficients<L> {
    #[inline(always)]
    pub(crate) fn splat<T: Float<Lanes<S> = L>, S: Simd>(simd: S, c: &Coefficients<T>) -> Self {
        let splat = |x: T| T::lanes_splat(simd, x);
        Self {
            lr: splat(c.lr),
            alpha: splat(c.alpha),
            one_minus_alpha: splat(c.one_minus_alpha),
            eps: splat(c.eps),
            coupled_weight_decay: splat(c.coupled_weight_decay.unwrap_or(T::ZERO)),
            decoupled_decay_factor: splat(c.decoupled_decay_factor.unwrap_or(T::ZERO)),
            momentum: splat(c.momentum.unwrap_or(T::ZERO)),
            clip_value: splat(c.clip_value.unwrap_or(T::ZERO)),
            neg_clip_value: splat(c.clip_value.map_or(T::ZERO, |max| -max)),
            grad_scale: splat(c.grad_scale.unwrap_or(T::ZERO)),
        }
    }
}

/// [`scalar::update_element`](crate::scalar), on a register of lanes:
/// returns the new parameters (NaN canonical).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn update_lanes<T: Float, S: Simd>(
    simd: S,
    c: &Coefficients<T>,
    k: &LaneCoefficients<T::Lanes<S>>,
    param: T::Lanes<S>,
    grad: T::Lanes<S>,
    square_avg: &mut T::Lanes<S>,
    grad_avg: Option<&mut T::Lanes<S>>,
    momentum_buf: Option<&mut T::Lanes<S>>,
) -> T::Lanes<S> {
    let add = |a, b| T::lanes_add(simd, a, b);
    let sub = |a, b| T::lanes_sub(simd, a, b);
    let mul = |a, b| T::lanes_mul(simd, a, b);
    let canonical = |x| T::lanes_canonicalize_nan(simd, x);

    let mut g = grad;
    if c.clip_value.is_some() {
        g = T::lanes_clamp_keeping_nan(simd, g, k.neg_clip_value, k.clip_value);
    }
    if c.grad_scale.is_some() {
        g = mul(g, k.grad_scale);
    }
    if c.maximize {
        g = T::lanes_neg(simd, g);
    }
    let mut p = param;
    if c.coupled_weight_decay.is_some() {
        g = add(g, mul(k.coupled_weight_decay, p));
    }
    if c.decoupled_decay_factor.is_some() {
        p = mul(p, k.decoupled_decay_factor);
    }

    let v = add(mul(k.alpha, *square_avg), mul(k.one_minus_alpha, mul(g, g)));
    *square_avg = canonical(v);

    let mut variance = v;
    if let Some(grad_avg) = grad_avg {
        let m = add(mul(k.alpha, *grad_avg), mul(k.one_minus_alpha, g));
        *grad_avg = canonical(m);
        variance = sub(v, mul(m, m));
        if c.clamp_centered_variance {
            variance = T::lanes_clamp_negative_to_zero(simd, variance);
        }
    }

    let denom = if c.eps_inside_sqrt {
        T::lanes_sqrt(simd, add(variance, k.eps))
    } else {
        add(T::lanes_sqrt(simd, variance), k.eps)
    };
    let mut step = T::lanes_div(simd, g, denom);

    if let Some(buf) = momentum_buf {
        let b = add(mul(k.momentum, *buf), step);
        *buf = canonical(b);
        step = if c.nesterov {
            add(step, mul(k.momentum, b))
        } else {
            b
        };
    }

    canonical(sub(p, mul(k.lr, step)))
}
