"""Clips: which frames of a video a clip embedding sees.

EmoCLIP's sampling (its ``TemporalDownSample`` + ``RandomSequence``): keep every k-th frame,
then take ``length`` consecutive kept frames from a start, wrapping around the end; a clip with
fewer kept frames than ``length`` is reflect-padded. On Aff-Wild2-format data a "clip" is a run
of frames with one valid expression label (``labelled_segments``), the analogue of one DFEW /
MAFW clip.
"""
from __future__ import annotations

import numpy as np


def sample_indices(n: int, length: int = 32, step: int = 2, start: int = 0, phase: int = 0) -> np.ndarray:
    """Frame indices [length] (int64, into 0..n-1) of one clip of an n-frame segment.

    Kept frames: ``phase, phase + step, ...`` (``phase`` taken modulo ``min(step, n)``). With at
    least ``length`` kept frames: ``length`` consecutive ones from kept position ``start``,
    wrapping around the end. With fewer: all of them, reflect-padded (``0 1 2 1 0 1 ...``;
    a single kept frame repeats).
    """
    if n < 1 or length < 1 or step < 1:
        raise ValueError(f"need n, length, step >= 1, got {n}, {length}, {step}")
    kept = np.arange(phase % min(step, n), n, step, dtype=np.int64)
    m = len(kept)
    if m >= length:
        return kept[(start + np.arange(length)) % m]
    if m == 1:
        return np.repeat(kept, length)
    period = 2 * (m - 1)                      # reflect: 0..m-1, m-2..1, 0..
    pos = np.arange(length) % period
    pos = np.where(pos < m, pos, period - pos)
    return kept[pos]


def labelled_segments(expr: np.ndarray, mask: np.ndarray, min_len: int = 16) -> list[tuple[int, int, int]]:
    """Runs of frames with one valid expression: [(start, end, class)], end exclusive, each
    at least ``min_len`` frames long. expr: [T] int; mask: [T] bool."""
    expr = np.asarray(expr, np.int64)
    mask = np.asarray(mask, bool)
    out, t, n = [], 0, len(expr)
    while t < n:
        s = t
        while t < n and mask[t] == mask[s] and expr[t] == expr[s]:
            t += 1
        if mask[s] and t - s >= min_len:
            out.append((s, t, int(expr[s])))
    return out


__all__ = ["sample_indices", "labelled_segments"]
