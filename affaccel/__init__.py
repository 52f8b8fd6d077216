"""affaccel: continuous emotion recognition from face videos.

CLIP image features -> overlapping windows -> TCN + Transformer -> per-frame valence/arousal,
expressions and action units ("Emotion Recognition with CLIP and Sequential Learning", 8th ABAW).

Importing this package is cheap: torch, DALI, open_clip and Triton are imported only by the
submodules that need them, and nothing queries the GPU. Public names are resolved lazily.
"""
from __future__ import annotations

import importlib
import os

__version__ = "0.1.0"


def _join_installed_copy() -> None:
    """Let a source checkout that shadows the installed package still find its built parts.

    ``python -m affaccel.train`` run in the repository root after a regular ``pip install .``
    imports this source tree (the working directory comes first on sys.path), which has neither
    the compiled ``affaccel._C`` nor ``affaccel.kernels`` (kept in ``kernels/`` at the top
    level). Appending the installed copy to ``__path__`` makes those two resolve there, while
    every module present in both still comes from here.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    if not os.path.isdir(os.path.join(os.path.dirname(here), "kernels")):
        return  # an installed copy, not a checkout
    if os.path.isdir(os.path.join(here, "kernels")):
        return
    import sys

    for entry in sys.path:
        installed = os.path.join(os.path.abspath(entry or "."), "affaccel")
        if installed != here and os.path.isdir(os.path.join(installed, "kernels")):
            __path__.append(installed)  # noqa: F821 (module attribute of a package)
            return


_join_installed_copy()

# public name -> submodule that defines it (imported on first access)
_LAZY = {
    "plan_windows": "affaccel.segments",
    "plan_windows_batch": "affaccel.segments",
    "assemble_windows": "affaccel.segments",
    "assemble_windows_batch": "affaccel.segments",
    "gather_windows": "affaccel.segments",
    "window_weights": "affaccel.segments",
    "overlap_average": "affaccel.segments",
    "overlap_average_batch": "affaccel.segments",
    "TASKS": "affaccel.tasks",
    "AffectPredictor": "affaccel.inference.predictor",
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
