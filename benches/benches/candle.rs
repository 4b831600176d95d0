//! Candle: `Optimizer::step` of the fused optimizer against the same update
//! in candle tensor ops, candle-nn's `AdamW` and `SGD`, same process, on one
//! 1M and one 16M `Var` and on 150 `Var`s of transformer sizes.
//!
//! `FUSED_RMSPROP_BENCH_SIZES` (e.g. `4096,65536`) replaces the single-tensor
//! sizes, and leaves the model out, to keep a smoke run short.
//!
//! candle-optimisers' own `RMSprop` is not here: its latest release (0.10.2)
//! depends on candle 0.10, which cannot share this workspace's candle 0.11;
//! `TensorOpsRmsProp` is the same formulation (state in `Var`s, `Var::set`).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fused_rmsprop_benches::candle_case::{self, Baseline};
use fused_rmsprop_benches::workload::{Variant, bench_cases};

fn optimizer_step(c: &mut Criterion) {
    use candle_nn::Optimizer;
    for (label, sizes) in bench_cases() {
        let n: usize = sizes.iter().sum();
        for variant in [Variant::Plain, Variant::Momentum] {
            let mut group = c.benchmark_group(format!("candle/{label}/{}", variant.name()));
            group.throughput(Throughput::Bytes((n * variant.bytes_per_element()) as u64));
            if n >= 1 << 24 {
                group.sample_size(10);
            }
            for baseline in Baseline::ALL {
                let (vars, grads) = candle_case::vars_and_grads(&sizes);
                let mut step = baseline.build(vars, variant);
                group.bench_function(BenchmarkId::from_parameter(baseline.name()), |b| {
                    b.iter(|| step(&grads))
                });
            }
            let (vars, grads) = candle_case::vars_and_grads(&sizes);
            let mut fused = candle_case::fused(vars, variant);
            group.bench_function(BenchmarkId::from_parameter("fused RmsProp"), |b| {
                b.iter(|| fused.step(&grads).expect("a step"))
            });
            group.finish();
        }
    }
}

criterion_group!(benches, optimizer_step);
criterion_main!(benches);
