//! The one conversion of the kernel's errors into candle's: wrapped
//! ([`candle_core::Error::Wrapped`]), the kernel error's message kept, so a
//! caller reads which parameter and value were wrong.

/// The kernel's error as candle's [`candle_core::Error::Wrapped`].
pub(crate) fn kernel_error(e: fused_rmsprop::Error) -> candle_core::Error {
    candle_core::Error::wrap(e)
}
