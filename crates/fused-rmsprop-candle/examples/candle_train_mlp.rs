//! Trains a small MLP on a synthetic regression task with candle, and shows
//! the swap: `candle_nn::AdamW::new(..)` -> `fused_rmsprop_candle::RmsProp::new(..)`.
//!
//! ```text
//! cargo run --release -p fused-rmsprop-candle --example candle_train_mlp [-- --dtype bf16|f16|f32]
//! ```
//!
//! With `--dtype bf16` or `f16` the model's `Var`s are 16-bit and stepped in
//! place with `f32` optimizer state.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap, linear};
use fused_rmsprop_candle::{ParamsRmsProp, RmsProp};

/// The dtype `--dtype NAME` asks for (f32 without the flag).
fn dtype_from_args() -> candle_core::Result<DType> {
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
        Some(other) => Err(candle_core::Error::msg(format!(
            "--dtype takes bf16, f16 or f32, not {other:?}"
        ))),
    }
}

fn main() -> candle_core::Result<()> {
    let dtype = dtype_from_args()?;
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, &device);
    let hidden = linear(16, 64, vb.pp("hidden"))?;
    let out = linear(64, 1, vb.pp("out"))?;
    // The swap: this line was `AdamW::new(varmap.all_vars(), ParamsAdamW::default())?`.
    let params = ParamsRmsProp {
        lr: 1e-3,
        ..Default::default()
    };
    let mut optim = RmsProp::new(varmap.all_vars(), params)?;

    let x = Tensor::randn(0f32, 1.0, (256, 16), &device)?.to_dtype(dtype)?;
    let y = (x.sum_keepdim(1)? * 0.25)?.tanh()?;
    println!("training in {dtype:?}");
    for step in 0..=200 {
        let prediction = out.forward(&hidden.forward(&x)?.relu()?)?;
        let loss = (prediction - &y)?.sqr()?.mean_all()?;
        if step % 50 == 0 {
            let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            println!("step {step:3}: loss {value:.5}");
        }
        optim.backward_step(&loss)?;
    }
    Ok(())
}
