//! What an optimizer's steps did: the counters its clones share, and the
//! snapshot [`StepStats`] a user reads. A leaf: both routes count here.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// What an optimizer's steps did, counted since it was built (shared by its
/// clones).
///
/// ```
/// use fused_rmsprop_burn::StepStats;
/// assert_eq!(StepStats::default().buffers_copied, 0);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepStats {
    /// Steps run in place by the fused kernel.
    pub in_place_steps: u64,
    /// Steps run with composed tensor ops (other devices and dtypes, or
    /// [`Route::ComposedOps`](crate::Route::ComposedOps)).
    pub composed_steps: u64,
    /// Buffers the in-place route could not write where they lay: copied
    /// first (non-contiguous, or shared with no kept buffer ready), or a
    /// shared parameter stepped out of place into a buffer kept for it
    /// (see the crate docs, "When a step copies").
    pub buffers_copied: u64,
    /// States that did not fit their parameter and were started afresh.
    pub states_reset: u64,
    /// Steps refused (nothing written); see `last_error`.
    pub rejected_steps: u64,
    /// Steps that left their parameter untouched because its gradient held
    /// NaN or Inf (`NonFinite::Skip`).
    pub skipped_steps: u64,
    /// Why the last refused step was refused, when the kernel refused it;
    /// `None` when the last refusal was the batched route's
    /// [`BatchedError::NotInPlace`](crate::BatchedError::NotInPlace), which the step's own result names.
    pub last_error: Option<fused_rmsprop::Error>,
}

/// The counters behind [`StepStats`], shared by an optimizer's clones.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) in_place: AtomicU64,
    pub(crate) composed: AtomicU64,
    pub(crate) copied: AtomicU64,
    pub(crate) reset: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) last_error: Mutex<Option<fused_rmsprop::Error>>,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn copied(&self) {
        Self::bump(&self.copied);
    }

    pub(crate) fn skipped(&self) {
        Self::bump(&self.skipped);
    }

    pub(crate) fn rejected(&self, err: fused_rmsprop::Error) {
        self.refused(Some(err));
    }

    /// A refused step, with the kernel's error when it was the kernel's.
    pub(crate) fn refused(&self, err: Option<fused_rmsprop::Error>) {
        Self::bump(&self.rejected);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = err;
    }

    /// The counts so far.
    pub(crate) fn snapshot(&self) -> StepStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StepStats {
            in_place_steps: load(&self.in_place),
            composed_steps: load(&self.composed),
            buffers_copied: load(&self.copied),
            states_reset: load(&self.reset),
            rejected_steps: load(&self.rejected),
            skipped_steps: load(&self.skipped),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}
