"""Which implementation an op takes for given tensors: Triton kernels or the reference."""
from __future__ import annotations

import os
from functools import lru_cache

import torch

from affaccel import env


@lru_cache(maxsize=1)
def triton_importable() -> bool:
    # Triton reads TRITON_INTERPRET when kernels are decorated, so our variable must be
    # mirrored into Triton's before affaccel.kernels is first imported.
    if env.triton_interpret():
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """True when the fused Triton path should run for these tensors.

    CUDA tensors -> Triton (unless AFFACCEL_FORCE_REFERENCE=1); CPU tensors -> the reference,
    except under AFFACCEL_TRITON_INTERPRET=1 / TRITON_INTERPRET=1 (the interpreter).
    """
    if env.force_reference():
        return False
    ts = [t for t in tensors if t is not None]
    if not ts:
        return False
    if all(t.is_cuda for t in ts):
        return triton_importable()
    if all(t.device.type == "cpu" for t in ts) and env.triton_interpret():
        return triton_importable()
    return False
