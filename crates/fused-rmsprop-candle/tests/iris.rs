//! The example's Iris classifier trained with 8-bit state reaches the
//! accuracy of full state.

#[path = "../examples/common/iris.rs"]
mod iris;

use candle_core::DType;
use candle_nn::Optimizer;
use fused_rmsprop_candle::{ParamsRmsProp, RmsProp, StateFormat};
use iris::{Classifier, Iris, initial_weights, train_epoch, valid_accuracy};

/// The classifier 64 units wide: its 64 x 64 hidden weight (4096
/// elements) gets 8-bit state, the smaller tensors keep full state.
const HIDDEN: usize = 64;
const EPOCHS: usize = 10;

/// Final validation accuracy and last epoch's training loss, and the
/// parameters.
fn run(state_format: StateFormat) -> candle_core::Result<(f32, f32, Vec<Vec<f32>>)> {
    let iris = Iris::load(DType::F32)?;
    let model = Classifier::from_weights(&initial_weights(HIDDEN, DType::F32)?)?;
    let params = ParamsRmsProp {
        lr: 5e-4,
        state_format,
        ..Default::default()
    };
    let mut optim = RmsProp::new(model.vars.clone(), params)?;
    let mut loss = f32::NAN;
    for _ in 0..EPOCHS {
        loss = train_epoch(&model, &mut optim, &iris, 16, |_, _| {})?.0;
    }
    let values = model
        .vars
        .iter()
        .map(|v| v.as_tensor().flatten_all()?.to_vec1::<f32>())
        .collect::<candle_core::Result<_>>()?;
    Ok((valid_accuracy(&model, &iris)?, loss, values))
}

#[test]
fn eight_bit_state_reaches_the_accuracy_of_full_state() -> candle_core::Result<()> {
    let (a8, l8, p8) = run(StateFormat::BLOCKWISE8)?;
    let (af, lf, pf) = run(StateFormat::Full)?;
    let report = format!("valid accuracy 8-bit {a8:.1}%, full {af:.1}%; loss {l8:.4} vs {lf:.4}");
    assert_ne!(p8, pf, "8-bit state changed the run");
    assert!(a8 >= af - 5.0, "{report}");
    assert!(l8 <= 1.1 * lf, "{report}");
    Ok(())
}
