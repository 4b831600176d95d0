//! Optimizer state: owned ([`State`]) or borrowed from a framework's tensors
//! ([`StateSlices`]).
//!
//! The state's element type is a parameter of its own (`S`), separate from
//! the parameter's: today both are `f32` or both `f64`; a mixed-precision step
//! (bf16 params and grads, f32 state, as DeepSpeed's CPU Adam) would keep
//! these types and add a parameter-storage type that converts on load/store.

use crate::{Float, Hyper};

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
            step: 0,
        }
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
}
