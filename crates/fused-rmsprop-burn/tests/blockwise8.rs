//! 8-bit state in the burn optimizer (`FusedRmsPropConfig::state_format`):
//! the bare kernel's bits on the in-place route, held or not; the composed
//! route; records that resume exactly, move between formats, and are
//! refused when malformed; what burn's own `RmsProp` makes of them.

mod common;

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{
    GradientsParams, ModuleOptimizer, Optimizer, RecordState, RmsPropConfig, StateSink, StateSource,
};
use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};
use common::to_vec;
use fused_rmsprop::{Blockwise8Group, Blockwise8State, Group, State};
use fused_rmsprop_burn::{
    Averages, FusedRmsPropConfig, FusedRmsPropState, Rounding, Route, StateFormat, bf16,
    load_record,
};

/// A record's tensors, by name.
type Tensors = Vec<(String, TensorData)>;
/// A change to a record's tensors.
type Edit<'a> = dyn Fn(&mut Tensors) + 'a;

fn gradient(n: usize, step: usize, salt: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7919 + step * 104_729 + salt * 31) % 2001) as f32 - 1000.0) * 1e-3)
        .collect()
}

fn tensor<const D: usize>(values: &[f32], dims: [usize; D], dtype: DType) -> Tensor<D> {
    let options = TensorCreationOptions::new(Device::default()).with_dtype(DType::F32);
    Tensor::<D>::from_data(TensorData::new(values.to_vec(), dims), options).cast(dtype)
}

fn bits<const D: usize>(t: &Tensor<D>) -> Vec<u32> {
    let values: Vec<f32> = t.to_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    values.iter().map(|x| x.to_bits()).collect()
}

fn config() -> FusedRmsPropConfig {
    FusedRmsPropConfig::new()
        .with_rounding(Rounding::Stochastic { seed: 11 })
        .with_state_format(StateFormat::BLOCKWISE8)
}

/// An `f32` and a `bf16` parameter above `MIN_8BIT_ELEMENTS` (8-bit state)
/// and a small one (full state), three steps with momentum and stochastic
/// rounding: each parameter has the bits of the bare kernel stepping it
/// alone with stream = the order of its first step, whether the parameter
/// is held by another owner during its step (the Learner's case) or not.
#[test]
fn eight_bit_parameters_have_the_bare_kernels_bits_held_or_not() {
    let (n_w, n_h, n_b) = (5000, 4096, 100);
    let hyper = config().hyper().with_lr(1e-2);
    let kernel = fused_rmsprop::RmsProp::new(hyper).unwrap();
    let full_kernel =
        fused_rmsprop::RmsProp::new(hyper.with_state_format(StateFormat::Full)).unwrap();

    let mut w_bare = gradient(n_w, 9, 1);
    let mut h_bare: Vec<bf16> = gradient(n_h, 9, 2)
        .iter()
        .map(|x| bf16::from_f32(*x))
        .collect();
    let mut b_bare = vec![0.5f32; n_b];
    let mut sw = Blockwise8State::new(n_w, &hyper);
    let mut sh = Blockwise8State::new(n_h, &hyper);
    let mut sb = State::new(n_b, &hyper.with_state_format(StateFormat::Full));
    for step in 0..3 {
        let (gw, gh, gb) = (
            gradient(n_w, step, 1),
            gradient(n_h, step, 2),
            gradient(n_b, step, 3),
        );
        let gh: Vec<bf16> = gh.iter().map(|x| bf16::from_f32(*x)).collect();
        let group = Blockwise8Group::new(&mut w_bare, &gw, sw.slices_mut())
            .with_rounding_key(step as u64, 0);
        kernel.step_blockwise8_slices(hyper.lr, group).unwrap();
        let group = Blockwise8Group::new(&mut h_bare, &gh, sh.slices_mut())
            .with_rounding_key(step as u64, 1);
        kernel.step_blockwise8_slices(hyper.lr, group).unwrap();
        let group = Group::new(&mut b_bare, &gb, sb.slices_mut()).with_rounding_key(step as u64, 2);
        full_kernel.step_many(hyper.lr, [group]).unwrap();
    }

    for held in [false, true] {
        let optim = config().build();
        let mut w = tensor(&gradient(n_w, 9, 1), [50, 100], DType::F32);
        let mut h = tensor(&gradient(n_h, 9, 2), [n_h], DType::BF16);
        let mut b = tensor(&[0.5; 100], [n_b], DType::F32);
        let (mut state_w, mut state_h, mut state_b) = (None, None, None);
        for step in 0..3 {
            let gw = tensor(&gradient(n_w, step, 1), [50, 100], DType::F32);
            let gh = tensor(&gradient(n_h, step, 2), [n_h], DType::BF16);
            let gb = tensor(&gradient(n_b, step, 3), [n_b], DType::F32);
            // As burn-train's Learner: a clone of the model held during
            // the step, dropped before the next one (so that the optimizer
            // can reuse the buffer it kept).
            let held_now = held.then(|| (w.clone(), h.clone(), b.clone()));
            let before = (bits(&w), bits(&h), bits(&b));
            (w, state_w) = optim.step(hyper.lr, w, gw, state_w);
            (h, state_h) = optim.step(hyper.lr, h, gh, state_h);
            (b, state_b) = optim.step(hyper.lr, b, gb, state_b);
            if let Some((w_held, h_held, b_held)) = held_now {
                assert_eq!(before, (bits(&w_held), bits(&h_held), bits(&b_held)));
            }
        }
        let f32_bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let h_bare: Vec<f32> = h_bare.iter().map(|x| x.to_f32()).collect();
        assert_eq!(bits(&w), f32_bits(&w_bare), "held: {held}");
        assert_eq!(bits(&h), f32_bits(&h_bare), "held: {held}");
        assert_eq!(bits(&b), f32_bits(&b_bare), "held: {held}");
        // The codes and scales are the bare kernel's too.
        let eight_bit = |state: &Option<FusedRmsPropState<1>>| {
            state.as_ref().unwrap().blockwise8().unwrap().f32().cloned()
        };
        let Averages::Blockwise8(w_averages) = &state_w.as_ref().unwrap().averages else {
            panic!("the 5000-element parameter has full state");
        };
        assert_eq!(w_averages.f32(), Some(&sw));
        assert_eq!(eight_bit(&state_h), Some(sh.clone()));
        assert!(matches!(state_b.unwrap().averages, Averages::Full(_)));
        let stats = optim.stats();
        assert_eq!(stats.in_place_steps, 9);
        assert_eq!(stats.rejected_steps, 0);
    }
}

/// The composed route (any device but Flex) dequantizes, steps with tensor
/// ops and quantizes again: close to the in-place route, and the state
/// stays 8-bit.
#[test]
fn the_composed_route_steps_8_bit_state_close_to_the_kernel() {
    let n = 6000;
    let in_place = config().build();
    let composed = config().build().with_route(Route::ComposedOps);
    let mut a = tensor(&gradient(n, 9, 1), [n], DType::F32);
    let mut b = a.clone();
    let (mut sa, mut sb) = (None, None);
    for step in 0..5 {
        let g = tensor(&gradient(n, step, 1), [n], DType::F32);
        (a, sa) = in_place.step(1e-2, a, g.clone(), sa);
        (b, sb) = composed.step(1e-2, b, g, sb);
    }
    let diff = to_vec(a)
        .iter()
        .zip(to_vec(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-5, "composed and in-place routes differ by {diff}");
    assert!(sb.unwrap().blockwise8().is_some());
    assert_eq!(composed.stats().composed_steps, 5);
    let _ = sa;
}

#[derive(Module, Debug)]
struct Wide {
    layer: Linear,
}

impl Wide {
    /// 64 inputs, 80 outputs: a 5120-element weight (8-bit state) and an
    /// 80-element bias (full state).
    fn new(device: &Device) -> Self {
        let mut layer = LinearConfig::new(64, 80).init(device);
        let weight: Vec<f32> = gradient(64 * 80, 5, 7).iter().map(|x| x * 0.1).collect();
        layer.weight =
            Param::from_tensor(Tensor::from_data(TensorData::new(weight, [64, 80]), device));
        layer.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![0.1f32; 80], [80]),
            device,
        )));
        Self { layer }
    }

    fn grads(&self, i: usize) -> GradientsParams {
        let device = Device::default().autodiff();
        let x = Tensor::<2>::from_data(TensorData::new(gradient(8 * 64, i, 3), [8, 64]), &device);
        let loss = self.layer.forward(x).powi_scalar(2).mean();
        GradientsParams::from_grads(loss.backward(), self)
    }

    fn values(&self) -> Vec<Vec<f64>> {
        vec![
            to_vec(self.layer.weight.val()),
            to_vec(self.layer.bias.as_ref().unwrap().val()),
        ]
    }
}

fn train(optim: &mut ModuleOptimizer, mut model: Wide, steps: std::ops::Range<usize>) -> Wide {
    for i in steps {
        let grads = model.grads(i);
        model = optim.step(1e-2, model, grads);
    }
    model
}

fn wide() -> Wide {
    Wide::new(&Device::default().autodiff())
}

/// An 8-bit checkpoint resumes with the bits of an uninterrupted run; a
/// full-state checkpoint loads into an 8-bit optimizer (quantized) and an
/// 8-bit one into a full-state optimizer (dequantized), each within the
/// 8-bit state's error of the run it came from.
#[test]
fn module_checkpoints_resume_exactly_and_move_between_formats() {
    let eight = || config().init();
    let full = || config().with_state_format(StateFormat::Full).init();

    let mut optim = eight();
    let model = train(&mut optim, wide(), 0..3);
    let saved = optim.clone().into_bytes().unwrap();
    let uninterrupted = train(&mut optim, model.clone(), 3..6).values();
    let mut resumed = eight();
    load_record(&mut resumed, saved.clone()).unwrap();
    let resumed_values = train(&mut resumed, model.clone(), 3..6).values();
    assert_eq!(uninterrupted, resumed_values);

    // 8-bit → full: dequantized, the run continues close to the 8-bit one.
    let mut to_full = full();
    load_record(&mut to_full, saved).unwrap();
    let dequantized = train(&mut to_full, model.clone(), 3..6).values();
    let moved = common::max_abs_diff(&model.values(), &uninterrupted);
    let diff = common::max_abs_diff(&uninterrupted, &dequantized);
    assert!(diff < 0.05 * moved, "8-bit → full: {diff} of {moved}");

    // full → 8-bit: quantized, close to the full-state run.
    let mut optim = full();
    let model = train(&mut optim, wide(), 0..3);
    let saved = optim.clone().into_bytes().unwrap();
    let full_run = train(&mut optim, model.clone(), 3..6).values();
    let mut to_eight = eight();
    load_record(&mut to_eight, saved).unwrap();
    let moved = common::max_abs_diff(&model.values(), &full_run);
    let quantized = train(&mut to_eight, model, 3..6).values();
    let diff = common::max_abs_diff(&full_run, &quantized);
    assert!(diff < 0.05 * moved, "full → 8-bit: {diff} of {moved}");
}

/// 8-bit state handed to a full-state optimizer is exactly its dequantized
/// values; full state handed to an 8-bit optimizer is exactly its
/// quantized values.
#[test]
fn states_change_format_by_the_kernels_conversions() {
    let n = 4500;
    let eight = config().build();
    let full = config().with_state_format(StateFormat::Full).build();
    let hyper = config().hyper();
    let p = tensor(&gradient(n, 9, 1), [n], DType::F32);
    let g = tensor(&gradient(n, 2, 1), [n], DType::F32);

    let (p1, state) = eight.step(1e-2, p.clone(), g.clone(), None);
    let state = state.unwrap();
    let kernel_state = state.blockwise8().unwrap().f32().unwrap().to_full();
    let as_full = |values: &Option<Vec<f32>>| values.as_ref().map(|v| tensor(v, [n], DType::F32));
    let dequantized = FusedRmsPropState {
        averages: Averages::Full(fused_rmsprop_burn::FullAverages {
            square_avg: tensor(&kernel_state.square_avg, [n], DType::F32),
            grad_avg: as_full(&kernel_state.grad_avg),
            momentum_buf: as_full(&kernel_state.momentum_buf),
        }),
        ..state.clone()
    };
    let (a, _) = full.step(1e-2, p1.clone(), g.clone(), Some(state));
    let (b, _) = full.step(1e-2, p1, g.clone(), Some(dequantized));
    assert_eq!(bits(&a), bits(&b));

    let (p1, full_state) = full.step(1e-2, p, g.clone(), None);
    let full_state = full_state.unwrap();
    let values = |t: &Tensor<1>| t.to_data().try_into_vec::<f32>().unwrap();
    let averages = full_state.full().unwrap();
    let quantized = Blockwise8State::from_full(
        &State {
            square_avg: values(&averages.square_avg),
            grad_avg: None,
            momentum_buf: averages.momentum_buf.as_ref().map(values),
            master: None,
            step: 0,
        },
        &hyper,
    );
    let (_, stepped) = eight.step(1e-2, p1.clone(), g.clone(), Some(full_state));
    let mut bare = quantized;
    let mut p_bare = values(&p1);
    let g_bare = values(&g);
    let group =
        Blockwise8Group::new(&mut p_bare, &g_bare, bare.slices_mut()).with_rounding_key(1, 0);
    fused_rmsprop::RmsProp::new(hyper)
        .unwrap()
        .step_blockwise8_slices(1e-2, group)
        .unwrap();
    assert_eq!(stepped.unwrap().blockwise8().unwrap().f32(), Some(&bare));
}

/// burn's own `RmsProp` loading an 8-bit checkpoint: a parameter with
/// 8-bit state has no square average burn can read, so burn starts its
/// state afresh; a parameter with full state resumes.
#[test]
fn burns_rmsprop_starts_8_bit_parameters_afresh_and_resumes_the_rest() {
    let burn_config = || {
        RmsPropConfig::new()
            .with_momentum(0.9)
            .with_epsilon(1e-5)
            .init()
    };
    let mut optim = FusedRmsPropConfig::new()
        .with_state_format(StateFormat::BLOCKWISE8)
        .init();
    let model = train(&mut optim, wide(), 0..3);
    let saved = optim.into_bytes().unwrap();

    let mut loaded = burn_config();
    load_record(&mut loaded, saved).unwrap();
    let after_load = train(&mut loaded, model.clone(), 3..4).values();
    let after_fresh = train(&mut burn_config(), model, 3..4).values();
    assert_eq!(after_load[0], after_fresh[0], "the weight started afresh");
    assert_ne!(after_load[1], after_fresh[1], "the bias resumed");
}

/// A record of 8-bit state with a buffer out of shape, a scale that no
/// step stores, a map that does not exist or codes of another type loads
/// as no state (burn starts the parameter afresh); the record as written
/// loads back equal.
#[test]
fn malformed_8_bit_records_are_refused() {
    let device = Device::default();
    let optim = config().build();
    let p = tensor(&gradient(5000, 1, 1), [5000], DType::F32);
    let (_, state) = optim.step(1e-2, p.clone(), p, None);
    let state = state.unwrap();
    let mut sink = StateSink::default();
    state.state_flatten("p", &mut sink);
    let key = |leaf: &str| format!("p.fused.blockwise8.square_avg.{leaf}");
    assert!(sink.tensors.iter().any(|(name, _)| *name == key("codes")));
    assert!(
        !sink
            .tensors
            .iter()
            .any(|(name, _)| name.contains("square_avg.square_avg"))
    );

    // Each case edits the tensors; a map of 7 replaces the square
    // average's map when `bad_map` is set.
    let load = |edit: &dyn Fn(&mut Tensors), bad_map: bool| {
        let mut tensors = sink.tensors.clone();
        let mut scalars: BTreeMap<String, _> = sink.scalars.iter().cloned().collect();
        edit(&mut tensors);
        if bad_map {
            scalars.insert(key("map"), 7u64.into());
        }
        let mut source = StateSource::new(scalars);
        for (name, data) in tensors {
            source.insert_tensor(name, data);
        }
        FusedRmsPropState::<1>::state_unflatten("p", &mut source, &device)
    };
    let loaded = load(&|_| {}, false).expect("the record as written loads");
    assert_eq!(
        loaded.blockwise8().unwrap().f32(),
        state.blockwise8().unwrap().f32()
    );

    let replace = |tensors: &mut Tensors, leaf: &str, data: TensorData| {
        let name = key(leaf);
        tensors.retain(|(n, _)| *n != name);
        tensors.push((name, data));
    };
    let blocks = 5000usize.div_ceil(256);
    let cases: Vec<(&str, Box<Edit<'_>>)> = vec![
        (
            "a NaN scale",
            Box::new(|t| {
                let mut scales = vec![1.0f32; blocks];
                scales[3] = f32::NAN;
                replace(t, "scales", TensorData::new(scales, [blocks]));
            }),
        ),
        (
            "a zero scale",
            Box::new(|t| replace(t, "scales", TensorData::new(vec![0.0f32; blocks], [blocks]))),
        ),
        (
            "one scale too few",
            Box::new(|t| {
                replace(
                    t,
                    "scales",
                    TensorData::new(vec![1.0f32; blocks - 1], [blocks - 1]),
                )
            }),
        ),
        (
            "codes of another length",
            Box::new(|t| replace(t, "codes", TensorData::new(vec![0u8; 4999], [4999]))),
        ),
        (
            "codes that are not bytes",
            Box::new(|t| replace(t, "codes", TensorData::new(vec![0.0f32; 5000], [5000]))),
        ),
        (
            "no scales",
            Box::new(|t| t.retain(|(n, _)| *n != key("scales"))),
        ),
        (
            "a momentum buffer of another shape",
            Box::new(|t| {
                let name = "p.fused.blockwise8.momentum_buf.codes".to_string();
                t.retain(|(n, _)| *n != name);
                t.push((name, TensorData::new(vec![0u8; 4096], [4096])));
            }),
        ),
    ];
    for (name, edit) in cases {
        assert!(load(&*edit, false).is_none(), "{name}: accepted");
    }
    assert!(
        load(&|_| {}, true).is_none(),
        "a map that does not exist: accepted"
    );
}

/// The batched route keeps 8-bit state too: the per-parameter route's bits
/// (momentum, stochastic rounding; the weight 8-bit, the bias full), and
/// checkpoints that move between the two routes and resume exactly.
#[test]
fn the_batched_route_steps_8_bit_state_with_the_per_parameter_bits() {
    let mut per_parameter = config().init();
    let mut batched = config().init_batched();
    let (mut a, mut b) = (wide(), wide());
    for i in 0..3 {
        a = train(&mut per_parameter, a, i..i + 1);
        let grads = b.grads(i);
        let (stepped, outcome) = batched.step(1e-2, b, grads);
        assert_eq!(outcome, Ok(Vec::new()));
        b = stepped;
        assert_eq!(a.values(), b.values(), "step {i}");
    }
    assert_eq!(batched.stats().in_place_steps, 6);

    // batched → per-parameter, and per-parameter → batched.
    let bytes = batched.to_record(&b).into_bytes().unwrap();
    let mut resumed = config().init();
    load_record(&mut resumed, bytes).unwrap();
    let mut resumed_batched = config().init_batched();
    let bytes = per_parameter.clone().into_bytes().unwrap();
    resumed_batched.load_record(&a, bytes).unwrap();

    let expected = train(&mut per_parameter, a.clone(), 3..5).values();
    // burn keys a record by parameter id: `b`'s record resumes `b`.
    assert_eq!(train(&mut resumed, b, 3..5).values(), expected);
    let mut c = a;
    for i in 3..5 {
        let grads = c.grads(i);
        let (stepped, outcome) = resumed_batched.step(1e-2, c, grads);
        assert_eq!(outcome, Ok(Vec::new()));
        c = stepped;
    }
    assert_eq!(c.values(), expected);
}
