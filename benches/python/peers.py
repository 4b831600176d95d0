#!/usr/bin/env python3
"""Other ecosystems' optimizer steps on this machine, as `compare --peers` rows.

Measures, on one f32 tensor per size, the same gradient every step:
  PyTorch  RMSprop (for-loop), RMSprop (foreach), Adam(fused=True), SGD
  Optax    rmsprop (and its centered/momentum variants) under jax.jit with
           donated buffers
and, with --half bf16 (the default), PyTorch's RMSprop (foreach) and
Adam(fused=True) on a bf16 parameter (their state is bf16 too), as rows of
case "<size> bf16" that `compare` sets against its "bf16 nearest" kernel rows;
and, plain variant, the 8-bit optimizers on the CPU:
  bitsandbytes  RMSprop8bit (block-wise, its default) and RMSprop32bit
  torchao       AdamW8bit, for context (no 8-bit RMSprop there)
as rows of case "<size> 8-bit" (framework "bitsandbytes" / "torchao").
and prints one JSON object per line in `compare --json`'s format
(framework "pytorch" / "optax"; their time in baseline_ns, fused fields null).

    pip install torch jax optax bitsandbytes torchao   # whichever you want measured
    python3 benches/python/peers.py --sizes 1M,16M --threads 2 > peers.jsonl
    cargo run --release -p fused-rmsprop-benches --bin compare -- --peers peers.jsonl

A framework that is not installed is skipped with a note on stderr. Timings
are medians of repeated steps after warm-up, as in `compare`. Never part of
the tests.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

VARIANTS = {
    # name: (momentum, centered, weight_decay), PyTorch defaults otherwise
    "plain": (0.0, False, 0.0),
    "momentum": (0.9, False, 0.0),
    "centered+momentum+wd": (0.9, True, 0.01),
}
LR, ALPHA, EPS = 0.01, 0.99, 1e-8


def parse_size(s):
    s = s.strip()
    shift = {"K": 10, "k": 10, "M": 20, "m": 20}.get(s[-1], 0)
    return int(s[:-1] if shift else s) << shift


def label(n):
    for shift, suffix in ((20, "M"), (10, "K")):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{suffix}"
    return str(n)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def median_ns(step, budget_s):
    step()  # warm-up (compiles under jit)
    step()
    t0 = time.perf_counter()
    step()
    each = max(time.perf_counter() - t0, 1e-6)
    reps = int(min(max(budget_s / each, 5), 200))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e9


def row(framework, baseline, n, variant, threads, ns, cpu):
    return {
        "framework": framework, "baseline": baseline, "fused": "", "case": label(n),
        "variant": variant, "elements": n, "threads": threads, "baseline_ns": ns,
        "fused_ns": None, "speedup": None, "gbps": None, "roofline_fraction": None,
        "max_abs_diff": None, "cpu": cpu,
    }


def torch_rows(sizes, variants, half, threads, budget, cpu):
    try:
        import torch
    except ImportError:
        print("peers: torch not installed, skipping PyTorch", file=sys.stderr)
        return []
    torch.set_num_threads(threads)
    out = []
    for n in sizes:
        for variant in variants:
            momentum, centered, wd = VARIANTS[variant]
            cases = [
                ("torch RMSprop (for-loop)", lambda p: torch.optim.RMSprop(
                    [p], lr=LR, alpha=ALPHA, eps=EPS, momentum=momentum, centered=centered,
                    weight_decay=wd, foreach=False)),
                ("torch RMSprop (foreach)", lambda p: torch.optim.RMSprop(
                    [p], lr=LR, alpha=ALPHA, eps=EPS, momentum=momentum, centered=centered,
                    weight_decay=wd, foreach=True)),
            ]
            if variant == "plain":
                cases += [
                    ("torch Adam (fused)", lambda p: torch.optim.Adam([p], lr=LR, fused=True)),
                    ("torch SGD", lambda p: torch.optim.SGD([p], lr=LR)),
                ]
            for name, make in cases:
                p = torch.ones(n, dtype=torch.float32, requires_grad=True)
                p.grad = torch.arange(n, dtype=torch.float32) * 1e-7
                opt = make(p)
                with torch.no_grad():
                    ns = median_ns(opt.step, budget)
                out.append(row("pytorch", name, n, variant, threads, ns, cpu))
                print(f"peers: {name} {label(n)} {variant}: {ns / 1e6:.2f} ms", file=sys.stderr)
    if "bf16" in half and "plain" in variants:
        out += torch_bf16_rows(torch, sizes, threads, budget, cpu)
    return out


def torch_bf16_rows(torch, sizes, threads, budget, cpu):
    """RMSprop (foreach) and Adam(fused=True) on a bf16 parameter: plain."""
    cases = [
        ("torch RMSprop (foreach) bf16", lambda p: torch.optim.RMSprop(
            [p], lr=LR, alpha=ALPHA, eps=EPS, foreach=True)),
        ("torch Adam (fused) bf16", lambda p: torch.optim.Adam([p], lr=LR, fused=True)),
    ]
    out = []
    for n in sizes:
        for name, make in cases:
            p = torch.ones(n, dtype=torch.bfloat16, requires_grad=True)
            p.grad = (torch.arange(n, dtype=torch.float32) * 1e-7).to(torch.bfloat16)
            try:
                opt = make(p)
                with torch.no_grad():
                    ns = median_ns(opt.step, budget)
            except (RuntimeError, TypeError) as e:  # an old torch without fused CPU bf16
                print(f"peers: {name} skipped: {e}", file=sys.stderr)
                continue
            r = row("pytorch", name, n, "plain", threads, ns, cpu)
            r["case"] = f"{label(n)} bf16"
            out.append(r)
            print(f"peers: {name} {label(n)}: {ns / 1e6:.2f} ms", file=sys.stderr)
    return out


def optax_rows(sizes, variants, threads, budget, cpu):
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError:
        print("peers: jax/optax not installed, skipping Optax", file=sys.stderr)
        return []
    out = []
    for n in sizes:
        for variant in variants:
            momentum, centered, wd = VARIANTS[variant]
            tx = optax.rmsprop(LR, decay=ALPHA, eps=EPS, centered=centered,
                               momentum=momentum or None)
            if wd:
                tx = optax.chain(optax.add_decayed_weights(wd), tx)
            params = jnp.ones(n, dtype=jnp.float32)
            grads = jnp.arange(n, dtype=jnp.float32) * 1e-7
            state = tx.init(params)

            def update(params, state, grads):
                updates, state = tx.update(grads, state, params)
                return optax.apply_updates(params, updates), state

            step_fn = jax.jit(update, donate_argnums=(0, 1))
            box = [params, state]

            def step():
                box[0], box[1] = step_fn(box[0], box[1], grads)
                box[0].block_until_ready()

            ns = median_ns(step, budget)
            out.append(row("optax", "optax rmsprop (jit, donated)", n, variant, threads, ns, cpu))
            print(f"peers: optax {label(n)} {variant}: {ns / 1e6:.2f} ms", file=sys.stderr)
    return out


def eight_bit_rows(sizes, variants, threads, budget, cpu):
    """bitsandbytes' RMSprop8bit and RMSprop32bit, torchao's AdamW8bit: plain
    variant, f32 parameter, on the CPU."""
    if "plain" not in variants:
        return []
    try:
        import torch
    except ImportError:
        return []
    torch.set_num_threads(threads)
    cases = []
    try:
        import bitsandbytes as bnb
        cases += [
            ("bitsandbytes", "bitsandbytes RMSprop8bit", lambda p: bnb.optim.RMSprop8bit(
                [p], lr=LR, alpha=ALPHA, eps=EPS, min_8bit_size=4096)),
            ("bitsandbytes", "bitsandbytes RMSprop32bit", lambda p: bnb.optim.RMSprop32bit(
                [p], lr=LR, alpha=ALPHA, eps=EPS)),
        ]
    except ImportError:
        print("peers: bitsandbytes not installed, skipping it", file=sys.stderr)
    try:
        from torchao.optim import AdamW8bit
        cases.append(("torchao", "torchao AdamW8bit", lambda p: AdamW8bit([p], lr=LR)))
    except ImportError:
        print("peers: torchao not installed, skipping it", file=sys.stderr)
    out = []
    for n in sizes:
        for framework, name, make in cases:
            p = torch.ones(n, dtype=torch.float32, requires_grad=True)
            p.grad = torch.arange(n, dtype=torch.float32) * 1e-7
            try:
                opt = make(p)
                with torch.no_grad():
                    ns = median_ns(opt.step, budget)
            except (RuntimeError, TypeError, NotImplementedError) as e:
                print(f"peers: {name} skipped: {e}", file=sys.stderr)
                continue
            r = row(framework, name, n, "plain", threads, ns, cpu)
            r["case"] = f"{label(n)} 8-bit"
            out.append(r)
            print(f"peers: {name} {label(n)}: {ns / 1e6:.2f} ms", file=sys.stderr)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,16M")
    parser.add_argument("--variant", choices=sorted(VARIANTS), action="append")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--half", default="bf16",
                        help="16-bit rows to add: bf16 or none")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per measurement")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    variants = args.variant or list(VARIANTS)
    cpu = cpu_name()
    half = [] if args.half == "none" else args.half.split(",")
    rows = torch_rows(sizes, variants, half, args.threads, args.budget, cpu)
    rows += optax_rows(sizes, variants, args.threads, args.budget, cpu)
    rows += eight_bit_rows(sizes, variants, args.threads, args.budget, cpu)
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
