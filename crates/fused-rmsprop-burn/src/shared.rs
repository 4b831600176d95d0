//! Parameters that reach the step shared, as every parameter does under
//! burn-train's `Learner`: its `optimizer_step` (burn-train 0.22) is
//! `self.model = self.model().optimize(..)`, where `model()` is a clone, so
//! the module it steps shares every buffer with the module it still holds
//! until the step returns.
//!
//! A shared buffer is never written (its other owner may read it), so such
//! a parameter's results go to a buffer of our own. Left to burn's
//! copy-on-write, that buffer is a fresh allocation every step, filled by a
//! copy before the step: for a large parameter, memory the system hands out
//! page by page, each page faulted in while the copy writes it (a 16M `f32`
//! parameter stepped 5-6x slower than unshared, BENCHMARKS.md). Instead,
//! [`Spares`] keeps the buffer the parameter arrived in (its other owner
//! lets go of it once the step returns) under the address of the buffer
//! the step hands back, and the next step of that parameter, arriving in
//! the buffer handed back, writes its results into the kept one if by then
//! nobody else holds it, reading the parameter where it arrived (the
//! kernel's out-of-place step, no copy): two buffers per parameter, used in
//! turn, allocated once. The price is memory: one more buffer per shared
//! parameter, kept between steps (copy-on-write needs it during each step
//! anyway).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use burn::tensor::{Bytes, DType};
use fused_rmsprop::{bf16, f16};

use crate::flex::FlexTensor;

/// The kept buffers, by the address of the buffer handed back in their
/// place.
#[derive(Debug, Default)]
pub(crate) struct Spares {
    kept: Mutex<HashMap<usize, Arc<Bytes>>>,
}

impl Spares {
    /// Where the step of the parameter `shared` writes, and where it reads
    /// when that is not the same place: the buffer kept for it by the
    /// previous step when nobody else holds that one any more (its contents
    /// stale, `shared` to read), or else a copy of `shared` of its own (to
    /// step in place). Keeps `shared`'s own buffer for the next step.
    pub(crate) fn unshare(&self, shared: FlexTensor) -> (FlexTensor, Option<FlexTensor>) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let spare = kept
            .remove(&address(&shared))
            .filter(|bytes| bytes.len() == shared.bytes().len() && Arc::strong_count(bytes) == 1);
        let arrived = shared.data_arc();
        let (target, source) = match spare {
            Some(bytes) => {
                let target = FlexTensor::from_arc(bytes, shared.layout().clone(), shared.dtype());
                (target, Some(shared))
            }
            None => (copy_on_write(shared), None),
        };
        kept.insert(address(&target), arrived);
        (target, source)
    }

    /// After a step into `target` from `source` that wrote nothing (a
    /// skipped or refused step): `source` is the parameter still, and
    /// `target` is kept for its next step instead.
    pub(crate) fn unwritten(&self, target: FlexTensor, source: FlexTensor) -> FlexTensor {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.remove(&address(&target));
        kept.insert(address(&source), target.data_arc());
        source
    }

    /// Lets go of the buffer kept for a parameter that now arrives unshared
    /// in `tensor` (a loop that stopped holding a second copy of its model).
    pub(crate) fn forget(&self, tensor: &FlexTensor) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if !kept.is_empty() {
            kept.remove(&address(tensor));
        }
    }
}

/// Where `tensor`'s buffer starts: the key of the buffer kept for it.
fn address(tensor: &FlexTensor) -> usize {
    tensor.bytes().as_ptr() as usize
}

/// `tensor` with a buffer of its own: burn's copy-on-write, which copies
/// when the buffer is shared.
fn copy_on_write(mut tensor: FlexTensor) -> FlexTensor {
    match tensor.dtype() {
        DType::F64 => _ = tensor.storage_mut::<f64>(),
        DType::BF16 => _ = tensor.storage_mut::<bf16>(),
        DType::F16 => _ = tensor.storage_mut::<f16>(),
        _ => _ = tensor.storage_mut::<f32>(),
    }
    tensor
}
