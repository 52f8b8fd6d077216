"""Atomic file writes: a temp file in the target's folder, fsync, then rename.

An interrupted run therefore never leaves a half-written checkpoint, cache entry or output.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    ``suffix`` keeps an extension on the temp name for writers that infer the format from it
    (np.save appends ``.npy`` otherwise).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path, suffix if suffix is not None else path.suffix + ".tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _create_temp(path: Path, suffix: str) -> Path:
    """Create a new empty file beside ``path`` with the permissions an ordinary open() gives.

    Mode 0o666 goes to open(2), which applies the process umask itself: no umask is read or
    changed here (changing it races other threads creating files).
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file beside {path}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    atomic_write_with(path, lambda tmp: torch.save(obj, tmp))


def read_torch_file(path: str | os.PathLike, missing: str, unreadable: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, the one loader of every affaccel file
    (bundles, checkpoints). A missing file raises FileNotFoundError(``missing``); a file that does
    not load raises ValueError(``"<path>: <unreadable> (<error kind>)"``). torch's own text is
    left out: for a file with arbitrary pickled objects it suggests ``weights_only=False``, i.e.
    running code from the file, which affaccel never asks of a user."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, not a torch file, foreign pickle
        raise ValueError(f"{path}: {unreadable} ({type(e).__name__})") from None
