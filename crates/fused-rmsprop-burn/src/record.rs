//! Loading an optimizer checkpoint without letting a malformed file panic.

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::optim::{ModuleOptimizer, OptimizerRecord};
use burn::store::RecordError;
use burn::tensor::Bytes;

/// Why [`load_record`] refused a checkpoint.
#[derive(Debug)]
#[non_exhaustive]
pub enum RecordLoadError {
    /// The bytes are not a burn optimizer record (burn's own error).
    Record(RecordError),
    /// The record parses but burn's loader cannot use it (a tensor without a
    /// parameter id, a state of rank above 8): burn 0.22's
    /// `ModuleOptimizer::load_record` panics on these; the message is burn's.
    Malformed(String),
}

impl std::fmt::Display for RecordLoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordLoadError::Record(err) => write!(f, "not an optimizer record: {err:?}"),
            RecordLoadError::Malformed(why) => write!(f, "malformed optimizer record: {why}"),
        }
    }
}

impl std::error::Error for RecordLoadError {}

/// Loads the checkpoint `bytes` (written by `ModuleOptimizer::into_bytes`,
/// of burn's `RmsProp` or of this crate's optimizer) into `optim`; on any
/// error `optim` is left exactly as it was.
///
/// Use it instead of `ModuleOptimizer::from_bytes` for files you do not
/// trust: burn 0.22.1's loader returns an error for bytes that do not parse,
/// but panics on some that do (found by this project's fuzzing). This
/// function loads into a clone of `optim` and turns such a panic into
/// [`RecordLoadError::Malformed`] (burn's panic message is still printed by
/// the panic hook).
///
/// ```
/// use burn::tensor::Bytes;
/// use fused_rmsprop_burn::{FusedRmsPropConfig, load_record};
///
/// let mut optim = FusedRmsPropConfig::new().init();
/// let saved = optim.into_bytes().unwrap();
/// load_record(&mut optim, saved).unwrap();
/// assert!(load_record(&mut optim, Bytes::from_bytes_vec(b"junk".to_vec())).is_err());
/// ```
pub fn load_record(optim: &mut ModuleOptimizer, bytes: Bytes) -> Result<(), RecordLoadError> {
    let record = OptimizerRecord::from_bytes(bytes).map_err(RecordLoadError::Record)?;
    let candidate = optim.clone();
    let loaded =
        catch_unwind(AssertUnwindSafe(|| candidate.load_record(record))).map_err(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "burn's loader panicked".to_string());
            RecordLoadError::Malformed(why)
        })?;
    *optim = loaded;
    Ok(())
}
