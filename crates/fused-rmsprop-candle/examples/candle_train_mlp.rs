//! Trains a small MLP on a synthetic regression task with candle, and shows
//! the swap: `candle_nn::AdamW::new(..)` -> `fused_rmsprop_candle::RmsProp::new(..)`.
//!
//! ```text
//! cargo run --release -p fused-rmsprop-candle --example candle_train_mlp
//! ```

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap, linear};
use fused_rmsprop_candle::{ParamsRmsProp, RmsProp};

fn main() -> candle_core::Result<()> {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let hidden = linear(16, 64, vb.pp("hidden"))?;
    let out = linear(64, 1, vb.pp("out"))?;
    // The swap: this line was `AdamW::new(varmap.all_vars(), ParamsAdamW::default())?`.
    let params = ParamsRmsProp {
        lr: 1e-3,
        ..Default::default()
    };
    let mut optim = RmsProp::new(varmap.all_vars(), params)?;

    let x = Tensor::randn(0f32, 1.0, (256, 16), &device)?;
    let y = (x.sum_keepdim(1)? * 0.25)?.tanh()?;
    for step in 0..=200 {
        let prediction = out.forward(&hidden.forward(&x)?.relu()?)?;
        let loss = (prediction - &y)?.sqr()?.mean_all()?;
        if step % 50 == 0 {
            println!("step {step:3}: loss {:.5}", loss.to_scalar::<f32>()?);
        }
        optim.backward_step(&loss)?;
    }
    Ok(())
}
