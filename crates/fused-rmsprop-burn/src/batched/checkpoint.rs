//! The batched route's checkpoints, in burn's own optimizer record: the
//! record `init()`'s optimizer writes, so a checkpoint moves between the two
//! routes (and from burn's `RmsProp`) in both directions.
//!
//! burn 0.22.1 lets only a `ModuleOptimizer` make or read an
//! `OptimizerRecord`, and a `ModuleOptimizer` hands an optimizer its states
//! one parameter at a time, in the module's order, during a step. So a
//! checkpoint is written by one step of a `ModuleOptimizer` over a clone of
//! the module with zero gradients, whose optimizer ([`Exchange::Give`])
//! leaves each parameter as it is and gives the batched route's state of
//! that parameter as its own; and read by loading the record into a
//! `ModuleOptimizer` whose optimizer ([`Exchange::Collect`]) collects the
//! state it is given for each parameter during such a step. Its state type
//! is [`FusedRmsPropState`], the per-parameter route's, whose record layout
//! (burn's `RmsProp` names) it shares.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, LearningRate, ModuleOptimizer, Optimizer, OptimizerRecord};
use burn::tensor::{Bytes, DType, Device, Element, Tensor, TensorCreationOptions, TensorData};
use fused_rmsprop::{Blockwise8State, Float, Rounding, State};

use super::{BatchedRmsProp, KernelState};
use crate::blockwise8::Blockwise8Element;
use crate::{
    Averages, Blockwise8Averages, FullAverages, FusedRmsPropState, RecordLoadError, RoundingKey,
};

impl BatchedRmsProp {
    /// The state of `module`'s parameters as burn's optimizer record, the
    /// record [`FusedRmsPropConfig::init`](crate::FusedRmsPropConfig::init)'s
    /// optimizer writes: save it with `OptimizerRecord::save` or
    /// `into_bytes`, load it here with [`load_record`](Self::load_record) or
    /// into `init()`'s optimizer with [`crate::load_record`]. Parameters
    /// without a state (never stepped) are left out, as burn leaves them
    /// out.
    ///
    /// ```
    /// use burn::nn::{Linear, LinearConfig};
    /// use burn::optim::GradientsParams;
    /// use burn::tensor::{Device, Tensor};
    /// use fused_rmsprop_burn::FusedRmsPropConfig;
    ///
    /// let device = Device::default().autodiff();
    /// let model: Linear = LinearConfig::new(4, 2).init(&device);
    /// let mut optim = FusedRmsPropConfig::new().init_batched();
    /// let loss = model.forward(Tensor::<2>::ones([8, 4], &device)).mean();
    /// let grads = GradientsParams::from_grads(loss.backward(), &model);
    /// let (model, outcome) = optim.step(1e-2, model, grads);
    /// outcome?;
    ///
    /// let bytes = optim.to_record(&model).into_bytes()?;
    /// let mut resumed = FusedRmsPropConfig::new().init_batched();
    /// resumed.load_record(&model, bytes)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_record<M: Module>(&self, module: &M) -> OptimizerRecord {
        let order = ParamOrder::of(module);
        let states: HashMap<ParamId, &KernelState> = self
            .states
            .iter()
            .filter_map(|(id, state)| state.as_ref().map(|s| (*id, s)))
            .collect();
        let stochastic = matches!(self.kernel.hyper().rounding, Rounding::Stochastic { .. });
        let mut queue = VecDeque::new();
        let mut grads = GradientsParams::new();
        for (id, zeros) in order.params {
            let Some(&state) = states.get(&id) else {
                continue;
            };
            let stream = self.streams.get(&id).copied().filter(|_| stochastic);
            queue.push_back((state.clone(), stream));
            zeros.register(&mut grads, id);
        }
        let mut optim = ModuleOptimizer::from(Exchange::Give(Arc::new(Mutex::new(queue))));
        let _unchanged = optim.step(0.0, module.clone(), grads);
        optim.to_record()
    }

    /// Loads a checkpoint for `module`'s parameters: the bytes of an
    /// optimizer record written by [`to_record`](Self::to_record), by
    /// `init()`'s optimizer, or by burn's own `RmsProp` (a 16-bit state
    /// widened exactly). On error the live state is untouched. A state that
    /// does not fit its parameter starts afresh at the next step (counted in
    /// `states_reset`), as in the per-parameter route.
    ///
    /// # Errors
    /// [`RecordLoadError::Record`] for bytes that are not an optimizer
    /// record; [`RecordLoadError::Malformed`] for one that burn's loader
    /// panics on.
    ///
    /// See [`to_record`](Self::to_record) for an example.
    pub fn load_record<M: Module>(
        &mut self,
        module: &M,
        bytes: Bytes,
    ) -> Result<(), RecordLoadError> {
        let taken = Arc::new(Mutex::new(Vec::new()));
        let mut optim = ModuleOptimizer::from(Exchange::Collect(Arc::clone(&taken)));
        crate::load_record(&mut optim, bytes)?;
        let order = ParamOrder::of(module);
        let mut grads = GradientsParams::new();
        let mut ids = Vec::with_capacity(order.params.len());
        for (id, zeros) in order.params {
            zeros.register(&mut grads, id);
            ids.push(id);
        }
        let _unchanged = optim.step(0.0, module.clone(), grads);
        let taken = std::mem::take(&mut *taken.lock().unwrap_or_else(PoisonError::into_inner));
        let loaded: Vec<(ParamId, Keyed)> = ids
            .into_iter()
            .zip(taken)
            .filter_map(|(id, state)| state.map(|s| (id, s)))
            .collect();
        self.streams = loaded
            .iter()
            .filter_map(|(id, (_, stream))| stream.map(|s| (*id, s)))
            .collect();
        self.next_stream = self
            .streams
            .values()
            .map(|s| s.saturating_add(1))
            .max()
            .unwrap_or(0);
        self.states = loaded
            .into_iter()
            .map(|(id, (state, _))| (id, Some(state)))
            .collect();
        Ok(())
    }
}

/// A module's float parameters in the order a `ModuleOptimizer` visits them
/// (each once), with a way to register a zero gradient for each.
struct ParamOrder {
    params: Vec<(ParamId, Zeros)>,
}

/// Registers a zero gradient of some rank for a parameter.
type RegisterZeros = Box<dyn FnOnce(&mut GradientsParams, ParamId)>;

/// A zero gradient of some rank.
struct Zeros(RegisterZeros);

impl Zeros {
    fn register(self, grads: &mut GradientsParams, id: ParamId) {
        (self.0)(grads, id)
    }
}

impl ParamOrder {
    fn of<M: Module>(module: &M) -> Self {
        let mut visitor = Visitor {
            seen: HashSet::new(),
            params: Vec::new(),
        };
        module.visit(&mut visitor);
        Self {
            params: visitor.params,
        }
    }
}

struct Visitor {
    seen: HashSet<ParamId>,
    params: Vec<(ParamId, Zeros)>,
}

impl ModuleVisitor for Visitor {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.seen.insert(param.id) {
            // Made only when registered: `to_record` registers only the
            // parameters that have a state.
            let value = param.val().inner();
            let register =
                move |grads: &mut GradientsParams, id| grads.register(id, value.zeros_like());
            self.params.push((param.id, Zeros(Box::new(register))));
        }
    }
}

/// A parameter's kernel state with its stochastic-rounding stream, if it
/// has one.
type Keyed = (KernelState, Option<u64>);

/// An optimizer that leaves each parameter as it is and exchanges its
/// state with the batched route (see the module docs).
#[derive(Clone)]
enum Exchange {
    /// Gives, as each parameter's state, the next of these (with its
    /// rounding stream, if it has one).
    Give(Arc<Mutex<VecDeque<Keyed>>>),
    /// Keeps each state it is given and collects a copy (with its rounding
    /// stream, if it has one).
    Collect(Arc<Mutex<Vec<Option<Keyed>>>>),
}

impl Optimizer for Exchange {
    type State<const D: usize> = FusedRmsPropState<D>;

    fn step<const D: usize>(
        &self,
        _lr: LearningRate,
        tensor: Tensor<D>,
        _grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        match self {
            Exchange::Give(states) => {
                let next = states
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop_front();
                let state = next.map(|(s, stream)| to_tensors(&s, stream, &tensor));
                (tensor, state)
            }
            Exchange::Collect(collected) => {
                let copy = state.as_ref().map(|s| {
                    let stream = s.rounding_key.map(|key| key.stream);
                    (from_tensors(s, tensor.dtype()), stream)
                });
                collected
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(copy);
                (tensor, state)
            }
        }
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.moved_to(device)
    }
}

/// A kernel state as the per-parameter route's tensors, shaped like
/// `param`, with the rounding key of `stream` (and the state's step count)
/// when there is one.
fn to_tensors<const D: usize>(
    state: &KernelState,
    stream: Option<u64>,
    param: &Tensor<D>,
) -> FusedRmsPropState<D> {
    fn of<S: Blockwise8Element, const D: usize>(
        averages: Result<&State<S>, &Blockwise8State<S>>,
        (stream, param): (Option<u64>, &Tensor<D>),
    ) -> FusedRmsPropState<D> {
        let tensor = |values: &[S]| {
            let data = TensorData::new(values.to_vec(), param.shape());
            let options = TensorCreationOptions::new(param.device().inner()).with_dtype(S::DTYPE);
            Tensor::from_data(data, options)
        };
        let (averages, master, step) = match averages {
            Ok(state) => (
                Averages::Full(FullAverages {
                    square_avg: tensor(&state.square_avg),
                    grad_avg: state.grad_avg.as_deref().map(tensor),
                    momentum_buf: state.momentum_buf.as_deref().map(tensor),
                }),
                &state.master,
                state.step,
            ),
            Err(state) => {
                let buffers = Blockwise8State {
                    master: None,
                    step: 0,
                    ..state.clone()
                };
                let averages = Blockwise8Averages::from_kernel(param.dims().to_vec(), buffers);
                (Averages::Blockwise8(averages), &state.master, state.step)
            }
        };
        FusedRmsPropState {
            averages,
            master: master.as_deref().map(tensor),
            rounding_key: stream.map(|stream| RoundingKey { step, stream }),
        }
    }
    let with = (stream, param);
    match state {
        KernelState::F32(s) => of(Ok(s), with),
        KernelState::F64(s) => of(Ok(s), with),
        KernelState::Blockwise8F32(s) => of(Err(s), with),
        KernelState::Blockwise8F64(s) => of(Err(s), with),
    }
}

/// The per-parameter route's tensors as a kernel state for a parameter of
/// `dtype` (`f64` state for `f64`, `f32` for the others; a 16-bit state,
/// as burn's `RmsProp` keeps it, widened exactly). A tensor that does not
/// convert gives an empty buffer, which fits no parameter: that state
/// starts afresh at the next step. 8-bit averages (a record of `init()`'s
/// optimizer under `StateFormat::Blockwise8`) stay 8-bit when they are of
/// the parameter's state type, and are dequantized otherwise.
fn from_tensors<const D: usize>(state: &FusedRmsPropState<D>, dtype: DType) -> KernelState {
    fn values<S: Float + Element, const D: usize>(t: &Tensor<D>) -> Vec<S> {
        t.clone()
            .into_data()
            .convert::<S>()
            .try_to_vec::<S>()
            .unwrap_or_default()
    }
    fn of<S: Float + Element, const D: usize>(state: &FusedRmsPropState<D>) -> State<S> {
        let full = match &state.averages {
            Averages::Full(full) => full.clone(),
            Averages::Blockwise8(averages) => averages.dequantize(&Default::default()),
        };
        State {
            square_avg: values(&full.square_avg),
            grad_avg: full.grad_avg.as_ref().map(values),
            momentum_buf: full.momentum_buf.as_ref().map(values),
            master: state.master.as_ref().map(values),
            step: state.rounding_key.map_or(0, |key| key.step),
        }
    }
    fn with_extras<S: Float + Element, const D: usize>(
        q: &Blockwise8State<S>,
        state: &FusedRmsPropState<D>,
    ) -> Blockwise8State<S> {
        Blockwise8State {
            master: state.master.as_ref().map(values),
            step: state.rounding_key.map_or(0, |key| key.step),
            ..q.clone()
        }
    }
    if let Averages::Blockwise8(averages) = &state.averages {
        match (averages.f32(), averages.f64(), dtype == DType::F64) {
            (_, Some(q), true) => return KernelState::Blockwise8F64(with_extras(q, state)),
            (Some(q), _, false) => return KernelState::Blockwise8F32(with_extras(q, state)),
            _ => {}
        }
    }
    if dtype == DType::F64 {
        KernelState::F64(of(state))
    } else {
        KernelState::F32(of(state))
    }
}
