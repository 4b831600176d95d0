//! Fisher's Iris data (from the `irisdata` crate, compiled in, so nothing is
//! downloaded), a small classifier for it, and what burn-train needs around
//! them: a batcher, the train and inference steps, and a metric logger that
//! keeps the reported values. Shared by the `burn_learner` and
//! `burn_train_mlp` examples and by `tests/learner.rs`.

#![allow(dead_code)] // each user takes a different part

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use burn::data::dataloader::batcher::Batcher;
use burn::module::{Module, ModuleMapper, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use burn_train::logger::MetricLogger;
use burn_train::metric::store::{EpochSummary, MetricsUpdate, Split};
use burn_train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn_train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};

/// One flower: four standardized measurements and its species (0, 1 or 2).
#[derive(Clone, Debug)]
pub struct IrisItem {
    pub features: [f32; 4],
    pub label: i64,
}

/// The 150 flowers, standardized per feature, in a fixed mixed order (the
/// data set is sorted by species), split 120 for training and 30 for
/// validation. No random shuffle: the order is part of what makes a resumed
/// run bit-identical to an uninterrupted one (burn-train's checkpoint does
/// not hold a data loader's shuffle state).
pub fn train_valid_split() -> (Vec<IrisItem>, Vec<IrisItem>) {
    let raw: Vec<[f32; 4]> = irisdata::IRIS_DATA
        .iter()
        .map(|f| [f.sepal_length, f.sepal_width, f.petal_length, f.petal_width])
        .collect();
    let n = raw.len() as f32;
    let mut mean = [0f32; 4];
    let mut std = [0f32; 4];
    for j in 0..4 {
        mean[j] = raw.iter().map(|r| r[j]).sum::<f32>() / n;
        std[j] = (raw.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f32>() / n).sqrt();
    }
    // 7 is coprime to 150, so i -> 7i mod 150 visits every flower once and
    // interleaves the species.
    let items: Vec<IrisItem> = (0..raw.len())
        .map(|i| (7 * i) % raw.len())
        .map(|k| IrisItem {
            features: std::array::from_fn(|j| (raw[k][j] - mean[j]) / std[j]),
            label: irisdata::IRIS_DATA[k].species as i64,
        })
        .collect();
    let (train, valid): (Vec<_>, Vec<_>) =
        items.into_iter().enumerate().partition(|(i, _)| i % 5 != 4);
    let strip = |v: Vec<(usize, IrisItem)>| v.into_iter().map(|(_, item)| item).collect();
    (strip(train), strip(valid))
}

/// A batch of flowers as tensors.
#[derive(Clone, Debug)]
pub struct IrisBatch {
    pub inputs: Tensor<2>,
    pub targets: Tensor<1, Int>,
}

/// Stacks items into an [`IrisBatch`].
#[derive(Clone, Default)]
pub struct IrisBatcher;

impl Batcher<IrisItem, IrisBatch> for IrisBatcher {
    fn batch(&self, items: Vec<IrisItem>, device: &Device) -> IrisBatch {
        let n = items.len();
        let features: Vec<f32> = items.iter().flat_map(|item| item.features).collect();
        let labels: Vec<i64> = items.iter().map(|item| item.label).collect();
        IrisBatch {
            inputs: Tensor::from_data(TensorData::new(features, [n, 4]), device),
            targets: Tensor::from_data(TensorData::new(labels, [n]), device),
        }
    }
}

/// Two hidden layers of `hidden` units and ReLU, three logits.
#[derive(Module, Debug)]
pub struct Classifier {
    pub input: Linear,
    pub hidden: Linear,
    pub output: Linear,
    relu: Relu,
}

impl Classifier {
    pub fn new(hidden: usize, device: &Device) -> Self {
        Self {
            input: LinearConfig::new(4, hidden).init(device),
            hidden: LinearConfig::new(hidden, hidden).init(device),
            output: LinearConfig::new(hidden, 3).init(device),
            relu: Relu::new(),
        }
    }

    /// This classifier with every parameter converted to `dtype` (a bf16 or
    /// f16 model; the batches are converted to it in [`Classifier::forward`]).
    pub fn cast(self, dtype: DType) -> Self {
        self.map(&mut Cast(dtype))
    }

    /// The dtype of the parameters.
    pub fn dtype(&self) -> DType {
        self.input.weight.val().dtype()
    }

    /// The logits of `inputs` (any float dtype: converted to the model's).
    pub fn forward(&self, inputs: Tensor<2>) -> Tensor<2> {
        let dtype = self.dtype();
        let inputs = if inputs.dtype() == dtype {
            inputs
        } else {
            inputs.cast(dtype)
        };
        let x = self.relu.forward(self.input.forward(inputs));
        let x = self.relu.forward(self.hidden.forward(x));
        self.output.forward(x)
    }

    pub fn classify(&self, batch: IrisBatch) -> ClassificationOutput {
        let logits = self.forward(batch.inputs);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, logits, batch.targets)
    }

    /// Every parameter's values, in a fixed order, widened to `f32`.
    pub fn parameter_values(&self) -> Vec<Vec<f32>> {
        [&self.input, &self.hidden, &self.output]
            .into_iter()
            .flat_map(|layer| {
                let bias = layer.bias.as_ref().expect("LinearConfig keeps a bias");
                [layer.weight.val().flatten::<1>(0, 1), bias.val()]
            })
            .map(|t| {
                t.into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .expect("f32 data")
            })
            .collect()
    }
}

/// Converts every float parameter of a module to one dtype.
struct Cast(DType);

impl ModuleMapper for Cast {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        // Cast outside the autodiff graph and track the result as a new
        // leaf, so the cast is not part of every step's graph.
        let dtype = self.0;
        param.map(|t| Tensor::from_inner(t.inner().cast(dtype)).require_grad())
    }
}

impl TrainStep for Classifier {
    type Input = IrisBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: IrisBatch) -> TrainOutput<ClassificationOutput> {
        let output = self.classify(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl InferenceStep for Classifier {
    type Input = IrisBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: IrisBatch) -> ClassificationOutput {
        self.classify(batch)
    }
}

/// The values burn-train reported, by (split, metric name): one list per
/// epoch, one value per batch.
pub type Reported = HashMap<(String, String), Vec<Vec<f64>>>;

/// A [`MetricLogger`] that keeps every reported numeric value where the
/// caller can read it after `launch` (burn-train owns its loggers), and
/// optionally prints each epoch's mean per metric.
#[derive(Clone, Default)]
pub struct EpochLog {
    reported: Arc<Mutex<Reported>>,
    names: HashMap<MetricId, String>,
    print: bool,
}

impl EpochLog {
    /// A logger that prints one line per epoch and split.
    pub fn printing() -> Self {
        Self {
            print: true,
            ..Self::default()
        }
    }

    /// What was reported so far (a copy).
    pub fn reported(&self) -> Reported {
        self.reported.lock().expect("logger lock").clone()
    }

    /// The mean of `metric` over the batches of one epoch (1-based).
    pub fn epoch_mean(&self, split: &str, metric: &str, epoch: usize) -> Option<f64> {
        let reported = self.reported.lock().expect("logger lock");
        let values = reported.get(&(split.to_string(), metric.to_string()))?;
        let values = values.get(epoch - 1)?;
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    }
}

fn split_name(split: &Split) -> String {
    format!("{split:?}").to_lowercase()
}

impl MetricLogger for EpochLog {
    fn log(&mut self, update: MetricsUpdate, epoch: usize, split: &Split) {
        let mut reported = self.reported.lock().expect("logger lock");
        for numeric in update.entries_numeric {
            let Some(value) = numeric.numeric_entry.as_ref().map(NumericEntry::current) else {
                continue;
            };
            let name = self
                .names
                .get(&numeric.entry.metric_id)
                .cloned()
                .unwrap_or_else(|| "unnamed".to_string());
            let epochs = reported.entry((split_name(split), name)).or_default();
            if epochs.len() < epoch {
                epochs.resize(epoch, Vec::new());
            }
            epochs[epoch - 1].push(value);
        }
    }

    fn read_numeric(
        &mut self,
        name: &str,
        epoch: usize,
        split: &Split,
    ) -> Result<Vec<NumericEntry>, String> {
        let reported = self.reported.lock().expect("logger lock");
        let values = reported
            .get(&(split_name(split), name.to_string()))
            .zip(epoch.checked_sub(1)) // burn-train counts epochs from 1
            .and_then(|(epochs, index)| epochs.get(index))
            .cloned()
            .unwrap_or_default();
        Ok(values.into_iter().map(NumericEntry::Value).collect())
    }

    fn log_metric_definition(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id, definition.name.to_string());
    }

    fn log_epoch_summary(&mut self, summary: EpochSummary) {
        if !self.print {
            return;
        }
        let split = split_name(&summary.split);
        let mut names: Vec<&String> = self.names.values().collect();
        names.sort();
        let line: Vec<String> = names
            .into_iter()
            .filter_map(|name| {
                let mean = self.epoch_mean(&split, name, summary.epoch_number)?;
                Some(format!("{name} {mean:.4}"))
            })
            .collect();
        println!(
            "epoch {} {split}: {}",
            summary.epoch_number,
            line.join(", ")
        );
    }
}
