"""Window datasets of stage 3, built straight from per-video feature arrays.

A training set is a list of :class:`VideoSeq` (features [T, D], possibly a float16 memmap of
the feature cache, plus per-frame targets and a valid mask). :class:`WindowSet` plans the
windows of every video once (``affaccel.segments.plan_windows``: w = 300, s = 200 by default)
and cuts batches on demand with ``gather_windows``, so only the windows of one batch are ever
materialised. Shuffling is a pure function of (seed, epoch), which is what makes ``--resume``
reproduce an uninterrupted run, and sharding by (rank, world) gives every DDP rank the same
number of batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from affaccel.tasks import get_task


@dataclass
class VideoSeq:
    """One video of one task. features: [T, D] (any float dtype, memmap ok); labels: [T, K]
    float32 for VA / AU, [T] int64 for EXPR; mask: [T] bool, True where the label is valid and
    the frame may train the model; score_mask: [T] bool, frames that count in the metrics."""

    video_id: str
    features: Any
    labels: np.ndarray
    mask: np.ndarray
    score_mask: np.ndarray | None = None

    def __post_init__(self):
        n = self.features.shape[0]
        if self.features.ndim != 2 or n == 0:
            raise ValueError(f"video {self.video_id}: features must be [T, D] with T > 0, "
                             f"got {tuple(self.features.shape)}")
        for name in ("labels", "mask"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"video {self.video_id}: {name} has {getattr(self, name).shape[0]} "
                                 f"frames, features have {n}")
        if self.score_mask is None:
            self.score_mask = self.mask

    @property
    def n_frames(self) -> int:
        return int(self.features.shape[0])

    def targets(self) -> np.ndarray:
        """Labels and training mask as one float32 [T, K' + 1] array (gathered in one call)."""
        lab = self.labels.reshape(self.n_frames, -1).astype(np.float32)
        return np.concatenate([lab, self.mask.astype(np.float32)[:, None]], axis=1)


def sequences_from_records(records: Sequence, task: str,
                           load_features: Callable[[str], Any]) -> list[VideoSeq]:
    """VideoSeqs of the records annotated for ``task``.

    Frames with no face (``frame_present`` False) carry the previous frame's feature (the cache
    does that): they do not train the model, but they are scored, as the challenge scores every
    annotated frame.
    """
    name = get_task(task).name
    out = []
    for rec in records:
        if name not in rec.labels:
            continue
        valid = np.asarray(rec.label_mask[name], dtype=bool)
        present = np.asarray(rec.frame_present, dtype=bool)
        out.append(VideoSeq(rec.video_id, load_features(rec.video_id), np.asarray(rec.labels[name]),
                            valid & present, score_mask=valid))
    return out


@dataclass
class Batch:
    x: Any        # torch float32 [B, w, D]
    frames: Any   # torch bool [B, w]: real (non-padded) frames
    target: Any   # torch [B, w, K] float32 (VA, AU) or [B, w] int64 (EXPR)
    valid: Any    # torch bool [B, w]: frames whose label trains the model


class WindowSet:
    """All windows of a list of videos: index [N, 2] of (video, start)."""

    def __init__(self, seqs: Sequence[VideoSeq], window: int, stride: int, task: str):
        from affaccel.segments import plan_windows_batch

        if not seqs:
            raise ValueError(f"no videos with {task} labels to build windows from")
        self.seqs = list(seqs)
        self.window, self.stride, self.task = int(window), int(stride), get_task(task)
        self.index = plan_windows_batch([q.n_frames for q in self.seqs], self.window, self.stride)
        self._features = [q.features for q in self.seqs]
        self._targets = [q.targets() for q in self.seqs]

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.seqs[0].features.shape[1])

    def order(self, epoch: int, seed: int, shuffle: bool, rank: int = 0, world: int = 1) -> np.ndarray:
        """Window order of one epoch for one rank; every rank gets ceil(N / world) windows
        (wrapping around), so DDP ranks take the same number of steps."""
        n = len(self)
        perm = (np.random.default_rng([seed, epoch]).permutation(n) if shuffle
                else np.arange(n))
        per_rank = -(-n // world)
        perm = np.resize(perm, per_rank * world)
        return perm[rank::world]

    def batch(self, rows: np.ndarray) -> Batch:
        import torch

        from affaccel.segments import gather_windows

        index = np.ascontiguousarray(self.index[rows])
        x, frames = gather_windows(self._features, index, self.window)
        t, _ = gather_windows(self._targets, index, self.window)
        x = torch.from_numpy(np.asarray(x, dtype=np.float32))
        frames = torch.from_numpy(np.asarray(frames, dtype=bool))
        t = torch.from_numpy(np.asarray(t, dtype=np.float32))
        valid = (t[..., -1] > 0.5) & frames
        target = t[..., :-1]
        if self.task.kind == "multiclass":
            target = target[..., 0].round().long().clamp_(0, self.task.dim - 1)
        return Batch(x, frames, target, valid)

    def batches(self, batch_size: int, epoch: int, seed: int, shuffle: bool = True,
                rank: int = 0, world: int = 1) -> Iterator[tuple[np.ndarray, Batch]]:
        """Yield (rows, Batch) over one epoch's order."""
        order = self.order(epoch, seed, shuffle, rank, world)
        for i in range(0, len(order), batch_size):
            rows = order[i:i + batch_size]
            yield rows, self.batch(rows)

    def n_batches(self, batch_size: int, world: int = 1) -> int:
        return -(-(-(-len(self) // world)) // batch_size)


def label_frequencies(seqs: Sequence[VideoSeq], task: str) -> np.ndarray:
    """Counts of valid training labels: EXPR [8] per class; AU [12, 2] (negatives, positives)."""
    spec = get_task(task)
    if spec.kind == "multiclass":
        counts = np.zeros(spec.dim, dtype=np.int64)
        for q in seqs:
            counts += np.bincount(np.asarray(q.labels)[q.mask].astype(np.int64), minlength=spec.dim)[:spec.dim]
        return counts
    if spec.kind == "multilabel":
        pos = sum(np.asarray(q.labels)[q.mask].sum(axis=0) for q in seqs)
        n = sum(int(q.mask.sum()) for q in seqs)
        return np.stack([n - np.asarray(pos), np.asarray(pos)], axis=1).astype(np.int64)
    raise ValueError(f"label frequencies are defined for expr and au, not {task}")
