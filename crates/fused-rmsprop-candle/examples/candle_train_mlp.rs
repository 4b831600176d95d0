//! Trains an Iris classifier with candle, four times from the same initial
//! weights: with `fused_rmsprop_candle::RmsProp` (full and 8-bit state:
//! the 256 x 256 hidden weight's state in 8 bits), with the same RMSprop
//! written in candle tensor ops (`TensorOpsRmsProp`, what candle-optimisers'
//! `RMSprop` does), and with candle-nn's own `AdamW`. Prints each epoch's
//! loss and accuracy and the time spent in `optim.step` in every run.
//!
//! ```text
//! cargo run --release -p fused-rmsprop-candle --example candle_train_mlp [-- --dtype bf16|f16|f32]
//! ```
//!
//! The swap is one line: `AdamW::new(vars, ParamsAdamW::default())?` (or
//! candle-optimisers' `RMSprop::new(..)`) becomes
//! `RmsProp::new(vars, ParamsRmsProp::default())?`. With `--dtype bf16` or
//! `f16` the `Var`s are 16-bit and stepped in place with `f32` state.

#[path = "common/iris.rs"]
mod iris;

use std::io::Write;
use std::time::Duration;

use candle_core::DType;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use fused_rmsprop_candle::{ParamsRmsProp, RmsProp, StateFormat, TensorOpsRmsProp};
use iris::{Classifier, Iris, initial_weights, train_epoch, valid_accuracy};

const EPOCHS: usize = 10;
const BATCH: usize = 16;
const HIDDEN: usize = 256;
const LEARNING_RATE: f64 = 5e-4;

/// The dtype `--dtype NAME` asks for (f32 without the flag).
fn dtype_from_args() -> candle_core::Result<DType> {
    let args: Vec<String> = std::env::args().collect();
    match args
        .iter()
        .position(|a| a == "--dtype")
        .map(|i| args.get(i + 1))
    {
        None => Ok(DType::F32),
        Some(Some(name)) if name == "f32" => Ok(DType::F32),
        Some(Some(name)) if name == "bf16" => Ok(DType::BF16),
        Some(Some(name)) if name == "f16" => Ok(DType::F16),
        Some(other) => Err(candle_core::Error::msg(format!(
            "--dtype takes bf16, f16 or f32, not {other:?}"
        ))),
    }
}

fn main() -> candle_core::Result<()> {
    let dtype = dtype_from_args()?;
    let iris = Iris::load(dtype)?;
    let weights = initial_weights(HIDDEN, dtype)?;
    println!(
        "Iris: 120 training and 30 validation flowers; classifier 4-{HIDDEN}-{HIDDEN}-3 in {dtype:?}"
    );

    let rmsprop = ParamsRmsProp {
        lr: LEARNING_RATE,
        ..Default::default()
    };
    let eight_bit = ParamsRmsProp {
        state_format: StateFormat::BLOCKWISE8,
        ..rmsprop
    };
    let adamw = ParamsAdamW {
        lr: LEARNING_RATE,
        ..Default::default()
    };
    // One untimed epoch with each first, so no timed run pays the process's
    // first-use costs (thread pool start, page faults).
    println!("\nwarm-up: one epoch with each optimizer");
    for run in 0..2 {
        let epochs = if run == 0 { 1 } else { EPOCHS };
        let mut times = Vec::new();
        for name in [
            "fused-rmsprop",
            "fused-rmsprop, 8-bit state",
            "tensor-op RMSprop",
            "candle-nn AdamW",
        ] {
            if run == 1 {
                println!("\n== {name} ==");
            }
            let model = Classifier::from_weights(&weights)?;
            let vars = model.vars.clone();
            let started = std::time::Instant::now();
            let spent = match name {
                // The swap: this line was `AdamW::new(vars, ParamsAdamW::default())?`.
                "fused-rmsprop" => train(&model, RmsProp::new(vars, rmsprop)?, &iris, epochs)?,
                "fused-rmsprop, 8-bit state" => {
                    train(&model, RmsProp::new(vars, eight_bit)?, &iris, epochs)?
                }
                "tensor-op RMSprop" => {
                    train(&model, TensorOpsRmsProp::new(vars, rmsprop)?, &iris, epochs)?
                }
                _ => train(&model, AdamW::new(vars, adamw.clone())?, &iris, epochs)?,
            };
            if run == 1 {
                println!(
                    "{name}: {:.1} ms in optim.step, {:.1} ms training in all",
                    spent.as_secs_f64() * 1e3,
                    started.elapsed().as_secs_f64() * 1e3
                );
            }
            times.push(spent);
        }
        if run == 1 {
            let ratio = |i: usize| times[i].as_secs_f64() / times[0].as_secs_f64();
            println!(
                "\noptimizer time over fused-rmsprop's: 8-bit state {:.1}x, tensor-op RMSprop {:.1}x, candle-nn AdamW {:.1}x",
                ratio(1),
                ratio(2),
                ratio(3)
            );
        }
    }
    Ok(())
}

/// Trains `model` for `epochs` epochs with `optim`, printing a progress bar
/// and each epoch's mean training loss and validation accuracy; returns the
/// time spent in `optim.step`.
fn train(
    model: &Classifier,
    mut optim: impl Optimizer,
    iris: &Iris,
    epochs: usize,
) -> candle_core::Result<Duration> {
    let mut spent = Duration::ZERO;
    for epoch in 1..=epochs {
        let progress = |done: usize, batches: usize| {
            let done = done * 30 / batches;
            print!(
                "\repoch {epoch:2} [{}{}]",
                "#".repeat(done),
                ".".repeat(30 - done)
            );
            let _ = std::io::stdout().flush();
        };
        let (loss, step_time) = train_epoch(model, &mut optim, iris, BATCH, progress)?;
        spent += step_time;
        println!(
            "  train loss {loss:.4}, valid accuracy {:.1}%",
            valid_accuracy(model, iris)?
        );
    }
    Ok(spent)
}
