//! How long the pool's helpers stay awake after a threaded call: the one
//! process-wide policy of the crate, made visible and settable.
//!
//! A threaded call made from outside rayon's pool (a training loop's
//! thread) has `pool - 1` rayon jobs join it and then stay, polling for the
//! next call, for the linger time after it (module `parallel::helpers`).
//! A framework that steps one tensor at a time calls the kernel many times
//! per step with its own bookkeeping in between; without lingering, each
//! call would wake a sleeping thread (a futex call, an interrupt to the
//! other core, the scheduler's latency). The cost: after the last call, the
//! helpers keep up to `pool - 1` cores busy for the linger time. They run
//! any other rayon work meanwhile, so a program that uses rayon itself loses
//! no thread to them, but a program that counts CPU time sees it.
//!
//! The time comes from, first to last: [`Execution::linger`] of the
//! optimizer making the call ([`Linger::For`] or [`Linger::Off`]); else the
//! process default set with [`set_default_linger`]; else the environment
//! variable `FUSED_RMSPROP_LINGER_US` (microseconds, `0` for off), read once;
//! else [`DEFAULT_LINGER`]. `cargo run --release -p fused-rmsprop-benches
//! --bin compare` with `FUSED_RMSPROP_LINGER_US=0` and without measures what
//! it changes, in the optimizer rows and in the whole training steps.
//!
//! [`Execution::linger`]: crate::Execution::linger

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The built-in linger time: longer than the bookkeeping a framework does
/// between two parameters (microseconds), shorter than anything a user
/// would notice as a busy core.
///
/// ```
/// assert_eq!(fused_rmsprop::DEFAULT_LINGER.as_millis(), 1);
/// ```
pub const DEFAULT_LINGER: Duration = Duration::from_millis(1);

/// The environment variable read (once) for the process default:
/// microseconds, `0` for off. A value that does not parse is ignored.
///
/// ```
/// assert_eq!(fused_rmsprop::LINGER_ENV, "FUSED_RMSPROP_LINGER_US");
/// ```
pub const LINGER_ENV: &str = "FUSED_RMSPROP_LINGER_US";

/// How long the pool's helpers stay after a threaded call from outside the
/// pool (see the crate docs, "The paths").
///
/// ```
/// use std::time::Duration;
/// use fused_rmsprop::{Execution, Hyper, Linger, RmsProp};
/// let quiet = Execution { linger: Linger::Off, ..Execution::default() };
/// let opt = RmsProp::new(Hyper::default())?.with_execution(quiet)?;
/// assert_eq!(opt.execution().linger.duration(), Duration::ZERO);
/// # Ok::<(), fused_rmsprop::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Linger {
    /// The process default: [`set_default_linger`]'s value, else
    /// `FUSED_RMSPROP_LINGER_US`, else [`DEFAULT_LINGER`].
    #[default]
    ProcessDefault,
    /// No helper stays: each threaded call hands its helpers to rayon,
    /// which wakes them for the call and lets them sleep again.
    Off,
    /// Helpers stay this long after the call.
    For(Duration),
}

impl Linger {
    /// The time this setting stands for now.
    ///
    /// ```
    /// use std::time::Duration;
    /// use fused_rmsprop::Linger;
    /// assert_eq!(Linger::For(Duration::from_micros(5)).duration(), Duration::from_micros(5));
    /// assert_eq!(Linger::Off.duration(), Duration::ZERO);
    /// ```
    pub fn duration(self) -> Duration {
        match self {
            Linger::ProcessDefault => default_linger(),
            Linger::Off => Duration::ZERO,
            Linger::For(time) => time,
        }
    }
}

/// Not read yet: the environment decides at the first read.
const UNSET: u64 = u64::MAX;

/// The process default in nanoseconds, or [`UNSET`].
static PROCESS_DEFAULT_NS: AtomicU64 = AtomicU64::new(UNSET);

/// Sets the process default linger time (what [`Linger::ProcessDefault`]
/// means from now on, in every thread); `Duration::ZERO` turns lingering
/// off. Overrides `FUSED_RMSPROP_LINGER_US`.
///
/// ```
/// use std::time::Duration;
/// fused_rmsprop::set_default_linger(Duration::from_micros(200));
/// assert_eq!(fused_rmsprop::default_linger(), Duration::from_micros(200));
/// # fused_rmsprop::set_default_linger(fused_rmsprop::DEFAULT_LINGER);
/// ```
pub fn set_default_linger(time: Duration) {
    PROCESS_DEFAULT_NS.store(nanos(time), Ordering::Relaxed);
}

/// The process default linger time: what [`set_default_linger`] set, else
/// `FUSED_RMSPROP_LINGER_US` (read at the first call), else
/// [`DEFAULT_LINGER`].
///
/// ```
/// println!("helpers stay {:?} after a call", fused_rmsprop::default_linger());
/// ```
pub fn default_linger() -> Duration {
    let mut ns = PROCESS_DEFAULT_NS.load(Ordering::Relaxed);
    if ns == UNSET {
        let from_env = std::env::var(LINGER_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(DEFAULT_LINGER, Duration::from_micros);
        // A concurrent `set_default_linger` wins over the environment.
        ns = match PROCESS_DEFAULT_NS.compare_exchange(
            UNSET,
            nanos(from_env),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => nanos(from_env),
            Err(set) => set,
        };
    }
    Duration::from_nanos(ns)
}

/// `time` in nanoseconds, saturating below [`UNSET`].
fn nanos(time: Duration) -> u64 {
    u64::try_from(time.as_nanos())
        .unwrap_or(UNSET - 1)
        .min(UNSET - 1)
}
