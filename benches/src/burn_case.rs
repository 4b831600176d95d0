//! Burn workloads: a module of parameters and a fixed gradient, stepped
//! through `ModuleOptimizer` as a training loop steps it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::module::{Module, Param, ParamId};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{GradientsParams, ModuleOptimizer, RmsPropConfig};
use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};
use fused_rmsprop::WeightDecay;
use fused_rmsprop_burn::{BatchedRmsProp, FusedRmsPropConfig};

use crate::workload::{Buffers, Variant};

/// Parameters of the shapes given, each with a gradient of its shape.
#[derive(Module, Debug)]
pub struct Params {
    /// The parameters, flattened to rank 1 (the optimizer does not care).
    pub tensors: Vec<Param<Tensor<1>>>,
}

/// A module, its gradients (reused every step) and an optimizer.
pub struct Case {
    module: Option<Params>,
    grads: Vec<(ParamId, Tensor<1>)>,
    optim: Stepper,
    lr: f64,
}

/// What steps a [`Case`]: burn's per-parameter `ModuleOptimizer`, or the
/// fused optimizer's batched route.
pub enum Stepper {
    /// One optimizer call per parameter.
    Module(ModuleOptimizer),
    /// One kernel dispatch per step.
    Batched(Box<BatchedRmsProp>),
}

impl From<ModuleOptimizer> for Stepper {
    fn from(optim: ModuleOptimizer) -> Self {
        Stepper::Module(optim)
    }
}

impl From<BatchedRmsProp> for Stepper {
    fn from(optim: BatchedRmsProp) -> Self {
        Stepper::Batched(Box::new(optim))
    }
}

impl Case {
    /// Parameters of `sizes` elements on burn's default (Flex) device with
    /// autodiff, as a training loop holds them, stepped by `optim`.
    pub fn new(sizes: &[usize], optim: impl Into<Stepper>, lr: f64) -> Self {
        Self::new_in(DType::F32, sizes, optim, lr)
    }

    /// [`Case::new`] with parameters and gradients of `dtype`.
    pub fn new_in(dtype: DType, sizes: &[usize], optim: impl Into<Stepper>, lr: f64) -> Self {
        let device = Device::default().autodiff();
        let options =
            |device: &Device| TensorCreationOptions::new(device.clone()).with_dtype(dtype);
        let mut tensors = Vec::new();
        let mut grads = Vec::new();
        for (k, &n) in sizes.iter().enumerate() {
            let values = |scale: f32| {
                let v: Vec<f32> = (0..n)
                    .map(|i| scale * (((i * 7919 + k * 104729) % 2001) as f32 - 1000.0) / 1000.0)
                    .collect();
                TensorData::new(v, [n])
            };
            let param = Param::from_tensor(Tensor::from_data(values(0.5), options(&device)));
            let grad = Tensor::from_data(values(1e-3), options(&Device::default()));
            grads.push((param.id, grad));
            tensors.push(param);
        }
        Self {
            module: Some(Params { tensors }),
            grads,
            optim: optim.into(),
            lr,
        }
    }

    /// One optimizer step of every parameter.
    pub fn step(&mut self) {
        let mut grads = GradientsParams::new();
        for (id, grad) in &self.grads {
            grads.register(*id, grad.clone());
        }
        let module = self.module.take().expect("a module between steps");
        self.module = Some(match &mut self.optim {
            Stepper::Module(optim) => optim.step(self.lr, module, grads),
            Stepper::Batched(optim) => {
                let (module, outcome) = optim.step(self.lr, module, grads);
                outcome.expect("benchmark parameters are steppable in place");
                module
            }
        });
    }

    /// [`Case::step`] the way burn-train's `Learner` steps (0.22:
    /// `self.model = self.model().optimize(..)`, where `model()` is a
    /// clone): a clone of the module is held while the optimizer steps, so
    /// every parameter's buffer is shared during the step.
    pub fn step_holding_the_module(&mut self) {
        let held = self.module.clone();
        self.step();
        drop(held);
    }

    /// The parameters' values, concatenated.
    pub fn values(&self) -> Vec<f32> {
        let module = self.module.as_ref().expect("a module between steps");
        module
            .tensors
            .iter()
            .flat_map(|p| {
                p.val()
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .expect("f32 data")
            })
            .collect()
    }
}

/// Burn's own `RmsProp` configured as `variant`.
pub fn burn_rmsprop(variant: Variant) -> ModuleOptimizer {
    burn_rmsprop_config(variant).init()
}

/// The config of burn's own `RmsProp` for `variant` (to add burn's options,
/// such as its gradient clipping, before `init`).
pub fn burn_rmsprop_config(variant: Variant) -> RmsPropConfig {
    let h = variant.hyper();
    RmsPropConfig::new()
        .with_alpha(h.alpha as f32)
        .with_momentum(h.momentum as f32)
        .with_epsilon(h.eps as f32)
        .with_centered(h.centered)
        .with_weight_decay(penalty(h.weight_decay))
}

/// The fused optimizer configured as `variant`.
pub fn fused_rmsprop(variant: Variant) -> FusedRmsPropConfig {
    let h = variant.hyper();
    FusedRmsPropConfig::new()
        .with_alpha(h.alpha as f32)
        .with_momentum(h.momentum as f32)
        .with_epsilon(h.eps as f32)
        .with_centered(h.centered)
        .with_weight_decay(penalty(h.weight_decay))
}

fn penalty(wd: Option<WeightDecay>) -> Option<WeightDecayConfig> {
    wd.map(|wd| WeightDecayConfig::new(wd.coefficient() as f32))
}

/// An optimizer that returns every parameter unchanged: a step through
/// `ModuleOptimizer` with it costs what burn's per-parameter machinery costs
/// around any optimizer (gradient lookup, type-erased state, records), the
/// floor under the fused optimizer's step.
#[derive(Clone, Debug)]
pub struct Unchanged;

impl burn::optim::Optimizer for Unchanged {
    type State<const D: usize> = ();

    fn step<const D: usize>(
        &self,
        _lr: f64,
        tensor: Tensor<D>,
        _grad: Tensor<D>,
        _state: Option<()>,
    ) -> (Tensor<D>, Option<()>) {
        (tensor, Some(()))
    }

    fn to_device<const D: usize>(state: (), _device: &Device) {
        state
    }
}

/// [`Unchanged`] as the `ModuleOptimizer` a training loop holds.
pub fn floor() -> ModuleOptimizer {
    ModuleOptimizer::from(Unchanged)
}

/// An optimizer that returns every parameter unchanged after stepping, with
/// the bare kernel, side buffers of the parameter's size (its own buffers
/// for each parameter, taken in turn among those of one size): burn's floor
/// under the cache and memory traffic of the fused step, with none of the
/// adapter's work on burn's tensors. Between two parameters burn's
/// bookkeeping then runs on caches the previous parameter has just streamed
/// through, as it does around the fused optimizer; [`Unchanged`] measures it
/// on warm caches. Clones share the side buffers and the clock, so a clone
/// kept before `ModuleOptimizer::from` reads [`kernel_time`](Self::kernel_time).
#[derive(Clone)]
pub struct Traffic {
    kernel: fused_rmsprop::RmsProp,
    sides: Arc<Mutex<Sides>>,
    in_kernel_ns: Arc<AtomicU64>,
}

/// Per parameter size: side buffers of that size, and which one the next
/// parameter of that size steps.
type Sides = HashMap<usize, (usize, Vec<Buffers>)>;

impl Traffic {
    /// Side buffers for parameters of `sizes` elements (plain variant),
    /// stepped by `kernel`.
    pub fn new(sizes: &[usize], kernel: fused_rmsprop::RmsProp) -> Self {
        let mut sides = Sides::new();
        for &len in sizes {
            let (_, buffers) = sides.entry(len).or_default();
            buffers.push(Buffers::new(len, Variant::Plain));
        }
        Self {
            kernel,
            sides: Arc::new(Mutex::new(sides)),
            in_kernel_ns: Arc::default(),
        }
    }

    /// The time spent in the kernel so far, all steps together: the rest of
    /// a step is burn's bookkeeping.
    pub fn kernel_time(&self) -> Duration {
        Duration::from_nanos(self.in_kernel_ns.load(Ordering::Relaxed))
    }
}

impl burn::optim::Optimizer for Traffic {
    type State<const D: usize> = ();

    fn step<const D: usize>(
        &self,
        _lr: f64,
        tensor: Tensor<D>,
        _grad: Tensor<D>,
        _state: Option<()>,
    ) -> (Tensor<D>, Option<()>) {
        let mut sides = self.sides.lock().expect("not poisoned");
        if let Some((next, buffers)) = sides.get_mut(&tensor.shape().num_elements()) {
            let start = Instant::now();
            buffers[*next].step(&self.kernel);
            let ns = start.elapsed().as_nanos() as u64;
            self.in_kernel_ns.fetch_add(ns, Ordering::Relaxed);
            *next = (*next + 1) % buffers.len();
        }
        (tensor, Some(()))
    }

    fn to_device<const D: usize>(state: (), _device: &Device) {
        state
    }
}

/// [`Traffic`] as the `ModuleOptimizer` a training loop holds.
pub fn floor_with_traffic(sizes: &[usize], kernel: fused_rmsprop::RmsProp) -> ModuleOptimizer {
    ModuleOptimizer::from(Traffic::new(sizes, kernel))
}

/// A small MLP (1024 → 1024 → 1024 → 10, 2.1M parameters) for the
/// end-to-end rows: one training step is forward, backward and optimizer.
#[derive(Module, Debug)]
pub struct Mlp {
    l1: burn::nn::Linear,
    l2: burn::nn::Linear,
    l3: burn::nn::Linear,
}

/// One training loop on fixed data: [`Training::step`] is a whole step.
pub struct Training {
    model: Option<Mlp>,
    optim: ModuleOptimizer,
    x: Tensor<2>,
    y: Tensor<2>,
    lr: f64,
}

impl Training {
    /// The MLP (the same initial values for every optimizer: seeded) on a
    /// batch of 64, trained by `optim`.
    pub fn new(optim: ModuleOptimizer, lr: f64) -> Self {
        let device = Device::default().autodiff();
        device.seed(7);
        let linear = |i, o| burn::nn::LinearConfig::new(i, o).init(&device);
        let model = Mlp {
            l1: linear(1024, 1024),
            l2: linear(1024, 1024),
            l3: linear(1024, 10),
        };
        let x = Tensor::<2>::ones([64, 1024], &device).mul_scalar(0.1);
        let y = Tensor::<2>::zeros([64, 10], &device);
        Self {
            model: Some(model),
            optim,
            x,
            y,
            lr,
        }
    }

    /// Forward, backward and one optimizer step.
    pub fn step(&mut self) {
        let model = self.model.take().expect("a model between steps");
        let h = model.l1.forward(self.x.clone()).tanh();
        let h = model.l2.forward(h).tanh();
        let loss = (model.l3.forward(h) - self.y.clone()).powi_scalar(2).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        self.model = Some(self.optim.step(self.lr, model, grads));
    }
}
