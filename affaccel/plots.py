"""Plot one video's predictions: valence / arousal over time, expression and AU strips.

Uses matplotlib's object API on an Agg canvas (no pyplot global state, no display needed).
Frames without a face are gaps in the curves and blank columns in the strips.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from affaccel import io_utils
from affaccel.tasks import ACTION_UNITS, EXPRESSIONS


def plot_result(result, path) -> Path:
    """Write a PNG of ``result`` (a PredictionResult or its DataFrame) to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    df = getattr(result, "frame", result)
    name = getattr(result, "video", "")
    ts = df["timestamp_s"].to_numpy(np.float64)
    use_time = len(ts) > 0 and np.isfinite(ts).all()
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
    extent_x = (x[0], x[-1]) if len(x) > 1 else (x[0] - 0.5, x[0] + 0.5)
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
            im = ax.imshow(m, aspect="auto", interpolation="nearest", vmin=0.0, vmax=1.0,
                           cmap="magma", extent=(*extent_x, len(names) - 0.5, -0.5))
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.set_ylabel("expression" if row == "expr" else "AU")
            fig.colorbar(im, ax=ax, pad=0.01, fraction=0.02)
    axes[-1].set_xlabel("time (s)" if use_time else "frame")
    faces = int(df["face_found"].sum())
    axes[0].set_title(f"{Path(str(name)).name}  ({len(df)} frames, face in {faces})", fontsize=9)
    path = Path(path)
    io_utils.atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return path
