#!/usr/bin/env python3
"""Lingering helpers on against off, from `compare --json` runs made in pairs.

    python3 benches/python/linger.py ON1.jsonl OFF1.jsonl [ON2.jsonl OFF2.jsonl ...]

The ON files are runs with the default linger time, the OFF files runs with
`FUSED_RMSPROP_LINGER_US=0`, alternated on one machine. For every row of
both frameworks on one tensor, on the models and in whole training steps,
prints the fused step's median ms with lingering on and off (over the
pairs) and off over on: above 1, lingering made that step faster. The
training rows ("train step") are whole steps: forward, backward and the
optimizer. Standard library only; never part of the tests.
"""

import json
import statistics
import sys


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def key(r):
    return (r["framework"], r["baseline"], r["fused"], r["case"], r["variant"], r["threads"])


def main(paths):
    if len(paths) % 2:
        sys.exit("give the runs in pairs: ON OFF [ON OFF ...]")
    on = [load(p) for p in paths[0::2]]
    off = [load(p) for p in paths[1::2]]
    print(f"{len(on)} pair(s); CPU {sorted({r['cpu'] for rows in on for r in rows})}")
    print()
    print("| framework | case | fused step, against | on ms | off ms | off / on |")
    print("|---|---|---|---:|---:|---:|")
    for r in on[0]:
        if r["framework"] not in ("burn", "candle") or r["fused_ns"] is None:
            continue
        if r["variant"] != "plain" or r["baseline"] in ("candle-nn SGD", "candle-nn AdamW"):
            continue
        k = key(r)
        on_ns = [x["fused_ns"] for rows in on for x in rows if key(x) == k]
        off_ns = [x["fused_ns"] for rows in off for x in rows if key(x) == k]
        if not off_ns:
            continue
        a, b = statistics.median(on_ns), statistics.median(off_ns)
        print(f"| {r['framework']} | {r['case']} | {r['fused']}, {r['baseline']} "
              f"| {a / 1e6:.2f} | {b / 1e6:.2f} | {b / a:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1:])
