//! The model the candle tests train: a 3-layer candle-nn MLP on fixed data.

#![allow(dead_code)] // each test file uses a part

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::Linear;

/// A 3-layer MLP on fixed data; `vars` holds its weights and biases.
pub struct Mlp {
    layers: Vec<Linear>,
    /// The weights and biases.
    pub vars: Vec<Var>,
}

impl Mlp {
    pub fn new(dtype: DType) -> candle_core::Result<Self> {
        let dims = [(8, 16), (16, 16), (16, 4)];
        let mut vars = Vec::new();
        let mut layers = Vec::new();
        for (l, &(input, output)) in dims.iter().enumerate() {
            let w: Vec<f64> = (0..input * output)
                .map(|i| ((i * 7 + l * 13) as f64 * 0.37).sin() * 0.4)
                .collect();
            let b: Vec<f64> = (0..output)
                .map(|i| ((i + l) as f64 * 0.91).cos() * 0.1)
                .collect();
            let w = Var::from_tensor(
                &Tensor::from_vec(w, (output, input), &Device::Cpu)?.to_dtype(dtype)?,
            )?;
            let b = Var::from_tensor(&Tensor::from_vec(b, output, &Device::Cpu)?.to_dtype(dtype)?)?;
            layers.push(Linear::new(
                w.as_tensor().clone(),
                Some(b.as_tensor().clone()),
            ));
            vars.extend([w, b]);
        }
        Ok(Self { layers, vars })
    }

    pub fn loss(&self, step: usize) -> candle_core::Result<Tensor> {
        let dtype = self.vars[0].dtype();
        let x: Vec<f64> = (0..32 * 8)
            .map(|i| ((i + step * 5) as f64 * 0.13).sin())
            .collect();
        let y: Vec<f64> = (0..32 * 4)
            .map(|i| ((i + step) as f64 * 0.29).cos())
            .collect();
        let x = Tensor::from_vec(x, (32, 8), &Device::Cpu)?.to_dtype(dtype)?;
        let y = Tensor::from_vec(y, (32, 4), &Device::Cpu)?.to_dtype(dtype)?;
        let mut h = x;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i + 1 < self.layers.len() {
                h = h.tanh()?;
            }
        }
        (h - y)?.sqr()?.mean_all()
    }

    pub fn values(&self) -> Vec<Vec<f64>> {
        self.vars
            .iter()
            .map(|v| {
                v.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect()
    }
}
