"""Bounded-memory inference: windows and overlap averaging as features arrive.

``StreamingTemporal`` gives the same numbers as the whole-array path
(``affaccel.inference.temporal.predict_frames``) while holding at most about ``w + s`` frames of
features plus the running overlap sums, so memory does not grow with video length.
``FeatureFiller`` gives frames without a face the previous face frame's feature, as the training
feature cache does, so window alignment is the one the model was trained with.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


class NoFramesError(ValueError):
    """The input decoded to zero frames."""


def _window_weights(window: int, weighting: str) -> np.ndarray:
    from affaccel.segments import window_weights

    return np.asarray(window_weights(window, weighting), np.float64)


class FeatureFiller:
    """Gives frames without a face the previous face frame's feature (leading ones: the first
    face frame's). Streaming: leading frames are held as a count until a face appears."""

    def __init__(self):
        self.last = None        # [D] feature of the latest face frame
        self.pending = 0        # leading frames seen before any face

    def __call__(self, feats, found) -> list:
        """feats: [B, D] torch (rows of no-face frames ignored), found: [B] bool -> list of
        ready feature blocks (torch [b, D]) in frame order; may be empty while no face seen."""
        import torch

        found = torch.as_tensor(np.asarray(found, bool))
        out = []
        if self.last is None:
            if not bool(found.any()):
                self.pending += len(found)
                return out
            first = int(torch.nonzero(found)[0])
            self.last = feats[first]
            lead = self.pending + first
            self.pending = 0
            for i in range(0, lead, 4096):  # bounded blocks, also for a long face-less start
                out.append(self.last.expand(min(4096, lead - i), -1).clone())
            feats, found = feats[first:], found[first:]
        # forward fill: index of the latest face frame at or before each row
        idx = torch.where(found, torch.arange(len(found)), torch.full((len(found),), -1))
        idx = torch.cummax(idx, 0).values
        block = torch.where((idx >= 0)[:, None], feats[idx.clamp(min=0)], self.last[None])
        if bool(found.any()):
            self.last = feats[int(torch.nonzero(found)[-1])]
        out.append(block)
        return out


class Segmenter:
    """Per-frame temporal segment numbers (0, 1, ...). A new segment starts at a scene cut and
    where the followed face's track id changes from one frame to the next (the subject switched
    to another person with no frame between). A face lost and found again after frames without
    a face, with no cut between, stays in the segment (most often the same person after an
    occlusion; single-face videos keep one segment). Call on consecutive chunks of one video."""

    def __init__(self):
        self.seg = 0
        self.last = None        # track id of the frame before (None: no face there)
        self.count = 0          # frames in the current segment so far

    def __call__(self, ids, found, cuts=None) -> np.ndarray:
        ids, found = np.asarray(ids, np.int64), np.asarray(found, bool)
        out = np.empty(len(found), np.int64)
        for i in range(len(found)):
            cut = cuts is not None and bool(cuts[i])
            if (cut or (found[i] and self.last is not None and ids[i] != self.last)) and self.count:
                self.seg, self.count = self.seg + 1, 0
            self.last = int(ids[i]) if found[i] else None
            out[i] = self.seg
            self.count += 1
        return out


def segment_runs(seg: np.ndarray) -> list[tuple[int, int]]:
    """[(start, stop)] of the runs of equal values in ``seg`` (in order)."""
    if not len(seg):
        return []
    bounds = [0, *(np.flatnonzero(np.diff(seg)) + 1).tolist(), len(seg)]
    return list(zip(bounds[:-1], bounds[1:]))


class StreamingTemporal:
    """Windows and overlap averaging as features arrive, with bounded memory.

    ``push(feats [B, D])`` returns finalized predictions ``(first_frame, {task: [n, K]})``
    (possibly n = 0); ``finish()`` returns the rest. A frame is final once no future window can
    cover it: windows start at 0, s, 2s, ... and the one extra tail window (when the video
    does not end on a window boundary) starts at T - w >= (frames seen) - w. Features older
    than min(next start, seen - w) are dropped, so at most about w + s frames are held.
    """

    def __init__(self, run_windows, window: int, stride: int, tasks: Sequence[str],
                 weighting: str = "uniform", max_batch: int = 32):
        self.run_windows, self.w, self.s = run_windows, int(window), int(stride)
        self.tasks, self.max_batch = list(tasks), int(max_batch)
        self.weights = _window_weights(self.w, weighting)
        self.buf = None          # torch [L, D] features of frames [buf_start, n)
        self.buf_start = 0
        self.n = 0               # frames pushed
        self.next_start = 0      # start of the next regular window
        self.fin = 0             # frames [0, fin) are finalized
        self.acc: dict[str, np.ndarray] = {}   # task -> [n - fin, K] weighted sums
        self.wsum = np.zeros(0)                # [n - fin] weight sums
        self.n_windows = 0
        self.peak_rows = 0       # most feature rows / accumulator rows held at once (memory check)

    def _grow(self, feats) -> None:
        import torch

        self.buf = feats if self.buf is None else torch.cat([self.buf, feats])
        self.n += len(feats)
        self.wsum = np.concatenate([self.wsum, np.zeros(len(feats))])
        for t in self.tasks:
            if t in self.acc:
                self.acc[t] = np.concatenate([self.acc[t], np.zeros((len(feats), self.acc[t].shape[1]))])

    def _run(self, starts: list[int], lengths: list[int]) -> None:
        import torch

        if not starts:
            return
        x = torch.zeros((len(starts), self.w, self.buf.shape[1]), dtype=self.buf.dtype)
        mask = torch.zeros((len(starts), self.w), dtype=torch.bool)
        for i, (st, ln) in enumerate(zip(starts, lengths)):
            x[i, :ln] = self.buf[st - self.buf_start: st - self.buf_start + ln]
            mask[i, :ln] = True
        preds = self.run_windows(x, mask)                    # task -> [N, w, K] numpy
        for i, (st, ln) in enumerate(zip(starts, lengths)):
            lo = st - self.fin
            wts = self.weights[:ln]
            self.wsum[lo: lo + ln] += wts
            for t in self.tasks:
                p = np.asarray(preds[t][i, :ln], np.float64)
                if t not in self.acc:
                    self.acc[t] = np.zeros((len(self.wsum), p.shape[1]))
                self.acc[t][lo: lo + ln] += wts[:, None] * p
        self.n_windows += len(starts)

    def _pop(self, upto: int):
        k = upto - self.fin
        out = {t: a[:k] / self.wsum[:k, None] for t, a in self.acc.items()}
        if k > 0 and not out:
            out = {t: np.zeros((k, 0)) for t in self.tasks}
        first = self.fin
        self.acc = {t: a[k:] for t, a in self.acc.items()}
        self.wsum = self.wsum[k:]
        self.fin = upto
        return first, out

    def _trim(self) -> None:
        keep = max(0, min(self.next_start, self.n - self.w))
        if keep > self.buf_start:
            self.buf = self.buf[keep - self.buf_start:].clone()
            self.buf_start = keep

    def push(self, feats):
        if len(feats):
            self._grow(feats)
        ready = []
        while self.next_start + self.w <= self.n:
            ready.append(self.next_start)
            self.next_start += self.s
            if len(ready) == self.max_batch:
                self._run(ready, [self.w] * len(ready))
                ready = []
        self._run(ready, [self.w] * len(ready))
        self.peak_rows = max(self.peak_rows, len(self.buf), len(self.wsum))
        upto = max(self.fin, min(self.next_start, self.n - self.w))
        out = self._pop(upto)
        self._trim()
        return out

    def finish(self):
        if self.n == 0:
            raise NoFramesError("no frames to predict")
        if self.next_start == 0:                      # shorter than a window: one padded window
            self._run([0], [self.n])
        elif self.next_start - self.s + self.w < self.n:   # tail window ending at the last frame
            self._run([self.n - self.w], [self.w])
        out = self._pop(self.n)
        self.buf = None
        return out
