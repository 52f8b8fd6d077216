"""Clip data sets for EmoCLIP on Aff-Wild2-format data (the built-in synthetic set included).

A clip is a labelled segment of a video (``affaccel.emoclip.clips.labelled_segments``) with its
facts for captions. With a frozen image tower, training reads the per-frame image embeddings from
the feature cache (``affaccel.stages.features``: extracted once, reused by every run with the
same tower); a trainable tower reads the frames' JPEG files.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from affaccel.emoclip.captions import ClipFacts, clip_facts, make_caption
from affaccel.emoclip.clips import labelled_segments, sample_indices
from affaccel.tasks import EXPRESSIONS

log = logging.getLogger(__name__)


@dataclass
class ClipItem:
    """One clip: frames [start, end) of a video, its expression, and what a caption may say."""
    video_id: str
    start: int
    end: int
    expression: str
    facts: ClipFacts
    caption: str | None = None   # a data set's own sample-level caption (MAFW); None: generated

    @property
    def n_frames(self) -> int:
        return self.end - self.start


def segment_clips(records: Sequence, min_len: int = 16, extras: dict | None = None) -> list[ClipItem]:
    """Clips of every record with EXPR labels, in record order."""
    items = []
    for r in records:
        if "expr" not in r.labels:
            continue
        ex = (extras or {}).get(r.video_id)
        for s, e, c in labelled_segments(r.labels["expr"], r.label_mask["expr"], min_len):
            facts = clip_facts(r.labels, r.label_mask, np.arange(s, e), ex)
            items.append(ClipItem(r.video_id, s, e, EXPRESSIONS[c], facts))
    return items


def clip_frames(item: ClipItem, length: int, step: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Video frame indices [length] of one clip: a random start and phase with ``rng``, else the
    centred deterministic clip (evaluation)."""
    n = item.n_frames
    kept = -(-n // step)
    if rng is None:
        idx = sample_indices(n, length, step, start=max(0, (kept - length) // 2))
    else:
        idx = sample_indices(n, length, step, start=int(rng.integers(kept)), phase=int(rng.integers(step)))
    return item.start + idx


def captions_for(items: Sequence[ClipItem], seed: int, name_share: float = 0.4) -> list[str]:
    """One caption per clip, reproducible from ``seed`` (validation captions): the clip's own
    caption where the data set has one, else one generated from its facts."""
    rng = np.random.default_rng([seed, 0xCA9])
    return [it.caption if it.caption else make_caption(it.facts, rng, name_share) for it in items]


def load_cached_features(records: Sequence, encoder, cache_root: str | Path | None = None,
                         progress: bool = True, device: str = "cpu") -> dict[str, np.ndarray]:
    """Per-frame image embeddings of ``records`` through ``encoder`` (a ClipEncoder), extracted
    into the feature cache where missing: {video_id: float32 [T, D]}. Raises on failed videos."""
    from affaccel.stages.features import FeatureCache, default_cache_root, extract_features

    cache = FeatureCache.for_encoder(cache_root or default_cache_root(), encoder)
    summary = extract_features(records, encoder, cache, batch_size=128, device=device, progress=progress)
    if summary["failed"]:
        vid, why = next(iter(summary["failed"].items()))
        raise RuntimeError(f"features of {len(summary['failed'])} videos failed, e.g. {vid}: {why}")
    log.info("features in %s (%d extracted, %d cached)", cache.dir, len(summary["extracted"]),
             len(summary["skipped"]))
    return {r.video_id: np.asarray(cache.load_features(r.video_id), np.float32) for r in records}


def load_frames(paths: Sequence, size: int, mean, std):
    """JPEG frames -> normalised float tensor [N, 3, size, size] (trainable image tower)."""
    import torch
    from PIL import Image

    arr = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC))
                    for p in paths]).astype(np.float32) / 255.0
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


__all__ = ["ClipItem", "segment_clips", "clip_frames", "captions_for", "load_cached_features", "load_frames"]
