//! The bodies of the cargo-fuzz targets in `fuzz/`: each takes the fuzzer's
//! bytes and panics only when a promise of the crates is broken. They live
//! here, in an ordinary crate of the workspace, so that `cargo test`
//! (`tests/fuzz_corpus.rs`) replays every file of `fuzz/corpus/` on stable,
//! and a crash found once stays fixed.
//!
//! ```
//! // Any bytes at all: never a panic.
//! fused_rmsprop_tests::kernel_paths(b"\x01\x02\x03");
//! fused_rmsprop_tests::config(&[0xff; 64]);
//! fused_rmsprop_tests::state_load(b"{\"not\": \"safetensors\"}");
//! ```

mod input;

use burn::config::Config as _;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{GradientsParams, Optimizer as _};
use burn::tensor::{Bytes, Device as BurnDevice, Tensor as BurnTensor, TensorData};
use candle_core::{Device as CandleDevice, Tensor as CandleTensor, Var};
use candle_nn::Optimizer as _;
use fused_rmsprop::{
    EpsPlacement, Execution, GradClip, Hyper, Isa, Kernel, NonFinite, Param, RmsProp, Rounding,
    State, Threads, WeightDecay, bf16, f16,
};
use fused_rmsprop_burn::FusedRmsPropConfig;
use fused_rmsprop_candle::ParamsRmsProp;

use input::Input;

/// Hyper-parameters from raw bytes: any `f64` bit pattern for every number
/// (so most are invalid), every flag and enum.
fn raw_hyper(input: &mut Input<'_>) -> Hyper {
    let number = |input: &mut Input<'_>| {
        // Half the time a plausible value, so valid hyper-parameters are
        // reached often; otherwise any bit pattern.
        if input.flag() {
            f64::from(input.byte()) / 255.0
        } else {
            input.f64()
        }
    };
    Hyper {
        lr: number(input),
        alpha: number(input),
        eps: number(input),
        eps_placement: if input.flag() {
            EpsPlacement::InsideSqrt
        } else {
            EpsPlacement::OutsideSqrt
        },
        initial_square_avg: if input.flag() { number(input) } else { 0.0 },
        centered: input.flag(),
        clamp_centered_variance: input.flag(),
        momentum: if input.flag() {
            number(input).min(0.999)
        } else {
            0.0
        },
        nesterov: input.flag(),
        weight_decay: match input.byte() % 3 {
            0 => None,
            1 => Some(WeightDecay::Coupled(number(input))),
            _ => Some(WeightDecay::Decoupled(number(input))),
        },
        maximize: input.flag(),
        non_finite: match input.byte() % 3 {
            0 => NonFinite::Propagate,
            1 => NonFinite::Skip,
            _ => NonFinite::Error,
        },
        rounding: if input.flag() {
            Rounding::Stochastic {
                seed: u64::from(input.byte()),
            }
        } else {
            Rounding::Nearest
        },
        master_weights: input.flag(),
        // Last, so that the corpus's earlier bytes keep their meaning.
        grad_clip: match input.byte() % 4 {
            0 => None,
            1 => Some(GradClip::Value(number(input))),
            2 => Some(GradClip::NormPerTensor(number(input))),
            _ => Some(GradClip::NormGlobal(number(input))),
        },
        // The fuzz targets step full state; 8-bit state has its own proptests.
        state_format: fused_rmsprop::StateFormat::Full,
    }
}

/// Target `kernel_paths`: arbitrary hyper-parameters, lengths, sub-slice
/// offsets and bit patterns, several steps. Promises checked: no panic;
/// every path (scalar spec, each SIMD instruction set, threaded with a
/// forced task count) gives the same bits and the same outcome; an invalid
/// hyper-parameter is refused; a refused step (invalid per-step lr, length
/// mismatch, non-finite gradient under `Error`) writes nothing.
pub fn kernel_paths(data: &[u8]) {
    let mut input = Input::new(data);
    let hyper = raw_hyper(&mut input);
    let opt = match RmsProp::new(hyper) {
        Ok(opt) => opt,
        Err(err) => {
            assert!(
                hyper.validate().is_err(),
                "refused a valid {hyper:?}: {err}"
            );
            return;
        }
    };
    let n = input.len(300);
    let offset = usize::from(input.byte() % 16);
    let steps = 1 + usize::from(input.byte() % 3);
    let params: Vec<f32> = (0..n + offset).map(|_| input.f32()).collect();
    let grads: Vec<Vec<f32>> = (0..steps)
        .map(|_| {
            let extra = usize::from(input.byte().is_multiple_of(8));
            (0..n + extra).map(|_| input.f32()).collect()
        })
        .collect();
    let lrs: Vec<f64> = (0..steps)
        .map(|_| {
            if input.byte().is_multiple_of(8) {
                input.f64()
            } else {
                hyper.lr
            }
        })
        .collect();
    let case = PathsCase {
        opt,
        offset,
        lrs: &lrs,
    };
    case.agree(&params, &grads);
    // The same bits as 16-bit parameters: the high halves as bf16, the low
    // halves as f16 (every bit pattern of each type is reachable).
    let high = |xs: &[f32]| -> Vec<bf16> {
        xs.iter()
            .map(|x| bf16::from_bits((x.to_bits() >> 16) as u16))
            .collect()
    };
    let low = |xs: &[f32]| -> Vec<f16> {
        xs.iter()
            .map(|x| f16::from_bits(x.to_bits() as u16))
            .collect()
    };
    case.agree(
        &high(&params),
        &grads.iter().map(|g| high(g)).collect::<Vec<_>>(),
    );
    case.agree(
        &low(&params),
        &grads.iter().map(|g| low(g)).collect::<Vec<_>>(),
    );
}

/// One `kernel_paths` input: the optimizer, the offset of the parameters in
/// their buffer, the learning rate of each step.
struct PathsCase<'a> {
    opt: RmsProp,
    offset: usize,
    lrs: &'a [f64],
}

impl PathsCase<'_> {
    /// Steps `params[offset..]` with each of `grads` on every path; all
    /// give the same bits and outcomes, and a refused step writes nothing.
    fn agree<P: Param<State = f32>>(&self, params: &[P], grads: &[Vec<P>]) {
        let (opt, offset, steps) = (self.opt, self.offset, grads.len());
        let hyper = *opt.hyper();
        let initial = State::for_params(&params[offset..], &hyper);
        let mut executions = vec![Execution {
            kernel: Kernel::Scalar,
            threads: Threads::Single,
            ..Default::default()
        }];
        for isa in Isa::available() {
            for tasks in [1usize, 3] {
                executions.push(Execution {
                    kernel: Kernel::Simd(isa),
                    threads: Threads::Exactly(tasks.try_into().expect("non-zero")),
                    ..Default::default()
                });
            }
        }
        let mut reference: Option<Vec<StepTrace>> = None;
        for execution in executions {
            let opt = opt.with_execution(execution).expect("an available path");
            let mut p = params.to_vec();
            let mut state = initial.clone();
            let mut trace = Vec::new();
            for (g, &lr) in grads.iter().zip(self.lrs) {
                let before = (bits(&p), bits(&state.square_avg));
                let result = opt.step_slices(lr, &mut p[offset..], g, state.slices_mut());
                let result = result
                    .map(|report| report.skipped().to_vec())
                    .map_err(|err| err.to_string());
                if result.is_err() {
                    assert_eq!(bits(&p), before.0, "a refused step wrote the parameters");
                    assert_eq!(bits(&state.square_avg), before.1);
                }
                trace.push((bits(&p), bits(&state.square_avg), result));
            }
            match &reference {
                None => reference = Some(trace),
                Some(expected) => {
                    if let Some(step) = (0..steps).find(|&k| expected[k] != trace[k]) {
                        let (p0, v0, r0) = &expected[step];
                        let (p1, v1, r1) = &trace[step];
                        let at = |a: &[u64], b: &[u64]| a.iter().zip(b).position(|(x, y)| x != y);
                        let i = at(p0, p1).or(at(v0, v1)).unwrap_or(0);
                        panic!(
                            "{} {execution:?} differs from the scalar spec at step {step}, \
                             element {i} (offset {offset}): param bits {:?} vs {:?}, square_avg \
                             bits {:?} vs {:?}, outcome {r0:?} vs {r1:?}; grad {:?}, param before \
                             {:?}; {hyper:?}",
                            P::NAME,
                            p0.get(i),
                            p1.get(i),
                            v0.get(i),
                            v1.get(i),
                            grads[step].get(i),
                            params.get(offset + i),
                        );
                    }
                }
            }
        }
    }
}

/// After one step: the parameters' bits, the square average's bits, and the
/// outcome (the skipped groups, or the error).
/// (The error as text: `Error` holds the rejected value, and a NaN value
/// would make two equal errors compare unequal.)
type StepTrace = (Vec<u64>, Vec<u64>, Result<Vec<usize>, String>);

fn bits<P: Param>(xs: &[P]) -> Vec<u64> {
    xs.iter().map(|x| x.to_bits_u64()).collect()
}

/// Target `config`: arbitrary values through each adapter's config, and
/// arbitrary bytes as a burn config file. Promises: never a panic; a typed
/// error exactly for what the kernel calls invalid; a built optimizer steps.
pub fn config(data: &[u8]) {
    let mut input = Input::new(data);
    let float = |input: &mut Input<'_>| {
        if input.flag() {
            f32::from(input.byte()) / 255.0
        } else {
            input.f32()
        }
    };
    let burn_config = FusedRmsPropConfig::new()
        .with_alpha(float(&mut input))
        .with_momentum(float(&mut input).min(0.999))
        .with_epsilon(float(&mut input))
        .with_centered(input.flag())
        .with_weight_decay(
            input
                .flag()
                .then(|| WeightDecayConfig::new(float(&mut input))),
        )
        .with_initial_square_avg(if input.flag() { float(&mut input) } else { 0.0 })
        .with_eps_inside_sqrt(input.flag())
        .with_nesterov(input.flag())
        .with_decoupled_weight_decay(input.flag())
        .with_maximize(input.flag())
        .with_clamp_centered_variance(input.flag());
    let lr = if input.flag() { input.f64() } else { 0.01 };
    match burn_config.try_build() {
        Ok(optim) => {
            assert!(burn_config.hyper().validate().is_ok());
            let device = BurnDevice::default();
            let p = BurnTensor::<1>::from_data(TensorData::from([1.0f32, -2.0, 0.5]), &device);
            let g = BurnTensor::<1>::from_data(TensorData::from([0.1f32, f32::NAN, 3.0]), &device);
            let (_, state) = optim.step(lr, p, g, None);
            let stats = optim.stats();
            // A refused first step (an invalid lr) leaves the state as it
            // was: none.
            assert_eq!(state.is_some(), stats.rejected_steps == 0, "{stats:?}");
            assert_eq!(stats.in_place_steps + stats.rejected_steps, 1, "{stats:?}");
        }
        Err(err) => {
            assert!(burn_config.hyper().validate().is_err());
            assert!(!err.to_string().is_empty());
        }
    }

    let params = ParamsRmsProp {
        lr: input.f64(),
        alpha: input.f64(),
        eps: input.f64(),
        weight_decay: input.flag().then(|| input.f64()),
        momentum: input.flag().then(|| input.f64()),
        centered: input.flag(),
        ..Default::default()
    };
    let var = Var::new(&[1.0f32, 2.0], &CandleDevice::Cpu).expect("a small Var");
    match fused_rmsprop_candle::RmsProp::new(vec![var.clone()], params) {
        Ok(mut optim) => {
            assert!(params.hyper().validate().is_ok());
            let grads = candle_grads(&var, &[0.5, -0.5]);
            optim.step(&grads).expect("a valid config steps");
        }
        Err(_) => assert!(params.hyper().validate().is_err()),
    }

    // The rest of the bytes as a burn config file.
    let _ = FusedRmsPropConfig::load_binary(input.rest());
}

/// A gradient store holding `values` as the gradient of `var`.
fn candle_grads(var: &Var, values: &[f32]) -> candle_core::backprop::GradStore {
    let grad = CandleTensor::new(values, var.device()).expect("a tensor");
    let mut grads = var
        .as_tensor()
        .sum_all()
        .and_then(|t| t.backward())
        .expect("grads");
    grads.insert(var.as_tensor(), grad);
    grads
}

/// Target `state_load`: arbitrary bytes as a Candle optimizer checkpoint and
/// as a burn optimizer record. Promises: an error, never a panic; after a
/// refused load the live state is what it was (the next step is the same as
/// that of an optimizer that never saw the bytes).
pub fn state_load(data: &[u8]) {
    // Candle: two identical optimizers; one is fed the bytes.
    let device = CandleDevice::Cpu;
    let make = || {
        let var = Var::new(&[1.0f32, -2.0, 3.0], &device).expect("a small Var");
        let params = ParamsRmsProp {
            momentum: Some(0.9),
            centered: true,
            ..Default::default()
        };
        let optim = fused_rmsprop_candle::RmsProp::new(vec![var.clone()], params).expect("valid");
        (var, optim)
    };
    let step = |var: &Var, optim: &mut fused_rmsprop_candle::RmsProp| {
        optim
            .step(&candle_grads(var, &[0.25, -0.5, 1.0]))
            .expect("a step");
    };
    let (var_a, mut a) = make();
    let (var_b, mut b) = make();
    step(&var_a, &mut a);
    step(&var_b, &mut b);
    if a.load_bytes(data).is_err() {
        step(&var_a, &mut a);
        step(&var_b, &mut b);
        let values = |v: &Var| bits(&v.to_vec1::<f32>().expect("f32 values"));
        assert_eq!(
            values(&var_a),
            values(&var_b),
            "a refused load changed the state"
        );
    } else {
        step(&var_a, &mut a);
    }

    // Burn: the bytes as an optimizer record, then a step with it. Through
    // `load_record`: burn's own `ModuleOptimizer::from_bytes` panics on
    // some malformed records (the corpus keeps one), and `load_record`
    // catches that panic. libfuzzer-sys aborts on every panic, caught or
    // not, so under the fuzzer this half is skipped; the corpus replay of
    // `cargo test` runs it.
    #[allow(unexpected_cfgs)]
    if cfg!(fuzzing) {
        return;
    }
    let mut optim = FusedRmsPropConfig::new().init();
    if fused_rmsprop_burn::load_record(&mut optim, Bytes::from_bytes_vec(data.to_vec())).is_err() {
        return;
    }
    let device = BurnDevice::default().autodiff();
    let module = burn::nn::LinearConfig::new(2, 2).init(&device);
    let x = BurnTensor::<2>::ones([1, 2], &device);
    let grads = GradientsParams::from_grads(module.forward(x).sum().backward(), &module);
    let _ = optim.step(0.01, module, grads);
}
