//! One measured row: a baseline against the fused step, and its JSON form.

use fused_rmsprop_benches::report;
use fused_rmsprop_benches::workload::Variant;

pub(crate) struct Row {
    pub(crate) framework: &'static str,
    pub(crate) baseline: String,
    pub(crate) case: String,
    pub(crate) variant: Variant,
    pub(crate) elements: usize,
    pub(crate) threads: usize,
    pub(crate) baseline_ns: f64,
    pub(crate) fused: String,
    pub(crate) fused_ns: f64,
    /// Fused GB/s and fraction of the skeleton's; `None` for whole
    /// training steps, whose time is not the optimizer's alone.
    pub(crate) gbps: Option<f64>,
    pub(crate) roofline_fraction: Option<f64>,
    /// Largest |difference| of the parameters after the timed steps, for
    /// baselines computing the same update (RMSprop).
    pub(crate) max_abs_diff: Option<f64>,
    /// For a row with clipping: the same steps without it, same run.
    pub(crate) unclipped: Option<report::Unclipped>,
    /// For a row whose limit is the out-of-place skeleton (the module
    /// held): the fused rate over the in-place skeleton's, same run.
    pub(crate) in_place_fraction: Option<f64>,
}

impl Row {
    pub(crate) fn report(&self, cpu: &str) -> report::Row {
        report::Row {
            framework: self.framework.to_string(),
            baseline: self.baseline.clone(),
            fused: self.fused.clone(),
            case: self.case.clone(),
            variant: self.variant.name().to_string(),
            elements: self.elements,
            threads: self.threads,
            baseline_ns: self.baseline_ns,
            fused_ns: Some(self.fused_ns),
            speedup: Some(self.baseline_ns / self.fused_ns),
            gbps: self.gbps,
            roofline_fraction: self.roofline_fraction,
            max_abs_diff: self.max_abs_diff,
            cpu: cpu.to_string(),
            unclipped: self.unclipped.clone(),
            in_place_fraction: self.in_place_fraction,
        }
    }
}

/// The largest |a - b| over two equally long parameter lists.
pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}
