//! `bf16` and `f16` models: the fused optimizer steps them in place with
//! `f32` state, trains them as the tensor-op formulation with the same
//! semantics does, and checkpoints them across rounding options.
//!
//! Tolerance against the tensor-op formulation: two ulps of the variable's
//! type relative to max(1, |value|) (2^-7 for bf16, 2^-9 for f16) at every
//! step. Both compute in f32 and round to nearest; their f32 values differ by
//! an f32 ulp where candle orders an operation differently, which flips a
//! rounding to the neighbouring 16-bit value now and then.

mod common;

use candle_core::{DType, Var};
use candle_nn::Optimizer;
use common::Mlp;
use fused_rmsprop::Rounding;
use fused_rmsprop_candle::{ParamsRmsProp, RmsProp, TensorOpsRmsProp};

const HALF_TYPES: [(DType, f64); 2] = [(DType::BF16, 1.0 / 128.0), (DType::F16, 1.0 / 512.0)];

fn storage_address(var: &Var) -> usize {
    let (storage, _) = var.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::BF16(v)) => v.as_ptr() as usize,
        candle_core::Storage::Cpu(candle_core::CpuStorage::F16(v)) => v.as_ptr() as usize,
        _ => panic!("expected 16-bit CPU storage"),
    }
}

/// The mean loss over the 25 batches the tests train on (each step draws
/// another batch, so one batch's loss alone need not fall).
fn loss_value(model: &Mlp, _: usize) -> f64 {
    (0..25)
        .map(|step| {
            model
                .loss(step)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        })
        .sum::<f64>()
        / 25.0
}

/// 25 steps of `p` on a `dtype` MLP with the fused optimizer and the
/// tensor-op formulation: same parameters within `tolerance`, loss falls,
/// every variable keeps its buffer.
fn trains_like_tensor_ops(p: ParamsRmsProp, dtype: DType, tolerance: f64) {
    let fused_model = Mlp::new(dtype).unwrap();
    let reference_model = Mlp::new(dtype).unwrap();
    let mut fused = RmsProp::new(fused_model.vars.clone(), p).unwrap();
    let mut reference = TensorOpsRmsProp::new(reference_model.vars.clone(), p).unwrap();
    let buffers: Vec<usize> = fused_model.vars.iter().map(storage_address).collect();
    let first_loss = loss_value(&fused_model, 0);
    for step in 0..25 {
        fused
            .backward_step(&fused_model.loss(step).unwrap())
            .unwrap();
        reference
            .backward_step(&reference_model.loss(step).unwrap())
            .unwrap();
        for (f, r) in fused_model
            .values()
            .iter()
            .flatten()
            .zip(reference_model.values().iter().flatten())
        {
            assert!(
                (f - r).abs() <= tolerance * r.abs().max(1.0),
                "{dtype:?} {p:?} step {step}: fused {f}, tensor ops {r}"
            );
        }
    }
    let buffers_after: Vec<usize> = fused_model.vars.iter().map(storage_address).collect();
    assert_eq!(buffers, buffers_after, "stepped in place");
    let last_loss = loss_value(&fused_model, 0);
    // Centered RMSprop with momentum takes large first steps (the centered
    // variance starts near zero); its trajectory is checked against the
    // reference above, its loss is not expected to fall in 25 steps.
    assert!(
        p.centered || last_loss < first_loss,
        "{dtype:?} {p:?}: loss {first_loss} -> {last_loss}"
    );
}

#[test]
fn half_models_train_like_the_tensor_op_formulation() {
    let plain = ParamsRmsProp {
        lr: 0.002,
        ..Default::default()
    };
    for (dtype, tolerance) in HALF_TYPES {
        for p in [
            plain,
            ParamsRmsProp {
                momentum: Some(0.9),
                centered: true,
                weight_decay: Some(0.01),
                ..plain
            },
            ParamsRmsProp {
                master_weights: true,
                ..plain
            },
        ] {
            trains_like_tensor_ops(p, dtype, tolerance);
        }
    }
}

#[test]
fn stochastic_rounding_trains_and_is_reproducible_from_its_seed() {
    let p = ParamsRmsProp {
        lr: 0.002,
        rounding: Rounding::Stochastic { seed: 5 },
        ..Default::default()
    };
    let run = |p: ParamsRmsProp| {
        let model = Mlp::new(DType::BF16).unwrap();
        let mut opt = RmsProp::new(model.vars.clone(), p).unwrap();
        let first = loss_value(&model, 0);
        for step in 0..25 {
            opt.backward_step(&model.loss(step).unwrap()).unwrap();
        }
        assert!(loss_value(&model, 0) < first);
        model.values()
    };
    let once = run(p);
    assert_eq!(once, run(p), "same seed, same bits");
    let other = run(ParamsRmsProp {
        rounding: Rounding::Stochastic { seed: 6 },
        ..p
    });
    assert_ne!(once, other, "another seed, other bits");
}

#[test]
fn half_checkpoints_move_between_rounding_options() {
    let with_master = ParamsRmsProp {
        lr: 0.01,
        master_weights: true,
        ..Default::default()
    };
    let without = ParamsRmsProp {
        master_weights: false,
        ..with_master
    };
    let dir = std::env::temp_dir();
    for (dtype, _) in HALF_TYPES {
        let model = Mlp::new(dtype).unwrap();
        let mut opt = RmsProp::new(model.vars.clone(), with_master).unwrap();
        for step in 0..3 {
            opt.backward_step(&model.loss(step).unwrap()).unwrap();
        }
        let path = dir.join(format!("fused-rmsprop-half-{dtype:?}.safetensors"));
        opt.save(&path).unwrap();

        // Same options: continues bit for bit as if never stopped.
        let mut resumed = RmsProp::new(model.vars.clone(), with_master).unwrap();
        resumed.load(&path).unwrap();
        let twin = Mlp::new(dtype).unwrap();
        for (t, m) in twin.vars.iter().zip(&model.vars) {
            t.set(m.as_tensor()).unwrap();
        }
        opt.backward_step(&model.loss(3).unwrap()).unwrap();
        let after_original = model.values();
        for (t, m) in model.vars.iter().zip(&twin.vars) {
            t.set(m.as_tensor()).unwrap();
        }
        resumed.backward_step(&model.loss(3).unwrap()).unwrap();
        assert_eq!(
            model.values(),
            after_original,
            "{dtype:?}: resumed with master"
        );

        // Without master weights the copies are dropped; the file loads.
        let mut dropped = RmsProp::new(model.vars.clone(), without).unwrap();
        dropped.load(&path).unwrap();
        dropped.backward_step(&model.loss(4).unwrap()).unwrap();

        // A file without master copies loads under master weights: each
        // copy starts from the variable's value.
        let plain_path = dir.join(format!("fused-rmsprop-half-plain-{dtype:?}.safetensors"));
        dropped.save(&plain_path).unwrap();
        let mut restarted = RmsProp::new(model.vars.clone(), with_master).unwrap();
        restarted.load(&plain_path).unwrap();
        restarted.backward_step(&model.loss(5).unwrap()).unwrap();
    }
}

#[test]
fn a_bf16_var_is_never_refused_on_the_cpu() {
    for (dtype, _) in HALF_TYPES {
        let v = Var::ones(4, dtype, &candle_core::Device::Cpu).unwrap();
        assert!(RmsProp::new(vec![v], ParamsRmsProp::default()).is_ok());
    }
}

/// The tensor-op route, forced on the CPU (as `Route::Auto` takes it on CUDA
/// or Metal): the same values as `TensorOpsRmsProp`, bit for bit, for f32
/// and 16-bit models, and the non-finite policies hold on it.
#[test]
fn the_tensor_op_route_steps_what_the_kernel_cannot() {
    use fused_rmsprop::NonFinite;
    use fused_rmsprop_candle::Route;
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let p = ParamsRmsProp {
            lr: 0.002,
            momentum: Some(0.5),
            ..Default::default()
        };
        let routed_model = Mlp::new(dtype).unwrap();
        let reference_model = Mlp::new(dtype).unwrap();
        let mut routed =
            RmsProp::with_route(routed_model.vars.clone(), p, Route::TensorOps).unwrap();
        assert_eq!(routed.tensor_op_vars(), routed_model.vars.len());
        let mut reference = TensorOpsRmsProp::new(reference_model.vars.clone(), p).unwrap();
        for step in 0..5 {
            routed
                .backward_step(&routed_model.loss(step).unwrap())
                .unwrap();
            reference
                .backward_step(&reference_model.loss(step).unwrap())
                .unwrap();
        }
        assert_eq!(routed_model.values(), reference_model.values(), "{dtype:?}");
    }

    // Skip and Error on the tensor-op route.
    let w = Var::new(&[1.0f32, 2.0], &candle_core::Device::Cpu).unwrap();
    let poisoned = |w: &Var| {
        let mut grads = w.as_tensor().sum_all().unwrap().backward().unwrap();
        grads.insert(
            w.as_tensor(),
            candle_core::Tensor::new(&[f32::NAN, 1.0], &candle_core::Device::Cpu).unwrap(),
        );
        grads
    };
    let skip = ParamsRmsProp {
        non_finite: NonFinite::Skip,
        ..Default::default()
    };
    let mut opt = RmsProp::with_route(vec![w.clone()], skip, Route::TensorOps).unwrap();
    opt.step(&poisoned(&w)).unwrap();
    assert_eq!(opt.last_skipped().len(), 1);
    assert_eq!(w.to_vec1::<f32>().unwrap(), [1.0, 2.0]);
    let error = ParamsRmsProp {
        non_finite: NonFinite::Error,
        ..Default::default()
    };
    let mut opt = RmsProp::with_route(vec![w.clone()], error, Route::TensorOps).unwrap();
    assert!(opt.step(&poisoned(&w)).is_err());
    assert_eq!(w.to_vec1::<f32>().unwrap(), [1.0, 2.0]);
}
