"""FLOP counts and the measured compute peak: the two numbers behind every roofline figure.

One rule for every benchmark (bench_clip.py, throughput.py):
- FLOPs are counted in train mode. In eval mode ``nn.MultiheadAttention`` takes a fused kernel
  that torch's FLOP counter does not see (ViT-B/16 at 224 px counts 22.5 instead of ~35 GFLOP).
  Dropout is 0 in the encoders, so the arithmetic is the same in both modes.
- The peak is measured on the device the benchmark runs on (a large bf16 matrix product), never a
  constant from a data sheet.
"""
from __future__ import annotations

import copy

from _machine import gpu_median_ms

VIT_B16_GFLOP = 35.2  # DESIGN.md: ViT-B/16 at 224 px, forward, per frame (reference figure)


def encoder_gflop(encoder) -> float:
    """Forward GFLOP of one frame (2 x multiply-adds), counted in train mode on a CPU copy."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    enc = copy.deepcopy(encoder).to("cpu").float().train()
    x = torch.zeros(1, 3, enc.image_size, enc.image_size)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        enc(x)
    return fc.get_total_flops() / 1e9


def bf16_matmul_peak_tflops(device, n: int = 8192) -> float:
    """Measured peak of a large bf16 matrix product on this GPU (TFLOP/s)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = gpu_median_ms(lambda: a @ b, untimed_calls=3)
    return 2 * n ** 3 / (ms / 1e3) / 1e12


def roofline_fraction(fps: float, gflop: float, peak_tflops: float) -> float:
    """Achieved share of the peak: frames/s x GFLOP/frame over the peak (in GFLOP/s)."""
    return fps * gflop / (peak_tflops * 1e3)
