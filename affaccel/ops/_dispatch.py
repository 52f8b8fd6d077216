"""Which implementation an op takes for given tensors: Triton kernels or the reference."""
from __future__ import annotations

import importlib
import os
import sys
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


def triton_mode() -> str | None:
    """How Triton runs in this process: "interpreted", "compiled", or None (not imported yet).

    Fixed by TRITON_INTERPRET at the first ``import triton``: Triton's own library functions
    (tl.sum, ...) are decorated then, and interpreted kernels cannot call compiled ones nor the
    other way round, so one process runs the kernels in one mode only.
    """
    tl = sys.modules.get("triton.language")
    if tl is None:
        return None
    return "interpreted" if type(tl.sum).__name__ == "InterpretedFunction" else "compiled"


def load_kernels(module: str, what: str):
    """The Triton kernel module ``module``, (re)imported to match the interpreter setting.

    ``what`` names the op in error messages. Kernel modules expose ``INTERPRETED``.
    """
    want = env.triton_interpret()
    if want:
        # Triton reads its own variable when the kernels are decorated.
        os.environ["TRITON_INTERPRET"] = "1"
    if not triton_importable():
        raise RuntimeError(f"{what} needs Triton (pip install triton)")
    mode = triton_mode()
    if mode is not None and (mode == "interpreted") != want:
        raise RuntimeError(
            f"{what}: Triton was imported in {mode} mode in this process, but "
            "AFFACCEL_TRITON_INTERPRET/TRITON_INTERPRET ask for the "
            f"{'interpreter' if want else 'compiler'}; the mode is fixed at the first "
            "`import triton`, so set the variable before anything imports Triton (or run in a "
            "fresh process), or set AFFACCEL_FORCE_REFERENCE=1 to use the reference")
    mod = sys.modules.get(module)
    if mod is None:
        return importlib.import_module(module)
    if mod.INTERPRETED != want:
        mod = importlib.reload(mod)
    return mod
