//! Helpers that stay awake between calls.
//!
//! A framework that steps one parameter at a time calls the kernel once per
//! tensor, with its own bookkeeping in between. rayon's idle workers go
//! back to sleep within microseconds, so every call handed to rayon pays
//! for waking one: a futex call, an interrupt to the other core (a VM exit
//! on a virtual machine) and the scheduler's latency, before the helper
//! takes its first task. Here, after a call from outside the pool, `pool - 1`
//! jobs of rayon's global pool stay for the call's linger time
//! ([`Linger`](crate::Linger)), polling one slot where the next call
//! publishes its work, as OpenMP runtimes keep their threads spinning
//! between parallel regions. While they wait they run any other rayon work
//! there is (`rayon::yield_now`), so the rest of the program loses no thread
//! to them; what they cost is a core kept busy for at most the linger time
//! after the last call.
//!
//! `cargo run --release -p fused-rmsprop-benches --example many_tensors --
//! kernel-each 100` (one call per tensor) and `-- burn 100` (through burn's
//! `ModuleOptimizer`) measure what it saves, with `FUSED_RMSPROP_LINGER_US=0`
//! for the other side; `perf stat` counts the context switches it avoids.
//!
//! # Why the pointer in the slot is sound
//!
//! A call's work borrows the caller's stack (the tensors, the queue of
//! tasks), and a helper is a `'static` rayon job, so the slot holds a
//! pointer whose lifetime the compiler cannot check. The protocol that
//! makes it valid whenever a helper dereferences it:
//!
//! 1. The caller publishes a pointer to its [`Call`] with a compare-exchange
//!    (a second caller finds the slot taken and uses rayon's own path).
//! 2. A helper first counts itself in (`inside += 1`), then loads the slot,
//!    and dereferences only what it loaded after counting itself in; it
//!    counts itself out when it no longer uses the call.
//! 3. The caller, before its `Call` is dropped, even when its own work
//!    panics ([`Closing`]'s drop), empties the slot and then waits until
//!    `inside` is 0.
//!
//! All four operations are `SeqCst`, so they fall in one order. If a
//! helper's load (2) comes before the caller's emptying (3), its count came
//! before it too, and the caller sees it and waits; if the load comes after,
//! it reads null (or a later call's pointer, which that call's caller
//! protects the same way) and never reaches the finished call. A helper
//! that panics is caught ([`Call::help`]), counted out, and its panic is
//! rethrown by the caller. The tests in `parallel.rs` run every task once,
//! rethrow panics from helpers, and run calls from several threads at once
//! and nested in one another, so the slot is contended and the fallback
//! taken.

use std::any::Any;
use std::ptr::null_mut;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::{drain_catching, rethrow};

/// One call's work, published in the slot while the caller runs it.
struct Call<'a> {
    /// Takes tasks from the call's queue until it is empty.
    drain: &'a (dyn Fn() + Sync),
    /// The first panic of a helper's task, for the caller to rethrow.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Tells calls apart, so a helper helps each one once even when a later
    /// call's `Call` lies at the same address.
    id: u64,
}

/// Helpers read a `Call` from other threads through `&` (see
/// `help_open_call`'s `SAFETY`), which is sound only if it is `Sync`; this
/// fails to compile if a field ever makes it not.
const _: () = {
    const fn assert_sync<T: Sync>() {}
    assert_sync::<Call<'static>>();
};

impl Call<'_> {
    /// Runs the call's tasks on a helper; a panic is kept for the caller.
    fn help(&self) {
        if let Some(payload) = drain_catching(self.drain) {
            let mut panic = self.panic.lock().unwrap_or_else(PoisonError::into_inner);
            panic.get_or_insert(payload);
        }
    }
}

/// The one slot of the process, and its helpers' bookkeeping.
struct Slot {
    /// The call open for help, or null.
    open: AtomicPtr<Call<'static>>,
    /// Helpers that may be using the call they loaded from `open`.
    inside: AtomicUsize,
    /// Helpers alive (spawned and not yet gone).
    alive: AtomicUsize,
    /// When helpers leave, in nanoseconds since [`now`]'s epoch.
    deadline: AtomicU64,
    /// The last call's id.
    calls: AtomicU64,
}

static SLOT: Slot = Slot {
    open: AtomicPtr::new(null_mut()),
    inside: AtomicUsize::new(0),
    alive: AtomicUsize::new(0),
    deadline: AtomicU64::new(0),
    calls: AtomicU64::new(0),
};

/// Nanoseconds since the first time anyone asked.
fn now() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Runs `drain` on the calling thread (outside rayon's pool) while up to
/// `helpers` lingering helpers run it too, and keeps them for `linger`
/// after. Returns `false`, having run nothing, when another thread's call
/// holds the slot; the caller then takes rayon's own path.
pub(super) fn run(helpers: usize, linger: Duration, drain: &(dyn Fn() + Sync)) -> bool {
    let slot = &SLOT;
    let linger_ns = u64::try_from(linger.as_nanos()).unwrap_or(u64::MAX);
    slot.deadline.store(now().saturating_add(linger_ns), SeqCst);
    slot.spawn_missing(helpers);
    let call = Call {
        drain,
        panic: Mutex::new(None),
        id: slot.calls.fetch_add(1, Relaxed) + 1,
    };
    let published = &call as *const Call<'_> as *mut Call<'static>;
    if slot
        .open
        .compare_exchange(null_mut(), published, SeqCst, SeqCst)
        .is_err()
    {
        return false;
    }
    let own_panic = {
        let _closing = Closing(slot);
        drain_catching(drain)
    };
    let helper_panic = call.panic.into_inner();
    rethrow(own_panic.or(helper_panic.unwrap_or_else(PoisonError::into_inner)));
    true
}

/// Closes the caller's call when dropped: empties the slot, then waits
/// until no helper uses the call (step 3 of the module's protocol). A
/// helper inside finishes within one task, so the caller waits awake. A
/// guard rather than a statement after the caller's work, so that nothing
/// that unwinds out of it can skip the wait.
struct Closing<'s>(&'s Slot);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.0.open.store(null_mut(), SeqCst);
        super::wait_until(|| self.0.inside.load(SeqCst) == 0);
    }
}

impl Slot {
    /// Spawns helpers until `wanted` are alive.
    fn spawn_missing(&'static self, wanted: usize) {
        while self.join(wanted) {
            rayon::spawn(move || self.linger());
        }
    }

    /// Counts one more helper alive if fewer than `wanted` are.
    fn join(&self, wanted: usize) -> bool {
        self.alive
            .fetch_update(SeqCst, SeqCst, |alive| {
                (alive < wanted).then_some(alive + 1)
            })
            .is_ok()
    }

    /// A helper's life: help each call once, run other rayon work while
    /// there is no call, leave once the deadline has passed.
    fn linger(&self) {
        let mut last_helped = 0;
        loop {
            if self.help_open_call(&mut last_helped) {
                continue;
            }
            let now = now();
            if now > self.deadline.load(SeqCst) && !self.stay_after_deadline(now) {
                return;
            }
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::hint::spin_loop();
            }
        }
    }

    /// Leaves, unless a call moved the deadline meanwhile: a call that
    /// refreshed the deadline after this helper read it may have counted
    /// this helper alive and spawned none. Counting out first and reading
    /// the deadline again (both `SeqCst`, as the call's store and count)
    /// means that either the call saw the count drop and spawned a
    /// replacement, or this helper sees the new deadline and stays.
    fn stay_after_deadline(&self, now: u64) -> bool {
        self.alive.fetch_sub(1, SeqCst);
        self.deadline.load(SeqCst) > now && self.join(rayon::current_num_threads() - 1)
    }

    /// Helps the call in the slot if there is one this helper has not
    /// helped yet (steps 2 of the module's protocol); true if it did.
    #[allow(unsafe_code)]
    fn help_open_call(&self, last_helped: &mut u64) -> bool {
        if self.open.load(SeqCst).is_null() {
            return false;
        }
        self.inside.fetch_add(1, SeqCst);
        let open = self.open.load(SeqCst);
        let mut helped = false;
        if !open.is_null() {
            // SAFETY: `open` was loaded after this helper counted itself in
            // `inside`, and it is counted out only below, after its last use
            // of `call`. The caller that published it empties the slot and
            // waits for `inside` to reach 0 before its `Call` is dropped,
            // also when it unwinds (`Closing`), so the `Call` and everything
            // its `drain` borrows outlive this reference (see the module
            // docs). `Call` is only read through `&` and is `Sync`.
            let call = unsafe { &*open };
            if call.id != *last_helped {
                *last_helped = call.id;
                #[cfg(test)]
                HELPED.fetch_add(1, Relaxed);
                call.help();
                helped = true;
            }
        }
        self.inside.fetch_sub(1, SeqCst);
        helped
    }
}

/// Calls a lingering helper has joined, for tests that check the path.
#[cfg(test)]
pub(super) static HELPED: AtomicUsize = AtomicUsize::new(0);
