//! What the optimizer reads out of candle's storage: the float types the
//! kernel steps, the slice a layout covers, and which storage a tensor uses.

use candle_core::{CpuStorage, Layout, Storage, Tensor};
use fused_rmsprop::{Param, bf16, f16};

use crate::Result;

/// A float type candle stores in a `CpuStorage` that the kernel steps:
/// `f32`, `f64`, `bf16`, `f16`.
pub(crate) trait CpuParam: Param + candle_core::WithDType {
    fn slice(storage: &CpuStorage) -> Option<&[Self]>;
    fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [Self]>;
}

macro_rules! impl_cpu_float {
    ($ty:ty, $variant:ident) => {
        impl CpuParam for $ty {
            fn slice(storage: &CpuStorage) -> Option<&[Self]> {
                match storage {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [Self]> {
                match storage {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

impl_cpu_float!(f32, F32);
impl_cpu_float!(f64, F64);
impl_cpu_float!(bf16, BF16);
impl_cpu_float!(f16, F16);

/// The contiguous slice of a CPU tensor's storage that its layout covers.
pub(crate) fn cpu_slice<'s, T: CpuParam>(storage: &'s Storage, layout: &Layout) -> Result<&'s [T]> {
    let Storage::Cpu(cpu) = storage else {
        return Err(candle_core::Error::msg(
            "fused RMSprop: tensor is not on the CPU",
        ));
    };
    let data = T::slice(cpu).ok_or_else(|| {
        candle_core::Error::msg(format!("fused RMSprop: expected {:?} storage", T::DTYPE))
    })?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::msg("fused RMSprop: tensor is not contiguous"))?;
    data.get(start..end)
        .ok_or_else(|| candle_core::Error::msg("fused RMSprop: layout outside its storage"))
}

/// Which storage `tensor` uses: the address of its CPU buffer, the same for
/// every tensor that shares the storage (and so its lock), different for
/// every other live non-empty storage. `None` for an empty buffer or a
/// storage that is not a CPU float buffer.
///
/// Takes the storage's read lock for the time of the look-up only, so it is
/// safe to call before the step takes any write lock.
pub(crate) fn storage_key(tensor: &Tensor) -> Option<usize> {
    buffer_key(&tensor.storage_and_layout().0)
}

/// [`storage_key`] of a storage already locked.
pub(crate) fn buffer_key(storage: &Storage) -> Option<usize> {
    let Storage::Cpu(cpu) = storage else {
        return None;
    };
    let (address, empty) = match cpu {
        CpuStorage::F32(v) => (v.as_ptr() as usize, v.is_empty()),
        CpuStorage::F64(v) => (v.as_ptr() as usize, v.is_empty()),
        CpuStorage::BF16(v) => (v.as_ptr() as usize, v.is_empty()),
        CpuStorage::F16(v) => (v.as_ptr() as usize, v.is_empty()),
        _ => return None,
    };
    (!empty).then_some(address)
}

/// The elements of a variable's storage its (contiguous) layout covers,
/// for an in-place op's `cpu_fwd` to step.
pub(crate) fn variable_slice_mut<'s, T: CpuParam>(
    storage: &'s mut CpuStorage,
    layout: &Layout,
) -> Result<&'s mut [T]> {
    let data = T::slice_mut(storage).ok_or_else(|| {
        candle_core::Error::msg(format!("fused RMSprop: expected {:?} storage", T::DTYPE))
    })?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::msg("fused RMSprop: variable is not contiguous"))?;
    data.get_mut(start..end)
        .ok_or_else(|| candle_core::Error::msg("fused RMSprop: layout outside its storage"))
}
