"""Every AFFACCEL_* environment variable, read here and nowhere else (README lists them).

Values are read at call time, not import time, so tests and programs can set them late.
One exception to "nowhere else": the C++ window engine (csrc/segments.cpp) reads
AFFACCEL_NUM_THREADS and AFFACCEL_DISABLE_EXT itself with getenv, by the rules of ``flag`` and
``num_threads`` here, because reading ``os.environ`` from Python cost 1.5-3 us per call
(``os.environ`` assignments reach getenv through putenv, so setting them late still works).
"""
from __future__ import annotations

import os
from pathlib import Path

# name -> (default, meaning). The README's table is generated from this dict.
VARIABLES = {
    "AFFACCEL_HOME": (
        "~/.cache/affaccel",
        "cache root: built-in synthetic data, feature caches, default run directories",
    ),
    "AFFACCEL_NUM_THREADS": (
        "0",
        "threads of the C++ window engine; 0 = all hardware threads",
    ),
    "AFFACCEL_TRITON_INTERPRET": (
        "0",
        "1 runs the Triton kernels on CPU tensors through Triton's interpreter (tests); Triton's own "
        "TRITON_INTERPRET=1 must be set too, before Python starts (affaccel does not set it)",
    ),
    "AFFACCEL_FORCE_REFERENCE": (
        "0",
        "1 makes every op take its pure PyTorch/NumPy reference, also on GPU (A/B, debugging)",
    ),
    "AFFACCEL_AUTOTUNE": (
        "full",
        "full: the TCN conv kernels autotune among their tile shapes (one compile each, first call per "
        "shape); pinned: one shape per dtype/precision, no tuning (tests, short GPU checks)",
    ),
    "AFFACCEL_DISABLE_EXT": (
        "0",
        "1 ignores the compiled extension affaccel._C and uses the NumPy references",
    ),
}


def _raw(name: str) -> str:
    if name not in VARIABLES:
        raise KeyError(f"unknown affaccel environment variable {name}")
    return os.environ.get(name, VARIABLES[name][0])


def flag(name: str) -> bool:
    """True when the variable is set to 1/true/yes/on (case-insensitive)."""
    return _raw(name).strip().lower() in {"1", "true", "yes", "on"}


def home() -> Path:
    """Cache root (AFFACCEL_HOME), created on demand."""
    p = Path(os.path.expanduser(_raw("AFFACCEL_HOME")))
    p.mkdir(parents=True, exist_ok=True)
    return p


def num_threads() -> int:
    """Threads for the C++ engine; 0 means all hardware threads."""
    value = _raw("AFFACCEL_NUM_THREADS")
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"AFFACCEL_NUM_THREADS must be an integer >= 0, got {value!r}") from None
    if n < 0:
        raise ValueError(f"AFFACCEL_NUM_THREADS must be an integer >= 0, got {n}")
    return n


def triton_interpret() -> bool:
    """Run Triton kernels through the CPU interpreter (ours or Triton's own variable)."""
    return flag("AFFACCEL_TRITON_INTERPRET") or os.environ.get("TRITON_INTERPRET", "0") == "1"


def force_reference() -> bool:
    return flag("AFFACCEL_FORCE_REFERENCE")


def autotune_pinned() -> bool:
    """AFFACCEL_AUTOTUNE=pinned: one kernel config per dtype/precision instead of autotuning."""
    value = _raw("AFFACCEL_AUTOTUNE").strip().lower()
    if value not in ("full", "pinned"):
        raise ValueError(f"AFFACCEL_AUTOTUNE must be 'full' or 'pinned', got {value!r}")
    return value == "pinned"


def extension_disabled() -> bool:
    return flag("AFFACCEL_DISABLE_EXT")
