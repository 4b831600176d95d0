//! Checkpoints (burn's own optimizer record, both directions), records that
//! do not fit, and what `ModuleOptimizer` adds on top of the bare optimizer:
//! gradient clipping and learning-rate schedulers.

use burn::grad_clipping::GradientClippingConfig;
use burn::lr_scheduler::exponential::ExponentialLrSchedulerConfig;
use burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{
    GradientsParams, ModuleOptimizer, Optimizer, RecordState, RmsPropConfig, StateSink, StateSource,
};
use burn::tensor::{Bytes, DType, Device, Tensor, TensorCreationOptions, TensorData};
use fused_rmsprop_burn::{FusedRmsPropConfig, FusedRmsPropState};

const TOL: f64 = 1e-6;

#[derive(Module, Debug)]
struct Net {
    a: Linear,
    b: Linear,
}

impl Net {
    fn new() -> Self {
        let device = device();
        Self {
            a: LinearConfig::new(5, 7).init(&device),
            b: LinearConfig::new(7, 2).init(&device),
        }
    }

    /// The same net with every parameter converted to `dtype`.
    fn cast(self, dtype: DType) -> Self {
        let cast = |l: Linear| Linear {
            weight: burn::module::Param::from_tensor(Tensor::from_inner(
                l.weight.val().inner().cast(dtype),
            )),
            bias: l.bias.map(|b| {
                burn::module::Param::from_tensor(Tensor::from_inner(b.val().inner().cast(dtype)))
            }),
        };
        Self {
            a: cast(self.a),
            b: cast(self.b),
        }
    }

    fn values(&self) -> Vec<f64> {
        let mut out = Vec::new();
        for l in [&self.a, &self.b] {
            out.extend(to_vec(l.weight.val()));
            out.extend(to_vec(l.bias.as_ref().unwrap().val()));
        }
        out
    }
}

fn device() -> Device {
    Device::default().autodiff()
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().convert::<f64>().try_to_vec::<f64>().unwrap()
}

fn batch(i: usize, shape: [usize; 2], dtype: DType) -> Tensor<2> {
    let values: Vec<f32> = (0..shape[0] * shape[1])
        .map(|k| (((k * 7 + i * 13) % 17) as f32 - 8.0) / 8.0)
        .collect();
    let options = TensorCreationOptions::new(device()).with_dtype(dtype);
    Tensor::from_data(TensorData::new(values, shape), options)
}

fn train(
    optim: &mut ModuleOptimizer,
    net: Net,
    i: usize,
    lr: impl Into<ModuleLearningRate>,
) -> Net {
    let dtype = net.a.weight.val().dtype();
    let x = batch(i, [4, 5], dtype);
    let y = batch(i + 100, [4, 2], dtype);
    let out = net.b.forward(net.a.forward(x).tanh());
    let loss = (out - y).powi_scalar(2).mean().mul_scalar(10.0);
    let grads = GradientsParams::from_grads(loss.backward(), &net);
    optim.step(lr, net, grads)
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn burn_config() -> RmsPropConfig {
    RmsPropConfig::new().with_centered(true).with_momentum(0.5)
}

fn fused_config() -> FusedRmsPropConfig {
    FusedRmsPropConfig::new()
        .with_centered(true)
        .with_momentum(0.5)
}

/// Trains 3 steps with `first`, checkpoints it, then continues 3 steps with
/// `first` and with `second` loaded from the checkpoint; returns the two
/// continuations and a third continued by `second` from a fresh state.
fn resume(
    first: ModuleOptimizer,
    second: impl Fn() -> ModuleOptimizer,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    resume_in(DType::F32, first, second)
}

/// [`resume`] on a net of `dtype`.
fn resume_in(
    dtype: DType,
    mut first: ModuleOptimizer,
    second: impl Fn() -> ModuleOptimizer,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut net = Net::new().cast(dtype);
    for i in 0..3 {
        net = train(&mut first, net, i, 0.01);
    }
    let bytes = first.into_bytes().unwrap();
    let mut loaded = second().from_bytes(bytes).unwrap();
    let mut fresh = second();
    let (mut a, mut b, mut c) = (net.clone(), net.clone(), net);
    for i in 3..6 {
        a = train(&mut first, a, i, 0.01);
        b = train(&mut loaded, b, i, 0.01);
        c = train(&mut fresh, c, i, 0.01);
    }
    (a.values(), b.values(), c.values())
}

#[test]
fn a_checkpoint_of_burns_rmsprop_resumes_in_the_fused_optimizer() {
    let (burn, fused, fresh) = resume(burn_config().init(), || fused_config().init());
    let diff = max_abs_diff(&burn, &fused);
    assert!(diff <= TOL, "resumed trajectory differs by {diff:e}");
    assert!(
        max_abs_diff(&burn, &fresh) > 100.0 * TOL,
        "the state made no difference: the test cannot tell a loaded state from a fresh one"
    );
}

#[test]
fn a_checkpoint_of_the_fused_optimizer_resumes_in_burns_rmsprop() {
    let (fused, burn, fresh) = resume(fused_config().init(), || burn_config().init());
    let diff = max_abs_diff(&fused, &burn);
    assert!(diff <= TOL, "resumed trajectory differs by {diff:e}");
    assert!(max_abs_diff(&fused, &fresh) > 100.0 * TOL);
}

/// bf16 and f16 nets: burn's `RmsProp` keeps its state in the parameter's
/// dtype, the fused optimizer in `f32`. A checkpoint of burn's loads into the
/// fused optimizer: its 16-bit state is widened exactly to `f32`, and the
/// continuation stays within a few 16-bit ulps of burn's own (burn computes
/// in 16 bits, the fused step in `f32`: the difference is burn's rounding,
/// not the record). The other way, burn 0.22.1's `RmsProp` loads the `f32`
/// state as it is and then panics at its next step, in burn-flex's binary
/// op ("dtype mismatch": it does not convert a loaded state to the
/// parameter's dtype). That is burn's behaviour, documented in the crate
/// docs; this test fails when burn changes it, so the docs can follow.
#[test]
fn half_checkpoints_of_burns_rmsprop_resume_in_the_fused_optimizer() {
    for (dtype, tolerance) in [(DType::BF16, 0.05), (DType::F16, 0.01)] {
        let (burn, fused, fresh) = resume_in(dtype, burn_config().init(), || fused_config().init());
        let diff = max_abs_diff(&burn, &fused);
        assert!(
            diff <= tolerance,
            "{dtype:?}: burn -> fused differs by {diff:e}"
        );
        assert!(
            max_abs_diff(&fused, &fresh) > 0.0,
            "{dtype:?}: the state made no difference"
        );
        let back = std::panic::catch_unwind(|| {
            resume_in(dtype, fused_config().init(), || burn_config().init())
        });
        assert!(
            back.is_err(),
            "{dtype:?}: burn's RmsProp now steps an f32 state of a 16-bit parameter"
        );
    }
}

#[test]
fn a_fused_checkpoint_resumes_exactly_and_keeps_f64() {
    let device = Device::default();
    let optim = fused_config().build();
    let options = TensorCreationOptions::new(device.clone()).with_dtype(DType::F64);
    let p = Tensor::<1>::from_data(TensorData::from([1.0f64, -2.0, 3.0]), options.clone());
    let g = Tensor::<1>::from_data(TensorData::from([0.3f64, 0.1, -0.7]), options);
    let (p, state) = optim.step(0.01, p, g.clone(), None);
    let state = state.unwrap();

    let mut sink = StateSink::default();
    state.state_flatten("7", &mut sink);
    let mut source = StateSource::default();
    for (name, data) in sink.tensors {
        source.insert_tensor(name, data);
    }
    let loaded = FusedRmsPropState::<1>::state_unflatten("7", &mut source, &device).unwrap();
    assert_eq!(loaded.full().unwrap().square_avg.dtype(), DType::F64);

    let (a, _) = optim.step(0.01, p.clone(), g.clone(), Some(state));
    let (b, _) = optim.step(0.01, p, g, Some(loaded));
    assert_eq!(to_vec(a), to_vec(b));
}

#[test]
fn records_that_do_not_fit_are_refused_without_panic() {
    let device = Device::default();
    let t = |v: &[f32]| TensorData::from(v);
    let cases: Vec<(&str, Vec<(&str, TensorData)>)> = vec![
        (
            "no square average",
            vec![("p.momentum.buf", t(&[1.0, 2.0]))],
        ),
        (
            "grad_avg of another shape",
            vec![
                ("p.square_avg.square_avg", t(&[1.0, 2.0])),
                ("p.centered.grad_avg", t(&[1.0])),
            ],
        ),
        (
            "momentum of another dtype",
            vec![
                ("p.square_avg.square_avg", t(&[1.0, 2.0])),
                ("p.momentum.buf", TensorData::from([1.0f64, 2.0])),
            ],
        ),
        (
            "an integer square average",
            vec![("p.square_avg.square_avg", TensorData::from([1i32, 2]))],
        ),
        (
            "rank 2 for a rank 1 state",
            vec![("p.square_avg.square_avg", TensorData::from([[1.0f32, 2.0]]))],
        ),
    ];
    for (name, tensors) in cases {
        let mut source = StateSource::default();
        for (key, data) in tensors {
            source.insert_tensor(key.to_string(), data);
        }
        let loaded = FusedRmsPropState::<1>::state_unflatten("p", &mut source, &device);
        assert!(loaded.is_none(), "{name}: accepted");
    }
}

#[test]
fn corrupt_checkpoint_bytes_are_an_error() {
    for bytes in [
        vec![],
        vec![0u8; 64],
        b"not a burnpack file at all".to_vec(),
    ] {
        let result = fused_config()
            .init()
            .from_bytes(Bytes::from_bytes_vec(bytes));
        assert!(result.is_err());
    }
}

/// A state of another shape (a checkpoint of another model) is replaced by
/// a fresh one: the step equals a first step, and it is counted.
#[test]
fn a_state_of_another_shape_starts_afresh() {
    let device = Device::default();
    let optim = fused_config().build();
    let p = Tensor::<1>::from_floats([1.0, 2.0, 3.0], &device);
    let g = Tensor::<1>::from_floats([0.5, 0.5, 0.5], &device);
    let other = Tensor::<1>::from_floats([9.0, 9.0], &device);
    let (_, wrong) = optim.step(0.01, other.clone(), other, None);
    let (a, _) = optim.step(0.01, p.clone(), g.clone(), wrong);
    let (b, _) = optim.step(0.01, p, g, None);
    assert_eq!(to_vec(a), to_vec(b));
    assert_eq!(optim.stats().states_reset, 1);
}

/// Runs `steps` with burn's `RmsProp` and with the fused optimizer, both
/// built by `make` (clipping through `init`), at the learning rates `lrs`.
fn both(
    burn: RmsPropConfig,
    fused: FusedRmsPropConfig,
    lrs: &mut dyn FnMut() -> (ModuleLearningRate, ModuleLearningRate),
) -> (Vec<f64>, Vec<f64>) {
    let net = Net::new();
    let (mut a, mut b) = (net.clone(), net);
    let (mut oa, mut ob) = (burn.init(), fused.init());
    for i in 0..8 {
        let (la, lb) = lrs();
        a = train(&mut oa, a, i, la);
        b = train(&mut ob, b, i, lb);
    }
    (a.values(), b.values())
}

#[test]
fn gradient_clipping_applies_as_for_burns_rmsprop() {
    let clip = || Some(GradientClippingConfig::Value(0.01));
    let mut constant = || (0.01.into(), 0.01.into());
    let (burn, fused) = both(
        burn_config().with_grad_clipping(clip()),
        fused_config().with_grad_clipping(clip()),
        &mut constant,
    );
    assert!(max_abs_diff(&burn, &fused) <= TOL);
    let (_, unclipped) = both(burn_config(), fused_config(), &mut constant);
    assert!(
        max_abs_diff(&fused, &unclipped) > 100.0 * TOL,
        "clipping changed nothing: the test cannot see it"
    );
}

#[test]
fn a_learning_rate_scheduler_drives_the_step_as_for_burns_rmsprop() {
    let config = ExponentialLrSchedulerConfig::new(0.05, 0.7);
    let (mut sa, mut sb) = (config.init().unwrap(), config.init().unwrap());
    let (burn, fused) = both(burn_config(), fused_config(), &mut || {
        (sa.step(), sb.step())
    });
    assert!(max_abs_diff(&burn, &fused) <= TOL);
    let (_, constant) = both(burn_config(), fused_config(), &mut || {
        (0.05.into(), 0.05.into())
    });
    assert!(max_abs_diff(&fused, &constant) > 100.0 * TOL);
}

/// A record that parses but that burn 0.22.1's loader panics on (found by
/// fuzzing): `load_record` returns an error instead, and the optimizer
/// still takes a good record afterwards.
#[test]
fn load_record_refuses_what_burns_loader_panics_on() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/corpus/state_load/regression-burn-record-without-param-id"
    );
    let bad = std::fs::read(path).unwrap();
    let mut net = Net::new();
    let (mut a, mut b) = (fused_config().init(), fused_config().init());
    for i in 0..2 {
        net = train(&mut a, net.clone(), i, 0.01);
        let _ = train(&mut b, net.clone(), i, 0.01);
    }
    let result = fused_rmsprop_burn::load_record(&mut a, Bytes::from_bytes_vec(bad));
    assert!(
        matches!(
            result,
            Err(fused_rmsprop_burn::RecordLoadError::Malformed(_))
        ),
        "{result:?}"
    );
    let good = b.into_bytes().unwrap();
    fused_rmsprop_burn::load_record(&mut a, good).unwrap();
}
