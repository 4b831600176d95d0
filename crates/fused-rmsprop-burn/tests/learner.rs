//! `FusedRmsPropConfig` inside burn-train's supervised `Learner`, where most
//! Burn users train: the default training strategy, the file checkpointer, a
//! cosine learning-rate schedule and loss/accuracy metrics, on Iris.
//!
//! - Two epochs with `FusedRmsPropConfig` report the same losses as two
//!   with Burn's `RmsPropConfig` (the optimizer is the only difference).
//! - A run stopped after epoch 1 and resumed from burn-train's checkpoint
//!   (model, optimizer record, scheduler) ends bit-identical to the
//!   uninterrupted run.
//! - A run checkpointed under Burn's `RmsPropConfig` resumes under
//!   `FusedRmsPropConfig`.
//! - burn-train's multi-device strategies (`OptimMainDevice`,
//!   `OptimSharded`) run with the fused optimizer, on two handles of the one
//!   Flex device (all these machines have): the same losses as Burn's
//!   `RmsProp` under the same strategy, every step in place.
//! - bf16 and f16 models train under the `Learner` with the kernel (every
//!   parameter arrives shared, as the `Learner` holds the model it steps),
//!   and a bf16 run resumed from its checkpoint (the `f32` state in burn's
//!   record) ends bit-identical too, also with stochastic rounding (the
//!   rounding key in the record) and with master weights (the master copy
//!   in the record).

#[path = "../examples/common/iris.rs"]
mod iris;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::InMemDataset;
use burn::optim::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::optim::{ModuleOptimizer, RmsPropConfig};
use burn::tensor::{DType, Device};
use burn_train::checkpoint::KeepLastNCheckpoints;
use burn_train::metric::{AccuracyMetric, LossMetric};
use burn_train::{
    ExecutionStrategy, Learner, MultiDeviceOptim, SupervisedTraining, TrainingStrategy,
};
use fused_rmsprop_burn::{FusedRmsProp, FusedRmsPropConfig, Rounding, StateFormat, StepStats};
use iris::{Classifier, EpochLog, IrisBatch, IrisBatcher};

const HIDDEN: usize = 32;
const BATCH: usize = 16;
const EPOCHS: usize = 2;
/// Largest difference allowed between a loss reported under the fused
/// optimizer and under Burn's (the two agree to a few f32 ulps per step,
/// see `tests/training.rs`).
const LOSS_TOLERANCE: f64 = 1e-5;

#[derive(Clone, Copy, Debug)]
enum Optim {
    Fused,
    /// The fused optimizer with stochastic rounding.
    FusedStochastic,
    /// The fused optimizer with master weights.
    FusedMaster,
    /// The fused optimizer with 8-bit state.
    Fused8Bit,
    Burn,
}

impl Optim {
    /// The optimizer, and for the fused one a handle on its statistics.
    fn init(self) -> (ModuleOptimizer, Option<FusedRmsProp>) {
        let fused = |config: FusedRmsPropConfig| {
            let fused = config.build();
            (fused.clone().into(), Some(fused))
        };
        match self {
            Optim::Fused => fused(FusedRmsPropConfig::new()),
            Optim::FusedStochastic => {
                fused(FusedRmsPropConfig::new().with_rounding(Rounding::Stochastic { seed: 11 }))
            }
            Optim::FusedMaster => fused(FusedRmsPropConfig::new().with_master_weights(true)),
            Optim::Fused8Bit => {
                fused(FusedRmsPropConfig::new().with_state_format(StateFormat::BLOCKWISE8))
            }
            Optim::Burn => (RmsPropConfig::new().init(), None),
        }
    }
}

/// A scratch directory of this test process, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "fused-rmsprop-learner-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The same initial model every time. Burn seeds its random generator per
/// process, and the tests of this file run on parallel threads: seeding and
/// drawing happen under one lock so no other test draws in between. Burn
/// initializes parameters lazily, on first use: reading them draws now.
fn initial_model(hidden: usize, device: &Device) -> Classifier {
    static SEEDED: Mutex<()> = Mutex::new(());
    let _guard = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(7);
    let model = Classifier::new(hidden, device);
    model.parameter_values();
    model
}

fn loader(items: &[iris::IrisItem]) -> Arc<dyn DataLoader<IrisBatch>> {
    DataLoaderBuilder::new(IrisBatcher)
        .batch_size(BATCH)
        .build(InMemDataset::new(items.to_vec()))
}

/// What a run left behind: the final parameters (widened to `f32`) and
/// their dtype, the reported values, and the fused optimizer's statistics.
struct Run {
    parameters: Vec<Vec<f32>>,
    dtype: DType,
    log: EpochLog,
    stats: Option<StepStats>,
}

/// Trains up to epoch `until` with `optim` in `dir`, resuming from the
/// checkpoint of epoch `resume_from` when given.
fn train(dir: &Scratch, optim: Optim, until: usize, resume_from: Option<usize>) -> Run {
    train_in(DType::F32, dir, optim, until, resume_from)
}

/// [`train`] with the model's parameters in `dtype`.
fn train_in(
    dtype: DType,
    dir: &Scratch,
    optim: Optim,
    until: usize,
    resume_from: Option<usize>,
) -> Run {
    train_on(None, dtype, dir, optim, until, resume_from)
}

/// The model's width and the schedule's length.
#[derive(Clone, Copy)]
struct Shape {
    hidden: usize,
    epochs: usize,
}

/// [`train_in`] with burn-train's multi-device strategy `multi` (on two
/// handles of the one Flex device) instead of the single-device default.
fn train_on(
    multi: Option<MultiDeviceOptim>,
    dtype: DType,
    dir: &Scratch,
    optim: Optim,
    until: usize,
    resume_from: Option<usize>,
) -> Run {
    let shape = Shape {
        hidden: HIDDEN,
        epochs: EPOCHS,
    };
    train_shaped(shape, multi, dtype, dir, optim, until, resume_from)
}

/// [`train_on`] with the model's width and the schedule's length given.
fn train_shaped(
    shape: Shape,
    multi: Option<MultiDeviceOptim>,
    dtype: DType,
    dir: &Scratch,
    optim: Optim,
    until: usize,
    resume_from: Option<usize>,
) -> Run {
    let device = Device::default().autodiff();
    let (train, valid) = iris::train_valid_split();
    let iterations = shape.epochs * train.len().div_ceil(BATCH);
    let scheduler = CosineAnnealingLrSchedulerConfig::new(1e-3, iterations)
        .init()
        .expect("a valid schedule");
    let mut model = initial_model(shape.hidden, &device);
    if dtype != DType::F32 {
        model = model.cast(dtype);
    }
    let (optimizer, fused) = optim.init();
    let learner = Learner::new(model, optimizer, scheduler);
    let log = EpochLog::default();
    let mut training = SupervisedTraining::new(&dir.0, loader(&train), loader(&valid))
        .num_epochs(until)
        .with_default_checkpointers()
        .with_checkpointing_strategy(KeepLastNCheckpoints::new(shape.epochs))
        .with_metric_logger(log.clone())
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .metric_train_numeric(AccuracyMetric::new())
        .metric_valid_numeric(AccuracyMetric::new())
        .with_application_logger(None);
    if let Some(epoch) = resume_from {
        training = training.checkpoint(epoch);
    }
    if let Some(multi) = multi {
        let devices = vec![Device::default(), Device::default()];
        training = training.with_training_strategy(TrainingStrategy::Default(
            ExecutionStrategy::multi(devices, multi),
        ));
    }
    let result = training.launch(learner);
    assert!(
        result.error.is_none(),
        "training failed: {:?}",
        result.error
    );
    Run {
        parameters: result.model.parameter_values(),
        dtype: result.model.dtype(),
        log,
        stats: fused.map(|f| f.stats()),
    }
}

/// Every loss reported for `split` in `epoch` (1-based), batch by batch.
fn losses(run: &Run, split: &str, epoch: usize) -> Vec<f64> {
    let reported = run.log.reported();
    let epochs = reported
        .get(&(split.to_string(), "Loss".to_string()))
        .unwrap_or_else(|| panic!("no {split} loss reported: {:?}", reported.keys()));
    epochs.get(epoch - 1).cloned().unwrap_or_default()
}

fn assert_close(fused: &[f64], burn: &[f64], what: &str) {
    assert_eq!(fused.len(), burn.len(), "{what}: reported counts differ");
    assert!(!fused.is_empty(), "{what}: nothing reported");
    for (i, (a, b)) in fused.iter().zip(burn).enumerate() {
        assert!(
            (a - b).abs() <= LOSS_TOLERANCE,
            "{what}, batch {i}: fused {a} vs burn {b}"
        );
    }
}

/// Panics with a count (not thousands of values) unless `a` and `b` hold
/// the same bits.
fn assert_bit_identical(a: &[Vec<f32>], b: &[Vec<f32>]) {
    assert_eq!(a.len(), b.len());
    for (i, (a, b)) in a.iter().zip(b).enumerate() {
        let differ = a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits());
        let first = differ.clone().next();
        assert!(
            first.is_none() && a.len() == b.len(),
            "parameter {i}: {} of {} values differ, first {first:?} (resumed, uninterrupted)",
            differ.count(),
            a.len()
        );
    }
}

#[test]
fn fused_and_burn_rmsprop_report_the_same_losses() {
    let (fused_dir, burn_dir) = (Scratch::new("same-fused"), Scratch::new("same-burn"));
    let fused = train(&fused_dir, Optim::Fused, EPOCHS, None);
    let burn = train(&burn_dir, Optim::Burn, EPOCHS, None);
    for epoch in 1..=EPOCHS {
        for split in ["train", "valid"] {
            let what = format!("epoch {epoch} {split} loss");
            assert_close(
                &losses(&fused, split, epoch),
                &losses(&burn, split, epoch),
                &what,
            );
        }
    }
    // Training moved: the loss of the last epoch is below the first's.
    let mean = |run: &Run, epoch| run.log.epoch_mean("train", "Loss", epoch).unwrap();
    assert!(mean(&fused, EPOCHS) < mean(&fused, 1));
}

#[test]
fn a_run_resumed_from_its_checkpoint_ends_bit_identical() {
    let (whole_dir, split_dir) = (Scratch::new("whole"), Scratch::new("resumed"));
    let whole = train(&whole_dir, Optim::Fused, EPOCHS, None);
    let first = train(&split_dir, Optim::Fused, 1, None);
    assert_ne!(
        first.parameters, whole.parameters,
        "epoch 2 changes the parameters"
    );
    let resumed = train(&split_dir, Optim::Fused, EPOCHS, Some(1));
    assert_bit_identical(&resumed.parameters, &whole.parameters);
    assert_eq!(losses(&resumed, "train", 2), losses(&whole, "train", 2));
    assert_eq!(losses(&resumed, "valid", 2), losses(&whole, "valid", 2));
}

#[test]
fn a_burn_rmsprop_checkpoint_resumes_under_the_fused_optimizer() {
    let (whole_dir, split_dir) = (Scratch::new("burn-whole"), Scratch::new("burn-then-fused"));
    let burn_whole = train(&whole_dir, Optim::Burn, EPOCHS, None);
    train(&split_dir, Optim::Burn, 1, None);
    let resumed = train(&split_dir, Optim::Fused, EPOCHS, Some(1));
    // The fused optimizer picked up Burn's square averages and momentum:
    // epoch 2 reports what Burn's own epoch 2 reports.
    assert_close(
        &losses(&resumed, "train", 2),
        &losses(&burn_whole, "train", 2),
        "epoch 2 train loss after resuming Burn's checkpoint",
    );
    for (fused, burn) in resumed.parameters.iter().zip(&burn_whole.parameters) {
        for (a, b) in fused.iter().zip(burn) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
}

#[test]
fn bf16_and_f16_models_train_with_the_kernel_under_the_learner() {
    for dtype in [DType::BF16, DType::F16] {
        let dir = Scratch::new(&format!("{dtype:?}"));
        let run = train_in(dtype, &dir, Optim::Fused, EPOCHS, None);
        assert_eq!(run.dtype, dtype, "the parameters kept their dtype");
        let stats = run.stats.expect("the fused optimizer's statistics");
        assert!(stats.in_place_steps > 0, "{dtype:?}: {stats:?}");
        assert_eq!(stats.composed_steps, 0, "{dtype:?}: {stats:?}");
        // The `Learner` holds the model it steps (see `shared.rs`): every
        // parameter arrives shared and is copied, into a kept buffer from
        // the second step on (tests/training.rs checks the reuse).
        assert_eq!(stats.buffers_copied, stats.in_place_steps, "{dtype:?}");
        let mean = |epoch| run.log.epoch_mean("train", "Loss", epoch).unwrap();
        assert!(mean(EPOCHS) < mean(1), "{dtype:?}: the loss fell");
    }
}

#[test]
fn a_bf16_run_resumed_from_its_checkpoint_ends_bit_identical() {
    let (whole_dir, split_dir) = (Scratch::new("bf16-whole"), Scratch::new("bf16-resumed"));
    let whole = train_in(DType::BF16, &whole_dir, Optim::Fused, EPOCHS, None);
    let first = train_in(DType::BF16, &split_dir, Optim::Fused, 1, None);
    assert_ne!(first.parameters, whole.parameters);
    let resumed = train_in(DType::BF16, &split_dir, Optim::Fused, EPOCHS, Some(1));
    assert_eq!(resumed.dtype, DType::BF16);
    assert_bit_identical(&resumed.parameters, &whole.parameters);
    assert_eq!(losses(&resumed, "train", 2), losses(&whole, "train", 2));
}

/// Stochastic rounding and master weights under the `Learner`: each changes
/// the bf16 run (the option is on), and a run stopped after epoch 1 and
/// resumed from burn-train's checkpoint ends bit-identical to the
/// uninterrupted one: the rounding keys and the master copies travel in the
/// optimizer's record.
#[test]
fn bf16_runs_with_stochastic_rounding_or_master_weights_resume_bit_identical() {
    let nearest_dir = Scratch::new("bf16-nearest");
    let nearest = train_in(DType::BF16, &nearest_dir, Optim::Fused, EPOCHS, None);
    for optim in [Optim::FusedStochastic, Optim::FusedMaster] {
        let (whole_dir, split_dir) = (
            Scratch::new(&format!("{optim:?}-whole")),
            Scratch::new(&format!("{optim:?}-resumed")),
        );
        let whole = train_in(DType::BF16, &whole_dir, optim, EPOCHS, None);
        assert_ne!(
            whole.parameters, nearest.parameters,
            "{optim:?} changed nothing"
        );
        let stats = whole.stats.clone().expect("statistics");
        assert_eq!(stats.composed_steps, 0, "{optim:?}: {stats:?}");
        train_in(DType::BF16, &split_dir, optim, 1, None);
        let resumed = train_in(DType::BF16, &split_dir, optim, EPOCHS, Some(1));
        assert_eq!(resumed.dtype, DType::BF16);
        assert_bit_identical(&resumed.parameters, &whole.parameters);
        assert_eq!(losses(&resumed, "train", 2), losses(&whole, "train", 2));
    }
}

/// burn-train's multi-device strategies step through `ModuleOptimizer`'s
/// `step_multi`, which moves each state to its parameter's device
/// (`Optimizer::to_device`) and, under `OptimSharded`, steps each parameter
/// on the device that accumulated its gradient. Flex has one device, so
/// both run here on two handles of it: the real strategy code (a thread per
/// device, gradients gathered, the step) with no data actually moving.
#[test]
fn multi_device_strategies_run_with_the_fused_optimizer() {
    for multi in [
        MultiDeviceOptim::OptimMainDevice,
        MultiDeviceOptim::OptimSharded,
    ] {
        let (fused_dir, burn_dir) = (
            Scratch::new(&format!("{multi:?}-fused")),
            Scratch::new(&format!("{multi:?}-burn")),
        );
        let fused = train_on(
            Some(multi),
            DType::F32,
            &fused_dir,
            Optim::Fused,
            EPOCHS,
            None,
        );
        let burn = train_on(
            Some(multi),
            DType::F32,
            &burn_dir,
            Optim::Burn,
            EPOCHS,
            None,
        );
        // The device threads report their batches in the order they
        // finish: compare each epoch's losses sorted.
        let sorted = |run: &Run, epoch| {
            let mut losses = losses(run, "train", epoch);
            losses.sort_by(f64::total_cmp);
            losses
        };
        for epoch in 1..=EPOCHS {
            let what = format!("{multi:?}, epoch {epoch} train loss");
            assert_close(&sorted(&fused, epoch), &sorted(&burn, epoch), &what);
        }
        let stats = fused.stats.expect("statistics");
        assert!(stats.in_place_steps > 0, "{multi:?}: {stats:?}");
        assert_eq!(stats.composed_steps, 0, "{multi:?}: {stats:?}");
    }
}

/// 8-bit state under the Learner: the Iris model 64 units wide, whose
/// 64 x 64 hidden weight (4096 elements) gets 8-bit state while the other
/// tensors keep full state, trained for the epochs a model this size needs
/// (the `f32`-state run for comparison): the final validation accuracy
/// within 5 points of full state's, and a run stopped after epoch 1 and
/// resumed from burn-train's checkpoint ends bit-identical.
#[test]
fn an_8_bit_state_run_reaches_full_states_accuracy_and_resumes_exactly() {
    const LONG: usize = 6;
    let shape = Shape {
        hidden: 64,
        epochs: LONG,
    };
    let run = |dir: &Scratch, optim, until, resume_from| {
        train_shaped(shape, None, DType::F32, dir, optim, until, resume_from)
    };
    let dirs = [
        Scratch::new("8bit"),
        Scratch::new("8bit-full"),
        Scratch::new("8bit-split"),
    ];
    let eight = run(&dirs[0], Optim::Fused8Bit, LONG, None);
    let full = run(&dirs[1], Optim::Fused, LONG, None);
    assert_ne!(
        eight.parameters, full.parameters,
        "8-bit state changed the run"
    );
    let accuracy = |run: &Run| run.log.epoch_mean("valid", "Accuracy", LONG).unwrap();
    let loss = |run: &Run| run.log.epoch_mean("valid", "Loss", LONG).unwrap();
    let (a8, af, l8, lf) = (accuracy(&eight), accuracy(&full), loss(&eight), loss(&full));
    let report = format!("valid accuracy 8-bit {a8:.1}%, full {af:.1}%; loss {l8:.4} vs {lf:.4}");
    assert!(a8 >= af - 5.0, "{report}");
    assert!(l8 <= 1.1 * lf, "{report}");

    run(&dirs[2], Optim::Fused8Bit, 1, None);
    let resumed = run(&dirs[2], Optim::Fused8Bit, LONG, Some(1));
    assert_bit_identical(&resumed.parameters, &eight.parameters);
}
