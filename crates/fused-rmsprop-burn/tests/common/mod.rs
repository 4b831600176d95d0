//! The model the adapter's tests train: a small MLP with deterministic
//! parameters and data, and one training step of it.

#![allow(dead_code)] // each test binary uses its own part

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};

#[derive(Module, Debug)]
pub struct Mlp {
    pub l1: Linear,
    pub l2: Linear,
    pub l3: Linear,
    pub relu: Relu,
}

impl Mlp {
    /// The same model every run: parameters drawn from [`data`] with fixed
    /// seeds, not from burn's generator (which tests running in parallel
    /// share, so a seed would not fix a test's draw).
    pub fn new(device: &Device) -> Self {
        let linear = |inputs: usize, outputs: usize, seed: u64| {
            let mut layer = LinearConfig::new(inputs, outputs).init(device);
            let scale = 1.0 / (inputs as f32).sqrt();
            let weight = data([inputs, outputs], seed, device, DType::F32).mul_scalar(scale);
            let bias = data([1, outputs], seed + 1, device, DType::F32)
                .reshape([outputs])
                .mul_scalar(scale);
            layer.weight = Param::from_tensor(weight);
            layer.bias = Some(Param::from_tensor(bias));
            layer
        };
        Self {
            l1: linear(6, 16, 1001),
            l2: linear(16, 16, 1003),
            l3: linear(16, 3, 1005),
            relu: Relu::new(),
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = self.relu.forward(self.l1.forward(x));
        let x = self.relu.forward(self.l2.forward(x));
        self.l3.forward(x)
    }

    /// Every parameter's values, in a fixed order, as f64.
    pub fn values(&self) -> Vec<Vec<f64>> {
        let mut out = Vec::new();
        for l in [&self.l1, &self.l2, &self.l3] {
            out.push(to_vec(l.weight.val()));
            out.push(to_vec(l.bias.as_ref().unwrap().val()));
        }
        out
    }

    /// The same model with every parameter converted to `dtype`.
    pub fn cast(self, dtype: DType) -> Self {
        fn cast<const D: usize>(p: Param<Tensor<D>>, dtype: DType) -> Param<Tensor<D>> {
            Param::from_tensor(Tensor::from_inner(p.val().inner().cast(dtype)))
        }
        let cast_linear = |l: Linear| Linear {
            weight: cast(l.weight, dtype),
            bias: l.bias.map(|b| cast(b, dtype)),
        };
        Self {
            l1: cast_linear(self.l1),
            l2: cast_linear(self.l2),
            l3: cast_linear(self.l3),
            relu: self.relu,
        }
    }
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().convert::<f64>().try_to_vec::<f64>().unwrap()
}

/// Deterministic pseudo-random data of the given shape.
pub fn data(shape: [usize; 2], seed: u64, device: &Device, dtype: DType) -> Tensor<2> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let values: Vec<f32> = (0..shape[0] * shape[1])
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let options = TensorCreationOptions::new(device.clone()).with_dtype(dtype);
    Tensor::from_data(TensorData::new(values, shape), options)
}

pub fn device() -> Device {
    Device::default().autodiff()
}

/// One training step of `model` on batch `i`.
pub fn train_step(optim: &mut ModuleOptimizer, model: Mlp, i: usize, lr: f64, dtype: DType) -> Mlp {
    let grads = gradients(&model, i, dtype);
    optim.step(lr, model, grads)
}

/// The gradients of `model`'s loss on batch `i`.
pub fn gradients(model: &Mlp, i: usize, dtype: DType) -> GradientsParams {
    let device = device();
    let x = data([8, 6], 2 * i as u64, &device, dtype);
    let y = data([8, 3], 2 * i as u64 + 1, &device, dtype);
    let loss = (model.forward(x) - y).powi_scalar(2).mean();
    GradientsParams::from_grads(loss.backward(), model)
}

pub fn max_abs_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}
