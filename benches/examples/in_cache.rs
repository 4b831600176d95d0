//! The kernel's arithmetic alone: one tensor small enough to stay in cache
//! (64K elements by default, or the first argument), stepped on one thread
//! with the best SIMD path, as `bf16`, `f16` and `f32` parameters in turn
//! (the plain variant, or the second argument's: `momentum`,
//! `centered+momentum+wd`; rounding to nearest). Prints each type's fastest time
//! per step over 40 rounds of 200 steps: on a shared host the neighbours
//! only ever add time, so the minimum is the kernel's own cost, and the
//! three types are timed in alternation so that a slow minute weighs on
//! all of them.
//!
//! ```text
//! cargo run --release -p fused-rmsprop-benches --example in_cache [-- 1048576 [momentum]]
//! ```

use std::time::Instant;

use fused_rmsprop::{Execution, Isa, Kernel, RmsProp, Threads, bf16, f16};
use fused_rmsprop_benches::workload::{Buffers, HalfBuffers, HalfMode, Variant};

const ROUNDS: usize = 40;
const STEPS_PER_ROUND: usize = 200;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 16);
    let variant = std::env::args()
        .nth(2)
        .map(|name| {
            Variant::parse(&name).expect("a variant: plain, momentum, centered+momentum+wd")
        })
        .unwrap_or(Variant::Plain);
    let one_thread = Execution {
        kernel: Kernel::Simd(Isa::detect()),
        threads: Threads::Single,
        ..Default::default()
    };
    let optimizer = |hyper| {
        RmsProp::new(hyper)
            .and_then(|opt| opt.with_execution(one_thread))
            .expect("valid")
    };
    let half_hyper = HalfMode::Nearest.apply(variant.hyper());
    let (half, wide) = (optimizer(half_hyper), optimizer(variant.hyper()));
    let mut b16 = HalfBuffers::<bf16>::new(n, &half_hyper);
    let mut f16s = HalfBuffers::<f16>::new(n, &half_hyper);
    let mut f32s = Buffers::new(n, variant);
    let names = ["bf16", "f16", "f32"];
    let mut steps: [Box<dyn FnMut()>; 3] = [
        Box::new(|| b16.step(&half)),
        Box::new(|| f16s.step(&half)),
        Box::new(|| f32s.step(&wide)),
    ];
    let mut best = [f64::MAX; 3];
    for _ in 0..ROUNDS {
        for (step, best) in steps.iter_mut().zip(&mut best) {
            let start = Instant::now();
            (0..STEPS_PER_ROUND).for_each(|_| step());
            *best = best.min(start.elapsed().as_secs_f64() / STEPS_PER_ROUND as f64);
        }
    }
    println!(
        "{n} elements, {}, 1 thread, {}:",
        variant.name(),
        Isa::detect().name()
    );
    for (name, best) in names.iter().zip(best) {
        println!(
            "  {name:>4}: {:8.2} µs per step, {:.2} G elements/s",
            best * 1e6,
            n as f64 / best / 1e9
        );
    }
}
