//! The non-finite gradient policy through the candle optimizer.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use fused_rmsprop::NonFinite;
use fused_rmsprop_candle::{ParamsRmsProp, RmsProp};

fn vars() -> (Var, Var) {
    let a = Var::new(&[1.0f32, 2.0, 3.0], &Device::Cpu).unwrap();
    let b = Var::new(&[4.0f32, 5.0], &Device::Cpu).unwrap();
    (a, b)
}

/// Gradients for `a` (clean) and `b` (poisoned with `bad`).
fn grads(a: &Var, b: &Var, bad: f32) -> GradStore {
    let loss = (a.as_tensor().sum_all().unwrap() + b.as_tensor().sum_all().unwrap()).unwrap();
    let mut grads = loss.backward().unwrap();
    grads.insert(
        a.as_tensor(),
        Tensor::new(&[0.5f32, -0.5, 0.25], &Device::Cpu).unwrap(),
    );
    grads.insert(
        b.as_tensor(),
        Tensor::new(&[bad, 1.0], &Device::Cpu).unwrap(),
    );
    grads
}

fn with(policy: NonFinite) -> ParamsRmsProp {
    ParamsRmsProp {
        momentum: Some(0.9),
        non_finite: policy,
        ..Default::default()
    }
}

#[test]
fn skip_leaves_the_poisoned_variable_untouched_and_says_so() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let (a, b) = vars();
        let mut opt = RmsProp::new(vec![a.clone(), b.clone()], with(NonFinite::Skip)).unwrap();
        opt.step(&grads(&a, &b, bad)).unwrap();
        assert_eq!(b.to_vec1::<f32>().unwrap(), [4.0, 5.0]);
        let skipped = opt.last_skipped();
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].id(), b.id());

        // `a` moved as it does under the default policy.
        let (a2, b2) = vars();
        let mut plain =
            RmsProp::new(vec![a2.clone(), b2.clone()], with(NonFinite::Propagate)).unwrap();
        plain.step(&grads(&a2, &b2, bad)).unwrap();
        assert_eq!(a.to_vec1::<f32>().unwrap(), a2.to_vec1::<f32>().unwrap());
        assert!(plain.last_skipped().is_empty());
        assert!(b2.to_vec1::<f32>().unwrap()[0].is_nan());
    }
}

#[test]
fn error_writes_nothing() {
    let (a, b) = vars();
    let mut opt = RmsProp::new(vec![a.clone(), b.clone()], with(NonFinite::Error)).unwrap();
    let err = opt.step(&grads(&a, &b, f32::NAN)).unwrap_err();
    assert!(err.to_string().contains("NaN or an infinity"), "{err}");
    assert_eq!(a.to_vec1::<f32>().unwrap(), [1.0, 2.0, 3.0]);
    assert_eq!(b.to_vec1::<f32>().unwrap(), [4.0, 5.0]);
}

/// f32 and f64 variables are two dispatches; a poisoned f64 gradient must
/// stop the f32 one too.
#[test]
fn error_writes_nothing_across_dtypes() {
    let a = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
    let b = Var::new(&[4.0f64, 5.0], &Device::Cpu).unwrap();
    let mut opt = RmsProp::new(vec![a.clone(), b.clone()], with(NonFinite::Error)).unwrap();
    let loss = (a.as_tensor().sum_all().unwrap()
        + b.as_tensor()
            .to_dtype(DType::F32)
            .unwrap()
            .sum_all()
            .unwrap())
    .unwrap();
    let mut g = loss.backward().unwrap();
    g.insert(
        a.as_tensor(),
        Tensor::new(&[0.5f32, 0.5], &Device::Cpu).unwrap(),
    );
    g.insert(
        b.as_tensor(),
        Tensor::new(&[f64::INFINITY, 0.5], &Device::Cpu).unwrap(),
    );
    assert!(opt.step(&g).is_err());
    assert_eq!(a.to_vec1::<f32>().unwrap(), [1.0, 2.0]);
    assert_eq!(b.to_vec1::<f64>().unwrap(), [4.0, 5.0]);
}

/// With poisoned gradients in several dtypes the error names the first
/// variable in the optimizer's order, whichever dtype is stepped first.
#[test]
fn error_names_the_first_poisoned_variable_across_dtypes() {
    let wide = Var::new(&[4.0f64, 5.0], &Device::Cpu).unwrap();
    let narrow = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
    let mut opt = RmsProp::new(vec![wide.clone(), narrow.clone()], with(NonFinite::Error)).unwrap();
    let mut g = candle_core::backprop::GradStore::default();
    g.insert(
        wide.as_tensor(),
        Tensor::new(&[0.5f64, f64::NAN], &Device::Cpu).unwrap(),
    );
    g.insert(
        narrow.as_tensor(),
        Tensor::new(&[f32::INFINITY, 0.5], &Device::Cpu).unwrap(),
    );
    let err = opt.step(&g).unwrap_err().to_string();
    assert!(
        err.contains("group 0") && err.contains("element 1"),
        "{err}"
    );
}

/// Zero-element variables: accepted, stepped (nothing to do), saved and
/// loaded like any other.
#[test]
fn zero_element_variables_step_and_round_trip() {
    let empty = Var::from_tensor(&Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap()).unwrap();
    let (a, _) = vars();
    let mut opt = RmsProp::new(vec![empty.clone(), a.clone()], ParamsRmsProp::default()).unwrap();
    let loss = (a.as_tensor().sum_all().unwrap() + empty.as_tensor().sum_all().unwrap()).unwrap();
    opt.backward_step(&loss).unwrap();
    assert_eq!(empty.elem_count(), 0);
    let path = std::env::temp_dir().join(format!("zero-{}.safetensors", std::process::id()));
    opt.save(&path).unwrap();
    opt.load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
}
