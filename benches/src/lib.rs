//! Shared pieces of the benchmarks and the `compare` tool: the workloads,
//! the bandwidth limits measured in the same run (a skeleton loop with the
//! kernel's loads and stores, a STREAM triad), a plain Rust loop for
//! comparison, and a median timer.

pub mod burn_case;
pub mod candle_case;
pub mod naive;
pub mod report;
pub mod roofline;
pub mod timing;
pub mod workload;
