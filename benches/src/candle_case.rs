//! Candle workloads: `Var`s with fixed gradients, and the optimizers the
//! fused one is compared with.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use fused_rmsprop_candle::{ParamsRmsProp, RmsProp, TensorOpsRmsProp};

use crate::workload::Variant;

/// `Var`s of `sizes` elements (all ones) and their gradients (a fixed ramp
/// of small values), reused every step.
pub fn vars_and_grads(sizes: &[usize]) -> (Vec<Var>, GradStore) {
    vars_and_grads_in(DType::F32, sizes)
}

/// [`vars_and_grads`] of `dtype`. The gradients are inserted into the
/// store directly (the gradient of `sum(var * ramp)`), not by a backward
/// pass: candle's backward recurses over the graph and would overflow the
/// stack on a loss summed over 100,000 `Var`s.
pub fn vars_and_grads_in(dtype: DType, sizes: &[usize]) -> (Vec<Var>, GradStore) {
    let device = Device::Cpu;
    let vars: Vec<Var> = sizes
        .iter()
        .map(|&n| Var::ones(n, dtype, &device).expect("a Var"))
        .collect();
    let mut grads = GradStore::default();
    for var in &vars {
        let n = var.elem_count();
        let ramp = Tensor::arange(0u32, n as u32, &device)
            .and_then(|t| t.to_dtype(dtype))
            .and_then(|t| t * 1e-7)
            .expect("a ramp");
        grads.insert(var.as_tensor(), ramp);
    }
    (vars, grads)
}

/// The fused optimizer's parameters for `variant`.
pub fn params(variant: Variant) -> ParamsRmsProp {
    let h = variant.hyper();
    ParamsRmsProp {
        lr: h.lr,
        alpha: h.alpha,
        eps: h.eps,
        momentum: (h.momentum > 0.0).then_some(h.momentum),
        centered: h.centered,
        weight_decay: h.weight_decay.map(|w| w.coefficient()),
        ..Default::default()
    }
}

/// What the fused optimizer is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    /// The same update in candle tensor ops ([`TensorOpsRmsProp`]).
    TensorOps,
    /// candle-nn's `AdamW` (its built-in adaptive optimizer).
    AdamW,
    /// candle-nn's `SGD` (the cheapest built-in step).
    Sgd,
}

impl Baseline {
    /// All of them.
    pub const ALL: [Baseline; 3] = [Baseline::TensorOps, Baseline::AdamW, Baseline::Sgd];

    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Baseline::TensorOps => "tensor-op RMSprop",
            Baseline::AdamW => "candle-nn AdamW",
            Baseline::Sgd => "candle-nn SGD",
        }
    }

    /// Whether it computes the same update as the fused optimizer.
    pub fn is_rmsprop(self) -> bool {
        self == Baseline::TensorOps
    }

    /// This optimizer over `vars`, configured as `variant` where that
    /// applies, as a step function.
    pub fn build(self, vars: Vec<Var>, variant: Variant) -> Box<dyn FnMut(&GradStore)> {
        match self {
            Baseline::TensorOps => {
                let mut opt = TensorOpsRmsProp::new(vars, params(variant)).expect("valid");
                Box::new(move |g| opt.step(g).expect("a step"))
            }
            Baseline::AdamW => {
                let mut opt =
                    candle_nn::AdamW::new(vars, candle_nn::ParamsAdamW::default()).expect("valid");
                Box::new(move |g| opt.step(g).expect("a step"))
            }
            Baseline::Sgd => {
                let mut opt = candle_nn::SGD::new(vars, 0.01).expect("valid");
                Box::new(move |g| opt.step(g).expect("a step"))
            }
        }
    }
}

/// The fused optimizer over `vars`, configured as `variant`.
pub fn fused(vars: Vec<Var>, variant: Variant) -> RmsProp {
    RmsProp::new(vars, params(variant)).expect("valid")
}

/// The fused optimizer over `vars` as a step function.
pub fn fused_step(vars: Vec<Var>, variant: Variant) -> Box<dyn FnMut(&GradStore)> {
    let mut opt = fused(vars, variant);
    Box::new(move |g| opt.step(g).expect("a step"))
}

/// The values of `vars` (as `f32`), concatenated.
pub fn values(vars: &[Var]) -> Vec<f32> {
    vars.iter()
        .flat_map(|v| {
            v.to_dtype(DType::F32)
                .and_then(|t| t.to_vec1::<f32>())
                .expect("f32 values")
        })
        .collect()
}

/// The end-to-end workload: an MLP (1024 → 1024 → 1024 → 10, 2.1M
/// parameters) on a batch of 64; [`Training::step`] is forward, backward and
/// one optimizer step.
pub struct Training {
    layers: Vec<candle_nn::Linear>,
    optimizer: Box<dyn FnMut(&GradStore)>,
    x: Tensor,
    y: Tensor,
}

impl Training {
    /// The MLP, trained by the optimizer `make` builds over its `Var`s.
    pub fn new(make: impl FnOnce(Vec<Var>) -> Box<dyn FnMut(&GradStore)>) -> Self {
        use candle_nn::{VarBuilder, VarMap};
        let device = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let layers = [(1024, 1024), (1024, 1024), (1024, 10)]
            .iter()
            .enumerate()
            .map(|(i, &(a, b))| candle_nn::linear(a, b, vb.pp(format!("l{i}"))).expect("a layer"))
            .collect();
        let x = (Tensor::ones((64, 1024), DType::F32, &device).expect("x") * 0.1).expect("x");
        let y = Tensor::zeros((64, 10), DType::F32, &device).expect("y");
        Self {
            layers,
            optimizer: make(varmap.all_vars()),
            x,
            y,
        }
    }

    /// Forward, backward and one optimizer step.
    pub fn step(&mut self) {
        use candle_core::Module;
        let mut h = self.x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h).expect("forward");
            if i + 1 < self.layers.len() {
                h = h.tanh().expect("tanh");
            }
        }
        let loss = (h - &self.y)
            .and_then(|d| d.sqr())
            .and_then(|d| d.mean_all())
            .expect("loss");
        let grads = loss.backward().expect("backward");
        (self.optimizer)(&grads);
    }
}
