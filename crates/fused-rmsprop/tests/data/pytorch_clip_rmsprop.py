#!/usr/bin/env python3
"""Reference trajectories for `tests/pytorch_reference.rs`: PyTorch's
`clip_grad_norm_` and `clip_grad_value_` followed by `torch.optim.RMSprop`,
ported to numpy operation by operation, in float32 as PyTorch computes on
the CPU.

    pip install numpy
    python3 crates/fused-rmsprop/tests/data/pytorch_clip_rmsprop.py > crates/fused-rmsprop/tests/data/pytorch_clip_rmsprop.txt

The port follows PyTorch 2.x (torch/nn/utils/clip_grad.py and
torch/optim/rmsprop.py, `_single_tensor_rmsprop`, the CPU default):

- `clip_grad_norm_(params, max_norm)`: each gradient's 2-norm, reduced in
  double (ATen's accumulate type for float on the CPU) and returned as
  float32; the total is the 2-norm of those norms, the same way;
  `clip_coef = max_norm / (total + 1e-6)` in float32, clamped at 1.0;
  every gradient multiplied by it in place (float32).
- `clip_grad_value_(params, clip_value)`: `grad.clamp_(-clip_value, clip_value)`.
- `RMSprop` (no momentum, not centered, no weight decay):
  `square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)` (ATen's
  addcmul computes `self + value * t1 * t2` left to right),
  `avg = square_avg.sqrt().add_(eps)`, `param.addcdiv_(grad, avg, value=-lr)`
  (`self + value * (t1 / t2)`). Python scalars enter float32 ops as float32.

Output: text, one array per line as float32 bit patterns in hex, so the
test reads exact values with the standard library. Deterministic (seeded).
"""

import numpy as np

F = np.float32
SIZES = [5, 64, 300]
STEPS = 12
LR, ALPHA, EPS = 0.01, 0.99, 1e-8
MAX_NORM, CLIP_VALUE = 1.0, 0.05


def hex_line(name, values):
    bits = np.asarray(values, dtype=F).view(np.uint32)
    return name + ": " + " ".join(f"{b:08x}" for b in bits)


def vector_norm(x):
    return F(np.sqrt(np.sum(np.asarray(x, dtype=np.float64) ** 2)))


def clip_grad_norm(grads, max_norm):
    norms = [vector_norm(g) for g in grads]
    total = vector_norm(np.array(norms, dtype=F))
    coef = F(F(max_norm) / (total + F(1e-6)))
    coef = min(coef, F(1.0))
    return [(g * coef).astype(F) for g in grads], total


def clip_grad_value(grads, clip_value):
    c = F(clip_value)
    return [np.clip(g, -c, c).astype(F) for g in grads]


def rmsprop(params, grads, square_avgs):
    one_minus_alpha = F(1 - ALPHA)
    for p, g, v in zip(params, grads, square_avgs):
        v *= F(ALPHA)
        v += (one_minus_alpha * g) * g
        avg = np.sqrt(v) + F(EPS)
        p += F(-LR) * (g / avg)


def main():
    rng = np.random.default_rng(20261207)
    start = [rng.standard_normal(n).astype(F) for n in SIZES]
    # Gradient magnitudes that put the total norm above the bound in some
    # steps and below it in others.
    scales = [0.02, 0.2, 0.05, 0.01, 0.5, 0.03, 0.08, 0.02, 0.3, 0.04, 0.06, 0.01]
    grads = [[(rng.standard_normal(n) * s).astype(F) for n in SIZES] for s in scales]
    print(f"# {__doc__.splitlines()[0]}")
    print(f"sizes: {' '.join(str(n) for n in SIZES)}")
    print(f"steps: {STEPS}")
    print(f"lr alpha eps max_norm clip_value: {LR} {ALPHA} {EPS} {MAX_NORM} {CLIP_VALUE}")
    for t, p in enumerate(start):
        print(hex_line(f"start {t}", p))
    for s, step_grads in enumerate(grads):
        for t, g in enumerate(step_grads):
            print(hex_line(f"grad {s} {t}", g))
    for mode in ["norm", "value"]:
        params = [p.copy() for p in start]
        square_avgs = [np.zeros(n, dtype=F) for n in SIZES]
        for s, step_grads in enumerate(grads):
            if mode == "norm":
                clipped, total = clip_grad_norm(step_grads, MAX_NORM)
                print(hex_line(f"{mode} total_norm {s}", [total]))
            else:
                clipped = clip_grad_value(step_grads, CLIP_VALUE)
            rmsprop(params, clipped, square_avgs)
            for t, p in enumerate(params):
                print(hex_line(f"{mode} params {s} {t}", p))


if __name__ == "__main__":
    main()
