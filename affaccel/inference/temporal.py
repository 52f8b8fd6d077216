"""The one path from features to per-frame predictions: windows -> temporal models -> overlap
averaging. Inference (``AffectPredictor``) and stage-3 validation both call
:func:`predict_frames`, so what is validated is what is served.

Windows follow the DESIGN.md rule (``affaccel.segments.plan_windows``: starts 0, s, 2s, ...,
one tail window ending at the last frame, one padded window for a video shorter than w). Only
one batch of windows is materialised at a time (``gather_windows``), so memory does not grow
with the number of videos; window batches cross video boundaries.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


def run_windows(models: Mapping[str, Any], x, mask) -> dict[str, np.ndarray]:
    """x: [N, w, D] float, mask: [N, w] bool (torch, on the models' device) -> task ->
    [N, w, K] float32 NumPy in prediction space (``TemporalModel.to_prediction``: VA values,
    EXPR and AU probabilities). Models must be in eval mode."""
    import torch

    out = {}
    with torch.inference_mode():
        for task, model in models.items():
            out[task] = model.to_prediction(model(x, mask)).float().cpu().numpy()
    return out


def predict_frames(models: Mapping[str, Any], features: Sequence[Any], window: int, stride: int,
                   device, batch_size: int = 32, weighting: str = "uniform") -> list[dict[str, np.ndarray]]:
    """Per-frame predictions of every video.

    models: task -> TemporalModel (eval mode is set here); features: one [T_i, D] array per
    video (NumPy, float16 memory map of the feature cache, or CPU torch tensor); batch_size:
    windows per forward. Returns, per video, task -> [T_i, K] float32: the window predictions
    averaged where windows overlap (``weighting``: uniform / triangular / hann).
    """
    import torch

    from affaccel.segments import (
        gather_windows,
        overlap_average_batch,
        plan_windows_batch,
    )

    if not features:
        return []
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for model in models.values():
        model.eval()
    n_frames = [int(f.shape[0]) for f in features]
    index = plan_windows_batch(n_frames, window, stride)
    parts: dict[str, list[np.ndarray]] = {t: [] for t in models}
    for i in range(0, len(index), batch_size):
        x, mask = gather_windows(features, index[i:i + batch_size], window)
        x = torch.as_tensor(x).to(device, torch.float32, non_blocking=True)
        mask = torch.as_tensor(mask).to(device)
        for task, p in run_windows(models, x, mask).items():
            parts[task].append(p)
    per_task = {t: overlap_average_batch(np.concatenate(p), index, n_frames, weighting=weighting)
                for t, p in parts.items()}
    return [{t: np.asarray(per_task[t][v]) for t in models} for v in range(len(features))]
