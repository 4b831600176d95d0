//! proptest strategies for the kernel's inputs, shared by this crate's tests
//! and the adapters' (feature `proptest`).
//!
//! ```
//! use fused_rmsprop::testing;
//! use proptest::strategy::{Strategy, ValueTree};
//! use proptest::test_runner::TestRunner;
//! let mut runner = TestRunner::deterministic();
//! let hyper = testing::hyper().new_tree(&mut runner).unwrap().current();
//! assert!(hyper.validate().is_ok());
//! ```

use proptest::prelude::*;

use crate::{
    EpsPlacement, Execution, Float, GradClip, Hyper, Isa, Kernel, Linger, NonFinite, Param,
    Rounding, Threads, WeightDecay, bf16, f16,
};

/// The scalar specification on the calling thread: what every other path
/// must match bit for bit.
pub const SPEC: Execution = Execution {
    kernel: Kernel::Scalar,
    threads: Threads::Single,
    linger: Linger::ProcessDefault,
};

/// Every path of this machine but [`SPEC`]: each instruction set on one
/// thread, the default kernel cut into 2, 3 and 7 tasks, the scalar
/// specification cut into 4, 2 tasks with lingering off, and the default
/// execution.
///
/// ```
/// assert!(fused_rmsprop::testing::other_paths().len() >= 6);
/// ```
pub fn other_paths() -> Vec<Execution> {
    let tasks = |n| Threads::Exactly(core::num::NonZeroUsize::new(n).expect("a positive count"));
    let mut paths: Vec<Execution> = Isa::available()
        .into_iter()
        .map(|isa| Execution {
            kernel: Kernel::Simd(isa),
            threads: Threads::Single,
            ..Default::default()
        })
        .collect();
    for n in [2, 3, 7] {
        paths.push(Execution {
            kernel: Kernel::Auto,
            threads: tasks(n),
            ..Default::default()
        });
    }
    paths.push(Execution {
        kernel: Kernel::Scalar,
        threads: tasks(4),
        ..Default::default()
    });
    // Lingering changes who runs a task, never how: one threaded path
    // without it.
    paths.push(Execution {
        threads: tasks(2),
        linger: Linger::Off,
        ..Execution::default()
    });
    paths.push(Execution::default());
    paths
}

/// Values that break naive kernels: signed zeros, infinities, NaNs of both
/// signs and with payloads, the smallest subnormal, the largest finite
/// values, and values near 1.
pub fn special_f64() -> Vec<f64> {
    vec![
        0.0,
        -0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        -f64::NAN,
        f64::from_bits(0x7FF0_0000_0000_0001), // signalling NaN
        f64::from_bits(0xFFF8_0000_DEAD_BEEF), // negative NaN with a payload
        f64::from_bits(1),                     // smallest f64 subnormal
        f32::from_bits(1) as f64,              // smallest f32 subnormal
        1e-40,
        f64::MIN_POSITIVE,
        f32::MIN_POSITIVE as f64,
        f32::MAX as f64,
        -(f32::MAX as f64),
        f64::MAX,
        1e30,
        -1e30,
        1.0,
        -1.0,
        0.5,
        1e-8,
    ]
}

/// An element type proptest can draw from every bit pattern.
pub trait Arbitrary: Float {
    /// Any bit pattern of the type.
    fn any_bits() -> BoxedStrategy<Self>;
}

impl Arbitrary for f32 {
    fn any_bits() -> BoxedStrategy<Self> {
        any::<u32>().prop_map(f32::from_bits).boxed()
    }
}

impl Arbitrary for f64 {
    fn any_bits() -> BoxedStrategy<Self> {
        any::<u64>().prop_map(f64::from_bits).boxed()
    }
}

/// One element: mostly realistic values (|x| up to 10, with small ones
/// common), with special values and arbitrary bit patterns mixed in.
pub fn element<T: Arbitrary>() -> BoxedStrategy<T> {
    let specials: Vec<T> = special_f64().into_iter().map(T::from_f64).collect();
    prop_oneof![
        6 => (-10.0f64..10.0).prop_map(T::from_f64),
        2 => (-1e-3f64..1e-3).prop_map(T::from_f64),
        1 => proptest::sample::select(specials),
        1 => T::any_bits(),
    ]
    .boxed()
}

/// One element from realistic ranges only (no NaN, no Inf).
pub fn realistic_element<T: Arbitrary>() -> BoxedStrategy<T> {
    prop_oneof![
        3 => (-10.0f64..10.0).prop_map(T::from_f64),
        1 => (-1e-3f64..1e-3).prop_map(T::from_f64),
    ]
    .boxed()
}

/// Valid hyper-parameters covering every variant combination: plain,
/// momentum, Nesterov, centered (with and without the clamp), both weight
/// decays, maximize, both eps placements, initial square average; edge
/// values (alpha 0 and 1, eps 0, lr 0) included.
pub fn hyper() -> impl Strategy<Value = Hyper> {
    let lr = prop_oneof![Just(0.0), Just(0.01), 0.0f64..1.0];
    let alpha = prop_oneof![Just(0.0), Just(0.99), Just(1.0), 0.0f64..=1.0];
    let eps = prop_oneof![Just(0.0), Just(1e-8), 0.0f64..1e-2];
    let placement = prop_oneof![
        Just(EpsPlacement::OutsideSqrt),
        Just(EpsPlacement::InsideSqrt)
    ];
    let initial = prop_oneof![3 => Just(0.0), 1 => 0.0f64..2.0];
    let momentum = prop_oneof![Just(0.0), Just(0.9), 0.0f64..1.0];
    let weight_decay = prop_oneof![
        Just(None),
        (0.0f64..0.5).prop_map(|wd| Some(WeightDecay::Coupled(wd))),
        (0.0f64..0.5).prop_map(|wd| Some(WeightDecay::Decoupled(wd))),
    ];
    (
        (lr, alpha, eps, placement, initial),
        (
            any::<bool>(),
            any::<bool>(),
            momentum,
            any::<bool>(),
            weight_decay,
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (lr, alpha, eps, eps_placement, initial_square_avg),
                (centered, clamp_centered_variance, momentum, nesterov, weight_decay, maximize),
            )| Hyper {
                lr,
                alpha,
                eps,
                eps_placement,
                initial_square_avg,
                centered,
                clamp_centered_variance,
                momentum,
                nesterov,
                weight_decay,
                maximize,
                non_finite: NonFinite::Propagate,
                ..Hyper::default()
            },
        )
}

/// Valid hyper-parameters as [`hyper`], with gradient clipping: by value
/// or by norm (per tensor or global), with thresholds from 0 (clip
/// everything) through values that clip some gradients to ones that clip
/// none. A third of them are otherwise PyTorch's defaults (a drawn
/// learning rate), the case the kernel gives loops of their own.
///
/// ```
/// use proptest::strategy::{Strategy, ValueTree};
/// let mut runner = proptest::test_runner::TestRunner::default();
/// let h = fused_rmsprop::testing::clipping_hyper().new_tree(&mut runner).unwrap().current();
/// assert!(h.grad_clip.is_some());
/// ```
pub fn clipping_hyper() -> impl Strategy<Value = Hyper> {
    let max = prop_oneof![Just(0.0), Just(1.0), 0.0f64..10.0, Just(1e30)];
    let clip = (0u8..3, max).prop_map(|(kind, max)| match kind {
        0 => GradClip::Value(max),
        1 => GradClip::NormPerTensor(max),
        _ => GradClip::NormGlobal(max),
    });
    let plain = prop_oneof![Just(0.01), 0.0f64..1.0].prop_map(|lr| Hyper {
        lr,
        ..Hyper::default()
    });
    let base = prop_oneof![2 => hyper().boxed(), 1 => plain.boxed()];
    (base, clip).prop_map(|(hyper, clip)| hyper.with_grad_clip(Some(clip)))
}

/// Valid hyper-parameters as [`hyper`], with every rounding option for
/// 16-bit parameters: nearest or stochastic (with a drawn seed), with or
/// without master weights.
pub fn half_hyper() -> impl Strategy<Value = Hyper> {
    let rounding = prop_oneof![
        Just(Rounding::Nearest),
        any::<u64>().prop_map(|seed| Rounding::Stochastic { seed }),
    ];
    (hyper(), rounding, any::<bool>()).prop_map(|(hyper, rounding, master_weights)| {
        hyper
            .with_rounding(rounding)
            .with_master_weights(master_weights)
    })
}

/// A 16-bit parameter type proptest can draw: `bf16` or `f16`.
pub trait Arbitrary16: Param<State = f32> {
    /// Any bit pattern of the type.
    fn any_bits() -> BoxedStrategy<Self>;
    /// `x` rounded to nearest.
    fn from_f32(x: f32) -> Self;
    /// The value of bit pattern `bits`.
    fn from_bits(bits: u16) -> Self;
}

impl Arbitrary16 for bf16 {
    fn any_bits() -> BoxedStrategy<Self> {
        any::<u16>().prop_map(bf16::from_bits).boxed()
    }
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn from_bits(bits: u16) -> Self {
        bf16::from_bits(bits)
    }
}

impl Arbitrary16 for f16 {
    fn any_bits() -> BoxedStrategy<Self> {
        any::<u16>().prop_map(f16::from_bits).boxed()
    }
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn from_bits(bits: u16) -> Self {
        f16::from_bits(bits)
    }
}

/// One 16-bit element: [`element`]'s mix of realistic, special and
/// arbitrary values, rounded to the type, plus arbitrary bit patterns of
/// the type itself (its NaNs with payloads, its subnormals).
pub fn half_element<H: Arbitrary16>() -> BoxedStrategy<H> {
    prop_oneof![
        4 => element::<f32>().prop_map(H::from_f32),
        1 => H::any_bits(),
    ]
    .boxed()
}
