"""Small expression-labelled JPEG videos for the CLIP-stage tests (importable by spawned ranks).

Each frame is a 32x32 JPEG whose dominant colour is one of 8 corners of the RGB cube, chosen by
the frame's expression class, plus noise: learnable in seconds by the tiny encoder, yet only
through the real path (JPEG decode, resize, augmentation, normalisation, ViT).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PALETTE = np.array([[r, g, b] for r in (30, 225) for g in (30, 225) for b in (30, 225)], np.int16)


@dataclass
class Rec:
    """The fields of affaccel.data.affwild2.VideoRecord that fine-tuning and extraction read."""
    video_id: str
    split: str
    n_frames: int
    frame_paths: list
    frame_present: np.ndarray
    labels: dict = field(default_factory=dict)
    label_mask: dict = field(default_factory=dict)
    tasks: tuple = ("expr",)


def make_video(root: Path, vid: str, split: str, n: int, seed: int, invalid_every: int = 0,
               missing=()) -> Rec:
    """n frames in class segments of 4-12 frames; every ``invalid_every``-th label is -1."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y = np.empty(n, np.int64)
    t = 0
    while t < n:
        length = int(rng.integers(4, 13))
        y[t:t + length] = rng.integers(0, 8)
        t += length
    mask = np.ones(n, bool)
    if invalid_every:
        mask[::invalid_every] = False
        y[~mask] = -1
    d = Path(root) / vid
    d.mkdir(parents=True, exist_ok=True)
    paths, present = [], np.ones(n, bool)
    for t in range(n):
        if t in missing and t > 0:
            paths.append(paths[-1])
            present[t] = False
            continue
        colour = PALETTE[max(y[t], 0)]
        img = np.clip(colour + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
        p = d / f"{t + 1:05d}.jpg"
        Image.fromarray(img).save(p, quality=90)
        paths.append(p)
    return Rec(vid, split, n, paths, present, {"expr": y}, {"expr": mask})


def make_dataset(root: Path, n_train: int = 4, n_val: int = 2, frames: int = 40) -> list[Rec]:
    recs = [make_video(root, f"train{i}", "train", frames, i, invalid_every=9, missing={5})
            for i in range(n_train)]
    recs += [make_video(root, f"val{i}", "val", frames, 100 + i) for i in range(n_val)]
    return recs
