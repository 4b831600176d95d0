//! Spreading one step over threads: every tensor of the call is cut into
//! pieces and the pieces are packed into tasks of equal size in bytes, so a
//! model of 150 tensors pays one dispatch to the pool, small tensors share a
//! task, and a large tensor is shared by every thread.
//!
//! Each element is still updated by the same kernel with the same constants,
//! so the threaded path is bit-identical to a single-threaded one: threads
//! change who computes an element, never how.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use rayon::prelude::*;

use crate::execution::ResolvedKernel;
use crate::step::{Chunk, Coefficients};
use crate::{Linger, Param, Threads};

mod helpers;

/// Below this many elements in one call, [`Threads::Auto`] stays on the
/// calling thread: a smaller call is over before a second thread would have
/// paid for joining it. The bound holds with the helpers lingering between
/// calls (module `helpers`); a call that must wake a sleeping thread pays
/// several times more to split. The `threshold` group of `cargo bench -p
/// fused-rmsprop-benches --bench kernel` (one thread against two, warm
/// buffers, by size) and `cargo run --release -p fused-rmsprop-benches
/// --example many_tensors -- kernel-each 100` (a model of 2,000 tensors
/// called one at a time) measure it.
///
/// Not part of the API: public for the benchmarks, which split their
/// skeleton loops the same way.
#[doc(hidden)]
pub const PARALLEL_MIN_ELEMENTS: usize = 1 << 14;

/// Task sizes under [`Threads::Auto`] are rounded to this many elements, so
/// a piece boundary inside a tensor never splits a cache line or a SIMD
/// register of the one before.
///
/// Not part of the API: public, with [`TASKS_PER_THREAD`], so that code
/// measured against the step (the benchmarks' bandwidth skeleton) cuts its
/// work the same way.
///
/// ```
/// assert_eq!(fused_rmsprop::TASK_ALIGN_ELEMENTS % 16, 0); // whole AVX-512 registers of f32
/// ```
#[doc(hidden)]
pub const TASK_ALIGN_ELEMENTS: usize = 64;

/// Tasks per pool thread under [`Threads::Auto`]: more than one lets a
/// thread that finishes early (the other core busy on a shared machine, a
/// helper that started late) take the rest, instead of holding up the end
/// of the call. Not part of the API (see [`TASK_ALIGN_ELEMENTS`]).
///
/// ```
/// // A call on a pool of two threads is cut into this many tasks.
/// let tasks = 2 * fused_rmsprop::TASKS_PER_THREAD;
/// assert!(tasks > 2);
/// ```
#[doc(hidden)]
pub const TASKS_PER_THREAD: usize = 4;

/// Runs `chunks` with `kernel` on the threads `threads` asks for, helpers
/// lingering after as `linger` says.
pub(crate) fn run<P: Param>(
    kernel: ResolvedKernel,
    (threads, linger): (Threads, Linger),
    c: &Coefficients<P::State>,
    mut chunks: Vec<Chunk<'_, P>>,
) {
    let total: usize = chunks.iter().map(Chunk::len).sum();
    let (tasks, align) = match threads {
        Threads::Single => (1, 1),
        // Forced counts cut anywhere, so tests reach every split point.
        Threads::Exactly(n) => (n.get(), 1),
        Threads::Auto => {
            let pool = rayon::current_num_threads();
            if total < PARALLEL_MIN_ELEMENTS || pool == 1 {
                (1, 1)
            } else {
                (pool * TASKS_PER_THREAD, TASK_ALIGN_ELEMENTS)
            }
        }
    };
    if tasks == 1 {
        for chunk in chunks {
            kernel.run(c, chunk);
        }
        return;
    }
    run_tasks(linger, pack(&mut chunks, total, tasks, align), |task| {
        for chunk in task.into_chunks() {
            kernel.run(c, chunk);
        }
    });
}

/// Runs `work` on every task, spread over rayon's global pool the way the
/// step spreads its own tasks.
///
/// On a pool thread this is rayon's work stealing. From any other thread
/// (a training loop's), the calling thread and `pool - 1` helpers take tasks
/// from one queue: handing the call to the pool alone would leave the caller
/// asleep until the last task ends and then wake it, two trips through the
/// OS scheduler per call, which a framework that steps one tensor at a time
/// pays once per tensor. The helpers stay awake for `linger` after a call,
/// waiting for the next one (running any other rayon work meanwhile), so
/// that back-to-back calls do not wake them each time either (module
/// `helpers`; [`Linger::Off`] leaves them to rayon). A second thread calling
/// while the first one's call runs uses rayon's own scheduling instead.
///
/// A panic in `work` reaches the caller once every other task has run (the
/// first panic, when several tasks panic), whichever path the call took.
///
/// Not part of the API: public so that code measured against the step (the
/// benchmarks' bandwidth skeleton) and the candle adapter's dispatch of
/// many variables split their work the same way.
///
/// ```
/// use fused_rmsprop::Linger;
/// let mut sums = vec![0u64; 4];
/// let tasks: Vec<(usize, &mut u64)> = sums.iter_mut().enumerate().collect();
/// fused_rmsprop::run_tasks(Linger::ProcessDefault, tasks, |(i, sum)| {
///     *sum = (i as u64 * 1000..(i as u64 + 1) * 1000).sum()
/// });
/// assert_eq!(sums.iter().sum::<u64>(), (0..4000).sum());
/// ```
#[doc(hidden)]
pub fn run_tasks<T: Send>(linger: Linger, tasks: Vec<T>, work: impl Fn(T) + Sync + Send) {
    if rayon::current_thread_index().is_some() {
        let first_panic = Mutex::new(None);
        tasks.into_par_iter().for_each(|task| {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| work(task))) {
                let mut first = first_panic.lock().unwrap_or_else(PoisonError::into_inner);
                first.get_or_insert(payload);
            }
        });
        rethrow(
            first_panic
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner),
        );
        return;
    }
    // No task (a call of empty tensors) needs no helper.
    let helpers = rayon::current_num_threads()
        .min(tasks.len())
        .saturating_sub(1);
    let queue = Mutex::new(tasks.into_iter());
    // A panic in one task must not hide the others' work behind a poisoned
    // lock: the queue holds no invariant a panic could break.
    let next = || queue.lock().unwrap_or_else(PoisonError::into_inner).next();
    let drain = || {
        while let Some(task) = next() {
            work(task);
        }
    };
    if helpers == 0 {
        rethrow(drain_catching(&drain));
        return;
    }
    let linger = linger.duration();
    if !linger.is_zero() && helpers::run(helpers, linger, &drain) {
        return;
    }
    let helping = Helping::default();
    rayon::in_place_scope(|scope| {
        for _ in 0..helpers {
            scope.spawn(|_| {
                let _working = helping.start();
                // The scope carries a helper's panic to the caller.
                rethrow(drain_catching(&drain));
            });
        }
        let own_panic = drain_catching(&drain);
        helping.wait_for_busy_helpers();
        rethrow(own_panic);
    });
}

/// Runs `drain` until the queue is empty, also past tasks that panic (a
/// panic ends its own task only), and returns the first panic.
fn drain_catching(drain: &(dyn Fn() + Sync)) -> Option<Box<dyn Any + Send>> {
    let mut first = None;
    while let Err(payload) = catch_unwind(AssertUnwindSafe(drain)) {
        first.get_or_insert(payload);
    }
    first
}

/// Resumes unwinding with `panic`, if there is one.
fn rethrow(panic: Option<Box<dyn Any + Send>>) {
    if let Some(payload) = panic {
        resume_unwind(payload);
    }
}

/// Returns once `done` holds: spinning first, then yielding the core, in
/// case the thread it waits for was preempted. For waits on another thread
/// that is already working and ends within one task.
fn wait_until(done: impl Fn() -> bool) {
    const SPINS_BEFORE_YIELDING: u32 = 1 << 10;
    let mut spins = 0u32;
    while !done() {
        if spins < SPINS_BEFORE_YIELDING {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// How many helpers of one [`run_tasks`] call on rayon's own path (another
/// thread's call holds the lingering helpers) have started and finished.
///
/// The scope that ends the call waits for every helper anyway, but by
/// putting the calling thread to sleep and having the last helper wake it:
/// two trips through the OS scheduler per call. A helper that is already
/// working ends within one task, so the caller waits for it awake instead;
/// one that has not started (its thread still waking) may take much longer,
/// and the caller leaves it to the scope. The waiting is only about speed:
/// the scope still waits for every helper, whatever this sees.
#[derive(Default)]
struct Helping {
    started: AtomicUsize,
    finished: AtomicUsize,
}

impl Helping {
    /// Counts a helper as started; dropping the guard counts it as finished,
    /// also when its task panics (the scope then rethrows the panic; a
    /// helper that never counted as finished would keep the caller waiting
    /// here forever).
    fn start(&self) -> Working<'_> {
        self.started.fetch_add(1, Ordering::Relaxed);
        Working(self)
    }

    /// Returns once no helper is between start and finish.
    fn wait_for_busy_helpers(&self) {
        wait_until(|| {
            self.finished.load(Ordering::Acquire) >= self.started.load(Ordering::Relaxed)
        });
    }
}

/// A helper at work; see [`Helping::start`].
struct Working<'a>(&'a Helping);

impl Drop for Working<'_> {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Release);
    }
}

/// One task of a call: a run of whole chunks, after the end of a chunk cut
/// at the task's start and before the beginning of one cut at its end.
///
/// The whole chunks stay in the call's one vector (a task borrows its run
/// of it), so packing allocates a few descriptors per task, not per chunk:
/// a vector per task, grown chunk by chunk, was faulted in again at every
/// step of a call of 100,000 tensors.
struct Task<'s, 'a, P: Param> {
    head: Option<Chunk<'a, P>>,
    whole: &'s mut [Chunk<'a, P>],
    tail: Option<Chunk<'a, P>>,
}

impl<'a, P: Param> Task<'_, 'a, P> {
    /// The task's chunks in order, moved out of the call's vector.
    fn into_chunks(self) -> impl Iterator<Item = Chunk<'a, P>> {
        let whole = self.whole.iter_mut().map(Chunk::take);
        self.head.into_iter().chain(whole).chain(self.tail)
    }
}

/// Packs `chunks` (`total` elements) into at most `tasks` tasks of about
/// equal element count (a multiple of `align`), cutting chunks where a task
/// fills up.
fn pack<'s, 'a, P: Param>(
    chunks: &'s mut [Chunk<'a, P>],
    total: usize,
    tasks: usize,
    align: usize,
) -> Vec<Task<'s, 'a, P>> {
    let per_task = total.div_ceil(tasks).next_multiple_of(align).max(1);
    let mut packed = Vec::with_capacity(tasks + 1);
    let mut rest = chunks;
    // What is left of the last chunk cut, for the next task.
    let mut carried: Option<Chunk<'a, P>> = None;
    while carried.is_some() || !rest.is_empty() {
        let mut room = per_task;
        let mut head = None;
        if let Some(piece) = carried.take() {
            if piece.len() > room {
                // A chunk larger than a task: this task is one piece of it.
                let (piece, left) = piece.split_at(room);
                packed.push(Task {
                    head: Some(piece),
                    whole: &mut [],
                    tail: None,
                });
                carried = Some(left);
                continue;
            }
            room -= piece.len();
            head = Some(piece);
        }
        let mut fits = 0;
        for chunk in rest.iter() {
            if chunk.len() > room {
                break;
            }
            room -= chunk.len();
            fits += 1;
        }
        let (whole, after) = std::mem::take(&mut rest).split_at_mut(fits);
        rest = after;
        let mut tail = None;
        if room > 0
            && let Some((next, after)) = std::mem::take(&mut rest).split_first_mut()
        {
            let (piece, left) = next.take().split_at(room);
            tail = Some(piece);
            carried = Some(left);
            rest = after;
        }
        packed.push(Task { head, whole, tail });
    }
    packed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hyper, StateSlices};

    fn lengths(tasks: Vec<Task<'_, '_, f32>>) -> Vec<Vec<usize>> {
        tasks
            .into_iter()
            .map(|t| t.into_chunks().map(|c| c.len()).collect())
            .collect()
    }

    #[test]
    fn pack_cuts_large_tensors_and_groups_small_ones_by_elements() {
        let c = Coefficients::<f32>::new(&Hyper::default(), 0.01, false).unwrap();
        let sizes = [300, 10, 10, 20];
        let mut buffers: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = sizes
            .iter()
            .map(|&n| (vec![0.0; n], vec![0.0; n], vec![0.0; n]))
            .collect();
        let mut chunks: Vec<_> = buffers
            .iter_mut()
            .enumerate()
            .map(|(i, (p, g, v))| Chunk::new(i, &c, p, None, g, StateSlices::new(v), 0).unwrap())
            .collect();
        let tasks = pack(&mut chunks, 340, 3, 64);
        // 340 / 3 rounds up to 114, then to a multiple of 64: 128 per task.
        assert_eq!(
            lengths(tasks),
            vec![vec![128], vec![128], vec![44, 10, 10, 20]]
        );
    }

    #[test]
    fn pack_of_nothing_is_no_task() {
        assert!(pack::<f32>(&mut [], 0, 4, 1).is_empty());
    }

    /// Over many mixes of sizes (empty chunks, chunks larger than several
    /// tasks, chunks that end exactly where a task does), the tasks hold
    /// every element once, in order, with each piece's offset in its tensor,
    /// and none holds more than its share.
    #[test]
    fn pack_keeps_every_element_once_in_order() {
        let c = Coefficients::<f32>::new(&Hyper::default(), 0.01, false).unwrap();
        let mut seed = 7u64;
        let mut next = |below: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % below
        };
        for case in 0..500 {
            let count = 1 + next(12);
            let sizes: Vec<usize> = (0..count)
                .map(|_| match next(4) {
                    0 => 0,
                    1 => 1 + next(8),
                    _ => next(300),
                })
                .collect();
            let (tasks, align) = (1 + next(9), [1, 4, 64][next(3)]);
            let total: usize = sizes.iter().sum();
            // Each element holds its index in the call, each state element
            // its index in its tensor.
            let mut start = 0;
            let mut buffers: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = sizes
                .iter()
                .map(|&n| {
                    start += n;
                    let p = ((start - n)..start).map(|i| i as f32).collect();
                    (p, vec![0.0; n], (0..n).map(|i| i as f32).collect())
                })
                .collect();
            let mut chunks: Vec<_> = buffers
                .iter_mut()
                .enumerate()
                .map(|(i, (p, g, v))| {
                    Chunk::new(i, &c, p, None, g, StateSlices::new(v), 0).unwrap()
                })
                .collect();
            let per_task = total.div_ceil(tasks).next_multiple_of(align).max(1);
            let packed = pack(&mut chunks, total, tasks, align);
            assert!(packed.len() <= tasks + 1, "case {case}: {sizes:?}");
            let mut seen = Vec::new();
            for task in packed {
                let mut held = 0;
                for chunk in task.into_chunks() {
                    held += chunk.len();
                    seen.extend_from_slice(chunk.params);
                    if let Some(&v) = chunk.square_avg.first() {
                        assert_eq!(v as u64, chunk.offset, "case {case}: offset");
                    }
                }
                assert!(held <= per_task, "case {case}: {held} > {per_task}");
            }
            let expected: Vec<f32> = (0..total).map(|i| i as f32).collect();
            assert_eq!(seen, expected, "case {case}: {sizes:?}, {tasks} tasks");
        }
    }

    /// Held by the tests whose calls crowd the pool (many threads, sleeping
    /// or panicking tasks), so that the test of the helpers joining through
    /// the slot does not run beside them: it checks scheduling, which other
    /// tests' threads on a 2-core machine can starve.
    static CROWDING: Mutex<()> = Mutex::new(());

    fn crowding() -> std::sync::MutexGuard<'static, ()> {
        CROWDING.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `calls` calls of `tasks` tasks, each counting its runs and
    /// calling `inside` with its index; asserts every task ran once.
    fn every_task_once(calls: usize, tasks: usize, inside: impl Fn(usize) + Sync) {
        every_task_once_lingering(Linger::ProcessDefault, calls, tasks, inside);
    }

    /// [`every_task_once`] with helpers lingering as `linger` says.
    fn every_task_once_lingering(
        linger: Linger,
        calls: usize,
        tasks: usize,
        inside: impl Fn(usize) + Sync,
    ) {
        use std::sync::atomic::AtomicU32;
        for _ in 0..calls {
            let runs: Vec<AtomicU32> = (0..tasks).map(|_| AtomicU32::new(0)).collect();
            run_tasks(linger, runs.iter().enumerate().collect(), |(i, r)| {
                r.fetch_add(1, Ordering::Relaxed);
                inside(i);
            });
            assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 1));
        }
    }

    /// Every task runs once, from a thread outside the pool (the calling
    /// thread works beside the helpers, which stay between calls) and from
    /// a pool thread.
    #[test]
    fn run_tasks_runs_every_task_once() {
        every_task_once(200, 37, |_| {});
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| every_task_once(20, 37, |_| {}));
    }

    /// Calls from several threads at once (one holds the lingering helpers,
    /// the others take rayon's own path) and calls nested in a task (from
    /// the calling thread, whose own call holds the helpers, or from a pool
    /// thread) each run every task once.
    #[test]
    fn concurrent_and_nested_calls_run_every_task_once() {
        let _crowding = crowding();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| every_task_once(100, 16, |_| {}));
            }
            s.spawn(|| every_task_once(20, 8, |_| every_task_once(2, 8, |_| {})));
        });
    }

    /// With a pool of two or more threads, the lingering helpers take
    /// tasks of calls from outside the pool: a task runs on a thread other
    /// than the caller's, and helpers joined calls through the slot (not
    /// only through rayon's own path).
    #[test]
    fn helpers_take_tasks_of_calls_from_outside_the_pool() {
        if rayon::current_num_threads() < 2 {
            return;
        }
        let _crowding = crowding();
        let caller = std::thread::current().id();
        let helped = helpers::HELPED.load(Ordering::Relaxed);
        let elsewhere = std::sync::atomic::AtomicBool::new(false);
        every_task_once(50, 8, |_| {
            std::thread::sleep(std::time::Duration::from_micros(200));
            if std::thread::current().id() != caller {
                elsewhere.store(true, Ordering::Relaxed);
            }
        });
        assert!(elsewhere.load(Ordering::Relaxed));
        assert!(helpers::HELPED.load(Ordering::Relaxed) > helped);
    }

    /// With lingering off, a call from outside the pool still runs every
    /// task once and still spreads them over the pool (rayon's own path),
    /// as does a call with a linger time of its own.
    #[test]
    fn every_linger_setting_runs_every_task_once_on_the_pool() {
        let _crowding = crowding();
        for linger in [
            Linger::Off,
            Linger::For(std::time::Duration::from_micros(50)),
        ] {
            let caller = std::thread::current().id();
            let elsewhere = std::sync::atomic::AtomicBool::new(false);
            every_task_once_lingering(linger, 50, 8, |_| {
                std::thread::sleep(std::time::Duration::from_micros(200));
                if std::thread::current().id() != caller {
                    elsewhere.store(true, Ordering::Relaxed);
                }
            });
            let pool = rayon::current_num_threads();
            assert!(pool < 2 || elsewhere.load(Ordering::Relaxed), "{linger:?}");
        }
    }

    /// A task that panics makes the call panic, whichever thread ran it
    /// (the helper's guard counts it as finished, so the caller does not
    /// wait for it forever), and the other tasks still run.
    #[test]
    fn a_panicking_task_is_rethrown_not_a_hang() {
        // On a thread outside the pool: the caller and the global pool's
        // helpers share the tasks, so over the eight cases both kinds of
        // thread meet the failing task. A hang fails after a minute.
        use std::sync::mpsc::RecvTimeoutError;
        let _crowding = crowding();
        let (finished, wait) = std::sync::mpsc::channel();
        let checks = std::thread::spawn(move || {
            each_task_failing_in_turn();
            // From a pool thread: rayon's own path.
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(3)
                .build()
                .unwrap();
            pool.install(each_task_failing_in_turn);
            finished.send(()).unwrap();
        });
        match wait.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(()) => {}
            Err(RecvTimeoutError::Timeout) => panic!("run_tasks hung after a task panicked"),
            // A check failed: its own message says which.
            Err(RecvTimeoutError::Disconnected) => {
                std::panic::resume_unwind(checks.join().expect_err("the checks panicked"))
            }
        }
    }

    /// Each task in turn panics, and with it the task four places on:
    /// the call panics and the six others run.
    fn each_task_failing_in_turn() {
        use std::sync::atomic::AtomicU32;
        for bad in 0..8 {
            let done = AtomicU32::new(0);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_tasks(Linger::ProcessDefault, (0..8).collect(), |i: u32| {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    assert!(i != bad && i != (bad + 4) % 8, "task {i} fails");
                    done.fetch_add(1, Ordering::Relaxed);
                });
            }));
            assert!(
                result.is_err(),
                "the panic of task {bad} reached the caller"
            );
            assert_eq!(done.load(Ordering::Relaxed), 6, "task {bad} failing");
        }
    }
}
