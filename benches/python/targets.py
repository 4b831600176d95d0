#!/usr/bin/env python3
"""Per-tensor costs and 16-bit ratios, read from `compare --json` rows.

BENCHMARKS.md quotes, for each default run, a few figures that the table
of `compare` holds only spread over several rows: the per-tensor cost of
each framework over the bare kernel's `step_many` on the same buffers, the
16-bit rows against their skeleton, and the 150-tensor 16-bit model's rate
over the same framework's 16M rate. This script derives them from a run's
rows, so that every such figure can be checked against its results file.

    python3 benches/python/targets.py benches/results/compare-2026-12-01-xeon-*.jsonl

Per file it prints:
  burn150 / candle150   the 150-tensor model's step, of the same-run skeleton
  model-N us/tensor     (step - bare step_many) / N tensors, in µs, for the
                        kernel called once per tensor ("each"), candle,
                        burn per parameter, burn batched, and burn's floor
                        under the kernel's traffic ("floor+traffic": an
                        optimizer that steps side buffers of each
                        parameter's size with the bare kernel and returns
                        its inputs; in runs from commit 7d3d8d6 on);
                        "floor" is burn's floor (an optimizer that
                        returns its inputs) per tensor on its own
  model-N burn over ...  burn's per-parameter step over (its floor +
                        bare step_many), both in ms per step (1.0: the
                        least a per-parameter optimizer can cost); then over its floor under the kernel's traffic
                        ("floor+traffic" above, whole step against whole
                        step)
  <case> clipped        per framework and clipping (by value, by norm): the
                        clipped step's time over the unclipped step's, its
                        fraction of its limit (the skeleton, after a read of
                        the gradients for a norm), and its speedup over the
                        framework's optimizer with the framework's clipping
                        beside the unclipped speedup
  <dtype> 16M           per route (candle, burn, batched): the 16M step of
                        its skeleton, the speedup over the framework's own
                        optimizer, and the 150-tensor model's elements per
                        second over the 16M step's

Standard library only; never part of the tests.
"""

import json
import sys


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def find(rows, framework, baseline, fused, case, variant="plain"):
    for r in rows:
        if (r["framework"], r["baseline"], r["fused"], r["case"], r["variant"]) == (
            framework,
            baseline,
            fused,
            case,
            variant,
        ):
            return r
    return None


# The many-tensor rows `compare` measures against the bare step_many:
# short name -> (framework, fused).
OVERHEAD_ROUTES = {
    "bare": ("kernel", "step_many"),
    "each": ("kernel", "one call per tensor"),
    "candle": ("candle", "fused RmsProp"),
    "burn": ("burn", "FusedRmsProp"),
    "batched": ("burn", "BatchedRmsProp"),
    "floor": ("burn", "floor: returns inputs"),
    "floor+traffic": ("burn", "floor + kernel per call"),
}


def overhead_row(rows, name, model):
    framework, fused = OVERHEAD_ROUTES[name]
    return find(rows, framework, "bare kernel step_many", fused, model)


def per_tensor(rows, model, tensors):
    """µs per tensor over the bare kernel's step_many, per route."""
    bare = overhead_row(rows, "bare", model)
    if bare is None:
        return None
    out = {}
    for name in OVERHEAD_ROUTES:
        if name == "bare":
            continue
        r = overhead_row(rows, name, model)
        if r is None:
            continue
        # The floor is quoted on its own; the others over step_many.
        ns = r["fused_ns"] if name == "floor" else r["fused_ns"] - bare["fused_ns"]
        out[name] = round(ns / tensors / 1e3, 2)
    return out


def over_floor(rows, model):
    """Burn's per-parameter step over (its floor + the bare step_many), and
    over its floor under the kernel's traffic (None where a row is missing)."""
    def ns(name):
        r = overhead_row(rows, name, model)
        return None if r is None else r["fused_ns"]

    bare, floor, burn, traffic = ns("bare"), ns("floor"), ns("burn"), ns("floor+traffic")
    if None in (bare, floor, burn):
        return None
    under_traffic = None if traffic is None else round(burn / traffic, 3)
    return round(burn / (floor + bare), 3), under_traffic


def half(rows, dtype):
    """16M of the skeleton, speedup, and 150-tensor over 16M rate, per route."""
    routes = {
        "candle": ("candle", f"tensor-op RMSprop ({dtype})", f"fused ({dtype}, f32 state)"),
        "burn": ("burn", f"burn RmsProp ({dtype})", f"fused ({dtype}, f32 state)"),
        "batched": ("burn", f"burn RmsProp ({dtype})", f"fused batched ({dtype}, f32 state)"),
    }
    out = {}
    for name, (framework, baseline, fused) in routes.items():
        big = find(rows, framework, baseline, fused, f"16M {dtype}")
        model = find(rows, framework, baseline, fused, f"model-150 {dtype}")
        if big is None:
            continue
        rate = None
        if model is not None:
            rate = (model["elements"] / model["fused_ns"]) / (big["elements"] / big["fused_ns"])
            rate = round(rate, 2)
        out[name] = (round(big["roofline_fraction"], 3), round(big["speedup"], 1), rate)
    return out


def clipping(rows, case):
    """Per framework and clipping: the clipped step's time over the
    unclipped fused step's, its fraction of its own limit (the skeleton,
    after a read of the gradients for a norm), and its speedup over the
    framework's optimizer with the framework's clipping against the
    unclipped speedup. Rows that carry their own unclipped timings (the
    field `unclipped`, timed in the same rounds) use them; older rows fall
    back on the run's unclipped rows, timed at another point of the run."""
    unclipped = {
        "burn": find(rows, "burn", "burn RmsProp", "FusedRmsProp", case),
        "candle": find(rows, "candle", "tensor-op RMSprop", "fused RmsProp", case),
    }
    names = {
        "burn": ("burn RmsProp, {} (burn's)", "FusedRmsProp, {} (in the step)"),
        "candle": ("tensor-op RMSprop, {} (candle ops)", "fused RmsProp, {} (in the step)"),
    }
    out = {}
    for framework, (baseline, fused) in names.items():
        base = unclipped[framework]
        for clip in ("clip by value", "clip by norm"):
            r = find(rows, framework, baseline.format(clip), fused.format(clip), case)
            if r is None:
                continue
            same = r.get("unclipped")
            if same is not None:
                over_unclipped = round(same["clipped_over_unclipped"], 3)
                unclipped_speedup = round(same["baseline_ns"] / same["fused_ns"], 1)
            elif base is not None:
                over_unclipped = round(r["fused_ns"] / base["fused_ns"], 3)
                unclipped_speedup = round(base["speedup"], 1)
            else:
                over_unclipped = unclipped_speedup = None
            speedups = (round(r["speedup"], 1), unclipped_speedup)
            out[f"{framework} {clip}"] = (over_unclipped, round(r["roofline_fraction"], 3), speedups)
    return out


def main(paths):
    for path in paths:
        rows = load(path)
        print(path)
        for name, framework, baseline, fused in (
            ("burn150", "burn", "burn RmsProp", "FusedRmsProp"),
            ("candle150", "candle", "tensor-op RMSprop", "fused RmsProp"),
        ):
            r = find(rows, framework, baseline, fused, "model-150")
            if r is not None:
                print(f"  {name} {r['roofline_fraction']:.3f}")
        for model, tensors in (("model-150", 150), ("model-2000", 2000)):
            figures = per_tensor(rows, model, tensors)
            if figures:
                print(f"  {model} us/tensor {figures}")
            ratios = over_floor(rows, model)
            if ratios is not None:
                print(
                    f"  {model} burn over its floor + step_many {ratios[0]},"
                    f" over its floor under traffic {ratios[1]}"
                )
        for dtype in ("bf16", "f16"):
            figures = half(rows, dtype)
            if figures:
                print(f"  {dtype} 16M (of skeleton, speedup, 150/16M rate) {figures}")
        clipped_cases = sorted({r["case"] for r in rows if "clip by" in r["baseline"]})
        for case in clipped_cases:
            figures = clipping(rows, case)
            if figures:
                print(f"  {case} clipped (time over unclipped, of its limit, (speedup, unclipped speedup))")
                for name, value in figures.items():
                    print(f"    {name}: {value}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
