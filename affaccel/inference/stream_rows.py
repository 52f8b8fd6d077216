"""The rows of a streamed prediction, released once every source has finalized them.

A streamed video has up to two sources of per-frame outputs that finalize frames at their own
pace: the temporal models (windows ``w`` / ``s`` per segment, ``StreamingTemporal``) and the
EmoCLIP zero-shot scorer (its own, shorter windows over the whole video). ``RowBuffer`` keeps
the per-frame side columns (timestamps, boxes, ids, ...) and each source's finalized outputs,
and releases table chunks (the frozen schema of ``affaccel.inference.table``, plus the ``zs_``
columns) for the frames every source has finalized, in frame order.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from affaccel.inference.table import build_table


def _take(parts: list[np.ndarray], k: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The first k rows of the concatenation of ``parts`` and the rest (as a one-item list)."""
    whole = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return whole[:k], [whole[k:]]


class RowBuffer:
    """``tasks``: the temporal models' tasks (empty: no temporal source); ``zs_columns``: the
    ``zs_<label>`` names of the zero-shot source (None: no such source)."""

    def __init__(self, tasks: Sequence[str], zs_columns: Sequence[str] | None = None):
        self.tasks = list(tasks)
        self.zs_columns = list(zs_columns) if zs_columns is not None else None
        self.side: list[list[np.ndarray]] = []      # per side column, its pending parts
        self.preds = {t: [] for t in self.tasks}    # task -> pending [k, K] parts
        self.zs: list[np.ndarray] = []
        self.emitted = 0                            # rows released so far

    def add_side(self, columns: Sequence[np.ndarray]) -> None:
        if not self.side:
            self.side = [[] for _ in columns]
        for parts, c in zip(self.side, columns):
            parts.append(np.asarray(c))

    def add_preds(self, preds: dict) -> None:
        """One source's finalized rows: task -> [k, K] ({} when nothing was finalized)."""
        if not preds:
            return
        for t in self.tasks:
            self.preds[t].append(np.asarray(preds[t]))

    def add_zs(self, probs) -> None:
        self.zs.append(np.asarray(probs, np.float32))

    @staticmethod
    def _rows(parts: list[np.ndarray]) -> int:
        return sum(len(p) for p in parts)

    def ready(self) -> int:
        """Rows every source has finalized."""
        k = self._rows(self.side[0]) if self.side else 0
        if self.tasks:
            k = min(k, self._rows(self.preds[self.tasks[0]]))
        if self.zs_columns is not None:
            k = min(k, self._rows(self.zs))
        return k

    def release(self):
        """A table chunk of the rows ready now, or None."""
        k = self.ready()
        if k == 0:
            return None
        cols = []
        for i, parts in enumerate(self.side):
            head, self.side[i] = _take(parts, k)
            cols.append(head)
        preds = {}
        for t in self.tasks:
            preds[t], self.preds[t] = _take(self.preds[t], k)
        ts, bx, sc, ids, found, seg = cols
        table = build_table(self.emitted, ts, bx, sc, ids, found, preds, segments=seg)
        if self.zs_columns is not None:
            probs, self.zs = _take(self.zs, k)
            probs = probs.copy()
            probs[~np.asarray(found, bool)] = np.nan
            for j, c in enumerate(self.zs_columns):
                table[c] = probs[:, j]
        self.emitted += k
        return table
