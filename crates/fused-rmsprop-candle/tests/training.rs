//! The candle optimizer trains a real candle-nn MLP to the same parameters as
//! an RMSprop written with candle tensor ops (state kept in `Var`s and
//! updated with `Var::set`, as candle-optimisers does), step after step.
//!
//! Tolerance: |fused - reference| <= 1e-5 * max(1, |reference|) per element
//! at every one of 25 steps. Both compute the same formula in f32 with IEEE
//! operations; they differ only where candle's scalar ops add a `+ 0.0` or
//! order a product differently, a few ulps that the trajectory may amplify.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use fused_rmsprop::EpsPlacement;
use fused_rmsprop_candle::{ParamsRmsProp, RmsProp, TensorOpsRmsProp};

mod common;

use common::Mlp;

fn assert_close(fused: &[Vec<f64>], reference: &[Vec<f64>], tolerance: f64, what: &str) {
    for (f, r) in fused.iter().flatten().zip(reference.iter().flatten()) {
        assert!(
            (f - r).abs() <= tolerance * r.abs().max(1.0),
            "{what}: fused {f}, reference {r}"
        );
    }
}

fn train_both(p: ParamsRmsProp, dtype: DType, steps: usize, tolerance: f64) {
    let fused_model = Mlp::new(dtype).unwrap();
    let reference_model = Mlp::new(dtype).unwrap();
    let mut fused = RmsProp::new(fused_model.vars.clone(), p).unwrap();
    let mut reference = TensorOpsRmsProp::new(reference_model.vars.clone(), p).unwrap();
    for step in 0..steps {
        fused
            .backward_step(&fused_model.loss(step).unwrap())
            .unwrap();
        let grads = reference_model.loss(step).unwrap().backward().unwrap();
        reference.step(&grads).unwrap();
        assert_close(
            &fused_model.values(),
            &reference_model.values(),
            tolerance,
            &format!("{p:?}, step {step}"),
        );
    }
}

fn variants() -> Vec<ParamsRmsProp> {
    let d = ParamsRmsProp {
        lr: 0.01,
        ..Default::default()
    };
    vec![
        d,
        ParamsRmsProp {
            momentum: Some(0.9),
            ..d
        },
        ParamsRmsProp {
            centered: true,
            ..d
        },
        ParamsRmsProp {
            weight_decay: Some(0.05),
            ..d
        },
        ParamsRmsProp {
            centered: true,
            momentum: Some(0.9),
            weight_decay: Some(0.05),
            ..d
        },
        ParamsRmsProp {
            momentum: Some(0.9),
            nesterov: true,
            ..d
        },
        ParamsRmsProp {
            weight_decay: Some(0.05),
            decoupled_weight_decay: true,
            ..d
        },
        ParamsRmsProp {
            eps_placement: EpsPlacement::InsideSqrt,
            eps: 1e-6,
            ..d
        },
        ParamsRmsProp {
            initial_square_avg: 1.0,
            ..d
        },
        ParamsRmsProp {
            centered: true,
            clamp_centered_variance: true,
            ..d
        },
        ParamsRmsProp {
            maximize: true,
            lr: 0.001,
            ..d
        },
    ]
}

#[test]
fn mlp_trains_like_tensor_op_rmsprop_for_every_variant() {
    for p in variants() {
        train_both(p, DType::F32, 25, 1e-5);
    }
}

#[test]
fn f64_model_trains_like_tensor_op_rmsprop() {
    for p in variants() {
        train_both(p, DType::F64, 25, 1e-12);
    }
}

fn storage_address(var: &Var) -> usize {
    let (storage, _) = var.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => v.as_ptr() as usize,
        _ => panic!("expected f32 CPU storage"),
    }
}

#[test]
fn step_updates_the_same_storage_in_place() {
    let model = Mlp::new(DType::F32).unwrap();
    let mut opt = RmsProp::new(model.vars.clone(), ParamsRmsProp::default()).unwrap();
    let before: Vec<usize> = model.vars.iter().map(storage_address).collect();
    let values_before = model.values();
    opt.backward_step(&model.loss(0).unwrap()).unwrap();
    let after: Vec<usize> = model.vars.iter().map(storage_address).collect();
    assert_eq!(before, after, "every variable keeps its buffer");
    assert_ne!(
        values_before,
        model.values(),
        "and the buffer holds the new values"
    );
}

#[test]
fn variable_without_gradient_is_skipped() {
    let model = Mlp::new(DType::F32).unwrap();
    let unused = Var::ones(5, DType::F32, &Device::Cpu).unwrap();
    let mut vars = model.vars.clone();
    vars.push(unused.clone());
    let mut opt = RmsProp::new(vars, ParamsRmsProp::default()).unwrap();
    opt.backward_step(&model.loss(0).unwrap()).unwrap();
    assert_eq!(unused.to_vec1::<f32>().unwrap(), vec![1.0; 5]);
}

#[test]
fn learning_rate_change_mid_training_matches_the_reference() {
    let p = ParamsRmsProp {
        lr: 0.01,
        momentum: Some(0.5),
        ..Default::default()
    };
    let fused_model = Mlp::new(DType::F32).unwrap();
    let reference_model = Mlp::new(DType::F32).unwrap();
    let mut fused = RmsProp::new(fused_model.vars.clone(), p).unwrap();
    let mut reference = TensorOpsRmsProp::new(reference_model.vars.clone(), p).unwrap();
    for step in 0..20 {
        if step == 10 {
            fused.set_learning_rate(0.002);
            reference.set_learning_rate(0.002);
            assert_eq!(fused.learning_rate(), 0.002);
        }
        fused
            .backward_step(&fused_model.loss(step).unwrap())
            .unwrap();
        reference
            .step(&reference_model.loss(step).unwrap().backward().unwrap())
            .unwrap();
    }
    assert_close(
        &fused_model.values(),
        &reference_model.values(),
        1e-5,
        "after lr change",
    );
}

/// A non-contiguous gradient (a transposed view) is made contiguous first
/// and gives the same step as its contiguous copy.
#[test]
fn non_contiguous_gradient_is_stepped_correctly() {
    let base = Tensor::from_vec(
        (0..12).map(|i| i as f32 * 0.1).collect::<Vec<_>>(),
        (3, 4),
        &Device::Cpu,
    )
    .unwrap();
    let strided_var = Var::from_tensor(&base).unwrap();
    let contiguous_var = Var::from_tensor(&base).unwrap();
    let p = ParamsRmsProp {
        momentum: Some(0.9),
        ..Default::default()
    };
    let mut strided = RmsProp::new(vec![strided_var.clone()], p).unwrap();
    let mut contiguous = RmsProp::new(vec![contiguous_var.clone()], p).unwrap();
    for step in 0..5 {
        let grad_t: Vec<f32> = (0..12).map(|i| ((i + step) as f32 * 0.7).sin()).collect();
        let grad = Tensor::from_vec(grad_t, (4, 3), &Device::Cpu)
            .unwrap()
            .t()
            .unwrap();
        assert!(!grad.is_contiguous());
        // A store from a real backward pass, its gradient replaced.
        let mut grads = strided_var
            .as_tensor()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        grads.insert(&strided_var, grad.clone());
        strided.step(&grads).unwrap();
        let mut grads = contiguous_var
            .as_tensor()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        grads.insert(&contiguous_var, grad.contiguous().unwrap());
        contiguous.step(&grads).unwrap();
    }
    let a: Vec<f32> = strided_var.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = contiguous_var.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a, b);
    assert_ne!(a, base.flatten_all().unwrap().to_vec1::<f32>().unwrap());
}

#[test]
fn save_load_continue_equals_never_stopping() {
    let p = ParamsRmsProp {
        momentum: Some(0.9),
        centered: true,
        ..Default::default()
    };
    let straight = Mlp::new(DType::F32).unwrap();
    let resumed = Mlp::new(DType::F32).unwrap();
    let mut straight_opt = RmsProp::new(straight.vars.clone(), p).unwrap();
    let mut first_opt = RmsProp::new(resumed.vars.clone(), p).unwrap();
    for step in 0..5 {
        straight_opt
            .backward_step(&straight.loss(step).unwrap())
            .unwrap();
        first_opt
            .backward_step(&resumed.loss(step).unwrap())
            .unwrap();
    }
    let dir = std::env::temp_dir().join(format!("fused-rmsprop-candle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.safetensors");
    first_opt.save(&path).unwrap();
    drop(first_opt);
    let mut second_opt = RmsProp::new(resumed.vars.clone(), p).unwrap();
    second_opt.load(&path).unwrap();
    for step in 5..10 {
        straight_opt
            .backward_step(&straight.loss(step).unwrap())
            .unwrap();
        second_opt
            .backward_step(&resumed.loss(step).unwrap())
            .unwrap();
    }
    assert_eq!(
        straight.values(),
        resumed.values(),
        "bit-identical trajectory"
    );

    // A corrupt file and a file for other hyper-parameters: errors, state untouched.
    let corrupt = dir.join("corrupt.safetensors");
    std::fs::write(&corrupt, b"\x08\x00\x00\x00\x00\x00\x00\x00not json").unwrap();
    assert!(second_opt.load(&corrupt).is_err());
    let plain = RmsProp::new(resumed.vars.clone(), ParamsRmsProp::default()).unwrap();
    let other = dir.join("other.safetensors");
    plain.save(&other).unwrap();
    let err = second_opt.load(&other).unwrap_err().to_string();
    assert!(err.contains("lacks"), "{err}");
    let wrong_model =
        RmsProp::new(vec![Var::zeros(3, DType::F32, &Device::Cpu).unwrap()], p).unwrap();
    let small = dir.join("small.safetensors");
    wrong_model.save(&small).unwrap();
    assert!(second_opt.load(&small).is_err());
    // After the failed loads, training continues exactly as before them.
    straight_opt
        .backward_step(&straight.loss(10).unwrap())
        .unwrap();
    second_opt
        .backward_step(&resumed.loss(10).unwrap())
        .unwrap();
    assert_eq!(straight.values(), resumed.values());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_an_error_that_changes_nothing() {
    let v = Var::ones(4, DType::F32, &Device::Cpu).unwrap();
    assert!(
        RmsProp::new(
            vec![v.clone()],
            ParamsRmsProp {
                alpha: 2.0,
                ..Default::default()
            }
        )
        .is_err()
    );
    let mut opt = RmsProp::new(vec![v.clone()], ParamsRmsProp::default()).unwrap();
    opt.set_learning_rate(f64::NAN);
    let err = opt
        .backward_step(&v.as_tensor().sum_all().unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("lr"), "{err}");
    assert_eq!(v.to_vec1::<f32>().unwrap(), vec![1.0; 4]);
}
