//! Trains an Iris classifier with candle, three times from the same initial
//! weights: with `fused_rmsprop_candle::RmsProp`, with the same RMSprop
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

use std::io::Write;
use std::time::{Duration, Instant};

use candle_core::{D, DType, Device, Module, Tensor, Var};
use candle_nn::{AdamW, Linear, Optimizer, ParamsAdamW};
use fused_rmsprop_candle::{ParamsRmsProp, RmsProp, TensorOpsRmsProp};

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

/// Iris as tensors: features standardized per column, split into 120
/// training and 30 validation flowers in a fixed mixed order.
struct Iris {
    train: (Tensor, Tensor),
    valid: (Tensor, Tensor),
}

impl Iris {
    fn load(dtype: DType) -> candle_core::Result<Self> {
        let flowers = irisdata::IRIS_DATA;
        let features: Vec<f32> = flowers
            .iter()
            .flat_map(|f| [f.sepal_length, f.sepal_width, f.petal_length, f.petal_width])
            .collect();
        let labels: Vec<u32> = flowers.iter().map(|f| f.species as u32).collect();
        let x = Tensor::from_vec(features, (flowers.len(), 4), &Device::Cpu)?;
        let centered = x.broadcast_sub(&x.mean_keepdim(0)?)?;
        let x = centered.broadcast_div(&centered.sqr()?.mean_keepdim(0)?.sqrt()?)?;
        let y = Tensor::new(labels, &Device::Cpu)?;
        // The data set is sorted by species: 7i mod 150 interleaves them.
        let order: Vec<u32> = (0..150u32).map(|i| (7 * i) % 150).collect();
        let (train, valid): (Vec<u32>, Vec<u32>) = order
            .iter()
            .enumerate()
            .map(|(i, &k)| (i, k))
            .partition::<Vec<_>, _>(|(i, _)| i % 5 != 4)
            .map_pair(|v| v.into_iter().map(|(_, k)| k).collect());
        let pick = |rows: Vec<u32>| -> candle_core::Result<(Tensor, Tensor)> {
            let rows = Tensor::new(rows, &Device::Cpu)?;
            Ok((
                x.index_select(&rows, 0)?.to_dtype(dtype)?,
                y.index_select(&rows, 0)?,
            ))
        };
        Ok(Self {
            train: pick(train)?,
            valid: pick(valid)?,
        })
    }
}

/// `(a, b).map_pair(f)` = `(f(a), f(b))`.
trait MapPair<T> {
    fn map_pair<U>(self, f: impl Fn(T) -> U) -> (U, U);
}

impl<T> MapPair<T> for (T, T) {
    fn map_pair<U>(self, f: impl Fn(T) -> U) -> (U, U) {
        (f(self.0), f(self.1))
    }
}

/// Two hidden layers of ReLU units, three logits.
struct Classifier {
    layers: Vec<Linear>,
    vars: Vec<Var>,
}

impl Classifier {
    /// A classifier whose `Var`s are fresh copies of `weights` (so every
    /// run starts from the same values).
    fn from_weights(weights: &[Tensor]) -> candle_core::Result<Self> {
        let vars = weights
            .iter()
            .map(|w| Var::from_tensor(&w.copy()?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let layers = vars
            .chunks(2)
            .map(|wb| Linear::new(wb[0].as_tensor().clone(), Some(wb[1].as_tensor().clone())))
            .collect();
        Ok(Self { layers, vars })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i + 1 < self.layers.len() {
                h = h.relu()?;
            }
        }
        Ok(h)
    }
}

/// Kaiming-uniform weights and zero biases for 4-HIDDEN-HIDDEN-3.
fn initial_weights(dtype: DType) -> candle_core::Result<Vec<Tensor>> {
    let mut weights = Vec::new();
    for (input, output) in [(4, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, 3)] {
        let bound = (1.0 / input as f64).sqrt();
        let w = Tensor::rand(-bound, bound, (output, input), &Device::Cpu)?;
        weights.push(w.to_dtype(dtype)?);
        weights.push(Tensor::zeros(output, dtype, &Device::Cpu)?);
    }
    Ok(weights)
}

fn main() -> candle_core::Result<()> {
    let dtype = dtype_from_args()?;
    let iris = Iris::load(dtype)?;
    let weights = initial_weights(dtype)?;
    println!(
        "Iris: 120 training and 30 validation flowers; classifier 4-{HIDDEN}-{HIDDEN}-3 in {dtype:?}"
    );

    let rmsprop = ParamsRmsProp {
        lr: LEARNING_RATE,
        ..Default::default()
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
        for name in ["fused-rmsprop", "tensor-op RMSprop", "candle-nn AdamW"] {
            if run == 1 {
                println!("\n== {name} ==");
            }
            let model = Classifier::from_weights(&weights)?;
            let vars = model.vars.clone();
            let started = std::time::Instant::now();
            let spent = match name {
                // The swap: this line was `AdamW::new(vars, ParamsAdamW::default())?`.
                "fused-rmsprop" => train(&model, RmsProp::new(vars, rmsprop)?, &iris, epochs)?,
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
                "\noptimizer time over fused-rmsprop's: tensor-op RMSprop {:.1}x, candle-nn AdamW {:.1}x",
                ratio(1),
                ratio(2)
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
    let (x, y) = &iris.train;
    let n = x.dim(0)?;
    let batches = n.div_ceil(BATCH);
    let mut spent = Duration::ZERO;
    for epoch in 1..=epochs {
        let mut loss_sum = 0.0;
        for b in 0..batches {
            let (start, len) = (b * BATCH, BATCH.min(n - b * BATCH));
            let logits = model.forward(&x.narrow(0, start, len)?)?;
            let loss = candle_nn::loss::cross_entropy(
                &logits.to_dtype(DType::F32)?,
                &y.narrow(0, start, len)?,
            )?;
            loss_sum += loss.to_scalar::<f32>()?;
            let grads = loss.backward()?;
            let started = Instant::now();
            optim.step(&grads)?;
            spent += started.elapsed();
            let done = (b + 1) * 30 / batches;
            print!(
                "\repoch {epoch:2} [{}{}]",
                "#".repeat(done),
                ".".repeat(30 - done)
            );
            let _ = std::io::stdout().flush();
        }
        let (vx, vy) = &iris.valid;
        let predicted = model.forward(vx)?.argmax(D::Minus1)?;
        let right = predicted
            .eq(vy)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        println!(
            "  train loss {:.4}, valid accuracy {:.1}%",
            loss_sum / batches as f32,
            100.0 * right / vx.dim(0)? as f32
        );
    }
    Ok(spent)
}
