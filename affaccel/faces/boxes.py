"""User-supplied face boxes (CSV) and box geometry.

A box file has a header ``frame,x,y,w,h`` (extra columns such as ``score`` are allowed and
ignored) and one line per frame that has a face; ``frame`` is the 0-based index of the decoded
frame. Frames absent from the file, or with an empty / NaN box, have no face.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

REQUIRED = ("frame", "x", "y", "w", "h")


def read_boxes_csv(path: str | os.PathLike, n_frames: int | None = None) -> np.ndarray:
    """Read a box CSV into ``boxes: [T, 4]`` float64 (x, y, w, h), NaN rows where no face.

    ``T`` is ``n_frames`` when given (frames past it are an error), else ``max(frame) + 1``.
    Errors name the file and line: missing columns, non-numeric values, negative or duplicate
    frames, non-positive width or height.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"box file {path} does not exist")
    rows: dict[int, tuple[float, float, float, float]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty box file; expected a header {','.join(REQUIRED)}")
        header = [h.strip().lower() for h in header]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ValueError(f"{path}:1: header {header} lacks column(s) {missing}; "
                             f"expected {','.join(REQUIRED)}")
        idx = [header.index(c) for c in REQUIRED]
        for lineno, line in enumerate(reader, start=2):
            if not line or all(not c.strip() for c in line):
                continue
            if len(line) <= max(idx):
                raise ValueError(f"{path}:{lineno}: {len(line)} fields, expected at least "
                                 f"{max(idx) + 1} ({','.join(REQUIRED)})")
            frame_s = line[idx[0]].strip()
            try:
                frame = int(frame_s)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: frame {frame_s!r} is not an integer") from None
            if frame < 0:
                raise ValueError(f"{path}:{lineno}: frame {frame} is negative")
            if n_frames is not None and frame >= n_frames:
                raise ValueError(f"{path}:{lineno}: frame {frame} is past the video's last "
                                 f"frame {n_frames - 1}")
            if frame in rows:
                raise ValueError(f"{path}:{lineno}: frame {frame} appears twice")
            vals = []
            for name, i in zip(REQUIRED[1:], idx[1:]):
                s = line[i].strip()
                try:
                    vals.append(float(s) if s else math.nan)
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: {name}={s!r} is not a number") from None
            if not any(math.isnan(v) for v in vals) and (vals[2] <= 0 or vals[3] <= 0):
                raise ValueError(f"{path}:{lineno}: box width and height must be > 0, "
                                 f"got w={vals[2]}, h={vals[3]}")
            if any(math.isinf(v) for v in vals):
                raise ValueError(f"{path}:{lineno}: box values must be finite, got {vals}")
            rows[frame] = tuple(vals)
    total = n_frames if n_frames is not None else (max(rows) + 1 if rows else 0)
    boxes = np.full((total, 4), np.nan, dtype=np.float64)
    for frame, vals in rows.items():
        boxes[frame] = vals
    # a row with any NaN is "no face" as a whole
    boxes[np.isnan(boxes).any(axis=1)] = np.nan
    return boxes


def check_boxes(boxes, n_frames: int, name: str = "boxes") -> np.ndarray:
    """Validate in-memory boxes ``[T, 4]`` (x, y, w, h; NaN rows = no face) for ``n_frames``."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name}: expected shape [T, 4] (x, y, w, h), got {tuple(arr.shape)}")
    if arr.shape[0] != n_frames:
        raise ValueError(f"{name}: {arr.shape[0]} rows for {n_frames} frames")
    arr = arr.copy()
    arr[np.isnan(arr).any(axis=1)] = np.nan
    ok = ~np.isnan(arr[:, 0])
    if np.any(arr[ok, 2:] <= 0):
        raise ValueError(f"{name}: box width and height must be > 0")
    return arr


def box_iou(a, b) -> np.ndarray:
    """IoU of paired boxes ``a, b: [N, 4]`` (x, y, w, h) -> ``[N]``; NaN where either is NaN."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, 0], b[:, 0])
    y1 = np.maximum(a[:, 1], b[:, 1])
    x2 = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    y2 = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / union


def pairwise_iou(a, b) -> np.ndarray:
    """IoU of every pair: ``a: [N, 4]``, ``b: [M, 4]`` -> ``[N, M]``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return box_iou(np.repeat(a, len(b), axis=0), np.tile(b, (len(a), 1))).reshape(len(a), len(b))
