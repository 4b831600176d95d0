//! Which path runs a step: the kernel (scalar specification or SIMD with a
//! given instruction set) and the number of threads. `Auto` is right for
//! training; forcing is for tests, benchmarks, and users chasing a difference.

use core::num::NonZeroUsize;

use crate::{Error, Linger};

/// An instruction set the SIMD kernel can run with.
///
/// ```
/// use fused_rmsprop::Isa;
/// let best = Isa::detect();
/// assert!(Isa::available().contains(&best));
/// assert!(Isa::available().contains(&Isa::Fallback));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// pulp's portable one-lane backend: what dispatch falls back to on a CPU
    /// with none of the others.
    Fallback,
    /// x86-64-v3: AVX2 and FMA, 8 `f32` lanes.
    Avx2,
    /// x86-64-v4: AVX-512 F/BW/CD/DQ/VL, 16 `f32` lanes.
    Avx512,
    /// AArch64 NEON, 4 `f32` lanes.
    Neon,
}

impl Isa {
    /// The widest instruction set this CPU supports (what `Kernel::Auto` uses).
    ///
    /// ```
    /// # use fused_rmsprop::Isa;
    /// println!("stepping with {}", Isa::detect().name());
    /// ```
    pub fn detect() -> Isa {
        match pulp::Arch::new() {
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            pulp::Arch::V4(_) => Isa::Avx512,
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            pulp::Arch::V3(_) => Isa::Avx2,
            #[cfg(target_arch = "aarch64")]
            pulp::Arch::Neon(_) => Isa::Neon,
            _ => Isa::Fallback,
        }
    }

    /// Every instruction set this CPU supports, narrowest first; tests run
    /// the kernel with each.
    ///
    /// ```
    /// # use fused_rmsprop::Isa;
    /// assert_eq!(Isa::available()[0], Isa::Fallback);
    /// ```
    pub fn available() -> Vec<Isa> {
        [Isa::Fallback, Isa::Avx2, Isa::Avx512, Isa::Neon]
            .into_iter()
            .filter(|isa| isa.is_available())
            .collect()
    }

    /// Whether this CPU supports the instruction set.
    ///
    /// ```
    /// # use fused_rmsprop::Isa;
    /// assert!(Isa::Fallback.is_available());
    /// ```
    pub fn is_available(self) -> bool {
        SimdToken::new(self).is_ok()
    }

    /// A short lower-case name: `"fallback"`, `"avx2"`, `"avx512"`, `"neon"`.
    ///
    /// ```
    /// # use fused_rmsprop::Isa;
    /// assert_eq!(Isa::Avx512.name(), "avx512");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Isa::Fallback => "fallback",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }
}

/// Which kernel runs the step.
///
/// ```
/// use fused_rmsprop::{Isa, Kernel};
/// assert_eq!(Kernel::default(), Kernel::Auto);
/// let _forced = Kernel::Simd(Isa::Fallback);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// SIMD with [`Isa::detect`].
    #[default]
    Auto,
    /// The scalar specification, one element at a time.
    Scalar,
    /// SIMD with this instruction set; an error if the CPU lacks it.
    Simd(Isa),
}

/// How many threads run the step. Threads come from rayon's global pool, so
/// they are shared with Burn and Candle and `RAYON_NUM_THREADS` caps them.
///
/// ```
/// use fused_rmsprop::Threads;
/// use std::num::NonZeroUsize;
/// let _forced = Threads::Exactly(NonZeroUsize::new(4).unwrap());
/// assert_eq!(Threads::default(), Threads::Auto);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Threads {
    /// One thread below 16K elements in one call (a second thread would
    /// cost more than it saves); from there, every thread of the pool.
    #[default]
    Auto,
    /// Always the calling thread, never the pool.
    Single,
    /// Always split into this many tasks on the pool, whatever the size
    /// (tests use it to run the threaded path on small inputs).
    Exactly(NonZeroUsize),
}

/// The path a step takes: kernel, threads, and how long the pool's helpers
/// stay after a threaded call.
///
/// ```
/// use fused_rmsprop::{Execution, Hyper, Kernel, RmsProp, Threads};
/// let spec = Execution { kernel: Kernel::Scalar, threads: Threads::Single, ..Execution::default() };
/// let opt = RmsProp::new(Hyper::default()).unwrap().with_execution(spec).unwrap();
/// assert_eq!(opt.execution(), spec);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Execution {
    /// Scalar or SIMD.
    pub kernel: Kernel,
    /// One thread, all, or a forced count.
    pub threads: Threads,
    /// How long the pool's helpers stay after a threaded call from outside
    /// the pool ([`Linger`]; the process default unless set).
    pub linger: Linger,
}

/// A kernel whose instruction set has been checked: the proof tokens pulp
/// needs to run it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SimdToken {
    Fallback,
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    Avx2(pulp::x86::V3),
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    Avx512(pulp::x86::V4),
    #[cfg(target_arch = "aarch64")]
    Neon(pulp::aarch64::Neon),
}

impl SimdToken {
    pub fn new(isa: Isa) -> Result<Self, Error> {
        let unsupported = Err(Error::UnsupportedIsa { isa: isa.name() });
        match isa {
            Isa::Fallback => Ok(SimdToken::Fallback),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Isa::Avx2 => pulp::x86::V3::try_new()
                .map(SimdToken::Avx2)
                .map_or(unsupported, Ok),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Isa::Avx512 => pulp::x86::V4::try_new()
                .map(SimdToken::Avx512)
                .map_or(unsupported, Ok),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => pulp::aarch64::Neon::try_new()
                .map(SimdToken::Neon)
                .map_or(unsupported, Ok),
            #[allow(unreachable_patterns)]
            _ => unsupported,
        }
    }
}

/// A kernel ready to run: the scalar specification or SIMD with a token.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ResolvedKernel {
    Scalar,
    Simd(SimdToken),
}

impl ResolvedKernel {
    pub fn new(kernel: Kernel) -> Result<Self, Error> {
        Ok(match kernel {
            Kernel::Auto => ResolvedKernel::Simd(SimdToken::new(Isa::detect())?),
            Kernel::Scalar => ResolvedKernel::Scalar,
            Kernel::Simd(isa) => ResolvedKernel::Simd(SimdToken::new(isa)?),
        })
    }

    /// Runs `op` with this kernel's instruction set (pulp's one-lane
    /// fallback for the scalar specification).
    #[inline]
    pub fn vectorize<Op: pulp::WithSimd>(self, op: Op) -> Op::Output {
        match self {
            ResolvedKernel::Scalar | ResolvedKernel::Simd(SimdToken::Fallback) => {
                op.with_simd(pulp::Scalar::new())
            }
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            ResolvedKernel::Simd(SimdToken::Avx2(v3)) => pulp::Simd::vectorize(v3, op),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            ResolvedKernel::Simd(SimdToken::Avx512(v4)) => pulp::Simd::vectorize(v4, op),
            #[cfg(target_arch = "aarch64")]
            ResolvedKernel::Simd(SimdToken::Neon(neon)) => pulp::Simd::vectorize(neon, op),
        }
    }

    /// Runs the kernel on one chunk, on the calling thread.
    #[inline]
    pub fn run<P: crate::Param>(
        self,
        c: &crate::step::Coefficients<P::State>,
        chunk: crate::step::Chunk<'_, P>,
    ) {
        // A tensor that clipping by norm clips carries its own scale.
        let scaled;
        let c = match chunk.grad_scale {
            Some(scale) => {
                scaled = crate::step::Coefficients {
                    grad_scale: Some(scale),
                    ..*c
                };
                &scaled
            }
            None => c,
        };
        match self {
            ResolvedKernel::Scalar => crate::scalar::step(c, chunk),
            ResolvedKernel::Simd(SimdToken::Fallback) => {
                P::step_simd(pulp::Scalar::new(), c, chunk)
            }
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            ResolvedKernel::Simd(SimdToken::Avx2(v3)) => P::step_simd(v3, c, chunk),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            ResolvedKernel::Simd(SimdToken::Avx512(v4)) => P::step_simd(v4, c, chunk),
            #[cfg(target_arch = "aarch64")]
            ResolvedKernel::Simd(SimdToken::Neon(neon)) => P::step_simd(neon, c, chunk),
        }
    }
}
