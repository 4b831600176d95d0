//! The crate's one error type.

use core::fmt;

/// Why a step (or a validation) refused to run.
///
/// Every step function checks everything before it writes anything: when it
/// returns an error, every parameter and state buffer is exactly as it was.
///
/// ```
/// use fused_rmsprop::{Error, Hyper, RmsProp, State};
/// let opt = RmsProp::new(Hyper::default()).unwrap();
/// let mut params = vec![1.0f32; 4];
/// let mut state = State::<f32>::new(4, opt.hyper());
/// let err = opt.step(&mut params, &[0.5; 3], &mut state).unwrap_err();
/// assert_eq!(err, Error::LengthMismatch { group: 0, buffer: "grads", expected: 4, actual: 3 });
/// assert_eq!(params, vec![1.0; 4]);
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A hyper-parameter (or the per-step learning rate) is out of range.
    InvalidHyper {
        /// The field, as named in [`Hyper`](crate::Hyper): `"lr"`, `"alpha"`, ...
        name: &'static str,
        /// The value given.
        value: f64,
        /// The valid range, in words.
        expected: &'static str,
    },
    /// A gradient or state buffer does not have the parameter's length.
    LengthMismatch {
        /// Which group of a multi-tensor step (0 for a single tensor).
        group: usize,
        /// `"grads"`, `"source"`, `"square_avg"`, `"grad_avg"`,
        /// `"momentum_buf"` or `"master"`.
        buffer: &'static str,
        /// The parameter's length.
        expected: usize,
        /// The buffer's length.
        actual: usize,
    },
    /// The hyper-parameters need a state buffer the caller did not pass
    /// (`grad_avg` when centered, `momentum_buf` when momentum > 0).
    MissingState {
        /// Which group of a multi-tensor step (0 for a single tensor).
        group: usize,
        /// `"grad_avg"` or `"momentum_buf"`.
        buffer: &'static str,
    },
    /// A gradient holds a NaN or an infinity and the policy is
    /// [`NonFinite::Error`](crate::NonFinite::Error).
    NonFiniteGradient {
        /// Which group of a multi-tensor step (0 for a single tensor).
        group: usize,
        /// The index of the first non-finite element in that gradient.
        index: usize,
    },
    /// Clipping by norm found a norm that is not finite although every
    /// gradient is (the squares of `f64` gradients above about `1e154`
    /// overflow), and the policy is [`NonFinite::Error`](crate::NonFinite::Error):
    /// PyTorch's `clip_grad_norm_(.., error_if_nonfinite=True)`.
    NonFiniteGradNorm {
        /// The group whose norm it is ([`GradClip::NormPerTensor`](crate::GradClip::NormPerTensor)),
        /// or `None` for the norm of all groups ([`GradClip::NormGlobal`](crate::GradClip::NormGlobal)).
        group: Option<usize>,
        /// The norm.
        norm: f64,
    },
    /// A forced instruction set is not available on this CPU.
    UnsupportedIsa {
        /// The instruction set asked for, e.g. `"avx512"`.
        isa: &'static str,
    },
    /// A shard of an 8-bit step ([`Blockwise8Group::first_element`](crate::Blockwise8Group::first_element))
    /// does not start on a block boundary, so its blocks would not be the
    /// whole tensor's.
    MisalignedShard {
        /// The index given.
        first_element: u64,
        /// The block size it must be a multiple of.
        block: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidHyper {
                name,
                value,
                expected,
            } => write!(
                f,
                "invalid hyper-parameter {name} = {value}: expected {expected}"
            ),
            Error::LengthMismatch {
                group,
                buffer,
                expected,
                actual,
            } => write!(
                f,
                "group {group}: {buffer} has {actual} elements, but the parameter has {expected}"
            ),
            Error::NonFiniteGradient { group, index } => write!(
                f,
                "group {group}: the gradient holds a NaN or an infinity (first at element {index})"
            ),
            Error::NonFiniteGradNorm { group, norm } => match group {
                Some(group) => write!(f, "group {group}: the gradient norm is {norm}"),
                None => write!(f, "the gradients' total norm is {norm}"),
            },
            Error::MissingState { group, buffer } => write!(
                f,
                "group {group}: the hyper-parameters need a {buffer} buffer, but none was given"
            ),
            Error::UnsupportedIsa { isa } => {
                write!(f, "instruction set {isa} is not available on this CPU")
            }
            Error::MisalignedShard {
                first_element,
                block,
            } => write!(
                f,
                "a shard of 8-bit state starts at element {first_element}, not a multiple of the block size {block}"
            ),
        }
    }
}

impl std::error::Error for Error {}
