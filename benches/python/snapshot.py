#!/usr/bin/env python3
"""The snapshot table of README.md and BENCHMARKS.md, from `compare --json` runs.

    python3 benches/python/snapshot.py benches/results/compare-2026-12-07-zen4-*.jsonl

Prints one Markdown table: for each headline row of `compare` (one tensor
of 16M elements, the 150-tensor model, bf16, burn-train's Learner, a whole
training step), the fused step's speedup over the framework's own optimizer
and its fraction of the bandwidth limit measured in the same run (the
skeleton loop with the step's loads and stores), as the median over the
files given and, with several files, the range. The CPU line is the files'
own. Standard library only; never part of the tests.
"""

import json
import statistics
import sys

# (label, framework, baseline, fused (a prefix), case)
HEADLINES = [
    ("16M `f32`, bare kernel", "kernel", "plain-loop (1 thread)", "simd-", "16M"),
    ("16M `f32`, candle", "candle", "tensor-op RMSprop", "fused RmsProp", "16M"),
    ("16M `f32`, candle", "candle", "candle-nn AdamW", "fused RmsProp", "16M"),
    ("16M `f32`, burn", "burn", "burn RmsProp", "FusedRmsProp", "16M"),
    ("16M `bf16`, candle", "candle", "tensor-op RMSprop (bf16)", "fused (bf16", "16M bf16"),
    ("16M `bf16`, burn", "burn", "burn RmsProp (bf16)", "fused (bf16", "16M bf16"),
    ("16M `bf16`, burn, stochastic rounding", "burn", "burn RmsProp (bf16)", "fused, stochastic", "16M bf16"),
    ("16M `bf16`, burn, master weights", "burn", "burn RmsProp (bf16)", "fused, master", "16M bf16"),
    ("150 tensors (22.5M), candle", "candle", "tensor-op RMSprop", "fused RmsProp", "model-150"),
    ("150 tensors (22.5M), burn", "burn", "burn RmsProp", "FusedRmsProp", "model-150"),
    ("150 tensors, burn `init_batched()`", "burn", "bare kernel step_many", "BatchedRmsProp", "model-150"),
    ("16M, burn-train's `Learner`", "burn", "burn RmsProp (Learner: module held)", "FusedRmsProp", "16M"),
    ("150 tensors, burn-train's `Learner`", "burn", "burn RmsProp (Learner: module held)", "FusedRmsProp", "model-150"),
    ("16M `f32`, burn, clipping by value", "burn", "burn RmsProp, clip by value (burn's)", "FusedRmsProp", "16M"),
    ("16M `f32`, burn, clipping by norm", "burn", "burn RmsProp, clip by norm (burn's)", "FusedRmsProp", "16M"),
    ("16M `f32`, candle, clipping by value", "candle", "tensor-op RMSprop, clip by value (candle ops)", "fused RmsProp", "16M"),
    ("16M `f32`, candle, clipping by norm", "candle", "tensor-op RMSprop, clip by norm (candle ops)", "fused RmsProp", "16M"),
    ("whole training step, MLP, candle", "candle", "tensor-op RMSprop (train step)", "fused", "train-mlp"),
    ("whole training step, MLP, burn", "burn", "burn RmsProp (train step)", "fused", "train-mlp"),
]

# Baselines that are not an optimizer of the framework: their speedup is
# not a figure of the table.
NOT_A_PEER = {"plain-loop (1 thread)", "bare kernel step_many"}


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def pick(rows, framework, baseline, fused, case):
    for r in rows:
        if (
            r["framework"] == framework
            and r["baseline"] == baseline
            and r["fused"].startswith(fused)
            and r["case"] == case
            and r["variant"] == "plain"
            and r["threads"] > 1
        ):
            return r
    return None


def spread(values, digits, suffix=""):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    median = f"{statistics.median(values):.{digits}f}{suffix}"
    if len(values) == 1:
        return median
    return f"{median} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main(paths):
    runs = [load(p) for p in paths]
    cpus = sorted({r["cpu"] for rows in runs for r in rows})
    threads = sorted({r["threads"] for rows in runs for r in rows if r["threads"] > 1})
    print(f"CPU {', '.join(cpus)}; {len(runs)} run(s); threads {threads}")
    print()
    print("| step | against | speedup | of the same-run limit |")
    print("|---|---|---:|---:|")
    for label, framework, baseline, fused, case in HEADLINES:
        found = [pick(rows, framework, baseline, fused, case) for rows in runs]
        found = [r for r in found if r]
        if not found:
            continue
        speedups = [r["speedup"] for r in found]
        fractions = [r["roofline_fraction"] for r in found]
        against = "-" if baseline in NOT_A_PEER else baseline
        speed = "-" if baseline in NOT_A_PEER else spread(speedups, 1, "x")
        limit = spread(fractions, 2)
        # The held rows of newer runs are judged against the out-of-place
        # skeleton and carry their fraction of the in-place one too.
        in_place = [r.get("in_place_fraction") for r in found]
        if any(f is not None for f in in_place):
            limit = f"{limit} of the out-of-place limit, {spread(in_place, 2)} of the in-place one"
        print(f"| {label} | {against} | {speed} | {limit} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
