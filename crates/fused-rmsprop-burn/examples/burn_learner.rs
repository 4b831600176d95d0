//! Trains an Iris classifier with burn-train's supervised `Learner` (its
//! default training strategy, file checkpointer, a cosine learning-rate
//! schedule, loss and accuracy metrics), once with `FusedRmsPropConfig` and
//! once with Burn's `RmsPropConfig`, and prints each epoch's loss and
//! accuracy and the time spent inside the optimizer in both runs.
//!
//! ```text
//! cargo run --release -p fused-rmsprop-burn --example burn_learner [-- --epochs N --hidden N]
//! ```
//!
//! The swap is one line: `RmsPropConfig::new().init()` becomes
//! `FusedRmsPropConfig::new().init()`. Here both are wrapped in [`Timed`] so
//! the example can report the optimizer's share of each run; a user passes
//! `FusedRmsPropConfig::new().init()` to `Learner::new` directly.

#[path = "common/iris.rs"]
mod iris;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::optim::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::optim::{LearningRate, ModuleOptimizer, Optimizer, RmsPropConfig};
use burn::tensor::{Device, Tensor};
use burn_train::checkpoint::KeepLastNCheckpoints;
use burn_train::metric::{AccuracyMetric, LossMetric};
use burn_train::{Learner, SupervisedTraining};
use fused_rmsprop_burn::FusedRmsPropConfig;
use iris::{Classifier, EpochLog, IrisBatcher};

const BATCH: usize = 16;
const LEARNING_RATE: f64 = 5e-4;

fn main() {
    let epochs = flag("--epochs").unwrap_or(10);
    let hidden = flag("--hidden").unwrap_or(256);
    let (train, valid) = iris::train_valid_split();
    println!(
        "Iris: {} training and {} validation flowers; classifier 4-{hidden}-{hidden}-3",
        train.len(),
        valid.len()
    );

    // One untimed one-epoch run with each optimizer first, so neither timed
    // run pays the process's first-use costs (thread pool start, page faults).
    println!("\nwarm-up: one epoch with each optimizer");
    for choice in [Choice::Fused, Choice::Burn] {
        run(choice, 1, hidden, &train, &valid);
    }
    let mut runs = Vec::new();
    for choice in [Choice::Fused, Choice::Burn] {
        println!("\n== {} ==", choice.name());
        let (in_optimizer, total, directory) = run(choice, epochs, hidden, &train, &valid);
        println!(
            "{}: {:.1} ms in the optimizer of {:.1} ms in all; checkpoints in {}",
            choice.name(),
            in_optimizer.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3,
            directory.display()
        );
        runs.push(in_optimizer);
    }
    println!(
        "\noptimizer time, burn RmsProp / fused-rmsprop: {:.1}x (same model, data and schedule)",
        runs[1].as_secs_f64() / runs[0].as_secs_f64()
    );
}

/// Trains a fresh classifier for `epochs` epochs with burn-train's
/// `Learner`; returns the time spent in the optimizer, the whole run's time
/// and the checkpoint directory.
fn run(
    choice: Choice,
    epochs: usize,
    hidden: usize,
    train: &[iris::IrisItem],
    valid: &[iris::IrisItem],
) -> (Duration, Duration, std::path::PathBuf) {
    let device = Device::default().autodiff();
    device.seed(0);
    let model = Classifier::new(hidden, &device);
    let spent = Arc::new(AtomicU64::new(0));
    let optim: ModuleOptimizer = match choice {
        // The user's line is `FusedRmsPropConfig::new().init()`.
        Choice::Fused => Timed::new(FusedRmsPropConfig::new().build(), &spent).into(),
        Choice::Burn => Timed::new(RmsPropConfig::new().build(), &spent).into(),
    };
    let iterations = epochs * train.len().div_ceil(BATCH);
    let scheduler = CosineAnnealingLrSchedulerConfig::new(LEARNING_RATE, iterations)
        .init()
        .expect("a valid schedule");
    let directory = std::env::temp_dir()
        .join("fused-rmsprop-burn-learner")
        .join(choice.directory());
    let _ = std::fs::remove_dir_all(&directory);

    let started = Instant::now();
    let result = SupervisedTraining::new(&directory, loader(train), loader(valid))
        .num_epochs(epochs)
        .with_default_checkpointers()
        .with_checkpointing_strategy(KeepLastNCheckpoints::new(1))
        .with_metric_logger(EpochLog::printing())
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .metric_train_numeric(AccuracyMetric::new())
        .metric_valid_numeric(AccuracyMetric::new())
        .with_application_logger(None)
        .launch(Learner::new(model, optim, scheduler));
    let total = started.elapsed();
    if let Some(error) = result.error {
        eprintln!(
            "burn_learner: training with {} failed: {error}",
            choice.name()
        );
        std::process::exit(1);
    }
    let in_optimizer = Duration::from_nanos(spent.load(Ordering::Relaxed));
    (in_optimizer, total, directory)
}

#[derive(Clone, Copy)]
enum Choice {
    Fused,
    Burn,
}

impl Choice {
    fn name(self) -> &'static str {
        match self {
            Choice::Fused => "fused-rmsprop",
            Choice::Burn => "burn RmsProp",
        }
    }

    fn directory(self) -> &'static str {
        match self {
            Choice::Fused => "fused",
            Choice::Burn => "burn",
        }
    }
}

fn loader(
    items: &[iris::IrisItem],
) -> Arc<dyn burn::data::dataloader::DataLoader<iris::IrisBatch>> {
    DataLoaderBuilder::new(IrisBatcher)
        .batch_size(BATCH)
        .build(InMemDataset::new(items.to_vec()))
}

/// `--name N` as a number, if given.
fn flag(name: &str) -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    let value = args
        .iter()
        .position(|a| a == name)
        .map(|i| args.get(i + 1))?;
    match value.and_then(|v| v.parse().ok()) {
        Some(n) if n > 0 => Some(n),
        _ => {
            eprintln!("burn_learner: {name} takes a positive whole number");
            std::process::exit(2);
        }
    }
}

/// An optimizer that adds the time of every step of `inner` to a counter:
/// the same updates and state (so the same records) as `inner`.
#[derive(Clone)]
struct Timed<O> {
    inner: O,
    spent: Arc<AtomicU64>,
}

impl<O> Timed<O> {
    fn new(inner: O, spent: &Arc<AtomicU64>) -> Self {
        Self {
            inner,
            spent: Arc::clone(spent),
        }
    }
}

impl<O: Optimizer> Optimizer for Timed<O> {
    type State<const D: usize> = O::State<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let started = Instant::now();
        let stepped = self.inner.step(lr, tensor, grad, state);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.spent.fetch_add(nanos, Ordering::Relaxed);
        stepped
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        O::to_device(state, device)
    }
}
