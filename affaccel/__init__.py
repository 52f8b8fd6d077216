"""affaccel: continuous emotion recognition from face videos.

CLIP image features -> overlapping windows -> TCN + Transformer -> per-frame valence/arousal,
expressions and action units ("Emotion Recognition with CLIP and Sequential Learning", 8th ABAW).

Importing this package is cheap: torch, DALI, open_clip and Triton are imported only by the
submodules that need them, and nothing queries the GPU. Public names are resolved lazily.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> submodule that defines it (imported on first access)
_LAZY = {
    "plan_windows": "affaccel.segments",
    "assemble_windows": "affaccel.segments",
    "assemble_windows_batch": "affaccel.segments",
    "gather_windows": "affaccel.segments",
    "window_weights": "affaccel.segments",
    "overlap_average": "affaccel.segments",
    "overlap_average_batch": "affaccel.segments",
    "TASKS": "affaccel.tasks",
    "AffectPredictor": "affaccel.predictor",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'affaccel' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
