//! Stochastic rounding and master weights in `FusedRmsPropConfig`, on a
//! `bf16` MLP: the kernel's semantics with the keys taken from each
//! parameter's state (stream = the order in which the optimizer first
//! stepped it, step = its own count), the same bits on the per-parameter
//! and the batched routes, and in records that resume exactly and move
//! between the routes.

mod common;

use burn::optim::{GradientsParams, ModuleOptimizer, RmsPropConfig};
use burn::tensor::{DType, Tensor};
use common::{Mlp, device, gradients, max_abs_diff, train_step};
use fused_rmsprop::{Group, RmsProp, State, bf16};
use fused_rmsprop_burn::{BatchedRmsProp, FusedRmsPropConfig, Rounding, Route};

const LR: f64 = 1e-3;
const STEPS: usize = 4;

fn stochastic() -> Rounding {
    Rounding::Stochastic { seed: 2024 }
}

/// The configs under test: stochastic rounding, master weights, both.
fn configs() -> [FusedRmsPropConfig; 3] {
    [
        FusedRmsPropConfig::new().with_rounding(stochastic()),
        FusedRmsPropConfig::new().with_master_weights(true),
        FusedRmsPropConfig::new()
            .with_rounding(stochastic())
            .with_master_weights(true),
    ]
}

/// The model's parameters in the module's order, as `bf16` values.
fn bf16_values(model: &Mlp) -> Vec<Vec<bf16>> {
    model
        .values()
        .iter()
        .map(|p| p.iter().map(|&x| bf16::from_f64(x)).collect())
        .collect()
}

/// Each gradient of `grads` in the module's order, as `bf16` values.
fn bf16_gradients(model: &Mlp, grads: &GradientsParams) -> Vec<Vec<bf16>> {
    let mut out = Vec::new();
    for l in [&model.l1, &model.l2, &model.l3] {
        let weight: Tensor<2> = grads.get(l.weight.id).expect("a weight gradient");
        let bias = l.bias.as_ref().expect("a bias");
        let bias: Tensor<1> = grads.get(bias.id).expect("a bias gradient");
        for data in [weight.into_data(), bias.into_data()] {
            out.push(data.try_to_vec::<bf16>().expect("bf16"));
        }
    }
    out
}

/// One step of a batched optimizer.
fn batched_step(optim: &mut BatchedRmsProp, model: Mlp, i: usize) -> Mlp {
    let grads = gradients(&model, i, DType::BF16);
    let (model, outcome) = optim.step(LR, model, grads);
    outcome.expect("a step in place");
    model
}

/// The bare kernel steps every parameter with the keys the adapter should
/// use: stream `k` for the `k`-th parameter of the module, the step count
/// of its state. Both burn routes give those bits.
#[test]
fn keys_follow_the_module_order_on_both_routes() {
    for config in configs() {
        let model = Mlp::new(&device()).cast(DType::BF16);
        let kernel = RmsProp::new(config.hyper().with_lr(LR)).expect("a valid config");
        let mut params = bf16_values(&model);
        let mut states: Vec<State<f32>> = params
            .iter()
            .map(|p| State::for_params(p, kernel.hyper()))
            .collect();
        let optim = config.build();
        let stats = optim.clone();
        let mut per_parameter = (model.clone(), ModuleOptimizer::from(optim));
        let mut batched = (model, config.init_batched());
        for i in 0..STEPS {
            let grads = bf16_gradients(
                &per_parameter.0,
                &gradients(&per_parameter.0, i, DType::BF16),
            );
            let groups = params
                .iter_mut()
                .zip(&grads)
                .zip(&mut states)
                .enumerate()
                .map(|(k, ((p, g), s))| {
                    let step = s.step;
                    Group::new(p, g, s.slices_mut()).with_rounding_key(step, k as u64)
                });
            kernel.step_many(LR, groups).expect("a kernel step");
            states.iter_mut().for_each(|s| s.step += 1);

            per_parameter.0 = train_step(&mut per_parameter.1, per_parameter.0, i, LR, DType::BF16);
            batched.0 = batched_step(&mut batched.1, batched.0, i);
            assert_eq!(
                bf16_values(&per_parameter.0),
                params,
                "{config:?}, step {i}"
            );
            assert_eq!(
                bf16_values(&batched.0),
                params,
                "{config:?}, step {i} (batched)"
            );
        }
        assert_eq!(stats.stats().composed_steps, 0);
    }
}

/// Each option changes the run, and with an lr whose updates are mostly
/// below half a `bf16` ulp, each moves the parameters further than
/// rounding to nearest does.
#[test]
fn each_option_keeps_updates_that_rounding_to_nearest_loses() {
    let lr = 1e-5;
    let run = |config: FusedRmsPropConfig| {
        let mut model = Mlp::new(&device()).cast(DType::BF16);
        let start = model.values();
        let mut optim = config.init();
        for i in 0..20 {
            model = train_step(&mut optim, model, i, lr, DType::BF16);
        }
        max_abs_diff(&model.values(), &start)
    };
    let nearest = run(FusedRmsPropConfig::new().with_momentum(0.0));
    for config in configs() {
        let moved = run(config.clone().with_momentum(0.0));
        assert!(
            moved > nearest,
            "{config:?}: moved {moved:e}, nearest {nearest:e}"
        );
    }
}

/// The composed route (off Flex) keeps master weights as the kernel does,
/// to the rounding of burn's element-wise ops, and rounds to nearest.
#[test]
fn the_composed_route_keeps_master_weights() {
    let config = FusedRmsPropConfig::new().with_master_weights(true);
    let model = Mlp::new(&device()).cast(DType::BF16);
    let mut composed = (
        model.clone(),
        ModuleOptimizer::from(config.build().with_route(Route::ComposedOps)),
    );
    let mut in_place = (model, config.init());
    for i in 0..STEPS {
        composed.0 = train_step(&mut composed.1, composed.0, i, LR, DType::BF16);
        in_place.0 = train_step(&mut in_place.1, in_place.0, i, LR, DType::BF16);
    }
    // One bf16 ulp of the largest parameter (about 1) at most.
    let diff = max_abs_diff(&composed.0.values(), &in_place.0.values());
    assert!(diff <= 2f64.powi(-7), "{diff:e}");
}

/// A run stopped after two steps and resumed from its record ends
/// bit-identical to the uninterrupted run, on each route and from each
/// route's record to the other.
#[test]
fn records_resume_exactly_and_move_between_routes() {
    for config in configs() {
        let model = Mlp::new(&device()).cast(DType::BF16);
        let mut whole = (model.clone(), config.init());
        for i in 0..STEPS {
            whole.0 = train_step(&mut whole.1, whole.0, i, LR, DType::BF16);
        }

        // Per-parameter route, then a fresh per-parameter optimizer.
        let mut first = (model.clone(), config.init());
        for i in 0..2 {
            first.0 = train_step(&mut first.1, first.0, i, LR, DType::BF16);
        }
        let bytes = first.1.into_bytes().expect("a record");
        let mut resumed = (first.0.clone(), config.init());
        fused_rmsprop_burn::load_record(&mut resumed.1, bytes.clone()).expect("it loads");
        for i in 2..STEPS {
            resumed.0 = train_step(&mut resumed.1, resumed.0, i, LR, DType::BF16);
        }
        assert_eq!(resumed.0.values(), whole.0.values(), "{config:?}");

        // The per-parameter route's record into the batched route.
        let mut batched = (first.0.clone(), config.init_batched());
        batched.1.load_record(&batched.0, bytes).expect("it loads");
        for i in 2..STEPS {
            batched.0 = batched_step(&mut batched.1, batched.0, i);
        }
        assert_eq!(batched.0.values(), whole.0.values(), "{config:?} (batched)");

        // The batched route's record into the per-parameter route.
        let mut first = (model, config.init_batched());
        for i in 0..2 {
            first.0 = batched_step(&mut first.1, first.0, i);
        }
        let bytes = first.1.to_record(&first.0).into_bytes().expect("a record");
        let mut resumed = (first.0, config.init());
        fused_rmsprop_burn::load_record(&mut resumed.1, bytes).expect("it loads");
        for i in 2..STEPS {
            resumed.0 = train_step(&mut resumed.1, resumed.0, i, LR, DType::BF16);
        }
        assert_eq!(
            resumed.0.values(),
            whole.0.values(),
            "{config:?} (from batched)"
        );
    }
}

/// How many times `name` occurs in the bytes of `optim`'s record (burn
/// 0.22.1 does not list a record's names; its file format stores each
/// tensor's and scalar's full name as text).
fn occurrences(optim: &ModuleOptimizer, name: &str) -> usize {
    let bytes = optim.to_record().into_bytes().expect("a record");
    bytes
        .windows(name.len())
        .filter(|w| *w == name.as_bytes())
        .count()
}

/// With both options off the record is burn's own: as many tensors, none
/// of this crate's names; with them on it holds the master copies and
/// rounding keys under `fused.`, which burn's `RmsProp` leaves unread: an
/// `f32` model's record loads and steps there.
#[test]
fn records_with_the_options_off_are_burns_and_burn_reads_them_on() {
    let steps = |mut optim: ModuleOptimizer, dtype: DType| {
        let mut model = Mlp::new(&device()).cast(dtype);
        for i in 0..2 {
            model = train_step(&mut optim, model, i, LR, dtype);
        }
        (model, optim)
    };
    let (_, burn) = steps(RmsPropConfig::new().init(), DType::F32);
    let (_, off) = steps(FusedRmsPropConfig::new().init(), DType::F32);
    assert_eq!(off.to_record().len(), burn.to_record().len());
    assert_eq!(occurrences(&off, "fused."), 0);

    let both = FusedRmsPropConfig::new()
        .with_rounding(stochastic())
        .with_master_weights(true);
    let (_, on) = steps(both.init(), DType::BF16);
    // One more tensor per parameter, the master copy.
    assert_eq!(on.to_record().len(), off.to_record().len() + 6);
    for leaf in ["fused.master", "fused.step", "fused.stream"] {
        assert_eq!(
            occurrences(&on, leaf),
            6,
            "{leaf}: one for each of the 6 parameters"
        );
    }

    let (model, on_f32) = steps(both.init(), DType::F32);
    let mut burn = RmsPropConfig::new().init();
    fused_rmsprop_burn::load_record(&mut burn, on_f32.into_bytes().expect("a record"))
        .expect("burn's loader reads it");
    let stepped = train_step(&mut burn, model.clone(), 2, LR, DType::F32);
    assert_ne!(stepped.values(), model.values());
}

/// `f32` parameters are not rounded, so the options change nothing there:
/// the same bits as with both off.
#[test]
fn f32_parameters_are_untouched_by_the_options() {
    let run = |config: FusedRmsPropConfig| {
        let mut model = Mlp::new(&device());
        let mut optim = config.init();
        for i in 0..STEPS {
            model = train_step(&mut optim, model, i, LR, DType::F32);
        }
        model.values()
    };
    let off = run(FusedRmsPropConfig::new());
    for config in configs() {
        assert_eq!(run(config.clone()), off, "{config:?}");
    }
}
