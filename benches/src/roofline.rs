//! The hardware limits a step is judged against, measured in the same run.
//!
//! - [`skeleton`]: exactly the kernel's loads and stores (every buffer of the
//!   variant read, params and state written) with one add per buffer instead
//!   of the RMSprop arithmetic. Its bytes per second is the bandwidth limit
//!   for this access pattern: `roofline_fraction = kernel GB/s / skeleton GB/s`.
//! - [`triad`]: STREAM's `a = b + s * c`, the customary bandwidth figure.
//!
//! Both run with the widest SIMD pulp finds and split work over rayon's
//! global pool the way the kernel does.

use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

use crate::workload::Buffers;

/// The skeleton over one set of slices: `p += g; v += g; [ga += g]; [b += g]`.
struct Skeleton<'a> {
    params: &'a mut [f32],
    grads: &'a [f32],
    others: Vec<&'a mut [f32]>,
}

impl WithSimd for Skeleton<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (p, p_tail) = S::as_mut_simd_f32s(self.params);
        let (g, g_tail) = S::as_simd_f32s(self.grads);
        let mut others: Vec<_> = self.others.into_iter().map(S::as_mut_simd_f32s).collect();
        match others.as_mut_slice() {
            [] => {
                for (p, &g) in p.iter_mut().zip(g) {
                    *p = simd.add_f32s(*p, g);
                }
            }
            [(v, _)] => {
                for ((p, &g), v) in p.iter_mut().zip(g).zip(v.iter_mut()) {
                    *p = simd.add_f32s(*p, g);
                    *v = simd.add_f32s(*v, g);
                }
            }
            [(v, _), (b, _)] => {
                for (((p, &g), v), b) in p.iter_mut().zip(g).zip(v.iter_mut()).zip(b.iter_mut()) {
                    *p = simd.add_f32s(*p, g);
                    *v = simd.add_f32s(*v, g);
                    *b = simd.add_f32s(*b, g);
                }
            }
            [(v, _), (a, _), (b, _), ..] => {
                for ((((p, &g), v), a), b) in p
                    .iter_mut()
                    .zip(g)
                    .zip(v.iter_mut())
                    .zip(a.iter_mut())
                    .zip(b.iter_mut())
                {
                    *p = simd.add_f32s(*p, g);
                    *v = simd.add_f32s(*v, g);
                    *a = simd.add_f32s(*a, g);
                    *b = simd.add_f32s(*b, g);
                }
            }
        }
        for (p, g) in p_tail.iter_mut().zip(g_tail) {
            *p += g;
        }
        for (_, tail) in others {
            for (x, g) in tail.iter_mut().zip(g_tail) {
                *x += g;
            }
        }
    }
}

/// Runs the skeleton over `buffers` on `threads` tasks (1: the calling
/// thread only).
pub fn skeleton(buffers: &mut Buffers, threads: usize) {
    let n = buffers.len();
    let per_task = n.div_ceil(threads.max(1)).next_multiple_of(64).max(64);
    let state = &mut buffers.state;
    let mut others: Vec<&mut [f32]> = vec![&mut state.square_avg];
    others.extend(state.grad_avg.as_deref_mut());
    others.extend(state.momentum_buf.as_deref_mut());
    if threads <= 1 {
        Arch::new().dispatch(Skeleton {
            params: &mut buffers.params,
            grads: &buffers.grads,
            others,
        });
        return;
    }
    let mut other_chunks: Vec<_> = others.into_iter().map(|o| o.chunks_mut(per_task)).collect();
    let tasks: Vec<Skeleton<'_>> = buffers
        .params
        .chunks_mut(per_task)
        .zip(buffers.grads.chunks(per_task))
        .map(|(params, grads)| Skeleton {
            params,
            grads,
            others: other_chunks.iter_mut().map(|c| c.next().unwrap()).collect(),
        })
        .collect();
    tasks.into_par_iter().for_each(|t| Arch::new().dispatch(t));
}

/// STREAM triad `a = b + 3 * c` on `threads` tasks; 12 bytes per element
/// (16 counting the write-allocate read of `a`, which STREAM does not count).
pub fn triad(a: &mut [f32], b: &[f32], c: &[f32], threads: usize) {
    struct Triad<'a> {
        a: &'a mut [f32],
        b: &'a [f32],
        c: &'a [f32],
    }
    impl WithSimd for Triad<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, simd: S) {
            let (a, a_tail) = S::as_mut_simd_f32s(self.a);
            let (b, b_tail) = S::as_simd_f32s(self.b);
            let (c, c_tail) = S::as_simd_f32s(self.c);
            let three = simd.splat_f32s(3.0);
            for ((a, &b), &c) in a.iter_mut().zip(b).zip(c) {
                *a = simd.add_f32s(b, simd.mul_f32s(three, c));
            }
            for ((a, b), c) in a_tail.iter_mut().zip(b_tail).zip(c_tail) {
                *a = b + 3.0 * c;
            }
        }
    }
    if threads <= 1 {
        return Arch::new().dispatch(Triad { a, b, c });
    }
    let per_task = a.len().div_ceil(threads).next_multiple_of(64).max(64);
    a.par_chunks_mut(per_task)
        .zip(b.par_chunks(per_task))
        .zip(c.par_chunks(per_task))
        .for_each(|((a, b), c)| Arch::new().dispatch(Triad { a, b, c }));
}
