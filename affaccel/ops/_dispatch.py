"""Which implementation an op takes for given tensors: Triton kernels or the reference.

Triton's interpreter is Triton's own setting: ``TRITON_INTERPRET=1``, read by Triton when it is
first imported (its library functions, ``tl.sum`` and the like, are decorated then) and when
our kernels are decorated. affaccel never writes environment variables, so
``AFFACCEL_TRITON_INTERPRET=1`` (which routes CPU tensors to the kernels) needs
``TRITON_INTERPRET=1`` set as well, by the user or the test, before anything imports Triton;
:func:`load_kernels` says so when it is missing.
"""
from __future__ import annotations

import importlib
import sys
from functools import lru_cache

import torch

from affaccel import env


@lru_cache(maxsize=1)
def triton_importable() -> bool:
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


def use_channels_first(*tensors: torch.Tensor | None) -> bool:
    """True when a TCN should run its convolutions channels-first ([B, C, T], one transpose in
    and one out) instead of per-conv channels-last calls: wherever the reference path runs
    (CPU tensors outside Triton's interpreter, or AFFACCEL_FORCE_REFERENCE=1) and not on CUDA.

    Why: on CPU, ``F.conv1d`` takes [B, C, T]; the channels-last reference pays a transpose, a
    padded copy and a contiguous copy around every convolution, where the channels-first path
    runs the naive ``nn.Conv1d`` + chomp TCN's own operations. Measured on 2 EPYC cores (cpu
    preset TCN 128 -> 128 -> 128, k=3, windows of 300, bench/bench_cpu_inference.py): all
    three within the machine's noise at low load (0.8-1.2x of each other, run to run); at high
    load the reference was 0.75-0.82x the naive TCN.
    """
    ts = [t for t in tensors if t is not None]
    return bool(ts) and all(t.device.type == "cpu" for t in ts) and not use_triton(*ts)


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


def triton_interpreter_setting() -> bool:
    """Triton's own interpreter setting now (``triton.knobs.runtime.interpret``, which reads
    TRITON_INTERPRET); it decides how kernels decorated from now on run. Imports Triton."""
    import triton

    return bool(triton.knobs.runtime.interpret)


def load_kernels(module: str, what: str):
    """The Triton kernel module ``module``, (re)imported to match the interpreter setting.

    ``what`` names the op in error messages. Kernel modules expose ``INTERPRETED``.
    """
    want = env.triton_interpret()
    if not triton_importable():
        raise RuntimeError(f"{what} needs Triton (pip install triton)")
    if want and not triton_interpreter_setting():
        raise RuntimeError(
            f"{what}: AFFACCEL_TRITON_INTERPRET=1 asks for Triton's interpreter, but Triton's "
            "own variable TRITON_INTERPRET=1 is not set. Triton reads it at its first import, "
            "and affaccel does not set environment variables: set both "
            "AFFACCEL_TRITON_INTERPRET=1 and TRITON_INTERPRET=1 before starting Python (or "
            "unset AFFACCEL_TRITON_INTERPRET, or set AFFACCEL_FORCE_REFERENCE=1 to use the "
            "reference)")
    mode = triton_mode()
    if mode is not None and (mode == "interpreted") != want:
        raise RuntimeError(
            f"{what}: Triton was imported in {mode} mode in this process, but "
            "AFFACCEL_TRITON_INTERPRET/TRITON_INTERPRET ask for the "
            f"{'interpreter' if want else 'compiler'}; the mode is fixed at the first "
            "`import triton`, so set both AFFACCEL_TRITON_INTERPRET=1 and TRITON_INTERPRET=1 "
            "before anything imports Triton (or run in a fresh process), or set "
            "AFFACCEL_FORCE_REFERENCE=1 to use the reference")
    mod = sys.modules.get(module)
    if mod is None:
        mod = importlib.import_module(module)
    elif mod.INTERPRETED != want:
        # decorated under the other setting earlier in this process: decorate them again now
        mod = importlib.reload(mod)
    if mod.INTERPRETED != want:
        raise RuntimeError(
            f"{what}: the kernels were decorated {'compiled' if want else 'interpreted'}, but "
            f"AFFACCEL_TRITON_INTERPRET/TRITON_INTERPRET ask for the "
            f"{'interpreter' if want else 'compiler'}; set TRITON_INTERPRET to match")
    return mod
