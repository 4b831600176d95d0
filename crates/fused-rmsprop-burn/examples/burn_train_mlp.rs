//! Trains a small MLP on a synthetic regression task with burn, and shows
//! the one-line swap: `RmsPropConfig` -> `FusedRmsPropConfig`.
//!
//! ```text
//! cargo run --release -p fused-rmsprop-burn --example burn_train_mlp [-- --dtype bf16|f16|f32]
//! ```
//!
//! With `--dtype bf16` or `f16` the model's parameters are 16-bit and stepped
//! in place with `f32` optimizer state.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Distribution, Tensor};
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

/// The dtype `--dtype NAME` asks for (f32 without the flag).
fn dtype_from_args() -> Result<DType, String> {
    let args: Vec<String> = std::env::args().collect();
    match args
        .iter()
        .position(|a| a == "--dtype")
        .map(|i| args.get(i + 1))
    {
        None => Ok(DType::F32),
        Some(Some(name)) if name == "f32" => Ok(DType::F32),
        Some(Some(name)) if name == "bf16" => Ok(DType::BF16),
        Some(Some(name)) if name == "f16" => Ok(DType::F16),
        Some(other) => Err(format!("--dtype takes bf16, f16 or f32, not {other:?}")),
    }
}

fn main() {
    let dtype = match dtype_from_args() {
        Ok(dtype) => dtype,
        Err(message) => {
            eprintln!("burn_train_mlp: {message}");
            std::process::exit(2);
        }
    };
    let device = Device::default().autodiff();
    let mut model = Mlp {
        hidden: LinearConfig::new(16, 64).init(&device),
        out: LinearConfig::new(64, 1).init(&device),
        relu: Relu::new(),
    };
    if dtype != DType::F32 {
        model = model.map(&mut Cast(dtype));
    }
    println!("training in {dtype:?}");
    // The swap: this line was `RmsPropConfig::new().init()`.
    let mut optim = FusedRmsPropConfig::new().with_momentum(0.0).init();

    // Data, not parameters: cut from the graph so each step's backward
    // starts from the forward pass of that step.
    let x = Tensor::<2>::random([256, 16], Distribution::Normal(0.0, 1.0), &device)
        .cast(dtype)
        .detach();
    let y = x.clone().sum_dim(1).mul_scalar(0.25).tanh().detach();
    for step in 0..=200 {
        let loss = (model.forward(x.clone()) - y.clone()).powi_scalar(2).mean();
        if step % 50 == 0 {
            let value = loss.clone().cast(DType::F32).into_scalar::<f32>();
            println!("step {step:3}: loss {value:.5}");
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
    }
}

/// Converts every float parameter of a module to one dtype.
struct Cast(DType);

impl burn::module::ModuleMapper for Cast {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        // Cast outside the autodiff graph and track the result as a new
        // leaf, so the cast is not part of every step's graph.
        let dtype = self.0;
        param.map(|t| Tensor::from_inner(t.inner().cast(dtype)).require_grad())
    }
}
