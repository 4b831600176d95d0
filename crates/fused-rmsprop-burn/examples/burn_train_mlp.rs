//! Trains an Iris classifier with a hand-written Burn training loop, with
//! `FusedRmsPropConfig` (per parameter through `ModuleOptimizer`, and the
//! batched route) and with Burn's `RmsPropConfig`, from the same initial
//! model, and prints each epoch's loss and accuracy and the time spent in
//! `optim.step` in each run.
//!
//! ```text
//! cargo run --release -p fused-rmsprop-burn --example burn_train_mlp [-- --dtype bf16|f16|f32]
//! ```
//!
//! The swap is one line: `RmsPropConfig::new().init()` becomes
//! `FusedRmsPropConfig::new().init()`. With `--dtype bf16` or `f16` the
//! model's parameters are 16-bit and the fused optimizer steps them in place
//! with `f32` state (Burn's keeps its state in the parameter's dtype). The
//! batched route (`FusedRmsPropConfig::new().init_batched()`) steps the whole
//! model in one kernel dispatch; its `step` also returns the outcome.

#[path = "common/iris.rs"]
mod iris;

use std::io::Write;
use std::time::{Duration, Instant};

use burn::data::dataloader::batcher::Batcher;
use burn::optim::{GradientsParams, ModuleOptimizer, RmsPropConfig};
use burn::tensor::{DType, Device};
use fused_rmsprop_burn::{BatchedRmsProp, FusedRmsPropConfig};
use iris::{Classifier, IrisBatcher, IrisItem};

const EPOCHS: usize = 10;
const BATCH: usize = 16;
const HIDDEN: usize = 256;
const LEARNING_RATE: f64 = 5e-4;

/// The dtype `--dtype NAME` asks for (f32 without the flag).
fn dtype_from_args() -> Result<DType, String> {
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
        Some(other) => Err(format!("--dtype takes bf16, f16 or f32, not {other:?}")),
    }
}

fn main() {
    let dtype = match dtype_from_args() {
        Ok(dtype) => dtype,
        Err(message) => {
            eprintln!("burn_train_mlp: {message}");
            std::process::exit(2);
        }
    };
    let device = Device::default().autodiff();
    device.seed(0);
    let mut initial = Classifier::new(HIDDEN, &device);
    if dtype != DType::F32 {
        initial = initial.cast(dtype);
    }
    let (train, valid) = iris::train_valid_split();
    println!(
        "Iris: {} training and {} validation flowers; classifier 4-{HIDDEN}-{HIDDEN}-3 in {dtype:?}",
        train.len(),
        valid.len()
    );

    // The swap: the first line was `RmsPropConfig::new().init()`.
    let optimizers = || -> [(&str, Stepper); 3] {
        [
            (
                "fused-rmsprop",
                Stepper::Module(FusedRmsPropConfig::new().init()),
            ),
            (
                "fused-rmsprop batched",
                Stepper::Batched(Box::new(FusedRmsPropConfig::new().init_batched())),
            ),
            ("burn RmsProp", Stepper::Module(RmsPropConfig::new().init())),
        ]
    };
    // One untimed epoch with each first, so neither timed run pays the
    // process's first-use costs (thread pool start, page faults).
    println!("\nwarm-up: one epoch with each optimizer");
    for (_, optim) in optimizers() {
        train_epochs(initial.clone(), optim, 1, &train, &valid, &device);
    }
    let mut times = Vec::new();
    for (name, optim) in optimizers() {
        println!("\n== {name} ==");
        let started = std::time::Instant::now();
        let spent = train_epochs(initial.clone(), optim, EPOCHS, &train, &valid, &device);
        println!(
            "{name}: {:.1} ms in optim.step, {:.1} ms training in all",
            spent.as_secs_f64() * 1e3,
            started.elapsed().as_secs_f64() * 1e3
        );
        times.push(spent);
    }
    println!(
        "\noptimizer time, burn RmsProp / fused-rmsprop: {:.1}x, / batched: {:.1}x (same model, data and steps)",
        times[2].as_secs_f64() / times[0].as_secs_f64(),
        times[2].as_secs_f64() / times[1].as_secs_f64()
    );
}

/// What steps the model: a `ModuleOptimizer`, or the batched route.
enum Stepper {
    Module(ModuleOptimizer),
    Batched(Box<BatchedRmsProp>),
}

impl Stepper {
    fn step(&mut self, lr: f64, model: Classifier, grads: GradientsParams) -> Classifier {
        match self {
            Stepper::Module(optim) => optim.step(lr, model, grads),
            Stepper::Batched(optim) => {
                let (model, outcome) = optim.step(lr, model, grads);
                if let Err(err) = outcome {
                    eprintln!("burn_train_mlp: the step was refused: {err}");
                    std::process::exit(1);
                }
                model
            }
        }
    }
}

/// Trains `model` for `epochs` epochs, printing a progress bar and each
/// epoch's mean training loss and validation accuracy; returns the time
/// spent in `optim.step`.
fn train_epochs(
    mut model: Classifier,
    mut optim: Stepper,
    epochs: usize,
    train: &[IrisItem],
    valid: &[IrisItem],
    device: &Device,
) -> Duration {
    let mut spent = Duration::ZERO;
    let batches = train.len().div_ceil(BATCH);
    for epoch in 1..=epochs {
        let mut loss_sum = 0.0;
        for (b, items) in train.chunks(BATCH).enumerate() {
            let output = model.classify(IrisBatcher.batch(items.to_vec(), device));
            loss_sum += output.loss.clone().cast(DType::F32).into_scalar::<f32>();
            let grads = GradientsParams::from_grads(output.loss.backward(), &model);
            let started = Instant::now();
            model = optim.step(LEARNING_RATE, model, grads);
            spent += started.elapsed();
            let done = (b + 1) * 30 / batches;
            print!(
                "\repoch {epoch:2} [{}{}]",
                "#".repeat(done),
                ".".repeat(30 - done)
            );
            let _ = std::io::stdout().flush();
        }
        let accuracy = accuracy(&model, valid, device);
        println!(
            "  train loss {:.4}, valid accuracy {:.1}%",
            loss_sum / batches as f32,
            accuracy * 100.0
        );
    }
    spent
}

/// The share of `items` the model classifies correctly.
fn accuracy(model: &Classifier, items: &[IrisItem], device: &Device) -> f32 {
    let batch = IrisBatcher.batch(items.to_vec(), device);
    let predicted: Vec<i64> = model
        .forward(batch.inputs)
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .expect("class indices");
    let right = predicted
        .iter()
        .zip(items)
        .filter(|(p, item)| **p == item.label)
        .count();
    right as f32 / items.len() as f32
}
