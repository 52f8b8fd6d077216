"""Plot one video's predictions: valence / arousal over time, expression and AU strips.

Uses matplotlib's object API on an Agg canvas (no pyplot global state, no display needed).
Frames without a face are gaps in the curves and blank columns in the strips. Curves and
strips share one time axis: each strip column spans its own frame's time.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from affaccel import io_utils
from affaccel.tasks import ACTION_UNITS, EXPRESSIONS


def _edges(x: np.ndarray) -> np.ndarray:
    """[T] sample positions -> [T + 1] column edges: midpoints between neighbours, the ends half
    a neighbouring gap out (one frame: +-0.5), so each strip column spans its own frame's time."""
    if len(x) == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    mid = (x[:-1] + x[1:]) / 2.0
    return np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])


def plot_figure(result, name: str = ""):
    """The matplotlib Figure of ``result`` (a PredictionResult or its DataFrame): every row on
    one x axis, the frames' timestamps (frame index when a timestamp is missing), so the VA
    curve and the strips agree on variable-frame-rate video."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    df = result if hasattr(result, "columns") else result.frame   # a DataFrame has a .frame column
    name = name or getattr(result, "video", "")
    ts = df["timestamp_s"].to_numpy(np.float64)
    use_time = len(ts) > 0 and np.isfinite(ts).all() and bool(np.all(np.diff(ts) > 0))
    x = ts if use_time else df["frame"].to_numpy(np.float64)
    rows = [k for k, cols in (("va", ["valence"]), ("expr", ["Neutral"]), ("au", ["AU1"]))
            if all(c in df.columns for c in cols)]
    if not rows:
        raise ValueError("the table has no prediction columns to plot")
    heights = {"va": 2.0, "expr": 1.4, "au": 1.8}
    fig = Figure(figsize=(11, 1.0 + sum(heights[r] for r in rows)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": [heights[r] for r in rows]})[:, 0]
    edges = _edges(x)
    for ax, row in zip(axes, rows):
        if row == "va":
            ax.plot(x, df["valence"].to_numpy(np.float64), label="valence", lw=1.2)
            ax.plot(x, df["arousal"].to_numpy(np.float64), label="arousal", lw=1.2)
            ax.axhline(0.0, color="0.6", lw=0.6)
            ax.set_ylim(-1.05, 1.05)
            ax.set_ylabel("VA")
            ax.legend(loc="upper right", fontsize=8, ncol=2)
        else:
            names = EXPRESSIONS if row == "expr" else ACTION_UNITS
            m = np.ma.masked_invalid(df[list(names)].to_numpy(np.float64).T)  # [K, T]
            im = ax.pcolormesh(edges, np.arange(len(names) + 1) - 0.5, m, vmin=0.0, vmax=1.0,
                               cmap="magma", shading="flat")
            ax.set_ylim(len(names) - 0.5, -0.5)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.set_ylabel("expression" if row == "expr" else "AU")
            fig.colorbar(im, ax=ax, pad=0.01, fraction=0.02)
    axes[-1].set_xlim(edges[0], edges[-1])
    axes[-1].set_xlabel("time (s)" if use_time else "frame")
    faces = int(df["face_found"].sum())
    axes[0].set_title(f"{Path(str(name)).name}  ({len(df)} frames, face in {faces})", fontsize=9)
    return fig


def plot_result(result, path) -> Path:
    """Write a PNG of ``result`` (a PredictionResult or its DataFrame) to ``path``."""
    fig = plot_figure(result)
    path = Path(path)
    io_utils.atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return path
