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


def output_names(videos: Sequence[str], taken: Sequence[str] = ()) -> list[str]:
    """Unique file stems for the outputs of one run: a repeated stem gets the first numeric
    suffix that is neither taken nor another input's own stem (``a/x.avi``, ``b/x.mp4`` and
    ``x_1.mp4`` -> ``x``, ``x_2``, ``x_1``), compared case-insensitively (macOS / Windows
    file systems). ``taken``: stems already used in this run."""
    stems = [Path(str(v)).stem for v in videos]
    reserved = {s.lower() for s in stems}
    used = {t.lower() for t in taken}
    names = []
    for stem in stems:
        name, k = stem, 0
        # a suffixed name must also stay free for the input whose own stem it is
        while name.lower() in used or (k and name.lower() in reserved):
            k += 1
            name = f"{stem}_{k}"
        used.add(name.lower())
        names.append(name)
    return names


MANIFEST_NAME = "manifest.json"


def write_manifest(out_dir, entries: list[dict], name: str = MANIFEST_NAME) -> Path:
    """``<out>/manifest.json``: one entry per input (input, status ok / no_face / failed,
    outputs written, frames, faces, warnings, reason), written atomically. ``name``: another file
    name (a rank's part under torchrun)."""
    path = Path(out_dir) / name
    io_utils.atomic_write_json(path, {"format": "affaccel-predict-manifest/1", "inputs": entries})
    return path
