//! Iris for the candle example and tests: the data as tensors, a
//! 4-hidden-hidden-3 classifier with fixed initial weights, one training
//! epoch and the validation accuracy.

#![allow(dead_code)] // the example and the tests each use their own part

use std::time::{Duration, Instant};

use candle_core::{D, DType, Device, Module, Tensor, Var};
use candle_nn::{Linear, Optimizer};

/// Iris as tensors: features standardized per column, split into 120
/// training and 30 validation flowers in a fixed mixed order.
pub struct Iris {
    pub train: (Tensor, Tensor),
    pub valid: (Tensor, Tensor),
}

impl Iris {
    pub fn load(dtype: DType) -> candle_core::Result<Self> {
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
pub struct Classifier {
    layers: Vec<Linear>,
    pub vars: Vec<Var>,
}

impl Classifier {
    /// A classifier whose `Var`s are fresh copies of `weights` (so every
    /// run starts from the same values).
    pub fn from_weights(weights: &[Tensor]) -> candle_core::Result<Self> {
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

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
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

/// Kaiming-uniform weights and zero biases for 4-`hidden`-`hidden`-3,
/// from a fixed pseudo-random sequence (candle cannot seed its CPU
/// generator), so every run starts from the same values.
pub fn initial_weights(hidden: usize, dtype: DType) -> candle_core::Result<Vec<Tensor>> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut uniform = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 40) as f64 / (1u64 << 24) as f64
    };
    let mut weights = Vec::new();
    for (input, output) in [(4, hidden), (hidden, hidden), (hidden, 3)] {
        let bound = (1.0 / input as f64).sqrt();
        let values: Vec<f32> = (0..output * input)
            .map(|_| ((2.0 * uniform() - 1.0) * bound) as f32)
            .collect();
        let w = Tensor::from_vec(values, (output, input), &Device::Cpu)?;
        weights.push(w.to_dtype(dtype)?);
        weights.push(Tensor::zeros(output, dtype, &Device::Cpu)?);
    }
    Ok(weights)
}

/// One epoch of `model` with `optim` in batches of `batch`: returns the
/// mean training loss and the time spent in `optim.step`; calls
/// `progress(done, batches)` after each batch.
pub fn train_epoch(
    model: &Classifier,
    optim: &mut impl Optimizer,
    iris: &Iris,
    batch: usize,
    mut progress: impl FnMut(usize, usize),
) -> candle_core::Result<(f32, Duration)> {
    let (x, y) = &iris.train;
    let n = x.dim(0)?;
    let batches = n.div_ceil(batch);
    let mut spent = Duration::ZERO;
    let mut loss_sum = 0.0;
    for b in 0..batches {
        let (start, len) = (b * batch, batch.min(n - b * batch));
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
        progress(b + 1, batches);
    }
    Ok((loss_sum / batches as f32, spent))
}

/// The share of validation flowers `model` classifies right, in percent.
pub fn valid_accuracy(model: &Classifier, iris: &Iris) -> candle_core::Result<f32> {
    let (vx, vy) = &iris.valid;
    let predicted = model.forward(vx)?.argmax(D::Minus1)?;
    let right = predicted
        .eq(vy)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(100.0 * right / vx.dim(0)? as f32)
}
