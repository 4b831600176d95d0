//! The rows `compare` measures, their JSON form, rows of other ecosystems
//! read back from that form (`--peers`), and the throughput plot (`--plot`).

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

/// One row of the comparison, as printed and as written with `--json`: one
/// JSON object per line with these fields.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// `kernel`, `candle`, `burn`; for rows of `--peers`, `pytorch`, `optax`.
    pub framework: String,
    /// What the fused step is compared with (the peer's own optimizer).
    pub baseline: String,
    /// The fused path or optimizer (empty for peers).
    #[serde(default)]
    pub fused: String,
    /// `1M`, `16M`, `model-150`, `train-mlp`...
    pub case: String,
    /// `plain`, `momentum`, `centered+momentum+wd`.
    pub variant: String,
    /// Elements stepped.
    pub elements: usize,
    /// Threads the fused step (or the peer) used.
    pub threads: usize,
    /// Median ns per step of the baseline.
    pub baseline_ns: f64,
    /// Median ns per step of the fused step (`null` for peers).
    pub fused_ns: Option<f64>,
    /// baseline_ns / fused_ns.
    pub speedup: Option<f64>,
    /// Fused GB/s (the bytes the variant must stream).
    pub gbps: Option<f64>,
    /// Fused GB/s over the skeleton loop's, same size, threads and run.
    pub roofline_fraction: Option<f64>,
    /// Largest |parameter difference| after the timed steps, for baselines
    /// that compute the same update.
    pub max_abs_diff: Option<f64>,
    /// The CPU's model name.
    pub cpu: String,
    /// For a row with gradient clipping on: the same two steps without it,
    /// timed in the same run (absent for other rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unclipped: Option<Unclipped>,
    /// For a row of the out-of-place step (burn's optimizer while
    /// burn-train's `Learner` holds the module), whose `roofline_fraction`
    /// is over the out-of-place skeleton: the fused rate over the in-place
    /// skeleton's, same run (absent for other rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_place_fraction: Option<f64>,
}

/// The steps of a clipped row without clipping, timed in the same run, so
/// that what clipping costs and the speedups with and without it are read
/// under the same conditions (a framework's step at 16M can vary by half
/// from one part of a run to another).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Unclipped {
    /// Median ns of the framework's optimizer without clipping, timed in
    /// the same rounds as the row's baseline and fused step.
    pub baseline_ns: f64,
    /// Median ns of the fused step without clipping, in the same rounds.
    pub fused_ns: f64,
    /// The fused step's time with clipping over its time without, both
    /// timed interleaved with the row's limit, apart from the baselines (as
    /// `roofline_fraction` is).
    pub clipped_over_unclipped: f64,
}

impl Row {
    /// Elements per second of the baseline.
    pub fn baseline_rate(&self) -> f64 {
        self.elements as f64 / (self.baseline_ns * 1e-9)
    }

    /// Elements per second of the fused step.
    pub fn fused_rate(&self) -> Option<f64> {
        self.fused_ns.map(|ns| self.elements as f64 / (ns * 1e-9))
    }

    /// Elements per second of the skeleton loop measured with this row.
    pub fn skeleton_rate(&self) -> Option<f64> {
        Some(self.fused_rate()? * self.roofline_fraction?)
    }
}

/// Reads rows written by `compare --json` or `benches/python/peers.py`: one
/// JSON object per line; blank lines are skipped.
pub fn read_rows(text: &str) -> Result<Vec<Row>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// One line of the plot: a name and (elements, elements per second) points.
type Series = (String, Vec<(f64, f64)>);

/// The series of the plot, from single-tensor rows (cases whose elements
/// are one tensor's): the bandwidth limit, the fused kernel, each
/// framework's fused optimizer and built-in baselines, and the peers.
fn series(rows: &[Row], variant: &str) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    let mut add = |name: String, point: (f64, f64)| match out.iter_mut().find(|s| s.0 == name) {
        Some(s) => s.1.push(point),
        None => out.push((name, vec![point])),
    };
    let single = |r: &&Row| {
        r.variant == variant && !r.case.starts_with("model") && !r.case.starts_with("train")
    };
    for r in rows.iter().filter(single) {
        let n = r.elements as f64;
        match r.framework.as_str() {
            "kernel" if r.threads > 1 => {
                if let (Some(fused), Some(limit)) = (r.fused_rate(), r.skeleton_rate()) {
                    add(
                        format!("skeleton loop, the limit ({} threads)", r.threads),
                        (n, limit),
                    );
                    add(format!("fused kernel ({} threads)", r.threads), (n, fused));
                }
            }
            "kernel" => {}
            "burn" | "candle" => {
                add(
                    format!("{}: {}", r.framework, r.baseline),
                    (n, r.baseline_rate()),
                );
                if let (Some(_), Some(fused)) = (r.max_abs_diff, r.fused_rate()) {
                    add(format!("{}: fused", r.framework), (n, fused));
                }
            }
            peer => add(format!("{peer}: {}", r.baseline), (n, r.baseline_rate())),
        }
    }
    for s in &mut out {
        s.1.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// Draws elements per second against tensor size (both log scales) for
/// `variant` into an SVG file at `path`.
pub fn plot(rows: &[Row], variant: &str, path: &str) -> Result<(), String> {
    let series = series(rows, variant);
    let points = series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, 0.0f64, f64::MAX, 0.0f64);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if series.is_empty() || x0 >= x1 {
        return Err("--plot needs single-tensor rows of at least two sizes (see --sizes)".into());
    }
    let cpu = rows.first().map_or("", |r| r.cpu.as_str());
    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    let draw = |e: DrawingAreaErrorKind<_>| format!("plot: {e}");
    root.fill(&WHITE).map_err(draw)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("RMSprop step, {variant}, f32 — {cpu}"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x0 / 1.5..x1 * 1.5).log_scale(),
            (y0 / 40.0..y1 * 2.0).log_scale(),
        )
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("elements per tensor")
        .y_desc("elements per second")
        .x_label_formatter(&|x| format!("{:.0e}", x))
        .y_label_formatter(&|y| format!("{:.0e}", y))
        .draw()
        .map_err(draw)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let style = if name.starts_with("skeleton") {
            BLACK.stroke_width(2)
        } else {
            color.stroke_width(2)
        };
        chart
            .draw_series(LineSeries::new(points.iter().copied(), style))
            .map_err(draw)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, style.filled())))
            .map_err(draw)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(draw)?;
    root.present().map_err(draw)?;
    Ok(())
}
