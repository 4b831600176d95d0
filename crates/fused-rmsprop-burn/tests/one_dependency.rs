//! Every option of `FusedRmsPropConfig`, every kernel setting of
//! `FusedRmsProp::new` and every path choice can be named through this crate
//! alone (and burn's own types): the test uses no path of the kernel crate,
//! so a user adds `fused-rmsprop-burn` and nothing else.

use burn::grad_clipping::GradientClippingConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{Device, Tensor};
use fused_rmsprop_burn::{
    EpsPlacement, Execution, FusedRmsProp, FusedRmsPropConfig, Hyper, Isa, Kernel, KernelError,
    Linger, NonFinite, Rounding, Threads, WeightDecay,
};

fn every_config() -> Vec<FusedRmsPropConfig> {
    let mut out = Vec::new();
    for non_finite in [NonFinite::Propagate, NonFinite::Skip, NonFinite::Error] {
        for flag in [false, true] {
            out.push(
                FusedRmsPropConfig::new()
                    .with_alpha(0.9)
                    .with_momentum(0.5)
                    .with_epsilon(1e-6)
                    .with_centered(flag)
                    .with_weight_decay(Some(WeightDecayConfig::new(1e-4)))
                    .with_grad_clipping(flag.then_some(GradientClippingConfig::Value(10.0)))
                    .with_eps_inside_sqrt(flag)
                    .with_initial_square_avg(0.0)
                    .with_nesterov(flag)
                    .with_decoupled_weight_decay(flag)
                    .with_maximize(false)
                    .with_clamp_centered_variance(flag)
                    .with_non_finite_grads(non_finite)
                    .with_rounding(if flag {
                        Rounding::Stochastic { seed: 5 }
                    } else {
                        Rounding::Nearest
                    })
                    .with_master_weights(flag),
            );
        }
    }
    out
}

#[test]
fn every_config_option_is_reachable_through_the_adapter() {
    let device = Device::default().autodiff();
    for config in every_config() {
        let model: burn::nn::Linear = burn::nn::LinearConfig::new(3, 2).init(&device);
        let mut optim = config.try_init().expect("a valid config");
        let x = Tensor::<2>::ones([4, 3], &device);
        let loss = model.forward(x).powi_scalar(2).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let _model = optim.step(1e-2, model, grads);
    }
}

#[test]
fn every_kernel_setting_and_path_is_reachable_through_the_adapter() {
    let hypers = [
        Hyper::default().with_eps_placement(EpsPlacement::InsideSqrt),
        Hyper::default().with_weight_decay(Some(WeightDecay::Decoupled(1e-3))),
        Hyper::default().with_rounding(Rounding::Stochastic { seed: 3 }),
    ];
    let paths = [
        Execution::default(),
        Execution {
            kernel: Kernel::Simd(Isa::detect()),
            threads: Threads::Single,
            linger: Linger::Off,
        },
    ];
    for hyper in hypers {
        for execution in paths {
            let optim: FusedRmsProp = FusedRmsProp::new(hyper)
                .and_then(|o| o.with_execution(execution))
                .expect("a valid setting");
            let p = Tensor::<1>::from_floats([1.0, -1.0], &Device::default());
            let g = Tensor::<1>::from_floats([0.5, -0.5], &Device::default());
            let (p, _) = optim.step(0.01, p, g, None);
            let values: Vec<f32> = p.into_data().try_to_vec().unwrap();
            assert!(
                values[0] < 1.0 && values[1] > -1.0,
                "{hyper:?} {execution:?}"
            );
        }
    }
}

#[test]
fn the_kernel_error_is_matched_through_the_adapter() {
    let err = FusedRmsPropConfig::new()
        .with_alpha(2.0)
        .try_build()
        .expect_err("alpha above 1 is refused");
    assert!(
        matches!(err, KernelError::InvalidHyper { name: "alpha", .. }),
        "{err:?}"
    );
}
