//! Checkpoints: the optimizer's state as safetensors, loaded only when every
//! tensor fits.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor, Var};
use fused_rmsprop::{Blockwise8State, Hyper, QuantMap, Quantized, State};

use fused_rmsprop::{Float, bf16, f16};

use crate::var_state::{QuantizedVarState, VarState, dequantized, half_state, quantized};
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
                VarState::Quantized(
                    QuantizedVarState::F32(s)
                    | QuantizedVarState::BF16(s)
                    | QuantizedVarState::F16(s),
                ) => insert_quantized(&mut tensors, i, shape, s, cpu)?,
                VarState::Quantized(QuantizedVarState::F64(s)) => {
                    insert_quantized(&mut tensors, i, shape, s, cpu)?
                }
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
            // The state as the file has it (full or 8-bit), by the
            // variable's dtype ...
            let eight_bit = tensors.contains_key(&format!("{i}.square_avg.codes"));
            let dtype = match state {
                VarState::Quantized(q) => match q {
                    QuantizedVarState::F32(_) => DType::F32,
                    QuantizedVarState::F64(_) => DType::F64,
                    QuantizedVarState::BF16(_) => DType::BF16,
                    QuantizedVarState::F16(_) => DType::F16,
                },
                VarState::F32(_) => DType::F32,
                VarState::F64(_) => DType::F64,
                VarState::BF16(_) => DType::BF16,
                VarState::F16(_) => DType::F16,
            };
            let from_file =
                match (dtype, eight_bit) {
                    (DType::F64, false) => {
                        VarState::F64(take_state(&mut tensors, i, var, hyper, None)?)
                    }
                    (DType::F64, true) => VarState::Quantized(QuantizedVarState::F64(
                        take_quantized(&mut tensors, i, var, hyper, None)?,
                    )),
                    (DType::BF16, false) => {
                        let fresh = half_state::<bf16>(var, hyper)?;
                        VarState::BF16(take_state(&mut tensors, i, var, hyper, Some(fresh))?)
                    }
                    (DType::BF16, true) => {
                        let fresh = half_state::<bf16>(var, hyper)?;
                        VarState::Quantized(QuantizedVarState::BF16(take_quantized(
                            &mut tensors,
                            i,
                            var,
                            hyper,
                            Some(fresh),
                        )?))
                    }
                    (DType::F16, false) => {
                        let fresh = half_state::<f16>(var, hyper)?;
                        VarState::F16(take_state(&mut tensors, i, var, hyper, Some(fresh))?)
                    }
                    (DType::F16, true) => {
                        let fresh = half_state::<f16>(var, hyper)?;
                        VarState::Quantized(QuantizedVarState::F16(take_quantized(
                            &mut tensors,
                            i,
                            var,
                            hyper,
                            Some(fresh),
                        )?))
                    }
                    (_, false) => VarState::F32(take_state(&mut tensors, i, var, hyper, None)?),
                    (_, true) => VarState::Quantized(QuantizedVarState::F32(take_quantized(
                        &mut tensors,
                        i,
                        var,
                        hyper,
                        None,
                    )?)),
                };
            // ... then in the format this optimizer keeps it: 8-bit state
            // quantized with this optimizer's maps, full state dequantized.
            loaded.push(match state {
                VarState::Quantized(_) => {
                    let requantized = quantized(&dequantized(&from_file), hyper);
                    match from_file {
                        VarState::Quantized(_) if same_maps(&from_file, hyper) => from_file,
                        _ => requantized,
                    }
                }
                _ => dequantized(&from_file),
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

/// Whether 8-bit `state` uses the maps `hyper` would quantize with.
fn same_maps(state: &VarState, hyper: &Hyper) -> bool {
    let maps = |map: &QuantMap| *map == hyper.state_format.square_avg_map();
    match state {
        VarState::Quantized(
            QuantizedVarState::F32(s) | QuantizedVarState::BF16(s) | QuantizedVarState::F16(s),
        ) => maps(&s.square_avg.map),
        VarState::Quantized(QuantizedVarState::F64(s)) => maps(&s.square_avg.map),
        _ => false,
    }
}

/// The name under which a map is saved: `0` unsigned, `1` signed.
fn map_tag(map: QuantMap) -> i64 {
    match map {
        QuantMap::DynamicUnsigned => 0,
        QuantMap::DynamicSigned => 1,
    }
}

/// 8-bit state as safetensors: for each buffer `b`, `{i}.b.codes` (`u8`,
/// in the variable's shape), `{i}.b.scales` (one per 256 elements, in the
/// state's dtype) and `{i}.b.map` (`0` unsigned, `1` signed); the master
/// copy and the step as for full state.
fn insert_quantized<T: Float + candle_core::WithDType>(
    tensors: &mut HashMap<String, Tensor>,
    i: usize,
    shape: &candle_core::Shape,
    s: &Blockwise8State<T>,
    cpu: &candle_core::Device,
) -> Result<()> {
    let mut buffer = |name: &str, q: &Quantized<T>| -> Result<()> {
        tensors.insert(
            format!("{i}.{name}.codes"),
            Tensor::from_slice(&q.codes, shape, cpu)?,
        );
        tensors.insert(
            format!("{i}.{name}.scales"),
            Tensor::from_slice(&q.scales, q.scales.len(), cpu)?,
        );
        tensors.insert(
            format!("{i}.{name}.map"),
            Tensor::new(&[map_tag(q.map)], cpu)?,
        );
        Ok(())
    };
    buffer("square_avg", &s.square_avg)?;
    if let Some(q) = &s.grad_avg {
        buffer("grad_avg", q)?;
    }
    if let Some(q) = &s.momentum_buf {
        buffer("momentum_buf", q)?;
    }
    if let Some(m) = &s.master {
        tensors.insert(format!("{i}.master"), Tensor::from_slice(m, shape, cpu)?);
    }
    tensors.insert(format!("{i}.step"), Tensor::new(&[s.step as i64], cpu)?);
    Ok(())
}

/// The 8-bit state of variable `i` from `tensors`, all checked; `fresh`
/// as for [`take_state`].
fn take_quantized<T: Float + candle_core::WithDType>(
    tensors: &mut HashMap<String, Tensor>,
    i: usize,
    var: &Var,
    hyper: &Hyper,
    fresh: Option<State<T>>,
) -> Result<Blockwise8State<T>> {
    let blocks = var.elem_count().div_ceil(fused_rmsprop::BLOCK_ELEMENTS);
    let mut take = |name: &str, needed: bool| -> Result<Option<Quantized<T>>> {
        let keys = ["codes", "scales", "map"].map(|part| format!("{i}.{name}.{part}"));
        let parts = keys.clone().map(|key| tensors.remove(&key));
        match (parts, needed) {
            ([None, None, None], false) => Ok(None),
            ([Some(codes), Some(scales), Some(map)], true) => {
                let wrong = |key: &str| {
                    candle_core::Error::msg(format!(
                        "fused RMSprop: {key:?} has the wrong dtype or shape"
                    ))
                };
                if codes.dtype() != DType::U8 || codes.shape() != var.shape() {
                    return Err(wrong(&keys[0]));
                }
                if scales.dtype() != T::DTYPE || scales.dims() != [blocks] {
                    return Err(wrong(&keys[1]));
                }
                if map.dtype() != DType::I64 || map.elem_count() != 1 {
                    return Err(wrong(&keys[2]));
                }
                let map = match map.flatten_all()?.to_vec1::<i64>()?[0] {
                    0 => QuantMap::DynamicUnsigned,
                    1 => QuantMap::DynamicSigned,
                    _ => return Err(wrong(&keys[2])),
                };
                Ok(Some(Quantized {
                    codes: codes.flatten_all()?.to_vec1::<u8>()?,
                    scales: scales.to_vec1::<T>()?,
                    map,
                }))
            }
            (_, true) => Err(candle_core::Error::msg(format!(
                "fused RMSprop: the state file lacks part of {i}.{name} (codes, scales, map)"
            ))),
            (_, false) => Err(candle_core::Error::msg(format!(
                "fused RMSprop: the state file has {i}.{name}, which these hyper-parameters do not use"
            ))),
        }
    };
    let square_avg = take("square_avg", true)?.expect("a needed buffer");
    let grad_avg = take("grad_avg", hyper.needs_grad_avg())?;
    let momentum_buf = take("momentum_buf", hyper.needs_momentum_buf())?;
    // The master copy and the step, read (and checked) as full state reads
    // them: `take_state` on just those two, beside a stand-in square
    // average.
    let mut rest = HashMap::new();
    for key in [format!("{i}.master"), format!("{i}.step")] {
        if let Some(t) = tensors.remove(&key) {
            rest.insert(key, t);
        }
    }
    rest.insert(
        format!("{i}.square_avg"),
        Tensor::zeros(var.shape(), T::DTYPE, &candle_core::Device::Cpu)?,
    );
    let full_hyper = hyper
        .with_centered(false)
        .with_momentum(0.0)
        .with_state_format(fused_rmsprop::StateFormat::Full);
    let State { master, step, .. } = take_state(&mut rest, i, var, &full_hyper, fresh)?;
    Ok(Blockwise8State {
        square_avg,
        grad_avg,
        momentum_buf,
        master,
        step,
    })
}
