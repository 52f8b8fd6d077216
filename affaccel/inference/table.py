"""The frozen per-frame table every prediction is delivered in (docs/inference.md).

Columns: ``frame`` (int64, 0-based decoded frame index), ``timestamp_s`` (float64, decoder's
presentation time), ``face_found`` (bool), ``face_id`` (int64 track id, -1 without a face),
``segment`` (int64 temporal segment: 0, 1, ... a new one at each scene cut or subject change;
no window spans two; -1 without a face),
``face_x, face_y, face_w, face_h, face_score`` (float32, NaN without a face), then per task
predicted: ``valence, arousal``; ``Neutral ... Other`` (probabilities) and ``expr_label`` (str);
``AU1 ... AU26`` (probabilities) and ``AU1_active ... AU26_active`` (float32 1.0/0.0 at
probability >= AU_THRESHOLD). Every prediction column is NaN on frames without a face.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from affaccel.tasks import ACTION_UNITS, EXPRESSIONS, TASKS

AU_THRESHOLD = 0.5          # binary AU columns: probability >= 0.5 (the challenge's threshold)
TASK_ORDER = ("va", "expr", "au")
BOX_COLUMNS = ("face_x", "face_y", "face_w", "face_h")


def prediction_columns(tasks: Sequence[str]) -> list[str]:
    """Prediction column names for the given tasks, in schema order."""
    cols: list[str] = []
    for t in TASK_ORDER:
        if t not in tasks:
            continue
        if t == "va":
            cols += ["valence", "arousal"]
        elif t == "expr":
            cols += [*EXPRESSIONS, "expr_label"]
        else:
            cols += [*ACTION_UNITS, *(f"{a}_active" for a in ACTION_UNITS)]
    return cols


def schema_columns(tasks: Sequence[str]) -> list[str]:
    return ["frame", "timestamp_s", "face_found", "face_id", "segment", *BOX_COLUMNS, "face_score",
            *prediction_columns(tasks)]


def build_table(first_frame: int, timestamps, boxes, scores, ids, found, preds: dict,
                segments=None):
    """One DataFrame chunk in the frozen schema.

    timestamps: [n] float64; boxes: [n, 4]; scores: [n]; ids: [n] int; found: [n] bool;
    preds: task -> [n, K] float (VA values, EXPR / AU probabilities; rows of frames without a
    face are overwritten with NaN here); segments: [n] int temporal segment (default 0).
    """
    import pandas as pd

    n = len(found)
    found = np.asarray(found, bool)
    cols: dict[str, Any] = {
        "frame": np.arange(first_frame, first_frame + n, dtype=np.int64),
        "timestamp_s": np.asarray(timestamps, np.float64),
        "face_found": found,
        "face_id": np.where(found, np.asarray(ids, np.int64), -1),
        "segment": np.where(found, 0 if segments is None else np.asarray(segments, np.int64), -1),
    }
    boxes = np.asarray(boxes, np.float32).reshape(n, 4).copy()
    boxes[~found] = np.nan
    for j, c in enumerate(BOX_COLUMNS):
        cols[c] = boxes[:, j]
    cols["face_score"] = np.where(found, np.asarray(scores, np.float32), np.float32(np.nan))
    for t in TASK_ORDER:
        if t not in preds:
            continue
        p = np.asarray(preds[t], np.float32).reshape(n, -1).copy()
        p[~found] = np.nan
        names = TASKS[t].columns
        for j, c in enumerate(names):
            cols[c] = p[:, j]
        if t == "expr":
            labels = np.asarray(EXPRESSIONS, dtype=object)[np.nan_to_num(p).argmax(1)]
            labels[~found] = np.nan
            cols["expr_label"] = labels
        elif t == "au":
            for j, c in enumerate(names):
                cols[f"{c}_active"] = np.where(found, (p[:, j] >= AU_THRESHOLD).astype(np.float32),
                                               np.float32(np.nan))
    return pd.DataFrame(cols, columns=schema_columns(list(preds)))


@dataclass
class PredictionResult:
    """Per-frame predictions of one video.

    frame: the table (schema in the module docstring); video: the input's name;
    seconds: wall time of the prediction; tasks: tasks predicted; decoder: how a video file was
    decoded ("dali (cuda:0)", "pyav (cpu)"; "" for frames, crops or features given directly).
    """
    frame: Any
    video: str
    tasks: tuple[str, ...]
    seconds: float = float("nan")
    decoder: str = ""

    @property
    def n_frames(self) -> int:
        return int(len(self.frame))

    @property
    def n_faces(self) -> int:
        return int(self.frame["face_found"].sum())

    @property
    def fps(self) -> float:
        """Frames processed per second of wall time."""
        return self.n_frames / self.seconds if self.seconds > 0 else float("nan")

    def save(self, out_dir, fmt: str = "csv", name: str | None = None) -> list[Path]:
        """Write the table (csv / parquet) or the ABAW text files; see affaccel.inference.writers."""
        from affaccel.inference.writers import write_result

        return write_result(self, out_dir, fmt, name=name)

    def plot(self, path) -> Path:
        from affaccel.plots import plot_result

        return plot_result(self, path)
