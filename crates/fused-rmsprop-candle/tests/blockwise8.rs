//! 8-bit state in the candle optimizer (`ParamsRmsProp::state_format`):
//! the bare kernel's bits, checkpoints both ways, the checks that see every
//! gradient before anything is written.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use fused_rmsprop::{Blockwise8Group, Blockwise8State, State};
use fused_rmsprop_candle::{NonFinite, ParamsRmsProp, RmsProp, Rounding, StateFormat, bf16};

fn gradient(n: usize, step: usize, salt: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7919 + step * 104_729 + salt * 31) % 2001) as f32 - 1000.0) * 1e-3)
        .collect()
}

fn store(vars: &[(&Var, Tensor)]) -> GradStore {
    let mut store = GradStore::default();
    for (var, grad) in vars {
        store.insert(var.as_tensor(), grad.clone());
    }
    store
}

fn params() -> ParamsRmsProp {
    ParamsRmsProp {
        momentum: Some(0.9),
        rounding: Rounding::Stochastic { seed: 11 },
        state_format: StateFormat::BLOCKWISE8,
        ..Default::default()
    }
}

/// An `f32` and a `bf16` variable above `MIN_8BIT_ELEMENTS` (8-bit state)
/// and a small one (full state), three steps: each variable has the bits
/// of the bare kernel stepping it alone with stream = its index.
#[test]
fn eight_bit_variables_have_the_bare_kernels_bits() -> candle_core::Result<()> {
    let cpu = &Device::Cpu;
    let (n_w, n_h, n_b) = (5000, 4096, 100);
    let w = Var::from_vec(gradient(n_w, 9, 1), n_w, cpu)?;
    let h_start: Vec<bf16> = gradient(n_h, 9, 2)
        .iter()
        .map(|x| bf16::from_f32(*x))
        .collect();
    let h = Var::from_vec(h_start.clone(), n_h, cpu)?;
    let b = Var::from_vec(vec![0.5f32; n_b], n_b, cpu)?;
    let p = params();
    let mut opt = RmsProp::new(vec![w.clone(), h.clone(), b.clone()], p)?;

    let hyper = p.hyper();
    let kernel = fused_rmsprop::RmsProp::new(hyper).unwrap();
    let mut w_bare = gradient(n_w, 9, 1);
    let mut h_bare = h_start;
    let mut b_bare = vec![0.5f32; n_b];
    let (mut sw, mut sh) = (
        Blockwise8State::new(n_w, &hyper),
        Blockwise8State::new(n_h, &hyper),
    );
    let mut sb = State::new(n_b, &hyper.with_state_format(StateFormat::Full));
    for step in 0..3 {
        let (gw, gh, gb) = (
            gradient(n_w, step, 1),
            gradient(n_h, step, 2),
            gradient(n_b, step, 3),
        );
        let gh16: Vec<bf16> = gh.iter().map(|x| bf16::from_f32(*x)).collect();
        opt.step(&store(&[
            (&w, Tensor::from_slice(&gw, n_w, cpu)?),
            (&h, Tensor::from_slice(&gh16, n_h, cpu)?),
            (&b, Tensor::from_slice(&gb, n_b, cpu)?),
        ]))?;
        let (kw, kh, kb) = (sw.step, sh.step, sb.step);
        let group =
            Blockwise8Group::new(&mut w_bare, &gw, sw.slices_mut()).with_rounding_key(kw, 0);
        kernel.step_blockwise8_slices(hyper.lr, group).unwrap();
        sw.step += 1;
        let group =
            Blockwise8Group::new(&mut h_bare, &gh16, sh.slices_mut()).with_rounding_key(kh, 1);
        kernel.step_blockwise8_slices(hyper.lr, group).unwrap();
        sh.step += 1;
        let full = fused_rmsprop::RmsProp::new(hyper.with_state_format(StateFormat::Full)).unwrap();
        let group =
            fused_rmsprop::Group::new(&mut b_bare, &gb, sb.slices_mut()).with_rounding_key(kb, 2);
        full.step_many(hyper.lr, [group]).unwrap();
        sb.step += 1;
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&w.as_tensor().to_vec1::<f32>()?), bits(&w_bare));
    let h_after: Vec<u16> = h
        .as_tensor()
        .to_vec1::<bf16>()?
        .iter()
        .map(|x| x.to_bits())
        .collect();
    assert_eq!(
        h_after,
        h_bare.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(bits(&b.as_tensor().to_vec1::<f32>()?), bits(&b_bare));
    Ok(())
}

/// Saved 8-bit state loads back exactly (the next steps are the same
/// bits); loaded into a full-state optimizer it is dequantized, and full
/// state loaded into an 8-bit optimizer is quantized.
#[test]
fn checkpoints_move_between_8_bit_and_full_state() -> candle_core::Result<()> {
    let cpu = &Device::Cpu;
    let n = 4500;
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "fused-rmsprop-8bit-{}.safetensors",
        std::process::id()
    ));
    let step = |opt: &mut RmsProp, w: &Var, s: usize| -> candle_core::Result<()> {
        opt.step(&store(&[(
            w,
            Tensor::from_slice(&gradient(n, s, 5), n, cpu)?,
        )]))
    };
    let eight = params();
    let full = ParamsRmsProp {
        state_format: StateFormat::Full,
        ..eight
    };

    // 8-bit → 8-bit: the same bits as an uninterrupted run.
    let w = Var::from_vec(vec![1.0f32; n], n, cpu)?;
    let mut opt = RmsProp::new(vec![w.clone()], eight)?;
    step(&mut opt, &w, 0)?;
    opt.save(&path)?;
    let w2 = Var::from_vec(w.as_tensor().to_vec1::<f32>()?, n, cpu)?;
    let mut resumed = RmsProp::new(vec![w2.clone()], eight)?;
    resumed.load(&path)?;
    step(&mut opt, &w, 1)?;
    step(&mut resumed, &w2, 1)?;
    assert_eq!(
        w.as_tensor().to_vec1::<f32>()?,
        w2.as_tensor().to_vec1::<f32>()?
    );

    // 8-bit file → full-state optimizer, and back: the values survive
    // within the map's resolution, the step count exactly.
    let w3 = Var::from_vec(w.as_tensor().to_vec1::<f32>()?, n, cpu)?;
    let mut as_full = RmsProp::new(vec![w3.clone()], full)?;
    as_full.load(&path)?;
    let full_path = dir.join(format!(
        "fused-rmsprop-8bit-full-{}.safetensors",
        std::process::id()
    ));
    as_full.save(&full_path)?;
    let saved = candle_core::safetensors::load(&full_path, cpu)?;
    assert_eq!(saved["0.square_avg"].dtype(), DType::F32);
    assert_eq!(saved["0.step"].to_vec1::<i64>()?, vec![1]);
    let mut back = RmsProp::new(vec![w3.clone()], eight)?;
    back.load(&full_path)?;
    let eight_saved = candle_core::safetensors::load(&path, cpu)?;
    back.save(&full_path)?;
    let again = candle_core::safetensors::load(&full_path, cpu)?;
    // Dequantized then quantized again with the same map: the same codes.
    assert_eq!(
        eight_saved["0.square_avg.codes"].to_vec1::<u8>()?,
        again["0.square_avg.codes"].to_vec1::<u8>()?
    );
    assert!(back.load_bytes(b"not safetensors").is_err());
    std::fs::remove_file(&path).ok();
    std::fs::remove_file(&full_path).ok();
    Ok(())
}

/// Under `NonFinite::Error` an infinite gradient of an 8-bit variable is
/// found before anything is written, a full-state variable's included; the
/// global norm counts the 8-bit variables' gradients.
#[test]
fn every_gradient_is_checked_and_normed_before_any_write() -> candle_core::Result<()> {
    let cpu = &Device::Cpu;
    let n = 5000;
    let small = Var::from_vec(vec![1.0f32; 10], 10, cpu)?;
    let big = Var::from_vec(vec![1.0f32; n], n, cpu)?;
    let mut opt = RmsProp::new(
        vec![small.clone(), big.clone()],
        ParamsRmsProp {
            non_finite: NonFinite::Error,
            ..params()
        },
    )?;
    let mut g = vec![0.5f32; n];
    g[17] = f32::INFINITY;
    let grads = store(&[
        (&small, Tensor::from_slice(&[0.5f32; 10], 10, cpu)?),
        (&big, Tensor::from_slice(&g, n, cpu)?),
    ]);
    let err = opt.step(&grads).unwrap_err();
    assert!(err.to_string().contains("group 1"), "{err}");
    assert!(
        small
            .as_tensor()
            .to_vec1::<f32>()?
            .iter()
            .all(|x| *x == 1.0)
    );
    assert!(big.as_tensor().to_vec1::<f32>()?.iter().all(|x| *x == 1.0));

    let mut clipped = RmsProp::new(
        vec![small.clone(), big.clone()],
        ParamsRmsProp {
            max_grad_norm: Some(1.0),
            ..params()
        },
    )?;
    let (gs, gb) = (vec![3.0f32; 10], vec![0.25f32; n]);
    clipped.step(&store(&[
        (&small, Tensor::from_slice(&gs, 10, cpu)?),
        (&big, Tensor::from_slice(&gb, n, cpu)?),
    ]))?;
    let expected = fused_rmsprop::grad_norm(&[
        fused_rmsprop::sum_of_squares(&gs),
        fused_rmsprop::sum_of_squares(&gb),
    ]);
    assert_eq!(clipped.last_grad_norm(), Some(expected));
    Ok(())
}
