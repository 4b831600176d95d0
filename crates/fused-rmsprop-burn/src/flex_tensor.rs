//! Burn tensors as Flex buffers: the downcast to burn's Flex CPU primitive
//! and back, and typed slice views of a Flex tensor's storage. A leaf that
//! both the in-place step (`flex`) and the buffers it keeps (`shared`) use.
//!
//! A tensor is downcast to its Flex primitive with
//! [`Tensor::try_into_primitive`], the typed accessor burn's `extension`
//! feature provides for backend extensions, and wrapped back with
//! [`Tensor::from_primitive`]. Only tensors whose device is a Flex device
//! reach this module, so the downcast cannot fail (and could not give the
//! tensor back if it did).

use burn::backend::Flex;
use burn::backend::tensor::FloatTensor;
use burn::tensor::Tensor;
use fused_rmsprop::Param;

use crate::blockwise8::Blockwise8Element;
use crate::stats::Counters;

/// burn's Flex float primitive: O(1) to clone, copy-on-write to mutate.
pub(crate) type FlexTensor = FloatTensor<Flex>;

/// A parameter type the kernel steps whose elements and state elements
/// Flex stores.
pub(crate) trait FlexParam:
    Param<State: Blockwise8Element> + burn::tensor::Element + bytemuck::Pod
{
}

impl<P> FlexParam for P
where
    P: Param + burn::tensor::Element + bytemuck::Pod,
    P::State: Blockwise8Element,
{
}

/// The Flex primitive of a tensor on a Flex device (directly or under
/// autodiff).
pub(crate) fn to_flex<const D: usize>(tensor: Tensor<D>) -> FlexTensor {
    tensor
        .try_into_primitive::<Flex>()
        .expect("the in-place route only takes tensors on a Flex device")
}

/// A Flex primitive as a burn tensor.
pub(crate) fn from_flex<const D: usize>(tensor: FlexTensor) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(tensor)
}

/// The tensor, contiguous; a copy when it was not.
pub(crate) fn readable(tensor: FlexTensor, counters: &Counters) -> FlexTensor {
    if tensor.is_contiguous() {
        tensor
    } else {
        counters.copied();
        tensor.to_contiguous()
    }
}

/// The tensor, contiguous and the sole owner of its buffer; a copy when it
/// was not (a shared buffer is never written behind its other owner).
pub(crate) fn writable(tensor: FlexTensor, counters: &Counters) -> FlexTensor {
    let tensor = readable(tensor, counters);
    if !tensor.is_unique() {
        counters.copied();
    }
    tensor
}

/// The tensor's elements; the tensor is contiguous (see [`readable`]).
pub(crate) fn view<T: burn::tensor::Element + bytemuck::Pod>(tensor: &FlexTensor) -> &[T] {
    let (start, end) = tensor
        .layout()
        .contiguous_offsets()
        .expect("made contiguous by `readable`");
    &tensor.storage::<T>()[start..end]
}

/// The tensor's elements, mutably; `storage_mut` copies the buffer first if
/// it is shared (copy-on-write), which `writable` has counted.
pub(crate) fn view_mut<T: burn::tensor::Element + bytemuck::Pod>(
    tensor: &mut FlexTensor,
) -> &mut [T] {
    let (start, end) = tensor
        .layout()
        .contiguous_offsets()
        .expect("made contiguous by `writable`");
    &mut tensor.storage_mut::<T>()[start..end]
}
