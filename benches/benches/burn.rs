//! Burn: `ModuleOptimizer::step` with the fused optimizer against burn's own
//! `RmsProp`, same process, same Flex backend, on one 1M and one 16M
//! parameter and on a transformer-sized module of 150 parameters.
//!
//! `FUSED_RMSPROP_BENCH_SIZES` (e.g. `4096,65536`) replaces the single-tensor
//! sizes, and leaves the model out, to keep a smoke run short.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fused_rmsprop_benches::burn_case::{self, Case};
use fused_rmsprop_benches::workload::{Variant, bench_cases};

fn module_optimizer_step(c: &mut Criterion) {
    for (label, sizes) in bench_cases() {
        let n: usize = sizes.iter().sum();
        for variant in [Variant::Plain, Variant::Momentum] {
            let mut group = c.benchmark_group(format!("burn/{label}/{}", variant.name()));
            group.throughput(Throughput::Bytes((n * variant.bytes_per_element()) as u64));
            if n >= 1 << 24 {
                group.sample_size(10);
            }
            let lr = variant.hyper().lr;
            let mut builtin = Case::new(&sizes, burn_case::burn_rmsprop(variant), lr);
            group.bench_function(BenchmarkId::from_parameter("burn RmsProp"), |b| {
                b.iter(|| builtin.step())
            });
            drop(builtin);
            let mut fused = Case::new(&sizes, burn_case::fused_rmsprop(variant).init(), lr);
            group.bench_function(BenchmarkId::from_parameter("FusedRmsProp"), |b| {
                b.iter(|| fused.step())
            });
            group.finish();
        }
    }
}

criterion_group!(benches, module_optimizer_step);
criterion_main!(benches);
