//! Parameters that reach the step shared, as every parameter does under
//! burn-train's `Learner`: its `optimizer_step` (burn-train 0.22) is
//! `self.model = self.model().optimize(..)`, where `model()` is a clone, so
//! the module it steps shares every buffer with the module it still holds
//! until the step returns.
//!
//! A shared buffer is never written (its other owner may read it), so such
//! a parameter's values go to a buffer of our own first and the step writes
//! there. Left to burn's copy-on-write, that buffer is a fresh allocation
//! every step: for a large parameter, memory the system hands out page by
//! page, each page faulted in while the copy writes it (a 16M `f32`
//! parameter stepped 5-6x slower than unshared, BENCHMARKS.md). Instead,
//! [`Spares`] keeps the buffer the parameter arrived in (its other owner
//! lets go of it once the step returns) under the address of the buffer
//! the step hands back, and the next step of that parameter, arriving in
//! the buffer handed back, copies into the kept one if by then nobody else
//! holds it: two buffers per parameter, used in turn, allocated once. The
//! price is memory: one more buffer per shared parameter, kept between
//! steps (copy-on-write needs it during each step anyway).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use burn::tensor::{Bytes, DType};
use fused_rmsprop::{bf16, f16};

use crate::flex::FlexTensor;

/// Below this many bytes a copy runs on the calling thread.
const PARALLEL_COPY_BYTES: usize = 1 << 20;

/// The kept buffers, by the address of the buffer handed back in their
/// place.
#[derive(Debug, Default)]
pub(crate) struct Spares {
    kept: Mutex<HashMap<usize, Arc<Bytes>>>,
}

impl Spares {
    /// `shared`'s values in a buffer `shared` does not share: the buffer
    /// kept for it by the previous step when nobody else holds that one any
    /// more, a new one otherwise. Keeps `shared`'s own buffer for the next
    /// step.
    pub(crate) fn unshare(&self, shared: FlexTensor) -> FlexTensor {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let spare = kept.remove(&address(&shared));
        let own = match spare {
            Some(mut bytes) if bytes.len() == shared.bytes().len() => {
                match Arc::get_mut(&mut bytes) {
                    Some(target) => {
                        copy(shared.bytes(), target);
                        FlexTensor::from_arc(bytes, shared.layout().clone(), shared.dtype())
                    }
                    None => copy_on_write(shared.clone()),
                }
            }
            _ => copy_on_write(shared.clone()),
        };
        kept.insert(address(&own), shared.data_arc());
        own
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

/// `source` into `target` (of the same length), on the pool's threads when
/// large.
fn copy(source: &[u8], target: &mut [u8]) {
    if source.len() < PARALLEL_COPY_BYTES {
        target.copy_from_slice(source);
        return;
    }
    // Pieces of at least 256 KiB, at most 16 of them.
    let piece = (source.len() / 16)
        .max(PARALLEL_COPY_BYTES / 4)
        .next_multiple_of(64);
    let pieces: Vec<(&mut [u8], &[u8])> =
        target.chunks_mut(piece).zip(source.chunks(piece)).collect();
    fused_rmsprop::run_tasks(pieces, |(to, from)| to.copy_from_slice(from));
}
