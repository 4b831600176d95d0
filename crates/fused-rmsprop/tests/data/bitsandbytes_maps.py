"""Prints bitsandbytes' two dynamic quantization maps as f32 bit patterns,
the reference `tests/blockwise8.rs` checks `QuantMap` against.

    pip install torch bitsandbytes
    python3 bitsandbytes_maps.py > bitsandbytes_maps.txt

Generated with torch 2.15.0 and bitsandbytes 0.50.2 (CPU).
"""
import numpy as np
import bitsandbytes
import bitsandbytes.functional as F
import torch

print(f"# torch {torch.__version__}, bitsandbytes {bitsandbytes.__version__}")
for name, signed in [("unsigned", False), ("signed", True)]:
    values = F.create_dynamic_map(signed=signed).numpy().astype(np.float32)
    assert values.shape == (256,)
    print(name, " ".join(f"{b:08x}" for b in values.view(np.uint32)))
