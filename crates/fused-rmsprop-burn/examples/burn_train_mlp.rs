//! Trains a small MLP on a synthetic regression task with burn, and shows
//! the one-line swap: `RmsPropConfig` -> `FusedRmsPropConfig`.
//!
//! ```text
//! cargo run --release -p fused-rmsprop-burn --example burn_train_mlp
//! ```

use burn::module::Module;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor};
use fused_rmsprop_burn::FusedRmsPropConfig;

#[derive(Module, Debug)]
struct Mlp {
    hidden: Linear,
    out: Linear,
    relu: Relu,
}

impl Mlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.out.forward(self.relu.forward(self.hidden.forward(x)))
    }
}

fn main() {
    let device = Device::default().autodiff();
    let mut model = Mlp {
        hidden: LinearConfig::new(16, 64).init(&device),
        out: LinearConfig::new(64, 1).init(&device),
        relu: Relu::new(),
    };
    // The swap: this line was `RmsPropConfig::new().init()`.
    let mut optim = FusedRmsPropConfig::new().with_momentum(0.0).init();

    let x = Tensor::<2>::random([256, 16], Distribution::Normal(0.0, 1.0), &device);
    let y = x.clone().sum_dim(1).mul_scalar(0.25).tanh();
    for step in 0..=200 {
        let loss = (model.forward(x.clone()) - y.clone()).powi_scalar(2).mean();
        if step % 50 == 0 {
            let value = loss.clone().into_scalar::<f32>();
            println!("step {step:3}: loss {value:.5}");
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
    }
}
