//! The bare kernel against the bandwidth limits of the same run.
//!
//! For each size (4K, 64K, 1M, 16M, 64M `f32` elements) and variant (plain;
//! momentum; centered + momentum + weight decay), criterion reports GB/s for:
//! the scalar specification, the SIMD kernel with each instruction set on
//! one thread, the default path (`auto`: widest SIMD, threads above the
//! threshold), a plain Rust loop, and the skeleton loop (the same loads and
//! stores, trivial arithmetic) on one and on all threads. A STREAM triad per
//! size gives the customary bandwidth figure. The `threshold` group times one
//! thread against two around `PARALLEL_MIN_ELEMENTS`.
//!
//! `FUSED_RMSPROP_BENCH_SIZES=1048576,16777216` limits the sizes.

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fused_rmsprop::{Execution, Isa, Kernel, NonFinite, RmsProp, Threads};
use fused_rmsprop_benches::workload::{
    Buffers, From16, HalfBuffers, HalfMode, Variant, size_label,
};
use fused_rmsprop_benches::{naive, roofline};

const DEFAULT_SIZES: [usize; 5] = [1 << 12, 1 << 16, 1 << 20, 1 << 24, 1 << 26];

fn sizes() -> Vec<usize> {
    match std::env::var("FUSED_RMSPROP_BENCH_SIZES") {
        Ok(list) => list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect(),
        Err(_) => DEFAULT_SIZES.to_vec(),
    }
}

fn kernel(c: &mut Criterion) {
    let pool = rayon::current_num_threads();
    for n in sizes() {
        for variant in Variant::ALL {
            let mut group =
                c.benchmark_group(format!("kernel/{}/{}", size_label(n), variant.name()));
            group.throughput(Throughput::Bytes((n * variant.bytes_per_element()) as u64));
            let mut buffers = Buffers::new(n, variant);
            let opt = RmsProp::new(variant.hyper()).unwrap();

            let mut paths = vec![(
                "scalar".to_string(),
                Execution {
                    kernel: Kernel::Scalar,
                    threads: Threads::Single,
                    ..Default::default()
                },
            )];
            for isa in Isa::available() {
                paths.push((
                    format!("simd-{}", isa.name()),
                    Execution {
                        kernel: Kernel::Simd(isa),
                        threads: Threads::Single,
                        ..Default::default()
                    },
                ));
            }
            paths.push(("auto".to_string(), Execution::default()));
            for (name, execution) in paths {
                let opt = opt.with_execution(execution).unwrap();
                group.bench_function(name, |b| {
                    b.iter(|| {
                        buffers.step(&opt);
                        black_box(&buffers.params);
                    })
                });
            }
            let hyper = variant.hyper();
            group.bench_function("plain-loop", |b| {
                b.iter(|| naive::step(&hyper, black_box(&mut buffers)))
            });
            for (form, prefetch) in [("", false), ("-prefetch", true)] {
                group.bench_function(format!("skeleton{form}-1t"), |b| {
                    b.iter(|| roofline::skeleton(black_box(&mut buffers), 1, prefetch))
                });
                group.bench_function(format!("skeleton{form}-{pool}t"), |b| {
                    b.iter(|| roofline::skeleton(black_box(&mut buffers), pool, prefetch))
                });
            }
            group.finish();
        }

        let mut group = c.benchmark_group(format!("triad/{}", size_label(n)));
        group.throughput(Throughput::Bytes((n * 12) as u64));
        let (mut a, b_, c_) = (vec![0.0f32; n], vec![1.0f32; n], vec![2.0f32; n]);
        for threads in [1, pool] {
            group.bench_function(BenchmarkId::new("threads", threads), |b| {
                b.iter(|| roofline::triad(black_box(&mut a), &b_, &c_, threads))
            });
        }
        group.finish();
    }
}

/// One thread against two tasks on the pool, around the size where the
/// default path starts to use threads.
fn threshold(c: &mut Criterion) {
    let variant = Variant::Plain;
    for n in [1 << 12, 1 << 13, 1 << 14, 1 << 15, 1 << 16, 1 << 18] {
        let mut group = c.benchmark_group(format!("threshold/{}", size_label(n)));
        group.throughput(Throughput::Bytes((n * variant.bytes_per_element()) as u64));
        let mut buffers = Buffers::new(n, variant);
        let opt = RmsProp::new(variant.hyper()).unwrap();
        let two = Threads::Exactly(NonZeroUsize::new(2).unwrap());
        for (name, threads) in [("single", Threads::Single), ("two", two)] {
            let opt = opt
                .with_execution(Execution {
                    kernel: Kernel::Auto,
                    threads,
                    ..Default::default()
                })
                .unwrap();
            group.bench_function(name, |b| {
                b.iter(|| {
                    buffers.step(&opt);
                })
            });
        }
        group.finish();
    }
}

/// The cost of the non-finite gradient check: the default step
/// (`Propagate`, no check) against `Skip` (a read of the gradients before
/// the fused pass), all-finite gradients, default path.
fn non_finite(c: &mut Criterion) {
    let variant = Variant::Plain;
    let sizes = std::env::var("FUSED_RMSPROP_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1 << 16, 1 << 20, 1 << 24]);
    for n in sizes {
        let mut group = c.benchmark_group(format!("non_finite/{}", size_label(n)));
        group.throughput(Throughput::Bytes((n * variant.bytes_per_element()) as u64));
        let mut buffers = Buffers::new(n, variant);
        for policy in [NonFinite::Propagate, NonFinite::Skip] {
            let opt = RmsProp::new(variant.hyper().with_non_finite(policy)).unwrap();
            group.bench_function(format!("{policy:?}"), |b| b.iter(|| buffers.step(&opt)));
        }
        group.finish();
    }
}

/// 16-bit parameters with `f32` state (plain variant): `bf16` and `f16`,
/// each rounding mode, the scalar spec and the widest SIMD on one thread and
/// the default path, against the `f32` step and the 16-bit skeleton (same
/// loads and stores) of the same number of elements.
fn half(c: &mut Criterion) {
    let sizes = std::env::var("FUSED_RMSPROP_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1 << 16, 1 << 20, 1 << 24]);
    for n in sizes {
        half_of::<fused_rmsprop::bf16>(c, "bf16", n);
        half_of::<fused_rmsprop::f16>(c, "f16", n);
    }
}

fn half_of<H>(c: &mut Criterion, name: &str, n: usize)
where
    H: fused_rmsprop::Param<State = f32> + From16,
{
    let variant = Variant::Plain;
    let pool = rayon::current_num_threads();
    for mode in HalfMode::ALL {
        let hyper = mode.apply(variant.hyper());
        let mut group = c.benchmark_group(format!("half/{}/{name}/{}", size_label(n), mode.name()));
        group.throughput(Throughput::Bytes(
            (n * mode.bytes_per_element(variant)) as u64,
        ));
        let mut buffers = HalfBuffers::<H>::new(n, &hyper);
        let opt = RmsProp::new(hyper).unwrap();
        let best = Isa::detect();
        for (path, execution) in [
            (
                "scalar",
                Execution {
                    kernel: Kernel::Scalar,
                    threads: Threads::Single,
                    ..Default::default()
                },
            ),
            (
                &format!("simd-{}", best.name()),
                Execution {
                    kernel: Kernel::Simd(best),
                    threads: Threads::Single,
                    ..Default::default()
                },
            ),
            ("auto", Execution::default()),
        ] {
            let opt = opt.with_execution(execution).unwrap();
            group.bench_function(path, |b| b.iter(|| buffers.step(&opt)));
        }
        let mut wide = Buffers::new(n, variant);
        let wide_opt = RmsProp::new(variant.hyper()).unwrap();
        group.bench_function("f32-step-auto", |b| b.iter(|| wide.step(&wide_opt)));
        let mut params = vec![0x3F80u16; n];
        let grads = vec![0x3C00u16; n];
        let mut square_avg = vec![0.01f32; n];
        let mut master = (mode == HalfMode::Master).then(|| vec![0.5f32; n]);
        for threads in [1, pool] {
            for prefetch in [false, true] {
                let name = format!(
                    "skeleton-{threads}t{}",
                    if prefetch { "-prefetch" } else { "" }
                );
                group.bench_function(name, |b| {
                    b.iter(|| {
                        roofline::skeleton16(
                            black_box(&mut params),
                            &grads,
                            &mut square_avg,
                            master.as_deref_mut(),
                            threads,
                            prefetch,
                        )
                    })
                });
            }
        }
        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
}

criterion_group! {
    name = benches;
    config = config();
    targets = kernel, threshold, non_finite, half
}
criterion_main!(benches);
