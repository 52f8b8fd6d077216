"""Symmetric InfoNCE with hard targets (CLIP's loss, as in the EmoCLIP code).

Row i of ``logits_per_video`` [B, B] scores clip i against every text of the batch; its target is
text i, and the text side is the transpose. The loss is the mean of the two cross-entropies.
Class-level supervision feeds each clip's class description as its text, so texts repeat within
a batch and duplicates count as negatives, exactly as the EmoCLIP code's arange targets do.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F


def clip_loss(logits_per_video: torch.Tensor) -> torch.Tensor:
    """logits_per_video: [B, B] (already scaled) -> scalar loss; targets are the diagonal."""
    if logits_per_video.ndim != 2 or logits_per_video.shape[0] != logits_per_video.shape[1]:
        raise ValueError(f"clip_loss expects square logits [B, B], got {tuple(logits_per_video.shape)}")
    target = torch.arange(logits_per_video.shape[0], device=logits_per_video.device)
    lv = logits_per_video.float()
    return (F.cross_entropy(lv, target) + F.cross_entropy(lv.t(), target)) / 2


def clip_loss_from_embeddings(video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """video [B, D], text [B, D] (any norm), log-scale scalar -> the symmetric InfoNCE loss."""
    v = F.normalize(video.float(), dim=-1)
    t = F.normalize(text.float(), dim=-1)
    return clip_loss(logit_scale.exp() * v @ t.t())


def clip_loss_ref(video: np.ndarray, text: np.ndarray, logit_scale: float) -> float:
    """The same loss in float64 NumPy loops: the reference the tests compare with."""
    v = np.asarray(video, np.float64)
    t = np.asarray(text, np.float64)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    s = math.exp(logit_scale)
    b = len(v)
    total_v = total_t = 0.0
    for i in range(b):
        row = [s * float(v[i] @ t[j]) for j in range(b)]
        col = [s * float(v[j] @ t[i]) for j in range(b)]
        total_v += math.log(sum(math.exp(x) for x in row)) - row[i]
        total_t += math.log(sum(math.exp(x) for x in col)) - col[i]
    return (total_v / b + total_t / b) / 2


__all__ = ["clip_loss", "clip_loss_from_embeddings", "clip_loss_ref"]
