//! The hardware limits a step is judged against, measured in the same run.
//!
//! - [`skeleton`]: exactly the kernel's loads and stores (every buffer of the
//!   variant read, params and state written) with one add per buffer instead
//!   of the RMSprop arithmetic. Its bytes per second is the bandwidth limit
//!   for this access pattern: `roofline_fraction = kernel GB/s / skeleton GB/s`.
//! - [`OutOfPlaceSkeleton`]: the skeleton of the out-of-place step, the
//!   one Burn's optimizer takes while burn-train's `Learner` holds the
//!   module: the parameters read from one buffer and written to another
//!   (the buffers swap every step), with ordinary or streaming stores.
//! - [`read_all`]: one read of a slice, no write: the extra pass that
//!   clipping by norm makes over the gradients before the step (its limit is
//!   this pass and the skeleton, one after the other).
//! - [`triad`]: STREAM's `a = b + s * c`, the customary bandwidth figure.
//!
//! Both run with the widest SIMD pulp finds and split work over rayon's
//! global pool the way the kernel does ([`fused_rmsprop::run_tasks`]: the
//! calling thread works beside the pool), so a small step and its limit pay
//! the same dispatch.

use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

use crate::workload::Buffers;

/// The skeleton over one set of slices: `p += g; v += g; [ga += g]; [b += g]`,
/// with or without the kernel's software prefetch of every stream.
struct Skeleton<'a> {
    params: &'a mut [f32],
    grads: &'a [f32],
    others: Vec<&'a mut [f32]>,
    /// Prefetch every stream as the kernel does (2 KiB ahead, once per
    /// cache line).
    prefetch: bool,
}

impl WithSimd for Skeleton<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Skeleton {
            params,
            grads,
            mut others,
            prefetch,
        } = self;
        match others.as_mut_slice() {
            [] => add_all(simd, params, grads, [], prefetch),
            [v] => add_all(simd, params, grads, [v], prefetch),
            [v, b] => add_all(simd, params, grads, [v, b], prefetch),
            [v, a, b, ..] => add_all(simd, params, grads, [v, a, b], prefetch),
        }
    }
}

/// `x += g` for `x` in `params` and each of `others`, one block of 64
/// elements (a cache line of each stream per 16) at a time; `hint`:
/// prefetch each stream [`PREFETCH_ELEMENTS`] ahead first.
#[inline(always)]
fn add_all<S: Simd, const K: usize>(
    simd: S,
    params: &mut [f32],
    grads: &[f32],
    mut others: [&mut &mut [f32]; K],
    hint: bool,
) {
    for (start, end) in blocks(params.len()) {
        if hint {
            for ahead in lines_ahead(start, end) {
                prefetch(params, ahead);
                prefetch(grads, ahead);
                for o in others.iter() {
                    prefetch(o, ahead);
                }
            }
        }
        let (p, p_tail) = S::as_mut_simd_f32s(&mut params[start..end]);
        let (g, g_tail) = S::as_simd_f32s(&grads[start..end]);
        let mut os = others
            .each_mut()
            .map(|o| S::as_mut_simd_f32s(&mut o[start..end]));
        for (i, &g) in g.iter().enumerate() {
            p[i] = simd.add_f32s(p[i], g);
            for (o, _) in os.iter_mut() {
                o[i] = simd.add_f32s(o[i], g);
            }
        }
        for (i, g) in g_tail.iter().enumerate() {
            p_tail[i] += g;
            for (_, tail) in os.iter_mut() {
                tail[i] += g;
            }
        }
    }
}

/// The skeleton of the out-of-place step: `dest = source + g; v += g; ...`
/// as [`Skeleton`], the parameters read from `source` and written to
/// `dest`, with streaming stores when `streaming` (and the CPU has AVX-512
/// or AVX2), ordinary ones otherwise.
struct OutOfPlace<'a> {
    source: &'a [f32],
    dest: &'a mut [f32],
    grads: &'a [f32],
    others: Vec<&'a mut [f32]>,
    prefetch: bool,
    streaming: bool,
}

impl WithSimd for OutOfPlace<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let OutOfPlace {
            source,
            dest,
            grads,
            others,
            prefetch,
            streaming,
        } = self;
        // Streaming stores need aligned registers: the elements before the
        // first 64-byte boundary of `dest` take ordinary stores.
        let head = if streaming {
            dest.as_ptr().align_offset(64).min(dest.len())
        } else {
            0
        };
        let (dest_head, dest) = dest.split_at_mut(head);
        let (source_head, source) = source.split_at(head);
        let (grads_head, grads) = grads.split_at(head);
        for ((d, s), g) in dest_head.iter_mut().zip(source_head).zip(grads_head) {
            *d = s + g;
        }
        let mut others: Vec<&mut [f32]> = others
            .into_iter()
            .map(|o| {
                let (o_head, rest) = o.split_at_mut(head);
                o_head.iter_mut().zip(grads_head).for_each(|(x, g)| *x += g);
                rest
            })
            .collect();
        match others.as_mut_slice() {
            [] => add_out_of_place(simd, (source, dest), grads, [], (prefetch, streaming)),
            [v] => add_out_of_place(simd, (source, dest), grads, [v], (prefetch, streaming)),
            [v, b] => add_out_of_place(simd, (source, dest), grads, [v, b], (prefetch, streaming)),
            [v, a, b, ..] => {
                add_out_of_place(
                    simd,
                    (source, dest),
                    grads,
                    [v, a, b],
                    (prefetch, streaming),
                );
            }
        }
        if streaming {
            fence(simd);
        }
    }
}

/// [`add_all`] out of place: `dest = source + g` (streamed when the
/// second flag says so), `x += g` for `x` in each of `others`.
#[inline(always)]
fn add_out_of_place<S: Simd, const K: usize>(
    simd: S,
    (source, dest): (&[f32], &mut [f32]),
    grads: &[f32],
    mut others: [&mut &mut [f32]; K],
    (hint, streaming): (bool, bool),
) {
    for (start, end) in blocks(dest.len()) {
        if hint {
            for ahead in lines_ahead(start, end) {
                prefetch(source, ahead);
                prefetch(grads, ahead);
                for o in others.iter() {
                    prefetch(o, ahead);
                }
            }
        }
        let (d, d_tail) = S::as_mut_simd_f32s(&mut dest[start..end]);
        let (s, s_tail) = S::as_simd_f32s(&source[start..end]);
        let (g, g_tail) = S::as_simd_f32s(&grads[start..end]);
        let mut os = others
            .each_mut()
            .map(|o| S::as_mut_simd_f32s(&mut o[start..end]));
        for (i, &g) in g.iter().enumerate() {
            let value = simd.add_f32s(s[i], g);
            if streaming {
                stream(simd, &mut d[i], value);
            } else {
                d[i] = value;
            }
            for (o, _) in os.iter_mut() {
                o[i] = simd.add_f32s(o[i], g);
            }
        }
        for (i, g) in g_tail.iter().enumerate() {
            d_tail[i] = s_tail[i] + g;
            for (_, tail) in os.iter_mut() {
                tail[i] += g;
            }
        }
    }
}

/// Stores `value` to `dst` with a streaming store when `S` is AVX-512 or
/// AVX2 and `dst` is aligned to the register (as the kernel's out-of-place
/// step stores parameters), with an ordinary store otherwise.
#[inline(always)]
fn stream<L: bytemuck::Pod, S: Simd>(simd: S, dst: &mut L, value: L) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{__m256, __m512};
        let any = &simd as &dyn core::any::Any;
        let address = dst as *mut L as usize;
        if let (Some(v4), Ok(lanes)) = (
            any.downcast_ref::<pulp::x86::V4>(),
            bytemuck::try_cast::<L, __m512>(value),
        ) && address.is_multiple_of(64)
        {
            // SAFETY: a `V4` exists only on a CPU with AVX-512F, the
            // feature of `vmovntps` on 512 bits. `dst` is a live, exclusive
            // reference to an `L` of 64 bytes (the cast succeeded only for
            // that size), so the bytes written are its own, and it is
            // aligned to 64 (checked above), as the instruction requires.
            // Exercised by `out_of_place_skeleton_writes_source_plus_grad`.
            unsafe { v4.avx512f._mm512_stream_ps(address as *mut f32, lanes) };
            return;
        }
        if let (Some(v3), Ok(lanes)) = (
            any.downcast_ref::<pulp::x86::V3>(),
            bytemuck::try_cast::<L, __m256>(value),
        ) && address.is_multiple_of(32)
        {
            // SAFETY: as above, with AVX (proved by the AVX2 token `V3`)
            // and a 32-byte `L` aligned to 32.
            unsafe { v3.avx._mm256_stream_ps(address as *mut f32, lanes) };
            return;
        }
    }
    *dst = value;
}

/// Orders the streaming stores of this thread before its later stores
/// (`sfence`), so the thread that joins the tasks sees them.
#[inline(always)]
fn fence<S: Simd>(simd: S) {
    #[cfg(target_arch = "x86_64")]
    {
        let any = &simd as &dyn core::any::Any;
        if let Some(v4) = any.downcast_ref::<pulp::x86::V4>() {
            v4.sse._mm_sfence();
        } else if let Some(v3) = any.downcast_ref::<pulp::x86::V3>() {
            v3.sse._mm_sfence();
        }
    }
    let _ = simd;
}

/// The buffers of the out-of-place skeleton: [`Buffers`] and a second
/// parameter buffer. Each [`run`](Self::run) reads the parameters from one
/// and writes them to the other, then swaps them, as the held route keeps
/// two buffers per parameter and uses them in turn.
pub struct OutOfPlaceSkeleton {
    buffers: Buffers,
    spare: Vec<f32>,
}

impl OutOfPlaceSkeleton {
    /// `len` elements for `variant`, every page of both parameter buffers
    /// written.
    pub fn new(len: usize, variant: crate::workload::Variant) -> Self {
        let buffers = Buffers::new(len, variant);
        let spare = buffers.params.clone();
        Self { buffers, spare }
    }

    /// The parameters the last run wrote.
    pub fn params(&self) -> &[f32] {
        &self.buffers.params
    }

    /// One pass on `threads` tasks, with or without software prefetch and
    /// streaming stores.
    pub fn run(&mut self, threads: usize, prefetch: bool, streaming: bool) {
        let n = self.buffers.len();
        let per_task = task_len(n, threads);
        let Buffers {
            params,
            grads,
            state,
        } = &mut self.buffers;
        let mut others: Vec<&mut [f32]> = vec![&mut state.square_avg];
        others.extend(state.grad_avg.as_deref_mut());
        others.extend(state.momentum_buf.as_deref_mut());
        let mut other_chunks: Vec<_> = others.into_iter().map(|o| o.chunks_mut(per_task)).collect();
        let tasks: Vec<OutOfPlace<'_>> = params
            .chunks(per_task)
            .zip(self.spare.chunks_mut(per_task))
            .zip(grads.chunks(per_task))
            .map(|((source, dest), grads)| OutOfPlace {
                source,
                dest,
                grads,
                others: other_chunks.iter_mut().map(|c| c.next().unwrap()).collect(),
                prefetch,
                streaming,
            })
            .collect();
        if threads <= 1 {
            tasks.into_iter().for_each(|t| Arch::new().dispatch(t));
        } else {
            fused_rmsprop::run_tasks(fused_rmsprop::Linger::ProcessDefault, tasks, |t| {
                Arch::new().dispatch(t)
            });
        }
        std::mem::swap(&mut self.buffers.params, &mut self.spare);
    }
}

/// Runs the skeleton over `buffers` on `threads` tasks (1: the calling
/// thread only), with or without software prefetch. Which of the two is
/// faster depends on the streams and the machine (the kernel prefetches,
/// and on some machines beats a skeleton that does not): the limit is the
/// faster of both (see `compare`).
pub fn skeleton(buffers: &mut Buffers, threads: usize, prefetch: bool) {
    let n = buffers.len();
    let per_task = task_len(n, threads);
    let state = &mut buffers.state;
    let mut others: Vec<&mut [f32]> = vec![&mut state.square_avg];
    others.extend(state.grad_avg.as_deref_mut());
    others.extend(state.momentum_buf.as_deref_mut());
    if threads <= 1 {
        Arch::new().dispatch(Skeleton {
            params: &mut buffers.params,
            grads: &buffers.grads,
            others,
            prefetch,
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
            prefetch,
        })
        .collect();
    fused_rmsprop::run_tasks(fused_rmsprop::Linger::ProcessDefault, tasks, |t| {
        Arch::new().dispatch(t)
    });
}

/// Reads every element of `xs` once (an unsigned maximum over the bits,
/// which the compiler vectorizes), on `threads` tasks cut as the kernel
/// cuts a call: the least a pass that reads a gradient, as clipping by norm
/// does, can cost. Returns the maximum so the read cannot be optimized away.
pub fn read_all(xs: &[f32], threads: usize) -> u32 {
    struct Read<'a>(&'a [f32]);
    impl WithSimd for Read<'_> {
        type Output = u32;
        #[inline(always)]
        fn with_simd<S: Simd>(self, _simd: S) -> u32 {
            self.0.iter().fold(0u32, |max, x| max.max(x.to_bits()))
        }
    }
    if threads <= 1 {
        return Arch::new().dispatch(Read(xs));
    }
    let per_task = task_len(xs.len(), threads);
    let maxima: Vec<std::sync::atomic::AtomicU32> = xs
        .chunks(per_task)
        .map(|_| std::sync::atomic::AtomicU32::new(0))
        .collect();
    let tasks: Vec<_> = xs.chunks(per_task).zip(&maxima).collect();
    fused_rmsprop::run_tasks(fused_rmsprop::Linger::ProcessDefault, tasks, |(xs, max)| {
        max.store(
            Arch::new().dispatch(Read(xs)),
            std::sync::atomic::Ordering::Relaxed,
        );
    });
    maxima
        .iter()
        .map(|m| m.load(std::sync::atomic::Ordering::Relaxed))
        .max()
        .unwrap_or(0)
}

/// Elements per task when `n` elements run on `threads` threads, cut as the
/// kernel's `Threads::Auto` cuts a call ([`fused_rmsprop::TASKS_PER_THREAD`]
/// tasks per thread, each a multiple of
/// [`fused_rmsprop::TASK_ALIGN_ELEMENTS`]).
fn task_len(n: usize, threads: usize) -> usize {
    use fused_rmsprop::{TASK_ALIGN_ELEMENTS, TASKS_PER_THREAD};
    let tasks = if threads <= 1 {
        1
    } else {
        threads * TASKS_PER_THREAD
    };
    n.div_ceil(tasks)
        .next_multiple_of(TASK_ALIGN_ELEMENTS)
        .max(TASK_ALIGN_ELEMENTS)
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

/// Hints the CPU to load the cache line of `slice[index]` (nothing past the
/// end), as the kernel's software prefetch does, so that the skeleton's
/// streams are fetched as the kernel's are.
#[inline(always)]
fn prefetch<T>(slice: &[T], index: usize) {
    if index < slice.len() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `_mm_prefetch` is a hint that never faults and never
        // writes, whatever the address (here one inside `slice`); it needs
        // only SSE, which every x86_64 CPU has. Exercised by every prefetching
        // skeleton run (`cargo bench -- --test` and `compare --quick` in CI).
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                slice[index..].as_ptr().cast::<i8>(),
            );
        }
    }
}

/// The blocks of 64 elements (`start`, `end`) that cover `n`: the skeletons
/// work one block at a time, prefetching once per cache line of `f32`.
fn blocks(n: usize) -> impl Iterator<Item = (usize, usize)> {
    const BLOCK: usize = 64;
    (0..n)
        .step_by(BLOCK)
        .map(move |start| (start, (start + BLOCK).min(n)))
}

/// The index [`PREFETCH_ELEMENTS`] ahead of each cache line of `f32`
/// (16 elements) in `start..end`.
fn lines_ahead(start: usize, end: usize) -> impl Iterator<Item = usize> {
    (start..end)
        .step_by(16)
        .map(|line| line + PREFETCH_ELEMENTS)
}

/// How far ahead the skeleton prefetches, in elements of `f32` state: the
/// kernel's 2 KiB.
const PREFETCH_ELEMENTS: usize = 512;

/// The skeleton of a 16-bit step: the loads and stores of the kernel on
/// 16-bit parameters and gradients with `f32` state, trivial arithmetic,
/// and the kernel's software prefetch of the state and gradient streams
/// (without it, the 5-stream master-weights skeleton is slower than the
/// kernel it bounds).
struct Skeleton16<'a> {
    params: &'a mut [u16],
    grads: &'a [u16],
    state: Vec<&'a mut [f32]>,
    /// Master weights: the parameter is written, not read.
    master: bool,
    /// Prefetch the state and gradient streams as the kernel does.
    prefetch: bool,
}

impl WithSimd for Skeleton16<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        // Plain loops over equal-length slices: the compiler vectorizes
        // them with the instruction set this is compiled for.
        let Skeleton16 {
            params,
            grads,
            mut state,
            master,
            prefetch: hint,
        } = self;
        // The inner loops stay plain (vectorized) within a block.
        for (start, end) in blocks(params.len()) {
            if hint {
                for ahead in lines_ahead(start, end) {
                    prefetch(grads, ahead);
                    for s in state.iter() {
                        prefetch(s, ahead);
                    }
                }
            }
            let (p, g) = (&mut params[start..end], &grads[start..end]);
            match (state.as_mut_slice(), master) {
                ([v], false) => {
                    for ((p, &g), v) in p.iter_mut().zip(g).zip(v[start..end].iter_mut()) {
                        *p = p.wrapping_add(g);
                        *v += f32::from(g);
                    }
                }
                ([v, m], true) => {
                    for (((p, &g), v), m) in p
                        .iter_mut()
                        .zip(g)
                        .zip(v[start..end].iter_mut())
                        .zip(m[start..end].iter_mut())
                    {
                        *v += f32::from(g);
                        *m += f32::from(g);
                        *p = g.wrapping_add(1);
                    }
                }
                _ => unreachable!("the 16-bit skeleton covers the plain variant"),
            }
        }
    }
}

/// Runs the 16-bit skeleton (plain variant: `square_avg`, and `master` when
/// `master` is some) on `threads` tasks, with or without software prefetch.
/// Which of the two is faster depends on the streams and the machine: the
/// limit is the faster of both (see `compare`).
pub fn skeleton16(
    params: &mut [u16],
    grads: &[u16],
    square_avg: &mut [f32],
    master: Option<&mut [f32]>,
    threads: usize,
    prefetch: bool,
) {
    let n = params.len();
    let per_task = task_len(n, threads);
    let has_master = master.is_some();
    let mut state_chunks: Vec<_> = std::iter::once(square_avg)
        .chain(master)
        .map(|s| s.chunks_mut(per_task))
        .collect();
    let tasks: Vec<Skeleton16<'_>> = params
        .chunks_mut(per_task)
        .zip(grads.chunks(per_task))
        .map(|(params, grads)| Skeleton16 {
            params,
            grads,
            state: state_chunks.iter_mut().map(|c| c.next().unwrap()).collect(),
            master: has_master,
            prefetch,
        })
        .collect();
    dispatch_tasks(tasks, threads);
}

/// Buffers for [`skeleton16`]: a 16-bit parameter and gradient, an `f32`
/// square average and, for master weights, an `f32` master copy.
pub struct HalfSkeleton {
    params: Vec<u16>,
    grads: Vec<u16>,
    square_avg: Vec<f32>,
    master: Option<Vec<f32>>,
}

impl HalfSkeleton {
    /// `n` elements, with a master copy when `master`.
    pub fn new(n: usize, master: bool) -> Self {
        Self {
            params: vec![0x3F80; n],
            grads: vec![0x3C00; n],
            square_avg: vec![0.01; n],
            master: master.then(|| vec![0.5; n]),
        }
    }

    /// One pass of [`skeleton16`] on `threads` tasks.
    pub fn run(&mut self, threads: usize, prefetch: bool) {
        skeleton16(
            &mut self.params,
            &self.grads,
            &mut self.square_avg,
            self.master.as_deref_mut(),
            threads,
            prefetch,
        );
    }
}

/// A parameter element the 8-bit skeleton moves: `f32`, or the bits of a
/// 16-bit float.
pub trait SkeletonElement: Copy + Send + Sync + 'static {
    /// A stand-in for the step's arithmetic on one element.
    fn bump(self, grad: Self) -> Self;
}

impl SkeletonElement for f32 {
    #[inline(always)]
    fn bump(self, grad: Self) -> Self {
        self + grad
    }
}

impl SkeletonElement for u16 {
    #[inline(always)]
    fn bump(self, grad: Self) -> Self {
        self.wrapping_add(grad)
    }
}

/// The skeleton of a step with 8-bit state (plain variant): the parameter
/// and gradient read, the parameter written, one code per element read and
/// written, one `f32` scale per block of 256 read and written; trivial
/// arithmetic. For `f32` parameters 14.03 bytes per element, for 16-bit
/// ones 8.03.
pub struct Blockwise8Skeleton<E> {
    params: Vec<E>,
    grads: Vec<E>,
    codes: Vec<u8>,
    scales: Vec<f32>,
}

struct Blockwise8Pass<'a, E> {
    params: &'a mut [E],
    grads: &'a [E],
    codes: &'a mut [u8],
    scales: &'a mut [f32],
}

impl<E: SkeletonElement> WithSimd for Blockwise8Pass<'_, E> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let block = fused_rmsprop::BLOCK_ELEMENTS;
        for (((p, g), c), s) in self
            .params
            .chunks_mut(block)
            .zip(self.grads.chunks(block))
            .zip(self.codes.chunks_mut(block))
            .zip(self.scales.iter_mut())
        {
            for ((p, &g), c) in p.iter_mut().zip(g).zip(c.iter_mut()) {
                *p = p.bump(g);
                *c = c.wrapping_add(1);
            }
            *s += 1.0;
        }
    }
}

impl<E: SkeletonElement> Blockwise8Skeleton<E> {
    /// `n` elements of `value` and gradient `grad`.
    pub fn new(n: usize, value: E, grad: E) -> Self {
        Self {
            params: vec![value; n],
            grads: vec![grad; n],
            codes: vec![0; n],
            scales: vec![1.0; n.div_ceil(fused_rmsprop::BLOCK_ELEMENTS)],
        }
    }

    /// Bytes the skeleton moves per element (reads and writes).
    pub fn bytes_per_element() -> f64 {
        let e = std::mem::size_of::<E>() as f64;
        3.0 * e + 2.0 + 8.0 / fused_rmsprop::BLOCK_ELEMENTS as f64
    }

    /// One pass on `threads` tasks, cut on block boundaries.
    pub fn run(&mut self, threads: usize) {
        let block = fused_rmsprop::BLOCK_ELEMENTS;
        let per_task = task_len(self.params.len(), threads).next_multiple_of(block);
        let tasks: Vec<Blockwise8Pass<'_, E>> = self
            .params
            .chunks_mut(per_task)
            .zip(self.grads.chunks(per_task))
            .zip(self.codes.chunks_mut(per_task))
            .zip(self.scales.chunks_mut(per_task / block))
            .map(|(((params, grads), codes), scales)| Blockwise8Pass {
                params,
                grads,
                codes,
                scales,
            })
            .collect();
        dispatch_tasks(tasks, threads);
    }
}

/// Runs each task with the widest SIMD pulp finds: on the calling thread
/// when `threads` is 1, else spread over rayon's pool as the kernel
/// spreads its own.
fn dispatch_tasks<T: WithSimd<Output = ()> + Send>(tasks: Vec<T>, threads: usize) {
    if threads <= 1 {
        tasks.into_iter().for_each(|t| Arch::new().dispatch(t));
    } else {
        fused_rmsprop::run_tasks(fused_rmsprop::Linger::ProcessDefault, tasks, |t| {
            Arch::new().dispatch(t)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Variant;

    /// Every way of running the out-of-place skeleton (tasks, prefetch,
    /// streaming stores, and a length that leaves a tail) writes the source
    /// plus the gradient into the other buffer, and then reads from it.
    #[test]
    fn out_of_place_skeleton_writes_source_plus_grad() {
        for threads in [1, 2] {
            for prefetch in [false, true] {
                for streaming in [false, true] {
                    let n = 64 * 1024 + 37;
                    let mut skeleton = OutOfPlaceSkeleton::new(n, Variant::Plain);
                    let grads = skeleton.buffers.grads.clone();
                    let before = skeleton.params().to_vec();
                    let square_before = skeleton.buffers.state.square_avg.clone();
                    skeleton.run(threads, prefetch, streaming);
                    skeleton.run(threads, prefetch, streaming);
                    for ((after, before), g) in skeleton.params().iter().zip(&before).zip(&grads) {
                        assert_eq!(*after, before + g + g);
                    }
                    let square = &skeleton.buffers.state.square_avg;
                    for ((after, before), g) in square.iter().zip(&square_before).zip(&grads) {
                        assert_eq!(*after, before + g + g);
                    }
                }
            }
        }
    }
}
