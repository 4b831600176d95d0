//! Every option of `ParamsRmsProp` and every path choice can be named
//! through this crate alone: the test uses no path of the kernel crate, so
//! a user adds `fused-rmsprop-candle` and nothing else.

use candle_core::{DType, Device, Var};
use candle_nn::Optimizer;
use fused_rmsprop_candle::{
    EpsPlacement, Execution, Isa, Kernel, KernelError, Linger, NonFinite, ParamsRmsProp, QuantMap,
    RmsProp, Rounding, StateFormat, Threads, bf16,
};

fn every_configuration() -> Vec<ParamsRmsProp> {
    let mut out = Vec::new();
    for eps_placement in [EpsPlacement::OutsideSqrt, EpsPlacement::InsideSqrt] {
        for non_finite in [NonFinite::Propagate, NonFinite::Skip, NonFinite::Error] {
            for rounding in [Rounding::Nearest, Rounding::Stochastic { seed: 7 }] {
                for (master_weights, clip) in [(false, 0), (true, 1), (false, 2)] {
                    out.push(ParamsRmsProp {
                        lr: 1e-2,
                        alpha: 0.9,
                        eps: 1e-8,
                        weight_decay: Some(1e-4),
                        momentum: Some(0.9),
                        centered: true,
                        decoupled_weight_decay: master_weights,
                        eps_placement,
                        initial_square_avg: 0.0,
                        nesterov: master_weights,
                        clamp_centered_variance: true,
                        maximize: false,
                        non_finite,
                        rounding,
                        master_weights,
                        clip_value: (clip == 1).then_some(0.5),
                        max_grad_norm: (clip == 2).then_some(1.0),
                        state_format: match clip {
                            0 => StateFormat::Full,
                            1 => StateFormat::BLOCKWISE8,
                            _ => StateFormat::Blockwise8 {
                                square_avg_map: QuantMap::DynamicSigned,
                            },
                        },
                    });
                }
            }
        }
    }
    out
}

#[test]
fn every_option_and_path_is_reachable_through_the_adapter() -> candle_core::Result<()> {
    let paths = [
        Execution::default(),
        Execution {
            kernel: Kernel::Simd(Isa::detect()),
            threads: Threads::Single,
            linger: Linger::Off,
        },
        Execution {
            kernel: Kernel::Scalar,
            threads: Threads::Auto,
            linger: Linger::For(std::time::Duration::from_micros(100)),
        },
    ];
    for params in every_configuration() {
        for execution in paths {
            // Above `MIN_8BIT_ELEMENTS`, so the 8-bit configurations step 8-bit state.
            let w = Var::ones((64, 80), DType::BF16, &Device::Cpu)?;
            let mut opt = RmsProp::new(vec![w.clone()], params)?.with_execution(execution)?;
            let loss = w.as_tensor().to_dtype(DType::F32)?.sqr()?.sum_all()?;
            opt.backward_step(&loss)?;
            let after = w.as_tensor().flatten_all()?.to_vec1::<bf16>()?;
            assert!(
                after.iter().all(|x| x.to_f32() < 1.0),
                "{params:?} {execution:?}"
            );
        }
    }
    Ok(())
}

/// candle wraps the kernel's error (with a backtrace when one is captured):
/// its message is the kernel's, naming the field and the value.
#[test]
fn the_kernel_error_reaches_a_candle_user_wrapped() {
    let params = ParamsRmsProp {
        alpha: 2.0,
        ..Default::default()
    };
    let err = RmsProp::new(vec![], params).expect_err("alpha above 1 is refused");
    let kernel = KernelError::InvalidHyper {
        name: "alpha",
        value: 2.0,
        expected: "a value in [0, 1]",
    };
    assert!(err.to_string().contains(&kernel.to_string()), "{err}");
}
