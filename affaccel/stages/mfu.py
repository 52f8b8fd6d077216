"""Training throughput of an epoch: frames per second and model FLOP utilisation (MFU).

MFU = achieved model FLOP/s over the peak FLOP/s of the device, both measured in the run:

- the model FLOPs of one training sample (forward + backward, train mode, so dropout and
  attention take their training paths) are counted once with ``torch.utils.flop_counter`` on
  fake CPU tensors (:func:`train_flops`: no memory, no arithmetic, the model's own weights and
  random generators untouched). The counter counts matrix products and convolutions (2 FLOPs a
  multiply-add), not element-wise work; the backward is counted as it runs (no gradient for the
  model's input, so it is a little under 2x the forward);
- the peak is measured once per process and device (:func:`peak_flops`): large square matrix
  products (CPU: 1024^2 and 2048^2, the faster counts; CUDA: 8192^2) in the run's precision
  (CUDA: bf16 for bf16 autocast, TF32 when PyTorch lets fp32 matrix products or convolutions
  use it, else fp32; CPU: fp32, or bf16 under bf16 autocast), best of a few timed runs. Never a
  data-sheet constant. A measured peak is a lower bound of the real one: on a shared machine a
  busy moment during the measurement leaves it low, and the MFU of a run that then meets a
  quiet machine can come out above 1.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

# square matrix products used to measure the peak; the fastest size counts. On the CPU a 1024^2
# product reached only 60-80 % of a 2048^2 one (2026-12-02, 2-core machine: 101-136 vs 170
# GFLOP/s), and a tiny ViT's training then measured an MFU of 1.05 in CI.
PEAK_SIZES = {"cpu": (1024, 2048), "cuda": (8192,)}
PEAK_REPEATS = 5                           # timed runs per size after one warm-up; the best one counts


def train_flops(model, inputs: Sequence[tuple[tuple[int, ...], Any]]) -> int:
    """FLOPs of one forward + backward of ``model`` (train mode) on inputs of the given
    (shape, dtype), counted on fake CPU tensors: the same count as on real ones, without the
    arithmetic; the model's parameters, buffers (BatchNorm statistics), training flag and the
    global random generators are left as they were. The backward starts from the sum of the
    outputs (a loss adds no matrix products)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    model = getattr(model, "module", model)   # DDP
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=[]), FakeTensorMode():
            state = {n: torch.empty(p.shape, dtype=torch.float32).requires_grad_(p.requires_grad)
                     for n, p in model.named_parameters()}
            state.update({n: torch.zeros(b.shape, dtype=torch.float32 if b.is_floating_point() else b.dtype)
                          for n, b in model.named_buffers()})
            args = tuple(torch.ones(shape, dtype=dtype) for shape, dtype in inputs)
            with FlopCounterMode(display=False) as counter:
                out = functional_call(model, state, args)
                out.float().sum().backward()
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


def peak_kind(device, precision: str = "fp32") -> str:
    """"bf16", "tf32" or "fp32": what the run's matrix products may use on ``device``.
    precision: the run's compute precision ("bf16" under bf16 autocast, else "fp32")."""
    import torch

    if precision == "bf16":
        return "bf16"
    if torch.device(device).type == "cuda" and (torch.backends.cuda.matmul.allow_tf32
                                                 or torch.backends.cudnn.allow_tf32):
        return "tf32"
    return "fp32"


def peak_flops(device, kind: str = "fp32") -> float:
    """Measured peak FLOP/s of a square matrix product of ``kind`` on ``device`` (cached per
    process, device and kind)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return _peak(str(dev), kind)


@lru_cache(maxsize=None)
def _peak(device: str, kind: str) -> float:
    import torch

    dev = torch.device(device)
    dtype = torch.bfloat16 if kind == "bf16" else torch.float32
    gen = torch.Generator(device=dev).manual_seed(0)   # own generator: the run's streams stay as they were
    allow = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = kind == "tf32"
    rates = []
    try:
        for n in PEAK_SIZES.get(dev.type, PEAK_SIZES["cpu"]):
            a = torch.randn(n, n, device=dev, dtype=dtype, generator=gen)
            b = torch.randn(n, n, device=dev, dtype=dtype, generator=gen)
            best = min(_time_matmul(a, b, dev) for _ in range(PEAK_REPEATS + 1))
            rates.append(2.0 * n ** 3 / best)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow
    return max(rates)


def _time_matmul(a, b, dev) -> float:
    """Seconds of one a @ b (CUDA events on a GPU, wall clock on the CPU)."""
    import torch

    if dev.type != "cuda":
        t0 = time.perf_counter()
        torch.mm(a, b)
        return time.perf_counter() - t0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.mm(a, b)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


@dataclass
class Throughput:
    """What one epoch's training pass did: ``frames`` (frames through forward + backward, on
    all ranks), ``seconds`` (wall time of the pass, device work included), the model FLOPs of
    one frame and the device's peak FLOP/s (per rank)."""
    frames: int
    seconds: float
    flops_per_frame: float
    peak: float
    world: int = 1

    def row(self) -> dict:
        """History columns: train_seconds, frames_per_s, mfu (0..1), peak_tflops."""
        fps = self.frames / self.seconds if self.seconds > 0 else float("nan")
        mfu = fps * self.flops_per_frame / (self.peak * self.world) if self.peak > 0 else float("nan")
        # seconds unrounded: frames_per_s * train_seconds must give the frames back (a 4-decimal
        # rounding of a 0.03 s epoch is a 0.15% error)
        return {"train_seconds": self.seconds, "frames_per_s": fps, "mfu": mfu,
                "peak_tflops": self.peak / 1e12}
