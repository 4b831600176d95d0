//! One kernel, one answer, whatever the framework: the same parameters and
//! gradients stepped through the bare kernel, the Candle adapter and the
//! Burn adapter (both routes: per parameter, and batched over a module) give
//! the same bits, step after step, for every variant both
//! adapters support (all of the kernel's), on inputs that include NaN, Inf,
//! zero, subnormals and huge magnitudes; for `f32`, `bf16` and `f16`
//! parameters, the 16-bit ones with every rounding option (to nearest or
//! stochastic, with or without master weights). The stochastic-rounding
//! keys map one to one: the bare kernel's `RmsProp::step` keys a tensor by
//! its state's step count and stream 0; candle by the variable's step count
//! and its index (0 here); burn by the parameter's step count and the order
//! in which it was first stepped (0 here, the one parameter). With 8-bit
//! state (both formats, on tensors of 4096 elements and more) the codes and
//! scales agree too.

use burn::module::{Module, Param as BurnParam};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{Device as BurnDevice, Tensor as BurnTensor, TensorData};
use candle_core::{Device as CandleDevice, Tensor as CandleTensor, Var};
use candle_nn::Optimizer as _;
use fused_rmsprop::testing::{Arbitrary16, element, half_element, half_hyper, hyper};
use fused_rmsprop::{
    Blockwise8State, EpsPlacement, GradClip, Hyper, Param, RmsProp, Rounding, State, StateFormat,
    WeightDecay, bf16, f16,
};
use fused_rmsprop_burn::{FusedRmsPropConfig, FusedRmsPropState};
use fused_rmsprop_candle::ParamsRmsProp;
use proptest::prelude::*;

/// `hyper` with every field rounded to `f32`, burn's config type, so that
/// one set of hyper-parameters reaches all three unchanged.
fn representable_in_f32(h: Hyper) -> Hyper {
    let r = |x: f64| f64::from(x as f32);
    Hyper {
        lr: r(h.lr),
        alpha: r(h.alpha),
        eps: r(h.eps),
        initial_square_avg: r(h.initial_square_avg),
        momentum: r(h.momentum),
        weight_decay: h.weight_decay.map(|wd| match wd {
            WeightDecay::Coupled(x) => WeightDecay::Coupled(r(x)),
            WeightDecay::Decoupled(x) => WeightDecay::Decoupled(r(x)),
        }),
        ..h
    }
}

fn burn_config(h: &Hyper) -> FusedRmsPropConfig {
    FusedRmsPropConfig::new()
        .with_alpha(h.alpha as f32)
        .with_momentum(h.momentum as f32)
        .with_epsilon(h.eps as f32)
        .with_centered(h.centered)
        .with_weight_decay(
            h.weight_decay
                .map(|wd| burn::optim::decay::WeightDecayConfig::new(wd.coefficient() as f32)),
        )
        .with_decoupled_weight_decay(matches!(h.weight_decay, Some(WeightDecay::Decoupled(_))))
        .with_eps_inside_sqrt(h.eps_placement == EpsPlacement::InsideSqrt)
        .with_initial_square_avg(h.initial_square_avg as f32)
        .with_nesterov(h.nesterov)
        .with_maximize(h.maximize)
        .with_clamp_centered_variance(h.clamp_centered_variance)
        .with_rounding(h.rounding)
        .with_master_weights(h.master_weights)
}

fn candle_params(h: &Hyper) -> ParamsRmsProp {
    ParamsRmsProp {
        lr: h.lr,
        alpha: h.alpha,
        eps: h.eps,
        weight_decay: h.weight_decay.map(WeightDecay::coefficient),
        momentum: (h.momentum > 0.0).then_some(h.momentum),
        centered: h.centered,
        decoupled_weight_decay: matches!(h.weight_decay, Some(WeightDecay::Decoupled(_))),
        eps_placement: h.eps_placement,
        initial_square_avg: h.initial_square_avg,
        nesterov: h.nesterov,
        clamp_centered_variance: h.clamp_centered_variance,
        maximize: h.maximize,
        non_finite: h.non_finite,
        rounding: h.rounding,
        master_weights: h.master_weights,
        clip_value: match h.grad_clip {
            Some(GradClip::Value(max)) => Some(max),
            _ => None,
        },
        max_grad_norm: match h.grad_clip {
            Some(GradClip::NormGlobal(max)) => Some(max),
            _ => None,
        },
        state_format: h.state_format,
    }
}

/// A parameter type all three step: `f32`, `bf16`, `f16` (state `f32`).
trait Elem: Param<State = f32> + candle_core::WithDType + burn::tensor::Element {}
impl Elem for f32 {}
impl Elem for bf16 {}
impl Elem for f16 {}

/// The first index where the parameters' bits differ.
fn first_param_difference<P: Elem>(actual: &[P], expected: &[P]) -> Option<(usize, u64, u64)> {
    if actual.len() != expected.len() {
        return Some((actual.len().min(expected.len()), 0, 0));
    }
    actual
        .iter()
        .zip(expected)
        .position(|(a, e)| a.to_bits_u64() != e.to_bits_u64())
        .map(|i| (i, actual[i].to_bits_u64(), expected[i].to_bits_u64()))
}

/// The first index where the bits differ, with both values' bits.
fn first_difference(actual: &[f32], expected: &[f32]) -> Option<(usize, u32, u32)> {
    if actual.len() != expected.len() {
        return Some((actual.len().min(expected.len()), 0, 0));
    }
    actual
        .iter()
        .zip(expected)
        .position(|(a, e)| a.to_bits() != e.to_bits())
        .map(|i| (i, actual[i].to_bits(), expected[i].to_bits()))
}

/// One candle step of `var` with gradient `g`.
fn candle_step<P: Elem>(candle: &mut fused_rmsprop_candle::RmsProp, var: &Var, g: Vec<P>) {
    let grad = CandleTensor::from_vec(g, var.elem_count(), var.device()).unwrap();
    let mut store = var.as_tensor().sum_all().unwrap().backward().unwrap();
    store.insert(var.as_tensor(), grad);
    candle.step(&store).unwrap();
}

/// One step of the batched route on the module in `one` (put back there).
fn batched_step(
    batched: &mut fused_rmsprop_burn::BatchedRmsProp,
    one: &mut Option<One>,
    lr: f64,
    grad: BurnTensor<1>,
) -> Result<Vec<burn::module::ParamId>, fused_rmsprop_burn::BatchedError> {
    let mut grads = GradientsParams::new();
    let module = one.take().unwrap();
    grads.register(module.p.id, grad);
    let (module, outcome) = batched.step(lr, module, grads);
    *one = Some(module);
    outcome
}

/// One parameter, for the batched route, which steps a module.
#[derive(Module, Debug)]
struct One {
    p: BurnParam<BurnTensor<1>>,
}

fn burn_values<P: Elem>(t: &BurnTensor<1>) -> Vec<P> {
    t.to_data().try_to_vec::<P>().unwrap()
}

/// Steps `params` with each gradient of `grads` in turn through all three,
/// asserting equal bits after every step.
fn check_same_bits<P: Elem>(
    h: Hyper,
    params: Vec<P>,
    grads: Vec<Vec<P>>,
) -> Result<(), TestCaseError> {
    let n = params.len();
    let config = burn_config(&h);
    prop_assert_eq!(
        config.hyper().with_lr(h.lr),
        h,
        "the burn config maps back to the hyper"
    );
    prop_assert_eq!(candle_params(&h).hyper(), h);

    let kernel = RmsProp::new(h).unwrap();
    let mut kernel_params = params.clone();
    let mut kernel_state = State::for_params(&kernel_params, &h);

    let device = CandleDevice::Cpu;
    let var = Var::from_vec(params.clone(), n, &device).unwrap();
    let mut candle =
        fused_rmsprop_candle::RmsProp::new(vec![var.clone()], candle_params(&h)).unwrap();

    let burn = config.build();
    let burn_device = BurnDevice::default();
    let options = burn::tensor::TensorCreationOptions::new(burn_device.clone())
        .with_dtype(<P as burn::tensor::Element>::dtype());
    let mut burn_param = BurnTensor::<1>::from_data(TensorData::new(params, [n]), options.clone());
    let mut burn_state: Option<FusedRmsPropState<1>> = None;
    let mut batched = config.init_batched();
    let mut one = Some(One {
        p: BurnParam::from_tensor(burn_param.clone().autodiff()),
    });

    for (step, g) in grads.into_iter().enumerate() {
        kernel
            .step(&mut kernel_params, &g, &mut kernel_state)
            .unwrap();

        candle_step(&mut candle, &var, g.clone());

        let burn_grad = BurnTensor::<1>::from_data(TensorData::new(g, [n]), options.clone());
        let outcome = batched_step(&mut batched, &mut one, h.lr, burn_grad.clone());
        prop_assert_eq!(outcome, Ok(Vec::new()));
        let (p, s) = burn.step(h.lr, burn_param, burn_grad, burn_state);
        (burn_param, burn_state) = (p, s);

        let candle_params = var.to_vec1::<P>().unwrap();
        let diff = first_param_difference(&candle_params, &kernel_params);
        prop_assert!(
            diff.is_none(),
            "candle params differ at step {}: (index, bits, kernel's bits) {:?}",
            step,
            diff
        );
        let diff = first_param_difference(&burn_values::<P>(&burn_param), &kernel_params);
        prop_assert!(
            diff.is_none(),
            "burn params differ at step {}: (index, bits, kernel's bits) {:?}",
            step,
            diff
        );
        let batched_values = burn_values::<P>(&one.as_ref().unwrap().p.val());
        let diff = first_param_difference(&batched_values, &kernel_params);
        prop_assert!(
            diff.is_none(),
            "burn's batched route differs at step {}: (index, bits, kernel's bits) {:?}",
            step,
            diff
        );
        let burn_state = burn_state.as_ref().unwrap();
        let burn_square_avg = burn_values::<f32>(&burn_state.full().unwrap().square_avg);
        let diff = first_difference(&burn_square_avg, &kernel_state.square_avg);
        prop_assert!(
            diff.is_none(),
            "burn square_avg differs at step {}: (index, bits, kernel's bits) {:?}",
            step,
            diff
        );
        let burn_master = burn_state.master.as_ref().map(burn_values::<f32>);
        prop_assert_eq!(
            burn_master
                .as_deref()
                .map(|m| m.iter().map(|x| x.to_bits()).collect::<Vec<_>>()),
            kernel_state
                .master
                .as_deref()
                .map(|m| m.iter().map(|x| x.to_bits()).collect::<Vec<_>>()),
            "burn's master copy differs at step {}",
            step
        );
        if let Rounding::Stochastic { .. } = h.rounding {
            let key = burn_state.rounding_key.expect("a rounding key");
            prop_assert_eq!((key.step, key.stream), (kernel_state.step, 0));
        }
    }
    let stats = burn.stats();
    prop_assert_eq!(
        stats.composed_steps,
        0,
        "burn left the in-place route: {:?}",
        stats
    );
    Ok(())
}

/// [`check_same_bits`] with 8-bit state (`h.state_format` is
/// `Blockwise8`) on tensors of at least `MIN_8BIT_ELEMENTS`: the bare
/// kernel's `step_blockwise8`, candle and burn (both routes) give the same
/// parameters, and the kernel, candle and burn's per-parameter route the
/// same codes and scales.
fn check_same_bits_8bit<P: Elem>(
    h: Hyper,
    params: Vec<P>,
    grads: Vec<Vec<P>>,
) -> Result<(), TestCaseError> {
    let n = params.len();
    let config = burn_config(&h).with_state_format(h.state_format);
    prop_assert_eq!(config.hyper().with_lr(h.lr), h);

    let kernel = RmsProp::new(h).unwrap();
    let mut kernel_params = params.clone();
    let mut kernel_state = Blockwise8State::for_params(&kernel_params, &h);

    let device = CandleDevice::Cpu;
    let var = Var::from_vec(params.clone(), n, &device).unwrap();
    let mut candle =
        fused_rmsprop_candle::RmsProp::new(vec![var.clone()], candle_params(&h)).unwrap();

    let burn = config.build();
    let options = burn::tensor::TensorCreationOptions::new(BurnDevice::default())
        .with_dtype(<P as burn::tensor::Element>::dtype());
    let mut burn_param = BurnTensor::<1>::from_data(TensorData::new(params, [n]), options.clone());
    let mut burn_state: Option<FusedRmsPropState<1>> = None;
    let mut batched = config.init_batched();
    let mut one = Some(One {
        p: BurnParam::from_tensor(burn_param.clone().autodiff()),
    });

    for (step, g) in grads.into_iter().enumerate() {
        kernel
            .step_blockwise8(&mut kernel_params, &g, &mut kernel_state)
            .unwrap();

        candle_step(&mut candle, &var, g.clone());

        let burn_grad = BurnTensor::<1>::from_data(TensorData::new(g, [n]), options.clone());
        let outcome = batched_step(&mut batched, &mut one, h.lr, burn_grad.clone());
        prop_assert_eq!(outcome, Ok(Vec::new()));
        (burn_param, burn_state) = burn.step(h.lr, burn_param, burn_grad, burn_state);

        let diff = first_param_difference(&var.to_vec1::<P>().unwrap(), &kernel_params);
        prop_assert!(
            diff.is_none(),
            "candle params differ at step {}: {:?}",
            step,
            diff
        );
        let diff = first_param_difference(&burn_values::<P>(&burn_param), &kernel_params);
        prop_assert!(
            diff.is_none(),
            "burn params differ at step {}: {:?}",
            step,
            diff
        );
        let averages = burn_state
            .as_ref()
            .unwrap()
            .blockwise8()
            .expect("8-bit state");
        let averages = averages.f32().unwrap();
        prop_assert_eq!(
            &averages.square_avg,
            &kernel_state.square_avg,
            "step {}",
            step
        );
        prop_assert_eq!(&averages.grad_avg, &kernel_state.grad_avg, "step {}", step);
        prop_assert_eq!(
            &averages.momentum_buf,
            &kernel_state.momentum_buf,
            "step {}",
            step
        );
    }
    prop_assert_eq!(burn.stats().composed_steps, 0);
    Ok(())
}

/// Hyper-parameters from `hyper` (rounded to f32 and still valid), up to
/// 300 elements from `element`, 1-3 steps of gradients.
fn case_of<T: std::fmt::Debug + Clone + 'static>(
    hyper: impl Strategy<Value = Hyper>,
    element: fn() -> BoxedStrategy<T>,
) -> impl Strategy<Value = (Hyper, Vec<T>, Vec<Vec<T>>)> {
    case_sized(hyper, element, 0..300)
}

/// [`case_of`] with `sizes` elements.
fn case_sized<T: std::fmt::Debug + Clone + 'static>(
    hyper: impl Strategy<Value = Hyper>,
    element: fn() -> BoxedStrategy<T>,
    sizes: std::ops::Range<usize>,
) -> impl Strategy<Value = (Hyper, Vec<T>, Vec<Vec<T>>)> {
    (hyper.prop_map(representable_in_f32), sizes, 1usize..4)
        .prop_filter("valid once rounded to f32", |(h, _, _)| {
            h.validate().is_ok()
        })
        .prop_flat_map(move |(h, n, steps)| {
            (
                Just(h),
                proptest::collection::vec(element(), n),
                proptest::collection::vec(proptest::collection::vec(element(), n), steps),
            )
        })
}

/// An `f32` case: every variant, mixed special and realistic values.
fn case() -> impl Strategy<Value = (Hyper, Vec<f32>, Vec<Vec<f32>>)> {
    case_of(hyper(), element::<f32>)
}

/// A case for a 16-bit type: every rounding option, 16-bit elements.
fn half_case<H: Arbitrary16>() -> impl Strategy<Value = (Hyper, Vec<H>, Vec<Vec<H>>)> {
    case_of(half_hyper(), half_element::<H>)
}

proptest! {
    #[test]
    fn kernel_candle_and_burn_give_the_same_bits((h, params, grads) in case()) {
        check_same_bits(h, params, grads)?;
    }

    #[test]
    fn the_same_bits_for_bf16((h, params, grads) in half_case::<bf16>()) {
        check_same_bits(h, params, grads)?;
    }

    #[test]
    fn the_same_bits_for_f16((h, params, grads) in half_case::<f16>()) {
        check_same_bits(h, params, grads)?;
    }
}

/// An 8-bit case: hyper-parameters from `hyper` with one of the two 8-bit
/// formats, 4096 to 4700 elements (at least `MIN_8BIT_ELEMENTS`, the last
/// block partial), 1-3 steps.
fn case_8bit<T: std::fmt::Debug + Clone + 'static>(
    hyper: impl Strategy<Value = Hyper> + 'static,
    element: fn() -> BoxedStrategy<T>,
) -> impl Strategy<Value = (Hyper, Vec<T>, Vec<Vec<T>>)> {
    let format = prop_oneof![
        Just(StateFormat::BLOCKWISE8),
        Just(StateFormat::BITSANDBYTES)
    ];
    let hyper = (hyper, format).prop_map(|(h, format)| h.with_state_format(format));
    case_sized(hyper, element, 4096..4700)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_same_bits_with_8_bit_state((h, params, grads) in case_8bit(hyper(), element::<f32>)) {
        check_same_bits_8bit(h, params, grads)?;
    }

    #[test]
    fn the_same_bits_with_8_bit_state_for_bf16(
        (h, params, grads) in case_8bit(half_hyper(), half_element::<bf16>)
    ) {
        check_same_bits_8bit(h, params, grads)?;
    }
}

/// Large enough for the threaded path of every adapter.
#[test]
fn the_threaded_path_gives_the_same_bits_too() {
    let n = 3 * fused_rmsprop::PARALLEL_MIN_ELEMENTS + 17;
    let value = |i: usize, k: usize| ((i * 7919 + k * 31) % 2003) as f32 / 1000.0 - 1.0;
    let params: Vec<f32> = (0..n).map(|i| value(i, 0)).collect();
    let grads: Vec<Vec<f32>> = (1..4)
        .map(|k| (0..n).map(|i| value(i, k)).collect())
        .collect();
    let h = Hyper::default()
        .with_momentum(0.9)
        .with_centered(true)
        .with_weight_decay(Some(WeightDecay::Coupled(0.01)));
    check_same_bits(representable_in_f32(h), params, grads).unwrap();
}
