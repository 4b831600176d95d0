//! `compare`: the fused step against its limits and against plain code, in
//! one table from one run.
//!
//! ```text
//! cargo run --release -p fused-rmsprop-benches --bin compare [-- OPTIONS]
//!   --quick            1M only, plain variant, no model (well under 30 s)
//!   --no-model         skip the 150-parameter transformer-sized model
//!   --no-train         skip the whole-training-step rows
//!   --no-clip          skip the rows with gradient clipping
//!   --no-8bit          skip the rows with 8-bit optimizer state
//!   --sizes 1M,16M     tensor sizes (K and M suffixes: 2^10, 2^20)
//!   --threads N        threads for the threaded rows (default: the pool's)
//!   --variant NAME     plain | momentum | centered+momentum+wd (default: all
//!                      for the single tensors, plain for the models)
//!   --json             one JSON object per row on stdout instead of the table
//!   --peers FILE       add rows of other ecosystems (JSON lines, as written by
//!                      benches/python/peers.py) to the table and the plot
//!   --plot PATH        draw elements/s against size for the first variant (SVG)
//!   --half LIST        16-bit types of the framework rows (bf16, f16; default
//!                      bf16; `none` skips them). The kernel rows always
//!                      cover both.
//! ```
//!
//! Rows, for each size and variant: the kernel's paths (`framework` kernel:
//! SIMD on one thread, the scalar spec, SIMD on all threads, against a plain
//! Rust loop); Candle's fused optimizer against the same update in candle
//! tensor ops, candle-nn's `AdamW` and `SGD` (those two in the plain
//! variant only: they do not change with it); Burn's fused optimizer against
//! Burn's `RmsProp` through `ModuleOptimizer` (the scalar spec only up to
//! 1M elements: its speed per element does not change with size). Then the
//! 150-tensor transformer-sized model in both frameworks, Burn's two
//! optimizers again at the largest size and on that model with the module
//! held during the step as burn-train's `Learner` holds it (every parameter
//! shared, so the fused optimizer writes each into a buffer it keeps for it
//! instead of in place; the limit of those rows is the out-of-place
//! skeleton, which reads the parameters from one buffer and writes them to
//! another, and `in_place_fraction` gives the rate against the in-place
//! skeleton too), each followed by the bare kernel's out-of-place step
//! called once per tensor (what a one-parameter-at-a-time interface costs
//! out of place), and whole training steps
//! (forward, backward, optimizer) of a small MLP, built-in vs fused.
//!
//! Then the cost per tensor on the 150- and the 2,000-tensor model: each
//! framework's fused step, the bare kernel called once per tensor, burn's
//! batched route, and burn's floor (an optimizer that returns its inputs)
//! alone and under the kernel's traffic, each against the bare kernel's
//! `step_many` on buffers of the same sizes, printed in µs per tensor.
//!
//! Then gradient clipping, at the largest size and on the 150-tensor
//! model: burn's `RmsProp` with burn's clipping (by value, by each
//! parameter's norm) against the fused optimizer clipping inside the step,
//! and candle's tensor-op RMSprop with the clipping in candle ops (by value,
//! by the norm of every variable) against the fused one; the limit is the
//! skeleton, after a read of the gradients for a norm (24 bytes per element).
//!
//! Then 16-bit parameters: the kernel's bf16 and f16 step (each rounding
//! mode) against the f32 step of the same size and the 16-bit skeleton, and
//! each framework's fused optimizer on a bf16 (and, with `--half`, f16) model
//! (the largest size and the 150-tensor model, plain variant) against its
//! built-in optimizers on the same 16-bit model.
//!
//! Then 8-bit state (`StateFormat::Blockwise8`) at the largest size (`f32`
//! and `bf16`) and on the 150-tensor model (`f32`; its tensors below 4,096
//! elements keep full state): the kernel's steps with 8-bit state against
//! the same steps with full state, and the 8-bit skeleton (14.03 bytes per
//! element for `f32` parameters, 8.03 for `bf16`) as the limit.
//!
//! Each row: median ms per step (baseline and fused interleaved, after
//! warm-up), the speedup, the fused GB/s (bytes the variant must stream),
//! `roofline_fraction`: the fused GB/s over the GB/s of the skeleton loop
//! (the kernel's loads and stores, trivial arithmetic) on the same threads,
//! and for RMSprop baselines the largest parameter difference after all the
//! timed steps. Every row times the fused step and the skeleton (the
//! faster of its two forms, with and without software prefetch)
//! interleaved with each other, apart from the baseline (a baseline that
//! allocates hundreds of megabytes per step slows whatever runs right after
//! it, and after a one-thread baseline the pool's helpers are asleep), so
//! the GB/s and roofline come from that pair and the fused ms and speedup
//! from the interleaving with the baseline. The 16-bit kernel rows, whose
//! baseline is the threaded f32 step, time all four together.

mod blockwise8_rows;
mod burn_rows;
mod candle_rows;
mod clipping_rows;
mod half_rows;
mod kernel_rows;
mod limit;
mod options;
mod overhead_rows;
mod print;
mod row;
mod training_rows;

use fused_rmsprop_benches::report;
use fused_rmsprop_benches::workload::{self, Variant, size_label};
use indicatif::ProgressBar;

use crate::burn_rows::{Stepping, burn_rows, burn_rows_stepped};
use crate::candle_rows::candle_rows;
use crate::clipping_rows::{Format, clipping_rows};
use crate::half_rows::{burn_rounding_rows, half_framework_rows};
use crate::kernel_rows::{half_kernel_rows, kernel_rows};
use crate::options::{Options, parse_args};
use crate::overhead_rows::{out_of_place_rows, overhead_rows, print_overheads};
use crate::print::{print_peers, print_table};
use crate::row::Row;
use crate::training_rows::training_rows;

/// The CPU's model name, from /proc/cpuinfo where there is one.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn main() {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("compare: {e}");
            std::process::exit(2);
        }
    };
    let cpu = cpu_name();
    let progress = indicatif::ProgressBar::new(progress_units(&options)).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}")
            .expect("a valid template"),
    );
    let mut rows = Vec::new();
    single_tensor_rows(&options, &progress, &mut rows);
    if options.model {
        model_rows(&options, &progress, &mut rows);
        many_tensor_rows(&options, &progress, &mut rows);
    }
    if !options.half.is_empty() {
        half_model_rows(&options, &progress, &mut rows);
    }
    if options.model {
        held_rows(&options, &progress, &mut rows);
    }
    if options.clipping {
        clipped_rows(&options, &progress, &mut rows);
    }
    if options.blockwise8 {
        let largest = options.sizes.iter().copied().max().unwrap_or(1 << 24);
        progress.set_message(format!("8-bit state, {}", size_label(largest)));
        blockwise8_rows::blockwise8_rows(largest, options.model, options.threads, &mut rows);
        progress.inc(1);
    }
    if options.training {
        // One variant is enough to show what the swap buys a whole step.
        let variant = options.variants[0];
        progress.set_message(format!("whole training steps, {}", variant.name()));
        training_rows(variant, &mut rows);
        progress.inc(1);
    }
    progress.finish_and_clear();
    let rows: Vec<report::Row> = rows.iter().map(|r| r.report(&cpu)).collect();
    if let Err(e) = write_out(&options, &cpu, rows) {
        eprintln!("compare: {e}");
        std::process::exit(2);
    }
}

/// One unit of the progress bar per group of rows `main` runs.
fn progress_units(options: &Options) -> u64 {
    let model_units = if options.model {
        options.model_variants.len()
    } else {
        0
    };
    let units = options.sizes.len() * options.variants.len()
        + model_units
        + usize::from(options.training)
        + usize::from(options.clipping)
        + usize::from(options.blockwise8)
        + 2 * usize::from(options.model)
        + options.half.len();
    units as u64
}

/// For each size and variant: the kernel's paths (and, plain, its 16-bit
/// steps), candle's and burn's optimizers on one tensor.
fn single_tensor_rows(options: &Options, progress: &ProgressBar, rows: &mut Vec<Row>) {
    for &n in &options.sizes {
        for &variant in &options.variants {
            progress.set_message(format!("{} {}", size_label(n), variant.name()));
            kernel_rows(n, variant, options.threads, rows);
            if variant == Variant::Plain {
                half_kernel_rows(n, options.threads, rows);
            }
            candle_rows(size_label(n), &[n], variant, options.threads, rows);
            burn_rows(size_label(n), &[n], variant, options.threads, rows);
            progress.inc(1);
        }
    }
}

/// The 150-tensor transformer-sized model in both frameworks, against the
/// skeleton on one tensor of the model's total size.
fn model_rows(options: &Options, progress: &ProgressBar, rows: &mut Vec<Row>) {
    let sizes = workload::transformer_sizes();
    let case = format!("model-{}", sizes.len());
    for &variant in &options.model_variants {
        progress.set_message(format!(
            "the {}-tensor model, {}",
            sizes.len(),
            variant.name()
        ));
        candle_rows(case.clone(), &sizes, variant, options.threads, rows);
        burn_rows(case.clone(), &sizes, variant, options.threads, rows);
        progress.inc(1);
    }
}

/// The 2,000-tensor model in both frameworks, then the cost per tensor of
/// every route on both models.
fn many_tensor_rows(options: &Options, progress: &ProgressBar, rows: &mut Vec<Row>) {
    let many = workload::many_tensor_sizes();
    let variant = options.variants[0];
    progress.set_message(format!("the {}-tensor model", many.len()));
    let label = format!("model-{}", many.len());
    candle_rows(label.clone(), &many, variant, options.threads, rows);
    burn_rows(label.clone(), &many, variant, options.threads, rows);
    let transformer = workload::transformer_sizes();
    for (label, sizes) in [
        (format!("model-{}", transformer.len()), transformer),
        (label, many),
    ] {
        overhead_rows(label, &sizes, variant, options.threads, rows);
    }
    progress.inc(1);
}

/// Both frameworks on 16-bit models (the largest size and the 150-tensor
/// model) against their own optimizers on the same models; for `bf16`,
/// burn's fused optimizer with stochastic rounding and with master weights
/// at the largest size.
fn half_model_rows(options: &Options, progress: &ProgressBar, rows: &mut Vec<Row>) {
    let largest = options.sizes.iter().copied().max().unwrap_or(1 << 24);
    let model = workload::transformer_sizes();
    for &dtype in &options.half {
        progress.set_message(format!("16-bit models, {dtype:?}"));
        half_framework_rows(
            size_label(largest),
            &[largest],
            dtype,
            options.threads,
            rows,
        );
        if options.model {
            let case = format!("model-{}", model.len());
            half_framework_rows(case, &model, dtype, options.threads, rows);
        }
        if dtype == candle_core::DType::BF16 {
            burn_rounding_rows(size_label(largest), &[largest], options.threads, rows);
        }
        progress.inc(1);
    }
}

/// burn with the module held as burn-train's `Learner` holds it (every
/// parameter arrives shared): the largest size and the 150-tensor model,
/// plain; each followed by the bare kernel's out-of-place step on the same
/// tensors.
fn held_rows(options: &Options, progress: &ProgressBar, rows: &mut Vec<Row>) {
    let variant = options.variants[0];
    progress.set_message("burn, the module held as burn-train's Learner holds it");
    let largest = options.sizes.iter().copied().max().unwrap_or(1 << 24);
    let model = workload::transformer_sizes();
    for (case, sizes) in [
        (size_label(largest), vec![largest]),
        (format!("model-{}", model.len()), model),
    ] {
        burn_rows_stepped(
            case.clone(),
            &sizes,
            variant,
            options.threads,
            Stepping::Held,
            rows,
        );
        out_of_place_rows(case, &sizes, variant, options.threads, rows);
    }
    progress.inc(1);
}

/// Gradient clipping in both frameworks, plain: the largest size, and the
/// 150-tensor model when the model rows run, in `f32`; the largest size in
/// `bf16` too when the 16-bit rows include it.
fn clipped_rows(options: &Options, progress: &ProgressBar, rows: &mut Vec<Row>) {
    progress.set_message("gradient clipping");
    let largest = options.sizes.iter().copied().max().unwrap_or(1 << 24);
    let threads = options.threads;
    clipping_rows(size_label(largest), &[largest], Format::F32, threads, rows);
    if options.model {
        let model = workload::transformer_sizes();
        let case = format!("model-{}", model.len());
        clipping_rows(case, &model, Format::F32, threads, rows);
    }
    if options.half.contains(&candle_core::DType::BF16) {
        let case = format!("{} bf16", size_label(largest));
        clipping_rows(case, &[largest], Format::Bf16, threads, rows);
    }
    progress.inc(1);
}

/// Prints the rows (a table, or JSON lines), adds the peers' rows and
/// draws the plot, as the options say.
fn write_out(options: &Options, cpu: &str, mut rows: Vec<report::Row>) -> Result<(), String> {
    if options.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).expect("a row serializes"));
        }
    } else {
        print_table(cpu, &rows);
        print_overheads(&rows);
    }
    if let Some(path) = &options.peers {
        let peers = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| report::read_rows(&text))
            .map_err(|e| format!("--peers {path}: {e}"))?;
        if !options.json {
            print_peers(&rows, &peers);
        }
        rows.extend(peers);
    }
    if let Some(path) = &options.plot {
        let variant = options.variants[0].name();
        report::plot(&rows, variant, path)?;
        eprintln!("compare: plot of {variant} written to {path}");
    }
    Ok(())
}
