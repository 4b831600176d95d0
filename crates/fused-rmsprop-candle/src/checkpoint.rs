//! Checkpoints: the optimizer's state as safetensors, loaded only when every
//! tensor fits.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor, Var};
use fused_rmsprop::{Hyper, State};

use fused_rmsprop::{Float, bf16, f16};

use crate::var_state::{VarState, half_state};
use crate::{Result, RmsProp};

impl RmsProp {
    /// Saves the state of every variable as safetensors: `{i}.square_avg`,
    /// `{i}.grad_avg`, `{i}.momentum_buf` (each in the variable's shape, in
    /// its dtype for `f32`/`f64` variables and in `f32` for `bf16`/`f16`
    /// ones), `{i}.master` (the `f32` master copy of a 16-bit variable under
    /// master weights) and `{i}.step`, where `i` is the variable's position
    /// in the list given to [`RmsProp::new`](candle_nn::Optimizer::new). A
    /// restart that builds the optimizer from the same model's variables
    /// loads it back.
    ///
    /// Rounding options may change between save and load: a file without
    /// master copies loaded under master weights starts each copy from the
    /// variable's current value (as a fresh optimizer does); a file with
    /// master copies loaded without master weights drops them (the variable
    /// keeps its rounded value; the sub-ulp remainder the copy held is lost).
    /// The rounding mode itself is not saved: stochastic rounding continues
    /// from the saved step counts, under the loading optimizer's seed.
    ///
    /// ```
    /// # use candle_core::{Device, Var};
    /// # use candle_nn::Optimizer;
    /// # use fused_rmsprop_candle::{ParamsRmsProp, RmsProp};
    /// let v = Var::ones(3, candle_core::DType::F32, &Device::Cpu)?;
    /// let mut opt = RmsProp::new(vec![v.clone()], ParamsRmsProp::default())?;
    /// opt.backward_step(&v.as_tensor().sum_all()?)?;
    /// let path = std::env::temp_dir().join("fused-rmsprop-doc-state.safetensors");
    /// opt.save(&path)?;
    /// let mut restored = RmsProp::new(vec![v], ParamsRmsProp::default())?;
    /// restored.load(&path)?;
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut tensors = HashMap::new();
        for (i, (var, state)) in self.vars.iter().enumerate() {
            let shape = var.shape();
            let cpu = &candle_core::Device::Cpu;
            match state {
                VarState::F32(s) | VarState::BF16(s) | VarState::F16(s) => {
                    insert_state(&mut tensors, i, shape, s, cpu)?
                }
                VarState::F64(s) => insert_state(&mut tensors, i, shape, s, cpu)?,
            }
        }
        candle_core::safetensors::save(&tensors, path)
    }

    /// Loads state written by [`RmsProp::save`]. Every tensor is checked
    /// first (names, shapes, dtypes, no missing or extra names); on any
    /// mismatch, or a file that does not parse, it returns an error and the
    /// live state is untouched.
    ///
    /// See [`RmsProp::save`] for an example.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let bytes = std::fs::read(path)?;
        self.load_bytes(&bytes)
    }

    /// Loads state from the bytes of a file [`RmsProp::save`] wrote, with the
    /// checks of [`RmsProp::load`]: on any error the live state is untouched.
    ///
    /// ```
    /// use candle_core::{Device, Var};
    /// use candle_nn::Optimizer;
    /// use fused_rmsprop_candle::{ParamsRmsProp, RmsProp};
    ///
    /// let w = Var::new(&[1.0f32, 2.0], &Device::Cpu)?;
    /// let mut opt = RmsProp::new(vec![w], ParamsRmsProp::default())?;
    /// assert!(opt.load_bytes(b"not safetensors").is_err());
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn load_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let mut tensors = candle_core::safetensors::load_buffer(bytes, &candle_core::Device::Cpu)?;
        let hyper = self.kernel.hyper();
        let mut loaded = Vec::with_capacity(self.vars.len());
        for (i, (var, state)) in self.vars.iter().enumerate() {
            loaded.push(match state {
                VarState::F32(_) => VarState::F32(take_state(&mut tensors, i, var, hyper, None)?),
                VarState::F64(_) => VarState::F64(take_state(&mut tensors, i, var, hyper, None)?),
                VarState::BF16(_) => {
                    let fresh = half_state::<bf16>(var, hyper)?;
                    VarState::BF16(take_state(&mut tensors, i, var, hyper, Some(fresh))?)
                }
                VarState::F16(_) => {
                    let fresh = half_state::<f16>(var, hyper)?;
                    VarState::F16(take_state(&mut tensors, i, var, hyper, Some(fresh))?)
                }
            });
        }
        if let Some(extra) = tensors.keys().min() {
            return Err(candle_core::Error::msg(format!(
                "fused RMSprop: the state file has {extra:?}, which no variable of this optimizer owns"
            )));
        }
        for ((_, state), new) in self.vars.iter_mut().zip(loaded) {
            *state = new;
        }
        Ok(())
    }
}

fn insert_state<T: Float + candle_core::WithDType>(
    tensors: &mut HashMap<String, Tensor>,
    i: usize,
    shape: &candle_core::Shape,
    s: &State<T>,
    cpu: &candle_core::Device,
) -> Result<()> {
    tensors.insert(
        format!("{i}.square_avg"),
        Tensor::from_slice(&s.square_avg, shape, cpu)?,
    );
    if let Some(ga) = &s.grad_avg {
        tensors.insert(format!("{i}.grad_avg"), Tensor::from_slice(ga, shape, cpu)?);
    }
    if let Some(b) = &s.momentum_buf {
        tensors.insert(
            format!("{i}.momentum_buf"),
            Tensor::from_slice(b, shape, cpu)?,
        );
    }
    if let Some(m) = &s.master {
        tensors.insert(format!("{i}.master"), Tensor::from_slice(m, shape, cpu)?);
    }
    tensors.insert(format!("{i}.step"), Tensor::new(&[s.step as i64], cpu)?);
    Ok(())
}

/// The state of variable `i` from `tensors`, all checked. `fresh` is the
/// fresh state of a 16-bit variable (its master copy, under master weights,
/// stands in for one the file lacks).
fn take_state<T: Float + candle_core::WithDType>(
    tensors: &mut HashMap<String, Tensor>,
    i: usize,
    var: &Var,
    hyper: &Hyper,
    fresh: Option<State<T>>,
) -> Result<State<T>> {
    let has_master = tensors.contains_key(&format!("{i}.master"));
    let mut take = |name: &str, needed: bool| -> Result<Option<Vec<T>>> {
        let key = format!("{i}.{name}");
        match (tensors.remove(&key), needed) {
            (None, false) => Ok(None),
            (None, true) => Err(candle_core::Error::msg(format!(
                "fused RMSprop: the state file lacks {key:?}"
            ))),
            (Some(_), false) => Err(candle_core::Error::msg(format!(
                "fused RMSprop: the state file has {key:?}, which these hyper-parameters do not use"
            ))),
            (Some(t), true) if t.shape() != var.shape() || t.dtype() != T::DTYPE => {
                Err(candle_core::Error::msg(format!(
                    "fused RMSprop: {key:?} is {:?} {:?}, expected {:?} {:?}",
                    t.dtype(),
                    t.shape(),
                    T::DTYPE,
                    var.shape()
                )))
            }
            (Some(t), true) => Ok(Some(t.flatten_all()?.to_vec1::<T>()?)),
        }
    };
    let square_avg = take("square_avg", true)?.unwrap_or_default();
    let grad_avg = take("grad_avg", hyper.needs_grad_avg())?;
    let momentum_buf = take("momentum_buf", hyper.needs_momentum_buf())?;
    let master = match fresh {
        Some(fresh) => {
            let saved = if has_master {
                take("master", true)?
            } else {
                None
            };
            if hyper.master_weights {
                saved.or(fresh.master)
            } else {
                None
            }
        }
        None => None,
    };
    let key = format!("{i}.step");
    let step = match tensors.remove(&key) {
        Some(t) if t.dtype() == DType::I64 && t.elem_count() == 1 => {
            t.flatten_all()?.to_vec1::<i64>()?[0]
        }
        Some(_) => {
            return Err(candle_core::Error::msg(format!(
                "fused RMSprop: {key:?} is not one i64"
            )));
        }
        None => {
            return Err(candle_core::Error::msg(format!(
                "fused RMSprop: the state file lacks {key:?}"
            )));
        }
    };
    Ok(State {
        square_avg,
        grad_avg,
        momentum_buf,
        master,
        step: u64::try_from(step)
            .map_err(|_| candle_core::Error::msg(format!("fused RMSprop: {key:?} is negative")))?,
    })
}
