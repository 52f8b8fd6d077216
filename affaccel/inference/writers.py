"""Output files of predictions: per-video tables (csv / parquet) and the ABAW text files.

The table itself (columns, dtypes) is ``affaccel.inference.table``; this module decides only how
it is written and under which name. Every write is atomic (temp file, then rename).

ABAW files (``--format abaw``): ``<out>/{VA,EXPR,AU}/<video>.txt``, the annotation header line,
then one line per decoded frame. Frames without a face get the annotation files' invalid
markers: ``-5,-5`` (VA), ``-1`` (EXPR), ``-1`` x 12 (AU).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from affaccel import io_utils
from affaccel.tasks import ACTION_UNITS, EXPRESSIONS, TASKS

FORMATS = ("csv", "parquet", "abaw")
ABAW_DIRS = {"va": "VA", "expr": "EXPR", "au": "AU"}

def write_table(df, path: Path, fmt: str) -> Path:
    if fmt == "csv":
        io_utils.atomic_write_with(path, lambda tmp: df.to_csv(tmp, index=False))
    elif fmt == "parquet":
        io_utils.atomic_write_with(path, lambda tmp: df.to_parquet(tmp, index=False))
    else:
        raise ValueError(f"table format must be csv or parquet, got {fmt!r}")
    return path


def abaw_lines(df, task: str) -> list[str]:
    """The ABAW text file of one task: header, then one line per frame (invalid markers for
    frames without a face)."""
    spec = TASKS[task]
    found = df["face_found"].to_numpy(bool)
    lines = [",".join(spec.columns)]
    if task == "va":
        va = df[["valence", "arousal"]].to_numpy(np.float64)
        lines += [f"{v:.6f},{a:.6f}" if ok else "-5,-5" for (v, a), ok in zip(va, found)]
    elif task == "expr":
        idx = np.nan_to_num(df[list(EXPRESSIONS)].to_numpy(np.float64), nan=-1.0).argmax(1)
        lines += [str(int(i)) if ok else "-1" for i, ok in zip(idx, found)]
    else:
        act = df[[f"{a}_active" for a in ACTION_UNITS]].to_numpy(np.float64)
        bad = ",".join(["-1"] * len(ACTION_UNITS))
        lines += [",".join(str(int(x)) for x in row) if ok else bad for row, ok in zip(act, found)]
    return lines


def write_abaw(result, out_dir: Path, name: str) -> list[Path]:
    paths = []
    for task in result.tasks:
        path = Path(out_dir) / ABAW_DIRS[task] / f"{name}.txt"
        io_utils.atomic_write_text(path, "\n".join(abaw_lines(result.frame, task)) + "\n")
        paths.append(path)
    return paths


def write_result(result, out_dir, fmt: str = "csv", name: str | None = None) -> list[Path]:
    """Write one PredictionResult; returns the files written."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    out_dir = Path(out_dir)
    name = name or Path(str(result.video)).stem
    if fmt == "abaw":
        return write_abaw(result, out_dir, name)
    return [write_table(result.frame, out_dir / f"{name}.{fmt}", fmt)]


def output_names(videos: Sequence[str]) -> list[str]:
    """File stems for the outputs; repeated stems get a numeric suffix (a/x.mp4, b/x.mp4)."""
    seen: dict[str, int] = {}
    names = []
    for v in videos:
        stem = Path(v).stem
        k = seen.get(stem, 0)
        seen[stem] = k + 1
        names.append(stem if k == 0 else f"{stem}_{k}")
    return names
