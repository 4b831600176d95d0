//! RMSprop as a plain Rust loop: what a user writes without this crate, and
//! what the compiler makes of it for the default target (no `-C
//! target-cpu=native`). The benchmarks report it beside the fused kernel to
//! show where hand vectorization earns its keep.

use fused_rmsprop::{Hyper, WeightDecay};

use crate::workload::Buffers;

/// One RMSprop step (PyTorch's formula; coupled weight decay, centered and
/// momentum as `hyper` says) in plain indexed loops.
pub fn step(hyper: &Hyper, buffers: &mut Buffers) {
    let (lr, alpha, eps) = (hyper.lr as f32, hyper.alpha as f32, hyper.eps as f32);
    let momentum = hyper.momentum as f32;
    let wd = match hyper.weight_decay {
        Some(WeightDecay::Coupled(wd)) => wd as f32,
        _ => 0.0,
    };
    let Buffers {
        params,
        grads,
        state,
    } = buffers;
    let v = &mut state.square_avg;
    match (
        state.grad_avg.as_deref_mut(),
        state.momentum_buf.as_deref_mut(),
    ) {
        (None, None) => {
            for i in 0..params.len() {
                let g = grads[i] + wd * params[i];
                v[i] = alpha * v[i] + (1.0 - alpha) * g * g;
                params[i] -= lr * g / (v[i].sqrt() + eps);
            }
        }
        (None, Some(b)) => {
            for i in 0..params.len() {
                let g = grads[i] + wd * params[i];
                v[i] = alpha * v[i] + (1.0 - alpha) * g * g;
                b[i] = momentum * b[i] + g / (v[i].sqrt() + eps);
                params[i] -= lr * b[i];
            }
        }
        (Some(ga), b) => {
            let mut b = b;
            for i in 0..params.len() {
                let g = grads[i] + wd * params[i];
                v[i] = alpha * v[i] + (1.0 - alpha) * g * g;
                ga[i] = alpha * ga[i] + (1.0 - alpha) * g;
                let step = g / ((v[i] - ga[i] * ga[i]).sqrt() + eps);
                match b.as_deref_mut() {
                    Some(b) => {
                        b[i] = momentum * b[i] + step;
                        params[i] -= lr * b[i];
                    }
                    None => params[i] -= lr * step,
                }
            }
        }
    }
}
