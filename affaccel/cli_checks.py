"""Argument checks of the command lines, run right after parsing and before any heavy work (no
data read, no model built): a problem is one line naming the argument, and exit status 2.

Each check raises :class:`ArgError`; :func:`report` turns one into the message and the status.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Callable


class ArgError(ValueError):
    """A command-line argument that cannot work; the message names it."""


def at_least(flag: str, value, low: int) -> None:
    if value is not None and value < low:
        raise ArgError(f"{flag} must be >= {low}, got {value}")


def positive_number(flag: str, value) -> None:
    """A finite number > 0 (learning rates: nan, inf, 0 and negatives are refused)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ArgError(f"{flag} must be a finite number > 0, got {value}")


def folder(flag: str, path) -> None:
    """An existing folder (input data)."""
    if path is not None and not Path(path).is_dir():
        what = "is a file" if Path(path).exists() else "does not exist"
        raise ArgError(f"{flag} {path}: {what}; expected a folder")


def file(flag: str, path, what: str = "file") -> None:
    """An existing file (a checkpoint, a bundle)."""
    if path is not None and not Path(path).is_file():
        why = "is a folder" if Path(path).is_dir() else "no such file"
        raise ArgError(f"{flag} {path}: {why}; expected a {what}")


def output_folder(flag: str, path) -> None:
    """A folder that exists or can be created, and can be written."""
    if path is None:
        return
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ArgError(f"{flag} {out}: is a file; expected a folder (created when missing)")
    parent = next((a for a in out.parents if a.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ArgError(f"{flag} {out}: {parent} is a file, so the folder cannot be created")
    where = out if out.exists() else parent
    if where is not None and not os.access(where, os.W_OK):
        raise ArgError(f"{flag} {out}: no write permission in {where}")


def device(flag: str, name) -> None:
    """A device this machine has (``cuda`` without CUDA is refused here, not after hours)."""
    if name is None:
        return
    from affaccel.device import resolve_device

    try:
        resolve_device(name)
    except ValueError as e:
        raise ArgError(f"{flag} {name}: {e}") from None


def frames_backend(flag: str, name) -> None:
    """``dali`` only where DALI imports (``auto`` falls back to PIL by itself)."""
    if name != "dali":
        return
    from affaccel.video.decode import dali_available

    if not dali_available():
        raise ArgError(f"{flag} dali: NVIDIA DALI is not installed here (docs/gpu.md says how to add it); "
                       "use --frames-backend pil or auto")


def report(checks: Callable[[], None]) -> int | None:
    """Run ``checks``; on an ArgError print ``error: ...`` on stderr and return 2, else None."""
    try:
        checks()
    except ArgError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return None
