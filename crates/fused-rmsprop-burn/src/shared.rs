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
//! page by page, each page faulted in while the copy writes it: several
//! times the cost of the step itself for a large parameter. Instead,
//! [`KeptBuffers`] keeps the buffer the parameter arrived in (its other owner
//! lets go of it once the step returns) under the address of the buffer
//! the step hands back, and the next step of that parameter, arriving in
//! the buffer handed back, writes its results into the kept one if by then
//! nobody else holds it, reading the parameter where it arrived (the
//! kernel's out-of-place step, no copy): two buffers per parameter, used in
//! turn, allocated once. The price is memory: one more buffer per shared
//! parameter, kept between steps (copy-on-write needs it during each step
//! anyway). The buffer kept for a parameter nobody holds any more (a model
//! replaced by a loaded one) is let go at the next sweep of the map.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use burn::tensor::{Bytes, DType};
use fused_rmsprop::{bf16, f16};

use crate::flex_tensor::FlexTensor;

/// The kept buffers, by the address of the buffer handed back in their
/// place.
#[derive(Debug, Default)]
pub(crate) struct KeptBuffers {
    kept: Mutex<Kept>,
}

/// The map of kept buffers, with each entry the buffer handed back (weakly:
/// once nobody holds it, as when a model is replaced by a loaded one, the
/// entry can never be used and is dropped at the next sweep).
#[derive(Debug, Default)]
struct Kept {
    by_address: HashMap<usize, (Weak<Bytes>, Arc<Bytes>)>,
    /// The size at which the next insertion sweeps out dead entries.
    sweep_at: usize,
}

/// The smallest size at which the map is swept.
const FIRST_SWEEP: usize = 64;

impl Kept {
    fn take(&mut self, address: usize) -> Option<Arc<Bytes>> {
        self.by_address.remove(&address).map(|(_, kept)| kept)
    }

    /// Keeps `kept` for the parameter handed back in `handed_back`; now and
    /// then (each time the map has doubled) drops the entries whose handed
    /// back buffer nobody holds any more, so the map stays within twice the
    /// number of live entries.
    fn keep(&mut self, handed_back: &FlexTensor, kept: Arc<Bytes>) {
        let weak = Arc::downgrade(&handed_back.data_arc());
        self.by_address.insert(address(handed_back), (weak, kept));
        if self.by_address.len() >= self.sweep_at.max(FIRST_SWEEP) {
            self.by_address
                .retain(|_, (handed_back, _)| handed_back.strong_count() > 0);
            self.sweep_at = 2 * self.by_address.len();
        }
    }

    fn len(&self) -> usize {
        self.by_address.len()
    }
}

impl KeptBuffers {
    /// Where the step of the parameter `shared` writes, and where it reads
    /// when that is not the same place: the buffer kept for it by the
    /// previous step when nobody else holds that one any more (its contents
    /// stale, `shared` to read), or else a copy of `shared` of its own (to
    /// step in place). Hand the result to [`KeptBuffers::handed_back`] once the
    /// step is done.
    pub(crate) fn unshare(&self, shared: FlexTensor) -> Unshared {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let spare = kept
            .take(address(&shared))
            .filter(|bytes| bytes.len() == shared.bytes().len() && Arc::strong_count(bytes) == 1);
        drop(kept);
        let arrived = Some(shared.data_arc());
        match spare {
            Some(bytes) => Unshared {
                target: FlexTensor::from_arc(bytes, shared.layout().clone(), shared.dtype()),
                source: Some(shared),
                arrived,
            },
            None => Unshared {
                target: copy_on_write(shared),
                source: None,
                arrived,
            },
        }
    }

    /// The parameter to hand back after the step `unshared` was for, which
    /// `written` says wrote the target or not (a skipped or refused step):
    /// the target, or, out of place and not written, the parameter where it
    /// arrived. The other buffer is kept for the next step. Called after
    /// the kernel has run: the weak reference a kept entry holds on the
    /// buffer handed back must not be taken before the step writes it:
    /// Flex's copy-on-write is `Arc::make_mut`, which, when weak references
    /// remain, gives the value a new `Arc` even if nobody else holds it
    /// (the bytes stay where they are), and the entry would look dead.
    pub(crate) fn handed_back(&self, unshared: Unshared, written: bool) -> FlexTensor {
        let Unshared {
            target,
            source,
            arrived,
        } = unshared;
        let Some(arrived) = arrived else {
            return target; // it arrived unshared: nothing to keep
        };
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        match source {
            Some(source) if !written => {
                kept.keep(&source, target.data_arc());
                source
            }
            _ => {
                kept.keep(&target, arrived);
                target
            }
        }
    }

    /// Lets go of the buffer kept for a parameter that now arrives unshared
    /// in `tensor` (a loop that stopped holding a second copy of its model).
    pub(crate) fn forget(&self, tensor: &FlexTensor) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() > 0 {
            kept.take(address(tensor));
        }
    }
}

/// A parameter's step in the making: where it writes and reads, and for a
/// shared parameter the buffer it arrived in (see [`KeptBuffers::unshare`]).
pub(crate) struct Unshared {
    /// Where the step writes.
    pub target: FlexTensor,
    /// Where it reads, when not from `target`.
    pub source: Option<FlexTensor>,
    /// The buffer a shared parameter arrived in; `None` for one stepped
    /// where it lies.
    arrived: Option<Arc<Bytes>>,
}

impl Unshared {
    /// A parameter this step owns alone: written where it lies.
    pub(crate) fn own(param: FlexTensor) -> Self {
        Self {
            target: param,
            source: None,
            arrived: None,
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

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;

    use super::*;

    fn tensor(n: usize) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(vec![1.5f32; n], [n]))
    }

    /// Parameters that arrive shared, are handed back, and are then
    /// dropped (a model replaced by a loaded one) leave no entries behind
    /// beyond twice those still live.
    #[test]
    fn entries_of_parameters_nobody_holds_are_swept() {
        let kept_buffers = KeptBuffers::default();
        for _round in 0..10 {
            let handed_back: Vec<FlexTensor> = (0..100)
                .map(|_| {
                    let arrived = tensor(8);
                    let holder = arrived.clone();
                    // A new buffer at the address of a dropped one finds
                    // that one's kept buffer: any buffer of the length that
                    // nobody else holds is a valid place to write.
                    let unshared = kept_buffers.unshare(arrived);
                    let target = kept_buffers.handed_back(unshared, true);
                    drop(holder);
                    target
                })
                .collect();
            drop(handed_back);
        }
        let live = kept_buffers.kept.lock().unwrap().len();
        assert!(
            live <= 2 * 100,
            "{live} entries kept for 100 live ones at most"
        );
    }

    /// The next step of a parameter handed back finds its kept buffer, and
    /// reads where the parameter arrived.
    #[test]
    fn a_parameter_handed_back_finds_its_kept_buffer() {
        let kept_buffers = KeptBuffers::default();
        let first = tensor(4);
        let held = first.clone();
        let first_buffer = address(&first);
        let unshared = kept_buffers.unshare(first);
        assert!(unshared.source.is_none());
        let handed_back = kept_buffers.handed_back(unshared, true);
        drop(held); // the holder lets go of the buffer the parameter arrived in
        let held = handed_back.clone();
        let unshared = kept_buffers.unshare(handed_back);
        assert_eq!(
            address(&unshared.target),
            first_buffer,
            "written into the kept buffer"
        );
        assert_eq!(unshared.source.as_ref().map(address), Some(address(&held)));
    }
}
