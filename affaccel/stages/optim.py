"""What stage 1 and stage 3 share about optimisation: the learning-rate schedule and the
class-weight rule. One definition each, so the two stages cannot drift apart."""
from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("constant", "cosine")


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, schedule: str = "cosine") -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    "cosine": a linear warm-up over ``warmup_steps`` ((step + 1) / warmup_steps), then a cosine
    decay that reaches 0 at ``total_steps`` and stays there; "constant": 1 after the warm-up.
    A function of the step alone, so a resumed run continues the same schedule (paper sec. 4.2:
    cosine schedule with one warm-up epoch).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    warm = max(0, int(warmup_steps))
    if step < warm:
        return (step + 1) / warm
    if schedule == "constant":
        return 1.0
    progress = (step - warm) / max(1, total_steps - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def class_weights(counts: np.ndarray) -> np.ndarray:
    """Loss weights from training label counts (float32).

    counts [C] (single-label classes, EXPR): inverse class frequency, scaled to mean 1 over the
    classes that occur; a class with no training frame gets 1. Its weight cannot change the
    training loss (no target has that class), and 1 keeps it neutral wherever the weights meet
    data that has it (a validation loss), where 0 would silently drop those frames.
    counts [C, 2] (negatives, positives per binary label, AU): ``pos_weight`` = neg / pos,
    clipped to [1, 10] (a label with no positive gets the cap).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim == 2:
        if counts.shape[1] != 2:
            raise ValueError(f"binary label counts must be [C, 2] (neg, pos), got {counts.shape}")
        return np.clip(counts[:, 0] / np.maximum(counts[:, 1], 1), 1.0, 10.0).astype(np.float32)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"class counts must be a non-negative vector [C], got {counts.shape}")
    present = counts > 0
    w = np.ones_like(counts)
    if present.any():
        inv = counts[present].sum() / counts[present]
        w[present] = inv / inv.mean()
    return w.astype(np.float32)
