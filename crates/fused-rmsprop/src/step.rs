//! What every path receives: the step's constants, computed once, and a
//! validated bundle of equal-length slices.
//!
//! Each derived constant (`1 - alpha`, `1 - lr * wd`) is computed here once,
//! in `f64`, and rounded to the element type once; the scalar, SIMD and
//! threaded paths all read the same values, so none of them can round a
//! constant differently from another.

use crate::config::validate_lr;
use crate::{
    EpsPlacement, Error, Float, GradClip, Hyper, Param, Rounding, StateSlices, WeightDecay,
};

/// The per-step constants of the update, in the element type.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Coefficients<T> {
    pub lr: T,
    pub alpha: T,
    pub one_minus_alpha: T,
    pub eps: T,
    pub eps_inside_sqrt: bool,
    pub maximize: bool,
    /// `Some(wd)` for coupled weight decay: `g += wd * p`.
    pub coupled_weight_decay: Option<T>,
    /// `Some(1 - lr * wd)` for decoupled weight decay: `p *= factor`.
    pub decoupled_decay_factor: Option<T>,
    pub centered: bool,
    pub clamp_centered_variance: bool,
    /// `Some(momentum)` when momentum > 0.
    pub momentum: Option<T>,
    pub nesterov: bool,
    /// The parameter is read from (and the new value kept in) an `f32`
    /// master copy: master weights on a 16-bit parameter.
    pub master: bool,
    /// 16-bit parameters are rounded stochastically (keyed by each chunk's
    /// [`Chunk::key`]).
    pub stochastic: bool,
    /// `Some(max)` when clipping by value: each gradient element is
    /// clamped to `[-max, max]` first.
    pub clip_value: Option<T>,
    /// `Some(scale)` when clipping by norm clips this chunk's tensor: each
    /// gradient element is multiplied by it first. Set per chunk from
    /// [`Chunk::grad_scale`] (`None` in the step's shared coefficients).
    pub grad_scale: Option<T>,
}

impl<T: Float> Coefficients<T> {
    /// The constants for one step of `hyper` (already validated) at
    /// learning rate `lr`.
    /// `narrows` says whether the parameter type is narrower than `T`
    /// ([`Param::NARROWS`]): only then do rounding and master weights apply.
    pub fn new(hyper: &Hyper, lr: f64, narrows: bool) -> Result<Self, Error> {
        validate_lr(lr)?;
        Ok(Self {
            lr: T::from_f64(lr),
            alpha: T::from_f64(hyper.alpha),
            one_minus_alpha: T::from_f64(1.0 - hyper.alpha),
            eps: T::from_f64(hyper.eps),
            eps_inside_sqrt: hyper.eps_placement == EpsPlacement::InsideSqrt,
            maximize: hyper.maximize,
            coupled_weight_decay: match hyper.weight_decay {
                Some(WeightDecay::Coupled(wd)) if wd != 0.0 => Some(T::from_f64(wd)),
                _ => None,
            },
            decoupled_decay_factor: match hyper.weight_decay {
                Some(WeightDecay::Decoupled(wd)) if wd != 0.0 => Some(T::from_f64(1.0 - lr * wd)),
                _ => None,
            },
            centered: hyper.centered,
            clamp_centered_variance: hyper.clamp_centered_variance,
            momentum: hyper
                .needs_momentum_buf()
                .then(|| T::from_f64(hyper.momentum)),
            nesterov: hyper.nesterov,
            master: narrows && hyper.master_weights,
            stochastic: narrows && matches!(hyper.rounding, Rounding::Stochastic { .. }),
            clip_value: match hyper.grad_clip {
                Some(GradClip::Value(max)) => Some(T::from_f64(max)),
                _ => None,
            },
            grad_scale: None,
        })
    }
}

impl<T: Copy> Coefficients<T> {
    /// `Some(copy)` when these are the plain variant's (PyTorch's defaults:
    /// no option on, eps outside the square root, rounding to nearest, no
    /// master copy), with every option written as a constant. A kernel
    /// inlined with the copy has the tests of the options folded away at
    /// compile time: one loop per variant family, so the plain step, the one
    /// most models take, tests no option per register (a prefetch of a
    /// buffer it does not have is still one length check, not taken). The
    /// values are the same, so the bits are.
    #[inline(always)]
    pub fn plain(&self) -> Option<Self> {
        let plain = !self.eps_inside_sqrt
            && !self.maximize
            && self.coupled_weight_decay.is_none()
            && self.decoupled_decay_factor.is_none()
            && !self.centered
            && self.momentum.is_none()
            && !self.master
            && !self.stochastic
            && self.clip_value.is_none()
            && self.grad_scale.is_none();
        plain.then_some(Self {
            eps_inside_sqrt: false,
            maximize: false,
            coupled_weight_decay: None,
            decoupled_decay_factor: None,
            centered: false,
            clamp_centered_variance: false,
            momentum: None,
            nesterov: false,
            master: false,
            stochastic: false,
            clip_value: None,
            grad_scale: None,
            ..*self
        })
    }

    /// `Some(copy)` for the plain variant with heavy-ball momentum on (no
    /// Nesterov): Burn's defaults. As [`Coefficients::plain`], with
    /// momentum's presence a constant too.
    #[inline(always)]
    pub fn plain_with_momentum(&self) -> Option<Self> {
        let plain = Self {
            momentum: None,
            ..*self
        }
        .plain()?;
        (!self.nesterov).then_some(Self {
            momentum: Some(self.momentum?),
            ..plain
        })
    }

    /// `Some(copy)` for the plain variant with stochastic rounding (a
    /// `bf16` parameter): as [`Coefficients::plain`], with the rounding a
    /// constant too.
    #[inline(always)]
    pub fn plain_stochastic(&self) -> Option<Self> {
        let plain = Self {
            stochastic: false,
            ..*self
        }
        .plain()?;
        self.stochastic.then_some(Self {
            stochastic: true,
            ..plain
        })
    }

    /// `Some(copy)` for the plain variant with an `f32` master copy (a
    /// 16-bit parameter, rounded to nearest): as [`Coefficients::plain`],
    /// with the master copy's presence a constant too.
    #[inline(always)]
    pub fn plain_with_master(&self) -> Option<Self> {
        let plain = Self {
            master: false,
            ..*self
        }
        .plain()?;
        self.master.then_some(Self {
            master: true,
            ..plain
        })
    }

    /// `Some(copy)` for the plain variant clipping by value: as
    /// [`Coefficients::plain`], with the clamp's presence a constant too, so
    /// clipping by value adds two lane operations to the plain loop and
    /// nothing else.
    #[inline(always)]
    pub fn plain_clipped_by_value(&self) -> Option<Self> {
        let plain = Self {
            clip_value: None,
            ..*self
        }
        .plain()?;
        Some(Self {
            clip_value: Some(self.clip_value?),
            ..plain
        })
    }

    /// `Some(copy)` for the plain variant on a tensor clipping by norm
    /// scales: as [`Coefficients::plain`], with the scale's presence a
    /// constant too. (A tensor whose norm is within the bound has no scale
    /// and takes the plain loop.)
    #[inline(always)]
    pub fn plain_scaled(&self) -> Option<Self> {
        let plain = Self {
            grad_scale: None,
            ..*self
        }
        .plain()?;
        Some(Self {
            grad_scale: Some(self.grad_scale?),
            ..plain
        })
    }
}

/// Evaluates `$body` with `$k` bound to `$c` (a `&Coefficients`), or to a
/// copy whose options are constants when `$c` is one of the `variants`
/// (methods of [`Coefficients`] such as [`Coefficients::plain`], tried in
/// order). With an `#[inline(always)]` kernel in `$body`, each arm is a loop
/// of its own with the tests of the options folded away. A macro, not a
/// function taking the kernel as a closure: a closure's body may be
/// compiled apart from the SIMD kernel's target features and then calls
/// every lane operation, many times slower.
macro_rules! with_constant_options {
    ($c:expr, [$($variant:ident),+], |$k:ident| $body:expr) => {{
        let c = $c;
        $(
            if let Some(constant) = c.$variant() {
                let $k = &constant;
                $body
            } else
        )+ {
            let $k = c;
            $body
        }
    }};
}
pub(crate) use with_constant_options;

/// Splits an optional buffer at `mid`: an absent one is empty and stays
/// empty on both sides.
pub(crate) fn split_optional<T>(slice: &mut [T], mid: usize) -> (&mut [T], &mut [T]) {
    if slice.is_empty() {
        (&mut [], &mut [])
    } else {
        slice.split_at_mut(mid)
    }
}

/// Equal-length slices of one parameter (or a piece of one): the unit every
/// path works on. `grad_avg` is empty unless centered, `momentum_buf` empty
/// unless momentum is on, `master` empty unless master weights apply;
/// [`Chunk::new`] guarantees all three.
#[derive(Debug)]
pub(crate) struct Chunk<'a, P: Param> {
    pub params: &'a mut [P],
    /// The parameters' values before the step when they are not in
    /// `params` (an out-of-place step writes `params` without reading it);
    /// empty when the step reads `params`.
    pub source: &'a [P],
    pub grads: &'a [P],
    pub square_avg: &'a mut [P::State],
    pub grad_avg: &'a mut [P::State],
    pub momentum_buf: &'a mut [P::State],
    pub master: &'a mut [P::State],
    /// The index of the first element within its tensor (stochastic
    /// rounding is keyed by it).
    pub offset: u64,
    /// The tensor's stochastic-rounding key (seed, step, stream); 0 when
    /// rounding to nearest.
    pub key: u64,
    /// The factor clipping by norm multiplies this tensor's gradient by;
    /// `None` when it does not clip it.
    pub grad_scale: Option<P::State>,
}

impl<'a, P: Param> Chunk<'a, P> {
    /// Checks every length against the parameter's, and that the buffers the
    /// coefficients need are present. Writes nothing.
    pub fn new(
        group: usize,
        coefficients: &Coefficients<P::State>,
        params: &'a mut [P],
        source: Option<&'a [P]>,
        grads: &'a [P],
        state: StateSlices<'a, P::State>,
        key: u64,
    ) -> Result<Self, Error> {
        let expected = params.len();
        let check_len = |buffer: &'static str, actual: usize| {
            if actual == expected {
                Ok(())
            } else {
                Err(Error::LengthMismatch {
                    group,
                    buffer,
                    expected,
                    actual,
                })
            }
        };
        let required =
            |buffer: &'static str, needed: bool, slice: Option<&'a mut [P::State]>| match (
                needed, slice,
            ) {
                (false, _) => Ok(Default::default()),
                (true, None) => Err(Error::MissingState { group, buffer }),
                (true, Some(slice)) => check_len(buffer, slice.len()).map(|()| slice),
            };
        check_len("grads", grads.len())?;
        if let Some(source) = source {
            check_len("source", source.len())?;
        }
        check_len("square_avg", state.square_avg.len())?;
        let grad_avg = required("grad_avg", coefficients.centered, state.grad_avg)?;
        let momentum_buf = required(
            "momentum_buf",
            coefficients.momentum.is_some(),
            state.momentum_buf,
        )?;
        let master = required("master", coefficients.master, state.master)?;
        Ok(Self {
            params,
            source: source.unwrap_or_default(),
            grads,
            square_avg: state.square_avg,
            grad_avg,
            momentum_buf,
            master,
            offset: 0,
            key,
            grad_scale: None,
        })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Moves the chunk out, leaving an empty one in its place.
    pub fn take(&mut self) -> Self {
        std::mem::replace(
            self,
            Chunk {
                params: &mut [],
                source: &[],
                grads: &[],
                square_avg: &mut [],
                grad_avg: &mut [],
                momentum_buf: &mut [],
                master: &mut [],
                offset: 0,
                key: 0,
                grad_scale: None,
            },
        )
    }

    /// Splits at element `mid` into two chunks that are valid on their own.
    pub fn split_at(self, mid: usize) -> (Self, Self) {
        let split = split_optional;
        let (params_a, params_b) = self.params.split_at_mut(mid);
        let (source_a, source_b) = if self.source.is_empty() {
            (self.source, self.source)
        } else {
            self.source.split_at(mid)
        };
        let (grads_a, grads_b) = self.grads.split_at(mid);
        let (square_a, square_b) = self.square_avg.split_at_mut(mid);
        let (grad_avg_a, grad_avg_b) = split(self.grad_avg, mid);
        let (momentum_a, momentum_b) = split(self.momentum_buf, mid);
        let (master_a, master_b) = split(self.master, mid);
        (
            Chunk {
                params: params_a,
                source: source_a,
                grads: grads_a,
                square_avg: square_a,
                grad_avg: grad_avg_a,
                momentum_buf: momentum_a,
                master: master_a,
                offset: self.offset,
                key: self.key,
                grad_scale: self.grad_scale,
            },
            Chunk {
                params: params_b,
                source: source_b,
                grads: grads_b,
                square_avg: square_b,
                grad_avg: grad_avg_b,
                momentum_buf: momentum_b,
                master: master_b,
                offset: self.offset + mid as u64,
                key: self.key,
                grad_scale: self.grad_scale,
            },
        )
    }
}
