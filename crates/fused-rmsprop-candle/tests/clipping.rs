//! Gradient clipping in the candle optimizer: `clip_value` per element and
//! `max_grad_norm` over every `Var` of the optimizer, in the kernel's bits
//! (the same as the bare kernel clipping the same gradients in one call),
//! close to the tensor-op formulation, and through the non-finite policies.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use fused_rmsprop::{GradClip, Group, Hyper, RmsProp as Kernel, State};
use fused_rmsprop_candle::{NonFinite, ParamsRmsProp, RmsProp, Route, TensorOpsRmsProp};

mod common;

use common::Mlp;

/// Variables of many sizes, so the step cuts them into several dispatches
/// (more than one batch of nested ops, some spread over the pool, some on
/// one thread each), with their gradients.
fn model(n: usize) -> (Vec<Var>, Vec<Vec<f32>>) {
    let sizes: Vec<usize> = (0..n)
        .map(|i| [3, 1000, 17, 70_000, 1][i % 5] + i)
        .collect();
    let mut sizes = sizes;
    sizes.push((1 << 20) + 5); // one variable the kernel spreads over the pool
    let vars = sizes
        .iter()
        .enumerate()
        .map(|(v, &len)| {
            let values: Vec<f32> = (0..len).map(|i| ((i + v) as f32 * 0.13).sin()).collect();
            Var::from_vec(values, len, &Device::Cpu).unwrap()
        })
        .collect();
    let grads = sizes
        .iter()
        .enumerate()
        .map(|(v, &len)| {
            (0..len)
                .map(|i| ((i * 3 + v) as f32 * 0.71).cos() * 2.0)
                .collect()
        })
        .collect();
    (vars, grads)
}

fn store(vars: &[Var], grads: &[Vec<f32>]) -> GradStore {
    let mut store = GradStore::default();
    for (var, g) in vars.iter().zip(grads) {
        store.insert(
            var.as_tensor(),
            Tensor::from_slice(g, g.len(), &Device::Cpu).unwrap(),
        );
    }
    store
}

fn values(vars: &[Var]) -> Vec<Vec<f32>> {
    vars.iter().map(|v| v.to_vec1::<f32>().unwrap()).collect()
}

fn bits(values: &[Vec<f32>]) -> Vec<Vec<u32>> {
    values
        .iter()
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect()
}

/// The bare kernel stepping the same start and gradients in one
/// `step_many` call with `clip`.
fn kernel_steps(
    hyper: Hyper,
    start: &[Vec<f32>],
    grads: &[Vec<f32>],
    steps: usize,
) -> (Vec<Vec<f32>>, Vec<Option<f64>>) {
    let kernel = Kernel::new(hyper).unwrap();
    let mut params = start.to_vec();
    let mut states: Vec<State<f32>> = params.iter().map(|p| State::new(p.len(), &hyper)).collect();
    let mut norms = Vec::new();
    for _ in 0..steps {
        let groups = params
            .iter_mut()
            .zip(grads)
            .zip(&mut states)
            .map(|((p, g), s)| Group::new(p, g, s.slices_mut()));
        norms.push(kernel.step_many(hyper.lr, groups).unwrap().grad_norm());
    }
    (params, norms)
}

/// `max_grad_norm` measures the norm of every variable together and
/// scales every gradient, across all the step's dispatches: the same bits
/// as the kernel's global clipping in one call, and the same norm.
#[test]
fn max_grad_norm_clips_by_the_norm_of_every_var_in_the_kernels_bits() {
    let (vars, grads) = model(40);
    let start = values(&vars);
    let params = ParamsRmsProp {
        momentum: Some(0.9),
        max_grad_norm: Some(1.0),
        ..Default::default()
    };
    let mut opt = RmsProp::new(vars.clone(), params).unwrap();
    let mut norms = Vec::new();
    for _ in 0..3 {
        opt.step(&store(&vars, &grads)).unwrap();
        norms.push(opt.last_grad_norm());
    }
    let hyper = params
        .hyper()
        .with_grad_clip(Some(GradClip::NormGlobal(1.0)));
    let (expected, kernel_norms) = kernel_steps(hyper, &start, &grads, 3);
    assert!(
        bits(&values(&vars)) == bits(&expected),
        "parameters differ from the kernel's"
    );
    assert_eq!(norms, kernel_norms);
    assert!(norms[0].unwrap() > 1.0, "the test clips: {norms:?}");
}

/// `clip_value` clamps each element inside the step: the kernel's bits.
#[test]
fn clip_value_clamps_inside_the_step_in_the_kernels_bits() {
    let (vars, grads) = model(12);
    let start = values(&vars);
    let params = ParamsRmsProp {
        clip_value: Some(0.5),
        ..Default::default()
    };
    let mut opt = RmsProp::new(vars.clone(), params).unwrap();
    for _ in 0..2 {
        opt.step(&store(&vars, &grads)).unwrap();
    }
    assert_eq!(opt.last_grad_norm(), None);
    let (expected, _) = kernel_steps(params.hyper(), &start, &grads, 2);
    assert!(bits(&values(&vars)) == bits(&expected));
}

/// The tensor-op route clips the same way, within the tolerance of that
/// route (`tests/training.rs`), on a real MLP.
#[test]
fn the_tensor_op_route_clips_as_the_kernel_does() {
    for params in [
        ParamsRmsProp {
            max_grad_norm: Some(0.05),
            ..Default::default()
        },
        ParamsRmsProp {
            clip_value: Some(0.01),
            momentum: Some(0.5),
            ..Default::default()
        },
    ] {
        let fused_model = Mlp::new(DType::F32).unwrap();
        let ops_model = Mlp::new(DType::F32).unwrap();
        let forced_model = Mlp::new(DType::F32).unwrap();
        let mut fused = RmsProp::new(fused_model.vars.clone(), params).unwrap();
        let mut ops = TensorOpsRmsProp::new(ops_model.vars.clone(), params).unwrap();
        let mut forced =
            RmsProp::with_route(forced_model.vars.clone(), params, Route::TensorOps).unwrap();
        for step in 0..10 {
            fused
                .backward_step(&fused_model.loss(step).unwrap())
                .unwrap();
            ops.backward_step(&ops_model.loss(step).unwrap()).unwrap();
            forced
                .backward_step(&forced_model.loss(step).unwrap())
                .unwrap();
            if let (Some(a), Some(b)) = (fused.last_grad_norm(), forced.last_grad_norm()) {
                assert!((a - b).abs() <= 1e-6 * a.max(1.0), "norms {a} and {b}");
            }
        }
        for (reference, model) in [(&ops_model, &fused_model), (&ops_model, &forced_model)] {
            for (a, b) in reference
                .values()
                .iter()
                .flatten()
                .zip(model.values().iter().flatten())
            {
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                    "{params:?}: {a} against {b}"
                );
            }
        }
    }
}

/// Non-finite gradients with `max_grad_norm`: a NaN makes the norm NaN and
/// every variable NaN (PyTorch's behaviour); under `Skip` the poisoned
/// variable is skipped and left out of the norm.
#[test]
fn non_finite_gradients_under_each_policy() {
    let run = |non_finite| {
        let a = Var::from_vec(vec![0.0f32; 2], 2, &Device::Cpu).unwrap();
        let b = Var::from_vec(vec![0.0f32; 2], 2, &Device::Cpu).unwrap();
        let params = ParamsRmsProp {
            max_grad_norm: Some(1.0),
            non_finite,
            ..Default::default()
        };
        let mut opt = RmsProp::new(vec![a.clone(), b.clone()], params).unwrap();
        let grads = store(
            &[a.clone(), b.clone()],
            &[vec![3.0, 4.0], vec![1.0, f32::NAN]],
        );
        opt.step(&grads).unwrap();
        (
            values(&[a, b]),
            opt.last_grad_norm(),
            opt.last_skipped().len(),
        )
    };
    let (values, norm, skipped) = run(NonFinite::Propagate);
    assert!(norm.unwrap().is_nan());
    assert!(values.iter().flatten().all(|x| x.is_nan()), "{values:?}");
    assert_eq!(skipped, 0);
    let (values, norm, skipped) = run(NonFinite::Skip);
    assert_eq!(norm, Some(5.0));
    assert_eq!(skipped, 1);
    assert_eq!(values[1], vec![0.0, 0.0]);
    assert!(values[0].iter().all(|x| x.is_finite() && *x < 0.0));
}

/// A zero gradient has norm 0 and moves nothing.
#[test]
fn a_zero_gradient_has_norm_zero() {
    let w = Var::from_vec(vec![1.0f32; 3], 3, &Device::Cpu).unwrap();
    let params = ParamsRmsProp {
        max_grad_norm: Some(1.0),
        ..Default::default()
    };
    let mut opt = RmsProp::new(vec![w.clone()], params).unwrap();
    opt.step(&store(std::slice::from_ref(&w), &[vec![0.0; 3]]))
        .unwrap();
    assert_eq!(opt.last_grad_norm(), Some(0.0));
    assert_eq!(w.to_vec1::<f32>().unwrap(), vec![1.0; 3]);
}

/// Invalid bounds and both options at once are refused when the optimizer
/// is built, naming the field.
#[test]
fn invalid_clipping_settings_are_refused() {
    for params in [
        ParamsRmsProp {
            clip_value: Some(-1.0),
            ..Default::default()
        },
        ParamsRmsProp {
            max_grad_norm: Some(f64::NAN),
            ..Default::default()
        },
        ParamsRmsProp {
            clip_value: Some(1.0),
            max_grad_norm: Some(1.0),
            ..Default::default()
        },
    ] {
        let err = RmsProp::new(vec![], params).unwrap_err().to_string();
        assert!(
            err.contains("clip_value") || err.contains("max_grad_norm"),
            "{err}"
        );
        let err = TensorOpsRmsProp::new(vec![], params)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("clip_value") || err.contains("max_grad_norm"),
            "{err}"
        );
    }
}
