"""A reference trajectory of bitsandbytes' 8-bit block-wise RMSprop, for
`tests/blockwise8.rs::bitsandbytes_reference_trajectory`.

The step follows bitsandbytes' pure-PyTorch reference of its 8-bit
optimizers (`backends/triton/kernels_optim.py`,
`optimizer_update_8bit_blockwise_pytorch` with its
`_dequantize_blockwise_pytorch` / `_quantize_blockwise_pytorch`), written
out here for RMSprop: blocks of 256, the signed dynamic map for the square
average (as `RMSprop8bit` uses), state dequantized to f32, updated as
`v = v * alpha + (1 - alpha) * g * g`, `p += -lr * g / (sqrt(v) + eps)`,
then re-quantized: absmax per block (1 when 0), the code of
`argmin |v / absmax - map|`.

Parameters and gradients are exact dyadic numbers (the gradients from an
integer generator), so Rust
rebuilds them bit for bit.

    pip install torch bitsandbytes
    python3 bitsandbytes_rmsprop8bit.py > bitsandbytes_rmsprop8bit.txt

Generated with torch 2.15.0 and bitsandbytes 0.50.2 (CPU).
"""
import numpy as np
import torch
import bitsandbytes
import bitsandbytes.functional as F

N, STEPS, BLOCK = 1000, 12, 256
LR, ALPHA, EPS = 0.01, 0.9, 1e-8


def gradients(step):
    """Integers in [-2^23, 2^23) times 2^-30: exact in f32 (as in the test)."""
    state = (step + 1) * 0x9E3779B97F4A7C15 % (1 << 64)
    out = []
    for _ in range(N):
        state ^= (state << 13) % (1 << 64)
        state ^= state >> 7
        state ^= (state << 17) % (1 << 64)
        out.append(((state >> 40) - (1 << 23)) * 2.0 ** -30)
    return torch.tensor(out, dtype=torch.float32)


def dequantize(codes, absmax, qmap):
    values = qmap[codes.long()]
    blocks = torch.repeat_interleave(absmax, BLOCK)[: codes.numel()]
    return values * blocks


def quantize(values, qmap):
    padded = torch.nn.functional.pad(values, (0, (-values.numel()) % BLOCK))
    blocks = padded.reshape(-1, BLOCK)
    absmax = blocks.abs().max(dim=1).values
    absmax[absmax == 0] = 1.0
    scaled = (blocks / absmax.unsqueeze(1)).flatten()[: values.numel()]
    codes = torch.argmin((scaled.unsqueeze(1) - qmap).abs(), dim=1).to(torch.uint8)
    return codes, absmax


def main():
    torch.set_num_threads(1)
    qmap = F.create_dynamic_map(signed=True)
    params = torch.tensor([(i - 500) / 512 for i in range(N)], dtype=torch.float32)
    codes, absmax = quantize(torch.zeros(N), qmap)
    for step in range(STEPS):
        g = gradients(step)
        v = dequantize(codes, absmax, qmap)
        v.mul_(ALPHA).addcmul_(g, g, value=1.0 - ALPHA)
        params.addcdiv_(g, v.sqrt().add_(EPS), value=-LR)
        codes, absmax = quantize(v, qmap)
    print(f"# torch {torch.__version__}, bitsandbytes {bitsandbytes.__version__}")
    print("params", " ".join(f"{b:08x}" for b in params.numpy().view(np.uint32)))
    print("codes", " ".join(str(int(c)) for c in codes))
    print("scales", " ".join(f"{b:08x}" for b in absmax.numpy().view(np.uint32)))


if __name__ == "__main__":
    main()
