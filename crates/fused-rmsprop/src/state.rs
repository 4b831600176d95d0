//! Optimizer state: owned ([`State`]) or borrowed from a framework's tensors
//! ([`StateSlices`]).
//!
//! The state's element type is the parameter's [`Param::State`]: `f32` for
//! `f32`, `bf16` and `f16` parameters, `f64` for `f64`.

use crate::{Float, Hyper, Param};

/// The state of one parameter tensor, owned: the buffers the hyper-parameters
/// need, and the number of steps taken.
///
/// Costs one allocation per buffer at creation; steps never allocate.
///
/// ```
/// use fused_rmsprop::{Hyper, State};
/// let h = Hyper::default().with_momentum(0.9);
/// let state = State::<f32>::new(3, &h);
/// assert_eq!(state.square_avg, vec![0.0; 3]);
/// assert!(state.grad_avg.is_none());
/// assert_eq!(state.momentum_buf.as_deref(), Some(&[0.0f32; 3][..]));
/// assert_eq!(state.step, 0);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct State<S: Float> {
    /// Running average of squared gradients, `v`.
    pub square_avg: Vec<S>,
    /// Running average of gradients (centered only).
    pub grad_avg: Option<Vec<S>>,
    /// Momentum buffer (momentum > 0 only).
    pub momentum_buf: Option<Vec<S>>,
    /// The `f32` master copy of a 16-bit parameter
    /// ([`Hyper::master_weights`] only; made by [`State::for_params`]).
    pub master: Option<Vec<S>>,
    /// Successful steps taken with this state.
    pub step: u64,
}

impl<S: Float> State<S> {
    /// Fresh state for a parameter of `len` elements: `square_avg` filled
    /// with `hyper.initial_square_avg`, the optional buffers zeroed.
    ///
    /// ```
    /// # use fused_rmsprop::{Hyper, State};
    /// let s = State::<f64>::new(2, &Hyper::default().with_initial_square_avg(1.0));
    /// assert_eq!(s.square_avg, vec![1.0, 1.0]);
    /// ```
    pub fn new(len: usize, hyper: &Hyper) -> Self {
        Self {
            square_avg: vec![S::from_f64(hyper.initial_square_avg); len],
            grad_avg: hyper.needs_grad_avg().then(|| vec![S::ZERO; len]),
            momentum_buf: hyper.needs_momentum_buf().then(|| vec![S::ZERO; len]),
            master: None,
            step: 0,
        }
    }

    /// Fresh state for `params`: as [`State::new`], plus the master copy
    /// (the parameters widened, exactly) when `hyper.master_weights` is on
    /// and the parameters are 16-bit.
    ///
    /// ```
    /// use fused_rmsprop::{Hyper, State};
    /// use half::bf16;
    /// let params = [bf16::from_f32(0.5), bf16::from_f32(-2.0)];
    /// let s = State::for_params(&params, &Hyper::default().with_master_weights(true));
    /// assert_eq!(s.master, Some(vec![0.5f32, -2.0]));
    /// let plain = State::for_params(&[1.0f32], &Hyper::default().with_master_weights(true));
    /// assert_eq!(plain.master, None);
    /// ```
    pub fn for_params<P: Param<State = S>>(params: &[P], hyper: &Hyper) -> Self {
        let mut state = Self::new(params.len(), hyper);
        if P::NARROWS && hyper.master_weights {
            state.master = Some(params.iter().map(|p| p.widen()).collect());
        }
        state
    }

    /// This state brought in line with a tensor of `len` elements under
    /// `hyper` (a state carried over or loaded from a checkpoint): a buffer
    /// of another length makes it a fresh [`State::new`] (and the `bool` is
    /// `false`); otherwise a buffer `hyper` needs but the state lacks
    /// starts at zero, as PyTorch and burn start it, and one it does not
    /// need is dropped. The master copy and the step count are kept.
    ///
    /// ```
    /// use fused_rmsprop::{Hyper, State};
    /// let plain = State::<f32>::new(3, &Hyper::default());
    /// let centered = Hyper::default().with_centered(true);
    /// let (fitted, kept) = plain.clone().fit(3, &centered);
    /// assert!(kept);
    /// assert_eq!(fitted.grad_avg, Some(vec![0.0; 3]));
    /// let (fresh, kept) = plain.fit(4, &centered);
    /// assert!(!kept);
    /// assert_eq!(fresh.square_avg.len(), 4);
    /// ```
    pub fn fit(self, len: usize, hyper: &Hyper) -> (Self, bool) {
        let fits = |v: &Vec<S>| v.len() == len;
        let all_fit = fits(&self.square_avg)
            && self.grad_avg.as_ref().is_none_or(fits)
            && self.momentum_buf.as_ref().is_none_or(fits)
            && self.master.as_ref().is_none_or(fits);
        if !all_fit {
            return (Self::new(len, hyper), false);
        }
        let zeros = || vec![S::ZERO; len];
        let grad_avg = hyper
            .needs_grad_avg()
            .then(|| self.grad_avg.unwrap_or_else(zeros));
        let momentum_buf = hyper
            .needs_momentum_buf()
            .then(|| self.momentum_buf.unwrap_or_else(zeros));
        let state = Self {
            grad_avg,
            momentum_buf,
            ..self
        };
        (state, true)
    }

    /// Borrows the buffers as a [`StateSlices`] view.
    ///
    /// ```
    /// # use fused_rmsprop::{Hyper, State};
    /// let mut s = State::<f32>::new(2, &Hyper::default());
    /// assert_eq!(s.slices_mut().square_avg.len(), 2);
    /// ```
    pub fn slices_mut(&mut self) -> StateSlices<'_, S> {
        StateSlices {
            square_avg: &mut self.square_avg,
            grad_avg: self.grad_avg.as_deref_mut(),
            momentum_buf: self.momentum_buf.as_deref_mut(),
            master: self.master.as_deref_mut(),
        }
    }
}

/// The state buffers of one parameter, borrowed: what adapters pass when the
/// state lives in framework tensors. A buffer the hyper-parameters do not need
/// may be `None` (or present and is then left alone).
///
/// ```
/// use fused_rmsprop::StateSlices;
/// let mut v = [0.0f32; 4];
/// let state = StateSlices::new(&mut v);
/// assert!(state.grad_avg.is_none() && state.momentum_buf.is_none());
/// ```
#[derive(Debug)]
pub struct StateSlices<'a, S> {
    /// Running average of squared gradients.
    pub square_avg: &'a mut [S],
    /// Running average of gradients (needed when centered).
    pub grad_avg: Option<&'a mut [S]>,
    /// Momentum buffer (needed when momentum > 0).
    pub momentum_buf: Option<&'a mut [S]>,
    /// `f32` master copy of a 16-bit parameter (needed with
    /// [`Hyper::master_weights`] on a 16-bit parameter).
    pub master: Option<&'a mut [S]>,
}

impl<'a, S> StateSlices<'a, S> {
    /// A view with only a square average.
    ///
    /// ```
    /// # use fused_rmsprop::StateSlices;
    /// let mut v = [0.0f64; 2];
    /// assert_eq!(StateSlices::new(&mut v).square_avg.len(), 2);
    /// ```
    pub fn new(square_avg: &'a mut [S]) -> Self {
        Self {
            square_avg,
            grad_avg: None,
            momentum_buf: None,
            master: None,
        }
    }

    /// Adds a `grad_avg` buffer.
    ///
    /// ```
    /// # use fused_rmsprop::StateSlices;
    /// let (mut v, mut ga) = ([0.0f32; 2], [0.0f32; 2]);
    /// assert!(StateSlices::new(&mut v).with_grad_avg(&mut ga).grad_avg.is_some());
    /// ```
    #[must_use]
    pub fn with_grad_avg(mut self, grad_avg: &'a mut [S]) -> Self {
        self.grad_avg = Some(grad_avg);
        self
    }

    /// Adds a `momentum_buf` buffer.
    ///
    /// ```
    /// # use fused_rmsprop::StateSlices;
    /// let (mut v, mut b) = ([0.0f32; 2], [0.0f32; 2]);
    /// assert!(StateSlices::new(&mut v).with_momentum_buf(&mut b).momentum_buf.is_some());
    /// ```
    #[must_use]
    pub fn with_momentum_buf(mut self, momentum_buf: &'a mut [S]) -> Self {
        self.momentum_buf = Some(momentum_buf);
        self
    }

    /// Adds a `master` buffer.
    ///
    /// ```
    /// # use fused_rmsprop::StateSlices;
    /// let (mut v, mut m) = ([0.0f32; 2], [0.5f32; 2]);
    /// assert!(StateSlices::new(&mut v).with_master(&mut m).master.is_some());
    /// ```
    #[must_use]
    pub fn with_master(mut self, master: &'a mut [S]) -> Self {
        self.master = Some(master);
        self
    }
}
