"""Per-frame zero-shot class probabilities on any video: the ``zs_<label>`` columns.

Per-frame image embeddings [T, D] (EmoCLIP's image tower over the face crops) are cut into
windows of ``clip_len * frame_step`` frames (``affaccel.segments.plan_windows``, stride half a
window); each window's clip (every ``frame_step``-th frame, reflect-padded when the video is
shorter) goes through the temporal model, its class probabilities are given to every frame of
the window, and ``affaccel.segments.overlap_average`` spreads them back to frames.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from affaccel.emoclip.clips import sample_indices
from affaccel.emoclip.descriptions import LabelSet, load_label_set
from affaccel.segments import overlap_average, plan_windows


class ZeroShotScorer:
    """An EmoCLIP model + a label set -> per-frame probabilities [T, C].

    ``encoder``: the image tower as a ClipEncoder (crops size / mean / std); ``columns``:
    ``zs_<label>`` per class; ``clip_len`` / ``frame_step``: the clips the model was trained on.
    """

    def __init__(self, model, labels: LabelSet, clip_len: int = 32, frame_step: int = 2,
                 stride: int | None = None, batch: int = 64):
        from affaccel.emoclip.text import class_embeddings

        self.model = model.eval()
        self.labels = labels
        self.clip_len, self.frame_step = int(clip_len), int(frame_step)
        self.window = self.clip_len * self.frame_step
        self.stride = int(stride or max(1, self.window // 2))
        self.batch = batch
        self.encoder = model.image_encoder()
        self.class_emb = class_embeddings(model, labels)
        self.columns = [f"zs_{n}" for n in labels.names]

    @classmethod
    def from_checkpoint(cls, path: str | Path, labels=None, **kw) -> "ZeroShotScorer":
        """From an EmoCLIP checkpoint; ``labels`` (built-in name, file or LabelSet) defaults to the
        label set the checkpoint was trained with (else affaccel's 8 expressions)."""
        from affaccel.emoclip.model import load_emoclip

        model, extra = load_emoclip(path, return_extra=True)
        if labels is None:
            labels = LabelSet.from_dict(extra["labels"]) if "labels" in extra else load_label_set("affaccel")
        tc = extra.get("train_config", {})
        kw.setdefault("clip_len", tc.get("clip_len", 32))
        kw.setdefault("frame_step", tc.get("frame_step", 2))
        return cls(model, load_label_set(labels), **kw)

    def to(self, device) -> "ZeroShotScorer":
        self.model.to(device)
        self.class_emb = self.class_emb.to(device)
        return self

    def window_indices(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(window starts [N], frame indices [N, clip_len]) of an n-frame video."""
        starts = plan_windows(n, self.window, self.stride)
        idx = np.stack([s + sample_indices(min(self.window, n - s), self.clip_len, self.frame_step)
                        for s in starts])
        return starts, idx

    def _clip_probs(self, clips):
        """clips: [N, clip_len, D] image embeddings (torch) -> class probabilities [N, C] float32."""
        import torch
        from torch.nn import functional as F

        dev = self.model.logit_scale.device
        probs = []
        with torch.no_grad():
            for i in range(0, len(clips), self.batch):
                v = self.model.encode_video(clips[i:i + self.batch].to(dev))
                logits = self.model.logit_scale.exp() * F.normalize(v.float(), dim=-1) @ self.class_emb.t()
                probs.append(torch.softmax(logits, -1).cpu().numpy())
        return np.concatenate(probs).astype(np.float32)

    def frame_probs(self, feats) -> np.ndarray:
        """feats: [T, D] image embeddings (NumPy or torch) -> probabilities [T, C] float32."""
        import torch

        x = torch.as_tensor(np.asarray(feats, np.float32) if not torch.is_tensor(feats) else feats).float()
        n = x.shape[0]
        starts, idx = self.window_indices(n)
        p = self._clip_probs(x[torch.as_tensor(idx)])                      # [N, C]
        win = np.repeat(p[:, None, :], self.window, axis=1)                # [N, w, C]
        return np.asarray(overlap_average(win, starts, n), np.float32)

    def window_probs(self, x, mask) -> dict:
        """The streaming form of ``frame_probs`` (``StreamingTemporal``'s ``run_windows``):
        windows x [N, w, D] with mask [N, w] (a short video's one window is padded) -> {"zs":
        [N, w, C]}, each window's clip probabilities on all its positions."""
        import torch

        valid = mask.sum(1).tolist()
        idx = np.stack([sample_indices(int(v), self.clip_len, self.frame_step) for v in valid])
        clips = x.float()[torch.arange(len(valid))[:, None], torch.as_tensor(idx)]
        p = self._clip_probs(clips)
        return {"zs": np.repeat(p[:, None, :], x.shape[1], axis=1)}


__all__ = ["ZeroShotScorer", "chunk_features", "add_zs_columns"]


def chunk_features(scorer: ZeroShotScorer, frames, boxes, found, feats, main_encoder, device,
                   crop_expand: float = 1.0):
    """EmoCLIP image embeddings [b, D] (torch, CPU) of one decoded batch of the predictor.

    frames: [b, H, W, 3] uint8; boxes: [b, 4] float (NaN without a face); found: [b] bool (face
    crops the predictor kept); feats: the predictor's features of the batch, reused when its
    encoder is EmoCLIP's own tower. Rows without a face are zero (the predictor fills them).
    """
    import torch

    if main_encoder is scorer.encoder:
        return feats
    out = torch.zeros((len(found), scorer.model.embed_dim))
    if np.any(found):
        from affaccel.video.crop import crop_faces

        enc = scorer.encoder
        crops, _ = crop_faces(frames, torch.as_tensor(np.asarray(boxes), dtype=torch.float32), enc.image_size,
                              enc.mean, enc.std, expand=crop_expand, device=device)
        vi = torch.as_tensor(np.nonzero(found)[0])
        with torch.no_grad():
            out[vi] = scorer.model.encode_frames(crops[vi.to(crops.device)].float()).float().cpu()
    return out


def add_zs_columns(table, scorer: ZeroShotScorer, zs_feats, source: str = "input"):
    """Append the ``zs_<label>`` probability columns to a prediction table (NaN without a face)."""
    if zs_feats is None:
        raise ValueError(f"{source}: zero-shot (zs_) columns need video frames or face crops through "
                         "EmoCLIP's image tower; precomputed features of another encoder cannot be used")
    probs = scorer.frame_probs(zs_feats)
    found = table["face_found"].to_numpy(bool)
    probs[~found] = np.nan
    for j, col in enumerate(scorer.columns):
        table[col] = probs[:, j]
    return table
